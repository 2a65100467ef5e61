//! SRT publish through real publishers: ffmpeg (what OBS's SRT output
//! is), srt-live-transmit and GStreamer's `srtsink` send MPEG-TS into
//! sluice's SRT listener, and ffmpeg/ffprobe play it back over SRT. The
//! relayed TS must decode without a single error and start with an IDR;
//! conflicts, keys, the publish webhook and passphrases are refused with
//! the codes libsrt reports; loss SRT could not recover never reaches a
//! player as a corrupt frame.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::srt_caller::*;
use common::*;
use serde_json::Value;

/// ffmpeg publishing `input` (any container; its streams copied) as
/// MPEG-TS to `url` in real time, as OBS's SRT output does.
fn ffmpeg_srt_publish(input: &Path, input_args: &[&str], url: &str) -> ChildGuard {
    let mut cmd = Command::new(require_program("ffmpeg", "ffmpeg"));
    cmd.args(["-loglevel", "error", "-re"])
        .args(input_args)
        .arg("-i")
        .arg(input)
        .args(["-map", "0", "-c", "copy", "-f", "mpegts", url]);
    ChildGuard::spawn("ffmpeg", cmd)
}

/// The URL an SRT publisher of `path` uses, with the raw access-control
/// streamid (ffmpeg passes it verbatim).
fn publish_url(server: &Sluice, path: &str, extra: &str) -> String {
    server.srt_url(&format!("#!::r={path},m=publish"), extra)
}

/// Wait until `path` is live with its video codec `video` (`None`: no
/// video; else a keyframe in) and audio codec `audio` (frames in).
fn wait_live(server: &Sluice, path: &str, video: Option<&str>, audio: Option<&str>) -> Value {
    server.wait_for_stream(
        path,
        |s| {
            json_str(s, "/codecs/video") == video
                && json_str(s, "/codecs/audio") == audio
                && (video.is_none() || json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0))
                && (audio.is_none() || json_f64(s, "/frames_in/audio").is_some_and(|k| k >= 1.0))
        },
        Duration::from_secs(20),
    )
}

/// Play `path` over SRT for `secs` seconds; the TS must decode without an
/// error, with these codecs, its first video frame (if any) a key frame.
fn assert_plays_clean(server: &Sluice, dir: &TempDir, path: &str, codecs: &[&str], secs: u32) {
    let out = dir.join(&format!("{}.ts", path.replace('/', "_")));
    record_srt(&server.srt_url(path, ""), secs, &out);
    assert_eq!(ts_codecs(&out), codecs, "{path}");
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "{path} decodes with errors:\n{errors}");
    if codecs.iter().any(|c| *c == "h264" || *c == "hevc") {
        let frames = video_frames(&out, 30);
        assert!(frames.len() >= 10, "{path}: {frames:?}");
        assert!(
            frames[0].0 && frames[0].1 == "I",
            "{path} starts with {:?}",
            frames[0]
        );
    }
}

/// 12 s of 640x360 HEVC (libx265, 2 B-frames, GOP 60) and AAC in MPEG-TS.
fn fixture_hevc_aac_ts() -> PathBuf {
    ffmpeg_fixture(
        "hevc_aac_640x360_30fps_12s.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "12",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "bframes=2:keyint=60:min-keyint=60:scenecut=0:log-level=error",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    )
}

/// The H.264 (B-frames) + AAC fixture as MPEG-TS, for byte-exact publishers.
fn fixture_avc_aac_ts(secs: u32) -> PathBuf {
    let flv = fixture_avc_aac(secs);
    ffmpeg_fixture(
        &format!("avc_aac_640x360_30fps_{secs}s.ts"),
        &["-i", flv.to_str().unwrap(), "-c", "copy", "-f", "mpegts"],
    )
}

#[test]
fn ffmpeg_h264_aac_with_b_frames_publishes_and_plays_clean_and_a_second_publisher_gets_1409() {
    let server = Sluice::start(None);
    let dir = TempDir::new("srt-publish");
    let fixture = fixture_avc_aac(30);
    let mut publisher = ffmpeg_srt_publish(&fixture, &[], &publish_url(&server, "live/cam1", ""));
    let live = wait_live(&server, "live/cam1", Some("h264"), Some("aac"));
    assert_eq!(json_f64(&live, "/width"), Some(640.0), "{live}");
    assert_eq!(live["publisher"]["protocol"], "srt", "{live}");
    server.wait_log_fields(
        &[
            ("message", "srt publisher connected"),
            ("stream", "live/cam1"),
        ],
        Duration::from_secs(5),
    );
    let carried = server.wait_log_fields(
        &[
            ("message", "srt publisher's elementary streams"),
            ("stream", "live/cam1"),
        ],
        Duration::from_secs(5),
    );
    let streams = carried["streams"].as_str().unwrap_or_default();
    assert!(
        streams.contains("h264") && streams.contains("aac"),
        "{carried}"
    );
    let out = dir.join("cam1.ts");
    record_srt(&server.srt_url("live/cam1", ""), 4, &out);
    assert_eq!(ts_codecs(&out), ["h264", "aac"]);
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "decode errors:\n{errors}");
    let frames = video_frames(&out, 60);
    assert!(frames[0].0 && frames[0].1 == "I", "{frames:?}");
    assert!(
        frames.iter().any(|f| f.1 == "B"),
        "the fixture's B-frames are relayed: {frames:?}"
    );

    // The path is live: another SRT publisher, in either form, is refused
    // with 1409 (conflict); so is an RTMP publisher (BadName).
    assert_eq!(
        libsrt_connect(&dir, server.srt_addr(), "publish:live/cam1", ""),
        "rejected 1409"
    );
    assert_eq!(
        libsrt_connect(
            &dir,
            server.srt_addr(),
            "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cm%3Dpublish",
            ""
        ),
        "rejected 1409"
    );
    let mut rtmp = publish_fixture(&fixture, &server.rtmp_url("live/cam1"), PublishFor::Secs(5));
    assert!(
        !rtmp.expect_exit(Duration::from_secs(20)).success(),
        "RTMP publisher on an SRT-published path"
    );
    assert!(server.metric_or_zero("sluice_rtmp_publishes_total{result=\"rejected_busy\"}") >= 1.0);
    assert!(server.metric_or_zero("sluice_srt_publishes_total{result=\"rejected_busy\"}") >= 2.0);
    assert_eq!(
        server.metric("sluice_srt_publishes_total{result=\"accepted\"}"),
        Some(1.0)
    );
    // The first publisher never noticed.
    assert!(publisher.is_running(), "{}", publisher.stderr().tail(10));
    assert_eq!(
        json_f64(&server.stream("live/cam1").unwrap(), "/uptime_seconds").map(|u| u > 1.0),
        Some(true)
    );
    // It leaves: the stream ends with it.
    publisher.kill();
    server.wait_stream_gone("live/cam1", Duration::from_secs(10));
    let ended = server.wait_log_fields(
        &[
            ("message", "srt publisher disconnected"),
            ("stream", "live/cam1"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        log_field(&ended, "frames_video")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 60),
        "{ended}"
    );
    assert_eq!(
        log_field(&ended, "continuity_errors").and_then(Value::as_u64),
        Some(0),
        "{ended}"
    );
}

#[test]
fn hevc_audio_only_and_video_only_publishes_play_back() {
    let server = Sluice::start(None);
    let dir = TempDir::new("srt-publish-codecs");
    let hevc = fixture_hevc_aac_ts();
    let av = fixture_avc_aac(30);
    let audio = fixture_aac_only(12);
    let looped = ["-stream_loop", "-1"];
    let _hevc = ffmpeg_srt_publish(&hevc, &looped, &publish_url(&server, "live/hevc", ""));
    // The short form, percent-encoded as some clients send it.
    let _audio = ffmpeg_srt_publish(
        &audio,
        &looped,
        &server.srt_url("publish%3Alive%2Faudio", ""),
    );
    let mut cmd = Command::new(require_program("ffmpeg", "ffmpeg"));
    cmd.args(["-loglevel", "error", "-re", "-i"])
        .arg(&av)
        .args(["-an", "-c", "copy", "-f", "mpegts"])
        .arg(publish_url(&server, "live/video", ""));
    let _video = ChildGuard::spawn("ffmpeg", cmd);
    wait_live(&server, "live/hevc", Some("hevc"), Some("aac"));
    wait_live(&server, "live/audio", None, Some("aac"));
    wait_live(&server, "live/video", Some("h264"), None);
    assert_plays_clean(&server, &dir, "live/hevc", &["hevc", "aac"], 3);
    assert_plays_clean(&server, &dir, "live/audio", &["aac"], 3);
    assert_plays_clean(&server, &dir, "live/video", &["h264"], 3);
    assert_eq!(
        server.metric("sluice_srt_publishes_total{result=\"accepted\"}"),
        Some(3.0)
    );
}

#[test]
fn srt_live_transmit_and_gstreamer_srtsink_publish() {
    require_gst_element("srtsink", "gstreamer1.0-plugins-bad");
    require_gst_element("x264enc", "gstreamer1.0-plugins-ugly");
    let server = Sluice::start(None);
    let dir = TempDir::new("srt-publish-peers");
    // srt-live-transmit sends the TS bytes it reads on stdin as they are;
    // ffmpeg only paces the file into it (`-re`).
    let ts = fixture_avc_aac_ts(30);
    let url = server.srt_url("%23%21%3A%3Ar%3Dlive%2Fslt%2Cm%3Dpublish", "");
    let script = format!(
        "ffmpeg -loglevel error -re -i '{}' -c copy -f mpegts - | srt-live-transmit -q file://con '{url}'",
        ts.display()
    );
    require_program("srt-live-transmit", "srt-tools");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let _slt = ChildGuard::spawn("srt-live-transmit", cmd);
    let gst = spawn_gst_launch(&[
        "videotestsrc".into(),
        "is-live=true".into(),
        "!".into(),
        "video/x-raw,width=320,height=240,framerate=30/1".into(),
        "!".into(),
        "x264enc".into(),
        "tune=zerolatency".into(),
        "key-int-max=30".into(),
        "speed-preset=ultrafast".into(),
        "!".into(),
        "mpegtsmux".into(),
        "!".into(),
        "srtsink".into(),
        format!("uri=srt://{}", server.srt_addr()),
        "streamid=#!::r=live/gst,m=publish".into(),
        "latency=120".into(),
    ]);
    wait_live(&server, "live/slt", Some("h264"), Some("aac"));
    wait_live(&server, "live/gst", Some("h264"), None);
    assert_plays_clean(&server, &dir, "live/slt", &["h264", "aac"], 3);
    assert_plays_clean(&server, &dir, "live/gst", &["h264"], 3);
    drop(gst);
}

#[test]
fn publish_keys_the_publish_webhook_and_the_publish_passphrase_are_enforced() {
    fn rule(body: &Value) -> (u16, Duration) {
        let ok = body["stream"] == "allowed" && body["protocol"] == "srt";
        (if ok { 204 } else { 403 }, Duration::ZERO)
    }
    let (hook, seen) = webhook_server(rule);
    let config = format!(
        r#"
[apps.live]
publish_passphrase = "publish-passphrase-1"
[apps.live.publish_keys]
cam1 = "cam1-publish-key"
[apps.hooked]
publish_webhook = "http://127.0.0.1:{hook}/publish"
"#
    );
    let server = Sluice::start(Some(&config));
    let dir = TempDir::new("srt-publish-auth");
    let srt = server.srt_addr();
    let pw = "publish-passphrase-1";
    for (sid, pass, want) in [
        ("#!::r=live/cam1,m=publish", pw, "rejected 1401"),
        ("#!::r=live/cam1,m=publish,s=wrong-key", pw, "rejected 1403"),
        ("publish:live/cam1?key=wrong-key", pw, "rejected 1403"),
        (
            "#!::r=live/other,m=publish,s=cam1-publish-key",
            pw,
            "rejected 1403",
        ),
        ("#!::r=nope/cam1,m=publish", "", "rejected 1404"),
        // Right key, but no or the wrong passphrase (libsrt: 11 and 10).
        (
            "#!::r=live/cam1,m=publish,s=cam1-publish-key",
            "",
            "rejected 11",
        ),
        (
            "#!::r=live/cam1,m=publish,s=cam1-publish-key",
            "wrong-passphrase",
            "rejected 10",
        ),
        ("#!::r=hooked/denied,m=publish", "", "rejected 1403"),
    ] {
        assert_eq!(
            libsrt_connect(&dir, srt, sid, pass),
            want,
            "{sid} / {pass:?}"
        );
    }
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["action"], "publish");
    assert_eq!(asked[0]["path"], "hooked/denied");
    // Keys never reach the log.
    let log = server.log_lines().join("\n");
    assert!(!log.contains("wrong-key") && !log.contains("cam1-publish-key"));
    assert!(
        server
            .metric_or_zero("sluice_auth_rejects_total{action=\"publish\",reason=\"missing_key\"}")
            >= 1.0
    );
    assert!(
        server.metric_or_zero(
            "sluice_auth_rejects_total{action=\"publish\",reason=\"webhook_denied\"}"
        ) >= 1.0
    );

    // With key and passphrase (ffmpeg: the short form's query), and through
    // the webhook, publishers get in and their streams play.
    let fixture = fixture_avc_aac(30);
    let _keyed = ffmpeg_srt_publish(
        &fixture,
        &[],
        &server.srt_url(
            "publish:live/cam1?key=cam1-publish-key",
            &format!("passphrase={pw}"),
        ),
    );
    let _hooked = ffmpeg_srt_publish(&fixture, &[], &publish_url(&server, "hooked/allowed", ""));
    wait_live(&server, "live/cam1", Some("h264"), Some("aac"));
    wait_live(&server, "hooked/allowed", Some("h264"), Some("aac"));
    assert_plays_clean(&server, &dir, "live/cam1", &["h264", "aac"], 2);
    let asked = seen.lock().unwrap().clone();
    let allowed = asked
        .iter()
        .find(|b| b["path"] == "hooked/allowed")
        .unwrap();
    assert_eq!(allowed["protocol"], "srt");
}

#[test]
fn with_takeover_the_second_srt_publisher_wins() {
    let server = Sluice::start(Some("[apps.live]\ntakeover = true\n"));
    let fixture = fixture_avc_aac(30);
    let url = publish_url(&server, "live/cam1", "");
    let mut first = ffmpeg_srt_publish(&fixture, &[], &url);
    let before = wait_live(&server, "live/cam1", Some("h264"), Some("aac"));
    let first_peer = json_str(&before, "/publisher/peer").unwrap().to_string();
    let _second = ffmpeg_srt_publish(&fixture, &[], &url);
    let after = server.wait_for_stream(
        "live/cam1",
        |s| {
            json_str(s, "/publisher/peer").is_some_and(|p| p != first_peer)
                && json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0)
        },
        Duration::from_secs(20),
    );
    assert_ne!(
        json_str(&after, "/publisher/peer"),
        Some(first_peer.as_str())
    );
    // The first one is told (SRT Shutdown) and its ffmpeg stops.
    server.wait_log_fields(
        &[
            ("message", "closing srt publisher: its stream ended"),
            ("cause", "taken_over"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        first.wait_exit(Duration::from_secs(15)).is_some(),
        "the replaced publisher still runs"
    );
    let dir = TempDir::new("srt-publish-takeover");
    assert_plays_clean(&server, &dir, "live/cam1", &["h264", "aac"], 2);
}

#[test]
fn a_rendition_and_a_push_leg_work_for_an_srt_published_stream() {
    // The push destination: srt-live-transmit listening, counting bytes.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut dest = Command::new(require_program("srt-live-transmit", "srt-tools"));
    dest.args([
        "-q",
        &format!("srt://127.0.0.1:{port}?mode=listener"),
        "file://con",
    ])
    .stdin(Stdio::null());
    let dest = ChildGuard::spawn("srt-live-transmit", dest);
    let config = format!(
        r#"
[apps.live]
push = ["srt://127.0.0.1:{port}?streamid=pushed"]
[[apps.live.renditions]]
name = "240p"
height = 240
"#
    );
    let server = Sluice::start(Some(&config));
    let fixture = fixture_avc_aac(30);
    let _publisher = ffmpeg_srt_publish(&fixture, &[], &publish_url(&server, "live/cam1", ""));
    wait_live(&server, "live/cam1", Some("h264"), Some("aac"));
    server.wait_log_fields(
        &[("message", "stream ready"), ("stream", "live/cam1")],
        Duration::from_secs(20),
    );
    let dir = TempDir::new("srt-publish-legs");
    let out = dir.join("240p.ts");
    record_srt(&server.srt_url("live/cam1/240p", ""), 3, &out);
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "240p decodes with errors:\n{errors}");
    // The transcode starts at the first video keyframe with the codec
    // configs known by then; the TS ingest holds the start until the
    // audio the PMT lists is configured, so the rendition has its audio.
    assert_eq!(ts_codecs(&out), ["h264", "aac"]);
    assert!(poll_until(Duration::from_secs(10), || dest
        .stdout()
        .text()
        .len()
        > 100_000));
}

/// A pacer feeding `ts` to stdout in 1316-byte chunks at `kbps`, for
/// srt-live-transmit (which sends what it reads, as it reads it).
fn paced_srt_live_transmit(ts: &Path, kbps: u32, url: &str, dir: &TempDir) -> ChildGuard {
    let pacer = dir.join("pace.py");
    let mut f = std::fs::File::create(&pacer).unwrap();
    f.write_all(
        br#"
import sys, time
data = open(sys.argv[1], "rb").read()
rate = int(sys.argv[2]) * 1000 / 8
start = time.monotonic()
for i in range(0, len(data), 1316):
    sys.stdout.buffer.write(data[i:i + 1316])
    sys.stdout.buffer.flush()
    wait = start + (i + 1316) / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
"#,
    )
    .unwrap();
    require_program("srt-live-transmit", "srt-tools");
    let script = format!(
        "python3 '{}' '{}' {kbps} | srt-live-transmit -q file://con '{url}'",
        pacer.display(),
        ts.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    ChildGuard::spawn("srt-live-transmit", cmd)
}

#[test]
fn loss_srt_could_not_recover_drops_whole_frames_and_players_decode_clean() {
    // The TS as an encoder would send it, minus one video packet in the
    // middle of a frame about every two seconds (every 1500 packets) after
    // the first two: continuity-counter gaps the ingest must see.
    let dir = TempDir::new("srt-publish-loss");
    let ts = std::fs::read(fixture_avc_aac_ts(30)).unwrap();
    let pid = |p: &[u8]| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
    // ffmpeg's muxer puts its first stream, the video, on PID 0x100.
    let video_pid = 0x100;
    assert!(ts.chunks(188).any(|p| pid(p) == video_pid
        && p[1] & 0x40 != 0
        && p.windows(4).any(|w| w == [0, 0, 1, 0xE0])));
    let mut damaged = Vec::with_capacity(ts.len());
    let (mut cut, mut due) = (0, false);
    for (i, p) in ts.chunks(188).enumerate() {
        due |= i >= 1500 && i % 1500 == 0;
        if due && pid(p) == video_pid && p[1] & 0x40 == 0 {
            cut += 1;
            due = false;
            continue;
        }
        damaged.extend_from_slice(p);
    }
    assert!(cut > 10, "{cut} packets cut");
    let damaged_path = dir.join("damaged.ts");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let server = Sluice::start(None);
    let url = publish_url(&server, "live/lossy", "");
    // About 1.1 Mbit/s: the fixture's rate, so 30 s of media take ~30 s.
    let kbps = (damaged.len() as u64 * 8 / 30 / 1000) as u32;
    let _publisher = paced_srt_live_transmit(&damaged_path, kbps, &url, &dir);
    wait_live(&server, "live/lossy", Some("h264"), Some("aac"));
    let out = dir.join("lossy.ts");
    record_srt(&server.srt_url("live/lossy", ""), 8, &out);
    let errors = decode_errors(&out);
    assert!(
        errors.is_empty(),
        "a damaged frame reached a player:\n{errors}"
    );
    let frames = video_frames(&out, 10_000);
    assert!(frames[0].0, "{:?}", &frames[..3.min(frames.len())]);
    // Frames were dropped (whole GOP tails), not the stream: it played on.
    assert!(frames.len() > 30, "{} frames", frames.len());
    let errors =
        server.metric_or_zero("sluice_srt_publish_continuity_errors_total{stream=\"live/lossy\"}");
    assert!(errors >= 3.0, "continuity errors counted: {errors}");
    assert!(
        server.metric_or_zero("sluice_srt_publish_dropped_frames_total{stream=\"live/lossy\"}")
            >= 3.0
    );
}
