//! RTMP(S) restream legs, end to end with real peers: a stream published
//! to sluice A is restreamed to a second sluice (B) and plays cleanly
//! there over SRT; FFmpeg's own RTMP server (`-listen 1`) records a clean
//! FLV; HEVC goes out as Enhanced RTMP; RTMPS verifies the destination's
//! certificate (trusted through SSL_CERT_FILE, refused otherwise); the
//! destination's refusal text reaches A's log without the stream key; an
//! optional leg to a dead address retries while the stream plays, then
//! connects once the destination is up; a required one fails the publish.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flv::{self, FlvTag};
use common::rtmp_client::{BackgroundPublish, PublishOptions};
use common::*;
use serde_json::Value;

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sluice with its RTMP listener on `port` (the rest ephemeral).
fn start_on_rtmp_port(port: u16, config: Option<&str>) -> Sluice {
    let mut args = ephemeral_args();
    let i = args.iter().position(|a| a == "--rtmp-addr").unwrap();
    args[i + 1] = format!("127.0.0.1:{port}");
    Sluice::start_raw(config, args)
}

/// `extra` (top-level sections) first, then `[apps.live]` pushing to `url`.
fn push_config(url: &str, extra: &str) -> String {
    format!("{extra}[apps.live]\npush = [\"{url}\"]\n")
}

fn ffprobe(args: &[&str]) -> String {
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error"]).args(args);
    let (status, out, err) = run_to_exit("ffprobe", c, Duration::from_secs(30));
    assert!(status.success(), "ffprobe {args:?}: {err}");
    out
}

/// Codec names of a media file, in stream order.
fn codecs(file: &Path) -> Vec<String> {
    let f = file.to_str().unwrap();
    let out = ffprobe(&["-show_entries", "stream=codec_name", "-of", "json", f]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ffprobe json {e}: {out}"));
    v["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["codec_name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `key_frame,pict_type` of the first decoded video frame.
fn first_video_frame(file: &Path) -> String {
    let f = file.to_str().unwrap();
    let out = ffprobe(&[
        "-select_streams",
        "v:0",
        "-read_intervals",
        "%+#1",
        "-show_entries",
        "frame=key_frame,pict_type",
        "-of",
        "csv=p=0",
        f,
    ]);
    let first = out.lines().next().unwrap_or("");
    first.trim().trim_end_matches(',').to_string()
}

fn duration_secs(file: &Path) -> f64 {
    let f = file.to_str().unwrap();
    ffprobe(&["-show_entries", "format=duration", "-of", "csv=p=0", f])
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// ffmpeg decodes all of `file` without a single error line.
fn assert_decodes_cleanly(file: &Path) {
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-i"]).arg(file).args([
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (status, _, err) = run_to_exit("ffmpeg", c, Duration::from_secs(60));
    assert!(
        status.success() && err.trim().is_empty(),
        "decode errors in {}: {err}",
        file.display()
    );
}

/// Record `secs` seconds of `path` from `server` over SRT into a TS file.
fn record_srt(server: &Sluice, path: &str, secs: u32, out: &Path) {
    let url = server.srt_url(path, "");
    let mut c = Command::new("ffmpeg");
    c.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &url,
        "-t",
        &secs.to_string(),
    ])
    .args(["-c", "copy", "-f", "mpegts", "-y"])
    .arg(out);
    let (status, _, err) = run_to_exit("ffmpeg", c, Duration::from_secs(30 + u64::from(secs)));
    assert!(status.success(), "SRT capture of {path} failed: {err}");
}

/// The clean-stream checks on a capture: codecs, an IDR first, no decode
/// error, about `secs` long.
fn assert_clean_capture(file: &Path, want_codecs: &[&str], secs: f64) {
    assert_eq!(codecs(file), want_codecs, "{}", file.display());
    assert_eq!(first_video_frame(file), "1,I", "first video frame");
    assert_decodes_cleanly(file);
    let d = duration_secs(file);
    assert!(
        (secs - 1.0..=secs + 1.0).contains(&d),
        "duration {d} s, expected about {secs} s"
    );
}

fn leg_of(server: &Sluice, path: &str) -> Option<Value> {
    server.stream(path)?.pointer("/legs/0").cloned()
}

#[test]
fn a_restream_to_a_second_sluice_plays_cleanly_there() {
    let b = Sluice::start(None);
    let url = format!("rtmp://{}/live/cam1", b.rtmp_addr());
    let a = Sluice::start(Some(&push_config(&url, "")));
    let _publisher = publish_fixture(
        &fixture_avc_aac(60),
        &a.rtmp_url("live/cam1"),
        PublishFor::Secs(30),
    );
    let line = a.wait_log_fields(
        &[("message", "restream connected")],
        Duration::from_secs(15),
    );
    let setup_ms = log_field(&line, "setup_ms").and_then(Value::as_u64);
    assert!(setup_ms.is_some(), "{line}");
    a.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    let ready_b = b.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    println!(
        "restream start: leg start -> Publish.Start on B {} ms; B's setup (accept -> first keyframe) {} ms",
        setup_ms.unwrap_or(0),
        log_field(&ready_b, "setup_ms").and_then(Value::as_u64).unwrap_or(0)
    );
    Expect::new("live/cam1")
        .video("h264", 640, 360, 30.0)
        .audio("aac", 48000, 2)
        .wait(&b, Duration::from_secs(10));
    let leg = leg_of(&a, "live/cam1").expect("A lists its leg");
    assert_eq!(leg["kind"], "rtmp_push");
    assert_eq!(leg["state"], "up", "{leg}");
    let target = leg["target"].as_str().unwrap_or("");
    assert!(target.ends_with("/live/…"), "{target}");
    let dir = TempDir::new("restream");
    let out = dir.join("from_b.ts");
    record_srt(&b, "live/cam1", 4, &out);
    assert_clean_capture(&out, &["h264", "aac"], 4.0);
    assert!(a.metric_or_zero("sluice_rtmp_push_bytes_total") > 100_000.0);
}

#[test]
fn ffmpegs_rtmp_server_records_a_clean_flv() {
    let dir = TempDir::new("restream-ffmpeg");
    let out = dir.join("received.flv");
    let port = free_tcp_port();
    let mut server = Command::new("ffmpeg");
    server
        .args(["-nostdin", "-v", "error", "-listen", "1", "-i"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/somekey"))
        .args(["-c", "copy", "-f", "flv", "-y"])
        .arg(&out);
    let mut server = ChildGuard::spawn("ffmpeg -listen", server);
    // Listening, seen without connecting (ffmpeg accepts one connection).
    assert!(
        poll_until(Duration::from_secs(15), || tcp_listening(port)),
        "ffmpeg -listen never listened on {port}: {}",
        server.stderr().tail(10)
    );
    let a = Sluice::start(Some(&push_config(
        &format!("rtmp://127.0.0.1:{port}/live/somekey"),
        "",
    )));
    let mut publisher = publish_fixture(
        &fixture_avc_aac(6),
        &a.rtmp_url("live/cam1"),
        PublishFor::WholeFile,
    );
    a.wait_log_fields(
        &[("message", "restream connected")],
        Duration::from_secs(15),
    );
    assert!(publisher.expect_exit(Duration::from_secs(30)).success());
    // The leg unpublishes and closes with the stream; ffmpeg then ends its file.
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "ffmpeg's RTMP server did not end after the restream closed: {}",
        server.stderr().tail(10)
    );
    assert_clean_capture(&out, &["h264", "aac"], 6.0);
}

fn hevc_with_aac() -> Vec<FlvTag> {
    let hevc = std::fs::read(fixture_hevc_annexb(6)).expect("read HEVC fixture");
    let video = flv::hevc_tags(&hevc, 30, true);
    let audio: Vec<FlvTag> = flv::read_flv(&fixture_aac_only(6))
        .tags
        .into_iter()
        .filter(|t| t.is_audio())
        .collect();
    flv::merge_by_timestamp(video, audio)
}

#[test]
fn hevc_is_restreamed_as_enhanced_rtmp() {
    let b = Sluice::start(None);
    let url = format!("rtmp://{}/live/hevc", b.rtmp_addr());
    let a = Sluice::start(Some(&push_config(&url, "")));
    let mut publish = BackgroundPublish::spawn(
        a.rtmp_addr(),
        "live/hevc",
        Arc::new(hevc_with_aac()),
        PublishOptions {
            send_metadata: false,
            ..PublishOptions::default()
        },
    );
    Expect::new("live/hevc")
        .video("hevc", 640, 360, 30.0)
        .audio("aac", 48000, 2)
        .wait(&b, Duration::from_secs(20));
    let dir = TempDir::new("restream-hevc");
    let out = dir.join("from_b.ts");
    record_srt(&b, "live/hevc", 2, &out);
    assert_eq!(codecs(&out), ["hevc", "aac"]);
    assert_eq!(first_video_frame(&out), "1,I");
    assert_decodes_cleanly(&out);
    let report = publish.wait_report(Duration::from_secs(30));
    assert!(report.error.is_none(), "publish failed: {report:?}");
    publish.release();
}

/// A certificate for 127.0.0.1 and its key as PEM files.
fn self_signed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a self-signed certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn rtmps_addr(server: &Sluice) -> String {
    log_field(server.listening_line(), "rtmps_addr")
        .and_then(Value::as_str)
        .expect("listening line has rtmps_addr")
        .to_string()
}

#[test]
fn rtmps_verifies_the_destination_certificate() {
    let dir = TempDir::new("restream-rtmps");
    let (cert, key) = self_signed(&dir);
    let b = Sluice::start(Some(&format!(
        "[server]\nrtmps_addr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
    )));
    let url = format!("rtmps://{}/live/secure", rtmps_addr(&b));
    // A trusts B's certificate through SSL_CERT_FILE.
    let mut env = Command::new("env");
    env.arg(format!("SSL_CERT_FILE={}", cert.display()));
    let a = Sluice::start_wrapped(env, Some(&push_config(&url, "")));
    let _publisher = publish_fixture(
        &fixture_avc_aac(60),
        &a.rtmp_url("live/secure"),
        PublishFor::Secs(20),
    );
    a.wait_log_fields(
        &[("message", "restream connected")],
        Duration::from_secs(15),
    );
    let out = dir.join("from_b.ts");
    b.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    record_srt(&b, "live/secure", 2, &out);
    assert_eq!(codecs(&out), ["h264", "aac"]);
    assert_eq!(first_video_frame(&out), "1,I");

    // Without it, the certificate is refused and the required leg fails
    // the publish with the reason.
    let c = Sluice::start(Some(&push_config(
        &format!("rtmps://{}/live/untrusted", rtmps_addr(&b)),
        "",
    )));
    let (mut publisher, why) =
        publish_until(&c, "live/untrusted", "push leg failed; stopping the stream");
    assert!(why.contains("TLS") && why.contains("certificate"), "{why}");
    assert!(
        why.contains("/live/…") && !why.contains("untrusted"),
        "{why}"
    );
    assert!(publisher.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn the_destinations_refusal_text_is_reported_without_the_key() {
    let b = Sluice::start(Some(
        "[apps.live.publish_keys]\ncam1 = \"the-right-secret\"\n",
    ));
    let url = format!("rtmp://{}/live/cam1?key=a-wrong-secret", b.rtmp_addr());
    let a = Sluice::start(Some(&push_config(&url, "")));
    let (mut publisher, why) =
        publish_until(&a, "live/cam1", "push leg failed; stopping the stream");
    assert!(
        why.contains("NetStream.Publish.BadName") && why.contains("wrong publish key"),
        "{why}"
    );
    assert!(publisher.wait_exit(Duration::from_secs(15)).is_some());
    assert!(
        !a.log_contains("a-wrong-secret"),
        "the key reached A's log: {}",
        a.log_tail(20)
    );
    assert!(
        a.metric_or_zero(
            r#"sluice_leg_failures_total{kind="rtmp_push",reason="push_refused",required="true"}"#
        ) >= 1.0
    );
}

#[test]
fn an_optional_leg_retries_while_the_stream_plays_then_connects() {
    let port = free_tcp_port();
    let a = Sluice::start(Some(&format!(
        "[apps.live]\npush = [{{ url = \"rtmp://127.0.0.1:{port}/live/late?key=hidden-key\", required = false }}]\n"
    )));
    let _publisher = publish_fixture(
        &fixture_avc_aac(60),
        &a.rtmp_url("live/opt"),
        PublishFor::Secs(40),
    );
    a.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(15));
    // The stream plays while the leg fails: a capture on A is clean.
    let dir = TempDir::new("restream-optional");
    let from_a = dir.join("from_a.ts");
    record_srt(&a, "live/opt", 3, &from_a);
    assert_clean_capture(&from_a, &["h264", "aac"], 3.0);
    let leg = a.wait_for_stream(
        "live/opt",
        |s| json_f64(s, "/legs/0/retries").is_some_and(|r| r >= 2.0),
        Duration::from_secs(15),
    )["legs"][0]
        .clone();
    let state = leg["state"].as_str().unwrap_or("");
    assert!(["retrying", "starting"].contains(&state), "{leg}");
    let err = leg["last_error"].as_str().unwrap_or("");
    assert!(err.contains("cannot connect"), "{leg}");
    assert!(
        !err.contains("hidden-key") && !err.contains("late"),
        "{leg}"
    );
    assert!(a.metric_or_zero(r#"sluice_leg_retries_total{kind="rtmp_push"}"#) >= 2.0);
    // The destination comes up: the next retry connects and B gets the stream.
    let b = start_on_rtmp_port(port, None);
    a.wait_for_stream(
        "live/opt",
        |s| s.pointer("/legs/0/state").and_then(Value::as_str) == Some("up"),
        Duration::from_secs(20),
    );
    b.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    let from_b = dir.join("from_b.ts");
    record_srt(&b, "live/late", 2, &from_b);
    assert_eq!(first_video_frame(&from_b), "1,I");
    assert_decodes_cleanly(&from_b);
}

#[test]
fn a_required_leg_to_a_dead_address_fails_the_publish() {
    let port = free_tcp_port();
    let a = Sluice::start(Some(&push_config(
        &format!("rtmp://127.0.0.1:{port}/live/x"),
        "",
    )));
    let started = Instant::now();
    let (mut publisher, why) =
        publish_until(&a, "live/dead", "push leg failed; stopping the stream");
    assert!(why.contains("cannot connect to 127.0.0.1"), "{why}");
    assert!(publisher.wait_exit(Duration::from_secs(15)).is_some());
    a.wait_stream_gone("live/dead", Duration::from_secs(5));
    println!(
        "required dead leg: publish ended {:?} after it started",
        started.elapsed()
    );
}

/// Seconds since midnight of a log line's RFC 3339 UTC `timestamp`.
fn log_secs(line: &Value) -> f64 {
    let ts = line["timestamp"].as_str().unwrap_or("");
    let time = ts.split('T').nth(1).unwrap_or("").trim_end_matches('Z');
    let mut it = time.split(':').map(|p| p.parse::<f64>().unwrap_or(0.0));
    let (h, m, s) = (it.next(), it.next(), it.next());
    h.unwrap_or(0.0) * 3600.0 + m.unwrap_or(0.0) * 60.0 + s.unwrap_or(0.0)
}

/// Restream start time, printed (no assertion on time): from the publish
/// accepted on A to the stream ready on B (its first keyframe in B's
/// source ring, readable by players), and the leg's own connect time.
#[test]
fn restream_start_time_is_measured() {
    let b = Sluice::start(None);
    let mut config = String::new();
    for i in 0..3 {
        config.push_str(&format!(
            "[apps.m{i}]\npush = [\"rtmp://{}/live/m{i}\"]\n",
            b.rtmp_addr()
        ));
    }
    let a = Sluice::start(Some(&config));
    let mut figures = Vec::new();
    for i in 0..3 {
        let path = format!("m{i}/cam");
        let publisher = publish_fixture(
            &fixture_avc_aac(60),
            &a.rtmp_url(&path),
            PublishFor::Secs(3),
        );
        let accepted = a.wait_log_fields(
            &[("message", "publish accepted"), ("stream", &path)],
            Duration::from_secs(15),
        );
        // This run's leg is the (i+1)-th to connect.
        let deadline = Instant::now() + Duration::from_secs(15);
        let connected = loop {
            let lines = a.log_json_matching(&[("message", "restream connected")]);
            if let Some(line) = lines.get(i) {
                break line.clone();
            }
            assert!(Instant::now() < deadline, "run {i}: no restream connected");
            std::thread::sleep(Duration::from_millis(20));
        };
        let b_path = format!("live/m{i}");
        let ready = b.wait_log_fields(
            &[("message", "stream ready"), ("stream", &b_path)],
            Duration::from_secs(15),
        );
        let total_ms = (log_secs(&ready) - log_secs(&accepted)) * 1000.0;
        let leg_ms = log_field(&connected, "setup_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        figures.push(total_ms);
        println!("run {i}: publish accepted on A -> stream ready on B {total_ms:.1} ms (leg connect {leg_ms} ms)");
        drop(publisher);
        a.wait_stream_gone(&path, Duration::from_secs(10));
    }
    // Causality, not speed: B is ready after A accepted the publish.
    assert!(figures.iter().all(|ms| *ms > 0.0), "{figures:?}");
}

/// A destination that accepts TCP and never answers the handshake: the
/// required leg is not publishing by the setup deadline, and the publish
/// fails saying so.
#[test]
fn a_silent_destination_fails_setup_by_the_deadline() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    silent.set_nonblocking(true).unwrap();
    // Accept the leg's connection (if it comes) and hold it, never
    // answering; gives up after 20 s so a broken leg fails the test below
    // instead of hanging it.
    let held = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if let Ok((conn, _)) = silent.accept() {
                std::thread::sleep(Duration::from_secs(6));
                drop(conn);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let a = Sluice::start(Some(&push_config(
        &format!("rtmp://127.0.0.1:{port}/live/x"),
        "[server]\nsetup_timeout = \"2s\"\n",
    )));
    let (mut publisher, why) = publish_until(&a, "live/silent", "stream setup failed");
    assert_eq!(why, "0 of 1 RTMP push destinations connected");
    assert!(publisher.wait_exit(Duration::from_secs(15)).is_some());
    held.join().unwrap();
}

/// Whether something listens on 127.0.0.1:`port` (read from
/// /proc/net/tcp, without connecting).
fn tcp_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State 0A is LISTEN.
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// Publish the fixture to `path` of `server` and wait for the log line
/// `message`; the publisher and that line's `why`.
fn publish_until(server: &Sluice, path: &str, message: &str) -> (ChildGuard, String) {
    let publisher = publish_fixture(
        &fixture_avc_aac(60),
        &server.rtmp_url(path),
        PublishFor::Secs(20),
    );
    let line = server.wait_log_fields(&[("message", message)], Duration::from_secs(15));
    let why = log_field(&line, "why")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    (publisher, why)
}
