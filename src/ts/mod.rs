//! MPEG-2 transport stream (ISO/IEC 13818-1): a sans-IO muxer that turns [`Frame`]s into
//! 1316-byte chunks for SRT, a small demuxer (FFmpeg's TS output, SRT publishers), and the
//! ingest that turns a published TS back into [`Frame`]s.
//! Shared here: PIDs and stream types, the error type, CRC32/MPEG-2 and 33-bit PTS/DTS coding.
//!
//! [`Frame`]: crate::media::Frame

pub mod demux;
pub mod ingest;
pub mod join;
pub mod mux;
pub(crate) mod psi;
#[cfg(feature = "fuzzing")]
mod roundtrip;

pub use demux::{Demuxer, EsInfo, Pes};
pub use ingest::{Ingested, TsIngest, TsIngestStats};
pub use mux::{Muxer, TsChunk, CHUNK, PACKET};

use crate::media::{Codec, Excerpt, MediaError};

/// Sync byte that starts every transport packet (2.4.3.2).
pub const SYNC_BYTE: u8 = 0x47;
/// PID of the program association table (2.4.4.3, Table 2-3).
pub const PID_PAT: u16 = 0x0000;
/// PID of the null packets (Table 2-3).
pub const PID_NULL: u16 = 0x1FFF;
/// PID the muxer writes the program map table on.
pub const PID_PMT: u16 = 0x1000;
/// PID of the muxer's video elementary stream.
pub const PID_VIDEO: u16 = 0x0100;
/// PID of the muxer's audio elementary stream.
pub const PID_AUDIO: u16 = 0x0101;
/// program_number of the muxer's only program.
pub const PROGRAM_NUMBER: u16 = 1;

/// stream_type for H.264 (Table 2-34).
pub const STREAM_TYPE_H264: u8 = 0x1B;
/// stream_type for HEVC (Table 2-34).
pub const STREAM_TYPE_HEVC: u8 = 0x24;
/// stream_type for AAC in ADTS framing (Table 2-34).
pub const STREAM_TYPE_AAC_ADTS: u8 = 0x0F;

/// PTS, DTS and PCR base are 33-bit counters of a 90 kHz clock (2.4.3.7).
pub const TIMESTAMP_MASK: u64 = (1 << 33) - 1;

/// Errors from the muxer (bad input frames or configs) and the demuxer
/// (damaged transport streams; these are worth logging, nothing more).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("{codec} is not supported in MPEG-TS by sluice yet (supported: H.264, HEVC, AAC)")]
    UnsupportedCodec { codec: Codec },
    #[error("{codec} frame before its codec configuration; the encoder must send the sequence header first")]
    MissingConfig { codec: Codec },
    #[error("{frame} frame but the {track} track is configured for {configured}; send a new sequence header when switching codecs")]
    CodecMismatch {
        frame: Codec,
        configured: Codec,
        track: &'static str,
    },
    #[error("invalid {codec} configuration: {source}")]
    BadConfig { codec: Codec, source: MediaError },
    #[error("AAC configuration cannot be carried in ADTS: {field} = {value} ({reason})")]
    AdtsUnsupported {
        field: &'static str,
        value: u32,
        reason: &'static str,
    },
    #[error("{codec} frame at dts {dts} ms: NAL unit at byte {offset} claims {len} bytes but only {remaining} remain (length prefix size {length_size})")]
    BadNalLength {
        codec: Codec,
        dts: u64,
        offset: usize,
        len: usize,
        remaining: usize,
        length_size: u8,
    },
    #[error("AAC frame at dts {dts} ms is {len} bytes; an ADTS frame holds at most {max}")]
    AacFrameTooLarge { dts: u64, len: usize, max: usize },
    /// The demuxer's errors say where: the PID, the packet's index among
    /// those read and its byte offset in the input, and the bytes there
    /// (for PSI and PES errors, the section's or the PES's first bytes).
    #[error("bad TS packet: {reason}, at PID {pid:#06x}, packet {packet}, offset {offset}{}", excerpt.after_colon())]
    BadPacket {
        pid: u16,
        offset: u64,
        packet: u64,
        reason: &'static str,
        excerpt: Excerpt,
    },
    /// `packet` is the index the next packet gets; `excerpt` shows the
    /// skipped bytes.
    #[error("lost TS sync: skipped {skipped} bytes to the next 0x47, at packet {packet}, offset {offset}{}", excerpt.after_colon())]
    LostSync {
        offset: u64,
        packet: u64,
        skipped: usize,
        excerpt: Excerpt,
    },
    #[error("continuity error: expected counter {expected}, got {got}, at PID {pid:#06x}, packet {packet}, offset {offset}{}", excerpt.after_colon())]
    Continuity {
        pid: u16,
        offset: u64,
        packet: u64,
        expected: u8,
        got: u8,
        excerpt: Excerpt,
    },
    #[error("PSI section (table_id {table_id:#04x}): {reason}, at PID {pid:#06x}, packet {packet}, offset {offset}{}", excerpt.after_colon())]
    BadPsi {
        pid: u16,
        table_id: u8,
        offset: u64,
        packet: u64,
        reason: &'static str,
        excerpt: Excerpt,
    },
    /// `packet` and `offset` are where the PES started.
    #[error("PES: {reason}; dropped, at PID {pid:#06x}, packet {packet}, offset {offset}{}", excerpt.after_colon())]
    BadPes {
        pid: u16,
        offset: u64,
        packet: u64,
        reason: &'static str,
        excerpt: Excerpt,
    },
    #[error("PES grew past {limit} bytes; dropped, at PID {pid:#06x}, packet {packet}, offset {offset}{}", excerpt.after_colon())]
    PesTooLarge {
        pid: u16,
        offset: u64,
        packet: u64,
        limit: usize,
        excerpt: Excerpt,
    },
}

/// Writes a 33-bit timestamp in the 5-byte PTS/DTS layout of 2.4.3.7:
/// `prefix`(4) ts[32..30] marker ts[29..15] marker ts[14..0] marker.
pub(crate) fn encode_timestamp(prefix: u8, ts: u64) -> [u8; 5] {
    let ts = ts & TIMESTAMP_MASK;
    [
        (prefix << 4) | ((ts >> 29) as u8 & 0x0E) | 1,
        (ts >> 22) as u8,
        ((ts >> 14) as u8 & 0xFE) | 1,
        (ts >> 7) as u8,
        ((ts << 1) as u8 & 0xFE) | 1,
    ]
}

/// Reads a PTS/DTS field written by [`encode_timestamp`]; marker bits are not
/// checked (some muxers get them wrong and players ignore them).
pub(crate) fn decode_timestamp(b: [u8; 5]) -> u64 {
    (u64::from(b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | u64::from(b[2] >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4] >> 1)
}

/// Fuzzing entry point: derives H.264/HEVC/AAC frames and timestamps from
/// `data`, muxes them, demuxes the result and asserts every frame comes back
/// with the same payload and timestamps; also feeds `data` raw to the
/// demuxer. Panics only on a bug.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_roundtrip(data: &[u8]) {
    let _ = roundtrip::run(data);
}

/// The pieces a fuzz entry feeds `data` in: sizes drawn from `splits` by a
/// xorshift generator seeded with `seed`, each piece with the generator's
/// value (for an entry's own choices, such as when to signal loss).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_pieces<'a>(
    seed: u8,
    mut data: &'a [u8],
    splits: &'a [usize],
) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
    let mut rng = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    std::iter::from_fn(move || {
        if data.is_empty() || splits.is_empty() {
            return None;
        }
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let (piece, rest) = data.split_at(splits[rng as usize % splits.len()].min(data.len()));
        data = rest;
        Some((rng, piece))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_across_the_33_bit_wrap() {
        for ts in [
            0,
            1,
            90_000,
            TIMESTAMP_MASK - 1,
            TIMESTAMP_MASK,
            TIMESTAMP_MASK + 1,
            TIMESTAMP_MASK + 12_345,
            u64::MAX,
        ] {
            for prefix in [0b0010, 0b0011, 0b0001] {
                let b = encode_timestamp(prefix, ts);
                assert_eq!(b[0] >> 4, prefix);
                assert_eq!(b[0] & 1, 1, "marker");
                assert_eq!(b[2] & 1, 1, "marker");
                assert_eq!(b[4] & 1, 1, "marker");
                assert_eq!(decode_timestamp(b), ts & TIMESTAMP_MASK, "ts {ts}");
            }
        }
    }

    #[test]
    fn timestamp_layout_matches_the_spec_example() {
        // 0x1_2345_6789: bits 32..30 = 100, bits 29..15 = 0x468A, bits 14..0 = 0x6789,
        // each group followed by a marker bit (2.4.3.7).
        let b = encode_timestamp(0b0010, 0x1_2345_6789);
        assert_eq!(b, [0x29, 0x8D, 0x15, 0xCF, 0x13]);
    }

    #[test]
    fn errors_say_what_is_unsupported() {
        let e = TsError::UnsupportedCodec { codec: Codec::Av1 };
        assert_eq!(
            e.to_string(),
            "av1 is not supported in MPEG-TS by sluice yet (supported: H.264, HEVC, AAC)"
        );
    }
}
