//! FLV tag bodies as carried in RTMP audio/video messages (FLV spec v10.1 Annex E, Enhanced RTMP v2), parsed
//! sans-IO and zero-copy into codec configs and frames, plus builders for the reverse direction.
//! Also a small FLV file reader and writer, used by tests and benchmarks and to feed FFmpeg's stdin.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::{aac, av1, h264, hevc, opus, Codec, CodecConfig, Excerpt, MediaError};

/// FLV tag type of an audio tag.
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type of a video tag.
pub const TAG_VIDEO: u8 = 9;
/// FLV tag type of a script data tag (onMetaData).
pub const TAG_SCRIPT: u8 = 18;

/// A parsed video tag body.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoTag {
    /// AVC/HEVC sequence header (AVCPacketType 0) or E-RTMP SequenceStart /
    /// MPEG2TSSequenceStart.
    Config(CodecConfig),
    /// A coded frame: AVC NALU (AVCPacketType 1) with its signed 24-bit
    /// composition time, E-RTMP CodedFrames or CodedFramesX (CTS = 0).
    /// `data` is a zero-copy slice of the tag body.
    Frame {
        codec: Codec,
        keyframe: bool,
        cts: i32,
        data: Bytes,
    },
    /// AVCPacketType 2 / E-RTMP SequenceEnd.
    EndOfSequence(Codec),
    /// E-RTMP Metadata packet (AMF-encoded, e.g. HDR colour info); ignored.
    Metadata,
    /// Video info/command frame (frame type 5); ignored.
    Command,
}

/// A parsed audio tag body.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioTag {
    /// AAC sequence header (AACPacketType 0) or E-RTMP audio SequenceStart.
    Config(CodecConfig),
    /// A coded audio frame; `data` is a zero-copy slice of the tag body.
    /// Legacy formats other than AAC and MP3 are `Codec::Other`.
    Frame { codec: Codec, data: Bytes },
}

/// Errors from parsing or building FLV tag bodies and files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// A zero-length tag body; some encoders send these as keepalives.
    /// Callers can ignore it.
    #[error("empty tag body")]
    Empty,
    #[error("{what}: truncated at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error(
        "unsupported FLV video codec id {0} (supported: 7 AVC, 12 HEVC, or Enhanced RTMP FourCC)"
    )]
    UnsupportedVideoCodec(u8),
    #[error("invalid video frame type {0}")]
    InvalidFrameType(u8),
    #[error("unknown E-RTMP {kind} FourCC '{fourcc}'")]
    UnknownFourCc { kind: &'static str, fourcc: String },
    #[error("unknown {what} {value}")]
    UnknownPacketType { what: &'static str, value: u8 },
    /// A valid construct this relay does not handle.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A valid message that carries nothing to relay (e.g. E-RTMP audio
    /// SequenceEnd); callers can ignore it.
    #[error("nothing to relay: {0}")]
    Ignored(&'static str),
    /// The codec configuration inside a sequence header is malformed.
    #[error("invalid {what}: {source}")]
    Config {
        what: &'static str,
        source: MediaError,
    },
    #[error("not an FLV file: {0}")]
    BadFileHeader(&'static str),
    #[error("FLV tag type {0} does not fit the 5-bit field")]
    InvalidTagType(u8),
    #[error("FLV tag body of {len} bytes exceeds the 24-bit DataSize field")]
    TagTooLarge { len: usize },
    #[error("composition time {0} ms does not fit the signed 24-bit field")]
    CtsOutOfRange(i32),
    /// A tag body that could not be parsed: what was wrong (`problem`) and
    /// where ([`TagContext`]).
    #[error("{}", in_tag(problem, at))]
    InTag {
        problem: Box<FlvError>,
        at: TagContext,
    },
}

impl FlvError {
    /// What was wrong, without where: the error itself, or an
    /// [`FlvError::InTag`]'s problem.
    pub fn problem(&self) -> &FlvError {
        match self {
            FlvError::InTag { problem, .. } => problem,
            other => other,
        }
    }

    /// Where in a tag body the error was found, for tag parse errors.
    pub fn context(&self) -> Option<&TagContext> {
        match self {
            FlvError::InTag { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// Where in an audio or video tag body a parse error was found: enough to
/// find the tag in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagContext {
    /// [`TAG_VIDEO`] or [`TAG_AUDIO`].
    pub tag_type: u8,
    /// The codec the tag header named, once parsing got that far.
    pub codec: Option<Codec>,
    /// Byte offset of the problem in the tag body.
    pub offset: usize,
    /// The tag body's first bytes.
    pub excerpt: Excerpt,
}

impl std::fmt::Display for TagContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tag_type {
            TAG_VIDEO => f.write_str("video tag")?,
            TAG_AUDIO => f.write_str("audio tag")?,
            other => write!(f, "tag type {other}")?,
        }
        if let Some(codec) = self.codec {
            write!(f, " ({codec})")?;
        }
        write!(f, " at byte {}{}", self.offset, self.excerpt.after_colon())
    }
}

/// `problem, in <where>`; a truncation's offset is said once, by the context.
fn in_tag<'a>(problem: &'a FlvError, at: &'a TagContext) -> impl std::fmt::Display + 'a {
    struct InTag<'a>(&'a FlvError, &'a TagContext);
    impl std::fmt::Display for InTag<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                FlvError::Truncated {
                    what, need, have, ..
                } => write!(
                    f,
                    "{what}: truncated, need {need} bytes, have {have}, in {}",
                    self.1
                ),
                problem => write!(f, "{problem}, in {}", self.1),
            }
        }
    }
    InTag(problem, at)
}

/// Checks that `body` holds `n` bytes at `offset`.
fn need(body: &[u8], offset: usize, n: usize, what: &'static str) -> Result<(), FlvError> {
    match offset.checked_add(n) {
        Some(end) if end <= body.len() => Ok(()),
        _ => Err(FlvError::Truncated {
            what,
            offset,
            need: n,
            have: body.len().saturating_sub(offset),
        }),
    }
}

fn byte_at(body: &[u8], offset: usize, what: &'static str) -> Result<u8, FlvError> {
    need(body, offset, 1, what)?;
    body.get(offset).copied().ok_or(FlvError::Truncated {
        what,
        offset,
        need: 1,
        have: 0,
    })
}

fn array_at<const N: usize>(
    body: &[u8],
    offset: usize,
    what: &'static str,
) -> Result<[u8; N], FlvError> {
    need(body, offset, N, what)?;
    body.get(offset..offset + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(FlvError::Truncated {
            what,
            offset,
            need: N,
            have: body.len().saturating_sub(offset),
        })
}

/// SI24 composition time, sign-extended (FLV spec E.4.3.1 "CompositionTime").
/// Placing the 24 bits at the top of an i32 and shifting back arithmetically
/// copies the sign bit down.
fn si24(b: [u8; 3]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8
}

fn si24_bytes(cts: i32) -> Result<[u8; 3], FlvError> {
    if !(-0x80_0000..=0x7F_FFFF).contains(&cts) {
        return Err(FlvError::CtsOutOfRange(cts));
    }
    let b = cts.to_be_bytes();
    Ok([b[1], b[2], b[3]])
}

fn fourcc_string(f: [u8; 4]) -> String {
    f.escape_ascii().to_string()
}

/// Frame types 1 (key) and 4 (generated key, server-side seek point) are
/// random access points; 2 and 3 are inter frames. 0, 6 and 7 are reserved.
fn keyframe_for(frame_type: u8) -> Result<bool, FlvError> {
    match frame_type {
        1 | 4 => Ok(true),
        2 | 3 => Ok(false),
        other => Err(FlvError::InvalidFrameType(other)),
    }
}

/// A tag body being parsed: errors found in it say where ([`TagContext`]).
struct TagParse<'a> {
    body: &'a Bytes,
    tag_type: u8,
    /// The codec, once the header named it.
    codec: Option<Codec>,
}

impl TagParse<'_> {
    /// `problem` at byte `offset` of the body. Copies the excerpt: call it
    /// only to return the error.
    #[cold]
    #[inline(never)]
    fn error(&self, offset: usize, problem: FlvError) -> FlvError {
        FlvError::InTag {
            problem: Box::new(problem),
            at: TagContext {
                tag_type: self.tag_type,
                codec: self.codec,
                offset,
                excerpt: Excerpt::new(self.body),
            },
        }
    }

    fn need(&self, offset: usize, n: usize, what: &'static str) -> Result<(), FlvError> {
        need(self.body, offset, n, what).map_err(|e| self.error(offset, e))
    }

    fn byte(&self, offset: usize, what: &'static str) -> Result<u8, FlvError> {
        byte_at(self.body, offset, what).map_err(|e| self.error(offset, e))
    }

    fn array<const N: usize>(
        &self,
        offset: usize,
        what: &'static str,
    ) -> Result<[u8; N], FlvError> {
        array_at::<N>(self.body, offset, what).map_err(|e| self.error(offset, e))
    }

    /// The frame type's keyframe flag (byte 0), as an error in this tag.
    fn keyframe(&self, frame_type: u8) -> Result<bool, FlvError> {
        keyframe_for(frame_type).map_err(|e| self.error(0, e))
    }

    /// Skips the E-RTMP v2 ModEx prelude: while the packet type is ModEx (7),
    /// read modExDataSize (UI8 + 1, or UI16 + 1 when the UI8 form says 256),
    /// the data, and a byte of modExType (high nibble) | next packet type (low
    /// nibble). The only defined modifier is a sub-millisecond timestamp offset,
    /// which a millisecond timeline cannot use. Each round consumes at least two
    /// bytes, so the loop ends with the input. Returns the position after it,
    /// the packet type, and where the packet type was read.
    fn skip_mod_ex(&self, mut packet_type: u8) -> Result<(usize, u8, usize), FlvError> {
        let (mut pos, mut type_at) = (1, 0);
        while packet_type == 7 {
            let mut size = usize::from(self.byte(pos, "E-RTMP ModEx data size")?) + 1;
            pos += 1;
            if size == 256 {
                let s = self.array::<2>(pos, "E-RTMP ModEx data size (16-bit)")?;
                size = usize::from(u16::from_be_bytes(s)) + 1;
                pos += 2;
            }
            self.need(pos, size, "E-RTMP ModEx data")?;
            pos += size;
            packet_type = self.byte(pos, "E-RTMP ModEx type")? & 0x0F;
            type_at = pos;
            pos += 1;
        }
        Ok((pos, packet_type, type_at))
    }

    /// Builds the video `CodecConfig` for a sequence header whose record
    /// starts at `at`, parsing the record for its parameters. A structurally
    /// broken record is an error (a muxer could not use it); an SPS this
    /// parser cannot read only leaves `params` empty.
    fn video_config(&self, codec: Codec, at: usize) -> Result<CodecConfig, FlvError> {
        let record = self.body.slice(at..);
        let params = match codec {
            Codec::H264 => h264::parse_avc_decoder_config(&record)
                .map(|c| c.params)
                .map_err(config_error("AVC sequence header")),
            Codec::H265 => hevc::parse_hevc_decoder_config(&record)
                .map(|c| c.params)
                .map_err(config_error("HEVC sequence header")),
            Codec::Av1 => av1::parse_av1_codec_config(&record)
                .map(|c| c.params)
                .map_err(config_error("AV1 sequence header")),
            _ => Ok(None),
        }
        .map_err(|e| self.error(at, e))?;
        Ok(CodecConfig::Video {
            codec,
            record,
            params,
        })
    }
}

fn config_error(what: &'static str) -> impl FnOnce(MediaError) -> FlvError {
    move |source| FlvError::Config { what, source }
}

/// Parses a video tag body (FLV spec v10.1 E.4.3.1, Enhanced RTMP v2
/// ExVideoTagHeader). Frame data and config records are zero-copy slices of
/// `body`. Errors other than [`FlvError::Empty`] are [`FlvError::InTag`].
pub fn parse_video(body: Bytes) -> Result<VideoTag, FlvError> {
    let b0 = *body.first().ok_or(FlvError::Empty)?;
    let mut t = TagParse {
        body: &body,
        tag_type: TAG_VIDEO,
        codec: None,
    };
    if b0 & 0x80 != 0 {
        return parse_ex_video(&mut t, b0);
    }
    let frame_type = b0 >> 4;
    let codec_id = b0 & 0x0F;
    if frame_type == 5 {
        // Video info/command frame: a UI8 command follows, no video data.
        return Ok(VideoTag::Command);
    }
    // The frame type only matters for coded frames; sequence headers and
    // end-of-sequence tags are accepted whatever it says.
    let codec = match codec_id {
        7 => Codec::H264,
        // 12 is not in the FLV spec; Chinese CDNs and ffmpeg forks use it
        // for HEVC framed exactly like AVC (hvcC as the sequence header).
        12 => Codec::H265,
        other => return Err(t.error(0, FlvError::UnsupportedVideoCodec(other))),
    };
    t.codec = Some(codec);
    let packet_type = t.byte(1, "AVCPacketType")?;
    match packet_type {
        0 => {
            t.need(2, 3, "AVC sequence header CompositionTime")?;
            t.video_config(codec, 5).map(VideoTag::Config)
        }
        1 => {
            let cts = si24(t.array::<3>(2, "AVC NALU CompositionTime")?);
            Ok(VideoTag::Frame {
                codec,
                keyframe: t.keyframe(frame_type)?,
                cts,
                data: body.slice(5..),
            })
        }
        // End of sequence: the CompositionTime that follows carries nothing,
        // and some encoders omit it.
        2 => Ok(VideoTag::EndOfSequence(codec)),
        other => Err(t.error(
            1,
            FlvError::UnknownPacketType {
                what: "AVCPacketType",
                value: other,
            },
        )),
    }
}

/// The Enhanced RTMP branch: IsExHeader | FrameType (3 bits) | PacketType (4 bits).
fn parse_ex_video(t: &mut TagParse<'_>, b0: u8) -> Result<VideoTag, FlvError> {
    let frame_type = (b0 >> 4) & 0x07;
    let (mut pos, packet_type, type_at) = t.skip_mod_ex(b0 & 0x0F)?;
    // Metadata ignores the frame type; otherwise a command frame carries a
    // UI8 command and no FourCC or payload.
    if packet_type != 4 && frame_type == 5 {
        return Ok(VideoTag::Command);
    }
    match packet_type {
        4 => return Ok(VideoTag::Metadata),
        6 => {
            return Err(t.error(
                type_at,
                FlvError::Unsupported("E-RTMP multitrack video is not supported"),
            ))
        }
        _ => {}
    }
    let fourcc = t.array::<4>(pos, "E-RTMP video FourCC")?;
    let codec = match &fourcc {
        b"avc1" => Codec::H264,
        b"hvc1" => Codec::H265,
        b"av01" => Codec::Av1,
        b"vp09" => Codec::Vp9,
        _ => {
            return Err(t.error(
                pos,
                FlvError::UnknownFourCc {
                    kind: "video",
                    fourcc: fourcc_string(fourcc),
                },
            ))
        }
    };
    t.codec = Some(codec);
    pos += 4;
    match packet_type {
        0 => t.video_config(codec, pos).map(VideoTag::Config),
        // CodedFrames: only avc1/hvc1 carry an SI24 composition time.
        1 => {
            let mut cts = 0;
            if matches!(codec, Codec::H264 | Codec::H265) {
                cts = si24(t.array::<3>(pos, "E-RTMP CodedFrames CompositionTime")?);
                pos += 3;
            }
            Ok(VideoTag::Frame {
                codec,
                keyframe: t.keyframe(frame_type)?,
                cts,
                data: t.body.slice(pos..),
            })
        }
        2 => Ok(VideoTag::EndOfSequence(codec)),
        3 => Ok(VideoTag::Frame {
            codec,
            keyframe: t.keyframe(frame_type)?,
            cts: 0,
            data: t.body.slice(pos..),
        }),
        // MPEG2TSSequenceStart carries an AV1 video descriptor instead of
        // av1C; keep it as the record, without parameters.
        5 if codec == Codec::Av1 => Ok(VideoTag::Config(CodecConfig::Video {
            codec,
            record: t.body.slice(pos..),
            params: None,
        })),
        5 => Err(t.error(
            type_at,
            FlvError::Unsupported("E-RTMP MPEG2TSSequenceStart is only defined for av01"),
        )),
        other => Err(t.error(
            type_at,
            FlvError::UnknownPacketType {
                what: "E-RTMP VideoPacketType",
                value: other,
            },
        )),
    }
}

/// Parses an audio tag body (FLV spec v10.1 E.4.2.1, Enhanced RTMP v2
/// ExAudioTagHeader). Frame data and configs are zero-copy slices of `body`.
/// Errors other than [`FlvError::Empty`] and [`FlvError::Ignored`] are
/// [`FlvError::InTag`].
pub fn parse_audio(body: Bytes) -> Result<AudioTag, FlvError> {
    let b0 = *body.first().ok_or(FlvError::Empty)?;
    let mut t = TagParse {
        body: &body,
        tag_type: TAG_AUDIO,
        codec: None,
    };
    match b0 >> 4 {
        10 => {
            t.codec = Some(Codec::Aac);
            let packet_type = t.byte(1, "AACPacketType")?;
            match packet_type {
                0 => {
                    let config = body.slice(2..);
                    let params = aac::parse_audio_specific_config(&config)
                        .map_err(config_error("AAC sequence header"))
                        .map_err(|e| t.error(2, e))?;
                    Ok(AudioTag::Config(CodecConfig::Audio {
                        codec: Codec::Aac,
                        config,
                        params: Some(params),
                    }))
                }
                1 => Ok(AudioTag::Frame {
                    codec: Codec::Aac,
                    data: body.slice(2..),
                }),
                other => Err(t.error(
                    1,
                    FlvError::UnknownPacketType {
                        what: "AACPacketType",
                        value: other,
                    },
                )),
            }
        }
        // 2 = MP3, 14 = MP3 8 kHz.
        2 | 14 => Ok(AudioTag::Frame {
            codec: Codec::Mp3,
            data: body.slice(1..),
        }),
        // Enhanced RTMP v2: SoundFormat 9 = ExHeader (FourCC audio).
        9 => parse_ex_audio(&mut t, b0),
        _ => Ok(AudioTag::Frame {
            codec: Codec::Other,
            data: body.slice(1..),
        }),
    }
}

/// The Enhanced RTMP audio branch: SoundFormat 9 | AudioPacketType (4 bits), FourCC.
fn parse_ex_audio(t: &mut TagParse<'_>, b0: u8) -> Result<AudioTag, FlvError> {
    let (mut pos, packet_type, type_at) = t.skip_mod_ex(b0 & 0x0F)?;
    if packet_type == 5 {
        return Err(t.error(
            type_at,
            FlvError::Unsupported("E-RTMP multitrack audio is not supported"),
        ));
    }
    let fourcc = t.array::<4>(pos, "E-RTMP audio FourCC")?;
    let codec = match &fourcc {
        b"mp4a" => Codec::Aac,
        b"Opus" => Codec::Opus,
        b".mp3" => Codec::Mp3,
        // Known to E-RTMP, carried as-is.
        b"ac-3" | b"ec-3" | b"fLaC" => Codec::Other,
        _ => {
            return Err(t.error(
                pos,
                FlvError::UnknownFourCc {
                    kind: "audio",
                    fourcc: fourcc_string(fourcc),
                },
            ))
        }
    };
    t.codec = Some(codec);
    pos += 4;
    let payload = t.body.slice(pos..);
    match packet_type {
        0 => {
            let params = match codec {
                Codec::Aac => Some(
                    aac::parse_audio_specific_config(&payload)
                        .map_err(config_error("AAC sequence header")),
                ),
                Codec::Opus => Some(
                    opus::parse_opus_head(&payload).map_err(config_error("Opus sequence header")),
                ),
                _ => None,
            }
            .transpose()
            .map_err(|e| t.error(pos, e))?;
            Ok(AudioTag::Config(CodecConfig::Audio {
                codec,
                config: payload,
                params,
            }))
        }
        1 => Ok(AudioTag::Frame {
            codec,
            data: payload,
        }),
        2 => Err(FlvError::Ignored("E-RTMP audio SequenceEnd")),
        4 => Err(FlvError::Ignored("E-RTMP audio MultichannelConfig")),
        other => Err(t.error(
            type_at,
            FlvError::UnknownPacketType {
                what: "E-RTMP AudioPacketType",
                value: other,
            },
        )),
    }
}

fn ex_video_fourcc(codec: Codec) -> Option<&'static [u8; 4]> {
    match codec {
        Codec::H265 => Some(b"hvc1"),
        Codec::Av1 => Some(b"av01"),
        Codec::Vp9 => Some(b"vp09"),
        Codec::H264 => Some(b"avc1"),
        _ => None,
    }
}

/// Builds a video tag body: legacy AVC framing for H.264 (what every FLV
/// reader understands), Enhanced RTMP FourCC framing for HEVC, AV1 and VP9.
/// `parse_video(build_video(t)?) == t` for every tag this accepts.
pub fn build_video(tag: &VideoTag) -> Result<Bytes, FlvError> {
    let mut out = BytesMut::new();
    match tag {
        VideoTag::Config(CodecConfig::Video { codec, record, .. }) => {
            if *codec == Codec::H264 {
                out.put_slice(&[0x17, 0, 0, 0, 0]);
            } else {
                let fourcc = ex_video_fourcc(*codec).ok_or(FlvError::Unsupported(
                    "codec cannot be written as FLV video",
                ))?;
                out.put_u8(0x80 | 0x10);
                out.put_slice(fourcc);
            }
            out.put_slice(record);
        }
        VideoTag::Config(CodecConfig::Audio { .. }) => {
            return Err(FlvError::Unsupported(
                "an audio config cannot be written as a video tag",
            ))
        }
        VideoTag::Frame {
            codec,
            keyframe,
            cts,
            data,
        } => {
            let frame_type: u8 = if *keyframe { 1 } else { 2 };
            if *codec == Codec::H264 {
                out.put_u8(frame_type << 4 | 7);
                out.put_u8(1);
                out.put_slice(&si24_bytes(*cts)?);
            } else {
                let fourcc = ex_video_fourcc(*codec).ok_or(FlvError::Unsupported(
                    "codec cannot be written as FLV video",
                ))?;
                let with_cts = *codec == Codec::H265 && *cts != 0;
                if *cts != 0 && !with_cts {
                    return Err(FlvError::CtsOutOfRange(*cts));
                }
                out.put_u8(0x80 | frame_type << 4 | if with_cts { 1 } else { 3 });
                out.put_slice(fourcc);
                if with_cts {
                    out.put_slice(&si24_bytes(*cts)?);
                }
            }
            out.put_slice(data);
        }
        VideoTag::EndOfSequence(codec) => {
            if *codec == Codec::H264 {
                out.put_slice(&[0x17, 2, 0, 0, 0]);
            } else {
                let fourcc = ex_video_fourcc(*codec).ok_or(FlvError::Unsupported(
                    "codec cannot be written as FLV video",
                ))?;
                out.put_u8(0x80 | 0x10 | 2);
                out.put_slice(fourcc);
            }
        }
        VideoTag::Command => out.put_slice(&[0x57, 0]),
        VideoTag::Metadata => {
            return Err(FlvError::Unsupported(
                "E-RTMP video metadata is not retained and cannot be rebuilt",
            ))
        }
    }
    Ok(out.freeze())
}

/// Builds an audio tag body: legacy framing for AAC (0xAF) and MP3, Enhanced
/// RTMP FourCC framing for Opus.
pub fn build_audio(tag: &AudioTag) -> Result<Bytes, FlvError> {
    let mut out = BytesMut::new();
    match tag {
        AudioTag::Config(CodecConfig::Audio { codec, config, .. }) => {
            match codec {
                // 0xAF: AAC, 44 kHz, 16-bit, stereo; E.4.2.1 fixes these bits for AAC.
                Codec::Aac => out.put_slice(&[0xAF, 0]),
                Codec::Opus => {
                    out.put_u8(0x90);
                    out.put_slice(b"Opus");
                }
                _ => {
                    return Err(FlvError::Unsupported(
                        "codec has no FLV audio sequence header",
                    ))
                }
            }
            out.put_slice(config);
        }
        AudioTag::Config(CodecConfig::Video { .. }) => {
            return Err(FlvError::Unsupported(
                "a video config cannot be written as an audio tag",
            ))
        }
        AudioTag::Frame { codec, data } => {
            match codec {
                Codec::Aac => out.put_slice(&[0xAF, 1]),
                // MP3, 44 kHz, 16-bit, stereo.
                Codec::Mp3 => out.put_u8(0x2F),
                Codec::Opus => {
                    out.put_u8(0x91);
                    out.put_slice(b"Opus");
                }
                _ => {
                    return Err(FlvError::Unsupported(
                        "codec cannot be written as FLV audio",
                    ))
                }
            }
            out.put_slice(data);
        }
    }
    Ok(out.freeze())
}

/// The 9-byte FLV file header (FLV spec v10.1 E.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub version: u8,
    pub has_audio: bool,
    pub has_video: bool,
}

/// One tag of an FLV file (FLV spec v10.1 E.4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct FileTag {
    /// 8 audio, 9 video, 18 script data.
    pub tag_type: u8,
    /// Milliseconds: 24 bits plus the extended upper byte.
    pub timestamp: u32,
    pub body: Bytes,
}

/// Iterates the tags of an in-memory FLV file. Tag bodies are zero-copy
/// slices of the input. The first error ends the iteration.
#[derive(Debug, Clone)]
pub struct FileReader {
    data: Bytes,
    pos: usize,
    header: FileHeader,
    done: bool,
}

impl FileReader {
    /// Parses the file header and PreviousTagSize0.
    pub fn new(data: impl Into<Bytes>) -> Result<Self, FlvError> {
        let data: Bytes = data.into();
        let head = array_at::<9>(&data, 0, "FLV file header")?;
        if &head[..3] != b"FLV" {
            return Err(FlvError::BadFileHeader("missing \"FLV\" signature"));
        }
        let header = FileHeader {
            version: head[3],
            has_audio: head[4] & 0x04 != 0,
            has_video: head[4] & 0x01 != 0,
        };
        let data_offset = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        let data_offset = usize::try_from(data_offset)
            .map_err(|_| FlvError::BadFileHeader("DataOffset out of range"))?;
        if data_offset < 9 {
            return Err(FlvError::BadFileHeader(
                "DataOffset is smaller than the 9-byte header",
            ));
        }
        array_at::<4>(&data, data_offset, "FLV PreviousTagSize0")?;
        Ok(FileReader {
            data,
            pos: data_offset + 4,
            header,
            done: false,
        })
    }

    /// The file header.
    pub fn header(&self) -> FileHeader {
        self.header
    }

    /// Byte offset of the next tag.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn read_tag(&mut self) -> Result<FileTag, FlvError> {
        let start = self.pos;
        let h = array_at::<11>(&self.data, start, "FLV tag header")?;
        if h[0] & 0x20 != 0 {
            return Err(FlvError::Unsupported(
                "encrypted (filtered) FLV tags are not supported",
            ));
        }
        let tag_type = h[0] & 0x1F;
        let size = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body_at = start + 11;
        need(&self.data, body_at, size, "FLV tag body")?;
        // PreviousTagSize is read but not enforced: some writers get it
        // wrong, and the tag size field is what delimits tags.
        array_at::<4>(&self.data, body_at + size, "FLV PreviousTagSize")?;
        self.pos = body_at + size + 4;
        Ok(FileTag {
            tag_type,
            timestamp,
            body: self.data.slice(body_at..body_at + size),
        })
    }
}

impl Iterator for FileReader {
    type Item = Result<FileTag, FlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.data.len() {
            return None;
        }
        let r = self.read_tag();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Writes an FLV file (header, then tags each followed by PreviousTagSize)
/// into a growing buffer. `take` hands out what was written so far, for
/// streaming into a pipe.
#[derive(Debug, Clone)]
pub struct FileWriter {
    buf: BytesMut,
}

impl FileWriter {
    /// Starts a file: the 9-byte header with the audio/video flags, and
    /// PreviousTagSize0 = 0.
    pub fn new(has_audio: bool, has_video: bool) -> Self {
        let mut buf = BytesMut::with_capacity(13);
        buf.put_slice(b"FLV");
        buf.put_u8(1);
        buf.put_u8(if has_audio { 0x04 } else { 0 } | if has_video { 0x01 } else { 0 });
        buf.put_u32(9);
        buf.put_u32(0);
        FileWriter { buf }
    }

    /// Appends one tag. The timestamp's upper 8 bits go to TimestampExtended.
    pub fn write_tag(&mut self, tag_type: u8, timestamp: u32, body: &[u8]) -> Result<(), FlvError> {
        if tag_type > 0x1F {
            return Err(FlvError::InvalidTagType(tag_type));
        }
        let len = body.len();
        let size = u32::try_from(len)
            .ok()
            .filter(|&s| s <= 0xFF_FFFF)
            .ok_or(FlvError::TagTooLarge { len })?;
        let ts = timestamp.to_be_bytes();
        let sz = size.to_be_bytes();
        self.buf.reserve(11 + len + 4);
        self.buf.put_u8(tag_type);
        self.buf.put_slice(&sz[1..]);
        self.buf.put_slice(&ts[1..]);
        self.buf.put_u8(ts[0]);
        self.buf.put_slice(&[0, 0, 0]); // StreamID
        self.buf.put_slice(body);
        // size <= 2^24 - 1, so 11 + size fits u32.
        self.buf.put_u32(size + 11);
        Ok(())
    }

    /// Appends a [`FileTag`].
    pub fn write(&mut self, tag: &FileTag) -> Result<(), FlvError> {
        self.write_tag(tag.tag_type, tag.timestamp, &tag.body)
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether everything written has been taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Hands out everything written since the last call (the header included
    /// the first time).
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// The buffer with everything not yet taken.
    pub fn into_inner(self) -> BytesMut {
        self.buf
    }
}

/// Fuzzing entry point. Byte 0 selects the target (0 video tag, 1 audio tag,
/// 2 FLV file, 3 raw parameter-set parsers); the rest is the input. Configs
/// found are run through the SPS parsers and tags are rebuilt and re-parsed.
/// Must never panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_tag(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    match selector % 4 {
        0 => fuzz_video(body),
        1 => fuzz_audio(body),
        2 => {
            if let Ok(reader) = FileReader::new(body) {
                for tag in reader.flatten() {
                    match tag.tag_type {
                        TAG_VIDEO => fuzz_video(tag.body),
                        TAG_AUDIO => fuzz_audio(tag.body),
                        _ => {}
                    }
                }
            }
        }
        _ => {
            let _ = h264::parse_sps(rest);
            let _ = hevc::parse_sps(rest);
            let _ = h264::parse_avc_decoder_config(rest);
            let _ = hevc::parse_hevc_decoder_config(rest);
            let _ = av1::parse_av1_codec_config(rest);
            let _ = av1::parse_sequence_header_obu(rest);
            let _ = aac::parse_audio_specific_config(rest);
            let _ = opus::parse_opus_head(rest);
            let mut timeline = crate::media::Timeline::new(10_000);
            for chunk in rest.chunks_exact(4) {
                if let Ok(raw) = <[u8; 4]>::try_from(chunk) {
                    let _ = timeline.unwrap(u32::from_be_bytes(raw));
                }
            }
        }
    }
}

#[cfg(feature = "fuzzing")]
fn fuzz_video(body: Bytes) {
    let Ok(tag) = parse_video(body) else {
        return;
    };
    if let VideoTag::Config(CodecConfig::Video { codec, record, .. }) = &tag {
        match codec {
            Codec::H264 => {
                if let Ok(c) = h264::parse_avc_decoder_config(record) {
                    for sps in &c.sps {
                        let _ = h264::parse_sps(sps);
                    }
                }
            }
            Codec::H265 => {
                if let Ok(c) = hevc::parse_hevc_decoder_config(record) {
                    for sps in &c.sps {
                        let _ = hevc::parse_sps(sps);
                    }
                }
            }
            _ => {}
        }
    }
    if let Ok(rebuilt) = build_video(&tag) {
        let _ = parse_video(rebuilt);
    }
}

#[cfg(feature = "fuzzing")]
fn fuzz_audio(body: Bytes) {
    let Ok(tag) = parse_audio(body) else {
        return;
    };
    if let Ok(rebuilt) = build_audio(&tag) {
        let _ = parse_audio(rebuilt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioParams, VideoParams};

    // Fixtures. The ffmpeg5.1-x264-* files were written by ffmpeg 5.1 (Debian
    // 12) straight to FLV, e.g.
    //   ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=sample_rate=48000 -t 0.2 \
    //     -c:v libx264 -preset veryfast -crf 45 -c:a aac -ac 2 -b:a 32k -f flv ...
    // (1918x1078: -preset ultrafast -crf 51, one frame; high444-cqm: -pix_fmt yuv444p with custom
    // cqm4/cqm8 matrices so the SPS carries 12 scaling lists, audio 44.1 kHz mono).
    // ffmpeg 5.1 cannot write HEVC or AV1 to FLV, so the x265/aom files hold one frame encoded by
    // ffmpeg 5.1 (libx265 1280x720 and 322x182, libaom 320x180) into MP4, with the hvcC/av1C record
    // and the sample re-wrapped by a short script into E-RTMP tags: SequenceStart, CodedFrames
    // (keyframe; hvc1 with CTS 0), SequenceEnd.
    const X264_640: &[u8] = include_bytes!("../tests/fixtures/ffmpeg5.1-x264-640x360-aac.flv");
    const X264_1918: &[u8] = include_bytes!("../tests/fixtures/ffmpeg5.1-x264-1918x1078.flv");
    const X264_444: &[u8] =
        include_bytes!("../tests/fixtures/ffmpeg5.1-x264-high444-cqm-320x240-aac-mono.flv");
    const X265_720: &[u8] =
        include_bytes!("../tests/fixtures/ffmpeg5.1-x265-1280x720-ertmp-hvc1.flv");
    const X265_322: &[u8] =
        include_bytes!("../tests/fixtures/ffmpeg5.1-x265-322x182-ertmp-hvc1.flv");
    const AOM_320: &[u8] = include_bytes!("../tests/fixtures/ffmpeg5.1-aom-320x180-ertmp-av01.flv");

    const ALL: [&[u8]; 6] = [X264_640, X264_1918, X264_444, X265_720, X265_322, AOM_320];

    fn tags(file: &'static [u8]) -> Vec<FileTag> {
        FileReader::new(Bytes::from_static(file))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn videos(file: &'static [u8]) -> Vec<VideoTag> {
        tags(file)
            .into_iter()
            .filter(|t| t.tag_type == TAG_VIDEO)
            .map(|t| parse_video(t.body).unwrap())
            .collect()
    }

    fn audios(file: &'static [u8]) -> Vec<AudioTag> {
        tags(file)
            .into_iter()
            .filter(|t| t.tag_type == TAG_AUDIO)
            .map(|t| parse_audio(t.body).unwrap())
            .collect()
    }

    fn video_params(tag: &VideoTag) -> (Codec, VideoParams) {
        match tag {
            VideoTag::Config(CodecConfig::Video {
                codec,
                params: Some(p),
                ..
            }) => (*codec, p.clone()),
            other => panic!("expected a video config with params, got {other:?}"),
        }
    }

    fn audio_params(tag: &AudioTag) -> AudioParams {
        match tag {
            AudioTag::Config(CodecConfig::Audio {
                codec: Codec::Aac,
                params: Some(p),
                ..
            }) => p.clone(),
            other => panic!("expected an AAC config, got {other:?}"),
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn byte(&mut self) -> u8 {
            (self.next() >> 32) as u8
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn reads_x264_aac_file_from_ffmpeg() {
        let t = tags(X264_640);
        assert_eq!(t[0].tag_type, TAG_SCRIPT);
        let h = FileReader::new(Bytes::from_static(X264_640))
            .unwrap()
            .header();
        assert_eq!(
            h,
            FileHeader {
                version: 1,
                has_audio: true,
                has_video: true
            }
        );

        let v = videos(X264_640);
        let (codec, p) = video_params(&v[0]);
        assert_eq!(codec, Codec::H264);
        assert_eq!((p.width, p.height), (640, 360));
        assert_eq!(p.profile.as_deref(), Some("High"));
        assert_eq!(p.level, Some(30));
        // ffmpeg ends the stream with an AVC end-of-sequence tag.
        assert_eq!(v.last(), Some(&VideoTag::EndOfSequence(Codec::H264)));
        let frames: Vec<_> = v[1..v.len() - 1]
            .iter()
            .map(|f| match f {
                VideoTag::Frame {
                    codec: Codec::H264,
                    keyframe,
                    cts,
                    data,
                } => (*keyframe, *cts, data.len()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(frames[0].0, "first frame is a keyframe");
        assert!(frames[1..].iter().all(|f| !f.0));
        // B-frames: x264 veryfast reorders, so some frames present later than they decode.
        assert!(frames.iter().any(|f| f.1 > 0));
        assert!(frames.iter().all(|f| f.2 > 4));

        let a = audios(X264_640);
        assert_eq!(
            audio_params(&a[0]),
            AudioParams {
                sample_rate: 48000,
                channels: 2,
                object_type: Some(2)
            }
        );
        assert!(a[1..]
            .iter()
            .all(|t| matches!(t, AudioTag::Frame { codec: Codec::Aac, data } if !data.is_empty())));
    }

    #[test]
    fn sps_cropping_gives_1918x1078() {
        let (_, p) = video_params(&videos(X264_1918)[0]);
        assert_eq!((p.width, p.height), (1918, 1078));
        assert_eq!(p.profile.as_deref(), Some("Baseline"));
    }

    #[test]
    fn high_444_sps_with_scaling_matrices_and_mono_aac() {
        let (_, p) = video_params(&videos(X264_444)[0]);
        assert_eq!((p.width, p.height), (320, 240));
        assert_eq!(p.profile.as_deref(), Some("High 4:4:4"));
        let a = audios(X264_444);
        assert_eq!(
            audio_params(&a[0]),
            AudioParams {
                sample_rate: 44100,
                channels: 1,
                object_type: Some(2)
            }
        );
    }

    #[test]
    fn ertmp_hvc1_config_frame_and_end_from_x265() {
        let v = videos(X265_720);
        let (codec, p) = video_params(&v[0]);
        assert_eq!(codec, Codec::H265);
        assert_eq!((p.width, p.height), (1280, 720));
        assert_eq!(p.profile.as_deref(), Some("Main"));
        assert_eq!(p.level, Some(93));
        assert!(
            matches!(&v[1], VideoTag::Frame { codec: Codec::H265, keyframe: true, cts: 0, data } if data.len() > 100)
        );
        assert_eq!(v[2], VideoTag::EndOfSequence(Codec::H265));
        if let VideoTag::Config(CodecConfig::Video { record, .. }) = &v[0] {
            let c = hevc::parse_hevc_decoder_config(record).unwrap();
            assert_eq!((c.vps.len(), c.sps.len(), c.pps.len()), (1, 1, 1));
            assert_eq!(c.nal_length_size, 4);
        }
    }

    #[test]
    fn hevc_conformance_window_gives_322x182() {
        let (_, p) = video_params(&videos(X265_322)[0]);
        assert_eq!((p.width, p.height), (322, 182));
    }

    #[test]
    fn legacy_codec_id_12_hevc_is_framed_like_avc() {
        let v = videos(X265_720);
        let VideoTag::Config(CodecConfig::Video { record, params, .. }) = &v[0] else {
            panic!("no config");
        };
        let mut body = vec![0x1C, 0, 0, 0, 0];
        body.extend_from_slice(record);
        let tag = parse_video(Bytes::from(body)).unwrap();
        assert_eq!(
            tag,
            VideoTag::Config(CodecConfig::Video {
                codec: Codec::H265,
                record: record.clone(),
                params: params.clone()
            })
        );
        let tag = parse_video(Bytes::from_static(&[
            0x2C, 1, 0xFF, 0xFF, 0xDF, 0, 0, 0, 1, 0x02,
        ]))
        .unwrap();
        assert_eq!(
            tag,
            VideoTag::Frame {
                codec: Codec::H265,
                keyframe: false,
                cts: -33,
                data: Bytes::from_static(&[0, 0, 0, 1, 2])
            }
        );
    }

    #[test]
    fn ertmp_av01_sequence_start_reads_the_sequence_header() {
        let v = videos(AOM_320);
        let (codec, p) = video_params(&v[0]);
        assert_eq!(codec, Codec::Av1);
        assert_eq!((p.width, p.height), (320, 180));
        // av01 CodedFrames carry no composition time: the data starts with the
        // sequence header OBU libaom repeats in its keyframe.
        assert!(
            matches!(&v[1], VideoTag::Frame { codec: Codec::Av1, keyframe: true, cts: 0, data } if data.first() == Some(&0x0A))
        );
    }

    #[test]
    fn avc_composition_time_is_sign_extended() {
        let cases: [([u8; 3], i32); 5] = [
            ([0xFF, 0xFF, 0xD8], -40),
            ([0x00, 0x00, 0x42], 66),
            ([0x7F, 0xFF, 0xFF], 0x7F_FFFF),
            ([0x80, 0x00, 0x00], -0x80_0000),
            ([0xFF, 0xFF, 0xFF], -1),
        ];
        for (bytes, want) in cases {
            let mut body = vec![0x27, 1];
            body.extend_from_slice(&bytes);
            body.extend_from_slice(&[0, 0, 0, 1, 0x41]);
            match parse_video(Bytes::from(body)).unwrap() {
                VideoTag::Frame {
                    cts,
                    keyframe: false,
                    codec: Codec::H264,
                    ..
                } => assert_eq!(cts, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ertmp_hvc1_coded_frames_carry_cts_and_coded_frames_x_do_not() {
        // IsExHeader | inter frame (2) | CodedFrames (1), hvc1, SI24 CTS = -66.
        let body = [
            0x80 | 0x20 | 1,
            b'h',
            b'v',
            b'c',
            b'1',
            0xFF,
            0xFF,
            0xBE,
            0,
            0,
            0,
            2,
            0x02,
            0x01,
        ];
        assert_eq!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Frame {
                codec: Codec::H265,
                keyframe: false,
                cts: -66,
                data: Bytes::from_static(&[0, 0, 0, 2, 2, 1])
            }
        );
        let body = [
            0x80 | 0x10 | 1,
            b'h',
            b'v',
            b'c',
            b'1',
            0x00,
            0x00,
            0x21,
            0xAA,
        ];
        assert!(matches!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Frame {
                keyframe: true,
                cts: 33,
                ..
            }
        ));
        // CodedFramesX: no CTS field, data starts right after the FourCC.
        let body = [
            0x80 | 0x10 | 3,
            b'h',
            b'v',
            b'c',
            b'1',
            0,
            0,
            0,
            2,
            0x26,
            0x01,
        ];
        assert_eq!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Frame {
                codec: Codec::H265,
                keyframe: true,
                cts: 0,
                data: Bytes::from_static(&[0, 0, 0, 2, 0x26, 1])
            }
        );
        // avc1 under E-RTMP also carries a CTS; generated keyframes count as keyframes.
        let body = [0x80 | 0x40 | 1, b'a', b'v', b'c', b'1', 0, 0, 5, 7];
        assert!(matches!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Frame {
                codec: Codec::H264,
                keyframe: true,
                cts: 5,
                ..
            }
        ));
        // Truncated CTS.
        let e = parse_video(Bytes::from_static(&[0x91, b'h', b'v', b'c', b'1', 0])).unwrap_err();
        assert!(e.to_string().contains("CompositionTime"), "{e}");
    }

    #[test]
    fn ertmp_modex_prelude_is_skipped() {
        // ModEx (7) with 3 bytes of TimestampOffsetNano, then CodedFramesX.
        let body = [
            0x80 | 0x10 | 7,
            2,
            0x01,
            0x02,
            0x03,
            0x03,
            b'v',
            b'p',
            b'0',
            b'9',
            0xAB,
        ];
        assert_eq!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Frame {
                codec: Codec::Vp9,
                keyframe: true,
                cts: 0,
                data: Bytes::from_static(&[0xAB])
            }
        );
        // 16-bit size escape: 0xFF means UI16 + 1 follows (here 300 bytes).
        let mut body = vec![0x80 | 0x20 | 7, 0xFF, 0x01, 0x2B];
        body.extend_from_slice(&[0u8; 300]);
        body.extend_from_slice(&[0x01, b'h', b'v', b'c', b'1', 0, 0, 1, 0xCD]);
        assert!(matches!(
            parse_video(Bytes::from(body)).unwrap(),
            VideoTag::Frame {
                cts: 1,
                keyframe: false,
                ..
            }
        ));
        // A ModEx size running past the end is a truncation, not a panic.
        let e = parse_video(Bytes::from_static(&[0x97, 0xFF, 0xFF, 0xFF, 0])).unwrap_err();
        assert!(
            matches!(
                e.problem(),
                FlvError::Truncated {
                    what: "E-RTMP ModEx data",
                    ..
                }
            ),
            "{e}"
        );
        // Audio has the same prelude.
        let body = [0x97, 0, 0x55, 0x01, b'O', b'p', b'u', b's', 0xFC];
        assert_eq!(
            parse_audio(Bytes::copy_from_slice(&body)).unwrap(),
            AudioTag::Frame {
                codec: Codec::Opus,
                data: Bytes::from_static(&[0xFC])
            }
        );
    }

    #[test]
    fn unsupported_ertmp_features_are_clear_errors() {
        let e = parse_video(Bytes::from_static(&[0x96, 0x00, b'h', b'v', b'c', b'1'])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "E-RTMP multitrack video is not supported, in video tag at byte 0: 96 00 68 76 63 31"
        );
        let e = parse_video(Bytes::from_static(&[0x91, b'x', b'y', b'z', b'!', 0])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown E-RTMP video FourCC 'xyz!', in video tag at byte 1: 91 78 79 7a 21 00"
        );
        let e = parse_video(Bytes::from_static(&[0x91, b'v', b'p', b'0', b'8', 0])).unwrap_err();
        assert!(e.to_string().contains("vp08"), "{e}");
        let e = parse_video(Bytes::from_static(&[0x9A, b'h', b'v', b'c', b'1'])).unwrap_err();
        assert_eq!(e.problem().to_string(), "unknown E-RTMP VideoPacketType 10");
        let e = parse_video(Bytes::from_static(&[0x95, b'h', b'v', b'c', b'1'])).unwrap_err();
        assert!(e.to_string().contains("MPEG2TSSequenceStart"), "{e}");
        // MPEG2TSSequenceStart for av01 is a config without params.
        let t = parse_video(Bytes::from_static(&[
            0x95, b'a', b'v', b'0', b'1', 0x80, 0x04,
        ]))
        .unwrap();
        assert_eq!(
            t,
            VideoTag::Config(CodecConfig::Video {
                codec: Codec::Av1,
                record: Bytes::from_static(&[0x80, 4]),
                params: None
            })
        );
        let e = parse_audio(Bytes::from_static(&[0x95, 0x00, b'm', b'p', b'4', b'a'])).unwrap_err();
        assert_eq!(
            e.problem().to_string(),
            "E-RTMP multitrack audio is not supported"
        );
        let e = parse_audio(Bytes::from_static(&[0x91, b'w', b'a', b'v', b'e'])).unwrap_err();
        assert_eq!(
            e.problem().to_string(),
            "unknown E-RTMP audio FourCC 'wave'"
        );
        let e = parse_audio(Bytes::from_static(&[0x92, b'O', b'p', b'u', b's'])).unwrap_err();
        assert!(matches!(e, FlvError::Ignored(_)), "{e}");
        let e = parse_audio(Bytes::from_static(&[0x9B, b'O', b'p', b'u', b's'])).unwrap_err();
        assert_eq!(e.problem().to_string(), "unknown E-RTMP AudioPacketType 11");
    }

    #[test]
    fn command_and_metadata_tags_are_recognised() {
        assert_eq!(
            parse_video(Bytes::from_static(&[0x57, 0x01])).unwrap(),
            VideoTag::Command
        );
        // E-RTMP command frame: frame type 5, no FourCC.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x80 | 0x50 | 1, 0x00])).unwrap(),
            VideoTag::Command
        );
        // Metadata ignores the frame type.
        let body = [0x80 | 0x50 | 4, b'h', b'v', b'c', b'1', 0x02, 0x00, 0x0A];
        assert_eq!(
            parse_video(Bytes::copy_from_slice(&body)).unwrap(),
            VideoTag::Metadata
        );
        assert_eq!(
            parse_video(Bytes::from_static(&[0x17, 2, 0, 0, 0])).unwrap(),
            VideoTag::EndOfSequence(Codec::H264)
        );
        assert_eq!(
            parse_video(Bytes::from_static(&[0x17, 2])).unwrap(),
            VideoTag::EndOfSequence(Codec::H264)
        );
        assert_eq!(
            parse_video(Bytes::from_static(&[0x92, b'a', b'v', b'0', b'1'])).unwrap(),
            VideoTag::EndOfSequence(Codec::Av1)
        );
    }

    #[test]
    fn empty_and_truncated_bodies_are_errors() {
        assert_eq!(parse_video(Bytes::new()), Err(FlvError::Empty));
        assert_eq!(parse_audio(Bytes::new()), Err(FlvError::Empty));
        let e = parse_video(Bytes::from_static(&[0x17])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AVCPacketType: truncated, need 1 bytes, have 0, in video tag (h264) at byte 1: 17"
        );
        let e = parse_video(Bytes::from_static(&[0x27, 1, 0])).unwrap_err();
        assert!(matches!(
            e.problem(),
            FlvError::Truncated {
                what: "AVC NALU CompositionTime",
                offset: 2,
                need: 3,
                have: 1
            }
        ));
        assert!(parse_video(Bytes::from_static(&[0x17, 0, 0, 0])).is_err());
        assert!(parse_video(Bytes::from_static(&[0x91, b'h', b'v'])).is_err());
        assert!(parse_audio(Bytes::from_static(&[0xAF])).is_err());
        assert!(parse_audio(Bytes::from_static(&[0x90, b'O'])).is_err());
        // An AVC sequence header with no record at all.
        let e = parse_video(Bytes::from_static(&[0x17, 0, 0, 0, 0])).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid AVC sequence header: "),
            "{e}"
        );
        assert_eq!(e.context().map(|at| at.offset), Some(5), "{e}");
    }

    /// Parse errors say which tag, which codec, where in the body, and show
    /// the body's first bytes.
    #[test]
    fn errors_name_the_tag_codec_offset_and_bytes() {
        let e = parse_video(Bytes::from_static(&[0x91, b'h', b'v', b'c', b'1', 0])).unwrap_err();
        let at = e.context().expect("a context");
        assert_eq!(
            (at.tag_type, at.codec, at.offset),
            (TAG_VIDEO, Some(Codec::H265), 5)
        );
        assert_eq!(at.excerpt.bytes(), &[0x91, b'h', b'v', b'c', b'1', 0]);
        assert_eq!(
            e.to_string(),
            "E-RTMP CodedFrames CompositionTime: truncated, need 3 bytes, have 1, \
             in video tag (hevc) at byte 5: 91 68 76 63 31 00"
        );
        // A bad AudioSpecificConfig in an E-RTMP mp4a SequenceStart: the
        // config starts at byte 5; long bodies show their first 64 bytes.
        let mut body = vec![0x90, b'm', b'p', b'4', b'a', 0x16, 0x90];
        body.resize(100, 0);
        let e = parse_audio(Bytes::from(body)).unwrap_err();
        let at = e.context().expect("a context");
        assert_eq!(
            (at.tag_type, at.codec, at.offset),
            (TAG_AUDIO, Some(Codec::Aac), 5)
        );
        assert_eq!(at.excerpt.bytes().len(), 64);
        assert!(
            e.to_string().starts_with("invalid AAC sequence header: ")
                && e.to_string()
                    .contains(", in audio tag (aac) at byte 5: 90 6d 70 34 61 16 90 00")
                && e.to_string().ends_with(" 00 …"),
            "{e}"
        );
        // After a ModEx prelude the packet type is where the prelude left it.
        let e = parse_video(Bytes::from_static(&[
            0x97, 0, 0x55, 0x0A, b'h', b'v', b'c', b'1',
        ]))
        .unwrap_err();
        assert_eq!(e.context().map(|at| at.offset), Some(3), "{e}");
        // Keepalives and ignored packets stay bare: callers skip them.
        assert_eq!(parse_video(Bytes::new()), Err(FlvError::Empty));
        let e = parse_audio(Bytes::from_static(&[0x92, b'O', b'p', b'u', b's'])).unwrap_err();
        assert!(matches!(e, FlvError::Ignored(_)) && e.context().is_none());
    }

    #[test]
    fn unsupported_legacy_codecs_and_reserved_frame_types() {
        let problem = |body: &'static [u8]| {
            parse_video(Bytes::from_static(body))
                .unwrap_err()
                .problem()
                .clone()
        };
        assert_eq!(problem(&[0x12, 0, 0]), FlvError::UnsupportedVideoCodec(2));
        assert_eq!(problem(&[0x07, 1, 0, 0, 0]), FlvError::InvalidFrameType(0));
        assert_eq!(
            problem(&[0xE1, b'h', b'v', b'c', b'1', 0, 0, 0]),
            FlvError::InvalidFrameType(6)
        );
        // Disposable inter frames are inter frames.
        assert!(matches!(
            parse_video(Bytes::from_static(&[0x37, 1, 0, 0, 0])).unwrap(),
            VideoTag::Frame {
                keyframe: false,
                ..
            }
        ));
    }

    #[test]
    fn audio_formats_map_to_codecs() {
        assert_eq!(
            parse_audio(Bytes::from_static(&[0x2F, 0xFF, 0xFB])).unwrap(),
            AudioTag::Frame {
                codec: Codec::Mp3,
                data: Bytes::from_static(&[0xFF, 0xFB])
            }
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xE2, 0xFF])).unwrap(),
            AudioTag::Frame {
                codec: Codec::Mp3,
                data: Bytes::from_static(&[0xFF])
            }
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0x72, 0x01])).unwrap(),
            AudioTag::Frame {
                codec: Codec::Other,
                data: Bytes::from_static(&[0x01])
            }
        );
        let e = parse_audio(Bytes::from_static(&[0xAF, 0x07])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown AACPacketType 7, in audio tag (aac) at byte 1: af 07"
        );
        let e = parse_audio(Bytes::from_static(&[0xAF, 0, 0x16, 0x90])).unwrap_err();
        assert!(e.to_string().starts_with("invalid AAC sequence header: AudioSpecificConfig: invalid samplingFrequencyIndex = 13"), "{e}");
        // E-RTMP mp4a SequenceStart carries an AudioSpecificConfig.
        let t = parse_audio(Bytes::from_static(&[
            0x90, b'm', b'p', b'4', b'a', 0x12, 0x08,
        ]))
        .unwrap();
        assert_eq!(
            audio_params(&t),
            AudioParams {
                sample_rate: 44100,
                channels: 1,
                object_type: Some(2)
            }
        );
    }

    #[test]
    fn ertmp_opus_sequence_start_and_frames() {
        let mut body = vec![0x90, b'O', b'p', b'u', b's'];
        body.extend_from_slice(b"OpusHead");
        body.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
        let t = parse_audio(Bytes::from(body)).unwrap();
        match &t {
            AudioTag::Config(CodecConfig::Audio {
                codec: Codec::Opus,
                config,
                params,
            }) => {
                assert!(config.starts_with(b"OpusHead"));
                assert_eq!(
                    params,
                    &Some(AudioParams {
                        sample_rate: 48000,
                        channels: 2,
                        object_type: None
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_audio(build_audio(&t).unwrap()).unwrap(), t);
        let e = parse_audio(Bytes::from_static(&[0x90, b'O', b'p', b'u', b's', 1])).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid Opus sequence header"),
            "{e}"
        );
    }

    #[test]
    fn build_then_parse_round_trips_every_fixture_tag() {
        for file in ALL {
            for t in tags(file) {
                match t.tag_type {
                    TAG_VIDEO => {
                        let v = parse_video(t.body.clone()).unwrap();
                        let rebuilt = build_video(&v).unwrap();
                        assert_eq!(parse_video(rebuilt.clone()).unwrap(), v);
                        // ffmpeg writes H.264 exactly the way we do.
                        if file != X265_720 && file != X265_322 && file != AOM_320 {
                            assert_eq!(rebuilt, t.body);
                        }
                    }
                    TAG_AUDIO => {
                        let a = parse_audio(t.body.clone()).unwrap();
                        let rebuilt = build_audio(&a).unwrap();
                        assert_eq!(rebuilt, t.body);
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn builders_reject_what_flv_cannot_carry() {
        let f = |codec, cts| VideoTag::Frame {
            codec,
            keyframe: false,
            cts,
            data: Bytes::new(),
        };
        assert_eq!(
            build_video(&f(Codec::H264, 0x80_0000)),
            Err(FlvError::CtsOutOfRange(0x80_0000))
        );
        assert_eq!(
            build_video(&f(Codec::H265, -0x80_0001)),
            Err(FlvError::CtsOutOfRange(-0x80_0001))
        );
        assert_eq!(
            build_video(&f(Codec::Av1, 5)),
            Err(FlvError::CtsOutOfRange(5))
        );
        assert!(build_video(&f(Codec::Aac, 0)).is_err());
        assert!(build_video(&VideoTag::Metadata).is_err());
        assert!(build_audio(&AudioTag::Frame {
            codec: Codec::Other,
            data: Bytes::new()
        })
        .is_err());
        // Negative CTS survives a round trip in both framings.
        for codec in [Codec::H264, Codec::H265] {
            let t = f(codec, -0x80_0000);
            assert_eq!(parse_video(build_video(&t).unwrap()).unwrap(), t);
        }
        assert_eq!(
            parse_video(build_video(&VideoTag::Command).unwrap()).unwrap(),
            VideoTag::Command
        );
        for codec in [Codec::H264, Codec::H265, Codec::Av1, Codec::Vp9] {
            let t = VideoTag::EndOfSequence(codec);
            assert_eq!(parse_video(build_video(&t).unwrap()).unwrap(), t);
        }
    }

    #[test]
    fn every_truncation_of_real_tags_is_handled() {
        for file in ALL {
            for t in tags(file) {
                let parse = |b: Bytes| match t.tag_type {
                    TAG_VIDEO => parse_video(b).map(|_| ()),
                    TAG_AUDIO => parse_audio(b).map(|_| ()),
                    _ => Ok(()),
                };
                for n in 0..t.body.len() {
                    let r = parse(t.body.slice(..n));
                    if n == 0 && t.tag_type != TAG_SCRIPT {
                        assert_eq!(r, Err(FlvError::Empty));
                    }
                }
            }
        }
    }

    #[test]
    fn mutated_real_configs_never_panic() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for file in ALL {
            for t in tags(file)
                .into_iter()
                .filter(|t| t.tag_type != TAG_SCRIPT)
                .take(2)
            {
                for _ in 0..400 {
                    let mut body = t.body.to_vec();
                    let flips = 1 + rng.below(4);
                    for _ in 0..flips {
                        // Keep the tag header intact half of the time so the
                        // record and SPS parsers see the damage.
                        let from = if rng.below(2) == 0 {
                            5.min(body.len())
                        } else {
                            0
                        };
                        if body.len() > from {
                            let i = from + rng.below(body.len() - from);
                            body[i] = rng.byte();
                        }
                    }
                    let mut sel = vec![if t.tag_type == TAG_VIDEO { 0 } else { 1 }];
                    sel.extend_from_slice(&body);
                    fuzz_tag(&sel);
                    sel[0] = 3;
                    fuzz_tag(&sel);
                }
            }
        }
    }

    #[test]
    fn mutated_real_parameter_sets_never_panic() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let mut sets: Vec<(Codec, Bytes)> = Vec::new();
        for file in ALL {
            if let Some(VideoTag::Config(CodecConfig::Video { codec, record, .. })) =
                videos(file).first()
            {
                match codec {
                    Codec::H264 => {
                        let c = h264::parse_avc_decoder_config(record).unwrap();
                        sets.extend(c.sps.into_iter().map(|s| (Codec::H264, s)));
                    }
                    Codec::H265 => {
                        let c = hevc::parse_hevc_decoder_config(record).unwrap();
                        sets.extend(c.sps.into_iter().map(|s| (Codec::H265, s)));
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(sets.len(), 5);
        for (codec, sps) in &sets {
            let header = if *codec == Codec::H264 { 1 } else { 2 };
            for _ in 0..2000 {
                let mut m = sps.to_vec();
                for _ in 0..1 + rng.below(3) {
                    let i = header + rng.below(m.len() - header);
                    m[i] ^= 1 << rng.below(8);
                }
                m.truncate(header + rng.below(m.len() + 1 - header));
                let _ = h264::parse_sps(&m);
                let _ = hevc::parse_sps(&m);
            }
        }
    }

    #[test]
    fn pseudo_random_buffers_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let prefixes: [&[u8]; 10] = [
            &[],
            &[0x17, 0, 0, 0, 0, 1],
            &[0x1C, 0, 0, 0, 0, 1],
            &[0x27, 1],
            &[0x90, b'h', b'v', b'c', b'1', 1],
            &[0x90, b'a', b'v', b'0', b'1', 0x81],
            &[0x97],
            &[0xAF, 0],
            &[0x90, b'm', b'p', b'4', b'a'],
            &[0x67, 0x64],
        ];
        for i in 0..5000 {
            let prefix = prefixes[i % prefixes.len()];
            let len = rng.below(80);
            let mut buf = prefix.to_vec();
            buf.extend((0..len).map(|_| rng.byte()));
            let b = Bytes::from(buf.clone());
            let _ = parse_video(b.clone());
            let _ = parse_audio(b);
            let _ = h264::parse_sps(&buf);
            let _ = hevc::parse_sps(&buf);
            let _ = aac::parse_audio_specific_config(&buf);
            for sel in 0..4u8 {
                let mut d = vec![sel];
                d.extend_from_slice(&buf);
                fuzz_tag(&d);
            }
        }
        fuzz_tag(&[]);
    }

    #[test]
    fn fuzz_tag_accepts_whole_files() {
        for file in ALL {
            let mut d = vec![2];
            d.extend_from_slice(file);
            fuzz_tag(&d);
        }
    }

    #[test]
    fn file_writer_reproduces_fixture_files_byte_for_byte() {
        for file in ALL {
            let reader = FileReader::new(Bytes::from_static(file)).unwrap();
            let h = reader.header();
            let mut w = FileWriter::new(h.has_audio, h.has_video);
            for t in reader {
                w.write(&t.unwrap()).unwrap();
            }
            assert_eq!(&w.into_inner()[..], file);
        }
    }

    #[test]
    fn file_reader_errors_on_every_truncation() {
        // Tag boundaries of the full file: a prefix ending there is a valid file.
        let mut reader = FileReader::new(Bytes::from_static(X264_444)).unwrap();
        let mut boundaries = vec![reader.position()];
        while let Some(t) = reader.next() {
            t.unwrap();
            boundaries.push(reader.position());
        }
        let total = boundaries.len() - 1;
        for n in 0..X264_444.len() {
            let Ok(reader) = FileReader::new(Bytes::from_static(&X264_444[..n])) else {
                assert!(n < 13);
                continue;
            };
            let items: Vec<_> = reader.collect();
            let ok = items.iter().filter(|r| r.is_ok()).count();
            assert!(ok <= total);
            if boundaries.contains(&n) {
                assert!(items.iter().all(|r| r.is_ok()), "prefix {n}");
            } else {
                assert!(
                    matches!(items.last(), Some(Err(FlvError::Truncated { .. }))),
                    "prefix {n}"
                );
            }
        }
    }

    #[test]
    fn file_reader_rejects_bad_headers_and_filtered_tags() {
        assert!(matches!(
            FileReader::new(&b"FLX\x01\x05\0\0\0\x09\0\0\0\0"[..]),
            Err(FlvError::BadFileHeader(_))
        ));
        assert!(matches!(
            FileReader::new(&b"FLV\x01\x05\0\0\0\x03\0\0\0\0"[..]),
            Err(FlvError::BadFileHeader(_))
        ));
        assert!(matches!(
            FileReader::new(&b"FLV\x01\x05\xFF\xFF\xFF\xFF"[..]),
            Err(FlvError::Truncated { .. })
        ));
        let mut f = b"FLV\x01\x05\0\0\0\x09\0\0\0\0".to_vec();
        f.extend_from_slice(&[0x29, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xAA, 0, 0, 0, 12]);
        let mut r = FileReader::new(f).unwrap();
        assert!(matches!(r.next(), Some(Err(FlvError::Unsupported(_)))));
        assert!(r.next().is_none());
    }

    #[test]
    fn file_writer_splits_timestamps_and_enforces_limits() {
        let mut w = FileWriter::new(true, false);
        assert_eq!(
            w.take(),
            Bytes::from_static(b"FLV\x01\x04\0\0\0\x09\0\0\0\0")
        );
        assert!(w.is_empty());
        w.write_tag(TAG_AUDIO, 0x1234_5678, &[0xAF, 1, 0x21])
            .unwrap();
        assert_eq!(w.len(), 11 + 3 + 4);
        let chunk = w.take();
        assert_eq!(&chunk[..11], &[8, 0, 0, 3, 0x34, 0x56, 0x78, 0x12, 0, 0, 0]);
        assert_eq!(&chunk[14..], &[0, 0, 0, 14]);
        let mut file = FileWriter::new(true, false).take().to_vec();
        file.extend_from_slice(&chunk);
        let t: Vec<_> = FileReader::new(file)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            t,
            vec![FileTag {
                tag_type: 8,
                timestamp: 0x1234_5678,
                body: Bytes::from_static(&[0xAF, 1, 0x21])
            }]
        );

        assert_eq!(
            w.write_tag(0x20, 0, &[]),
            Err(FlvError::InvalidTagType(0x20))
        );
        let big = vec![0u8; 1 << 24];
        assert_eq!(
            w.write_tag(TAG_VIDEO, 0, &big),
            Err(FlvError::TagTooLarge { len: 1 << 24 })
        );
        w.write_tag(TAG_VIDEO, 0, &big[..0xFF_FFFF]).unwrap();
        assert!(!w.is_empty());
    }
}
