//! HEVC over RTMP. ffmpeg 5.1's FLV muxer refuses HEVC ("Video codec hevc
//! not compatible with flv"), so these tests encode HEVC with libx265 and
//! publish it with the test client, in the two FLV layouts encoders use:
//! Enhanced RTMP (FourCC `hvc1`; OBS 29.1+, ffmpeg 6.1+) and the legacy
//! codec id 12. No onMetaData is sent: the size must come from the SPS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::flv::{self, FlvTag};
use common::rtmp_client::{BackgroundPublish, PublishOptions};
use common::*;

fn hevc_with_aac(enhanced: bool) -> Vec<FlvTag> {
    let hevc = std::fs::read(fixture_hevc_annexb(6)).expect("read HEVC fixture");
    let video = flv::hevc_tags(&hevc, 30, enhanced);
    let audio: Vec<FlvTag> = flv::read_flv(&fixture_aac_only(6))
        .tags
        .into_iter()
        .filter(|t| t.is_audio())
        .collect();
    flv::merge_by_timestamp(video, audio)
}

fn publish_hevc(path: &str, enhanced: bool) {
    let server = Sluice::start(None);
    let tags = Arc::new(hevc_with_aac(enhanced));
    let (want_v, want_a) = flv::frame_counts(&tags);
    let mut publish = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        tags,
        PublishOptions {
            send_metadata: false,
            ..PublishOptions::default()
        },
    );
    Expect::new(path)
        .video("hevc", 640, 360, 30.0)
        .audio("aac", 48000, 2)
        .wait(&server, Duration::from_secs(20));
    let report = publish.wait_report(Duration::from_secs(30));
    assert!(report.error.is_none(), "publish failed: {report:?}");
    assert_eq!((report.video_frames, report.audio_frames), (want_v, want_a));
    server.wait_for_stream(
        path,
        |s| {
            json_f64(s, "/frames_in/video") == Some(want_v as f64)
                && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
        },
        Duration::from_secs(10),
    );
    publish.release();
    server.wait_stream_gone(path, Duration::from_secs(5));
}

#[test]
fn hevc_enhanced_rtmp_hvc1_is_listed_as_hevc_640x360_with_exact_frame_counts() {
    publish_hevc("live/hevc_ertmp", true);
}

#[test]
fn hevc_legacy_flv_codec_id_12_is_listed_as_hevc_640x360_with_exact_frame_counts() {
    publish_hevc("live/hevc_legacy", false);
}
