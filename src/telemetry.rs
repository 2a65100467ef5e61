//! Logging (`tracing` to stderr, text or JSON) and the Prometheus recorder.
//!
//! Metric names are declared here once, with their help text, so `/metrics`
//! documents itself and call sites cannot drift apart on spelling. Series
//! labelled by stream are owned by their stream ([`StreamSeries`]) and end
//! with it; everything else lives in the global recorder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub mod limit;
pub mod trace;
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
pub const LEG_FAILURES_TOTAL: &str = "sluice_leg_failures_total";
pub const LEG_RETRIES_TOTAL: &str = "sluice_leg_retries_total";
pub const RTMP_PUSH_BYTES_TOTAL: &str = "sluice_rtmp_push_bytes_total";
pub const RECORD_SEGMENTS_TOTAL: &str = "sluice_record_segments_total";
pub const RECORD_BYTES_TOTAL: &str = "sluice_record_bytes_total";
pub const RECORD_SEGMENTS_DROPPED_TOTAL: &str = "sluice_record_segments_dropped_total";
pub const RECORD_SEGMENTS_DELETED_TOTAL: &str = "sluice_record_segments_deleted_total";
pub const SRT_PLAYERS: &str = "sluice_srt_players";
pub const SRT_PLAYERS_TOTAL: &str = "sluice_srt_players_total";
pub const SRT_REJECTS_TOTAL: &str = "sluice_srt_rejects_total";
pub const SRT_BYTES_OUT_TOTAL: &str = "sluice_srt_bytes_out_total";
pub const SRT_DATA_PACKETS_TOTAL: &str = "sluice_srt_data_packets_total";
pub const SRT_RETRANSMITTED_PACKETS_TOTAL: &str = "sluice_srt_retransmitted_packets_total";
pub const SRT_DATAGRAMS_OUT_TOTAL: &str = "sluice_srt_datagrams_out_total";
pub const SRT_SEND_CALLS_TOTAL: &str = "sluice_srt_send_calls_total";
pub const TRACE_SPANS_EXPORTED_TOTAL: &str = "sluice_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "sluice_trace_spans_dropped_total";
pub const SRT_GOP_CACHE_STARTS_TOTAL: &str = "sluice_srt_gop_cache_starts_total";
pub const SRT_LAG_SKIPS_TOTAL: &str = "sluice_srt_lag_skips_total";
pub const SRT_JOIN_TOTAL: &str = "sluice_srt_join_total";
pub const SRT_JOIN_FIRST_DATA_SECONDS: &str = "sluice_srt_join_first_data_seconds";
pub const SRT_JOIN_CATCHUP_SECONDS: &str = "sluice_srt_join_catchup_seconds";
pub const SRT_JOIN_CATCHUP_FRAMES_TOTAL: &str = "sluice_srt_join_catchup_frames_total";
pub const SRT_JOIN_UNCHANGED_TOTAL: &str = "sluice_srt_join_unchanged_total";
pub const CLUSTER_CLAIMS: &str = "sluice_cluster_claims";
pub const CLUSTER_CLAIMS_TOTAL: &str = "sluice_cluster_claims_total";
pub const CLUSTER_CONFLICTS_TOTAL: &str = "sluice_cluster_conflicts_total";
pub const CLUSTER_EDGE_PULLS: &str = "sluice_cluster_edge_pulls";
pub const CLUSTER_EDGE_PULLS_TOTAL: &str = "sluice_cluster_edge_pulls_total";
pub const CLUSTER_EDGE_PULLS_SERVED_TOTAL: &str = "sluice_cluster_edge_pulls_served_total";
pub const CLUSTER_REDIS_ERRORS_TOTAL: &str = "sluice_cluster_redis_errors_total";
pub const CLUSTER_REDIS_SECONDS: &str = "sluice_cluster_redis_seconds";
pub const CLUSTER_REDIS_UP: &str = "sluice_cluster_redis_up";
pub const SRT_LAG_DISCONNECTS_TOTAL: &str = "sluice_srt_lag_disconnects_total";
pub const SRT_PROTOCOL_PANICS_TOTAL: &str = "sluice_srt_protocol_panics_total";
pub const SRT_DROPPED_DATAGRAMS_TOTAL: &str = "sluice_srt_dropped_datagrams_total";
pub const SRT_PUBLISHERS: &str = "sluice_srt_publishers";
pub const SRT_PUBLISHES_TOTAL: &str = "sluice_srt_publishes_total";
pub const SRT_PUBLISH_BYTES_IN_TOTAL: &str = "sluice_srt_publish_bytes_in_total";
pub const SRT_PUBLISH_DROPPED_PAYLOADS_TOTAL: &str = "sluice_srt_publish_dropped_payloads_total";
pub const SRT_PUBLISH_CONTINUITY_ERRORS_TOTAL: &str = "sluice_srt_publish_continuity_errors_total";
pub const SRT_PUBLISH_DROPPED_FRAMES_TOTAL: &str = "sluice_srt_publish_dropped_frames_total";
pub const SRT_PUBLISH_TRUNCATED_PES_TOTAL: &str = "sluice_srt_publish_truncated_pes_total";
pub const PROCESS_OPEN_FDS: &str = "sluice_process_open_fds";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "sluice_process_resident_memory_bytes";
pub const TOKIO_ALIVE_TASKS: &str = "sluice_tokio_alive_tasks";
pub const AUTH_REJECTS_TOTAL: &str = "sluice_auth_rejects_total";
pub const CONFIG_RELOADS_TOTAL: &str = "sluice_config_reloads_total";
pub const TRANSCODE_ENCODER: &str = "sluice_transcode_encoder";
pub const TRANSCODE_ENCODER_FALLBACKS_TOTAL: &str = "sluice_transcode_encoder_fallbacks_total";
pub const TRANSCODE_FFMPEG_STARTS_TOTAL: &str = "sluice_transcode_ffmpeg_starts_total";
pub const TRANSCODE_FFMPEG_RESTARTS_TOTAL: &str = "sluice_transcode_ffmpeg_restarts_total";
pub const TRANSCODE_FFMPEG_EXITS_TOTAL: &str = "sluice_transcode_ffmpeg_exits_total";
pub const TRANSCODE_FFMPEG_RUNNING: &str = "sluice_transcode_ffmpeg_running";
pub const TRANSCODE_FAILURES_TOTAL: &str = "sluice_transcode_failures_total";
pub const TRANSCODE_FIRST_IDR_SECONDS: &str = "sluice_transcode_first_idr_seconds";
pub const TRANSCODE_INPUT_DROPPED_TOTAL: &str = "sluice_transcode_input_dropped_total";
pub const RTMP_PUSH_INPUT_DROPPED_TOTAL: &str = "sluice_rtmp_push_input_dropped_total";
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
/// With a collector configured (`[telemetry]`, or the `OTEL_…` endpoint
/// variables) lifecycle spans are exported too, and JSON lines carry the
/// active span's `trace_id` and `span_id`; the returned handle flushes
/// the last spans at exit.
pub fn init_logging(
    format: LogFormat,
    telemetry: &trace::TelemetryConfig,
) -> Option<trace::Tracing> {
    use tracing_subscriber::filter::{filter_fn, LevelFilter};
    use tracing_subscriber::fmt::format::{self, JsonFields};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

    // Lifecycle spans are for the exporter: log lines keep the connection
    // spans they always had as their context. A directive (not a second
    // filter) keeps the filter's level hint, so disabled `debug!`s (one
    // per packet in srt-protocol) stay a static check.
    let logs = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,srt_protocol=error"))
            .add_directive(
                format!("{}=off", trace::TARGET)
                    .parse()
                    .expect("a valid directive"),
            )
    };
    let pipeline = telemetry.endpoint().and_then(|url| {
        trace::pipeline(telemetry, &url)
            .map_err(|e| eprintln!("sluice: traces are off: {e}"))
            .ok()
    });
    let with_ids = pipeline.is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => {
            let json = format::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false);
            fmt.fmt_fields(JsonFields::new())
                .event_format(TraceIds {
                    inner: json,
                    on: with_ids,
                })
                .with_filter(logs())
                .boxed()
        }
        // Colours only for a terminal; journald and log files get plain text.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(logs())
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    // A second init (tests) is harmless: keep the first subscriber.
    let Some(provider) = pipeline else {
        // No OpenTelemetry layer at all: an empty one would enable every
        // callsite.
        let _ = registry.try_init();
        return None;
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(trace::tracer(&provider))
        .with_threads(false)
        .with_location(false)
        // The `target` attribute would clash with a leg's own.
        .with_target(false)
        // Busy/idle timing would cost two clock reads per poll of every
        // traced task.
        .with_tracked_inactivity(false)
        .with_filter(
            filter_fn(|m| {
                if m.is_span() {
                    m.target() == trace::TARGET
                } else {
                    // Warnings of sluice's own become events of the span
                    // they happen in.
                    *m.level() <= tracing::Level::WARN && m.target().starts_with("sluice")
                }
            })
            .with_max_level_hint(LevelFilter::INFO),
        );
    registry
        .with(otel)
        .try_init()
        .is_ok()
        .then(|| trace::installed(provider))
}

/// The JSON event format with the active span's `trace_id` and `span_id`
/// first, when traces are on and a span is active.
struct TraceIds<F> {
    inner: F,
    on: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for TraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = if self.on { trace::active_ids() } else { None };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
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
    Family::new(LEG_FAILURES_TOTAL, Kind::Counter, "Legs (push, restream, transcode, recording) that failed, by kind, reason and whether the stream required them."),
    Family::new(LEG_RETRIES_TOTAL, Kind::Counter, "Optional legs started again after a failure (capped exponential backoff), by kind."),
    Family::new(RTMP_PUSH_BYTES_TOTAL, Kind::Counter, "Bytes written to RTMP(S) restream destinations (RTMP chunks, before TLS)."),
    Family::new(RECORD_SEGMENTS_TOTAL, Kind::Counter, "Recording segments closed complete and fsync'd."),
    Family::new(RECORD_BYTES_TOTAL, Kind::Counter, "Bytes written to recording segments."),
    Family::new(RECORD_SEGMENTS_DROPPED_TOTAL, Kind::Counter, "Recording segments lost, whole or their rest, because the disk did not keep up (the write queue was full)."),
    Family::new(RECORD_SEGMENTS_DELETED_TOTAL, Kind::Counter, "Recording segments deleted by retention (record_keep)."),
    Family::new(TS_MUX_ERRORS_TOTAL, Kind::Counter, "Frames or codec configs the MPEG-TS muxer refused, by stream."),
    Family::new(SRT_PLAYERS, Kind::Gauge, "Connected SRT players."),
    Family::new(SRT_PLAYERS_TOTAL, Kind::Counter, "SRT players accepted."),
    Family::new(SRT_REJECTS_TOTAL, Kind::Counter, "SRT callers rejected, by the code libsrt reports to them (1404, 10, ...)."),
    Family::new(SRT_BYTES_OUT_TOTAL, Kind::Counter, "MPEG-TS payload bytes sent to SRT players, retransmissions included."),
    Family::new(SRT_DATA_PACKETS_TOTAL, Kind::Counter, "Data packets sent to SRT players, retransmissions included."),
    Family::new(SRT_RETRANSMITTED_PACKETS_TOTAL, Kind::Counter, "Data packets sent to SRT players again (asked for by a NAK; for encrypted players also srt-protocol's retransmission timer)."),
    Family::new(SRT_DATAGRAMS_OUT_TOTAL, Kind::Counter, "Datagrams the SRT listener sent (players' data and control, publishers' control)."),
    Family::new(SRT_SEND_CALLS_TOTAL, Kind::Counter, "Send system calls of the SRT listener (sendmmsg, or sendto after a refused GSO message); datagrams per call = sluice_srt_datagrams_out_total / this."),
    Family::new(TRACE_SPANS_EXPORTED_TOTAL, Kind::Counter, "Lifecycle spans the OTLP collector accepted ([telemetry])."),
    Family::new(TRACE_SPANS_DROPPED_TOTAL, Kind::Counter, "Lifecycle spans lost, by reason: queue_full (the export queue was full: a slow or dead collector), export_failed (the collector refused, failed or timed out)."),
    Family::new(SRT_GOP_CACHE_STARTS_TOTAL, Kind::Counter, "SRT players whose first data came from the GOP cache."),
    Family::new(SRT_JOIN_TOTAL, Kind::Counter, "SRT players accepted, by join mode (live, cache, keyframe)."),
    Family::new(SRT_JOIN_FIRST_DATA_SECONDS, Kind::Histogram, "SRT player accepted -> its first media handed to SRT, by join mode (keyframe: the wait for the next keyframe)."),
    Family::new(SRT_JOIN_CATCHUP_SECONDS, Kind::Histogram, "join = live: media time a joiner skipped, from the cached keyframe to the live point."),
    Family::new(SRT_JOIN_CATCHUP_FRAMES_TOTAL, Kind::Counter, "join = live: cached video frames retimed to just before the live point."),
    Family::new(SRT_JOIN_UNCHANGED_TOTAL, Kind::Counter, "join = live joins sent the GOP cache as it was, by reason (no_video, no_psi, ...)."),
    Family::new(CLUSTER_CLAIMS, Kind::Gauge, "[cluster] stream paths this node holds in the directory (pending ones included)."),
    Family::new(CLUSTER_CLAIMS_TOTAL, Kind::Counter, "[cluster] claims, by result (claimed, taken_over, busy, unreachable, written_late, lost)."),
    Family::new(CLUSTER_CONFLICTS_TOTAL, Kind::Counter, "[cluster] paths found published on two nodes after redis was unreachable (the newer stream stops)."),
    Family::new(CLUSTER_EDGE_PULLS, Kind::Gauge, "[cluster] SRT pulls this node runs from other nodes (one per stream and rendition)."),
    Family::new(CLUSTER_EDGE_PULLS_TOTAL, Kind::Counter, "[cluster] edge pulls, by result (started, ended, failed)."),
    Family::new(CLUSTER_EDGE_PULLS_SERVED_TOTAL, Kind::Counter, "[cluster] pulls other nodes opened on this node, by result (accepted, refused)."),
    Family::new(CLUSTER_REDIS_ERRORS_TOTAL, Kind::Counter, "[cluster] redis calls that failed or timed out, by operation."),
    Family::new(CLUSTER_REDIS_SECONDS, Kind::Histogram, "[cluster] redis call time, by operation (claim, renew, release, lookup, list)."),
    Family::new(CLUSTER_REDIS_UP, Kind::Gauge, "[cluster] 1 while redis answers, 0 after a failed call."),
    Family::new(SRT_LAG_SKIPS_TOTAL, Kind::Counter, "Times an SRT player fell behind and skipped to the newest keyframe."),
    Family::new(SRT_LAG_DISCONNECTS_TOTAL, Kind::Counter, "SRT players closed for staying behind."),
    Family::new(SRT_PROTOCOL_PANICS_TOTAL, Kind::Counter, "Panics caught inside srt-protocol; each dropped one peer."),
    Family::new(SRT_DROPPED_DATAGRAMS_TOTAL, Kind::Counter, "Datagrams on the SRT port ignored before or at parsing, by reason."),
    Family::new(SRT_PUBLISHERS, Kind::Gauge, "Connected SRT publishers."),
    Family::new(SRT_PUBLISHES_TOTAL, Kind::Counter, "SRT publish attempts, by result (accepted, rejected_busy, rejected_limit, rejected_unauthorized, ...)."),
    Family::new(SRT_PUBLISH_BYTES_IN_TOTAL, Kind::Counter, "MPEG-TS payload bytes SRT publishers' connections released to the ingest."),
    Family::new(SRT_PUBLISH_DROPPED_PAYLOADS_TOTAL, Kind::Counter, "SRT payloads dropped because a publisher's ingest task fell a whole queue behind (the TS ingest then drops the damaged frames)."),
    Family::new(SRT_PUBLISH_CONTINUITY_ERRORS_TOTAL, Kind::Counter, "MPEG-TS continuity-counter gaps in what SRT publishers sent (loss SRT could not recover), by stream."),
    Family::new(SRT_PUBLISH_DROPPED_FRAMES_TOTAL, Kind::Counter, "Frames the SRT ingest dropped as damaged or undecodable after a loss, by stream."),
    Family::new(SRT_PUBLISH_TRUNCATED_PES_TOTAL, Kind::Counter, "PES packets from SRT publishers cut short or longer than declared, by stream."),
    Family::new(PROCESS_OPEN_FDS, Kind::Gauge, "Open file descriptors of the sluice process."),
    Family::new(PROCESS_RESIDENT_MEMORY_BYTES, Kind::Gauge, "Resident memory of the sluice process."),
    Family::new(TOKIO_ALIVE_TASKS, Kind::Gauge, "Live tokio tasks in sluice."),
    Family::new(AUTH_REJECTS_TOTAL, Kind::Counter, "Requests refused by authorization, by action (publish) and reason."),
    Family::new(CONFIG_RELOADS_TOTAL, Kind::Counter, "Config reloads (SIGHUP, POST /api/v1/config/reload), by result (ok, invalid, refused, error)."),
    Family::new(TRANSCODE_ENCODER, Kind::Gauge, "Encoder new streams use for each rendition codec: 1 in use, 0 replaced by a re-probe."),
    Family::new(TRANSCODE_ENCODER_FALLBACKS_TOTAL, Kind::Counter, "NVENC not used for a codec: at start (trial failed), by a re-probe, or per stream (session refused)."),
    Family::new(TRANSCODE_FFMPEG_STARTS_TOTAL, Kind::Counter, "FFmpeg processes started."),
    Family::new(TRANSCODE_FFMPEG_RESTARTS_TOTAL, Kind::Counter, "FFmpeg processes restarted within a stream, by reason."),
    Family::new(TRANSCODE_FFMPEG_EXITS_TOTAL, Kind::Counter, "FFmpeg processes ended, by exit code or signal_N."),
    Family::new(TRANSCODE_FFMPEG_RUNNING, Kind::Gauge, "FFmpeg processes running."),
    Family::new(TRANSCODE_FAILURES_TOTAL, Kind::Counter, "Transcode legs failed, by reason (ffmpeg_exited, ffmpeg_stalled, ffmpeg_not_found, ...)."),
    Family::new(TRANSCODE_FIRST_IDR_SECONDS, Kind::Histogram, "From publish accepted to each rendition's first IDR read back from FFmpeg."),
    Family::new(TRANSCODE_INPUT_DROPPED_TOTAL, Kind::Counter, "Frames not given to FFmpeg because it fell a whole queue behind, by stream."),
    Family::new(RTMP_PUSH_INPUT_DROPPED_TOTAL, Kind::Counter, "Frames not given to an RTMP(S) restream because it fell a whole queue behind (it resumes at the next keyframe), by stream."),
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
        .set_buckets_for_metric(
            Matcher::Full(SRT_JOIN_FIRST_DATA_SECONDS.to_string()),
            &[0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
        )
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full(SRT_JOIN_CATCHUP_SECONDS.to_string()),
            &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
        )
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    // Series that dashboards expect from the first scrape, before any event.
    metrics::gauge!(RTMP_CONNECTIONS).set(0.0);
    metrics::gauge!(STREAMS).set(0.0);
    metrics::gauge!(SRT_PLAYERS).set(0.0);
    metrics::gauge!(SRT_PUBLISHERS).set(0.0);
    metrics::counter!(RTMP_CONNECTIONS_TOTAL).absolute(0);
    metrics::counter!(SRT_PLAYERS_TOTAL).absolute(0);
    // Unlabelled counters start at 0 so the first event shows in rate().
    for c in [
        SRT_BYTES_OUT_TOTAL,
        SRT_DATA_PACKETS_TOTAL,
        SRT_RETRANSMITTED_PACKETS_TOTAL,
        SRT_DATAGRAMS_OUT_TOTAL,
        SRT_SEND_CALLS_TOTAL,
        SRT_GOP_CACHE_STARTS_TOTAL,
        SRT_LAG_SKIPS_TOTAL,
        SRT_LAG_DISCONNECTS_TOTAL,
        SRT_PROTOCOL_PANICS_TOTAL,
        SRT_JOIN_CATCHUP_FRAMES_TOTAL,
        SRT_PUBLISH_BYTES_IN_TOTAL,
        SRT_PUBLISH_DROPPED_PAYLOADS_TOTAL,
        RTMPS_CONNECTIONS_TOTAL,
        RTMP_PUSH_BYTES_TOTAL,
    ] {
        metrics::counter!(c).absolute(0);
    }
    metrics::gauge!(TRANSCODE_FFMPEG_RUNNING).set(0.0);
    metrics::counter!(TRANSCODE_FFMPEG_STARTS_TOTAL).absolute(0);
    Ok(handle)
}

/// The Prometheus text exposition: every recorded series, the series of
/// the live `streams`, then `# HELP` and `# TYPE` for each family in
/// [`FAMILIES`] that has no sample yet (a GPU gauge on a machine without a
/// GPU, a counter whose event never happened), which the exposition format
/// allows and scrapers ignore.
pub fn render<'a>(
    handle: &PrometheusHandle,
    streams: impl IntoIterator<Item = &'a StreamSeries>,
) -> String {
    let mut out = handle.render();
    let mut samples = BTreeMap::new();
    for s in streams {
        s.render_into(&mut samples);
    }
    append_families(&mut out, &samples);
    out
}

/// Add `samples` (family → sample lines) to the exposition `out`, and
/// `# HELP`/`# TYPE` for every family `out` does not describe yet.
fn append_families(out: &mut String, samples: &BTreeMap<&'static str, String>) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let present: std::collections::HashSet<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    // A family the recorder also has (none should): its block gets the
    // stream's samples too, so each family stays one group.
    for (name, lines) in samples.iter().filter(|(n, _)| present.contains(**n)) {
        insert_into_block(out, name, lines);
    }
    for f in FAMILIES.iter().filter(|f| !present.contains(f.name)) {
        let _ = write!(
            out,
            "# HELP {} {}\n# TYPE {} {}\n",
            f.name,
            f.help,
            f.name,
            f.kind.as_str()
        );
        if let Some(lines) = samples.get(f.name) {
            out.push_str(lines);
        }
        out.push('\n');
    }
}

/// Insert sample `lines` at the end of `name`'s block in `out`.
fn insert_into_block(out: &mut String, name: &str, lines: &str) {
    let type_line = format!("# TYPE {name} ");
    let Some(start) = out.find(&type_line) else {
        return;
    };
    let mut at = start + out[start..].find('\n').map_or(out.len() - start, |i| i + 1);
    while at < out.len() && !out[at..].starts_with('\n') && !out[at..].starts_with('#') {
        at += out[at..].find('\n').map_or(out.len() - at, |i| i + 1);
    }
    out.insert_str(at, lines);
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
// Series of one stream
// ---------------------------------------------------------------------------

/// The families labelled by `stream`. Their series are not registered in
/// the global recorder, which cannot remove a series: each stream holds its
/// own in a [`StreamSeries`], `/metrics` renders those of the live streams
/// at scrape time, and a stream's series disappear with it.
pub const STREAM_FAMILIES: &[&str] = &[
    INGEST_BYTES_TOTAL,
    INGEST_FRAMES_TOTAL,
    INGEST_TAG_ERRORS_TOTAL,
    TIMESTAMP_JUMPS_TOTAL,
    TS_MUX_ERRORS_TOTAL,
    SRT_PUBLISH_CONTINUITY_ERRORS_TOTAL,
    SRT_PUBLISH_DROPPED_FRAMES_TOTAL,
    SRT_PUBLISH_TRUNCATED_PES_TOTAL,
    TRANSCODE_INPUT_DROPPED_TOTAL,
    RTMP_PUSH_INPUT_DROPPED_TOTAL,
    TRANSCODE_FPS,
    TRANSCODE_SPEED,
    TRANSCODE_FRAMES_DROPPED_TOTAL,
    TRANSCODE_FRAMES_DUPLICATED_TOTAL,
    TRANSCODE_OUTPUT_BYTES_TOTAL,
    TRANSCODE_RENDITION_FPS,
];

/// The labelled series of one stream: plain atomics behind ordinary
/// `metrics` handles, so call sites count as they always did (one atomic
/// add, no allocation) and a handle a leg still holds after the stream
/// ended only counts into memory nobody renders. A path published again
/// gets a new `StreamSeries`: its counters start from 0, which Prometheus
/// reads as a counter reset.
#[derive(Debug)]
pub struct StreamSeries {
    /// `stream="…"`, escaped once.
    stream: String,
    series: Mutex<Vec<Series>>,
}

#[derive(Debug)]
struct Series {
    family: &'static str,
    /// The whole label set as rendered: `stream="live/cam1",track="video"`.
    labels: String,
    kind: Kind,
    /// A counter's value, or a gauge's `f64` bits (`metrics`' own encoding).
    value: Arc<AtomicU64>,
}

impl StreamSeries {
    /// The series of the stream whose path is `stream`.
    pub fn new(stream: &str) -> StreamSeries {
        StreamSeries {
            stream: format!("stream=\"{}\"", escape_label(stream)),
            series: Mutex::new(Vec::new()),
        }
    }

    /// The counter `family{stream="…",labels…}`: the same one for the same
    /// labels, created at 0 on first use.
    pub fn counter(
        &self,
        family: &'static str,
        labels: &[(&'static str, &str)],
    ) -> metrics::Counter {
        metrics::Counter::from_arc(self.value(family, Kind::Counter, labels))
    }

    /// The gauge `family{stream="…",labels…}`, like [`StreamSeries::counter`].
    pub fn gauge(&self, family: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.value(family, Kind::Gauge, labels))
    }

    fn value(
        &self,
        family: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> Arc<AtomicU64> {
        debug_assert!(
            STREAM_FAMILIES.contains(&family),
            "{family} is not in STREAM_FAMILIES"
        );
        let mut rendered = self.stream.clone();
        for (k, v) in labels {
            let _ = write!(rendered, ",{k}=\"{}\"", escape_label(v));
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = series
            .iter()
            .find(|s| s.family == family && s.labels == rendered)
        {
            return s.value.clone();
        }
        // 0 is also the bits of 0.0.
        let value = Arc::new(AtomicU64::new(0));
        series.push(Series {
            family,
            labels: rendered,
            kind,
            value: value.clone(),
        });
        value
    }

    /// Append each series' sample line to its family's lines.
    fn render_into(&self, out: &mut BTreeMap<&'static str, String>) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for s in series.iter() {
            let lines = out.entry(s.family).or_default();
            let v = s.value.load(Ordering::Relaxed);
            let _ = match s.kind {
                Kind::Gauge => writeln!(
                    lines,
                    "{}{{{}}} {}",
                    s.family,
                    s.labels,
                    PromF64(f64::from_bits(v))
                ),
                _ => writeln!(lines, "{}{{{}}} {v}", s.family, s.labels),
            };
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value in the text format's spelling (`+Inf`, `-Inf`, `NaN`).
struct PromF64(f64);

impl std::fmt::Display for PromF64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
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

/// Upkeep ticks (5 s) at least between two trims for freed rings: churn
/// of a few large streams must not make every tick walk the arenas.
const RELEASED_TRIM_EVERY_TICKS: usize = 6;
/// Ticks since the last trim for freed rings (saturating).
static TICKS_SINCE_RELEASED_TRIM: AtomicUsize = AtomicUsize::new(RELEASED_TRIM_EVERY_TICKS);

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
/// Also true once rings holding at least `TRIM_AFTER_RELEASED` bytes
/// were freed, at most once per 30 s (what was freed in between waits).
pub fn burst_closed() -> bool {
    let closed = CLOSED_SINCE_TICK.swap(0, Ordering::Relaxed);
    let (trim, pending) = burst_step(closed, BURST_PENDING.load(Ordering::Relaxed));
    BURST_PENDING.store(pending, Ordering::Relaxed);
    let ticks = TICKS_SINCE_RELEASED_TRIM.load(Ordering::Relaxed);
    let released = RELEASED_SINCE_TICK.load(Ordering::Relaxed);
    let (released_trim, ticks) = released_step(released, ticks);
    if released_trim {
        RELEASED_SINCE_TICK.fetch_sub(released, Ordering::Relaxed);
    }
    TICKS_SINCE_RELEASED_TRIM.store(ticks, Ordering::Relaxed);
    trim || released_trim
}

/// (trim now, ticks since the last such trim) after a tick with
/// `released` bytes freed since the last trim for freed rings.
fn released_step(released: usize, ticks: usize) -> (bool, usize) {
    let ticks = ticks.saturating_add(1);
    if released >= TRIM_AFTER_RELEASED && ticks >= RELEASED_TRIM_EVERY_TICKS {
        (true, 0)
    } else {
        (false, ticks)
    }
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

    /// A JSON log line written in a traced span starts with that span's
    /// ids, one outside any has none, and the active span's
    /// `traceparent` names the same trace and span.
    #[test]
    fn json_lines_and_webhook_headers_carry_the_active_span() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::filter::filter_fn;
        use tracing_subscriber::fmt::format::{self, JsonFields};
        use tracing_subscriber::prelude::*;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Lines::default();
        let writer = out.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let json = format::format()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(TraceIds {
                        inner: json,
                        on: true,
                    })
                    .with_writer(move || writer.clone())
                    .with_filter(filter_fn(|m| m.target() != trace::TARGET)),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_filter(filter_fn(|m| !m.is_span() || m.target() == trace::TARGET)),
            );
        let header = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!(target: trace::TARGET, "publish");
            let _in = span.enter();
            tracing::info!("inside");
            trace::context_headers()
        });
        let (parent, state) = header.expect("a traceparent inside the span");
        assert_eq!(state, None);
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[3]),
            (4, "00", "01"),
            "{parent}"
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["trace_id"], parts[1], "{text}");
        assert_eq!(lines[1]["span_id"], parts[2], "{text}");
        assert!(trace::context_headers().is_none(), "no span, no header");
    }

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
        append_families(&mut out, &BTreeMap::new());
        assert_eq!(out.matches("# TYPE sluice_streams ").count(), 1);
        assert!(out.contains("# TYPE sluice_gpu_encoder_sessions gauge\n"));
        assert!(out.contains("# TYPE sluice_relay_latency_seconds histogram\n"));
        assert!(out.contains("# TYPE sluice_srt_lag_skips_total counter\n"));
        let families = out.matches("# TYPE ").count();
        assert_eq!(families, FAMILIES.len());
    }

    #[test]
    fn stream_series_render_under_their_family_and_end_with_their_stream() {
        let a = StreamSeries::new("live/a");
        let b = StreamSeries::new("live/b\"x");
        a.counter(INGEST_BYTES_TOTAL, &[]).increment(5);
        // The same labels are the same series.
        a.counter(INGEST_BYTES_TOTAL, &[]).increment(2);
        a.counter(INGEST_FRAMES_TOTAL, &[("track", "video")])
            .increment(1);
        a.gauge(TRANSCODE_RENDITION_FPS, &[("rendition", "720p")])
            .set(29.97);
        b.counter(INGEST_BYTES_TOTAL, &[]).absolute(9);
        let mut samples = BTreeMap::new();
        a.render_into(&mut samples);
        b.render_into(&mut samples);
        let mut out = String::new();
        append_families(&mut out, &samples);
        assert!(
            out.contains(
                "# TYPE sluice_ingest_bytes_total counter\n\
             sluice_ingest_bytes_total{stream=\"live/a\"} 7\n\
             sluice_ingest_bytes_total{stream=\"live/b\\\"x\"} 9\n\n"
            ),
            "{out}"
        );
        assert!(out.contains("sluice_ingest_frames_total{stream=\"live/a\",track=\"video\"} 1\n"));
        assert!(out.contains(
            "sluice_transcode_rendition_fps{stream=\"live/a\",rendition=\"720p\"} 29.97\n"
        ));
        assert_eq!(out.matches("# TYPE ").count(), FAMILIES.len());
        // Without the streams, only the families' descriptions remain.
        let mut empty = String::new();
        append_families(&mut empty, &BTreeMap::new());
        assert!(!empty.contains("stream="));
        assert_eq!(empty.lines().count(), out.lines().count() - 4);
    }

    #[test]
    fn a_family_the_recorder_has_gets_the_streams_samples_in_its_block() {
        let mut out = "# HELP sluice_ingest_bytes_total x\n# TYPE sluice_ingest_bytes_total counter\nsluice_ingest_bytes_total{stream=\"old\"} 1\n\n# TYPE sluice_streams gauge\nsluice_streams 1\n\n".to_string();
        let s = StreamSeries::new("live/a");
        s.counter(INGEST_BYTES_TOTAL, &[]).increment(3);
        let mut samples = BTreeMap::new();
        s.render_into(&mut samples);
        append_families(&mut out, &samples);
        assert!(
            out.starts_with(
                "# HELP sluice_ingest_bytes_total x\n# TYPE sluice_ingest_bytes_total counter\n\
             sluice_ingest_bytes_total{stream=\"old\"} 1\n\
             sluice_ingest_bytes_total{stream=\"live/a\"} 3\n\n# TYPE sluice_streams gauge\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("# TYPE sluice_ingest_bytes_total ").count(), 1);
    }

    #[test]
    fn stream_families_are_declared_and_gauge_values_are_spelled_for_prometheus() {
        for name in STREAM_FAMILIES {
            assert!(FAMILIES.iter().any(|f| f.name == *name), "{name}");
        }
        let s = StreamSeries::new("live/a");
        let g = s.gauge(TRANSCODE_SPEED, &[]);
        let text = |s: &StreamSeries| {
            let mut m = BTreeMap::new();
            s.render_into(&mut m);
            m.remove(TRANSCODE_SPEED).unwrap()
        };
        assert_eq!(text(&s), "sluice_transcode_speed{stream=\"live/a\"} 0\n");
        g.set(f64::INFINITY);
        assert!(text(&s).ends_with(" +Inf\n"));
        g.set(f64::NAN);
        assert!(text(&s).ends_with(" NaN\n"));
        g.set(1.5);
        assert!(text(&s).ends_with(" 1.5\n"));
    }

    /// A series labelled by stream in the global recorder would live as
    /// long as the process (issue 12): they go through `StreamSeries`.
    #[test]
    fn no_stream_labelled_series_are_registered_globally() {
        fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, found);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, l) in text.lines().enumerate() {
                        if l.contains(concat!("\"stream\"", " =>")) {
                            found.push(format!("{}:{}: {}", p.display(), i + 1, l.trim()));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "use the stream's StreamSeries instead:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn freed_rings_trim_at_most_once_per_30_s() {
        let big = TRIM_AFTER_RELEASED;
        // The first large release trims at once.
        assert_eq!(released_step(big, RELEASED_TRIM_EVERY_TICKS), (true, 0));
        // More within 30 s waits, then trims.
        let mut ticks = 0;
        for _ in 1..RELEASED_TRIM_EVERY_TICKS {
            let (trim, t) = released_step(big, ticks);
            assert!(!trim);
            ticks = t;
        }
        assert_eq!(released_step(big, ticks), (true, 0));
        // Little freed: never.
        assert!(!released_step(big - 1, usize::MAX).0);
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
