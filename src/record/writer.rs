//! The recording's disk side: one blocking thread per recording that
//! executes the segmenter's steps with `std::fs`. Writes go out as whole
//! 188-byte packets, batched up to [`BATCH`] bytes, so a file cut short by
//! a crash or SIGKILL ends at a packet boundary; each file is fsync'd, and
//! so is its directory entry, when it closes. It tells the async side when
//! a file opens and when it fails; everything else it logs and counts.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use tracing::info;

use super::name::{segment_name, MAX_SUFFIX};
use super::{retention, OpenGuard, RecordError};
use crate::telemetry as t;
use crate::ts::PACKET;

/// Most bytes handed to one `write(2)`.
const BATCH: usize = 256 * 1024;

/// What the async side asks of the writer (the segmenter's steps).
#[derive(Debug)]
pub(super) enum Cmd {
    Open,
    Write(Bytes),
    Close { duration_90k: u64, complete: bool },
}

/// What the writer tells the async side.
#[derive(Debug)]
pub(super) enum Report {
    Opened(PathBuf),
    /// The writer stopped; the leg fails with this.
    Failed(RecordError),
}

struct Segment {
    file: File,
    path: PathBuf,
    bytes: u64,
    _open: OpenGuard,
}

pub(super) struct Writer {
    /// `record_dir`, as errors name it.
    pub dir: PathBuf,
    /// `record_dir/APP/KEY`.
    pub key_dir: PathBuf,
    pub keep: Option<Duration>,
    /// Bytes sent but not written yet; the writer takes off what it wrote.
    pub queued: Arc<AtomicUsize>,
    pub reports: UnboundedSender<Report>,
    file: Option<Segment>,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        key_dir: PathBuf,
        keep: Option<Duration>,
        queued: Arc<AtomicUsize>,
        reports: UnboundedSender<Report>,
    ) -> Writer {
        Writer {
            dir,
            key_dir,
            keep,
            queued,
            reports,
            file: None,
        }
    }

    /// Runs until the async side hangs up (then the open file is closed as
    /// it is) or a step fails (reported; the open file is cut to whole
    /// packets, removed if empty).
    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        let mut buf = Vec::with_capacity(BATCH);
        let mut next = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            let r = match cmd {
                Cmd::Write(b) => {
                    buf.clear();
                    buf.extend_from_slice(&b);
                    while buf.len() < BATCH {
                        match rx.try_recv() {
                            Ok(Cmd::Write(b)) => buf.extend_from_slice(&b),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    let r = self.write(&buf);
                    self.queued.fetch_sub(buf.len(), Ordering::Relaxed);
                    r
                }
                Cmd::Open => self.open(),
                Cmd::Close {
                    duration_90k,
                    complete,
                } => self.close(Some(duration_90k), complete),
            };
            if let Err(e) = r {
                self.abandon();
                let _ = self.reports.send(Report::Failed(e));
                return;
            }
        }
        if let Err(e) = self.close(None, true) {
            self.abandon();
            let _ = self.reports.send(Report::Failed(e));
        }
    }

    /// A new file named by the wall clock now (UTC), `-1`, `-2`, … when
    /// the name is taken.
    fn open(&mut self) -> Result<(), RecordError> {
        if self.file.is_some() {
            self.close(None, true)?;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut made_dir = false;
        let mut suffix = 0;
        while suffix <= MAX_SUFFIX {
            let path = self.key_dir.join(segment_name(now, suffix));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let _ = self.reports.send(Report::Opened(path.clone()));
                    self.file = Some(Segment {
                        file,
                        _open: OpenGuard::new(path.clone()),
                        path,
                        bytes: 0,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => suffix += 1,
                // Someone removed the directory while we recorded.
                Err(e) if e.kind() == ErrorKind::NotFound && !made_dir => {
                    made_dir = true;
                    fs::create_dir_all(&self.key_dir).map_err(|e| {
                        RecordError::io(&self.dir, "creating the directory", &self.key_dir, e)
                    })?;
                }
                Err(e) => return Err(RecordError::io(&self.dir, "creating", &path, e)),
            }
        }
        Err(RecordError::NameTaken {
            dir: self.key_dir.clone(),
            name: segment_name(now, 0),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), RecordError> {
        let Some(seg) = &mut self.file else {
            return Ok(());
        };
        seg.file
            .write_all(data)
            .map_err(|e| RecordError::io(&self.dir, "writing", &seg.path, e))?;
        seg.bytes += data.len() as u64;
        metrics::counter!(t::RECORD_BYTES_TOTAL).increment(data.len() as u64);
        Ok(())
    }

    /// fsync the file and its directory entry, then sweep old segments.
    /// `duration_90k` is `None` when the writer closes on its own.
    fn close(&mut self, duration_90k: Option<u64>, complete: bool) -> Result<(), RecordError> {
        let Some(seg) = self.file.take() else {
            return Ok(());
        };
        let fail = |what, path: &PathBuf, e| RecordError::io(&self.dir, what, path, e);
        if let Err(e) = seg.file.sync_all() {
            let err = fail("syncing", &seg.path, e);
            self.file = Some(seg);
            return Err(err);
        }
        // The file's name is only durable once its directory is synced.
        File::open(&self.key_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("syncing the directory of", &seg.path, e))?;
        if complete {
            metrics::counter!(t::RECORD_SEGMENTS_TOTAL).increment(1);
        }
        info!(
            path = %seg.path.display(),
            duration_s = duration_90k.map(|d| d as f64 / 90_000.0),
            bytes = seg.bytes,
            complete,
            "recording segment closed"
        );
        drop(seg);
        if let Some(keep) = self.keep {
            retention::sweep_dir(&self.key_dir, keep, SystemTime::now());
        }
        Ok(())
    }

    /// After a failure: the open file keeps its whole packets (a failed
    /// write may have left part of one), or goes if it has none.
    fn abandon(&mut self) {
        let Some(seg) = self.file.take() else {
            return;
        };
        let len = seg.file.metadata().map(|m| m.len()).unwrap_or(seg.bytes);
        let whole = len - len % PACKET as u64;
        if whole == 0 {
            drop(seg.file);
            let _ = fs::remove_file(&seg.path);
            return;
        }
        if whole != len {
            let _ = seg.file.set_len(whole);
        }
        let _ = seg.file.sync_all();
    }
}
