//! Edge pulls: a player asks this node for a stream another node holds.
//! The directory names the owner; this node opens one SRT pull per stream
//! and rendition from the owner's `advertise_srt` (signed with the cluster
//! secret, `join=cache` so the GOP arrives as it was) into a local stream
//! of the registry, and every local player plays from that ring with the
//! usual GOP cache, join policy and limits. The origin sees one player.
//!
//! The pull ends `edge_idle` after the last local player left, and at
//! once when the origin's stream ends (its connection closes; the local
//! rings close and their players drain and go). Any pull of a stream
//! ending ends the whole edge stream: the next player starts a fresh one.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use metrics::counter;
use srt_protocol::connection::DuplexConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use super::{Cluster, Owner};
use crate::config::Live;
use crate::srt::guard::{self, Verdict};
use crate::srt::push::{self, Caller};
use crate::srt::receiver::{End, Receiver};
use crate::stream::remote::{Remote, RemoteFuture};
use crate::stream::{
    ClaimError, ClaimPolicy, PublishGuard, Registry, RingConfig, Stream, StreamPath,
};
use crate::telemetry as t;
use crate::transcode::repack::Repacker;
use crate::ts::TsChunk;

/// How long the first player waits for a pull to bring a keyframe (libsrt
/// callers give up connecting after 3 s).
pub const EDGE_WAIT: Duration = Duration::from_millis(2500);
/// How often an edge stream looks for local players.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// A player told its stream is here finishes its handshake within this
/// (its held Conclusion is answered at once; retransmissions every 250 ms).
const INTEREST_GRACE: Duration = Duration::from_secs(2);

/// What pulls are made with; replaced by a config reload for pulls that
/// start afterwards.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// `srt.latency`: the pull's TSBPD latency.
    pub latency: Duration,
    pub peer_idle_timeout: Duration,
    pub ring: RingConfig,
    /// The applications: a pull uses the passphrase the application's
    /// players use (the origin asks the same of its edges),
    /// `read_passphrase`, else `srt.passphrase` (`default_passphrase`).
    pub apps: Arc<crate::stream::config::Apps>,
    pub default_passphrase: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum PullState {
    Connecting,
    Playing,
    Ended(String),
}

/// One stream this node serves from another node.
struct EdgeStream {
    stream: Arc<Stream>,
    origin: Owner,
    /// Each pulled rendition's state.
    pulls: Mutex<HashMap<String, watch::Receiver<PullState>>>,
    /// Released (the rings close) when the edge stream ends.
    guard: Mutex<Option<PublishGuard>>,
    /// A player was told the stream is here, or is waiting for it: until
    /// then the edge counts as watched (its handshake is still to finish).
    interest_until: Mutex<Instant>,
}

impl EdgeStream {
    fn interest(&self) {
        let until = Instant::now() + EDGE_WAIT + INTEREST_GRACE;
        let mut u = self
            .interest_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *u = (*u).max(until);
    }

    fn wanted(&self, now: Instant) -> bool {
        now < *self
            .interest_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// This node's edge streams.
pub struct Edges {
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    root: CancellationToken,
    settings: Live<EdgeSettings>,
    streams: Mutex<HashMap<StreamPath, Arc<EdgeStream>>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

impl Edges {
    pub fn new(
        cluster: Arc<Cluster>,
        registry: Arc<Registry>,
        root: CancellationToken,
        settings: EdgeSettings,
    ) -> Arc<Edges> {
        Arc::new(Edges {
            cluster,
            registry,
            root,
            settings: Live::new(settings),
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Settings for pulls that start from now on.
    pub fn set_settings(&self, settings: EdgeSettings) {
        self.settings.set(settings);
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamPath, Arc<EdgeStream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `rendition` of `path` playable here: `Ok` once its ring has a
    /// keyframe (or the path is published on this node after all).
    async fn fetch(self: Arc<Self>, path: StreamPath, rendition: String) -> Result<(), String> {
        let not_found = || format!("no live stream {path}");
        for _ in 0..3 {
            let existing = self.streams().get(&path).cloned();
            let edge = match existing {
                Some(e) if !e.stream.cancel.is_cancelled() => e,
                _ => {
                    if let Some(s) = self.registry.get(&path) {
                        if s.origin_node.get().is_none() {
                            return Ok(());
                        }
                        // An edge of this path is ending: let it go first.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let owner = match self.cluster.owner(&path.to_string()).await {
                        Ok(Some(o)) if o.node != self.cluster.node() => o,
                        Ok(_) => return Err(not_found()),
                        Err(e) => {
                            return Err(format!(
                                "{}, and the cluster directory is unreachable ({e})",
                                not_found()
                            ))
                        }
                    };
                    match self.start_stream(&path, owner) {
                        Ok(e) => e,
                        // Another player started it meanwhile, or a
                        // publisher: look again.
                        Err(ClaimError::Busy(_) | ClaimError::PublishedOn { .. }) => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            };
            if edge.stream.rendition(&rendition).is_none() {
                return Err(format!("{path} has no rendition {rendition}"));
            }
            edge.interest();
            let mut rx = {
                let mut pulls = edge.pulls.lock().unwrap_or_else(|e| e.into_inner());
                pulls
                    .entry(rendition.clone())
                    .or_insert_with(|| self.start_pull(&edge, &rendition))
                    .clone()
            };
            let state = tokio::time::timeout(EDGE_WAIT, async {
                rx.wait_for(|s| *s != PullState::Connecting)
                    .await
                    .map(|s| s.clone())
                    .unwrap_or(PullState::Ended("the pull ended".into()))
            })
            .await;
            return match state {
                Ok(PullState::Playing) => Ok(()),
                Ok(PullState::Ended(why)) => Err(format!(
                    "{path}: the pull from node {} failed: {why}",
                    edge.origin.node
                )),
                Ok(PullState::Connecting) | Err(_) => Err(format!(
                    "{path}: node {} ({}) sent no keyframe within {EDGE_WAIT:?}",
                    edge.origin.node, edge.origin.srt
                )),
            };
        }
        Err(not_found())
    }

    /// The local stream for a pull from `owner`, and its idle watch.
    fn start_stream(
        self: &Arc<Self>,
        path: &StreamPath,
        owner: Owner,
    ) -> Result<Arc<EdgeStream>, ClaimError> {
        let settings = self.settings.get();
        let peer = format!("node {} ({})", owner.node, owner.srt);
        let renditions = owner
            .renditions
            .iter()
            .filter(|r| r.as_str() != "source")
            .cloned()
            .collect();
        // Claimed and listed under one lock: a second player's fetch finds
        // either nothing (and claims, Busy) or this edge.
        let mut streams = self.streams();
        let guard = self.registry.claim_edge(
            path.clone(),
            &peer,
            &owner.node,
            ClaimPolicy {
                takeover: false,
                stale_after: Duration::MAX,
                ring: settings.ring,
                renditions,
            },
            &self.root,
        )?;
        let stream = guard.stream().clone();
        let _ = stream.protocol.set("edge");
        let edge = Arc::new(EdgeStream {
            stream,
            origin: owner,
            pulls: Mutex::new(HashMap::new()),
            guard: Mutex::new(Some(guard)),
            interest_until: Mutex::new(Instant::now()),
        });
        edge.interest();
        streams.insert(path.clone(), edge.clone());
        drop(streams);
        info!(stream = %path, origin = %edge.origin.node, srt = %edge.origin.srt, "edge stream started");
        let me = self.clone();
        let watched = edge.clone();
        // The edge stream's trace: its pulls are children, its players'
        // sessions link to it, as a publish's would.
        let trace = tracing::info_span!(
            target: crate::telemetry::trace::TARGET,
            parent: None,
            "edge",
            stream = %path,
            origin = %edge.origin.node,
        );
        let _ = edge
            .stream
            .trace
            .set(crate::telemetry::trace::span_context(&trace));
        tokio::spawn(
            async move { me.watch(watched).instrument(trace).await }
                .instrument(tracing::info_span!("edge", stream = %path)),
        );
        Ok(edge)
    }

    /// Whether `rendition` of `path` is pulled here and playing (a player
    /// may be answered at once).
    fn playing_here(&self, path: &StreamPath, rendition: &str) -> bool {
        let Some(edge) = self.streams().get(path).cloned() else {
            return false;
        };
        let playing = edge
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(rendition)
            .is_some_and(|rx| *rx.borrow() == PullState::Playing);
        if playing {
            edge.interest();
        }
        playing && !edge.stream.cancel.is_cancelled()
    }

    /// End the edge stream when no local player has been on it for
    /// `edge_idle`, when the directory no longer names its origin (another
    /// node took the path over at once; the claim gone, after `lease_ttl`,
    /// as the origin rewrites one Redis lost within a third of it), or
    /// when it was cancelled (a pull ended, a publisher took the path over
    /// here, shutdown); then release its path.
    async fn watch(self: Arc<Self>, edge: Arc<EdgeStream>) {
        let idle_limit = self.cluster.edge_idle();
        let lease = self.cluster.lease_ttl();
        let path = edge.stream.path.to_string();
        let mut idle_since: Option<Instant> = None;
        let mut gone_since: Option<Instant> = None;
        let mut next_owner_check = Instant::now();
        let cancel = edge.stream.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
            let players: usize = edge
                .stream
                .renditions
                .iter()
                .map(|r| r.ring.stats().players)
                .sum();
            let now = Instant::now();
            if players > 0 || edge.wanted(now) {
                idle_since = None;
            } else {
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) >= idle_limit {
                    info!(stream = %path, idle_s = idle_limit.as_secs_f64(),
                        "edge pull idle: no local player; ending it");
                    break;
                }
            }
            // As often as the origin renews its claim, not every look for
            // players: one read per edge stream per third of the lease.
            if now < next_owner_check {
                continue;
            }
            next_owner_check = now + lease / 3;
            // Redis unreachable: the pull goes on as it is.
            let owner = tokio::select! {
                _ = cancel.cancelled() => break,
                o = self.cluster.owner(&path) => o,
            };
            match owner {
                Ok(Some(o)) if o.node == edge.origin.node && o.since_ms == edge.origin.since_ms => {
                    gone_since = None;
                }
                Ok(Some(o)) => {
                    info!(stream = %path, origin = %edge.origin.node, now_on = %o.node,
                        "the stream moved to another node; ending this edge pull (players reconnect to the new origin)");
                    break;
                }
                Ok(None) => {
                    let since = *gone_since.get_or_insert(now);
                    if now.duration_since(since) >= lease {
                        info!(stream = %path, origin = %edge.origin.node,
                            "the origin no longer holds the stream (released or expired); ending this edge pull");
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        cancel.cancel();
        {
            let mut streams = self.streams();
            if streams
                .get(&edge.stream.path)
                .is_some_and(|e| Arc::ptr_eq(e, &edge))
            {
                streams.remove(&edge.stream.path);
            }
        }
        // The rings close; local players drain what they have and go.
        edge.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Start pulling `rendition` into its ring.
    fn start_pull(
        self: &Arc<Self>,
        edge: &Arc<EdgeStream>,
        rendition: &str,
    ) -> watch::Receiver<PullState> {
        let (tx, rx) = watch::channel(PullState::Connecting);
        let settings = self.settings.get();
        let path = edge.stream.path.to_string();
        let passphrase = settings
            .apps
            .lookup(&edge.stream.path.app)
            .and_then(|a| a.read_passphrase.clone())
            .or_else(|| settings.default_passphrase.clone());
        let rpath = if rendition == "source" {
            path.clone()
        } else {
            format!("{path}/{rendition}")
        };
        let node = self.cluster.node().to_string();
        let token = self.cluster.secret().edge_token(&rpath, &node, unix_now());
        let caller = Caller {
            name: format!("node {} ({})", edge.origin.node, edge.origin.srt),
            streamid: Some(format!(
                "#!::r={rpath},m=request,join=cache,node={node},ct={token}"
            )),
            passphrase,
            latency: settings.latency,
            peer_idle_timeout: settings.peer_idle_timeout,
        };
        let cluster = self.cluster.clone();
        let edge = edge.clone();
        let rendition = rendition.to_string();
        let span = tracing::info_span!("edge_pull", stream = %path, rendition = %rendition);
        let trace = tracing::info_span!(
            target: crate::telemetry::trace::TARGET,
            parent: None,
            "edge_pull",
            stream = %path,
            rendition = %rendition,
            origin = %edge.origin.node,
        );
        if let Some(sc) = edge.stream.trace.get() {
            use opentelemetry::trace::TraceContextExt;
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &trace,
                opentelemetry::Context::new().with_remote_span_context(sc.clone()),
            );
        }
        tokio::spawn(
            async move {
                cluster.edge_pull_started();
                counter!(t::CLUSTER_EDGE_PULLS_TOTAL, "result" => "started").increment(1);
                let started = Instant::now();
                let result = pull(&edge, &rendition, &caller, &tx)
                    .instrument(trace.clone())
                    .await;
                cluster.edge_pull_ended();
                let (result_label, why) = match &result {
                    Ok(why) => {
                        crate::telemetry::trace::ok(&trace);
                        ("ended", why.clone())
                    }
                    Err(why) => {
                        crate::telemetry::trace::fail(&trace, why.clone());
                        ("failed", why.clone())
                    }
                };
                drop(trace);
                counter!(t::CLUSTER_EDGE_PULLS_TOTAL, "result" => result_label).increment(1);
                info!(origin = %edge.origin.node, seconds = started.elapsed().as_secs_f64(),
                    result = result_label, why = %why, "edge pull ended");
                let _ = tx.send(PullState::Ended(why));
                edge.stream.cancel.cancel();
            }
            .instrument(span),
        );
        rx
    }
}

/// Pull one rendition from the origin into its ring until the origin's
/// stream ends (`Ok` with why) or the pull fails.
async fn pull(
    edge: &Arc<EdgeStream>,
    rendition: &str,
    caller: &Caller,
    state: &watch::Sender<PullState>,
) -> Result<String, String> {
    let stream = &edge.stream;
    let cancel = stream.cancel.clone();
    let Some(ring) = stream.rendition(rendition).map(|r| r.ring.clone()) else {
        return Err(format!("no rendition {rendition}"));
    };
    let (host, port) = edge
        .origin
        .srt
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| format!("bad advertise_srt {:?}", edge.origin.srt))?;
    let remote = tokio::select! {
        _ = cancel.cancelled() => return Ok("cancelled".into()),
        r = push::resolve_host(&host, port, Some(Instant::now() + EDGE_WAIT)) => r?,
    };
    let (sock, remote) = push::bind(&caller.name, remote)
        .await
        .map_err(|e| e.to_string())?;
    let connect = tokio::time::timeout(
        EDGE_WAIT,
        push::connect_caller(&sock, remote, caller, &cancel),
    );
    let conn = match connect.await {
        Err(_) => return Err(format!("no answer within {EDGE_WAIT:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(None)) => return Ok("cancelled".into()),
        Ok(Ok(Some(c))) => c,
    };
    let Some(conn) = caught(|| DuplexConnection::new(conn)) else {
        return Err("srt-protocol panicked setting up the connection".into());
    };
    info!(origin = %caller.name, "edge pull connected");
    let mut receiver = Receiver::new(conn, Instant::now());
    let mut repack = Repacker::new();
    let mut buf = vec![0u8; 2048];
    let mut wire = BytesMut::with_capacity(1500);
    let mut packets = Vec::new();
    let mut released: Vec<(Bytes, bool)> = Vec::new();
    let mut chunks: Vec<TsChunk> = Vec::new();
    let mut playing = false;
    loop {
        let now = Instant::now();
        let Some(end) = caught(|| receiver.pump(now, &mut packets, &mut released)) else {
            return Err("srt-protocol panicked".into());
        };
        for (p, _) in packets.drain(..) {
            push::send(&sock, &mut wire, Some(p)).await;
        }
        if !released.is_empty() {
            // One origin chunk per payload, ended where the origin ended
            // it (at frame ends): holding a frame's tail until the next
            // frame fills the chunk would add up to a frame interval.
            for (payload, _gap) in released.drain(..) {
                repack.push(&payload, &mut chunks);
                repack.flush(&mut chunks);
            }
            for mut c in chunks.drain(..) {
                c.origin = Some(now);
                if c.keyframe && !playing {
                    playing = true;
                    let _ = state.send(PullState::Playing);
                }
                ring.push(c);
            }
            stream.touch(now);
        }
        if let Some(End::PeerClosed) = end {
            return Ok(format!(
                "node {} closed the stream or went silent (srt.peer_idle_timeout)",
                edge.origin.node
            ));
        }
        let wake = receiver.next_wake().max(now + Duration::from_micros(500));
        tokio::select! {
            _ = cancel.cancelled() => {
                let now = Instant::now();
                if caught(|| receiver.close(now, &mut packets)).is_none() {
                    return Err("srt-protocol panicked".into());
                }
                for (p, _) in packets.drain(..) {
                    push::send(&sock, &mut wire, Some(p)).await;
                }
                return Ok("this node ended the pull".into());
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = sock.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let data = &buf[..n];
                if !matches!(guard::check_publisher(data), Verdict::Pass) {
                    continue;
                }
                match guard::parse_caught(data, remote.is_ipv6()) {
                    Some(Ok(p)) => {
                        let now = Instant::now();
                        if caught(|| receiver.handle_packet(now, p, remote)).is_none() {
                            return Err("srt-protocol panicked".into());
                        }
                    }
                    Some(Err(_)) => {}
                    None => return Err("srt-protocol panicked".into()),
                }
            }
        }
    }
}

impl Remote for Edges {
    fn fetch(
        self: Arc<Self>,
        path: StreamPath,
        rendition: String,
    ) -> RemoteFuture<Result<(), String>> {
        Box::pin(Edges::fetch(self, path, rendition))
    }

    fn held_elsewhere(self: Arc<Self>, path: StreamPath) -> RemoteFuture<Option<String>> {
        Box::pin(async move {
            match self.cluster.owner(&path.to_string()).await {
                Ok(Some(o)) if o.node != self.cluster.node() => Some(format!("node {}", o.node)),
                _ => None,
            }
        })
    }

    fn wait_limit(&self) -> Duration {
        EDGE_WAIT
    }

    fn playing_here(&self, path: &StreamPath, rendition: &str) -> bool {
        Edges::playing_here(self, path, rendition)
    }

    fn authorizes_pull(&self, token: &str, path: &str, node: &str) -> bool {
        self.cluster
            .secret()
            .verify_edge_token(token, path, node, unix_now())
    }
}
