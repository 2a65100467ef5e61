//! Joining a live stream mid-GOP with real players: how soon each shows a
//! picture and how far behind the publisher it then stays, per join mode
//! (issue 14, "join at the live edge").
//!
//! `cargo bench --bench join_latency -- [--modes live,cache,keyframe]
//! [--phases 5,30,55,90] [--players ffplay,gst,probe] [--secs-per-join 4]
//! [--latency-ms 20] [--no-build]` (`--players` also takes `ffplay-buf`;
//! `--ffplay-probesize BYTES`, 32768 by default, sets ffplay's
//! `-probesize`)
//!
//! One release `sluice` (`[srt] latency = "20ms"`) and one in-process RTMP
//! publisher run for the whole bench. The publisher loops the 10 s 720p30
//! H.264 (B-frames, 2 s GOP) + AAC fixture with continuous timestamps
//! (each loop lasts exactly its 300 frame intervals; an AAC frame that
//! would overlap the seam is left out), pacing its FLV tags in real time,
//! and records for every video frame its send instant, DTS and PTS (FLV
//! timestamp + composition offset, ms), the keyframe flag, its size and its
//! first slice (the relay never changes slice bytes). For each mode × phase
//! × player it waits until the publisher is `phase` % into a GOP (from the
//! last keyframe's send instant), starts the player with `join=MODE` in its
//! streamid (`#!::r=live/join,m=request,join=MODE`), lets it run
//! `--secs-per-join` seconds and kills it. A sluice without the join modes
//! ignores the key: every mode then behaves as `cache`.
//!
//! Figures per row (ms):
//! - `phase_ms`: how far into the GOP the player's connection was accepted
//!   (sluice's "srt player connected" log line, stamped as we read it; the
//!   probe's handshake).
//! - `conn_ms`: player start -> connected. For ffplay and GStreamer this is
//!   process start, setup and the SRT handshake, seen through sluice's log:
//!   the players print nothing when they connect.
//! - `first_ms`: player start -> the first frame it shows (ffplay,
//!   GStreamer), or -> its first IDR released by SRT (probe).
//! - `live_ms`: connected -> the first frame shown (released, for the
//!   probe) that the publisher had sent when the player connected as its
//!   newest, or a newer one: when the player reaches the live point.
//! - `early_ms` / `settled_ms` / `last_ms`: median of (shown - publisher
//!   send instant) over the frames shown 0.5-1.0 s / 1.0 s-end / in the last
//!   second after the player started, so "settled within 1 s" is visible.
//! - `av_ms`: ffplay's A-V (audio clock - video clock) from 1.0 s on,
//!   median.
//! - `errors`: ffplay's decoder complaints; GStreamer's WARN/ERROR lines.
//! - `shown` / `tied`: frames shown, and how many were tied to a publisher
//!   frame.
//!
//! Players:
//! - `ffplay` (FFmpeg 5.1), headless: `SDL_VIDEODRIVER=dummy
//!   SDL_AUDIODRIVER=dummy ffplay -fflags nobuffer -flags low_delay
//!   -probesize 32768 -analyzeduration 200000 -vf showinfo -af ashowinfo
//!   srt://…?streamid=…&latency=20000` (FFmpeg's libsrt `latency` URL
//!   option is in microseconds; the streamid is percent-encoded, which
//!   FFmpeg decodes). stderr is read as it comes, split on `\r` too (the
//!   status line rewrites itself), each line stamped on arrival. A showinfo
//!   line is written when ffplay's video thread filters a frame, which then
//!   waits in its 3-picture queue: the line comes at most ~3 frame
//!   intervals (100 ms) before the picture is presented. Its `pts:` (90
//!   kHz, the TS PTS as sent) is tied to the publisher frame whose PTS +
//!   `TIMESTAMP_OFFSET_MS` is nearest, within ±5 ms; frames whose PTS a
//!   join mode rewrote stay untied and count for `first_ms` only (a
//!   rewritten PTS that lands within 5 ms of a real one is tied to it). The
//!   SDL dummy audio driver consumes audio in real time, so ffplay keeps
//!   its audio master clock when it found the audio stream. With `-fflags nobuffer` the packets read while
//!   probing are thrown away, and with them the GOP cache's IDR: ffplay
//!   shows nothing until the next keyframe, while the cached audio it kept
//!   holds its clock back, so its video then plays at about half speed
//!   until it is as far behind as that audio (the join phase less the
//!   ~0.1 s of audio probing also took): at 55 % and 90 % that takes longer
//!   than the default 4 s join (`last_ms` shows where it got to). With
//!   `-probesize 32768` a cached IDR (~110 KiB here) can fill the whole
//!   probe: ffplay then finds no AAC parameters ("Could not find codec
//!   parameters for stream 1 ... 0 channels"), plays video only (its
//!   status line says `M-V`, a note says so, `av_ms` is "-") and free-runs
//!   it from the first picture it shows. Measured here that happened in
//!   about half the joins; `--ffplay-probesize 1000000` found the audio in
//!   every join (and, with `nobuffer`, decoding then starts mid-GOP:
//!   "co located POCs unavailable", "mmco: unref short failure").
//! - `ffplay-buf`: the same without `-fflags nobuffer`: the cached IDR is
//!   shown at once.
//! - `gst` (GStreamer 1.22): `gst-launch-1.0 -v srtsrc uri=srt://…
//!   latency=20 streamid="…" ! tsdemux ! h264parse ! identity name=enc
//!   silent=false ! tee name=t ! queue ! avdec_h264 ! fakesink name=shown
//!   sync=true silent=false t. ! queue ! filesink buffer-mode=unbuffered`.
//!   tsdemux re-times buffers on its own timeline, so frames are tied by
//!   content: `enc` prints every access unit's size, byte offset and PTS as
//!   it passes, the filesink keeps the same bytes (h264parse hands them
//!   over as `stream-format=avc`, the framing avdec_h264 asks for), so each
//!   access unit's first slice is cut out of the file and looked up among
//!   the publisher's; `shown` (fakesink with `sync=true`: its
//!   `last-message` is set at render time) carries the decoded frame's PTS,
//!   the same as its access unit's. tsdemux's 700 ms default latency is
//!   most of where it settles. After the cached burst avdec_h264 warns
//!   "decreasing timestamp" (counted in `errors`). Needs srtsrc
//!   (gst-plugins-bad), tsdemux, h264parse and avdec_h264
//!   (gstreamer1.0-libav); GST_DEBUG=2 makes its warnings countable. gi's
//!   Gst typelib is not installed here, so no Python pad probe.
//! - `probe`: the in-process srt-protocol caller (`common::srt_player`):
//!   `conn_ms` is the handshake; frames are timed when its receiver
//!   releases them (TSBPD included, what a player could decode) and tied by
//!   slice; `net_idr_ms` / `net_live_ms` are connected -> first IDR / live
//!   point complete at network arrival, for frames none of whose datagrams
//!   was retransmitted ("-" otherwise). In `cache` mode every frame's TS
//!   PTS must be its publisher PTS + `TIMESTAMP_OFFSET_MS` with the same
//!   slice, or the bench fails (so does ffplay in `cache` mode when under
//!   90 % of its frames tie by PTS).
//!
//! `JOIN_LATENCY_DUMP=1` prints every frame shown (ms since the player
//! started, publisher PTS, ms behind), every A-V and every tenth ffplay
//! status line to stderr.
//!
//! mpv and VLC are not installed (apt has candidates, mpv 0.35.1 and VLC
//! 3.0.24); neither is among the players yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

use common::flv::{self, FlvTag};
use common::frames::{access_unit_slice, avcc_key, TsFrame};
use common::harness::Sluice;
use common::process::{ChildGuard, TempDir};
use common::rtmp_client::{PublishOptions, RtmpPublisher};
use common::srt_player::play;
use common::{fixture, sluice_binary, wait_live};
use sluice::ts::mux::TIMESTAMP_OFFSET_MS;

/// The fixture's GOP: 60 frames at 30 fps.
const GOP: Duration = Duration::from_secs(2);
const APP: &str = "live";
const KEY: &str = "join";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayerKind {
    Ffplay,
    /// ffplay without `-fflags nobuffer`.
    FfplayBuffered,
    Gst,
    Probe,
}

impl PlayerKind {
    fn name(self) -> &'static str {
        match self {
            PlayerKind::Ffplay => "ffplay",
            PlayerKind::FfplayBuffered => "ffplay-buf",
            PlayerKind::Gst => "gst",
            PlayerKind::Probe => "probe",
        }
    }

    fn parse(s: &str) -> PlayerKind {
        match s {
            "ffplay" => PlayerKind::Ffplay,
            "ffplay-buf" => PlayerKind::FfplayBuffered,
            "gst" | "gstreamer" => PlayerKind::Gst,
            "probe" => PlayerKind::Probe,
            other => panic!("unknown player {other} (ffplay, ffplay-buf, gst, probe)"),
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    modes: Vec<String>,
    phases: Vec<u32>,
    players: Vec<PlayerKind>,
    secs_per_join: f64,
    latency_ms: u64,
    /// ffplay's `-probesize`, bytes.
    ffplay_probesize: u64,
    build: bool,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            modes: vec!["live".into(), "cache".into(), "keyframe".into()],
            phases: vec![5, 30, 55, 90],
            players: vec![PlayerKind::Ffplay, PlayerKind::Gst, PlayerKind::Probe],
            secs_per_join: 4.0,
            latency_ms: 20,
            ffplay_probesize: 32768,
            build: true,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        let value = |i: usize| -> &str {
            args.get(i + 1)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        let list = |i: usize| -> Vec<String> {
            value(i)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        while i < args.len() {
            match args[i].as_str() {
                "--modes" => o.modes = list(i),
                "--phases" => {
                    o.phases = list(i)
                        .iter()
                        .map(|p| match p.parse::<u32>() {
                            Ok(p) if p < 100 => p,
                            _ => panic!("--phases: {p} is not a percentage 0..99"),
                        })
                        .collect()
                }
                "--players" => {
                    o.players = list(i)
                        .iter()
                        .map(String::as_str)
                        .map(PlayerKind::parse)
                        .collect()
                }
                "--secs-per-join" => {
                    o.secs_per_join = value(i)
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s >= 1.5 && *s <= 60.0)
                        .expect("--secs-per-join takes seconds, 1.5..60")
                }
                "--ffplay-probesize" => {
                    o.ffplay_probesize = value(i).parse().expect("--ffplay-probesize takes bytes")
                }
                "--latency-ms" => {
                    o.latency_ms = value(i).parse().expect("--latency-ms takes a number")
                }
                "--no-build" => {
                    o.build = false;
                    i += 1;
                    continue;
                }
                // `cargo bench` passes --bench.
                "--bench" => {
                    i += 1;
                    continue;
                }
                other => panic!("unknown option {other}"),
            }
            i += 2;
        }
        for m in &o.modes {
            assert!(
                ["live", "cache", "keyframe"].contains(&m.as_str()),
                "unknown mode {m} (live, cache, keyframe)"
            );
        }
        o
    }
}

// ---------------------------------------------------------------------------
// The publisher and what it sent
// ---------------------------------------------------------------------------

/// One video frame as the publisher sent it.
#[derive(Debug, Clone, Copy)]
struct SentFrame {
    /// Just before its tag was written to the socket.
    sent: Instant,
    /// FLV timestamp (DTS), ms, continuous over the loops.
    dts_ms: u64,
    /// DTS + composition offset, ms.
    pts_ms: u64,
    keyframe: bool,
    /// FLV tag body bytes.
    size: usize,
    /// Its first slice's key.
    slice: Option<u64>,
}

#[derive(Default)]
struct SentLog {
    frames: Vec<SentFrame>,
    by_pts: HashMap<u64, usize>,
    /// Every index of a slice key (the fixture repeats each loop).
    by_slice: HashMap<u64, Vec<usize>>,
    last_keyframe: Option<Instant>,
}

impl SentLog {
    fn push(&mut self, f: SentFrame) {
        let i = self.frames.len();
        self.by_pts.insert(f.pts_ms, i);
        if let Some(k) = f.slice {
            self.by_slice.entry(k).or_default().push(i);
        }
        if f.keyframe {
            self.last_keyframe = Some(f.sent);
        }
        self.frames.push(f);
    }

    /// The frame with publisher PTS within ±`tolerance_ms` of `pts_ms`,
    /// nearest first.
    fn by_pts_near(&self, pts_ms: i64, tolerance_ms: i64) -> Option<usize> {
        (0..=tolerance_ms)
            .flat_map(|d| [pts_ms - d, pts_ms + d])
            .filter(|p| *p >= 0)
            .find_map(|p| self.by_pts.get(&(p as u64)).copied())
    }

    /// The latest sending of slice `key` at or before `at`.
    fn by_slice_before(&self, key: u64, at: Instant) -> Option<usize> {
        self.by_slice
            .get(&key)?
            .iter()
            .rev()
            .copied()
            .find(|&i| self.frames[i].sent <= at)
    }

    /// The newest frame sent at or before `at`.
    fn newest_at(&self, at: Instant) -> Option<usize> {
        self.frames.iter().rposition(|f| f.sent <= at)
    }

    /// What was sent, in a line.
    fn summary(&self) -> String {
        let mean_kb = |key: bool| {
            let sizes: Vec<usize> = self
                .frames
                .iter()
                .filter(|f| f.keyframe == key)
                .map(|f| f.size)
                .collect();
            sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64 / 1024.0
        };
        let span = match (self.frames.first(), self.frames.last()) {
            (Some(a), Some(b)) => (b.dts_ms - a.dts_ms) as f64 / 1e3,
            _ => 0.0,
        };
        format!(
            "the publisher sent {} video frames over {span:.1} s of DTS; keyframes {:.1} KiB, other frames {:.1} KiB on average",
            self.frames.len(),
            mean_kb(true),
            mean_kb(false)
        )
    }

    /// The last keyframe sent at or before `at`.
    fn keyframe_before(&self, at: Instant) -> Option<Instant> {
        self.frames
            .iter()
            .rev()
            .find(|f| f.keyframe && f.sent <= at)
            .map(|f| f.sent)
    }
}

type Sent = Arc<Mutex<SentLog>>;

/// Publishes the fixture's tags to `APP/KEY` in real time, looped with
/// continuous timestamps, until `stop`; records every video frame.
fn spawn_publisher(
    addr: SocketAddr,
    fixture: &Path,
    sent: Sent,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<(), String>> {
    let bytes = std::fs::read(fixture).expect("read the fixture");
    let file = flv::parse_flv(&bytes).expect("parse the fixture");
    let video: Vec<u32> = file
        .tags
        .iter()
        .filter(|t| t.is_video() && t.is_frame())
        .map(|t| t.timestamp)
        .collect();
    assert!(video.len() > 60, "the fixture has {} frames", video.len());
    let first = file.tags.iter().map(|t| t.timestamp).min().unwrap_or(0);
    // One loop lasts as many frame intervals as it has frames, so the
    // video cadence and the GOP continue across the seam.
    let interval = f64::from(video[video.len() - 1] - video[0]) / (video.len() - 1) as f64;
    let period = (interval * video.len() as f64).round() as u64;
    let tags = file.tags;
    std::thread::spawn(move || -> Result<(), String> {
        let mut p = RtmpPublisher::connect(
            addr,
            APP,
            PublishOptions {
                realtime: false,
                ..Default::default()
            },
        )?;
        let outcome = p.publish(KEY);
        if !outcome.is_accepted() {
            return Err(format!("publish refused: {outcome:?}"));
        }
        let t0 = Instant::now();
        let mut last_audio: Option<u64> = None;
        for n in 0u64.. {
            for tag in &tags {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                // Configuration and metadata go once; later loops only
                // repeat the frames.
                if n > 0 && !tag.is_frame() {
                    continue;
                }
                let ts = n * period + u64::from(tag.timestamp - first);
                if tag.is_audio() {
                    // An AAC frame lasts 21.3 ms: one that would overlap
                    // the previous loop's last is left out.
                    if last_audio.is_some_and(|l| ts < l + 11) {
                        continue;
                    }
                    last_audio = Some(ts);
                }
                let due = t0 + Duration::from_millis(ts);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let out = FlvTag {
                    tag_type: tag.tag_type,
                    timestamp: ts as u32,
                    data: tag.data.clone(),
                };
                let at = Instant::now();
                let report = p.send_tags(std::slice::from_ref(&out));
                if let Some(e) = report.error {
                    return Err(e);
                }
                if tag.is_video() && tag.is_frame() {
                    let cts = i64::from(tag.composition_time().unwrap_or(0));
                    sent.lock().unwrap().push(SentFrame {
                        sent: at,
                        dts_ms: ts,
                        pts_ms: (ts as i64 + cts).max(0) as u64,
                        keyframe: tag.is_keyframe(),
                        size: tag.data.len(),
                        slice: avcc_key(&tag.data),
                    });
                }
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// One join
// ---------------------------------------------------------------------------

/// What a player did during one join, on our clock.
#[derive(Default)]
struct Seen {
    /// Player process spawned / handshake began.
    start: Option<Instant>,
    /// sluice accepted it (its log) / the handshake completed (probe).
    connected: Option<Instant>,
    /// Frames shown (received complete, for the probe), in order, each
    /// with the publisher frame it was tied to.
    shown: Vec<(Instant, Option<usize>)>,
    /// The first picture it could show, where that is not the first
    /// frame shown (the probe: its first complete IDR).
    first_picture: Option<Instant>,
    /// ffplay's A-V, seconds.
    av: Vec<(Instant, f64)>,
    errors: usize,
    /// Player-specific figures for the summary line.
    extra: Vec<(&'static str, f64)>,
    /// Anything worth a line under the table.
    notes: Vec<String>,
}

struct Join<'a> {
    server: &'a Sluice,
    sent: &'a Sent,
    mode: &'a str,
    /// How long the player runs.
    run_for: Duration,
    latency_ms: u64,
    ffplay_probesize: u64,
}

impl Join<'_> {
    fn streamid(&self) -> String {
        format!("#!::r={APP}/{KEY},m=request,join={}", self.mode)
    }

    fn run_for(&self) -> Duration {
        self.run_for
    }

    /// When sluice logged its first "srt player connected" after line `from`.
    fn connected_in_log(&self, from: usize) -> Option<Instant> {
        self.server
            .log()
            .timed_lines(from)
            .into_iter()
            .find(|(_, l)| l.contains("srt player connected"))
            .map(|(at, _)| at)
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// ffplay, with `-fflags nobuffer` when `nobuffer`.
fn ffplay(j: &Join, nobuffer: bool) -> Seen {
    let url = format!(
        "srt://{}?streamid={}&latency={}",
        j.server.srt_addr(),
        percent_encode(&j.streamid()),
        j.latency_ms * 1000
    );
    let mut cmd = Command::new("ffplay");
    cmd.env("SDL_VIDEODRIVER", "dummy")
        .env("SDL_AUDIODRIVER", "dummy")
        .arg("-hide_banner")
        .args(if nobuffer {
            &["-fflags", "nobuffer"][..]
        } else {
            &[]
        })
        .args(["-flags", "low_delay"])
        .arg("-probesize")
        .arg(j.ffplay_probesize.to_string())
        .args(["-analyzeduration", "200000"])
        .args(["-vf", "showinfo", "-af", "ashowinfo", "-loglevel", "info"])
        .arg(&url);
    let log_from = j.server.log().len();
    let start = Instant::now();
    let mut child = ChildGuard::spawn_foreground_split_cr("ffplay", cmd);
    let exited = child.wait_exit(j.run_for());
    child.kill();
    let lines = child.stderr().timed_lines(0);
    let mut seen = Seen {
        start: Some(start),
        connected: j.connected_in_log(log_from),
        ..Seen::default()
    };
    if let Some(status) = exited {
        seen.notes.push(format!(
            "ffplay exited early ({status}): {}",
            child.stderr().tail(5).replace('\n', " | ")
        ));
    }
    let sent = j.sent.lock().unwrap();
    let mut status_lines = 0;
    let mut video_only = 0;
    let dump = std::env::var_os("JOIN_LATENCY_DUMP").is_some();
    for (at, line) in lines {
        if line.contains("Parsed_ashowinfo_") {
            continue;
        }
        if line.contains("Parsed_showinfo_") {
            // `n:   0 pts: 492030 pts_time:5.467 ...`, pts in 1/90000.
            if let Some(pts) = field_after(&line, " pts:").and_then(|v| v.parse::<i64>().ok()) {
                let ms = pts / 90 - TIMESTAMP_OFFSET_MS as i64;
                seen.shown.push((at, sent.by_pts_near(ms, 5)));
            }
        } else if let Some(av) = field_after(&line, "A-V:") {
            status_lines += 1;
            if dump && status_lines % 10 == 1 {
                eprintln!("dump status {line}");
            }
            if let Ok(v) = av.parse::<f64>() {
                if v.is_finite() {
                    seen.av.push((at, v));
                }
            }
        } else if line.contains("M-V:") {
            // Video only: probing found no usable audio stream.
            video_only += 1;
        } else if dump && !line.contains("color_range") {
            eprintln!("dump ffplay {line}");
        } else if is_decode_error(&line) {
            if dump {
                eprintln!("dump ffplay {line}");
            }
            seen.errors += 1;
            if seen.errors <= 3 {
                seen.notes.push(format!("ffplay: {line}"));
            }
        }
    }
    if video_only > 0 {
        seen.notes.push(format!(
            "ffplay: video only ({video_only} M-V status lines): probing found no usable audio stream, so video free-runs"
        ));
    } else if seen.av.is_empty() {
        seen.notes.push(format!(
            "ffplay: no A-V value in {status_lines} status lines (audio clock not running)"
        ));
    }
    seen
}

/// The whitespace-delimited value after `key` (`key` itself may be
/// followed by spaces).
fn field_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()
}

/// ffplay's complaints from the decoder or the demuxer.
fn is_decode_error(line: &str) -> bool {
    const PATTERNS: [&str; 8] = [
        "error",
        "concealing",
        "corrupt",
        "non-existing pps",
        "decode_slice_header",
        "no frame!",
        "co located",
        "missing picture",
    ];
    let l = line.to_ascii_lowercase();
    l.starts_with("[h264 @") || PATTERNS.iter().any(|p| l.contains(p))
}

/// `H:MM:SS.NNNNNNNNN` -> ns.
fn gst_time(s: &str) -> Option<u64> {
    let mut it = s.trim_end_matches(',').split(':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let (sec, frac) = it.next()?.split_once('.')?;
    let sec: u64 = sec.parse().ok()?;
    let ns: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + ns)
}

/// A buffer in a `last-message = chain ...` line.
struct GstBuffer {
    bytes: usize,
    pts_ns: Option<u64>,
    /// Its byte offset in its element's output (h264parse counts them).
    offset: Option<u64>,
}

fn gst_chain(line: &str) -> Option<GstBuffer> {
    let rest = &line[line.find("last-message = chain")?..];
    let open = rest.find(") (")? + 3;
    let bytes: usize = rest[open..].split_whitespace().next()?.parse().ok()?;
    let pts_ns = field_after(rest, " pts:").and_then(gst_time);
    let offset = field_after(rest, " offset:").and_then(|v| v.trim_end_matches(',').parse().ok());
    Some(GstBuffer {
        bytes,
        pts_ns,
        offset,
    })
}

fn gst(j: &Join, dir: &TempDir) -> Seen {
    let es = dir.join(&format!("gst-{}.es", j.mode));
    let _ = std::fs::remove_file(&es);
    let pipeline = [
        "srtsrc".to_string(),
        format!("uri=srt://{}", j.server.srt_addr()),
        format!("latency={}", j.latency_ms),
        format!("streamid=\"{}\"", j.streamid()),
        "!".into(),
        "tsdemux".into(),
        "!".into(),
        "h264parse".into(),
        "!".into(),
        "identity".into(),
        "name=enc".into(),
        "silent=false".into(),
        "!".into(),
        "tee".into(),
        "name=t".into(),
        "!".into(),
        "queue".into(),
        "!".into(),
        "avdec_h264".into(),
        "!".into(),
        "fakesink".into(),
        "name=shown".into(),
        "sync=true".into(),
        "silent=false".into(),
        "t.".into(),
        "!".into(),
        "queue".into(),
        "!".into(),
        "filesink".into(),
        format!("location={}", es.display()),
        "buffer-mode=unbuffered".into(),
        "sync=false".into(),
        "async=false".into(),
    ];
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.env("GST_DEBUG", "2")
        .env("GST_DEBUG_NO_COLOR", "1")
        .arg("-v")
        .args(&pipeline);
    let log_from = j.server.log().len();
    let start = Instant::now();
    let mut child = ChildGuard::spawn_foreground_split_cr("gst-launch-1.0", cmd);
    let exited = child.wait_exit(j.run_for());
    child.kill();
    let mut seen = Seen {
        start: Some(start),
        connected: j.connected_in_log(log_from),
        ..Seen::default()
    };
    if let Some(status) = exited {
        seen.notes.push(format!(
            "gst-launch exited early ({status}): {}",
            child.stderr().tail(5).replace('\n', " | ")
        ));
    }
    let bytes = std::fs::read(&es).unwrap_or_default();
    let _ = std::fs::remove_file(&es);
    let sent = j.sent.lock().unwrap();
    // Encoded access units in order: cut each out of the file at its
    // offset (from the first's), or after the previous one.
    let mut offset = 0usize;
    let mut base: Option<u64> = None;
    let mut skipped = 0;
    let mut by_pts: HashMap<u64, Option<usize>> = HashMap::new();
    let mut warnings = 0;
    let mut errors = 0;
    let mut decreasing = 0;
    for (at, line) in child.stdout().timed_lines(0) {
        if line.contains("GstIdentity:enc: last-message = chain") {
            let Some(b) = gst_chain(&line) else {
                continue;
            };
            if let Some(o) = b.offset {
                let at = o.saturating_sub(*base.get_or_insert(o)) as usize;
                if at != offset {
                    skipped += 1;
                }
                offset = at;
            }
            let Some(au) = bytes.get(offset..offset + b.bytes) else {
                break;
            };
            offset += b.bytes;
            let tied = access_unit_slice(au).and_then(|(k, _)| sent.by_slice_before(k, at));
            if let Some(pts) = b.pts_ns {
                by_pts.insert(pts, tied);
            }
        } else if line.starts_with("ERROR") {
            errors += 1;
        } else if line.starts_with("WARNING") {
            warnings += 1;
        }
    }
    for (at, line) in child.stdout().timed_lines(0) {
        if line.contains("GstFakeSink:shown: last-message = chain") {
            if let Some(b) = gst_chain(&line) {
                let tied = b.pts_ns.and_then(|p| by_pts.get(&p).copied().flatten());
                seen.shown.push((at, tied));
            }
        }
    }
    for (_, line) in child.stderr().timed_lines(0) {
        if line.contains(" WARN ") {
            warnings += 1;
            if line.contains("decreasing timestamp") {
                decreasing += 1;
            }
        } else if line.contains(" ERROR ") {
            errors += 1;
        }
    }
    if skipped > 0 {
        seen.notes.push(format!(
            "gst: {skipped} access units printed by `enc` out of sequence (a missing line)"
        ));
    }
    seen.errors = warnings + errors;
    if warnings + errors > 0 {
        seen.notes.push(format!(
            "gst: {warnings} warnings ({decreasing} avdec 'decreasing timestamp'), {errors} errors"
        ));
    }
    seen
}

fn probe(j: &Join) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let player = {
        let (srt, sid, stop) = (j.server.srt_addr(), j.streamid(), stop.clone());
        let latency = Duration::from_millis(j.latency_ms);
        std::thread::spawn(move || play(srt, &sid, latency, &stop))
    };
    std::thread::sleep(j.run_for());
    stop.store(true, Ordering::Relaxed);
    let played = match player.join().expect("probe thread") {
        Ok(p) => p,
        Err(e) => panic!("probe: {e}\n{}", j.server.log_tail(40)),
    };
    let sent = j.sent.lock().unwrap();
    let mut seen = Seen {
        start: Some(played.started),
        connected: played.connected,
        ..Seen::default()
    };
    // What a player decodes: the frames as released, in order. A frame
    // whose slice the publisher never sent lost a datagram that came too
    // late for its TSBPD time: damaged, not evidence against the mapping.
    let (mut checked, mut wrong, mut damaged) = (0, Vec::new(), 0);
    for f in &played.released {
        let tied = sent.by_slice_before(f.key, f.last);
        seen.shown.push((f.last, tied));
        if f.idr && seen.first_picture.is_none() {
            seen.first_picture = Some(f.last);
        }
        if !sent.by_slice.contains_key(&f.key) {
            damaged += 1;
            continue;
        }
        // The TS PTS is the publisher's PTS + TIMESTAMP_OFFSET_MS.
        if let Some(pts) = f.pts_90k {
            checked += 1;
            let want = (pts / 90).checked_sub(TIMESTAMP_OFFSET_MS);
            let at = want.and_then(|ms| sent.by_pts.get(&ms).copied());
            if at.is_none() || at.and_then(|i| sent.frames[i].slice) != Some(f.key) {
                wrong.push(pts);
            }
        }
    }
    // Network arrival, for frames whose datagrams all came the first time.
    if let Some(c) = played.connected {
        let since = |t: Instant| ms(t.saturating_duration_since(c));
        let intact = |f: &&TsFrame| sent.by_slice.contains_key(&f.key);
        let first_idr = played.frames.iter().find(|f| f.idr);
        let net_idr = first_idr.filter(intact).map_or(f64::NAN, |f| since(f.last));
        let live = sent.newest_at(c);
        let net_live = played
            .frames
            .iter()
            .filter(intact)
            .find(|f| {
                live.is_some_and(|p| sent.by_slice_before(f.key, f.last).is_some_and(|i| i >= p))
            })
            .map_or(f64::NAN, |f| since(f.last));
        seen.extra.push(("net_idr_ms", net_idr));
        seen.extra.push(("net_live_ms", net_live));
        let broken = played.frames.iter().filter(|f| !intact(f)).count();
        seen.notes.push(format!(
            "probe: handshake {:.1} ms; at network arrival, connected -> first IDR complete {} ms, -> live point {} ms; {broken} of {} frames had a datagram retransmitted",
            ms(c.saturating_duration_since(played.started)),
            f(net_idr),
            f(net_live),
            played.frames.len()
        ));
    }
    if damaged > 0 {
        seen.notes.push(format!(
            "probe: {damaged} of {} frames released damaged (a datagram dropped as too late)",
            played.released.len()
        ));
    }
    if j.mode == "cache" && (checked == 0 || !wrong.is_empty()) {
        let log = j.server.log_tail(30);
        drop(sent);
        panic!(
            "join=cache: {} of {checked} frames do not have TS PTS = publisher PTS + {TIMESTAMP_OFFSET_MS} ms \
             with the same slice (first PTS {:?}); the bench ties ffplay's frames by this mapping\n{log}",
            wrong.len(),
            wrong.iter().take(5).collect::<Vec<_>>(),
        );
    }
    if !wrong.is_empty() {
        seen.notes.push(format!(
            "probe: {} of {checked} frames have a TS PTS other than publisher PTS + {TIMESTAMP_OFFSET_MS} ms",
            wrong.len()
        ));
    }
    seen
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

struct Row {
    mode: String,
    phase: u32,
    player: PlayerKind,
    phase_ms: f64,
    conn_ms: f64,
    first_ms: f64,
    live_ms: f64,
    early_ms: f64,
    settled_ms: f64,
    last_ms: f64,
    av_ms: f64,
    errors: usize,
    shown: usize,
    tied: usize,
    extra: Vec<(&'static str, f64)>,
    notes: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn figures(
    mode: &str,
    phase: u32,
    player: PlayerKind,
    run_for: Duration,
    seen: Seen,
    sent: &SentLog,
) -> Row {
    let start = seen.start.expect("a start");
    let since = |t: Instant| ms(t.saturating_duration_since(start));
    let window = |from: f64, to: f64| -> Vec<f64> {
        seen.shown
            .iter()
            .filter(|(at, _)| (from..to).contains(&since(*at)))
            .filter_map(|(at, i)| i.map(|i| ms(at.saturating_duration_since(sent.frames[i].sent))))
            .collect()
    };
    if std::env::var_os("JOIN_LATENCY_DUMP").is_some() {
        // Every frame shown: ms since start, publisher PTS, ms behind.
        for (at, i) in &seen.shown {
            let (pts, behind) = i.map_or((f64::NAN, f64::NAN), |i| {
                let fr = &sent.frames[i];
                (fr.pts_ms as f64, ms(at.saturating_duration_since(fr.sent)))
            });
            eprintln!(
                "dump {mode} {phase}% {}: at {:.0} pts {pts:.0} behind {behind:.0}",
                player.name(),
                since(*at)
            );
        }
        for (at, v) in &seen.av {
            eprintln!(
                "dump {mode} {phase}% {}: at {:.0} A-V {v}",
                player.name(),
                since(*at)
            );
        }
    }
    let live_point = seen.connected.and_then(|c| sent.newest_at(c));
    let live_ms = match (seen.connected, live_point) {
        (Some(c), Some(p)) => seen
            .shown
            .iter()
            .find(|(_, i)| i.is_some_and(|i| i >= p))
            .map_or(f64::NAN, |(at, _)| ms(at.saturating_duration_since(c))),
        _ => f64::NAN,
    };
    let phase_ms = seen
        .connected
        .and_then(|c| Some(ms(c - sent.keyframe_before(c)?)))
        .unwrap_or(f64::NAN);
    let av: Vec<f64> = seen
        .av
        .iter()
        .filter(|(at, _)| since(*at) >= 1000.0)
        .map(|(_, v)| v * 1e3)
        .collect();
    Row {
        mode: mode.to_string(),
        phase,
        player,
        phase_ms,
        conn_ms: seen.connected.map_or(f64::NAN, since),
        first_ms: seen
            .first_picture
            .or(seen.shown.first().map(|(at, _)| *at))
            .map_or(f64::NAN, since),
        live_ms,
        early_ms: median(window(500.0, 1000.0)),
        settled_ms: median(window(1000.0, f64::INFINITY)),
        last_ms: median(window(ms(run_for) - 1000.0, f64::INFINITY)),
        av_ms: median(av),
        errors: seen.errors,
        shown: seen.shown.len(),
        tied: seen.shown.iter().filter(|(_, i)| i.is_some()).count(),
        extra: seen.extra,
        notes: seen.notes,
    }
}

fn f(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<8} {:>5} {:<10} {:>8} {:>7} {:>8} {:>7} {:>8} {:>10} {:>7} {:>6} {:>6} {:>6} {:>5}",
        "mode",
        "phase",
        "player",
        "phase_ms",
        "conn_ms",
        "first_ms",
        "live_ms",
        "early_ms",
        "settled_ms",
        "last_ms",
        "av_ms",
        "errors",
        "shown",
        "tied"
    );
    for r in rows {
        println!(
            "{:<8} {:>4}% {:<10} {:>8} {:>7} {:>8} {:>7} {:>8} {:>10} {:>7} {:>6} {:>6} {:>6} {:>5}",
            r.mode,
            r.phase,
            r.player.name(),
            f(r.phase_ms),
            f(r.conn_ms),
            f(r.first_ms),
            f(r.live_ms),
            f(r.early_ms),
            f(r.settled_ms),
            f(r.last_ms),
            f(r.av_ms),
            r.errors,
            r.shown,
            r.tied
        );
    }
    println!();
    for r in rows {
        for n in &r.notes {
            println!("  {} {}% {}: {n}", r.mode, r.phase, r.player.name());
        }
    }
    println!();
    for r in rows {
        let extra: String = r
            .extra
            .iter()
            .map(|(k, v)| format!(" {k}={}", f(*v)))
            .collect();
        println!(
            "join_latency mode={} phase={} player={} phase_ms={} conn_ms={} first_ms={} live_ms={} early_ms={} settled_ms={} last_ms={} av_ms={} decode_errors={} shown={} tied={}{extra}",
            r.mode,
            r.phase,
            r.player.name(),
            f(r.phase_ms),
            f(r.conn_ms),
            f(r.first_ms),
            f(r.live_ms),
            f(r.early_ms),
            f(r.settled_ms),
            f(r.last_ms),
            f(r.av_ms),
            r.errors,
            r.shown,
            r.tied
        );
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn gst_element(element: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", element])
        .status()
        .is_ok_and(|s| s.success())
}

/// Why `player` cannot run here, if it cannot.
fn missing(player: PlayerKind) -> Option<String> {
    match player {
        PlayerKind::Ffplay | PlayerKind::FfplayBuffered if !on_path("ffplay") => {
            Some("ffplay not installed (ffmpeg)".into())
        }
        PlayerKind::Gst if !on_path("gst-launch-1.0") || !on_path("gst-inspect-1.0") => {
            Some("gst-launch-1.0 not installed (gstreamer1.0-tools)".into())
        }
        PlayerKind::Gst => {
            let absent: Vec<&str> = ["srtsrc", "tsdemux", "h264parse", "avdec_h264"]
                .into_iter()
                .filter(|e| !gst_element(e))
                .collect();
            (!absent.is_empty()).then(|| format!("GStreamer elements missing: {absent:?}"))
        }
        _ => None,
    }
}

/// Sleeps until the publisher is `phase` % into a GOP, measured from the
/// last keyframe's send instant; a phase already past waits for the next
/// GOP.
fn wait_for_phase(sent: &Sent, phase: u32, server: &Sluice) -> Result<(), String> {
    let offset = GOP * phase / 100;
    let began = Instant::now();
    loop {
        if began.elapsed() > 3 * GOP {
            return Err(format!(
                "no keyframe sent in {:?}\n{}",
                3 * GOP,
                server.log_tail(30)
            ));
        }
        if let Some(key) = sent.lock().unwrap().last_keyframe {
            let target = key + offset;
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
                return Ok(());
            }
            // Just past a keyframe that came while we waited (phase ~0).
            if key >= began {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let o = Opts::parse();
    let bin = sluice_binary(o.build);
    let flv_path = fixture();
    let mut players = Vec::new();
    for p in &o.players {
        match missing(*p) {
            Some(why) => println!("join_latency: skipping {}: {why}", p.name()),
            None => players.push(*p),
        }
    }
    let server =
        Sluice::start_foreground(&bin, &format!("[srt]\nlatency = \"{}ms\"\n", o.latency_ms));
    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = spawn_publisher(server.rtmp_addr(), &flv_path, sent.clone(), stop.clone());
    let path = format!("{APP}/{KEY}");
    wait_live(&server, &path);
    // A whole GOP in the cache before the first join.
    std::thread::sleep(GOP + GOP / 4);
    // The PTS mapping ffplay's frames are tied by, checked whatever the
    // players: the probe panics in `cache` mode when it does not hold.
    let check = Join {
        server: &server,
        sent: &sent,
        mode: "cache",
        run_for: Duration::from_millis(1500),
        latency_ms: o.latency_ms,
        ffplay_probesize: o.ffplay_probesize,
    };
    let checked = probe(&check);
    println!(
        "join_latency: TS PTS = publisher PTS + {TIMESTAMP_OFFSET_MS} ms held for the {} frames a join=cache probe played (any damaged in transit aside)",
        checked.shown.len()
    );
    let dir = TempDir::new("join-latency");
    println!(
        "join_latency: 1280x720 30 fps H.264 (B-frames, {} s GOP) + AAC over RTMP in, SRT out; SRT latency {} ms; {} s per join; modes {:?}, phases {:?} %, players {:?}",
        GOP.as_secs(),
        o.latency_ms,
        o.secs_per_join,
        o.modes,
        o.phases,
        players.iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    let mut rows = Vec::new();
    'joins: for mode in &o.modes {
        for &phase in &o.phases {
            for &player in &players {
                // A publisher that stopped says why below.
                if publisher.is_finished() {
                    break 'joins;
                }
                if let Err(e) = wait_for_phase(&sent, phase, &server) {
                    if publisher.is_finished() {
                        break 'joins;
                    }
                    panic!("{e}");
                }
                let j = Join {
                    server: &server,
                    sent: &sent,
                    mode,
                    run_for: Duration::from_secs_f64(o.secs_per_join),
                    latency_ms: o.latency_ms,
                    ffplay_probesize: o.ffplay_probesize,
                };
                let seen = match player {
                    PlayerKind::Ffplay => ffplay(&j, true),
                    PlayerKind::FfplayBuffered => ffplay(&j, false),
                    PlayerKind::Gst => gst(&j, &dir),
                    PlayerKind::Probe => probe(&j),
                };
                let row = figures(
                    mode,
                    phase,
                    player,
                    j.run_for(),
                    seen,
                    &sent.lock().unwrap(),
                );
                if mode == "cache" && player == PlayerKind::Ffplay && row.tied * 10 < row.shown * 9
                {
                    panic!(
                        "join=cache: only {} of {} frames ffplay showed have a PTS that is a publisher PTS + {TIMESTAMP_OFFSET_MS} ms",
                        row.tied, row.shown
                    );
                }
                eprintln!(
                    "join_latency: {mode} {phase}% {}: first {} ms, settled {} ms behind",
                    player.name(),
                    f(row.first_ms),
                    f(row.settled_ms)
                );
                rows.push(row);
            }
        }
    }
    let stopped_early = publisher.is_finished();
    stop.store(true, Ordering::Relaxed);
    match publisher.join().expect("publisher thread") {
        Err(e) => panic!("publisher: {e}\n{}", server.log_tail(40)),
        Ok(()) if stopped_early => panic!("the publisher stopped\n{}", server.log_tail(40)),
        Ok(()) => {}
    }
    println!("join_latency: {}", sent.lock().unwrap().summary());
    print_table(&rows);
}
