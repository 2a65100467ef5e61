//! What FFmpeg reads on stdin: an FLV file rebuilt from the stream's
//! codec-level events (legacy FLV: H.264 video, AAC audio, which is what
//! FFmpeg 5.1's FLV demuxer reads), with the relay's unwrapped timestamps.
//!
//! [`Replay`] keeps the file header, the codec configurations and the tags
//! since the last video keyframe, so a restarted FFmpeg (an NVENC session
//! refused, fallback to x264) starts decoding at once.

use bytes::{BufMut, Bytes, BytesMut};

use crate::flv::FileWriter;
use crate::media::{Codec, CodecConfig, Frame, Track};
use crate::stream::MediaEvent;

const TAG_AUDIO: u8 = 8;
const TAG_VIDEO: u8 = 9;
/// FLV sound format 10 (AAC), 44 kHz, 16-bit, stereo: the flags FLV always
/// uses for AAC; the AudioSpecificConfig carries the real parameters.
const AAC_FLAGS: u8 = 0xAF;

/// One unit of FFmpeg's input.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    pub data: Bytes,
    pub kind: FeedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// The FLV file header.
    Header,
    VideoConfig,
    AudioConfig,
    VideoKeyframe,
    /// Any other frame.
    Frame,
}

/// Why an event cannot be fed to FFmpeg.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error(
        "transcoding needs H.264 video (FFmpeg reads it from FLV); this stream's video is {0}"
    )]
    VideoCodec(&'static str),
}

/// The FLV file header for FFmpeg.
pub fn header(has_audio: bool) -> FeedItem {
    FeedItem {
        data: FileWriter::new(has_audio, true).take(),
        kind: FeedKind::Header,
    }
}

/// One FLV tag (with its PreviousTagSize) for a stream event. `Ok(None)`:
/// nothing FFmpeg needs (audio other than AAC, end of sequence).
pub fn tag(event: &MediaEvent) -> Result<Option<FeedItem>, FeedError> {
    match event {
        MediaEvent::Config(CodecConfig::Video { codec, record, .. }) => {
            if *codec != Codec::H264 {
                return Err(FeedError::VideoCodec(codec.name()));
            }
            let mut body = BytesMut::with_capacity(5 + record.len());
            body.put_slice(&[0x17, 0, 0, 0, 0]);
            body.put_slice(record);
            Ok(Some(item(TAG_VIDEO, 0, &body, FeedKind::VideoConfig)))
        }
        MediaEvent::Config(CodecConfig::Audio { codec, config, .. }) => {
            if *codec != Codec::Aac {
                return Ok(None);
            }
            let mut body = BytesMut::with_capacity(2 + config.len());
            body.put_slice(&[AAC_FLAGS, 0]);
            body.put_slice(config);
            Ok(Some(item(TAG_AUDIO, 0, &body, FeedKind::AudioConfig)))
        }
        MediaEvent::Frame(f) => frame(f),
        MediaEvent::EndOfSequence(_) => Ok(None),
    }
}

fn frame(f: &Frame) -> Result<Option<FeedItem>, FeedError> {
    // FLV timestamps are 32-bit milliseconds; FFmpeg reads them unsigned.
    let ts = f.dts as u32;
    match f.track {
        Track::Video => {
            if f.codec != Codec::H264 {
                return Err(FeedError::VideoCodec(f.codec.name()));
            }
            let cts = f.cts.clamp(-0x80_0000, 0x7F_FFFF).to_be_bytes();
            let mut body = BytesMut::with_capacity(5 + f.data.len());
            body.put_u8(if f.keyframe { 0x17 } else { 0x27 });
            body.put_u8(1);
            body.put_slice(&cts[1..]);
            body.put_slice(&f.data);
            let kind = if f.keyframe {
                FeedKind::VideoKeyframe
            } else {
                FeedKind::Frame
            };
            Ok(Some(item(TAG_VIDEO, ts, &body, kind)))
        }
        Track::Audio => {
            if f.codec != Codec::Aac {
                return Ok(None);
            }
            let mut body = BytesMut::with_capacity(2 + f.data.len());
            body.put_slice(&[AAC_FLAGS, 1]);
            body.put_slice(&f.data);
            Ok(Some(item(TAG_AUDIO, ts, &body, FeedKind::Frame)))
        }
    }
}

fn item(tag_type: u8, ts: u32, body: &[u8], kind: FeedKind) -> FeedItem {
    let mut w = FileWriter::new(false, false);
    // The 13-byte file header is not part of a tag.
    let _ = w.take();
    // Bodies come from parsed RTMP messages (at most 16 MiB, the wire limit).
    let data = match w.write_tag(tag_type, ts, body) {
        Ok(()) => w.take(),
        Err(_) => Bytes::new(),
    };
    FeedItem { data, kind }
}

/// What a restarted FFmpeg needs to start decoding at once.
#[derive(Debug, Default)]
pub struct Replay {
    header: Option<Bytes>,
    video_config: Option<Bytes>,
    audio_config: Option<Bytes>,
    gop: Vec<Bytes>,
    gop_bytes: usize,
}

/// Most bytes of one GOP kept for a restart.
const MAX_REPLAY: usize = 32 << 20;

impl Replay {
    pub fn note(&mut self, item: &FeedItem) {
        match item.kind {
            FeedKind::Header => self.header = Some(item.data.clone()),
            FeedKind::VideoConfig => self.video_config = Some(item.data.clone()),
            FeedKind::AudioConfig => self.audio_config = Some(item.data.clone()),
            FeedKind::VideoKeyframe => {
                self.gop.clear();
                self.gop_bytes = 0;
                self.push(item.data.clone());
            }
            // Frames before the first keyframe (or after an overflow) are useless.
            FeedKind::Frame if !self.gop.is_empty() => self.push(item.data.clone()),
            FeedKind::Frame => {}
        }
    }

    /// Keep a frame of the current GOP; a GOP larger than the bound is
    /// dropped, and frames are skipped until the next keyframe.
    fn push(&mut self, b: Bytes) {
        if self.gop_bytes + b.len() > MAX_REPLAY {
            self.gop.clear();
            self.gop_bytes = 0;
            return;
        }
        self.gop_bytes += b.len();
        self.gop.push(b);
    }

    /// Header, configurations, then the current GOP; empty before the header.
    pub fn bytes(&self) -> Vec<Bytes> {
        let Some(h) = &self.header else {
            return Vec::new();
        };
        let mut v = vec![h.clone()];
        v.extend(self.video_config.iter().cloned());
        v.extend(self.audio_config.iter().cloned());
        v.extend(self.gop.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::{self, FileReader, VideoTag};

    fn video(dts: u64, cts: i32, keyframe: bool) -> MediaEvent {
        MediaEvent::Frame(Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            cts,
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        })
    }

    #[test]
    fn tags_read_back_as_flv_with_timestamps_and_composition_offsets() {
        let mut file = BytesMut::new();
        file.put_slice(&header(true).data);
        let events = [
            MediaEvent::Config(CodecConfig::Video {
                codec: Codec::H264,
                record: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0xe0]),
                params: None,
            }),
            MediaEvent::Config(CodecConfig::Audio {
                codec: Codec::Aac,
                config: Bytes::from_static(&[0x11, 0x90]),
                params: None,
            }),
            video(5_000_000_000, 66, true),
            video(5_000_000_033, -33, false),
        ];
        for e in &events {
            file.put_slice(&tag(e).unwrap().unwrap().data);
        }
        let reader = FileReader::new(file.freeze()).unwrap();
        assert!(reader.header().has_audio && reader.header().has_video);
        let tags: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(tags.len(), 4);
        assert_eq!(tags[1].tag_type, TAG_AUDIO);
        assert_eq!(&tags[1].body[..], &[0xAF, 0, 0x11, 0x90]);
        // 5e9 ms wraps the 32-bit FLV timestamp, as FFmpeg expects.
        assert_eq!(tags[2].timestamp, 5_000_000_000u64 as u32);
        match flv::parse_video(tags[2].body.clone()).unwrap() {
            VideoTag::Frame { keyframe, cts, .. } => {
                assert!(keyframe);
                assert_eq!(cts, 66);
            }
            other => panic!("{other:?}"),
        }
        match flv::parse_video(tags[3].body.clone()).unwrap() {
            VideoTag::Frame { keyframe, cts, .. } => {
                assert!(!keyframe);
                assert_eq!(cts, -33);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_h264_video_is_refused_and_other_audio_skipped() {
        let hevc = MediaEvent::Config(CodecConfig::Video {
            codec: Codec::H265,
            record: Bytes::new(),
            params: None,
        });
        assert_eq!(tag(&hevc), Err(FeedError::VideoCodec("hevc")));
        let mp3 = MediaEvent::Frame(Frame {
            track: Track::Audio,
            codec: Codec::Mp3,
            dts: 0,
            cts: 0,
            keyframe: true,
            data: Bytes::from_static(&[1, 2]),
        });
        assert_eq!(tag(&mp3), Ok(None));
    }

    #[test]
    fn replay_keeps_header_configs_and_the_current_gop_only() {
        let mut r = Replay::default();
        assert!(r.bytes().is_empty());
        let h = header(false);
        r.note(&h);
        let cfg = FeedItem {
            data: Bytes::from_static(b"cfg"),
            kind: FeedKind::VideoConfig,
        };
        r.note(&cfg);
        let f = |s: &'static [u8], kind| FeedItem {
            data: Bytes::from_static(s),
            kind,
        };
        r.note(&f(b"k1", FeedKind::VideoKeyframe));
        r.note(&f(b"p1", FeedKind::Frame));
        r.note(&f(b"k2", FeedKind::VideoKeyframe));
        r.note(&f(b"p2", FeedKind::Frame));
        let got: Vec<Bytes> = r.bytes();
        assert_eq!(
            got,
            vec![
                h.data.clone(),
                Bytes::from_static(b"cfg"),
                Bytes::from_static(b"k2"),
                Bytes::from_static(b"p2")
            ]
        );
    }
}
