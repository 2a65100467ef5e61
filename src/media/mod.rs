//! Codec-level, protocol-free media types: frames, codec configuration and their parameters.
//! Submodules parse parameter sets (H.264/HEVC SPS, AV1 sequence header, AAC AudioSpecificConfig)
//! and unwrap RTMP's 32-bit millisecond timestamps onto a 64-bit timeline; all of it is sans-IO and panic-free.

pub mod aac;
pub mod av1;
pub mod bits;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod h264;
pub mod hevc;
pub mod opus;
pub mod timeline;

pub use timeline::{Timeline, Unwrapped};

use std::fmt;

/// Which elementary stream of a publish a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    Video,
    Audio,
}

/// The codecs sluice knows by name; anything else is `Other` and is carried as-is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    Av1,
    Vp9,
    Aac,
    Mp3,
    Opus,
    Other,
}

impl Codec {
    /// Short lowercase name used in the API, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "hevc",
            Codec::Av1 => "av1",
            Codec::Vp9 => "vp9",
            Codec::Aac => "aac",
            Codec::Mp3 => "mp3",
            Codec::Opus => "opus",
            Codec::Other => "other",
        }
    }

    /// The track this codec carries. `Other` counts as video: the only place
    /// it is produced for audio is `AudioTag::Frame`, which already knows its track.
    pub fn track(self) -> Track {
        match self {
            Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Vp9 | Codec::Other => Track::Video,
            Codec::Aac | Codec::Mp3 | Codec::Opus => Track::Audio,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One coded frame on a track's monotonic millisecond timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub track: Track,
    pub codec: Codec,
    /// Decode timestamp in ms on the 64-bit unwrapped timeline.
    pub dts: u64,
    /// Composition offset in ms: PTS = DTS + CTS (may be negative).
    pub cts: i32,
    pub keyframe: bool,
    /// H.264/HEVC: length-prefixed NAL units (AVCC, 4-byte lengths as in FLV);
    /// AAC: one raw access unit; others: as carried.
    pub data: bytes::Bytes,
}

impl Frame {
    /// Presentation timestamp in ms (DTS + CTS), saturating at 0.
    pub fn pts(&self) -> u64 {
        if self.cts >= 0 {
            self.dts.saturating_add(u64::from(self.cts.unsigned_abs()))
        } else {
            self.dts.saturating_sub(u64::from(self.cts.unsigned_abs()))
        }
    }
}

/// What an ingest produces, whatever its protocol: codec configuration
/// (replayed to late joiners and muxers), frames, and the end of a track's
/// sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    Config(CodecConfig),
    Frame(Frame),
    EndOfSequence(Track),
}

/// Video parameters read from a sequence parameter set (or equivalent).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoParams {
    /// Displayed width in pixels (after cropping / conformance window).
    pub width: u32,
    /// Displayed height in pixels (after cropping / conformance window).
    pub height: u32,
    /// Profile name, e.g. "High", "Main"; `None` when unknown.
    pub profile: Option<String>,
    /// Level as coded: H.264 level_idc (31 = 3.1), HEVC general_level_idc
    /// (93 = 3.1), AV1 seq_level_idx.
    pub level: Option<u8>,
}

/// Audio parameters read from a codec configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioParams {
    /// Output sample rate in Hz.
    pub sample_rate: u32,
    /// Output channel count; 0 means "defined in-band" (AAC channelConfiguration 0).
    pub channels: u8,
    /// MPEG-4 Audio Object Type for AAC (2 = LC, 5 = SBR, 29 = PS).
    pub object_type: Option<u8>,
}

/// Codec configuration, sent once per sequence start; late joiners and muxers replay it.
#[derive(Debug, Clone, PartialEq)]
pub enum CodecConfig {
    Video {
        codec: Codec,
        /// AVCDecoderConfigurationRecord / HEVCDecoderConfigurationRecord /
        /// AV1CodecConfigurationRecord / VPCodecConfigurationRecord as carried.
        record: bytes::Bytes,
        params: Option<VideoParams>,
    },
    Audio {
        codec: Codec,
        /// The codec header as carried: AudioSpecificConfig for AAC, the
        /// OpusHead identification header for E-RTMP Opus; empty for MP3.
        config: bytes::Bytes,
        params: Option<AudioParams>,
    },
}

impl CodecConfig {
    /// The codec this configuration is for.
    pub fn codec(&self) -> Codec {
        match self {
            CodecConfig::Video { codec, .. } | CodecConfig::Audio { codec, .. } => *codec,
        }
    }

    /// The track this configuration belongs to.
    pub fn track(&self) -> Track {
        match self {
            CodecConfig::Video { .. } => Track::Video,
            CodecConfig::Audio { .. } => Track::Audio,
        }
    }
}

/// Where in the input a parse error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    /// Bit offset into the RBSP (after emulation prevention removal).
    Bit(usize),
    /// Byte offset into the record.
    Byte(usize),
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pos::Bit(b) => write!(f, "bit {b}"),
            Pos::Byte(b) => write!(f, "byte {b}"),
        }
    }
}

/// Up to [`Excerpt::MAX`] bytes of input where a parse error was found,
/// shown as hex (`02 00 0c …`): enough to find them in a capture. Parsers
/// build one only when they build the error (it copies the bytes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Excerpt {
    bytes: Box<[u8]>,
    /// The input went on past the excerpt.
    more: bool,
}

impl Excerpt {
    /// Most bytes an excerpt holds.
    pub const MAX: usize = 64;

    /// The first [`Excerpt::MAX`] bytes of `data`.
    pub fn new(data: &[u8]) -> Self {
        let n = data.len().min(Self::MAX);
        Excerpt {
            bytes: data.get(..n).unwrap_or_default().into(),
            more: data.len() > n,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `": 02 00 0c …"`, or nothing when there are no bytes to show: for
    /// error messages that end in the excerpt.
    pub fn after_colon(&self) -> impl fmt::Display + '_ {
        struct AfterColon<'a>(&'a Excerpt);
        impl fmt::Display for AfterColon<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.0.is_empty() {
                    Ok(())
                } else {
                    write!(f, ": {}", self.0)
                }
            }
        }
        AfterColon(self)
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        if self.more {
            f.write_str(" …")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Excerpt({self})")
    }
}

/// Errors from parsing codec configuration or parameter sets, and timeline policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The input ended while reading `field`.
    #[error("{what}: truncated while reading {field} at {at}")]
    Truncated {
        what: &'static str,
        field: &'static str,
        at: Pos,
    },
    /// A field holds a value the specification forbids.
    #[error("{what}: invalid {field} = {value} at {at}: {reason}")]
    Invalid {
        what: &'static str,
        field: &'static str,
        value: u64,
        at: Pos,
        reason: &'static str,
    },
    /// A valid value this parser does not handle.
    #[error("{what}: unsupported {field} = {value}")]
    Unsupported {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A timestamp step larger than the policy allows (see [`Timeline`]).
    #[error("timestamp jumped by {jump_ms} ms; policy allows at most {max_jump_ms} ms")]
    TimestampJump { jump_ms: i64, max_jump_ms: u32 },
}

/// A bounds-checked big-endian byte cursor for configuration records.
#[derive(Debug, Clone)]
pub(crate) struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        ByteReader { data, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn truncated(&self, field: &'static str) -> MediaError {
        MediaError::Truncated {
            what: self.what,
            field,
            at: Pos::Byte(self.pos),
        }
    }

    pub(crate) fn invalid(
        &self,
        field: &'static str,
        value: u64,
        reason: &'static str,
    ) -> MediaError {
        MediaError::Invalid {
            what: self.what,
            field,
            value,
            at: Pos::Byte(self.pos),
            reason,
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MediaError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.truncated(field))?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(field))?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MediaError> {
        let b = self
            .data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated(field))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MediaError> {
        let s: [u8; 2] = self
            .take(2, field)?
            .try_into()
            .map_err(|_| self.truncated(field))?;
        Ok(u16::from_be_bytes(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_shows_at_most_64_bytes_as_hex() {
        let e = Excerpt::new(&[0x02, 0x00, 0x0c]);
        assert_eq!(e.to_string(), "02 00 0c");
        assert_eq!(e.after_colon().to_string(), ": 02 00 0c");
        let long: Vec<u8> = (0..100).collect();
        let e = Excerpt::new(&long);
        assert_eq!(e.bytes(), &long[..64]);
        assert!(e.to_string().starts_with("00 01 02 ") && e.to_string().ends_with(" 3f …"));
        assert_eq!(Excerpt::new(&[]).after_colon().to_string(), "");
        assert!(Excerpt::default().is_empty());
    }

    #[test]
    fn codec_names_and_tracks() {
        assert_eq!(Codec::H265.name(), "hevc");
        assert_eq!(Codec::H264.name(), "h264");
        assert_eq!(Codec::Aac.track(), Track::Audio);
        assert_eq!(Codec::Av1.track(), Track::Video);
        assert_eq!(Codec::Opus.to_string(), "opus");
    }

    #[test]
    fn frame_pts_applies_signed_composition_offset() {
        let mut f = Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts: 100,
            cts: -40,
            keyframe: false,
            data: bytes::Bytes::new(),
        };
        assert_eq!(f.pts(), 60);
        f.cts = -200;
        assert_eq!(f.pts(), 0);
        f.cts = i32::MAX;
        assert_eq!(f.pts(), 100 + i32::MAX as u64);
    }

    #[test]
    fn byte_reader_reports_truncation_offsets() {
        let mut r = ByteReader::new(&[1, 2, 3], "rec");
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        let e = r.u16("b").unwrap_err();
        assert_eq!(e.to_string(), "rec: truncated while reading b at byte 2");
        assert_eq!(
            r.take(usize::MAX, "c").unwrap_err().to_string(),
            "rec: truncated while reading c at byte 2"
        );
        assert_eq!(r.remaining(), 1);
    }
}
