//! The interface between a stream's driver and the legs it runs. A leg (an
//! SRT push, the transcode, later restream and recording) is implemented
//! above `stream` and started through [`LegStarter`]; it reports through
//! [`LegEvents`] and ends with `Ok` or a [`LegFailure`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::media::{MediaEvent, Track};
use crate::record::config::RecordSpec;
use crate::rtmp::config::RtmpTarget;
use crate::srt::config::PushTarget;
use crate::transcode::config::RenditionSpec;

pub use super::config::{PushDest, PushEntry};
pub use super::group::{LegFailure, LegId, LegInfo, LegKind, LegState, LegStatus, SourceInfo};
use super::Stream;

/// A leg as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum LegSpec {
    /// `push = ["srt://…"]`: connects during setup when required.
    SrtPush { target: PushTarget, required: bool },
    /// `push = ["rtmp://…"]`, `rtmps://`: a restream.
    RtmpPush { target: RtmpTarget, required: bool },
    /// `[[apps.NAME.renditions]]`: one FFmpeg making them all.
    Transcode(Vec<RenditionSpec>),
    /// `record = true`: the source rendition written to segment files.
    Record(RecordSpec),
    /// `[cluster]`: the path held in the directory; `takeover` moves it
    /// from another node.
    Claim { takeover: bool },
}

impl LegSpec {
    /// The leg of a `push` entry.
    pub fn push(entry: &PushEntry) -> LegSpec {
        let required = entry.required;
        match &entry.dest {
            PushDest::Srt(t) => LegSpec::SrtPush {
                target: t.clone(),
                required,
            },
            PushDest::Rtmp(t) => LegSpec::RtmpPush {
                target: t.clone(),
                required,
            },
        }
    }

    /// What the group core needs to know of it.
    pub fn info(&self) -> LegInfo {
        match self {
            LegSpec::SrtPush { required, .. } => LegInfo {
                kind: LegKind::SrtPush,
                required: *required,
            },
            LegSpec::RtmpPush { required, .. } => LegInfo {
                kind: LegKind::RtmpPush,
                required: *required,
            },
            LegSpec::Transcode(r) => LegInfo {
                kind: LegKind::Transcode {
                    renditions: r.len(),
                },
                required: true,
            },
            LegSpec::Record(r) => LegInfo {
                kind: LegKind::Record,
                required: r.required,
            },
            LegSpec::Claim { .. } => LegInfo {
                kind: LegKind::Claim,
                required: true,
            },
        }
    }

    /// Where it goes, as the API and logs show it (no secrets).
    pub fn target(&self) -> String {
        match self {
            LegSpec::SrtPush { target, .. } => target.to_string(),
            LegSpec::RtmpPush { target, .. } => target.to_string(),
            LegSpec::Transcode(r) => r
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            LegSpec::Record(r) => r.dir.display().to_string(),
            LegSpec::Claim { .. } => "redis".to_string(),
        }
    }
}

/// What a leg tells the group while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEvent {
    Connected,
    /// One of its renditions has its first IDR in its ring.
    RenditionReady,
}

/// A leg's way to report to its group.
#[derive(Debug, Clone)]
pub struct LegEvents {
    id: LegId,
    tx: mpsc::UnboundedSender<(LegId, LegEvent)>,
    setup_deadline: Option<Instant>,
}

impl LegEvents {
    pub(crate) fn new(id: LegId, tx: mpsc::UnboundedSender<(LegId, LegEvent)>) -> Self {
        LegEvents {
            id,
            tx,
            setup_deadline: None,
        }
    }

    /// A leg started while its stream is set up must report by `at`.
    pub(crate) fn with_setup_deadline(mut self, at: Instant) -> Self {
        self.setup_deadline = Some(at);
        self
    }

    /// Until when the group waits for this leg's `connected` (or first
    /// IDR): past it the stream fails setup with what was missing. A leg
    /// whose own step may hang (a name lookup) gives up before it, so that
    /// its failure says what hung. `None`: the stream is already live.
    pub fn setup_deadline(&self) -> Option<Instant> {
        self.setup_deadline
    }

    pub fn connected(&self) {
        let _ = self.tx.send((self.id, LegEvent::Connected));
    }

    pub fn rendition_ready(&self) {
        let _ = self.tx.send((self.id, LegEvent::RenditionReady));
    }
}

/// When the driver last offered a media-fed leg input, queued or dropped:
/// a leg that produces nothing while this keeps moving is stuck; one whose
/// publisher pauses is not.
#[derive(Debug)]
pub struct Offered {
    t0: Instant,
    last_ms: AtomicU64,
}

impl Offered {
    pub fn new(t0: Instant) -> Offered {
        Offered {
            t0,
            last_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds from this clock's start to `at`.
    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_millis() as u64
    }

    pub fn mark(&self, at: Instant) {
        self.last_ms.store(self.ms(at), Ordering::Relaxed);
    }

    /// [`Offered::ms`] of the last offer.
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// A media-fed leg's input: the source as it was at the leg's start, then
/// every media event from the first video keyframe on.
#[derive(Debug)]
pub struct MediaInput {
    pub source: SourceInfo,
    pub events: mpsc::Receiver<MediaEvent>,
    pub offered: Arc<Offered>,
}

/// Most media events queued towards a leg; past it the leg skips to the
/// next video keyframe.
const FEED_QUEUE: usize = 1024;

/// The driver's end of a [`MediaInput`]. Never blocks: when the leg falls
/// behind by a whole queue, frames are dropped up to the next video
/// keyframe (that leg skips; the source and its players don't).
#[derive(Debug)]
pub(crate) struct MediaFeed {
    tx: mpsc::Sender<MediaEvent>,
    skipping: bool,
    offered: Arc<Offered>,
    dropped: metrics::Counter,
}

impl MediaFeed {
    pub(crate) fn new(
        now: Instant,
        source: SourceInfo,
        dropped: metrics::Counter,
    ) -> (MediaFeed, MediaInput) {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let offered = Arc::new(Offered::new(now));
        let feed = MediaFeed {
            tx,
            skipping: false,
            offered: offered.clone(),
            dropped,
        };
        let input = MediaInput {
            source,
            events: rx,
            offered,
        };
        (feed, input)
    }

    pub(crate) fn offer(&mut self, now: Instant, ev: MediaEvent) {
        self.offered.mark(now);
        if self.skipping {
            // A video keyframe or a codec configuration is a place the leg
            // can resume from; anything else waits for one.
            match &ev {
                MediaEvent::Frame(f) if f.track == Track::Video && f.keyframe => {}
                MediaEvent::Config(_) => {}
                _ => {
                    self.dropped.increment(1);
                    return;
                }
            }
            self.skipping = false;
        }
        if self.tx.try_send(ev).is_err() {
            self.skipping = true;
            self.dropped.increment(1);
        }
    }
}

/// Everything a leg gets when it starts.
#[derive(Debug)]
pub struct LegContext {
    pub id: LegId,
    pub stream: Arc<Stream>,
    /// Cancelled when the stream ends (any cause): flush and stop.
    pub cancel: CancellationToken,
    pub events: LegEvents,
    /// Set for legs fed with media.
    pub media: Option<MediaInput>,
    /// The trace context the leg's own steps are children of (the setup
    /// span's while the stream sets up, else the publish root's). A
    /// context, not the span: a leg lives as long as the stream, and a
    /// span handle it held would keep the setup span from ending.
    pub trace: opentelemetry::Context,
}

/// A running leg: resolves when it has stopped.
pub type LegFuture = Pin<Box<dyn Future<Output = Result<(), LegFailure>> + Send>>;

/// Starts legs; implemented by the server's wiring over the modules that
/// own each kind.
pub trait LegStarter: Send + Sync + 'static {
    fn start(&self, spec: &LegSpec, ctx: LegContext) -> LegFuture;
}
