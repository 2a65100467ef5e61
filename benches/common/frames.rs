//! H.264 video frames recognised by content on both sides of the relay:
//! a frame's key is a hash of its first slice NAL unit (the relay never
//! changes slice bytes), taken from an FLV AVCC body, an Annex B access
//! unit or a whole MPEG-TS stream as it crosses the wire.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Instant;

pub const TS_PACKET: usize = 188;

/// A video frame's identity: its first slice NAL unit (types 1 and 5 in
/// H.264), hashed, trailing zero bytes dropped; and whether it is an IDR.
fn slice(nal: &[u8]) -> Option<(u64, bool)> {
    let ty = nal.first()? & 0x1F;
    if ty != 1 && ty != 5 {
        return None;
    }
    let end = nal.iter().rposition(|b| *b != 0)? + 1;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    nal[..end].hash(&mut h);
    Some((h.finish(), ty == 5))
}

/// The NAL units of an Annex B byte stream.
fn annexb_nals(es: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    (0..starts.len()).map(move |n| {
        let s = starts[n];
        let end = starts.get(n + 1).map_or(es.len(), |e| e - 3);
        &es[s..end.max(s)]
    })
}

/// The NAL units of 4-byte length-prefixed (AVCC) data; stops at the
/// first length that overruns.
fn avcc_nals(mut d: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
        let nal = d.get(4..4 + n)?;
        d = &d[4 + n..];
        Some(nal)
    })
}

/// Key and IDR flag of an Annex B access unit (a PES payload).
pub fn annexb_slice(es: &[u8]) -> Option<(u64, bool)> {
    annexb_nals(es).find_map(slice)
}

/// The key of an Annex B access unit (a PES payload).
pub fn annexb_key(es: &[u8]) -> Option<u64> {
    annexb_slice(es).map(|(k, _)| k)
}

/// Key and IDR flag of an access unit in either framing: Annex B when it
/// begins with a start code, else 4-byte lengths (what GStreamer's
/// h264parse hands a decoder that asked for `stream-format=avc`).
pub fn access_unit_slice(au: &[u8]) -> Option<(u64, bool)> {
    if au.starts_with(&[0, 0, 1]) || au.starts_with(&[0, 0, 0, 1]) {
        annexb_slice(au)
    } else {
        avcc_nals(au).find_map(slice)
    }
}

/// The key of an AVCC (4-byte length) FLV video frame body.
pub fn avcc_key(body: &[u8]) -> Option<u64> {
    // FLV AVC video tag: frame/codec byte, packet type 1, 3-byte CTS.
    if body.len() < 5 || body[0] & 0x0F != 7 || body[1] != 1 {
        return None;
    }
    avcc_nals(&body[5..]).find_map(slice).map(|(k, _)| k)
}

/// A video frame seen in a TS byte stream.
#[derive(Debug, Clone, Copy)]
pub struct TsFrame {
    pub key: u64,
    /// Its first slice is an IDR.
    pub idr: bool,
    /// The PES header's PTS, 90 kHz (33 bits, as sent).
    pub pts_90k: Option<u64>,
    /// When the packet that began its PES crossed the wire.
    pub first: Instant,
    /// When its last packet did (the frame was complete).
    pub last: Instant,
}

/// Video frames in a TS byte stream, each with the instants its first and
/// last packets crossed the wire. A PES ends where the next on its PID
/// begins (video PES_packet_length is usually 0), so a frame is known one
/// PES late; its instants are still its own.
#[derive(Default)]
pub struct VideoStarts {
    /// Per PID: the PES being gathered and when its first and latest
    /// packets came.
    current: HashMap<u16, (Vec<u8>, Instant, Instant)>,
}

impl VideoStarts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed `data` that crossed the wire at `at`; appends every video
    /// frame completed by it.
    pub fn push(&mut self, data: &[u8], at: Instant, out: &mut Vec<TsFrame>) {
        for p in data.chunks(TS_PACKET) {
            if p.len() < TS_PACKET || p[0] != 0x47 {
                continue;
            }
            let pusi = p[1] & 0x40 != 0;
            let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
            if pid < 0x20 || pid == 0x1FFF || p[3] & 0x10 == 0 {
                continue;
            }
            let mut i = 4;
            if p[3] & 0x20 != 0 {
                i += 1 + p[4] as usize;
            }
            let Some(payload) = p.get(i..) else { continue };
            if pusi {
                if let Some((pes, first, last)) = self.current.remove(&pid) {
                    if let Some((key, idr)) = pes_slice(&pes) {
                        out.push(TsFrame {
                            key,
                            idr,
                            pts_90k: pes_pts(&pes),
                            first,
                            last,
                        });
                    }
                }
                // Video PES only (stream_id 0xE0..=0xEF).
                if payload.len() > 9 && payload[..3] == [0, 0, 1] && payload[3] & 0xF0 == 0xE0 {
                    self.current.insert(pid, (payload.to_vec(), at, at));
                }
            } else if let Some((pes, _, last)) = self.current.get_mut(&pid) {
                if pes.len() < 4 << 20 {
                    pes.extend_from_slice(payload);
                }
                *last = at;
            }
        }
    }
}

/// Key and IDR flag of a whole video PES packet.
fn pes_slice(pes: &[u8]) -> Option<(u64, bool)> {
    let header = *pes.get(8)? as usize;
    annexb_slice(pes.get(9 + header..)?)
}

/// The PTS of a PES packet (ISO 13818-1 2.4.3.7), when it has one.
pub fn pes_pts(pes: &[u8]) -> Option<u64> {
    if pes.get(7)? >> 6 < 2 {
        return None;
    }
    Some(decode_timestamp(pes.get(9..14)?))
}

/// A 33-bit PES timestamp from its five bytes.
pub fn decode_timestamp(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1 & 0x7) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}
