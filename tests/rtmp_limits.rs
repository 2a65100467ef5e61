//! RTMP-side limits, each through real sockets: `rtmp.max_connections_per_ip`
//! refuses only the extra connection, `rtmp.max_publishes_per_ip` and
//! `rtmp.max_streams` refuse only the extra publish (with the limit named),
//! and `rtmp.max_ingest_bitrate` and `rtmp.max_messages_per_second` stop
//! only the publisher above them. Every refusal is counted.
//!
//! All clients here are 127.0.0.1 unless a test binds another loopback
//! address (127.0.0.2) as its source, which Linux allows without setup.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rtmp_client::{BackgroundPublish, PublishOptions, PublishOutcome, RtmpPublisher};
use common::*;

/// A TCP connection to `addr` from the source address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {from} -> {addr}: {e}"));
    s.into()
}

fn video_frames(server: &Sluice, path: &str) -> u64 {
    server
        .stream(path)
        .and_then(|s| s["frames_in"]["video"].as_u64())
        .unwrap_or(0)
}

fn refused(server: &Sluice, path: &str) -> common::rtmp_client::Status {
    let (app, key) = path.split_once('/').unwrap();
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), app, PublishOptions::default())
        .expect("rtmp connect");
    match p.publish(key) {
        PublishOutcome::Refused(st) => st,
        other => panic!("{path}: expected a refusal, got {other:?}"),
    }
}

/// A paced publish of the AVC+AAC fixture on its own thread.
fn background(server: &Sluice, path: &str) -> BackgroundPublish {
    let tags = Arc::new(flv::read_flv(&fixture_avc_aac(8)).tags);
    let p = BackgroundPublish::spawn(server.rtmp_addr(), path, tags, PublishOptions::default());
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(10),
    );
    p
}

#[test]
fn connections_per_ip_refuse_only_the_extra_connection() {
    // Idle sockets must outlive the test's steps.
    let server = Sluice::start(Some(
        "[server]\nsetup_timeout = \"60s\"\n\
         [rtmp]\nmax_connections_per_ip = 4\nhandshake_timeout = \"60s\"\n",
    ));
    let fixture = fixture_avc_aac(60);
    let mut ff = publish_fixture(
        &fixture,
        &server.rtmp_url("live/cam1"),
        PublishFor::Secs(40),
    );
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(15),
    );

    // Three connections that never say anything fill 127.0.0.1's quota.
    let idle: Vec<TcpStream> = (0..3).map(|_| raw_connect(server.rtmp_addr())).collect();
    server.wait_metric(
        "sluice_rtmp_connections",
        |v| v == Some(4.0),
        Duration::from_secs(5),
    );
    let mut fifth = raw_connect(server.rtmp_addr());
    let t0 = Instant::now();
    wait_closed(&mut fifth, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("the 5th connection from 127.0.0.1: {e}"));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    server.wait_metric(
        r#"sluice_rtmp_connections_rejected_total{reason="max_connections_per_ip"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    let line = server.wait_log("rtmp.max_connections_per_ip", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        log_field(&v, "level").and_then(|l| l.as_str()),
        Some("WARN"),
        "{line}"
    );
    assert!(
        log_field(&v, "peer")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );

    // Another IP is not affected.
    let mut other = connect_from("127.0.0.2", server.rtmp_addr());
    assert!(
        wait_closed(&mut other, Duration::from_millis(700)).is_err(),
        "a connection from 127.0.0.2 was refused"
    );
    drop(other);

    // The publisher keeps streaming.
    let before = video_frames(&server, "live/cam1");
    assert!(
        poll_until(Duration::from_secs(5), || video_frames(
            &server,
            "live/cam1"
        ) > before + 30),
        "live/cam1 stopped while the limit refused others"
    );
    assert!(ff.is_running(), "{}", ff.stderr().tail(20));

    // Closing the idle sockets frees the slots (nothing leaks).
    drop(idle);
    server.wait_metric(
        "sluice_rtmp_connections",
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("a new connection after the idle ones closed");
    assert!(p.publish("cam2").is_accepted());
    assert_eq!(
        server.metric(r#"sluice_rtmp_connections_rejected_total{reason="max_connections_per_ip"}"#),
        Some(1.0)
    );
    ff.kill();
}

#[test]
fn publishes_per_ip_refuse_the_extra_publish_with_the_limit_named() {
    let server = Sluice::start(Some("[rtmp]\nmax_publishes_per_ip = 1\n"));
    let mut first = background(&server, "live/a");

    let st = refused(&server, "live/b");
    assert_eq!(st.code, "NetStream.Publish.Failed", "{st:?}");
    assert!(
        st.description.contains("rtmp.max_publishes_per_ip"),
        "{st:?}"
    );
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_limit"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    assert!(server.stream("live/a").is_some());
    assert!(server.stream("live/b").is_none());

    // The slot frees when the live publish ends.
    first.release();
    server.wait_stream_gone("live/a", Duration::from_secs(5));
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("rtmp connect");
    assert!(p.publish("b").is_accepted());
}

#[test]
fn max_streams_refuses_a_new_stream_with_the_limit_named() {
    let server = Sluice::start(Some("[rtmp]\nmax_streams = 1\n"));
    let _first = background(&server, "live/a");

    let st = refused(&server, "other/b");
    assert_eq!(st.code, "NetStream.Publish.Failed", "{st:?}");
    assert!(st.description.contains("rtmp.max_streams"), "{st:?}");
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_limit"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    assert!(server.stream("live/a").is_some());
    assert_eq!(server.streams().as_array().map(Vec::len), Some(1));
}

#[test]
fn a_publisher_above_the_ingest_bitrate_cap_is_stopped_and_others_are_not() {
    let server = Sluice::start(Some("[rtmp]\nmax_ingest_bitrate = \"500k\"\n"));

    // AAC only, ~130 kbit/s: under the cap.
    let low_tags = Arc::new(flv::read_flv(&fixture_aac_only(12)).tags);
    let low = BackgroundPublish::spawn(
        server.rtmp_addr(),
        "live/low",
        low_tags,
        PublishOptions::default(),
    );
    server.wait_for_stream("live/low", |_| true, Duration::from_secs(10));

    // 640x360 H.264 + AAC, ~880 kbit/s: over the cap (+10 %).
    let high_tags = flv::read_flv(&fixture_avc_aac(8)).tags;
    let mut high = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("rtmp connect");
    assert!(high.publish("high").is_accepted());
    let started = Instant::now();
    let report = high.send_tags(&high_tags);
    let stopped = started.elapsed();
    assert!(
        report.error.is_some(),
        "the publisher above the cap sent everything: {report:?}"
    );
    assert!(
        stopped < Duration::from_secs(6),
        "stopped only after {stopped:?}"
    );
    let status = report
        .statuses
        .iter()
        .find(|s| s.contains("NetStream.Publish.Failed"))
        .unwrap_or_else(|| panic!("no NetStream.Publish.Failed: {report:?}"));
    assert!(
        status.contains("exceeds rtmp.max_ingest_bitrate (500 kbit/s)")
            && status.contains("ingest bitrate"),
        "{status}"
    );
    server.wait_stream_gone("live/high", Duration::from_secs(3));
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="bitrate_limit"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );

    // The publisher under the cap went on.
    let low_report = low.wait_report(Duration::from_secs(20));
    assert!(low_report.error.is_none(), "{low_report:?}");
    assert!(server.stream("live/low").is_some());
    assert_eq!(
        server.metric(r#"sluice_stream_teardowns_total{cause="bitrate_limit"}"#),
        Some(1.0)
    );
}

#[test]
fn a_publisher_over_the_message_rate_is_stopped_and_a_real_time_one_is_not() {
    // The fixture in real time is ~80 messages a second (30 fps video,
    // ~47 AAC frames, metadata); as fast as the socket takes it, its 8 s
    // (~640 messages) arrive within a fraction of a second. The cap leaves
    // the steady one 5x its rate: a loaded machine stalling its task for
    // seconds must not count its backlog as a flood.
    let server = Sluice::start(Some("[rtmp]\nmax_messages_per_second = 400\n"));
    let tags = Arc::new(flv::read_flv(&fixture_avc_aac(8)).tags);
    let steady = BackgroundPublish::spawn(
        server.rtmp_addr(),
        "live/steady",
        tags.clone(),
        PublishOptions::default(),
    );
    server.wait_for_stream("live/steady", |_| true, Duration::from_secs(10));

    let mut fast = RtmpPublisher::connect(
        server.rtmp_addr(),
        "live",
        PublishOptions {
            realtime: false,
            ..PublishOptions::default()
        },
    )
    .expect("rtmp connect");
    assert!(fast.publish("fast").is_accepted());
    let report = fast.send_tags(&tags);
    fast.wait_server_close(Duration::from_secs(5));
    fast.poll_events();
    let failed = fast
        .statuses
        .iter()
        .find(|s| s.code == "NetStream.Publish.Failed")
        .unwrap_or_else(|| {
            panic!(
                "no NetStream.Publish.Failed: {report:?} {:?}",
                fast.statuses
            )
        });
    assert!(
        failed
            .description
            .contains("rtmp.max_messages_per_second is 400"),
        "{failed:?}"
    );
    server.wait_stream_gone("live/fast", Duration::from_secs(3));
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="message_rate"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );

    let report = steady.wait_report(Duration::from_secs(20));
    assert!(report.error.is_none(), "{report:?}");
    assert!(server.stream("live/steady").is_some());
    assert_eq!(
        server.metric(r#"sluice_rtmp_protocol_errors_total{reason="message_rate"}"#),
        Some(1.0)
    );
}
