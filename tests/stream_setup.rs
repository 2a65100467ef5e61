//! The per-stream setup deadline (`server.setup_timeout`, from TCP accept):
//! a stream that does not become playable in time is refused with a clear
//! `NetStream.Publish.Failed` that says why, and counted by reason.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::flv;
use common::rtmp_client::{connect_and_publish, PublishOptions};
use common::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// AV1 over Enhanced RTMP is recognised by ingest but cannot be carried in
/// MPEG-TS yet: the publisher is told exactly that once the deadline passes.
#[test]
fn an_unsupported_codec_fails_setup_with_the_reason() {
    let server = Sluice::start(Some("[server]\nsetup_timeout = \"2s\"\n"));
    let file = flv::read_flv(&fixture("ffmpeg5.1-aom-320x180-ertmp-av01.flv"));
    let started = Instant::now();
    let mut publisher =
        connect_and_publish(server.rtmp_addr(), "live/av1", PublishOptions::default());
    let report = publisher.send_tags(&file.tags);
    assert!(report.error.is_none(), "{report:?}");
    let closed = publisher.wait_server_close(Duration::from_secs(10));
    assert!(closed.is_some(), "publisher was not closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before the deadline"
    );
    let statuses = format!("{:?}", publisher.statuses);
    assert!(statuses.contains("NetStream.Publish.Failed"), "{statuses}");
    assert!(statuses.contains("setup_timeout"), "{statuses}");
    assert!(statuses.to_lowercase().contains("av1"), "{statuses}");
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="unsupported_media"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_stream_gone("live/av1", Duration::from_secs(5));
}

/// A publisher that sends only audio still starts: AAC needs no keyframe.
/// One that sends nothing playable at all is closed at the deadline.
#[test]
fn a_publish_without_media_fails_setup_and_a_normal_one_records_setup_time() {
    let server = Sluice::start(Some("[server]\nsetup_timeout = \"2s\"\n"));
    let mut idle = connect_and_publish(server.rtmp_addr(), "live/idle", PublishOptions::default());
    let closed = idle.wait_server_close(Duration::from_secs(10));
    assert!(closed.is_some(), "idle publisher was not closed");
    let statuses = format!("{:?}", idle.statuses);
    assert!(statuses.contains("NetStream.Publish.Failed"), "{statuses}");
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="no_keyframe"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );

    let file = flv::read_flv(&fixture_avc_aac(3));
    let mut ok = connect_and_publish(server.rtmp_addr(), "live/ok", PublishOptions::default());
    let report = ok.send_tags(&file.tags);
    assert!(report.error.is_none(), "{report:?}");
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(5));
    assert!(server
        .metrics_text()
        .contains("sluice_stream_setup_seconds"));
    assert!(
        ok.closed.is_none(),
        "a playable stream was closed: {:?}",
        ok.closed
    );
    ok.close();
}
