//! What a published stream should look like in `/api/v1/streams`, checked
//! field by field so a failure lists every mismatch.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::Sluice;
use super::json::{json_f64, json_str, within_pct};

/// Expected video/audio properties of a published stream.
#[derive(Debug, Clone)]
pub struct Expect {
    pub app: String,
    pub key: String,
    pub video: Option<(&'static str, u64, u64, f64)>,
    pub audio: Option<(&'static str, u64, u64)>,
}

impl Expect {
    pub fn new(path: &str) -> Expect {
        let (app, key) = path.split_once('/').expect("path is APP/KEY");
        Expect {
            app: app.into(),
            key: key.into(),
            video: None,
            audio: None,
        }
    }

    /// Video codec name, width, height, fps.
    pub fn video(mut self, codec: &'static str, w: u64, h: u64, fps: f64) -> Self {
        self.video = Some((codec, w, h, fps));
        self
    }

    /// Audio codec name, sample rate, channels.
    pub fn audio(mut self, codec: &'static str, rate: u64, channels: u64) -> Self {
        self.audio = Some((codec, rate, channels));
        self
    }

    /// Every mismatch between `s` (a stream object) and the expectation.
    pub fn mismatches(&self, s: &Value) -> Vec<String> {
        let mut bad = Vec::new();
        let path = format!("{}/{}", self.app, self.key);
        let mut check = |ok: bool, what: String| {
            if !ok {
                bad.push(what);
            }
        };
        check(
            json_str(s, "/path") == Some(path.as_str()),
            format!("path != {path}"),
        );
        check(
            json_str(s, "/app") == Some(self.app.as_str()),
            format!("app != {}", self.app),
        );
        check(
            json_str(s, "/key") == Some(self.key.as_str()),
            format!("key != {}", self.key),
        );
        check(
            json_str(s, "/state") == Some("live"),
            "state != live".into(),
        );
        check(
            json_f64(s, "/uptime_seconds").is_some_and(|u| u >= 0.0),
            "uptime_seconds not a number >= 0".into(),
        );
        check(
            json_f64(s, "/ingest_bitrate_bps").is_some_and(|b| b > 0.0),
            "ingest_bitrate_bps not > 0".into(),
        );
        check(
            json_f64(s, "/bytes_in").is_some_and(|b| b > 0.0),
            "bytes_in not > 0".into(),
        );
        check(
            json_f64(s, "/timestamp_jumps") == Some(0.0),
            "timestamp_jumps != 0".into(),
        );
        let renditions_ok = s
            .get("renditions")
            .and_then(Value::as_array)
            .is_some_and(|r| {
                r.iter().any(|x| {
                    json_str(x, "/name") == Some("source") && json_f64(x, "/players").is_some()
                })
            });
        check(
            renditions_ok,
            "renditions lacks {name:source, players:N}".into(),
        );
        match self.video {
            Some((codec, w, h, fps)) => {
                check(
                    json_str(s, "/codecs/video") == Some(codec),
                    format!("codecs.video != {codec}"),
                );
                check(
                    json_f64(s, "/width") == Some(w as f64),
                    format!("width != {w}"),
                );
                check(
                    json_f64(s, "/height") == Some(h as f64),
                    format!("height != {h}"),
                );
                check(
                    json_f64(s, "/fps").is_some_and(|f| within_pct(f, fps, 10.0)),
                    format!("fps not within 10% of {fps}"),
                );
                check(
                    json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
                    "frames_in.video not > 0".into(),
                );
            }
            None => {
                check(
                    s.pointer("/codecs/video") == Some(&Value::Null),
                    "codecs.video not null".into(),
                );
                check(
                    s.get("width") == Some(&Value::Null),
                    "width not null".into(),
                );
                check(
                    s.get("height") == Some(&Value::Null),
                    "height not null".into(),
                );
                check(s.get("fps") == Some(&Value::Null), "fps not null".into());
            }
        }
        match self.audio {
            Some((codec, rate, ch)) => {
                check(
                    json_str(s, "/codecs/audio") == Some(codec),
                    format!("codecs.audio != {codec}"),
                );
                check(
                    json_f64(s, "/audio/sample_rate") == Some(rate as f64),
                    format!("audio.sample_rate != {rate}"),
                );
                check(
                    json_f64(s, "/audio/channels") == Some(ch as f64),
                    format!("audio.channels != {ch}"),
                );
                check(
                    json_f64(s, "/frames_in/audio").is_some_and(|n| n > 0.0),
                    "frames_in.audio not > 0".into(),
                );
            }
            None => {
                check(
                    s.pointer("/codecs/audio") == Some(&Value::Null),
                    "codecs.audio not null".into(),
                );
                check(
                    s.get("audio") == Some(&Value::Null),
                    "audio not null".into(),
                );
            }
        }
        bad
    }

    /// Waits until the stream is listed and matches; panics with the
    /// mismatches and the last object seen otherwise.
    pub fn wait(&self, server: &Sluice, timeout: Duration) -> Value {
        let path = format!("{}/{}", self.app, self.key);
        let deadline = Instant::now() + timeout;
        loop {
            let found = server
                .try_streams()
                .ok()
                .and_then(|l| Sluice::find_stream(&l, &path));
            if let Some(s) = &found {
                let bad = self.mismatches(s);
                if bad.is_empty() {
                    return s.clone();
                }
                if Instant::now() > deadline {
                    panic!(
                        "stream {path} never matched within {timeout:?}: {bad:?}\nlast object:\n{}",
                        serde_json::to_string_pretty(s).unwrap()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "stream {path} not listed within {timeout:?}; list: {:?}; server stderr:\n{}",
                    server.try_streams(),
                    server.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
