//! Turns a publisher's FLV tag bodies into codec-level [`MediaEvent`]s on a
//! monotonic 64-bit timeline per track, and measures what the API shows
//! (fps over the last seconds of DTS, bitrate over the last seconds of
//! arrival). Sans-IO: arrival time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::flv::{self, AudioTag, FlvError, VideoTag};
use crate::media::{AudioParams, Codec, CodecConfig, Frame, Timeline, Track, VideoParams};

/// What the ingest produced from one tag.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    Config(CodecConfig),
    Frame(Frame),
    EndOfSequence(Track),
}

/// Window over which fps and bitrate are measured.
const WINDOW: Duration = Duration::from_secs(3);
const WINDOW_MS: u64 = 3000;

/// A timestamp jump the timeline re-based over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    pub track: Track,
    pub jump_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestStats {
    pub video_codec: Option<Codec>,
    pub audio_codec: Option<Codec>,
    pub video: Option<VideoParams>,
    pub audio: Option<AudioParams>,
    pub frames_video: u64,
    pub frames_audio: u64,
    pub keyframes: u64,
    pub bytes_in: u64,
    pub timestamp_jumps: u64,
    pub tag_errors: u64,
}

/// Per-stream ingest state.
#[derive(Debug)]
pub struct Ingest {
    video_tl: Timeline,
    audio_tl: Timeline,
    pub stats: IngestStats,
    video_dts: VecDeque<u64>,
    arrivals: VecDeque<(Instant, u64)>,
    window_bytes: u64,
}

impl Ingest {
    pub fn new(max_jump: Duration) -> Self {
        let ms = max_jump.as_millis().min(u32::MAX as u128) as u32;
        Ingest {
            video_tl: Timeline::new(ms),
            audio_tl: Timeline::new(ms),
            stats: IngestStats::default(),
            video_dts: VecDeque::new(),
            arrivals: VecDeque::new(),
            window_bytes: 0,
        }
    }

    /// Process one tag body. `Ok(None)`: nothing to forward (keepalive,
    /// metadata packet). Errors are per tag: the caller logs and goes on.
    pub fn push(
        &mut self,
        now: Instant,
        video: bool,
        timestamp: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        let len = body.len() as u64;
        self.stats.bytes_in += len;
        self.arrivals.push_back((now, len));
        self.window_bytes += len;
        while let Some(&(t, n)) = self.arrivals.front() {
            if now.duration_since(t) <= WINDOW {
                break;
            }
            self.arrivals.pop_front();
            self.window_bytes -= n;
        }
        let result = if video {
            self.push_video(timestamp, body)
        } else {
            self.push_audio(timestamp, body)
        };
        match result {
            Err(FlvError::Empty | FlvError::Ignored(_)) => Ok((None, None)),
            Err(e) => {
                self.stats.tag_errors += 1;
                Err(e)
            }
            ok => ok,
        }
    }

    fn unwrap_ts(&mut self, track: Track, ts: u32) -> (u64, Option<Jump>) {
        let tl = match track {
            Track::Video => &mut self.video_tl,
            Track::Audio => &mut self.audio_tl,
        };
        let u = tl.unwrap(ts);
        let jump = u.jump_ms.map(|jump_ms| {
            self.stats.timestamp_jumps += 1;
            Jump { track, jump_ms }
        });
        (u.ts, jump)
    }

    fn push_video(
        &mut self,
        ts: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        match flv::parse_video(body)? {
            VideoTag::Config(cfg) => {
                if let CodecConfig::Video { codec, params, .. } = &cfg {
                    self.stats.video_codec = Some(*codec);
                    if params.is_some() {
                        self.stats.video = params.clone();
                    }
                }
                Ok((Some(MediaEvent::Config(cfg)), None))
            }
            VideoTag::Frame {
                codec,
                keyframe,
                cts,
                data,
            } => {
                let (dts, jump) = self.unwrap_ts(Track::Video, ts);
                self.stats.video_codec.get_or_insert(codec);
                self.stats.frames_video += 1;
                if keyframe {
                    self.stats.keyframes += 1;
                }
                self.video_dts.push_back(dts);
                while let Some(&first) = self.video_dts.front() {
                    if dts.saturating_sub(first) <= WINDOW_MS && first <= dts {
                        break;
                    }
                    self.video_dts.pop_front();
                }
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

    fn push_audio(
        &mut self,
        ts: u32,
        body: Bytes,
    ) -> Result<(Option<MediaEvent>, Option<Jump>), FlvError> {
        match flv::parse_audio(body)? {
            AudioTag::Config(cfg) => {
                if let CodecConfig::Audio { codec, params, .. } = &cfg {
                    self.stats.audio_codec = Some(*codec);
                    if params.is_some() {
                        self.stats.audio = params.clone();
                    }
                }
                Ok((Some(MediaEvent::Config(cfg)), None))
            }
            AudioTag::Frame { codec, data } => {
                let (dts, jump) = self.unwrap_ts(Track::Audio, ts);
                self.stats.audio_codec.get_or_insert(codec);
                self.stats.frames_audio += 1;
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

    /// Video frames per second over the last seconds of decode timestamps.
    pub fn fps(&self) -> Option<f64> {
        let (first, last) = (*self.video_dts.front()?, *self.video_dts.back()?);
        let span = last.checked_sub(first)?;
        if span == 0 || self.video_dts.len() < 2 {
            return None;
        }
        Some((self.video_dts.len() - 1) as f64 * 1000.0 / span as f64)
    }

    /// Ingest bitrate in bits per second over the last seconds of arrival.
    pub fn bitrate_bps(&self, now: Instant) -> u64 {
        let Some(&(oldest, _)) = self.arrivals.front() else {
            return 0;
        };
        let span = now.duration_since(oldest).max(Duration::from_secs(1));
        if now.duration_since(oldest) > WINDOW + Duration::from_secs(1) {
            // Nothing arrived recently.
            return 0;
        }
        (self.window_bytes as f64 * 8.0 / span.as_secs_f64()) as u64
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
    fn fps_is_measured_from_decode_timestamps() {
        let mut ing = Ingest::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..120u32 {
            let ts = 0xFFFF_FF00u32.wrapping_add(i * 40); // crosses 2^32 at 25 fps
            ing.push(t0, true, ts, avc_frame(i % 50 == 0)).unwrap();
        }
        let fps = ing.fps().unwrap();
        assert!((fps - 25.0).abs() < 0.01, "{fps}");
        assert_eq!(ing.stats.timestamp_jumps, 0);
        assert_eq!(ing.stats.frames_video, 120);
        assert_eq!(ing.stats.keyframes, 3);
    }

    #[test]
    fn empty_tags_are_ignored_and_bad_tags_counted() {
        let mut ing = Ingest::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(ing.push(now, true, 0, Bytes::new()).unwrap(), (None, None));
        assert!(ing.push(now, true, 0, Bytes::from_static(&[0x17])).is_err());
        assert_eq!(ing.stats.tag_errors, 1);
    }

    #[test]
    fn bitrate_covers_the_recent_window() {
        let mut ing = Ingest::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..30u32 {
            let t = t0 + Duration::from_millis(100 * i as u64);
            ing.push(
                t,
                false,
                i * 100,
                Bytes::from(vec![0xAF, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            )
            .unwrap();
        }
        let bps = ing.bitrate_bps(t0 + Duration::from_millis(2900));
        // 10 bytes every 100 ms = 800 bit/s
        assert!((700..=900).contains(&bps), "{bps}");
        assert_eq!(ing.bitrate_bps(t0 + Duration::from_secs(60)), 0);
    }
}
