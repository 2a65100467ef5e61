//! Live streams by path (`APP/KEY`): the registry (one publisher per
//! path, stream limits), each stream's shared state and rendition rings,
//! and the stream group that runs a stream's lifecycle (`group`, its
//! driver `driver`, the `leg` interface). See docs/stream-group.md.

pub mod config;
pub mod driver;
pub mod group;
pub mod leg;
pub mod path;
pub mod remote;
pub mod ring;
pub mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use crate::media::MediaEvent;
pub use path::StreamPath;
pub use ring::{Cursor, DataReady, Read, Ring, RingConfig, RingItem};
pub use stats::{IngestStats, StatsSnapshot};

use crate::telemetry::StreamSeries;
use crate::ts::TsChunk;

/// What a chunk in a ring costs besides its bytes: its slot in the
/// ring's deque (~64 bytes) and the allocation and reference count behind
/// its `Bytes` (~64). Counted so that a ring of tiny chunks (a publisher
/// of tiny frames) stays within the ring's memory bound too.
const RING_ITEM_OVERHEAD: usize = 128;

impl RingItem for TsChunk {
    fn size(&self) -> usize {
        self.data.len() + RING_ITEM_OVERHEAD
    }
    fn is_keyframe(&self) -> bool {
        self.keyframe
    }
}

/// Live figures of one rendition, for the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RenditionInfo {
    /// `copy` (source), `nvenc`, `x264` or `x265`.
    pub encoder: String,
    pub codec: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub bitrate_bps: u64,
}

/// One output of a stream ("source" is the native remux) and its ring.
#[derive(Debug)]
pub struct Rendition {
    pub name: String,
    pub ring: Arc<Ring<TsChunk>>,
    /// Encoder and live figures of a transcoded rendition (`None` for source).
    info: Mutex<Option<RenditionInfo>>,
}

impl Rendition {
    fn new(name: &str, ring: Arc<Ring<TsChunk>>) -> Self {
        Rendition {
            name: name.to_string(),
            ring,
            info: Mutex::new(None),
        }
    }

    pub fn info(&self) -> Option<RenditionInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_info(&self, info: RenditionInfo) {
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    pub fn update_info(&self, f: impl FnOnce(&mut RenditionInfo)) {
        if let Some(i) = self.info.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(i);
        }
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
    /// The ingest protocol (`rtmp`, RTMPS included, `srt`, or `edge` for
    /// a pull from another node), set once at publish.
    pub protocol: std::sync::OnceLock<&'static str>,
    /// Its publish's trace (the root span), which player sessions link to.
    pub trace: std::sync::OnceLock<opentelemetry::trace::SpanContext>,
    /// The node an edge stream is pulled from (`None`: published here).
    pub origin_node: std::sync::OnceLock<String>,
    /// The publisher's IP when `peer` is a socket address (counted against
    /// `rtmp.max_publishes_per_ip`).
    peer_ip: Option<IpAddr>,
    /// Cancelled when the stream must stop (takeover, shutdown).
    pub cancel: CancellationToken,
    /// Set when a takeover cancelled this stream.
    pub taken_over: AtomicBool,
    /// Milliseconds after `started` when media last arrived.
    last_media_ms: AtomicU64,
    /// The ingest's figures as its group last published them.
    stats: Mutex<StatsSnapshot>,
    metadata: Mutex<Option<Metadata>>,
    /// Its legs as its group last published them.
    legs: Mutex<Vec<LegView>>,
    /// Fixed when the stream is created; "source" first.
    pub renditions: Vec<Rendition>,
    /// Its labelled metric series: rendered while it is live, gone with it.
    pub series: StreamSeries,
}

/// One leg of a live stream as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegView {
    /// `srt_push`, `rtmp_push`, `transcode`, `record`.
    pub kind: &'static str,
    /// Where it goes, without secrets.
    pub target: String,
    pub required: bool,
    pub status: group::LegStatus,
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
    pub fn rendition(&self, name: &str) -> Option<&Rendition> {
        self.renditions.iter().find(|r| r.name == name)
    }

    /// Record that media arrived now.
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last_media_ms.store(ms, Ordering::Relaxed);
    }

    /// How long no media has arrived.
    pub fn idle_for(&self, now: Instant) -> Duration {
        let last = self.started + Duration::from_millis(self.last_media_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Whether a takeover (rather than shutdown) cancelled this stream.
    pub fn was_taken_over(&self) -> bool {
        self.taken_over.load(Ordering::SeqCst)
    }

    /// The ingest's figures (codecs, counts, fps, bitrate) as last published.
    pub fn stats(&self) -> StatsSnapshot {
        // A poisoned lock only means a panic elsewhere; the data is plain counters.
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_stats(&self, s: StatsSnapshot) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn set_metadata(&self, m: Metadata) {
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
    }

    pub fn set_legs(&self, legs: Vec<LegView>) {
        *self.legs.lock().unwrap_or_else(|e| e.into_inner()) = legs;
    }

    /// Its legs, their state, retries and last error.
    pub fn legs(&self) -> Vec<LegView> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
    #[error("{path} is being published on node {node}; stop that publisher first, or set takeover = true for this application")]
    PublishedOn { path: String, node: String },
    #[error("server is draining; publish again on another instance")]
    Draining,
    #[error("server already has {limit} live streams (rtmp.max_streams); try again later or use another instance")]
    MaxStreams { limit: usize },
    #[error("{ip} already has {limit} live publishes (rtmp.max_publishes_per_ip); stop one first")]
    MaxPublishesPerIp { ip: IpAddr, limit: usize },
}

impl ClaimError {
    /// Whether a configured limit refused the claim.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ClaimError::MaxStreams { .. } | ClaimError::MaxPublishesPerIp { .. }
        )
    }
}

/// Server-wide limits checked when a path is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Live streams (`rtmp.max_streams`).
    pub max_streams: usize,
    /// Live publishes from one IP (`rtmp.max_publishes_per_ip`).
    pub max_publishes_per_ip: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: usize::MAX,
            max_publishes_per_ip: usize::MAX,
        }
    }
}

/// How a new publisher may claim a path that is live.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// Replace a live publisher.
    pub takeover: bool,
    /// Replace a publisher that sent no media for this long: its encoder
    /// most likely lost the connection without the TCP close reaching us,
    /// and is now reconnecting.
    pub stale_after: Duration,
    /// Bounds of each rendition's ring.
    pub ring: RingConfig,
    /// Transcoded renditions the stream will have besides "source".
    pub renditions: Vec<String>,
}

/// All live streams.
#[derive(Debug, Default)]
pub struct Registry {
    streams: Mutex<HashMap<StreamPath, Arc<Stream>>>,
    generation: AtomicU64,
    draining: AtomicBool,
    /// Replaced by a config reload; claims read them as they come.
    limits: Mutex<StreamLimits>,
    /// Poked whenever any rendition ring gets data or closes.
    data_ready: DataReady,
}

impl Registry {
    /// A registry without stream-count limits.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    pub fn with_limits(limits: StreamLimits) -> Arc<Registry> {
        Arc::new(Registry {
            limits: Mutex::new(limits),
            ..Registry::default()
        })
    }

    /// New limits for claims from now on (a config reload); live streams
    /// stay, even past a lowered limit.
    pub fn set_limits(&self, limits: StreamLimits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn map(&self) -> MutexGuard<'_, HashMap<StreamPath, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim `path` for a new publisher. A live publisher on the path is
    /// cancelled and replaced when the policy allows takeover or when it
    /// has gone stale; otherwise the claim fails. `peer` is the publisher's
    /// `ip:port`; its IP counts against `max_publishes_per_ip` (a peer that
    /// is not a socket address is not counted per IP). A replacement does
    /// not add a stream, so the limits only refuse what would grow.
    pub fn claim(
        self: &Arc<Self>,
        path: StreamPath,
        name: &str,
        peer: &str,
        policy: ClaimPolicy,
        parent: &CancellationToken,
    ) -> Result<PublishGuard, ClaimError> {
        self.claim_as(path, name, peer, policy, parent, None)
    }

    /// Claim `path` for an edge stream pulled from node `origin` (see
    /// `cluster::edge`): never over a live stream, and not counted against
    /// `rtmp.max_streams` or the per-IP limit (those bound publishers; an
    /// edge exists only while players on this node ask for it). The stream
    /// is an edge from its first moment, so nothing sees it as a local one.
    pub fn claim_edge(
        self: &Arc<Self>,
        path: StreamPath,
        peer: &str,
        origin: &str,
        policy: ClaimPolicy,
        parent: &CancellationToken,
    ) -> Result<PublishGuard, ClaimError> {
        let name = path.key.clone();
        self.claim_as(path, &name, peer, policy, parent, Some(origin.to_string()))
    }

    fn claim_as(
        self: &Arc<Self>,
        path: StreamPath,
        name: &str,
        peer: &str,
        policy: ClaimPolicy,
        parent: &CancellationToken,
        origin: Option<String>,
    ) -> Result<PublishGuard, ClaimError> {
        if self.is_draining() {
            return Err(ClaimError::Draining);
        }
        let now = Instant::now();
        let peer_ip = peer
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_canonical());
        let mut map = self.map();
        let old = map.get(&path);
        if let Some(old) = old {
            if !policy.takeover && old.idle_for(now) < policy.stale_after {
                // This node plays it from another node: name that one.
                return Err(match old.origin_node.get() {
                    Some(node) => ClaimError::PublishedOn {
                        path: path.to_string(),
                        node: node.clone(),
                    },
                    None => ClaimError::Busy(path.to_string()),
                });
            }
        }
        if origin.is_some() && old.is_some() {
            return Err(ClaimError::Busy(path.to_string()));
        }
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        // Local streams count; edge streams do not (see `claim_edge`).
        let local = |s: &&Arc<Stream>| s.origin_node.get().is_none();
        let grows = old.is_none_or(|o| !local(&o));
        if origin.is_none() && grows && map.values().filter(local).count() >= limits.max_streams {
            return Err(ClaimError::MaxStreams {
                limit: limits.max_streams,
            });
        }
        let peer_ip = if origin.is_some() { None } else { peer_ip };
        if let Some(ip) = peer_ip {
            // The stream being replaced stops counting as this one starts.
            let live = map
                .values()
                .filter(|s| s.peer_ip == Some(ip) && s.path != path)
                .count();
            if live >= limits.max_publishes_per_ip {
                return Err(ClaimError::MaxPublishesPerIp {
                    ip,
                    limit: limits.max_publishes_per_ip,
                });
            }
        }
        if let Some(old) = old {
            old.taken_over.store(true, Ordering::SeqCst);
            old.cancel.cancel();
        }
        let stream = Arc::new(Stream {
            path: path.clone(),
            name: name.to_string(),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            started: now,
            started_at: SystemTime::now(),
            peer: peer.to_string(),
            peer_ip,
            cancel: parent.child_token(),
            taken_over: AtomicBool::new(false),
            last_media_ms: AtomicU64::new(0),
            stats: Mutex::new(StatsSnapshot::new(now)),
            metadata: Mutex::new(None),
            legs: Mutex::new(Vec::new()),
            protocol: std::sync::OnceLock::new(),
            trace: std::sync::OnceLock::new(),
            origin_node: origin.map(std::sync::OnceLock::from).unwrap_or_default(),
            series: StreamSeries::new(&path.to_string()),
            renditions: std::iter::once("source")
                .chain(policy.renditions.iter().map(String::as_str))
                .map(|name| {
                    Rendition::new(
                        name,
                        Ring::with_notify(policy.ring, self.data_ready.clone()),
                    )
                })
                .collect(),
        });
        map.insert(path, stream.clone());
        Ok(PublishGuard {
            registry: self.clone(),
            stream,
        })
    }

    /// Notified on every push into any ring of any stream, so one task can
    /// serve players of many streams without polling.
    pub fn data_ready(&self) -> &DataReady {
        &self.data_ready
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
        // Players drain what they have and are then closed.
        for r in &self.stream.renditions {
            r.ring.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(k: &str) -> StreamPath {
        StreamPath::from_rtmp("live", k).unwrap()
    }

    /// A publisher of tiny frames (one TS packet each, never a new
    /// keyframe) fills the ring with small chunks; what each costs besides
    /// its 188 bytes (its deque slot, the allocation and reference count
    /// behind its `Bytes`, ~130 bytes) counts toward the ring's bound.
    #[test]
    fn a_ring_of_tiny_chunks_is_bounded_by_what_they_really_hold() {
        let ring: Arc<Ring<TsChunk>> = Ring::new(RingConfig::default());
        let chunk = |keyframe| TsChunk {
            data: bytes::Bytes::from(vec![0x47; 188]),
            keyframe,
            dts_90k: 0,
            origin: None,
        };
        ring.push(chunk(true));
        for _ in 0..300_000 {
            ring.push(chunk(false));
        }
        let st = ring.stats();
        let held = st.items * (188 + 128);
        assert!(
            held <= RingConfig::default().max_bytes,
            "{} chunks of 188 bytes hold ~{} MiB",
            st.items,
            held >> 20
        );
    }

    fn policy(takeover: bool) -> ClaimPolicy {
        ClaimPolicy {
            takeover,
            stale_after: Duration::from_secs(3600),
            ring: RingConfig::default(),
            renditions: vec!["720p".into()],
        }
    }

    #[test]
    fn second_publisher_is_refused_and_release_allows_republish() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let g = reg
            .claim(path("a"), "a", "p1", policy(false), &root)
            .unwrap();
        assert_eq!(
            reg.claim(path("a"), "a", "p2", policy(false), &root)
                .unwrap_err(),
            ClaimError::Busy("live/a".into())
        );
        drop(g);
        assert!(reg.is_empty());
        let _g2 = reg
            .claim(path("a"), "a", "p2", policy(false), &root)
            .unwrap();
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn takeover_cancels_the_old_publisher_and_keeps_the_new_one() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let old = reg
            .claim(path("a"), "a", "p1", policy(true), &root)
            .unwrap();
        let new = reg
            .claim(path("a"), "a", "p2", policy(true), &root)
            .unwrap();
        assert!(old.stream().cancel.is_cancelled());
        assert!(old.stream().taken_over.load(Ordering::SeqCst));
        drop(old);
        assert_eq!(reg.get(&path("a")).unwrap().peer, "p2");
        assert!(!new.stream().cancel.is_cancelled());
    }

    #[test]
    fn a_stale_publisher_is_replaced_without_takeover() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let stale = ClaimPolicy {
            stale_after: Duration::ZERO,
            ..policy(false)
        };
        let old = reg
            .claim(path("a"), "a", "p1", stale.clone(), &root)
            .unwrap();
        let _new = reg.claim(path("a"), "a", "p2", stale, &root).unwrap();
        let names: Vec<_> = old
            .stream()
            .renditions
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["source", "720p"]);
        assert!(old.stream().cancel.is_cancelled());
        assert!(old.stream().taken_over.load(Ordering::SeqCst));
    }

    #[test]
    fn touch_resets_idle_time() {
        let reg = Registry::new();
        let g = reg
            .claim(
                path("a"),
                "a",
                "p",
                policy(false),
                &CancellationToken::new(),
            )
            .unwrap();
        let st = g.stream();
        let later = st.started + Duration::from_secs(5);
        assert!(st.idle_for(later) >= Duration::from_secs(5));
        st.touch(later);
        assert_eq!(st.idle_for(later), Duration::ZERO);
    }

    #[test]
    fn max_streams_refuses_a_new_path_but_not_a_takeover() {
        let reg = Registry::with_limits(StreamLimits {
            max_streams: 1,
            ..StreamLimits::default()
        });
        let root = CancellationToken::new();
        let a = reg
            .claim(path("a"), "a", "10.0.0.1:1", policy(true), &root)
            .unwrap();
        let err = reg
            .claim(path("b"), "b", "10.0.0.2:1", policy(true), &root)
            .unwrap_err();
        assert_eq!(err, ClaimError::MaxStreams { limit: 1 });
        assert!(err.is_limit());
        assert!(err.to_string().contains("rtmp.max_streams"), "{err}");
        // Replacing the live publisher keeps the count at one.
        let _a2 = reg
            .claim(path("a"), "a", "10.0.0.2:1", policy(true), &root)
            .unwrap();
        drop(a);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn publishes_per_ip_are_counted_from_live_streams() {
        let reg = Registry::with_limits(StreamLimits {
            max_publishes_per_ip: 2,
            ..StreamLimits::default()
        });
        let root = CancellationToken::new();
        let a = reg
            .claim(path("a"), "a", "10.0.0.1:1000", policy(true), &root)
            .unwrap();
        let b = reg
            .claim(path("b"), "b", "10.0.0.1:1001", policy(true), &root)
            .unwrap();
        let err = reg
            .claim(path("c"), "c", "10.0.0.1:1002", policy(true), &root)
            .unwrap_err();
        assert!(
            err.to_string().contains("rtmp.max_publishes_per_ip"),
            "{err}"
        );
        assert!(err.is_limit());
        // Another IP is not affected; IPv4-mapped IPv6 is the same client.
        let _c = reg
            .claim(path("c"), "c", "10.0.0.2:1000", policy(true), &root)
            .unwrap();
        assert!(reg
            .claim(path("d"), "d", "[::ffff:10.0.0.1]:5", policy(true), &root)
            .is_err());
        // An encoder reconnecting to its own path replaces itself.
        let _a2 = reg
            .claim(path("a"), "a", "10.0.0.1:1003", policy(true), &root)
            .unwrap();
        // Releasing a publish frees its slot.
        drop(a);
        drop(b);
        let _d = reg
            .claim(path("d"), "d", "10.0.0.1:1004", policy(true), &root)
            .unwrap();
    }

    #[test]
    fn a_publisher_meeting_an_edge_stream_is_told_the_origin_node_unless_it_takes_over() {
        let reg = Registry::new();
        let root = CancellationToken::new();
        let edge = reg
            .claim_edge(path("a"), "node n1 (h:1)", "n1", policy(false), &root)
            .unwrap();
        assert_eq!(
            edge.stream().origin_node.get().map(String::as_str),
            Some("n1")
        );
        // Never over a live stream, and not counted as one.
        assert!(reg
            .claim_edge(path("a"), "node n2 (h:2)", "n2", policy(false), &root)
            .is_err());
        let err = reg
            .claim(path("a"), "a", "10.0.0.1:5", policy(false), &root)
            .unwrap_err();
        assert_eq!(
            err,
            ClaimError::PublishedOn {
                path: "live/a".into(),
                node: "n1".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("live/a is being published on node n1"),
            "{err}"
        );
        // A publisher allowed to take over replaces the edge stream here
        // (its claim leg then moves the cluster claim).
        let _new = reg
            .claim(path("a"), "a", "10.0.0.1:5", policy(true), &root)
            .unwrap();
        assert!(edge.stream().cancel.is_cancelled());
        // An edge stream is not counted against its origin's IP.
        assert!(edge.stream().peer_ip.is_none());
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
                policy(false),
                &CancellationToken::new(),
            )
            .unwrap_err();
        assert_eq!(err, ClaimError::Draining);
    }
}
