//! RTMP handshake, server side (RTMP spec 5.2), including the digest
//! ("FP9") variant that Flash-era clients, librtmp and FFmpeg send.
//!
//! Sans-IO: feed bytes, get bytes to send. A client whose C1 carries a valid
//! digest gets a digest-signed S1/S2 (some clients verify it); any other
//! client gets the plain echo handshake, which every encoder accepts.

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::media::Excerpt;

/// Size of C1/S1/C2/S2 (RTMP spec 5.2.3).
pub const PACKET_SIZE: usize = 1536;
const DIGEST_LEN: usize = 32;
const RTMP_VERSION: u8 = 3;

/// "Genuine Adobe Flash Player 001" — the client key used to sign C1.
const CLIENT_KEY: &[u8] = b"Genuine Adobe Flash Player 001";
/// "Genuine Adobe Flash Media Server 001" followed by 32 fixed bytes: the
/// server key. The first 36 bytes sign S1; all 68 derive the S2 key.
const SERVER_KEY: [u8; 68] = [
    b'G', b'e', b'n', b'u', b'i', b'n', b'e', b' ', b'A', b'd', b'o', b'b', b'e', b' ', b'F', b'l',
    b'a', b's', b'h', b' ', b'M', b'e', b'd', b'i', b'a', b' ', b'S', b'e', b'r', b'v', b'e', b'r',
    b' ', b'0', b'0', b'1', 0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1,
    0x02, 0x9E, 0x7E, 0x57, 0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36,
    0xCF, 0xEB, 0x31, 0xAE,
];
const SERVER_KEY_SHORT: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// C0 is the connection's first byte; `excerpt` shows the bytes from
    /// there (a TLS ClientHello, an HTTP request, …).
    #[error("unsupported RTMP version {version} in C0 (expected 3; first bytes are not an RTMP handshake) at offset 0{}", excerpt.after_colon())]
    BadVersion { version: u8, excerpt: Excerpt },
}

/// Which handshake the client used; kept for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Plain,
    Digest,
}

#[derive(Debug)]
enum State {
    /// Waiting for C0 + C1.
    AwaitC0C1,
    /// S0/S1/S2 produced; waiting for C2.
    AwaitC2,
    Done,
}

/// Server-side handshake state machine.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    buf: BytesMut,
    kind: HandshakeKind,
    epoch_ms: u32,
}

/// Result of feeding bytes into the handshake.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes to send to the client now (S0+S1+S2 once).
    pub send: Option<BytesMut>,
    /// True once C2 has been received; `leftover` then holds the first
    /// chunk-stream bytes that arrived with it.
    pub done: bool,
    pub leftover: BytesMut,
}

impl Handshake {
    /// `epoch_ms` is written into S1's time field (any value is valid).
    pub fn new(epoch_ms: u32) -> Self {
        Handshake {
            state: State::AwaitC0C1,
            buf: BytesMut::with_capacity(1 + PACKET_SIZE),
            kind: HandshakeKind::Plain,
            epoch_ms,
        }
    }

    pub fn kind(&self) -> HandshakeKind {
        self.kind
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feed received bytes. `random` fills S1/S2 padding (pass an RNG's
    /// output; tests pass a fixed pattern).
    pub fn feed(
        &mut self,
        input: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Progress, HandshakeError> {
        let mut progress = Progress::default();
        // Check C0 as soon as it arrives so junk is refused without waiting
        // for 1536 more bytes.
        if matches!(self.state, State::AwaitC0C1) && self.buf.is_empty() {
            if let Some(&v) = input.first() {
                if v != RTMP_VERSION {
                    return Err(HandshakeError::BadVersion {
                        version: v,
                        excerpt: Excerpt::new(input),
                    });
                }
            }
        }
        self.buf.extend_from_slice(input);
        if matches!(self.state, State::AwaitC0C1) && self.buf.len() > PACKET_SIZE {
            self.buf.advance(1);
            let c1 = self.buf.split_to(PACKET_SIZE);
            progress.send = Some(self.respond(&c1, random));
            self.state = State::AwaitC2;
        }
        if matches!(self.state, State::AwaitC2) && self.buf.len() >= PACKET_SIZE {
            // C2 is not verified: clients disagree on what they echo, and
            // nothing we do depends on it.
            self.buf.advance(PACKET_SIZE);
            self.state = State::Done;
            progress.done = true;
            progress.leftover = std::mem::take(&mut self.buf);
        }
        Ok(progress)
    }

    fn respond(&mut self, c1: &[u8], random: &mut dyn FnMut(&mut [u8])) -> BytesMut {
        let mut out = BytesMut::with_capacity(1 + 2 * PACKET_SIZE);
        out.put_u8(RTMP_VERSION);
        let client_digest = find_client_digest(c1);
        let mut s1 = vec![0u8; PACKET_SIZE];
        random(&mut s1[8..]);
        s1[0..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        match client_digest {
            Some((scheme, digest)) => {
                self.kind = HandshakeKind::Digest;
                // A server version makes digest-aware clients look for our digest.
                s1[4..8].copy_from_slice(&[0x04, 0x05, 0x00, 0x01]);
                let offset = digest_offset(&s1, scheme);
                let sig = hmac_parts(&SERVER_KEY[..SERVER_KEY_SHORT], &s1, offset);
                s1[offset..offset + DIGEST_LEN].copy_from_slice(&sig);
                out.extend_from_slice(&s1);
                // S2: random bytes signed with a key derived from C1's digest.
                let mut s2 = vec![0u8; PACKET_SIZE];
                random(&mut s2);
                let key = hmac(&SERVER_KEY, &[&digest]);
                let sig = hmac(&key, &[&s2[..PACKET_SIZE - DIGEST_LEN]]);
                s2[PACKET_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
                out.extend_from_slice(&s2);
            }
            None => {
                // Plain handshake: S1 zero version, S2 echoes C1 (RTMP spec 5.2.4).
                out.extend_from_slice(&s1);
                out.extend_from_slice(c1);
            }
        }
        out
    }
}

/// The two digest layouts: the 4 offset bytes sit at 8 (scheme 0) or 772
/// (scheme 1); the digest lies in the following 728-byte block.
fn digest_offset(packet: &[u8], scheme: usize) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| b as usize).sum();
    base + 4 + sum % 728
}

fn find_client_digest(c1: &[u8]) -> Option<(usize, [u8; DIGEST_LEN])> {
    // A zero version field means the client does not use digests.
    if c1[4..8] == [0, 0, 0, 0] {
        return None;
    }
    for scheme in [0usize, 1] {
        let offset = digest_offset(c1, scheme);
        let expected = hmac_parts(CLIENT_KEY, c1, offset);
        if c1[offset..offset + DIGEST_LEN] == expected {
            let mut digest = [0u8; DIGEST_LEN];
            digest.copy_from_slice(&c1[offset..offset + DIGEST_LEN]);
            return Some((scheme, digest));
        }
    }
    None
}

/// HMAC over the packet with the digest bytes at `offset` left out.
fn hmac_parts(key: &[u8], packet: &[u8], offset: usize) -> [u8; DIGEST_LEN] {
    hmac(key, &[&packet[..offset], &packet[offset + DIGEST_LEN..]])
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; DIGEST_LEN],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
    }

    fn digest_c1(scheme: usize) -> Vec<u8> {
        let mut c1 = vec![0u8; PACKET_SIZE];
        pattern(&mut c1);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let offset = digest_offset(&c1, scheme);
        let sig = hmac_parts(CLIENT_KEY, &c1, offset);
        c1[offset..offset + DIGEST_LEN].copy_from_slice(&sig);
        c1
    }

    #[test]
    fn plain_client_gets_echo_in_s2() {
        let mut hs = Handshake::new(0);
        let mut c0c1 = vec![3u8];
        let mut c1 = vec![0u8; PACKET_SIZE];
        pattern(&mut c1);
        c1[4..8].fill(0);
        c0c1.extend_from_slice(&c1);
        let p = hs.feed(&c0c1, &mut pattern).unwrap();
        let out = p.send.unwrap();
        assert_eq!(out.len(), 1 + 2 * PACKET_SIZE);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1 + PACKET_SIZE..], &c1[..]);
        assert_eq!(hs.kind(), HandshakeKind::Plain);
        let mut c2 = vec![0u8; PACKET_SIZE];
        c2.extend_from_slice(b"\x02rest");
        let p = hs.feed(&c2, &mut pattern).unwrap();
        assert!(p.done);
        assert_eq!(&p.leftover[..], b"\x02rest");
    }

    #[test]
    fn digest_client_gets_verifiable_s1_and_s2_for_both_schemes() {
        for scheme in [0, 1] {
            let mut hs = Handshake::new(1234);
            let c1 = digest_c1(scheme);
            let mut input = vec![3u8];
            input.extend_from_slice(&c1);
            // Byte-at-a-time delivery must work too.
            let mut out = None;
            for b in &input {
                let p = hs.feed(std::slice::from_ref(b), &mut pattern).unwrap();
                if p.send.is_some() {
                    out = p.send;
                }
            }
            let out = out.expect("S0S1S2");
            assert_eq!(hs.kind(), HandshakeKind::Digest);
            let s1 = &out[1..1 + PACKET_SIZE];
            let off = digest_offset(s1, scheme);
            assert_eq!(
                s1[off..off + DIGEST_LEN],
                hmac_parts(&SERVER_KEY[..SERVER_KEY_SHORT], s1, off)
            );
            let s2 = &out[1 + PACKET_SIZE..];
            let c_off = digest_offset(&c1, scheme);
            let key = hmac(&SERVER_KEY, &[&c1[c_off..c_off + DIGEST_LEN]]);
            assert_eq!(
                s2[PACKET_SIZE - DIGEST_LEN..],
                hmac(&key, &[&s2[..PACKET_SIZE - DIGEST_LEN]])
            );
        }
    }

    /// C0+C1 as sent by ffmpeg 5.1 (recorded): it signs C1, so it gets the
    /// digest handshake.
    #[test]
    fn real_ffmpeg_c1_is_recognised_as_digest() {
        let capture = include_bytes!("../../../tests/fixtures/ffmpeg5.1-x264-aac-publish.rtmp");
        let mut hs = Handshake::new(0);
        let p = hs
            .feed(&capture[..1 + 2 * PACKET_SIZE], &mut pattern)
            .unwrap();
        assert!(p.send.is_some() && p.done);
        assert_eq!(hs.kind(), HandshakeKind::Digest);
    }

    #[test]
    fn junk_first_byte_is_refused_at_once() {
        let mut hs = Handshake::new(0);
        let e = hs.feed(b"GET / HTTP/1.1\r\n", &mut pattern).unwrap_err();
        assert!(matches!(
            e,
            HandshakeError::BadVersion { version: b'G', .. }
        ));
        assert_eq!(
            e.to_string(),
            "unsupported RTMP version 71 in C0 (expected 3; first bytes are not an RTMP \
             handshake) at offset 0: 47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a"
        );
    }

    #[test]
    fn nonzero_version_without_valid_digest_falls_back_to_plain() {
        let mut hs = Handshake::new(0);
        let mut input = vec![3u8];
        let mut c1 = vec![0u8; PACKET_SIZE];
        pattern(&mut c1);
        input.extend_from_slice(&c1);
        let out = hs.feed(&input, &mut pattern).unwrap().send.unwrap();
        assert_eq!(hs.kind(), HandshakeKind::Plain);
        assert_eq!(&out[1 + PACKET_SIZE..], &c1[..]);
    }
}
