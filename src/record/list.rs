//! What `GET /api/v1/recordings` lists: the segments under the record
//! directory of every application that records. A segment's duration comes
//! from the PTS/DTS at its start and its end, read with the TS demuxer from
//! at most [`PROBE`] bytes at each end, so listing costs the same for a
//! segment of a minute or a day. The walk blocks: call it off the runtime.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::name::{parse_segment_name, rfc3339};
use crate::stream::config::{Apps, DEFAULT_APP};
use crate::stream::path::validate_segment;
use crate::ts::{Demuxer, Pes, PACKET, TIMESTAMP_MASK};

/// Bytes read at each end of a segment for its duration.
pub const PROBE: usize = 64 * 1024;

/// The applications' record roots as configured now; asked for on every
/// use, so a reloaded configuration shows at once.
pub type RootsFn = Arc<dyn Fn() -> Vec<Root> + Send + Sync>;

/// A `record_dir` and the applications recorded into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Absolute.
    pub dir: PathBuf,
    pub apps: Scope,
    pub keep: Option<Duration>,
}

/// Which `APP` directories of a root belong to its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `[apps.NAME]`: `DIR/NAME` only.
    App(String),
    /// `[apps."*"]`: every application but those configured by name.
    Others(Vec<String>),
}

/// One stream's directory under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDir {
    pub app: String,
    pub key: String,
    pub path: PathBuf,
}

/// The roots of the applications that record (`record = true`).
pub fn roots(apps: &Apps) -> Vec<Root> {
    apps.iter()
        .filter_map(|(name, app)| {
            let spec = app.record_spec()?;
            let scope = if name == DEFAULT_APP {
                Scope::Others(apps.named().map(str::to_string).collect())
            } else {
                Scope::App(name.clone())
            };
            Some(Root {
                dir: std::path::absolute(&spec.dir).unwrap_or(spec.dir),
                apps: scope,
                keep: spec.keep,
            })
        })
        .collect()
}

impl Root {
    /// The stream directories present now (real directories with valid
    /// path names; symlinks are not followed).
    pub fn key_dirs(&self) -> Vec<KeyDir> {
        let apps = match &self.apps {
            Scope::App(name) => vec![name.clone()],
            Scope::Others(except) => subdirs(&self.dir)
                .into_iter()
                .filter(|a| !except.contains(a))
                .collect(),
        };
        apps.into_iter()
            .flat_map(|app| {
                let app_dir = self.dir.join(&app);
                subdirs(&app_dir).into_iter().map(move |key| KeyDir {
                    path: app_dir.join(&key),
                    app: app.clone(),
                    key,
                })
            })
            .collect()
    }
}

/// Names of the subdirectories of `dir` that are valid path segments.
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| validate_segment(n).is_ok())
        .collect()
}

/// One segment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recording {
    pub app: String,
    pub key: String,
    pub path: String,
    /// RFC 3339, UTC, from the file name.
    pub start: String,
    pub duration_seconds: f64,
    pub bytes: u64,
    /// Being written now.
    pub open: bool,
}

/// Segments listed by default (`?limit=`), and at most.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// The newest `limit` segments under `roots` (each one's duration costs
/// reading its two ends), optionally of one application and/or key;
/// ordered by application, key and start.
pub fn list(roots: &[Root], app: Option<&str>, key: Option<&str>, limit: usize) -> Vec<Recording> {
    let mut dirs = BTreeMap::new();
    for d in roots.iter().flat_map(Root::key_dirs) {
        if app.is_some_and(|a| a != d.app) || key.is_some_and(|k| k != d.key) {
            continue;
        }
        dirs.insert((d.app.clone(), d.key.clone(), d.path.clone()), d);
    }
    // Names first (a directory listing), then only the newest `limit` are
    // opened.
    let mut found: Vec<(u64, usize, String, PathBuf)> = Vec::new();
    let dirs: Vec<_> = dirs.into_values().collect();
    for (i, d) in dirs.iter().enumerate() {
        let Ok(entries) = fs::read_dir(&d.path) else {
            continue;
        };
        found.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let start = parse_segment_name(&name)?;
                    Some((start, i, name, e.path()))
                }),
        );
    }
    if found.len() > limit {
        found.sort_by(|a, b| (b.0, &b.2).cmp(&(a.0, &a.2)));
        found.truncate(limit);
    }
    found.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    let mut out = Vec::new();
    for (start, i, _, path) in found {
        let d = &dirs[i];
        {
            let Ok(bytes) = fs::metadata(&path).map(|m| m.len()) else {
                continue;
            };
            let span = file_span_90k(&path).ok().flatten().unwrap_or(0);
            out.push(Recording {
                app: d.app.clone(),
                key: d.key.clone(),
                open: super::is_open(&path),
                path: path.display().to_string(),
                start: rfc3339(start),
                duration_seconds: (span as f64 / 90.0).round() / 1000.0,
                bytes,
            });
        }
    }
    out
}

/// A segment file's media span (90 kHz) from its two ends.
pub fn file_span_90k(path: &Path) -> std::io::Result<Option<u64>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len <= 2 * PROBE as u64 {
        let mut all = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut all)?;
        return Ok(span_90k(&all, None));
    }
    let mut head = vec![0; PROBE];
    f.read_exact(&mut head)?;
    // The tail starts on a packet boundary counted from the file's start.
    let from = (len - PROBE as u64) / PACKET as u64 * PACKET as u64;
    f.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity(PROBE + PACKET);
    f.take(len - from).read_to_end(&mut tail)?;
    Ok(span_90k(&head, Some(&tail)))
}

/// From the earliest timestamp at the start of a TS file (`head`, which
/// holds its PAT and PMT) to the latest at its end (`tail`, or `head`
/// itself for a short file): DTS, or PTS where a PES has no DTS. 33-bit
/// wrap aware. `None` when either end has no timestamp.
pub fn span_90k(head: &[u8], tail: Option<&[u8]>) -> Option<u64> {
    let ts = |p: &Pes| p.dts.or(p.pts);
    let mut demux = Demuxer::new();
    let mut first = Vec::new();
    // Damage is expected (a file cut by a crash; the jump to the tail).
    let _ = demux.push(head, &mut first);
    let mut last = Vec::new();
    match tail {
        Some(t) => {
            let _ = demux.push(t, &mut last);
            demux.flush(&mut last);
        }
        None => {
            demux.flush(&mut first);
            last.clone_from(&first);
        }
    }
    let start = first.iter().filter_map(ts).min()?;
    let end = last.iter().filter_map(ts).max()?;
    Some(end.wrapping_sub(start) & TIMESTAMP_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::fixtures::{aac_config, h264_config};
    use crate::media::{Codec, Frame, Track};
    use crate::ts::Muxer;
    use bytes::Bytes;

    /// `secs` seconds of 30 fps H.264 (keyframe every second) and AAC,
    /// muxed by sluice's own muxer.
    fn muxed(secs: u64, frame_bytes: usize) -> Vec<u8> {
        let mut m = Muxer::new();
        m.set_config(&h264_config()).unwrap();
        m.set_config(&aac_config()).unwrap();
        let mut chunks = Vec::new();
        let mut nal = vec![0u8; frame_bytes];
        nal[..4].copy_from_slice(&((frame_bytes - 4) as u32).to_be_bytes());
        for i in 0..secs * 30 {
            let key = i % 30 == 0;
            nal[4] = if key { 0x65 } else { 0x41 };
            let video = Frame {
                track: Track::Video,
                codec: Codec::H264,
                dts: i * 1000 / 30,
                cts: 66,
                keyframe: key,
                data: Bytes::from(nal.clone()),
            };
            m.push(&video, &mut chunks).unwrap();
            let audio = Frame {
                track: Track::Audio,
                codec: Codec::Aac,
                dts: i * 1000 / 30,
                cts: 0,
                keyframe: true,
                data: Bytes::from_static(&[0x21, 0x10, 0x04, 0x60, 0x8C, 0x1C]),
            };
            m.push(&audio, &mut chunks).unwrap();
        }
        chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
    }

    #[test]
    fn the_span_of_a_short_file_comes_from_the_whole_file() {
        let ts = muxed(3, 200);
        assert!(ts.len() <= 2 * PROBE);
        // First DTS 0, last audio PTS at frame 89 (2.966 s), the last video
        // DTS likewise.
        let span = span_90k(&ts, None).unwrap();
        assert_eq!(span, 2966 * 90, "{span}");
    }

    #[test]
    fn the_span_of_a_long_file_comes_from_its_two_ends() {
        let ts = muxed(20, 4000);
        assert!(ts.len() > 4 * PROBE);
        let from = (ts.len() - PROBE) / PACKET * PACKET;
        let span = span_90k(&ts[..PROBE], Some(&ts[from..])).unwrap();
        assert_eq!(span, 19_966 * 90, "{span}");
        // A file cut mid-packet (a crash) still has both ends.
        let cut = &ts[..ts.len() - 1000];
        let from = (cut.len() - PROBE) / PACKET * PACKET;
        let span = span_90k(&cut[..PROBE], Some(&cut[from..])).unwrap();
        assert!((19_800 * 90..=19_966 * 90).contains(&span), "{span}");
    }

    #[test]
    fn garbage_has_no_span_and_does_not_panic() {
        assert_eq!(span_90k(&[], None), None);
        assert_eq!(span_90k(&[0x47; 5000], Some(&[0xFF; 300])), None);
        let ts = muxed(1, 200);
        // A tail without PAT/PMT alone has nothing the demuxer can follow.
        assert_eq!(span_90k(&[], Some(&ts[PACKET * 8..])), None);
    }
}
