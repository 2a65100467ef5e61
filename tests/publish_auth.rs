//! Publish authorization with static stream keys (`[apps.NAME.publish_keys]`,
//! plain or `sha256:` hashed): ffmpeg with the right key publishes and
//! plays; wrong, missing or unknown keys get `NetStream.Publish.BadName`
//! with the reason and are counted; other applications stay open.

mod common;

use std::process::Command;
use std::time::Duration;

use common::rtmp_client::{PublishOptions, PublishOutcome, RtmpPublisher};
use common::*;
use sluice::auth::Secret;

fn refused(server: &Sluice, app: &str, name: &str) -> String {
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), app, PublishOptions::default())
        .expect("rtmp connect");
    match p.publish(name) {
        PublishOutcome::Refused(st) => {
            assert_eq!(st.code, "NetStream.Publish.BadName", "{st:?}");
            st.description
        }
        other => panic!("{app}/{name}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn only_the_right_keys_publish() {
    let hashed = Secret::hash("hashed secret 2");
    let server = Sluice::start(Some(&format!(
        "[apps.live.publish_keys]\ncam1 = \"plain-secret-1\"\ncam2 = \"{hashed}\"\n"
    )));

    // ffmpeg keeps the query on the stream key: rtmp://host/live/cam1?key=...
    let fixture = fixture_avc_aac(60);
    let url = format!("{}?key=plain-secret-1", server.rtmp_url("live/cam1"));
    let _ff = publish_fixture(&fixture, &url, PublishFor::Secs(20));
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(15),
    );
    let play = server.srt_url("live/cam1", "");
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &play,
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

    // The hashed key, given on the application instead of the stream key.
    let mut p = RtmpPublisher::connect(
        server.rtmp_addr(),
        "live?key=hashed secret 2",
        PublishOptions::default(),
    )
    .unwrap();
    assert!(p.publish("cam2").is_accepted());

    let wrong = refused(&server, "live", "cam2?key=plain-secret-1");
    assert!(wrong.contains("wrong publish key"), "{wrong}");
    let missing = refused(&server, "live", "cam1");
    assert!(missing.contains("missing publish key"), "{missing}");
    let unknown = refused(&server, "live", "cam3?key=plain-secret-1");
    assert!(unknown.contains("not allowed"), "{unknown}");
    // A refused publisher did not disturb the live stream.
    assert!(server.stream("live/cam1").is_some());
    assert!(server.stream("live/cam3").is_none());

    server.wait_metric(
        r#"sluice_rtmp_publishes_total{result="rejected_unauthorized"}"#,
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
    for reason in ["wrong_key", "missing_key", "unknown_stream"] {
        let q = format!(r#"sluice_auth_rejects_total{{action="publish",reason="{reason}"}}"#);
        assert_eq!(server.metric(&q), Some(1.0), "{q}");
    }

    // Secrets never reach the log.
    assert!(!server.log_contains("plain-secret-1"));
    assert!(!server.log_contains("hashed secret 2"));

    // Applications that are not configured are refused, keyed or not.
    let unknown = refused(&server, "open", "anything");
    assert!(unknown.contains("unknown application"), "{unknown}");
}

#[test]
fn applications_without_keys_stay_open() {
    let server = Sluice::start(Some(
        "[apps.live.publish_keys]\ncam1 = \"plain-secret-1\"\n[apps.open]\n",
    ));
    let mut open =
        RtmpPublisher::connect(server.rtmp_addr(), "open", PublishOptions::default()).unwrap();
    assert!(open.publish("anything").is_accepted());
}

#[test]
fn hash_key_prints_a_usable_hash_and_bad_keys_stop_the_start() {
    let (st, out, _) = run_to_exit(
        "sluice --hash-key",
        {
            let mut c = sluice_command();
            c.args(["--hash-key", "from the command line"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(st.success());
    let secret = Secret::parse(out.trim()).expect("a sha256: line");
    assert!(secret.verify("from the command line"));

    let dir = TempDir::new("auth-config");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[apps.live.publish_keys]\ncam1 = \"short\"\n").unwrap();
    let (st, _, err) = run_to_exit(
        "sluice bad config",
        {
            let mut c = sluice_command();
            c.arg("--config").arg(&cfg);
            c
        },
        Duration::from_secs(10),
    );
    assert!(!st.success());
    assert!(err.contains("apps.live.publish_keys.cam1"), "{err}");
}

/// The test webhook's rule: 200 for `"key":"good-key"`, else 403; 3 s
/// late for stream `slow`.
fn publish_rule(v: &serde_json::Value) -> (u16, Duration) {
    let delay = if v["stream"] == "slow" {
        Duration::from_secs(3)
    } else {
        Duration::ZERO
    };
    (if v["key"] == "good-key" { 200 } else { 403 }, delay)
}

#[test]
fn a_webhook_decides_publishes_without_blocking_anyone() {
    let (port, seen) = webhook_server(publish_rule);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let server = Sluice::start(Some(&format!(
        "[apps.hooked]\npublish_webhook = \"http://127.0.0.1:{port}/auth\"\nwebhook_timeout = \"1s\"\n\
         [apps.down]\npublish_webhook = \"http://127.0.0.1:{closed_port}/auth\"\n"
    )));

    let mut ok =
        RtmpPublisher::connect(server.rtmp_addr(), "hooked", PublishOptions::default()).unwrap();
    assert!(ok.publish("cam1?key=good-key&camera=north").is_accepted());
    let body = seen.lock().unwrap()[0].clone();
    assert_eq!(body["action"], "publish");
    assert_eq!(body["protocol"], "rtmp");
    assert_eq!(body["path"], "hooked/cam1");
    assert_eq!(body["key"], "good-key");
    assert_eq!(body["query"]["camera"], "north");
    assert!(body["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));

    let denied = refused(&server, "hooked", "cam2?key=bad-key");
    assert!(denied.contains("webhook answered 403"), "{denied}");
    let down = refused(&server, "down", "cam3?key=good-key");
    assert!(down.contains("webhook unreachable"), "{down}");

    // A webhook that hangs costs only its own publish: another publish is
    // decided meanwhile, and the slow one is refused at the timeout.
    let addr = server.rtmp_addr();
    let slow = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let mut p = RtmpPublisher::connect(addr, "hooked", PublishOptions::default()).unwrap();
        let outcome = p.publish("slow?key=good-key");
        (outcome, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    let mut fast = RtmpPublisher::connect(addr, "hooked", PublishOptions::default()).unwrap();
    assert!(fast.publish("cam4?key=good-key").is_accepted());
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let (outcome, took) = slow.join().unwrap();
    match outcome {
        PublishOutcome::Refused(st) => {
            assert!(st.description.contains("did not answer"), "{st:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.wait_metric(
        r#"sluice_auth_rejects_total{action="publish",reason="webhook_denied"}"#,
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
}

/// A private CA and a certificate for 127.0.0.1 signed by it: the CA PEM
/// (for `server.webhook_ca`) and the server's TLS config.
fn private_ca(dir: &TempDir) -> (std::path::PathBuf, std::sync::Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let ca_pem = dir.join("webhook-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (ca_pem, std::sync::Arc::new(config))
}

#[test]
fn an_https_webhook_is_trusted_through_webhook_ca_and_an_untrusted_one_denies() {
    let dir = TempDir::new("https-webhook");
    let (ca_pem, tls) = private_ca(&dir);
    let (port, seen) = webhook_server_tls(publish_rule, tls.clone());
    let (other_port, other_seen) = webhook_server_tls(publish_rule, tls);
    let server = Sluice::start(Some(&format!(
        "[server]\nwebhook_ca = {:?}\n\
         [apps.hooked]\npublish_webhook = \"https://127.0.0.1:{port}/auth\"\n\
         [apps.plain]\npublish_webhook = \"http://127.0.0.1:{other_port}/auth\"\n",
        ca_pem.display().to_string()
    )));
    let mut ok =
        RtmpPublisher::connect(server.rtmp_addr(), "hooked", PublishOptions::default()).unwrap();
    assert!(ok.publish("cam1?key=good-key").is_accepted());
    assert_eq!(seen.lock().unwrap()[0]["path"], "hooked/cam1");
    let denied = refused(&server, "hooked", "cam2?key=bad-key");
    assert!(denied.contains("webhook answered 403"), "{denied}");
    // Plain HTTP to a TLS server: no answer it can read, so denied.
    let plain = refused(&server, "plain", "cam3?key=good-key");
    assert!(plain.contains("webhook"), "{plain}");
    assert!(other_seen.lock().unwrap().is_empty());

    // Without the private CA the same webhook is not trusted: denied, with
    // the TLS reason.
    let untrusting = Sluice::start(Some(&format!(
        "[apps.hooked]\npublish_webhook = \"https://127.0.0.1:{port}/auth\"\n"
    )));
    let why = refused(&untrusting, "hooked", "cam4?key=good-key");
    assert!(why.contains("webhook unreachable: TLS"), "{why}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the untrusted call reached the hook"
    );

    // A webhook_ca that is not a certificate stops the start, naming the key.
    let bad = dir.join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let mut cmd = sluice_command();
    cmd.args(ephemeral_args());
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nwebhook_ca = {:?}\n", bad.display().to_string()),
    )
    .unwrap();
    cmd.arg("--config").arg(&cfg);
    let (status, _, err) =
        run_to_exit("sluice with a bad webhook_ca", cmd, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("server.webhook_ca"), "{err}");
}
