//! The HTTP side: `/healthz`, `/readyz`, `/metrics` and the JSON API.
//!
//! Health bodies are JSON only; `/readyz` turns 503 the moment the server
//! starts draining so load balancers stop sending publishers here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use crate::gpu::Gpus;
use crate::stream::{Registry, Stream, StreamPath};
use crate::transcode::config::{TranscodeConfig, VideoCodec};
use crate::transcode::EncoderState;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: PrometheusHandle,
    /// All listeners are bound.
    pub ready: Arc<AtomicBool>,
    /// Rendition encoders in force (shown by `/readyz`, re-probed by
    /// `POST /api/v1/encoders/probe`).
    pub encoders: Arc<EncoderState>,
    pub gpus: Arc<Gpus>,
    /// What a re-probe decides with: `[transcode]` and the codecs the
    /// configured renditions use.
    pub transcode: TranscodeConfig,
    pub codecs: Vec<VideoCodec>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/streams/{app}/{key}", get(one_stream))
        .route("/api/v1/gpus", get(gpus))
        .route("/api/v1/encoders", get(encoders))
        .route("/api/v1/encoders/probe", post(reprobe))
        .fallback(not_found)
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "timestamp": unix_now()}))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let (code, status, reason) = if s.registry.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            Some("server is shutting down"),
        )
    } else if !s.ready.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            Some("listeners are not bound yet"),
        )
    } else {
        (StatusCode::OK, "ok", None)
    };
    let mut body =
        json!({"status": status, "timestamp": unix_now(), "encoders": &*s.encoders.get()});
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    (code, Json(body)).into_response()
}

/// The rendition encoders new streams get, and why.
async fn encoders(State(s): State<AppState>) -> Json<Value> {
    Json(json!(&*s.encoders.get()))
}

/// Run the GPU trials again and use the result for streams that start from
/// now on (e.g. after NVENC sessions were freed, or NVENC stopped working).
/// One at a time: a request during a probe gets 409 at once. 409 also when
/// `transcode.encoder = "nvenc"` and NVENC no longer works: the previous
/// choice stays.
async fn reprobe(State(s): State<AppState>) -> Response {
    if s.registry.is_draining() {
        let body = json!({"error": "server is shutting down"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let Some(_one) = s.encoders.try_probe() else {
        let body = json!({"error": "a re-probe is already running; try again when it is done"});
        return (StatusCode::CONFLICT, Json(body)).into_response();
    };
    let started = std::time::Instant::now();
    let result = crate::transcode::choose_encoders(&s.transcode, &s.codecs, &s.gpus).await;
    let took_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(enc) => {
            let changed = s
                .encoders
                .replace(enc, crate::transcode::nvenc_sessions_in_use());
            let body =
                json!({"changed": changed, "took_ms": took_ms, "encoders": &*s.encoders.get()});
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "re-probe refused; keeping the current encoders");
            let body = json!({"error": e, "took_ms": took_ms, "encoders": &*s.encoders.get()});
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
    }
}

/// NVML inventory, read fresh (NVML calls block briefly).
async fn gpus(State(s): State<AppState>) -> Response {
    let g = s.gpus.clone();
    match tokio::task::spawn_blocking(move || g.inventory()).await {
        Ok(inv) => Json(inv).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("inventory failed: {e}"),
        ),
    }
}

/// Process gauges read at scrape time: open file descriptors, resident
/// memory and live tokio tasks (what the leak tests compare).
fn process_gauges() {
    use crate::telemetry as t;
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(t::PROCESS_OPEN_FDS).set(dir.count() as f64);
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metrics::gauge!(t::PROCESS_RESIDENT_MEMORY_BYTES).set(kib * 1024.0);
        }
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    metrics::gauge!(t::TOKIO_ALIVE_TASKS).set(tasks as f64);
}

/// The recorder's series, then those of the live streams (each stream
/// owns its series, so they end with it).
async fn metrics(State(s): State<AppState>) -> Response {
    process_gauges();
    s.metrics.run_upkeep();
    let live = s.registry.list();
    let body = crate::telemetry::render(&s.metrics, live.iter().map(|st| &st.series));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn streams(State(s): State<AppState>) -> Json<Value> {
    let now = Instant::now();
    Json(Value::Array(
        s.registry
            .list()
            .iter()
            .map(|st| describe(st, now))
            .collect(),
    ))
}

async fn one_stream(
    State(s): State<AppState>,
    Path((app, key)): Path<(String, String)>,
) -> Response {
    let found = StreamPath::from_rtmp(&app, &key)
        .ok()
        .and_then(|p| s.registry.get(&p));
    match found {
        Some(st) => Json(describe(&st, Instant::now())).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no live stream {app}/{key}"),
        ),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/v1/streams",
    )
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({"error": message}))).into_response()
}

/// One stream as the API shows it.
pub fn describe(st: &Stream, now: Instant) -> Value {
    let meta = st.metadata().unwrap_or_default();
    let snap = st.stats();
    let stats = &snap.stats;
    let bitrate = snap.bitrate_at(now);
    let has_video = stats.video_codec.is_some();
    let width = stats
        .video
        .as_ref()
        .map(|v| v.width as f64)
        .or(meta.width.filter(|_| has_video));
    let height = stats
        .video
        .as_ref()
        .map(|v| v.height as f64)
        .or(meta.height.filter(|_| has_video));
    let fps = snap.fps.or(meta.framerate.filter(|_| has_video));
    json!({
        "path": st.path.to_string(),
        "app": st.path.app,
        "key": st.path.key,
        "state": "live",
        "uptime_seconds": (now.duration_since(st.started).as_secs_f64() * 10.0).round() / 10.0,
        "publisher": {"peer": st.peer, "encoder": meta.encoder},
        "codecs": {
            "video": stats.video_codec.map(|c| c.name()),
            "audio": stats.audio_codec.map(|c| c.name()),
        },
        "width": width.map(|w| w as u64),
        "height": height.map(|h| h as u64),
        "fps": fps.map(|f| (f * 100.0).round() / 100.0),
        "video": stats.video.as_ref().map(|v| json!({"profile": v.profile, "level": v.level})),
        "audio": stats.audio.as_ref().map(|a| json!({"sample_rate": a.sample_rate, "channels": a.channels})),
        "ingest_bitrate_bps": bitrate,
        "frames_in": {"video": stats.frames_video, "audio": stats.frames_audio},
        "keyframes_in": stats.keyframes,
        "bytes_in": stats.bytes_in,
        "timestamp_jumps": stats.timestamp_jumps,
        "renditions": st.renditions.iter().map(|r| {
            let rs = r.ring.stats();
            let mut v = json!({"name": r.name, "players": rs.players, "cached_bytes": rs.bytes});
            match r.info() {
                Some(i) => {
                    v["encoder"] = json!(i.encoder);
                    v["codec"] = json!(i.codec);
                    v["width"] = json!(i.width);
                    v["height"] = json!(i.height);
                    v["fps"] = json!(i.fps);
                    v["bitrate_bps"] = json!(i.bitrate_bps);
                }
                None => {
                    // The source rendition is the publisher's stream, remuxed.
                    v["encoder"] = json!("copy");
                    v["codec"] = json!(stats.video_codec.map(|c| c.name()));
                    v["width"] = json!(width.map(|w| w as u64));
                    v["height"] = json!(height.map(|h| h as u64));
                    v["fps"] = json!(fps.map(|f| (f * 100.0).round() / 100.0));
                    v["bitrate_bps"] = json!(bitrate);
                }
            }
            v
        }).collect::<Vec<_>>(),
    })
}
