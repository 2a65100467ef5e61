//! Pre-validation of SRT datagrams before srt-protocol 0.4.4 sees them.
//!
//! srt-protocol panics (`unimplemented!`, `todo!`, asserts, buffer
//! under-reads) or loops for seconds on some well-formed-looking inputs; see
//! docs/srt-sans-io.md §2 for every site. [`check`] is pure and total: it
//! lets through only what a pull player legitimately sends and what
//! srt-protocol handles, drops the rest, and asks for a handshake rejection
//! where the caller wants a feature we do not offer (congestion control
//! other than live, packet filters, groups) or sent a too-small MSS.

use srt_protocol::packet::{CoreRejectReason, RejectReason, ServerRejectReason};

/// Largest number of packets one NAK may name (and the send buffer size
/// the listener uses): more could never be in our send buffer, and
/// srt-protocol walks every sequence number of a range one by one.
pub const MAX_LOSS: u32 = 8192;

/// Smallest MSS we accept: one 1316-byte TS chunk. libsrt announces 1500;
/// srt-protocol's own caller (srt-rs, srt-tokio) announces 1316, and
/// srt-protocol caps the payload at min(1316, MSS), so 1316 still carries a
/// whole chunk per packet. With less, srt-protocol splits chunks (MSS 100)
/// or hangs (MSS 0) on the first one.
pub const MIN_MSS: u32 = 1316;

const HEADER: usize = 16;
const HS_BODY: usize = 48;

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Safe to parse and hand to srt-protocol.
    Pass,
    /// Ignore it; the reason is for logs and metrics.
    Drop(&'static str),
    /// A handshake to refuse with this reason. Parse it only after
    /// [`strip_config_extensions`].
    Reject(RejectReason),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Classify one datagram received on the listener socket.
pub fn check(d: &[u8]) -> Verdict {
    if d.len() < HEADER {
        return Verdict::Drop("shorter than an SRT header");
    }
    if d[0] & 0x80 == 0 {
        // Pull players never send media.
        return Verdict::Drop("data packet from a pull player");
    }
    let ty = u16::from_be_bytes([d[0], d[1]]) & 0x7FFF;
    let subtype = u16::from_be_bytes([d[2], d[3]]);
    let add_info = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    let body = &d[HEADER..];
    match ty {
        0 => check_handshake(body),
        1 | 5 => Verdict::Pass,
        // libsrt's ACK numbers stay below 2^31; srt-protocol adds to them
        // without wrapping (a panic in builds with overflow checks).
        2 | 6 if add_info >= 0x8000_0000 => Verdict::Drop("ACK number out of range"),
        // srt-protocol computes its retransmission timeout from the RTT and
        // RTT variance a peer reports in full ACKs with unchecked i32
        // arithmetic (packet/time.rs): absurd values overflow it. libsrt
        // never reports more than seconds.
        2 if ack_rtt_implausible(body) => Verdict::Drop("implausible ACK RTT"),
        2 | 6 => Verdict::Pass,
        3 => check_loss_list(body),
        // srt-protocol reaches an unfinished `todo` macro on CongestionWarning and PeerError.
        4 => Verdict::Drop("congestion warning"),
        8 => Verdict::Drop("peer error"),
        // We never receive data, so there is nothing to drop.
        7 => Verdict::Drop("drop request"),
        0x7FFF => match subtype {
            3 | 4 => check_key_material(body),
            _ => Verdict::Drop("SRT extension control packet"),
        },
        _ => Verdict::Drop("unknown control type"),
    }
}

/// Classify a datagram addressed to a publishing connection (its socket
/// id is one of our receivers): its media (data packets) and its drop
/// requests pass besides what [`check`] lets through. srt-protocol's
/// receiver drops `start..=end` by buffer index (a reversed range panics,
/// a huge one is walked), so a drop request must name an ordered range
/// of at most [`MAX_LOSS`] packets (SRT RFC draft §3.2.9).
pub fn check_publisher(d: &[u8]) -> Verdict {
    if d.len() < HEADER {
        return Verdict::Drop("shorter than an SRT header");
    }
    if d[0] & 0x80 == 0 {
        return check_publisher_data(d);
    }
    if u16::from_be_bytes([d[0], d[1]]) & 0x7FFF != 7 {
        return check(d);
    }
    let body = &d[HEADER..];
    match (be32(body, 0), be32(body, 4)) {
        (Some(start), Some(end))
            if body.len() == 8 && start <= end && end < 0x8000_0000 && end - start < MAX_LOSS =>
        {
            Verdict::Pass
        }
        _ => Verdict::Drop("drop request range"),
    }
}

/// Largest SRT payload in live mode (SRTO_PAYLOADSIZE's maximum): 1500
/// bytes of Ethernet MTU less the IP, UDP and SRT headers.
pub const MAX_PAYLOAD: usize = 1456;

/// A publisher's data packet: live mode, so a message of its own (PP = 11,
/// RFC draft §3.1) of at most [`MAX_PAYLOAD`] bytes. Anything else
/// (multi-packet messages that srt-protocol would reassemble into up to
/// megabytes, empty payloads) is not a live publisher and costs the one
/// UDP loop for nothing. Payloads need not be whole TS packets:
/// srt-live-transmit sends what each read of a pipe returned.
fn check_publisher_data(d: &[u8]) -> Verdict {
    let payload = d.len() - HEADER;
    if d[4] >> 6 != 0b11 {
        return Verdict::Drop("publisher data not a single-packet message");
    }
    if payload == 0 || payload > MAX_PAYLOAD {
        return Verdict::Drop("publisher data empty or larger than a live payload");
    }
    Verdict::Pass
}

/// Most RTT or RTT variance (µs) a full ACK may report.
const MAX_ACK_RTT_US: i32 = 10_000_000;

/// A full ACK (body: last acked sequence, RTT, RTT variance, ...) whose RTT
/// fields are negative or longer than [`MAX_ACK_RTT_US`].
fn ack_rtt_implausible(body: &[u8]) -> bool {
    [4, 8]
        .iter()
        .any(|&at| be32(body, at).is_some_and(|v| !(0..=MAX_ACK_RTT_US).contains(&(v as i32))))
}

/// KMREQ/KMRSP: at least one key must be announced (srt-protocol asserts
/// on an empty wrap otherwise).
fn check_key_material(km: &[u8]) -> Verdict {
    match km.get(3) {
        Some(kf) if kf & 0x3 != 0 => Verdict::Pass,
        _ => Verdict::Drop("key material without keys"),
    }
}

/// The bytes srt-protocol's KM parser consumes: a 16-byte header, the
/// salt, one wrapped key per key-flag bit, and 8 bytes of wrap overhead.
fn km_wire_len(km: &[u8]) -> Option<usize> {
    let keys = (km.get(3)? & 0x3).count_ones() as usize;
    let salt = usize::from(*km.get(14)?) * 4;
    let key = usize::from(*km.get(15)?) * 4;
    Some(16 + salt + key * keys + 8)
}

/// NAK loss list: complete `start|0x80000000, end` pairs with
/// `start < end < 2^31` (srt-protocol walks `start..=end` in plain u32
/// arithmetic, so a reversed, empty or wrapping range is a 2^32 walk),
/// spans and total bounded by what the send buffer can hold.
fn check_loss_list(body: &[u8]) -> Verdict {
    if body.is_empty() || body.len() % 4 != 0 {
        return Verdict::Drop("NAK length");
    }
    let mut words = body
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let mut total: u64 = 0;
    while let Some(w) = words.next() {
        if w & 0x8000_0000 == 0 {
            total += 1;
        } else {
            let start = w & 0x7FFF_FFFF;
            let Some(end) = words.next() else {
                return Verdict::Drop("NAK range without an end");
            };
            if end & 0x8000_0000 != 0 || end <= start {
                return Verdict::Drop("NAK range reversed or wrapping");
            }
            let span = end - start;
            if span >= MAX_LOSS {
                return Verdict::Drop("NAK range too long");
            }
            total += u64::from(span) + 1;
        }
        if total > u64::from(MAX_LOSS) {
            return Verdict::Drop("NAK names too many packets");
        }
    }
    Verdict::Pass
}

/// Handshake: HSv5 extensions walked the way srt-protocol parses them
/// (`while remaining > 4`), each one checked.
fn check_handshake(body: &[u8]) -> Verdict {
    if body.len() < HS_BODY {
        return Verdict::Drop("short handshake");
    }
    let (Some(version), Some(mss), Some(shake)) = (be32(body, 0), be32(body, 12), be32(body, 20))
    else {
        return Verdict::Drop("short handshake");
    };
    let shake = shake as i32;
    // Only HSv5 non-induction handshakes carry extensions (v4 carries none,
    // an induction's are not parsed).
    if version != 5 || shake == 1 {
        return Verdict::Pass;
    }
    let mut reject = None;
    let mut ext = &body[HS_BODY..];
    while ext.len() > 4 {
        let (Some(et), Some(words)) = (be16(ext, 0), be16(ext, 2)) else {
            return Verdict::Drop("short handshake extension");
        };
        let len = usize::from(words) * 4;
        let Some(eb) = ext.get(4..4 + len) else {
            return Verdict::Drop("handshake extension past the end");
        };
        // srt-protocol advances past an extension by what its parser
        // consumed, not by the declared length: the leftover would be
        // parsed as another extension. Demand exact lengths (libsrt's).
        match et {
            1 | 2 if len != 12 => return Verdict::Drop("HSREQ/HSRSP length"),
            1 | 2 => {}
            3 | 4 => {
                if let Verdict::Drop(why) = check_key_material(eb) {
                    return Verdict::Drop(why);
                }
                if km_wire_len(eb) != Some(len) {
                    return Verdict::Drop("key material length");
                }
            }
            5 if len == 0 => return Verdict::Drop("empty streamid extension"),
            5 => {}
            6 => {
                reject.get_or_insert(RejectReason::Core(CoreRejectReason::Congestion));
            }
            7 => {
                reject.get_or_insert(RejectReason::Core(CoreRejectReason::Filter));
            }
            8 => {
                reject.get_or_insert(RejectReason::Core(CoreRejectReason::Group));
            }
            _ => return Verdict::Drop("unknown handshake extension"),
        }
        ext = &ext[4 + len..];
    }
    if let Some(r) = reject {
        return Verdict::Reject(r);
    }
    if shake == -1 && mss < MIN_MSS {
        return Verdict::Reject(RejectReason::Server(ServerRejectReason::BadRequest));
    }
    Verdict::Pass
}

/// A copy of a handshake without extensions 6, 7 and 8 (congestion, filter,
/// group), which srt-protocol cannot parse, so a `Reject` verdict can still
/// go through the normal handshake path to build the rejection. Call only
/// on a datagram [`check`] did not drop.
pub fn strip_config_extensions(d: &[u8]) -> Vec<u8> {
    let head = HEADER + HS_BODY;
    if d.len() < head {
        return d.to_vec();
    }
    let mut out = d[..head].to_vec();
    let mut ext = &d[head..];
    while ext.len() > 4 {
        let len = usize::from(u16::from_be_bytes([ext[2], ext[3]])) * 4;
        let Some(whole) = ext.get(..4 + len) else {
            break;
        };
        if !matches!(u16::from_be_bytes([ext[0], ext[1]]), 6..=8) {
            out.extend_from_slice(whole);
        }
        ext = &ext[4 + len..];
    }
    out.extend_from_slice(ext);
    out
}

/// Parse a datagram the way the listener does, catching a panic.
/// `None`: srt-protocol panicked.
pub fn parse_caught(
    d: &[u8],
    is_ipv6: bool,
) -> Option<Result<srt_protocol::packet::Packet, srt_protocol::packet::PacketParseError>> {
    std::panic::catch_unwind(|| {
        srt_protocol::packet::Packet::parse(&mut std::io::Cursor::new(d), is_ipv6)
    })
    .ok()
}

/// Fuzz entry point: `check` never panics, and whatever it lets through
/// (after stripping, for rejections) parses without a panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let bytes = match check(data) {
        Verdict::Drop(_) => return,
        Verdict::Pass => data.to_vec(),
        Verdict::Reject(_) => strip_config_extensions(data),
    };
    for v6 in [false, true] {
        assert!(
            parse_caught(&bytes, v6).is_some(),
            "srt-protocol panicked parsing a datagram the guard passed: {data:02x?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_with_absurd_rtt_are_dropped() {
        let ack = |rtt: u32, var: u32| {
            let mut d = vec![0x80, 0x02, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
            d.extend(5u32.to_be_bytes());
            d.extend(rtt.to_be_bytes());
            d.extend(var.to_be_bytes());
            d.extend([0u8; 16]);
            d
        };
        assert_eq!(check(&ack(20_000, 5_000)), Verdict::Pass);
        assert_eq!(
            check(&ack(0x7FFF_FFFF, 5_000)),
            Verdict::Drop("implausible ACK RTT")
        );
        assert_eq!(
            check(&ack(20_000, 0xFFFF_FFFF)),
            Verdict::Drop("implausible ACK RTT")
        );
        // A light ACK carries no RTT.
        let light = vec![
            0x80, 0x02, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 5,
        ];
        assert_eq!(check(&light), Verdict::Pass);
    }

    #[test]
    fn publishers_may_send_media_and_ordered_drop_requests_only() {
        // A solo message (PP = 11) of 7 TS packets.
        let data = |pp: u8, payload: usize| {
            let mut h = vec![0u8; 16];
            h[4] = pp << 6;
            [h, vec![0x47; payload]].concat()
        };
        assert_eq!(
            check(&data(3, 1316)),
            Verdict::Drop("data packet from a pull player")
        );
        assert_eq!(check_publisher(&data(3, 1316)), Verdict::Pass);
        assert_eq!(check_publisher(&data(3, 188)), Verdict::Pass);
        // Parts of a multi-packet message; empty payloads or larger than a
        // live payload.
        for pp in [0, 1, 2] {
            assert_eq!(
                check_publisher(&data(pp, 1316)),
                Verdict::Drop("publisher data not a single-packet message")
            );
        }
        assert_eq!(check_publisher(&data(3, 1000)), Verdict::Pass);
        for n in [0, 1457, 1504] {
            assert_eq!(
                check_publisher(&data(3, n)),
                Verdict::Drop("publisher data empty or larger than a live payload")
            );
        }
        let data = data(3, 1316);
        assert_eq!(
            check_publisher(&data[..15]),
            Verdict::Drop("shorter than an SRT header")
        );
        let drop_req = |a: u32, b: u32| {
            let body = [a.to_be_bytes(), b.to_be_bytes()].concat();
            ctrl(7, 0, 1, &body)
        };
        assert_eq!(check_publisher(&drop_req(10, 20)), Verdict::Pass);
        assert_eq!(check_publisher(&drop_req(10, 10)), Verdict::Pass);
        for bad in [
            drop_req(20, 10),
            drop_req(0, MAX_LOSS),
            drop_req(5, 0x8000_0000),
            ctrl(7, 0, 1, &[0; 4]),
        ] {
            assert_eq!(check_publisher(&bad), Verdict::Drop("drop request range"));
        }
        // Everything else as for a player.
        assert_eq!(
            check_publisher(&ctrl(4, 0, 0, &[0; 4])),
            Verdict::Drop("congestion warning")
        );
    }

    fn ctrl(ty: u16, subtype: u16, add: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((0x8000 | ty).to_be_bytes());
        v.extend(subtype.to_be_bytes());
        v.extend(add.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend(9u32.to_be_bytes());
        v.extend(body);
        v
    }

    fn hs(version: i32, shake: i32, mss: u32, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(version.to_be_bytes());
        b.extend([0, 0, 0, 7]);
        b.extend(12345u32.to_be_bytes());
        b.extend(mss.to_be_bytes());
        b.extend(8192u32.to_be_bytes());
        b.extend(shake.to_be_bytes());
        b.extend(77u32.to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.extend([127, 0, 0, 1]);
        b.extend([0u8; 12]);
        for (ty, body) in exts {
            b.extend(ty.to_be_bytes());
            b.extend(((body.len() / 4) as u16).to_be_bytes());
            b.extend(body);
        }
        ctrl(0, 0, 0, &b)
    }

    fn hsreq() -> (u16, Vec<u8>) {
        let mut v = Vec::new();
        v.extend(0x0001_0501u32.to_be_bytes());
        v.extend(0xBFu32.to_be_bytes());
        v.extend([0, 120, 0, 120]);
        (1, v)
    }

    fn sid(s: &str) -> (u16, Vec<u8>) {
        let mut v = Vec::new();
        for c in s.as_bytes().chunks(4) {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            w.reverse();
            v.extend(w);
        }
        (5, v)
    }

    fn km(kf: u8) -> Vec<u8> {
        let mut v = vec![0x12, 0x20, 0x29, kf];
        v.extend(0u32.to_be_bytes());
        v.extend([2, 0, 2, 0]);
        v.extend([0, 0, 4, 4]);
        v.extend([0x55; 16]);
        v.extend([0xAA; 24]);
        v
    }

    fn nak(words: &[u32]) -> Vec<u8> {
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        ctrl(3, 0, 0, &body)
    }

    fn dropped(d: &[u8]) -> bool {
        matches!(check(d), Verdict::Drop(_))
    }

    #[test]
    fn a_normal_caller_handshake_passes() {
        assert_eq!(check(&hs(4, 1, 1500, &[])), Verdict::Pass);
        let concl = hs(5, -1, 1500, &[hsreq(), sid("live/cam1"), (3, km(1))]);
        assert_eq!(check(&concl), Verdict::Pass);
        assert!(parse_caught(&concl, false).unwrap().is_ok());
    }

    #[test]
    fn short_and_data_packets_are_dropped() {
        assert!(dropped(&[]));
        assert!(dropped(&[0x80; 15]));
        let mut data = vec![0u8; 16 + 188];
        data[0] = 0x01;
        assert!(dropped(&data));
    }

    #[test]
    fn only_the_control_types_a_player_sends_pass() {
        for ty in [1u16, 2, 5, 6] {
            assert_eq!(check(&ctrl(ty, 0, 1, &[0; 16])), Verdict::Pass, "{ty}");
        }
        for ty in [4u16, 7, 8, 9, 0x100, 0x7FFE] {
            assert!(dropped(&ctrl(ty, 0, 0, &[0; 8])), "{ty}");
        }
    }

    #[test]
    fn ack_numbers_past_2_31_are_dropped() {
        assert!(dropped(&ctrl(2, 0, 0xFFFF_FFFF, &[0; 16])));
        assert!(dropped(&ctrl(6, 0, 0x8000_0000, &[0; 4])));
    }

    #[test]
    fn srt_extension_control_only_key_material_with_keys() {
        for sub in [0u16, 1, 2, 5, 6, 7, 8, 9] {
            assert!(dropped(&ctrl(0x7FFF, sub, 0, &[])), "{sub}");
            assert!(dropped(&ctrl(0x7FFF, sub, 0, b"abcdabcd")), "{sub}");
        }
        assert_eq!(check(&ctrl(0x7FFF, 3, 0, &km(1))), Verdict::Pass);
        assert_eq!(check(&ctrl(0x7FFF, 4, 0, &km(2))), Verdict::Pass);
        assert!(dropped(&ctrl(0x7FFF, 3, 0, &km(0))));
        assert!(dropped(&ctrl(0x7FFF, 3, 0, &[0x12, 0x20])));
    }

    #[test]
    fn loss_lists_must_be_complete_ordered_and_bounded() {
        assert_eq!(check(&nak(&[5])), Verdict::Pass);
        assert_eq!(check(&nak(&[0x8000_0000 | 100, 110, 200])), Verdict::Pass);
        assert!(dropped(&nak(&[])));
        assert!(dropped(&ctrl(3, 0, 0, &[0, 0, 1])));
        // Unterminated range (panics in srt-protocol).
        assert!(dropped(&nak(&[0x8000_0000 | 110])));
        assert!(dropped(&nak(&[5, 0x8000_0000 | 110])));
        // Reversed (a 2^32 walk), empty and wrapping ranges.
        assert!(dropped(&nak(&[0x8000_0000 | 110, 100])));
        assert!(dropped(&nak(&[0x8000_0000 | 110, 110])));
        assert!(dropped(&nak(&[0x8000_0000 | 0x7FFF_FFF0, 5])));
        assert!(dropped(&nak(&[0x8000_0000 | 1, 0x8000_0005])));
        // Huge spans and totals.
        assert!(dropped(&nak(&[0x8000_0000, 0x7FFF_FFFF])));
        assert!(dropped(&nak(&[0x8000_0000, MAX_LOSS])));
        assert_eq!(check(&nak(&[0x8000_0000, MAX_LOSS - 2])), Verdict::Pass);
        assert!(dropped(&nak(&[
            0x8000_0000,
            MAX_LOSS - 2,
            0x8000_0000 | 20_000,
            20_010
        ])));
    }

    #[test]
    fn handshake_extensions_are_walked() {
        // Streamid of length 0 (parse under-read).
        assert!(dropped(&hs(5, -1, 1500, &[sid(""), hsreq()])));
        // Reject extension, unknown extensions.
        assert!(dropped(&hs(5, -1, 1500, &[(0, vec![0; 4])])));
        assert!(dropped(&hs(5, -1, 1500, &[(9, vec![0; 4])])));
        // Key material without keys (aes unwrap assert).
        assert!(dropped(&hs(5, -1, 1500, &[hsreq(), (3, km(0))])));
        // Length past the end.
        let mut d = hs(5, -1, 1500, &[hsreq()]);
        d.extend([0, 5, 0, 9, 1, 2, 3, 4]);
        assert!(dropped(&d));
        // Trailing bytes of 4 or fewer are ignored, as srt-protocol does.
        let mut d = hs(5, -1, 1500, &[hsreq()]);
        d.extend([0, 5, 0, 9]);
        assert_eq!(check(&d), Verdict::Pass);
        // Extensions longer than their parser reads: the rest would be
        // parsed as another extension (found by the fuzzer).
        let mut long_hsreq = hsreq();
        long_hsreq.1.extend([0, 6, 0, 1, b'e', b'l', b'i', b'f']);
        assert!(dropped(&hs(5, -1, 1500, &[long_hsreq, sid("a/b")])));
        let mut long_km = km(1);
        long_km.extend([0, 6, 0, 0]);
        assert!(dropped(&hs(5, -1, 1500, &[hsreq(), (3, long_km)])));
        // An induction's extensions are not parsed.
        assert_eq!(check(&hs(5, 1, 0, &[(9, vec![])])), Verdict::Pass);
    }

    #[test]
    fn unsupported_features_are_rejected_with_core_reasons() {
        let cases = [
            (6u16, CoreRejectReason::Congestion),
            (7, CoreRejectReason::Filter),
            (8, CoreRejectReason::Group),
        ];
        for (et, why) in cases {
            let d = hs(5, -1, 1500, &[hsreq(), (et, b"elif".to_vec()), sid("a/b")]);
            assert_eq!(check(&d), Verdict::Reject(RejectReason::Core(why)));
            let stripped = strip_config_extensions(&d);
            assert_eq!(check(&stripped), Verdict::Pass);
            let p = parse_caught(&stripped, false).unwrap().unwrap();
            assert!(p.is_handshake());
            // Empty bodies too (srt-protocol under-reads those).
            let d = hs(5, -1, 1500, &[(et, vec![])]);
            assert!(parse_caught(&strip_config_extensions(&d), false).is_some());
        }
    }

    #[test]
    fn a_small_mss_is_rejected() {
        for mss in [0, 100, MIN_MSS - 1] {
            assert_eq!(
                check(&hs(5, -1, mss, &[hsreq()])),
                Verdict::Reject(RejectReason::Server(ServerRejectReason::BadRequest)),
                "{mss}"
            );
        }
        assert_eq!(check(&hs(5, -1, MIN_MSS, &[hsreq()])), Verdict::Pass);
    }

    #[test]
    fn the_known_panics_are_blocked() {
        // Every input of docs/srt-sans-io.md §2 that panics in parse.
        let inputs = [
            ctrl(0x7FFF, 5, 0, &[]),
            ctrl(0x7FFF, 8, 0, &[1]),
            hs(5, -1, 1500, &[sid(""), hsreq()]),
            hs(5, -1, 1500, &[(0, vec![0; 4])]),
            hs(5, -1, 1500, &[(6, vec![])]),
            hs(5, -1, 1500, &[(8, vec![])]),
        ];
        for d in inputs {
            fuzz_check(&d);
        }
    }

    #[test]
    fn random_datagrams_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = hs(5, -1, 1500, &[hsreq(), sid("live/cam1"), (3, km(1))]);
        for _ in 0..20_000 {
            let mut d = base.clone();
            let r = next();
            d.truncate((r % (base.len() as u64 + 1)) as usize);
            for _ in 0..(r >> 8) % 4 {
                if d.is_empty() {
                    break;
                }
                let i = (next() % d.len() as u64) as usize;
                d[i] = next() as u8;
            }
            fuzz_check(&d);
            if d.len() >= 4 {
                // Same bytes as other control types.
                d[1] = (r >> 16) as u8 % 9;
                fuzz_check(&d);
            }
        }
    }
}
