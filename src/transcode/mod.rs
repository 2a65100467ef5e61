//! FFmpeg renditions: argument builder, encoder choice, child supervision.
//!
//! One FFmpeg per stream, a leg of its stream group, reads the group's
//! media as FLV on stdin and writes every rendition as MPEG-TS to its own
//! pipe, repacked into that rendition's ring; FFmpeg failing, exiting or
//! going silent fails the leg, and the stream ending stops FFmpeg (SIGTERM,
//! SIGKILL after 2 s, always reaped).

pub mod args;
pub mod child;
mod choose;
pub mod config;
pub mod feed;
pub mod repack;

pub use choose::choose_encoders;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::gpu::{Probe, ProbeResult};
use crate::media::MediaEvent;
use crate::stream::leg::{LegContext, LegEvents, LegFailure, Offered};
use crate::stream::{RenditionInfo, Stream};
use crate::telemetry as t;
use args::{Encoder, HwDecode, Job};
use config::{EncoderMode, RenditionSpec, TranscodeConfig, VideoCodec};
use feed::{FeedItem, Replay};

/// Grace period between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// stderr lines kept to explain a failure.
const STDERR_TAIL: usize = 8;

/// The encoder picked for one codec, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Choice {
    /// `nvenc`, `x264` or `x265`.
    pub encoder: &'static str,
    pub reason: String,
    #[serde(skip)]
    pub kind: Encoder,
}

/// The encoders every stream uses (decided at start).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Encoders {
    pub mode: &'static str,
    pub h264: Choice,
    pub hevc: Choice,
    /// `none`, `cuda` (NVDEC) or `cuda_scale` (NVDEC + scale_cuda).
    pub decode: &'static str,
    #[serde(skip)]
    pub hwdec: HwDecode,
    /// The GPU trials ran (a software choice is then a fallback).
    #[serde(skip)]
    pub probed: bool,
    /// When this choice was made (Unix seconds): at start, or by the last
    /// re-probe.
    pub decided_at: u64,
}

impl Encoders {
    pub fn for_codec(&self, c: VideoCodec) -> &Choice {
        match c {
            VideoCodec::H264 => &self.h264,
            VideoCodec::Hevc => &self.hevc,
        }
    }

    /// Software everywhere (no GPU, or none wanted), with the reason.
    pub fn software(mode: EncoderMode, reason: &str) -> Encoders {
        let sw = |c: VideoCodec| Choice {
            encoder: Encoder::Software.label(c),
            reason: reason.to_string(),
            kind: Encoder::Software,
        };
        Encoders {
            mode: mode.name(),
            h264: sw(VideoCodec::H264),
            hevc: sw(VideoCodec::Hevc),
            decode: "none",
            hwdec: HwDecode::None,
            probed: false,
            decided_at: unix_now(),
        }
    }

    /// The same encoders and decode path (reasons and times aside).
    pub fn same_choice(&self, other: &Encoders) -> bool {
        self.h264.encoder == other.h264.encoder
            && self.hevc.encoder == other.hevc.encoder
            && self.decode == other.decode
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decide the encoders from the probe. `nvenc` demanded and unavailable for
/// a codec some rendition uses is an error (the server must not start).
pub fn resolve(
    mode: EncoderMode,
    gpu_decode: bool,
    probe: &Probe,
    codecs_used: &[VideoCodec],
) -> Result<Encoders, String> {
    if mode == EncoderMode::Software {
        return Ok(Encoders::software(mode, "transcode.encoder = \"x264\""));
    }
    let pick = |codec: VideoCodec, r: &ProbeResult| -> Result<Choice, String> {
        let nvenc = format!("{}_nvenc", codec.name());
        match r {
            ProbeResult::Ok => Ok(Choice {
                encoder: Encoder::Nvenc.label(codec),
                reason: format!("{nvenc} trial encode succeeded"),
                kind: Encoder::Nvenc,
            }),
            other => {
                let why = other.reason().unwrap_or("trial encode failed").to_string();
                if mode == EncoderMode::Nvenc && codecs_used.contains(&codec) {
                    return Err(format!(
                        "transcode.encoder = \"nvenc\" but {nvenc} does not work here: {why}"
                    ));
                }
                Ok(Choice {
                    encoder: Encoder::Software.label(codec),
                    reason: format!("{nvenc} unavailable: {why}"),
                    kind: Encoder::Software,
                })
            }
        }
    };
    let h264 = pick(VideoCodec::H264, &probe.h264_nvenc)?;
    let hevc = pick(VideoCodec::Hevc, &probe.hevc_nvenc)?;
    let hwdec = match (
        gpu_decode,
        probe.cuda_decode.is_ok(),
        probe.cuda_scale.is_ok(),
    ) {
        (true, true, true) => HwDecode::CudaScale,
        (true, true, false) => HwDecode::Cuda,
        _ => HwDecode::None,
    };
    Ok(Encoders {
        mode: mode.name(),
        h264,
        hevc,
        decode: match hwdec {
            HwDecode::None => "none",
            HwDecode::Cuda => "cuda",
            HwDecode::CudaScale => "cuda_scale",
        },
        hwdec,
        probed: true,
        decided_at: unix_now(),
    })
}

/// Publish the choice as metrics and log it once.
pub fn report(enc: &Encoders) {
    for (codec, c) in [("h264", &enc.h264), ("hevc", &enc.hevc)] {
        gauge!(t::TRANSCODE_ENCODER, "codec" => codec, "encoder" => c.encoder).set(1.0);
        if c.kind == Encoder::Software && enc.probed {
            counter!(t::TRANSCODE_ENCODER_FALLBACKS_TOTAL, "codec" => codec, "cause" => "startup")
                .increment(1);
            warn!(codec, encoder = c.encoder, reason = %c.reason, "NVENC not used; encoding renditions on the CPU");
        } else {
            info!(codec, encoder = c.encoder, reason = %c.reason, "encoder chosen");
        }
    }
    info!(decode = enc.decode, "rendition decode path");
}

/// NVENC encodes this process's FFmpeg children are running now.
static NVENC_SESSIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// NVENC sessions held by our own FFmpeg processes.
pub fn nvenc_sessions_in_use() -> usize {
    NVENC_SESSIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The encoder choice in force. Every new stream takes the current one;
/// a re-probe (`POST /api/v1/encoders/probe`) replaces it for streams that
/// start afterwards, while running streams keep theirs.
pub struct EncoderState {
    current: std::sync::RwLock<Arc<Encoders>>,
    /// One re-probe at a time: the trials start FFmpeg processes.
    probing: tokio::sync::Mutex<()>,
}

impl EncoderState {
    pub fn new(enc: Encoders) -> EncoderState {
        EncoderState {
            current: std::sync::RwLock::new(Arc::new(enc)),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Arc<Encoders> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Held while a re-probe runs; `None` when one already is.
    pub fn try_probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.probing.try_lock().ok()
    }

    /// Install the result of a re-probe; returns whether the encoders or the
    /// decode path changed. Gauges, the fallback counter and the log follow.
    ///
    /// While our own FFmpeg processes hold NVENC sessions (`nvenc_in_use`),
    /// a failed trial may only mean the GPU's session limit is reached, so a
    /// codec on NVENC stays on NVENC; a stream that then cannot open a
    /// session falls back to x264 on its own (`cause="session_refused"`).
    pub fn replace(&self, mut new: Encoders, nvenc_in_use: usize) -> bool {
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = cur.clone();
        if nvenc_in_use > 0 {
            for (was, now) in [(&old.h264, &mut new.h264), (&old.hevc, &mut new.hevc)] {
                if was.kind == Encoder::Nvenc && now.kind == Encoder::Software {
                    *now = Choice {
                        reason: format!(
                            "kept: the trial failed while {nvenc_in_use} NVENC encodes of ours were running ({})",
                            now.reason
                        ),
                        ..was.clone()
                    };
                }
            }
        }
        let changed = !old.same_choice(&new);
        for (codec, was, now) in [
            ("h264", &old.h264, &new.h264),
            ("hevc", &old.hevc, &new.hevc),
        ] {
            if was.encoder == now.encoder {
                continue;
            }
            gauge!(t::TRANSCODE_ENCODER, "codec" => codec, "encoder" => was.encoder).set(0.0);
            gauge!(t::TRANSCODE_ENCODER, "codec" => codec, "encoder" => now.encoder).set(1.0);
            if was.kind == Encoder::Nvenc && now.kind == Encoder::Software {
                counter!(t::TRANSCODE_ENCODER_FALLBACKS_TOTAL, "codec" => codec, "cause" => "reprobe")
                    .increment(1);
                warn!(codec, from = was.encoder, to = now.encoder, reason = %now.reason, "re-probe: NVENC no longer usable; new streams encode on the CPU");
            } else {
                info!(codec, from = was.encoder, to = now.encoder, reason = %now.reason, "re-probe: encoder changed for new streams");
            }
        }
        if old.decode != new.decode {
            info!(
                from = old.decode,
                to = new.decode,
                "re-probe: rendition decode path changed for new streams"
            );
        }
        if !changed {
            info!(
                h264 = new.h264.encoder,
                hevc = new.hevc.encoder,
                decode = new.decode,
                "re-probe: encoders unchanged"
            );
        }
        *cur = Arc::new(new);
        changed
    }
}

/// What one stream's transcode is configured with.
pub struct Params {
    pub config: TranscodeConfig,
    pub encoders: Arc<Encoders>,
    pub renditions: Vec<RenditionSpec>,
}

/// A run's inputs: the configuration and what is known of the source.
struct Job0 {
    p: Params,
    source_fps: Option<f64>,
    source_size: Option<(u32, u32)>,
    has_audio: bool,
    /// When the publish was accepted: first-IDR times count from here.
    published: Instant,
    /// Each rendition's `first_idr` trace span, until its first IDR.
    first_idr: FirstIdrSpans,
}

/// Per rendition, its `first_idr` span while it has none yet.
type FirstIdrSpans = Arc<Vec<Mutex<Option<tracing::Span>>>>;

/// The transcode leg of a stream: runs FFmpeg (restarted once on x264 if
/// the GPU refuses an NVENC session) until the stream ends (`Ok`) or
/// FFmpeg fails (`Err`). FFmpeg first reads the FLV header and the codec
/// configurations the group started the leg with.
pub async fn run_leg(params: Params, ctx: LegContext) -> Result<(), LegFailure> {
    let Some(media) = ctx.media else {
        return Err(LegFailure {
            reason: "transcode_no_input",
            detail: "the transcode leg was started without media".into(),
        });
    };
    let src = &media.source;
    let mut initial = vec![feed::header(src.aac_audio)];
    for c in &src.configs {
        match feed::tag(c) {
            Ok(Some(item)) => initial.push(item),
            Ok(None) => {}
            Err(e) => {
                return Err(LegFailure {
                    reason: "transcode_unsupported_source",
                    detail: e.to_string(),
                })
            }
        }
    }
    let first_idr: FirstIdrSpans = Arc::new(
        params
            .renditions
            .iter()
            .map(|r| {
                let span = tracing::info_span!(
                    target: crate::telemetry::trace::TARGET,
                    parent: None,
                    "first_idr",
                    rendition = %r.name,
                    first_idr_ms = tracing::field::Empty,
                );
                let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                    &span,
                    ctx.trace.clone(),
                );
                Mutex::new(Some(span))
            })
            .collect(),
    );
    let job = Job0 {
        p: params,
        source_fps: src.fps,
        source_size: src.size,
        has_audio: src.aac_audio,
        published: ctx.stream.started,
        first_idr: first_idr.clone(),
    };
    let input = Input {
        initial,
        events: media.events,
        offered: media.offered,
    };
    let result = supervise(job, ctx.stream, input, ctx.events, ctx.cancel).await;
    for span in first_idr.iter() {
        if let Some(span) = span.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let why = match &result {
                Ok(()) => "the stream ended before this rendition's first IDR".to_string(),
                Err(f) => format!("{}: {}", f.reason, f.detail),
            };
            crate::telemetry::trace::fail(&span, why);
        }
    }
    result
}

/// FFmpeg's input: what it reads first, then the group's media.
struct Input {
    initial: Vec<FeedItem>,
    events: mpsc::Receiver<MediaEvent>,
    offered: Arc<Offered>,
}

/// Shared between the supervisor's sub-tasks.
struct Shared {
    stderr_tail: Mutex<VecDeque<String>>,
    nvenc_refused: std::sync::atomic::AtomicBool,
    /// Milliseconds since `clock.t0` of the last output per rendition
    /// (FFmpeg's start until the first).
    last_output: Vec<std::sync::atomic::AtomicU64>,
    clock: Arc<Offered>,
}

impl Shared {
    fn tail(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            return "no error output".into();
        }
        t.iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

async fn supervise(
    job: Job0,
    stream: Arc<Stream>,
    input: Input,
    legs: LegEvents,
    cancel: CancellationToken,
) -> Result<(), LegFailure> {
    let p = &job.p;
    let mut encoders: Vec<Encoder> = p
        .renditions
        .iter()
        .map(|r| p.encoders.for_codec(r.codec).kind)
        .collect();
    // The stdin writer outlives FFmpeg restarts; it gets each new stdin.
    let (stdin_tx, stdin_rx) = mpsc::channel(1);
    let writer_cancel = cancel.child_token();
    let clock = input.offered.clone();
    let dropped = stream.series.counter(t::TRANSCODE_INPUT_DROPPED_TOTAL, &[]);
    let writer = tokio::spawn(write_input(input, stdin_rx, dropped, writer_cancel.clone()));
    let run = Run {
        job: &job,
        stream: &stream,
        stdin: &stdin_tx,
        legs: &legs,
        cancel: &cancel,
        clock: &clock,
    };
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        match run.once(&encoders).await {
            RunEnd::NvencRefused(detail)
                if attempt == 1 && p.config.encoder == EncoderMode::Auto =>
            {
                warn!(stream = %stream.path, detail, "GPU refused an NVENC session; restarting this stream's FFmpeg with x264");
                for (i, r) in p.renditions.iter().enumerate() {
                    if encoders[i] == Encoder::Nvenc {
                        counter!(t::TRANSCODE_ENCODER_FALLBACKS_TOTAL, "codec" => r.codec.name(), "cause" => "session_refused").increment(1);
                    }
                }
                counter!(t::TRANSCODE_FFMPEG_RESTARTS_TOTAL, "reason" => "nvenc_session_refused")
                    .increment(1);
                encoders = vec![Encoder::Software; encoders.len()];
                continue;
            }
            RunEnd::NvencRefused(detail) => {
                break Err(LegFailure {
                    reason: "nvenc_session_refused",
                    detail: format!("the GPU refused an NVENC session: {detail}"),
                })
            }
            RunEnd::Failed(reason, detail) => break Err(LegFailure { reason, detail }),
            RunEnd::Cancelled => break Ok(()),
        }
    };
    if let Err(f) = &outcome {
        counter!(t::TRANSCODE_FAILURES_TOTAL, "reason" => f.reason).increment(1);
    }
    writer_cancel.cancel();
    let _ = writer.await;
    outcome
}

enum RunEnd {
    Cancelled,
    NvencRefused(String),
    Failed(&'static str, String),
}

/// What one FFmpeg run needs; `once` may be called again on a restart.
struct Run<'a> {
    job: &'a Job0,
    stream: &'a Arc<Stream>,
    stdin: &'a mpsc::Sender<tokio::process::ChildStdin>,
    legs: &'a LegEvents,
    cancel: &'a CancellationToken,
    clock: &'a Arc<Offered>,
}

/// A started FFmpeg and what watches it; its gauges count it until it is
/// dropped, however the run ends (an aborted leg included).
struct Running {
    child: tokio::process::Child,
    pid: i32,
    shared: Arc<Shared>,
    io: JoinSet<()>,
    first_idr_seen: Arc<std::sync::atomic::AtomicUsize>,
    nvenc_sessions: usize,
    running: metrics::Gauge,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.decrement(1.0);
        NVENC_SESSIONS.fetch_sub(self.nvenc_sessions, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Run<'_> {
    /// Start FFmpeg with `encoders`, watch it until the stream ends or it
    /// fails, then stop and reap it.
    async fn once(&self, encoders: &[Encoder]) -> RunEnd {
        let mut r = match self.spawn(encoders).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let end = self.watch(&mut r).await;
        // Already collected when the wait arm ended the watch; `terminate`
        // then only sweeps the process group.
        let already_exited = matches!(r.child.try_wait(), Ok(Some(_)));
        let st = child::terminate(&mut r.child, r.pid, KILL_GRACE).await;
        if !already_exited {
            if let Some(st) = st {
                let (code, how) = child::describe_exit(&st);
                counter!(t::TRANSCODE_FFMPEG_EXITS_TOTAL, "code" => code).increment(1);
                debug!(stream = %self.stream.path, pid = r.pid, how, "ffmpeg stopped");
            }
        }
        r.io.abort_all();
        while r.io.join_next().await.is_some() {}
        end
    }

    async fn spawn(&self, encoders: &[Encoder]) -> Result<Running, RunEnd> {
        let (j, stream) = (self.job, self.stream);
        let p = &j.p;
        let job = Job {
            renditions: &p.renditions,
            encoders,
            hwdec: p.encoders.hwdec,
            source_fps: j.source_fps,
            has_audio: j.has_audio,
            preset: &p.config.x264_preset,
            first_fd: child::FIRST_OUTPUT_FD,
        };
        let argv = args::ffmpeg_args(&job);
        let ffmpeg = &p.config.ffmpeg;
        let spawned = match child::spawn(ffmpeg, &argv, p.renditions.len()) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RunEnd::Failed(
                    "ffmpeg_not_found",
                    format!(
                        "ffmpeg not found (transcode.ffmpeg = {:?}): install FFmpeg or set transcode.ffmpeg",
                        ffmpeg.display().to_string()
                    ),
                ))
            }
            Err(e) => {
                return Err(RunEnd::Failed(
                    "ffmpeg_spawn",
                    format!("cannot start ffmpeg ({}): {e}", ffmpeg.display()),
                ))
            }
        };
        let child::Spawned {
            child,
            pid,
            stdin,
            stdout,
            stderr,
            outputs,
        } = spawned;
        let labels: Vec<&str> = p
            .renditions
            .iter()
            .zip(encoders)
            .map(|(r, e)| e.label(r.codec))
            .collect();
        counter!(t::TRANSCODE_FFMPEG_STARTS_TOTAL).increment(1);
        let running = gauge!(t::TRANSCODE_FFMPEG_RUNNING);
        let nvenc_sessions = encoders.iter().filter(|e| **e == Encoder::Nvenc).count();
        info!(stream = %stream.path, pid, encoders = ?labels, renditions = p.renditions.len(), "ffmpeg started");
        debug!(args = ?argv, "ffmpeg command line");
        for (i, r) in p.renditions.iter().enumerate() {
            if let Some(rend) = stream.rendition(&r.name) {
                let size = args::output_size(r, j.source_size);
                rend.set_info(RenditionInfo {
                    encoder: labels[i].to_string(),
                    codec: r.codec.name().to_string(),
                    width: size.map(|s| s.0),
                    height: size.map(|s| s.1),
                    fps: None,
                    bitrate_bps: 0,
                });
            }
        }
        let now_ms = self.clock.ms(Instant::now());
        let shared = Arc::new(Shared {
            stderr_tail: Mutex::new(VecDeque::new()),
            nvenc_refused: Default::default(),
            last_output: p.renditions.iter().map(|_| now_ms.into()).collect(),
            clock: self.clock.clone(),
        });
        let _ = self.stdin.send(stdin).await;
        let mut io = JoinSet::new();
        let label = stream.path.to_string();
        io.spawn(read_stderr(stderr, shared.clone(), label.clone()));
        io.spawn(read_progress(stdout, stream.clone()));
        let first_idr_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (i, out) in outputs.into_iter().enumerate() {
            io.spawn(read_output(
                out,
                Output {
                    index: i,
                    name: p.renditions[i].name.clone(),
                    stream: stream.clone(),
                    shared: shared.clone(),
                    legs: self.legs.clone(),
                    published: j.published,
                    first_idr_seen: first_idr_seen.clone(),
                    first_idr: j.first_idr.clone(),
                },
            ));
        }
        running.increment(1.0);
        NVENC_SESSIONS.fetch_add(nvenc_sessions, std::sync::atomic::Ordering::Relaxed);
        Ok(Running {
            child,
            pid,
            shared,
            io,
            first_idr_seen,
            nvenc_sessions,
            running,
        })
    }

    /// Until the stream ends, FFmpeg exits or it stalls.
    async fn watch(&self, r: &mut Running) -> RunEnd {
        let stall = self.job.p.config.stall_timeout;
        let (stream, pid) = (&self.stream.path, r.pid);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return RunEnd::Cancelled,
                st = r.child.wait() => {
                    // Let stderr drain so the reason is complete.
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while r.io.join_next().await.is_some() {}
                    }).await;
                    let (code, how) = match &st {
                        Ok(st) => child::describe_exit(st),
                        Err(e) => ("unknown".to_string(), format!("could not be waited for: {e}")),
                    };
                    counter!(t::TRANSCODE_FFMPEG_EXITS_TOTAL, "code" => code).increment(1);
                    let tail = r.shared.tail();
                    if self.cancel.is_cancelled() {
                        return RunEnd::Cancelled;
                    }
                    let any_output = r.first_idr_seen.load(std::sync::atomic::Ordering::SeqCst) > 0;
                    if !any_output && r.shared.nvenc_refused.load(std::sync::atomic::Ordering::SeqCst) {
                        return RunEnd::NvencRefused(tail);
                    }
                    error!(%stream, pid, how, stderr = tail, "ffmpeg ended");
                    return RunEnd::Failed("ffmpeg_exited", format!("ffmpeg {how}: {tail}"));
                }
                _ = tick.tick() => {
                    // Input offered for longer than `stall` after a rendition's
                    // last output: FFmpeg is stuck. A publisher that pauses
                    // offers nothing and is not FFmpeg's fault.
                    let offered = self.clock.last_ms();
                    let silent = r.shared.last_output.iter().position(|last| {
                        let last = last.load(std::sync::atomic::Ordering::Relaxed);
                        offered.saturating_sub(last) > stall.as_millis() as u64
                    });
                    if let Some(i) = silent {
                        let name = &self.job.p.renditions[i].name;
                        error!(%stream, pid, rendition = %name, ?stall, "ffmpeg stalled");
                        return RunEnd::Failed(
                            "ffmpeg_stalled",
                            format!("ffmpeg wrote nothing for rendition {name} in {stall:?} (transcode.stall_timeout): {}", r.shared.tail()),
                        );
                    }
                }
            }
        }
    }
}

/// Copy FFmpeg's input into its current stdin, converted to FLV tags; a
/// new stdin (a restart) gets the replay first.
async fn write_input(
    input: Input,
    mut stdins: mpsc::Receiver<tokio::process::ChildStdin>,
    dropped: metrics::Counter,
    cancel: CancellationToken,
) {
    let Input {
        initial,
        mut events,
        ..
    } = input;
    let mut replay = Replay::default();
    for item in &initial {
        replay.note(item);
    }
    let mut stdin: Option<tokio::process::ChildStdin> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            s = stdins.recv() => {
                let Some(mut s) = s else { break };
                let mut ok = true;
                for b in replay.bytes() {
                    if s.write_all(&b).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                stdin = ok.then_some(s);
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let item = match feed::tag(&ev) {
                    Ok(Some(i)) => i,
                    Ok(None) => continue,
                    // The codec was checked when the leg started; a later
                    // switch mid-stream cannot be transcoded: drop it.
                    Err(_) => {
                        dropped.increment(1);
                        continue;
                    }
                };
                replay.note(&item);
                if let Some(w) = &mut stdin {
                    let wrote = tokio::select! {
                        r = w.write_all(&item.data) => r.is_ok(),
                        _ = cancel.cancelled() => false,
                    };
                    if !wrote {
                        stdin = None;
                    }
                }
            }
        }
    }
}

/// FFmpeg's stderr lines one FFmpeg may put in our log per
/// [`t::limit::REPEATED_WARNING_INTERVAL`]; the next one that gets out
/// says how many were held back.
const STDERR_LOG_BURST: u32 = 5;

/// FFmpeg's stderr (`-loglevel repeat+level+warning`: "[level] message")
/// into our log at the matching level, a few lines per interval: a broken
/// input makes FFmpeg complain about every frame, and `repeat` prints
/// every repetition. The tail kept for failure reasons sees every line.
async fn read_stderr<R>(err: R, shared: Arc<Shared>, stream: String)
where
    R: tokio::io::AsyncRead + Unpin,
{
    // Errors have their own budget: a flood of warnings must not hide
    // them; fatal lines (why FFmpeg is about to stop) always pass.
    let mut limiter = t::LogLimiter::new(t::limit::REPEATED_WARNING_INTERVAL, STDERR_LOG_BURST);
    let mut errors = t::LogLimiter::new(t::limit::REPEATED_WARNING_INTERVAL, STDERR_LOG_BURST);
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        if crate::gpu::nvenc_session_refused(&line) {
            shared
                .nvenc_refused
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if is_probe_notice(&line) {
            debug!(stream, ffmpeg = %line, "ffmpeg");
            continue;
        }
        let is_error =
            line.contains("[error]") || line.contains("[fatal]") || line.contains("[panic]");
        // FFmpeg stops after a fatal line: those are never held back.
        let fatal = line.contains("[fatal]") || line.contains("[panic]");
        let budget = if is_error { &mut errors } else { &mut limiter };
        let shown = if fatal {
            Some(0)
        } else {
            budget.check(Instant::now())
        };
        if let Some(suppressed) = shown {
            if is_error {
                error!(stream, ffmpeg = %line, suppressed, "ffmpeg");
            } else if line.contains("[warning]") {
                warn!(stream, ffmpeg = %line, suppressed, "ffmpeg");
            } else {
                info!(stream, ffmpeg = %line, suppressed, "ffmpeg");
            }
        }
        let mut tail = shared.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        // Keep lines short: they end up in RTMP status descriptions.
        tail.push_back(line.chars().take(200).collect());
    }
}

/// What FFmpeg says every time because probing is cut short on purpose
/// (`-probesize 32 -analyzeduration 0`): not worth a warning, and not a
/// reason for anything.
fn is_probe_notice(line: &str) -> bool {
    line.contains("not enough frames to estimate rate")
        || line.contains("Could not find codec parameters for stream")
        || line.contains("Consider increasing the value for the 'analyzeduration'")
}

/// `-progress` key=value blocks into metrics.
async fn read_progress(out: tokio::process::ChildStdout, stream: Arc<Stream>) {
    let series = &stream.series;
    let fps = series.gauge(t::TRANSCODE_FPS, &[]);
    let speed = series.gauge(t::TRANSCODE_SPEED, &[]);
    let dropped = series.counter(t::TRANSCODE_FRAMES_DROPPED_TOTAL, &[]);
    let duplicated = series.counter(t::TRANSCODE_FRAMES_DUPLICATED_TOTAL, &[]);
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "fps" => {
                if let Ok(x) = v.parse::<f64>() {
                    fps.set(x);
                }
            }
            "speed" => {
                if let Ok(x) = v.trim_end_matches('x').parse::<f64>() {
                    speed.set(x);
                }
            }
            "drop_frames" => {
                if let Ok(x) = v.parse::<u64>() {
                    dropped.absolute(x);
                }
            }
            "dup_frames" => {
                if let Ok(x) = v.parse::<u64>() {
                    duplicated.absolute(x);
                }
            }
            _ => {}
        }
    }
}

/// Where one rendition's output goes.
struct Output {
    index: usize,
    name: String,
    stream: Arc<Stream>,
    shared: Arc<Shared>,
    legs: LegEvents,
    published: Instant,
    first_idr_seen: Arc<std::sync::atomic::AtomicUsize>,
    first_idr: FirstIdrSpans,
}

/// One rendition's TS pipe into its ring.
async fn read_output(mut out: tokio::net::unix::pipe::Receiver, o: Output) {
    let Output {
        index,
        name,
        stream,
        shared,
        legs,
        published,
        first_idr_seen,
        first_idr,
    } = o;
    let Some(rend) = stream.rendition(&name) else {
        return;
    };
    let bytes_out = stream
        .series
        .counter(t::TRANSCODE_OUTPUT_BYTES_TOTAL, &[("rendition", &name)]);
    let fps_gauge = stream
        .series
        .gauge(t::TRANSCODE_RENDITION_FPS, &[("rendition", &name)]);
    let mut repacker = repack::Repacker::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    let mut window = (Instant::now(), 0u64, 0u64); // (start, frames, bytes)
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        shared.last_output[index].store(shared.clock.ms(now), std::sync::atomic::Ordering::Relaxed);
        bytes_out.increment(n as u64);
        repacker.push(&buf[..n], &mut chunks);
        // FFmpeg writes whole PES packets (-flush_packets 1): send what we
        // have now instead of holding a frame's tail until the next frame.
        repacker.flush(&mut chunks);
        if chunks.is_empty() {
            continue;
        }
        let got_idr = first && chunks.iter().any(|c| c.keyframe);
        for c in chunks.drain(..) {
            rend.ring.push(c);
        }
        if got_idr {
            first = false;
            first_idr_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let took = now.saturating_duration_since(published);
            histogram!(t::TRANSCODE_FIRST_IDR_SECONDS).record(took.as_secs_f64());
            info!(stream = %stream.path, rendition = %name, first_idr_ms = took.as_millis() as u64, "rendition ready");
            let span = first_idr
                .get(index)
                .and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Some(span) = span {
                span.record("first_idr_ms", took.as_millis() as i64);
                crate::telemetry::trace::ok(&span);
            }
            legs.rendition_ready();
        }
        let elapsed = now.saturating_duration_since(window.0);
        if elapsed >= Duration::from_secs(2) {
            let st = repacker.stats();
            let frames = st.video_frames - window.1;
            let fps = frames as f64 / elapsed.as_secs_f64();
            let total = bytes_total(&repacker);
            let bps = ((total - window.2) as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            fps_gauge.set(fps);
            rend.update_info(|i| {
                i.fps = Some((fps * 100.0).round() / 100.0);
                i.bitrate_bps = bps;
            });
            window = (now, st.video_frames, total);
        }
    }
}

fn bytes_total(r: &repack::Repacker) -> u64 {
    r.stats().packets_in * 188
}

/// Whether `path` names an FFmpeg we can run: a path to a file, or a name
/// found on `PATH`.
pub fn find_ffmpeg(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|d| d.join(path))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::config::AudioMode;
    use super::*;
    use crate::flv::FileReader;
    use crate::stream::{ClaimPolicy, Registry, RingConfig, StreamPath};

    /// A 2 s 320x240 H.264 (keyframe every second) + AAC FLV from ffmpeg.
    fn flv_fixture(dir: &Path) -> Vec<u8> {
        let out = dir.join("in.flv");
        let st = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=320x240:rate=30")
            .args(["-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "2"])
            .args(["-c:v", "libx264", "-g", "30", "-c:a", "aac", "-f", "flv"])
            .arg(&out)
            .status()
            .expect("ffmpeg runs");
        assert!(st.success());
        std::fs::read(out).unwrap()
    }

    #[test]
    fn a_re_probe_replaces_the_choice_for_new_streams_only() {
        let state = EncoderState::new(nvenc_everywhere());
        let running = state.get();
        assert!(!state.replace(nvenc_everywhere(), 0), "same encoders");
        // A failed trial while our own NVENC encodes run keeps NVENC.
        let sw = Encoders::software(EncoderMode::Auto, "h264_nvenc unavailable: no session");
        assert!(!state.replace(sw.clone(), 2));
        assert_eq!(state.get().h264.kind, Encoder::Nvenc);
        assert!(
            state.get().h264.reason.starts_with("kept: "),
            "{}",
            state.get().h264.reason
        );
        assert!(state.replace(sw, 0));
        assert_eq!(
            running.h264.kind,
            Encoder::Nvenc,
            "a running stream keeps its choice"
        );
        let now = state.get();
        assert_eq!(now.h264.kind, Encoder::Software);
        assert_eq!(now.h264.reason, "h264_nvenc unavailable: no session");
        assert!(now.decided_at > 0);
    }

    fn nvenc_everywhere() -> Encoders {
        let nv = |c: VideoCodec| Choice {
            encoder: Encoder::Nvenc.label(c),
            reason: "test".into(),
            kind: Encoder::Nvenc,
        };
        Encoders {
            mode: "auto",
            h264: nv(VideoCodec::H264),
            hevc: nv(VideoCodec::Hevc),
            decode: "none",
            hwdec: HwDecode::None,
            probed: true,
            decided_at: 0,
        }
    }

    /// A GPU that refuses the NVENC session: FFmpeg is restarted on x264,
    /// replaying the header, configs and current GOP, and the rendition
    /// still gets its first IDR.
    #[tokio::test]
    async fn a_refused_nvenc_session_falls_back_to_x264_with_a_replay() {
        let dir = std::env::temp_dir().join(format!("sluice-nvenc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("ffmpeg");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in *_nvenc)\n\
             echo '[h264_nvenc @ 0x1] [error] OpenEncodeSessionEx failed: out of memory (10): (no details)' >&2\n\
             exit 1;; esac; done\nexec ffmpeg \"$@\"\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .unwrap();
        let file = flv_fixture(&dir);

        let registry = Registry::new();
        let root = CancellationToken::new();
        let guard = registry
            .claim(
                StreamPath::from_rtmp("live", "nv").unwrap(),
                "nv",
                "test",
                ClaimPolicy {
                    takeover: false,
                    stale_after: Duration::from_secs(3),
                    ring: RingConfig::default(),
                    renditions: vec!["small".into()],
                },
                &root,
            )
            .unwrap();
        let stream = guard.stream().clone();
        let params = Params {
            config: TranscodeConfig {
                ffmpeg: fake.clone(),
                ..TranscodeConfig::default()
            },
            encoders: Arc::new(nvenc_everywhere()),
            renditions: vec![RenditionSpec {
                name: "small".into(),
                width: None,
                height: Some(120),
                video_bitrate_kbps: 200,
                max_fps: None,
                codec: VideoCodec::H264,
                gop: Duration::from_secs(1),
                audio: AudioMode::Copy,
            }],
        };
        // Configs first, FFmpeg at the first video keyframe, then the rest.
        let mut ingest = crate::rtmp::ingest::FlvIngest::new(Duration::from_secs(10));
        let mut events = Vec::new();
        for tag in FileReader::new(file).unwrap() {
            let tag = tag.unwrap();
            if tag.tag_type != 8 && tag.tag_type != 9 {
                continue;
            }
            if let Ok((Some(ev), _)) = ingest.push(tag.tag_type == 9, tag.timestamp, tag.body) {
                events.push(ev);
            }
        }
        let first_key = events
            .iter()
            .position(|e| {
                matches!(e, MediaEvent::Frame(f) if f.track == crate::media::Track::Video && f.keyframe)
            })
            .unwrap();
        let configs: Vec<MediaEvent> = events[..first_key]
            .iter()
            .filter(|e| matches!(e, MediaEvent::Config(_)))
            .cloned()
            .collect();
        let source = crate::stream::leg::SourceInfo {
            configs,
            fps: Some(30.0),
            size: Some((320, 240)),
            aac_audio: true,
        };
        let (mut feed, media) =
            crate::stream::leg::MediaFeed::new(Instant::now(), source, metrics::Counter::noop());
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let id = crate::stream::leg::LegId(0);
        let ctx = LegContext {
            id,
            stream: stream.clone(),
            cancel: stream.cancel.clone(),
            events: LegEvents::new(id, ev_tx),
            media: Some(media),
            trace: opentelemetry::Context::new(),
        };
        let leg = tokio::spawn(run_leg(params, ctx));
        for e in &events[first_key..] {
            feed.offer(Instant::now(), e.clone());
        }
        let ev = tokio::time::timeout(Duration::from_secs(20), ev_rx.recv())
            .await
            .expect("an event within 20 s");
        assert_eq!(ev, Some((id, crate::stream::leg::LegEvent::RenditionReady)));
        let info = stream.rendition("small").unwrap().info().unwrap();
        assert_eq!(info.encoder, "x264");
        assert_eq!((info.width, info.height), (Some(160), Some(120)));
        // Teardown: the stream ends, FFmpeg is stopped and reaped.
        drop(guard);
        let ended = tokio::time::timeout(KILL_GRACE + Duration::from_secs(2), leg)
            .await
            .expect("the leg ends");
        assert_eq!(ended.unwrap(), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn probe_notices_are_recognised() {
        assert!(is_probe_notice(
            "[flv @ 0x5] [warning] Stream #0: not enough frames to estimate rate; consider increasing probesize"
        ));
        assert!(!is_probe_notice("[h264 @ 0x5] [error] no frame!"));
    }

    #[test]
    fn nvenc_is_chosen_only_where_the_trial_worked() {
        let failed = |r: &str| ProbeResult::Failed { reason: r.into() };
        let probe = Probe {
            h264_nvenc: ProbeResult::Ok,
            hevc_nvenc: failed("unsupported device (2)"),
            cuda_decode: ProbeResult::Ok,
            cuda_scale: failed("no scale_cuda"),
        };
        let e = resolve(EncoderMode::Auto, true, &probe, &[VideoCodec::H264]).unwrap();
        assert_eq!(e.h264.encoder, "nvenc");
        assert_eq!(e.hevc.encoder, "x265");
        assert!(e.hevc.reason.contains("unsupported device"));
        assert_eq!(e.hwdec, HwDecode::Cuda);
        let e = resolve(EncoderMode::Auto, false, &probe, &[]).unwrap();
        assert_eq!(e.hwdec, HwDecode::None);
        // Demanded NVENC for a codec that has none: refuse to start.
        let err = resolve(EncoderMode::Nvenc, true, &probe, &[VideoCodec::Hevc]).unwrap_err();
        assert!(err.contains("hevc_nvenc"), "{err}");
        assert!(resolve(EncoderMode::Nvenc, true, &probe, &[VideoCodec::H264]).is_ok());
        let sw = resolve(EncoderMode::Software, true, &probe, &[VideoCodec::H264]).unwrap();
        assert_eq!(sw.h264.encoder, "x264");
    }

    /// What a test subscriber wrote, as JSON lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// FFmpeg runs with `-loglevel repeat+…`: a broken input makes it print
    /// the same warning for every frame. Our log gets a few of them per
    /// interval, the last-lines tail (for failure reasons) keeps them all.
    #[tokio::test]
    async fn a_warning_on_every_frame_reaches_the_log_a_few_times() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut text: String = (0..1000)
            .map(|i| format!("[h264 @ 0x5581] [warning] error while decoding MB {i} 7\n"))
            .collect();
        // The error after the flood has its own budget: it is logged.
        text.push_str("[libx264 @ 0x55] [error] final error after the flood\n");
        // A flood of errors (corrupt input is logged at error level)…
        for i in 0..100 {
            text.push_str(&format!("[h264 @ 0x5581] [error] corrupt MB {i}\n"));
        }
        // …does not hide the fatal line.
        text.push_str("[out#0 @ 0x55] [fatal] the fatal line\n");
        let shared = Arc::new(Shared {
            stderr_tail: Mutex::new(VecDeque::new()),
            nvenc_refused: Default::default(),
            last_output: Vec::new(),
            clock: Arc::new(Offered::new(Instant::now())),
        });
        read_stderr(text.as_bytes(), shared.clone(), "live/cam1".into()).await;
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logged.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= 12,
            "{} log lines for 1000 FFmpeg warnings",
            lines.len()
        );
        assert!(
            lines[0].contains("error while decoding MB 0 7"),
            "{}",
            lines[0]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("final error after the flood") && l.contains("ERROR")),
            "{logged}"
        );
        assert!(
            lines.last().unwrap().contains("the fatal line"),
            "{}",
            lines.last().unwrap()
        );
        let tail = shared.stderr_tail.lock().unwrap();
        assert_eq!(
            tail.back().map(String::as_str),
            Some("[out#0 @ 0x55] [fatal] the fatal line")
        );
    }
}
