//! One SRT receiver: a connected srt-protocol `DuplexConnection` whose
//! peer publishes. srt-protocol acknowledges, asks for retransmissions
//! (NAK) and releases payloads in order at their TSBPD time; this collects
//! what it releases and the packets to send. Sans-IO and synchronous: the
//! listener reads the clock, owns the socket and isolates panics.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use srt_protocol::connection::DuplexConnection;
use srt_protocol::packet::Packet;

/// Payloads released per turn at most, so one publisher's backlog cannot
/// hold the listener's loop (the rest come next turn, which is at once:
/// [`Receiver::next_wake`] stays due while payloads wait).
const RELEASE_BATCH: usize = 512;

/// Why a receiver is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer shut down (what it had sent was released first) or went
    /// silent for `srt.peer_idle_timeout`.
    PeerClosed,
}

/// One publishing peer's connection.
#[derive(Debug)]
pub struct Receiver {
    conn: DuplexConnection,
    next_wake: Instant,
    /// Released payloads and their bytes.
    payloads: u64,
    bytes_in: u64,
    /// Packets srt-protocol gave up on (too late, or the peer's drop
    /// request) as last seen; more means a gap before the next payload.
    dropped_seen: u64,
    gap: bool,
}

impl Receiver {
    pub fn new(conn: DuplexConnection, now: Instant) -> Receiver {
        Receiver {
            conn,
            next_wake: now,
            payloads: 0,
            bytes_in: 0,
            dropped_seen: 0,
            gap: false,
        }
    }

    /// A packet from the peer (already guarded and parsed).
    pub fn handle_packet(&mut self, now: Instant, packet: Packet, from: SocketAddr) {
        self.conn.handle_packet_input(now, Ok((packet, from)));
    }

    /// One turn: run timers (ACK, NAK, keepalive, idle), append the packets
    /// to send to `out` and the payloads due for release to `released`,
    /// each with whether data was lost just before it (packets SRT gave up
    /// on: the TS ingest must not splice across them). `Some(end)`: the
    /// connection is closed.
    pub fn pump(
        &mut self,
        now: Instant,
        out: &mut Vec<(Packet, SocketAddr)>,
        released: &mut Vec<(Bytes, bool)>,
    ) -> Option<End> {
        let mut next = self.conn.check_timers(now);
        let mut more = false;
        for n in 0.. {
            if n == RELEASE_BATCH {
                more = true;
                break;
            }
            let next = self.conn.next_data(now);
            self.note_drops();
            let Some((_, payload)) = next else {
                break;
            };
            self.payloads += 1;
            self.bytes_in += payload.len() as u64;
            released.push((payload, std::mem::take(&mut self.gap)));
        }
        while let Some(p) = self.conn.next_packet(now) {
            out.push(p);
        }
        if !self.conn.is_open() {
            return Some(End::PeerClosed);
        }
        if more {
            next = now;
        }
        self.next_wake = next;
        None
    }

    /// Whether srt-protocol dropped packets since the last look.
    fn note_drops(&mut self) {
        let dropped = self.conn.statistics().rx_dropped_data;
        if dropped > self.dropped_seen {
            self.dropped_seen = dropped;
            self.gap = true;
        }
    }

    /// When the receiver next needs a turn without new packets.
    pub fn next_wake(&self) -> Instant {
        self.next_wake
    }

    pub fn statistics(&self) -> &srt_protocol::statistics::SocketStatistics {
        self.conn.statistics()
    }

    pub fn payloads(&self) -> u64 {
        self.payloads
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }
}
