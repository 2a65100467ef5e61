//! Batched UDP for the SRT listener. A turn's packets are serialized back
//! to back into one buffer and leave through `sendmmsg`: one system call
//! for many players, and a run of packets to one player of one size (all
//! but its last, which may be shorter) as a single UDP GSO message
//! (`UDP_SEGMENT`), which the kernel cuts into datagrams. Where the kernel
//! or the route lacks GSO, every packet goes as its own message. Datagrams
//! come in through `recvmmsg`, many per call.
//!
//! The buffers are reused from turn to turn: nothing is allocated per
//! packet once they have grown to a turn's size.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::SockAddr;
use srt_protocol::packet::Packet;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// `UDP_SEGMENT` (linux/udp.h); libc does not name it for glibc targets.
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS`
/// before 5.x; later kernels take more).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message: what fits a single UDP datagram (the
/// kernel refuses more) with room for IPv6's larger header.
const MAX_GSO_BYTES: usize = 65_000;
/// Buffer room kept between flushes; what a burst grew is given back.
const KEEP_WIRE: usize = 1 << 20;
const KEEP_MESSAGES: usize = 1024;
/// Messages per `sendmmsg` call (the kernel's `UIO_MAXIOV`).
const MAX_BATCH: usize = 1024;
/// Room for one `UDP_SEGMENT` control message, in u64 words so that it is
/// aligned as a `cmsghdr` must be.
const CMSG_WORDS: usize = 4;

/// Whether this kernel takes `UDP_SEGMENT` on a UDP socket.
pub fn gso_supported() -> bool {
    let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return false;
    };
    let size: libc::c_int = 1200;
    // SAFETY: a valid descriptor, a c_int option value and its length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// One message to send: `len` bytes at `start` of the wire buffer, cut
/// into `seg`-byte datagrams when it holds more than one packet.
#[derive(Debug, Clone, Copy)]
struct Message {
    to: SocketAddr,
    start: usize,
    len: usize,
    seg: usize,
    count: usize,
}

impl Message {
    /// Whether a packet of `len` bytes to `to` can join this message: the
    /// same peer, every datagram so far exactly `seg` bytes, this one no
    /// longer, and the message still within the kernel's bounds.
    fn takes(&self, to: SocketAddr, len: usize) -> bool {
        self.to == to
            && self.len == self.seg * self.count
            && len <= self.seg
            && self.count < MAX_SEGMENTS
            && self.len + len <= MAX_GSO_BYTES
    }
}

/// The packets of one turn, serialized and grouped for `sendmmsg`.
#[derive(Debug)]
pub struct Outgoing {
    wire: Vec<u8>,
    messages: Vec<Message>,
    gso: bool,
    /// Per-call scratch, kept for its capacity.
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; CMSG_WORDS]>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams and `sendmmsg` calls, for the metrics.
    pub datagrams: u64,
    pub calls: u64,
}

// SAFETY: the raw pointers in `iovs` and `headers` only ever point into
// this value's own buffers, are rebuilt before every call and never read
// across an await.
unsafe impl Send for Outgoing {}

impl Outgoing {
    /// `gso`: group runs to one peer into GSO messages (see
    /// [`gso_supported`]).
    pub fn new(gso: bool) -> Outgoing {
        Outgoing {
            wire: Vec::with_capacity(64 * 1024),
            messages: Vec::with_capacity(256),
            gso,
            addrs: Vec::new(),
            iovs: Vec::new(),
            cmsgs: Vec::new(),
            headers: Vec::new(),
            datagrams: 0,
            calls: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Serialized bytes waiting.
    pub fn bytes(&self) -> usize {
        self.wire.len()
    }

    /// Datagrams waiting to be sent.
    pub fn len(&self) -> usize {
        self.messages.iter().map(|m| m.count).sum()
    }

    /// Serialize `packet` for `to`, joining the previous message when it
    /// can be one more GSO segment of it.
    pub fn push(&mut self, packet: &Packet, to: SocketAddr) {
        let start = self.wire.len();
        packet.serialize(&mut self.wire);
        self.push_serialized(start, to);
    }

    fn push_serialized(&mut self, start: usize, to: SocketAddr) {
        let len = self.wire.len() - start;
        if len == 0 {
            return;
        }
        if self.gso {
            if let Some(last) = self.messages.last_mut() {
                if last.start + last.len == start && last.takes(to, len) {
                    last.len += len;
                    last.count += 1;
                    return;
                }
            }
        }
        self.messages.push(Message {
            to,
            start,
            len,
            seg: len,
            count: 1,
        });
    }

    /// Send everything queued on `socket`, then empty the queue. A peer
    /// the kernel refuses to send to costs that peer's packets only (SRT
    /// recovers or its timers give up on it); a GSO message the route
    /// refuses turns GSO off for good and goes out datagram by datagram.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut next = 0;
        while next < self.messages.len() {
            let end = (next + MAX_BATCH).min(self.messages.len());
            match socket.try_io(Interest::WRITABLE, || self.send_some(socket, next, end)) {
                Ok(sent) => next += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.writable().await {
                        debug!(error = %e, "srt socket not writable");
                        break;
                    }
                }
                Err(e) => {
                    // sendmmsg reports the first message's error when it
                    // sent none.
                    let m = self.messages[next];
                    if m.count > 1 {
                        // EIO: the device cannot checksum GSO; EINVAL can
                        // also be one peer's path MTU, so that costs only
                        // this message its batching.
                        if e.raw_os_error() == Some(libc::EIO) {
                            warn!(error = %e, "udp gso refused; sending one datagram per packet from now on");
                            self.gso = false;
                        }
                        self.send_one_by_one(socket, m).await;
                    } else {
                        debug!(peer = %m.to, error = %e, "srt send failed");
                    }
                    next += 1;
                }
            }
        }
        self.wire.clear();
        self.messages.clear();
        if self.wire.capacity() > KEEP_WIRE {
            self.wire.shrink_to(KEEP_WIRE);
        }
        if self.messages.capacity() > KEEP_MESSAGES {
            self.messages.shrink_to(KEEP_MESSAGES);
            self.addrs.shrink_to(KEEP_MESSAGES);
            self.iovs.shrink_to(KEEP_MESSAGES);
            self.cmsgs.shrink_to(KEEP_MESSAGES);
            self.headers.shrink_to(KEEP_MESSAGES);
        }
    }

    /// One message's datagrams, one `send_to` each.
    async fn send_one_by_one(&mut self, socket: &UdpSocket, m: Message) {
        let bytes = &self.wire[m.start..m.start + m.len];
        for d in bytes.chunks(m.seg) {
            self.datagrams += 1;
            self.calls += 1;
            if let Err(e) = socket.send_to(d, m.to).await {
                debug!(peer = %m.to, error = %e, "srt send failed");
                return;
            }
        }
    }

    /// One `sendmmsg` for messages `from..end`; how many the kernel took.
    fn send_some(&mut self, socket: &UdpSocket, from: usize, end: usize) -> io::Result<usize> {
        let n = end - from;
        self.addrs.clear();
        self.iovs.clear();
        self.headers.clear();
        self.cmsgs.clear();
        self.cmsgs.resize(n, [0; CMSG_WORDS]);
        for m in &self.messages[from..end] {
            self.addrs.push(SockAddr::from(m.to));
            self.iovs.push(libc::iovec {
                // SAFETY: in bounds of `wire`, which is not touched until
                // the call returns.
                iov_base: unsafe { self.wire.as_mut_ptr().add(m.start) }.cast(),
                iov_len: m.len,
            });
        }
        for (i, m) in self.messages[from..end].iter().enumerate() {
            // SAFETY: mmsghdr is plain data; zeroed is its empty value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.addrs[i].len();
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if m.count > 1 {
                let space = self.cmsgs[i].as_mut_ptr().cast::<libc::c_void>();
                h.msg_hdr.msg_control = space;
                // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits CMSG_WORDS
                // u64s; the header and data are written inside it.
                unsafe {
                    h.msg_hdr.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.seg as u16);
                }
            }
            self.headers.push(h);
        }
        // SAFETY: `headers` holds `n` initialised messages whose pointers
        // reach into `addrs`, `iovs`, `cmsgs` and `wire`, all alive and
        // unmoved for the duration of the call.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        self.calls += 1;
        let err = (rc < 0).then(io::Error::last_os_error);
        // No pointer outlives the call.
        self.iovs.clear();
        self.headers.clear();
        if let Some(e) = err {
            return Err(e);
        }
        let sent = rc as usize;
        self.datagrams += self.messages[from..from + sent]
            .iter()
            .map(|m| m.count as u64)
            .sum::<u64>();
        Ok(sent)
    }
}

/// Size of one receive buffer: an SRT packet is at most 1500 bytes; what
/// is longer is cut (the guard then drops it).
pub const RECV_BUF: usize = 2048;

/// Buffers for `recvmmsg`.
pub struct Incoming {
    bufs: Vec<[u8; RECV_BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: as for `Outgoing`: the pointers only reach this value's own
// buffers and are rebuilt before each call.
unsafe impl Send for Incoming {}

impl Incoming {
    /// Room for `batch` datagrams per call.
    pub fn new(batch: usize) -> Incoming {
        let batch = batch.max(1);
        Incoming {
            bufs: vec![[0; RECV_BUF]; batch],
            // SAFETY: sockaddr_storage is plain data.
            addrs: vec![unsafe { std::mem::zeroed() }; batch],
            iovs: Vec::with_capacity(batch),
            headers: Vec::with_capacity(batch),
        }
    }

    /// Receive what is waiting on `socket` (at most one batch) without
    /// waiting, whatever tokio last saw of its readiness; hand each
    /// datagram to `each`. `Ok(0)`: nothing was waiting.
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        mut each: impl FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        let got = match self.recv_raw(socket) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Once more through tokio: a WouldBlock there clears the
                // readiness it saw, so the next readable() waits for a new
                // datagram, and one that came in between is read now
                // rather than its readiness cleared unseen.
                match socket.try_io(Interest::READABLE, || self.recv_raw(socket)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    other => other?,
                }
            }
            other => other?,
        };
        for i in 0..got {
            let h = &self.headers[i];
            // Longer than any SRT packet: the guard would drop it anyway.
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let len = (h.msg_len as usize).min(RECV_BUF);
            let Some(from) = socket_addr(&self.addrs[i]) else {
                continue;
            };
            each(&self.bufs[i][..len], from);
        }
        self.iovs.clear();
        self.headers.clear();
        Ok(got)
    }

    /// One `recvmmsg` into the buffers; how many datagrams came.
    fn recv_raw(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        self.iovs.clear();
        self.headers.clear();
        for buf in self.bufs.iter_mut() {
            self.iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            });
        }
        for i in 0..n {
            // SAFETY: plain data.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
        // SAFETY: `n` messages pointing into `bufs`, `addrs` and `iovs`,
        // alive and unmoved during the call; MSG_DONTWAIT never blocks.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// The address the kernel wrote into `a` (IPv4 or IPv6).
fn socket_addr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match libc::c_int::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use srt_protocol::packet::{
        DataEncryption, DataPacket, MsgNumber, PacketLocation, SeqNumber, SocketId, TimeStamp,
    };

    fn data(seq: u32, len: usize) -> Packet {
        Packet::Data(DataPacket {
            seq_number: SeqNumber::new_truncate(seq),
            message_loc: PacketLocation::ONLY,
            in_order_delivery: false,
            encryption: DataEncryption::None,
            retransmitted: false,
            message_number: MsgNumber::new_truncate(seq),
            timestamp: TimeStamp::from_micros(seq),
            dest_sockid: SocketId(7),
            payload: bytes::Bytes::from(vec![seq as u8; len]),
        })
    }

    fn recv_all(rx: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut incoming = Incoming::new(8);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want && std::time::Instant::now() < deadline {
            incoming
                .recv(rx, |d, from| got.push((d.to_vec(), from)))
                .expect("recvmmsg");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn runs_to_one_peer_group_and_peers_and_sizes_split() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let mut out = Outgoing::new(true);
        for seq in 0..3 {
            out.push(&data(seq, 1316), a);
        }
        out.push(&data(3, 500), a); // a shorter last segment joins
        out.push(&data(4, 1316), a); // after a short one: a new message
        out.push(&data(5, 1316), b);
        out.push(&data(6, 1400), b); // longer than the run: a new message
        let counts: Vec<usize> = out.messages.iter().map(|m| m.count).collect();
        assert_eq!(counts, [4, 1, 1, 1]);
        assert_eq!(out.len(), 7);
        let mut plain = Outgoing::new(false);
        for seq in 0..3 {
            plain.push(&data(seq, 1316), a);
        }
        assert_eq!(plain.messages.len(), 3);
        // Bounded by the kernel's segment count and datagram size.
        let mut long = Outgoing::new(true);
        for seq in 0..200 {
            long.push(&data(seq, 1316), a);
        }
        assert!(long
            .messages
            .iter()
            .all(|m| m.count <= MAX_SEGMENTS && m.len <= MAX_GSO_BYTES && m.len == m.count * 1332));
        assert_eq!(long.len(), 200);
    }

    #[tokio::test]
    async fn every_packet_arrives_as_its_own_datagram_in_order_with_and_without_gso() {
        for gso in [gso_supported(), false] {
            let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let rx1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let rx2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (to1, to2) = (rx1.local_addr().unwrap(), rx2.local_addr().unwrap());
            let mut out = Outgoing::new(gso);
            let mut want1 = Vec::new();
            let mut want2 = Vec::new();
            for seq in 0..100u32 {
                let len = if seq % 10 == 9 { 300 } else { 1316 };
                let p = data(seq, len);
                let mut wire = Vec::new();
                p.serialize(&mut wire);
                if seq % 3 == 0 {
                    out.push(&p, to2);
                    want2.push(wire);
                } else {
                    out.push(&p, to1);
                    want1.push(wire);
                }
            }
            out.flush(&tx).await;
            assert!(out.is_empty());
            assert_eq!(out.datagrams, 100, "gso {gso}");
            if gso {
                assert!(out.calls < 10, "gso {gso}: {} calls", out.calls);
            }
            let from = tx.local_addr().unwrap();
            for (rx, want) in [(&rx1, want1), (&rx2, want2)] {
                let got = recv_all(rx, want.len());
                assert!(got.iter().all(|(_, f)| *f == from));
                let got: Vec<Vec<u8>> = got.into_iter().map(|(d, _)| d).collect();
                assert_eq!(got, want, "gso {gso}");
            }
        }
    }

    #[tokio::test]
    async fn a_burst_gives_its_buffers_back_after_the_flush() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = Outgoing::new(gso_supported());
        for seq in 0..3000 {
            // Alternating sizes: one message per packet.
            out.push(&data(seq, if seq % 2 == 0 { 1316 } else { 1000 }), to);
        }
        assert!(out.bytes() > 3 * KEEP_WIRE);
        out.flush(&tx).await;
        assert_eq!(out.datagrams, 3000);
        assert_eq!(out.bytes(), 0);
        assert!(out.wire.capacity() <= KEEP_WIRE);
        assert!(out.messages.capacity() <= KEEP_MESSAGES);
        assert!(out.headers.capacity() <= KEEP_MESSAGES);
    }

    #[tokio::test]
    async fn an_unreachable_peer_costs_only_its_own_packets() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut out = Outgoing::new(gso_supported());
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        out.push(&data(1, 1316), v6);
        out.push(&data(2, 1316), rx.local_addr().unwrap());
        out.push(&data(3, 1316), v6);
        out.push(&data(4, 1316), rx.local_addr().unwrap());
        out.flush(&tx).await;
        assert_eq!(recv_all(&rx, 2).len(), 2);
    }
}
