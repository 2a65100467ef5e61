//! Fuzzing entry point for the SRT listener (`fuzz/fuzz_targets/srt_listener.rs`):
//! scripted callers against one real [`Listener`] serving a live stream on
//! virtual time, the harness playing the driver and checking what the
//! listener sends back. The input format and the checks are in
//! docs/fuzzing.md; a panic here is a bug in sluice, never bad input.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use srt_protocol::packet::{ControlPacket, ControlTypes, Packet, ShakeType};
use tokio_util::sync::CancellationToken;

use crate::auth::Secret;
use crate::srt::config::SrtConfig;
use crate::srt::listener::{Listener, ReadRules};
use crate::stream::config::{AppConfig, Apps, DEFAULT_APP};
use crate::stream::{ClaimPolicy, PublishGuard, Registry, RingConfig, StreamPath};
use crate::ts::TsChunk;

/// Records per input; more are ignored (keeps one run short).
const MAX_RECORDS: usize = 512;
/// Timer wakes the harness runs between two records before it jumps ahead.
const MAX_WAKES: usize = 64;
/// Pumps at one instant that still leave a player due at that instant
/// before it counts as a spinning timer.
const SPIN_LIMIT: usize = 16;
/// A server shutdown must be over after this (CLOSE_GRACE is 1.5 s).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(3);
/// Largest datagram the listener may send (Ethernet MTU).
const MAX_DATAGRAM: usize = 1500;
/// Passphrase of config bit 0 (the seeds' encrypted captures use it too).
pub const PASSPHRASE: &str = "sluice-fuzz-passphrase";
/// User `alice`'s read token under config bit 4.
pub const READ_TOKEN: &str = "fuzz-alice-token";

/// What one run did, for tests that check the seeds still reach deep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Most players connected at once.
    pub max_players: usize,
    /// Conclusions accepted (a Conclusion handshake sent back).
    pub accepted: usize,
    /// Rejection codes sent, as the caller's libsrt reports them (1404, ...).
    pub rejected: Vec<i32>,
    /// Data packets sent.
    pub data_packets: usize,
    /// Shutdown packets sent.
    pub shutdowns: usize,
}

/// What the listener told one caller, for the harness to echo.
#[derive(Default)]
struct Peer {
    cookie: Option<i32>,
    sockid: Option<u32>,
    isn: Option<u32>,
    handshakes_in: u64,
    handshakes_out: u64,
}

struct Harness {
    listener: Listener,
    registry: Arc<Registry>,
    publisher: Option<PublishGuard>,
    root: CancellationToken,
    peers: HashMap<SocketAddr, Peer>,
    now: Instant,
    wire: BytesMut,
    outcome: Outcome,
}

/// Caller `i & 7`: 0 to 3 on their own IPv4 address, 4 and 5 sharing the
/// addresses of 0 and 1 (per-IP limits), 6 and 7 on IPv6.
fn caller(i: u8) -> SocketAddr {
    let i = i & 7;
    let port = 40000 + u16::from(i);
    if i >= 6 {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
    } else {
        SocketAddr::from(([127, 0, 0, 1 + (i & 3)], port))
    }
}

fn chunk(data: &[u8], keyframe: bool, dts_90k: u64, origin: Instant) -> TsChunk {
    TsChunk {
        data: if data.is_empty() {
            Bytes::from(vec![0x47; 1316])
        } else {
            Bytes::copy_from_slice(data)
        },
        keyframe,
        dts_90k,
        origin: Some(origin),
    }
}

/// Config bit 3: only application `live` is configured (the others are
/// unknown: 1404). Bit 4: `[apps."*"]` gives every other application
/// user tokens (`u=alice`, `s=`[`READ_TOKEN`]).
fn read_rules(config: u8) -> ReadRules {
    let mut apps = vec![("live".to_string(), AppConfig::default())];
    if config & 0x10 != 0 {
        let mut default = AppConfig::default();
        if let Ok(token) = Secret::parse(READ_TOKEN) {
            default.read_tokens.insert("alice".into(), token);
        }
        apps.push((DEFAULT_APP.to_string(), default));
    }
    let apps: Apps = apps.into_iter().collect();
    ReadRules::from_apps(&apps).expect("no passphrase to check")
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn put32(d: &mut [u8], at: usize, v: u32) {
    if let Some(w) = d.get_mut(at..at + 4) {
        w.copy_from_slice(&v.to_be_bytes());
    }
}

impl Harness {
    fn new(config: u8) -> Harness {
        let mut cfg = SrtConfig::default();
        if config & 1 != 0 {
            cfg.passphrase = Some(PASSPHRASE.to_string());
        }
        if config & 2 != 0 {
            cfg.max_players = 1;
        }
        let registry = Registry::new();
        let mut listener = Listener::new(registry.clone(), &cfg).expect("valid SRT config");
        if config & 0x18 != 0 {
            listener.set_read_auth(read_rules(config));
        }
        let now = Instant::now();
        let mut h = Harness {
            listener,
            registry,
            publisher: None,
            root: CancellationToken::new(),
            peers: HashMap::new(),
            now,
            wire: BytesMut::with_capacity(MAX_DATAGRAM),
            outcome: Outcome::default(),
        };
        h.publish();
        if config & 4 != 0 {
            h.registry.start_draining();
        }
        h
    }

    /// Claims live/cam1 with a 720p rendition; a GOP of ten chunks goes
    /// into the source ring and three into 720p.
    fn publish(&mut self) {
        if self.publisher.is_some() {
            return;
        }
        let policy = ClaimPolicy {
            takeover: true,
            stale_after: Duration::from_secs(3),
            ring: RingConfig::default(),
            renditions: vec!["720p".to_string()],
        };
        let Ok(path) = StreamPath::from_rtmp("live", "cam1") else {
            return;
        };
        let Ok(guard) = self
            .registry
            .claim(path, "cam1", "fuzz", policy, &self.root)
        else {
            return;
        };
        for (name, n) in [("source", 10u64), ("720p", 3)] {
            if let Some(r) = guard.stream().rendition(name) {
                for i in 0..n {
                    r.ring.push(chunk(&[], i == 0, i * 3000, self.now));
                }
            }
        }
        self.publisher = Some(guard);
    }

    fn push_chunk(&mut self, rendition: &str, data: &[u8]) {
        let Some(guard) = &self.publisher else {
            return;
        };
        if let Some(r) = guard.stream().rendition(rendition) {
            let keyframe = data.first().is_some_and(|b| b & 1 != 0);
            r.ring.push(chunk(data, keyframe, 0, self.now));
        }
    }

    fn event(&mut self, body: &[u8]) {
        let rest = body.get(1..).unwrap_or(&[]);
        match body.first().copied().unwrap_or(0) {
            0 => self.publisher = None,
            1 => self.listener.close_all(self.now),
            2 => self.push_chunk("source", rest),
            3 => self.push_chunk("720p", rest),
            4 => self.publish(),
            _ => self.listener.pump_all(self.now, true),
        }
    }

    /// Patches what a real caller would echo (see the module docs).
    fn patch(&self, ctl: u8, from: SocketAddr, d: &mut [u8]) {
        let Some(peer) = self.peers.get(&from) else {
            return;
        };
        let control = d.first().is_some_and(|b| b & 0x80 != 0);
        let ty = u16::from_be_bytes([
            d.first().copied().unwrap_or(0),
            d.get(1).copied().unwrap_or(0),
        ]) & 0x7FFF;
        if ctl & 0x08 != 0 && control && ty == 0 {
            if let Some(c) = peer.cookie {
                put32(d, 44, c as u32);
            }
        }
        if ctl & 0x10 != 0 {
            if let Some(id) = peer.sockid {
                put32(d, 12, id);
            }
        }
        if ctl & 0x20 != 0 && control {
            let Some(isn) = peer.isn else {
                return;
            };
            let shift = |w: u32| (w & 0x8000_0000) | (w.wrapping_add(isn) & 0x7FFF_FFFF);
            match ty {
                2 => {
                    if let Some(w) = be32(d, 16) {
                        put32(d, 16, shift(w));
                    }
                }
                3 => {
                    let mut at = 16;
                    while let Some(w) = be32(d, at) {
                        put32(d, at, shift(w));
                        at += 4;
                    }
                }
                _ => {}
            }
        }
    }

    fn datagram(&mut self, ctl: u8, data: &[u8]) {
        let from = caller(ctl);
        let mut d = data.to_vec();
        self.patch(ctl, from, &mut d);
        let peer = self.peers.entry(from).or_default();
        if d.get(..2) == Some(&[0x80, 0x00]) {
            peer.handshakes_in += 1;
        }
        self.listener.handle_datagram(self.now, &d, from);
    }

    /// What `serve` does after every wake: pump due players, send.
    fn drain(&mut self) {
        self.listener.pump_all(self.now, false);
        let mut out = Vec::new();
        self.listener.drain_outbox(&mut out);
        self.outcome.max_players = self.outcome.max_players.max(self.listener.players());
        for (packet, to) in out {
            let Some(peer) = self.peers.get_mut(&to) else {
                panic!("sent to {to}, which never sent anything: {packet:?}");
            };
            self.wire.clear();
            packet.serialize(&mut self.wire);
            assert!(
                self.wire.len() <= MAX_DATAGRAM,
                "{}-byte datagram to {to}",
                self.wire.len()
            );
            let h = match &packet {
                Packet::Data(_) => {
                    self.outcome.data_packets += 1;
                    None
                }
                Packet::Control(ControlPacket {
                    control_type: ControlTypes::Shutdown,
                    ..
                }) => {
                    self.outcome.shutdowns += 1;
                    None
                }
                Packet::Control(ControlPacket {
                    control_type: ControlTypes::Handshake(h),
                    ..
                }) => Some(h),
                Packet::Control(_) => None,
            };
            if let Some(h) = h {
                peer.handshakes_out += 1;
                assert!(
                    peer.handshakes_out <= peer.handshakes_in,
                    "{} handshakes sent to {to} for {} received",
                    peer.handshakes_out,
                    peer.handshakes_in
                );
                match h.shake_type {
                    ShakeType::Induction => peer.cookie = Some(h.syn_cookie),
                    ShakeType::Conclusion => {
                        self.outcome.accepted += 1;
                        peer.sockid = Some(h.socket_id.0);
                        peer.isn = Some(h.init_seq_num.as_raw());
                    }
                    ShakeType::Rejection(r) => {
                        self.outcome.rejected.push(i32::from(r) - 1000);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Lets `dt` pass the way `serve` would: wake at each player's timer.
    fn advance(&mut self, dt: Duration) {
        let target = self.now + dt;
        let mut spins = 0;
        for _ in 0..MAX_WAKES {
            let wake = self.listener.next_wake(self.now);
            if wake > target {
                break;
            }
            if wake <= self.now {
                spins += 1;
                assert!(
                    spins < SPIN_LIMIT,
                    "a player stays due at the same instant: the driver would spin"
                );
            } else {
                spins = 0;
            }
            self.now = wake;
            self.drain();
            if self.listener.players() == 0 {
                break;
            }
        }
        self.now = self.now.max(target);
        self.drain();
    }

    /// Server shutdown: every player must be gone within the grace period.
    fn shutdown(&mut self) {
        self.listener.close_all(self.now);
        self.drain();
        let end = self.now + SHUTDOWN_BOUND;
        while self.listener.players() > 0 && self.now < end {
            self.now += Duration::from_millis(10);
            self.drain();
        }
        assert_eq!(
            self.listener.players(),
            0,
            "players still connected {SHUTDOWN_BOUND:?} after shutdown"
        );
    }
}

/// Fuzzing entry point; see the module docs for the input format.
#[doc(hidden)]
pub fn fuzz_listener(data: &[u8]) {
    run(data);
}

/// Runs one input (see the module docs) and says what happened.
#[doc(hidden)]
pub fn run(data: &[u8]) -> Outcome {
    let Some((&config, mut rest)) = data.split_first() else {
        return Outcome::default();
    };
    let mut h = Harness::new(config);
    for _ in 0..MAX_RECORDS {
        let Some(&[ctl, dt, hi, lo]) = rest.get(..4) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let body = rest.get(4..4 + len).unwrap_or(&rest[4..]);
        rest = &rest[4 + body.len()..];
        let ms = match dt {
            0..=127 => u64::from(dt),
            _ => u64::from(dt - 127) * 50,
        };
        h.advance(Duration::from_millis(ms));
        if ctl >> 6 == 3 {
            h.event(body);
        } else {
            // The driver reads into a 2048-byte buffer.
            h.datagram(ctl, body.get(..2048).unwrap_or(body));
        }
        h.drain();
    }
    h.shutdown();
    h.outcome
}
