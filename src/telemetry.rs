//! Logging (`tracing` to stderr, text or JSON) and the Prometheus recorder.
//!
//! Metric names are declared here once, with their help text, so `/metrics`
//! documents itself and call sites cannot drift apart on spelling.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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
    metrics::gauge!(TRANSCODE_FFMPEG_RUNNING).set(0.0);
    metrics::counter!(TRANSCODE_FFMPEG_STARTS_TOTAL).absolute(0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(RTMP_CONNECTIONS, "Open RTMP connections.");
    describe_counter!(RTMP_CONNECTIONS_TOTAL, "RTMP connections accepted.");
    describe_counter!(
        RTMP_CONNECTIONS_REJECTED_TOTAL,
        "RTMP(S) connections refused before the RTMP handshake, by reason (max_connections, max_connections_per_ip, tls_handshake)."
    );
    describe_counter!(
        RTMPS_CONNECTIONS_TOTAL,
        "RTMPS connections whose TLS handshake completed."
    );
    describe_counter!(
        RTMP_PUBLISHES_TOTAL,
        "RTMP publish attempts, by result (accepted, rejected_busy, rejected_limit, ...)."
    );
    describe_counter!(
        RTMP_PROTOCOL_ERRORS_TOTAL,
        "RTMP connections closed for a protocol error or limit, by reason."
    );
    describe_counter!(INGEST_BYTES_TOTAL, "Media bytes received, by stream.");
    describe_counter!(
        INGEST_FRAMES_TOTAL,
        "Media frames received, by stream and track."
    );
    describe_counter!(
        INGEST_TAG_ERRORS_TOTAL,
        "Audio/video messages that could not be parsed, by stream."
    );
    describe_counter!(
        TIMESTAMP_JUMPS_TOTAL,
        "Timestamp jumps larger than rtmp.max_timestamp_jump, re-based, by stream and track."
    );
    describe_gauge!(STREAMS, "Live streams.");
    metrics::describe_histogram!(
        STREAM_SETUP_SECONDS,
        "From TCP accept to the first keyframe in the source rendition."
    );
    metrics::describe_histogram!(
        RELAY_LATENCY_SECONDS,
        "RTMP message parsed to its last SRT packet first sent, per live chunk and player."
    );
    describe_counter!(
        STREAM_TEARDOWNS_TOTAL,
        "Streams ended, by cause (unpublished, peer_closed, leg_failed, setup_timeout, taken_over, shutdown, bitrate_limit, ...)."
    );
    describe_counter!(
        STREAM_SETUP_FAILURES_TOTAL,
        "Publishes closed because the stream was not playable within server.setup_timeout, by reason."
    );
    describe_counter!(
        TS_MUX_ERRORS_TOTAL,
        "Frames or codec configs the MPEG-TS muxer refused, by stream."
    );
    describe_gauge!(SRT_PLAYERS, "Connected SRT players.");
    describe_counter!(SRT_PLAYERS_TOTAL, "SRT players accepted.");
    describe_counter!(
        SRT_REJECTS_TOTAL,
        "SRT callers rejected, by the code libsrt reports to them (1404, 10, ...)."
    );
    describe_counter!(
        SRT_BYTES_OUT_TOTAL,
        "MPEG-TS payload bytes sent to SRT players, retransmissions included."
    );
    describe_counter!(
        SRT_GOP_CACHE_STARTS_TOTAL,
        "SRT players whose first data came from the GOP cache."
    );
    describe_counter!(
        SRT_LAG_SKIPS_TOTAL,
        "Times an SRT player fell behind and skipped to the newest keyframe."
    );
    describe_counter!(
        SRT_LAG_DISCONNECTS_TOTAL,
        "SRT players closed for staying behind."
    );
    describe_counter!(
        SRT_PROTOCOL_PANICS_TOTAL,
        "Panics caught inside srt-protocol; each dropped one peer."
    );
    describe_counter!(
        SRT_DROPPED_DATAGRAMS_TOTAL,
        "Datagrams on the SRT port ignored before or at parsing, by reason."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        "Open file descriptors of the sluice process."
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        "Resident memory of the sluice process."
    );
    describe_gauge!(TOKIO_ALIVE_TASKS, "Live tokio tasks in sluice.");
    describe_counter!(
        AUTH_REJECTS_TOTAL,
        "Requests refused by authorization, by action (publish) and reason."
    );
    describe_gauge!(
        TRANSCODE_ENCODER,
        "Encoder chosen at start for each rendition codec (1 for the chosen encoder)."
    );
    describe_counter!(
        TRANSCODE_ENCODER_FALLBACKS_TOTAL,
        "NVENC not used for a codec: at start (trial encode failed) or per stream (session refused)."
    );
    describe_counter!(TRANSCODE_FFMPEG_STARTS_TOTAL, "FFmpeg processes started.");
    describe_counter!(
        TRANSCODE_FFMPEG_RESTARTS_TOTAL,
        "FFmpeg processes restarted within a stream, by reason."
    );
    describe_counter!(
        TRANSCODE_FFMPEG_EXITS_TOTAL,
        "FFmpeg processes ended, by exit code or signal_N."
    );
    describe_gauge!(TRANSCODE_FFMPEG_RUNNING, "FFmpeg processes running.");
    describe_counter!(
        TRANSCODE_FAILURES_TOTAL,
        "Transcode legs failed, by reason (ffmpeg_exited, ffmpeg_stalled, ffmpeg_not_found, ...)."
    );
    metrics::describe_histogram!(
        TRANSCODE_FIRST_IDR_SECONDS,
        "From publish accepted to each rendition's first IDR read back from FFmpeg."
    );
    describe_counter!(
        TRANSCODE_INPUT_DROPPED_TOTAL,
        "Frames not given to FFmpeg because it fell a whole queue behind, by stream."
    );
    describe_gauge!(
        TRANSCODE_FPS,
        "FFmpeg's reported encoding frame rate, by stream."
    );
    describe_gauge!(
        TRANSCODE_SPEED,
        "FFmpeg's reported speed (1 = real time), by stream."
    );
    describe_counter!(
        TRANSCODE_FRAMES_DROPPED_TOTAL,
        "Frames FFmpeg dropped, by stream."
    );
    describe_counter!(
        TRANSCODE_FRAMES_DUPLICATED_TOTAL,
        "Frames FFmpeg duplicated, by stream."
    );
    describe_counter!(
        TRANSCODE_OUTPUT_BYTES_TOTAL,
        "MPEG-TS bytes read from FFmpeg, by stream and rendition."
    );
    describe_gauge!(
        TRANSCODE_RENDITION_FPS,
        "Video frames per second read back from FFmpeg, by stream and rendition."
    );
    crate::gpu::describe();
}
