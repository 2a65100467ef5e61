//! Load and latency benchmark for sluice's SRT egress.
//!
//! `cargo bench --bench srt_relay -- [--steps 10,25,50,75] [--step-secs 10]
//! [--warmup-secs 2] [--joins 20] [--latency-ms 20] [--record DIR] [--no-build]`
//!
//! It builds the release `sluice` binary, starts it on ephemeral loopback
//! ports with a short SRT latency, publishes a pre-encoded ~3 Mbit/s
//! 1280x720 H.264 (B-frames) + AAC FLV file with `ffmpeg -re -c copy`, and
//! plays it back with in-process SRT callers built on srt-protocol's sans-IO
//! `Connect` + `DuplexConnection` (one UDP socket per player, all players in
//! one tokio task on one thread). It prints:
//!
//! * join latency: connect start → handshake done, first data packet, first
//!   complete video keyframe PES (network arrival, before the player's TSBPD
//!   delay), over joins at random moments of the GOP;
//! * relay-added latency from `sluice_relay_latency_seconds`;
//! * capacity: players ramped on one stream, per step egress, sluice CPU,
//!   players with loss or TS continuity errors, and this tool's own CPU.
//!
//! With `--record DIR` the stream is also recorded (`record = true`,
//! 10 s segments under DIR), to compare CPU and relay latency with and
//! without the recording leg.
//!
//! Every child process is killed when the tool exits or panics.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::task::Poll;
use std::time::{Duration, Instant};

mod common;

use common::harness::Sluice;
use common::prometheus::{metric_value, Histogram};
use common::*;
use rand::Rng;
use serde_json::Value;
use sluice::ts::{Demuxer, Pes};
use srt_protocol::connection::DuplexConnection;
use srt_protocol::options::{PacketCount, PacketSize};
use srt_protocol::packet::{ControlPacket, ControlTypes, Packet, SeqNumber, TimeStamp};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::ConnectionResult;
use srt_protocol::settings::ConnInitSettings;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const STREAM_PATH: &str = "live/bench";
/// Handshake retransmission period of our callers.
const HANDSHAKE_RETRY: Duration = Duration::from_millis(100);
/// A caller that is not connected after this long is marked failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a join may take to deliver its first keyframe.
const JOIN_TIMEOUT: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Opts {
    steps: Vec<usize>,
    step_secs: f64,
    warmup_secs: f64,
    joins: usize,
    latency_ms: u64,
    build: bool,
    /// Record the stream into this directory.
    record: Option<std::path::PathBuf>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            steps: vec![10, 25, 50, 75],
            step_secs: 10.0,
            warmup_secs: 2.0,
            joins: 20,
            latency_ms: 20,
            build: true,
            record: None,
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
                    | "--step-secs"
                    | "--warmup-secs"
                    | "--joins"
                    | "--latency-ms"
                    | "--record"
            );
            let value = if takes_value {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        args.get(i).cloned()
                    }
                }
            } else {
                None
            };
            match (key, value) {
                ("--steps", Some(v)) => {
                    let steps: Vec<usize> = v
                        .split(',')
                        .filter_map(|s| s.trim().parse().ok())
                        .filter(|&n| n > 0)
                        .collect();
                    if !steps.is_empty() || v.trim().is_empty() {
                        o.steps = steps;
                    }
                }
                ("--step-secs", Some(v)) => o.step_secs = v.parse().unwrap_or(o.step_secs),
                ("--warmup-secs", Some(v)) => o.warmup_secs = v.parse().unwrap_or(o.warmup_secs),
                ("--joins", Some(v)) => o.joins = v.parse().unwrap_or(o.joins),
                ("--latency-ms", Some(v)) => o.latency_ms = v.parse().unwrap_or(o.latency_ms),
                ("--record", Some(v)) => o.record = Some(v.into()),
                ("--no-build", _) => o.build = false,
                // `--bench` (passed by cargo) and anything else: ignored.
                _ => {}
            }
            i += 1;
        }
        o.step_secs = o.step_secs.clamp(1.0, 60.0);
        o.warmup_secs = o.warmup_secs.clamp(0.0, 30.0);
        o.joins = o.joins.min(200);
        o
    }
}

fn stream_info(server: &Sluice) -> Option<Value> {
    Sluice::find_stream(&server.try_streams().ok()?, STREAM_PATH)
}

/// Sum of every series of `name` in the last `/metrics` scrape (0 when
/// none); `None` when the scrape fails.
fn scrape_sum(server: &Sluice, name: &str) -> Option<f64> {
    let r = server.try_get_full("/metrics").ok()?;
    Some(metric_value(&r.body, name).unwrap_or(0.0))
}

// ---------------------------------------------------------------------------
// In-process SRT players
// ---------------------------------------------------------------------------

enum State {
    Connecting(Box<Connect>),
    Open(Box<DuplexConnection>),
    Closed,
}

struct Player {
    id: usize,
    /// Receives (tokio readiness).
    sock: UdpSocket,
    /// The same socket, for sends: tokio's `try_send_to` reports
    /// WouldBlock until the reactor has seen the socket writable, which
    /// would lose the first Induction of a fresh socket.
    send_sock: std::net::UdpSocket,
    state: State,
    start: Instant,
    last_tick: Instant,
    next_wake: Instant,
    handshake: Option<Instant>,
    first_data: Option<Instant>,
    first_kf: Option<Instant>,
    /// Data payload bytes received when the first keyframe completed.
    kf_bytes: u64,
    /// Fed with data payloads in arrival order until the first keyframe.
    timing_demux: Option<Demuxer>,
    /// Fed with what the connection releases (TSBPD, in order).
    demux: Demuxer,
    pes: Vec<Pes>,
    data_bytes: u64,
    retransmitted: u64,
    delivered_bytes: u64,
    error: Option<String>,
    out: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Snap {
    id: usize,
    open: bool,
    handshake: Option<Duration>,
    first_data: Option<Duration>,
    first_kf: Option<Duration>,
    kf_bytes: u64,
    data_bytes: u64,
    retransmitted: u64,
    delivered_bytes: u64,
    rx_loss: u64,
    rx_dropped: u64,
    cc_errors: u64,
    error: Option<String>,
}

enum Cmd {
    Add(usize),
    Remove(usize),
    Snapshot(std_mpsc::Sender<Vec<Snap>>),
}

impl Player {
    fn send(&mut self, p: &Packet, to: SocketAddr) {
        self.out.clear();
        p.serialize(&mut self.out);
        // A full socket buffer loses a control packet; SRT recovers.
        let _ = self.send_sock.send_to(&self.out, to);
    }

    fn on_result(&mut self, r: ConnectionResult, now: Instant) {
        match r {
            ConnectionResult::SendPacket((p, to)) => self.send(&p, to),
            ConnectionResult::Connected(reply, conn) => {
                if let Some((p, to)) = reply {
                    self.send(&p, to);
                }
                self.handshake = Some(now);
                let conn = DuplexConnection::new(conn);
                self.next_wake = conn.next_timer(now);
                self.state = State::Open(Box::new(conn));
            }
            ConnectionResult::Reject(_, r) => {
                self.error = Some(format!("rejected: {r:?}"));
                self.state = State::Closed;
            }
            ConnectionResult::Failure(e) => {
                self.error = Some(format!("connect failure: {e}"));
                self.state = State::Closed;
            }
            ConnectionResult::NotHandled(_)
            | ConnectionResult::NoAction
            | ConnectionResult::RequestAccess(_) => {}
        }
    }

    /// Sends what the connection wants sent and takes what it releases.
    fn drain(&mut self, now: Instant) {
        let State::Open(conn) = &mut self.state else {
            return;
        };
        let mut outgoing = Vec::new();
        while let Some(p) = conn.next_packet(now) {
            outgoing.push(p);
        }
        while let Some((_, data)) = conn.next_data(now) {
            self.delivered_bytes += data.len() as u64;
            self.pes.clear();
            let _ = self.demux.push(&data, &mut self.pes);
        }
        let open = conn.is_open();
        self.next_wake = conn.next_timer(now);
        for (p, to) in outgoing {
            self.send(&p, to);
        }
        if !open {
            self.error.get_or_insert_with(|| "closed by peer".into());
            self.state = State::Closed;
        }
    }

    fn on_datagram(&mut self, buf: &[u8], from: SocketAddr, now: Instant) {
        let Ok(pkt) = Packet::parse(&mut &buf[..], false) else {
            return;
        };
        match &mut self.state {
            State::Connecting(c) => {
                let r = c.handle_packet(Ok((pkt, from)), now);
                self.on_result(r, now);
            }
            State::Open(conn) => {
                if let Packet::Data(d) = &pkt {
                    self.data_bytes += d.payload.len() as u64;
                    if d.retransmitted {
                        self.retransmitted += 1;
                    }
                    self.first_data.get_or_insert(now);
                    if let Some(dm) = &mut self.timing_demux {
                        self.pes.clear();
                        let _ = dm.push(&d.payload, &mut self.pes);
                        let video_kf = self
                            .pes
                            .iter()
                            .any(|p| p.keyframe && matches!(p.stream_type, 0x1B | 0x24));
                        if video_kf {
                            self.first_kf = Some(now);
                            self.kf_bytes = self.data_bytes;
                            self.timing_demux = None;
                        }
                    }
                }
                conn.handle_packet_input(now, Ok((pkt, from)));
                self.drain(now);
            }
            State::Closed => {}
        }
    }

    fn on_timer(&mut self, now: Instant) {
        match &mut self.state {
            State::Connecting(c) => {
                if now.duration_since(self.start) > HANDSHAKE_TIMEOUT {
                    self.error = Some("handshake timeout".into());
                    self.state = State::Closed;
                    return;
                }
                if now.duration_since(self.last_tick) >= HANDSHAKE_RETRY {
                    self.last_tick = now;
                    let r = c.handle_tick(now);
                    self.on_result(r, now);
                }
                if matches!(self.state, State::Connecting(_)) {
                    self.next_wake = self.last_tick + HANDSHAKE_RETRY;
                }
            }
            State::Open(conn) => {
                conn.check_timers(now);
                self.drain(now);
            }
            State::Closed => self.next_wake = now + Duration::from_secs(3600),
        }
    }

    fn pump(&mut self, buf: &mut [u8]) {
        loop {
            match self.sock.try_recv_from(buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    self.on_datagram(&buf[..n], from, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors (a port not open yet) and the like.
                Err(_) => break,
            }
        }
    }

    fn close(&mut self) {
        if let State::Open(conn) = &self.state {
            let s = conn.settings();
            let p = Packet::Control(ControlPacket {
                timestamp: TimeStamp::from_micros(0),
                dest_sockid: s.remote_sockid,
                control_type: ControlTypes::Shutdown,
            });
            let to = s.remote;
            self.send(&p, to);
            self.send(&p, to);
        }
        self.state = State::Closed;
    }

    fn snap(&self) -> Snap {
        let since = |t: Option<Instant>| t.map(|t| t.duration_since(self.start));
        let (rx_loss, rx_dropped, open) = match &self.state {
            State::Open(c) => {
                let s = c.statistics();
                (s.rx_loss_data, s.rx_dropped_data, true)
            }
            _ => (0, 0, false),
        };
        Snap {
            id: self.id,
            open,
            handshake: since(self.handshake),
            first_data: since(self.first_data),
            first_kf: since(self.first_kf),
            kf_bytes: self.kf_bytes,
            data_bytes: self.data_bytes,
            retransmitted: self.retransmitted,
            delivered_bytes: self.delivered_bytes,
            rx_loss,
            rx_dropped,
            cc_errors: self.demux.continuity_errors(),
            error: self.error.clone(),
        }
    }
}

/// All players, one task: wakes on any socket, a command, or the earliest
/// timer.
async fn drive_players(
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    remote: SocketAddr,
    streamid: String,
    latency: Duration,
) {
    let base = ConnInitSettings {
        send_latency: latency,
        recv_latency: latency,
        recv_buffer_size: PacketCount(8192),
        // The handshake's MSS field: srt-protocol's default (1316, its max
        // payload) is below what sluice accepts (1360 = 1316 + headers),
        // so announce a normal Ethernet MSS as libsrt does.
        max_packet_size: PacketSize(1500),
        ..Default::default()
    };
    let mut players: Vec<Player> = Vec::new();
    // Loss counters of closed players are lost with their connection;
    // keep the last values seen.
    let mut last_stats: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        enum Ev {
            Cmd(Option<Cmd>),
            Io,
            Timer,
        }
        let wake = players
            .iter()
            .filter(|p| !matches!(p.state, State::Closed))
            .map(|p| p.next_wake)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        let ev = {
            let ready = std::future::poll_fn(|cx| {
                let mut any = false;
                for p in &players {
                    if p.sock.poll_recv_ready(cx).is_ready() {
                        any = true;
                    }
                }
                if any {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            tokio::select! {
                biased;
                c = rx.recv() => Ev::Cmd(c),
                _ = ready => Ev::Io,
                _ = tokio::time::sleep_until(wake.into()) => Ev::Timer,
            }
        };
        match ev {
            Ev::Cmd(None) => break,
            Ev::Cmd(Some(Cmd::Add(id))) => {
                let bound = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| {
                    s.set_nonblocking(true)?;
                    set_recv_buffer(&s, RECV_BUFFER);
                    let send = s.try_clone()?;
                    Ok((UdpSocket::from_std(s)?, send))
                });
                let (sock, send_sock) = match bound {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("srt_relay: player {id}: bind: {e}");
                        continue;
                    }
                };
                let local_ip = sock.local_addr().map(|a| a.ip()).unwrap_or(remote.ip());
                let settings = base.copy_randomize();
                let connect = Connect::new(
                    remote,
                    local_ip,
                    settings,
                    Some(streamid.clone()),
                    SeqNumber::new_truncate(rand::random::<u32>()),
                );
                let now = Instant::now();
                let mut p = Player {
                    id,
                    sock,
                    send_sock,
                    state: State::Connecting(Box::new(connect)),
                    start: now,
                    last_tick: now,
                    next_wake: now + HANDSHAKE_RETRY,
                    handshake: None,
                    first_data: None,
                    first_kf: None,
                    kf_bytes: 0,
                    timing_demux: Some(Demuxer::new()),
                    demux: Demuxer::new(),
                    pes: Vec::new(),
                    data_bytes: 0,
                    retransmitted: 0,
                    delivered_bytes: 0,
                    error: None,
                    out: Vec::with_capacity(1500),
                };
                if let State::Connecting(c) = &mut p.state {
                    let r = c.handle_tick(now);
                    p.on_result(r, now);
                }
                players.push(p);
            }
            Ev::Cmd(Some(Cmd::Remove(id))) => {
                if let Some(i) = players.iter().position(|p| p.id == id) {
                    let mut p = players.swap_remove(i);
                    p.close();
                }
            }
            Ev::Cmd(Some(Cmd::Snapshot(reply))) => {
                let snaps: Vec<Snap> = players
                    .iter()
                    .map(|p| {
                        let mut s = p.snap();
                        if s.open {
                            last_stats.insert(p.id, (s.rx_loss, s.rx_dropped));
                        } else if let Some(&(l, d)) = last_stats.get(&p.id) {
                            s.rx_loss = l;
                            s.rx_dropped = d;
                        }
                        s
                    })
                    .collect();
                let _ = reply.send(snaps);
            }
            Ev::Io | Ev::Timer => {}
        }
        for p in &mut players {
            p.pump(&mut buf);
        }
        let now = Instant::now();
        for p in &mut players {
            if !matches!(p.state, State::Closed) && p.next_wake <= now {
                p.on_timer(now);
            }
        }
    }
    for p in &mut players {
        p.close();
    }
}

/// Handle on the player thread.
struct Players {
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_id: usize,
}

impl Players {
    fn start(remote: SocketAddr, streamid: &str, latency: Duration) -> Players {
        let (tx, rx) = mpsc::unbounded_channel();
        let streamid = streamid.to_string();
        let thread = std::thread::Builder::new()
            .name("srt-players".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(drive_players(rx, remote, streamid, latency));
            })
            .expect("spawn player thread");
        Players {
            tx: Some(tx),
            thread: Some(thread),
            next_id: 0,
        }
    }

    fn add(&mut self) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Add(id));
        }
        id
    }

    fn remove(&self, id: usize) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Remove(id));
        }
    }

    fn snapshot(&self) -> Vec<Snap> {
        let (rtx, rrx) = std_mpsc::channel();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Snapshot(rtx));
        }
        rrx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }
}

impl Drop for Players {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SO_RCVBUF asked for each player socket (the kernel caps it at
/// `net.core.rmem_max`). libsrt asks for 12 MB (SRTO_UDP_RCVBUF); with the
/// 208 KiB default a GOP-cache burst to many players overflows the socket
/// while the receive thread waits for a core.
const RECV_BUFFER: i32 = 8 << 20;

/// Sets SO_RCVBUF (best effort; std has no setter and the crate has no
/// libc/socket2 dependency, so declare setsockopt(2) directly).
#[cfg(target_os = "linux")]
fn set_recv_buffer(sock: &std::net::UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_RCVBUF: i32 = 8;
    // SAFETY: a valid open fd, a pointer to a live i32 and its size.
    unsafe {
        setsockopt(
            sock.as_raw_fd(),
            SOL_SOCKET,
            SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_recv_buffer(_sock: &std::net::UdpSocket, _bytes: i32) {}

/// Kernel UDP receive-buffer drops, machine-wide (/proc/net/snmp).
fn udp_rcvbuf_errors() -> u64 {
    let s = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Statistics helpers
// ---------------------------------------------------------------------------

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms_row(name: &str, v: &mut [f64], total: usize) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return format!(
            "| {name:<34} | {:>4}/{total:<3} | {:>8} | {:>8} | {:>8} |",
            0, "-", "-", "-"
        );
    }
    format!(
        "| {name:<34} | {:>4}/{total:<3} | {:>8.1} | {:>8.1} | {:>8.1} |",
        v.len(),
        percentile(v, 0.5),
        percentile(v, 0.95),
        v[v.len() - 1],
    )
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

struct StepResult {
    players: usize,
    connected: usize,
    secs: f64,
    egress_mbps: f64,
    delivered_mbps: f64,
    sluice_egress_mbps: f64,
    min_player_mbps: f64,
    sluice_cpu: f64,
    bench_cpu: f64,
    ffmpeg_cpu: f64,
    lossy: usize,
    unrecovered: usize,
    dropped_pkts: u64,
    cc_bad: usize,
    retrans: u64,
    kernel_drops: u64,
    failed: usize,
}

fn main() {
    let opts = Opts::parse();
    let t_total = Instant::now();
    let hz = clock_ticks();
    let bin = sluice_binary(opts.build);
    let flv = fixture();

    let mut config = format!("[srt]\nlatency = \"{}ms\"\n", opts.latency_ms);
    if let Some(dir) = &opts.record {
        // Every application stays open, as with no section at all.
        config.push_str(&format!(
            "[apps.\"*\"]\nrecord = true\nrecord_dir = \"{}\"\nrecord_segment = \"10s\"\n",
            dir.display()
        ));
    }
    let server = Sluice::start_foreground(&bin, &config);
    eprintln!(
        "srt_relay: sluice pid {} rtmp {} srt {} http {}",
        server.pid(),
        server.rtmp_addr(),
        server.srt_addr(),
        server.http_addr()
    );
    let mut ff = publish_looped(&server, &flv, STREAM_PATH);

    // Live, and a GOP or two in the cache.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if stream_info(&server)
            .is_some_and(|s| s.get("keyframes_in").and_then(Value::as_u64).unwrap_or(0) >= 2)
        {
            break;
        }
        if let Some(st) = ff.try_exit() {
            panic!("ffmpeg publisher exited ({st}): {}", ff.stderr().tail(40));
        }
        assert!(
            Instant::now() < deadline,
            "stream {STREAM_PATH} not live within 15 s; sluice log:\n{}",
            server.log_tail(200)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let info = stream_info(&server).unwrap_or(Value::Null);
    let ingest_mbps = info
        .get("ingest_bitrate_bps")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        / 1e6;

    let latency = Duration::from_millis(opts.latency_ms);
    let mut players = Players::start(server.srt_addr(), STREAM_PATH, latency);

    // --- a. joins at random moments of the GOP --------------------------
    let mut hs = Vec::new();
    let mut fd = Vec::new();
    let mut kf = Vec::new();
    let mut kf_kb = Vec::new();
    let mut kf_rate = Vec::new();
    let mut join_errors = Vec::new();
    let mut rng = rand::rng();
    for j in 0..opts.joins {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..2000)));
        let id = players.add();
        let until = Instant::now() + JOIN_TIMEOUT;
        let snap = loop {
            std::thread::sleep(Duration::from_millis(20));
            let s = players.snapshot().into_iter().find(|s| s.id == id);
            let done = s
                .as_ref()
                .is_some_and(|s| s.first_kf.is_some() || s.error.is_some());
            if done || Instant::now() > until {
                break s;
            }
        };
        players.remove(id);
        match snap {
            Some(s) => {
                if let Some(d) = s.handshake {
                    hs.push(d.as_secs_f64() * 1e3);
                }
                if let Some(d) = s.first_data {
                    fd.push(d.as_secs_f64() * 1e3);
                }
                if let Some(d) = s.first_kf {
                    kf.push(d.as_secs_f64() * 1e3);
                    kf_kb.push(s.kf_bytes as f64 / 1e3);
                    if let Some(f) = s.first_data {
                        let span = d.saturating_sub(f).as_secs_f64();
                        if span > 0.0 {
                            kf_rate.push(s.kf_bytes as f64 * 8.0 / span / 1e6);
                        }
                    }
                }
                if s.first_kf.is_none() {
                    join_errors.push(format!(
                        "join {j}: no keyframe ({})",
                        s.error.unwrap_or_else(|| "timeout".into())
                    ));
                }
            }
            None => join_errors.push(format!("join {j}: player vanished")),
        }
    }

    // --- c. capacity ramp ----------------------------------------------
    let mut steps: Vec<StepResult> = Vec::new();
    let mut stop_reason: Option<String> = None;
    let mut ids: Vec<usize> = Vec::new();
    for &target in &opts.steps {
        if t_total.elapsed() > Duration::from_secs(170) {
            stop_reason = Some("time budget".into());
            break;
        }
        while ids.len() < target {
            ids.push(players.add());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_secs_f64(opts.warmup_secs));
        let before = players.snapshot();
        let m0 = scrape_sum(&server, "sluice_srt_bytes_out_total").unwrap_or(0.0);
        let t0 = Instant::now();
        let k0 = udp_rcvbuf_errors();
        let cpu_s = CpuProbe::start(Some(server.pid()));
        let cpu_b = CpuProbe::start(None);
        let cpu_f = CpuProbe::start(Some(ff.pid()));
        std::thread::sleep(Duration::from_secs_f64(opts.step_secs));
        let sluice_cpu = cpu_s.percent(hz);
        let bench_cpu = cpu_b.percent(hz);
        let ffmpeg_cpu = cpu_f.percent(hz);
        let secs = t0.elapsed().as_secs_f64();
        let kernel_drops = udp_rcvbuf_errors().saturating_sub(k0);
        let after = players.snapshot();
        let m1 = scrape_sum(&server, "sluice_srt_bytes_out_total").unwrap_or(m0);
        let b0: HashMap<usize, &Snap> = before.iter().map(|s| (s.id, s)).collect();
        let mut bytes = 0u64;
        let mut delivered = 0u64;
        let mut min_player = f64::INFINITY;
        let (mut lossy, mut unrecovered, mut cc_bad, mut failed, mut connected) = (0, 0, 0, 0, 0);
        let mut retrans = 0;
        let mut dropped_pkts = 0u64;
        for s in after.iter().filter(|s| ids.contains(&s.id)) {
            let p0 = b0.get(&s.id);
            let db = s.data_bytes - p0.map_or(0, |p| p.data_bytes);
            bytes += db;
            delivered += s.delivered_bytes - p0.map_or(0, |p| p.delivered_bytes);
            min_player = min_player.min(db as f64 * 8.0 / secs / 1e6);
            if s.rx_loss > p0.map_or(0, |p| p.rx_loss) {
                lossy += 1;
            }
            let dropped = s.rx_dropped.saturating_sub(p0.map_or(0, |p| p.rx_dropped));
            if dropped > 0 {
                unrecovered += 1;
                dropped_pkts += dropped;
            }
            if s.cc_errors > p0.map_or(0, |p| p.cc_errors) {
                cc_bad += 1;
            }
            retrans += s.retransmitted - p0.map_or(0, |p| p.retransmitted);
            if s.open {
                connected += 1;
            } else {
                failed += 1;
            }
        }
        let r = StepResult {
            players: target,
            connected,
            secs,
            egress_mbps: bytes as f64 * 8.0 / secs / 1e6,
            delivered_mbps: delivered as f64 * 8.0 / secs / 1e6,
            sluice_egress_mbps: (m1 - m0) * 8.0 / secs / 1e6,
            min_player_mbps: if min_player.is_finite() {
                min_player
            } else {
                0.0
            },
            sluice_cpu,
            bench_cpu,
            ffmpeg_cpu,
            lossy,
            unrecovered,
            dropped_pkts,
            cc_bad,
            retrans,
            kernel_drops,
            failed,
        };
        eprintln!(
            "srt_relay: step {:>3} players: {:.1} Mbit/s ({:.1} released by TSBPD), sluice {:.1} % CPU, bench {:.1} % CPU, lossy {}, dropped {}, cc {}, kernel drops {}",
            r.players, r.egress_mbps, r.delivered_mbps, r.sluice_cpu, r.bench_cpu, r.lossy, r.unrecovered, r.cc_bad, r.kernel_drops
        );
        let keep_up = r.min_player_mbps >= 0.8 * ingest_mbps;
        // srt-protocol's receiver counts a duplicate retransmission of a
        // packet it already released as a too-late drop, so rx_dropped alone
        // is not loss; a TS continuity error in the released bytes is.
        let why = if r.cc_bad > 0 {
            Some("TS continuity errors (data lost)")
        } else if r.lossy > r.players / 2 {
            Some("SRT loss (recovered by retransmission) at more than half the players")
        } else if r.failed > 0 {
            Some("players disconnected")
        } else if r.bench_cpu > 90.0 {
            Some("receiver thread saturated (bench CPU > 90 %)")
        } else if ingest_mbps > 0.0 && !keep_up {
            Some("a player got < 80 % of the ingest bitrate")
        } else {
            None
        };
        steps.push(r);
        if let Some(why) = why {
            stop_reason = Some(why.into());
            break;
        }
    }

    // --- b. relay latency -----------------------------------------------
    let metrics = server
        .try_get_full("/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    let hist = Histogram::parse(&metrics, "sluice_relay_latency_seconds");
    let sum = |name: &str| metric_value(&metrics, name).unwrap_or(0.0);
    let skips = sum("sluice_srt_lag_skips_total");
    let lag_disc = sum("sluice_srt_lag_disconnects_total");
    let panics = sum("sluice_srt_protocol_panics_total");
    let dropped_dg = sum("sluice_srt_dropped_datagrams_total");
    let gop_starts = sum("sluice_srt_gop_cache_starts_total");
    let recorded = opts.record.as_ref().map(|dir| {
        (
            dir.clone(),
            sum("sluice_record_segments_total"),
            sum("sluice_record_bytes_total"),
            sum("sluice_record_segments_dropped_total"),
        )
    });

    drop(players);
    drop(ff);
    drop(server);

    // --- report ----------------------------------------------------------
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!();
    println!("## sluice SRT relay benchmark");
    println!();
    println!(
        "machine: {cores} cores, {cpu_model}; loopback; sluice release build; SRT latency {} ms",
        opts.latency_ms
    );
    println!(
        "stream: {STREAM_PATH}, 1280x720 30 fps H.264 (B-frames, GOP 2 s) + AAC, ingest {ingest_mbps:.2} Mbit/s (sluice API)"
    );
    match &recorded {
        Some((dir, segments, bytes, dropped)) => println!(
            "recording: on, into {} (10 s segments): {segments} segments closed, {:.1} MB written, {dropped} segments dropped",
            dir.display(),
            bytes / 1e6
        ),
        None => println!("recording: off"),
    }
    println!();
    println!(
        "### a. join latency ({} joins at random GOP phases; network arrival, before TSBPD)",
        opts.joins
    );
    println!();
    println!("| from SRT connect start to         |   n/total | p50 (ms) | p95 (ms) | max (ms) |");
    println!("|------------------------------------|-----------|----------|----------|----------|");
    println!("{}", ms_row("handshake done", &mut hs, opts.joins));
    println!("{}", ms_row("first data packet", &mut fd, opts.joins));
    println!(
        "{}",
        ms_row("first complete video keyframe PES", &mut kf, opts.joins)
    );
    let hs50 = percentile(&hs, 0.5);
    println!();
    println!(
        "A player displays after a further TSBPD {} ms; target = handshake + latency + 30 ms = {:.1} ms at the median handshake; measured keyframe p50 + latency = {:.1} ms.",
        opts.latency_ms,
        hs50 + opts.latency_ms as f64 + 30.0,
        percentile(&kf, 0.5) + opts.latency_ms as f64
    );
    kf_kb.sort_by(|a, b| a.total_cmp(b));
    kf_rate.sort_by(|a, b| a.total_cmp(b));
    println!(
        "Bytes received up to the completed keyframe PES: p50 {:.1} KB; burst rate first data -> keyframe complete: p50 {:.1} Mbit/s (min {:.1}).",
        percentile(&kf_kb, 0.5),
        percentile(&kf_rate, 0.5),
        kf_rate.first().copied().unwrap_or(f64::NAN)
    );
    for e in &join_errors {
        println!("- {e}");
    }
    println!();
    println!("### b. relay-added latency (sluice_relay_latency_seconds, RTMP message parsed -> last SRT packet of its chunk first sent, live chunks, all players)");
    println!();
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.3}", v * 1e3));
    println!("| samples | mean (ms) | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) |");
    println!("|---------|-----------|----------|----------|----------|------------|");
    println!(
        "| {:>7} | {:>9} | {:>8} | {:>8} | {:>8} | {:>10} |",
        hist.count,
        if hist.count > 0.0 {
            format!("{:.3}", hist.sum / hist.count * 1e3)
        } else {
            "-".into()
        },
        ms(hist.quantile(0.5)),
        ms(hist.quantile(0.9)),
        ms(hist.quantile(0.99)),
        ms(hist.quantile(0.999)),
    );
    println!();
    println!("(quantiles interpolated inside buckets 0.1/0.25/0.5/1/2/5/10/20/50/100/250 ms)");
    println!();
    println!(
        "### c/d. capacity, one stream, {:.0} s per step after {:.0} s warm-up",
        opts.step_secs, opts.warmup_secs
    );
    println!();
    println!("| players | connected | egress Mbit/s (rx) | sluice-counted Mbit/s | min player Mbit/s | sluice CPU % | CPU % per 100 Mbit/s | players w/ SRT loss (recovered) | players w/ too-late drop (pkts) | players w/ CC err | rx retrans | kernel UDP rcvbuf drops | bench CPU % | ffmpeg CPU % |");
    println!("|---------|-----------|--------------------|-----------------------|-------------------|--------------|----------------------|---------------------------------|---------------------------------|-------------------|------------|-------------------------|-------------|--------------|");
    for r in &steps {
        let per100 = if r.egress_mbps > 0.0 {
            r.sluice_cpu / (r.egress_mbps / 100.0)
        } else {
            f64::NAN
        };
        println!(
            "| {:>7} | {:>9} | {:>18.1} | {:>21.1} | {:>17.2} | {:>12.1} | {:>20.1} | {:>31} | {:>31} | {:>17} | {:>10} | {:>23} | {:>11.1} | {:>12.1} |",
            r.players,
            r.connected,
            r.egress_mbps,
            r.sluice_egress_mbps,
            r.min_player_mbps,
            r.sluice_cpu,
            per100,
            r.lossy,
            format!("{} ({})", r.unrecovered, r.dropped_pkts),
            r.cc_bad,
            r.retrans,
            r.kernel_drops,
            r.bench_cpu,
            r.ffmpeg_cpu,
        );
        let _ = r.secs;
    }
    println!();
    match &stop_reason {
        Some(w) => println!("ramp stopped early: {w}"),
        None => println!("ramp completed every step"),
    }
    println!(
        "sluice counters at the end: lag skips {skips}, lag disconnects {lag_disc}, protocol panics {panics}, dropped datagrams {dropped_dg}, GOP-cache starts {gop_starts}"
    );
    println!(
        "'too-late drop' is srt-protocol's rx_dropped_data; it also counts duplicate retransmissions of packets already released, so compare it with 'rx retrans' and the CC column."
    );
    println!(
        "CPU % is of one core. The receivers run in this process on the same machine, so capacity is a lower bound."
    );
    println!("total run time {:.1} s", t_total.elapsed().as_secs_f64());
}
