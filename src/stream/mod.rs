//! Live streams by path (`APP/KEY`): the registry that enforces one
//! publisher per path, and the per-stream state the API reads.
//!
//! A publish holds a [`PublishGuard`]; dropping it (publisher gone, for any
//! reason) removes the stream at once, so a reconnecting encoder can
//! republish immediately instead of hitting a stale "already publishing".

pub mod ingest;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::validate_segment;

pub use ingest::{Ingest, IngestStats, MediaEvent};

/// A validated stream path: one application segment and one key segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPath {
    pub app: String,
    pub key: String,
}

impl StreamPath {
    /// Build the path from RTMP's `app` (connect) and publishing name.
    /// Query strings (`key?token=...`) and a trailing `/` are not part of
    /// the path; they are kept by the caller for auth.
    pub fn from_rtmp(app: &str, name: &str) -> Result<StreamPath, String> {
        let app = app.split('?').next().unwrap_or("").trim_end_matches('/');
        let key = name.split('?').next().unwrap_or("");
        validate_segment(app).map_err(|e| format!("application name {e}"))?;
        validate_segment(key).map_err(|e| format!("stream key {e}"))?;
        Ok(StreamPath {
            app: app.to_string(),
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for StreamPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.key)
    }
}

/// Shared state of one live stream.
#[derive(Debug)]
pub struct Stream {
    pub path: StreamPath,
    pub name: String,
    /// Distinguishes successive publishes of the same path.
    pub generation: u64,
    pub started: Instant,
    pub started_at: SystemTime,
    pub peer: String,
    /// Cancelled when the stream must stop (takeover, shutdown).
    pub cancel: CancellationToken,
    /// Set when a takeover cancelled this stream.
    pub taken_over: AtomicBool,
    ingest: Mutex<Ingest>,
    metadata: Mutex<Option<Metadata>>,
}

/// What the publisher declared in `onMetaData`; used where the bitstream
/// itself says nothing (e.g. VP9 size).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub encoder: Option<String>,
    pub width: Option<f64>,
    pub height: Option<f64>,
    pub framerate: Option<f64>,
}

impl Stream {
    pub fn ingest(&self) -> MutexGuard<'_, Ingest> {
        // A poisoned lock only means a panic elsewhere; the data is plain counters.
        self.ingest.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_metadata(&self, m: Metadata) {
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
    }

    pub fn metadata(&self) -> Option<Metadata> {
        self.metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("{0} is already being published; stop the other publisher or use another stream key")]
    Busy(String),
    #[error("server is draining; publish again on another instance")]
    Draining,
}

/// All live streams.
#[derive(Debug, Default)]
pub struct Registry {
    streams: Mutex<HashMap<StreamPath, Arc<Stream>>>,
    generation: AtomicU64,
    draining: AtomicBool,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn map(&self) -> MutexGuard<'_, HashMap<StreamPath, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim `path` for a new publisher. With `takeover`, a live publisher
    /// on the path is cancelled and replaced; otherwise the claim fails.
    pub fn claim(
        self: &Arc<Self>,
        path: StreamPath,
        name: &str,
        peer: &str,
        takeover: bool,
        max_jump: std::time::Duration,
        parent: &CancellationToken,
    ) -> Result<PublishGuard, ClaimError> {
        if self.is_draining() {
            return Err(ClaimError::Draining);
        }
        let mut map = self.map();
        if let Some(old) = map.get(&path) {
            if !takeover {
                return Err(ClaimError::Busy(path.to_string()));
            }
            old.taken_over.store(true, Ordering::SeqCst);
            old.cancel.cancel();
        }
        let stream = Arc::new(Stream {
            path: path.clone(),
            name: name.to_string(),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            started: Instant::now(),
            started_at: SystemTime::now(),
            peer: peer.to_string(),
            cancel: parent.child_token(),
            taken_over: AtomicBool::new(false),
            ingest: Mutex::new(Ingest::new(max_jump)),
            metadata: Mutex::new(None),
        });
        map.insert(path, stream.clone());
        Ok(PublishGuard {
            registry: self.clone(),
            stream,
        })
    }

    pub fn get(&self, path: &StreamPath) -> Option<Arc<Stream>> {
        self.map().get(path).cloned()
    }

    /// Live streams sorted by path.
    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by_key(|s| s.path.to_string());
        v
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Holds a path for one publisher; the stream disappears when it drops.
#[derive(Debug)]
pub struct PublishGuard {
    registry: Arc<Registry>,
    stream: Arc<Stream>,
}

impl PublishGuard {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl Drop for PublishGuard {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        // A takeover may already have put a newer publisher there.
        if map
            .get(&self.stream.path)
            .is_some_and(|s| s.generation == self.stream.generation)
        {
            map.remove(&self.stream.path);
        }
        self.stream.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn path(k: &str) -> StreamPath {
        StreamPath::from_rtmp("live", k).unwrap()
    }

    #[test]
    fn paths_strip_queries_and_refuse_bad_names() {
        let p = StreamPath::from_rtmp("live/", "cam1?token=abc").unwrap();
        assert_eq!(p.to_string(), "live/cam1");
        assert!(StreamPath::from_rtmp("live", "").is_err());
        assert!(StreamPath::from_rtmp("live", "a/b").is_err());
        assert!(StreamPath::from_rtmp("", "cam").is_err());
        assert!(StreamPath::from_rtmp("live", "..").is_err());
    }

    #[test]
    fn second_publisher_is_refused_and_release_allows_republish() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let d = Duration::from_secs(10);
        let g = reg.claim(path("a"), "a", "p1", false, d, &root).unwrap();
        assert_eq!(
            reg.claim(path("a"), "a", "p2", false, d, &root)
                .unwrap_err(),
            ClaimError::Busy("live/a".into())
        );
        drop(g);
        assert!(reg.is_empty());
        let _g2 = reg.claim(path("a"), "a", "p2", false, d, &root).unwrap();
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn takeover_cancels_the_old_publisher_and_keeps_the_new_one() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let d = Duration::from_secs(10);
        let old = reg.claim(path("a"), "a", "p1", true, d, &root).unwrap();
        let new = reg.claim(path("a"), "a", "p2", true, d, &root).unwrap();
        assert!(old.stream().cancel.is_cancelled());
        assert!(old.stream().taken_over.load(Ordering::SeqCst));
        drop(old);
        assert_eq!(reg.get(&path("a")).unwrap().peer, "p2");
        assert!(!new.stream().cancel.is_cancelled());
    }

    #[test]
    fn draining_refuses_new_claims() {
        let reg = Registry::new();
        reg.start_draining();
        let err = reg
            .claim(
                path("a"),
                "a",
                "p",
                false,
                Duration::from_secs(1),
                &CancellationToken::new(),
            )
            .unwrap_err();
        assert_eq!(err, ClaimError::Draining);
    }
}
