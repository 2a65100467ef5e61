//! Configuration and command line: bad configs stop the binary at start with
//! a message naming the key; every documented key is accepted; values take
//! effect; `--help` works; no configuration at all serves.

mod common;

use std::io::Write;
use std::time::Duration;

use common::rtmp_client::{
    basic_header, connect_and_publish, handshake, ChunkWriter, PublishOptions, MSG_SET_CHUNK_SIZE,
    MSG_VIDEO,
};
use common::*;

/// Runs sluice with `config` (if any) and `args`; it must exit non-zero
/// within 20 s, and stderr must contain every one of `needles`.
fn expect_startup_error(config: Option<&str>, args: &[&str], needles: &[&str]) -> String {
    let dir = TempDir::new("config");
    let mut cmd = sluice_command();
    if let Some(c) = config {
        let p = dir.join("sluice.toml");
        std::fs::write(&p, c).unwrap();
        cmd.arg("--config").arg(p);
    }
    cmd.args(args);
    let mut child = ChildGuard::spawn("sluice", cmd);
    let Some(status) = child.wait_exit(Duration::from_secs(20)) else {
        panic!(
            "sluice kept running with an invalid configuration {config:?} / args {args:?}; \
             stderr:\n{}",
            child.stderr().tail(20)
        );
    };
    // Let the capture threads drain.
    poll_until(Duration::from_secs(2), || {
        needles.iter().all(|n| child.stderr().contains(n))
    });
    let stderr = child.stderr().text();
    assert!(
        !status.success(),
        "sluice exited successfully with an invalid configuration {config:?}; stderr:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr does not name {n:?} for config {config:?} / args {args:?}:\n{stderr}"
        );
    }
    stderr
}

/// Ephemeral addresses for the listeners the config under test does not set.
const PORT_FLAGS: &[&str] = &[
    "--rtmp-addr",
    "127.0.0.1:0",
    "--http-addr",
    "127.0.0.1:0",
    "--srt-addr",
    "127.0.0.1:0",
];
const HTTP_SRT_FLAGS: &[&str] = &["--http-addr", "127.0.0.1:0", "--srt-addr", "127.0.0.1:0"];

#[test]
fn unknown_key_is_rejected_and_named() {
    expect_startup_error(
        Some("[rtmp]\nmax_conections = 10\n"),
        PORT_FLAGS,
        &["max_conections"],
    );
}

#[test]
fn an_unknown_join_mode_is_rejected_and_the_modes_named() {
    expect_startup_error(
        Some("[apps.live]\njoin = \"soon\"\n"),
        PORT_FLAGS,
        &["join", "soon", "live", "cache", "keyframe"],
    );
}

#[test]
fn unknown_section_is_rejected_and_named() {
    expect_startup_error(
        Some("[transcoding]\nenabled = true\n"),
        PORT_FLAGS,
        &["transcoding"],
    );
}

#[test]
fn bad_rtmp_address_is_rejected_and_named() {
    expect_startup_error(
        Some("[server]\nrtmp_addr = \"nope\"\n"),
        HTTP_SRT_FLAGS,
        &["server.rtmp_addr"],
    );
}

#[test]
fn bad_http_address_is_rejected_and_named() {
    expect_startup_error(
        Some("[server]\nhttp_addr = \"127.0.0.1:99999\"\n"),
        &["--rtmp-addr", "127.0.0.1:0", "--srt-addr", "127.0.0.1:0"],
        &["server.http_addr"],
    );
}

#[test]
fn zero_max_chunk_streams_is_rejected_and_named() {
    expect_startup_error(
        Some("[rtmp]\nmax_chunk_streams = 0\n"),
        PORT_FLAGS,
        &["rtmp.max_chunk_streams"],
    );
}

#[test]
fn unparsable_duration_is_rejected_and_named() {
    expect_startup_error(
        Some("[rtmp]\nhandshake_timeout = \"soon\"\n"),
        PORT_FLAGS,
        &["rtmp.handshake_timeout"],
    );
}

#[test]
fn wrong_value_type_is_rejected_and_named() {
    expect_startup_error(
        Some("[rtmp]\nmax_connections = \"many\"\n"),
        PORT_FLAGS,
        &["rtmp.max_connections"],
    );
}

#[test]
fn bad_log_format_in_config_is_rejected_and_named() {
    expect_startup_error(
        Some("[server]\nlog_format = \"xml\"\n"),
        PORT_FLAGS,
        &["server.log_format"],
    );
}

#[test]
fn bad_takeover_value_is_rejected_and_named() {
    expect_startup_error(
        Some("[apps.live]\ntakeover = \"yes\"\n"),
        PORT_FLAGS,
        &["takeover"],
    );
}

/// `server.setup_timeout` is 1 s to 1 h: `0s` would close every
/// connection before it could publish, and a value past `Instant`'s range
/// would panic every connection task. Both bounds serve and publish.
#[test]
fn setup_timeout_out_of_range_is_rejected_and_named() {
    for (bad, why) in [
        ("0s", "1s..=1h"),
        ("999ms", "1s..=1h"),
        ("61m", "1s..=1h"),
        ("18446744073709551615s", "24h"),
    ] {
        let stderr = expect_startup_error(
            Some(&format!("[server]\nsetup_timeout = \"{bad}\"\n")),
            PORT_FLAGS,
            &["server.setup_timeout", why],
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Every other duration has the same outer bound: a value past
    // `Instant`'s range panicked a connection task at its first message.
    for key in [
        "rtmp.idle_timeout",
        "rtmp.handshake_timeout",
        "server.drain_timeout",
    ] {
        let (section, name) = key.split_once('.').unwrap();
        expect_startup_error(
            Some(&format!(
                "[{section}]\n{name} = \"18446744073709551615s\"\n"
            )),
            PORT_FLAGS,
            &[key, "24h"],
        );
    }
    for good in ["1s", "1h"] {
        let server = Sluice::start(Some(&format!("[server]\nsetup_timeout = \"{good}\"\n")));
        let publisher =
            connect_and_publish(server.rtmp_addr(), "live/bound", PublishOptions::default());
        publisher.close();
        assert!(!server.log_contains("panicked"), "{}", server.log_tail(20));
    }
}

#[test]
fn invalid_toml_is_rejected() {
    expect_startup_error(Some("[rtmp\nchunk_size = 4096\n"), PORT_FLAGS, &[]);
}

#[test]
fn missing_config_file_is_rejected_and_named() {
    let path =
        std::env::temp_dir().join(format!("sluice-no-such-config-{}.toml", std::process::id()));
    let p = path.to_str().unwrap();
    let mut args = vec!["--config", p];
    args.extend_from_slice(PORT_FLAGS);
    expect_startup_error(None, &args, &[p]);
}

/// `[server] api_token` / `api_token_file` / `--api-token-file`: each
/// mistake stops the start, names the key, and never prints the token.
#[test]
fn bad_api_tokens_are_rejected_and_named_without_the_token() {
    let stderr = expect_startup_error(
        Some("[server]\napi_token = \"short-token\"\n"),
        PORT_FLAGS,
        &["server.api_token", "at least 16"],
    );
    assert!(!stderr.contains("short-token"), "{stderr}");
    expect_startup_error(
        Some("[server]\napi_token = \"has a space 0123456789\"\n"),
        PORT_FLAGS,
        &["server.api_token", "spaces"],
    );
    expect_startup_error(
        Some("[server]\napi_token = 1234567890123456789\n"),
        PORT_FLAGS,
        &["server.api_token"],
    );

    let dir = TempDir::new("api-token");
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    let both = format!(
        "[server]\napi_token = \"0123456789abcdef0123\"\napi_token_file = {:?}\n",
        token.display().to_string()
    );
    expect_startup_error(
        Some(&both),
        PORT_FLAGS,
        &["server.api_token", "server.api_token_file", "not both"],
    );

    let missing = dir.join("missing");
    let m = missing.to_str().unwrap();
    expect_startup_error(
        Some(&format!("[server]\napi_token_file = {m:?}\n")),
        PORT_FLAGS,
        &["server.api_token_file", m],
    );
    let mut args = vec!["--api-token-file", m];
    args.extend_from_slice(PORT_FLAGS);
    expect_startup_error(None, &args, &["server.api_token_file", m]);

    let short = dir.join("short");
    std::fs::write(&short, "short-in-file\n").unwrap();
    let s = short.to_str().unwrap();
    let mut args = vec!["--api-token-file", s];
    args.extend_from_slice(PORT_FLAGS);
    let stderr = expect_startup_error(None, &args, &["server.api_token_file", s, "at least 16"]);
    assert!(!stderr.contains("short-in-file"), "{stderr}");
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let e = empty.to_str().unwrap();
    let mut args = vec!["--api-token-file", e];
    args.extend_from_slice(PORT_FLAGS);
    expect_startup_error(None, &args, &["server.api_token_file", e, "empty"]);
}

#[test]
fn bad_command_line_values_are_rejected() {
    expect_startup_error(
        None,
        &[
            "--rtmp-addr",
            "nope",
            "--http-addr",
            "127.0.0.1:0",
            "--srt-addr",
            "127.0.0.1:0",
        ],
        &["nope"],
    );
    let mut args = vec!["--log-format", "xml"];
    args.extend_from_slice(PORT_FLAGS);
    expect_startup_error(None, &args, &["xml"]);
    let mut args = vec!["--no-such-flag"];
    args.extend_from_slice(PORT_FLAGS);
    expect_startup_error(None, &args, &["--no-such-flag"]);
}

#[test]
fn help_lists_the_flags_and_exits_zero() {
    let mut cmd = sluice_command();
    cmd.arg("--help");
    let (status, stdout, stderr) = run_to_exit("sluice --help", cmd, Duration::from_secs(20));
    assert!(status.success(), "--help failed: {stderr}");
    for flag in [
        "--config",
        "--rtmp-addr",
        "--srt-addr",
        "--http-addr",
        "--log-format",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[test]
fn no_configuration_serves_with_defaults() {
    let server = Sluice::start(None);
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(server.streams(), serde_json::json!([]));
}

/// Every key of the documented configuration, with the documented example
/// values (listeners moved to ephemeral loopback ports).
const FULL_CONFIG: &str = r#"
[server]
rtmp_addr = "127.0.0.1:0"
srt_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
log_format = "json"
drain_timeout = "30s"

[rtmp]
max_connections = 1024
max_message_size = 8388608
max_chunk_streams = 64
max_amf_depth = 32
handshake_timeout = "500ms"
idle_timeout = "2m"
chunk_size = 4096
window_ack_size = 2500000

[apps.live]
takeover = false

[apps.studio]
takeover = true
"#;

#[test]
fn every_documented_key_is_accepted_and_addresses_come_from_the_config() {
    // No command line flags: listeners and log format come from the file.
    let server = Sluice::start_raw(Some(FULL_CONFIG), vec![]);
    for addr in [server.rtmp_addr(), server.http_addr()] {
        assert!(
            addr.ip().is_loopback(),
            "{addr} is not the configured 127.0.0.1"
        );
        assert_ne!(addr.port(), 0);
    }
    assert_eq!(server.get("/healthz").0, 200);
}

/// The application policy in force is logged once at start: which
/// applications are configured and what happens to every other one (an
/// upgrade from before the unknown-application policy must be able to see
/// that its `[apps.live]` now refuses the rest). The shipped example
/// config behaves as no config at all: every application is served.
#[test]
fn the_application_policy_is_logged_at_start() {
    let example = include_str!("../deploy/sluice.example.toml");
    for (config, configured, unknown) in [
        (None, "", "open"),
        (
            Some("[apps.live]\n[apps.studio]\n"),
            "live,studio",
            "refused",
        ),
        (
            Some("[apps.live]\n[apps.\"*\"]\n"),
            "live",
            "default section",
        ),
        (Some(example), "", "default section"),
    ] {
        let server = Sluice::start(config);
        let line = server.wait_log_fields(&[("message", "applications")], Duration::from_secs(5));
        let field = |k: &str| log_field(&line, k).and_then(|v| v.as_str().map(str::to_string));
        assert_eq!(field("configured").as_deref(), Some(configured), "{line}");
        assert_eq!(field("unknown").as_deref(), Some(unknown), "{line}");
        assert_eq!(field("level").as_deref(), Some("INFO"), "{line}");
        if config == Some(example) {
            let publisher =
                connect_and_publish(server.rtmp_addr(), "anyapp/cam1", PublishOptions::default());
            publisher.close();
        }
    }
}

/// `[apps."*"]` that pushes while no key or webhook guards its publishes
/// lets anyone publish under any name into those destinations: allowed
/// (a private network may want it), but said at start, without the push
/// URL's secrets.
#[test]
fn an_open_default_section_that_pushes_warns_at_start() {
    let push = "push = [\"srt://127.0.0.1:9?streamid=secret-sid&passphrase=secret-pass\"]\n";
    let server = Sluice::start(Some(&format!("[apps.\"*\"]\n{push}")));
    let line = server.wait_log_fields(
        &[(
            "message",
            "[apps.\"*\"] pushes without publish authentication",
        )],
        Duration::from_secs(5),
    );
    assert_eq!(
        log_field(&line, "level").and_then(|v| v.as_str()),
        Some("WARN")
    );
    let text = line.to_string();
    assert!(text.contains("srt://127.0.0.1:9"), "{text}");
    assert!(text.contains("any application name"), "{text}");
    assert!(!text.contains("secret-"), "{text}");
    // Guarded by keys or a webhook, or only a named application: no warning.
    for guarded in [
        format!("[apps.\"*\"]\n{push}[apps.\"*\".publish_keys]\ncam1 = \"long enough key\"\n"),
        format!("[apps.\"*\"]\n{push}publish_webhook = \"http://127.0.0.1:9/hook\"\n"),
        format!("[apps.live]\n{push}"),
    ] {
        let server = Sluice::start(Some(&guarded));
        server.wait_log_fields(&[("message", "applications")], Duration::from_secs(5));
        assert!(
            !server.log_contains("without publish authentication"),
            "{guarded}: {}",
            server.log_tail(20)
        );
    }
}

/// A keyed application beside an open `[apps."*"]` is an open relay one
/// letter away (`Live/x`): said at start, naming the applications.
#[test]
fn an_open_default_section_beside_authenticated_applications_warns_at_start() {
    let keyed = "[apps.live.publish_keys]\ncam1 = \"long enough key\"\n";
    let server = Sluice::start(Some(&format!("[apps.\"*\"]\n{keyed}")));
    let line = server.wait_log_fields(
        &[(
            "message",
            "[apps.\"*\"] is open beside authenticated applications",
        )],
        Duration::from_secs(5),
    );
    assert_eq!(
        log_field(&line, "level").and_then(|v| v.as_str()),
        Some("WARN")
    );
    assert_eq!(
        log_field(&line, "guarded").and_then(|v| v.as_str()),
        Some("live")
    );
    assert!(!line.to_string().contains("long enough key"), "{line}");
    // A guarded default section, or none: no warning.
    for quiet in [
        format!("[apps.\"*\"]\npublish_webhook = \"http://127.0.0.1:9/hook\"\n{keyed}"),
        keyed.to_string(),
    ] {
        let server = Sluice::start(Some(&quiet));
        server.wait_log_fields(&[("message", "applications")], Duration::from_secs(5));
        assert!(
            !server.log_contains("open beside authenticated"),
            "{quiet}: {}",
            server.log_tail(20)
        );
    }
}

#[test]
fn configured_max_chunk_streams_is_enforced() {
    let server = Sluice::start(Some("[rtmp]\nmax_chunk_streams = 4\n"));
    let mut sock = raw_connect(server.rtmp_addr());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    handshake(&mut sock).expect("handshake");
    // Eight chunk streams, each with a started (incomplete) message.
    for csid in 10..18u32 {
        let mut c = basic_header(0, csid);
        c.extend_from_slice(&[0, 0, 0, 0, 0, 200, MSG_VIDEO, 1, 0, 0, 0]);
        c.extend_from_slice(&[0x17; 128]);
        if sock.write_all(&c).is_err() {
            break;
        }
    }
    wait_closed(&mut sock, Duration::from_secs(10))
        .expect("server kept a connection with 8 chunk streams open (max_chunk_streams = 4)");
    server.wait_metric(
        r#"sluice_rtmp_protocol_errors_total{reason="too_many_chunk_streams"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
}

#[test]
fn configured_max_message_size_is_enforced() {
    let server = Sluice::start(Some("[rtmp]\nmax_message_size = 65536\n"));
    let mut sock = raw_connect(server.rtmp_addr());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    handshake(&mut sock).expect("handshake");
    // A 100 000-byte message announced on csid 6 (below the 8 MiB default).
    let mut w = ChunkWriter::default();
    let mut wire = w.message(2, MSG_SET_CHUNK_SIZE, 0, 0, &4096u32.to_be_bytes());
    w.chunk_size = 4096;
    wire.extend(w.message(6, MSG_VIDEO, 1, 0, &vec![0x17; 100_000]));
    let _ = sock.write_all(&wire);
    wait_closed(&mut sock, Duration::from_secs(10))
        .expect("server accepted a 100 000-byte message with max_message_size = 65536");
    server.wait_metric(
        r#"sluice_rtmp_protocol_errors_total{reason="message_too_large"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
}

/// `[cluster]`: missing keys stop the start naming them, a secret never
/// reaches stderr, an unset `${VAR}` in `advertise_srt` is named; and a
/// node whose Redis does not answer starts anyway (streams go on
/// node-locally) and says so in `/readyz` without failing it.
#[test]
fn cluster_keys_are_checked_and_an_unreachable_redis_does_not_stop_the_start() {
    let ok = "redis_url = \"redis://127.0.0.1:1\"\nadvertise_srt = \"127.0.0.1:9000\"\n";
    expect_startup_error(
        Some(&format!("[cluster]\n{ok}")),
        &[
            "--rtmp-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--srt-addr",
            "127.0.0.1:0",
        ],
        &["cluster.secret"],
    );
    let err = expect_startup_error(
        Some("[cluster]\nredis_url = \"redis://127.0.0.1:1\"\nadvertise_srt = \"${SLUICE_TEST_UNSET_VAR}:9000\"\nsecret = \"a-very-secret-cluster-key\"\n"),
        &["--rtmp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--srt-addr", "127.0.0.1:0"],
        &["cluster.advertise_srt", "SLUICE_TEST_UNSET_VAR"],
    );
    assert!(!err.contains("a-very-secret-cluster-key"), "{err}");
    expect_startup_error(
        Some("[cluster]\nredis_url = \"http://127.0.0.1:1\"\nadvertise_srt = \"h:1\"\nsecret = \"a-very-secret-cluster-key\"\n"),
        &[],
        &["cluster.redis_url"],
    );
    // Port 1 refuses at once: Redis is unreachable.
    let server = Sluice::start(Some(&format!(
        "[cluster]\n{ok}secret = \"a-very-secret-cluster-key\"\nnode_id = \"lonely\"\n"
    )));
    server.wait_log_fields(
        &[(
            "message",
            "cluster directory unreachable at start; publishing node-locally until it answers",
        )],
        Duration::from_secs(5),
    );
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cluster"]["redis"], "unreachable", "{v}");
    assert_eq!(v["cluster"]["node_id"], "lonely", "{v}");
    assert!(!server.log().contains("a-very-secret-cluster-key"));
    // A publish goes on node-locally, its claim pending.
    let publisher = connect_and_publish(server.rtmp_addr(), "live/cam1", PublishOptions::default());
    let readyz =
        || -> serde_json::Value { serde_json::from_str(&server.get("/readyz").1).unwrap() };
    assert!(
        poll_until(Duration::from_secs(5), || readyz()["cluster"]
            ["claims_pending"]
            == 1),
        "{}",
        readyz()
    );
    publisher.close();
}
