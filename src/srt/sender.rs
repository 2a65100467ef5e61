//! One SRT sender: feeds a connected SRT connection from a rendition ring's
//! cursor, under a send-buffer cap, and collects the packets to send. Pull
//! players (`listener`) run a [`SendOnly`] (an srt-protocol
//! `DuplexConnection` when encrypted); push legs (`push`) a
//! `DuplexConnection`. Their drivers own the sockets, read the clock once
//! per turn and pass it in. Sans-IO and synchronous; callers isolate panics.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use srt_protocol::connection::DuplexConnection;
use srt_protocol::packet::{Packet, PacketLocation};
use tracing::debug;

use super::sendonly::SendOnly;

use crate::stream::{Cursor, Read};
use crate::ts::join::catch_up;
use crate::ts::TsChunk;

/// Stop feeding while this many packets wait in the send buffer (sent but
/// unacknowledged, or not sent yet); srt-protocol would otherwise drop the
/// oldest itself.
pub const FEED_CAP_PACKETS: u64 = 2048;
/// A peer whose send buffer stays over the cap this long does not keep up.
pub const STUCK_LIMIT: Duration = Duration::from_secs(4);
/// Chunks read from the ring per turn, so one peer cannot starve others.
const READ_BATCH: usize = 64;
/// Bound on the latency bookkeeping (one entry per chunk not yet sent).
const MAX_IN_FLIGHT: usize = 16 * 1024;
/// Room that bookkeeping keeps once a burst is sent.
const IN_FLIGHT_KEEP: usize = 64;
/// A live-edge join rewrites a GOP cache up to this size (half the ring's
/// default bound: 2 s at 64 Mbit/s); a bigger one goes out as it is, so
/// the rewrite's CPU time on the listener's loop and what a joiner holds
/// outside the ring stay bounded.
pub const MAX_CATCH_UP_BYTES: usize = 16 << 20;

/// Why a sender is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed the connection or timed out.
    PeerClosed,
    /// The stream ended and what was buffered was flushed; `confirmed`:
    /// the peer acknowledged the close (else the grace period ran out).
    StreamEnded { confirmed: bool },
    /// [`Sender::close`] finished.
    Closed { confirmed: bool },
    /// The peer fell out of the ring too often.
    TooSlow,
    /// The send buffer stayed over the cap for [`STUCK_LIMIT`].
    Stuck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    StreamEnded,
    Requested,
}

/// Metric handles a sender records into (looked up once, not per packet).
#[derive(Debug, Clone)]
pub struct SenderMetrics {
    pub bytes_out: metrics::Counter,
    /// Data packets sent, retransmissions included.
    pub packets: metrics::Counter,
    /// Data packets sent again.
    pub retransmits: metrics::Counter,
    /// Ring arrival → last packet of the chunk on the wire, live chunks only.
    pub latency: metrics::Histogram,
    pub lag_skips: metrics::Counter,
    /// Sender created -> its first chunk handed to the connection.
    pub first_data: metrics::Histogram,
}

impl SenderMetrics {
    pub fn noop() -> Self {
        SenderMetrics {
            bytes_out: metrics::Counter::noop(),
            packets: metrics::Counter::noop(),
            retransmits: metrics::Counter::noop(),
            latency: metrics::Histogram::noop(),
            lag_skips: metrics::Counter::noop(),
            first_data: metrics::Histogram::noop(),
        }
    }
}

/// What the live-edge join did for one player (`join = "live"`), once its
/// first read is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Cached video frames retimed.
    pub frames: u32,
    /// Media time skipped (cached keyframe -> live point).
    pub skipped: Duration,
    /// Stale audio (and other non-video) PES left out.
    pub dropped_pes: u32,
    /// Copies of the keyframe sent ahead of it.
    pub lead_in: u32,
    /// Why the cache went out as it was, when it did.
    pub unchanged: Option<&'static str>,
}

/// The `now` to give srt-protocol with a connection's first data input
/// (the duplex connection; the send-only sender does not pace).
///
/// srt-protocol's sender paces at one packet per millisecond until its
/// first rate estimate, which it makes 100 ms after the first input
/// (`SenderCongestionControl::on_input`). That caps the GOP-cache burst a
/// new player needs at ~11 Mbit/s (a 100 KB keyframe took 80 ms). Dating
/// the first input 101 ms back makes the second input produce the estimate
/// at once (about 10 µs per packet). `now` is only used for that estimate;
/// packet timestamps come from the origin instant, which stays `now`.
fn pacing_primer(now: Instant) -> Instant {
    now.checked_sub(Duration::from_millis(101)).unwrap_or(now)
}

/// The least round-trip time a sender takes from a peer's ACK.
///
/// srt-protocol's sender uses the peer's RTT for one thing: each packet's
/// retransmission timeout, RTT + 4·RTTVar + 20 ms, after which it resends
/// the packet unless an ACK covering it came in. On a LAN or loopback that
/// is about 21 ms, shorter than the receiver's own 10 ms ACK period plus
/// one busy turn of the relay's loop at a few hundred players, so packets
/// the player already had went out again (4 % of packets at 50 players,
/// 15 % at 75, measured). Losses are recovered by the player's NAKs, which
/// this does not touch (libsrt in live mode retransmits on NAKs and its
/// periodic NAK reports, not on a sender timer); flooring the RTT at 30 ms
/// makes the timer a last resort after 50 ms instead.
pub const RTO_RTT_FLOOR: Duration = Duration::from_millis(30);

/// Raise the RTT an ACK reports (full or small) to [`RTO_RTT_FLOOR`].
fn floor_acked_rtt(packet: &mut Packet) {
    use srt_protocol::packet::{Acknowledgement, ControlTypes, TimeSpan};
    use srt_protocol::protocol::time::Rtt;
    let Packet::Control(c) = packet else {
        return;
    };
    let stats = match &mut c.control_type {
        ControlTypes::Ack(Acknowledgement::Full(_, stats, _))
        | ControlTypes::Ack(Acknowledgement::Small(_, stats)) => stats,
        _ => return,
    };
    let floor = TimeSpan::from_micros(RTO_RTT_FLOOR.as_micros() as i32);
    if stats.rtt.mean() < floor {
        stats.rtt = Rtt::new(floor, stats.rtt.variance());
    }
}

/// The connection a [`Sender`] feeds.
// Players, the many, hold the send-only variant inline; the few duplex
// connections (push legs, encrypted players) are boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Conn {
    /// srt-protocol's full connection: push legs, encrypted players.
    Duplex(Box<DuplexConnection>),
    /// The lean live sender: unencrypted pull players.
    SendOnly(SendOnly),
}

impl From<DuplexConnection> for Conn {
    fn from(c: DuplexConnection) -> Conn {
        Conn::Duplex(Box::new(c))
    }
}

impl From<SendOnly> for Conn {
    fn from(c: SendOnly) -> Conn {
        Conn::SendOnly(c)
    }
}

impl Conn {
    fn handle_packet(&mut self, now: Instant, mut packet: Packet, from: SocketAddr) {
        match self {
            Conn::Duplex(c) => {
                floor_acked_rtt(&mut packet);
                c.handle_packet_input(now, Ok((packet, from)));
            }
            Conn::SendOnly(c) => c.handle_packet(now, packet, from),
        }
    }

    fn handle_data_input(&mut self, now: Instant, data: Option<(Instant, Bytes)>) {
        match self {
            Conn::Duplex(c) => c.handle_data_input(now, data),
            Conn::SendOnly(c) => c.handle_data_input(now, data),
        }
    }

    fn check_timers(&mut self, now: Instant) -> Instant {
        match self {
            Conn::Duplex(c) => c.check_timers(now),
            Conn::SendOnly(c) => c.check_timers(now),
        }
    }

    fn next_packet(&mut self, now: Instant) -> Option<(Packet, SocketAddr)> {
        match self {
            Conn::Duplex(c) => c.next_packet(now),
            Conn::SendOnly(c) => c.next_packet(now),
        }
    }

    /// Discard what the peer sent as data (a sender's peer sends none
    /// worth keeping).
    fn discard_received(&mut self, now: Instant) {
        if let Conn::Duplex(c) = self {
            while c.next_data(now).is_some() {}
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Duplex(c) => c.is_open(),
            Conn::SendOnly(c) => c.is_open(),
        }
    }

    /// Packets in the send buffer (sent but unacknowledged, or not sent).
    fn buffered(&mut self, now: Instant) -> u64 {
        match self {
            Conn::Duplex(c) => {
                c.update_statistics(now);
                c.statistics().tx_buffered_data
            }
            Conn::SendOnly(c) => c.buffered(),
        }
    }
}

/// One connection fed from one ring.
#[derive(Debug)]
pub struct Sender {
    conn: Conn,
    cursor: Cursor<TsChunk>,
    /// Most chunks fed per [`Sender::pump`].
    batch: usize,
    close_grace: Duration,
    metrics: SenderMetrics,
    /// For debug logs: the peer or destination.
    label: String,
    /// Set while the send buffer is over the cap.
    over_cap_since: Option<Instant>,
    /// A graceful close started; given up at the deadline.
    closing: Option<(Instant, Closing)>,
    next_wake: Instant,
    /// At least one chunk was handed to the connection (see `pacing_primer`).
    fed_any: bool,
    /// The cursor reached the live edge (past the GOP-cache replay); only
    /// then do chunks measure relay latency.
    live: bool,
    /// Ring arrival of chunks handed to the connection whose last packet
    /// has not gone out yet (`None`: not measured).
    in_flight: VecDeque<Option<Instant>>,
    bytes_out: u64,
    skips: u64,
    /// Chunks read from the ring, reused across turns.
    scratch: Vec<TsChunk>,
    /// Rewrite the first read for the live edge (`ts::join`).
    catch_up: bool,
    /// What that rewrite did, until [`Sender::take_catch_up`].
    caught_up: Option<CatchUpReport>,
    /// Rewritten chunks not handed to the connection yet (fed under the cap
    /// like ring reads).
    queued: VecDeque<TsChunk>,
    created: Instant,
}

impl Sender {
    /// `batch`: most chunks fed per turn; `close_grace`: how long a
    /// graceful close waits for the peer's confirmation.
    pub fn new(
        conn: impl Into<Conn>,
        cursor: Cursor<TsChunk>,
        batch: usize,
        close_grace: Duration,
        metrics: SenderMetrics,
        label: String,
        now: Instant,
    ) -> Sender {
        Sender {
            conn: conn.into(),
            cursor,
            batch,
            close_grace,
            metrics,
            label,
            over_cap_since: None,
            closing: None,
            next_wake: now,
            fed_any: false,
            live: false,
            in_flight: VecDeque::new(),
            bytes_out: 0,
            skips: 0,
            scratch: Vec::with_capacity(READ_BATCH),
            catch_up: false,
            caught_up: None,
            queued: VecDeque::new(),
            created: now,
        }
    }

    /// Start this player at the live edge: its first read (the GOP cache)
    /// is retimed by [`catch_up`] (`join = "live"`).
    pub fn catch_up_on_join(mut self) -> Sender {
        self.catch_up = true;
        self
    }

    /// What the live-edge rewrite did, once it ran (handed out once).
    pub fn take_catch_up(&mut self) -> Option<CatchUpReport> {
        self.caught_up.take()
    }

    /// A packet from the peer (already guarded and parsed).
    pub fn handle_packet(&mut self, now: Instant, packet: Packet, from: SocketAddr) {
        self.conn.handle_packet(now, packet, from);
    }

    /// Flush what is buffered, then shut down; [`Sender::pump`] reports
    /// [`End::Closed`] once the peer confirms or the grace period passed.
    pub fn close(&mut self, now: Instant) {
        if self.closing.is_none() {
            self.conn.handle_data_input(now, None);
            self.closing = Some((now + self.close_grace, Closing::Requested));
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// One turn: feed from the ring under the cap, run timers, append the
    /// packets to send to `out`. `Some(end)`: the sender is done.
    pub fn pump(&mut self, now: Instant, out: &mut Vec<(Packet, SocketAddr)>) -> Option<End> {
        if self.closing.is_none() {
            if let Some(end) = self.feed(now) {
                return Some(end);
            }
        }
        let next = self.conn.check_timers(now);
        let (mut bytes, mut packets, mut again) = (0u64, 0u64, 0u64);
        while let Some((packet, to)) = self.conn.next_packet(now) {
            if let Packet::Data(d) = &packet {
                bytes += d.payload.len() as u64;
                packets += 1;
                again += u64::from(d.retransmitted);
                // A chunk is one SRT message; its last packet going out for
                // the first time ends its trip through the relay.
                if !d.retransmitted && d.message_loc.contains(PacketLocation::LAST) {
                    if let Some(Some(origin)) = self.in_flight.pop_front() {
                        let took = now.saturating_duration_since(origin);
                        self.metrics.latency.record(took.as_secs_f64());
                    }
                }
            }
            out.push((packet, to));
        }
        if self.in_flight.capacity() > IN_FLIGHT_KEEP && self.in_flight.len() < IN_FLIGHT_KEEP / 4 {
            // A join's catch-up grew it; a caught-up player needs little.
            self.in_flight.shrink_to(IN_FLIGHT_KEEP / 4);
        }
        if packets > 0 {
            self.bytes_out += bytes;
            self.metrics.bytes_out.increment(bytes);
            self.metrics.packets.increment(packets);
            if again > 0 {
                self.metrics.retransmits.increment(again);
            }
        }
        self.conn.discard_received(now);
        if !self.conn.is_open() {
            return Some(match self.closing {
                None => End::PeerClosed,
                Some((_, Closing::StreamEnded)) => End::StreamEnded { confirmed: true },
                Some((_, Closing::Requested)) => End::Closed { confirmed: true },
            });
        }
        self.next_wake = next;
        if let Some((deadline, why)) = self.closing {
            if now >= deadline {
                return Some(match why {
                    Closing::StreamEnded => End::StreamEnded { confirmed: false },
                    Closing::Requested => End::Closed { confirmed: false },
                });
            }
            self.next_wake = self.next_wake.min(deadline);
        }
        if let Some(since) = self.over_cap_since {
            let check = since + STUCK_LIMIT + Duration::from_millis(10);
            self.next_wake = self.next_wake.min(check);
        }
        None
    }

    /// Hand chunks to the connection while its send buffer has room.
    fn feed(&mut self, now: Instant) -> Option<End> {
        let mut chunks = std::mem::take(&mut self.scratch);
        let end = self.feed_from(now, &mut chunks);
        chunks.clear();
        self.scratch = chunks;
        end
    }

    fn feed_from(&mut self, now: Instant, chunks: &mut Vec<TsChunk>) -> Option<End> {
        let mut fed = 0;
        loop {
            if self.conn.buffered(now) >= FEED_CAP_PACKETS {
                let since = *self.over_cap_since.get_or_insert(now);
                if now.saturating_duration_since(since) > STUCK_LIMIT {
                    return Some(End::Stuck);
                }
                return None;
            }
            self.over_cap_since = None;
            if fed >= self.batch {
                return None;
            }
            chunks.clear();
            match self.read(chunks) {
                None => {
                    self.live = true;
                    return None;
                }
                Some(Read::Items) => {
                    if !self.fed_any {
                        let waited = now.saturating_duration_since(self.created);
                        self.metrics.first_data.record(waited.as_secs_f64());
                    }
                    for c in chunks.drain(..) {
                        if self.in_flight.len() < MAX_IN_FLIGHT {
                            self.in_flight.push_back(c.origin.filter(|_| self.live));
                        }
                        // Origin = now: older origins fall outside the
                        // sender's too-late window (GOP-cache chunks).
                        let input_at = if self.fed_any {
                            now
                        } else {
                            pacing_primer(now)
                        };
                        self.fed_any = true;
                        self.conn.handle_data_input(input_at, Some((now, c.data)));
                        fed += 1;
                    }
                }
                Some(Read::Skipped { dropped }) => {
                    self.live = false;
                    self.skips += 1;
                    self.metrics.lag_skips.increment(1);
                    debug!(peer = %self.label, dropped, "srt sender skipped to the newest keyframe");
                }
                Some(Read::TooSlow) => return Some(End::TooSlow),
                Some(Read::Closed) => {
                    // Flush what is buffered, then Shutdown.
                    self.conn.handle_data_input(now, None);
                    self.closing = Some((now + self.close_grace, Closing::StreamEnded));
                    return None;
                }
            }
        }
    }

    /// The next chunks to feed: what the live-edge rewrite queued, else the
    /// ring. The first ring read of a live-edge join takes the whole cache.
    fn read(&mut self, chunks: &mut Vec<TsChunk>) -> Option<Read> {
        if !self.queued.is_empty() && self.cursor.fell_behind() {
            // A joiner still taking its catch-up while the ring moved past
            // where it would continue: it is behind as any lagging player.
            self.queued = VecDeque::new();
        }
        if self.queued.is_empty() && self.catch_up {
            if self.cursor.backlog_bytes() > MAX_CATCH_UP_BYTES {
                self.catch_up = false;
                self.caught_up = Some(CatchUpReport {
                    frames: 0,
                    skipped: Duration::ZERO,
                    dropped_pes: 0,
                    lead_in: 0,
                    unchanged: Some("too_large"),
                });
                return self.cursor.try_read(READ_BATCH, chunks);
            }
            let read = self.cursor.try_read(usize::MAX, chunks);
            if read != Some(Read::Items) {
                return read;
            }
            self.catch_up = false;
            let c = catch_up(std::mem::take(chunks));
            self.caught_up = Some(CatchUpReport {
                frames: c.frames,
                skipped: Duration::from_micros(c.skipped_90k * 100 / 9),
                dropped_pes: c.dropped_pes,
                lead_in: c.lead_in,
                unchanged: c.unchanged,
            });
            self.queued = c.chunks.into();
        }
        if self.queued.is_empty() {
            return self.cursor.try_read(READ_BATCH, chunks);
        }
        let n = self.queued.len().min(READ_BATCH);
        chunks.extend(self.queued.drain(..n));
        if self.queued.is_empty() {
            self.queued = VecDeque::new(); // its capacity goes too
        }
        Some(Read::Items)
    }

    /// When the sender next needs a turn (without new data or packets).
    pub fn next_wake(&self) -> Instant {
        self.next_wake
    }

    /// Wait until the ring has data past this sender's position (or closed).
    pub async fn data_ready(&mut self) {
        let mut none = Vec::new();
        self.cursor.read(0, &mut none).await;
    }

    /// Whether feeding waits for the peer (over the cap) rather than data.
    pub fn is_over_cap(&self) -> bool {
        self.over_cap_since.is_some()
    }

    /// Data packets sent again, and packets given up (too late or pushed
    /// out of a full buffer; srt-protocol also counts NAKed packets it no
    /// longer held).
    pub fn resent_and_dropped(&self) -> (u64, u64) {
        match &self.conn {
            Conn::Duplex(c) => {
                let s = c.statistics();
                (s.tx_retransmit_data, s.tx_dropped_data)
            }
            Conn::SendOnly(c) => (c.retransmitted(), c.dropped()),
        }
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    pub fn lag_skips(&self) -> u64 {
        self.skips
    }
}
