//! `record_keep`: segments older than it are deleted, when a segment of
//! the same stream closes and once a minute for every application that
//! records (so streams that ended are swept too). Only files named like a
//! segment, directly under `record_dir/APP/KEY/`, are ever deleted, and
//! never one being written.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::list::{Root, RootsFn};
use super::name::parse_segment_name;
use crate::telemetry as t;

/// How often every application's recordings are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Whether a segment that started at `start` (from its name) and was last
/// written at `modified` is older than `keep` at `now`. Its age counts
/// from the later of the two: a clock set back, or a file copied with an
/// old mtime, never makes a segment go early.
pub fn expired(
    start: SystemTime,
    modified: Option<SystemTime>,
    keep: Duration,
    now: SystemTime,
) -> bool {
    let newest = modified.map_or(start, |m| m.max(start));
    now.duration_since(newest).is_ok_and(|age| age > keep)
}

/// Deletes the expired segments in one stream's directory; returns how
/// many went.
pub fn sweep_dir(key_dir: &Path, keep: Duration, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(key_dir) else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(start) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        // Not a symlink, not a directory: only files we could have written.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        if super::is_open(&path) {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        let start = UNIX_EPOCH + Duration::from_secs(start);
        if !expired(start, modified, keep, now) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                deleted += 1;
                debug!(path = %path.display(), ?keep, "old recording segment deleted");
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot delete an old recording segment (record_keep)")
            }
        }
    }
    metrics::counter!(t::RECORD_SEGMENTS_DELETED_TOTAL).increment(deleted as u64);
    deleted
}

/// Sweeps every stream directory of every root that has a `record_keep`.
pub fn sweep(roots: &[Root], now: SystemTime) -> usize {
    roots
        .iter()
        .filter_map(|r| r.keep.map(|keep| (r, keep)))
        .flat_map(|(r, keep)| r.key_dirs().into_iter().map(move |d| (d, keep)))
        .map(|(d, keep)| sweep_dir(&d.path, keep, now))
        .sum()
}

/// The periodic sweep, until `cancel`; the roots are asked for each time,
/// so a reloaded configuration applies from the next sweep on.
pub fn spawn(roots: RootsFn, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let roots = roots();
                    if roots.iter().all(|r| r.keep.is_none()) {
                        continue;
                    }
                    // Directory walks and unlinks block: off the workers.
                    let _ = tokio::task::spawn_blocking(move || sweep(&roots, SystemTime::now())).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_from_the_later_of_name_and_mtime() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let keep = Duration::from_secs(100);
        assert!(!expired(t(1000), Some(t(1060)), keep, t(1160)));
        assert!(expired(t(1000), Some(t(1060)), keep, t(1161)));
        // An mtime older than the name (a copied file) does not count.
        assert!(!expired(t(1000), Some(t(10)), keep, t(1100)));
        assert!(expired(t(1000), None, keep, t(1101)));
        // A segment from the future (clock set back) is kept.
        assert!(!expired(t(5000), None, keep, t(1000)));
    }

    #[test]
    fn only_expired_segment_files_are_deleted() {
        let dir = std::env::temp_dir().join(format!("sluice-retention-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("20200101-000000.ts")).unwrap(); // a directory
        for name in [
            "20200101-000001.ts",
            "20200101-000001-1.ts",
            "notes.txt",
            "20200101-000002.mp4",
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        let open = dir.join("20200101-000003.ts");
        fs::write(&open, b"x").unwrap();
        let _guard = super::super::OpenGuard::new(open.clone());
        // Far in the future, everything named like a segment is expired.
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(sweep_dir(&dir, Duration::from_secs(60), later), 2);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "20200101-000000.ts",
                "20200101-000002.mp4",
                "20200101-000003.ts",
                "notes.txt"
            ]
        );
        // Nothing expires before its time.
        assert_eq!(sweep_dir(&dir, Duration::from_secs(7200), later), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
