//! Checks the test suite's own RTMP publisher against an independent RTMP
//! server, ffmpeg's (`ffmpeg -listen 1 -i rtmp://...`), so that a failure
//! in the sluice tests can be blamed on sluice and not on the test client.
//! These tests do not start sluice.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flv::{self, FlvTag};
use common::rtmp_client::{PublishOptions, RtmpPublisher};
use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes `tags` to an `ffmpeg -listen 1` RTMP server that copies the
/// stream into an FLV file; returns (tags sent report, tags ffmpeg wrote).
fn publish_to_ffmpeg(
    tags: &[FlvTag],
    opts: PublishOptions,
) -> (common::rtmp_client::SendReport, Vec<FlvTag>) {
    // A port picked by `free_port` can be taken by a parallel test before
    // ffmpeg listens on it; start over on a fresh port if the handshake is
    // reset (the peer was not our ffmpeg).
    let mut attempts = 0;
    let (dir, out, mut ff, mut publisher) = loop {
        attempts += 1;
        let dir = TempDir::new("selfcheck");
        let out = dir.join("out.flv");
        let port = free_port();
        let url = format!("rtmp://127.0.0.1:{port}/live/check");
        let mut ff = spawn_ffmpeg(&[
            "-loglevel",
            "error",
            "-listen",
            "1",
            "-i",
            &url,
            "-c",
            "copy",
            "-f",
            "flv",
            out.to_str().unwrap(),
        ]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // A refused TCP connect does not consume ffmpeg's single listen, so
        // retry until it accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        let connected = loop {
            match RtmpPublisher::connect(addr, "live", opts.clone()) {
                Ok(p) => break Ok(p),
                Err(e) if e.contains("refused") && Instant::now() < deadline && ff.is_running() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => break Err(e),
            }
        };
        match connected {
            Ok(p) => break (dir, out, ff, p),
            Err(e) if e.contains("reset") && attempts < 3 => {
                ff.kill();
                continue;
            }
            Err(e) => panic!(
                "connect to ffmpeg failed: {e}; ffmpeg: {}",
                ff.stderr().text()
            ),
        }
    };
    let _keep = &dir;
    let outcome = publisher.publish("check");
    assert!(outcome.is_accepted(), "ffmpeg refused: {outcome:?}");
    let report = publisher.send_tags(tags);
    assert!(report.error.is_none(), "send failed: {report:?}");
    publisher.close();
    let status = ff.expect_exit(Duration::from_secs(30));
    assert!(status.success(), "ffmpeg failed: {}", ff.stderr().text());
    let written = flv::read_flv(&out);
    (report, written.tags)
}

fn check_roundtrip(opts: PublishOptions) {
    let src = flv::read_flv(&fixture_avc_aac(4));
    let (want_v, want_a) = src.frame_counts();
    let offset = opts.timestamp_offset;
    let (report, got) = publish_to_ffmpeg(&src.tags, opts.clone());
    assert_eq!((report.video_frames, report.audio_frames), (want_v, want_a));
    // The options really shaped the wire format.
    if opts.interleave {
        assert!(
            report.interleaved_pairs > 50,
            "too few interleaved pairs: {report:?}"
        );
    }
    if opts.always_type0 {
        assert_eq!(report.header_types[1..], [0, 0, 0], "{report:?}");
    } else {
        assert!(
            report.header_types[1] + report.header_types[2] > 0,
            "{report:?}"
        );
    }
    let crosses_ext = offset < 0xFF_FFFF && offset.wrapping_add(src.duration_ms()) >= 0xFF_FFFF;
    if crosses_ext && opts.always_type0 {
        assert!(
            report.extended_headers > 50,
            "too few extended timestamps: {report:?}"
        );
    }
    let (got_v, got_a) = flv::frame_counts(&got);
    assert_eq!(
        (got_v, got_a),
        (want_v, want_a),
        "ffmpeg received a different number of frames"
    );
    // Video payloads and timestamp spacing survive the trip.
    let src_v: Vec<&FlvTag> = src
        .tags
        .iter()
        .filter(|t| t.is_video() && t.is_frame())
        .collect();
    let got_v: Vec<&FlvTag> = got
        .iter()
        .filter(|t| t.is_video() && t.is_frame())
        .collect();
    for (k, (a, b)) in src_v.iter().zip(&got_v).enumerate() {
        assert_eq!(a.data, b.data, "video frame {k} payload differs");
        if k > 0 {
            let da = a.timestamp - src_v[k - 1].timestamp;
            let db = b.timestamp.wrapping_sub(got_v[k - 1].timestamp);
            assert_eq!(
                da, db,
                "video frame {k}: timestamp delta differs (offset {offset})"
            );
        }
    }
}

#[test]
fn client_default_mode_roundtrips_through_ffmpeg() {
    check_roundtrip(PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    });
}

#[test]
fn client_interleaved_128_byte_chunks_roundtrip_through_ffmpeg() {
    check_roundtrip(PublishOptions {
        realtime: false,
        interleave: true,
        chunk_size: 128,
        ..PublishOptions::default()
    });
}

#[test]
fn client_extended_timestamps_roundtrip_through_ffmpeg() {
    check_roundtrip(PublishOptions {
        realtime: false,
        always_type0: true,
        chunk_size: 128,
        timestamp_offset: (1 << 24) - 2000,
        ..PublishOptions::default()
    });
}

#[test]
fn fixture_has_b_frames_and_expected_layout() {
    let f = flv::read_flv(&fixture_avc_aac(4));
    assert!(f.has_audio && f.has_video);
    assert!(
        f.tags.iter().any(|t| t.composition_time().unwrap_or(0) > 0),
        "the libx264 veryfast fixture should contain B-frames (non-zero composition time)"
    );
    let (v, a) = f.frame_counts();
    assert_eq!(v, 120, "4 s at 30 fps");
    assert!(
        a > 180,
        "about 4 s of 1024-sample AAC frames at 48 kHz, got {a}"
    );
    let _ = Arc::new(f.tags);
}

#[test]
fn client_32bit_wrap_with_compressed_headers_roundtrips_through_ffmpeg() {
    check_roundtrip(PublishOptions {
        realtime: false,
        chunk_size: 128,
        timestamp_offset: u32::MAX - 2999,
        ..PublishOptions::default()
    });
}

#[test]
fn client_32bit_wrap_with_type0_headers_roundtrips_through_ffmpeg() {
    check_roundtrip(PublishOptions {
        realtime: false,
        always_type0: true,
        interleave: true,
        chunk_size: 128,
        timestamp_offset: u32::MAX - 2999,
        ..PublishOptions::default()
    });
}

/// The HEVC tags the tests build from libx265 output: one frame per
/// picture, keyframes every 60 frames, and an hvcC whose profile and level
/// agree with ffprobe's reading of the same stream.
#[test]
fn hevc_fixture_converts_to_flv_tags_consistent_with_ffprobe() {
    let path = fixture_hevc_annexb(4);
    let data = std::fs::read(&path).unwrap();
    let (hvcc, frames) = flv::hevc_frames(&data);
    assert_eq!(frames.len(), 120, "4 s at 30 fps");
    let keys: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].keyframe).collect();
    assert_eq!(keys, vec![0, 60], "keyframes every 60 frames");
    assert_eq!(hvcc[0], 1, "configurationVersion");
    let ffprobe = require_program("ffprobe", "the `ffmpeg` Debian package");
    let mut cmd = std::process::Command::new(ffprobe);
    cmd.args([
        "-v",
        "error",
        "-select_streams",
        "v",
        "-show_entries",
        "stream=profile,level,width,height",
        "-of",
        "default=noprint_wrappers=1",
    ])
    .arg(&path);
    let (status, out, err) = run_to_exit("ffprobe", cmd, Duration::from_secs(60));
    assert!(status.success(), "ffprobe failed: {err}");
    assert!(out.contains("profile=Main"), "{out}");
    assert!(
        out.contains("width=640") && out.contains("height=360"),
        "{out}"
    );
    let level: u8 = out
        .lines()
        .find_map(|l| l.strip_prefix("level="))
        .and_then(|v| v.trim().parse().ok())
        .expect("ffprobe level");
    assert_eq!(hvcc[1] & 0x1F, 1, "general_profile_idc Main");
    assert_eq!(hvcc[12], level, "general_level_idc");
    assert_eq!(hvcc[21] & 0x03, 3, "lengthSizeMinusOne");
    assert_eq!(hvcc[22], 3, "VPS, SPS and PPS arrays");
    // Every frame is a sequence of 4-byte length-prefixed NAL units.
    for (i, f) in frames.iter().enumerate() {
        let mut p = 0;
        while p < f.avcc.len() {
            let n = u32::from_be_bytes(f.avcc[p..p + 4].try_into().unwrap()) as usize;
            assert!(
                n > 0 && p + 4 + n <= f.avcc.len(),
                "frame {i}: bad NAL length"
            );
            p += 4 + n;
        }
    }
    let tags = flv::hevc_tags(&data, 30, true);
    assert_eq!(flv::frame_counts(&tags), (120, 0));
    assert_eq!(tags[0].kind(), flv::TagKind::Config);
    assert_eq!(tags[1].data[0], 0x91, "keyframe CodedFrames");
    assert_eq!(tags[2].data[0], 0xA3, "inter CodedFramesX");
    let legacy = flv::hevc_tags(&data, 30, false);
    assert_eq!(flv::frame_counts(&legacy), (120, 0));
    assert_eq!(&legacy[1].data[..2], &[0x1C, 1]);
}
