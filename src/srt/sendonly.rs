//! A send-only SRT live connection for pull players.
//!
//! srt-protocol's `DuplexConnection` runs a full sender and receiver per
//! peer: each packet is encapsulated into a `DataPacket` kept in its send
//! buffer, queued again in an output queue and tracked in a retransmission
//! priority queue. Those queues keep the size a join's catch-up burst (a
//! GOP, hundreds of packets) grew them to, about 140 KB per player, and the
//! per-packet bookkeeping is most of the relay's user-space CPU at hundreds
//! of players. A pull player receives no media, so it needs only the live
//! sender: sequence and message numbers, timestamps, a buffer of payload
//! slices (shared with the ring: a `Bytes` handle, no copy) until the peer
//! acknowledges them or they are too late, NAK retransmission, ACKACK,
//! keepalive, the peer's idle timeout, Shutdown, and the flush on close.
//!
//! Behaviour follows srt-protocol's live sender where it matters to peers:
//! messages are split at the negotiated payload size, too-late packets are
//! dropped after 125 % of the latency (at least 1 s), a NAK for a packet no
//! longer held is answered with a drop request, the close flushes for twice
//! the latency and then sends Shutdown. It does not retransmit on a timer:
//! live receivers (libsrt, srt-protocol, the load tool) report losses with
//! NAKs and repeat them while a gap stays open. Encrypted connections keep
//! the duplex connection (key material and refresh live there).
//!
//! Sans-IO and synchronous, like [`super::sender::Sender`], which drives it.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use srt_protocol::connection::Connection;
use srt_protocol::packet::{
    ControlPacket, ControlTypes, DataEncryption, DataPacket, MsgNumber, Packet, PacketLocation,
    SeqNumber, SocketId, TimeSpan, TimeStamp,
};
use srt_protocol::protocol::handshake::Handshake;
use srt_protocol::protocol::time::TimeBase;

/// A keepalive goes out after this long without sending anything.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Buffer room kept once a burst is acknowledged (packets). A caught-up
/// player holds what one ACK period (10 ms) sent, a few packets between
/// keyframes; a keyframe (~80 packets) grows it for a moment.
const BUFFER_KEEP: usize = 32;
/// A packet resent less than RTT + 4·RTTVar ago (the peer's figures from
/// its last full ACK), and never less than this, is not resent for another
/// NAK: receivers repeat their NAKs while a gap stays open (libsrt's
/// periodic NAK report), and the resend may still be on its way.
const RESEND_GAP: Duration = Duration::from_millis(20);
/// The most that gap grows to, whatever RTT a peer reports.
const MAX_RESEND_GAP: Duration = Duration::from_secs(1);
/// Retransmissions a player may take at once; past that it earns one per
/// packet sent for the first time, so a player's NAKs, hostile or not,
/// never cost more than its own stream again (plus this burst). A loss the
/// budget could not cover is NAKed again by the receiver.
const RESEND_BURST: u32 = 1024;

/// One packet waiting for its acknowledgement: a slice of a ring chunk.
#[derive(Debug)]
struct Entry {
    payload: Bytes,
    /// Its SRT timestamp: when its message was handed in.
    ts: TimeStamp,
    /// When it was last resent.
    resent: Option<TimeStamp>,
    msg: MsgNumber,
    loc: PacketLocation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The data stream ended: flush until acknowledged or the deadline,
    /// then Shutdown.
    Flushing(Instant),
    Closed,
}

/// See the module documentation.
#[derive(Debug)]
pub struct SendOnly {
    remote: SocketAddr,
    remote_sockid: SocketId,
    local_sockid: SocketId,
    time_base: TimeBase,
    /// Answers a caller that repeats its Conclusion (our reply was lost).
    handshake: Handshake,
    max_payload: usize,
    flow_window: usize,
    max_buffer: usize,
    latency_window: TimeSpan,
    flush_timeout: Duration,
    idle_timeout: Duration,
    next_msg: MsgNumber,
    /// Sequence number of `buffer[0]` (the next one to assign when empty).
    front: SeqNumber,
    buffer: VecDeque<Entry>,
    /// `buffer[..sent]` went out at least once.
    sent: usize,
    /// Sequence numbers the peer reported lost, still in the buffer.
    lost: BTreeSet<SeqNumber>,
    control: VecDeque<ControlTypes>,
    last_sent: Instant,
    last_heard: Instant,
    state: State,
    /// Retransmissions allowed now (see [`RESEND_BURST`]).
    resend_budget: u32,
    /// See [`RESEND_GAP`].
    resend_gap: TimeSpan,
    retransmitted: u64,
    dropped: u64,
}

impl SendOnly {
    /// A connected caller (the listener made the handshake).
    pub fn new(conn: Connection, now: Instant) -> SendOnly {
        let s = conn.settings;
        let latency = s.send_tsbpd_latency;
        SendOnly {
            remote: s.remote,
            remote_sockid: s.remote_sockid,
            local_sockid: s.local_sockid,
            time_base: TimeBase::new(s.socket_start_time),
            handshake: conn.handshake,
            max_payload: usize::from(s.max_packet_size).max(188),
            flow_window: (s.max_flow_size.0 as usize).max(1),
            max_buffer: (s.send_buffer_size.0 as usize).max(1),
            latency_window: TimeSpan::from((latency + latency / 4).max(Duration::from_secs(1))),
            flush_timeout: latency * 2,
            idle_timeout: s.peer_idle_timeout,
            next_msg: MsgNumber::new_truncate(1),
            front: s.init_seq_num,
            buffer: VecDeque::new(),
            sent: 0,
            lost: BTreeSet::new(),
            control: VecDeque::new(),
            last_sent: now,
            last_heard: now,
            state: State::Open,
            resend_budget: RESEND_BURST,
            resend_gap: TimeSpan::from(RESEND_GAP),
            retransmitted: 0,
            dropped: 0,
        }
    }

    /// One message (`Some((input time, payload))`), or the end of the data
    /// stream (`None`: flush, then Shutdown).
    pub fn handle_data_input(&mut self, now: Instant, data: Option<(Instant, Bytes)>) {
        let Some((at, mut data)) = data else {
            if self.state == State::Open {
                self.state = State::Flushing(now + self.flush_timeout);
            }
            return;
        };
        if self.state != State::Open {
            return;
        }
        let msg = self.next_msg.increment();
        if self.next_msg.as_raw() == 0 {
            // 0 is no message (libsrt numbers from 1 and wraps to 1).
            self.next_msg = MsgNumber::new_truncate(1);
        }
        let ts = self.time_base.timestamp_from(at);
        let mut loc = PacketLocation::FIRST;
        loop {
            let last = data.len() <= self.max_payload;
            let payload = if last {
                loc |= PacketLocation::LAST;
                std::mem::take(&mut data)
            } else {
                data.split_to(self.max_payload)
            };
            if self.buffer.len() >= self.max_buffer {
                self.drop_front(1);
            }
            self.buffer.push_back(Entry {
                payload,
                ts,
                resent: None,
                msg,
                loc,
            });
            if last {
                break;
            }
            loc = PacketLocation::MIDDLE;
        }
    }

    /// A packet from the peer (guarded and parsed by the listener).
    pub fn handle_packet(&mut self, now: Instant, packet: Packet, from: SocketAddr) {
        if from != self.remote || packet.dest_sockid() != self.local_sockid {
            return;
        }
        self.last_heard = now;
        let Packet::Control(c) = packet else {
            return; // a player sends no media (the guard drops it earlier)
        };
        match c.control_type {
            ControlTypes::Ack(ack) => {
                if let Some(full) = ack.full_ack_seq_number() {
                    self.control.push_back(ControlTypes::Ack2(full));
                }
                if let Some(rtt) = ack.rtt() {
                    let us = i64::from(rtt.mean().as_micros())
                        + 4 * i64::from(rtt.variance().as_micros());
                    let us = us.clamp(
                        RESEND_GAP.as_micros() as i64,
                        MAX_RESEND_GAP.as_micros() as i64,
                    );
                    self.resend_gap = TimeSpan::from_micros(us as i32);
                }
                self.acknowledge(ack.ack_number());
            }
            ControlTypes::Nak(list) => {
                let mut gone: Option<(SeqNumber, SeqNumber)> = None;
                let ts_now = self.time_base.timestamp_from(now);
                let gap = self.resend_gap;
                for seq in list.into_iter_decompressed() {
                    if seq >= self.front + self.sent as u32 {
                        continue; // never sent: nothing to resend
                    }
                    if seq >= self.front {
                        let e = &self.buffer[(seq - self.front) as usize];
                        if e.resent.is_none_or(|at| ts_now - at >= gap) {
                            self.lost.insert(seq);
                        }
                        continue;
                    }
                    // No longer held (acknowledged or too late): tell the
                    // peer to stop waiting, one request per run.
                    gone = match gone {
                        Some((first, last)) if last + 1 == seq => Some((first, seq)),
                        Some(run) => {
                            self.request_drop(run);
                            Some((seq, seq))
                        }
                        None => Some((seq, seq)),
                    };
                }
                if let Some(run) = gone {
                    self.request_drop(run);
                }
            }
            ControlTypes::Shutdown => self.state = State::Closed,
            ControlTypes::Handshake(shake) => {
                if let Some(reply) = self.handshake.handle_handshake(shake) {
                    self.control.push_back(reply);
                }
            }
            _ => {}
        }
    }

    fn request_drop(&mut self, (first, last): (SeqNumber, SeqNumber)) {
        // Charged like a retransmission: NAKs naming many old runs cost
        // the budget, not the listener.
        if self.resend_budget == 0 {
            return;
        }
        self.resend_budget -= 1;
        self.control.push_back(ControlTypes::new_drop_request(
            MsgNumber::new_truncate(0),
            first..last + 1,
        ));
    }

    /// The peer has everything before `ack`.
    fn acknowledge(&mut self, ack: SeqNumber) {
        if ack <= self.front || ack > self.front + self.sent as u32 {
            return; // old, or names packets never sent
        }
        self.release_front((ack - self.front) as usize);
        if self.buffer.capacity() > 4 * BUFFER_KEEP && self.buffer.len() < BUFFER_KEEP {
            // A join's burst or a keyframe grew it; between keyframes a
            // caught-up player holds a few packets.
            self.buffer.shrink_to(BUFFER_KEEP);
        }
    }

    /// Give up the `n` oldest packets (too late, or the buffer is full).
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buffer.len());
        self.release_front(n);
        self.dropped += n as u64;
    }

    /// Forget the `n` (≤ len) oldest packets: acknowledged or given up.
    fn release_front(&mut self, n: usize) {
        self.buffer.drain(..n);
        self.sent = self.sent.saturating_sub(n);
        self.front += n as u32;
        let front = self.front;
        while self.lost.first().is_some_and(|s| *s < front) {
            self.lost.pop_first();
        }
    }

    /// Drop what can no longer arrive in time, whole messages at once.
    fn drop_too_late(&mut self, now: Instant) {
        let ts_now = self.time_base.timestamp_from(now);
        let late = |e: &Entry| ts_now - e.ts > self.latency_window;
        let Some(first) = self.buffer.front().filter(|e| late(e)) else {
            return;
        };
        let mut msg = first.msg;
        let mut n = 0;
        for e in &self.buffer {
            if late(e) {
                msg = e.msg;
            } else if e.msg != msg {
                break;
            }
            n += 1;
        }
        self.drop_front(n);
    }

    /// Run the timers; returns when they next need a turn.
    pub fn check_timers(&mut self, now: Instant) -> Instant {
        if self.state == State::Closed {
            return now + KEEPALIVE;
        }
        if now.saturating_duration_since(self.last_heard) > self.idle_timeout {
            self.control.push_back(ControlTypes::Shutdown);
            self.state = State::Closed;
            return now;
        }
        self.drop_too_late(now);
        if let State::Flushing(deadline) = self.state {
            if (self.buffer.is_empty() && self.lost.is_empty()) || now > deadline {
                self.control.push_back(ControlTypes::Shutdown);
                self.state = State::Closed;
                return now;
            }
        }
        if now.saturating_duration_since(self.last_sent) >= KEEPALIVE {
            self.control.push_back(ControlTypes::KeepAlive);
        }
        if self.has_packets_to_send() {
            return now;
        }
        let mut next = (self.last_sent + KEEPALIVE)
            .min(self.last_heard + self.idle_timeout + Duration::from_millis(1));
        if let Some(e) = self.buffer.front() {
            // Relative to now: timestamps wrap every 71.6 min, so an
            // absolute instant made from one would be wrong half the time.
            let left = (e.ts + self.latency_window) - self.time_base.timestamp_from(now);
            let left = Duration::from_micros(u64::try_from(left.as_micros()).unwrap_or(0));
            next = next.min(now + left + Duration::from_millis(1));
        }
        if let State::Flushing(deadline) = self.state {
            next = next.min(deadline + Duration::from_millis(1));
        }
        next
    }

    fn has_packets_to_send(&self) -> bool {
        !self.control.is_empty()
            || !self.lost.is_empty()
            || (self.sent < self.buffer.len() && self.sent < self.flow_window)
    }

    /// The next packet to send: control first, then retransmissions (while
    /// the budget lasts), then new data while the peer's flow window has
    /// room. Nothing but control once closed: the Shutdown is the last.
    pub fn next_packet(&mut self, now: Instant) -> Option<(Packet, SocketAddr)> {
        let packet = if let Some(control_type) = self.control.pop_front() {
            Packet::Control(ControlPacket {
                timestamp: self.time_base.timestamp_from(now),
                dest_sockid: self.remote_sockid,
                control_type,
            })
        } else if self.state == State::Closed {
            return None;
        } else if let Some(seq) = self.lost.pop_first() {
            if self.resend_budget == 0 {
                // Spent: the receiver asks again for what it still misses.
                self.lost.clear();
                return self.next_packet(now);
            }
            self.resend_budget -= 1;
            self.retransmitted += 1;
            let index = (seq - self.front) as usize;
            self.buffer[index].resent = Some(self.time_base.timestamp_from(now));
            self.data_packet(index, true)
        } else if self.sent < self.buffer.len() && self.sent < self.flow_window {
            self.sent += 1;
            self.resend_budget = (self.resend_budget + 1).min(RESEND_BURST);
            self.data_packet(self.sent - 1, false)
        } else {
            return None;
        };
        self.last_sent = now;
        Some((packet, self.remote))
    }

    fn data_packet(&self, index: usize, retransmitted: bool) -> Packet {
        let e = &self.buffer[index];
        Packet::Data(DataPacket {
            seq_number: self.front + index as u32,
            message_loc: e.loc,
            in_order_delivery: false,
            encryption: DataEncryption::None,
            retransmitted,
            message_number: e.msg,
            timestamp: e.ts,
            dest_sockid: self.remote_sockid,
            payload: e.payload.clone(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    /// Packets held: not acknowledged yet, or not sent yet.
    pub fn buffered(&self) -> u64 {
        self.buffer.len() as u64
    }

    /// Data packets sent again (on the peer's NAKs).
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    /// Packets given up: too late, or pushed out of a full buffer.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use srt_protocol::connection::ConnectionSettings;
    use srt_protocol::options::{LiveBandwidthMode, PacketCount, PacketSize};
    use srt_protocol::packet::{
        AckStatistics, Acknowledgement, CompressedLossList, FullAckSeqNumber, TimeSpan, TimeStamp,
    };
    use srt_protocol::protocol::time::Rtt;

    const PEER: SocketId = SocketId(77);
    const ME: SocketId = SocketId(5);

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    fn conn(start: Instant, flow: u64, buffer: u64) -> SendOnly {
        let settings = ConnectionSettings {
            remote: addr(),
            remote_sockid: PEER,
            local_sockid: ME,
            socket_start_time: start,
            rtt: Duration::ZERO,
            init_seq_num: SeqNumber::new_truncate(1000),
            max_packet_size: PacketSize(1316),
            max_flow_size: PacketCount(flow),
            send_tsbpd_latency: Duration::from_millis(20),
            recv_tsbpd_latency: Duration::from_millis(20),
            too_late_packet_drop: true,
            peer_idle_timeout: Duration::from_secs(5),
            recv_buffer_size: PacketCount(32),
            send_buffer_size: PacketCount(buffer),
            cipher: None,
            stream_id: None,
            bandwidth: LiveBandwidthMode::Unlimited,
            statistics_interval: Duration::from_secs(10),
        };
        SendOnly::new(
            Connection {
                settings,
                handshake: Handshake::Connector,
            },
            start,
        )
    }

    fn drain(c: &mut SendOnly, now: Instant) -> Vec<Packet> {
        std::iter::from_fn(|| {
            c.next_packet(now)
                .map(|(p, to)| (assert_eq!(to, addr()), p).1)
        })
        .collect()
    }

    fn data(p: &[Packet]) -> Vec<&DataPacket> {
        p.iter().filter_map(|p| p.data()).collect()
    }

    fn control(to: SocketId, control_type: ControlTypes) -> Packet {
        Packet::Control(ControlPacket {
            timestamp: TimeStamp::MIN,
            dest_sockid: to,
            control_type,
        })
    }

    fn full_ack(seq: u32, n: u32) -> Packet {
        full_ack_rtt(seq, n, 100, 50)
    }

    /// A full ACK reporting RTT `rtt_us` ± `var_us`.
    fn full_ack_rtt(seq: u32, n: u32, rtt_us: i32, var_us: i32) -> Packet {
        let stats = AckStatistics {
            rtt: Rtt::new(TimeSpan::from_micros(rtt_us), TimeSpan::from_micros(var_us)),
            buffer_available: 8192,
            packet_receive_rate: None,
            estimated_link_capacity: None,
            data_receive_rate: None,
        };
        control(
            ME,
            ControlTypes::Ack(Acknowledgement::Full(
                SeqNumber::new_truncate(seq),
                stats,
                FullAckSeqNumber::new(n).unwrap(),
            )),
        )
    }

    fn nak(seqs: &[u32]) -> Packet {
        let list =
            CompressedLossList::try_from_iter(seqs.iter().map(|s| SeqNumber::new_truncate(*s)));
        control(ME, ControlTypes::Nak(list.unwrap()))
    }

    #[test]
    fn messages_are_split_numbered_and_timestamped_from_the_connection_start() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        let at = t0 + Duration::from_millis(250);
        c.handle_data_input(at, Some((at, Bytes::from(vec![7u8; 1316 * 2 + 188]))));
        c.handle_data_input(at, Some((at, Bytes::from(vec![8u8; 1316]))));
        assert_eq!(c.check_timers(at), at, "packets wait to be sent");
        let out = drain(&mut c, at);
        let d = data(&out);
        assert_eq!(d.len(), 4);
        let seqs: Vec<u32> = d.iter().map(|p| p.seq_number.as_raw()).collect();
        assert_eq!(seqs, [1000, 1001, 1002, 1003]);
        assert_eq!(d[0].message_loc, PacketLocation::FIRST);
        assert_eq!(d[1].message_loc, PacketLocation::MIDDLE);
        assert_eq!(d[2].message_loc, PacketLocation::LAST);
        assert_eq!(d[2].payload.len(), 188);
        assert_eq!(d[3].message_loc, PacketLocation::ONLY);
        assert_eq!(d[0].message_number.as_raw(), 1, "message 0 means none");
        assert_eq!(d[0].message_number, d[2].message_number);
        assert_eq!(d[3].message_number.as_raw(), 2);
        assert!(d
            .iter()
            .all(|p| p.timestamp == TimeStamp::from_micros(250_000)));
        assert!(d.iter().all(|p| p.dest_sockid == PEER && !p.retransmitted));
        assert_eq!(c.buffered(), 4, "held until acknowledged");
    }

    #[test]
    fn acks_release_full_acks_get_an_ackack_and_naks_resend_once_each() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        for _ in 0..5 {
            c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 100]))));
        }
        c.check_timers(t0);
        assert_eq!(data(&drain(&mut c, t0)).len(), 5);
        c.handle_packet(t0, full_ack(1002, 9), addr());
        let out = drain(&mut c, t0);
        assert!(matches!(
            out[..],
            [Packet::Control(ControlPacket { control_type: ControlTypes::Ack2(n), dest_sockid: PEER, .. })]
                if n == FullAckSeqNumber::new(9).unwrap()
        ));
        assert_eq!(c.buffered(), 3);
        // A NAK for 1003 and 1004 (held), 1001 (acknowledged: a drop
        // request) and 1010 (never sent: ignored).
        c.handle_packet(t0, nak(&[1001, 1003, 1004, 1010]), addr());
        let out = drain(&mut c, t0);
        let resent: Vec<u32> = data(&out).iter().map(|p| p.seq_number.as_raw()).collect();
        assert_eq!(resent, [1003, 1004]);
        assert!(data(&out).iter().all(|p| p.retransmitted));
        assert!(out.iter().any(|p| matches!(
            p,
            Packet::Control(ControlPacket { control_type: ControlTypes::DropRequest { range, .. }, .. })
                if range.start().as_raw() == 1001 && range.end().as_raw() == 1001
        )));
        assert_eq!(c.retransmitted(), 2);
        // Acks out of range (old, or past what was sent) change nothing.
        c.handle_packet(t0, full_ack(900, 10), addr());
        c.handle_packet(t0, full_ack(2000, 11), addr());
        assert_eq!(c.buffered(), 3);
        c.handle_packet(t0, full_ack(1005, 12), addr());
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn packets_from_elsewhere_are_ignored() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 100]))));
        c.check_timers(t0);
        drain(&mut c, t0);
        c.handle_packet(t0, full_ack(1001, 1), "127.0.0.1:4001".parse().unwrap());
        c.handle_packet(t0, control(SocketId(6), ControlTypes::Shutdown), addr());
        assert_eq!(c.buffered(), 1);
        assert!(c.is_open());
        c.handle_packet(t0, control(ME, ControlTypes::Shutdown), addr());
        assert!(!c.is_open(), "the peer's Shutdown closes");
    }

    #[test]
    fn the_flow_window_and_the_buffer_bound_hold() {
        let t0 = Instant::now();
        let mut c = conn(t0, 3, 4);
        for _ in 0..6 {
            c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 10]))));
        }
        assert_eq!(c.buffered(), 4);
        assert_eq!(c.dropped(), 2, "a full buffer drops its oldest");
        c.check_timers(t0);
        let d: Vec<u32> = data(&drain(&mut c, t0))
            .iter()
            .map(|p| p.seq_number.as_raw())
            .collect();
        assert_eq!(d, [1002, 1003, 1004], "three unacknowledged at most");
        c.handle_packet(t0, full_ack(1004, 1), addr());
        let d: Vec<u32> = data(&drain(&mut c, t0))
            .iter()
            .map(|p| p.seq_number.as_raw())
            .collect();
        assert_eq!(d, [1005]);
    }

    #[test]
    fn too_late_messages_are_dropped_whole() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from(vec![1u8; 3000]))));
        let later = t0 + Duration::from_millis(500);
        c.handle_data_input(later, Some((later, Bytes::from_static(&[2; 10]))));
        c.check_timers(later);
        drain(&mut c, later);
        let next = c.check_timers(later);
        assert!(
            next <= t0 + Duration::from_millis(1001),
            "wakes for the drop"
        );
        let late = t0 + Duration::from_millis(1100);
        c.check_timers(late);
        assert_eq!(c.buffered(), 1);
        assert_eq!(c.dropped(), 3);
        // A NAK for a dropped packet asks the peer to drop it too.
        c.handle_packet(late, nak(&[1000, 1001]), addr());
        let out = drain(&mut c, late);
        assert!(data(&out).is_empty());
        assert!(matches!(
            out[..],
            [Packet::Control(ControlPacket {
                control_type: ControlTypes::DropRequest { .. },
                ..
            })]
        ));
    }

    #[test]
    fn a_close_flushes_then_shuts_down_and_silence_times_out() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 10]))));
        c.handle_data_input(t0, None);
        c.check_timers(t0);
        assert_eq!(data(&drain(&mut c, t0)).len(), 1);
        assert!(c.is_open(), "waits for the acknowledgement");
        c.handle_packet(t0, full_ack(1001, 1), addr());
        c.check_timers(t0);
        let out = drain(&mut c, t0);
        assert!(out.iter().any(|p| matches!(
            p,
            Packet::Control(ControlPacket {
                control_type: ControlTypes::Shutdown,
                ..
            })
        )));
        assert!(!c.is_open());

        // Unacknowledged: the flush gives up after twice the latency.
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 10]))));
        c.handle_data_input(t0, None);
        c.check_timers(t0);
        drain(&mut c, t0);
        c.check_timers(t0 + Duration::from_millis(30));
        assert!(c.is_open());
        c.check_timers(t0 + Duration::from_millis(41));
        assert!(!c.is_open());

        // A silent peer: keepalives, then Shutdown after the idle timeout.
        let mut c = conn(t0, 8192, 8192);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(c.check_timers(t0), t1, "next: the keepalive");
        c.check_timers(t1);
        let out = drain(&mut c, t1);
        assert!(matches!(
            out[..],
            [Packet::Control(ControlPacket {
                control_type: ControlTypes::KeepAlive,
                ..
            })]
        ));
        c.check_timers(t0 + Duration::from_millis(5001));
        assert!(!c.is_open());
        assert!(drain(&mut c, t0 + Duration::from_secs(6))
            .iter()
            .any(|p| matches!(
                p,
                Packet::Control(ControlPacket {
                    control_type: ControlTypes::Shutdown,
                    ..
                })
            )));
    }

    #[test]
    fn a_packet_is_resent_once_per_gap_and_naks_cannot_buy_more_than_the_stream() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        for _ in 0..2000 {
            c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 100]))));
        }
        c.check_timers(t0);
        assert_eq!(data(&drain(&mut c, t0)).len(), 2000);
        // The same NAK twice within the gap: one resend.
        c.handle_packet(t0, nak(&[1005]), addr());
        c.handle_packet(t0, nak(&[1005]), addr());
        assert_eq!(data(&drain(&mut c, t0)).len(), 1);
        let t1 = t0 + Duration::from_millis(5);
        c.handle_packet(t1, nak(&[1005]), addr());
        assert!(data(&drain(&mut c, t1)).is_empty(), "resent 5 ms ago");
        let t2 = t0 + RESEND_GAP;
        c.handle_packet(t2, nak(&[1005]), addr());
        assert_eq!(data(&drain(&mut c, t2)).len(), 1, "the gap passed");
        // A flood of NAKs naming everything: the burst, then nothing more
        // until new packets earn it.
        let mut resent = 0;
        for i in 0..10u32 {
            let t = t2 + RESEND_GAP * (i + 1);
            let list = CompressedLossList::try_from_range(
                SeqNumber::new_truncate(1000)..SeqNumber::new_truncate(3000),
            )
            .unwrap();
            c.handle_packet(t, control(ME, ControlTypes::Nak(list)), addr());
            resent += data(&drain(&mut c, t)).len();
        }
        assert_eq!(
            resent as u32,
            RESEND_BURST - 2,
            "the burst, less the two earlier resends"
        );
        let t = t2 + RESEND_GAP * 20;
        for _ in 0..10 {
            c.handle_data_input(t, Some((t, Bytes::from_static(&[1; 100]))));
        }
        c.check_timers(t);
        assert_eq!(data(&drain(&mut c, t)).len(), 10);
        let t = t + RESEND_GAP;
        c.handle_packet(
            t,
            nak(&[
                1100, 1101, 1102, 1103, 1104, 1105, 1106, 1107, 1108, 1109, 1110, 1111,
            ]),
            addr(),
        );
        assert_eq!(
            data(&drain(&mut c, t)).len(),
            10,
            "earned by ten new packets"
        );
        assert_eq!(c.retransmitted(), u64::from(RESEND_BURST) + 10);
    }

    #[test]
    fn nothing_follows_a_shutdown() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 10]))));
        c.check_timers(t0);
        drain(&mut c, t0);
        // Silent for the idle timeout while new data was handed in.
        let t = t0 + Duration::from_millis(5002);
        c.handle_data_input(t, Some((t, Bytes::from_static(&[2; 10]))));
        c.check_timers(t);
        let out = drain(&mut c, t);
        assert!(data(&out).is_empty(), "{out:?}");
        assert!(matches!(
            out.last(),
            Some(Packet::Control(ControlPacket {
                control_type: ControlTypes::Shutdown,
                ..
            }))
        ));
        assert!(!c.is_open());
        // A peer's Shutdown: its pending retransmissions are not sent.
        let mut c = conn(t0, 8192, 8192);
        c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 10]))));
        c.check_timers(t0);
        drain(&mut c, t0);
        c.handle_packet(t0, nak(&[1000]), addr());
        c.handle_packet(t0, control(ME, ControlTypes::Shutdown), addr());
        assert!(drain(&mut c, t0).is_empty());
    }

    #[test]
    fn timers_stay_ahead_of_now_on_a_connection_older_than_the_timestamp_wrap() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        // 36 min and 72 min in: past half and past all of the u32 µs range.
        for minutes in [36, 72, 100] {
            let t = t0 + Duration::from_secs(60 * minutes);
            c.handle_packet(t, control(ME, ControlTypes::KeepAlive), addr());
            c.handle_data_input(t, Some((t, Bytes::from_static(&[1; 10]))));
            c.check_timers(t);
            drain(&mut c, t);
            let next = c.check_timers(t);
            assert!(next > t, "{minutes} min: wakes at once");
            assert!(next <= t + Duration::from_millis(1001), "{minutes} min");
            assert_eq!(c.buffered(), 1, "{minutes} min: not dropped yet");
            let late = t + Duration::from_millis(1002);
            c.handle_packet(late, control(ME, ControlTypes::KeepAlive), addr());
            c.check_timers(late);
            assert_eq!(c.buffered(), 0, "{minutes} min: dropped once too late");
        }
    }

    #[test]
    fn the_resend_gap_follows_the_peers_rtt() {
        let t0 = Instant::now();
        let mut c = conn(t0, 8192, 8192);
        for _ in 0..4 {
            c.handle_data_input(t0, Some((t0, Bytes::from_static(&[1; 100]))));
        }
        c.check_timers(t0);
        drain(&mut c, t0);
        // RTT 60 ms ± 10 ms: a resend waits 100 ms before the next.
        c.handle_packet(t0, full_ack_rtt(1001, 1, 60_000, 10_000), addr());
        drain(&mut c, t0);
        let resends = |c: &mut SendOnly, t: Instant| {
            c.handle_packet(t, nak(&[1002]), addr());
            data(&drain(c, t)).len()
        };
        assert_eq!(resends(&mut c, t0), 1);
        assert_eq!(resends(&mut c, t0 + Duration::from_millis(60)), 0);
        assert_eq!(resends(&mut c, t0 + Duration::from_millis(100)), 1);
        // An absurd RTT is held to the bound.
        c.handle_packet(t0, full_ack_rtt(1002, 2, 9_000_000, 0), addr());
        let t = t0 + Duration::from_millis(100);
        assert_eq!(
            resends(&mut c, t + MAX_RESEND_GAP - Duration::from_millis(1)),
            0
        );
        assert_eq!(resends(&mut c, t + MAX_RESEND_GAP), 1);
    }
}
