//! Recording (`[apps.X] record = true`) end to end: a real sluice records a
//! real ffmpeg publisher, and ffprobe judges the files. Segments start at a
//! keyframe, probe clean and hold every published frame; the API lists
//! them as they are on disk; a SIGKILL leaves the open segment readable;
//! retention deletes old segments while new ones appear; a full disk or an
//! unwritable directory stops the recording, not the stream (unless the
//! application requires the recording).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `[apps.live]` recording into `dir`, plus `extra` lines.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[apps.live]\nrecord = true\nrecord_dir = \"{}\"\n{extra}\n",
        dir.display()
    )
}

/// Whether `name` is `YYYYMMDD-HHMMSS.ts` or `YYYYMMDD-HHMMSS-N.ts`.
fn is_segment_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".ts") else {
        return false;
    };
    let b = stem.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 15
        && digits(0..8)
        && b[8] == b'-'
        && digits(9..15)
        && (b.len() == 15 || (b[15] == b'-' && digits(16..b.len()) && b.len() > 16))
}

/// The segment files in `dir`, by name (= by start).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_segment_name)
        })
        .collect();
    v.sort();
    v
}

fn ffprobe(args: &[&str], file: &Path) -> (bool, String, String) {
    let mut cmd = Command::new(require_program("ffprobe", "the `ffmpeg` Debian package"));
    cmd.args(["-hide_banner"]).args(args).arg(file);
    let (status, out, err) = run_to_exit("ffprobe", cmd, Duration::from_secs(60));
    (status.success(), out, err)
}

/// ffprobe's complaints about a file (empty: it probes clean).
fn probe_errors(file: &Path) -> String {
    let (ok, _, err) = ffprobe(&["-v", "error"], file);
    assert!(ok, "ffprobe failed on {}: {err}", file.display());
    err
}

/// The video packets of a file in file order: is each a keyframe?
fn video_keyflags(file: &Path) -> Vec<bool> {
    let (ok, out, err) = ffprobe(
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=flags",
            "-of",
            "csv=p=0",
        ],
        file,
    );
    assert!(
        ok,
        "ffprobe -show_packets failed on {}: {err}",
        file.display()
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().starts_with('K'))
        .collect()
}

/// ffprobe's duration of a file (seconds).
fn probe_duration(file: &Path) -> f64 {
    let (ok, out, err) = ffprobe(
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ],
        file,
    );
    assert!(ok, "ffprobe duration failed on {}: {err}", file.display());
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe duration of {}: {out:?}", file.display()))
}

/// `GET /api/v1/recordings` plus `query`.
fn recordings(server: &Sluice, query: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/api/v1/recordings{query}"));
    assert_eq!(status, 200, "GET /api/v1/recordings{query}: {body}");
    let v: Value = serde_json::from_str(&body).expect("recordings JSON");
    v.as_array().expect("recordings is an array").clone()
}

/// The record leg of a live stream as `/api/v1/streams` shows it.
fn record_leg(server: &Sluice, path: &str) -> Option<Value> {
    let s = server.stream(path)?;
    s["legs"]
        .as_array()?
        .iter()
        .find(|l| l["kind"] == "record")
        .cloned()
}

/// 2024-02-29T23:59:59Z from `20240229-235959[-N].ts`.
fn start_from_name(file: &Path) -> String {
    let n = file.file_name().unwrap().to_str().unwrap();
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &n[0..4],
        &n[4..6],
        &n[6..8],
        &n[9..11],
        &n[11..13],
        &n[13..15]
    )
}

/// 8 s published with 2 s segments (the fixture's GOP is 2 s): at least
/// three segments, each probing clean from a keyframe, about 2 s long, all
/// of them together holding every published video frame; the API lists
/// exactly these files with their size, start and duration.
#[test]
fn segments_start_at_keyframes_probe_clean_and_hold_every_frame() {
    let dir = TempDir::new("record");
    let server = Sluice::start(Some(&config(dir.path(), "record_segment = \"2s\"")));
    let mut publisher = publish_fixture(
        &fixture_avc_aac(400),
        &server.rtmp_url("live/cam1"),
        PublishFor::Secs(8),
    );
    let status = publisher.expect_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "publisher: {}",
        publisher.stderr().tail(20)
    );
    let ended = server.wait_log_fields(
        &[("message", "publish ended"), ("stream", "live/cam1")],
        Duration::from_secs(15),
    );
    let published = log_field(&ended, "frames_video")
        .and_then(Value::as_u64)
        .unwrap();
    // The last segment is closed (fsync'd) once the API says none is open.
    let closed = poll_until(Duration::from_secs(10), || {
        let list = recordings(&server, "");
        !list.is_empty() && list.iter().all(|r| r["open"] == false)
    });
    assert!(
        closed,
        "a segment stayed open: {:?}",
        recordings(&server, "")
    );

    let key_dir = dir.path().join("live").join("cam1");
    let files = segments(&key_dir);
    let names: Vec<_> = fs::read_dir(&key_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(files.len() >= 3, "segments: {names:?}");
    assert_eq!(files.len(), names.len(), "only segment files: {names:?}");
    let mut frames = 0;
    let mut durations = Vec::new();
    for f in &files {
        let errors = probe_errors(f);
        assert!(
            errors.is_empty(),
            "{} does not probe clean: {errors}",
            f.display()
        );
        let keys = video_keyflags(f);
        assert!(!keys.is_empty(), "{} has no video", f.display());
        assert!(keys[0], "{} does not start with a keyframe", f.display());
        frames += keys.len() as u64;
        durations.push(probe_duration(f));
    }
    println!(
        "published {published} video frames; recorded {frames} in {} segments of {durations:?} s",
        files.len()
    );
    assert_eq!(frames, published, "recorded frames vs published");
    for (f, d) in files.iter().zip(&durations).take(files.len() - 1) {
        assert!((1.7..2.4).contains(d), "{}: {d} s, want ~2 s", f.display());
    }

    let listed = recordings(&server, "?app=live&key=cam1");
    assert_eq!(listed.len(), files.len(), "{listed:?}");
    for ((r, f), d) in listed.iter().zip(&files).zip(&durations) {
        let path = std::path::absolute(f).unwrap();
        assert_eq!(r["path"], path.display().to_string());
        assert_eq!(
            (r["app"].as_str(), r["key"].as_str()),
            (Some("live"), Some("cam1"))
        );
        assert_eq!(r["bytes"].as_u64(), Some(fs::metadata(f).unwrap().len()));
        assert_eq!(r["start"].as_str(), Some(start_from_name(f).as_str()));
        assert_eq!(r["open"], false);
        let listed_d = r["duration_seconds"].as_f64().unwrap();
        // Ours runs first to last timestamp; ffprobe adds the last frame.
        assert!(
            (listed_d - d).abs() < 0.25,
            "{}: listed {listed_d} s, ffprobe {d} s",
            f.display()
        );
    }
    assert_eq!(recordings(&server, "").len(), files.len());
    // `?limit=` keeps the newest, still in order.
    let newest = recordings(&server, "?limit=2");
    assert_eq!(newest.len(), 2, "{newest:?}");
    assert_eq!(newest[0]["path"], listed[listed.len() - 2]["path"]);
    assert_eq!(newest[1]["path"], listed[listed.len() - 1]["path"]);
    assert!(recordings(&server, "?key=other").is_empty());
    assert!(recordings(&server, "?app=other").is_empty());
    assert_eq!(
        server.metric_or_zero("sluice_record_segments_total"),
        files.len() as f64
    );
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(
        server.metric_or_zero("sluice_record_bytes_total"),
        bytes as f64
    );
    assert_eq!(
        server.metric_or_zero("sluice_record_segments_dropped_total"),
        0.0
    );
}

/// SIGKILL in the middle of a segment: the file left behind is readable by
/// ffprobe from its keyframe on, and a new server lists it.
#[test]
fn a_segment_open_at_sigkill_is_readable() {
    let dir = TempDir::new("record-kill");
    let cfg = config(dir.path(), "record_segment = \"60s\"");
    let mut server = Sluice::start(Some(&cfg));
    let _publisher = publish_fixture(
        &fixture_avc_aac(400),
        &server.rtmp_url("live/cam1"),
        PublishFor::Forever,
    );
    let key_dir = dir.path().join("live").join("cam1");
    let grown = poll_until(Duration::from_secs(30), || {
        segments(&key_dir)
            .first()
            .is_some_and(|f| fs::metadata(f).is_ok_and(|m| m.len() > 400_000))
    });
    assert!(grown, "no growing segment in {}", key_dir.display());
    let open = recordings(&server, "");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["open"], true);
    let st = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());

    let files = segments(&key_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let f = &files[0];
    let (ok, out, err) = ffprobe(
        &[
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ],
        f,
    );
    assert!(ok, "ffprobe cannot read the killed segment: {err}");
    // One line per stream, repeated under its program.
    let n: u64 = out.lines().find_map(|l| l.trim().parse().ok()).unwrap_or(0);
    println!(
        "killed segment: {} bytes, {n} video packets; ffprobe said {err:?}",
        fs::metadata(f).unwrap().len()
    );
    assert!(n > 30, "{n} video packets in the killed segment");
    assert!(
        video_keyflags(f)[0],
        "the killed segment does not start with a keyframe"
    );

    let again = Sluice::start(Some(&cfg));
    let listed = recordings(&again, "");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["open"], false);
    assert!(
        listed[0]["duration_seconds"].as_f64().unwrap() > 1.0,
        "{listed:?}"
    );
}

/// `record_keep = "3s"` with 1 s segments (cut at the 2 s GOP): segments
/// are deleted as new ones appear; a file that is not a segment stays.
#[test]
fn retention_deletes_old_segments_while_new_ones_appear() {
    let dir = TempDir::new("record-keep");
    let server = Sluice::start(Some(&config(
        dir.path(),
        "record_segment = \"1s\"\nrecord_keep = \"3s\"",
    )));
    let key_dir = dir.path().join("live").join("cam1");
    fs::create_dir_all(&key_dir).unwrap();
    let notes = key_dir.join("notes.txt");
    fs::write(&notes, "not a segment").unwrap();
    let _publisher = publish_fixture(
        &fixture_avc_aac(400),
        &server.rtmp_url("live/cam1"),
        PublishFor::Forever,
    );
    let mut seen = BTreeSet::new();
    let mut most = 0;
    let enough = poll_until(Duration::from_secs(40), || {
        let now = segments(&key_dir);
        most = most.max(now.len());
        seen.extend(now);
        seen.len() >= 7
    });
    assert!(enough, "only {} segments appeared: {seen:?}", seen.len());
    let present: BTreeSet<_> = segments(&key_dir).into_iter().collect();
    let first = seen.iter().next().unwrap();
    println!(
        "{} segments seen, at most {most} at once, {} now",
        seen.len(),
        present.len()
    );
    assert!(
        !present.contains(first),
        "the oldest segment {} is still there",
        first.display()
    );
    assert!(
        most <= 4,
        "{most} segments at once with record_keep 3s and 2 s segments"
    );
    assert!(
        notes.exists(),
        "retention deleted a file that is not a segment"
    );
    assert!(server.metric_or_zero("sluice_record_segments_deleted_total") >= 3.0);
}

/// A 256 KiB tmpfs as the record directory (in a mount namespace of
/// sluice's own): the recording fails with `disk_full`, named in the
/// stream's legs, and is retried, while an SRT player of the same stream
/// gets every frame.
#[test]
fn a_full_disk_stops_the_recording_not_the_stream() {
    require_program("unshare", "the `util-linux` Debian package");
    let probe = Command::new("unshare").args(["-rm", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIPPED: `unshare -rm` is not permitted here (no user namespaces)");
        return;
    }
    let dir = TempDir::new("record-full");
    let mut wrapper = Command::new("unshare");
    wrapper
        .args([
            "-rm",
            "--",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@""#,
        ])
        .arg(dir.path());
    let server = Sluice::start_wrapped(
        wrapper,
        Some(&config(dir.path(), "record_segment = \"2s\"")),
    );
    let bystander = Bystander::start(&server, "live/cam1", "", "", 40);
    let mut leg = Value::Null;
    let failed = poll_until(Duration::from_secs(20), || {
        leg = record_leg(&server, "live/cam1").unwrap_or(Value::Null);
        leg["retries"].as_u64().unwrap_or(0) >= 2
            && leg["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no space left on device"))
    });
    assert!(
        failed,
        "the record leg did not fail with a full disk: {leg}"
    );
    println!("record leg: {leg}");
    assert_eq!(leg["required"], false);
    assert!(
        server.metric_or_zero(r#"sluice_leg_failures_total{kind="record",reason="disk_full"}"#)
            >= 1.0
    );
    assert!(server.stream("live/cam1").is_some(), "the stream ended");
    bystander.finish(4.0);
}

/// A record directory under a regular file: a publish to an application
/// that requires its recording fails setup with the recording's error; an
/// application whose recording is optional plays, and retries it.
#[test]
fn an_unwritable_record_dir_fails_a_required_recording_and_is_retried_when_optional() {
    let dir = TempDir::new("record-bad");
    let file = dir.join("a-file");
    fs::write(&file, "x").unwrap();
    let bad = file.join("rec");
    let cfg = format!(
        "[apps.live]\nrecord = true\nrecord_required = true\nrecord_dir = \"{0}\"\n\
         [apps.opt]\nrecord = true\nrecord_dir = \"{0}\"\n",
        bad.display()
    );
    let server = Sluice::start(Some(&cfg));
    let mut publisher = publish_fixture(
        &fixture_avc_aac(400),
        &server.rtmp_url("live/cam1"),
        PublishFor::Secs(20),
    );
    let failed = server.wait_log_fields(
        &[("message", "stream setup failed"), ("stream", "live/cam1")],
        Duration::from_secs(15),
    );
    println!("{failed}");
    assert_eq!(
        log_field(&failed, "reason").and_then(Value::as_str),
        Some("record_io")
    );
    let why = log_field(&failed, "why")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        why.contains("Not a directory") && why.contains(&bad.display().to_string()),
        "{why}"
    );
    assert!(
        publisher.wait_exit(Duration::from_secs(15)).is_some(),
        "the refused publisher goes on"
    );

    let bystander = Bystander::start(&server, "opt/cam1", "", "", 40);
    let mut leg = Value::Null;
    let retried = poll_until(Duration::from_secs(15), || {
        leg = record_leg(&server, "opt/cam1").unwrap_or(Value::Null);
        leg["retries"].as_u64().unwrap_or(0) >= 2
    });
    assert!(retried, "the optional recording is not retried: {leg}");
    assert!(
        leg["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Not a directory")),
        "{leg}"
    );
    bystander.finish(5.0);
}

/// `GET /api/v1/recordings` is behind `server.api_token` like the rest of
/// the API (it shows the server's paths).
#[test]
fn the_recordings_listing_needs_the_api_token() {
    const TOKEN: &str = "recordings-token-0123456789";
    let dir = TempDir::new("record-auth");
    let server = Sluice::start(Some(&format!(
        "[server]\napi_token = \"{TOKEN}\"\n{}",
        config(dir.path(), "")
    )));
    let get = |headers: &[(&str, &str)]| {
        http_request_with(
            server.http_addr(),
            "GET",
            "/api/v1/recordings",
            headers,
            Duration::from_secs(10),
        )
        .expect("GET /api/v1/recordings")
    };
    assert_eq!(get(&[]).status, 401);
    assert_eq!(
        get(&[("Authorization", "Bearer not-the-token-0000")]).status,
        401
    );
    let bearer = format!("Bearer {TOKEN}");
    let r = get(&[("Authorization", bearer.as_str())]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!([]));
}
