//! The stream group: one stream's lifecycle as a sans-IO state machine.
//! A [`Group`] is told what happens (media, legs connecting or failing,
//! first IDRs, the publisher leaving, takeover, shutdown, time) and answers
//! with what to do (start or feed a leg, fill the source ring, tell the
//! publisher, tear down, wake me at); it never reads the clock, touches a
//! socket or spawns. The why is in docs/stream-group.md.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::{Codec, CodecConfig, MediaEvent, Track};
use crate::ts::{Muxer, TsChunk};

use super::stats::MediaStats;

/// How often the ingest bitrate is compared with the cap.
const RATE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The ingest bitrate is judged only after this much publishing: the
/// measuring window (3 s) must be full.
const RATE_WARMUP: Duration = Duration::from_secs(3);
/// An optional leg that failed is started again after 1 s, 2 s, 4 s, …
/// up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// An optional leg that stayed connected this long starts its backoff
/// over when it fails.
const RETRY_RESET_AFTER: Duration = Duration::from_secs(60);

/// A leg of the group, by its index in [`GroupParams::legs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegId(pub usize);

/// What a leg is; decides when it starts, what makes it ready and how its
/// failure is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// Streams a rendition ring to an SRT destination. Starts with the
    /// publish (it connects while the first keyframe is on its way); ready
    /// once connected.
    SrtPush,
    /// Restreams to an RTMP(S) server. Starts with the publish and is fed
    /// media from the first keyframe on (the codec configurations first);
    /// ready once publishing.
    RtmpPush,
    /// FFmpeg making the transcoded renditions. Starts at the first video
    /// keyframe (the codec configurations are known then), is fed every
    /// media event from it on; ready once each of its renditions has its
    /// first IDR.
    Transcode { renditions: usize },
    /// Writes the source rendition's ring to files. Starts with the
    /// publish; ready once its first file is open.
    Record,
    /// Holds the stream's path in the cluster directory (`[cluster]`).
    /// Starts with the publish; ready once the path is claimed (or Redis
    /// did not answer: then node-locally); its failure means another node
    /// has the path.
    Claim,
}

impl LegKind {
    fn starts_at_publish(self) -> bool {
        !matches!(self, LegKind::Transcode { .. })
    }

    /// The leg is given media events ([`Output::Feed`]).
    fn fed(self) -> bool {
        matches!(self, LegKind::RtmpPush | LegKind::Transcode { .. })
    }

    /// Renditions the leg must produce before the stream is ready.
    fn renditions(self) -> usize {
        match self {
            LegKind::Transcode { renditions } => renditions,
            _ => 0,
        }
    }

    /// The short name of the kind (metric label `kind`, the API).
    pub fn label(self) -> &'static str {
        match self {
            LegKind::SrtPush => "srt_push",
            LegKind::RtmpPush => "rtmp_push",
            LegKind::Transcode { .. } => "transcode",
            LegKind::Record => "record",
            LegKind::Claim => "cluster_claim",
        }
    }

    /// What its failure is called in a publisher's status.
    fn failure_text(self) -> &'static str {
        match self {
            LegKind::SrtPush => "SRT push failed",
            LegKind::RtmpPush => "RTMP push failed",
            LegKind::Transcode { .. } => "transcoding failed",
            LegKind::Record => "recording failed",
            LegKind::Claim => "cluster claim lost",
        }
    }

    fn is_push(self) -> bool {
        matches!(self, LegKind::SrtPush | LegKind::RtmpPush)
    }
}

/// Where a leg is in its life, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Not started yet (a transcode waits for the first keyframe).
    Waiting,
    /// Started, not connected (or not producing) yet.
    Starting,
    /// Connected, or producing every rendition.
    Up,
    /// An optional leg that failed, started again at `at`.
    Retrying { at: Instant },
    /// Ended (the stream is ending, or an optional leg ended cleanly).
    Stopped,
}

impl LegState {
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::Waiting => "waiting",
            LegState::Starting => "starting",
            LegState::Up => "up",
            LegState::Retrying { .. } => "retrying",
            LegState::Stopped => "stopped",
        }
    }
}

/// A leg's state, retries and last failure, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegStatus {
    pub state: LegState,
    /// Times an optional leg was started again after failing.
    pub retries: u32,
    /// Its last failure's detail (no secrets: legs never put them there).
    pub last_error: Option<String>,
}

/// A leg as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegInfo {
    pub kind: LegKind,
    /// A failing required leg ends the stream; setup waits for it.
    pub required: bool,
}

/// Why a leg failed: a short label (metric `reason`) and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegFailure {
    pub reason: &'static str,
    pub detail: String,
}

/// What a leg fed with media is told at its start: the codec
/// configurations to begin with and what is known of the source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Video then audio configuration, as last received.
    pub configs: Vec<MediaEvent>,
    pub fps: Option<f64>,
    pub size: Option<(u32, u32)>,
    /// The audio track is AAC (the only audio a transcode carries).
    pub aac_audio: bool,
}

/// Settings of one group, fixed at publish.
#[derive(Debug, Clone)]
pub struct GroupParams {
    /// The publish was accepted (setup time counts from `setup_start`).
    pub published: Instant,
    /// The ingest connection was accepted: the setup deadline counts from here.
    pub setup_start: Instant,
    /// `server.setup_timeout`.
    pub setup_timeout: Duration,
    /// `rtmp.max_ingest_bitrate` in kbit/s.
    pub max_ingest_kbps: u32,
    pub legs: Vec<LegInfo>,
}

/// Something that happened to the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The ingest received `bytes` at `at`; `event` is what they decoded to
    /// (none for keepalives and tags the ingest skipped). `timestamp_jump`:
    /// the ingest re-based its timeline before this event.
    Media {
        at: Instant,
        bytes: u64,
        event: Option<MediaEvent>,
        timestamp_jump: bool,
    },
    /// The publisher declared a frame rate (RTMP `onMetaData`).
    Framerate(f64),
    LegConnected(LegId),
    /// One of the leg's renditions has its first IDR in its ring.
    RenditionReady(LegId),
    /// A leg's task ended; `Ok` when it stopped because the stream did.
    LegEnded(LegId, Result<(), LegFailure>),
    /// The publisher is gone: unpublished, or its connection ended
    /// (`reason` is the ingest's label: `unpublished`, `peer_closed`, …).
    PublisherGone {
        reason: &'static str,
    },
    /// A newer publisher claimed the path.
    TakenOver,
    /// The server is shutting down (the drain ended).
    Shutdown,
    /// The instant given by the last [`Output::Timeout`] has come.
    Timeout,
}

/// How the publisher is told that its publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// The publish failed (RTMP `NetStream.Publish.Failed`).
    Failed,
    /// Another publisher has the path (RTMP `NetStream.Publish.BadName`).
    TakenOver,
    /// The server stopped the publish (RTMP `NetStream.Unpublish.Success`).
    Stopped,
}

/// Why the stream ended: the teardown cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The publisher unpublished or its connection ended (the ingest's label).
    Publisher(&'static str),
    TakenOver,
    Shutdown,
    /// The setup deadline passed; `reason` names what was missing.
    SetupTimeout {
        reason: &'static str,
    },
    /// A leg failed before the stream was ready (`reason` is the leg's).
    SetupFailed {
        reason: &'static str,
    },
    /// A required leg failed.
    LegFailed {
        kind: LegKind,
    },
    /// Another node has the path now (`reason`: `cluster_taken_over`, or
    /// `cluster_conflict` when two nodes published it while Redis was
    /// unreachable and this stream was the newer).
    ClaimLost {
        reason: &'static str,
    },
    /// The ingest went over `rtmp.max_ingest_bitrate`.
    BitrateLimit {
        kbps: u64,
        limit_kbps: u32,
    },
}

impl Cause {
    /// The label of `sluice_stream_teardowns_total{cause}` and log field `cause`.
    pub fn label(&self) -> &'static str {
        match self {
            Cause::Publisher(r) => r,
            Cause::TakenOver => "taken_over",
            Cause::Shutdown => "shutdown",
            Cause::SetupTimeout { .. } => "setup_timeout",
            Cause::SetupFailed { .. } => "setup_failed",
            Cause::LegFailed { .. } => "leg_failed",
            Cause::ClaimLost { reason } => reason,
            Cause::BitrateLimit { .. } => "bitrate_limit",
        }
    }

    /// The setup-failure reason (`sluice_stream_setup_failures_total{reason}`).
    pub fn setup_reason(&self) -> Option<&'static str> {
        match self {
            Cause::SetupTimeout { reason } | Cause::SetupFailed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Start this leg; `source` is set for legs fed with media.
    StartLeg {
        leg: LegId,
        source: Option<SourceInfo>,
    },
    /// Append to the source rendition's ring.
    Source(TsChunk),
    /// Give this media event to the leg (legs fed with media only).
    Feed { leg: LegId, event: MediaEvent },
    /// Setup is complete: every part of the group is up, `took` after the
    /// ingest connection was accepted.
    Ready { took: Duration },
    /// Tell the publisher (once, and only while it is there).
    Status {
        kind: StatusKind,
        description: String,
    },
    /// Stop every leg and end the stream (once, the last output but
    /// `Timeout`). `why` explains the cause for logs (the bare detail; the
    /// publisher's status says it in full).
    Teardown { cause: Cause, why: String },
    /// Nothing more to do until the next input or this instant (`None`:
    /// no timer), whichever is first.
    Timeout(Option<Instant>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Live,
    Ended,
}

#[derive(Debug)]
struct Leg {
    info: LegInfo,
    started: bool,
    connected: bool,
    renditions_ready: usize,
    /// A fed leg is given media from a start point on (a video keyframe,
    /// or an audio frame in a stream without video).
    feeding: bool,
    status: LegStatus,
    /// When it was last up (an optional leg's backoff starts over after a
    /// long run).
    up_since: Option<Instant>,
    /// Failures since the backoff last started over.
    failures_in_row: u32,
}

impl Leg {
    /// Setup does not wait for this leg any more.
    fn ready(&self) -> bool {
        if !self.info.required {
            return true;
        }
        self.is_up()
    }

    fn is_up(&self) -> bool {
        match self.info.kind {
            LegKind::Transcode { renditions } => self.renditions_ready >= renditions,
            _ => self.connected,
        }
    }

    /// When this leg is to be started again.
    fn restart_at(&self) -> Option<Instant> {
        match self.status.state {
            LegState::Retrying { at } => Some(at),
            _ => None,
        }
    }
}

/// The wait before an optional leg's `n`th start after failing in a row:
/// 1 s, 2 s, 4 s, … up to [`RETRY_MAX`].
pub fn retry_backoff(n: u32) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(10);
    Duration::from_secs(secs).min(RETRY_MAX)
}

/// Counters the group increments per frame (handles looked up once).
#[derive(Debug, Clone)]
pub struct GroupMetrics {
    pub bytes: metrics::Counter,
    pub frames_video: metrics::Counter,
    pub frames_audio: metrics::Counter,
    pub mux_errors: metrics::Counter,
}

impl GroupMetrics {
    /// Counters that count nowhere (tests).
    pub fn noop() -> Self {
        GroupMetrics {
            bytes: metrics::Counter::noop(),
            frames_video: metrics::Counter::noop(),
            frames_audio: metrics::Counter::noop(),
            mux_errors: metrics::Counter::noop(),
        }
    }
}

/// One stream's lifecycle. See the module docs for what it owns.
///
/// How to drive it:
/// - after [`Group::new`] and after every [`Group::handle_input`], call
///   [`Group::poll_output`] until it returns [`Output::Timeout`], executing
///   each output in order;
/// - when that instant passes with no other input, give it
///   [`Input::Timeout`];
/// - `now` is the driver's clock, read once per input; inputs may carry
///   their own instants (media arrival) for measurements;
/// - once [`Output::Teardown`] came out, [`Group::is_ended`] is true and
///   further inputs change nothing (legs still report their end: give
///   them, they are ignored).
#[derive(Debug)]
pub struct Group {
    p: GroupParams,
    phase: Phase,
    legs: Vec<Leg>,
    muxer: Muxer,
    chunks: Vec<TsChunk>,
    stats: MediaStats,
    metrics: GroupMetrics,
    video_config: Option<MediaEvent>,
    audio_config: Option<MediaEvent>,
    framerate: Option<f64>,
    /// The source rendition holds a decodable start (its first keyframe chunk).
    keyframe_seen: bool,
    /// The muxer's last refusal, to explain a setup failure.
    last_mux_error: Option<String>,
    next_rate_check: Instant,
    /// The publisher is still there to be told.
    publisher: bool,
    /// A leg's status changed since [`Group::take_legs_changed`].
    legs_changed: bool,
    out: VecDeque<Output>,
}

impl Group {
    /// A group for a publish accepted at `p.published`; its legs that start
    /// with the publish come out of [`Group::poll_output`] first.
    pub fn new(p: GroupParams, metrics: GroupMetrics) -> Group {
        let legs = p
            .legs
            .iter()
            .map(|info| Leg {
                info: info.clone(),
                started: false,
                connected: false,
                renditions_ready: 0,
                feeding: false,
                status: LegStatus {
                    state: LegState::Waiting,
                    retries: 0,
                    last_error: None,
                },
                up_since: None,
                failures_in_row: 0,
            })
            .collect();
        let mut g = Group {
            next_rate_check: p.published + RATE_WARMUP,
            p,
            phase: Phase::Setup,
            legs,
            muxer: Muxer::new(),
            chunks: Vec::with_capacity(64),
            stats: MediaStats::default(),
            metrics,
            video_config: None,
            audio_config: None,
            framerate: None,
            keyframe_seen: false,
            last_mux_error: None,
            publisher: true,
            legs_changed: true,
            out: VecDeque::new(),
        };
        for i in 0..g.legs.len() {
            if g.legs[i].info.kind.starts_at_publish() {
                g.start_leg(i);
            }
        }
        g
    }

    /// Start leg `i` (again): fed legs get what is known of the source and
    /// are fed from the next start point.
    fn start_leg(&mut self, i: usize) {
        let source = self.legs[i].info.kind.fed().then(|| self.source_info());
        let leg = &mut self.legs[i];
        leg.started = true;
        leg.connected = false;
        leg.renditions_ready = 0;
        leg.feeding = false;
        leg.status.state = LegState::Starting;
        self.legs_changed = true;
        self.out.push_back(Output::StartLeg {
            leg: LegId(i),
            source,
        });
    }

    /// Every leg's status, by [`LegId`].
    pub fn leg_statuses(&self) -> impl Iterator<Item = &LegStatus> {
        self.legs.iter().map(|l| &l.status)
    }

    /// Whether a leg's status changed since the last call.
    pub fn take_legs_changed(&mut self) -> bool {
        std::mem::take(&mut self.legs_changed)
    }

    /// The setup deadline: the ingest connection's accept plus `setup_timeout`.
    pub fn setup_deadline(&self) -> Instant {
        // `server.setup_timeout` is checked at load (at most an hour); a
        // larger one saturates here instead of overflowing `Instant`.
        let year = Duration::from_secs(365 * 86_400);
        let start = self.p.setup_start;
        start
            .checked_add(self.p.setup_timeout)
            .unwrap_or_else(|| start + year)
    }

    /// `server.setup_timeout` as this group was given it.
    pub fn setup_timeout(&self) -> Duration {
        self.p.setup_timeout
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Live
    }

    /// What the ingest has sent so far.
    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    /// Take one input. Then drain [`Group::poll_output`].
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Ended {
            return;
        }
        // A deadline that passed is judged before anything that came later.
        if self.phase == Phase::Setup && now >= self.setup_deadline() {
            self.fail_setup();
            return;
        }
        self.restart_due(now);
        match input {
            Input::Media {
                at,
                bytes,
                event,
                timestamp_jump,
            } => self.on_media(at, bytes, event, timestamp_jump),
            Input::Framerate(fps) => self.framerate = Some(fps),
            Input::LegConnected(id) => {
                if let Some(l) = self.legs.get_mut(id.0) {
                    l.connected = true;
                }
                self.leg_progress(now, id);
            }
            Input::RenditionReady(id) => {
                if let Some(l) = self.legs.get_mut(id.0) {
                    l.renditions_ready += 1;
                }
                self.leg_progress(now, id);
            }
            Input::LegEnded(id, result) => self.on_leg_ended(now, id, result),
            Input::PublisherGone { reason } => {
                self.publisher = false;
                self.end(Cause::Publisher(reason), "the publisher left".into());
            }
            Input::TakenOver => self.stop(
                StatusKind::TakenOver,
                "another publisher took over this stream".into(),
                Cause::TakenOver,
            ),
            Input::Shutdown => self.stop(
                StatusKind::Stopped,
                "server is shutting down".into(),
                Cause::Shutdown,
            ),
            Input::Timeout => {}
        }
    }

    /// The next thing to do; [`Output::Timeout`] when there is nothing more.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let restart = self.legs.iter().filter_map(Leg::restart_at).min();
        let deadline = match self.phase {
            Phase::Setup => Some(self.setup_deadline()),
            Phase::Live => None,
            Phase::Ended => return Output::Timeout(None),
        };
        Output::Timeout(match (deadline, restart) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        })
    }

    /// A leg connected or produced a rendition: its status, then readiness.
    fn leg_progress(&mut self, now: Instant, id: LegId) {
        if let Some(l) = self.legs.get_mut(id.0) {
            if l.is_up() && l.status.state == LegState::Starting {
                l.status.state = LegState::Up;
                l.up_since = Some(now);
                self.legs_changed = true;
            }
        }
        self.check_ready(now);
    }

    /// Start again the optional legs whose backoff has passed.
    fn restart_due(&mut self, now: Instant) {
        for i in 0..self.legs.len() {
            if self.legs[i].restart_at().is_some_and(|at| at <= now) {
                self.legs[i].status.retries += 1;
                self.start_leg(i);
            }
        }
    }

    fn on_media(&mut self, at: Instant, bytes: u64, event: Option<MediaEvent>, jump: bool) {
        self.metrics.bytes.increment(bytes);
        self.stats.arrived(at, bytes);
        if jump {
            self.stats.stats.timestamp_jumps += 1;
        }
        if at >= self.next_rate_check {
            self.next_rate_check = at + RATE_CHECK_INTERVAL;
            if self.over_bitrate(at) {
                return;
            }
        }
        let Some(ev) = event else { return };
        self.stats.observe(at, &ev);
        let muxed = match &ev {
            MediaEvent::Frame(f) => {
                match f.track {
                    Track::Video => self.metrics.frames_video.increment(1),
                    Track::Audio => self.metrics.frames_audio.increment(1),
                }
                self.muxer.push(f, &mut self.chunks)
            }
            MediaEvent::Config(c) => self.muxer.set_config(c),
            MediaEvent::EndOfSequence(_) => Ok(()),
        };
        if let Err(e) = muxed {
            self.metrics.mux_errors.increment(1);
            tracing::debug!(error = %e, "frame not muxed");
            self.last_mux_error = Some(e.to_string());
        }
        self.feed_legs(&ev);
        if self.chunks.is_empty() {
            return;
        }
        let first_keyframe = !self.keyframe_seen && self.chunks.iter().any(|c| c.keyframe);
        for mut chunk in self.chunks.drain(..) {
            chunk.origin = Some(at);
            self.out.push_back(Output::Source(chunk));
        }
        if first_keyframe {
            self.keyframe_seen = true;
            self.check_ready(at);
        }
    }

    /// `rtmp.max_ingest_bitrate`, 10 % above the cap: encoders overshoot
    /// briefly at keyframes.
    fn over_bitrate(&mut self, now: Instant) -> bool {
        let bps = self.stats.charged_bitrate_bps(now);
        let cap = u64::from(self.p.max_ingest_kbps) * 1000;
        if bps <= cap + cap / 10 {
            return false;
        }
        let kbps = bps / 1000;
        let limit_kbps = self.p.max_ingest_kbps;
        self.stop(
            StatusKind::Failed,
            format!(
                "ingest bitrate {kbps} kbit/s exceeds rtmp.max_ingest_bitrate ({limit_kbps} kbit/s)"
            ),
            Cause::BitrateLimit { kbps, limit_kbps },
        );
        true
    }

    /// Remember codec configurations, start the transcode at the first
    /// video keyframe, and feed the fed legs that run from their start
    /// point on (a leg started before it gets the configurations first).
    fn feed_legs(&mut self, ev: &MediaEvent) {
        match ev {
            MediaEvent::Config(CodecConfig::Video { .. }) => self.video_config = Some(ev.clone()),
            MediaEvent::Config(CodecConfig::Audio { .. }) => self.audio_config = Some(ev.clone()),
            _ => {}
        }
        let video_keyframe =
            matches!(ev, MediaEvent::Frame(f) if f.track == Track::Video && f.keyframe);
        // A stream without video starts anywhere on its audio.
        let start_point = video_keyframe
            || (self.video_config.is_none()
                && matches!(ev, MediaEvent::Frame(f) if f.track == Track::Audio));
        for i in 0..self.legs.len() {
            let kind = self.legs[i].info.kind;
            if !kind.fed() {
                continue;
            }
            if !self.legs[i].started {
                if kind.starts_at_publish()
                    || !video_keyframe
                    || self.legs[i].restart_at().is_some()
                {
                    continue;
                }
                // Started here with the configurations in its source info.
                self.start_leg(i);
                self.legs[i].feeding = true;
            }
            if !self.legs[i].feeding {
                if !start_point || self.legs[i].restart_at().is_some() {
                    continue;
                }
                self.legs[i].feeding = true;
                for config in self.video_config.iter().chain(self.audio_config.iter()) {
                    if config != ev {
                        self.out.push_back(Output::Feed {
                            leg: LegId(i),
                            event: config.clone(),
                        });
                    }
                }
            }
            self.out.push_back(Output::Feed {
                leg: LegId(i),
                event: ev.clone(),
            });
        }
    }

    fn source_info(&self) -> SourceInfo {
        let aac_audio = matches!(
            &self.audio_config,
            Some(MediaEvent::Config(CodecConfig::Audio {
                codec: Codec::Aac,
                ..
            }))
        );
        SourceInfo {
            configs: self
                .video_config
                .iter()
                .chain(self.audio_config.iter())
                .cloned()
                .collect(),
            fps: self.stats.fps().or(self.framerate),
            size: self.stats.stats.video.as_ref().map(|v| (v.width, v.height)),
            aac_audio,
        }
    }

    fn on_leg_ended(&mut self, now: Instant, id: LegId, result: Result<(), LegFailure>) {
        let Some(leg) = self.legs.get_mut(id.0) else {
            return;
        };
        if self.phase == Phase::Ended {
            return;
        }
        self.legs_changed = true;
        leg.started = false;
        leg.feeding = false;
        let failure = match result {
            Ok(()) => {
                leg.status.state = LegState::Stopped;
                return;
            }
            Err(f) => f,
        };
        leg.status.last_error = Some(failure.detail.clone());
        let kind = leg.info.kind;
        if !leg.info.required {
            if leg
                .up_since
                .is_some_and(|t| now.saturating_duration_since(t) >= RETRY_RESET_AFTER)
            {
                leg.failures_in_row = 0;
            }
            leg.failures_in_row += 1;
            leg.up_since = None;
            leg.status.state = LegState::Retrying {
                at: now + retry_backoff(leg.failures_in_row),
            };
            return;
        }
        leg.status.state = LegState::Stopped;
        match kind {
            // Another node has the path: the publisher hears it as a bad
            // name (RTMP `NetStream.Publish.BadName`) naming that node.
            LegKind::Claim if self.phase == Phase::Setup => self.stop_because(
                StatusKind::TakenOver,
                failure.detail.clone(),
                Cause::SetupFailed {
                    reason: failure.reason,
                },
                failure.detail,
            ),
            LegKind::Claim => self.stop_because(
                StatusKind::TakenOver,
                failure.detail.clone(),
                Cause::ClaimLost {
                    reason: failure.reason,
                },
                failure.detail,
            ),
            // A leg that fails before the stream is ready is a setup failure
            // with the leg's own reason.
            _ if self.phase == Phase::Setup && !kind.is_push() => self.stop_because(
                StatusKind::Failed,
                format!("stream setup failed: {}", failure.detail),
                Cause::SetupFailed {
                    reason: failure.reason,
                },
                failure.detail,
            ),
            _ => self.stop_because(
                StatusKind::Failed,
                format!("{}: {}", kind.failure_text(), failure.detail),
                Cause::LegFailed { kind },
                failure.detail,
            ),
        }
    }

    /// Setup is complete once the source has a keyframe, every required
    /// leg is connected and every rendition has its first IDR.
    fn check_ready(&mut self, now: Instant) {
        if self.phase != Phase::Setup || !self.keyframe_seen {
            return;
        }
        if !self.legs.iter().all(Leg::ready) {
            return;
        }
        self.phase = Phase::Live;
        let took = now.saturating_duration_since(self.p.setup_start);
        self.out.push_back(Output::Ready { took });
    }

    /// The deadline passed: say what was missing.
    fn fail_setup(&mut self) {
        let push = |l: &&Leg| l.info.required && l.info.kind.is_push();
        let pushes = self.legs.iter().filter(push).count();
        let connected = self
            .legs
            .iter()
            .filter(push)
            .filter(|l| l.connected)
            .count();
        let renditions: usize = self.legs.iter().map(|l| l.info.kind.renditions()).sum();
        let produced: usize = self.legs.iter().map(|l| l.renditions_ready).sum();
        let recording = self
            .legs
            .iter()
            .any(|l| l.info.required && l.info.kind == LegKind::Record && !l.connected);
        let claiming = self
            .legs
            .iter()
            .any(|l| l.info.kind == LegKind::Claim && !l.connected);
        let (reason, why) = if claiming {
            (
                "cluster_claim",
                "the cluster directory (redis) did not answer the claim".to_string(),
            )
        } else if self.keyframe_seen && recording {
            (
                "record_start",
                "the recording did not open its first file".to_string(),
            )
        } else if self.keyframe_seen && connected >= pushes {
            (
                "transcode_first_idr",
                format!(
                    "{produced} of {renditions} transcoded renditions produced their first IDR"
                ),
            )
        } else if self.keyframe_seen {
            (
                "push_connect",
                format!(
                    "{connected} of {pushes} {}push destinations connected",
                    self.push_kinds()
                ),
            )
        } else if let Some(e) = &self.last_mux_error {
            ("unsupported_media", e.clone())
        } else {
            (
                "no_keyframe",
                "no video keyframe with its sequence header (or AAC audio) arrived".to_string(),
            )
        };
        let timeout = self.p.setup_timeout;
        self.stop_because(
            StatusKind::Failed,
            format!(
                "stream not playable within {timeout:?} of connecting (server.setup_timeout): {why}"
            ),
            Cause::SetupTimeout { reason },
            why,
        );
    }

    /// "SRT " or "RTMP " when every required push leg is of that kind.
    fn push_kinds(&self) -> &'static str {
        let mut kinds = self
            .legs
            .iter()
            .filter(|l| l.info.required && l.info.kind.is_push())
            .map(|l| l.info.kind);
        match kinds.next() {
            Some(first) if kinds.all(|k| k == first) => match first {
                LegKind::SrtPush => "SRT ",
                _ => "RTMP ",
            },
            _ => "",
        }
    }

    /// Tell the publisher, then end; the description is also the why.
    fn stop(&mut self, kind: StatusKind, description: String, cause: Cause) {
        let why = description.clone();
        self.stop_because(kind, description, cause, why);
    }

    /// Tell the publisher `description`, then end; `why` is the short
    /// explanation for the log.
    fn stop_because(&mut self, kind: StatusKind, description: String, cause: Cause, why: String) {
        if self.publisher {
            self.out.push_back(Output::Status { kind, description });
        }
        self.end(cause, why);
    }

    fn end(&mut self, cause: Cause, why: String) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        for l in &mut self.legs {
            l.status.state = LegState::Stopped;
        }
        self.legs_changed = true;
        // Nothing queued for the stream matters any more, but what the
        // publisher and the legs were already given stays in order.
        self.out.retain(|o| !matches!(o, Output::StartLeg { .. }));
        self.out.push_back(Output::Teardown { cause, why });
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;
