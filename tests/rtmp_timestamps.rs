//! RTMP timestamps where servers commonly break: the 2^24 ms extended
//! timestamp boundary (about 4 h 40 min into a stream) and the 32-bit wrap
//! (about 49.7 days), with type 0 headers (absolute timestamps, extended
//! field repeated on type 3 continuation chunks) and with compressed
//! headers (deltas). Also interleaved audio/video chunks on separate chunk
//! streams with 128-byte chunks.
//!
//! The test client publishes an ffmpeg-made FLV (640x360@30 H.264 with
//! B-frames + AAC 48 kHz stereo) in real time without onMetaData, so the
//! fps the API shows must come from the timestamps. Every check: codecs,
//! size, fps within 10 %, `timestamp_jumps` 0, and `frames_in` exactly
//! what the client sent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::flv;
use common::rtmp_client::{BackgroundPublish, PublishOptions};
use common::*;

const EXT_BOUNDARY: u32 = 1 << 24;

fn publish_and_verify(path: &str, opts: PublishOptions) {
    let server = Sluice::start(None);
    let file = flv::read_flv(&fixture_avc_aac(6));
    let (want_v, want_a) = file.frame_counts();
    let offset = opts.timestamp_offset;
    let mut publish = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        Arc::new(file.tags.clone()),
        PublishOptions {
            send_metadata: false,
            realtime: true,
            ..opts.clone()
        },
    );
    let expect = Expect::new(path)
        .video("h264", 640, 360, 30.0)
        .audio("aac", 48000, 2);
    expect.wait(&server, Duration::from_secs(20));
    let report = publish.wait_report(Duration::from_secs(40));
    assert!(report.error.is_none(), "publish failed: {report:?}");
    assert_eq!((report.video_frames, report.audio_frames), (want_v, want_a));
    if opts.interleave {
        assert!(
            report.interleaved_pairs > 50,
            "client did not interleave: {report:?}"
        );
    }
    let crosses_ext = offset < 0xFF_FFFF && offset.wrapping_add(file.duration_ms()) >= 0xFF_FFFF;
    if crosses_ext && opts.always_type0 {
        assert!(
            report.extended_headers > 50,
            "client sent no extended timestamps: {report:?}"
        );
    }
    // Once everything is in: exact frame counts and still no jumps (the
    // bitrate may fall to 0 now that nothing flows, so it is not checked).
    let s = server.wait_for_stream(
        path,
        |s| {
            json_f64(s, "/frames_in/video") == Some(want_v as f64)
                && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
        },
        Duration::from_secs(10),
    );
    assert_eq!(
        json_f64(&s, "/timestamp_jumps"),
        Some(0.0),
        "offset {offset}: {s}"
    );
    assert_eq!(json_str(&s, "/codecs/video"), Some("h264"), "{s}");
    assert_eq!(json_str(&s, "/codecs/audio"), Some("aac"), "{s}");
    assert_eq!(
        (json_f64(&s, "/width"), json_f64(&s, "/height")),
        (Some(640.0), Some(360.0)),
        "{s}"
    );
    let q = format!(r#"sluice_ingest_frames_total{{stream="{path}",track="video"}}"#);
    assert_eq!(server.metric(&q), Some(want_v as f64), "{q}");
    let q = format!(r#"sluice_ingest_frames_total{{stream="{path}",track="audio"}}"#);
    assert_eq!(server.metric(&q), Some(want_a as f64), "{q}");
    publish.release();
    server.wait_stream_gone(path, Duration::from_secs(5));
}

#[test]
fn crossing_extended_timestamp_boundary_with_type0_headers() {
    publish_and_verify(
        "live/ext0",
        PublishOptions {
            timestamp_offset: EXT_BOUNDARY - 2000,
            always_type0: true,
            chunk_size: 128, // many type 3 chunks repeating the extended field
            ..PublishOptions::default()
        },
    );
}

#[test]
fn crossing_extended_timestamp_boundary_with_compressed_headers() {
    publish_and_verify(
        "live/extd",
        PublishOptions {
            timestamp_offset: EXT_BOUNDARY - 2000,
            chunk_size: 128,
            ..PublishOptions::default()
        },
    );
}

#[test]
fn crossing_32bit_wrap_with_type0_headers() {
    publish_and_verify(
        "live/wrap0",
        PublishOptions {
            timestamp_offset: u32::MAX - 2999, // 2^32 - 3000 ms
            always_type0: true,
            chunk_size: 128,
            ..PublishOptions::default()
        },
    );
}

#[test]
fn crossing_32bit_wrap_with_compressed_headers() {
    publish_and_verify(
        "live/wrapd",
        PublishOptions {
            timestamp_offset: u32::MAX - 2999,
            ..PublishOptions::default()
        },
    );
}

#[test]
fn interleaved_audio_video_chunks_at_chunk_size_128() {
    publish_and_verify(
        "live/inter",
        PublishOptions {
            interleave: true,
            chunk_size: 128,
            ..PublishOptions::default()
        },
    );
}

#[test]
fn interleaved_chunks_with_extended_timestamps_at_chunk_size_128() {
    publish_and_verify(
        "live/interext",
        PublishOptions {
            interleave: true,
            always_type0: true,
            chunk_size: 128,
            timestamp_offset: EXT_BOUNDARY - 2000,
            ..PublishOptions::default()
        },
    );
}

/// The whole file as fast as the socket takes it: every frame is counted,
/// and the fps comes from the media timestamps, not the arrival rate.
#[test]
fn as_fast_as_possible_publish_keeps_every_frame_and_the_media_fps() {
    let server = Sluice::start(None);
    let path = "live/burst";
    let file = flv::read_flv(&fixture_avc_aac(6));
    let (want_v, want_a) = file.frame_counts();
    let mut publish = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        Arc::new(file.tags),
        PublishOptions {
            realtime: false,
            send_metadata: false,
            ..PublishOptions::default()
        },
    );
    let report = publish.wait_report(Duration::from_secs(30));
    assert!(report.error.is_none(), "publish failed: {report:?}");
    let s = server.wait_for_stream(
        path,
        |s| {
            json_f64(s, "/frames_in/video") == Some(want_v as f64)
                && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
        },
        Duration::from_secs(10),
    );
    assert_eq!(json_f64(&s, "/timestamp_jumps"), Some(0.0), "{s}");
    assert_eq!(json_str(&s, "/codecs/video"), Some("h264"), "{s}");
    assert_eq!(json_str(&s, "/codecs/audio"), Some("aac"), "{s}");
    let fps = json_f64(&s, "/fps");
    assert!(
        fps.is_some_and(|f| within_pct(f, 30.0, 10.0)),
        "fps {fps:?} after a burst publish of 30 fps media: {s}"
    );
    publish.release();
    server.wait_stream_gone(path, Duration::from_secs(5));
}

/// A 10-minute forward discontinuity in the middle of a stream is counted
/// in `timestamp_jumps` (so the zero checks above have teeth) and neither
/// the stream nor a single frame is lost.
#[test]
fn ten_minute_forward_jump_is_counted_and_no_frame_is_lost() {
    let server = Sluice::start(None);
    let path = "live/jump";
    let file = flv::read_flv(&fixture_avc_aac(6));
    let (want_v, want_a) = file.frame_counts();
    let mut publish = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        Arc::new(file.tags),
        PublishOptions {
            timestamp_jump: Some((3000, 600_000)),
            ..PublishOptions::default()
        },
    );
    let report = publish.wait_report(Duration::from_secs(30));
    assert!(report.error.is_none(), "publish failed: {report:?}");
    let s = server.wait_for_stream(
        path,
        |s| {
            json_f64(s, "/frames_in/video") == Some(want_v as f64)
                && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
        },
        Duration::from_secs(10),
    );
    assert!(
        json_f64(&s, "/timestamp_jumps").is_some_and(|n| n >= 1.0),
        "a 600 s jump was not counted: {s}"
    );
    assert_eq!(json_str(&s, "/state"), Some("live"), "{s}");
    publish.release();
    server.wait_stream_gone(path, Duration::from_secs(5));
}
