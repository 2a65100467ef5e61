//! What a stream's ingest looks like, measured on protocol-free media
//! events: codecs and their parameters, frame and byte counts, fps over the
//! last seconds of decode timestamps and bitrate over the last seconds of
//! arrival. Sans-IO: arrival instants are passed in. Its memory is fixed
//! whatever the publisher sends: the bitrate is summed per slot of arrival
//! time, and the fps window is pruned by arrival time as well as by decode
//! time (frames whose timestamps do not advance) and capped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::{AudioParams, Codec, CodecConfig, MediaEvent, Track, VideoParams};

/// Window over which fps and bitrate are measured.
const WINDOW: Duration = Duration::from_secs(3);
const WINDOW_MS: u64 = 3000;
/// Arrivals are summed per slot of this length: the bitrate window holds
/// `WINDOW / SLOT` numbers however many messages arrive.
const SLOT_MS: u64 = 100;
const WINDOW_SLOTS: u64 = WINDOW_MS / SLOT_MS;
/// Most decode timestamps kept for the fps: 3 s of a 240 fps track fit
/// with room to spare; a flood keeps only its newest.
const MAX_FPS_SAMPLES: usize = 1024;
/// What one message is charged at least for the bitrate (and so for
/// `rtmp.max_ingest_bitrate`): an empty or tiny message still costs an
/// event, a frame and, once muxed, a TS packet; counted as its size it
/// would make a flood of them free.
pub const MIN_MESSAGE_BYTES: u64 = 64;

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
    /// Decode timestamps of the last video frames, with their arrival.
    video_dts: VecDeque<(u64, Instant)>,
    /// Per arrival slot (`SLOT_MS` slots counted from `origin`), oldest
    /// first, at most `WINDOW_SLOTS + 1`: the slot, then the bytes that
    /// arrived in it and the bytes charged for them.
    arrivals: VecDeque<(u64, Window)>,
    origin: Option<Instant>,
    /// Sums over `arrivals`.
    window: Window,
}

/// Bytes over a stretch of arrival time: as sent (what the API shows) and
/// as charged (what `rtmp.max_ingest_bitrate` judges).
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    sent: u64,
    charged: u64,
}

impl Window {
    fn add(&mut self, o: Window) {
        self.sent += o.sent;
        self.charged += o.charged;
    }

    fn sub(&mut self, o: Window) {
        self.sent -= o.sent;
        self.charged -= o.charged;
    }
}

impl MediaStats {
    /// A message of `bytes` arrived at `at` (counted even when nothing
    /// decodable came of it: it is what the publisher sent). The bitrate
    /// cap charges it at least [`MIN_MESSAGE_BYTES`].
    pub fn arrived(&mut self, at: Instant, bytes: u64) {
        self.stats.bytes_in += bytes;
        let add = Window {
            sent: bytes,
            charged: bytes.max(MIN_MESSAGE_BYTES),
        };
        let origin = *self.origin.get_or_insert(at);
        let slot = at.saturating_duration_since(origin).as_millis() as u64 / SLOT_MS;
        match self.arrivals.back_mut() {
            // An instant older than the newest slot counts in it.
            Some((last, w)) if *last >= slot => w.add(add),
            _ => self.arrivals.push_back((slot, add)),
        }
        self.window.add(add);
        while let Some(&(first, w)) = self.arrivals.front() {
            if slot.saturating_sub(first) <= WINDOW_SLOTS {
                break;
            }
            self.arrivals.pop_front();
            self.window.sub(w);
        }
    }

    /// Count one media event that arrived at `at`.
    pub fn observe(&mut self, at: Instant, ev: &MediaEvent) {
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
                self.video_dts.push_back((dts, at));
                // Decode time alone would keep every frame of a publisher
                // whose timestamps stand still: arrival time prunes too.
                while let Some(&(first, first_at)) = self.video_dts.front() {
                    if dts.saturating_sub(first) <= WINDOW_MS
                        && first <= dts
                        && at.saturating_duration_since(first_at) <= WINDOW
                        && self.video_dts.len() <= MAX_FPS_SAMPLES
                    {
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
        let (first, last) = (self.video_dts.front()?.0, self.video_dts.back()?.0);
        let span = last.checked_sub(first)?;
        if span == 0 || self.video_dts.len() < 2 {
            return None;
        }
        Some((self.video_dts.len() - 1) as f64 * 1000.0 / span as f64)
    }

    /// Ingest bitrate in bits per second over the last seconds of arrival,
    /// as sent (what the API shows).
    pub fn bitrate_bps(&self, now: Instant) -> u64 {
        self.rate(now, self.window.sent)
    }

    /// The bitrate `rtmp.max_ingest_bitrate` judges: every message counted
    /// at least [`MIN_MESSAGE_BYTES`].
    pub fn charged_bitrate_bps(&self, now: Instant) -> u64 {
        self.rate(now, self.window.charged)
    }

    fn rate(&self, now: Instant, bytes: u64) -> u64 {
        let (Some(&(slot, _)), Some(origin)) = (self.arrivals.front(), self.origin) else {
            return 0;
        };
        let oldest = origin + Duration::from_millis(slot * SLOT_MS);
        let age = now.saturating_duration_since(oldest);
        if age > WINDOW + Duration::from_secs(1) {
            // Nothing arrived recently.
            return 0;
        }
        let span = age.max(Duration::from_secs(1));
        (bytes as f64 * 8.0 / span.as_secs_f64()) as u64
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
        let t0 = Instant::now();
        for i in 0..120u64 {
            let at = t0 + Duration::from_millis(i * 40);
            s.observe(at, &video(0xFFFF_FF00 + i * 40, i % 50 == 0)); // 25 fps
        }
        let fps = s.fps().unwrap();
        assert!((fps - 25.0).abs() < 0.01, "{fps}");
        assert_eq!(s.stats.frames_video, 120);
        assert_eq!(s.stats.keyframes, 3);
    }

    /// A flood of frames whose timestamps do not advance, arriving far
    /// faster than any encoder sends: the windows stay small.
    #[test]
    fn frozen_timestamps_and_floods_keep_the_windows_bounded() {
        let mut s = MediaStats::default();
        let t0 = Instant::now();
        for i in 0..200_000u64 {
            let at = t0 + Duration::from_micros(i * 10); // 100 000 per second
            s.arrived(at, 0);
            s.observe(at, &video(5000, false));
        }
        assert!(s.video_dts.len() <= 1024, "{}", s.video_dts.len());
        assert!(s.arrivals.len() <= 64, "{}", s.arrivals.len());
        assert_eq!(s.fps(), None);
        // Empty messages count toward the cap: 100 000/s at 64 bytes; the
        // bitrate shown is what was sent.
        let bps = s.charged_bitrate_bps(t0 + Duration::from_secs(2));
        assert!(bps >= 100_000 * MIN_MESSAGE_BYTES * 8 * 9 / 10, "{bps}");
        assert_eq!(s.bitrate_bps(t0 + Duration::from_secs(2)), 0);
        assert_eq!(s.stats.bytes_in, 0);
    }

    /// A burst of frames (a publisher catching up) is measured on its
    /// decode timestamps, not on how fast it came.
    #[test]
    fn a_burst_keeps_the_media_fps() {
        let mut s = MediaStats::default();
        let t0 = Instant::now();
        for i in 0..180u64 {
            s.observe(t0, &video(i * 1000 / 30, i % 60 == 0));
        }
        let fps = s.fps().unwrap();
        assert!((fps - 30.0).abs() < 0.5, "{fps}");
    }

    #[test]
    fn bitrate_covers_the_recent_window() {
        let mut s = MediaStats::default();
        let t0 = Instant::now();
        for i in 0..30u64 {
            s.arrived(t0 + Duration::from_millis(100 * i), 100);
        }
        let bps = s.bitrate_bps(t0 + Duration::from_millis(2900));
        // 100 bytes every 100 ms = 8000 bit/s
        assert!((7000..=9000).contains(&bps), "{bps}");
        assert_eq!(s.bitrate_bps(t0 + Duration::from_secs(60)), 0);
        let snap = s.snapshot(t0 + Duration::from_millis(2900));
        assert_eq!(snap.bitrate_at(t0 + Duration::from_secs(3)), bps);
        assert_eq!(snap.bitrate_at(t0 + Duration::from_secs(60)), 0);
        assert_eq!(snap.stats.bytes_in, 3000);
    }
}
