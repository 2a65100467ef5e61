//! Logging (`tracing` to stderr, text or JSON) and the Prometheus recorder.
//!
//! Metric names are declared here once, with their help text, so `/metrics`
//! documents itself and call sites cannot drift apart on spelling.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub mod limit;
pub use limit::LogLimiter;

pub const RTMP_CONNECTIONS: &str = "sluice_rtmp_connections";
pub const RTMP_CONNECTIONS_TOTAL: &str = "sluice_rtmp_connections_total";
pub const RTMP_PUBLISHES_TOTAL: &str = "sluice_rtmp_publishes_total";
pub const RTMP_PROTOCOL_ERRORS_TOTAL: &str = "sluice_rtmp_protocol_errors_total";
pub const RTMP_CONNECTIONS_REJECTED_TOTAL: &str = "sluice_rtmp_connections_rejected_total";
pub const RTMPS_CONNECTIONS_TOTAL: &str = "sluice_rtmps_connections_total";
pub const INGEST_BYTES_TOTAL: &str = "sluice_ingest_bytes_total";
pub const INGEST_FRAMES_TOTAL: &str = "sluice_ingest_frames_total";
pub const INGEST_TAG_ERRORS_TOTAL: &str = "sluice_ingest_tag_errors_total";
pub const TIMESTAMP_JUMPS_TOTAL: &str = "sluice_timestamp_jumps_total";
pub const STREAMS: &str = "sluice_streams";
pub const TS_MUX_ERRORS_TOTAL: &str = "sluice_ts_mux_errors_total";
pub const STREAM_SETUP_SECONDS: &str = "sluice_stream_setup_seconds";
pub const RELAY_LATENCY_SECONDS: &str = "sluice_relay_latency_seconds";
pub const STREAM_TEARDOWNS_TOTAL: &str = "sluice_stream_teardowns_total";
pub const STREAM_SETUP_FAILURES_TOTAL: &str = "sluice_stream_setup_failures_total";
pub const SRT_PLAYERS: &str = "sluice_srt_players";
pub const SRT_PLAYERS_TOTAL: &str = "sluice_srt_players_total";
pub const SRT_REJECTS_TOTAL: &str = "sluice_srt_rejects_total";
pub const SRT_BYTES_OUT_TOTAL: &str = "sluice_srt_bytes_out_total";
pub const SRT_GOP_CACHE_STARTS_TOTAL: &str = "sluice_srt_gop_cache_starts_total";
pub const SRT_LAG_SKIPS_TOTAL: &str = "sluice_srt_lag_skips_total";
pub const SRT_LAG_DISCONNECTS_TOTAL: &str = "sluice_srt_lag_disconnects_total";
pub const SRT_PROTOCOL_PANICS_TOTAL: &str = "sluice_srt_protocol_panics_total";
pub const SRT_DROPPED_DATAGRAMS_TOTAL: &str = "sluice_srt_dropped_datagrams_total";
pub const PROCESS_OPEN_FDS: &str = "sluice_process_open_fds";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "sluice_process_resident_memory_bytes";
pub const TOKIO_ALIVE_TASKS: &str = "sluice_tokio_alive_tasks";
pub const AUTH_REJECTS_TOTAL: &str = "sluice_auth_rejects_total";
pub const TRANSCODE_ENCODER: &str = "sluice_transcode_encoder";
pub const TRANSCODE_ENCODER_FALLBACKS_TOTAL: &str = "sluice_transcode_encoder_fallbacks_total";
pub const TRANSCODE_FFMPEG_STARTS_TOTAL: &str = "sluice_transcode_ffmpeg_starts_total";
pub const TRANSCODE_FFMPEG_RESTARTS_TOTAL: &str = "sluice_transcode_ffmpeg_restarts_total";
pub const TRANSCODE_FFMPEG_EXITS_TOTAL: &str = "sluice_transcode_ffmpeg_exits_total";
pub const TRANSCODE_FFMPEG_RUNNING: &str = "sluice_transcode_ffmpeg_running";
pub const TRANSCODE_FAILURES_TOTAL: &str = "sluice_transcode_failures_total";
pub const TRANSCODE_FIRST_IDR_SECONDS: &str = "sluice_transcode_first_idr_seconds";
pub const TRANSCODE_INPUT_DROPPED_TOTAL: &str = "sluice_transcode_input_dropped_total";
pub const TRANSCODE_FPS: &str = "sluice_transcode_fps";
pub const TRANSCODE_SPEED: &str = "sluice_transcode_speed";
pub const TRANSCODE_FRAMES_DROPPED_TOTAL: &str = "sluice_transcode_frames_dropped_total";
pub const TRANSCODE_FRAMES_DUPLICATED_TOTAL: &str = "sluice_transcode_frames_duplicated_total";
pub const TRANSCODE_OUTPUT_BYTES_TOTAL: &str = "sluice_transcode_output_bytes_total";
pub const TRANSCODE_RENDITION_FPS: &str = "sluice_transcode_rendition_fps";

/// Count of GPUs NVML reports (0 when NVML is unavailable).
pub const GPUS: &str = "sluice_gpus";
pub const GPU_ENCODER_UTILIZATION_PERCENT: &str = "sluice_gpu_encoder_utilization_percent";
pub const GPU_DECODER_UTILIZATION_PERCENT: &str = "sluice_gpu_decoder_utilization_percent";
pub const GPU_UTILIZATION_PERCENT: &str = "sluice_gpu_utilization_percent";
pub const GPU_ENCODER_SESSIONS: &str = "sluice_gpu_encoder_sessions";
pub const GPU_MEMORY_USED_BYTES: &str = "sluice_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL_BYTES: &str = "sluice_gpu_memory_total_bytes";
pub const GPU_TEMPERATURE_CELSIUS: &str = "sluice_gpu_temperature_celsius";
pub const GPU_ENCODER_CAPACITY_PERCENT: &str = "sluice_gpu_encoder_capacity_percent";

/// Log output format (`server.log_format`, `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected \"text\" or \"json\", got {other:?}")),
        }
    }
}

/// Install the global `tracing` subscriber. `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,srt_protocol=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only for a terminal; journald and log files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// The Prometheus type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: name, type and help text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    pub const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family { name, kind, help }
    }
}

/// Every metric family sluice exports: described to the recorder at start,
/// and rendered as `# HELP`/`# TYPE` even before its first sample (see
/// [`render`]), so dashboards and alerts can rely on each name.
pub const FAMILIES: &[Family] = &[
    Family::new(RTMP_CONNECTIONS, Kind::Gauge, "Open RTMP connections."),
    Family::new(RTMP_CONNECTIONS_TOTAL, Kind::Counter, "RTMP connections accepted."),
    Family::new(RTMP_CONNECTIONS_REJECTED_TOTAL, Kind::Counter, "RTMP(S) connections refused at accept or closed before publishing, by reason (max_connections, max_connections_per_ip, tls_handshake, setup_timeout)."),
    Family::new(RTMPS_CONNECTIONS_TOTAL, Kind::Counter, "RTMPS connections whose TLS handshake completed."),
    Family::new(RTMP_PUBLISHES_TOTAL, Kind::Counter, "RTMP publish attempts, by result (accepted, rejected_busy, rejected_limit, ...)."),
    Family::new(RTMP_PROTOCOL_ERRORS_TOTAL, Kind::Counter, "RTMP connections closed for a protocol error or limit, by reason."),
    Family::new(INGEST_BYTES_TOTAL, Kind::Counter, "Media bytes received, by stream."),
    Family::new(INGEST_FRAMES_TOTAL, Kind::Counter, "Media frames received, by stream and track."),
    Family::new(INGEST_TAG_ERRORS_TOTAL, Kind::Counter, "Audio/video messages that could not be parsed, by stream."),
    Family::new(TIMESTAMP_JUMPS_TOTAL, Kind::Counter, "Timestamp jumps larger than rtmp.max_timestamp_jump, re-based, by stream and track."),
    Family::new(STREAMS, Kind::Gauge, "Live streams."),
    Family::new(STREAM_SETUP_SECONDS, Kind::Histogram, "From TCP accept to the first keyframe in the source rendition."),
    Family::new(RELAY_LATENCY_SECONDS, Kind::Histogram, "RTMP message parsed to its last SRT packet first sent, per live chunk and player."),
    Family::new(STREAM_TEARDOWNS_TOTAL, Kind::Counter, "Streams ended, by cause (unpublished, peer_closed, leg_failed, setup_timeout, taken_over, shutdown, bitrate_limit, ...)."),
    Family::new(STREAM_SETUP_FAILURES_TOTAL, Kind::Counter, "Publishes closed because the stream was not playable within server.setup_timeout, by reason."),
    Family::new(TS_MUX_ERRORS_TOTAL, Kind::Counter, "Frames or codec configs the MPEG-TS muxer refused, by stream."),
    Family::new(SRT_PLAYERS, Kind::Gauge, "Connected SRT players."),
    Family::new(SRT_PLAYERS_TOTAL, Kind::Counter, "SRT players accepted."),
    Family::new(SRT_REJECTS_TOTAL, Kind::Counter, "SRT callers rejected, by the code libsrt reports to them (1404, 10, ...)."),
    Family::new(SRT_BYTES_OUT_TOTAL, Kind::Counter, "MPEG-TS payload bytes sent to SRT players, retransmissions included."),
    Family::new(SRT_GOP_CACHE_STARTS_TOTAL, Kind::Counter, "SRT players whose first data came from the GOP cache."),
    Family::new(SRT_LAG_SKIPS_TOTAL, Kind::Counter, "Times an SRT player fell behind and skipped to the newest keyframe."),
    Family::new(SRT_LAG_DISCONNECTS_TOTAL, Kind::Counter, "SRT players closed for staying behind."),
    Family::new(SRT_PROTOCOL_PANICS_TOTAL, Kind::Counter, "Panics caught inside srt-protocol; each dropped one peer."),
    Family::new(SRT_DROPPED_DATAGRAMS_TOTAL, Kind::Counter, "Datagrams on the SRT port ignored before or at parsing, by reason."),
    Family::new(PROCESS_OPEN_FDS, Kind::Gauge, "Open file descriptors of the sluice process."),
    Family::new(PROCESS_RESIDENT_MEMORY_BYTES, Kind::Gauge, "Resident memory of the sluice process."),
    Family::new(TOKIO_ALIVE_TASKS, Kind::Gauge, "Live tokio tasks in sluice."),
    Family::new(AUTH_REJECTS_TOTAL, Kind::Counter, "Requests refused by authorization, by action (publish) and reason."),
    Family::new(TRANSCODE_ENCODER, Kind::Gauge, "Encoder new streams use for each rendition codec: 1 in use, 0 replaced by a re-probe."),
    Family::new(TRANSCODE_ENCODER_FALLBACKS_TOTAL, Kind::Counter, "NVENC not used for a codec: at start (trial failed), by a re-probe, or per stream (session refused)."),
    Family::new(TRANSCODE_FFMPEG_STARTS_TOTAL, Kind::Counter, "FFmpeg processes started."),
    Family::new(TRANSCODE_FFMPEG_RESTARTS_TOTAL, Kind::Counter, "FFmpeg processes restarted within a stream, by reason."),
    Family::new(TRANSCODE_FFMPEG_EXITS_TOTAL, Kind::Counter, "FFmpeg processes ended, by exit code or signal_N."),
    Family::new(TRANSCODE_FFMPEG_RUNNING, Kind::Gauge, "FFmpeg processes running."),
    Family::new(TRANSCODE_FAILURES_TOTAL, Kind::Counter, "Transcode legs failed, by reason (ffmpeg_exited, ffmpeg_stalled, ffmpeg_not_found, ...)."),
    Family::new(TRANSCODE_FIRST_IDR_SECONDS, Kind::Histogram, "From publish accepted to each rendition's first IDR read back from FFmpeg."),
    Family::new(TRANSCODE_INPUT_DROPPED_TOTAL, Kind::Counter, "Frames not given to FFmpeg because it fell a whole queue behind, by stream."),
    Family::new(TRANSCODE_FPS, Kind::Gauge, "FFmpeg's reported encoding frame rate, by stream."),
    Family::new(TRANSCODE_SPEED, Kind::Gauge, "FFmpeg's reported speed (1 = real time), by stream."),
    Family::new(TRANSCODE_FRAMES_DROPPED_TOTAL, Kind::Counter, "Frames FFmpeg dropped, by stream."),
    Family::new(TRANSCODE_FRAMES_DUPLICATED_TOTAL, Kind::Counter, "Frames FFmpeg duplicated, by stream."),
    Family::new(TRANSCODE_OUTPUT_BYTES_TOTAL, Kind::Counter, "MPEG-TS bytes read from FFmpeg, by stream and rendition."),
    Family::new(TRANSCODE_RENDITION_FPS, Kind::Gauge, "Video frames per second read back from FFmpeg, by stream and rendition."),
    Family::new(GPUS, Kind::Gauge, "NVIDIA GPUs visible through NVML (0 when none)."),
    Family::new(GPU_ENCODER_UTILIZATION_PERCENT, Kind::Gauge, "NVENC utilization in percent, by GPU."),
    Family::new(GPU_DECODER_UTILIZATION_PERCENT, Kind::Gauge, "NVDEC utilization in percent, by GPU."),
    Family::new(GPU_UTILIZATION_PERCENT, Kind::Gauge, "Share of time a kernel ran on the GPU, in percent, by GPU."),
    Family::new(GPU_ENCODER_SESSIONS, Kind::Gauge, "Open NVENC sessions, by GPU."),
    Family::new(GPU_MEMORY_USED_BYTES, Kind::Gauge, "GPU memory in use, by GPU."),
    Family::new(GPU_MEMORY_TOTAL_BYTES, Kind::Gauge, "GPU memory installed, by GPU."),
    Family::new(GPU_TEMPERATURE_CELSIUS, Kind::Gauge, "GPU die temperature, by GPU."),
    Family::new(GPU_ENCODER_CAPACITY_PERCENT, Kind::Gauge, "NVENC capacity left in percent of the maximum, by GPU and codec."),
];

/// Install the Prometheus recorder and describe every metric.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    // Histograms render as summaries unless given buckets.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(STREAM_SETUP_SECONDS.to_string()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
        )
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full(RELAY_LATENCY_SECONDS.to_string()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
            ],
        )
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full(TRANSCODE_FIRST_IDR_SECONDS.to_string()),
            &[0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
        )
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    // Series that dashboards expect from the first scrape, before any event.
    metrics::gauge!(RTMP_CONNECTIONS).set(0.0);
    metrics::gauge!(STREAMS).set(0.0);
    metrics::gauge!(SRT_PLAYERS).set(0.0);
    metrics::counter!(RTMP_CONNECTIONS_TOTAL).absolute(0);
    metrics::counter!(SRT_PLAYERS_TOTAL).absolute(0);
    // Unlabelled counters start at 0 so the first event shows in rate().
    for c in [
        SRT_BYTES_OUT_TOTAL,
        SRT_GOP_CACHE_STARTS_TOTAL,
        SRT_LAG_SKIPS_TOTAL,
        SRT_LAG_DISCONNECTS_TOTAL,
        SRT_PROTOCOL_PANICS_TOTAL,
        RTMPS_CONNECTIONS_TOTAL,
    ] {
        metrics::counter!(c).absolute(0);
    }
    metrics::gauge!(TRANSCODE_FFMPEG_RUNNING).set(0.0);
    metrics::counter!(TRANSCODE_FFMPEG_STARTS_TOTAL).absolute(0);
    Ok(handle)
}

/// The Prometheus text exposition: every recorded series, then `# HELP` and
/// `# TYPE` for each family in [`FAMILIES`] that has no sample yet (a GPU
/// gauge on a machine without a GPU, a counter whose event never happened),
/// which the exposition format allows and scrapers ignore.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    append_missing_families(&mut out);
    out
}

fn append_missing_families(out: &mut String) {
    use std::fmt::Write;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let present: std::collections::HashSet<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&Family> = FAMILIES
        .iter()
        .filter(|f| !present.contains(f.name))
        .collect();
    for f in missing {
        let _ = write!(
            out,
            "# HELP {} {}\n# TYPE {} {}\n\n",
            f.name,
            f.help,
            f.name,
            f.kind.as_str()
        );
    }
}

fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

// ---------------------------------------------------------------------------
// Returning freed memory
// ---------------------------------------------------------------------------

/// Connections closed since the last upkeep tick.
static CLOSED_SINCE_TICK: AtomicUsize = AtomicUsize::new(0);
/// A burst was seen and has not been followed by a trim yet.
static BURST_PENDING: AtomicBool = AtomicBool::new(false);
/// Bytes of buffered media (stream rings) freed since the last tick.
static RELEASED_SINCE_TICK: AtomicUsize = AtomicUsize::new(0);

/// Buffered media freed within one upkeep tick that is worth a trim: a
/// stream whose ring was full of small chunks (a publisher of tiny frames)
/// leaves that much in the allocator's free lists.
const TRIM_AFTER_RELEASED: usize = 16 << 20;

/// Note buffered media freed (a stream's ring dropped).
pub fn memory_released(bytes: usize) {
    RELEASED_SINCE_TICK.fetch_add(bytes, Ordering::Relaxed);
}

/// Closed connections within one upkeep tick (5 s) that make a burst.
const TRIM_AFTER_CLOSED: usize = 256;

/// Note a closed connection (RTMP, RTMPS or SRT player).
pub fn connection_closed() {
    CLOSED_SINCE_TICK.fetch_add(1, Ordering::Relaxed);
}

/// Called by the upkeep tick: whether a burst of closed connections has
/// just ended, so a [`trim`] can give its memory back. A burst is a tick
/// with at least `TRIM_AFTER_CLOSED` closes; it ends at the first quieter
/// tick, so a burst spread over several ticks is trimmed once, after its
/// last connection is gone. Cheap; resets the count.
/// Also true after a tick in which rings holding at least
/// `TRIM_AFTER_RELEASED` bytes were freed.
pub fn burst_closed() -> bool {
    let closed = CLOSED_SINCE_TICK.swap(0, Ordering::Relaxed);
    let released = RELEASED_SINCE_TICK.swap(0, Ordering::Relaxed);
    let (trim, pending) = burst_step(closed, BURST_PENDING.load(Ordering::Relaxed));
    BURST_PENDING.store(pending, Ordering::Relaxed);
    trim || released >= TRIM_AFTER_RELEASED
}

/// (trim now, burst still pending) after a tick with `closed` closes.
fn burst_step(closed: usize, pending: bool) -> (bool, bool) {
    if closed >= TRIM_AFTER_CLOSED {
        (false, true)
    } else {
        (pending, false)
    }
}

/// After a burst of closed connections (a flood of half-open TCP
/// connections, a crowd of players leaving), ask glibc's malloc to give
/// free pages back to the system. glibc keeps what was freed in its
/// per-thread arenas, so without this the resident memory would stay at
/// the burst's peak. It takes each arena's lock in turn, so it runs on a
/// blocking thread and only after bursts (see [`burst_closed`]).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_unique_and_well_named() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} declared twice", f.name);
            assert!(f.name.starts_with("sluice_"), "{}", f.name);
            // Help text is written as is: nothing the format would escape.
            assert!(
                !f.help.is_empty() && !f.help.contains(['\n', '\\']),
                "{}",
                f.name
            );
            if f.kind == Kind::Counter {
                assert!(
                    f.name.ends_with("_total"),
                    "counter {} lacks _total",
                    f.name
                );
            }
        }
    }

    #[test]
    fn families_without_samples_are_still_typed() {
        let mut out = "# HELP sluice_streams Live streams.\n# TYPE sluice_streams gauge\nsluice_streams 2\n\n".to_string();
        append_missing_families(&mut out);
        assert_eq!(out.matches("# TYPE sluice_streams ").count(), 1);
        assert!(out.contains("# TYPE sluice_gpu_encoder_sessions gauge\n"));
        assert!(out.contains("# TYPE sluice_relay_latency_seconds histogram\n"));
        assert!(out.contains("# TYPE sluice_srt_lag_skips_total counter\n"));
        let families = out.matches("# TYPE ").count();
        assert_eq!(families, FAMILIES.len());
    }

    #[test]
    fn trims_once_when_a_burst_of_closed_connections_ends() {
        assert_eq!(burst_step(10, false), (false, false), "slow churn");
        // A burst over two ticks, then a quiet tick: one trim, at the end.
        let (t1, p1) = burst_step(TRIM_AFTER_CLOSED, false);
        let (t2, p2) = burst_step(5_000, p1);
        let (t3, p3) = burst_step(3, p2);
        let (t4, p4) = burst_step(0, p3);
        assert_eq!((t1, t2, t3, t4), (false, false, true, false));
        assert!(!p4);
        trim();
    }
}
