//! Raw SRT datagrams for hostile-peer tests: control packets, HSv4/HSv5
//! handshakes with chosen extensions, and the malformed set of
//! docs/srt-sans-io.md.

use std::net::{SocketAddr, UdpSocket};

pub fn ctrl(ty: u16, subtype: u16, add: u32, sockid: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend((0x8000 | ty).to_be_bytes());
    v.extend(subtype.to_be_bytes());
    v.extend(add.to_be_bytes());
    v.extend(0u32.to_be_bytes());
    v.extend(sockid.to_be_bytes());
    v.extend(body);
    v
}

#[allow(clippy::too_many_arguments)]
pub fn handshake(
    version: i32,
    ext_flags: u16,
    mss: u32,
    shake: i32,
    sockid: u32,
    cookie: i32,
    exts: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(version.to_be_bytes());
    b.extend(0u16.to_be_bytes());
    b.extend(ext_flags.to_be_bytes());
    b.extend(12345u32.to_be_bytes());
    b.extend(mss.to_be_bytes());
    b.extend(8192u32.to_be_bytes());
    b.extend(shake.to_be_bytes());
    b.extend(sockid.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend([1, 0, 0, 127]);
    b.extend([0u8; 12]);
    for (ty, body) in exts {
        b.extend(ty.to_be_bytes());
        b.extend(((body.len() / 4) as u16).to_be_bytes());
        b.extend(body);
    }
    ctrl(0, 0, 0, 0, &b)
}

pub fn hsreq() -> (u16, Vec<u8>) {
    let mut v = Vec::new();
    v.extend(0x0001_0501u32.to_be_bytes());
    v.extend(0xBFu32.to_be_bytes());
    v.extend([0, 120, 0, 120]);
    (1, v)
}

pub fn sid_ext(s: &str) -> (u16, Vec<u8>) {
    let mut v = Vec::new();
    for c in s.as_bytes().chunks(4) {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        w.reverse();
        v.extend(w);
    }
    (5, v)
}

pub fn km(kf: u8) -> Vec<u8> {
    let mut v = vec![0x12, 0x20, 0x29, kf];
    v.extend(0u32.to_be_bytes());
    v.extend([2, 0, 2, 0]);
    v.extend([0, 0, 4, 4]);
    v.extend([0x55; 16]);
    v.extend([0xAA; 24]);
    v
}

pub fn nak(sockid: u32, words: &[u32]) -> Vec<u8> {
    let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    ctrl(3, 0, 0, sockid, &body)
}

/// Every datagram of docs/srt-sans-io.md §2, addressed to socket id 0 and
/// to a guessed one.
pub fn hostile_datagrams() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for sockid in [0u32, 1, 0x1234_5678] {
        for sub in [0u16, 5, 6, 7, 8] {
            v.push(ctrl(0x7FFF, sub, 0, sockid, &[]));
            v.push(ctrl(0x7FFF, sub, 0, sockid, b"abcd"));
        }
        v.push(ctrl(4, 0, 0, sockid, &[0; 4]));
        v.push(ctrl(8, 0, 0, sockid, &[0; 4]));
        v.push(nak(sockid, &[0x8000_0000 | 110]));
        v.push(nak(sockid, &[0x8000_0000 | 110, 100]));
        v.push(nak(sockid, &[0x8000_0000, 0x7FFF_FFFF]));
        v.push(ctrl(2, 0, 0xFFFF_FFFF, sockid, &[0; 16]));
        v.push(ctrl(0x7FFF, 3, 0, sockid, &km(0)));
    }
    for (ext, body) in [
        (0u16, vec![0u8; 4]),
        (5, vec![]),
        (6, b"elif".to_vec()),
        (7, b":cef".to_vec()),
        (8, vec![0, 0, 1, 0]),
        (9, vec![0; 4]),
    ] {
        v.push(handshake(5, 5, 1500, -1, 7, 0, &[(ext, body), hsreq()]));
    }
    v.push(handshake(5, 5, 0, -1, 7, 0, &[hsreq()]));
    v.push(handshake(5, 7, 1500, -1, 7, 0, &[hsreq(), (3, km(0))]));
    v.push(vec![0x80; 3]);
    v.push(vec![0x00; 200]);
    v
}

/// Induction from `sock`, then return the listener's cookie.
pub fn induce(sock: &UdpSocket, to: SocketAddr, sockid: u32) -> i32 {
    sock.send_to(&handshake(4, 2, 1500, 1, sockid, 0, &[]), to)
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("induction reply");
    assert!(n >= 64 && buf[0] == 0x80 && buf[1] == 0);
    i32::from_be_bytes(buf[44..48].try_into().unwrap())
}

/// The shake type of the next handshake reply.
pub fn reply_shake(sock: &UdpSocket) -> i32 {
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("handshake reply");
    assert!(
        n >= 64 && buf[0] == 0x80 && buf[1] == 0,
        "{:02x?}",
        &buf[..n]
    );
    i32::from_be_bytes(buf[36..40].try_into().unwrap())
}
