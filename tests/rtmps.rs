//! RTMPS ingest (`server.rtmps_addr` with PEM `server.tls_cert` and
//! `server.tls_key`): ffmpeg publishes over TLS and the stream plays over
//! SRT; clients that never finish TLS are closed without disturbing a live
//! publish; drain treats RTMPS like RTMP; bad TLS files stop the start with
//! an error that names the key and the file.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::rtmp_client::{PublishOptions, RtmpPublisher};
use common::*;
use serde_json::Value;

/// A self-signed certificate for 127.0.0.1/localhost and its key, as PEM
/// files in `dir`.
fn self_signed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a self-signed certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn rtmps_config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server]\nrtmps_addr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
        cert.display().to_string(),
        key.display().to_string(),
    )
}

fn rtmps_addr(server: &Sluice) -> SocketAddr {
    log_field(server.listening_line(), "rtmps_addr")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "listening line lacks rtmps_addr: {}",
                server.listening_line()
            )
        })
}

fn video_frames(server: &Sluice, path: &str) -> u64 {
    server
        .stream(path)
        .and_then(|s| s["frames_in"]["video"].as_u64())
        .unwrap_or(0)
}

#[test]
fn ffmpeg_publishes_over_rtmps_hostile_tls_clients_are_closed_and_drain_applies() {
    let dir = TempDir::new("rtmps");
    let (cert, key) = self_signed(&dir);
    let mut server = Sluice::start(Some(&rtmps_config(
        &cert,
        &key,
        "drain_timeout = \"3s\"\n[rtmp]\nhandshake_timeout = \"2s\"\n",
    )));
    let tls_addr = rtmps_addr(&server);
    assert_ne!(tls_addr, server.rtmp_addr());

    // Debian's ffmpeg (gnutls) does not verify the certificate by default.
    let url = format!("rtmps://{tls_addr}/live/cam1");
    let mut ff = publish_fixture(&fixture_avc_aac(60), &url, PublishFor::Secs(30));
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(20),
    );
    assert!(server.metric_or_zero("sluice_rtmps_connections_total") >= 1.0);
    assert!(server.metric_or_zero(r#"sluice_rtmp_publishes_total{result="accepted"}"#) >= 1.0);

    // The RTMPS publish plays over SRT.
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &server.srt_url("live/cam1", ""),
        "-frames:v",
        "5",
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (st, _, err) = run_to_exit("ffmpeg play", cmd, Duration::from_secs(30));
    assert!(st.success(), "SRT play of the RTMPS stream failed: {err}");

    // Plain RTMP keeps working next to RTMPS.
    let mut plain = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("plain RTMP connect");
    assert!(plain.publish("plain").is_accepted());
    drop(plain);

    // Garbage on the TLS port: closed at once.
    let before = video_frames(&server, "live/cam1");
    let mut garbage = raw_connect(tls_addr);
    let _ = write_ignoring_close(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_closed(&mut garbage, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("garbage on the RTMPS port: {e}"));
    // An RTMP handshake (plaintext C0+C1) on the TLS port: closed at once.
    let mut rtmp_on_tls = raw_connect(tls_addr);
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    let _ = write_ignoring_close(&mut rtmp_on_tls, &c0c1);
    wait_closed(&mut rtmp_on_tls, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("plain RTMP on the RTMPS port: {e}"));
    // Half a ClientHello, then silence: closed at rtmp.handshake_timeout.
    let mut half = raw_connect(tls_addr);
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend([0x5au8; 32]);
    half.write_all(&hello).unwrap();
    let sent = Instant::now();
    wait_closed(&mut half, Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("half a ClientHello: {e}"));
    let held = sent.elapsed();
    assert!(
        held >= Duration::from_millis(1500),
        "a slow TLS client was closed after {held:?}, before rtmp.handshake_timeout (2s)"
    );
    server.wait_metric(
        r#"sluice_rtmp_connections_rejected_total{reason="tls_handshake"}"#,
        |v| v == Some(3.0),
        Duration::from_secs(5),
    );
    assert!(
        server.log_contains("tls_handshake"),
        "TLS failures are logged:\n{}",
        server.log_tail(20)
    );

    // The live RTMPS publish did not notice.
    assert!(ff.is_running(), "{}", ff.stderr().tail(20));
    assert!(
        poll_until(Duration::from_secs(5), || video_frames(
            &server,
            "live/cam1"
        ) > before + 30),
        "live/cam1 stopped receiving frames: {before} -> {}",
        video_frames(&server, "live/cam1")
    );

    // Drain: new RTMPS publishers are refused, the live one finishes, exit 0.
    let kill = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(
        poll_until(Duration::from_secs(2), || server.get("/readyz").0 == 503),
        "readyz not 503 after SIGTERM"
    );
    let mut late = publish_fixture(
        &fixture_avc_aac(60),
        &format!("rtmps://{tls_addr}/live/late"),
        PublishFor::Secs(5),
    );
    let status = late.expect_exit(Duration::from_secs(15));
    assert!(
        !status.success(),
        "an RTMPS publish started while draining succeeded"
    );
    let said = late.stderr().text();
    assert!(
        said.contains("draining") || said.contains("Rejected"),
        "the late publisher was not told why: {said}"
    );
    assert!(
        ff.is_running(),
        "the live RTMPS publisher must be allowed to finish during the drain"
    );
    let exit = server
        .wait_exit(Duration::from_secs(10))
        .expect("sluice did not exit after the drain timeout");
    assert!(exit.success(), "sluice exited with {exit}");
    ff.expect_exit(Duration::from_secs(10));
}

/// Runs sluice with `config` to its exit; returns (status, stderr).
fn start_fails(dir: &TempDir, config: &str) -> (std::process::ExitStatus, String) {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = sluice_command();
    cmd.args(ephemeral_args()).arg("--config").arg(&path);
    let (status, _, err) = run_to_exit("sluice", cmd, Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(2),
        "sluice must refuse a bad TLS config like any config error:\n{config}\n{err}"
    );
    (status, err)
}

#[test]
fn missing_or_bad_tls_files_stop_the_start_naming_the_key_and_file() {
    let dir = TempDir::new("rtmps-bad");
    let (cert, key) = self_signed(&dir);
    let missing = dir.join("nope.pem");

    let (_, err) = start_fails(&dir, &rtmps_config(&missing, &key, ""));
    assert!(
        err.contains("server.tls_cert") && err.contains("nope.pem"),
        "{err}"
    );
    assert!(!err.contains("\"listening\""), "{err}");

    let (_, err) = start_fails(&dir, &rtmps_config(&cert, &missing, ""));
    assert!(
        err.contains("server.tls_key") && err.contains("nope.pem"),
        "{err}"
    );

    // A file that holds no certificate (the key given as the cert).
    let (_, err) = start_fails(&dir, &rtmps_config(&key, &key, ""));
    assert!(err.contains("server.tls_cert"), "{err}");

    // A file that holds no key.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let (_, err) = start_fails(&dir, &rtmps_config(&cert, &junk, ""));
    assert!(
        err.contains("server.tls_key") && err.contains("junk.pem"),
        "{err}"
    );

    // A key that does not belong to the certificate.
    let other = TempDir::new("rtmps-other");
    let (_, other_key) = self_signed(&other);
    let (_, err) = start_fails(&dir, &rtmps_config(&cert, &other_key, ""));
    assert!(err.contains("server.tls_key"), "{err}");

    // rtmps_addr without the files.
    let (_, err) = start_fails(&dir, "[server]\nrtmps_addr = \"127.0.0.1:0\"\n");
    assert!(err.contains("server.rtmps_addr"), "{err}");
}

#[test]
fn without_rtmps_addr_the_listening_line_has_no_rtmps_addr() {
    let server = Sluice::start(None);
    assert!(
        log_field(server.listening_line(), "rtmps_addr").is_none(),
        "{}",
        server.listening_line()
    );
}
