//! The tokio driver of a stream group: one task per stream that owns the
//! group's cancellation token and the one `JoinSet` of its legs, feeds the
//! [`Group`] core and executes its outputs. Ingest drivers (RTMP today)
//! start a stream with [`Streams::start`] and talk to it through the
//! [`GroupHandle`] they get; nothing flows back up through them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::config::AppConfig;
use super::group::{Cause, Group, GroupMetrics, GroupParams, Input, LegKind, Output, StatusKind};
use super::leg::{
    LegContext, LegEvent, LegEvents, LegFailure, LegId, LegSpec, LegStarter, MediaFeed,
};
use super::{ClaimError, ClaimPolicy, PublishGuard, Registry, RingConfig, Stream, StreamPath};
use crate::telemetry as t;

/// Inputs queued from the ingest to its group; a full queue makes the
/// ingest wait (TCP backpressure on the publisher), never the group.
const INPUT_QUEUE: usize = 256;
/// How often the API's copy of the stream's figures is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// Legs stop on their own when the stream ends (an SRT push flushes for up
/// to 2 s, FFmpeg gets SIGTERM and SIGKILL 2 s later); past this they are
/// aborted.
const LEG_STOP_LIMIT: Duration = Duration::from_secs(5);

/// Server-wide settings every stream group gets.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `server.setup_timeout`.
    pub setup_timeout: Duration,
    /// `rtmp.max_ingest_bitrate`.
    pub max_ingest_kbps: u32,
    /// `rtmp.stale_publisher_timeout`.
    pub stale_after: Duration,
    pub ring: RingConfig,
}

/// A publish the ingest has authorized.
#[derive(Debug)]
pub struct Publish<'a> {
    pub path: StreamPath,
    /// The publishing name as sent (with its query), for the API.
    pub name: &'a str,
    /// The publisher's `ip:port`.
    pub peer: &'a str,
    pub app: &'a AppConfig,
    /// The ingest connection was accepted: the setup deadline counts from here.
    pub accepted: Instant,
}

/// Starts stream groups and knows when they have all ended.
pub struct Streams {
    registry: Arc<Registry>,
    legs: Arc<dyn LegStarter>,
    root: CancellationToken,
    settings: StreamSettings,
    /// Every group driver (mini-redis's shutdown-complete pattern: drain
    /// waits on this, not on the registry).
    drivers: TaskTracker,
}

impl Streams {
    /// `root` is the server's token: cancelling it ends every stream.
    pub fn new(
        registry: Arc<Registry>,
        legs: Arc<dyn LegStarter>,
        root: CancellationToken,
        settings: StreamSettings,
    ) -> Streams {
        Streams {
            registry,
            legs,
            root,
            settings,
            drivers: TaskTracker::new(),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Claim the path and start the stream's group; its legs that start
    /// with the publish connect while the first keyframe is on its way.
    pub fn start(&self, p: Publish<'_>) -> Result<GroupHandle, ClaimError> {
        let mut specs: Vec<LegSpec> = p.app.push.iter().cloned().map(LegSpec::SrtPush).collect();
        if !p.app.renditions.is_empty() {
            specs.push(LegSpec::Transcode(p.app.renditions.clone()));
        }
        let guard = self.registry.claim(
            p.path.clone(),
            p.name,
            p.peer,
            ClaimPolicy {
                takeover: p.app.takeover,
                stale_after: self.settings.stale_after,
                ring: self.settings.ring,
                renditions: p.app.renditions.iter().map(|r| r.name.clone()).collect(),
            },
            &self.root,
        )?;
        let label = p.path.to_string();
        let group = Group::new(
            GroupParams {
                published: Instant::now(),
                setup_start: p.accepted,
                setup_timeout: self.settings.setup_timeout,
                max_ingest_kbps: self.settings.max_ingest_kbps,
                legs: specs.iter().map(LegSpec::info).collect(),
            },
            GroupMetrics {
                bytes: counter!(t::INGEST_BYTES_TOTAL, "stream" => label.clone()),
                frames_video: counter!(t::INGEST_FRAMES_TOTAL, "stream" => label.clone(), "track" => "video"),
                frames_audio: counter!(t::INGEST_FRAMES_TOTAL, "stream" => label.clone(), "track" => "audio"),
                mux_errors: counter!(t::TS_MUX_ERRORS_TOTAL, "stream" => label),
            },
        );
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let stream = guard.stream().clone();
        let driver = Driver {
            group,
            inputs: rx,
            guard: Some(guard),
            stream: stream.clone(),
            specs,
            starter: self.legs.clone(),
            stopped: Some(stopped_tx),
            status: None,
            legs: JoinSet::new(),
            leg_ids: HashMap::new(),
            feeds: Vec::new(),
            next_snapshot: Instant::now(),
            stats_dirty: false,
        };
        self.drivers
            .spawn(driver.run().instrument(tracing::Span::current()));
        Ok(GroupHandle {
            tx,
            stopped: stopped_rx,
            stream,
        })
    }

    /// Wait until every stream group has ended, or `limit` passed; `true`
    /// when they all ended.
    pub async fn wait_ended(&self, limit: Duration) -> bool {
        self.drivers.close();
        let ended = tokio::time::timeout(limit, self.drivers.wait())
            .await
            .is_ok();
        self.drivers.reopen();
        ended
    }
}

/// How the group ended a publish, for the ingest to tell its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub kind: StatusKind,
    pub description: String,
    /// The teardown cause's label (`setup_timeout`, `leg_failed`, …).
    pub cause: &'static str,
}

/// The ingest's end of a running stream group.
#[derive(Debug)]
pub struct GroupHandle {
    tx: mpsc::Sender<Input>,
    stopped: oneshot::Receiver<Stopped>,
    stream: Arc<Stream>,
}

impl GroupHandle {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Give the group an input, waiting while its queue is full. `false`:
    /// the group has ended ([`GroupHandle::stopped`] says why).
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }

    /// Resolves when the group ended the publish (pending while it runs).
    pub async fn stopped(&mut self) -> Stopped {
        match (&mut self.stopped).await {
            Ok(s) => s,
            Err(_) => Stopped {
                kind: StatusKind::Failed,
                description: "the stream ended unexpectedly".into(),
                cause: "internal",
            },
        }
    }

    /// The publisher is gone (`reason`: `unpublished`, `peer_closed`, …).
    pub async fn end(self, reason: &'static str) {
        let _ = self.tx.send(Input::PublisherGone { reason }).await;
    }
}

/// One stream's task.
struct Driver {
    group: Group,
    inputs: mpsc::Receiver<Input>,
    /// Holds the path; dropped at teardown (the registry forgets the
    /// stream, its rings close, its token is cancelled).
    guard: Option<PublishGuard>,
    stream: Arc<Stream>,
    specs: Vec<LegSpec>,
    starter: Arc<dyn LegStarter>,
    stopped: Option<oneshot::Sender<Stopped>>,
    /// The status the core gave, sent with the teardown's cause.
    status: Option<(StatusKind, String)>,
    legs: JoinSet<Result<(), LegFailure>>,
    leg_ids: HashMap<tokio::task::Id, LegId>,
    feeds: Vec<Option<MediaFeed>>,
    /// When the API's copy may next be refreshed, and whether media came
    /// since it last was.
    next_snapshot: Instant,
    stats_dirty: bool,
}

impl Driver {
    async fn run(mut self) {
        let cancel = self.stream.cancel.clone();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        loop {
            let wake = self.execute(&ev_tx);
            if self.group.is_ended() {
                break;
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let snapshot_at = self.next_snapshot;
            let input = tokio::select! {
                i = self.inputs.recv() => i.unwrap_or(Input::PublisherGone { reason: "publisher_gone" }),
                Some((leg, ev)) = ev_rx.recv() => match ev {
                    LegEvent::Connected => Input::LegConnected(leg),
                    LegEvent::RenditionReady => Input::RenditionReady(leg),
                },
                Some(done) = self.legs.join_next_with_id(), if !self.legs.is_empty() => self.leg_ended(done),
                _ = tokio::time::sleep_until(wake.map_or(far, Into::into)) => Input::Timeout,
                _ = cancel.cancelled() => if self.stream.was_taken_over() { Input::TakenOver } else { Input::Shutdown },
                // The last media before a pause reaches the API too.
                _ = tokio::time::sleep_until(snapshot_at.into()), if self.stats_dirty => {
                    self.publish_stats(Instant::now());
                    continue;
                }
            };
            let now = Instant::now();
            if matches!(input, Input::Media { .. }) {
                self.stream.touch(now);
                self.stats_dirty = true;
            }
            self.group.handle_input(now, input);
        }
        // The ingest's sends fail from here on.
        drop(self.inputs);
        let legs = &mut self.legs;
        let stopped = tokio::time::timeout(LEG_STOP_LIMIT, async {
            while legs.join_next().await.is_some() {}
        })
        .await;
        if stopped.is_err() {
            warn!(stream = %self.stream.path, legs = legs.len(), "legs still running after the stream ended; aborting them");
            legs.abort_all();
            while legs.join_next().await.is_some() {}
        }
    }

    /// Execute the core's outputs; returns when to wake it.
    fn execute(&mut self, ev_tx: &mpsc::UnboundedSender<(LegId, LegEvent)>) -> Option<Instant> {
        let now = Instant::now();
        let wake = loop {
            match self.group.poll_output() {
                Output::StartLeg { leg, source } => self.start_leg(now, leg, source, ev_tx),
                Output::Source(chunk) => {
                    if let Some(r) = self.stream.renditions.first() {
                        r.ring.push(chunk);
                    }
                }
                Output::Feed { leg, event } => {
                    if let Some(Some(f)) = self.feeds.get_mut(leg.0) {
                        f.offer(now, event);
                    }
                }
                Output::Ready { took } => {
                    self.publish_stats(now);
                    self.log_ready(took);
                }
                Output::Status { kind, description } => self.status = Some((kind, description)),
                Output::Teardown { cause, why } => self.teardown(now, cause, why),
                Output::Timeout(t) => break t,
            }
        };
        if self.stats_dirty && now >= self.next_snapshot {
            self.publish_stats(now);
        }
        wake
    }

    fn start_leg(
        &mut self,
        now: Instant,
        leg: LegId,
        source: Option<super::group::SourceInfo>,
        ev_tx: &mpsc::UnboundedSender<(LegId, LegEvent)>,
    ) {
        let Some(spec) = self.specs.get(leg.0) else {
            return;
        };
        let media = source.map(|source| {
            let dropped = counter!(t::TRANSCODE_INPUT_DROPPED_TOTAL, "stream" => self.stream.path.to_string());
            let (feed, input) = MediaFeed::new(now, source, dropped);
            if self.feeds.len() <= leg.0 {
                self.feeds.resize_with(leg.0 + 1, || None);
            }
            self.feeds[leg.0] = Some(feed);
            input
        });
        let ctx = LegContext {
            id: leg,
            stream: self.stream.clone(),
            cancel: self.stream.cancel.clone(),
            events: LegEvents::new(leg, ev_tx.clone()),
            media,
        };
        let fut = self.starter.start(spec, ctx);
        let handle = self.legs.spawn(fut.in_current_span());
        self.leg_ids.insert(handle.id(), leg);
    }

    fn leg_ended(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), LegFailure>), tokio::task::JoinError>,
    ) -> Input {
        let (id, result) = match done {
            Ok((id, r)) => (id, r),
            Err(e) => (
                e.id(),
                Err(LegFailure {
                    reason: "leg_panicked",
                    detail: format!("leg task failed: {e}"),
                }),
            ),
        };
        let leg = self.leg_ids.remove(&id).unwrap_or(LegId(usize::MAX));
        if let Some(Some(_)) = self.feeds.get(leg.0) {
            self.feeds[leg.0] = None;
        }
        Input::LegEnded(leg, result)
    }

    fn publish_stats(&mut self, now: Instant) {
        self.stream.set_stats(self.group.stats().snapshot(now));
        self.next_snapshot = now + SNAPSHOT_EVERY;
        self.stats_dirty = false;
    }

    fn log_ready(&self, took: Duration) {
        histogram!(t::STREAM_SETUP_SECONDS).record(took.as_secs_f64());
        let count = |pred: fn(&LegSpec) -> usize| self.specs.iter().map(pred).sum::<usize>();
        info!(
            stream = %self.stream.path,
            setup_ms = took.as_millis() as u64,
            push_legs = count(|s| usize::from(matches!(s, LegSpec::SrtPush(_)))),
            renditions = count(|s| match s {
                LegSpec::Transcode(r) => r.len(),
                _ => 0,
            }),
            "stream ready"
        );
    }

    /// Tell the ingest, log and count why, then release the path: players
    /// drain what they have and close, legs flush and stop.
    fn teardown(&mut self, now: Instant, cause: Cause, why: String) {
        let stream = &self.stream.path;
        if let Some(reason) = cause.setup_reason() {
            counter!(t::STREAM_SETUP_FAILURES_TOTAL, "reason" => reason).increment(1);
            warn!(%stream, reason, why, "stream setup failed");
        }
        match cause {
            Cause::LegFailed {
                kind: LegKind::SrtPush,
            } => {
                warn!(%stream, why, "push leg failed; stopping the stream")
            }
            Cause::LegFailed { .. } => {
                warn!(%stream, why, "transcode leg failed; stopping the stream")
            }
            Cause::BitrateLimit { kbps, limit_kbps } => warn!(
                %stream,
                ingest_kbps = kbps,
                limit_kbps,
                "ingest bitrate over rtmp.max_ingest_bitrate; stopping the stream"
            ),
            _ => {}
        }
        let label = cause.label();
        counter!(t::STREAM_TEARDOWNS_TOTAL, "cause" => label).increment(1);
        info!(%stream, cause = label, "publish ended");
        if let (Some(tx), Some((kind, description))) = (self.stopped.take(), self.status.take()) {
            let _ = tx.send(Stopped {
                kind,
                description,
                cause: label,
            });
        }
        self.publish_stats(now);
        self.feeds.clear();
        self.stream.cancel.cancel();
        self.guard = None;
    }
}
