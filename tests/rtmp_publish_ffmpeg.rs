//! Real ffmpeg publishers against sluice: what `/api/v1/streams` and
//! `/metrics` show while a stream is live, how fast it disappears, and the
//! one-publisher-per-path rule.

mod common;

use std::time::{Duration, Instant};

use common::rtmp_client::{PublishOptions, PublishOutcome, RtmpPublisher};
use common::*;

/// `ffmpeg -re` publishing testsrc2 640x360@30 + a 440 Hz sine (48 kHz) for
/// `secs` seconds to `url`. `video` replaces the default video options
/// (`None` = `-vn`), `audio` likewise (`None` = `-an`).
fn live_ffmpeg(url: &str, secs: u32, video: Option<&[&str]>, audio: Option<&[&str]>) -> ChildGuard {
    let t = secs.to_string();
    // `-re` is an input option: give it to both inputs, or an audio-only
    // publish would send its 8 s of audio at once.
    let mut args: Vec<&str> = vec!["-loglevel", "info", "-stats"];
    args.extend([
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
    ]);
    match video {
        Some(v) => {
            args.extend(["-map", "0:v"]);
            args.extend(v);
        }
        None => args.push("-vn"),
    }
    match audio {
        Some(a) => {
            args.extend(["-map", "1:a"]);
            args.extend(a);
        }
        None => args.push("-an"),
    }
    args.extend(["-f", "flv", url]);
    spawn_ffmpeg(&args)
}

const H264_BFRAMES: &[&str] = &[
    "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "60", "-pix_fmt", "yuv420p",
];
const H264_ZEROLATENCY: &[&str] = &[
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-tune",
    "zerolatency",
    "-g",
    "60",
    "-pix_fmt",
    "yuv420p",
];
const AAC_STEREO: &[&str] = &["-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"];
const AAC_MONO: &[&str] = &["-c:a", "aac", "-b:a", "64k", "-ar", "48000", "-ac", "1"];

/// Publishes with ffmpeg, checks the live stream, checks it disappears
/// within 1 s of ffmpeg's exit (1.5 s allowed for polling), and that the
/// frame counter equals what ffmpeg encoded.
fn publish_and_check(path: &str, video: Option<&[&str]>, audio: Option<&[&str]>, expect: Expect) {
    let server = Sluice::start(None);
    let mut ff = live_ffmpeg(&server.rtmp_url(path), 8, video, audio);
    let live = expect.wait(&server, Duration::from_secs(20));
    assert!(
        ff.is_running(),
        "ffmpeg should still be publishing when the stream matched: {live}"
    );

    // Metrics while live.
    assert!(
        server.metric_or_zero(r#"sluice_rtmp_publishes_total{result="accepted"}"#) >= 1.0,
        "publishes_total{{result=accepted}} did not count the publish"
    );
    assert!(server.metric_or_zero("sluice_rtmp_connections") >= 1.0);
    assert!(server.metric_or_zero("sluice_rtmp_connections_total") >= 1.0);
    let q_bytes = format!(r#"sluice_ingest_bytes_total{{stream="{path}"}}"#);
    assert!(server.metric_or_zero(&q_bytes) > 0.0, "{q_bytes} not > 0");

    let status = ff.expect_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "ffmpeg failed ({status}):\n{}",
        ff.stderr().tail(30)
    );
    let exited = ff.exit_instant().unwrap();
    let gone = server.wait_stream_gone(path, Duration::from_secs(10));
    let lag = gone.saturating_duration_since(exited);
    assert!(
        lag <= Duration::from_millis(1500),
        "stream {path} still listed {lag:?} after the publisher left (contract: within 1 s)"
    );

    // Every frame ffmpeg encoded was counted: the stream's series ended
    // with it, its totals are in the "publish ended" line.
    let ended = server.wait_log_fields(
        &[("message", "publish ended"), ("stream", path)],
        Duration::from_secs(5),
    );
    let total = |k: &str| log_field(&ended, k).and_then(|v| v.as_f64());
    assert!(total("bytes_in").is_some_and(|b| b > 0.0), "{ended}");
    if video.is_some() {
        let encoded = ffmpeg_frame_count(&ff.stderr().text())
            .unwrap_or_else(|| panic!("no frame= in ffmpeg output:\n{}", ff.stderr().tail(10)));
        assert!(encoded >= 200, "ffmpeg encoded only {encoded} frames");
        assert_eq!(total("frames_video"), Some(encoded as f64), "{ended}");
    }
    if audio.is_some() {
        // 8 s of 1024-sample AAC frames at 48 kHz is 375 (+ encoder delay).
        let n = total("frames_audio").unwrap_or(0.0);
        assert!((370.0..=380.0).contains(&n), "{ended}");
    }
    let q = format!(r#"sluice_ingest_frames_total{{stream="{path}",track="video"}}"#);
    assert_eq!(server.metric(&q), None, "the ended stream's series is gone");
}

#[test]
fn ffmpeg_h264_with_bframes_and_aac_is_listed_with_codecs_size_fps_and_gone_within_1s() {
    publish_and_check(
        "live/cam1",
        Some(H264_BFRAMES),
        Some(AAC_STEREO),
        Expect::new("live/cam1")
            .video("h264", 640, 360, 30.0)
            .audio("aac", 48000, 2),
    );
}

#[test]
fn ffmpeg_h264_zerolatency_and_aac_is_listed_with_codecs_size_fps_and_gone_within_1s() {
    publish_and_check(
        "live/zl",
        Some(H264_ZEROLATENCY),
        Some(AAC_STEREO),
        Expect::new("live/zl")
            .video("h264", 640, 360, 30.0)
            .audio("aac", 48000, 2),
    );
}

#[test]
fn ffmpeg_audio_only_mono_shows_aac_and_null_video() {
    // Mono also proves the channel count comes from the AudioSpecificConfig
    // (the FLV audio header always says "stereo" for AAC).
    publish_and_check(
        "live/radio",
        None,
        Some(AAC_MONO),
        Expect::new("live/radio").audio("aac", 48000, 1),
    );
}

#[test]
fn ffmpeg_video_only_shows_h264_and_null_audio() {
    publish_and_check(
        "live/silent",
        Some(H264_BFRAMES),
        None,
        Expect::new("live/silent").video("h264", 640, 360, 30.0),
    );
}

#[test]
fn second_publisher_on_a_live_key_is_rejected_busy_and_a_republish_is_accepted_at_once() {
    let server = Sluice::start(None);
    let path = "live/dup";
    let url = server.rtmp_url(path);
    let mut first = live_ffmpeg(&url, 10, Some(H264_ZEROLATENCY), Some(AAC_STEREO));
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
        Duration::from_secs(20),
    );

    // A second ffmpeg on the same key fails.
    let mut second = live_ffmpeg(&url, 3, Some(H264_ZEROLATENCY), Some(AAC_STEREO));
    let status = second.expect_exit(Duration::from_secs(30));
    assert!(
        !status.success(),
        "second ffmpeg publisher on a live key should exit non-zero; stderr:\n{}",
        second.stderr().tail(20)
    );
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_busy"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );

    // The same, seen by the test client: BadName, then the server closes.
    let (app, key) = path.split_once('/').unwrap();
    let mut c = RtmpPublisher::connect(server.rtmp_addr(), app, PublishOptions::default())
        .expect("connect");
    match c.publish(key) {
        PublishOutcome::Refused(st) => {
            assert_eq!(st.level, "error");
            assert_eq!(st.code, "NetStream.Publish.BadName", "{st:?}");
        }
        other => panic!("second publisher should get NetStream.Publish.BadName, got {other:?}"),
    }
    assert!(
        c.wait_server_close(Duration::from_secs(10)).is_some(),
        "the server should close a refused publisher's connection"
    );
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_busy"}"#,
        |v| v == Some(2.0),
        Duration::from_secs(5),
    );

    // The first publisher was not disturbed.
    let before = json_f64(
        &server.stream(path).expect("first stream listed"),
        "/frames_in/video",
    )
    .unwrap();
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > before + 10.0),
        Duration::from_secs(10),
    );
    let status = first.expect_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "first publisher failed:\n{}",
        first.stderr().tail(20)
    );

    // Republish on the same key at once.
    let t0 = Instant::now();
    let mut third = live_ffmpeg(&url, 4, Some(H264_ZEROLATENCY), Some(AAC_STEREO));
    Expect::new(path)
        .video("h264", 640, 360, 30.0)
        .audio("aac", 48000, 2)
        .wait(&server, Duration::from_secs(20));
    let status = third.expect_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "republish right after the first publisher left (started {:?} after it exited) failed:\n{}",
        t0.elapsed(),
        third.stderr().tail(20)
    );
    assert_eq!(
        server.metric(r#"sluice_rtmp_publishes_total{result="accepted"}"#),
        Some(2.0)
    );
    server.wait_stream_gone(path, Duration::from_secs(5));
}
