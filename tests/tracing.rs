//! Traces (`[telemetry] otlp_endpoint`): each publish is one OpenTelemetry
//! trace exported over OTLP/HTTP to a real receiver the test runs. Its
//! setup steps are children of it (a transcoded rendition's first IDR
//! among them: the setup ends when the stream is playable, not with its
//! long-lived legs); a failed setup says why in its status; the publish
//! webhook's request carries the trace's `traceparent`; SRT player
//! sessions are traces of their own linked to the publish; JSON log lines
//! carry the active span's ids. A silent collector costs the relay nothing
//! but the spans, which are counted.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;

/// ffmpeg publishes the fixture to `live/cam1` until the guard drops;
/// returns once the stream is playable, after an SRT player read from it.
fn publish_and_play(server: &Sluice) -> ChildGuard {
    let fixture = fixture_avc_aac(60);
    let ff = publish_fixture(
        &fixture,
        &server.rtmp_url("live/cam1"),
        PublishFor::Secs(30),
    );
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(15),
    );
    play(&server.srt_url("live/cam1", ""), 5);
    ff
}

/// ffmpeg reads `frames` video frames from `url` (an SRT player) and exits.
fn play(url: &str, frames: u32) {
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args(["-nostdin", "-v", "error", "-i", url, "-frames:v"])
        .arg(frames.to_string())
        .args(["-fps_mode", "vfr", "-f", "null", "-"]);
    let (st, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(30));
    assert!(st.success(), "the SRT player failed: {err}");
}

fn one<'a>(spans: &'a [RecvSpan], what: &str, pred: impl Fn(&RecvSpan) -> bool) -> &'a RecvSpan {
    let found: Vec<&RecvSpan> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}");
    found[0]
}

/// `child` lies within `parent`'s time and is its child in the trace.
fn within(child: &RecvSpan, parent: &RecvSpan) {
    assert_eq!(
        child.trace_id, parent.trace_id,
        "{} in {}",
        child.name, parent.name
    );
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{} is a child of {}",
        child.name, parent.name
    );
    assert!(
        child.start_ns >= parent.start_ns && child.end_ns <= parent.end_ns,
        "{} ({}..{}) lies within {} ({}..{})",
        child.name,
        child.start_ns,
        child.end_ns,
        parent.name,
        parent.start_ns,
        parent.end_ns
    );
}

#[test]
fn a_publish_is_one_trace_its_webhook_and_players_join_it_and_a_failed_setup_says_why() {
    let otlp = OtlpReceiver::start();
    // `slow/…` waits past the setup deadline; everything else is allowed.
    let (hook, hook_requests) = webhook_server_with_headers(|body| {
        let slow = body["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("slow/"));
        (200, Duration::from_secs(if slow { 8 } else { 0 }))
    });
    let dead = free_udp_port(); // nothing listens there
    let server = Sluice::start(Some(&format!(
        "[server]\nsetup_timeout = \"3s\"\n\
         [telemetry]\notlp_endpoint = \"{}\"\nexport_interval = \"100ms\"\n\
         [apps.live]\npublish_webhook = \"http://127.0.0.1:{hook}/auth\"\n\
         push = [{{ url = \"srt://127.0.0.1:{dead}?streamid=opt\", required = false }}]\n\
         [[apps.live.renditions]]\nname = \"small\"\nheight = 240\nvideo_bitrate = \"300k\"\n\
         [apps.broken]\npush = [\"srt://127.0.0.1:{dead}?streamid=x\"]\n\
         [apps.srtin]\npublish_webhook = \"http://127.0.0.1:{hook}/auth\"\n\
         [apps.slow]\npublish_webhook = \"http://127.0.0.1:{hook}/auth\"\nwebhook_timeout = \"10s\"\n",
        otlp.endpoint()
    )));

    // A TCP check that sends nothing makes no trace; a peer that sends a
    // bad handshake makes a short failed one.
    drop(std::net::TcpStream::connect(server.rtmp_addr()).unwrap());
    {
        use std::io::{Read, Write};
        let mut bad = std::net::TcpStream::connect(server.rtmp_addr()).unwrap();
        bad.write_all(&[0x42; 1537]).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = bad.read(&mut [0u8; 64]);
    }

    // A publish that becomes live (its optional push never connects), one
    // player, then the publisher leaves.
    drop(publish_and_play(&server));
    server.wait_stream_gone("live/cam1", Duration::from_secs(10));

    // A publish whose required push cannot connect: its setup fails.
    let mut broken = publish_fixture(
        &fixture_avc_aac(60),
        &server.rtmp_url("broken/cam2"),
        PublishFor::Secs(10),
    );
    server.wait_log_fields(
        &[("message", "stream setup failed")],
        Duration::from_secs(10),
    );
    broken.expect_exit(Duration::from_secs(10));

    // A publish whose webhook answers after the setup deadline: the
    // pending auth step fails with the publish.
    let mut slow = common::rtmp_client::RtmpPublisher::connect(
        server.rtmp_addr(),
        "slow",
        common::rtmp_client::PublishOptions::default(),
    )
    .expect("rtmp connect");
    let _ = slow.request_publish("cam4");
    assert!(
        slow.wait_server_close(Duration::from_secs(10)).is_some(),
        "closed at the setup deadline"
    );

    // An SRT publish asking the same webhook: its trace begins with the
    // question, which is its auth step.
    let srt_url = server.srt_url("#!::r=srtin/cam3,m=publish", "");
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args(["-loglevel", "error", "-re", "-i"])
        .arg(fixture_avc_aac(60))
        .args(["-map", "0", "-c", "copy", "-f", "mpegts", &srt_url]);
    let srt_publisher = ChildGuard::spawn("ffmpeg", cmd);
    server.wait_for_stream(
        "srtin/cam3",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(15),
    );
    drop(srt_publisher);
    server.wait_stream_gone("srtin/cam3", Duration::from_secs(10));

    let spans = otlp.wait_for(Duration::from_secs(15), "five traces and the player", |s| {
        let roots = s.iter().filter(|x| x.name == "publish").count();
        roots >= 5 && s.iter().any(|x| x.name == "srt_play")
    });

    // -- the bad handshake: a short failed trace, its root ending last -----
    let roots: Vec<&RecvSpan> = spans.iter().filter(|s| s.name == "publish").collect();
    assert_eq!(
        roots.len(),
        5,
        "the silent TCP check made no trace: {roots:#?}"
    );
    let bad = one(&spans, "the bad handshake", |s| {
        s.name == "publish" && s.attr("stream").is_none()
    });
    assert_eq!(bad.status_code, 2, "{bad:?}");
    assert!(
        bad.status_message.contains("closed before publishing"),
        "{bad:?}"
    );
    for name in ["setup", "handshake"] {
        let s = one(&spans, name, |s| {
            s.trace_id == bad.trace_id && s.name == name
        });
        assert_eq!(s.status_code, 2, "{s:?}");
        assert!(s.end_ns <= bad.end_ns, "{name} ends within its root");
    }

    // -- the webhook that answered too late: its step failed, ended first
    let sl = one(&spans, "the slow/cam4 publish", |s| {
        s.name == "publish" && s.attr("stream") == Some("slow/cam4")
    });
    assert_eq!(sl.status_code, 2, "{sl:?}");
    assert!(sl.status_message.contains("setup_timeout"), "{sl:?}");
    let slauth = one(&spans, "slow auth", |s| {
        s.trace_id == sl.trace_id && s.name == "auth"
    });
    assert_eq!(slauth.status_code, 2, "{slauth:?}");
    assert!(slauth.end_ns <= sl.end_ns, "{slauth:?} ends within {sl:?}");
    assert!(
        slauth.duration() >= Duration::from_millis(2500),
        "the step lasted until the deadline: {slauth:?}"
    );

    // -- the live publish: one trace, its steps under its setup ------------
    let root = one(&spans, "the live/cam1 publish", |s| {
        s.name == "publish" && s.attr("stream") == Some("live/cam1")
    });
    assert_eq!(root.parent_span_id, "", "the publish is a trace's root");
    assert_eq!(root.attr("protocol"), Some("rtmp"));
    assert_eq!(
        root.resource.get("service.name").map(String::as_str),
        Some("sluice")
    );
    let trace: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let named = |name: &str| {
        one(&spans, name, |s| {
            s.trace_id == root.trace_id && s.name == name
        })
    };
    let setup = named("setup");
    let handshake = named("handshake");
    let auth = named("auth");
    let teardown = named("teardown");
    let idr = named("first_idr");
    within(setup, root);
    within(idr, setup);
    assert_eq!(idr.attr("rendition"), Some("small"));
    assert_eq!(idr.status_code, 1, "{idr:?}");
    within(handshake, setup);
    within(auth, setup);
    within(teardown, root);
    // The optional push that never connected: its connect span failed at
    // the teardown and did not hold the setup open.
    let optional = one(&spans, "the optional push", |s| {
        s.trace_id == root.trace_id && s.name == "leg_connect" && s.parent_span_id == setup.span_id
    });
    assert_eq!(optional.attr("required"), Some("false"));
    assert_eq!(optional.status_code, 2, "{optional:?}");
    assert!(optional.end_ns > setup.end_ns);
    assert_eq!(auth.attr("method"), Some("webhook"));
    assert_eq!(setup.status_code, 1, "setup ok: {setup:?}");
    assert_eq!(
        root.status_code, 1,
        "a publisher that left is no failure: {root:?}"
    );
    // The steps follow each other and fit in the setup; its recorded
    // time is the span's.
    assert!(handshake.end_ns <= auth.start_ns, "handshake, then auth");
    assert!(setup.duration() >= handshake.duration() + auth.duration());
    let setup_ms: f64 = setup.attr("setup_ms").unwrap().parse().unwrap();
    let span_ms = setup.duration().as_secs_f64() * 1000.0;
    assert!(
        (setup_ms - span_ms).abs() < 50.0,
        "setup_ms {setup_ms} vs the span's {span_ms:.1} ms"
    );
    assert!(teardown.start_ns >= setup.end_ns);
    let cause = root.attr("cause").unwrap();
    assert_eq!(teardown.attr("cause"), Some(cause));
    // No span per frame or packet (the optional push's retries make a
    // few).
    assert!(trace.len() < 30, "{trace:#?}");

    // The webhook joined the trace: its request carried the auth step.
    let requests = hook_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let asked = |path: &str| -> String {
        let r = requests
            .iter()
            .find(|(_, body)| body["path"] == path)
            .unwrap_or_else(|| panic!("no webhook request for {path}: {requests:?}"));
        r.0.get("traceparent")
            .expect("a traceparent header")
            .clone()
    };
    let parent = &asked("live/cam1");
    assert_eq!(
        parent,
        &format!("00-{}-{}-01", root.trace_id, auth.span_id),
        "traceparent names the publish's trace and its auth step"
    );

    // The SRT publish: its webhook question is its trace's auth step.
    let sroot = one(&spans, "the srtin/cam3 publish", |s| {
        s.name == "publish" && s.attr("stream") == Some("srtin/cam3")
    });
    assert_eq!(sroot.attr("protocol"), Some("srt"));
    let ssetup = one(&spans, "srt setup", |s| {
        s.trace_id == sroot.trace_id && s.name == "setup"
    });
    let sauth = one(&spans, "srt auth", |s| {
        s.trace_id == sroot.trace_id && s.name == "auth"
    });
    within(ssetup, sroot);
    within(sauth, ssetup);
    assert_eq!(sauth.attr("method"), Some("webhook"));
    assert_eq!(ssetup.status_code, 1, "{ssetup:?}");
    assert_eq!(
        asked("srtin/cam3"),
        format!("00-{}-{}-01", sroot.trace_id, sauth.span_id)
    );

    // The player's session: a trace of its own, linked to the publish.
    let player = one(&spans, "the player", |s| s.name == "srt_play");
    assert_eq!(player.parent_span_id, "");
    assert_ne!(player.trace_id, root.trace_id);
    assert_eq!(player.attr("stream"), Some("live/cam1"));
    assert_eq!(
        player.links,
        vec![(root.trace_id.clone(), root.span_id.clone())]
    );
    assert!(player.attr("reason").is_some(), "{player:?}");

    // -- the failed setup: its reason as the status ------------------------
    let broken = one(&spans, "the broken/cam2 publish", |s| {
        s.name == "publish" && s.attr("stream") == Some("broken/cam2")
    });
    assert_eq!(broken.status_code, 2, "{broken:?}");
    let bsetup = one(&spans, "broken setup", |s| {
        s.trace_id == broken.trace_id && s.name == "setup"
    });
    assert_eq!(bsetup.status_code, 2, "{bsetup:?}");
    assert!(
        bsetup.status_message.contains("push_connect"),
        "the setup's status names the reason: {bsetup:?}"
    );
    let leg = one(&spans, "broken push leg", |s| {
        s.trace_id == broken.trace_id && s.name == "leg_connect"
    });
    within(leg, bsetup);
    assert_eq!(leg.attr("leg"), Some("srt_push"));
    assert_eq!(leg.status_code, 2, "{leg:?}");
    assert!(
        !leg.attr("destination").unwrap_or("").contains("streamid"),
        "no secrets in attributes: {leg:?}"
    );

    // JSON log lines carry the ids of the span they were written in.
    let ready = server.wait_log_fields(
        &[("message", "stream ready"), ("stream", "live/cam1")],
        Duration::from_secs(1),
    );
    assert_eq!(
        log_field(&ready, "trace_id").and_then(|v| v.as_str()),
        Some(root.trace_id.as_str()),
        "{ready}"
    );
    assert!(log_field(&ready, "span_id").is_some(), "{ready}");
    // Their context is still the connection's span, as without traces.
    assert_eq!(ready["span"]["name"], "rtmp", "{ready}");
    assert_eq!(ready["span"]["stream"], "live/cam1", "{ready}");
    assert!(server.metric_or_zero("sluice_trace_spans_exported_total") >= spans.len() as f64);
    assert_eq!(
        server.metric_or_zero(r#"sluice_trace_spans_dropped_total{reason="queue_full"}"#),
        0.0
    );
}

/// A collector that accepts connections and never answers: exports time
/// out, the queue fills and spans are dropped (counted), while publishing
/// and playing go on as before and the API answers.
#[test]
fn a_silent_collector_costs_spans_not_the_relay() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    // Accepted and held, never read.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(64) {
            match c {
                Ok(c) => conns.push(c),
                Err(_) => break,
            }
        }
        conns
    });
    let server = Sluice::start(Some(&format!(
        "[telemetry]\notlp_endpoint = \"http://{addr}\"\nqueue_size = 64\n\
         export_interval = \"50ms\"\nexport_timeout = \"10s\"\n"
    )));
    // Each connection that sends a byte and closes before publishing is a
    // short trace of three spans: soon more than the queue holds while
    // the export hangs.
    // (A few at a time: `rtmp.max_connections_per_ip` is 32.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dropped = r#"sluice_trace_spans_dropped_total{reason="queue_full"}"#;
    while server.metric_or_zero(dropped) == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no span dropped: {}",
            server.metrics_text()
        );
        for _ in 0..8 {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(server.rtmp_addr()).unwrap();
            let _ = c.write_all(&[0x42]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ff = publish_and_play(&server);
    let (code, _) = server.get("/healthz");
    assert_eq!(code, 200);
    drop(held);
}
