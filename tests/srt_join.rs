//! Joining a running stream (issue 14): `join = "live"` (the default),
//! `"cache"` and `"keyframe"`, per application and per streamid, played by
//! real peers. srt-live-transmit records exactly what a player receives,
//! ffprobe/ffmpeg/GStreamer check it, and ffplay with the low-latency flags
//! README gives (its probe drops what it reads) must decode from its very
//! first picture. Timing figures are the bench's (`benches/join_latency.rs`);
//! these tests check what is deterministic: where each mode starts, on
//! which timestamps, and that every output is valid.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PATH: &str = "live/join";
/// The fixture's GOP: 60 frames at 30 fps.
const GOP_90K: i64 = 180_000;

/// Publish the 640x360 H.264 (B-frames, 2 s GOP) + AAC fixture in real
/// time and wait until it is playable.
fn publish(server: &Sluice, secs: u32) -> ChildGuard {
    let fixture = fixture_avc_aac(60);
    let ff = publish_fixture(&fixture, &server.rtmp_url(PATH), PublishFor::Secs(secs));
    server.wait_for_stream(
        PATH,
        |s| {
            json_str(s, "/codecs/audio") == Some("aac")
                && json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0)
        },
        Duration::from_secs(20),
    );
    ff
}

/// Sleep until `into_gop` after the stream's next keyframe reached the relay.
fn wait_gop_phase(server: &Sluice, into_gop: Duration) {
    let keyframes = || {
        server
            .stream(PATH)
            .and_then(|s| json_f64(&s, "/keyframes_in"))
            .unwrap_or(0.0)
    };
    let k0 = keyframes();
    let deadline = Instant::now() + Duration::from_secs(10);
    while keyframes() == k0 {
        assert!(Instant::now() < deadline, "no keyframe for 10 s");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(into_gop);
}

/// srt-live-transmit playing `streamid`, writing what it receives to a
/// file as it comes; stopped (with its process group) on drop.
struct Recorder(Child);

impl Recorder {
    fn start(server: &Sluice, streamid: &str, out: &Path) -> Recorder {
        let url = server.srt_url(streamid, "latency=20");
        let file = std::fs::File::create(out).unwrap();
        let mut cmd = Command::new(require_program("srt-live-transmit", "srt-tools"));
        cmd.args(["-q", "-a:no", &url, "file://con"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .process_group(0);
        Recorder(cmd.spawn().expect("start srt-live-transmit"))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // SIGINT: srt-live-transmit flushes and exits.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGINT) };
        if poll_until(Duration::from_secs(3), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        }) {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One packet as ffprobe lists it, in file order.
#[derive(Debug, Clone)]
struct Pkt {
    video: bool,
    pts: i64,
    dts: i64,
    key: bool,
}

fn packets(ts: &Path) -> Vec<Pkt> {
    let mut cmd = Command::new(require_program("ffprobe", "ffmpeg"));
    cmd.args(["-v", "error", "-show_entries"])
        .arg("packet=codec_type,pts,dts,flags")
        .args(["-of", "csv=p=0"])
        .arg(ts);
    let (status, out, err) = run_to_exit("ffprobe", cmd, Duration::from_secs(30));
    assert!(status.success(), "ffprobe {ts:?}: {err}");
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let [kind, pts, dts, flags, ..] = f[..] else {
                return None;
            };
            Some(Pkt {
                video: kind == "video",
                pts: pts.parse().ok()?,
                dts: dts.parse().ok()?,
                key: flags.starts_with('K'),
            })
        })
        .collect()
}

/// Continuity errors our own demuxer counts in `ts`.
fn continuity_errors(ts: &Path) -> u64 {
    let data = std::fs::read(ts).unwrap();
    let mut d = sluice::ts::Demuxer::new();
    let mut out = Vec::new();
    d.push(&data, &mut out).expect("the recording demuxes");
    d.continuity_errors()
}

/// Every output is valid: decodes without an error (ffmpeg), no
/// continuity error, DTS strictly increasing and PTS >= DTS per stream.
fn assert_valid(name: &str, ts: &Path, pkts: &[Pkt]) {
    let errors = decode_errors(ts);
    assert!(errors.trim().is_empty(), "{name}: decode errors: {errors}");
    assert_eq!(continuity_errors(ts), 0, "{name}: continuity errors");
    let mut last: HashMap<bool, i64> = HashMap::new();
    for p in pkts {
        assert!(p.pts >= p.dts, "{name}: pts {} < dts {}", p.pts, p.dts);
        if let Some(prev) = last.insert(p.video, p.dts) {
            assert!(p.dts > prev, "{name}: dts {} after {prev}", p.dts);
        }
    }
    assert!(
        pkts.iter().filter(|p| p.video).count() > 30,
        "{name}: too few frames"
    );
}

fn first(pkts: &[Pkt], video: bool) -> &Pkt {
    pkts.iter()
        .find(|p| p.video == video)
        .expect("a packet of each kind")
}

#[test]
fn each_join_mode_starts_where_it_says_and_every_output_is_valid() {
    // The application's default is keyframe; the players override it.
    let server = Sluice::start(Some("[apps.live]\njoin = \"keyframe\"\n"));
    let _publisher = publish(&server, 30);
    let dir = TempDir::new("join");
    let file = |n: &str| -> PathBuf { dir.join(&format!("{n}.ts")) };
    let players = [
        ("keyframe", format!("#!::r={PATH}")),
        ("cache", format!("#!::r={PATH},join=cache")),
        ("live", format!("read:{PATH}?join=live")),
    ];
    // The three join together 1.1 s into a 2 s GOP. Should a loaded
    // machine start them so late that a keyframe came between (then they
    // are not in the same GOP, or not mid-GOP), the round is run again.
    let mut rounds = 0;
    let got = loop {
        rounds += 1;
        wait_gop_phase(&server, Duration::from_millis(1100));
        let recorders: Vec<Recorder> = players
            .iter()
            .map(|(name, sid)| Recorder::start(&server, sid, &file(name)))
            .collect();
        // Long enough for keyframe mode's wait (~0.9 s) and a GOP after it.
        thread::sleep(Duration::from_secs(4));
        drop(recorders);
        let got: HashMap<&str, Vec<Pkt>> = players
            .iter()
            .map(|(name, _)| (*name, packets(&file(name))))
            .collect();
        let t_key = got["cache"].iter().find(|p| p.video).map(|p| p.dts);
        let next_key = got["keyframe"].iter().find(|p| p.video).map(|p| p.dts);
        let together = t_key.is_some_and(|t| next_key == Some(t + GOP_90K));
        // 30 cached frames at least: joined a second or more into the GOP.
        let mid_gop = got["cache"]
            .iter()
            .filter(|p| p.video && Some(p.dts) < t_key.map(|t| t + 90_000))
            .count()
            >= 30;
        if together && mid_gop {
            break got;
        }
        assert!(rounds < 3, "the players never joined together mid-GOP");
        eprintln!("round {rounds}: the players did not join together mid-GOP; again");
    };
    for (name, _) in &players {
        assert_valid(name, &file(name), &got[name]);
        let v = first(&got[name], true);
        assert!(v.key, "{name}: the first video packet is not a keyframe");
    }
    let (cache, live, keyframe) = (&got["cache"], &got["live"], &got["keyframe"]);
    // cache: the cached keyframe with its own time, and the audio of then.
    let t_key = first(cache, true).dts;
    assert!(
        first(cache, false).pts < t_key + 9_000,
        "cache mode's audio starts with the cached keyframe"
    );
    // keyframe: the next keyframe, one GOP later.
    assert_eq!(first(keyframe, true).dts, t_key + GOP_90K, "keyframe mode");
    // live: the same keyframe, retimed to just before the live point (1.1 s
    // of the GOP squeezed into 5 ms), its copies ahead of it, and the audio
    // of the live point only.
    let lv = first(live, true);
    let copies = live
        .iter()
        .filter(|p| p.video)
        .take_while(|p| p.key)
        .count();
    assert!((2..=8).contains(&copies), "{copies} keyframe copies");
    assert!(
        lv.dts > t_key + 90_000,
        "live mode's keyframe at {} is not retimed (cached at {t_key})",
        lv.dts
    );
    // The frames of the cache are squeezed into a few milliseconds: the
    // 30 frames after the keyframe sit within 10 ms, where cache mode
    // spaces them a second apart.
    let video: Vec<&Pkt> = live.iter().filter(|p| p.video).skip(copies).collect();
    let cached: Vec<&Pkt> = cache.iter().filter(|p| p.video).collect();
    assert!(video[30].dts - video[0].dts < 900, "{:?}", &video[..31]);
    assert!(cached[30].dts - cached[0].dts >= 90_000);
    // Every live-mode frame from the live point on keeps its own time: the
    // cache-mode recording has the same frame at the same DTS.
    let later = video.iter().find(|p| p.dts > lv.dts + 9_000).unwrap();
    assert!(cached
        .iter()
        .any(|c| c.dts == later.dts && c.pts == later.pts));
    // Audio starts at the live point, with the first picture: no stale
    // sound, A/V together within 40 ms.
    let la = first(live, false);
    assert!(
        (la.pts - first(live, true).pts).abs() <= 3_600,
        "live mode's first audio {} vs first picture {}",
        la.pts,
        first(live, true).pts
    );
    assert!(
        la.pts > first(cache, false).pts + 90_000,
        "stale audio in live mode"
    );
    // Metrics: one join per mode, and the catch-up of the live one.
    for mode in ["live", "cache", "keyframe"] {
        assert_eq!(
            server.metric(&format!("sluice_srt_join_total{{mode=\"{mode}\"}}")),
            Some(1.0),
            "{mode}"
        );
    }
    assert_eq!(
        server.metric("sluice_srt_join_catchup_seconds_count"),
        Some(1.0)
    );
    let skipped = server
        .metric("sluice_srt_join_catchup_seconds_sum")
        .unwrap();
    assert!((1.0..2.0).contains(&skipped), "skipped {skipped} s");
    assert!(server.metric_or_zero("sluice_srt_join_catchup_frames_total") >= 30.0);
    let waited = server
        .metric("sluice_srt_join_first_data_seconds_sum{mode=\"keyframe\"}")
        .unwrap();
    assert!(waited > 0.3, "keyframe mode waited {waited} s");

    // GStreamer decodes the live-mode recording without a warning.
    require_gst_element("tsdemux", "gstreamer1.0-plugins-bad");
    let mut gst = Command::new(require_program("gst-launch-1.0", "gstreamer1.0-tools"));
    gst.arg("filesrc")
        .arg(format!("location={}", file("live").display()))
        .args(["!", "tsdemux", "!", "h264parse", "!", "avdec_h264", "!"])
        .args(["fakesink", "sync=false"]);
    let (status, out, err) = run_to_exit("gst-launch-1.0", gst, Duration::from_secs(60));
    assert!(status.success(), "gst-launch: {out}{err}");
    let noisy: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
        .collect();
    assert!(noisy.is_empty(), "GStreamer: {noisy:?}");
}

/// ffplay, headless, with the flags README gives for latency: its probe
/// drops what it reads, so without the keyframe copies its first decode
/// would start mid-GOP (errors, then a wait for the next keyframe).
fn ffplay_first_frames(server: &Sluice, join: &str) -> (Vec<String>, String) {
    let url = server.srt_url(&format!("read:{PATH}?join={join}"), "latency=20000");
    let mut cmd = Command::new(require_program("ffplay", "ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "info", "-nostats"])
        .args(["-fflags", "nobuffer", "-flags", "low_delay"])
        .args(["-probesize", "32768", "-analyzeduration", "200000"])
        .args(["-vf", "showinfo", "-an", "-autoexit"])
        .arg(&url)
        .env("SDL_VIDEODRIVER", "dummy")
        .env("SDL_AUDIODRIVER", "dummy");
    let child = ChildGuard::spawn("ffplay", cmd);
    thread::sleep(Duration::from_millis(1500));
    let err = child.stderr().text();
    drop(child);
    let frames = err
        .lines()
        .filter(|l| l.contains("Parsed_showinfo") && l.contains(" n:"))
        .map(String::from)
        .collect();
    (frames, err)
}

#[test]
fn ffplay_with_the_low_latency_flags_decodes_from_its_first_packet() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, 30);
    wait_gop_phase(&server, Duration::from_millis(700));
    let (frames, log) = ffplay_first_frames(&server, "live");
    assert!(!frames.is_empty(), "ffplay showed nothing in 1.5 s:\n{log}");
    assert!(
        frames[0].contains("iskey:1"),
        "the first picture is not the keyframe: {}",
        frames[0]
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[h264") || l.to_lowercase().contains("error"))
        .filter(|l| !l.contains("Reinit context"))
        .collect();
    assert!(bad.is_empty(), "decoder complaints: {bad:?}");
    // (Without the copies the same run shows nothing until the next
    // keyframe, after h264 errors such as "mmco: unref short failure".)
    assert!(frames.len() >= 5, "{} pictures", frames.len());
}

#[test]
fn join_values_are_checked_and_the_default_is_live() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, 20);
    let dir = TempDir::new("join-values");
    let addr = server.srt_addr();
    assert_eq!(
        libsrt_connect(&dir, addr, &format!("#!::r={PATH},join=fast"), ""),
        "rejected 1400"
    );
    assert!(server.log_contains("join=fast is not a join mode"));
    assert_eq!(
        libsrt_connect(&dir, addr, &format!("#!::r={PATH}"), ""),
        "connected"
    );
    server.wait_metric(
        "sluice_srt_join_total{mode=\"live\"}",
        |v| v.is_some_and(|v| v >= 1.0),
        Duration::from_secs(5),
    );
}
