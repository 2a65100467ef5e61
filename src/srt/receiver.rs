//! One SRT receiver: a connected srt-protocol `DuplexConnection` whose
//! peer publishes. srt-protocol acknowledges, asks for retransmissions
//! (NAK) and releases payloads in order at their TSBPD time; this collects
//! what it releases and the packets to send. Sans-IO and synchronous: the
//! listener reads the clock, owns the socket and isolates panics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use srt_protocol::connection::DuplexConnection;
use srt_protocol::packet::Packet;

/// Payloads released per turn at most, so one publisher's backlog cannot
/// hold the listener's loop (the rest come next turn, which is at once:
/// [`Receiver::next_wake`] stays due while payloads wait).
const RELEASE_BATCH: usize = 512;
/// After a look for payloads due, the next look waits at least this long.
/// srt-protocol's release check walks every missing slot at the head of
/// its buffer (up to the 8192 of its window) each time it is asked; asked
/// once per datagram, a publisher that leaves a hole and floods small
/// packets behind it makes every datagram cost that walk. A payload due
/// meanwhile (a retransmission filling the hole) waits at most this long.
const RELEASE_POLL_GAP: Duration = Duration::from_millis(1);

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
    /// When to look for payloads due for release next.
    release_at: Instant,
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
            release_at: now,
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
        if now >= self.release_at {
            for n in 0.. {
                if n == RELEASE_BATCH {
                    more = true;
                    break;
                }
                let dropped_before = self.dropped_seen;
                let next = self.conn.next_data(now);
                self.note_drops();
                let Some((_, payload)) = next else {
                    // A too-late drop answers `None` too; what follows it
                    // may be due already.
                    if self.dropped_seen > dropped_before {
                        continue;
                    }
                    break;
                };
                self.payloads += 1;
                self.bytes_in += payload.len() as u64;
                released.push((payload, std::mem::take(&mut self.gap)));
            }
            // The next due payload is among srt-protocol's timers (unless
            // the head of its buffer is missing: then a datagram, most
            // likely the retransmission, brings the next look).
            next = self.conn.next_timer(now);
            self.release_at = if more { now } else { now + RELEASE_POLL_GAP };
        } else {
            // Something arrived during the gap: look once it is over.
            next = next.min(self.release_at);
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

    /// Close from our side: SRT's shutdown goes out with the packets
    /// appended to `out`.
    pub fn close(&mut self, now: Instant, out: &mut Vec<(Packet, SocketAddr)>) {
        self.conn.handle_data_input(now, None);
        let _ = self.conn.check_timers(now);
        while let Some(p) = self.conn.next_packet(now) {
            out.push(p);
        }
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
