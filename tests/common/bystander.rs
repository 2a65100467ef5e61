//! A stream that must not notice an attack: a real ffmpeg publishes a
//! fixture on its own path and a real ffmpeg player records it over SRT for
//! the whole case; at the end the recording must have no lost frame and no
//! TS continuity error. The hostile, leak and security suites run every
//! attack beside one.

use std::process::Command;
use std::time::Duration;

use sluice::ts::{Demuxer, Pes};

use super::harness::Sluice;
use super::media::{fixture_avc_aac, publish_fixture, spawn_ffmpeg, PublishFor};
use super::process::{ChildGuard, TempDir};

/// The publisher and the recorded player of one bystander stream.
pub struct Bystander {
    publisher: ChildGuard,
    player: ChildGuard,
    recording: std::path::PathBuf,
    _dir: TempDir,
}

impl Bystander {
    /// Publish a 30 fps H.264/AAC fixture of `secs` seconds to `path` over
    /// RTMP (`publish_query` appended to the URL, e.g. `?key=…`), wait until
    /// the stream is ready, and record it over SRT (`srt_extra`: more URL
    /// parameters, e.g. a passphrase) until [`Bystander::finish`].
    pub fn start(
        server: &Sluice,
        path: &str,
        publish_query: &str,
        srt_extra: &str,
        secs: u32,
    ) -> Bystander {
        let dir = TempDir::new("bystander");
        let url = format!("{}{publish_query}", server.rtmp_url(path));
        let publisher = publish_fixture(&fixture_avc_aac(secs), &url, PublishFor::WholeFile);
        server.wait_log_fields(
            &[("message", "stream ready"), ("stream", path)],
            Duration::from_secs(15),
        );
        let recording = dir.join("player.ts");
        let player = spawn_ffmpeg(&[
            "-loglevel",
            "error",
            "-i",
            // From the GOP cache on with every frame at its own time
            // (`join=cache`), so that the recorded span and frame count
            // measure everything it was sent; the default (`live`)
            // squeezes the cached frames into a few milliseconds.
            &server.srt_url(&format!("{path}?join=cache"), srt_extra),
            "-c",
            "copy",
            "-f",
            "mpegts",
            recording.to_str().unwrap(),
        ]);
        let b = Bystander {
            publisher,
            player,
            recording,
            _dir: dir,
        };
        // Playing: the recording grows.
        let grown = super::process::poll_until(Duration::from_secs(10), || {
            std::fs::metadata(&b.recording).is_ok_and(|m| m.len() > 100_000)
        });
        assert!(grown, "the bystander player records nothing");
        b
    }

    /// Both ends are still running (call after each case).
    pub fn assert_playing(&mut self, context: &str) {
        assert!(
            self.publisher.is_running(),
            "{context}: the bystander publisher stopped: {}",
            self.publisher.stderr().text()
        );
        assert!(
            self.player.is_running(),
            "{context}: the bystander player stopped: {}",
            self.player.stderr().text()
        );
    }

    /// Stop the player and check the recording: at least `min_secs` of
    /// video, no TS continuity error, no missing frame (30 fps). Returns the
    /// frame count and the recorded seconds.
    pub fn finish(mut self, min_secs: f64) -> (usize, f64) {
        self.assert_playing("at the end");
        let st = Command::new("kill")
            .args(["-INT", &self.player.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(self.player.wait_exit(Duration::from_secs(10)).is_some());
        let data = std::fs::read(&self.recording).unwrap();
        let mut demux = Demuxer::new();
        let mut pes: Vec<Pes> = Vec::new();
        demux.push(&data, &mut pes).unwrap();
        demux.flush(&mut pes);
        assert_eq!(demux.continuity_errors(), 0, "TS continuity errors");
        let video: Vec<u64> = pes
            .iter()
            .filter(|p| p.stream_type == 0x1B)
            .filter_map(|p| p.dts.or(p.pts))
            .collect();
        assert!(video.len() > 1, "the bystander recorded no video");
        let secs = (video.last().unwrap() - video[0]) as f64 / 90_000.0;
        println!(
            "bystander player recorded {} video frames over {secs:.1} s",
            video.len()
        );
        assert!(secs >= min_secs, "recorded only {secs:.1} s");
        let max_step = video
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap();
        // 30 fps: 3 000 ticks per frame; a lost frame would show as 6 000.
        assert!(max_step <= 3_100, "a frame is missing: DTS step {max_step}");
        let expected = secs * 30.0;
        assert!(
            (video.len() as f64) >= expected - 1.0,
            "{} frames for {secs:.1} s",
            video.len()
        );
        (video.len(), secs)
    }
}
