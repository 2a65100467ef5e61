//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, `/api/v1/streams`,
//! unknown paths, and the JSON `listening` log line.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
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

// ---------------------------------------------------------------------------
// Who may use the API: `[server] api_token`, and loopback-only changes
// without one. Each attack runs beside a recorded player on another stream.
// ---------------------------------------------------------------------------

const API_TOKEN: &str = "api-token-0123456789abcdef";

/// `method path` on `addr` with `Authorization: auth` when given.
fn api(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    http_request_with(addr, method, path, &headers, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// A 401 as a bearer-token API gives it: JSON error, `WWW-Authenticate: Bearer`.
fn assert_unauthorized(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate {challenge:?}"
    );
    assert!(r.json()["error"].is_string(), "{what}: {}", r.body);
}

#[test]
fn with_an_api_token_every_api_request_needs_it_and_probes_stay_open() {
    let server = Sluice::start(Some(&format!(
        "[server]\napi_token = \"{API_TOKEN}\"\n[transcode]\nencoder = \"x264\"\n"
    )));
    let addr = server.http_addr();
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let base = server.usage();
    let right = format!("Bearer {API_TOKEN}");

    // Probes and scrapers: no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = api(addr, "GET", path, None);
        assert_eq!(r.status, 200, "GET {path} without a token: {}", r.body);
    }

    // Every API path and method, unknown ones too, without the right token.
    let wrong = [
        None,
        Some("Bearer not-the-token-at-all-0000".to_string()),
        Some(format!("Bearer {API_TOKEN}x")),
        Some(format!("Bearer {}", &API_TOKEN[..API_TOKEN.len() - 1])),
        Some(format!("Basic {API_TOKEN}")),
        Some(API_TOKEN.to_string()),
        Some("Bearer".to_string()),
    ];
    for (method, path) in [
        ("GET", "/api/v1/streams"),
        ("GET", "/api/v1/streams/live/cam1"),
        ("GET", "/api/v1/encoders"),
        ("GET", "/api/v1/gpus"),
        ("POST", "/api/v1/encoders/probe"),
        ("DELETE", "/api/v1/streams/live/cam1"),
        ("GET", "/api/v1/nope"),
    ] {
        for auth in &wrong {
            let r = api(addr, method, path, auth.as_deref());
            assert_unauthorized(&r, &format!("{method} {path} with {auth:?}"));
        }
    }

    // The right token: the publisher's address is there.
    let r = api(addr, "GET", "/api/v1/streams", Some(&right));
    assert_eq!(r.status, 200, "{}", r.body);
    let live = Sluice::find_stream(&r.json(), "live/cam1").expect("live/cam1 listed");
    assert!(live["publisher"]["peer"].is_string(), "{live}");
    assert_eq!(live["publisher"]["protocol"], "rtmp", "{live}");
    // The scheme is case-insensitive (RFC 7235 2.1).
    let r = api(
        addr,
        "GET",
        "/api/v1/streams/live/cam1",
        Some(&format!("bearer {API_TOKEN}")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(addr, "POST", "/api/v1/encoders/probe", Some(&right));
    assert_eq!(r.status, 200, "{}", r.body);

    // Guessing costs the guesser only.
    for i in 0..300 {
        let r = api(
            addr,
            "GET",
            "/api/v1/streams",
            Some(&format!("Bearer guess-{i:016}")),
        );
        assert_eq!(r.status, 401);
    }
    server.wait_metric(
        r#"sluice_auth_rejects_total{action="api",reason="bad_token"}"#,
        |v| v >= Some(300.0),
        Duration::from_secs(5),
    );
    assert!(
        server.metric(r#"sluice_auth_rejects_total{action="api",reason="missing_token"}"#)
            >= Some(7.0)
    );
    server.wait_usage_back(base, "API token guesses");
    assert!(
        !server.log_contains(API_TOKEN),
        "the API token is in the log:\n{}",
        server.log_tail(40)
    );
    bystander.finish(3.0);
}

#[test]
fn api_token_file_is_read_trimmed_and_the_flag_overrides_the_config() {
    let dir = TempDir::new("api-token");
    let file = dir.join("token");
    std::fs::write(&file, format!("  {API_TOKEN}\n")).unwrap();
    let config = format!(
        "[server]\napi_token_file = {:?}\n",
        file.display().to_string()
    );
    let server = Sluice::start(Some(&config));
    let addr = server.http_addr();
    let r = api(
        addr,
        "GET",
        "/api/v1/streams",
        Some(&format!("Bearer {API_TOKEN}")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_unauthorized(&api(addr, "GET", "/api/v1/streams", None), "no token");
    drop(server);

    // --api-token-file replaces a token from the config file.
    let other = dir.join("other");
    std::fs::write(&other, "flag-token-fedcba9876543210").unwrap();
    let server = Sluice::start_with_args(
        Some(&format!("[server]\napi_token = \"{API_TOKEN}\"\n")),
        &["--api-token-file", other.to_str().unwrap()],
    );
    let addr = server.http_addr();
    let r = api(
        addr,
        "GET",
        "/api/v1/streams",
        Some("Bearer flag-token-fedcba9876543210"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(
        addr,
        "GET",
        "/api/v1/streams",
        Some(&format!("Bearer {API_TOKEN}")),
    );
    assert_unauthorized(&r, "the config's token after --api-token-file");
    assert!(!server.log_contains("flag-token-fedcba9876543210"));
}

/// An address of this machine other than loopback: the source address of
/// a route out (no packet is sent), else the first of `hostname -I`.
fn non_loopback_ip() -> Option<IpAddr> {
    let routed = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("203.0.113.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok();
    let listed = || {
        let out = std::process::Command::new("hostname")
            .arg("-I")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
    };
    routed
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .or_else(listed)
}

#[test]
fn without_a_token_api_changes_are_answered_only_for_loopback_clients() {
    // HTTP on every address, so one server has loopback and other clients.
    let args: Vec<String> = [
        "--rtmp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "0.0.0.0:0",
        "--srt-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Sluice::start_raw(Some("[transcode]\nencoder = \"x264\"\n"), args);
    let port = server.http_addr().port();
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let base = server.usage();
    let probes_run = || {
        server
            .log_lines()
            .iter()
            .filter(|l| l.contains("re-probe:"))
            .count()
    };

    match non_loopback_ip() {
        Some(ip) => {
            let remote = SocketAddr::new(ip, port);
            // Reads stay open without a token (README: set one when the
            // port is reachable).
            let r = api(remote, "GET", "/api/v1/streams", None);
            assert_eq!(r.status, 200, "GET from {ip}: {}", r.body);
            assert!(Sluice::find_stream(&r.json(), "live/cam1").is_some());
            // Changes do not, however often they are tried.
            for i in 0..100 {
                let r = api(remote, "POST", "/api/v1/encoders/probe", None);
                assert_eq!(r.status, 403, "POST #{i} from {ip}: {}", r.body);
                let why = r.json()["error"].as_str().unwrap_or_default().to_string();
                assert!(
                    why.contains("loopback") && why.contains("api_token"),
                    "{why}"
                );
            }
            let r = api(remote, "DELETE", "/api/v1/streams/live/cam1", None);
            assert_eq!(r.status, 403, "DELETE from {ip}: {}", r.body);
            assert_eq!(probes_run(), 0, "a re-probe ran for a remote client");
            assert!(
                server.metric(r#"sluice_auth_rejects_total{action="api",reason="not_loopback"}"#)
                    >= Some(101.0)
            );
        }
        None => eprintln!(
            "this machine has no address besides loopback: only the loopback \
             half runs here (http::tests covers the decision)"
        ),
    }

    // Loopback clients change things without a token, as before.
    let r = api(local, "POST", "/api/v1/encoders/probe", None);
    assert_eq!(r.status, 200, "POST from loopback: {}", r.body);
    assert!(poll_until(Duration::from_secs(5), || probes_run() == 1));
    assert_eq!(api(local, "GET", "/api/v1/streams", None).status, 200);
    server.wait_usage_back(base, "remote API changes");
    bystander.finish(3.0);
}
