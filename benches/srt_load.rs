//! SRT egress load tool: many cheap simulated SRT players in one process.
//!
//! `cargo bench --bench srt_load -- [--steps 100,250,500] [--players N]
//! [--step-secs 10] [--ramp-per-sec 200] [--latency-ms 20] [--workers 1]
//! [--srt-workers 1] [--join live|cache|keyframe] [--libsrt N] [--otlp URL] [--no-build]`
//!
//! It builds and starts the release `sluice` (SRT latency `--latency-ms`,
//! player and per-IP handshake limits raised), publishes the 10 s 720p
//! fixture in process over RTMP to `live/bench` in a loop (FLV timestamps
//! offset by the loop index × the file's duration, so the stream never
//! jumps back), and for each step ramps simulated players up to the step's
//! count at `--ramp-per-sec`, lets them settle 2 s and measures for
//! `--step-secs`.
//!
//! A simulated player is one non-blocking UDP socket; the players are
//! spread over `--workers` threads, each an epoll loop reading its sockets
//! with `recvmmsg` in batches. The handshake is srt-protocol's sans-IO
//! `Connect` (SRT v5 caller, streamid `live/bench`); after it a lean
//! receiver written here parses the 16-byte SRT header by hand: full ACK
//! every 10 ms, RTT from ACKACK, NAK on a gap (and again every
//! max(RTT + 4·RTTVar, 20 ms) while it is open), keepalive every second,
//! a drop request skips its packets, TSBPD (base = min(arrival − timestamp),
//! a packet is due at base + timestamp + latency; a gap still open when the
//! packet after it is due is a loss), TS sync byte and continuity checks on
//! the in-order payload, and each video PES start timed at the arrival of
//! its datagram. Its PTS is mapped to the instant the publisher sent that
//! frame: player 0 recognises frames by content (`VideoStarts`) and learns
//! the constant offset between the TS PTS and the FLV timestamp + CTS.
//!
//! `--libsrt N` also runs N real libsrt players (`srt-live-transmit`,
//! Debian `srt-tools`, writing to a local UDP port read here) in the first
//! step, and prints their per-frame latency (read time − publisher send,
//! after their own TSBPD delay: compare it with the simulated players'
//! *released* latency) and TS continuity errors next to the simulated ones.
//!
//! `--otlp URL` turns traces on (`[telemetry] otlp_endpoint`): against a
//! dead collector it shows what an outage costs the relay.
//!
//! Columns, per step:
//!
//! * `players` / `conn` / `failed`: asked for, connected, failed
//!   (handshake timeout or rejection, or closed by sluice);
//! * `Mbit/s sluice` / `Mbit/s rx`: `sluice_srt_bytes_out_total` and what
//!   the players received (payload bytes, retransmissions included);
//! * `sluice CPU %`: of one core (/proc/PID/stat), and per 100 Mbit/s of
//!   sluice-counted egress; `tool CPU %`: this process (players, publisher);
//! * `RSS MB` / `KB/player`: sluice's VmRSS, and its growth over the RSS with
//!   the publisher only, divided by the players;
//! * `tool lag ms`: kernel receive timestamp (SO_TIMESTAMPNS) → this tool
//!   read the datagram, p50/p99: how far the players fall behind (latency
//!   is timed at the kernel timestamp, so this delay is not in it);
//! * `arrival ms`: publisher send → datagram with the frame's first byte
//!   arrives (network arrival, before TSBPD), p50/p99/max over every frame
//!   of every player in the step (frames sent before a player connected
//!   excluded); `released ms`: to max(arrival, TSBPD due time, the release
//!   of the packet before), what a player hands its decoder;
//! * `relay ms`: sluice's `sluice_relay_latency_seconds`, the difference of
//!   the step's start and end scrapes, p50/p99;
//! * `rx pkts`, `retrans (%)`: data packets received, those with the R flag
//!   (what sluice resent, as the players saw it; sluice counts its own in
//!   `sluice_srt_retransmitted_packets_total`); `dups`: duplicates; `NAKs`: NAK packets sent;
//!   `lost`: packets skipped at their due time; `too late`: packets that
//!   arrived after their due time; `CC err`: TS continuity (and sync byte)
//!   errors in the in-order payload; `lossy`: players with any loss;
//! * `first frame ms`: handshake start → first video keyframe PES complete,
//!   p50/p99 over the players that joined in the step.
//!
//! Every child process is killed when the tool exits or panics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

mod common;

use common::frames::{avcc_key, decode_timestamp, VideoStarts, TS_PACKET};
use common::harness::Sluice;
use common::process::ChildGuard;
use common::prometheus::{metric_value, Histogram};
use common::{clock_ticks, fixture, flv, rtmp_client, sluice_binary, wait_live, CpuProbe};
use srt_protocol::options::{PacketCount, PacketSize};
use srt_protocol::packet::{Packet, SeqNumber};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::ConnectionResult;
use srt_protocol::settings::ConnInitSettings;

const APP: &str = "live";
const KEY: &str = "bench";
const STREAM_PATH: &str = "live/bench";
/// The streamid the simulated players ask for (`--join` adds a mode).
static STREAMID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// Datagrams per `recvmmsg` call.
const BATCH: usize = 64;
/// Room for one datagram (SRT packets are at most 1500 bytes with IP/UDP).
const SLOT: usize = 2048;
/// Room for one datagram's control messages (its receive timestamp).
const CMSG_SLOT: usize = 64;
const HANDSHAKE_RETRY_US: u64 = 250_000;
const HANDSHAKE_TIMEOUT_US: u64 = 10_000_000;
const ACK_PERIOD_US: u64 = 10_000;
const ACK_IDLE_US: u64 = 100_000;
const KEEPALIVE_US: u64 = 1_000_000;
/// A player that hears nothing from sluice this long counts as closed.
const PEER_IDLE_US: u64 = 5_000_000;
/// Worker timer granularity.
const TICK_US: u64 = 2_000;
/// SO_RCVBUF asked per player socket (capped by net.core.rmem_max).
const RCVBUF: i32 = 1 << 20;
/// Receive buffer announced in ACKs, packets.
const RECV_BUFFER_PKTS: u32 = 8192;
/// Latency histograms: 10 µs buckets up to 1 s, the last one open.
const HIST_BUCKET_US: u64 = 10;
const HIST_BUCKETS: usize = 100_000;
const MASK33: u64 = (1 << 33) - 1;
const NO_OFFSET: u64 = u64::MAX;

// ---------------------------------------------------------------------------
// Clock, options
// ---------------------------------------------------------------------------

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the tool started: every timestamp here is one.
fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// CLOCK_REALTIME at the epoch, ns: kernel receive timestamps are on it.
fn realtime_epoch_ns() -> i128 {
    static RT: OnceLock<i128> = OnceLock::new();
    *RT.get_or_init(|| {
        let e = epoch();
        let rt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        rt - e.elapsed().as_nanos() as i128
    })
}

fn us_of(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_micros() as u64
}

#[derive(Debug, Clone)]
struct Opts {
    steps: Vec<usize>,
    step_secs: f64,
    ramp_per_sec: f64,
    latency_ms: u64,
    workers: usize,
    /// sluice's `[srt] workers`.
    srt_workers: usize,
    /// The players' join mode (streamid `join=`), else the app's default.
    join: Option<String>,
    libsrt: usize,
    build: bool,
    /// `[telemetry] otlp_endpoint`: traces on, to this collector (a dead
    /// one measures what a collector outage costs).
    otlp: Option<String>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            steps: vec![100, 250, 500],
            step_secs: 10.0,
            ramp_per_sec: 200.0,
            latency_ms: 20,
            workers: 1,
            srt_workers: 1,
            join: None,
            libsrt: 0,
            build: true,
            otlp: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (a, None),
            };
            let takes_value = matches!(
                key,
                "--steps"
                    | "--players"
                    | "--step-secs"
                    | "--ramp-per-sec"
                    | "--latency-ms"
                    | "--workers"
                    | "--srt-workers"
                    | "--join"
                    | "--libsrt"
                    | "--otlp"
            );
            let value = if takes_value && inline.is_none() {
                i += 1;
                args.get(i).cloned()
            } else {
                inline
            };
            let bad = |what: &str| -> ! { panic!("{key} needs {what}, got {value:?}") };
            let num = |v: &Option<String>| -> f64 {
                v.as_deref()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| bad("a number"))
            };
            match key {
                "--steps" | "--players" => {
                    let steps: Vec<usize> = value
                        .as_deref()
                        .unwrap_or_else(|| bad("player counts"))
                        .split(',')
                        .map(|s| s.trim().parse().unwrap_or_else(|_| bad("player counts")))
                        .filter(|&n| n > 0)
                        .collect();
                    o.steps = steps;
                }
                "--step-secs" => o.step_secs = num(&value),
                "--ramp-per-sec" => o.ramp_per_sec = num(&value),
                "--latency-ms" => o.latency_ms = num(&value) as u64,
                "--workers" => o.workers = num(&value) as usize,
                "--srt-workers" => o.srt_workers = num(&value) as usize,
                "--join" => {
                    o.join = Some(value.clone().unwrap_or_else(|| bad("live|cache|keyframe")))
                }
                "--libsrt" => o.libsrt = num(&value) as usize,
                "--otlp" => o.otlp = Some(value.clone().unwrap_or_else(|| bad("a collector URL"))),
                "--no-build" => o.build = false,
                // `cargo bench` passes --bench.
                "--bench" => {}
                other => panic!("unknown option {other}"),
            }
            i += 1;
        }
        o.steps.sort_unstable();
        o.steps.dedup();
        assert!(!o.steps.is_empty(), "no steps");
        o.step_secs = o.step_secs.clamp(1.0, 600.0);
        o.ramp_per_sec = o.ramp_per_sec.clamp(1.0, 10_000.0);
        o.workers = o.workers.clamp(1, 16);
        o.srt_workers = o.srt_workers.clamp(1, 64);
        o
    }
}

// ---------------------------------------------------------------------------
// Publisher and the PTS → send time map
// ---------------------------------------------------------------------------

/// What the publisher and the players share.
struct Shared {
    /// Loop-adjusted FLV presentation time (timestamp + CTS, ms) of every
    /// video frame sent → when it was handed to the socket (µs).
    sent: RwLock<HashMap<u32, u64>>,
    /// Content key → FLV presentation time of its latest send.
    by_key: Mutex<HashMap<u64, u32>>,
    /// (TS PTS − FLV presentation ms × 90) mod 2^33, once learned.
    offset: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            sent: RwLock::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
            offset: AtomicU64::new(NO_OFFSET),
        }
    }

    /// When the publisher sent the frame with this PTS, if known (a frame
    /// whose PTS sluice rewrote, as a live-edge join does, matches none).
    fn sent_at(&self, pts_90k: u64) -> Option<u64> {
        let off = self.offset.load(Ordering::Relaxed);
        if off == NO_OFFSET {
            return None;
        }
        let d = pts_90k.wrapping_sub(off) & MASK33;
        if d % 90 != 0 {
            return None;
        }
        self.sent.read().unwrap().get(&((d / 90) as u32)).copied()
    }
}

/// Learns the PTS offset from a player's frames recognised by content: an
/// offset seen on 5 frames wins (the rewritten frames of a live-edge join
/// each give another one).
#[derive(Default)]
struct OffsetLearner {
    starts: VideoStarts,
    frames: Vec<common::frames::TsFrame>,
    votes: HashMap<u64, u32>,
}

impl OffsetLearner {
    fn push(&mut self, payload: &[u8], shared: &Shared) {
        self.starts.push(payload, Instant::now(), &mut self.frames);
        for f in self.frames.drain(..) {
            let Some(pts) = f.pts_90k else { continue };
            let Some(ms) = shared.by_key.lock().unwrap().get(&f.key).copied() else {
                continue;
            };
            let off = pts.wrapping_sub(u64::from(ms) * 90) & MASK33;
            let v = self.votes.entry(off).or_insert(0);
            *v += 1;
            if *v >= 5 && shared.offset.load(Ordering::Relaxed) == NO_OFFSET {
                shared.offset.store(off, Ordering::Relaxed);
                eprintln!("srt_load: PTS offset learned: {off} (90 kHz)");
            }
        }
    }

    fn done(&self, shared: &Shared) -> bool {
        shared.offset.load(Ordering::Relaxed) != NO_OFFSET
    }
}

/// Publishes the fixture over RTMP at real-time pace until `stop`, loop
/// after loop with timestamps offset by the loop period, recording each
/// video frame's send instant.
fn publish(
    addr: SocketAddr,
    mut tags: Vec<flv::FlvTag>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let video: Vec<u32> = tags
        .iter()
        .filter(|t| t.is_video() && t.is_frame())
        .map(|t| t.timestamp)
        .collect();
    let (first_v, last_v) = (video[0], video[video.len() - 1]);
    // The last frame lasts as long as the average one.
    let period =
        last_v - first_v + ((last_v - first_v) as f64 / (video.len() - 1) as f64).round() as u32;
    let first_ts = tags.iter().map(|t| t.timestamp).min().unwrap_or(0);
    let mut p = rtmp_client::RtmpPublisher::connect(
        addr,
        APP,
        rtmp_client::PublishOptions {
            realtime: false,
            ..Default::default()
        },
    )?;
    let outcome = p.publish(KEY);
    if !outcome.is_accepted() {
        return Err(format!("publish refused: {outcome:?}"));
    }
    let t0 = Instant::now();
    for lp in 0u32.. {
        for tag in &tags {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            // Decoder configuration and metadata once.
            if lp > 0 && !tag.is_frame() {
                continue;
            }
            let due = t0 + Duration::from_millis(u64::from(tag.timestamp - first_ts));
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let at = now_us();
            // Recorded before the send: a player may see the frame's first
            // datagram before `send_tags` returns.
            if tag.is_video() {
                if let (Some(k), Some(cts)) = (avcc_key(&tag.data), tag.composition_time()) {
                    let ms = (i64::from(tag.timestamp) + i64::from(cts)) as u32;
                    shared.sent.write().unwrap().insert(ms, at);
                    shared.by_key.lock().unwrap().insert(k, ms);
                }
            }
            let report = p.send_tags(std::slice::from_ref(tag));
            if let Some(e) = report.error {
                return Err(e);
            }
        }
        for t in &mut tags {
            t.timestamp += period;
        }
        // Keep two minutes of send times.
        let oldest = tags[0].timestamp.saturating_sub(120_000);
        shared.sent.write().unwrap().retain(|ms, _| *ms >= oldest);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Fixed-bucket latency histogram (10 µs up to 1 s).
#[derive(Clone)]
struct Hist {
    b: Vec<u32>,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            b: vec![0; HIST_BUCKETS],
        }
    }

    fn add(&mut self, us: u64) {
        let i = ((us / HIST_BUCKET_US) as usize).min(HIST_BUCKETS - 1);
        self.b[i] += 1;
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.b.iter_mut().zip(&o.b) {
            *a += b;
        }
    }

    /// `self` minus an earlier copy.
    fn since(&self, before: &Hist) -> Hist {
        Hist {
            b: self
                .b
                .iter()
                .zip(&before.b)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    fn count(&self) -> u64 {
        self.b.iter().map(|&c| u64::from(c)).sum()
    }

    /// Upper edge of the bucket holding quantile `q`, in ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, &c) in self.b.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(((i as u64 + 1) * HIST_BUCKET_US) as f64 / 1e3);
            }
        }
        None
    }

    fn max_ms(&self) -> Option<f64> {
        self.quantile_ms(1.0)
    }
}

/// Per-player counters.
#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    pkts: u64,
    bytes: u64,
    retrans: u64,
    dups: u64,
    naks: u64,
    losses: u64,
    too_late: u64,
    cc_errors: u64,
    frames: u64,
}

impl Counters {
    fn since(&self, b: &Counters) -> Counters {
        Counters {
            pkts: self.pkts - b.pkts,
            bytes: self.bytes - b.bytes,
            retrans: self.retrans - b.retrans,
            dups: self.dups - b.dups,
            naks: self.naks - b.naks,
            losses: self.losses - b.losses,
            too_late: self.too_late - b.too_late,
            cc_errors: self.cc_errors - b.cc_errors,
            frames: self.frames - b.frames,
        }
    }

    fn add(&mut self, o: &Counters) {
        self.pkts += o.pkts;
        self.bytes += o.bytes;
        self.retrans += o.retrans;
        self.dups += o.dups;
        self.naks += o.naks;
        self.losses += o.losses;
        self.too_late += o.too_late;
        self.cc_errors += o.cc_errors;
        self.frames += o.frames;
    }
}

// ---------------------------------------------------------------------------
// TS checks
// ---------------------------------------------------------------------------

/// Continuity counters per PID, the video PID and the first keyframe.
#[derive(Default)]
struct TsState {
    cc: Vec<(u16, u8)>,
    video_pid: Option<u16>,
    /// 0: no keyframe yet, 1: in the first keyframe PES, 2: done.
    kf: u8,
    kf_last_us: u64,
    first_kf_us: u64,
}

/// A video PES start: its PTS.
fn pes_start(payload: &[u8]) -> Option<Option<u64>> {
    if payload.len() < 9 || payload[..3] != [0, 0, 1] || payload[3] & 0xF0 != 0xE0 {
        return None;
    }
    if payload[7] >> 6 >= 2 && payload.len() >= 14 {
        Some(Some(decode_timestamp(&payload[9..14])))
    } else {
        Some(None)
    }
}

/// An H.264 IDR slice NAL unit starts in `es`.
fn has_idr(es: &[u8]) -> bool {
    es.windows(4)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1F == 5)
}

impl TsState {
    /// Checks the TS packets of one payload that arrived at `arrival_us`;
    /// calls `frame` with the PTS of each video PES that starts in it.
    fn scan(&mut self, data: &[u8], arrival_us: u64, errors: &mut u64, mut frame: impl FnMut(u64)) {
        let chunks = data.chunks_exact(TS_PACKET);
        if !chunks.remainder().is_empty() {
            *errors += 1;
        }
        for p in chunks {
            if p[0] != 0x47 {
                *errors += 1;
                continue;
            }
            let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
            if pid == 0x1FFF {
                continue;
            }
            let pusi = p[1] & 0x40 != 0;
            let afc = (p[3] >> 4) & 0x3;
            let cc = p[3] & 0x0F;
            let (mut disc, mut rai) = (false, false);
            let mut at = 4;
            if afc & 0x2 != 0 {
                let len = usize::from(p[4]);
                if len > 0 {
                    disc = p[5] & 0x80 != 0;
                    rai = p[5] & 0x40 != 0;
                }
                at = 5 + len;
            }
            if afc & 0x1 == 0 {
                continue;
            }
            match self.cc.iter_mut().find(|(p, _)| *p == pid) {
                Some((_, last)) => {
                    // One duplicate is allowed; a discontinuity resets.
                    if !disc && cc != *last && cc != (*last + 1) & 0x0F {
                        *errors += 1;
                    }
                    *last = cc;
                }
                None => self.cc.push((pid, cc)),
            }
            let Some(payload) = p.get(at..) else { continue };
            if !pusi {
                if self.kf == 1 && Some(pid) == self.video_pid {
                    self.kf_last_us = arrival_us;
                }
                continue;
            }
            let Some(pts) = pes_start(payload) else {
                continue;
            };
            self.video_pid = Some(pid);
            if self.kf == 1 {
                self.first_kf_us = self.kf_last_us;
                self.kf = 2;
            }
            if self.kf == 0 {
                let es = payload.get(9 + usize::from(payload[8])..).unwrap_or(&[]);
                if rai || has_idr(es) {
                    self.kf = 1;
                    self.kf_last_us = arrival_us;
                }
            }
            if let Some(pts) = pts {
                frame(pts);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The simulated player
// ---------------------------------------------------------------------------

/// 31-bit sequence number difference a − b.
fn seq_diff(a: u32, b: u32) -> i64 {
    i64::from(((a.wrapping_sub(b)) << 1) as i32 >> 1)
}

fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

struct Pending {
    arrival_us: u64,
    ts: u32,
    payload: Vec<u8>,
}

enum Phase {
    Connecting(Box<Connect>),
    Open,
    Closed,
    Failed,
}

/// What a worker's players share: the latency histograms, payload buffers
/// for reordering, the send time map.
struct Ctx {
    shared: Arc<Shared>,
    arrival: Hist,
    released: Hist,
    /// Kernel arrival → read here, per datagram.
    lag: Hist,
    pool: Vec<Vec<u8>>,
    out: Vec<u8>,
    send_errors: u64,
}

struct Player {
    id: usize,
    sock: UdpSocket,
    remote: SocketAddr,
    phase: Phase,
    hs_start_us: u64,
    hs_last_us: u64,
    connected_us: u64,
    /// Our SRT timestamps count from here.
    start_us: u64,
    peer_sockid: u32,
    latency_us: u64,
    // Receiver, on 64-bit extended sequence numbers.
    next_exp: u64,
    max_seen: u64,
    pending: BTreeMap<u64, Pending>,
    /// Ranges skipped as lost, newest last (a packet of one arriving later
    /// is too late, not a duplicate).
    dropped: VecDeque<(u64, u64)>,
    sender_drop_upto: u64,
    base_us: i64,
    last_release_us: u64,
    last_rx_us: u64,
    // Control.
    ack_no: u32,
    ack_sent: [(u32, u64); 64],
    last_ack_us: u64,
    last_ack_point: u64,
    rtt_us: u64,
    rttvar_us: u64,
    rtt_sampled: bool,
    last_nak_us: u64,
    last_keepalive_us: u64,
    rate_pkts: u64,
    rate_bytes: u64,
    rate_since_us: u64,
    rate: (u32, u32),
    ts: TsState,
    c: Counters,
    /// Player 0 learns the PTS offset.
    learner: Option<Box<OffsetLearner>>,
}

impl Player {
    fn new(id: usize, remote: SocketAddr, latency: Duration) -> std::io::Result<Player> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_nonblocking(true)?;
        sock.connect(remote)?;
        set_rcvbuf(&sock, RCVBUF);
        set_timestamps(&sock);
        let settings = ConnInitSettings {
            send_latency: latency,
            recv_latency: latency,
            recv_buffer_size: PacketCount(u64::from(RECV_BUFFER_PKTS)),
            // sluice wants a normal Ethernet MSS, as libsrt announces.
            max_packet_size: PacketSize(1500),
            ..Default::default()
        }
        .copy_randomize();
        let connect = Connect::new(
            remote,
            sock.local_addr()?.ip(),
            settings,
            Some(
                STREAMID
                    .get()
                    .cloned()
                    .unwrap_or_else(|| STREAM_PATH.to_string()),
            ),
            SeqNumber::new_truncate(rand::random::<u32>()),
        );
        let now = now_us();
        Ok(Player {
            id,
            sock,
            remote,
            phase: Phase::Connecting(Box::new(connect)),
            hs_start_us: now,
            hs_last_us: 0,
            connected_us: 0,
            start_us: now,
            peer_sockid: 0,
            latency_us: latency.as_micros() as u64,
            next_exp: 0,
            max_seen: 0,
            pending: BTreeMap::new(),
            dropped: VecDeque::new(),
            sender_drop_upto: 0,
            base_us: i64::MAX,
            last_release_us: 0,
            last_rx_us: now,
            ack_no: 0,
            ack_sent: [(0, 0); 64],
            last_ack_us: 0,
            last_ack_point: 0,
            rtt_us: 100_000,
            rttvar_us: 50_000,
            rtt_sampled: false,
            last_nak_us: 0,
            last_keepalive_us: now,
            rate_pkts: 0,
            rate_bytes: 0,
            rate_since_us: now,
            rate: (0, 0),
            ts: TsState::default(),
            c: Counters::default(),
            learner: (id == 0).then(Box::default),
        })
    }

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    fn send_srt(&mut self, p: &Packet, ctx: &mut Ctx) {
        ctx.out.clear();
        p.serialize(&mut ctx.out);
        if self.sock.send(&ctx.out).is_err() {
            ctx.send_errors += 1;
        }
    }

    /// A control packet of `ty` with `info` and `body` words.
    fn send_control(&mut self, ty: u16, info: u32, body: &[u32], now: u64, ctx: &mut Ctx) {
        let mut b = [0u8; 16 + 4 * 128];
        let words = [
            0x8000_0000 | u32::from(ty) << 16,
            info,
            now.saturating_sub(self.start_us) as u32,
            self.peer_sockid,
        ];
        for (i, w) in words.iter().chain(body.iter()).enumerate().take(4 + 128) {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        let len = 16 + 4 * body.len().min(128);
        if self.sock.send(&b[..len]).is_err() {
            ctx.send_errors += 1;
        }
    }

    fn on_connect_result(&mut self, r: ConnectionResult, ctx: &mut Ctx) {
        match r {
            ConnectionResult::SendPacket((p, _)) => self.send_srt(&p, ctx),
            ConnectionResult::Connected(reply, conn) => {
                if let Some((p, _)) = reply {
                    self.send_srt(&p, ctx);
                }
                let s = &conn.settings;
                let now = now_us();
                self.connected_us = now;
                self.start_us = us_of(s.socket_start_time);
                self.peer_sockid = s.remote_sockid.0;
                self.latency_us = s.recv_tsbpd_latency.as_micros() as u64;
                // Extended numbers start well above 0 so that a packet just
                // before the first one does not underflow.
                self.next_exp = (1 << 40) | u64::from(s.init_seq_num.as_raw());
                self.max_seen = self.next_exp;
                self.last_ack_point = self.next_exp;
                self.last_rx_us = now;
                self.phase = Phase::Open;
            }
            ConnectionResult::Reject(_, why) => {
                eprintln!("srt_load: player {} rejected: {why:?}", self.id);
                self.phase = Phase::Failed;
            }
            ConnectionResult::Failure(e) => {
                eprintln!("srt_load: player {} failed: {e}", self.id);
                self.phase = Phase::Failed;
            }
            _ => {}
        }
    }

    /// Reads what is queued on the socket.
    fn on_readable(&mut self, rx: &mut RxBatch, ctx: &mut Ctx) {
        if let Phase::Connecting(_) = self.phase {
            let buf = &mut rx.bufs[..SLOT];
            while let Ok(n) = self.sock.recv(buf) {
                let Ok(p) = Packet::parse(&mut &buf[..n], false) else {
                    continue;
                };
                let Phase::Connecting(c) = &mut self.phase else {
                    break;
                };
                let r = c.handle_packet(Ok((p, self.remote)), Instant::now());
                self.on_connect_result(r, ctx);
            }
            return;
        }
        loop {
            let n = rx.recv(self.sock.as_raw_fd());
            if n == 0 {
                break;
            }
            let now = now_us();
            self.last_rx_us = now;
            for i in 0..n {
                let len = rx.hdrs[i].msg_len as usize;
                let d = &rx.bufs[i * SLOT..i * SLOT + len.min(SLOT)];
                // Latency is timed at the kernel's arrival, not when this
                // loop got round to the socket; that delay is the tool's lag.
                let arrival = rx.arrival_us(i).unwrap_or(now).min(now);
                ctx.lag.add(now - arrival);
                self.on_datagram(d, arrival, ctx);
            }
            if n < BATCH {
                break;
            }
        }
    }

    fn on_datagram(&mut self, d: &[u8], now: u64, ctx: &mut Ctx) {
        if d.len() < 16 || !self.is_open() {
            return;
        }
        let w0 = be32(d, 0);
        if w0 & 0x8000_0000 == 0 {
            self.on_data(w0, be32(d, 4), be32(d, 8), &d[16..], now, ctx);
        } else {
            self.on_control(((w0 >> 16) & 0x7FFF) as u16, be32(d, 4), &d[16..], now);
        }
    }

    fn ext_seq(&self, seq: u32) -> u64 {
        let cur = (self.next_exp & 0x7FFF_FFFF) as u32;
        (self.next_exp as i64 + seq_diff(seq, cur)) as u64
    }

    fn due_us(&self, ts: u32) -> u64 {
        (self.base_us + i64::from(ts) + self.latency_us as i64).max(0) as u64
    }

    fn on_data(&mut self, w0: u32, w1: u32, ts: u32, payload: &[u8], now: u64, ctx: &mut Ctx) {
        self.c.pkts += 1;
        self.c.bytes += payload.len() as u64;
        self.rate_pkts += 1;
        self.rate_bytes += payload.len() as u64;
        if w1 & (1 << 26) != 0 {
            self.c.retrans += 1;
        }
        let transit = now as i64 - i64::from(ts);
        if transit < self.base_us {
            self.base_us = transit;
        }
        let mut ext = self.ext_seq(w0 & 0x7FFF_FFFF);
        if ext.abs_diff(self.next_exp) > u64::from(RECV_BUFFER_PKTS) * 4 {
            // Far off (the sender restarted its numbering?): resynchronise.
            self.flush_pending(ctx);
            self.next_exp = ext;
            self.max_seen = ext;
            ext = self.next_exp;
        }
        if ext < self.next_exp {
            if self.dropped.iter().any(|&(a, b)| ext >= a && ext < b) {
                self.c.too_late += 1;
            } else {
                self.c.dups += 1;
            }
            return;
        }
        if self.pending.contains_key(&ext) {
            self.c.dups += 1;
            return;
        }
        if now > self.due_us(ts) {
            self.c.too_late += 1;
        }
        if ext == self.next_exp {
            self.deliver(payload, ts, now, ctx);
            self.next_exp += 1;
            self.max_seen = self.max_seen.max(self.next_exp);
            if !self.pending.is_empty() {
                self.drain_in_order(ctx);
            }
            return;
        }
        // A gap before this one.
        if ext > self.max_seen {
            let (from, to) = (self.max_seen, ext - 1);
            self.send_nak(&[(from, to)], now, ctx);
        }
        self.max_seen = self.max_seen.max(ext + 1);
        let mut buf = ctx.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        self.pending.insert(
            ext,
            Pending {
                arrival_us: now,
                ts,
                payload: buf,
            },
        );
    }

    /// Delivers the pending packets that are next in order.
    fn drain_in_order(&mut self, ctx: &mut Ctx) {
        while let Some(e) = self.pending.first_entry() {
            if *e.key() != self.next_exp {
                break;
            }
            let p = e.remove();
            self.deliver(&p.payload, p.ts, p.arrival_us, ctx);
            ctx.pool.push(p.payload);
            self.next_exp += 1;
        }
    }

    fn flush_pending(&mut self, ctx: &mut Ctx) {
        while let Some((_, p)) = self.pending.pop_first() {
            ctx.pool.push(p.payload);
        }
    }

    /// The in-order payload: TS checks and frame timing.
    fn deliver(&mut self, payload: &[u8], ts: u32, arrival_us: u64, ctx: &mut Ctx) {
        let release = arrival_us.max(self.due_us(ts)).max(self.last_release_us);
        self.last_release_us = release;
        let connected = self.connected_us;
        let shared = &ctx.shared;
        let (arrival_h, released_h) = (&mut ctx.arrival, &mut ctx.released);
        let mut frames = 0;
        self.ts
            .scan(payload, arrival_us, &mut self.c.cc_errors, |pts| {
                if let Some(sent) = shared.sent_at(pts) {
                    if sent >= connected {
                        arrival_h.add(arrival_us.saturating_sub(sent));
                        released_h.add(release.saturating_sub(sent));
                        frames += 1;
                    }
                }
            });
        self.c.frames += frames;
        if let Some(l) = &mut self.learner {
            l.push(payload, shared);
            if l.done(shared) {
                self.learner = None;
            }
        }
    }

    /// NAK for the inclusive extended ranges.
    fn send_nak(&mut self, ranges: &[(u64, u64)], now: u64, ctx: &mut Ctx) {
        let mut words = [0u32; 128];
        let mut n = 0;
        for &(a, b) in ranges {
            if n + 2 > words.len() {
                break;
            }
            let (a31, b31) = ((a & 0x7FFF_FFFF) as u32, (b & 0x7FFF_FFFF) as u32);
            if a == b {
                words[n] = a31;
                n += 1;
            } else {
                words[n] = a31 | 0x8000_0000;
                words[n + 1] = b31;
                n += 2;
            }
        }
        if n == 0 {
            return;
        }
        self.send_control(3, 0, &words[..n], now, ctx);
        self.c.naks += 1;
        self.last_nak_us = now;
    }

    fn on_control(&mut self, ty: u16, info: u32, body: &[u8], now: u64) {
        match ty {
            // ACKACK: an RTT sample for one of our ACKs.
            6 => {
                let (no, at) = self.ack_sent[(info % 64) as usize];
                if no == info && at > 0 {
                    let sample = now.saturating_sub(at);
                    if !self.rtt_sampled {
                        self.rtt_us = sample;
                        self.rttvar_us = sample / 2;
                        self.rtt_sampled = true;
                    } else {
                        self.rttvar_us = (3 * self.rttvar_us + self.rtt_us.abs_diff(sample)) / 4;
                        self.rtt_us = (7 * self.rtt_us + sample) / 8;
                    }
                }
            }
            // Shutdown.
            5 => self.phase = Phase::Closed,
            // Drop request: the sender gave these up.
            7 if body.len() >= 8 => {
                let end = self.ext_seq(be32(body, 4) & 0x7FFF_FFFF);
                self.sender_drop_upto = self.sender_drop_upto.max(end + 1);
            }
            _ => {}
        }
    }

    /// Timers: handshake retries, loss at the due time, ACK, NAK, keepalive.
    fn on_tick(&mut self, now: u64, ctx: &mut Ctx) {
        match &mut self.phase {
            Phase::Connecting(c) => {
                if now - self.hs_start_us > HANDSHAKE_TIMEOUT_US {
                    eprintln!("srt_load: player {}: handshake timeout", self.id);
                    self.phase = Phase::Failed;
                } else if now - self.hs_last_us >= HANDSHAKE_RETRY_US {
                    self.hs_last_us = now;
                    let r = c.handle_tick(Instant::now());
                    self.on_connect_result(r, ctx);
                }
                return;
            }
            Phase::Open => {}
            Phase::Closed | Phase::Failed => return,
        }
        if now - self.last_rx_us > PEER_IDLE_US {
            self.phase = Phase::Closed;
            return;
        }
        self.skip_due_gaps(now, ctx);
        let since_ack = now - self.last_ack_us;
        if since_ack >= ACK_PERIOD_US
            && (self.next_exp != self.last_ack_point || since_ack >= ACK_IDLE_US)
        {
            self.send_ack(now, ctx);
        }
        if !self.pending.is_empty() {
            let period = (self.rtt_us + 4 * self.rttvar_us).max(20_000);
            if now - self.last_nak_us >= period {
                let holes = self.holes(64);
                self.send_nak(&holes, now, ctx);
            }
        }
        if now - self.last_keepalive_us >= KEEPALIVE_US {
            self.last_keepalive_us = now;
            self.send_control(1, 0, &[0], now, ctx);
        }
    }

    /// Missing packets below the highest seen, as inclusive ranges.
    fn holes(&self, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = self.next_exp;
        for &k in self.pending.keys() {
            if k > at {
                out.push((at, k - 1));
                if out.len() >= max {
                    break;
                }
            }
            at = k + 1;
        }
        out
    }

    /// Gives up the gap at the head once the packet after it is due (or
    /// the sender dropped it), as a TSBPD player does.
    fn skip_due_gaps(&mut self, now: u64, ctx: &mut Ctx) {
        loop {
            let Some((&k, p)) = self.pending.first_key_value() else {
                if self.sender_drop_upto > self.next_exp {
                    let upto = self.sender_drop_upto;
                    self.lose(upto);
                    self.max_seen = self.max_seen.max(upto);
                }
                return;
            };
            let upto = if self.due_us(p.ts) <= now {
                k
            } else if self.sender_drop_upto > self.next_exp {
                k.min(self.sender_drop_upto)
            } else {
                return;
            };
            self.lose(upto);
            self.drain_in_order(ctx);
        }
    }

    fn lose(&mut self, upto: u64) {
        if upto <= self.next_exp {
            return;
        }
        self.c.losses += upto - self.next_exp;
        self.dropped.push_back((self.next_exp, upto));
        if self.dropped.len() > 32 {
            self.dropped.pop_front();
        }
        self.next_exp = upto;
    }

    fn send_ack(&mut self, now: u64, ctx: &mut Ctx) {
        let span = now - self.rate_since_us;
        if span >= 100_000 {
            self.rate = (
                (self.rate_pkts * 1_000_000 / span) as u32,
                (self.rate_bytes * 1_000_000 / span) as u32,
            );
            self.rate_pkts = 0;
            self.rate_bytes = 0;
            self.rate_since_us = now;
        }
        self.ack_no = self.ack_no.wrapping_add(1).max(1);
        self.ack_sent[(self.ack_no % 64) as usize] = (self.ack_no, now);
        let avail = RECV_BUFFER_PKTS.saturating_sub(self.pending.len() as u32);
        let body = [
            (self.next_exp & 0x7FFF_FFFF) as u32,
            self.rtt_us as u32,
            self.rttvar_us as u32,
            avail,
            self.rate.0,
            // Link capacity is not estimated here: ten times the rate.
            self.rate.0.saturating_mul(10),
            self.rate.1,
        ];
        self.send_control(2, self.ack_no, &body, now, ctx);
        self.last_ack_us = now;
        self.last_ack_point = self.next_exp;
    }

    fn shutdown(&mut self, ctx: &mut Ctx) {
        if self.is_open() {
            let now = now_us();
            self.send_control(5, 0, &[0], now, ctx);
        }
        self.phase = Phase::Closed;
    }

    fn snap(&self) -> PlayerSnap {
        PlayerSnap {
            id: self.id,
            state: match self.phase {
                Phase::Connecting(_) => PlayerState::Connecting,
                Phase::Open => PlayerState::Open,
                Phase::Closed => PlayerState::Closed,
                Phase::Failed => PlayerState::Failed,
            },
            hs_start_us: self.hs_start_us,
            first_kf_us: self.ts.first_kf_us,
            c: self.c,
        }
    }
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: a valid fd, a pointer to a live i32 and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Kernel receive timestamps (SO_TIMESTAMPNS) on every datagram.
fn set_timestamps(sock: &UdpSocket) {
    let on: i32 = 1;
    // SAFETY: a valid fd, a pointer to a live i32 and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Buffers and headers for `recvmmsg`, built once per worker.
struct RxBatch {
    bufs: Vec<u8>,
    ctrl: Vec<u8>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RxBatch {
    fn new() -> Box<RxBatch> {
        let mut b = Box::new(RxBatch {
            bufs: vec![0u8; BATCH * SLOT],
            ctrl: vec![0u8; BATCH * CMSG_SLOT],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        });
        let base = b.bufs.as_mut_ptr();
        for i in 0..BATCH {
            b.iovs.push(libc::iovec {
                // SAFETY: inside `bufs`, which is never resized.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            });
        }
        for i in 0..BATCH {
            // SAFETY: all-zero is a valid mmsghdr (null name and control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            // SAFETY: inside `ctrl`, which is never resized.
            h.msg_hdr.msg_control = unsafe { b.ctrl.as_mut_ptr().add(i * CMSG_SLOT) }.cast();
            h.msg_hdr.msg_controllen = CMSG_SLOT as _;
            b.hdrs.push(h);
        }
        b
    }

    /// Up to BATCH datagrams from `fd`, without waiting; 0 when none.
    fn recv(&mut self, fd: i32) -> usize {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_controllen = CMSG_SLOT as _;
        }
        // SAFETY: the headers point at iovecs and buffers that live as long
        // as `self`; the kernel writes at most iov_len bytes into each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// Datagram `i`'s kernel receive time (µs since the epoch), if any.
    fn arrival_us(&self, i: usize) -> Option<u64> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: the kernel filled msg_control up to msg_controllen; the
        // CMSG macros stay inside it, and the timespec is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    let ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
                    return Some(((ns - realtime_epoch_ns()).max(0) / 1000) as u64);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PlayerState {
    Connecting,
    Open,
    Closed,
    Failed,
}

#[derive(Clone, Debug)]
struct PlayerSnap {
    id: usize,
    state: PlayerState,
    hs_start_us: u64,
    first_kf_us: u64,
    c: Counters,
}

struct WorkerSnap {
    players: Vec<PlayerSnap>,
    arrival: Hist,
    released: Hist,
    lag: Hist,
    send_errors: u64,
}

enum Cmd {
    Add(usize),
    Snapshot(mpsc::Sender<WorkerSnap>),
}

fn worker(
    rx: mpsc::Receiver<Cmd>,
    remote: SocketAddr,
    latency: Duration,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    // SAFETY: plain syscall.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0, "epoll_create1");
    let mut players: Vec<Player> = Vec::new();
    let mut batch = RxBatch::new();
    let mut ctx = Ctx {
        shared,
        arrival: Hist::new(),
        released: Hist::new(),
        lag: Hist::new(),
        pool: Vec::new(),
        out: Vec::with_capacity(1500),
        send_errors: 0,
    };
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut next_tick = now_us();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(id)) => match Player::new(id, remote, latency) {
                    Ok(mut p) => {
                        let mut ev = libc::epoll_event {
                            events: libc::EPOLLIN as u32,
                            u64: players.len() as u64,
                        };
                        // SAFETY: valid fds and event.
                        unsafe {
                            libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, p.sock.as_raw_fd(), &mut ev)
                        };
                        p.on_tick(now_us(), &mut ctx);
                        players.push(p);
                    }
                    Err(e) => eprintln!("srt_load: player {id}: {e}"),
                },
                Ok(Cmd::Snapshot(reply)) => {
                    let _ = reply.send(WorkerSnap {
                        players: players.iter().map(Player::snap).collect(),
                        arrival: ctx.arrival.clone(),
                        released: ctx.released.clone(),
                        lag: ctx.lag.clone(),
                        send_errors: ctx.send_errors,
                    });
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        // Rounded up: a 0 ms wait before the tick would spin.
        let wait_ms = next_tick.saturating_sub(now_us()).div_ceil(1000).min(5) as i32;
        // SAFETY: `events` has room for its length.
        let n =
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, wait_ms) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            let p = &mut players[i];
            p.on_readable(&mut batch, &mut ctx);
            if !p.is_open() && !matches!(p.phase, Phase::Connecting(_)) {
                // SAFETY: valid fds.
                unsafe {
                    libc::epoll_ctl(
                        epfd,
                        libc::EPOLL_CTL_DEL,
                        p.sock.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
            }
        }
        let now = now_us();
        if now >= next_tick {
            next_tick = now + TICK_US;
            for p in &mut players {
                p.on_tick(now, &mut ctx);
            }
        }
    }
    for p in &mut players {
        p.shutdown(&mut ctx);
    }
    // SAFETY: our own epoll fd.
    unsafe { libc::close(epfd) };
}

/// The worker threads.
struct Players {
    txs: Vec<mpsc::Sender<Cmd>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    added: usize,
}

impl Players {
    fn start(n: usize, remote: SocketAddr, latency: Duration, shared: &Arc<Shared>) -> Players {
        let stop = Arc::new(AtomicBool::new(false));
        let mut txs = Vec::new();
        let mut threads = Vec::new();
        for w in 0..n {
            let (tx, rx) = mpsc::channel();
            let (shared, stop) = (shared.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("srt-load-{w}"))
                    .spawn(move || worker(rx, remote, latency, shared, stop))
                    .expect("spawn worker"),
            );
            txs.push(tx);
        }
        Players {
            txs,
            threads,
            stop,
            added: 0,
        }
    }

    fn add(&mut self) {
        let id = self.added;
        self.added += 1;
        let _ = self.txs[id % self.txs.len()].send(Cmd::Add(id));
    }

    fn snapshot(&self) -> Snap {
        let mut s = Snap {
            players: Vec::new(),
            arrival: Hist::new(),
            released: Hist::new(),
            lag: Hist::new(),
            send_errors: 0,
        };
        for tx in &self.txs {
            let (rtx, rrx) = mpsc::channel();
            let _ = tx.send(Cmd::Snapshot(rtx));
            if let Ok(w) = rrx.recv_timeout(Duration::from_secs(10)) {
                s.players.extend(w.players);
                s.arrival.merge(&w.arrival);
                s.released.merge(&w.released);
                s.lag.merge(&w.lag);
                s.send_errors += w.send_errors;
            }
        }
        s.players.sort_by_key(|p| p.id);
        s
    }
}

impl Drop for Players {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Snap = WorkerSnap;

// ---------------------------------------------------------------------------
// libsrt players (validation)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LibsrtStats {
    /// (read instant µs, latency µs) per frame.
    samples: Vec<(u64, u64)>,
    cc_errors: u64,
    bytes: u64,
    first_read_us: u64,
    last_read_us: u64,
}

struct LibsrtPlayer {
    _child: ChildGuard,
    stats: Arc<Mutex<LibsrtStats>>,
}

/// One `srt-live-transmit` caller writing what it plays to a local UDP
/// port, read here (each datagram one SRT payload) and timed at read.
fn start_libsrt(
    srt: SocketAddr,
    latency_ms: u64,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> LibsrtPlayer {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind libsrt output");
    set_rcvbuf(&sock, RCVBUF);
    sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let out = sock.local_addr().expect("local addr");
    let url = format!("srt://{srt}?streamid={STREAM_PATH}&latency={latency_ms}");
    let mut cmd = std::process::Command::new("srt-live-transmit");
    cmd.args(["-q", &url, &format!("udp://{out}")]);
    let child = ChildGuard::spawn_foreground("srt-live-transmit", cmd);
    let stats = Arc::new(Mutex::new(LibsrtStats::default()));
    {
        let (stats, shared, stop) = (stats.clone(), shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut ts = TsState::default();
            let mut starts = VideoStarts::new();
            let mut frames = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let at = Instant::now();
                let at_us = us_of(at);
                let mut s = stats.lock().unwrap();
                if s.first_read_us == 0 {
                    s.first_read_us = at_us;
                }
                s.bytes += n as u64;
                s.last_read_us = at_us;
                let mut cc = 0;
                ts.scan(&buf[..n], at_us, &mut cc, |_| {});
                s.cc_errors += cc;
                starts.push(&buf[..n], at, &mut frames);
                let first_read = s.first_read_us;
                for f in frames.drain(..) {
                    let first = us_of(f.first);
                    if let Some(sent) = f.pts_90k.and_then(|p| shared.sent_at(p)) {
                        if sent >= first_read {
                            s.samples.push((first, first.saturating_sub(sent)));
                        }
                    }
                }
            }
        });
    }
    LibsrtPlayer {
        _child: child,
        stats,
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The step's part of a Prometheus histogram: `end` minus `start`.
fn hist_since(end: &Histogram, start: &Histogram) -> Histogram {
    let buckets = end
        .buckets
        .iter()
        .map(|&(le, c)| {
            let before = start
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, (c - before).max(0.0))
        })
        .collect();
    Histogram {
        buckets,
        sum: end.sum - start.sum,
        count: end.count - start.count,
    }
}

fn pct(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

struct LibsrtReport {
    lat: Vec<f64>,
    /// Each player's median latency.
    medians: Vec<f64>,
    cc: u64,
    /// Mean over the players of each one's received rate.
    mbps_per_player: f64,
    playing: usize,
}

struct Row {
    players: usize,
    connected: usize,
    failed: usize,
    sluice_mbps: f64,
    rx_mbps: f64,
    sluice_cpu: f64,
    tool_cpu: f64,
    rss_mb: f64,
    rss_per_player_kb: f64,
    arrival: Hist,
    released: Hist,
    lag: Hist,
    relay: Histogram,
    c: Counters,
    lossy: usize,
    first_frame: Vec<f64>,
    send_errors: u64,
}

fn main() {
    let opts = Opts::parse();
    if let Some(j) = &opts.join {
        let _ = STREAMID.set(format!("#!::r={STREAM_PATH},join={j}"));
    }
    let _ = epoch();
    let _ = realtime_epoch_ns();
    let t_total = Instant::now();
    let hz = clock_ticks();
    if opts.libsrt > 0 {
        common::process::require_program("srt-live-transmit", "srt-tools");
    }
    let bin = sluice_binary(opts.build);
    let flv_path = fixture();
    let file = flv::read_flv(&flv_path);

    let config = format!(
        "[srt]\nlatency = \"{}ms\"\nmax_players = 100000\nmax_players_per_stream = 100000\nmax_handshakes_per_ip_per_second = 1000000\nworkers = {}\n",
        opts.latency_ms, opts.srt_workers
    );
    let config = match &opts.otlp {
        Some(url) => format!("{config}[telemetry]\notlp_endpoint = \"{url}\"\n"),
        None => config,
    };
    let server = Sluice::start_foreground(&bin, &config);
    eprintln!(
        "srt_load: sluice pid {} rtmp {} srt {}",
        server.pid(),
        server.rtmp_addr(),
        server.srt_addr()
    );
    let shared = Arc::new(Shared::new());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (addr, shared, stop) = (server.rtmp_addr(), shared.clone(), stop.clone());
        let tags = file.tags.clone();
        std::thread::Builder::new()
            .name("rtmp-publisher".into())
            .spawn(move || publish(addr, tags, shared, stop))
            .expect("spawn publisher")
    };
    wait_live(&server, STREAM_PATH);
    std::thread::sleep(Duration::from_secs(1));
    let rss_base_kb = vm_rss_kb(server.pid());
    let ingest_mbps = server
        .stream(STREAM_PATH)
        .and_then(|s| s.get("ingest_bitrate_bps").and_then(|v| v.as_f64()))
        .unwrap_or(0.0)
        / 1e6;

    let latency = Duration::from_millis(opts.latency_ms);
    let mut players = Players::start(opts.workers, server.srt_addr(), latency, &shared);
    let mut rows: Vec<Row> = Vec::new();
    let mut libsrt_report: Option<LibsrtReport> = None;
    let mut stop_reason = None;

    for (step_no, &target) in opts.steps.iter().enumerate() {
        let first_new = players.added;
        // Ramp.
        let ramp_start = Instant::now();
        let mut k = 0usize;
        while players.added < target {
            players.add();
            k += 1;
            let due = ramp_start + Duration::from_secs_f64(k as f64 / opts.ramp_per_sec);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
        // Wait for the handshakes to finish.
        let deadline = Instant::now() + Duration::from_micros(HANDSHAKE_TIMEOUT_US + 2_000_000);
        loop {
            let s = players.snapshot();
            let connecting = s
                .players
                .iter()
                .filter(|p| p.state == PlayerState::Connecting)
                .count();
            if connecting == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let ramp_secs = ramp_start.elapsed().as_secs_f64();
        // libsrt validation players, first step only.
        let libsrt_stop = Arc::new(AtomicBool::new(false));
        let libsrt: Vec<LibsrtPlayer> = if step_no == 0 {
            (0..opts.libsrt)
                .map(|_| start_libsrt(server.srt_addr(), opts.latency_ms, &shared, &libsrt_stop))
                .collect()
        } else {
            Vec::new()
        };
        if !libsrt.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
        std::thread::sleep(Duration::from_secs(2));

        let before = players.snapshot();
        let m0 = server.metrics_text();
        let t0 = Instant::now();
        let t0_us = now_us();
        let cpu_s = CpuProbe::start(Some(server.pid()));
        let cpu_t = CpuProbe::start(None);
        std::thread::sleep(Duration::from_secs_f64(opts.step_secs));
        let sluice_cpu = cpu_s.percent(hz);
        let tool_cpu = cpu_t.percent(hz);
        let secs = t0.elapsed().as_secs_f64();
        let t1_us = now_us();
        let after = players.snapshot();
        let m1 = server.metrics_text();
        let rss_kb = vm_rss_kb(server.pid());

        let bytes_out = |m: &str| metric_value(m, "sluice_srt_bytes_out_total").unwrap_or(0.0);
        let relay = hist_since(
            &Histogram::parse(&m1, "sluice_relay_latency_seconds"),
            &Histogram::parse(&m0, "sluice_relay_latency_seconds"),
        );
        let b0: HashMap<usize, &PlayerSnap> = before.players.iter().map(|p| (p.id, p)).collect();
        let mut c = Counters::default();
        let (mut connected, mut failed, mut lossy) = (0, 0, 0);
        let mut first_frame = Vec::new();
        for p in &after.players {
            let d = match b0.get(&p.id) {
                Some(b) => p.c.since(&b.c),
                None => p.c,
            };
            c.add(&d);
            if d.losses > 0 {
                lossy += 1;
            }
            match p.state {
                PlayerState::Open => connected += 1,
                PlayerState::Connecting => {}
                PlayerState::Closed | PlayerState::Failed => failed += 1,
            }
            if p.id >= first_new && p.first_kf_us > 0 {
                first_frame.push((p.first_kf_us - p.hs_start_us) as f64 / 1e3);
            }
        }
        first_frame.sort_by(|a, b| a.total_cmp(b));
        let row = Row {
            players: target,
            connected,
            failed,
            sluice_mbps: (bytes_out(&m1) - bytes_out(&m0)) * 8.0 / secs / 1e6,
            rx_mbps: c.bytes as f64 * 8.0 / secs / 1e6,
            sluice_cpu,
            tool_cpu,
            rss_mb: rss_kb as f64 / 1024.0,
            rss_per_player_kb: rss_kb.saturating_sub(rss_base_kb) as f64 / target as f64,
            arrival: after.arrival.since(&before.arrival),
            released: after.released.since(&before.released),
            lag: after.lag.since(&before.lag),
            relay,
            c,
            lossy,
            first_frame,
            send_errors: after.send_errors - before.send_errors,
        };
        eprintln!(
            "srt_load: step {target} (ramp {ramp_secs:.1} s): {connected} connected, {failed} failed, {:.1} Mbit/s, sluice {:.1} % CPU, tool {:.1} % CPU, arrival p50 {} p99 {} ms, lost {}, CC {}",
            row.sluice_mbps,
            row.sluice_cpu,
            row.tool_cpu,
            f2(row.arrival.quantile_ms(0.5)),
            f2(row.arrival.quantile_ms(0.99)),
            row.c.losses,
            row.c.cc_errors
        );
        if !libsrt.is_empty() {
            let mut lat = Vec::new();
            let mut medians = Vec::new();
            let (mut cc, mut mbps, mut playing) = (0, 0.0, 0);
            for l in &libsrt {
                let s = l.stats.lock().unwrap();
                let mut mine: Vec<f64> = s
                    .samples
                    .iter()
                    .filter(|(at, _)| *at >= t0_us && *at < t1_us)
                    .map(|(_, l)| *l as f64 / 1e3)
                    .collect();
                mine.sort_by(|a, b| a.total_cmp(b));
                medians.extend(pct(&mine, 0.5));
                lat.extend(mine);
                cc += s.cc_errors;
                if s.first_read_us > 0 {
                    playing += 1;
                    // Its own rate from its first read to its last: the
                    // window starts at its join, so the GOP-cache burst it
                    // got then is in it (the simulated players' rate is
                    // the step's alone).
                    let secs = s.last_read_us.saturating_sub(s.first_read_us) as f64 / 1e6;
                    if secs > 0.0 {
                        mbps += s.bytes as f64 * 8.0 / 1e6 / secs;
                    }
                }
            }
            lat.sort_by(|a, b| a.total_cmp(b));
            libsrt_stop.store(true, Ordering::Relaxed);
            medians.sort_by(|a, b| a.total_cmp(b));
            libsrt_report = Some(LibsrtReport {
                lat,
                medians,
                cc,
                mbps_per_player: mbps / playing.max(1) as f64,
                playing,
            });
        }
        drop(libsrt);
        let saturated = row.sluice_cpu > 95.0;
        let broken = row.connected < row.players / 2;
        rows.push(row);
        if broken {
            stop_reason = Some("fewer than half the players connected");
            break;
        }
        if saturated && step_no + 1 < opts.steps.len() {
            eprintln!("srt_load: sluice is at {sluice_cpu:.0} % of a core");
        }
    }

    let final_metrics = server.metrics_text();
    let sum = |name: &str| metric_value(&final_metrics, name).unwrap_or(0.0);
    let lag_skips = sum("sluice_srt_lag_skips_total");
    let lag_disc = sum("sluice_srt_lag_disconnects_total");
    let dropped_dg = sum("sluice_srt_dropped_datagrams_total");
    let rejects = sum("sluice_srt_rejects_total");
    drop(players);
    stop.store(true, Ordering::Relaxed);
    match publisher.join() {
        Ok(Err(e)) => eprintln!("srt_load: publisher: {e}"),
        Err(_) => eprintln!("srt_load: publisher panicked"),
        Ok(Ok(())) => {}
    }
    drop(server);

    // --- report ------------------------------------------------------------
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## sluice SRT egress load (srt_load)");
    println!();
    println!(
        "machine: {cores} cores, {cpu_model}; loopback; SRT latency {} ms; {} worker thread(s); ramp {}/s; {:.0} s per step after 2 s settling",
        opts.latency_ms, opts.workers, opts.ramp_per_sec, opts.step_secs
    );
    println!("stream: {STREAM_PATH}, 1280x720 30 fps H.264 + AAC looped, ingest {ingest_mbps:.2} Mbit/s; sluice RSS with the publisher only {:.1} MB", rss_base_kb as f64 / 1024.0);
    println!();
    println!("### capacity");
    println!();
    println!("| players | conn | failed | Mbit/s sluice | Mbit/s rx | sluice CPU % | CPU % per 100 Mbit/s | tool CPU % | tool CPU % per 100 players | tool lag ms p50/p99 | RSS MB | KB/player |");
    println!("|--------:|-----:|-------:|--------------:|----------:|-------------:|---------------------:|-----------:|---------------------------:|--------------------:|-------:|----------:|");
    for r in &rows {
        let per100 = if r.sluice_mbps > 0.0 {
            r.sluice_cpu / (r.sluice_mbps / 100.0)
        } else {
            f64::NAN
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} / {} | {:.1} | {:.0} |",
            r.players,
            r.connected,
            r.failed,
            r.sluice_mbps,
            r.rx_mbps,
            r.sluice_cpu,
            per100,
            r.tool_cpu,
            r.tool_cpu / (r.players as f64 / 100.0),
            f2(r.lag.quantile_ms(0.5)),
            f2(r.lag.quantile_ms(0.99)),
            r.rss_mb,
            r.rss_per_player_kb
        );
    }
    println!();
    println!("### latency and quality");
    println!();
    println!("| players | frames | arrival ms p50/p99/max | released ms p50/p99 | relay ms p50/p99 | rx pkts | retrans (%) | dups | NAKs | lost | too late | CC err | lossy players | first frame ms p50/p99 (n) |");
    println!("|--------:|-------:|-----------------------:|--------------------:|-----------------:|--------:|------------:|-----:|-----:|-----:|---------:|-------:|--------------:|---------------------------:|");
    for r in &rows {
        let relay_ms = |q| r.relay.quantile(q).map(|v| v * 1e3);
        println!(
            "| {} | {} | {} / {} / {} | {} / {} | {} / {} | {} | {} ({:.2} %) | {} | {} | {} | {} | {} | {} | {} / {} ({}) |",
            r.players,
            r.c.frames,
            f2(r.arrival.quantile_ms(0.5)),
            f2(r.arrival.quantile_ms(0.99)),
            f1(r.arrival.max_ms()),
            f2(r.released.quantile_ms(0.5)),
            f2(r.released.quantile_ms(0.99)),
            f2(relay_ms(0.5)),
            f2(relay_ms(0.99)),
            r.c.pkts,
            r.c.retrans,
            if r.c.pkts > 0 {
                r.c.retrans as f64 * 100.0 / r.c.pkts as f64
            } else {
                0.0
            },
            r.c.dups,
            r.c.naks,
            r.c.losses,
            r.c.too_late,
            r.c.cc_errors,
            r.lossy,
            f1(pct(&r.first_frame, 0.5)),
            f1(pct(&r.first_frame, 0.99)),
            r.first_frame.len()
        );
    }
    if let (Some(l), Some(r)) = (&libsrt_report, rows.first()) {
        let (lat, cc, mbps, playing) = (&l.lat, l.cc, l.mbps_per_player, l.playing);
        println!();
        println!(
            "### validation: {} libsrt players (srt-live-transmit, latency {} ms) in the {}-player step",
            opts.libsrt, opts.latency_ms, r.players
        );
        println!();
        println!("| players | frames | latency ms p50 / p99 / max | CC err | Mbit/s per player |");
        println!("|---------|-------:|---------------------------:|-------:|------------------:|");
        println!(
            "| simulated, arrival | {} | {} / {} / {} | {} | {:.2} |",
            r.c.frames,
            f2(r.arrival.quantile_ms(0.5)),
            f2(r.arrival.quantile_ms(0.99)),
            f1(r.arrival.max_ms()),
            r.c.cc_errors,
            r.rx_mbps / r.connected.max(1) as f64
        );
        println!(
            "| simulated, released (TSBPD) | {} | {} / {} / {} | {} | |",
            r.c.frames,
            f2(r.released.quantile_ms(0.5)),
            f2(r.released.quantile_ms(0.99)),
            f1(r.released.max_ms()),
            r.c.cc_errors
        );
        println!(
            "| libsrt ({playing} playing), read | {} | {} / {} / {} | {} | {:.2} |",
            lat.len(),
            f2(pct(lat, 0.5)),
            f2(pct(lat, 0.99)),
            f1(lat.last().copied()),
            cc,
            mbps
        );
        println!();
        println!(
            "libsrt per-player median latency: min {} ms, max {} ms (libsrt sets each caller's TSBPD time base from its handshake, against srt-protocol's estimate of the start time, so it differs per player and per run: the simulated released latency should lie in this range)",
            f2(l.medians.first().copied()),
            f2(l.medians.last().copied())
        );
    }
    println!();
    let mut tot = Counters::default();
    for r in &rows {
        tot.add(&r.c);
    }
    println!(
        "totals over the measured windows: {} data packets, {} retransmitted, {} duplicates, {} NAKs sent, {} lost, {} too late, {} CC errors; {} send errors",
        tot.pkts,
        tot.retrans,
        tot.dups,
        tot.naks,
        tot.losses,
        tot.too_late,
        tot.cc_errors,
        rows.iter().map(|r| r.send_errors).sum::<u64>()
    );
    println!(
        "sluice counters at the end: lag skips {lag_skips}, lag disconnects {lag_disc}, dropped datagrams {dropped_dg}, SRT rejects {rejects}"
    );
    if let Some(w) = stop_reason {
        println!("ramp stopped early: {w}");
    }
    println!(
        "CPU % is of one core; the players run on the same machine, so sluice's capacity here is a lower bound. Total run time {:.1} s.",
        t_total.elapsed().as_secs_f64()
    );
}
