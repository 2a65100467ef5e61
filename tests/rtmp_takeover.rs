//! One publisher per stream path: without `takeover` a second publisher is
//! refused with `NetStream.Publish.BadName` and the live one is untouched;
//! with `[apps.APP] takeover = true` the newcomer replaces it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::flv;
use common::rtmp_client::{
    connect_and_publish, BackgroundPublish, PublishOptions, PublishOutcome, RtmpPublisher,
};
use common::*;

#[test]
fn without_takeover_second_publisher_gets_badname_and_the_first_loses_nothing() {
    let server = Sluice::start(None);
    let path = "live/solo";
    let file = flv::read_flv(&fixture_avc_aac(6));
    let (want_v, want_a) = file.frame_counts();
    let mut first = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        Arc::new(file.tags),
        PublishOptions::default(),
    );
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
        Duration::from_secs(15),
    );
    let mut second = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("second client connects");
    match second.publish("solo") {
        PublishOutcome::Refused(st) => {
            assert_eq!(st.level, "error", "{st:?}");
            assert_eq!(st.code, "NetStream.Publish.BadName", "{st:?}");
        }
        other => panic!("expected NetStream.Publish.BadName, got {other:?}"),
    }
    assert!(
        second.wait_server_close(Duration::from_secs(10)).is_some(),
        "the refused publisher's connection should be closed"
    );
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_busy"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    let report = first.wait_report(Duration::from_secs(30));
    assert!(
        report.error.is_none(),
        "first publisher disturbed: {report:?}"
    );
    server.wait_for_stream(
        path,
        |s| {
            json_f64(s, "/frames_in/video") == Some(want_v as f64)
                && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
        },
        Duration::from_secs(10),
    );
    // Leaving and coming back right away works.
    first.release();
    let mut again = connect_and_publish(server.rtmp_addr(), path, PublishOptions::default());
    again.poll_events();
    assert!(
        again.closed.is_none(),
        "republish closed: {:?}",
        again.closed
    );
    server.wait_for_stream(path, |_| true, Duration::from_secs(5));
    assert_eq!(
        server.metric(r#"sluice_rtmp_publishes_total{result="accepted"}"#),
        Some(2.0)
    );
    again.close();
}

#[test]
fn with_takeover_the_new_publisher_replaces_the_live_one() {
    let server = Sluice::start(Some("[apps.live]\ntakeover = true\n"));
    let path = "live/handover";
    let tags = Arc::new(flv::read_flv(&fixture_avc_aac(8)).tags);
    let first = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        tags.clone(),
        PublishOptions::default(),
    );
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
        Duration::from_secs(15),
    );
    let mut second = connect_and_publish(server.rtmp_addr(), path, PublishOptions::default());
    // The replaced publisher is disconnected.
    let report = first.wait_report(Duration::from_secs(20));
    assert!(
        report.error.is_some(),
        "the replaced publisher kept publishing undisturbed: {report:?}"
    );
    // The newcomer's stream is live.
    let small = flv::read_flv(&fixture_avc_aac(4));
    let (want_v, want_a) = small.frame_counts();
    let sent = second.send_tags(&small.tags);
    assert!(sent.error.is_none(), "new publisher failed: {sent:?}");
    let s = server.stream(path).expect("stream listed after takeover");
    assert_eq!(json_str(&s, "/state"), Some("live"), "{s}");
    assert_eq!(json_str(&s, "/codecs/video"), Some("h264"), "{s}");
    assert_eq!(json_str(&s, "/codecs/audio"), Some("aac"), "{s}");
    assert_eq!(json_f64(&s, "/width"), Some(640.0), "{s}");
    let listed: Vec<_> = server
        .streams()
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| json_str(s, "/path") == Some(path))
        .cloned()
        .collect();
    assert_eq!(listed.len(), 1, "one stream per path: {listed:?}");
    assert!(want_v > 0 && want_a > 0);
    assert_eq!(
        server.metric(r#"sluice_rtmp_publishes_total{result="accepted"}"#),
        Some(2.0)
    );
    second.close();
}

#[test]
fn takeover_is_per_app() {
    let server = Sluice::start(Some("[apps.live]\ntakeover = true\n[apps.studio]\n"));
    let tags = Arc::new(flv::read_flv(&fixture_avc_aac(6)).tags);
    let mut first = BackgroundPublish::spawn(
        server.rtmp_addr(),
        "studio/x",
        tags,
        PublishOptions::default(),
    );
    server.wait_for_stream("studio/x", |_| true, Duration::from_secs(15));
    let mut second =
        RtmpPublisher::connect(server.rtmp_addr(), "studio", PublishOptions::default())
            .expect("connect");
    match second.publish("x") {
        PublishOutcome::Refused(st) => assert_eq!(st.code, "NetStream.Publish.BadName"),
        other => panic!("app `studio` has no takeover; expected BadName, got {other:?}"),
    }
    let report = first.wait_report(Duration::from_secs(30));
    assert!(
        report.error.is_none(),
        "first publisher disturbed: {report:?}"
    );
    first.release();
}

/// An encoder whose connection died silently (no FIN reached us) must not
/// lock its stream key until the idle timeout: once it has sent nothing for
/// `rtmp.stale_publisher_timeout`, a reconnecting publisher replaces it.
#[test]
fn a_silent_publisher_is_replaced_after_stale_publisher_timeout() {
    let server = Sluice::start(Some(
        "[rtmp]\nstale_publisher_timeout = \"1s\"\nidle_timeout = \"60s\"\n",
    ));
    let path = "live/flaky";
    let file = flv::read_flv(&fixture_avc_aac(6));
    let tags = Arc::new(file.tags);
    let first = BackgroundPublish::spawn(
        server.rtmp_addr(),
        path,
        tags.clone(),
        PublishOptions {
            realtime: false,
            ..PublishOptions::default()
        },
    );
    // It sends everything at once, then stays connected and silent.
    let report = first.wait_report(Duration::from_secs(30));
    assert!(report.error.is_none(), "{report:?}");
    server.wait_for_stream(path, |_| true, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = connect_and_publish(server.rtmp_addr(), path, PublishOptions::default());
    second.poll_events();
    assert!(
        second.closed.is_none(),
        "replacement refused: {:?}",
        second.closed
    );
    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="accepted"}"#,
        |v| v == Some(2.0),
        Duration::from_secs(5),
    );
    server.wait_log_fields(&[("reason", "taken_over")], Duration::from_secs(5));
    // The new publisher owns the path.
    let report = second.send_tags(&tags[..50]);
    assert!(report.error.is_none(), "{report:?}");
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
        Duration::from_secs(10),
    );
    assert!(server
        .stream(path)
        .and_then(|s| s["publisher"]["peer"].as_str().map(String::from))
        .is_some());
    second.close();
}

/// An encoder that stops its stream (FCUnpublish + deleteStream) and starts
/// it again on the same connection gets the path back at once: the first
/// publish's group has released it before the second `publish` is read.
#[test]
fn unpublish_then_publish_again_on_the_same_connection_is_accepted() {
    let server = Sluice::start(None);
    let file = flv::read_flv(&fixture_avc_aac(2));
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("client connects");
    for round in 0..3 {
        match p.publish("again") {
            PublishOutcome::Accepted => {}
            other => panic!("publish {round} on the same connection: {other:?}"),
        }
        let report = p.send_tags(&file.tags[..file.tags.len().min(40)]);
        assert!(report.error.is_none(), "round {round}: {report:?}");
        server.wait_for_stream(
            "live/again",
            |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
            Duration::from_secs(10),
        );
        p.unpublish().expect("unpublish");
    }
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="unpublished"}"#,
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
    server.wait_stream_gone("live/again", Duration::from_secs(3));
    assert_eq!(
        server.metric_or_zero(r#"sluice_rtmp_publishes_total{result="rejected_busy"}"#),
        0.0
    );
    p.close();
}
