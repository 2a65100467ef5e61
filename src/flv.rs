//! FLV tag bodies as carried in RTMP audio/video messages (FLV spec v10.1 Annex E, Enhanced RTMP v2), parsed
//! sans-IO and zero-copy into codec configs and frames, plus builders for the reverse direction.
//! Also a small FLV file reader and writer, used by tests and benchmarks and to feed FFmpeg's stdin.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::{self, aac, av1, h264, hevc, opus, Codec, CodecConfig, MediaError};

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

/// Skips the E-RTMP v2 ModEx prelude: while the packet type is ModEx (7),
/// read modExDataSize (UI8 + 1, or UI16 + 1 when the UI8 form says 256),
/// the data, and a byte of modExType (high nibble) | next packet type (low
/// nibble). The only defined modifier is a sub-millisecond timestamp offset,
/// which a millisecond timeline cannot use. Each round consumes at least two
/// bytes, so the loop ends with the input.
fn skip_mod_ex(body: &[u8], mut pos: usize, mut packet_type: u8) -> Result<(usize, u8), FlvError> {
    while packet_type == 7 {
        let mut size = usize::from(byte_at(body, pos, "E-RTMP ModEx data size")?) + 1;
        pos += 1;
        if size == 256 {
            let s = array_at::<2>(body, pos, "E-RTMP ModEx data size (16-bit)")?;
            size = usize::from(u16::from_be_bytes(s)) + 1;
            pos += 2;
        }
        need(body, pos, size, "E-RTMP ModEx data")?;
        pos += size;
        packet_type = byte_at(body, pos, "E-RTMP ModEx type")? & 0x0F;
        pos += 1;
    }
    Ok((pos, packet_type))
}

fn config_error(what: &'static str) -> impl FnOnce(MediaError) -> FlvError {
    move |source| FlvError::Config { what, source }
}

/// Builds the video `CodecConfig` for a sequence header, parsing the record
/// for its parameters. A structurally broken record is an error (a muxer
/// could not use it); an SPS this parser cannot read only leaves `params` empty.
fn video_config(codec: Codec, record: Bytes) -> Result<CodecConfig, FlvError> {
    let params = match codec {
        Codec::H264 => {
            h264::parse_avc_decoder_config(&record)
                .map_err(config_error("AVC sequence header"))?
                .params
        }
        Codec::H265 => {
            hevc::parse_hevc_decoder_config(&record)
                .map_err(config_error("HEVC sequence header"))?
                .params
        }
        Codec::Av1 => {
            av1::parse_av1_codec_config(&record)
                .map_err(config_error("AV1 sequence header"))?
                .params
        }
        _ => None,
    };
    Ok(CodecConfig::Video {
        codec,
        record,
        params,
    })
}

/// Parses a video tag body (FLV spec v10.1 E.4.3.1, Enhanced RTMP v2
/// ExVideoTagHeader). Frame data and config records are zero-copy slices of
/// `body`.
pub fn parse_video(body: Bytes) -> Result<VideoTag, FlvError> {
    let b0 = *body.first().ok_or(FlvError::Empty)?;
    if b0 & 0x80 != 0 {
        return parse_ex_video(body, b0);
    }
    let frame_type = b0 >> 4;
    let codec_id = b0 & 0x0F;
    if frame_type == 5 {
        // Video info/command frame: a UI8 command follows, no video data.
        return Ok(VideoTag::Command);
    }
    let keyframe = keyframe_for(frame_type)?;
    let codec = match codec_id {
        7 => Codec::H264,
        // 12 is not in the FLV spec; Chinese CDNs and ffmpeg forks use it
        // for HEVC framed exactly like AVC (hvcC as the sequence header).
        12 => Codec::H265,
        other => return Err(FlvError::UnsupportedVideoCodec(other)),
    };
    let packet_type = byte_at(&body, 1, "AVCPacketType")?;
    match packet_type {
        0 => {
            need(&body, 2, 3, "AVC sequence header CompositionTime")?;
            video_config(codec, body.slice(5..)).map(VideoTag::Config)
        }
        1 => {
            let cts = si24(array_at::<3>(&body, 2, "AVC NALU CompositionTime")?);
            Ok(VideoTag::Frame {
                codec,
                keyframe,
                cts,
                data: body.slice(5..),
            })
        }
        // End of sequence: the CompositionTime that follows carries nothing,
        // and some encoders omit it.
        2 => Ok(VideoTag::EndOfSequence(codec)),
        other => Err(FlvError::UnknownPacketType {
            what: "AVCPacketType",
            value: other,
        }),
    }
}

/// The Enhanced RTMP branch: IsExHeader | FrameType (3 bits) | PacketType (4 bits).
fn parse_ex_video(body: Bytes, b0: u8) -> Result<VideoTag, FlvError> {
    let frame_type = (b0 >> 4) & 0x07;
    let (mut pos, packet_type) = skip_mod_ex(&body, 1, b0 & 0x0F)?;
    // Metadata ignores the frame type; otherwise a command frame carries a
    // UI8 command and no FourCC or payload.
    if packet_type != 4 && frame_type == 5 {
        return Ok(VideoTag::Command);
    }
    match packet_type {
        4 => return Ok(VideoTag::Metadata),
        6 => {
            return Err(FlvError::Unsupported(
                "E-RTMP multitrack video is not supported",
            ))
        }
        _ => {}
    }
    let keyframe = keyframe_for(frame_type)?;
    let fourcc = array_at::<4>(&body, pos, "E-RTMP video FourCC")?;
    pos += 4;
    let codec = match &fourcc {
        b"avc1" => Codec::H264,
        b"hvc1" => Codec::H265,
        b"av01" => Codec::Av1,
        b"vp09" => Codec::Vp9,
        _ => {
            return Err(FlvError::UnknownFourCc {
                kind: "video",
                fourcc: fourcc_string(fourcc),
            })
        }
    };
    match packet_type {
        0 => video_config(codec, body.slice(pos..)).map(VideoTag::Config),
        // CodedFrames: only avc1/hvc1 carry an SI24 composition time.
        1 => {
            let mut cts = 0;
            if matches!(codec, Codec::H264 | Codec::H265) {
                cts = si24(array_at::<3>(
                    &body,
                    pos,
                    "E-RTMP CodedFrames CompositionTime",
                )?);
                pos += 3;
            }
            Ok(VideoTag::Frame {
                codec,
                keyframe,
                cts,
                data: body.slice(pos..),
            })
        }
        2 => Ok(VideoTag::EndOfSequence(codec)),
        3 => Ok(VideoTag::Frame {
            codec,
            keyframe,
            cts: 0,
            data: body.slice(pos..),
        }),
        // MPEG2TSSequenceStart carries an AV1 video descriptor instead of
        // av1C; keep it as the record, without parameters.
        5 if codec == Codec::Av1 => Ok(VideoTag::Config(CodecConfig::Video {
            codec,
            record: body.slice(pos..),
            params: None,
        })),
        5 => Err(FlvError::Unsupported(
            "E-RTMP MPEG2TSSequenceStart is only defined for av01",
        )),
        other => Err(FlvError::UnknownPacketType {
            what: "E-RTMP VideoPacketType",
            value: other,
        }),
    }
}

/// Parses an audio tag body (FLV spec v10.1 E.4.2.1, Enhanced RTMP v2
/// ExAudioTagHeader). Frame data and configs are zero-copy slices of `body`.
pub fn parse_audio(body: Bytes) -> Result<AudioTag, FlvError> {
    let b0 = *body.first().ok_or(FlvError::Empty)?;
    match b0 >> 4 {
        10 => {
            let packet_type = byte_at(&body, 1, "AACPacketType")?;
            match packet_type {
                0 => {
                    let config = body.slice(2..);
                    let params = aac::parse_audio_specific_config(&config)
                        .map_err(config_error("AAC sequence header"))?;
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
                other => Err(FlvError::UnknownPacketType {
                    what: "AACPacketType",
                    value: other,
                }),
            }
        }
        // 2 = MP3, 14 = MP3 8 kHz.
        2 | 14 => Ok(AudioTag::Frame {
            codec: Codec::Mp3,
            data: body.slice(1..),
        }),
        // Enhanced RTMP v2: SoundFormat 9 = ExHeader (FourCC audio).
        9 => parse_ex_audio(body, b0),
        _ => Ok(AudioTag::Frame {
            codec: Codec::Other,
            data: body.slice(1..),
        }),
    }
}

/// The Enhanced RTMP audio branch: SoundFormat 9 | AudioPacketType (4 bits), FourCC.
fn parse_ex_audio(body: Bytes, b0: u8) -> Result<AudioTag, FlvError> {
    let (mut pos, packet_type) = skip_mod_ex(&body, 1, b0 & 0x0F)?;
    if packet_type == 5 {
        return Err(FlvError::Unsupported(
            "E-RTMP multitrack audio is not supported",
        ));
    }
    let fourcc = array_at::<4>(&body, pos, "E-RTMP audio FourCC")?;
    pos += 4;
    let codec = match &fourcc {
        b"mp4a" => Codec::Aac,
        b"Opus" => Codec::Opus,
        b".mp3" => Codec::Mp3,
        // Known to E-RTMP, carried as-is.
        b"ac-3" | b"ec-3" | b"fLaC" => Codec::Other,
        _ => {
            return Err(FlvError::UnknownFourCc {
                kind: "audio",
                fourcc: fourcc_string(fourcc),
            })
        }
    };
    let payload = body.slice(pos..);
    match packet_type {
        0 => {
            let params = match codec {
                Codec::Aac => Some(
                    aac::parse_audio_specific_config(&payload)
                        .map_err(config_error("AAC sequence header"))?,
                ),
                Codec::Opus => Some(
                    opus::parse_opus_head(&payload)
                        .map_err(config_error("Opus sequence header"))?,
                ),
                _ => None,
            };
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
        other => Err(FlvError::UnknownPacketType {
            what: "E-RTMP AudioPacketType",
            value: other,
        }),
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
            let mut timeline = media::Timeline::new(10_000);
            for chunk in rest.chunks_exact(4) {
                if let Ok(raw) = <[u8; 4]>::try_from(chunk) {
                    let _ = timeline.unwrap(u32::from_be_bytes(raw));
                }
            }
        }
    }
}

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

fn fuzz_audio(body: Bytes) {
    let Ok(tag) = parse_audio(body) else {
        return;
    };
    if let Ok(rebuilt) = build_audio(&tag) {
        let _ = parse_audio(rebuilt);
    }
}
