//! An SRT publisher's ingest task: the payloads its connection released
//! (in order, at their TSBPD time) are demuxed by [`TsIngest`] into the
//! protocol-free events the RTMP ingest produces too, and fed to the
//! stream's group. The listener owns the connection; this task owns the
//! group handle, and each tells the other when its side ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::Counter;
use srt_protocol::packet::SocketId;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::stream::driver::{GroupHandle, Stopped};
use crate::stream::group::Input;
use crate::telemetry::{self as t, LogLimiter};
use crate::ts::ingest::{TsIngest, TsIngestStats};

/// Released payloads queued from the listener to one publisher's task
/// (1316 bytes each: about 1.3 MB, a second of 10 Mbit/s). The listener
/// never waits: when full it drops the payload and counts it, and the TS
/// ingest treats the gap as loss.
pub const PAYLOAD_QUEUE: usize = 1024;

/// How the listener's side of a publish ended, and the connection's figures.
#[derive(Debug, Clone, Default)]
pub struct ConnectionEnd {
    /// The teardown cause the group gets (`peer_closed`, `shutdown`, ...).
    pub reason: &'static str,
    pub seconds: f64,
    pub payloads: u64,
    pub bytes_in: u64,
    /// Packets the peer retransmitted, the receiver reported lost, and
    /// dropped as too late (loss SRT could not recover).
    pub retransmitted: u64,
    pub lost: u64,
    pub dropped: u64,
    /// Payloads dropped because this task's queue was full.
    pub queue_drops: u64,
}

/// A publisher's task asks the listener to close its connection (the group
/// ended the publish: setup timeout, bitrate limit, taken over, a leg
/// failed, shutdown).
#[derive(Debug)]
pub struct CloseRequest {
    pub local_sockid: SocketId,
    pub peer: SocketAddr,
    pub stopped: Stopped,
}

/// What one publisher's task is given.
pub struct PublishTask {
    pub group: GroupHandle,
    pub peer: SocketAddr,
    pub local_sockid: SocketId,
    /// Released payloads, each with whether data was lost before it.
    pub payloads: mpsc::Receiver<(Bytes, bool)>,
    pub ended: oneshot::Receiver<ConnectionEnd>,
    pub close: mpsc::UnboundedSender<CloseRequest>,
    /// `rtmp.max_timestamp_jump`: the same timeline policy as RTMP's.
    pub max_jump: Duration,
}

/// The TS ingest's counters as per-stream series (deltas of its stats).
struct Series {
    continuity: Counter,
    dropped_frames: Counter,
    truncated: Counter,
    jumps: Counter,
    /// continuity errors, dropped frames, truncated PES, timestamp jumps.
    last: [u64; 4],
}

impl Series {
    /// Count what grew since the last call; returns the previous values.
    fn update(&mut self, s: &TsIngestStats) -> [u64; 4] {
        let now = [
            s.continuity_errors,
            s.dropped_frames,
            s.truncated_pes,
            s.timestamp_jumps,
        ];
        let counters = [
            &self.continuity,
            &self.dropped_frames,
            &self.truncated,
            &self.jumps,
        ];
        for ((c, n), b) in counters.into_iter().zip(now).zip(self.last) {
            c.increment(n.saturating_sub(b));
        }
        std::mem::replace(&mut self.last, now)
    }
}

/// Run one publisher's ingest until its connection ends (then the group is
/// told `peer_closed` or the listener's reason) or its group stops the
/// publish (then the listener is asked to close the connection). Logs
/// "srt publisher disconnected" with both sides' figures.
pub async fn run(mut task: PublishTask) {
    let stream = task.group.stream().clone();
    let mut ingest = TsIngest::new(task.max_jump);
    let mut series = Series {
        continuity: stream
            .series
            .counter(t::SRT_PUBLISH_CONTINUITY_ERRORS_TOTAL, &[]),
        dropped_frames: stream
            .series
            .counter(t::SRT_PUBLISH_DROPPED_FRAMES_TOTAL, &[]),
        truncated: stream
            .series
            .counter(t::SRT_PUBLISH_TRUNCATED_PES_TOTAL, &[]),
        jumps: stream.series.counter(t::TIMESTAMP_JUMPS_TOTAL, &[]),
        last: [0; 4],
    };
    let mut jump_log = LogLimiter::per_interval();
    let mut loss_log = LogLimiter::per_interval();
    let mut notes_log = LogLimiter::per_interval();
    // What the TS carries and what it ignores (MP2 or Opus audio, data
    // streams), logged when it changes, looked at once a second.
    let mut carried = String::new();
    let mut next_describe = Instant::now();
    let mut out = Vec::new();
    let mut stopped: Option<Stopped> = None;
    loop {
        tokio::select! {
            s = task.group.stopped(), if stopped.is_none() => {
                // The group ended the publish; the connection closes through
                // the listener, whose answer ends this loop.
                let _ = task.close.send(CloseRequest {
                    local_sockid: task.local_sockid,
                    peer: task.peer,
                    stopped: s.clone(),
                });
                stopped = Some(s);
            }
            payload = task.payloads.recv() => {
                let Some((payload, gap)) = payload else { break };
                if stopped.is_some() {
                    continue;
                }
                if gap {
                    // SRT gave up on packets (too late) or the queue was
                    // full: nothing in progress may be spliced across.
                    ingest.discontinuity();
                }
                ingest.push(&payload, &mut out);
                feed(&task.group, &payload, &mut out).await;
                for note in ingest.drain_notes() {
                    if let Some(suppressed) = notes_log.check(Instant::now()) {
                        warn!(stream = %stream.path, peer = %task.peer, suppressed,
                            note = %note, "srt publisher's TS: data dropped or ignored");
                    }
                }
                let before = series.update(ingest.stats());
                let s = ingest.stats();
                if s.timestamp_jumps > before[3] {
                    if let Some(suppressed) = jump_log.check(Instant::now()) {
                        warn!(stream = %stream.path, peer = %task.peer,
                            limit_ms = task.max_jump.as_millis() as u64, suppressed,
                            "timestamp jumped; timeline re-based");
                    }
                }
                let now = Instant::now();
                if now >= next_describe {
                    next_describe = now + std::time::Duration::from_secs(1);
                    let d = ingest.describe();
                    if d != carried {
                        info!(stream = %stream.path, peer = %task.peer, streams = %d,
                            "srt publisher's elementary streams");
                        carried = d;
                    }
                }
                if s.continuity_errors > before[0] || s.dropped_frames > before[1] {
                    if let Some(suppressed) = loss_log.check(Instant::now()) {
                        warn!(stream = %stream.path, peer = %task.peer,
                            continuity_errors = s.continuity_errors,
                            dropped_frames = s.dropped_frames, suppressed,
                            "srt publisher lost data SRT could not recover; damaged frames dropped");
                    }
                }
            }
        }
    }
    // The connection is gone (or was closed at the group's request).
    let end = task.ended.await.unwrap_or(ConnectionEnd {
        reason: "peer_closed",
        ..ConnectionEnd::default()
    });
    if stopped.is_none() {
        ingest.flush(&mut out);
        feed(&task.group, &Bytes::new(), &mut out).await;
        series.update(ingest.stats());
    }
    let s = ingest.stats();
    info!(
        stream = %stream.path,
        peer = %task.peer,
        reason = stopped.as_ref().map_or(end.reason, |s| s.cause),
        seconds = end.seconds,
        payloads = end.payloads,
        bytes_in = end.bytes_in,
        retransmitted = end.retransmitted,
        lost = end.lost,
        dropped = end.dropped,
        queue_drops = end.queue_drops,
        ts_packets = s.packets,
        frames_video = s.frames_video,
        frames_audio = s.frames_audio,
        continuity_errors = s.continuity_errors,
        dropped_frames = s.dropped_frames,
        truncated_pes = s.truncated_pes,
        timestamp_jumps = s.timestamp_jumps,
        unsupported_streams = s.unsupported_streams,
        "srt publisher disconnected"
    );
    if stopped.is_none() {
        task.group.end(end.reason).await;
    }
}

/// Give the group what one payload produced: each event as an input, the
/// payload's bytes on the first (or on an input of its own when it
/// completed no frame, so the bitrate limit sees every byte), the way the
/// RTMP ingest counts a tag. `false` from `send`: the group ended, its
/// `stopped` comes next.
async fn feed(group: &GroupHandle, payload: &Bytes, out: &mut Vec<crate::ts::ingest::Ingested>) {
    let now = Instant::now();
    let mut bytes = payload.len() as u64;
    if out.is_empty() {
        if bytes > 0 {
            let _ = group
                .send(Input::Media {
                    at: now,
                    bytes,
                    event: None,
                    timestamp_jump: false,
                })
                .await;
        }
        return;
    }
    for ing in out.drain(..) {
        let input = Input::Media {
            at: now,
            bytes: std::mem::take(&mut bytes),
            event: Some(ing.event),
            timestamp_jump: ing.timestamp_jump,
        };
        if !group.send(input).await {
            // The group ended: the rest goes nowhere (the drain drops it).
            break;
        }
    }
}
