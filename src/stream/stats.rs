//! What a stream's ingest looks like, measured on protocol-free media
//! events: codecs and their parameters, frame and byte counts, fps over the
//! last seconds of decode timestamps and bitrate over the last seconds of
//! arrival. Sans-IO: arrival instants are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::{AudioParams, Codec, CodecConfig, MediaEvent, Track, VideoParams};

/// Window over which fps and bitrate are measured.
const WINDOW: Duration = Duration::from_secs(3);
const WINDOW_MS: u64 = 3000;

/// Counters and parameters of a stream's ingest (what the API shows).
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
}

/// The measuring state: [`IngestStats`] plus the fps and bitrate windows.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub stats: IngestStats,
    video_dts: VecDeque<u64>,
    arrivals: VecDeque<(Instant, u64)>,
    window_bytes: u64,
}

impl MediaStats {
    /// `bytes` arrived at `at` (counted even when nothing decodable came of
    /// them: they are what the publisher sent).
    pub fn arrived(&mut self, at: Instant, bytes: u64) {
        self.stats.bytes_in += bytes;
        self.arrivals.push_back((at, bytes));
        self.window_bytes += bytes;
        while let Some(&(t, n)) = self.arrivals.front() {
            if at.saturating_duration_since(t) <= WINDOW {
                break;
            }
            self.arrivals.pop_front();
            self.window_bytes -= n;
        }
    }

    /// Count one media event.
    pub fn observe(&mut self, ev: &MediaEvent) {
        let s = &mut self.stats;
        match ev {
            MediaEvent::Config(CodecConfig::Video { codec, params, .. }) => {
                s.video_codec = Some(*codec);
                if params.is_some() {
                    s.video = params.clone();
                }
            }
            MediaEvent::Config(CodecConfig::Audio { codec, params, .. }) => {
                s.audio_codec = Some(*codec);
                if params.is_some() {
                    s.audio = params.clone();
                }
            }
            MediaEvent::Frame(f) if f.track == Track::Video => {
                s.video_codec.get_or_insert(f.codec);
                s.frames_video += 1;
                if f.keyframe {
                    s.keyframes += 1;
                }
                let dts = f.dts;
                self.video_dts.push_back(dts);
                while let Some(&first) = self.video_dts.front() {
                    if dts.saturating_sub(first) <= WINDOW_MS && first <= dts {
                        break;
                    }
                    self.video_dts.pop_front();
                }
            }
            MediaEvent::Frame(f) => {
                s.audio_codec.get_or_insert(f.codec);
                s.frames_audio += 1;
            }
            MediaEvent::EndOfSequence(_) => {}
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
        let age = now.saturating_duration_since(oldest);
        if age > WINDOW + Duration::from_secs(1) {
            // Nothing arrived recently.
            return 0;
        }
        let span = age.max(Duration::from_secs(1));
        (self.window_bytes as f64 * 8.0 / span.as_secs_f64()) as u64
    }

    /// A copy of what the API shows, taken at `now`.
    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        StatsSnapshot {
            stats: self.stats.clone(),
            fps: self.fps(),
            bitrate_bps: self.bitrate_bps(now),
            at: now,
        }
    }
}

/// The stream's figures as of `at`, published for readers on other tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub stats: IngestStats,
    pub fps: Option<f64>,
    pub bitrate_bps: u64,
    pub at: Instant,
}

impl StatsSnapshot {
    pub fn new(at: Instant) -> Self {
        StatsSnapshot {
            stats: IngestStats::default(),
            fps: None,
            bitrate_bps: 0,
            at,
        }
    }

    /// The bitrate as seen at `now`: a snapshot older than the measuring
    /// window means nothing arrived since.
    pub fn bitrate_at(&self, now: Instant) -> u64 {
        if now.saturating_duration_since(self.at) > WINDOW + Duration::from_secs(1) {
            0
        } else {
            self.bitrate_bps
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Frame;

    fn video(dts: u64, key: bool) -> MediaEvent {
        MediaEvent::Frame(Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            cts: 0,
            keyframe: key,
            data: bytes::Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        })
    }

    #[test]
    fn fps_is_measured_from_decode_timestamps() {
        let mut s = MediaStats::default();
        for i in 0..120u64 {
            s.observe(&video(0xFFFF_FF00 + i * 40, i % 50 == 0)); // 25 fps
        }
        let fps = s.fps().unwrap();
        assert!((fps - 25.0).abs() < 0.01, "{fps}");
        assert_eq!(s.stats.frames_video, 120);
        assert_eq!(s.stats.keyframes, 3);
    }

    #[test]
    fn bitrate_covers_the_recent_window() {
        let mut s = MediaStats::default();
        let t0 = Instant::now();
        for i in 0..30u64 {
            s.arrived(t0 + Duration::from_millis(100 * i), 10);
        }
        let bps = s.bitrate_bps(t0 + Duration::from_millis(2900));
        // 10 bytes every 100 ms = 800 bit/s
        assert!((700..=900).contains(&bps), "{bps}");
        assert_eq!(s.bitrate_bps(t0 + Duration::from_secs(60)), 0);
        let snap = s.snapshot(t0 + Duration::from_millis(2900));
        assert_eq!(snap.bitrate_at(t0 + Duration::from_secs(3)), bps);
        assert_eq!(snap.bitrate_at(t0 + Duration::from_secs(60)), 0);
        assert_eq!(snap.stats.bytes_in, 300);
    }
}
