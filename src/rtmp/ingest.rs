//! An RTMP publish's media as protocol-free events: FLV tag bodies parsed
//! into codec configurations and frames, each track's wrapping 32-bit
//! millisecond timestamps unwrapped onto a 64-bit timeline (jumps past
//! `rtmp.max_timestamp_jump` re-based). Sans-IO.

use std::time::Duration;

use bytes::Bytes;

use crate::flv::{self, AudioTag, FlvError, VideoTag};
use crate::media::{Frame, MediaEvent, Timeline, Track};

/// A timestamp jump the timeline re-based over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    pub track: Track,
    pub jump_ms: i64,
}

/// Per-publish FLV state: one timeline per track.
#[derive(Debug)]
pub struct FlvIngest {
    video: Timeline,
    audio: Timeline,
}

impl FlvIngest {
    pub fn new(max_jump: Duration) -> Self {
        let ms = max_jump.as_millis().min(u32::MAX as u128) as u32;
        FlvIngest {
            video: Timeline::new(ms),
            audio: Timeline::new(ms),
        }
    }

    /// One tag body. `Ok((None, _))`: nothing to forward (an empty tag, a
    /// packet type we skip). Errors are per tag: the caller counts, logs
    /// and goes on.
    pub fn push(
        &mut self,
        video: bool,
        timestamp: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        let result = if video {
            self.video_tag(timestamp, body)
        } else {
            self.audio_tag(timestamp, body)
        };
        match result {
            Err(FlvError::Empty | FlvError::Ignored(_)) => Ok((None, None)),
            other => other,
        }
    }

    fn unwrap_ts(&mut self, track: Track, ts: u32) -> (u64, Option<Jump>) {
        let tl = match track {
            Track::Video => &mut self.video,
            Track::Audio => &mut self.audio,
        };
        let u = tl.unwrap(ts);
        (u.ts, u.jump_ms.map(|jump_ms| Jump { track, jump_ms }))
    }

    fn video_tag(
        &mut self,
        ts: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        match flv::parse_video(body)? {
            VideoTag::Config(cfg) => Ok((Some(MediaEvent::Config(cfg)), None)),
            VideoTag::Frame {
                codec,
                keyframe,
                cts,
                data,
            } => {
                let (dts, jump) = self.unwrap_ts(Track::Video, ts);
                let frame = Frame {
                    track: Track::Video,
                    codec,
                    dts,
                    cts,
                    keyframe,
                    data,
                };
                Ok((Some(MediaEvent::Frame(frame)), jump))
            }
            VideoTag::EndOfSequence(_) => Ok((Some(MediaEvent::EndOfSequence(Track::Video)), None)),
            _ => Ok((None, None)),
        }
    }

    fn audio_tag(
        &mut self,
        ts: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        match flv::parse_audio(body)? {
            AudioTag::Config(cfg) => Ok((Some(MediaEvent::Config(cfg)), None)),
            AudioTag::Frame { codec, data } => {
                let (dts, jump) = self.unwrap_ts(Track::Audio, ts);
                let frame = Frame {
                    track: Track::Audio,
                    codec,
                    dts,
                    cts: 0,
                    keyframe: true,
                    data,
                };
                Ok((Some(MediaEvent::Frame(frame)), jump))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_frame(key: bool) -> Bytes {
        let mut v = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        v.extend_from_slice(&[0, 0, 0, 2, 0x65, 0x88]);
        Bytes::from(v)
    }

    #[test]
    fn timestamps_unwrap_across_2_to_the_32() {
        let mut ing = FlvIngest::new(Duration::from_secs(10));
        let mut last = 0;
        for i in 0..120u32 {
            let ts = 0xFFFF_FF00u32.wrapping_add(i * 40);
            let (ev, jump) = ing.push(true, ts, avc_frame(i % 50 == 0)).unwrap();
            assert_eq!(jump, None);
            let Some(MediaEvent::Frame(f)) = ev else {
                panic!("{ev:?}")
            };
            assert!(i == 0 || f.dts == last + 40, "{} after {last}", f.dts);
            last = f.dts;
        }
    }

    #[test]
    fn empty_tags_are_ignored_and_bad_tags_are_errors() {
        let mut ing = FlvIngest::new(Duration::from_secs(10));
        assert_eq!(ing.push(true, 0, Bytes::new()).unwrap(), (None, None));
        assert!(ing.push(true, 0, Bytes::from_static(&[0x17])).is_err());
    }

    #[test]
    fn a_jump_is_reported_with_its_track() {
        let mut ing = FlvIngest::new(Duration::from_secs(1));
        ing.push(true, 1000, avc_frame(true)).unwrap();
        let (_, jump) = ing.push(true, 60_000, avc_frame(false)).unwrap();
        assert_eq!(jump.map(|j| j.track), Some(Track::Video));
    }
}
