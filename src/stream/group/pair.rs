//! The stream lifecycle end to end on virtual time, quinn-style: RTMP
//! publishers (a scripted client's bytes into real `rtmp::proto::Session`s,
//! mapped by `rtmp::ingest`), their [`Group`]s, the source ring, SRT players
//! (srt-protocol callers) against the real SRT `Listener`, and push legs on
//! the real `srt::sender` core against srt-protocol listeners standing in
//! for destinations. Datagrams travel in memory; the harness plays every
//! driver and steps one fake clock. No sockets, no sleeps.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use srt_protocol::connection::DuplexConnection;
use srt_protocol::packet::{Packet, SeqNumber, SocketId};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::listen::Listen;
use srt_protocol::protocol::pending_connection::{AccessControlResponse, ConnectionResult};
use srt_protocol::settings::ConnInitSettings;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::rtmp::amf0::{self, Amf0Value};
use crate::rtmp::ingest::FlvIngest;
use crate::rtmp::proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
use crate::rtmp::proto::handshake::PACKET_SIZE;
use crate::rtmp::proto::{Event, Limits, Session};
use crate::srt::config::SrtConfig;
use crate::srt::listener::Listener;
use crate::srt::sender::{End, Sender, SenderMetrics};
use crate::stream::{ClaimPolicy, PublishGuard, Registry, RingConfig, StreamPath};

const COMMAND_AMF0: u8 = 20;
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
/// SRT latency of players and push legs.
const LATENCY: Duration = Duration::from_millis(20);
/// Longest the clock jumps in one step.
const MAX_STEP: Duration = Duration::from_millis(10);
/// Datagram exchanges at one instant before the harness calls it a livelock.
const MAX_EXCHANGES: usize = 10_000;

// ---------------------------------------------------------------------------
// RTMP: the publisher's client and the server session it talks to
// ---------------------------------------------------------------------------

/// One RTMP connection: our client's bytes into a real server `Session`.
struct Rtmp {
    session: Session,
    enc: ChunkEncoder,
    dec: ChunkDecoder,
    inbox: BytesMut,
    /// `onStatus` (code, description) the publisher received, in order.
    statuses: Vec<(String, String)>,
    app: String,
}

impl Rtmp {
    fn new(now: Instant) -> Rtmp {
        let mut session = Session::new(Limits::default(), now, 7);
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0u8; PACKET_SIZE]);
        session.handle_input(now, &c0c1).expect("C0C1");
        session.handle_input(now, &[0u8; PACKET_SIZE]).expect("C2");
        // S0 S1 S2: the client has no use for them.
        let s0s1s2 = session.take_transmit().map_or(0, |b| b.len());
        assert_eq!(s0s1s2, 1 + 2 * PACKET_SIZE);
        Rtmp {
            session,
            enc: ChunkEncoder::new(),
            dec: ChunkDecoder::new(ChunkLimits {
                max_message_size: 1 << 20,
                max_chunk_streams: 64,
            }),
            inbox: BytesMut::new(),
            statuses: Vec::new(),
            app: String::new(),
        }
    }

    fn command(&mut self, now: Instant, stream_id: u32, values: &[Amf0Value]) {
        let mut body = BytesMut::new();
        amf0::encode_all(values, &mut body);
        self.message(now, 3, 0, COMMAND_AMF0, stream_id, &body);
    }

    fn message(&mut self, now: Instant, csid: u32, ts: u32, ty: u8, sid: u32, body: &[u8]) {
        let mut out = BytesMut::new();
        self.enc.write(&mut out, csid, ts, ty, sid, body);
        self.session.handle_input(now, &out).expect("valid RTMP");
    }

    /// Decode what the server sent; keep the status codes.
    fn read(&mut self) {
        if let Some(b) = self.session.take_transmit() {
            self.inbox.extend_from_slice(&b);
        }
        while let Some(m) = self.dec.decode(&mut self.inbox).expect("server chunks") {
            if m.type_id != COMMAND_AMF0 {
                continue;
            }
            let vals = amf0::decode_all(&m.payload, 32).expect("server AMF");
            if vals.first().and_then(Amf0Value::as_str) == Some("onStatus") {
                let info = vals.get(3);
                let field = |k: &str| {
                    info.and_then(|i| i.get(k))
                        .and_then(Amf0Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                self.statuses.push((field("code"), field("description")));
            }
        }
    }

    fn last_status(&self) -> Option<&(String, String)> {
        self.statuses.last()
    }
}

/// FLV tag bodies of a 30 fps H.264 + AAC publish.
mod flv_body {
    /// The AVC sequence header: keyframe, AVC, packet type 0, cts 0.
    pub fn avc_config() -> Vec<u8> {
        let mut b = vec![0x17, 0, 0, 0, 0];
        b.extend_from_slice(&crate::media::fixtures::avcc_record());
        b
    }

    pub fn avc_frame(keyframe: bool, n: u32) -> Vec<u8> {
        let mut b = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        let nal_len = 800u32;
        b.extend_from_slice(&nal_len.to_be_bytes());
        b.push(if keyframe { 0x65 } else { 0x41 });
        b.extend((1..nal_len).map(|i| (i as u8 ^ n as u8) | 1));
        b
    }

    pub fn aac_config() -> Vec<u8> {
        vec![0xAF, 0, 0x11, 0x90]
    }

    pub fn aac_frame() -> Vec<u8> {
        let mut b = vec![0xAF, 1];
        b.extend((0..200).map(|i| i as u8 | 1));
        b
    }
}

/// A simulated transcode: the harness records what the group gave it and
/// reports a first IDR per rendition only when the test says so.
#[derive(Default)]
struct Transcode {
    started: bool,
    fed: usize,
}

/// A push leg: srt-protocol's caller while connecting, then the sender core.
struct PushLeg {
    addr: SocketAddr,
    dest: usize,
    connect: Option<Connect>,
    sender: Option<Sender>,
    ended: Option<End>,
}

enum Leg {
    Push(Box<PushLeg>),
    Transcode(Transcode),
}

/// A publisher, the server side of its connection and its stream group.
struct Pub {
    rtmp: Rtmp,
    ingest: FlvIngest,
    path: StreamPath,
    guard: Option<PublishGuard>,
    group: Option<Group>,
    /// A group timer, as the driver would sleep until it.
    wake: Option<Instant>,
    legs: Vec<Leg>,
    specs: Vec<LegInfo>,
    /// Push destinations, by index into `Pair::dests`, for its push legs.
    push_to: Vec<usize>,
    /// Media generator: next frame time, frame counter, keyframes on.
    next_frame: Option<Instant>,
    frame: u32,
    keyframes: bool,
    ready: bool,
    teardown: Option<Cause>,
}

// ---------------------------------------------------------------------------
// SRT: players against the listener, destinations for push legs
// ---------------------------------------------------------------------------

enum PlayerState {
    Connecting(Box<Connect>),
    Playing(Box<DuplexConnection>),
    /// The reject code the caller got.
    #[allow(dead_code)]
    Rejected(i32),
    Closed,
}

struct Player {
    addr: SocketAddr,
    state: PlayerState,
    /// Messages (TS chunks) delivered by TSBPD.
    received: Vec<Bytes>,
}

/// A push destination: drops everything while down.
struct Dest {
    addr: SocketAddr,
    up_from: Instant,
    down_from: Option<Instant>,
    listen: Listen,
    conn: Option<DuplexConnection>,
    received: usize,
}

impl Dest {
    fn is_up(&self, now: Instant) -> bool {
        now >= self.up_from && self.down_from.is_none_or(|d| now < d)
    }
}

fn caller_settings(latency: Duration) -> ConnInitSettings {
    ConnInitSettings {
        local_sockid: SocketId(rand::random::<u32>() & 0x7FFF_FFFF | 1),
        send_latency: latency,
        recv_latency: latency,
        peer_idle_timeout: Duration::from_secs(5),
        ..ConnInitSettings::default()
    }
}

fn wire(p: &Packet) -> Bytes {
    let mut b = BytesMut::new();
    p.serialize(&mut b);
    b.freeze()
}

fn parse(b: &[u8], from: SocketAddr) -> Packet {
    Packet::parse(&mut std::io::Cursor::new(b), from.is_ipv6()).expect("packet we serialized")
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Listener,
    Player(usize),
    Dest(usize),
    /// Publisher `p`'s leg `l`.
    Leg(usize, usize),
}

/// Everything, on one clock.
struct Pair {
    t0: Instant,
    now: Instant,
    root: CancellationToken,
    registry: Arc<Registry>,
    listener: Listener,
    listener_addr: SocketAddr,
    pubs: Vec<Pub>,
    players: Vec<Player>,
    dests: Vec<Dest>,
    net: VecDeque<(Node, SocketAddr, Bytes)>,
    setup_timeout: Duration,
    next_port: u16,
}

impl Pair {
    fn new() -> Pair {
        let t0 = Instant::now();
        let registry = Registry::new();
        let cfg = SrtConfig {
            latency: LATENCY,
            ..SrtConfig::default()
        };
        Pair {
            t0,
            now: t0,
            root: CancellationToken::new(),
            listener: Listener::new(registry.clone(), &cfg).expect("SRT settings"),
            listener_addr: "127.0.0.1:9000".parse().expect("address"),
            registry,
            pubs: Vec::new(),
            players: Vec::new(),
            dests: Vec::new(),
            net: VecDeque::new(),
            setup_timeout: Duration::from_secs(8),
            next_port: 40_000,
        }
    }

    fn ms(&self) -> u64 {
        self.now.saturating_duration_since(self.t0).as_millis() as u64
    }

    fn addr(&mut self) -> SocketAddr {
        self.next_port += 1;
        SocketAddr::from(([127, 0, 0, 1], self.next_port))
    }

    // -- publishing ---------------------------------------------------------

    /// Connect and publish `app/key` with these legs; the group starts on
    /// acceptance. Returns the publisher's index.
    fn publish(&mut self, app: &str, key: &str, takeover: bool, legs: Vec<LegInfo>) -> usize {
        let now = self.now;
        let mut rtmp = Rtmp::new(now);
        rtmp.command(
            now,
            0,
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([("app", Amf0Value::string(app))]),
            ],
        );
        rtmp.command(
            now,
            0,
            &[
                Amf0Value::string("createStream"),
                Amf0Value::Number(2.0),
                Amf0Value::Null,
            ],
        );
        rtmp.command(
            now,
            1,
            &[
                Amf0Value::string("publish"),
                Amf0Value::Number(3.0),
                Amf0Value::Null,
                Amf0Value::string(key),
            ],
        );
        let push_to = legs
            .iter()
            .filter(|l| l.kind == LegKind::SrtPush)
            .map(|_| self.dests.len().saturating_sub(1))
            .collect();
        let i = self.pubs.len();
        self.pubs.push(Pub {
            rtmp,
            ingest: FlvIngest::new(Duration::from_secs(10)),
            path: StreamPath::from_rtmp(app, key).expect("path"),
            guard: None,
            group: None,
            wake: None,
            legs: Vec::new(),
            specs: legs,
            push_to,
            next_frame: None,
            frame: 0,
            keyframes: true,
            ready: false,
            teardown: None,
        });
        self.rtmp_events(i, takeover);
        i
    }

    /// What the RTMP driver does with the session's events.
    fn rtmp_events(&mut self, i: usize, takeover: bool) {
        let now = self.now;
        while let Some(ev) = self.pubs[i].rtmp.session.poll_event() {
            match ev {
                Event::Connect { app, .. } => {
                    self.pubs[i].rtmp.app = app;
                    self.pubs[i].rtmp.session.accept_connect().expect("connect");
                }
                Event::Publish { name, .. } => self.start_group(i, &name, takeover),
                Event::Media {
                    video,
                    timestamp,
                    payload,
                } => {
                    let p = &mut self.pubs[i];
                    let bytes = payload.len() as u64;
                    let (event, jump) =
                        p.ingest.push(video, timestamp, payload).unwrap_or_default();
                    let input = Input::Media {
                        at: now,
                        bytes,
                        event,
                        timestamp_jump: jump.is_some(),
                    };
                    self.group_input(i, input);
                }
                Event::Unpublish { .. } => self.group_input(
                    i,
                    Input::PublisherGone {
                        reason: "unpublished",
                    },
                ),
                Event::HandshakeDone { .. } | Event::Metadata(_) => {}
            }
        }
        self.pubs[i].rtmp.read();
    }

    /// `stream::Streams::start`: claim the path, make the group.
    fn start_group(&mut self, i: usize, name: &str, takeover: bool) {
        let now = self.now;
        let p = &mut self.pubs[i];
        let renditions: usize = p.specs.iter().map(|l| l.kind.renditions()).sum();
        let claim = self.registry.claim(
            p.path.clone(),
            name,
            &format!("10.0.0.{}:5000", i + 1),
            ClaimPolicy {
                takeover,
                stale_after: Duration::from_secs(3),
                ring: RingConfig::default(),
                renditions: (0..renditions).map(|r| format!("r{r}")).collect(),
            },
            &self.root,
        );
        match claim {
            Ok(guard) => {
                p.guard = Some(guard);
                p.group = Some(Group::new(
                    GroupParams {
                        published: now,
                        setup_start: now,
                        setup_timeout: self.setup_timeout,
                        max_ingest_kbps: 100_000,
                        legs: p.specs.clone(),
                    },
                    GroupMetrics::noop(),
                ));
                p.rtmp.session.accept_publish().expect("publish");
                p.next_frame = Some(now);
                self.group_outputs(i);
            }
            Err(e) => p
                .rtmp
                .session
                .reject_publish("NetStream.Publish.BadName", &e.to_string()),
        }
    }

    fn group_input(&mut self, i: usize, input: Input) {
        let now = self.now;
        if let Some(g) = &mut self.pubs[i].group {
            g.handle_input(now, input);
            self.group_outputs(i);
        }
    }

    /// What `stream::driver` does with the core's outputs.
    fn group_outputs(&mut self, i: usize) {
        let now = self.now;
        loop {
            let Some(g) = &mut self.pubs[i].group else {
                return;
            };
            match g.poll_output() {
                Output::StartLeg { leg, source } => self.start_leg(i, leg, source.is_some()),
                Output::Source(chunk) => {
                    if let Some(guard) = &self.pubs[i].guard {
                        guard.stream().renditions[0].ring.push(chunk);
                    }
                }
                Output::Feed { leg, .. } => {
                    if let Some(Leg::Transcode(t)) = self.pubs[i].legs.get_mut(leg.0) {
                        t.fed += 1;
                    }
                }
                Output::Ready { .. } => self.pubs[i].ready = true,
                Output::Status { kind, description } => {
                    let p = &mut self.pubs[i];
                    p.rtmp
                        .session
                        .stop_publish(crate::rtmp::publish::status_code(kind), &description);
                    p.rtmp.read();
                }
                Output::Teardown { cause, .. } => {
                    let p = &mut self.pubs[i];
                    p.teardown = Some(cause);
                    p.next_frame = None;
                    if let Some(guard) = p.guard.take() {
                        guard.stream().cancel.cancel();
                    }
                    // The group's token is cancelled: a connecting leg gives
                    // up, a connected one flushes and closes.
                    for leg in &mut p.legs {
                        if let Leg::Push(l) = leg {
                            match &mut l.sender {
                                Some(s) => s.close(now),
                                None => {
                                    l.connect = None;
                                    l.ended = Some(End::Closed { confirmed: false });
                                }
                            }
                        }
                    }
                }
                Output::Timeout(t) => {
                    self.pubs[i].wake = t;
                    return;
                }
            }
        }
    }

    fn start_leg(&mut self, i: usize, leg: LegId, media: bool) {
        let addr = self.addr();
        let p = &mut self.pubs[i];
        while p.legs.len() <= leg.0 {
            p.legs.push(Leg::Transcode(Transcode::default()));
        }
        if media {
            p.legs[leg.0] = Leg::Transcode(Transcode {
                started: true,
                fed: 0,
            });
            return;
        }
        let dest = p.push_to[p.legs[..leg.0]
            .iter()
            .filter(|l| matches!(l, Leg::Push(_)))
            .count()];
        let remote = self.dests[dest].addr;
        p.legs[leg.0] = Leg::Push(Box::new(PushLeg {
            addr,
            dest,
            connect: Some(Connect::new(
                remote,
                addr.ip(),
                caller_settings(LATENCY),
                Some(format!("{}", p.path)),
                SeqNumber::new_truncate(7),
            )),
            sender: None,
            ended: None,
        }));
    }

    /// Send media up to now at 30 fps (video) and ~47 fps (audio), a
    /// keyframe every 30 frames while `keyframes`.
    fn produce(&mut self, i: usize) {
        let now = self.now;
        let frame_every = Duration::from_nanos(33_333_333);
        while let Some(at) = self.pubs[i].next_frame.filter(|at| *at <= now) {
            let p = &mut self.pubs[i];
            let n = p.frame;
            let ts = (at.saturating_duration_since(self.t0).as_millis()) as u32;
            if n == 0 {
                p.rtmp
                    .message(now, 6, ts, VIDEO, 1, &flv_body::avc_config());
                p.rtmp
                    .message(now, 4, ts, AUDIO, 1, &flv_body::aac_config());
            }
            let key = p.keyframes && n % 30 == 0;
            p.rtmp
                .message(now, 6, ts, VIDEO, 1, &flv_body::avc_frame(key, n));
            p.rtmp.message(now, 4, ts, AUDIO, 1, &flv_body::aac_frame());
            p.frame += 1;
            p.next_frame = Some(at + frame_every);
            self.rtmp_events(i, false);
        }
    }

    /// The publisher's connection ends (as `handle` does when it closes).
    fn publisher_leaves(&mut self, i: usize) {
        self.pubs[i].next_frame = None;
        self.group_input(
            i,
            Input::PublisherGone {
                reason: "peer_closed",
            },
        );
    }

    // -- SRT ----------------------------------------------------------------

    fn play(&mut self, streamid: &str) -> usize {
        let addr = self.addr();
        let connect = Connect::new(
            self.listener_addr,
            addr.ip(),
            caller_settings(LATENCY),
            Some(streamid.to_string()),
            SeqNumber::new_truncate(11),
        );
        self.players.push(Player {
            addr,
            state: PlayerState::Connecting(Box::new(connect)),
            received: Vec::new(),
        });
        self.players.len() - 1
    }

    /// A destination that answers from `up_ms` on. Push legs of the next
    /// publish go to the last destination added.
    fn destination(&mut self, up_ms: u64) -> usize {
        let addr = self.addr();
        let settings = ConnInitSettings {
            local_sockid: SocketId(rand::random::<u32>() & 0x7FFF_FFFF | 1),
            send_latency: LATENCY,
            recv_latency: LATENCY,
            ..ConnInitSettings::default()
        };
        self.dests.push(Dest {
            addr,
            up_from: self.t0 + Duration::from_millis(up_ms),
            down_from: None,
            listen: Listen::new(settings, true),
            conn: None,
            received: 0,
        });
        self.dests.len() - 1
    }

    fn send(&mut self, to: SocketAddr, from: SocketAddr, p: &Packet) {
        let node = if to == self.listener_addr {
            Some(Node::Listener)
        } else if let Some(d) = self.dests.iter().position(|d| d.addr == to) {
            Some(Node::Dest(d))
        } else if let Some(pl) = self.players.iter().position(|pl| pl.addr == to) {
            Some(Node::Player(pl))
        } else {
            self.pubs.iter().enumerate().find_map(|(i, p)| {
                p.legs
                    .iter()
                    .position(|l| matches!(l, Leg::Push(l) if l.addr == to))
                    .map(|l| Node::Leg(i, l))
            })
        };
        if let Some(n) = node {
            self.net.push_back((n, from, wire(p)));
        }
    }

    /// Deliver every datagram in flight (and what they cause) at `now`.
    fn deliver(&mut self) {
        let now = self.now;
        for _ in 0..MAX_EXCHANGES {
            let Some((node, from, bytes)) = self.net.pop_front() else {
                return;
            };
            match node {
                Node::Listener => {
                    self.listener.handle_datagram(now, &bytes, from);
                    self.listener_out();
                }
                Node::Player(i) => self.player_in(i, parse(&bytes, from), from),
                Node::Dest(d) => self.dest_in(d, parse(&bytes, from), from),
                Node::Leg(p, l) => self.leg_in(p, l, parse(&bytes, from), from),
            }
        }
        panic!("more than {MAX_EXCHANGES} datagrams at one instant: livelock");
    }

    fn listener_out(&mut self) {
        let mut out = Vec::new();
        self.listener.drain_outbox(&mut out);
        for (p, to) in out {
            let from = self.listener_addr;
            self.send(to, from, &p);
        }
    }

    fn player_in(&mut self, i: usize, p: Packet, from: SocketAddr) {
        let now = self.now;
        let me = self.players[i].addr;
        let mut replies = Vec::new();
        match &mut self.players[i].state {
            PlayerState::Connecting(c) => {
                match c.handle_packet(Ok((p, from)), now) {
                    ConnectionResult::SendPacket((r, to)) => replies.push((r, to)),
                    ConnectionResult::Connected(r, conn) => {
                        replies.extend(r);
                        self.players[i].state =
                            PlayerState::Playing(Box::new(DuplexConnection::new(conn)));
                    }
                    ConnectionResult::Reject(_, why) => {
                        let code = match why {
                        srt_protocol::protocol::pending_connection::ConnectionReject::Rejected(r)
                        | srt_protocol::protocol::pending_connection::ConnectionReject::Rejecting(r) => {
                            // The code as libsrt callers report it.
                            i32::from(r) - 1000
                        }
                    };
                        self.players[i].state = PlayerState::Rejected(code);
                    }
                    _ => {}
                }
            }
            PlayerState::Playing(conn) => conn.handle_packet_input(now, Ok((p, from))),
            PlayerState::Rejected(_) | PlayerState::Closed => {}
        }
        for (r, to) in replies {
            self.send(to, me, &r);
        }
        self.player_turn(i);
    }

    /// A player's timers, ACKs and deliveries.
    fn player_turn(&mut self, i: usize) {
        let now = self.now;
        let me = self.players[i].addr;
        let mut out = Vec::new();
        let pl = &mut self.players[i];
        match &mut pl.state {
            PlayerState::Connecting(c) => {
                if let ConnectionResult::SendPacket((r, to)) = c.handle_tick(now) {
                    out.push((r, to));
                }
            }
            PlayerState::Playing(conn) => {
                conn.check_timers(now);
                while let Some((_, data)) = conn.next_data(now) {
                    pl.received.push(data);
                }
                while let Some(p) = conn.next_packet(now) {
                    out.push(p);
                }
                if !conn.is_open() {
                    pl.state = PlayerState::Closed;
                }
            }
            _ => {}
        }
        for (r, to) in out {
            self.send(to, me, &r);
        }
    }

    fn dest_in(&mut self, d: usize, p: Packet, from: SocketAddr) {
        let now = self.now;
        if !self.dests[d].is_up(now) {
            return;
        }
        let me = self.dests[d].addr;
        let dest = &mut self.dests[d];
        let mut out = Vec::new();
        if let Some(conn) = &mut dest.conn {
            conn.handle_packet_input(now, Ok((p, from)));
        } else {
            match dest.listen.handle_packet(now, Ok((p, from))) {
                ConnectionResult::SendPacket(r) => out.push(r),
                ConnectionResult::RequestAccess(_) => {
                    match dest
                        .listen
                        .handle_access_control_response(now, AccessControlResponse::Accepted(None))
                    {
                        ConnectionResult::Connected(r, conn) => {
                            out.extend(r);
                            dest.conn = Some(DuplexConnection::new(conn));
                        }
                        ConnectionResult::SendPacket(r) => out.push(r),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        for (r, to) in out {
            self.send(to, me, &r);
        }
        self.dest_turn(d);
    }

    fn dest_turn(&mut self, d: usize) {
        let now = self.now;
        if !self.dests[d].is_up(now) {
            return;
        }
        let me = self.dests[d].addr;
        let mut out = Vec::new();
        let dest = &mut self.dests[d];
        if let Some(conn) = &mut dest.conn {
            conn.check_timers(now);
            while conn.next_data(now).is_some() {
                dest.received += 1;
            }
            while let Some(p) = conn.next_packet(now) {
                out.push(p);
            }
        }
        for (r, to) in out {
            self.send(to, me, &r);
        }
    }

    fn leg_in(&mut self, i: usize, l: usize, p: Packet, from: SocketAddr) {
        let now = self.now;
        let Some(Leg::Push(leg)) = self.pubs[i].legs.get_mut(l) else {
            return;
        };
        let mut connected = false;
        let mut out = Vec::new();
        if let Some(s) = &mut leg.sender {
            s.handle_packet(now, p, from);
        } else if let Some(c) = &mut leg.connect {
            match c.handle_packet(Ok((p, from)), now) {
                ConnectionResult::SendPacket(r) => out.push(r),
                ConnectionResult::Connected(r, conn) => {
                    out.extend(r);
                    let ring = match &self.pubs[i].guard {
                        Some(g) => g.stream().renditions[0].ring.clone(),
                        None => return,
                    };
                    let sender = Sender::new(
                        DuplexConnection::new(conn),
                        ring.subscribe(),
                        usize::MAX,
                        Duration::from_secs(2),
                        SenderMetrics::noop(),
                        "push".into(),
                        now,
                    );
                    let Some(Leg::Push(leg)) = self.pubs[i].legs.get_mut(l) else {
                        return;
                    };
                    leg.connect = None;
                    leg.sender = Some(sender);
                    connected = true;
                }
                _ => {}
            }
        }
        let me = match &self.pubs[i].legs[l] {
            Leg::Push(leg) => leg.addr,
            Leg::Transcode(_) => return,
        };
        for (r, to) in out {
            self.send(to, me, &r);
        }
        if connected {
            self.group_input(i, Input::LegConnected(LegId(l)));
        }
        self.leg_turn(i, l);
    }

    /// A push leg's turn: handshake ticks, or the sender core's pump.
    fn leg_turn(&mut self, i: usize, l: usize) {
        let now = self.now;
        let Some(Leg::Push(leg)) = self.pubs[i].legs.get_mut(l) else {
            return;
        };
        if leg.ended.is_some() {
            return;
        }
        let me = leg.addr;
        let mut out = Vec::new();
        let mut ended = None;
        if let Some(s) = &mut leg.sender {
            ended = s.pump(now, &mut out);
            leg.ended = ended;
        } else if let Some(c) = &mut leg.connect {
            if let ConnectionResult::SendPacket(r) = c.handle_tick(now) {
                out.push(r);
            }
        }
        let _ = leg.dest;
        for (r, to) in out {
            self.send(to, me, &r);
        }
        if let Some(end) = ended {
            let result = match end {
                End::StreamEnded { .. } | End::Closed { .. } => Ok(()),
                other => Err(LegFailure {
                    reason: "push_closed",
                    detail: format!("push destination: {other:?}"),
                }),
            };
            self.group_input(i, Input::LegEnded(LegId(l), result));
        }
    }

    // -- time ---------------------------------------------------------------

    /// One instant: every component gets its turn, then datagrams flow.
    fn turn(&mut self) {
        let now = self.now;
        for i in 0..self.pubs.len() {
            self.produce(i);
            // The driver's cancellation branch: takeover or shutdown.
            let cancelled = self.pubs[i].guard.as_ref().map(|g| {
                (
                    g.stream().cancel.is_cancelled(),
                    g.stream().was_taken_over(),
                )
            });
            match cancelled {
                Some((true, true)) => self.group_input(i, Input::TakenOver),
                Some((true, false)) => self.group_input(i, Input::Shutdown),
                _ => {}
            }
            if self.pubs[i].wake.is_some_and(|w| w <= now) {
                self.group_input(i, Input::Timeout);
            }
            for l in 0..self.pubs[i].legs.len() {
                self.leg_turn(i, l);
            }
        }
        self.listener.pump_all(now, true);
        self.listener_out();
        for i in 0..self.players.len() {
            self.player_turn(i);
        }
        for d in 0..self.dests.len() {
            self.dest_turn(d);
        }
        self.deliver();
    }

    /// Step the clock to `ms` after the start.
    fn run_to(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        while self.now < end {
            self.turn();
            self.now = (self.now + MAX_STEP).min(end);
        }
        self.turn();
    }

    fn player(&self, i: usize) -> &Player {
        &self.players[i]
    }

    fn is_playing(&self, i: usize) -> bool {
        matches!(self.players[i].state, PlayerState::Playing(_))
    }
}

/// TS packet PID of the first packet of a chunk.
fn first_pid(chunk: &[u8]) -> Option<u16> {
    if chunk.first() != Some(&0x47) {
        return None;
    }
    Some(u16::from_be_bytes([chunk.get(1)? & 0x1F, *chunk.get(2)?]))
}

fn push() -> LegInfo {
    LegInfo {
        kind: LegKind::SrtPush,
        required: true,
    }
}

fn transcode(renditions: usize) -> LegInfo {
    LegInfo {
        kind: LegKind::Transcode { renditions },
        required: true,
    }
}

#[test]
fn setup_succeeds_and_a_joining_player_starts_on_the_keyframe() {
    let mut s = Pair::new();
    let p = s.publish("live", "cam1", false, vec![]);
    s.run_to(100);
    assert!(s.pubs[p].ready, "ready after the first keyframe");
    assert_eq!(
        s.pubs[p].rtmp.statuses[0].0, "NetStream.Publish.Start",
        "{:?}",
        s.pubs[p].rtmp.statuses
    );
    s.run_to(500);
    let pl = s.play("live/cam1");
    s.run_to(1000);
    assert!(s.is_playing(pl));
    let got = &s.player(pl).received;
    assert!(got.len() > 10, "{} chunks", got.len());
    // The GOP cache starts it at the keyframe: PAT first.
    assert_eq!(first_pid(&got[0]), Some(0));
    assert!(got.iter().all(|c| c.len() % 188 == 0 && c.len() <= 1316));
}

#[test]
fn no_keyframe_by_the_deadline_fails_the_publish_and_frees_the_path() {
    let mut s = Pair::new();
    let p = s.publish("live", "cam1", false, vec![]);
    s.pubs[p].keyframes = false;
    s.run_to(7900);
    assert!(s.pubs[p].teardown.is_none());
    s.run_to(8100);
    assert_eq!(
        s.pubs[p].teardown,
        Some(Cause::SetupTimeout {
            reason: "no_keyframe"
        })
    );
    let (code, text) = s.pubs[p].rtmp.last_status().unwrap().clone();
    assert_eq!(code, "NetStream.Publish.Failed");
    assert!(text.contains("server.setup_timeout"), "{text}");
    assert!(s.registry.is_empty());
    let pl = s.play("live/cam1");
    s.run_to(8500);
    assert!(
        matches!(s.player(pl).state, PlayerState::Rejected(_)),
        "a player of a failed stream is refused"
    );
}

#[test]
fn a_push_leg_that_connects_after_the_deadline_fails_setup_with_its_reason() {
    let mut s = Pair::new();
    s.destination(9000);
    let p = s.publish("live", "cam1", false, vec![push()]);
    s.run_to(8100);
    assert_eq!(
        s.pubs[p].teardown,
        Some(Cause::SetupTimeout {
            reason: "push_connect"
        })
    );
    let text = &s.pubs[p].rtmp.last_status().unwrap().1;
    assert!(
        text.ends_with("0 of 1 SRT push destinations connected"),
        "{text}"
    );
    // The leg was told to stop: it connects to nothing later.
    s.run_to(10_000);
    assert!(s.dests[0].conn.is_none());
}

#[test]
fn a_push_leg_in_time_streams_the_source_to_its_destination() {
    let mut s = Pair::new();
    s.destination(2000);
    let p = s.publish("live", "cam1", false, vec![push()]);
    s.run_to(1900);
    assert!(!s.pubs[p].ready, "setup waits for the destination");
    s.run_to(2500);
    assert!(s.pubs[p].ready);
    s.run_to(4000);
    assert!(s.dests[0].received > 50, "{}", s.dests[0].received);
}

#[test]
fn a_rendition_whose_first_idr_never_comes_fails_setup() {
    let mut s = Pair::new();
    let p = s.publish("live", "cam1", false, vec![transcode(2)]);
    s.run_to(1000);
    let Leg::Transcode(t) = &s.pubs[p].legs[0] else {
        panic!("the transcode leg starts at the first keyframe")
    };
    assert!(t.started && t.fed > 10, "fed {}", t.fed);
    s.group_input(p, Input::RenditionReady(LegId(0)));
    s.run_to(8100);
    assert_eq!(
        s.pubs[p].teardown,
        Some(Cause::SetupTimeout {
            reason: "transcode_first_idr"
        })
    );
    let text = &s.pubs[p].rtmp.last_status().unwrap().1;
    assert!(text.ends_with("1 of 2 transcoded renditions produced their first IDR"));
}

#[test]
fn a_leg_failing_mid_stream_tears_down_every_leg_and_tells_the_publisher() {
    let mut s = Pair::new();
    s.destination(0);
    let p = s.publish("live", "cam1", false, vec![push(), transcode(1)]);
    s.run_to(300);
    s.group_input(p, Input::RenditionReady(LegId(1)));
    assert!(s.pubs[p].ready);
    let pl = s.play("live/cam1");
    s.run_to(2000);
    assert!(s.is_playing(pl));
    // The destination vanishes; the push leg's connection times out.
    s.dests[0].down_from = Some(s.now);
    s.run_to(9000);
    assert_eq!(
        s.pubs[p].teardown,
        Some(Cause::LegFailed {
            kind: LegKind::SrtPush
        })
    );
    let (code, text) = s.pubs[p].rtmp.last_status().unwrap().clone();
    assert_eq!(code, "NetStream.Publish.Failed");
    assert!(text.starts_with("SRT push failed"), "{text}");
    assert!(s.registry.is_empty());
    // The player drained what it had and was closed with the stream.
    s.run_to(11_000);
    assert!(matches!(s.player(pl).state, PlayerState::Closed));
}

#[test]
fn drain_refuses_new_publishers_and_shutdown_stops_the_live_one() {
    let mut s = Pair::new();
    let p = s.publish("live", "cam1", false, vec![]);
    s.run_to(500);
    let pl = s.play("live/cam1");
    s.run_to(1000);
    assert!(s.is_playing(pl));
    let before = s.player(pl).received.len();
    s.registry.start_draining();
    let q = s.publish("live", "cam2", false, vec![]);
    assert!(s.pubs[q].group.is_none());
    assert!(s.pubs[q]
        .rtmp
        .last_status()
        .is_some_and(|(_, t)| t.contains("draining")));
    // New players are turned away; the live stream and its player go on.
    let late = s.play("live/cam1");
    s.run_to(2500);
    let PlayerState::Rejected(code) = s.player(late).state else {
        panic!("a player during the drain was not rejected")
    };
    assert_eq!(code, 1503);
    assert!(s.pubs[p].teardown.is_none());
    assert!(s.is_playing(pl));
    assert!(s.player(pl).received.len() > before, "still playing");
    // The drain timeout: the server's token is cancelled.
    s.root.cancel();
    s.run_to(2600);
    assert_eq!(s.pubs[p].teardown, Some(Cause::Shutdown));
    assert_eq!(
        s.pubs[p].rtmp.last_status().unwrap().0,
        "NetStream.Unpublish.Success"
    );
    s.listener.close_all(s.now);
    s.run_to(5000);
    assert_eq!(s.listener.players(), 0);
}

#[test]
fn takeover_hands_the_path_to_the_new_publisher_and_players_follow() {
    let mut s = Pair::new();
    let old = s.publish("live", "cam1", true, vec![]);
    s.run_to(500);
    let pl = s.play("live/cam1");
    s.run_to(1000);
    assert!(s.is_playing(pl));
    let new = s.publish("live", "cam1", true, vec![]);
    s.run_to(1100);
    assert_eq!(s.pubs[old].teardown, Some(Cause::TakenOver));
    assert_eq!(
        s.pubs[old].rtmp.last_status().unwrap().0,
        "NetStream.Publish.BadName"
    );
    assert!(s.pubs[new].ready);
    assert_eq!(
        s.registry.get(&s.pubs[new].path).unwrap().peer,
        "10.0.0.2:5000"
    );
    // The old ring closed: its player ends; a new player gets the new stream.
    s.run_to(3000);
    assert!(matches!(s.player(pl).state, PlayerState::Closed));
    let pl2 = s.play("live/cam1");
    s.run_to(3500);
    assert!(s.is_playing(pl2));
    assert_eq!(first_pid(&s.player(pl2).received[0]), Some(0));
}

#[test]
fn the_publisher_leaving_ends_the_stream_at_once() {
    let mut s = Pair::new();
    let p = s.publish("live", "cam1", false, vec![]);
    s.run_to(500);
    s.publisher_leaves(p);
    assert_eq!(s.pubs[p].teardown, Some(Cause::Publisher("peer_closed")));
    assert!(s.registry.is_empty());
    assert_eq!(s.ms(), 500);
}
