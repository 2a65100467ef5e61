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
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

#[allow(dead_code)]
#[path = "../tests/common/flv.rs"]
mod flv;
#[allow(dead_code)]
#[path = "../tests/common/rtmp_client.rs"]
mod rtmp_client;

use common::harness::Sluice;
use common::media::ffmpeg_fixture;
use common::prometheus::Histogram;
use common::{clock_ticks, fixture, sluice_binary, CpuProbe};
use srt_protocol::connection::DuplexConnection;
use srt_protocol::options::{PacketCount, PacketSize};
use srt_protocol::packet::{ControlPacket, ControlTypes, Packet, SeqNumber, TimeStamp};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::ConnectionResult;
use srt_protocol::settings::ConnInitSettings;

const TS_PACKET: usize = 188;
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

/// A video frame's identity: its first slice NAL unit (types 1 and 5 in
/// H.264), hashed, trailing zero bytes dropped.
fn slice_key(nal: &[u8]) -> Option<u64> {
    let ty = nal.first()? & 0x1F;
    if ty != 1 && ty != 5 {
        return None;
    }
    let end = nal.iter().rposition(|b| *b != 0)? + 1;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    nal[..end].hash(&mut h);
    Some(h.finish())
}

/// The key of an Annex B access unit (a PES payload).
fn annexb_key(es: &[u8]) -> Option<u64> {
    let mut i = 0;
    let mut starts = Vec::new();
    while i + 3 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(es.len(), |e| e - 3);
        if let Some(k) = slice_key(&es[s..end.max(s)]) {
            return Some(k);
        }
    }
    None
}

/// The key of an AVCC (4-byte length) FLV video frame body.
fn avcc_key(body: &[u8]) -> Option<u64> {
    // FLV AVC video tag: frame/codec byte, packet type 1, 3-byte CTS.
    if body.len() < 5 || body[0] & 0x0F != 7 || body[1] != 1 {
        return None;
    }
    let mut d = &body[5..];
    while d.len() >= 4 {
        let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let nal = d.get(4..4 + n)?;
        if let Some(k) = slice_key(nal) {
            return Some(k);
        }
        d = &d[4 + n..];
    }
    None
}

/// Video frames in a TS byte stream, each with the instant the packet
/// that began its PES crossed the wire. A PES ends where the next on its
/// PID begins (video PES_packet_length is usually 0), so a frame is known
/// one PES late; its start instant is still its own.
#[derive(Default)]
struct VideoStarts {
    /// Per PID: the PES being gathered and when its first packet came.
    current: HashMap<u16, (Vec<u8>, Instant)>,
}

impl VideoStarts {
    fn new() -> Self {
        Self::default()
    }

    /// Feed `data` that crossed the wire at `at`; appends (key, start
    /// instant) of every video frame completed by it.
    fn push(&mut self, data: &[u8], at: Instant, out: &mut Vec<(u64, Instant)>) {
        for p in data.chunks(TS_PACKET) {
            if p.len() < TS_PACKET || p[0] != 0x47 {
                continue;
            }
            let pusi = p[1] & 0x40 != 0;
            let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
            if pid < 0x20 || pid == 0x1FFF || p[3] & 0x10 == 0 {
                continue;
            }
            let mut i = 4;
            if p[3] & 0x20 != 0 {
                i += 1 + p[4] as usize;
            }
            let Some(payload) = p.get(i..) else { continue };
            if pusi {
                if let Some((pes, start)) = self.current.remove(&pid) {
                    if let Some(k) = pes_key(&pes) {
                        out.push((k, start));
                    }
                }
                // Video PES only (stream_id 0xE0..=0xEF).
                if payload.len() > 9 && payload[..3] == [0, 0, 1] && payload[3] & 0xF0 == 0xE0 {
                    self.current.insert(pid, (payload.to_vec(), at));
                }
            } else if let Some((pes, _)) = self.current.get_mut(&pid) {
                if pes.len() < 4 << 20 {
                    pes.extend_from_slice(payload);
                }
            }
        }
    }
}

/// The key of a whole video PES packet.
fn pes_key(pes: &[u8]) -> Option<u64> {
    let header = *pes.get(8)? as usize;
    annexb_key(pes.get(9 + header..)?)
}

fn send_packet(sock: &UdpSocket, buf: &mut Vec<u8>, p: &Packet, to: SocketAddr) {
    buf.clear();
    p.serialize(buf);
    let _ = sock.send_to(buf, to);
}

/// What a player saw: (key, first byte arrival) of every video frame, and
/// when it connected.
type Played = (Vec<(u64, Instant)>, Option<Instant>);

/// Play `streamid` from `remote` with an srt-protocol caller on a blocking
/// socket until `stop`, timing every video frame at network arrival.
fn play(
    remote: SocketAddr,
    streamid: &str,
    latency: Duration,
    stop: &AtomicBool,
) -> Result<Played, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let settings = ConnInitSettings {
        send_latency: latency,
        recv_latency: latency,
        recv_buffer_size: PacketCount(8192),
        max_packet_size: PacketSize(1500),
        ..Default::default()
    }
    .copy_randomize();
    let mut connect = Connect::new(
        remote,
        sock.local_addr().map_err(|e| e.to_string())?.ip(),
        settings,
        Some(streamid.to_string()),
        SeqNumber::new_truncate(rand::random::<u32>()),
    );
    let mut out = Vec::with_capacity(1500);
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let mut conn: Option<DuplexConnection> = None;
    let mut next_tick = start;
    while conn.is_none() {
        let now = Instant::now();
        if now.duration_since(start) > Duration::from_secs(5) {
            return Err(format!("{streamid}: handshake timeout"));
        }
        let mut r = ConnectionResult::NoAction;
        if now >= next_tick {
            r = connect.handle_tick(now);
            next_tick = now + Duration::from_millis(100);
        } else {
            sock.set_read_timeout(Some(next_tick - now)).ok();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Ok(p) = Packet::parse(&mut &buf[..n], false) {
                    r = connect.handle_packet(Ok((p, from)), Instant::now());
                }
            }
        }
        match r {
            ConnectionResult::SendPacket((p, to)) => send_packet(&sock, &mut out, &p, to),
            ConnectionResult::Connected(reply, c) => {
                if let Some((p, to)) = reply {
                    send_packet(&sock, &mut out, &p, to);
                }
                conn = Some(DuplexConnection::new(c));
            }
            ConnectionResult::Reject(_, why) => {
                return Err(format!("{streamid}: rejected {why:?}"))
            }
            ConnectionResult::Failure(e) => return Err(format!("{streamid}: {e}")),
            _ => {}
        }
    }
    let connected = Some(Instant::now());
    let mut conn = conn.expect("connected");
    let remote_sockid = conn.settings().remote_sockid;
    let mut starts = VideoStarts::new();
    let mut got = Vec::new();
    while !stop.load(Ordering::Relaxed) && conn.is_open() {
        let now = Instant::now();
        conn.check_timers(now);
        while let Some((p, to)) = conn.next_packet(now) {
            send_packet(&sock, &mut out, &p, to);
        }
        while conn.next_data(now).is_some() {}
        let wake = conn.next_timer(now).min(now + Duration::from_millis(2));
        let wait = wake.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(wait.max(Duration::from_micros(100))))
            .ok();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let at = Instant::now();
            if let Ok(p) = Packet::parse(&mut &buf[..n], false) {
                if let Packet::Data(d) = &p {
                    starts.push(&d.payload, at, &mut got);
                }
                conn.handle_packet_input(at, Ok((p, from)));
            }
        }
    }
    let shutdown = Packet::Control(ControlPacket {
        timestamp: TimeStamp::from_micros(0),
        dest_sockid: remote_sockid,
        control_type: ControlTypes::Shutdown,
    });
    send_packet(&sock, &mut out, &shutdown, remote);
    Ok((got, connected))
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
        (Vec::new(), None)
    });
    (played, cpu)
}

fn relay_histogram(server: &Sluice) -> Option<(f64, f64)> {
    let h = Histogram::parse(&server.metrics_text(), "sluice_relay_latency_seconds");
    Some((h.quantile(0.5)? * 1e3, h.quantile(0.99)? * 1e3))
}

/// Wait until the stream has a keyframe in its cache.
fn wait_live(server: &Sluice, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if server
            .stream(path)
            .and_then(|s| s.get("keyframes_in").and_then(|k| k.as_u64()))
            .is_some_and(|k| k >= 1)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics: Vec<String> = server
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("sluice_srt") && !l.starts_with('#'))
        .map(String::from)
        .collect();
    panic!(
        "{path} not live in 15 s:\n{}\n{}",
        metrics.join("\n"),
        server.log_tail(60)
    );
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
                for (k, at) in keys.drain(..) {
                    s.entry(k).or_insert(at);
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
    (got, connected): Played,
    sent: &HashMap<u64, Instant>,
    ingest_tsbpd: Duration,
    relay_hist: Option<(f64, f64)>,
    cpu: f64,
) -> Run {
    let mut latencies_ms = Vec::new();
    let mut unmatched = 0;
    let connected = connected.unwrap_or_else(Instant::now);
    for (k, at) in got {
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
