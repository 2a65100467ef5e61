//! Live config reload (`SIGHUP`, `POST /api/v1/config/reload`) on the real
//! process: publish keys, read tokens and the API token it adds or removes
//! apply to what starts afterwards while a stream from before plays on
//! without losing a frame; an invalid file or a restart-only change keeps
//! the running configuration and says which key; every outcome is counted;
//! a reload swaps the RTMPS certificate for new connections.

mod common;

use std::time::Duration;

use common::rtmp_client::{PublishOptions, PublishOutcome, RtmpPublisher};
use common::*;
use serde_json::Value;

const KEY1: &str = "key-one-0123456789";
const KEY2: &str = "key-two-0123456789";
const KEY3: &str = "key-three-0123456789";
const API_TOKEN: &str = "reload-api-token-0123456789";

/// Publish `app/name` (the key in `name`'s query) with the test's RTMP
/// client: the publisher when accepted, else the refusal's description.
fn try_publish(server: &Sluice, app: &str, name: &str) -> Result<RtmpPublisher, String> {
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), app, PublishOptions::default())
        .expect("rtmp connect");
    match p.publish(name) {
        PublishOutcome::Accepted => Ok(p),
        PublishOutcome::Refused(st) => Err(st.description),
        other => panic!("{app}/{name}: neither accepted nor refused: {other:?}"),
    }
}

/// The refusal's description of a publish that must be refused.
fn refusal(server: &Sluice, app: &str, name: &str) -> String {
    match try_publish(server, app, name) {
        Ok(_) => panic!("{app}/{name} was accepted"),
        Err(why) => why,
    }
}

fn log_str<'a>(line: &'a Value, key: &str) -> &'a str {
    log_field(line, key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("log line without `{key}`: {line}"))
}

fn reloads(server: &Sluice, result: &str) -> f64 {
    server.metric_or_zero(&format!(
        r#"sluice_config_reloads_total{{result="{result}"}}"#
    ))
}

#[test]
fn keys_added_and_removed_by_sighup_apply_to_new_publishes_while_a_running_stream_loses_no_frame() {
    let server = Sluice::start(Some(&format!(
        "[apps.live.publish_keys]\ncam1 = \"{KEY1}\"\ncam3 = \"{KEY3}\"\n"
    )));
    let bystander = Bystander::start(&server, "live/cam1", &format!("?key={KEY1}"), "", 20);
    let refused = refusal(&server, "live", &format!("cam2?key={KEY2}"));
    assert!(refused.contains("not allowed"), "{refused}");

    // cam2 gets a key; cam1's (in use by the live stream) and cam3's go.
    server.write_config(&format!("[apps.live.publish_keys]\ncam2 = \"{KEY2}\"\n"));
    let line = server.sighup();
    assert_eq!(log_str(&line, "message"), "config reloaded", "{line}");
    assert_eq!(log_str(&line, "trigger"), "SIGHUP");
    assert_eq!(log_str(&line, "changed"), "apps.live");

    let cam2 = try_publish(&server, "live", &format!("cam2?key={KEY2}"));
    assert!(
        cam2.is_ok(),
        "the key added by the reload: {:?}",
        cam2.err()
    );
    let refused = refusal(&server, "live", &format!("cam3?key={KEY3}"));
    assert!(refused.contains("not allowed"), "{refused}");
    // The stream published with the removed key plays on, the same one.
    let before = server.stream("live/cam1").expect("live/cam1 is live");
    std::thread::sleep(Duration::from_secs(3));
    let after = server.stream("live/cam1").expect("live/cam1 is still live");
    assert!(
        json_f64(&after, "/uptime_seconds") > json_f64(&before, "/uptime_seconds"),
        "live/cam1 restarted: {before} then {after}"
    );
    let (frames, secs) = bystander.finish(6.0);
    println!("bystander across the reload: {frames} frames over {secs:.1} s");
    assert_eq!(reloads(&server, "ok"), 1.0);
    // Neither the log nor the reload line shows a key.
    for key in [KEY1, KEY2, KEY3] {
        assert!(!server.log_contains(key), "{key} reached the log");
    }
}

#[test]
fn the_api_reloads_under_its_authorization_and_the_flags_still_win() {
    // The file names another RTMP address: `--rtmp-addr` overrides it at
    // the start and again at every reload, so it is no change.
    let server = Sluice::start(Some("[server]\nrtmp_addr = \"127.0.0.1:1\"\n"));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["changed"], serde_json::json!([]), "{v}");

    // The reload brings an API token: from now on the endpoint needs it.
    server.write_config(&format!(
        "[server]\nrtmp_addr = \"127.0.0.1:1\"\napi_token = \"{API_TOKEN}\"\n"
    ));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], serde_json::json!(["server"]));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = server.post_reload(&[("Authorization", "Bearer wrong-token-0123456789")]);
    assert_eq!(r.status, 401, "{}", r.body);
    let bearer = format!("Bearer {API_TOKEN}");
    let r = server.post_reload(&[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], "ok");
    assert_eq!(server.get("/api/v1/streams").0, 401);
    // /metrics stays open.
    assert_eq!(reloads(&server, "ok"), 3.0);
    assert!(!server.log_contains(API_TOKEN));
}

#[test]
fn an_invalid_file_keeps_the_running_config_and_names_the_key() {
    let config = format!("[apps.live.publish_keys]\ncam1 = \"{KEY1}\"\n");
    let server = Sluice::start(Some(&config));

    server.write_config(&format!("{config}[rtmp\n"));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"], "invalid", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("sluice.toml is not valid TOML"), "{e}");
    assert!(e.contains("running configuration is kept"), "{e}");

    // A bad value: the key is named in the answer and in the log (SIGHUP).
    server.write_config(&format!(
        "[apps.live.publish_keys]\ncam1 = \"{KEY1}\"\ncam2 = \"{KEY2}\"\n[rtmp]\nmax_streams = 0\n"
    ));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("`rtmp.max_streams`"), "{e}");
    let line = server.sighup();
    assert_eq!(log_str(&line, "message"), "config not reloaded", "{line}");
    assert_eq!(log_str(&line, "result"), "invalid");
    assert!(
        log_str(&line, "error").contains("`rtmp.max_streams`"),
        "{line}"
    );
    // An unreadable token file is invalid too, named by its key.
    server.write_config(&format!(
        "{config}[server]\napi_token_file = \"/nonexistent/sluice-token\"\n"
    ));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("server.api_token_file"), "{e}");

    // The old configuration still runs: cam1's key publishes, cam2's does
    // not exist, and there is no API token.
    let cam1 = try_publish(&server, "live", &format!("cam1?key={KEY1}"));
    assert!(cam1.is_ok(), "{:?}", cam1.err());
    assert!(try_publish(&server, "live", &format!("cam2?key={KEY2}")).is_err());
    assert_eq!(server.get("/api/v1/streams").0, 200);
    assert_eq!(reloads(&server, "invalid"), 4.0);
    assert_eq!(reloads(&server, "ok"), 0.0);
}

#[test]
fn a_restart_only_change_is_refused_by_name_and_without_a_file_there_is_nothing_to_reload() {
    // The RTMP address from the file (no --rtmp-addr flag).
    let config = format!(
        "[server]\nrtmp_addr = \"127.0.0.1:0\"\n[apps.live.publish_keys]\ncam1 = \"{KEY1}\"\n"
    );
    let args = [
        "--http-addr",
        "127.0.0.1:0",
        "--srt-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ];
    let server = Sluice::start_raw(Some(&config), args.iter().map(|s| s.to_string()).collect());
    server.write_config(&format!(
        "[server]\nrtmp_addr = \"127.0.0.1:1\"\n[apps.live.publish_keys]\ncam1 = \"{KEY1}\"\ncam2 = \"{KEY2}\"\n"
    ));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 409, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"], "refused", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.starts_with("server.rtmp_addr changed; restart sluice to change it"),
        "{e}"
    );
    // Nothing of the refused file applies.
    assert!(try_publish(&server, "live", &format!("cam2?key={KEY2}")).is_err());
    assert!(try_publish(&server, "live", &format!("cam1?key={KEY1}")).is_ok());
    assert_eq!(reloads(&server, "refused"), 1.0);

    let mut bare = Sluice::start(None);
    let r = bare.post_reload(&[]);
    assert_eq!(r.status, 409, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--config"), "{v}");
    let line = bare.sighup();
    assert_eq!(log_str(&line, "result"), "error", "{line}");
    bare.assert_alive("after SIGHUP without a config file");
    assert_eq!(reloads(&bare, "error"), 2.0);
}

#[test]
fn a_read_token_added_by_reload_lets_a_new_player_in() {
    let config = "[apps.live.read_tokens]\nalice = \"alice-token-0123\"\n";
    let server = Sluice::start(Some(config));
    let _publisher = publish_fixture(
        &fixture_avc_aac(60),
        &server.rtmp_url("live/cam1"),
        PublishFor::Secs(30),
    );
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(20),
    );
    let dir = TempDir::new("reload-srt");
    let addr = server.srt_addr();
    let alice = "#!::r=live/cam1,u=alice,s=alice-token-0123";
    let bob = "#!::r=live/cam1,u=bob,s=bob-token-0123";
    assert_eq!(libsrt_connect(&dir, addr, alice, ""), "connected");
    assert_eq!(libsrt_connect(&dir, addr, bob, ""), "rejected 1403");

    server.write_config(&format!("{config}bob = \"bob-token-0123\"\n"));
    let line = server.sighup();
    assert_eq!(log_str(&line, "message"), "config reloaded", "{line}");
    assert_eq!(libsrt_connect(&dir, addr, bob, ""), "connected");
    assert_eq!(libsrt_connect(&dir, addr, alice, ""), "connected");
    // And ffmpeg plays it with bob's token.
    let url = server.srt_url("%23!::r=live/cam1,u=bob,s=bob-token-0123", "");
    let mut cmd = std::process::Command::new(require_ffmpeg());
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &url,
        "-frames:v",
        "5",
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (st, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(30));
    assert!(st.success(), "{err}");
    assert!(!server.log_contains("bob-token-0123"));
}

/// A self-signed certificate for localhost and its key, as PEM files
/// `NAME.pem` and `NAME.key` in `dir`; returns their paths and the
/// certificate (DER).
fn self_signed(
    dir: &TempDir,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls_pki_types::CertificateDer<'static>,
) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("generate a self-signed certificate");
    let (cert, key) = (
        dir.join(&format!("{name}.pem")),
        dir.join(&format!("{name}.key")),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

/// Whether a TLS handshake with `addr` succeeds trusting only `root`: the
/// server presents that certificate.
fn presents(addr: std::net::SocketAddr, root: &rustls_pki_types::CertificateDer<'static>) -> bool {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

#[test]
fn a_reload_swaps_the_rtmps_certificate_for_new_connections() {
    let dir = TempDir::new("reload-tls");
    let (cert_a, key_a, der_a) = self_signed(&dir, "a");
    let (cert_b, key_b, der_b) = self_signed(&dir, "b");
    let config = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[server]\nrtmps_addr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let server = Sluice::start(Some(&config(&cert_a, &key_a)));
    let addr: std::net::SocketAddr = log_str(server.listening_line(), "rtmps_addr")
        .parse()
        .unwrap();
    assert!(presents(addr, &der_a) && !presents(addr, &der_b));

    // A key file that is not there: refused by name, certificate A stays.
    server.write_config(&config(&cert_b, &dir.join("missing.key")));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("server.tls_key"), "{}", r.body);
    assert!(presents(addr, &der_a));

    server.write_config(&config(&cert_b, &key_b));
    let r = server.post_reload(&[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(presents(addr, &der_b) && !presents(addr, &der_a));
}
