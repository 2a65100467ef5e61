//! The SRT listener: one UDP socket and one task serve every SRT player
//! (fed by the shared sender core) and every SRT publisher (a receiver
//! whose released payloads go to its ingest task, `publish`) through
//! srt-protocol's sans-IO handshake and connection. Every datagram passes
//! the guard first and every srt-protocol call runs under `catch_unwind`;
//! induction is stateless (a keyed SYN cookie), so nothing is stored for a
//! caller before it is accepted (docs/srt-sans-io.md §4).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use srt_protocol::connection::{Connection, DuplexConnection};
use srt_protocol::options::{KeySize, PacketCount, Passphrase};
use srt_protocol::packet::{
    ControlPacket, ControlTypes, CoreRejectReason, HandshakeControlInfo, HandshakeVsInfo, Packet,
    RejectReason, ShakeType, SocketId, SrtControlPacket, TimeStamp,
};
use srt_protocol::protocol::handshake::Handshake;
use srt_protocol::protocol::pending_connection::listen::Listen;
use srt_protocol::protocol::pending_connection::{
    AccessControlRequest, AccessControlResponse, ConnectionReject, ConnectionResult,
};
use srt_protocol::settings::{ConnInitSettings, KeySettings};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::srt::admission::{HandshakeLimiter, PendingReads, PendingState, ReadKey};
use crate::srt::config::SrtConfig;
use crate::srt::guard::{self, Verdict};
use crate::srt::publish::{self as publish_task, CloseRequest, ConnectionEnd, PublishTask};
use crate::srt::receiver::Receiver;
use crate::srt::sender::{Conn, End, Sender, SenderMetrics};
use crate::srt::sendonly::SendOnly;
use crate::srt::streamid::{self, code, Mode};
use crate::srt::udp;
use crate::stream::config::{AppConfig, Apps, JoinMode, DEFAULT_APP};
use crate::stream::driver::{Publish, Streams};
use crate::stream::remote::Remote;
use crate::stream::{ClaimError, Registry, StreamPath};
use crate::telemetry;
use crate::telemetry::trace::{PublishTrace, Step};
use crate::ts::TsChunk;

/// Chunks fed per pump, so one player cannot starve others.
const FEED_BATCH: usize = 256;
/// A player being closed gracefully gets this long to flush before we
/// send Shutdown ourselves and forget it.
const CLOSE_GRACE: Duration = Duration::from_millis(1500);
/// SYN cookies are valid for the current and the previous bucket.
const COOKIE_BUCKET: Duration = Duration::from_secs(10);
/// Datagrams per `recvmmsg` call.
const RECV_BATCH: usize = 64;
/// Datagrams handled per turn before timers and feeding get theirs.
const RECV_TURN: usize = 1024;
/// Receive buffer of a player's connection, in packets (it receives
/// control packets only).
const PLAYER_RECV_BUFFER: u64 = 32;
/// Serialized bytes queued before they are sent (see [`send_outbox`]).
const FLUSH_BYTES: usize = 512 * 1024;
/// Packets' room the listener's outbox keeps between turns; a burst grows it
/// for its turn only (a crowd of joiners is tens of thousands of packets).
const KEEP_PACKETS: usize = 4096;
/// Players pumped between two sends (see [`serve`]).
const PUMP_SLICE: usize = 32;
/// A held Conclusion is replayed when its webhook answers only if its
/// caller sent it this recently: libsrt resends every 250 ms to 1 s while
/// connecting, so a caller silent for longer gave up (or is another
/// connection now) and must not get a player.
const HELD_FRESH: Duration = Duration::from_millis(1500);
/// How long past its question's limit a publish's trace waits for its
/// caller to come back for the answer.
const TRACE_GRACE: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// Why a player went away (log field `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    PeerClosed,
    StreamEnded,
    TooSlow,
    Stuck,
    Replaced,
    Shutdown,
    Panic,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer closed or timed out",
            CloseReason::StreamEnded => "stream ended",
            CloseReason::TooSlow => "too slow (fell behind the ring)",
            CloseReason::Stuck => "too slow (send buffer full)",
            CloseReason::Replaced => "replaced by a new connection from the same address",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::Panic => "srt-protocol panicked",
        }
    }
}

/// One connected player.
struct Player {
    sender: Sender,
    peer: SocketAddr,
    stream: String,
    rendition: String,
    remote_sockid: SocketId,
    local_sockid: SocketId,
    /// Our Conclusion reply, replayed when the caller retransmits its
    /// Conclusion (it still addresses socket id 0, so the connection
    /// itself would ignore it).
    conclusion_reply: Option<Packet>,
    since: Instant,
    /// Its session's trace (`srt_play`, linked to the publish's), ended
    /// with it.
    trace: tracing::Span,
}

/// One connected publisher: its connection in the listener, its media on
/// the way to its ingest task.
struct Publisher {
    receiver: Receiver,
    peer: SocketAddr,
    stream: String,
    remote_sockid: SocketId,
    /// Our Conclusion reply, replayed to a retransmitted Conclusion.
    conclusion_reply: Option<Packet>,
    since: Instant,
    /// To its ingest task, each payload with whether data was lost before
    /// it; never waited on (full: the payload is dropped).
    payloads: tokio::sync::mpsc::Sender<(Bytes, bool)>,
    /// A payload was dropped: the next one sent carries the gap.
    gap: bool,
    /// How the connection ended, for the task's log and its group.
    ended: Option<tokio::sync::oneshot::Sender<ConnectionEnd>>,
    queue_drops: u64,
    /// Datagrams it may still send now (a token bucket).
    budget: DatagramBudget,
}

/// A publisher's datagram allowance: twice what `rtmp.max_ingest_bitrate`
/// needs in payloads of a single TS packet (srt-live-transmit sends what
/// each read of its input returned, down to 188 bytes), plus room for its
/// control packets, refilled continuously, at most a second's worth
/// banked. Every datagram costs the one UDP loop that serves all players
/// and publishers; past the allowance they are dropped before srt-protocol
/// sees them (a publisher within its bitrate never is).
#[derive(Debug)]
struct DatagramBudget {
    tokens: f64,
    per_second: f64,
    refilled: Instant,
}

impl DatagramBudget {
    fn new(max_ingest_kbps: u32, now: Instant) -> DatagramBudget {
        let media = f64::from(max_ingest_kbps) * 125.0 / 188.0;
        let per_second = 2.0 * media + 500.0;
        DatagramBudget {
            tokens: per_second,
            per_second,
            refilled: now,
        }
    }

    /// Take one datagram's place; `false` when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What SRT publishing needs besides the listener's own state.
#[derive(Clone)]
struct PublishSetup {
    streams: Arc<Streams>,
    /// `rtmp.max_timestamp_jump`: one timeline policy for every ingest.
    max_jump: Duration,
    /// `rtmp.max_ingest_bitrate` (kbit/s): sizes each publisher's datagram
    /// allowance.
    max_ingest_kbps: u32,
}

/// Why a player's sender is done, as the log says it.
fn close_reason(end: End) -> CloseReason {
    match end {
        End::PeerClosed => CloseReason::PeerClosed,
        End::StreamEnded { .. } => CloseReason::StreamEnded,
        End::Closed { .. } => CloseReason::Shutdown,
        End::TooSlow => CloseReason::TooSlow,
        End::Stuck => CloseReason::Stuck,
    }
}

/// The listener's state; [`serve`] drives it.
pub struct Listener {
    registry: Arc<Registry>,
    cfg: SrtConfig,
    base: ConnInitSettings,
    passphrase: Option<Passphrase>,
    cookie_key: [u8; 32],
    epoch: Instant,
    players: HashMap<SocketAddr, Player>,
    /// By our (local) socket id: a datagram is theirs only when it comes
    /// from their address too, so a player and a publisher on one
    /// address:port (libsrt multiplexes sockets on one UDP port) never mix.
    publishers: HashMap<SocketId, Publisher>,
    /// `None`: publishing is refused with 1405 ([`Listener::enable_publish`]).
    publish: Option<PublishSetup>,
    /// The applications (publish keys, webhook, passphrase, takeover).
    apps: Arc<Apps>,
    /// Ingest tasks ask for their connection to be closed here.
    closes: tokio::sync::mpsc::UnboundedSender<CloseRequest>,
    closes_rx: Option<tokio::sync::mpsc::UnboundedReceiver<CloseRequest>>,
    /// Payloads released by one pump (with their gap flags), reused.
    released: Vec<(Bytes, bool)>,
    outbox: Vec<(Packet, SocketAddr)>,
    /// Inductions per client prefix in the current second (flood limit).
    inductions: HandshakeLimiter,
    /// Conclusions with a valid cookie per client prefix in the current
    /// second: one cookie serves any number of socket ids, and each
    /// Conclusion costs a handshake state and possibly a webhook call.
    conclusions: HandshakeLimiter,
    /// Per-application read authorization (see [`Listener::set_read_auth`]).
    read_auth: ReadRules,
    /// Read-webhook calls in flight, each with the Conclusion it holds.
    pending_reads: Arc<std::sync::Mutex<PendingReads<HeldConclusion>>>,
    /// The traces of publishes whose question (webhook, directory) is
    /// asked: begun with the first Conclusion, handed to the publish when
    /// it is accepted, ended when it is refused or its caller gave up.
    publish_traces: std::sync::Mutex<HashMap<ReadKey, (Instant, PublishTrace)>>,
    /// Sent to (at most one wake queued) when a webhook answers.
    answers: tokio::sync::mpsc::Sender<()>,
    /// Its receiving end, until [`Listener::take_answers`].
    answers_rx: Option<tokio::sync::mpsc::Receiver<()>>,
    /// `[cluster]`: streams other nodes hold (edge pulls, the cluster-wide
    /// publish check, node-to-node pull tokens).
    remote: Option<Arc<dyn Remote>>,
    /// Players and publishers of every worker (limits and gauges).
    census: Arc<Census>,
    /// This worker's number (`srt.workers`), for the logs.
    worker: usize,
}

/// Players and publishers across all workers of one listener: the player
/// limits (`srt.max_players`, `max_players_per_stream`) hold for the
/// server, not per worker, and the gauges count everyone. Counts and
/// gauges change under one lock, so workers on other threads never leave
/// a gauge behind the count.
#[derive(Debug, Default)]
struct Census {
    /// Workers made by [`Listener::shard`] so far (their numbers).
    shards: AtomicUsize,
    state: std::sync::Mutex<CensusState>,
}

#[derive(Debug, Default)]
struct CensusState {
    players: usize,
    publishers: usize,
    per_stream: HashMap<String, usize>,
}

impl Census {
    fn state(&self) -> std::sync::MutexGuard<'_, CensusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (players on the server, players of `stream`).
    fn players(&self, stream: &str) -> (usize, usize) {
        let st = self.state();
        (st.players, st.per_stream.get(stream).copied().unwrap_or(0))
    }

    fn player_added(&self, stream: &str) {
        let mut st = self.state();
        *st.per_stream.entry(stream.to_string()).or_default() += 1;
        st.players += 1;
        metrics::gauge!(telemetry::SRT_PLAYERS).set(st.players as f64);
    }

    fn player_removed(&self, stream: &str) {
        let mut st = self.state();
        if let Some(n) = st.per_stream.get_mut(stream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_stream.remove(stream);
            }
        }
        st.players = st.players.saturating_sub(1);
        metrics::gauge!(telemetry::SRT_PLAYERS).set(st.players as f64);
    }

    fn publishers_changed(&self, added: bool) {
        let mut st = self.state();
        st.publishers = if added {
            st.publishers + 1
        } else {
            st.publishers.saturating_sub(1)
        };
        metrics::gauge!(telemetry::SRT_PUBLISHERS).set(st.publishers as f64);
    }
}

/// The latest retransmission of a Conclusion waiting for its read webhook
/// (a forced rejection is never held): replayed when the webhook answers,
/// if its caller is still retransmitting ([`HELD_FRESH`]).
struct HeldConclusion {
    packet: Packet,
    last_seen: Instant,
}

/// Who may play an application's streams.
#[derive(Debug, Clone, Default)]
pub struct ReadAuth {
    /// Overrides `srt.passphrase` for this application's streams.
    pub passphrase: Option<Passphrase>,
    /// User → token; non-empty: the streamid must carry `u=` and `s=` (or
    /// `user_token=`).
    pub tokens: std::collections::BTreeMap<String, crate::auth::Secret>,
    /// Asked before accepting a player, with its timeout.
    pub webhook: Option<(String, Duration)>,
    /// How its players join a running stream, unless one asks (`join=`).
    pub join: JoinMode,
}

/// Who may play which application's streams: `[apps.NAME]` by name, else
/// `[apps."*"]`; with no application configured at all, everyone (zero
/// config). An application with neither is unknown: its callers get 1404.
#[derive(Debug, Clone)]
pub struct ReadRules {
    named: HashMap<String, ReadAuth>,
    /// The rules of every application not named: `[apps."*"]`'s, the
    /// open defaults in zero config, `None` when unknown ones are refused.
    fallback: Option<ReadAuth>,
}

impl Default for ReadRules {
    /// Zero config: every application open.
    fn default() -> Self {
        ReadRules {
            named: HashMap::new(),
            fallback: Some(ReadAuth::default()),
        }
    }
}

impl ReadRules {
    /// From every `[apps.…]` (see [`Apps::lookup`], which this mirrors).
    pub fn from_apps(apps: &Apps) -> Result<ReadRules, ListenerError> {
        if apps.is_empty() {
            return Ok(ReadRules::default());
        }
        let mut named = HashMap::new();
        let mut fallback = None;
        for (name, app) in apps.iter() {
            let rules = ReadAuth::from_app(app)?;
            if name == DEFAULT_APP {
                fallback = Some(rules);
            } else {
                named.insert(name.clone(), rules);
            }
        }
        Ok(ReadRules { named, fallback })
    }

    /// The rules of application `app`; `None`: unknown, refused.
    fn get(&self, app: &str) -> Option<&ReadAuth> {
        self.named.get(app).or(self.fallback.as_ref())
    }
}

impl ReadAuth {
    /// From `[apps.NAME]`; the passphrase length was checked with the config.
    pub fn from_app(app: &crate::stream::config::AppConfig) -> Result<ReadAuth, ListenerError> {
        let passphrase = match &app.read_passphrase {
            Some(p) => Some(Passphrase::try_from(p.clone()).map_err(ListenerError::Passphrase)?),
            None => None,
        };
        Ok(ReadAuth {
            passphrase,
            tokens: app.read_tokens.clone(),
            webhook: app.read_webhook.clone().map(|u| (u, app.webhook_timeout)),
            join: app.join,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("srt.passphrase: {0:?} (SRT needs 10 to 79 bytes)")]
    Passphrase(srt_protocol::options::OptionsError),
    #[error("apps.{app}.publish_passphrase: {err:?} (SRT needs 10 to 79 bytes)")]
    PublishPassphrase {
        app: String,
        err: srt_protocol::options::OptionsError,
    },
}

/// Run `f`, turning a panic into `None` and counting it.
fn caught<R>(what: &'static str, peer: SocketAddr, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            metrics::counter!(telemetry::SRT_PROTOCOL_PANICS_TOTAL).increment(1);
            warn!(%peer, site = what, "srt-protocol panicked; dropping this peer only");
            None
        }
    }
}

/// The streamid a handshake carries (HSv5's SID extension; none in HSv4).
fn streamid_of(h: &HandshakeControlInfo) -> String {
    match &h.info {
        HandshakeVsInfo::V5(i) => i.sid.clone().unwrap_or_default(),
        HandshakeVsInfo::V4(_) => String::new(),
    }
}

/// Parse a guarded datagram (panics isolated); one srt-protocol cannot
/// parse is counted as `unparsable` and gives `None`.
fn parse_counted(bytes: &[u8], from: SocketAddr) -> Option<Packet> {
    match caught("parse", from, || {
        Packet::parse(&mut io::Cursor::new(bytes), from.is_ipv6())
    })? {
        Ok(p) => Some(p),
        Err(_) => {
            metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => "unparsable")
                .increment(1);
            None
        }
    }
}

fn handshake_of(p: &Packet) -> Option<&HandshakeControlInfo> {
    match p {
        Packet::Control(ControlPacket {
            control_type: ControlTypes::Handshake(h),
            ..
        }) => Some(h),
        _ => None,
    }
}

fn handshake_of_mut(p: &mut Packet) -> Option<&mut HandshakeControlInfo> {
    match p {
        Packet::Control(ControlPacket {
            control_type: ControlTypes::Handshake(h),
            ..
        }) => Some(h),
        _ => None,
    }
}

/// An SRT access-control code (1400, 1404, ...) as a rejection reason:
/// libsrt reports the wire value minus 1000.
fn reject_code(code: i32) -> RejectReason {
    RejectReason::try_from(code + 1000).unwrap_or(RejectReason::User(code + 1000))
}

/// What a caller's libsrt reports for `r` (metric label).
fn reported_code(r: RejectReason) -> i32 {
    i32::from(r) - 1000
}

/// Negotiate TSBPD latency the way libsrt does and patch both the
/// connection settings and the HSRSP (docs/srt-sans-io.md §5:
/// srt-protocol's listener takes the wrong half of the caller's HSREQ and
/// echoes its configured values).
fn fix_latency(
    ours: Duration,
    conclusion: &HandshakeControlInfo,
    reply: &mut Option<(Packet, SocketAddr)>,
    conn: &mut Connection,
) {
    let HandshakeVsInfo::V5(info) = &conclusion.info else {
        return;
    };
    let Some(SrtControlPacket::HandshakeRequest(req)) = &info.ext_hs else {
        return;
    };
    // srt-protocol's names: `send_latency` = upper 16 bits (the caller's
    // receiver delay), `recv_latency` = lower 16 bits.
    let send = ours.max(req.send_latency);
    let recv = ours.max(req.recv_latency);
    conn.settings.send_tsbpd_latency = send;
    conn.settings.recv_tsbpd_latency = recv;
    let patch = |ct: &mut ControlTypes| {
        if let ControlTypes::Handshake(h) = ct {
            if let HandshakeVsInfo::V5(i) = &mut h.info {
                if let Some(SrtControlPacket::HandshakeResponse(r)) = &mut i.ext_hs {
                    r.send_latency = recv;
                    r.recv_latency = send;
                }
            }
        }
    };
    if let Some((Packet::Control(cp), _)) = reply {
        patch(&mut cp.control_type);
    }
    if let Handshake::Listener(ct) = &mut conn.handshake {
        patch(ct);
    }
}

/// Handshake options we refuse before srt-protocol sees them (it panics
/// on some of these combinations).
fn handshake_acceptable(
    h: &HandshakeControlInfo,
    forced: Option<RejectReason>,
    passphrase: Option<&Passphrase>,
) -> Result<(), (RejectReason, String)> {
    if let Some(r) = forced {
        return Err((r, "unsupported handshake option or MSS".into()));
    }
    let HandshakeVsInfo::V5(info) = &h.info else {
        return Err((
            RejectReason::Core(CoreRejectReason::Version),
            "HSv4 caller".into(),
        ));
    };
    let (reason, why) = match (passphrase, &info.ext_km) {
        (None, Some(_)) => (
            CoreRejectReason::Unsecure,
            "caller encrypts, no srt.passphrase set",
        ),
        (Some(_), None) => (CoreRejectReason::Unsecure, "passphrase required"),
        (Some(_), Some(SrtControlPacket::KeyRefreshResponse(_))) => {
            (CoreRejectReason::BadSecret, "KMRSP in a Conclusion")
        }
        _ => return Ok(()),
    };
    Err((RejectReason::Core(reason), why.into()))
}

/// What a config reload hands the listener: `[srt]`, the applications and
/// the ingest policy SRT publishers share with RTMP ones
/// (`rtmp.max_timestamp_jump`, `rtmp.max_ingest_bitrate`), for callers
/// that arrive afterwards (connected players and publishers keep theirs).
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub srt: SrtConfig,
    pub apps: Arc<Apps>,
    pub max_timestamp_jump: Duration,
    pub max_ingest_kbps: u32,
}

fn passphrase_of(cfg: &SrtConfig) -> Result<Option<Passphrase>, ListenerError> {
    match &cfg.passphrase {
        Some(p) => Ok(Some(
            Passphrase::try_from(p.clone()).map_err(ListenerError::Passphrase)?,
        )),
        None => Ok(None),
    }
}

/// The settings every new connection starts from.
fn base_settings(cfg: &SrtConfig, passphrase: &Option<Passphrase>) -> ConnInitSettings {
    ConnInitSettings {
        send_latency: cfg.latency,
        recv_latency: cfg.latency,
        peer_idle_timeout: cfg.peer_idle_timeout,
        // Room for the largest GOP-cache burst: srt-protocol drops the
        // oldest packet when this is full (docs/srt-sans-io.md §4).
        send_buffer_size: PacketCount(u64::from(guard::MAX_LOSS)),
        key_settings: passphrase.clone().map(|p| KeySettings {
            key_size: KeySize::Unspecified,
            passphrase: p,
        }),
        ..ConnInitSettings::default()
    }
}

impl Listener {
    pub fn new(registry: Arc<Registry>, cfg: &SrtConfig) -> Result<Listener, ListenerError> {
        let passphrase = passphrase_of(cfg)?;
        let base = base_settings(cfg, &passphrase);
        Ok(Listener::fresh(
            registry,
            cfg.clone(),
            base,
            passphrase,
            Arc::default(),
            0,
        ))
    }

    /// A listener with nobody connected, no applications, publishing off,
    /// its own channels and cookie key.
    fn fresh(
        registry: Arc<Registry>,
        cfg: SrtConfig,
        base: ConnInitSettings,
        passphrase: Option<Passphrase>,
        census: Arc<Census>,
        worker: usize,
    ) -> Listener {
        let mut cookie_key = [0u8; 32];
        rand::fill(&mut cookie_key);
        let (answers, answers_rx) = tokio::sync::mpsc::channel(1);
        let (closes, closes_rx) = tokio::sync::mpsc::unbounded_channel();
        Listener {
            registry,
            cfg,
            base,
            passphrase,
            cookie_key,
            epoch: Instant::now(),
            players: HashMap::new(),
            publishers: HashMap::new(),
            publish: None,
            apps: Arc::default(),
            closes,
            closes_rx: Some(closes_rx),
            released: Vec::new(),
            outbox: Vec::new(),
            inductions: HandshakeLimiter::default(),
            conclusions: HandshakeLimiter::default(),
            read_auth: ReadRules::default(),
            pending_reads: Arc::default(),
            publish_traces: Default::default(),
            answers,
            answers_rx: Some(answers_rx),
            remote: None,
            census,
            worker,
        }
    }

    /// Another worker of this listener, for one more socket on the same
    /// port (`SO_REUSEPORT`: the kernel sends each peer address to one
    /// socket, always the same). It shares the settings, the applications,
    /// publishing, the cluster and the player counts; its players,
    /// publishers, handshake and webhook budgets and channels are its own.
    pub fn shard(&self) -> Listener {
        let worker = self.census.shards.fetch_add(1, Ordering::Relaxed) + 1;
        let mut l = Listener::fresh(
            self.registry.clone(),
            self.cfg.clone(),
            self.base.clone(),
            self.passphrase.clone(),
            self.census.clone(),
            worker,
        );
        l.epoch = self.epoch;
        l.publish = self.publish.clone();
        l.apps = self.apps.clone();
        l.read_auth = self.read_auth.clone();
        l.remote = self.remote.clone();
        l
    }

    /// Serve players streams other nodes hold, and refuse publishes of
    /// paths another node holds (`[cluster]`).
    pub fn set_remote(&mut self, remote: Arc<dyn Remote>) {
        self.remote = Some(remote);
    }

    /// Per-application read rules (passphrase, user tokens, webhook, and
    /// which applications exist). Until called: zero config, all open.
    pub fn set_read_auth(&mut self, rules: ReadRules) {
        self.read_auth = rules;
    }

    /// A config reload: `[srt]` (latency, passphrase, limits) and the
    /// applications for callers from now on. On an error nothing changes.
    pub fn reload(&mut self, s: &ListenerSettings) -> Result<(), ListenerError> {
        let passphrase = passphrase_of(&s.srt)?;
        self.set_apps(s.apps.clone())?;
        self.base = base_settings(&s.srt, &passphrase);
        self.passphrase = passphrase;
        self.cfg = s.srt.clone();
        if let Some(p) = &mut self.publish {
            p.max_jump = s.max_timestamp_jump;
            p.max_ingest_kbps = s.max_ingest_kbps;
        }
        Ok(())
    }

    /// Every application's rules, for players and publishers alike: the
    /// one entry point for a (re)loaded `[apps]`. Callers already
    /// connected keep what they were admitted with.
    pub fn set_apps(&mut self, apps: Arc<Apps>) -> Result<(), ListenerError> {
        let rules = ReadRules::from_apps(&apps)?;
        for (name, app) in apps.iter() {
            if let Some(p) = &app.publish_passphrase {
                Passphrase::try_from(p.clone()).map_err(|err| {
                    ListenerError::PublishPassphrase {
                        app: name.clone(),
                        err,
                    }
                })?;
            }
        }
        self.read_auth = rules;
        self.apps = apps;
        Ok(())
    }

    /// Accept SRT publishers (`m=publish`), starting their streams through
    /// `streams`. Until called, publishing is refused with 1405.
    pub fn enable_publish(
        &mut self,
        streams: Arc<Streams>,
        max_timestamp_jump: Duration,
        max_ingest_kbps: u32,
    ) {
        self.publish = Some(PublishSetup {
            streams,
            max_jump: max_timestamp_jump,
            max_ingest_kbps,
        });
    }

    /// The passphrase a caller asking for `sid` must use: its application's
    /// `publish_passphrase` (publishers) or `read_passphrase` (players),
    /// else `srt.passphrase`. Decided from the streamid before the
    /// handshake completes, so streams can differ.
    fn passphrase_for(&self, sid: &str) -> Option<Passphrase> {
        let Ok(req) = streamid::parse(sid) else {
            return self.passphrase.clone();
        };
        let app = req.path.split_once('/').map_or("", |(a, _)| a);
        let own = match req.mode {
            Mode::Request => self.read_auth.get(app).and_then(|r| r.passphrase.clone()),
            Mode::Publish => self
                .apps
                .lookup(app)
                .and_then(|a| a.publish_passphrase.clone())
                .and_then(|p| Passphrase::try_from(p).ok()),
        };
        own.or_else(|| self.passphrase.clone())
    }

    /// Connected players.
    pub fn players(&self) -> usize {
        self.players.len()
    }

    /// Connected publishers.
    pub fn publishers(&self) -> usize {
        self.publishers.len()
    }

    fn cookie(&self, addr: SocketAddr, bucket: u64) -> i32 {
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.cookie_key) else {
            return 0;
        };
        match addr.ip() {
            std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&addr.port().to_be_bytes());
        mac.update(&bucket.to_be_bytes());
        let out = mac.finalize().into_bytes();
        i32::from_be_bytes([out[0], out[1], out[2], out[3]])
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / COOKIE_BUCKET.as_secs()
    }

    fn cookie_ok(&self, addr: SocketAddr, cookie: i32, now: Instant) -> bool {
        let b = self.bucket(now);
        cookie == self.cookie(addr, b) || (b > 0 && cookie == self.cookie(addr, b - 1))
    }

    /// Handle one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        // Routed by (address, our socket id): a publisher's media and
        // control go to its receiver, everything else is a player's or a
        // handshake.
        if let Some(id) = data.get(12..16) {
            let id = SocketId(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
            if self.publishers.get(&id).is_some_and(|p| p.peer == from) {
                self.publisher_datagram(now, data, id, from);
                return;
            }
        }
        let verdict = guard::check(data);
        let stripped;
        let bytes = match verdict {
            Verdict::Drop(reason) => {
                metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => reason)
                    .increment(1);
                return;
            }
            Verdict::Pass => data,
            Verdict::Reject(_) => {
                stripped = guard::strip_config_extensions(data);
                &stripped[..]
            }
        };
        let Some(packet) = parse_counted(bytes, from) else {
            return;
        };
        let forced = match verdict {
            Verdict::Reject(r) => Some(r),
            _ => None,
        };
        if let Some(h) = handshake_of(&packet) {
            let for_player = self
                .players
                .get(&from)
                .is_some_and(|p| packet.dest_sockid() == p.local_sockid);
            if !for_player {
                match h.shake_type {
                    ShakeType::Induction if self.handshake_allowed(now, from, true) => {
                        self.induction(now, packet, from)
                    }
                    ShakeType::Conclusion => self.conclusion(now, packet, from, forced),
                    _ => {}
                }
                return;
            }
        }
        let Some(player) = self.players.get_mut(&from) else {
            return;
        };
        let ok = caught("connection input", from, || {
            player.sender.handle_packet(now, packet, from);
        });
        if ok.is_none() {
            self.remove(from, CloseReason::Panic);
            return;
        }
        self.pump(now, from);
    }

    /// Whether one more Induction (or Conclusion) from `from`'s IP fits in
    /// this second's budget; counts the drop when not.
    fn handshake_allowed(&mut self, now: Instant, from: SocketAddr, induction: bool) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let limit = self.cfg.max_handshakes_per_ip_per_second;
        let limiter = if induction {
            &mut self.inductions
        } else {
            &mut self.conclusions
        };
        if limiter.allow(second, from.ip(), limit) {
            return true;
        }
        metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => "handshake_rate")
            .increment(1);
        false
    }

    /// Stateless induction: answer with our keyed cookie, store nothing.
    fn induction(&mut self, now: Instant, packet: Packet, from: SocketAddr) {
        let mine = self.cookie(from, self.bucket(now));
        let base = self.base.clone();
        let reply = caught("induction", from, || {
            Listen::new(base, true).handle_packet(now, Ok((packet, from)))
        });
        if let Some(ConnectionResult::SendPacket((mut reply, to))) = reply {
            if let Some(h) = handshake_of_mut(&mut reply) {
                h.syn_cookie = mine;
            }
            self.outbox.push((reply, to));
        }
    }

    fn conclusion(
        &mut self,
        now: Instant,
        packet: Packet,
        from: SocketAddr,
        forced: Option<RejectReason>,
    ) {
        let Some(h) = handshake_of(&packet).cloned() else {
            return;
        };
        // A retransmitted Conclusion from a player or a publisher we
        // already accepted.
        if let Some(p) = self.players.get(&from) {
            if p.remote_sockid == h.socket_id {
                if let Some(reply) = &p.conclusion_reply {
                    self.outbox.push((reply.clone(), from));
                }
                return;
            }
        }
        let publisher = self
            .publishers
            .values()
            .find(|p| p.peer == from && p.remote_sockid == h.socket_id);
        if let Some(p) = publisher {
            if let Some(reply) = &p.conclusion_reply {
                self.outbox.push((reply.clone(), from));
            }
            return;
        }
        if !self.cookie_ok(from, h.syn_cookie, now) {
            metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => "bad cookie")
                .increment(1);
            return;
        }
        // Counted only with a valid cookie: a spoofed source cannot spend
        // another address's budget.
        if !self.handshake_allowed(now, from, false) {
            return;
        }
        self.conclude(now, packet, from, forced);
    }

    /// The access decision for a Conclusion from `from` (its cookie and
    /// rate checked), answered at once or held for the read webhook.
    fn conclude(
        &mut self,
        now: Instant,
        packet: Packet,
        from: SocketAddr,
        forced: Option<RejectReason>,
    ) {
        let Packet::Control(ControlPacket {
            timestamp,
            dest_sockid,
            control_type: ControlTypes::Handshake(h),
        }) = &packet
        else {
            return;
        };
        let (timestamp, dest_sockid, h) = (*timestamp, *dest_sockid, h.clone());
        let sid = streamid_of(&h);
        let passphrase = self.passphrase_for(&sid);
        let Some((mut listen, request)) =
            self.access_request(now, packet, &h, passphrase.clone(), from)
        else {
            return;
        };
        let decision = self.decide(&request, &h, forced, passphrase.clone(), from, now);
        let accepting = matches!(decision.response, AccessControlResponse::Accepted(_));
        if let Some(key) = decision.waiting {
            // Waiting for the webhook: say nothing until it answers (the
            // caller retransmits meanwhile). `packet` went to srt-protocol;
            // `h` is the whole of it but for the header.
            let conclusion = HeldConclusion {
                packet: Packet::Control(ControlPacket {
                    timestamp,
                    dest_sockid,
                    control_type: ControlTypes::Handshake(h),
                }),
                last_seen: now,
            };
            self.pending_reads().hold(&key, conclusion);
            return;
        }
        let result = caught("access response", from, || {
            listen.handle_access_control_response(now, decision.response)
        });
        match result {
            Some(ConnectionResult::Connected(reply, conn)) => match decision.target {
                Some(Target::Play(target)) => self.accept(now, from, &h, reply, conn, target),
                Some(Target::Publish(path, app, trace)) => {
                    let started =
                        self.accept_publisher(now, from, &h, reply, conn, &path, &app, trace);
                    if let Err((result, code, why)) = started {
                        metrics::counter!(telemetry::SRT_PUBLISHES_TOTAL, "result" => result)
                            .increment(1);
                        // The claim is made only once the handshake (and
                        // its passphrase) succeeded; srt-protocol's reply
                        // is discarded and a fresh one refuses the caller.
                        let packet = Packet::Control(ControlPacket {
                            timestamp,
                            dest_sockid,
                            control_type: ControlTypes::Handshake(h.clone()),
                        });
                        self.reject_late(now, packet, &h, passphrase, from, code, &sid, &why);
                    }
                }
                None => {}
            },
            Some(ConnectionResult::Reject(reply, why)) => {
                let (ConnectionReject::Rejecting(reason) | ConnectionReject::Rejected(reason)) =
                    why;
                if decision.publish {
                    // Accepted by us, refused by srt-protocol: the keys.
                    let result = if accepting {
                        "rejected_passphrase"
                    } else {
                        decision.result
                    };
                    metrics::counter!(telemetry::SRT_PUBLISHES_TOTAL, "result" => result)
                        .increment(1);
                }
                self.log_rejection(from, reason, &decision.streamid, &decision.why);
                if let Some(r) = reply {
                    self.outbox.push(r);
                }
                if let Some(Target::Publish(_, _, Some(t))) = decision.target {
                    t.not_published(
                        "rejected_passphrase",
                        "the SRT handshake refused the caller (its passphrase)",
                        true,
                    );
                }
            }
            _ => {
                if let Some(Target::Publish(_, _, Some(t))) = decision.target {
                    t.not_published("rejected", "the SRT handshake did not complete", true);
                }
            }
        }
    }

    /// Count and log a rejection. Never the raw streamid: tokens and keys
    /// hide in every encoding of it.
    fn log_rejection(&self, from: SocketAddr, reason: RejectReason, sid: &str, why: &str) {
        let code = reported_code(reason);
        metrics::counter!(telemetry::SRT_REJECTS_TOTAL, "code" => code.to_string()).increment(1);
        info!(
            peer = %from,
            code,
            streamid = %streamid::redact(sid),
            reason = %why,
            "srt caller rejected"
        );
    }

    /// Refuse a Conclusion after srt-protocol accepted it (a publish whose
    /// claim failed): a fresh `Listen` builds the rejection.
    #[allow(clippy::too_many_arguments)]
    fn reject_late(
        &mut self,
        now: Instant,
        packet: Packet,
        h: &HandshakeControlInfo,
        passphrase: Option<Passphrase>,
        from: SocketAddr,
        code: i32,
        sid: &str,
        why: &str,
    ) {
        let reason = reject_code(code);
        self.log_rejection(from, reason, sid, why);
        let Some((mut listen, _)) = self.access_request(now, packet, h, passphrase, from) else {
            return;
        };
        let result = caught("access response", from, || {
            listen.handle_access_control_response(now, AccessControlResponse::Rejected(reason))
        });
        if let Some(ConnectionResult::Reject(Some(r), _)) = result {
            self.outbox.push(r);
        }
    }

    /// A fresh `Listen` (a new local socket id, the passphrase of the
    /// stream asked for) brought to the access decision: a synthetic
    /// induction first, so it accepts the Conclusion with its own cookie.
    fn access_request(
        &self,
        now: Instant,
        mut packet: Packet,
        h: &HandshakeControlInfo,
        passphrase: Option<Passphrase>,
        from: SocketAddr,
    ) -> Option<(Listen, AccessControlRequest)> {
        let mut settings = self.base.copy_randomize();
        settings.key_settings = passphrase.map(|p| KeySettings {
            key_size: KeySize::Unspecified,
            passphrase: p,
        });
        let mut listen = Listen::new(settings, true);
        let induction = Packet::Control(ControlPacket {
            timestamp: TimeStamp::MIN,
            dest_sockid: SocketId(0),
            control_type: ControlTypes::Handshake(HandshakeControlInfo {
                shake_type: ShakeType::Induction,
                ..h.clone()
            }),
        });
        let request = caught("handshake", from, || {
            let cookie = match listen.handle_packet(now, Ok((induction, from))) {
                ConnectionResult::SendPacket((reply, _)) => handshake_of(&reply)?.syn_cookie,
                _ => return None,
            };
            if let Some(c) = handshake_of_mut(&mut packet) {
                c.syn_cookie = cookie;
            }
            match listen.handle_packet(now, Ok((packet, from))) {
                ConnectionResult::RequestAccess(req) => Some(req),
                _ => None,
            }
        });
        Some((listen, request??))
    }

    /// A caller accepted: its player starts as its join mode says (the
    /// ring's newest keyframe, retimed for `live`; the next one for `keyframe`).
    fn accept(
        &mut self,
        now: Instant,
        from: SocketAddr,
        h: &HandshakeControlInfo,
        mut reply: Option<(Packet, SocketAddr)>,
        mut conn: Connection,
        target: PlayTarget,
    ) {
        let PlayTarget {
            ring,
            path,
            rendition,
            join,
        } = target;
        fix_latency(self.cfg.latency, h, &mut reply, &mut conn);
        if self.players.contains_key(&from) {
            self.remove(from, CloseReason::Replaced);
        }
        let local_sockid = conn.settings.local_sockid;
        let latency = conn.settings.send_tsbpd_latency;
        let encrypted = conn.settings.cipher.is_some();
        // A player sends no media: an unencrypted one gets the send-only
        // connection; an encrypted one srt-protocol's duplex connection
        // (key material), whose receive side then needs no room for 8 192
        // packets (256 KiB reserved up front).
        let conn: Conn = if encrypted {
            conn.settings.recv_buffer_size = PacketCount(PLAYER_RECV_BUFFER);
            let Some(conn) = caught("connection setup", from, || DuplexConnection::new(conn))
            else {
                return;
            };
            conn.into()
        } else {
            SendOnly::new(conn, now).into()
        };
        let cursor = match join {
            JoinMode::Keyframe => ring.subscribe_at_next_keyframe(),
            JoinMode::Live | JoinMode::Cache => ring.subscribe(),
        };
        if cursor.backlog() > 0 {
            metrics::counter!(telemetry::SRT_GOP_CACHE_STARTS_TOTAL).increment(1);
        }
        metrics::counter!(telemetry::SRT_JOIN_TOTAL, "mode" => join.as_str()).increment(1);
        let mut sender = Sender::new(
            conn,
            cursor,
            FEED_BATCH,
            CLOSE_GRACE,
            SenderMetrics {
                bytes_out: metrics::counter!(telemetry::SRT_BYTES_OUT_TOTAL),
                packets: metrics::counter!(telemetry::SRT_DATA_PACKETS_TOTAL),
                retransmits: metrics::counter!(telemetry::SRT_RETRANSMITTED_PACKETS_TOTAL),
                latency: metrics::histogram!(telemetry::RELAY_LATENCY_SECONDS),
                lag_skips: metrics::counter!(telemetry::SRT_LAG_SKIPS_TOTAL),
                first_data: metrics::histogram!(
                    telemetry::SRT_JOIN_FIRST_DATA_SECONDS,
                    "mode" => join.as_str()
                ),
            },
            from.to_string(),
            now,
        );
        if join == JoinMode::Live {
            sender = sender.catch_up_on_join();
        }
        let conclusion_reply = reply.as_ref().map(|(p, _)| p.clone());
        if let Some(r) = reply {
            self.outbox.push(r);
        }
        let link = path
            .split_once('/')
            .and_then(|(app, key)| StreamPath::from_rtmp(app, key).ok())
            .and_then(|p| self.registry.get(&p))
            .and_then(|s| s.trace.get().cloned());
        let trace = crate::telemetry::trace::player_span(
            &path,
            &rendition,
            from,
            join.as_str(),
            self.worker,
            link,
        );
        let _in_trace = trace.enter();
        info!(
            peer = %from,
            stream = %path,
            rendition = %rendition,
            latency_ms = latency.as_millis() as u64,
            encrypted,
            join = join.as_str(),
            worker = self.worker,
            "srt player connected"
        );
        metrics::counter!(telemetry::SRT_PLAYERS_TOTAL).increment(1);
        let player = Player {
            sender,
            peer: from,
            stream: path,
            rendition,
            remote_sockid: h.socket_id,
            local_sockid,
            conclusion_reply,
            since: now,
            trace: trace.clone(),
        };
        drop(_in_trace);
        self.census.player_added(&player.stream);
        if let Some(old) = self.players.insert(from, player) {
            self.census.player_removed(&old.stream);
        }
        self.pump(now, from);
    }

    /// A publish accepted by the handshake: claim the path (a live one
    /// gives 1409 unless the application takes over), start its group and
    /// its ingest task. `Err((result label, code, why))`: refuse it.
    #[allow(clippy::too_many_arguments)]
    fn accept_publisher(
        &mut self,
        now: Instant,
        from: SocketAddr,
        h: &HandshakeControlInfo,
        mut reply: Option<(Packet, SocketAddr)>,
        mut conn: Connection,
        path: &StreamPath,
        app: &AppConfig,
        trace: Option<PublishTrace>,
    ) -> Result<(), (&'static str, i32, String)> {
        let Some(setup) = &self.publish else {
            return Err(("rejected_bad_mode", code::BAD_MODE, "not offered".into()));
        };
        let setup_kbps = setup.max_ingest_kbps;
        fix_latency(self.cfg.latency, h, &mut reply, &mut conn);
        let peer = from.to_string();
        // Begun with the first Conclusion when a question was asked, else
        // it starts with the accepted one.
        let trace = trace.unwrap_or_else(|| {
            let t = PublishTrace::start("srt", &peer, tracing::Span::current());
            t.set_stream(path);
            t
        });
        let started = setup.streams.start(Publish {
            path: path.clone(),
            name: &path.key,
            peer: &peer,
            protocol: "srt",
            app,
            accepted: now,
            trace: trace.clone(),
        });
        let group = match started {
            Ok(g) => g,
            Err(e) => {
                let (result, code) = match &e {
                    ClaimError::Busy(_) | ClaimError::PublishedOn { .. } => {
                        ("rejected_busy", code::CONFLICT)
                    }
                    ClaimError::Draining => ("rejected_draining", code::UNAVAILABLE),
                    ClaimError::MaxStreams { .. } | ClaimError::MaxPublishesPerIp { .. } => {
                        ("rejected_limit", code::OVERLOAD)
                    }
                };
                warn!(stream = %path, peer = %from, reason = result, "publish refused: {e}");
                trace.not_published(result, &e.to_string(), true);
                return Err((result, code, e.to_string()));
            }
        };
        let local_sockid = conn.settings.local_sockid;
        let latency = conn.settings.recv_tsbpd_latency;
        let encrypted = conn.settings.cipher.is_some();
        let Some(conn) = caught("connection setup", from, || DuplexConnection::new(conn)) else {
            // The group ends with its handle: nothing was published.
            drop(group);
            return Ok(());
        };
        let (payloads, rx) = tokio::sync::mpsc::channel(publish_task::PAYLOAD_QUEUE);
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let task = PublishTask {
            group,
            peer: from,
            local_sockid,
            payloads: rx,
            ended: ended_rx,
            close: self.closes.clone(),
            max_jump: setup.max_jump,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let span = tracing::info_span!("srt_publish", peer = %from, stream = %path);
                rt.spawn(tracing::Instrument::instrument(
                    publish_task::run(task),
                    span,
                ));
            }
            Err(_) => {
                // Streams::start has spawned already, so this cannot be.
                return Err(("rejected_internal", code::UNAVAILABLE, "no runtime".into()));
            }
        }
        let conclusion_reply = reply.as_ref().map(|(p, _)| p.clone());
        if let Some(r) = reply {
            self.outbox.push(r);
        }
        metrics::counter!(telemetry::SRT_PUBLISHES_TOTAL, "result" => "accepted").increment(1);
        info!(
            peer = %from,
            stream = %path,
            latency_ms = latency.as_millis() as u64,
            encrypted,
            "srt publisher connected"
        );
        self.publishers.insert(
            local_sockid,
            Publisher {
                receiver: Receiver::new(conn, now),
                peer: from,
                stream: path.to_string(),
                remote_sockid: h.socket_id,
                conclusion_reply,
                since: now,
                payloads,
                gap: false,
                ended: Some(ended),
                queue_drops: 0,
                budget: DatagramBudget::new(setup_kbps, now),
            },
        );
        self.census.publishers_changed(true);
        self.pump_publisher(now, local_sockid);
        Ok(())
    }

    /// A datagram for publisher `id` (it came from its address).
    fn publisher_datagram(&mut self, now: Instant, data: &[u8], id: SocketId, from: SocketAddr) {
        if !self
            .publishers
            .get_mut(&id)
            .is_some_and(|p| p.budget.take(now))
        {
            metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => "publisher_rate")
                .increment(1);
            return;
        }
        match guard::check_publisher(data) {
            Verdict::Pass => {}
            Verdict::Drop(reason) => {
                metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => reason)
                    .increment(1);
                return;
            }
            // A handshake option to refuse, addressed to a connection.
            Verdict::Reject(_) => {
                metrics::counter!(telemetry::SRT_DROPPED_DATAGRAMS_TOTAL, "reason" => "handshake on a connection")
                    .increment(1);
                return;
            }
        }
        let Some(packet) = parse_counted(data, from) else {
            return;
        };
        let Some(p) = self.publishers.get_mut(&id) else {
            return;
        };
        if caught("connection input", from, || {
            p.receiver.handle_packet(now, packet, from)
        })
        .is_none()
        {
            self.remove_publisher(id, "protocol_error", true);
            return;
        }
        self.pump_publisher(now, id);
    }

    /// Run a publisher's timers, collect its packets, and hand what its
    /// connection released to its ingest task (never waiting: a full
    /// queue drops the payload, counted; the TS ingest sees the gap).
    fn pump_publisher(&mut self, now: Instant, id: SocketId) {
        let Some(p) = self.publishers.get_mut(&id) else {
            return;
        };
        let outbox = &mut self.outbox;
        let released = &mut self.released;
        let res = caught("connection", p.peer, || {
            p.receiver.pump(now, outbox, released)
        });
        for (payload, gap) in self.released.drain(..) {
            metrics::counter!(telemetry::SRT_PUBLISH_BYTES_IN_TOTAL)
                .increment(payload.len() as u64);
            let gap = gap || p.gap;
            match p.payloads.try_send((payload, gap)) {
                Ok(()) => p.gap = false,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    p.gap = true;
                    p.queue_drops += 1;
                    metrics::counter!(telemetry::SRT_PUBLISH_DROPPED_PAYLOADS_TOTAL).increment(1);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        match res {
            None => self.remove_publisher(id, "protocol_error", true),
            Some(Some(_)) => self.remove_publisher(id, "peer_closed", false),
            Some(None) => {}
        }
    }

    /// Forget a publisher: its task learns how the connection ended (and
    /// ends the group with `reason` unless the group ended it). `goodbye`:
    /// tell the peer (best effort; it may still be sending).
    fn remove_publisher(&mut self, id: SocketId, reason: &'static str, goodbye: bool) {
        let Some(mut p) = self.publishers.remove(&id) else {
            return;
        };
        telemetry::connection_closed();
        if goodbye {
            self.outbox.push((
                Packet::Control(ControlPacket {
                    timestamp: TimeStamp::MIN,
                    dest_sockid: p.remote_sockid,
                    control_type: ControlTypes::Shutdown,
                }),
                p.peer,
            ));
        }
        let s = p.receiver.statistics();
        let end = ConnectionEnd {
            reason,
            seconds: p.since.elapsed().as_secs_f64(),
            payloads: p.receiver.payloads(),
            bytes_in: p.receiver.bytes_in(),
            retransmitted: s.rx_retransmit_data,
            lost: s.rx_loss_data,
            dropped: s.rx_dropped_data,
            queue_drops: p.queue_drops,
        };
        if let Some(tx) = p.ended.take() {
            let _ = tx.send(end);
        }
        debug!(peer = %p.peer, stream = %p.stream, reason, "srt publisher connection closed");
        self.census.publishers_changed(false);
    }

    /// An ingest task's group ended its publish: close the connection.
    pub fn close_publisher(&mut self, req: CloseRequest) {
        let live = self
            .publishers
            .get(&req.local_sockid)
            .is_some_and(|p| p.peer == req.peer);
        if live {
            info!(
                peer = %req.peer,
                cause = req.stopped.cause,
                why = %req.stopped.description,
                "closing srt publisher: its stream ended"
            );
            self.remove_publisher(req.local_sockid, req.stopped.cause, true);
        }
    }

    /// The channel [`Listener::close_publisher`]'s requests come on.
    /// Handed out once; `None` after.
    pub fn take_closes(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<CloseRequest>> {
        self.closes_rx.take()
    }

    /// The access decision for one Conclusion.
    fn decide(
        &self,
        req: &AccessControlRequest,
        h: &HandshakeControlInfo,
        forced: Option<RejectReason>,
        passphrase: Option<Passphrase>,
        from: SocketAddr,
        now: Instant,
    ) -> Decision {
        let sid = streamid_of(h);
        let reject = |(r, why): (RejectReason, String)| Decision {
            response: AccessControlResponse::Rejected(r),
            target: None,
            streamid: sid.clone(),
            why,
            waiting: None,
            publish: false,
            result: "rejected",
        };
        if let Err(refused) = handshake_acceptable(h, forced, passphrase.as_ref()) {
            return reject(refused);
        }
        if self.registry.is_draining() {
            return reject((reject_code(code::UNAVAILABLE), "server is draining".into()));
        }
        let parsed = match streamid::parse(&sid) {
            Ok(r) => r,
            Err(e) => return reject((reject_code(e.code()), e.to_string())),
        };
        if parsed.mode == Mode::Publish {
            return self.decide_publish(req, h, parsed, passphrase, from, now);
        }
        // A pull from another node of the cluster: its signed token stands
        // for the application's read authorization.
        let from_node = match self.node_pull(&parsed) {
            Ok(node) => node,
            Err(refused) => return reject(refused),
        };
        let app = parsed.path.split_once('/').map_or("", |(a, _)| a);
        let Some(rules) = self.read_auth.get(app) else {
            metrics::counter!(
                telemetry::AUTH_REJECTS_TOTAL,
                "action" => "read",
                "reason" => "unknown_app"
            )
            .increment(1);
            return reject((
                reject_code(code::NOT_FOUND),
                format!("unknown application {app:?}"),
            ));
        };
        // Tokens before the stream lookup: a caller without one learns
        // nothing about which streams are live.
        if from_node.is_none() {
            if let Err((code, reason, why)) = check_token(rules, &parsed) {
                metrics::counter!(telemetry::AUTH_REJECTS_TOTAL, "action" => "read", "reason" => reason)
                    .increment(1);
                return reject((reject_code(code), why));
            }
        }
        let join = match parsed.params.get("join") {
            None => rules.join,
            Some(v) => match JoinMode::parse(v) {
                Some(m) => m,
                None => {
                    return reject((
                        reject_code(code::BAD_REQUEST),
                        format!(
                            "join={} is not a join mode: use live, cache or keyframe",
                            streamid::shown(v)
                        ),
                    ))
                }
            },
        };
        let local = self.target(&parsed);
        // Served from another node (`[cluster]`): a stream not here, or an
        // edge of it here whose rendition is not pulled yet. Never for a
        // pull from another node: edges do not chain.
        let remote_needed = from_node.is_none()
            && self.remote.is_some()
            && match &local {
                Err(_) => self.stream_missing(&parsed),
                Ok(_) => self.edge_not_playing(&parsed),
            };
        let local = match local {
            Err(refused) if !remote_needed => return reject(refused),
            other => other,
        };
        if from_node.is_some() {
            metrics::counter!(telemetry::CLUSTER_EDGE_PULLS_SERVED_TOTAL, "result" => "accepted")
                .increment(1);
        }
        // The read webhook before anything is pulled for this caller.
        // The read webhook, and for a stream from another node the pull:
        // one question, the webhook first, so nothing is pulled for a
        // caller the webhook refuses.
        let webhook = if from_node.is_some() {
            None
        } else {
            self.read_webhook_request(rules, &parsed, from)
        };
        let verdict = if remote_needed {
            self.ask_remote_fetch(&parsed, h, from, now, webhook)
        } else if let Some((url, timeout, body)) = webhook {
            let key = ReadKey::new(from, h.socket_id.0, parsed.mode, &body);
            self.ask_webhook(url, timeout, body, key, now)
        } else {
            WebhookVerdict::NotConfigured
        };
        match verdict {
            WebhookVerdict::NotConfigured | WebhookVerdict::Allowed => {}
            WebhookVerdict::Waiting(key) => {
                return Decision {
                    waiting: Some(key),
                    ..reject((reject_code(code::UNAVAILABLE), String::new()))
                }
            }
            WebhookVerdict::Denied(code, why) => {
                if code == code::FORBIDDEN {
                    metrics::counter!(
                        telemetry::AUTH_REJECTS_TOTAL,
                        "action" => "read",
                        "reason" => "webhook_denied"
                    )
                    .increment(1);
                }
                return reject((reject_code(code), why));
            }
        }
        // Pulled: the ring is here now (or gone again).
        let ring = match local {
            Ok(ring) if !remote_needed => ring,
            local => match self.target(&parsed) {
                Ok(ring) => ring,
                Err(refused) => return reject(local.err().unwrap_or(refused)),
            },
        };
        // hsv5.rs requires the accepted key size to equal the caller's.
        let keys = passphrase.map(|p| KeySettings {
            key_size: req.key_size,
            passphrase: p,
        });
        Decision {
            response: AccessControlResponse::Accepted(keys),
            target: Some(Target::Play(PlayTarget {
                ring,
                path: parsed.path,
                rendition: parsed.rendition,
                join,
            })),
            streamid: sid.clone(),
            why: String::new(),
            waiting: None,
            publish: false,
            result: "",
        }
    }

    /// The access decision for a publish (`m=publish`): the application,
    /// its publish key (`s=` or `key=`), its webhook; the claim itself
    /// waits until the handshake succeeded ([`Listener::accept_publisher`]).
    fn decide_publish(
        &self,
        req: &AccessControlRequest,
        h: &HandshakeControlInfo,
        parsed: streamid::StreamRequest,
        passphrase: Option<Passphrase>,
        from: SocketAddr,
        now: Instant,
    ) -> Decision {
        let sid = streamid_of(h);
        let reject = |result: &'static str, code: i32, why: String| Decision {
            response: AccessControlResponse::Rejected(reject_code(code)),
            target: None,
            streamid: sid.clone(),
            why,
            waiting: None,
            publish: true,
            result,
        };
        let auth_reject = |reason: &'static str| {
            metrics::counter!(
                telemetry::AUTH_REJECTS_TOTAL,
                "action" => "publish",
                "reason" => reason
            )
            .increment(1);
        };
        if self.publish.is_none() {
            return reject(
                "rejected_bad_mode",
                code::BAD_MODE,
                "publishing over SRT is not offered here; use m=request".into(),
            );
        }
        if parsed.rendition != "source" {
            return reject(
                "rejected_bad_name",
                code::BAD_REQUEST,
                format!("publish to {}, not to a rendition of it", parsed.path),
            );
        }
        let path = match parsed
            .path
            .split_once('/')
            .ok_or_else(|| "expected APP/KEY".to_string())
            .and_then(|(app, key)| StreamPath::from_rtmp(app, key))
        {
            Ok(p) => p,
            Err(why) => return reject("rejected_bad_name", code::BAD_REQUEST, why),
        };
        let Some(app) = self.apps.lookup(&path.app) else {
            auth_reject("unknown_app");
            return reject(
                "rejected_unauthorized",
                code::NOT_FOUND,
                format!("unknown application {:?}", path.app),
            );
        };
        // SRT's session id `s=` is where callers put credentials (as
        // MediaMTX reads it); `key=` reads like RTMP's `?key=`.
        let presented = parsed
            .params
            .get("s")
            .or_else(|| parsed.params.get("key"))
            .map(String::as_str);
        if let Err(refusal) =
            crate::auth::check_publish_key(&app.publish_keys, &path.key, presented)
        {
            auth_reject(refusal.reason());
            let code = match refusal {
                crate::auth::Refusal::MissingKey => code::UNAUTHORIZED,
                _ => code::FORBIDDEN,
            };
            let why = match refusal {
                crate::auth::Refusal::MissingKey => {
                    "missing publish key: add s=KEY to the streamid".to_string()
                }
                other => other.to_string(),
            };
            return reject("rejected_unauthorized", code, why);
        }
        // The publish webhook, then (`[cluster]`, unless the application
        // takes over) whether another node holds the path: one question.
        let webhook = app.publish_webhook.clone().map(|url| {
            let body = serde_json::json!({
                "action": "publish",
                "protocol": "srt",
                "path": path.to_string(),
                "app": path.app,
                "stream": path.key,
                "key": presented,
                "query": parsed.params,
                "client": from.to_string(),
            });
            (url, app.webhook_timeout, body)
        });
        let remote = self.remote.clone().filter(|_| !app.takeover);
        let mut trace = None;
        if webhook.is_some() || remote.is_some() {
            let key = ReadKey::new(
                from,
                h.socket_id.0,
                Mode::Publish,
                &serde_json::json!({
                    "webhook": webhook.as_ref().map(|w| &w.2),
                    "held": remote.as_ref().map(|_| path.to_string()),
                }),
            );
            let limit = webhook.as_ref().map_or(Duration::ZERO, |w| w.1)
                + remote.as_ref().map_or(Duration::ZERO, |r| r.wait_limit());
            let p = path.clone();
            let peer = from.to_string();
            // The publish's trace begins with its first Conclusion: the
            // webhook is its auth step (its request carries the step's
            // `traceparent`), the directory its cluster check.
            let question = || {
                let trace = PublishTrace::start("srt", &peer, tracing::Span::current());
                trace.set_stream(&p);
                let auth = webhook.as_ref().map(|_| {
                    let span = trace.step(Step::Auth);
                    span.record("method", "webhook");
                    span
                });
                let setup = trace.setup_context();
                self.remember_trace(key, now, limit, trace);
                async move {
                    if let (Some((url, timeout, body)), Some(span)) = (webhook, auth) {
                        webhook_question(&url, &body, timeout, span).await?;
                    }
                    let Some(r) = remote else {
                        return Ok(());
                    };
                    let span = crate::telemetry::trace::step(&setup, Step::ClusterCheck);
                    let held = async {
                        match r.held_elsewhere(p.clone()).await {
                            None => Ok(()),
                            Some(node) => Err(node),
                        }
                    };
                    let held = crate::telemetry::trace::run_step(&span, held, |node| {
                        format!("held by node {node}")
                    })
                    .await;
                    if let Err(node) = held {
                        return Err((
                            code::CONFLICT,
                            format!(
                                "{p} is being published on {node}; stop that publisher first, or set takeover = true for this application"
                            ),
                        ));
                    }
                    Ok(())
                }
            };
            match self.ask(key, limit, now, question) {
                WebhookVerdict::NotConfigured | WebhookVerdict::Allowed => {
                    trace = self.take_trace(&key);
                }
                WebhookVerdict::Waiting(key) => {
                    return Decision {
                        waiting: Some(key),
                        ..reject("waiting", code::UNAVAILABLE, String::new())
                    }
                }
                WebhookVerdict::Denied(code, why) if code == code::CONFLICT => {
                    warn!(stream = %path, peer = %from, reason = "rejected_busy", "publish refused: {why}");
                    if let Some(t) = self.take_trace(&key) {
                        t.not_published("rejected_busy", &why, true);
                    }
                    return reject("rejected_busy", code, why);
                }
                WebhookVerdict::Denied(code, why) => {
                    auth_reject("webhook_denied");
                    if let Some(t) = self.take_trace(&key) {
                        t.not_published("rejected_unauthorized", &why, true);
                    }
                    return reject("rejected_unauthorized", code, why);
                }
            }
        }
        let keys = passphrase.map(|p| KeySettings {
            key_size: req.key_size,
            passphrase: p,
        });
        Decision {
            response: AccessControlResponse::Accepted(keys),
            target: Some(Target::Publish(path, Box::new(app.clone()), trace)),
            streamid: sid.clone(),
            why: String::new(),
            waiting: None,
            publish: true,
            result: "",
        }
    }

    /// The ring a request plays, if the stream and rendition are live and
    /// the player limits allow one more.
    fn target(
        &self,
        parsed: &streamid::StreamRequest,
    ) -> Result<Arc<crate::stream::Ring<TsChunk>>, (RejectReason, String)> {
        let stream = stream_path(parsed).and_then(|p| self.registry.get(&p));
        let Some(stream) = stream else {
            return Err((
                reject_code(code::NOT_FOUND),
                format!("no live stream {}", parsed.path),
            ));
        };
        let Some(rendition) = stream.rendition(&parsed.rendition) else {
            return Err((
                reject_code(code::NOT_FOUND),
                format!("{} has no rendition {}", parsed.path, parsed.rendition),
            ));
        };
        let (players, of_stream) = self.census.players(&parsed.path);
        if players >= self.cfg.max_players {
            return Err((
                reject_code(code::OVERLOAD),
                format!("srt.max_players ({}) reached", self.cfg.max_players),
            ));
        }
        if of_stream >= self.cfg.max_players_per_stream {
            return Err((
                reject_code(code::OVERLOAD),
                format!(
                    "srt.max_players_per_stream ({}) reached for {}",
                    self.cfg.max_players_per_stream, parsed.path
                ),
            ));
        }
        Ok(rendition.ring.clone())
    }

    /// The read webhook's question for this request, if the application
    /// has one: its URL, deadline and body.
    fn read_webhook_request(
        &self,
        rules: &ReadAuth,
        req: &streamid::StreamRequest,
        from: SocketAddr,
    ) -> Option<(String, Duration, serde_json::Value)> {
        let (url, timeout) = rules.webhook.clone()?;
        let (app, stream) = req.path.split_once('/').unwrap_or((&req.path, ""));
        let body = serde_json::json!({
            "action": "read",
            "protocol": "srt",
            "path": req.path,
            "app": app,
            "stream": stream,
            "rendition": req.rendition,
            "user": req.params.get("u"),
            "token": req.params.get("s").or_else(|| req.params.get("user_token")),
            "query": req.params,
            "client": from.to_string(),
        });
        Some((url, timeout, body))
    }

    /// A webhook's verdict on the request `key` (POST `body` to `url`):
    /// asked on a task on the request's first Conclusion, the Conclusion
    /// held meanwhile; read, once answered, by the held Conclusion's
    /// replay or a retransmission of the same request. Publishes and
    /// players share the table and its per-prefix bounds.
    fn ask_webhook(
        &self,
        url: String,
        timeout: Duration,
        body: serde_json::Value,
        key: ReadKey,
        now: Instant,
    ) -> WebhookVerdict {
        self.ask(key, timeout, now, move || async move {
            webhook_question(&url, &body, timeout, webhook_span(&body)).await
        })
    }

    /// A question about the request `key` answered off the loop (a
    /// webhook, the cluster directory): asked on a task on the request's
    /// first Conclusion, the Conclusion held meanwhile; read, once
    /// answered, by the held Conclusion's replay or a retransmission of the
    /// same request. A refusal carries its rejection code.
    /// `make` builds the question when it is asked (not on replays).
    fn ask<F>(
        &self,
        key: ReadKey,
        timeout: Duration,
        now: Instant,
        make: impl FnOnce() -> F,
    ) -> WebhookVerdict
    where
        F: std::future::Future<Output = crate::srt::admission::WebhookAnswer> + Send + 'static,
    {
        let mut pending = self.pending_reads();
        match pending.take(&key) {
            PendingState::Waiting => return WebhookVerdict::Waiting(key),
            PendingState::Answered(Ok(())) => return WebhookVerdict::Allowed,
            PendingState::Answered(Err((code, why))) => return WebhookVerdict::Denied(code, why),
            PendingState::Unknown => {}
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return WebhookVerdict::Denied(code::UNAVAILABLE, "no runtime for the question".into());
        };
        if let Err(why) = pending.admit(now, key, timeout) {
            return WebhookVerdict::Denied(code::OVERLOAD, why);
        }
        let question = make();
        let slot = self.pending_reads.clone();
        let answers = self.answers.clone();
        rt.spawn(async move {
            let answer = question.await;
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .answer(&key, answer);
            // Full: a wake is queued already and finds this answer too.
            let _ = answers.try_send(());
        });
        WebhookVerdict::Waiting(key)
    }

    /// `Ok(Some(node))` for a pull another node signed (streamid `node=`
    /// and `ct=`), `Ok(None)` for a player; a bad token is refused.
    fn node_pull(
        &self,
        parsed: &streamid::StreamRequest,
    ) -> Result<Option<String>, (RejectReason, String)> {
        // Without `[cluster]` the parameter means nothing here.
        let (Some(token), Some(remote)) = (parsed.params.get("ct"), self.remote.as_ref()) else {
            return Ok(None);
        };
        let node = parsed.params.get("node").map(String::as_str).unwrap_or("");
        let requested = if parsed.rendition == "source" {
            parsed.path.clone()
        } else {
            format!("{}/{}", parsed.path, parsed.rendition)
        };
        let ok = remote.authorizes_pull(token, &requested, node);
        if !ok {
            metrics::counter!(telemetry::CLUSTER_EDGE_PULLS_SERVED_TOTAL, "result" => "refused")
                .increment(1);
            return Err((
                reject_code(code::UNAUTHORIZED),
                "node pull refused: bad or expired cluster token (cluster.secret must be the same on every node, clocks within 2 minutes)".into(),
            ));
        }
        Ok(Some(node.to_string()))
    }

    /// Whether the stream is an edge of another node's whose requested
    /// rendition is not pulled (and playing) yet.
    fn edge_not_playing(&self, parsed: &streamid::StreamRequest) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        stream_path(parsed)
            .and_then(|p| self.registry.get(&p).map(|s| (p, s)))
            .is_some_and(|(p, s)| {
                s.origin_node.get().is_some() && !remote.playing_here(&p, &parsed.rendition)
            })
    }

    /// Whether the stream itself (not a rendition of it) is not here.
    fn stream_missing(&self, parsed: &streamid::StreamRequest) -> bool {
        stream_path(parsed).is_some_and(|p| self.registry.get(&p).is_none())
    }

    /// Pull the stream from the node that holds it (`[cluster]`), after
    /// the read `webhook` (if any) allowed the caller; the player's
    /// Conclusion is held until its ring has a keyframe: 1404 if no node
    /// holds it or the owner does not answer, the webhook's refusal first.
    fn ask_remote_fetch(
        &self,
        parsed: &streamid::StreamRequest,
        h: &HandshakeControlInfo,
        from: SocketAddr,
        now: Instant,
        webhook: Option<(String, Duration, serde_json::Value)>,
    ) -> WebhookVerdict {
        let Some(remote) = self.remote.clone() else {
            return WebhookVerdict::NotConfigured;
        };
        let Some(path) = stream_path(parsed) else {
            return WebhookVerdict::NotConfigured;
        };
        let body = serde_json::json!({
            "fetch": parsed.path,
            "rendition": parsed.rendition,
            "webhook": webhook.as_ref().map(|(_, _, b)| b),
        });
        let key = ReadKey::new(from, h.socket_id.0, parsed.mode, &body);
        let rendition = parsed.rendition.clone();
        let limit = remote.wait_limit() + webhook.as_ref().map_or(Duration::ZERO, |w| w.1);
        self.ask(key, limit, now, move || async move {
            if let Some((url, timeout, body)) = webhook {
                let span = webhook_span(&body);
                webhook_question(&url, &body, timeout, span).await?;
            }
            remote
                .fetch(path, rendition)
                .await
                .map_err(|why| (code::NOT_FOUND, why))
        })
    }

    /// Keep the trace a publish's question began until its answer is
    /// read; each lives at most its question's limit and a grace, and
    /// never more than the pending table holds.
    fn remember_trace(&self, key: ReadKey, now: Instant, limit: Duration, trace: PublishTrace) {
        let deadline = now + limit + TRACE_GRACE;
        let old = self.traces().insert(key, (deadline, trace));
        if let Some((_, t)) = old {
            t.not_published("abandoned", "the caller asked again", false);
        }
        self.prune_traces(now);
    }

    /// End the traces whose caller gave up (past their deadline), and the
    /// oldest past the pending table's bound.
    fn prune_traces(&self, now: Instant) {
        let mut traces = self.traces();
        let mut gone: Vec<(Instant, ReadKey)> = traces
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(k, (d, _))| (*d, *k))
            .collect();
        if traces.len() - gone.len() > crate::srt::admission::MAX_PENDING_READS {
            let mut rest: Vec<(Instant, ReadKey)> = traces
                .iter()
                .filter(|(_, (deadline, _))| *deadline > now)
                .map(|(k, (d, _))| (*d, *k))
                .collect();
            rest.sort_unstable();
            let over = rest.len() - crate::srt::admission::MAX_PENDING_READS;
            gone.extend(rest.into_iter().take(over));
        }
        let ended: Vec<PublishTrace> = gone
            .into_iter()
            .filter_map(|(_, k)| traces.remove(&k).map(|(_, t)| t))
            .collect();
        drop(traces);
        for t in ended {
            t.not_published("abandoned", "the caller gave up before the answer", false);
        }
    }

    /// End the trace of `key`'s question, if one is still kept.
    fn end_trace(&self, key: &ReadKey, cause: &str, why: &str, failed: bool) {
        if let Some(t) = self.take_trace(key) {
            t.not_published(cause, why, failed);
        }
    }

    fn traces(&self) -> std::sync::MutexGuard<'_, HashMap<ReadKey, (Instant, PublishTrace)>> {
        self.publish_traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn take_trace(&self, key: &ReadKey) -> Option<PublishTrace> {
        self.traces().remove(key).map(|(_, t)| t)
    }

    fn pending_reads(&self) -> std::sync::MutexGuard<'_, PendingReads<HeldConclusion>> {
        self.pending_reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wake for [`Listener::webhook_answered`]: a message after a read
    /// webhook has answered (at most one queued, so none is lost and none
    /// piles up). Handed out once; `None` after.
    pub fn take_answers(&mut self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        self.answers_rx.take()
    }

    /// Answer the callers whose read webhook has answered, without waiting
    /// for their next retransmission (libsrt's come 250 ms to 1 s apart).
    /// A held Conclusion is replayed only to a caller still retransmitting
    /// it and with no player at its address; otherwise the answer is
    /// forgotten (a player there: it would replace that player) or left
    /// for a retransmission (the caller was silent for [`HELD_FRESH`]).
    pub fn webhook_answered(&mut self, now: Instant) {
        let answered = self.pending_reads().answered();
        for (key, held) in answered {
            let from = key.from;
            if self.players.contains_key(&from) {
                // Connected meanwhile (its retransmission took the answer),
                // or another socket id of the same address:port plays now:
                // the caller that asked gave up on this question.
                self.pending_reads().take(&key);
                self.end_trace(&key, "abandoned", "the caller plays instead", false);
                continue;
            }
            if now.saturating_duration_since(held.last_seen) > HELD_FRESH {
                continue;
            }
            self.conclude(now, held.packet, from, None);
            // When the decision was made before the webhook's answer was
            // looked at (the stream ended, a player limit), it is still
            // there, holding a place of its prefix: forget it.
            self.pending_reads().take(&key);
            self.end_trace(
                &key,
                "rejected",
                "refused before its answer was read (draining, or a limit)",
                true,
            );
        }
        self.prune_traces(now);
    }

    /// Feed, run timers and collect output for one player.
    fn pump(&mut self, now: Instant, addr: SocketAddr) {
        let Some(p) = self.players.get_mut(&addr) else {
            return;
        };
        let outbox = &mut self.outbox;
        let res = caught("connection", addr, || p.sender.pump(now, outbox));
        if let Some(c) = p.sender.take_catch_up() {
            report_catch_up(addr, &p.stream, &c);
        }
        match res {
            None => self.remove(addr, CloseReason::Panic),
            Some(Some(end)) => self.remove(addr, close_reason(end)),
            Some(None) => {}
        }
    }

    /// Pump every player whose timer is due (or all with `all`), and
    /// every publisher whose timer is due.
    pub fn pump_all(&mut self, now: Instant, all: bool) {
        let mut due = Vec::new();
        self.due_players(now, all, &mut due);
        for a in due {
            self.pump(now, a);
        }
        self.pump_publishers(now);
    }

    /// The players whose timer is due (all with `all`), into `due`.
    fn due_players(&self, now: Instant, all: bool, due: &mut Vec<SocketAddr>) {
        due.clear();
        due.extend(
            self.players
                .iter()
                .filter(|(_, p)| all || p.sender.next_wake() <= now)
                .map(|(a, _)| *a),
        );
    }

    /// Pump every publisher whose timer is due.
    fn pump_publishers(&mut self, now: Instant) {
        let due: Vec<SocketId> = self
            .publishers
            .iter()
            .filter(|(_, p)| p.receiver.next_wake() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.pump_publisher(now, id);
        }
    }

    /// Earliest instant any player or publisher needs attention.
    pub fn next_wake(&self, now: Instant) -> Instant {
        self.players
            .values()
            .map(|p| p.sender.next_wake())
            .chain(self.publishers.values().map(|p| p.receiver.next_wake()))
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now)
    }

    /// Close every player gracefully and every publisher at once (server
    /// shutdown: their groups are ending too).
    pub fn close_all(&mut self, now: Instant) {
        let left: Vec<PublishTrace> = self.traces().drain().map(|(_, (_, t))| t).collect();
        for t in left {
            t.not_published("shutdown", "the server shut down before the answer", false);
        }
        let ids: Vec<SocketId> = self.publishers.keys().copied().collect();
        for id in ids {
            self.remove_publisher(id, "shutdown", true);
        }
        let addrs: Vec<SocketAddr> = self.players.keys().copied().collect();
        for a in addrs {
            if let Some(p) = self.players.get_mut(&a) {
                if caught("close", a, || p.sender.close(now)).is_none() {
                    self.remove(a, CloseReason::Panic);
                    continue;
                }
            }
            self.pump(now, a);
        }
    }

    /// Forget a player, telling it so when srt-protocol did not already.
    fn remove(&mut self, addr: SocketAddr, reason: CloseReason) {
        let Some(p) = self.players.remove(&addr) else {
            return;
        };
        telemetry::connection_closed();
        if reason != CloseReason::PeerClosed {
            // The peer may still be listening: say goodbye (best effort).
            self.outbox.push((
                Packet::Control(ControlPacket {
                    timestamp: TimeStamp::MIN,
                    dest_sockid: p.remote_sockid,
                    control_type: ControlTypes::Shutdown,
                }),
                addr,
            ));
        }
        if matches!(reason, CloseReason::TooSlow | CloseReason::Stuck) {
            metrics::counter!(telemetry::SRT_LAG_DISCONNECTS_TOTAL).increment(1);
        }
        let (retransmits, dropped) = p.sender.resent_and_dropped();
        crate::telemetry::trace::player_ended(
            &p.trace,
            reason.as_str(),
            matches!(
                reason,
                CloseReason::TooSlow | CloseReason::Stuck | CloseReason::Panic
            )
            .then(|| reason.as_str()),
            p.since.elapsed(),
            p.sender.bytes_out(),
        );
        let _in_trace = p.trace.enter();
        info!(
            peer = %p.peer,
            stream = %p.stream,
            rendition = %p.rendition,
            reason = reason.as_str(),
            seconds = p.since.elapsed().as_secs_f64(),
            bytes_out = p.sender.bytes_out(),
            retransmits,
            dropped,
            lag_skips = p.sender.lag_skips(),
            "srt player disconnected"
        );
        self.census.player_removed(&p.stream);
    }

    /// Take the datagrams to send.
    pub fn drain_outbox(&mut self, into: &mut Vec<(Packet, SocketAddr)>) {
        into.append(&mut self.outbox);
    }
}

/// The live-edge rewrite of one joiner, in metrics and the debug log.
/// A request's stream path (`APP/KEY`), if it names one.
fn stream_path(parsed: &streamid::StreamRequest) -> Option<StreamPath> {
    parsed
        .path
        .split_once('/')
        .and_then(|(app, key)| StreamPath::from_rtmp(app, key).ok())
}

/// Ask a webhook, a refusal as SRT 1403, in `span` (its request carries
/// the span's `traceparent`; the answer is its status).
async fn webhook_question(
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
    span: tracing::Span,
) -> crate::srt::admission::WebhookAnswer {
    crate::telemetry::trace::run_step(
        &span,
        crate::auth::ask_webhook(url, body, timeout),
        String::clone,
    )
    .await
    .map_err(|why| (code::FORBIDDEN, why))
}

/// A read webhook question's own short trace (`webhook`): the player's
/// session trace begins only once it is accepted.
fn webhook_span(body: &serde_json::Value) -> tracing::Span {
    let text = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    tracing::info_span!(
        target: crate::telemetry::trace::TARGET,
        parent: None,
        "webhook",
        action = %text("action"),
        stream = %text("path"),
        protocol = "srt",
    )
}

fn report_catch_up(peer: SocketAddr, stream: &str, c: &crate::srt::sender::CatchUpReport) {
    match c.unchanged {
        Some(why) => {
            metrics::counter!(telemetry::SRT_JOIN_UNCHANGED_TOTAL, "reason" => why).increment(1);
            debug!(peer = %peer, stream, reason = why, "srt player joined from the GOP cache as it was");
        }
        None => {
            metrics::histogram!(telemetry::SRT_JOIN_CATCHUP_SECONDS)
                .record(c.skipped.as_secs_f64());
            metrics::counter!(telemetry::SRT_JOIN_CATCHUP_FRAMES_TOTAL)
                .increment(u64::from(c.frames));
            debug!(
                peer = %peer,
                stream,
                frames = c.frames,
                skipped_ms = c.skipped.as_millis() as u64,
                dropped_pes = c.dropped_pes,
                lead_in = c.lead_in,
                "srt player joined at the live edge"
            );
        }
    }
}

/// The user token rule of the stream's application: 1401 when the
/// streamid carries no user or token, 1403 when they do not match.
fn check_token(
    rules: &ReadAuth,
    req: &streamid::StreamRequest,
) -> Result<(), (i32, &'static str, String)> {
    if rules.tokens.is_empty() {
        return Ok(());
    }
    let user = req.params.get("u");
    let token = req.params.get("s").or_else(|| req.params.get("user_token"));
    let (Some(user), Some(token)) = (user, token) else {
        return Err((
            code::UNAUTHORIZED,
            "missing_token",
            format!("{} needs u=USER and s=TOKEN in the streamid", req.path),
        ));
    };
    match rules.tokens.get(user.as_str()) {
        Some(secret) if secret.verify(token) => Ok(()),
        Some(_) => Err((
            code::FORBIDDEN,
            "wrong_token",
            format!("wrong token for user {}", streamid::shown(user)),
        )),
        None => Err((
            code::FORBIDDEN,
            "unknown_user",
            format!("unknown user {}", streamid::shown(user)),
        )),
    }
}

struct Decision {
    response: AccessControlResponse,
    target: Option<Target>,
    streamid: String,
    why: String,
    /// No answer yet: waiting for the read webhook's answer to this.
    waiting: Option<ReadKey>,
    /// A publish: counted in `sluice_srt_publishes_total` with `result`
    /// when refused.
    publish: bool,
    result: &'static str,
}

/// What an accepted player plays, and how it joins.
struct PlayTarget {
    ring: Arc<crate::stream::Ring<TsChunk>>,
    /// `APP/KEY`.
    path: String,
    rendition: String,
    join: JoinMode,
}

/// What an accepted caller does.
enum Target {
    /// Play a rendition's ring.
    Play(PlayTarget),
    /// Publish this path with its application's settings (and its trace,
    /// when its question began one).
    Publish(StreamPath, Box<AppConfig>, Option<PublishTrace>),
}

enum WebhookVerdict {
    NotConfigured,
    Waiting(ReadKey),
    Allowed,
    Denied(i32, String),
}

/// Serve SRT players and publishers on `socket` until `shutdown`; then
/// close every publisher and every player gracefully (bounded by about
/// 1.5 s) and return the socket: with `srt.workers` > 1 the caller keeps
/// it open until every worker is done, since a socket leaving the port's
/// group moves peers to other workers. Settings sent on `reloads` apply
/// to callers that arrive afterwards.
pub async fn serve(
    socket: UdpSocket,
    mut listener: Listener,
    mut reloads: Option<tokio::sync::watch::Receiver<Arc<ListenerSettings>>>,
    shutdown: CancellationToken,
) -> UdpSocket {
    let mut data = listener.registry.data_ready().watch();
    let mut data_open = true;
    let mut answers = listener.take_answers().expect("a listener is served once");
    let mut closes = listener.take_closes().expect("a listener is served once");
    let mut incoming = udp::Incoming::new(RECV_BATCH);
    let gso = udp::gso_supported();
    debug!(gso, "srt listener sends through sendmmsg");
    let mut outgoing = udp::Outgoing::new(gso);
    let datagrams_out = metrics::counter!(telemetry::SRT_DATAGRAMS_OUT_TOTAL);
    let send_calls = metrics::counter!(telemetry::SRT_SEND_CALLS_TOTAL);
    let mut due = Vec::new();
    let mut stopping: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = listener.next_wake(now);
        let mut data_ready = false;
        tokio::select! {
            _ = shutdown.cancelled(), if stopping.is_none() => {
                let now = Instant::now();
                stopping = Some(now + CLOSE_GRACE + Duration::from_millis(100));
                listener.close_all(now);
            }
            r = socket.readable() => {
                if let Err(e) = r {
                    debug!(error = %e, "srt socket not readable");
                }
            }
            // The registry keeps the sender: this fails only if it is gone.
            r = data.changed(), if data_open => {
                data_ready = r.is_ok();
                data_open = r.is_ok();
            }
            Some(()) = answers.recv() => {
                listener.webhook_answered(Instant::now());
            }
            Some(settings) = next_reload(&mut reloads) => {
                // Checked by the reload before it was sent.
                if let Err(e) = listener.reload(&settings) {
                    warn!(error = %e, "srt settings not reloaded");
                }
            }
            Some(req) = closes.recv() => {
                listener.close_publisher(req);
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        // Whatever woke the loop, what peers sent goes in before any
        // timer runs: an ACK left waiting behind a long turn would let an
        // encrypted player's retransmission timer (srt-protocol's) fire for
        // packets the player has, and holds every sender's buffer longer.
        receive_waiting(&socket, &mut incoming, &mut listener);
        let now = Instant::now();
        listener.pump_publishers(now);
        listener.due_players(now, data_ready, &mut due);
        // In slices, each sent before the next is made and followed by what
        // peers sent meanwhile: a player's packets wait for one slice, not
        // for every player's, and (encrypted players) its retransmission
        // timers start from when the packets really left (a keyframe to 500 players is
        // 40 000 datagrams, tens of milliseconds of sending).
        for slice in due.chunks(PUMP_SLICE) {
            let now = Instant::now();
            for a in slice {
                listener.pump(now, *a);
            }
            send_outbox(&mut listener, &mut outgoing, &socket).await;
            receive_waiting(&socket, &mut incoming, &mut listener);
        }
        send_outbox(&mut listener, &mut outgoing, &socket).await;
        datagrams_out.increment(std::mem::take(&mut outgoing.datagrams));
        send_calls.increment(std::mem::take(&mut outgoing.calls));
        if let Some(deadline) = stopping {
            if listener.players() == 0 || Instant::now() >= deadline {
                let addrs: Vec<SocketAddr> = listener.players.keys().copied().collect();
                for a in addrs {
                    listener.remove(a, CloseReason::Shutdown);
                }
                send_outbox(&mut listener, &mut outgoing, &socket).await;
                return socket;
            }
        }
    }
}

/// Send what the listener queued, flushing every [`FLUSH_BYTES`] so a
/// burst (a crowd joining, a keyframe to many players) never holds more
/// than that serialized, and give back what a burst grew the queues to.
async fn send_outbox(listener: &mut Listener, outgoing: &mut udp::Outgoing, socket: &UdpSocket) {
    for (packet, to) in listener.outbox.drain(..) {
        outgoing.push(&packet, to);
        if outgoing.bytes() >= FLUSH_BYTES {
            outgoing.flush(socket).await;
        }
    }
    outgoing.flush(socket).await;
    if listener.outbox.capacity() > KEEP_PACKETS {
        listener.outbox.shrink_to(KEEP_PACKETS);
    }
}

/// Hand every datagram waiting on `socket` to the listener, up to
/// [`RECV_TURN`] (the rest waits for the next turn, so timers and feeding
/// are not starved by a flood).
fn receive_waiting(socket: &UdpSocket, incoming: &mut udp::Incoming, listener: &mut Listener) {
    let mut taken = 0;
    while taken < RECV_TURN {
        let now = Instant::now();
        match incoming.recv(socket, |data, from| {
            listener.handle_datagram(now, data, from)
        }) {
            Ok(0) => return,
            Ok(n) => taken += n,
            // ICMP port unreachable and the like surface here; the
            // connection's own timers deal with a dead peer.
            Err(e) => {
                debug!(error = %e, "srt socket receive error");
                taken += 1;
            }
        }
    }
}

/// The next settings sent on `reloads`; pending forever without a channel
/// or once its sender is gone.
async fn next_reload(
    reloads: &mut Option<tokio::sync::watch::Receiver<Arc<ListenerSettings>>>,
) -> Option<Arc<ListenerSettings>> {
    let changed = match reloads {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        *reloads = None;
        return std::future::pending().await;
    }
    reloads.as_mut().map(|rx| rx.borrow_and_update().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ClaimPolicy, RingConfig};

    fn caller() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn ctrl(ty: u16, add: u32, sockid: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((0x8000 | ty).to_be_bytes());
        v.extend(0u16.to_be_bytes());
        v.extend(add.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend(sockid.to_be_bytes());
        v.extend(body);
        v
    }

    fn hs(version: i32, flags: u16, shake: i32, sockid: u32, cookie: i32, sid: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(version.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        b.extend(flags.to_be_bytes());
        b.extend(12345u32.to_be_bytes());
        b.extend(1500u32.to_be_bytes());
        b.extend(8192u32.to_be_bytes());
        b.extend(shake.to_be_bytes());
        b.extend(sockid.to_be_bytes());
        b.extend(cookie.to_be_bytes());
        b.extend([1, 0, 0, 127]);
        b.extend([0u8; 12]);
        if version == 5 {
            b.extend([0, 1, 0, 3]);
            b.extend(0x0001_0501u32.to_be_bytes());
            b.extend(0xBFu32.to_be_bytes());
            b.extend([0, 30, 0x03, 0xE8]); // caller receives with 30 ms, asks 1000 for us
            let words: Vec<u8> = sid
                .as_bytes()
                .chunks(4)
                .flat_map(|c| {
                    let mut w = [0u8; 4];
                    w[..c.len()].copy_from_slice(c);
                    w.reverse();
                    w
                })
                .collect();
            b.extend(5u16.to_be_bytes());
            b.extend(((words.len() / 4) as u16).to_be_bytes());
            b.extend(words);
        }
        ctrl(0, 0, 0, &b)
    }

    fn listener() -> (Listener, Arc<Registry>) {
        let registry = Registry::new();
        let cfg = SrtConfig::default();
        (Listener::new(registry.clone(), &cfg).unwrap(), registry)
    }

    fn take(l: &mut Listener) -> Vec<(Packet, SocketAddr)> {
        let mut v = Vec::new();
        l.drain_outbox(&mut v);
        v
    }

    /// Induction then Conclusion with the cookie; returns the reply (data
    /// an accepted player was sent at once is checked and dropped).
    fn connect(l: &mut Listener, now: Instant, sid: &str) -> Packet {
        connect_and_data(l, now, sid).0
    }

    /// [`connect`], also returning the data packets sent right after the
    /// reply (an accepted player's first turn: its GOP cache).
    fn connect_and_data(
        l: &mut Listener,
        now: Instant,
        sid: &str,
    ) -> (Packet, Vec<srt_protocol::packet::DataPacket>) {
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), caller());
        let out = take(l);
        assert_eq!(out.len(), 1);
        let cookie = handshake_of(&out[0].0).unwrap().syn_cookie;
        assert_eq!(cookie, l.cookie(caller(), l.bucket(now)));
        l.handle_datagram(now, &hs(5, 5, -1, 77, cookie, sid), caller());
        let mut out = take(l).into_iter().map(|(p, _)| p);
        let reply = out.next().expect("a reply");
        assert!(handshake_of(&reply).is_some(), "{reply:?}");
        let data = out
            .map(|p| match p {
                Packet::Data(d) => d,
                other => panic!("after the reply: {other:?}"),
            })
            .collect();
        (reply, data)
    }

    #[test]
    fn induction_stores_nothing_and_a_guessed_cookie_gets_nothing() {
        let (mut l, _) = listener();
        let now = Instant::now();
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), caller());
        assert_eq!(take(&mut l).len(), 1);
        assert_eq!(l.players(), 0);
        l.handle_datagram(now, &hs(5, 5, -1, 77, 12345, "live/cam1"), caller());
        assert!(take(&mut l).is_empty());
        assert_eq!(l.players(), 0);
    }

    #[test]
    fn unknown_streams_are_rejected_with_1404() {
        let (mut l, _) = listener();
        let reply = connect(&mut l, Instant::now(), "live/cam1");
        let shake = handshake_of(&reply).unwrap().shake_type;
        assert_eq!(
            shake,
            ShakeType::Rejection(reject_code(code::NOT_FOUND)),
            "{reply:?}"
        );
        assert_eq!(i32::from(shake), 2404);
        assert_eq!(l.players(), 0);
    }

    /// A live stream at `path` (`APP/KEY`), with one keyframe chunk.
    fn live(registry: &Arc<Registry>, path: &str) -> crate::stream::PublishGuard {
        let (app, key) = path.split_once('/').unwrap();
        let policy = ClaimPolicy {
            takeover: false,
            stale_after: Duration::from_secs(3),
            ring: RingConfig::default(),
            renditions: Vec::new(),
        };
        let root = tokio_util::sync::CancellationToken::new();
        let guard = registry
            .claim(
                StreamPath::from_rtmp(app, key).unwrap(),
                key,
                "test",
                policy,
                &root,
            )
            .unwrap();
        guard
            .stream()
            .rendition("source")
            .unwrap()
            .ring
            .push(TsChunk {
                data: bytes::Bytes::from(vec![0x47; 1316]),
                keyframe: true,
                dts_90k: 0,
                origin: None,
            });
        guard
    }

    fn rules(toml: &str) -> ReadRules {
        let mut apps: Apps = crate::config::section_from_toml("apps", toml).unwrap();
        apps.resolve().unwrap();
        ReadRules::from_apps(&apps).unwrap()
    }

    fn shake(p: &Packet) -> ShakeType {
        handshake_of(p).unwrap().shake_type
    }

    #[test]
    fn unknown_applications_get_1404_and_the_default_section_rules_the_rest() {
        let (mut l, registry) = listener();
        let _other = live(&registry, "other/cam1");
        let _live = live(&registry, "live/cam1");
        let now = Instant::now();
        // Zero config: open.
        assert_eq!(
            shake(&connect(&mut l, now, "other/cam1")),
            ShakeType::Conclusion
        );
        l.remove(caller(), CloseReason::Shutdown);
        take(&mut l);
        // An application is configured: the others are unknown.
        l.set_read_auth(rules("[live]\n"));
        let reply = connect(&mut l, now, "#!::r=other/cam1,m=request");
        assert_eq!(
            shake(&reply),
            ShakeType::Rejection(reject_code(code::NOT_FOUND))
        );
        assert_eq!(l.players(), 0);
        assert_eq!(
            shake(&connect(&mut l, now, "live/cam1")),
            ShakeType::Conclusion
        );
        l.remove(caller(), CloseReason::Shutdown);
        take(&mut l);
        // "*" gives the others its tokens; the named one keeps its own.
        l.set_read_auth(rules(
            "[live]\n[\"*\".read_tokens]\nalice = \"alice-token-1\"\n",
        ));
        let unauthorized = ShakeType::Rejection(reject_code(code::UNAUTHORIZED));
        assert_eq!(shake(&connect(&mut l, now, "other/cam1")), unauthorized);
        let with_token = "#!::r=other/cam1,u=alice,s=alice-token-1";
        assert_eq!(
            shake(&connect(&mut l, now, with_token)),
            ShakeType::Conclusion
        );
        l.remove(caller(), CloseReason::Shutdown);
        take(&mut l);
        assert_eq!(
            shake(&connect(&mut l, now, "live/cam1")),
            ShakeType::Conclusion
        );
    }

    #[test]
    fn conclusions_are_rate_limited_per_ip_like_inductions() {
        let (mut l, _) = listener();
        let now = Instant::now();
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), caller());
        let cookie = handshake_of(&take(&mut l)[0].0).unwrap().syn_cookie;
        // Guessed cookies (a spoofed source, say) spend no budget.
        for id in 0..100 {
            l.handle_datagram(now, &hs(5, 5, -1, id, cookie ^ 1, "live/none"), caller());
        }
        assert!(take(&mut l).is_empty());
        // One cookie, many socket ids: only the per-second budget is answered.
        let limit = SrtConfig::default().max_handshakes_per_ip_per_second;
        for id in 0..limit * 5 {
            l.handle_datagram(now, &hs(5, 5, -1, 1000 + id, cookie, "live/none"), caller());
        }
        assert_eq!(take(&mut l).len(), limit as usize);
        // Another address has its own budget; the next second a new one.
        let other: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), other);
        assert_eq!(take(&mut l).len(), 1);
        let later = now + Duration::from_secs(1);
        l.handle_datagram(later, &hs(5, 5, -1, 5, cookie, "live/none"), caller());
        assert_eq!(take(&mut l).len(), 1);
    }

    fn v6(net: u16, host: u16) -> std::net::IpAddr {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, host).into()
    }

    fn from_v6(net: u16, host: u16) -> SocketAddr {
        SocketAddr::new(v6(net, host), 40000)
    }

    #[test]
    fn one_ipv6_64_gets_one_handshake_budget_whatever_its_addresses() {
        let (mut l, _) = listener();
        let now = Instant::now();
        let limit = SrtConfig::default().max_handshakes_per_ip_per_second;
        // Inductions from as many addresses of one /64.
        for host in 1..=(3 * limit) as u16 {
            l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), from_v6(0, host));
        }
        assert_eq!(take(&mut l).len(), limit as usize);
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), from_v6(1, 1));
        assert_eq!(take(&mut l).len(), 1, "another /64 has its own budget");
        // Cookies gathered over three seconds, spent in one: Conclusions
        // share the /64's budget too.
        let mut cookies = Vec::new();
        for s in 1..=3u64 {
            let t = now + Duration::from_secs(s);
            for i in 0..limit as u16 {
                let from = from_v6(0, 0x100 * s as u16 + i);
                l.handle_datagram(t, &hs(4, 2, 1, 77, 0, ""), from);
                let out = take(&mut l);
                assert_eq!(out.len(), 1);
                cookies.push((from, handshake_of(&out[0].0).unwrap().syn_cookie));
            }
        }
        let t = now + Duration::from_secs(4);
        for (from, cookie) in &cookies {
            l.handle_datagram(t, &hs(5, 5, -1, 77, *cookie, "live/none"), *from);
        }
        assert_eq!(take(&mut l).len(), limit as usize);
    }

    /// A webhook on loopback allowing only `club/public`, which it answers
    /// once `release` is notified; every other path is refused at once.
    async fn public_only_webhook(release: Arc<tokio::sync::Notify>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/read", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let release = release.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 4096];
                    while !String::from_utf8_lossy(&req).contains('}') {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let ok = String::from_utf8_lossy(&req).contains("\"path\":\"club/public\"");
                    let status = if ok {
                        release.notified().await;
                        "204 No Content"
                    } else {
                        "403 Forbidden"
                    };
                    let _ = s
                        .write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        url
    }

    /// Waits for webhook answers and replays them as at `at` until the
    /// listener sends something; returns the shake type of what it sent.
    async fn next_answer(l: &mut Listener, at: Instant) -> ShakeType {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let answers = l.answers_rx.as_mut().unwrap();
            let woken = tokio::time::timeout_at(deadline, answers.recv()).await;
            assert!(woken.is_ok(), "no webhook answer in 5 s");
            l.webhook_answered(at);
            if let Some((p, to)) = take(l).into_iter().next() {
                assert_eq!(to, caller());
                return shake(&p);
            }
        }
    }

    #[tokio::test]
    async fn a_socket_id_reused_for_another_stream_gets_its_own_webhook_answer() {
        let (mut l, registry) = listener();
        let _public = live(&registry, "club/public");
        let _secret = live(&registry, "club/secret");
        let release = Arc::new(tokio::sync::Notify::new());
        let url = public_only_webhook(release.clone()).await;
        l.set_read_auth(rules(&format!("[club]\nread_webhook = \"{url}\"\n")));
        let now = Instant::now();
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), caller());
        let cookie = handshake_of(&take(&mut l)[0].0).unwrap().syn_cookie;
        // Socket id 77 asks for club/public, then for club/secret while the
        // webhook still considers club/public. Each Conclusion is sent once:
        // the listener answers as soon as the webhook has.
        l.handle_datagram(now, &hs(5, 5, -1, 77, cookie, "club/public"), caller());
        l.handle_datagram(now, &hs(5, 5, -1, 77, cookie, "club/secret"), caller());
        assert!(take(&mut l).is_empty(), "answered before the webhook");
        // club/secret gets the webhook's own answer to club/secret...
        let refused = next_answer(&mut l, now).await;
        assert_eq!(refused, ShakeType::Rejection(reject_code(code::FORBIDDEN)));
        assert_eq!(l.players(), 0);
        // ...and club/public's, once given, opens club/public only.
        release.notify_one();
        assert_eq!(next_answer(&mut l, now).await, ShakeType::Conclusion);
        assert_eq!(l.players[&caller()].stream, "club/public");
        l.handle_datagram(
            Instant::now(),
            &hs(5, 5, -1, 77, cookie, "club/secret"),
            caller(),
        );
        assert_eq!(l.players[&caller()].stream, "club/public");
        l.pending_reads().check_invariants();
    }

    /// A listener whose `club` asks [`public_only_webhook`] (answering
    /// club/public when `release` is notified) and whose `live` is open,
    /// with club/public and live/cam1 live; and the cookie of [`caller`].
    async fn club_listener(
        now: Instant,
    ) -> (
        Listener,
        Arc<tokio::sync::Notify>,
        [crate::stream::PublishGuard; 2],
        i32,
    ) {
        let (mut l, registry) = listener();
        let guards = [live(&registry, "club/public"), live(&registry, "live/cam1")];
        let release = Arc::new(tokio::sync::Notify::new());
        let url = public_only_webhook(release.clone()).await;
        l.set_read_auth(rules(&format!(
            "[live]\n[club]\nread_webhook = \"{url}\"\n"
        )));
        l.handle_datagram(now, &hs(4, 2, 1, 77, 0, ""), caller());
        let cookie = handshake_of(&take(&mut l)[0].0).unwrap().syn_cookie;
        (l, release, guards, cookie)
    }

    /// Waits (5 s at most) until a read webhook has answered, then lets the
    /// listener act on it as at `at`.
    async fn answered_at(l: &mut Listener, at: Instant) {
        let answers = l.answers_rx.as_mut().unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), answers.recv()).await;
        assert!(woken.is_ok(), "no webhook answer in 5 s");
        l.webhook_answered(at);
    }

    #[tokio::test]
    async fn a_late_webhook_answer_never_replaces_the_next_caller_from_its_address() {
        let now = Instant::now();
        let (mut l, release, _guards, cookie) = club_listener(now).await;
        // Socket id 1 waits for the webhook, gives up, and reconnects from
        // the same address and port (NAT, a fixed local port) as socket
        // id 2, to a stream without a webhook.
        l.handle_datagram(now, &hs(5, 5, -1, 1, cookie, "club/public"), caller());
        assert!(take(&mut l).is_empty());
        l.handle_datagram(now, &hs(5, 5, -1, 2, cookie, "live/cam1"), caller());
        assert_eq!(shake(&take(&mut l)[0].0), ShakeType::Conclusion);
        // Socket id 1's answer comes while 2 plays: 2 is left alone...
        release.notify_one();
        answered_at(&mut l, now).await;
        let sent = take(&mut l);
        assert!(
            sent.iter().all(|(p, _)| matches!(p, Packet::Data(_))),
            "{sent:?}"
        );
        let p = &l.players[&caller()];
        assert_eq!(
            (p.remote_sockid, p.stream.as_str()),
            (SocketId(2), "live/cam1")
        );
        // ...and the answer is forgotten: it holds no place.
        assert_eq!(l.pending_reads().len(), 0);
        l.pending_reads().check_invariants();
    }

    #[tokio::test]
    async fn an_answer_after_the_caller_stopped_retransmitting_starts_no_player() {
        let now = Instant::now();
        let (mut l, release, _guards, cookie) = club_listener(now).await;
        let conclusion = hs(5, 5, -1, 1, cookie, "club/public");
        l.handle_datagram(now, &conclusion, caller());
        release.notify_one();
        // Answered 2 s after the caller's last Conclusion (libsrt resends
        // every 250 ms to 1 s, and gives up after 3 s): no player sending
        // to a port nobody reads.
        let later = now + Duration::from_secs(2);
        answered_at(&mut l, later).await;
        assert!(take(&mut l).is_empty());
        assert_eq!(l.players(), 0);
        // Should the caller still be there, its next Conclusion gets it.
        assert_eq!(l.pending_reads().len(), 1);
        l.handle_datagram(later, &conclusion, caller());
        assert_eq!(shake(&take(&mut l)[0].0), ShakeType::Conclusion);
        assert_eq!(l.players(), 1);
        assert_eq!(l.pending_reads().len(), 0);
    }

    #[tokio::test]
    async fn each_retransmission_keeps_a_held_conclusion_fresh() {
        let now = Instant::now();
        let (mut l, release, _guards, cookie) = club_listener(now).await;
        let conclusion = hs(5, 5, -1, 1, cookie, "club/public");
        let resent = now + Duration::from_secs(1);
        l.handle_datagram(now, &conclusion, caller());
        l.handle_datagram(resent, &conclusion, caller());
        assert!(take(&mut l).is_empty());
        release.notify_one();
        answered_at(&mut l, resent + Duration::from_secs(1)).await;
        assert_eq!(shake(&take(&mut l)[0].0), ShakeType::Conclusion);
        assert_eq!(l.players[&caller()].stream, "club/public");
        assert_eq!(l.pending_reads().len(), 0);
    }

    #[tokio::test]
    async fn a_replay_refused_before_the_webhook_question_frees_its_place() {
        let now = Instant::now();
        let (mut l, release, [public, _cam], cookie) = club_listener(now).await;
        l.handle_datagram(now, &hs(5, 5, -1, 1, cookie, "club/public"), caller());
        // The stream ends while the webhook decides: the replay is refused
        // (1404) before the webhook's answer is looked at.
        drop(public);
        release.notify_one();
        answered_at(&mut l, now).await;
        let sent = take(&mut l);
        assert_eq!(
            shake(&sent[0].0),
            ShakeType::Rejection(reject_code(code::NOT_FOUND))
        );
        assert_eq!(l.pending_reads().len(), 0);
        l.pending_reads().check_invariants();
    }

    /// Streams whose groups start no legs (no application configures any).
    fn streams(registry: &Arc<Registry>) -> Arc<Streams> {
        struct NoLegs;
        impl crate::stream::leg::LegStarter for NoLegs {
            fn start(
                &self,
                _: &crate::stream::leg::LegSpec,
                _: crate::stream::leg::LegContext,
            ) -> crate::stream::leg::LegFuture {
                Box::pin(async { Ok(()) })
            }
        }
        Arc::new(Streams::new(
            registry.clone(),
            Arc::new(NoLegs),
            tokio_util::sync::CancellationToken::new(),
            crate::stream::driver::StreamSettings {
                setup_timeout: Duration::from_secs(8),
                max_ingest_kbps: 100_000,
                stale_after: Duration::from_secs(3),
                ring: RingConfig::default(),
                cluster: false,
            },
        ))
    }

    #[tokio::test]
    async fn a_publisher_claims_its_path_a_second_gets_1409_and_its_media_is_routed_by_socket_id() {
        let (mut l, registry) = listener();
        l.enable_publish(streams(&registry), Duration::from_secs(10), 100_000);
        let now = Instant::now();
        let reply = connect(&mut l, now, "#!::r=live/cam1,m=publish");
        assert_eq!(shake(&reply), ShakeType::Conclusion, "{reply:?}");
        assert_eq!((l.publishers(), l.players()), (1, 0));
        let path = StreamPath::from_rtmp("live", "cam1").unwrap();
        assert!(registry.get(&path).is_some(), "the path is claimed");
        // Its retransmitted Conclusion gets the same reply, nothing new.
        let cookie = l.cookie(caller(), l.bucket(now));
        l.handle_datagram(
            now,
            &hs(5, 5, -1, 77, cookie, "#!::r=live/cam1,m=publish"),
            caller(),
        );
        assert_eq!(shake(&take(&mut l)[0].0), ShakeType::Conclusion);
        assert_eq!(l.publishers(), 1);
        // A second publisher (another socket of the same address) is refused.
        l.handle_datagram(
            now,
            &hs(5, 5, -1, 78, cookie, "publish:live/cam1"),
            caller(),
        );
        let out = take(&mut l);
        assert_eq!(
            shake(&out[0].0),
            ShakeType::Rejection(reject_code(code::CONFLICT)),
            "{out:?}"
        );
        assert_eq!(l.publishers(), 1);
        // A data packet addressed to the publisher's socket id reaches its
        // receiver; the same packet to another id is a player's (dropped).
        let local = *l.publishers.keys().next().unwrap();
        let data = |sockid: u32| {
            let mut d = vec![0u8; 16];
            d[0..4].copy_from_slice(&12345u32.to_be_bytes()); // the caller's ISN
            d[4..8].copy_from_slice(&0xC000_0001u32.to_be_bytes()); // solo message 1
            d[12..16].copy_from_slice(&sockid.to_be_bytes());
            d.extend([0x47; 1316]);
            d
        };
        l.handle_datagram(now, &data(local.0 ^ 1), caller());
        let p = &l.publishers[&local];
        assert_eq!(p.receiver.statistics().rx_data, 0);
        l.handle_datagram(now, &data(local.0), caller());
        assert_eq!(l.publishers[&local].receiver.statistics().rx_data, 1);
        // The stream's group ends (shutdown): the listener closes the
        // connection and forgets it.
        l.close_all(now);
        assert_eq!(l.publishers(), 0);
        let out = take(&mut l);
        assert!(out.iter().any(|(p, _)| matches!(
            p,
            Packet::Control(ControlPacket {
                control_type: ControlTypes::Shutdown,
                ..
            })
        )));
    }

    #[test]
    fn without_publishing_enabled_a_publish_gets_1405() {
        let (mut l, _) = listener();
        let reply = connect(&mut l, Instant::now(), "publish:live/cam1");
        assert_eq!(
            shake(&reply),
            ShakeType::Rejection(reject_code(code::BAD_MODE))
        );
    }

    #[test]
    fn a_caller_is_accepted_fed_from_the_gop_cache_and_closed_when_the_stream_ends() {
        let (mut l, registry) = listener();
        let root = tokio_util::sync::CancellationToken::new();
        let policy = ClaimPolicy {
            takeover: false,
            stale_after: Duration::from_secs(3),
            ring: RingConfig::default(),
            renditions: Vec::new(),
        };
        let guard = registry
            .claim(
                StreamPath::from_rtmp("live", "cam1").unwrap(),
                "cam1",
                "test",
                policy,
                &root,
            )
            .unwrap();
        let ring = guard.stream().rendition("source").unwrap().ring.clone();
        for i in 0..10u8 {
            ring.push(TsChunk {
                data: bytes::Bytes::from(vec![0x47; 1316]),
                keyframe: i == 0,
                dts_90k: u64::from(i),
                origin: None,
            });
        }
        let now = Instant::now();
        let (reply, first) = connect_and_data(&mut l, now, "#!::r=live/cam1,m=request");
        let h = handshake_of(&reply).unwrap();
        assert_eq!(h.shake_type, ShakeType::Conclusion);
        // Latency: ours (120 ms) vs the caller's 30 ms receive / 1000 ms ask.
        let HandshakeVsInfo::V5(info) = &h.info else {
            panic!("not v5")
        };
        let Some(SrtControlPacket::HandshakeResponse(r)) = &info.ext_hs else {
            panic!("no HSRSP")
        };
        assert_eq!(r.recv_latency, Duration::from_millis(120));
        assert_eq!(r.send_latency, Duration::from_millis(1000));
        assert_eq!(l.players(), 1);
        // The cached GOP goes out as 10 data packets (no ACKs come back
        // here, so count each sequence number once).
        let mut seqs: std::collections::HashSet<_> = first.iter().map(|d| d.seq_number).collect();
        let mut t = now;
        for _ in 0..50 {
            t += Duration::from_millis(1);
            l.pump_all(t, true);
            for (p, _) in take(&mut l) {
                if let Packet::Data(d) = p {
                    seqs.insert(d.seq_number);
                }
            }
        }
        assert_eq!(seqs.len(), 10);
        // Hostile control packets addressed to the player change nothing.
        let sockid = l.players[&caller()].local_sockid.0;
        for d in [
            ctrl(4, 0, sockid, &[0; 4]),
            ctrl(8, 0, sockid, &[0; 4]),
            ctrl(3, 0, sockid, &(0x8000_0000u32 | 5).to_be_bytes()),
        ] {
            l.handle_datagram(t, &d, caller());
        }
        assert_eq!(l.players(), 1);
        // Publisher gone: graceful close, then the player is forgotten.
        drop(guard);
        let mut shutdown = false;
        for _ in 0..200 {
            t += Duration::from_millis(10);
            l.pump_all(t, true);
            shutdown |= take(&mut l).iter().any(|(p, _)| {
                matches!(
                    p,
                    Packet::Control(ControlPacket {
                        control_type: ControlTypes::Shutdown,
                        ..
                    })
                )
            });
            if l.players() == 0 {
                break;
            }
        }
        assert!(shutdown);
        assert_eq!(l.players(), 0);
    }

    #[test]
    fn a_publishers_datagrams_are_budgeted_from_the_ingest_cap() {
        let t0 = Instant::now();
        // 8 Mbit/s: 5319 single-TS-packet payloads a second, twice that
        // plus 500.
        let mut b = DatagramBudget::new(8_000, t0);
        let per_second = (2.0 * 8_000.0 * 125.0 / 188.0 + 500.0) as usize;
        let allowed = (0..20_000).filter(|_| b.take(t0)).count();
        assert_eq!(allowed, per_second);
        assert!(!b.take(t0), "a flood past the allowance is dropped");
        // Refilled with time, never past a second's worth.
        assert!(b.take(t0 + Duration::from_millis(10)));
        let later = t0 + Duration::from_secs(60);
        let allowed = (0..20_000).filter(|_| b.take(later)).count();
        assert_eq!(allowed, per_second);
    }

    #[tokio::test]
    async fn a_reload_gives_later_publishers_the_new_ingest_policy() {
        let (mut l, registry) = listener();
        l.enable_publish(streams(&registry), Duration::from_secs(10), 100_000);
        l.reload(&ListenerSettings {
            srt: SrtConfig::default(),
            apps: Arc::new(Apps::default()),
            max_timestamp_jump: Duration::from_secs(3),
            max_ingest_kbps: 8_000,
        })
        .unwrap();
        let p = l.publish.as_ref().unwrap();
        assert_eq!(
            (p.max_jump, p.max_ingest_kbps),
            (Duration::from_secs(3), 8_000)
        );
    }
}
