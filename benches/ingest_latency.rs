//! End-to-end latency through sluice, SRT in -> SRT out against RTMP in ->
//! SRT out, frame by frame.
//!
//! `cargo bench --bench ingest_latency -- [--secs 10] [--publisher-latency-ms 120]
//! [--player-latency-ms 20] [--only srt|rtmp] [--no-build]`
//!
//! It starts the release `sluice` on loopback, then for each ingest
//! protocol publishes the same pre-encoded 720p H.264 (B-frames) + AAC
//! fixture in real time (its MPEG-TS paced in 1316-byte writes into
//! libsrt's `srt-live-transmit`, as OBS and ffmpeg publish over SRT, or its
//! FLV tags from an in-process RTMP publisher), and plays it from an
//! in-process srt-protocol caller. Each video frame is recognised on both
//! sides by its first slice NAL unit (the relay never changes slice bytes),
//! so its latency is: when the publisher handed its first byte over -> when
//! the player received the datagram with its first byte (network arrival,
//! before the player's own TSBPD delay, so the player latency is added on
//! top by whatever player is used). It prints per protocol p50/p90/p99/max
//! of that, the SRT ingest's TSBPD latency (the larger asked: what an SRT
//! publisher costs by design), what remains once it is subtracted (the
//! relay's own part, TS demux included), and sluice's
//! `sluice_relay_latency_seconds` (arrival of a frame's media at the group
//! -> its last packet first sent).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::frames::{avcc_key, VideoStarts, TS_PACKET};
use common::harness::Sluice;
use common::media::ffmpeg_fixture;
use common::prometheus::Histogram;
use common::srt_player::{play, Played};
use common::{clock_ticks, fixture, flv, rtmp_client, sluice_binary, wait_live, CpuProbe};

const PAYLOAD: usize = 7 * TS_PACKET;

#[derive(Debug, Clone)]
struct Opts {
    secs: u64,
    publisher_latency_ms: u64,
    player_latency_ms: u64,
    build: bool,
    /// `srt` or `rtmp`: run that ingest only.
    only: Option<String>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            secs: 10,
            publisher_latency_ms: 120,
            player_latency_ms: 20,
            build: true,
            only: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        let num = |args: &[String], i: usize| -> u64 {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        while i < args.len() {
            match args[i].as_str() {
                "--secs" => o.secs = num(&args, i),
                "--publisher-latency-ms" => o.publisher_latency_ms = num(&args, i),
                "--player-latency-ms" => o.player_latency_ms = num(&args, i),
                "--only" => o.only = args.get(i + 1).cloned(),
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
        o
    }
}

/// The fixture's MPEG-TS as 1316-byte payloads, each with the instant
/// (from the first) it is due: the newest PES DTS that began in it or
/// before.
fn ts_schedule(ts: &[u8]) -> Vec<(Duration, &[u8])> {
    let mut out = Vec::new();
    let mut first: Option<u64> = None;
    let mut due = Duration::ZERO;
    for chunk in ts.chunks(PAYLOAD) {
        for p in chunk.chunks(TS_PACKET) {
            // A PES header with a PTS (and maybe a DTS) at the payload start.
            if p.len() < 19 || p[1] & 0x40 == 0 {
                continue;
            }
            let af = (p[3] >> 4) & 0x3;
            let mut i = 4;
            if af & 0x2 != 0 {
                i += 1 + p[4] as usize;
            }
            let Some(h) = p.get(i..i + 19) else { continue };
            if h[0..3] != [0, 0, 1] || h[3] < 0xC0 {
                continue;
            }
            let flags = h[7] >> 6;
            if flags == 0 {
                continue;
            }
            let at = if flags == 3 { 14 } else { 9 };
            let b = &h[at..at + 5];
            let t = (u64::from(b[0] >> 1 & 0x7) << 30)
                | (u64::from(b[1]) << 22)
                | (u64::from(b[2] >> 1) << 15)
                | (u64::from(b[3]) << 7)
                | u64::from(b[4] >> 1);
            let f = *first.get_or_insert(t);
            let ms = t.saturating_sub(f) / 90;
            due = due.max(Duration::from_millis(ms));
        }
        out.push((due, chunk));
    }
    out
}

struct Run {
    name: &'static str,
    /// Per frame: wire to wire.
    latencies_ms: Vec<f64>,
    ingest_tsbpd: Duration,
    relay_hist: Option<(f64, f64)>,
    unmatched: usize,
    /// sluice's CPU while the stream ran, % of one core.
    cpu: f64,
}

type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

/// Once `path` is live, play it for the run (less a second) and stop the
/// publisher; what the player saw and sluice's CPU meanwhile (% of a core).
fn measure(server: &Sluice, path: &str, o: &Opts, stop: &Arc<AtomicBool>) -> (Played, f64) {
    wait_live(server, path);
    let cpu = CpuProbe::start(Some(server.pid()));
    let player = {
        let (srt, path, stop) = (server.srt_addr(), path.to_string(), stop.clone());
        let latency = Duration::from_millis(o.player_latency_ms);
        std::thread::spawn(move || play(srt, &path, latency, &stop))
    };
    std::thread::sleep(Duration::from_secs(o.secs).saturating_sub(Duration::from_secs(1)));
    let cpu = cpu.percent(clock_ticks());
    stop.store(true, Ordering::Relaxed);
    let played = player.join().expect("player thread").unwrap_or_else(|e| {
        eprintln!("ingest_latency: player: {e}");
        Played {
            frames: Vec::new(),
            released: Vec::new(),
            started: Instant::now(),
            connected: None,
        }
    });
    (played, cpu)
}

fn relay_histogram(server: &Sluice) -> Option<(f64, f64)> {
    let h = Histogram::parse(&server.metrics_text(), "sluice_relay_latency_seconds");
    Some((h.quantile(0.5)? * 1e3, h.quantile(0.99)? * 1e3))
}

fn run_srt(bin: &Path, ts: &[u8], o: &Opts) -> Run {
    let server = Sluice::start_foreground(
        bin,
        &format!("[srt]\nlatency = \"{}ms\"\n", o.player_latency_ms),
    );
    let path = "live/srtin";
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Sent = Arc::default();
    let schedule = ts_schedule(ts);
    let limit = Duration::from_secs(o.secs);
    // libsrt publishes, as OBS and ffmpeg do: srt-live-transmit reads the
    // paced TS from its stdin and sends each 1316-byte read as one payload.
    let url = format!(
        "srt://{}?streamid=#!::r={path},m=publish&latency={}",
        server.srt_addr(),
        o.publisher_latency_ms
    );
    let mut slt = std::process::Command::new("srt-live-transmit")
        .args(["-q", "-chunk:1316", "file://con", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("srt-live-transmit (apt install srt-tools)");
    let mut stdin = slt.stdin.take().expect("stdin");
    let publisher = {
        let stop = stop.clone();
        let sent = sent.clone();
        let schedule: Vec<(Duration, Vec<u8>)> = schedule
            .iter()
            .take_while(|(d, _)| *d <= limit)
            .map(|(d, c)| (*d, c.to_vec()))
            .collect();
        std::thread::spawn(move || -> Result<(), String> {
            use std::io::Write as _;
            let mut starts = VideoStarts::new();
            let mut keys = Vec::new();
            let t0 = Instant::now();
            for (due, chunk) in &schedule {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(w) = (t0 + *due).checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let at = Instant::now();
                stdin.write_all(chunk).map_err(|e| e.to_string())?;
                stdin.flush().map_err(|e| e.to_string())?;
                starts.push(chunk, at, &mut keys);
                let mut s = sent.lock().unwrap();
                for f in keys.drain(..) {
                    s.entry(f.key).or_insert(f.first);
                }
            }
            Ok(())
        })
    };
    let (got, cpu) = measure(&server, path, o, &stop);
    if let Err(e) = publisher.join().expect("publisher thread") {
        panic!("srt publisher: {e}\n{}", server.log_tail(40));
    }
    let _ = slt.kill();
    let _ = slt.wait();
    // Both ends ask for a latency; the larger one is used.
    let tsbpd = Duration::from_millis(o.publisher_latency_ms.max(o.player_latency_ms));
    let relay_hist = relay_histogram(&server);
    let sent = sent.lock().unwrap().clone();
    finish("SRT in -> SRT out", got, &sent, tsbpd, relay_hist, cpu)
}

fn run_rtmp(bin: &Path, flv_path: &Path, o: &Opts) -> Run {
    let server = Sluice::start_foreground(
        bin,
        &format!("[srt]\nlatency = \"{}ms\"\n", o.player_latency_ms),
    );
    let path = "live/rtmpin";
    let bytes = std::fs::read(flv_path).expect("read the fixture");
    let file = flv::parse_flv(&bytes).expect("parse the fixture");
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Sent = Arc::default();
    let limit_ms = o.secs as u32 * 1000;
    let publisher = {
        let sent = sent.clone();
        let stop = stop.clone();
        let addr = server.rtmp_addr();
        let tags: Vec<flv::FlvTag> = file
            .tags
            .into_iter()
            .filter(|t| t.timestamp <= limit_ms)
            .collect();
        std::thread::spawn(move || -> Result<(), String> {
            let mut p = rtmp_client::RtmpPublisher::connect(
                addr,
                "live",
                rtmp_client::PublishOptions {
                    realtime: false,
                    ..Default::default()
                },
            )?;
            let outcome = p.publish("rtmpin");
            if !outcome.is_accepted() {
                return Err(format!("publish refused: {outcome:?}"));
            }
            let t0 = Instant::now();
            let first = tags.first().map_or(0, |t| t.timestamp);
            for tag in &tags {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = t0 + Duration::from_millis(u64::from(tag.timestamp - first));
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let at = Instant::now();
                let report = p.send_tags(std::slice::from_ref(tag));
                if let Some(e) = report.error {
                    return Err(e);
                }
                if tag.is_video() {
                    if let Some(k) = avcc_key(&tag.data) {
                        sent.lock().unwrap().entry(k).or_insert(at);
                    }
                }
            }
            Ok(())
        })
    };
    let (got, cpu) = measure(&server, path, o, &stop);
    if let Err(e) = publisher.join().expect("publisher thread") {
        panic!("rtmp publisher: {e}\n{}", server.log_tail(40));
    }
    let relay_hist = relay_histogram(&server);
    let sent = sent.lock().unwrap().clone();
    finish(
        "RTMP in -> SRT out",
        got,
        &sent,
        Duration::ZERO,
        relay_hist,
        cpu,
    )
}

fn finish(
    name: &'static str,
    played: Played,
    sent: &HashMap<u64, Instant>,
    ingest_tsbpd: Duration,
    relay_hist: Option<(f64, f64)>,
    cpu: f64,
) -> Run {
    let mut latencies_ms = Vec::new();
    let mut unmatched = 0;
    let connected = played.connected.unwrap_or_else(Instant::now);
    for f in played.frames {
        let (k, at) = (f.key, f.first);
        match sent.get(&k) {
            // Frames sent before the player connected came from the GOP
            // cache: old by design (the join policy), not relay latency.
            Some(s) if *s < connected => {}
            Some(s) => latencies_ms.push(at.saturating_duration_since(*s).as_secs_f64() * 1e3),
            None => unmatched += 1,
        }
    }
    Run {
        name,
        latencies_ms,
        ingest_tsbpd,
        relay_hist,
        unmatched,
        cpu,
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(r: &mut Run) {
    let v = &mut r.latencies_ms;
    v.sort_by(|a, b| a.total_cmp(b));
    let tsbpd = r.ingest_tsbpd.as_secs_f64() * 1e3;
    println!(
        "{:<20} frames {:>4} (unmatched {})  wire-to-wire ms p50 {:>7.2} p90 {:>7.2} p99 {:>7.2} max {:>7.2}",
        r.name,
        v.len(),
        r.unmatched,
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "{:<20} ingest TSBPD {:>5.0} ms; relay-added (wire-to-wire minus it) p50 {:>7.2} p99 {:>7.2}; sluice_relay_latency_seconds p50 {} p99 {}; sluice CPU {:.1} %",
        "",
        tsbpd,
        pct(v, 0.5) - tsbpd,
        pct(v, 0.99) - tsbpd,
        r.relay_hist.map_or("-".into(), |h| format!("{:.2} ms", h.0)),
        r.relay_hist.map_or("-".into(), |h| format!("{:.2} ms", h.1)),
        r.cpu,
    );
}

fn ts_fixture(flv: &Path) -> PathBuf {
    let input = flv.to_string_lossy().to_string();
    ffmpeg_fixture(
        "h264_aac_1280x720_30fps_3M_10s.ts",
        &["-i", &input, "-c", "copy", "-f", "mpegts"],
    )
}

fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

fn main() {
    let o = Opts::parse();
    let bin = sluice_binary(o.build);
    let flv_path = fixture();
    let ts = read_all(&ts_fixture(&flv_path)).expect("read the TS fixture");
    // The fixture is 10 s long.
    let o = Opts {
        secs: o.secs.min(10),
        ..o
    };
    println!(
        "ingest_latency: {} s of 1280x720 30 fps H.264 (B-frames) + AAC; SRT publisher latency {} ms, player latency {} ms (measured at network arrival)",
        o.secs, o.publisher_latency_ms, o.player_latency_ms
    );
    let wants = |p: &str| o.only.as_deref().is_none_or(|only| only == p);
    let mut runs = Vec::new();
    if wants("srt") {
        runs.push(run_srt(&bin, &ts, &o));
    }
    if wants("rtmp") {
        runs.push(run_rtmp(&bin, &flv_path, &o));
    }
    for r in &mut runs {
        report(r);
    }
}
