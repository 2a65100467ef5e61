//! SRT push legs: a stream is pushed to a configured SRT destination
//! (srt-live-transmit listening on loopback) and arrives playable; with the
//! destination down, the publish fails within the setup deadline with a
//! clear reason and nothing is left running.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_push_leg_delivers_a_playable_stream_to_srt_live_transmit() {
    require_program("srt-live-transmit", "the `srt-tools` Debian package");
    let dir = TempDir::new("push");
    let out = dir.join("pushed.ts");
    let port = free_udp_port();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec srt-live-transmit -q -a:no 'srt://:{port}?mode=listener' file://con > '{}'",
        out.display()
    ));
    let mut receiver = ChildGuard::spawn("srt-live-transmit", cmd);
    std::thread::sleep(Duration::from_millis(300));
    let server = Sluice::start(Some(&format!(
        "[apps.live]\npush = [\"srt://127.0.0.1:{port}?streamid=from-sluice&latency=50\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/pushed");
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    server.wait_log_fields(
        &[("message", "srt push leg connected")],
        Duration::from_secs(10),
    );
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    let status = ffmpeg.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "publisher failed: {}",
        ffmpeg.stderr().tail(20)
    );
    // The leg flushes and closes once the publisher is gone; the receiver
    // (no auto-reconnect) then exits, having written everything.
    let gone = Instant::now();
    assert!(
        receiver.wait_exit(Duration::from_secs(10)).is_some(),
        "the destination was not closed after the publisher left"
    );
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "teardown took {:?}",
        gone.elapsed()
    );
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(size > 200_000, "destination received only {size} bytes");
    let (st, probe, err) = run_to_exit(
        "ffprobe",
        {
            let mut c = Command::new("ffprobe");
            c.args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&out);
            c
        },
        Duration::from_secs(20),
    );
    assert!(st.success(), "ffprobe failed: {err}");
    assert!(probe.contains("h264,640,360"), "{probe}");
    assert!(probe.contains("aac"), "{probe}");
    // The received stream decodes cleanly from its first byte.
    let (st, _, err) = run_to_exit(
        "ffmpeg",
        {
            let mut c = Command::new("ffmpeg");
            c.args(["-v", "error", "-i"])
                .arg(&out)
                .args(["-f", "null", "-"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        st.success() && err.trim().is_empty(),
        "decode errors: {err}"
    );
}

#[test]
fn with_the_destination_down_the_publish_fails_within_the_deadline() {
    let port = free_udp_port(); // nothing listens there
    let server = Sluice::start(Some(&format!(
        "[server]\nsetup_timeout = \"2s\"\n[apps.live]\npush = [\"srt://127.0.0.1:{port}?streamid=x\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/nowhere");
    let started = Instant::now();
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    let line = server.wait_log_fields(
        &[("message", "stream setup failed")],
        Duration::from_secs(10),
    );
    assert_eq!(
        log_field(&line, "reason").and_then(|v| v.as_str()),
        Some("push_connect"),
        "{line}"
    );
    let status = ffmpeg.expect_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(!status.success(), "publisher should have been refused");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="push_connect"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_stream_gone("live/nowhere", Duration::from_secs(3));
    // Nothing keeps sending: the leg's socket is gone with its task.
    assert_eq!(server.metric_or_zero("sluice_rtmp_connections"), 0.0);
}

/// A destination that disappears while the stream runs is a failed leg: the
/// whole group is torn down and the publisher told why.
#[test]
fn losing_the_destination_tears_the_stream_down() {
    require_program("srt-live-transmit", "the `srt-tools` Debian package");
    let port = free_udp_port();
    let mut cmd = Command::new("srt-live-transmit");
    cmd.args([
        "-q",
        "-a:no",
        &format!("srt://:{port}?mode=listener"),
        "file://con",
    ]);
    let mut receiver = ChildGuard::spawn("srt-live-transmit", cmd);
    std::thread::sleep(Duration::from_millis(300));
    let server = Sluice::start(Some(&format!(
        "[srt]\npeer_idle_timeout = \"2s\"\n[apps.live]\npush = [\"srt://127.0.0.1:{port}\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/fragile");
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::Forever);
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    receiver.kill();
    let line = server.wait_log_fields(
        &[("message", "push leg failed; stopping the stream")],
        Duration::from_secs(20),
    );
    assert!(line.to_string().contains("127.0.0.1"), "{line}");
    assert!(
        ffmpeg.wait_exit(Duration::from_secs(5)).is_some(),
        "the publisher was not disconnected"
    );
    server.wait_stream_gone("live/fragile", Duration::from_secs(3));
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="leg_failed"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
}
