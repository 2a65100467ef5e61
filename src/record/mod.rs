//! Recording: a stream's source rendition written to MPEG-TS segments
//! `record_dir/APP/KEY/YYYYMMDD-HHMMSS.ts` (UTC), each starting at a
//! keyframe with PAT/PMT, by a leg that reads the rendition's ring like a
//! player and never waits on the disk: a blocking writer thread takes the
//! chunks through a bounded queue, and a slow disk loses whole segments,
//! counted. Also here: retention (`record_keep`) and the listing behind
//! `GET /api/v1/recordings`.

pub mod config;
pub mod list;
pub mod name;
pub mod retention;
pub mod segmenter;
mod writer;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn, Instrument};

pub use list::{roots, Recording, Root, RootsFn, Scope};

use self::config::RecordSpec;
use self::segmenter::{Segmenter, Step};
use self::writer::{Cmd, Report, Writer};
use crate::stream::leg::{LegContext, LegFailure};
use crate::stream::ring::Read;
use crate::telemetry::{self as t, LogLimiter};

/// Most bytes waiting for the disk per recording: about 20 s of a
/// 3 Mbit/s stream. Past it the segment being written is dropped.
pub const QUEUE_BYTES: usize = 8 << 20;
/// Chunks taken from the ring per read.
const READ_BATCH: usize = 256;
/// The recording has no latency to keep: after a read it lets chunks
/// gather this long, so it and its writer wake ~50 times a second instead
/// of once per chunk. Well under the ring's slack (a GOP, or 100 ms of an
/// audio-only stream), so the pause never costs data.
const READ_PAUSE: Duration = Duration::from_millis(20);
/// How long a stopping leg waits for its writer to close (fsync) the last
/// segment; the group aborts legs after 5 s.
const WRITER_STOP: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording to {}: no space left on device ({what} {}); free space there or point record_dir at a larger disk", dir.display(), path.display())]
    DiskFull {
        dir: PathBuf,
        what: &'static str,
        path: PathBuf,
    },
    #[error("recording to {}: permission denied {what} {}; make it writable by the user sluice runs as, or set record_dir", dir.display(), path.display())]
    Permission {
        dir: PathBuf,
        what: &'static str,
        path: PathBuf,
    },
    #[error("recording to {}: {what} {} failed: {source}", dir.display(), path.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("recording to {}: every name for a segment starting at {name} is taken", dir.display())]
    NameTaken { dir: PathBuf, name: String },
    #[error("the recording fell behind the stream again and again (its task did not get to run); it starts over")]
    TooSlow,
    #[error("the recording's writer thread stopped unexpectedly")]
    WriterGone,
    #[error(
        "cannot start the recording's writer thread: {0} (the process may be at its thread limit)"
    )]
    NoThread(io::Error),
}

impl RecordError {
    /// An I/O error while `what` (e.g. "writing") `path` under `dir`:
    /// a full disk or quota and a permission problem get their own words.
    pub fn io(dir: &Path, what: &'static str, path: &Path, e: io::Error) -> RecordError {
        let (dir, path) = (dir.to_path_buf(), path.to_path_buf());
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => RecordError::DiskFull { dir, what, path },
            _ if e.kind() == io::ErrorKind::PermissionDenied => {
                RecordError::Permission { dir, what, path }
            }
            _ => RecordError::Io {
                dir,
                what,
                path,
                source: e,
            },
        }
    }

    /// Short label for logs, metrics and the API (`last_error`'s reason).
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::DiskFull { .. } => "disk_full",
            RecordError::TooSlow => "record_too_slow",
            _ => "record_io",
        }
    }
}

/// Segments being written, process-wide: retention never deletes them and
/// the listing marks them `open`.
static OPEN: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// Whether `path` is a segment being written now.
pub fn is_open(path: &Path) -> bool {
    OPEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(path)
}

/// Marks a path open while it lives.
#[derive(Debug)]
struct OpenGuard(PathBuf);

impl OpenGuard {
    fn new(path: PathBuf) -> OpenGuard {
        OPEN.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.clone());
        OpenGuard(path)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        OPEN.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// The recording leg of a stream: ready once its first file is open; ends
/// with the stream (`Ok`, the last segment closed) or a failure (a full
/// disk: `disk_full`; any other I/O error: `record_io`).
pub async fn run_leg(spec: RecordSpec, ctx: LegContext) -> Result<(), LegFailure> {
    run(spec, ctx).await.map_err(|e| LegFailure {
        reason: e.reason(),
        detail: e.to_string(),
    })
}

async fn run(spec: RecordSpec, ctx: LegContext) -> Result<(), RecordError> {
    let dir = std::path::absolute(&spec.dir).unwrap_or(spec.dir.clone());
    let path = &ctx.stream.path;
    let key_dir = dir.join(&path.app).join(&path.key);
    // A directory that cannot be made fails the leg before any media.
    let (d, kd) = (dir.clone(), key_dir.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&kd)
            .map_err(|e| RecordError::io(&d, "creating the directory", &kd, e))
    })
    .await
    .map_err(|_| RecordError::WriterGone)??;

    let Some(source) = ctx.stream.renditions.first() else {
        return Ok(());
    };
    let mut cursor = source.ring.subscribe();
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (report_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer::new(dir, key_dir, spec.keep, queued.clone(), report_tx);
    let span = tracing::Span::current();
    // A thread of its own for the stream's whole life, not one of tokio's
    // blocking pool (512 threads, shared with name lookups and the API):
    // hundreds of recordings must not starve those.
    let (done_tx, mut writer_done) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("sluice-record".into())
        .spawn(move || {
            span.in_scope(|| writer.run(rx));
            let _ = done_tx.send(());
        })
        .map_err(RecordError::NoThread)?;

    let mut feed = Feed {
        segmenter: Segmenter::new(spec.segment, QUEUE_BYTES),
        tx,
        queued,
        steps: Vec::new(),
        drops: LogLimiter::per_interval(),
        stream: path.to_string(),
    };
    let mut chunks = Vec::with_capacity(READ_BATCH);
    let mut connected = false;
    let mut result = loop {
        chunks.clear();
        tokio::select! {
            biased;
            rep = reports.recv() => match rep {
                Some(Report::Opened(file)) => {
                    if !connected {
                        connected = true;
                        info!(stream = %path, file = %file.display(), segment = ?spec.segment, "recording started");
                        ctx.events.connected();
                    }
                }
                Some(Report::Failed(e)) => break Err(e),
                None => break Err(RecordError::WriterGone),
            },
            r = cursor.read(READ_BATCH, &mut chunks) => match r {
                Read::Items => {
                    feed.chunks(&chunks);
                    if chunks.len() < READ_BATCH {
                        tokio::select! {
                            _ = tokio::time::sleep(READ_PAUSE) => {}
                            _ = ctx.cancel.cancelled() => {}
                        }
                    }
                }
                Read::Skipped { .. } => feed.interrupt(),
                Read::TooSlow => break Err(RecordError::TooSlow),
                Read::Closed => break Ok(()),
            },
            _ = ctx.cancel.cancelled() => {
                // What the ring still holds is the stream's end: keep it.
                while let Some(Read::Items) = cursor.try_read(READ_BATCH, &mut chunks) {}
                feed.chunks(&chunks);
                break Ok(());
            }
        }
    };
    feed.finish();
    // The writer closes (fsyncs) the last segment; not forever.
    let waited = tokio::time::timeout(WRITER_STOP, &mut writer_done)
        .in_current_span()
        .await;
    if waited.is_err() {
        warn!(stream = %path, "the recording's last segment is still being synced to disk");
    }
    while let Ok(rep) = reports.try_recv() {
        if let (Report::Failed(e), Ok(())) = (rep, &result) {
            result = Err(e);
        }
    }
    result
}

/// The async side of the queue: the segmenter's steps to the writer, with
/// the bytes in flight counted.
struct Feed {
    segmenter: Segmenter,
    tx: std::sync::mpsc::Sender<Cmd>,
    queued: Arc<AtomicUsize>,
    steps: Vec<Step>,
    drops: LogLimiter,
    stream: String,
}

impl Feed {
    fn chunks(&mut self, chunks: &[crate::ts::TsChunk]) {
        for c in chunks {
            let queued = self.queued.load(Ordering::Relaxed);
            self.segmenter.push(c, queued, &mut self.steps);
            self.send();
        }
    }

    fn interrupt(&mut self) {
        self.segmenter.interrupt(&mut self.steps);
        self.send();
    }

    fn finish(mut self) {
        self.segmenter.finish(&mut self.steps);
        self.send();
    }

    fn send(&mut self) {
        for step in self.steps.drain(..) {
            let cmd = match step {
                Step::Open { .. } => Cmd::Open,
                Step::Write(b) => {
                    self.queued.fetch_add(b.len(), Ordering::Relaxed);
                    Cmd::Write(b)
                }
                Step::Close {
                    duration_90k,
                    complete,
                } => Cmd::Close {
                    duration_90k,
                    complete,
                },
                Step::Dropped => {
                    metrics::counter!(t::RECORD_SEGMENTS_DROPPED_TOTAL).increment(1);
                    if let Some(suppressed) = self.drops.check(Instant::now()) {
                        warn!(
                            stream = %self.stream,
                            queued_bytes = self.queued.load(Ordering::Relaxed),
                            suppressed,
                            "recording dropped a segment: the disk does not keep up"
                        );
                    }
                    continue;
                }
            };
            // The writer is gone only after a failure, which the leg reads
            // from its reports.
            let _ = self.tx.send(cmd);
        }
    }
}
