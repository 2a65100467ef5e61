//! Transcoded renditions through real FFmpeg (libx264: CI has no GPU):
//! pulled over SRT next to the source, the transcode leg's failure rules
//! (FFmpeg killed, stalled, missing) and process hygiene.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::flv;
use common::rtmp_client::{connect_and_publish, PublishOptions};
use common::*;
use serde_json::Value;

const PATH: &str = "live/cam1";

const RENDITIONS: &str = r#"
[[apps.live.renditions]]
name = "720p"
height = 720
video_bitrate = "1500k"

[[apps.live.renditions]]
name = "480p"
height = 480
video_bitrate = "700k"
audio = "96k"
"#;

/// A live 1280x720 30 fps H.264 (B-frames, keyframe every second exactly)
/// + AAC publish, encoded in real time, for `secs` seconds.
fn publish_720p(server: &Sluice, secs: u32) -> ChildGuard {
    let url = server.rtmp_url(PATH);
    let secs = secs.to_string();
    spawn_ffmpeg(&[
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "2",
        "-g",
        "30",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        "2M",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "flv",
        &url,
    ])
}

/// Wait until both renditions have their first IDR in their ring.
fn wait_renditions_ready(server: &Sluice, at_least: f64) {
    server.wait_metric(
        "sluice_transcode_first_idr_seconds_count",
        |v| v.is_some_and(|n| n >= at_least),
        Duration::from_secs(20),
    );
}

/// Record `streamid` over SRT into a TS file for `secs` seconds of media.
fn capture(server: &Sluice, streamid: &str, out: &Path, secs: u32) -> ChildGuard {
    let url = server.srt_url(streamid, "");
    let secs = secs.to_string();
    spawn_ffmpeg(&[
        "-loglevel",
        "error",
        "-i",
        &url,
        "-t",
        &secs,
        "-c",
        "copy",
        "-f",
        "mpegts",
        out.to_str().unwrap(),
    ])
}

/// One packet of a TS file, as ffprobe reports it.
#[derive(Debug, Clone)]
struct Packet {
    video: bool,
    pts: i64,
    key: bool,
}

/// ffprobe's streams and packets of a TS file.
fn probe_file(file: &Path) -> (Vec<Value>, Vec<Packet>) {
    let mut cmd = Command::new(require_program("ffprobe", "ffmpeg"));
    cmd.args([
        "-v",
        "error",
        "-show_entries",
        "stream=index,codec_type,codec_name,width,height:packet=stream_index,pts,flags",
        "-of",
        "json",
    ])
    .arg(file);
    let (status, out, err) = run_to_exit("ffprobe", cmd, Duration::from_secs(30));
    assert!(status.success(), "ffprobe {file:?}: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video_index = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .and_then(|s| s["index"].as_i64());
    let packets = v["packets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(Packet {
                video: p["stream_index"].as_i64() == video_index,
                pts: p["pts"].as_i64()?,
                key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
            })
        })
        .collect();
    (streams, packets)
}

fn video_size(streams: &[Value]) -> Option<(i64, i64)> {
    let v = streams.iter().find(|s| s["codec_type"] == "video")?;
    Some((v["width"].as_i64()?, v["height"].as_i64()?))
}

/// Decoding the whole file gives no error at all.
fn assert_decodes_cleanly(file: &Path) {
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args(["-nostdin", "-v", "error", "-i"]).arg(file).args([
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (status, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(60));
    assert!(status.success() && err.trim().is_empty(), "{file:?}: {err}");
}

/// Processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(pid) {
            let comm = stat
                .split('(')
                .nth(1)
                .unwrap_or("")
                .split(')')
                .next()
                .unwrap_or("");
            out.push((child, comm.to_string()));
        }
    }
    out
}

fn ffmpeg_pid_from_log(server: &Sluice, skip: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = server.log_json_matching(&[("message", "ffmpeg started")]);
        if let Some(l) = lines.get(skip) {
            return log_field(l, "pid")
                .and_then(Value::as_u64)
                .expect("pid field") as u32;
        }
        assert!(Instant::now() < deadline, "no ffmpeg started log line");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn renditions_play_over_srt_with_their_sizes_an_idr_first_audio_and_the_source_timestamps() {
    let server = Sluice::start(Some(RENDITIONS));
    let dir = TempDir::new("transcode");
    let _publisher = publish_720p(&server, 40);
    wait_renditions_ready(&server, 2.0);

    // The API lists the renditions with their encoder and size.
    let st = server
        .wait_for_stream(
            PATH,
            |s| {
                s["renditions"]
                    .as_array()
                    .is_some_and(|r| r.len() == 3 && r.iter().all(|r| !r["fps"].is_null()))
            },
            Duration::from_secs(15),
        )
        .clone();
    let rs = st["renditions"].as_array().unwrap();
    let by_name = |n: &str| rs.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(by_name("source")["encoder"], "copy");
    for (name, w, h) in [("720p", 1280, 720), ("480p", 854, 480)] {
        let r = by_name(name);
        assert_eq!(r["encoder"], "x264", "{r}");
        assert_eq!(
            (r["width"].as_i64(), r["height"].as_i64()),
            (Some(w), Some(h)),
            "{r}"
        );
    }
    // /readyz says which encoders are used and why.
    let ready = server.get_full("/readyz").json();
    assert_eq!(ready["encoders"]["h264"]["encoder"], "x264", "{ready}");
    assert!(
        ready["encoders"]["h264"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("h264_nvenc")),
        "{ready}"
    );

    // Three players at once: the source and both renditions.
    let files: Vec<_> = ["source", "720p", "480p"]
        .iter()
        .map(|n| dir.join(&format!("{n}.ts")))
        .collect();
    // Each from its GOP cache with its own timestamps (`join=cache`): ffmpeg
    // shifts a capture to start at its first frame, and the timelines are
    // compared across captures (a `live` start is retimed to the live point).
    let mut caps: Vec<ChildGuard> = [
        format!("{PATH}?join=cache"),
        format!("{PATH}/720p?join=cache"),
        format!("{PATH}/480p?join=cache"),
    ]
    .iter()
    .zip(&files)
    .map(|(id, f)| capture(&server, id, f, 5))
    .collect();
    for c in &mut caps {
        let st = c.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "capture failed: {}",
            c.stderr().text()
        );
    }

    let (src_streams, src) = probe_file(&files[0]);
    assert_eq!(video_size(&src_streams), Some((1280, 720)));
    let src_keys: Vec<i64> = src
        .iter()
        .filter(|p| p.video && p.key)
        .map(|p| p.pts)
        .collect();
    let src_video: Vec<i64> = src.iter().filter(|p| p.video).map(|p| p.pts).collect();
    let (src_lo, src_hi) = (
        *src_video.iter().min().unwrap(),
        *src_video.iter().max().unwrap(),
    );
    for (file, want) in [(&files[1], (1280, 720)), (&files[2], (854, 480))] {
        let (streams, packets) = probe_file(file);
        assert_eq!(video_size(&streams), Some(want), "{file:?}: {streams:?}");
        assert!(
            streams.iter().any(|s| s["codec_name"] == "aac"),
            "{file:?} has no audio: {streams:?}"
        );
        let video: Vec<&Packet> = packets.iter().filter(|p| p.video).collect();
        assert!(video.len() > 60, "{file:?}: {} video packets", video.len());
        assert!(video[0].key, "{file:?}: the first frame is not an IDR");
        // Same timeline as the source: the newest frames of captures taken
        // side by side are close, and every rendition IDR (forced every 2 s
        // from a source keyframe) lands on a source keyframe (every 1 s).
        let hi = video.iter().map(|p| p.pts).max().unwrap();
        assert!(
            (hi - src_hi).abs() < 90_000,
            "{file:?}: newest PTS {hi} vs source {src_hi}"
        );
        let idrs: Vec<i64> = video
            .iter()
            .filter(|p| p.key && p.pts >= src_lo && p.pts <= src_hi)
            .map(|p| p.pts)
            .collect();
        assert!(
            !idrs.is_empty(),
            "{file:?}: no IDR inside the source capture"
        );
        for pts in idrs {
            let nearest = src_keys.iter().map(|k| (k - pts).abs()).min().unwrap();
            assert!(
                nearest <= 9_000,
                "{file:?}: IDR at PTS {pts} is {nearest} ticks from any source keyframe {src_keys:?}"
            );
        }
        assert_decodes_cleanly(file);
    }
}

#[test]
fn encoders_are_re_probed_on_demand_and_new_streams_use_the_result() {
    let server = Sluice::start(Some(RENDITIONS));
    let first = server.get_full("/api/v1/encoders");
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["h264"]["encoder"], "x264", "{first}");
    assert_eq!(first["mode"], "auto", "{first}");
    let decided = first["decided_at"].as_u64().expect("decided_at");
    assert!(decided > 0, "{first}");

    // Two re-probes at once: one runs, the other is told so at once (or
    // runs after it, if the first was already done).
    let addr = server.http_addr();
    let probes: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                http_request(
                    addr,
                    "POST",
                    "/api/v1/encoders/probe",
                    Duration::from_secs(60),
                )
                .expect("POST /api/v1/encoders/probe")
            })
        })
        .collect();
    let mut answers: Vec<_> = probes.into_iter().map(|p| p.join().unwrap()).collect();
    answers.sort_by_key(|r| r.status);
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    assert!(
        answers[1].status == 200 || answers[1].status == 409,
        "{} {}",
        answers[1].status,
        answers[1].body
    );
    if answers[1].status == 409 {
        assert!(
            answers[1].body.contains("already running"),
            "{}",
            answers[1].body
        );
    }
    let v = answers[0].json();
    assert_eq!(v["changed"], false, "{v}");
    assert!(v["took_ms"].is_u64(), "{v}");
    assert_eq!(v["encoders"]["h264"]["encoder"], "x264", "{v}");
    assert_eq!(v["encoders"]["hevc"]["encoder"], "x265", "{v}");
    assert!(v["encoders"]["decided_at"].as_u64() >= Some(decided), "{v}");
    assert!(
        v["encoders"]["h264"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("h264_nvenc")),
        "{v}"
    );
    server.wait_log_fields(
        &[("message", "re-probe: encoders unchanged")],
        Duration::from_secs(5),
    );
    let get = http_request(
        addr,
        "GET",
        "/api/v1/encoders/probe",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(get.status, 405, "a re-probe needs POST: {}", get.body);
    let ready = server.get_full("/readyz").json();
    assert_eq!(ready["encoders"]["h264"]["encoder"], "x264", "{ready}");
    assert_eq!(
        server.metric(r#"sluice_transcode_encoder{codec="h264",encoder="x264"}"#),
        Some(1.0)
    );

    // A stream that starts after the re-probe transcodes with its choice.
    let _publisher = publish_720p(&server, 6);
    wait_renditions_ready(&server, 2.0);
    let s = server.stream(PATH).expect("stream");
    let mut encoders: Vec<&str> = s["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["encoder"].as_str())
        .collect();
    encoders.sort_unstable();
    assert_eq!(encoders, ["copy", "x264", "x264"], "{s}");
}

#[test]
fn killing_ffmpeg_tears_every_leg_down_and_a_republish_brings_renditions_back() {
    let server = Sluice::start(Some(RENDITIONS));
    let mut publisher = publish_720p(&server, 60);
    wait_renditions_ready(&server, 2.0);
    let ffmpeg = ffmpeg_pid_from_log(&server, 0);
    // Players on the source and on a rendition.
    let mut players: Vec<ChildGuard> = [PATH.to_string(), format!("{PATH}/720p")]
        .iter()
        .map(|id| {
            let url = server.srt_url(id, "");
            spawn_ffmpeg(&["-loglevel", "error", "-i", &url, "-f", "null", "-"])
        })
        .collect();
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(2.0),
        Duration::from_secs(10),
    );

    let killed = Instant::now();
    // SAFETY-free: plain kill(2) through the shell-less std API.
    let st = Command::new("kill")
        .args(["-KILL", &ffmpeg.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let gone = server.wait_stream_gone(PATH, Duration::from_secs(5));
    assert!(
        gone.duration_since(killed) <= Duration::from_secs(2),
        "stream still listed {:?} after the kill",
        gone.duration_since(killed)
    );
    assert!(
        publisher.wait_exit(Duration::from_secs(5)).is_some(),
        "the publisher was not disconnected"
    );
    for p in &mut players {
        assert!(
            p.wait_exit(Duration::from_secs(5)).is_some(),
            "a player is still connected"
        );
        let ended = p.exit_instant().unwrap();
        assert!(
            ended.duration_since(killed) <= Duration::from_secs(2) + Duration::from_millis(500),
            "player closed {:?} after the kill",
            ended.duration_since(killed)
        );
    }
    server.wait_metric(
        r#"sluice_transcode_failures_total{reason="ffmpeg_exited"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_metric(
        "sluice_transcode_ffmpeg_running",
        |v| v == Some(0.0),
        Duration::from_secs(5),
    );
    let left = children_of(server.pid());
    assert!(left.is_empty(), "sluice still has children: {left:?}");

    // The encoder reconnects: every rendition comes back.
    let _publisher = publish_720p(&server, 60);
    wait_renditions_ready(&server, 4.0);
    let url = server.srt_url(&format!("{PATH}/480p"), "");
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &url,
        "-frames:v",
        "30",
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (status, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(30));
    assert!(status.success() && err.trim().is_empty(), "{err}");
    let second = ffmpeg_pid_from_log(&server, 1);
    assert_ne!(second, ffmpeg);
}

#[test]
fn without_ffmpeg_renditions_fail_setup_with_the_reason_and_the_source_still_relays() {
    let config =
        format!("[transcode]\nffmpeg = \"/nonexistent/bin/ffmpeg\"\n{RENDITIONS}\n[apps.plain]\n");
    let server = Sluice::start(Some(&config));
    server.wait_log("ffmpeg not found", Duration::from_secs(5));
    let file = flv::read_flv(&fixture_avc_aac(3));

    let mut p = connect_and_publish(server.rtmp_addr(), PATH, PublishOptions::default());
    let report = p.send_tags(&file.tags);
    assert!(report.error.is_none() || p.closed.is_some(), "{report:?}");
    assert!(p.wait_server_close(Duration::from_secs(10)).is_some());
    let statuses = format!("{:?}", p.statuses);
    assert!(statuses.contains("NetStream.Publish.Failed"), "{statuses}");
    assert!(statuses.contains("ffmpeg not found"), "{statuses}");
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="ffmpeg_not_found"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_log_fields(&[("reason", "ffmpeg_not_found")], Duration::from_secs(5));

    // An application without renditions needs no FFmpeg.
    let url = server.rtmp_url("plain/cam2");
    let fixture = fixture_avc_aac(60);
    let _ff = publish_fixture(&fixture, &url, PublishFor::Secs(20));
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(15));
    let url = server.srt_url("plain/cam2", "");
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        &url,
        "-frames:v",
        "10",
        "-fps_mode",
        "vfr",
        "-f",
        "null",
        "-",
    ]);
    let (status, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(30));
    assert!(status.success() && err.trim().is_empty(), "{err}");
}

#[test]
fn an_ffmpeg_that_writes_nothing_is_a_stall_and_is_stopped() {
    let dir = TempDir::new("stall");
    let fake = dir.join("ffmpeg");
    // Reads nothing, writes nothing, ignores SIGTERM: the worst child.
    std::fs::write(
        &fake,
        "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.1; done\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", fake.to_str().unwrap()])
        .status()
        .unwrap();
    let config = format!(
        "[transcode]\nffmpeg = \"{}\"\nstall_timeout = \"1s\"\n{RENDITIONS}",
        fake.display()
    );
    let server = Sluice::start(Some(&config));
    // A real-time publisher: input keeps coming while FFmpeg says nothing.
    let url = server.rtmp_url(PATH);
    let fixture = fixture_avc_aac(60);
    let mut publisher = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    let line = server.wait_log_fields(&[("reason", "ffmpeg_stalled")], Duration::from_secs(10));
    assert!(
        line.to_string().contains("transcode.stall_timeout"),
        "{line}"
    );
    assert!(
        publisher.wait_exit(Duration::from_secs(5)).is_some(),
        "the publisher was not disconnected"
    );
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="ffmpeg_stalled"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    // SIGTERM is ignored, so SIGKILL follows after the 2 s grace; reaped.
    server.wait_metric(
        "sluice_transcode_ffmpeg_running",
        |v| v == Some(0.0),
        Duration::from_secs(5),
    );
    let left = children_of(server.pid());
    assert!(left.is_empty(), "sluice still has children: {left:?}");
    assert!(server
        .metrics_text()
        .contains(r#"sluice_transcode_ffmpeg_exits_total{code="signal_9"}"#));
}

#[test]
fn a_push_leg_can_carry_a_rendition() {
    require_program("srt-live-transmit", "the `srt-tools` Debian package");
    let dir = TempDir::new("push-rendition");
    let out = dir.join("pushed.ts");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec srt-live-transmit -q -a:no 'srt://:{port}?mode=listener' file://con > '{}'",
        out.display()
    ));
    let mut receiver = ChildGuard::spawn("srt-live-transmit", cmd);
    std::thread::sleep(Duration::from_millis(300));
    let server = Sluice::start(Some(&format!(
        "[apps.live]\npush = [\"srt://127.0.0.1:{port}?streamid=small&rendition=small\"]\n\
         [[apps.live.renditions]]\nname = \"small\"\nheight = 240\nvideo_bitrate = \"300k\"\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url(PATH);
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(15));
    assert!(ffmpeg.expect_exit(Duration::from_secs(30)).success());
    assert!(
        receiver.wait_exit(Duration::from_secs(10)).is_some(),
        "the destination was not closed after the publisher left"
    );
    let (streams, packets) = probe_file(&out);
    assert_eq!(video_size(&streams), Some((426, 240)), "{streams:?}");
    assert!(packets.iter().find(|p| p.video).is_some_and(|p| p.key));
    assert_decodes_cleanly(&out);
}

/// `pid` is gone (or a zombie waiting for init): no orphan keeps encoding.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn ffmpeg_dies_with_sluice_even_when_sluice_is_sigkilled() {
    let mut server = Sluice::start(Some(RENDITIONS));
    let _publisher = publish_720p(&server, 30);
    wait_renditions_ready(&server, 2.0);
    let ffmpeg = ffmpeg_pid_from_log(&server, 0);
    assert!(!process_gone(ffmpeg));
    // Only sluice: FFmpeg is in its own process group.
    let st = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());
    let t = Instant::now();
    while !process_gone(ffmpeg) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "ffmpeg {ffmpeg} outlived sluice"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
