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
use tracing::{info, warn, Instrument, Span};

use super::config::AppConfig;
use super::group::{
    Cause, Group, GroupMetrics, GroupParams, Input, LegKind, LegState, Output, StatusKind,
};
use super::leg::{
    LegContext, LegEvent, LegEvents, LegFailure, LegId, LegSpec, LegStarter, MediaFeed,
};
use super::{
    ClaimError, ClaimPolicy, LegView, PublishGuard, Registry, RingConfig, Stream, StreamPath,
};
use crate::config::Live;
use crate::telemetry as t;
use crate::telemetry::trace::{self as tr, PublishTrace};

/// Inputs queued from the ingest to its group; a full queue makes the
/// ingest wait (TCP backpressure on the publisher), never the group.
const INPUT_QUEUE: usize = 256;
/// How often the API's copy of the stream's figures is refreshed while
/// media comes, and while none does.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
const SNAPSHOT_IDLE_EVERY: Duration = Duration::from_secs(1);
/// Inputs handled per turn before the outputs are executed.
const INPUT_BATCH: usize = 32;
/// How long [`GroupHandle::end`] waits for the group to release its path.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
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
    /// `[cluster]` is on: every stream holds its path in the directory.
    pub cluster: bool,
}

/// A publish the ingest has authorized.
#[derive(Debug)]
pub struct Publish<'a> {
    pub path: StreamPath,
    /// The publishing name as sent (with its query), for the API.
    pub name: &'a str,
    /// The publisher's `ip:port`.
    pub peer: &'a str,
    /// The ingest protocol (`rtmp`, RTMPS included, or `srt`), for the API.
    pub protocol: &'static str,
    pub app: &'a AppConfig,
    /// The ingest connection was accepted: the setup deadline counts from here.
    pub accepted: Instant,
    /// The publish's trace, begun by the ingest; the group ends its setup
    /// span and, with the last handle, its root.
    pub trace: PublishTrace,
}

/// Starts stream groups and knows when they have all ended.
pub struct Streams {
    registry: Arc<Registry>,
    legs: Arc<dyn LegStarter>,
    root: CancellationToken,
    /// Read by each [`Streams::start`]; a config reload replaces it.
    settings: Live<StreamSettings>,
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
            settings: Live::new(settings),
            drivers: TaskTracker::new(),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Settings for streams that start from now on (a config reload);
    /// running ones keep theirs.
    pub fn set_settings(&self, settings: StreamSettings) {
        self.settings.set(settings);
    }

    /// Claim the path and start the stream's group; its legs that start
    /// with the publish connect while the first keyframe is on its way.
    pub fn start(&self, p: Publish<'_>) -> Result<GroupHandle, ClaimError> {
        let settings = self.settings.get();
        let mut specs: Vec<LegSpec> = Vec::new();
        if settings.cluster {
            specs.push(LegSpec::Claim {
                takeover: p.app.takeover,
            });
        }
        specs.extend(p.app.push.iter().map(LegSpec::push));
        if !p.app.renditions.is_empty() {
            specs.push(LegSpec::Transcode(p.app.renditions.clone()));
        }
        specs.extend(p.app.record_spec().map(LegSpec::Record));
        let guard = self.registry.claim(
            p.path.clone(),
            p.name,
            p.peer,
            ClaimPolicy {
                takeover: p.app.takeover,
                stale_after: settings.stale_after,
                ring: settings.ring,
                renditions: p.app.renditions.iter().map(|r| r.name.clone()).collect(),
            },
            &self.root,
        )?;
        let _ = guard.stream().protocol.set(p.protocol);
        let _ = guard.stream().trace.set(tr::span_context(&p.trace.root));
        let series = &guard.stream().series;
        let group = Group::new(
            GroupParams {
                published: Instant::now(),
                setup_start: p.accepted,
                setup_timeout: settings.setup_timeout,
                max_ingest_kbps: settings.max_ingest_kbps,
                legs: specs.iter().map(LegSpec::info).collect(),
            },
            GroupMetrics {
                bytes: series.counter(t::INGEST_BYTES_TOTAL, &[]),
                frames_video: series.counter(t::INGEST_FRAMES_TOTAL, &[("track", "video")]),
                frames_audio: series.counter(t::INGEST_FRAMES_TOTAL, &[("track", "audio")]),
                mux_errors: series.counter(t::TS_MUX_ERRORS_TOTAL, &[]),
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
            shown_bitrate: 0,
            trace_root: p.trace.root.clone(),
            trace_setup: Some(p.trace.setup),
            log_span: p.trace.conn.clone(),
            leg_spans: Vec::new(),
            teardown_span: None,
        };
        // In the trace's root (log lines carry its ids) and in the ingest's
        // connection span (their context, as ever).
        self.drivers.spawn(
            driver
                .run()
                .instrument(p.trace.root)
                .instrument(p.trace.conn),
        );
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
    /// Returns once the group has released the path (the media queued
    /// before went out first), so a republish right after finds it free;
    /// waits at most [`RELEASE_WAIT`].
    pub async fn end(self, reason: &'static str) {
        if self.tx.send(Input::PublisherGone { reason }).await.is_ok() {
            let _ = tokio::time::timeout(RELEASE_WAIT, self.stopped).await;
        }
    }
}

fn leg_input(leg: LegId, ev: LegEvent) -> Input {
    match ev {
        LegEvent::Connected => Input::LegConnected(leg),
        LegEvent::RenditionReady => Input::RenditionReady(leg),
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
    /// The bitrate the API's copy shows.
    shown_bitrate: u64,
    /// The publish's trace: its root, the setup span until the stream is
    /// ready or failed, each leg's connect span until it connected, and
    /// the teardown span until the legs stopped.
    trace_root: Span,
    trace_setup: Option<Span>,
    /// The ingest's connection span: legs' log lines keep it as context.
    log_span: Span,
    leg_spans: Vec<Option<Span>>,
    teardown_span: Option<Span>,
}

impl Driver {
    async fn run(mut self) {
        let cancel = self.stream.cancel.clone();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let mut batch = Vec::with_capacity(INPUT_BATCH);
        loop {
            let wake = self.execute(&ev_tx);
            if self.group.is_ended() {
                break;
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let snapshot = self.snapshot_due();
            tokio::select! {
                i = self.inputs.recv() => {
                    batch.push(i.unwrap_or(Input::PublisherGone { reason: "publisher_gone" }));
                    // What else the ingest queued meanwhile, in one turn.
                    while batch.len() < INPUT_BATCH {
                        let Ok(i) = self.inputs.try_recv() else { break };
                        batch.push(i);
                    }
                }
                Some((leg, ev)) = ev_rx.recv() => batch.push(leg_input(leg, ev)),
                Some(done) = self.legs.join_next_with_id(), if !self.legs.is_empty() => {
                    // What the leg said before it ended comes first.
                    while let Ok((leg, ev)) = ev_rx.try_recv() {
                        batch.push(leg_input(leg, ev));
                    }
                    batch.push(self.leg_ended(done));
                }
                _ = tokio::time::sleep_until(wake.map_or(far, Into::into)) => {
                    // A leg that failed just before the deadline (a push
                    // host that did not resolve in time) names the cause
                    // better than the deadline: what legs said and how
                    // they ended goes first, whichever branch won.
                    while let Ok((leg, ev)) = ev_rx.try_recv() {
                        batch.push(leg_input(leg, ev));
                    }
                    while let Some(done) = self.legs.try_join_next_with_id() {
                        batch.push(self.leg_ended(done));
                    }
                    batch.push(Input::Timeout);
                }
                _ = cancel.cancelled() => batch.push(if self.stream.was_taken_over() {
                    Input::TakenOver
                } else {
                    Input::Shutdown
                }),
                // The last media before a pause, and the bitrate falling
                // during one, reach the API too.
                _ = tokio::time::sleep_until(snapshot.unwrap_or(far.into_std()).into()), if snapshot.is_some() => {
                    self.publish_stats(Instant::now());
                }
            }
            let now = Instant::now();
            for input in batch.drain(..) {
                if matches!(input, Input::Media { .. }) {
                    self.stream.touch(now);
                    self.stats_dirty = true;
                }
                let ended = match &input {
                    Input::LegEnded(leg, Err(f)) => Some((*leg, f.clone())),
                    _ => None,
                };
                self.trace_input(&input);
                self.group.handle_input(now, input);
                if let Some((leg, failure)) = ended {
                    self.leg_failed(now, leg, failure);
                }
            }
            if self.group.take_legs_changed() {
                self.publish_legs();
            }
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
        // Ends the teardown span: it lasted until every leg stopped.
        self.teardown_span = None;
    }

    /// A leg connected, or ended before it did: its connect span ends.
    fn trace_input(&mut self, input: &Input) {
        let (leg, failure) = match input {
            Input::LegConnected(leg) => (leg, None),
            Input::LegEnded(leg, Err(f)) => (leg, Some(format!("{}: {}", f.reason, f.detail))),
            Input::LegEnded(leg, Ok(())) => (leg, Some("ended before it connected".into())),
            _ => return,
        };
        let Some(span) = self.leg_spans.get_mut(leg.0).and_then(Option::take) else {
            return;
        };
        match failure {
            None => tr::ok(&span),
            Some(why) => tr::fail(&span, why),
        }
    }

    /// When the API's copy of the figures should next be refreshed: soon
    /// after media came, then once a second while the last copy still
    /// shows a bitrate (it decays over the measuring window).
    fn snapshot_due(&self) -> Option<Instant> {
        if self.stats_dirty {
            Some(self.next_snapshot)
        } else if self.shown_bitrate > 0 {
            Some(self.next_snapshot + SNAPSHOT_IDLE_EVERY)
        } else {
            None
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
                    if let Some(setup) = self.trace_setup.take() {
                        setup.record("setup_ms", took.as_millis() as i64);
                        tr::ok(&setup);
                    }
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
            let family = match spec {
                LegSpec::RtmpPush { .. } => t::RTMP_PUSH_INPUT_DROPPED_TOTAL,
                _ => t::TRANSCODE_INPUT_DROPPED_TOTAL,
            };
            let dropped = self.stream.series.counter(family, &[]);
            let (feed, input) = MediaFeed::new(now, source, dropped);
            if self.feeds.len() <= leg.0 {
                self.feeds.resize_with(leg.0 + 1, || None);
            }
            self.feeds[leg.0] = Some(feed);
            input
        });
        let mut events = LegEvents::new(leg, ev_tx.clone());
        if !self.group.is_ready() {
            events = events.with_setup_deadline(self.group.setup_deadline());
        }
        // Steps of the setup are children of its span; a leg started
        // later (an optional one's retry) is a child of the root. Through
        // the OpenTelemetry context: a `tracing` child would keep the setup
        // span open until an optional leg connected.
        let parent = tracing_opentelemetry::OpenTelemetrySpanExt::context(
            self.trace_setup.as_ref().unwrap_or(&self.trace_root),
        );
        let info = spec.info();
        if !matches!(spec, LegSpec::Transcode(_)) {
            let retries = self
                .group
                .leg_statuses()
                .nth(leg.0)
                .map_or(0, |s| i64::from(s.retries));
            let span = match spec {
                LegSpec::Claim { takeover } => tracing::info_span!(
                    target: tr::TARGET,
                    parent: None,
                    "cluster_claim",
                    takeover,
                    retries,
                ),
                _ => tracing::info_span!(
                    target: tr::TARGET,
                    parent: None,
                    "leg_connect",
                    leg = info.kind.label(),
                    destination = %spec.target(),
                    required = info.required,
                    retries,
                ),
            };
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent.clone());
            if self.leg_spans.len() <= leg.0 {
                self.leg_spans.resize_with(leg.0 + 1, || None);
            }
            self.leg_spans[leg.0] = Some(span);
        }
        let ctx = LegContext {
            id: leg,
            stream: self.stream.clone(),
            cancel: self.stream.cancel.clone(),
            events,
            media,
            trace: parent,
        };
        let fut = self.starter.start(spec, ctx);
        let handle = self.legs.spawn(
            fut.instrument(self.trace_root.clone())
                .instrument(self.log_span.clone()),
        );
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

    /// Count a leg's failure; an optional one is retried, which is said.
    fn leg_failed(&self, now: Instant, leg: LegId, failure: LegFailure) {
        let (Some(spec), Some(status)) =
            (self.specs.get(leg.0), self.group.leg_statuses().nth(leg.0))
        else {
            return;
        };
        let info = spec.info();
        counter!(
            t::LEG_FAILURES_TOTAL,
            "kind" => info.kind.label(),
            "reason" => failure.reason,
            "required" => if info.required { "true" } else { "false" }
        )
        .increment(1);
        if let LegState::Retrying { at } = status.state {
            counter!(t::LEG_RETRIES_TOTAL, "kind" => info.kind.label()).increment(1);
            warn!(
                stream = %self.stream.path,
                leg = info.kind.label(),
                target = %spec.target(),
                reason = failure.reason,
                error = %failure.detail,
                retry_in_ms = at.saturating_duration_since(now).as_millis() as u64,
                retries = status.retries,
                "optional leg failed; retrying"
            );
        }
    }

    /// The API's copy of the legs' states.
    fn publish_legs(&self) {
        let legs = self
            .specs
            .iter()
            .zip(self.group.leg_statuses())
            .map(|(spec, status)| {
                let info = spec.info();
                LegView {
                    kind: info.kind.label(),
                    target: spec.target(),
                    required: info.required,
                    status: status.clone(),
                }
            })
            .collect();
        self.stream.set_legs(legs);
    }

    fn publish_stats(&mut self, now: Instant) {
        let snap = self.group.stats().snapshot(now);
        self.shown_bitrate = snap.bitrate_bps;
        self.stream.set_stats(snap);
        self.next_snapshot = now + SNAPSHOT_EVERY;
        self.stats_dirty = false;
    }

    /// The trace's side of a teardown: a setup that had not finished
    /// failed with the cause's reason (the root too); a failure of the
    /// running stream fails the root; the teardown span starts.
    fn trace_teardown(&mut self, cause: &Cause, why: &str) {
        let label = cause.label();
        let failed = match cause {
            Cause::SetupTimeout { reason } | Cause::SetupFailed { reason } => {
                Some(format!("{label} ({reason}): {why}"))
            }
            Cause::LegFailed { .. } | Cause::ClaimLost { .. } | Cause::BitrateLimit { .. } => {
                Some(format!("{label}: {why}"))
            }
            Cause::Publisher(_) | Cause::TakenOver | Cause::Shutdown => None,
        };
        // Steps first: they end within the setup.
        for span in self.leg_spans.drain(..).flatten() {
            tr::fail(
                &span,
                format!("the stream ended ({label}) before it connected"),
            );
        }
        if let Some(setup) = self.trace_setup.take() {
            // The publisher leaving or a drain during setup: the setup did
            // not finish either.
            tr::fail(
                &setup,
                failed.clone().unwrap_or_else(|| format!("{label}: {why}")),
            );
        }
        self.trace_root.record("cause", label);
        match &failed {
            Some(f) => tr::fail(&self.trace_root, f.clone()),
            None => tr::ok(&self.trace_root),
        }
        self.teardown_span = Some(tracing::info_span!(
            target: tr::TARGET,
            parent: &self.trace_root,
            "teardown",
            cause = label,
        ));
    }

    fn log_ready(&self, took: Duration) {
        histogram!(t::STREAM_SETUP_SECONDS).record(took.as_secs_f64());
        let count = |pred: fn(&LegSpec) -> usize| self.specs.iter().map(pred).sum::<usize>();
        info!(
            stream = %self.stream.path,
            setup_ms = took.as_millis() as u64,
            push_legs = count(|s| usize::from(matches!(s, LegSpec::SrtPush { .. } | LegSpec::RtmpPush { .. }))),
            renditions = count(|s| match s {
                LegSpec::Transcode(r) => r.len(),
                _ => 0,
            }),
            "stream ready"
        );
    }

    /// Log and count why, release the path (players drain what they
    /// have and close, legs flush and stop), then tell the ingest.
    fn teardown(&mut self, now: Instant, cause: Cause, why: String) {
        let stream = &self.stream.path;
        match cause {
            Cause::SetupTimeout { reason } => {
                let timeout = self.group.setup_timeout();
                counter!(t::STREAM_SETUP_FAILURES_TOTAL, "reason" => reason).increment(1);
                warn!(%stream, reason, why, ?timeout, "stream setup failed");
            }
            Cause::SetupFailed { reason } => {
                counter!(t::STREAM_SETUP_FAILURES_TOTAL, "reason" => reason).increment(1);
                warn!(%stream, reason, why, "stream setup failed");
            }
            Cause::LegFailed {
                kind: LegKind::SrtPush | LegKind::RtmpPush,
            } => warn!(%stream, why, "push leg failed; stopping the stream"),
            Cause::LegFailed {
                kind: LegKind::Record,
            } => warn!(%stream, why, "recording leg failed; stopping the stream"),
            Cause::LegFailed { .. } => {
                warn!(%stream, why, "transcode leg failed; stopping the stream")
            }
            Cause::ClaimLost { reason } => {
                warn!(%stream, reason, why, "another node has this stream's path now; stopping the stream")
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
        self.trace_teardown(&cause, &why);
        counter!(t::STREAM_TEARDOWNS_TOTAL, "cause" => label).increment(1);
        self.publish_stats(now);
        // The stream's series end with it: its totals stay in the log.
        let s = &self.group.stats().stats;
        info!(
            stream = %self.stream.path,
            cause = label,
            bytes_in = s.bytes_in,
            frames_video = s.frames_video,
            frames_audio = s.frames_audio,
            timestamp_jumps = s.timestamp_jumps,
            "publish ended"
        );
        self.feeds.clear();
        self.stream.cancel.cancel();
        self.guard = None;
        // Released: a publisher that left learns it by the channel closing.
        if let Some(tx) = self.stopped.take() {
            if let Some((kind, description)) = self.status.take() {
                let _ = tx.send(Stopped {
                    kind,
                    description,
                    cause: label,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The real driver on the tokio runtime with legs the test scripts:
    //! what ingests and the server rely on (release before `end` returns,
    //! statuses, drain completion).
    use super::*;
    use crate::stream::config::PushEntry;
    use crate::stream::group::fixtures::{audio_config, video, video_config};

    /// Push legs that connect, then stay (`streamid=ok`) or fail 20 ms
    /// later (`streamid=fail`).
    struct ScriptedLegs;

    impl LegStarter for ScriptedLegs {
        fn start(&self, spec: &LegSpec, ctx: LegContext) -> super::super::leg::LegFuture {
            let fail = matches!(spec, LegSpec::SrtPush { target, .. } if target.streamid.as_deref() == Some("fail"));
            Box::pin(async move {
                ctx.events.connected();
                if fail {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Err(LegFailure {
                        reason: "push_closed",
                        detail: "srt://127.0.0.1:9: the connection closed".into(),
                    });
                }
                ctx.cancel.cancelled().await;
                Ok(())
            })
        }
    }

    fn streams(root: &CancellationToken) -> Streams {
        Streams::new(
            Registry::new(),
            Arc::new(ScriptedLegs),
            root.clone(),
            StreamSettings {
                setup_timeout: Duration::from_secs(8),
                max_ingest_kbps: 100_000,
                stale_after: Duration::from_secs(3),
                ring: RingConfig::default(),
                cluster: false,
            },
        )
    }

    fn app(push: &[&str], takeover: bool) -> AppConfig {
        AppConfig {
            takeover,
            push: push.iter().map(|u| PushEntry::parse(u).unwrap()).collect(),
            ..AppConfig::default()
        }
    }

    fn start(s: &Streams, key: &str, app: &AppConfig) -> Result<GroupHandle, ClaimError> {
        s.start(Publish {
            path: StreamPath::from_rtmp("live", key).unwrap(),
            name: key,
            peer: "10.0.0.1:5000",
            protocol: "rtmp",
            app,
            accepted: Instant::now(),
            trace: PublishTrace::none(),
        })
    }

    /// Configs and a keyframe: the stream becomes playable.
    async fn keyframe(h: &GroupHandle) {
        for ev in [video_config(), audio_config(), video(0, true)] {
            let media = Input::Media {
                at: Instant::now(),
                bytes: 100,
                event: Some(ev),
                timestamp_jump: false,
            };
            assert!(h.send(media).await);
        }
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not met within 1 s");
    }

    #[tokio::test]
    async fn end_releases_the_path_before_it_returns_so_a_republish_finds_it_free() {
        let root = CancellationToken::new();
        let s = streams(&root);
        let a = app(&[], false);
        let h = start(&s, "cam1", &a).unwrap();
        keyframe(&h).await;
        let stream = h.stream().clone();
        wait_until(|| stream.renditions[0].ring.stats().has_keyframe).await;
        h.end("unpublished").await;
        assert!(s.registry().is_empty(), "released when end() returns");
        assert!(stream.cancel.is_cancelled());
        let again = start(&s, "cam1", &a).expect("the path is free again");
        again.end("peer_closed").await;
        assert!(s.wait_ended(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_leg_failing_stops_the_publish_with_its_status_and_the_group_ends() {
        let root = CancellationToken::new();
        let s = streams(&root);
        let mut h = start(
            &s,
            "cam1",
            &app(&["srt://127.0.0.1:9?streamid=fail"], false),
        )
        .unwrap();
        keyframe(&h).await;
        let stopped = tokio::time::timeout(Duration::from_secs(2), h.stopped())
            .await
            .expect("stopped");
        assert_eq!(stopped.kind, StatusKind::Failed);
        assert_eq!(stopped.cause, "leg_failed");
        assert!(stopped.description.starts_with("SRT push failed: "));
        assert!(s.registry().is_empty());
        assert!(!h.send(Input::Timeout).await, "the group no longer listens");
        assert!(s.wait_ended(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn shutdown_stops_every_group_and_drain_waits_for_them() {
        let root = CancellationToken::new();
        let s = streams(&root);
        let a = app(&["srt://127.0.0.1:9?streamid=ok"], false);
        let mut one = start(&s, "one", &a).unwrap();
        let mut two = start(&s, "two", &a).unwrap();
        keyframe(&one).await;
        assert!(!s.wait_ended(Duration::from_millis(50)).await, "still live");
        root.cancel();
        for h in [&mut one, &mut two] {
            let st = h.stopped().await;
            assert_eq!(
                (st.kind, st.cause, st.description.as_str()),
                (StatusKind::Stopped, "shutdown", "server is shutting down")
            );
        }
        assert!(s.wait_ended(Duration::from_secs(1)).await);
        assert!(s.registry().is_empty());
    }

    #[tokio::test]
    async fn a_takeover_tells_the_old_publisher_and_keeps_the_new_one() {
        let root = CancellationToken::new();
        let s = streams(&root);
        let a = app(&[], true);
        let mut old = start(&s, "cam1", &a).unwrap();
        keyframe(&old).await;
        let new = start(&s, "cam1", &a).unwrap();
        let st = old.stopped().await;
        assert_eq!((st.kind, st.cause), (StatusKind::TakenOver, "taken_over"));
        let path = StreamPath::from_rtmp("live", "cam1").unwrap();
        assert!(Arc::ptr_eq(&s.registry().get(&path).unwrap(), new.stream()));
        new.end("peer_closed").await;
        assert!(s.wait_ended(Duration::from_secs(1)).await);
    }
}
