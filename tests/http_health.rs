//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, `/api/v1/streams`,
//! unknown paths, and the JSON `listening` log line.

mod common;

use std::time::Duration;

use common::rtmp_client::handshake;
use common::*;
use serde_json::Value;

fn assert_health_shape(server: &Sluice, path: &str) {
    let r = server.get_full(path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{path}: content-type {ct:?}, expected application/json"
    );
    let v = r.json();
    assert_eq!(v["status"], "ok", "{path}: {v}");
    let ts = v["timestamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("{path}: timestamp is not an integer: {v}"));
    let now = unix_now();
    assert!(
        ts + 60 >= now && ts <= now + 60,
        "{path}: timestamp {ts} is not the current unix time ({now})"
    );
}

#[test]
fn healthz_is_200_json_status_ok_with_unix_timestamp() {
    let server = Sluice::start(None);
    assert_health_shape(&server, "/healthz");
}

#[test]
fn readyz_is_200_json_status_ok_with_unix_timestamp_when_ready() {
    let server = Sluice::start(None);
    assert_health_shape(&server, "/readyz");
}

#[test]
fn metrics_is_prometheus_text_with_sluice_names() {
    let server = Sluice::start(None);
    // Make sure at least the RTMP counters exist.
    let mut sock = raw_connect(server.rtmp_addr());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    handshake(&mut sock).expect("handshake");
    server.wait_metric(
        "sluice_rtmp_connections_total",
        |v| v >= Some(1.0),
        Duration::from_secs(5),
    );
    let r = server.get_full("/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let samples = parse_prometheus(&r.body);
    assert!(!samples.is_empty(), "no samples in /metrics:\n{}", r.body);
    for s in &samples {
        assert!(
            s.name.starts_with("sluice_"),
            "metric {} does not start with sluice_",
            s.name
        );
    }
    for l in r.body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split_whitespace().nth(2).unwrap_or_default();
        assert!(name.starts_with("sluice_"), "TYPE line for {name}");
    }
}

#[test]
fn rtmp_connection_metrics_follow_connections() {
    let server = Sluice::start(None);
    let mut socks = Vec::new();
    for _ in 0..3 {
        let mut s = raw_connect(server.rtmp_addr());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        handshake(&mut s).expect("handshake");
        socks.push(s);
    }
    server.wait_metric(
        "sluice_rtmp_connections",
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
    server.wait_metric(
        "sluice_rtmp_connections_total",
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
    drop(socks);
    server.wait_metric(
        "sluice_rtmp_connections",
        |v| v == Some(0.0),
        Duration::from_secs(10),
    );
    assert_eq!(server.metric("sluice_rtmp_connections_total"), Some(3.0));
}

#[test]
fn streams_api_is_an_empty_json_array_without_publishers() {
    let server = Sluice::start(None);
    let r = server.get_full("/api/v1/streams");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert_eq!(r.json(), serde_json::json!([]));
}

#[test]
fn unknown_path_is_404() {
    let server = Sluice::start(None);
    for path in ["/nope", "/api/v1/nope", "/healthz/extra"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
}

#[test]
fn http_survives_a_client_that_sends_nothing() {
    let server = Sluice::start(None);
    // An idle HTTP connection must not block other requests.
    let idle = raw_connect(server.http_addr());
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    drop(idle);
}

#[test]
fn json_logs_have_a_flattened_listening_line_with_bound_addresses() {
    let server = Sluice::start(None);
    let line: &Value = server.listening_line();
    assert_eq!(
        line["message"], "listening",
        "message must be a top-level field: {line}"
    );
    assert_eq!(
        line["rtmp_addr"].as_str(),
        Some(server.rtmp_addr().to_string().as_str()),
        "rtmp_addr must be a top-level field: {line}"
    );
    assert_eq!(
        line["http_addr"].as_str(),
        Some(server.http_addr().to_string().as_str()),
        "http_addr must be a top-level field: {line}"
    );
    // Every stderr line is one JSON object.
    for l in server.log_lines() {
        let v: Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v.is_object(), "log line is not an object: {l}");
    }
}
