//! The HTTP side: `/healthz`, `/readyz`, `/metrics` and the JSON API.
//!
//! Health bodies are JSON only; `/readyz` turns 503 the moment the server
//! starts draining so load balancers stop sending publishers here. Who may
//! use the API is decided once, in front of every route ([`access`]):
//! with `[server] api_token` every request but the three open paths needs
//! the bearer token; without one, only loopback clients may change anything.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Live;
use crate::gpu::Gpus;
use crate::record::RootsFn;
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
    /// What a re-probe decides with (replaced by a config reload).
    pub encoder_inputs: Arc<Live<EncoderInputs>>,
    /// `[server] api_token`: what every request but [`OPEN_PATHS`] must
    /// present; `None` leaves reads open and changes to loopback clients.
    /// A config reload replaces it.
    pub api_token: Arc<Live<Option<ApiToken>>>,
    /// Re-reads the config file (`POST /api/v1/config/reload`).
    pub reload: Arc<dyn Reload>,
    /// The record directories of the applications that record, as
    /// configured now (`GET /api/v1/recordings`).
    pub record_roots: RootsFn,
    /// `[cluster]`: the directory (`/readyz`, `?scope=cluster`) and this
    /// node's edge streams.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub edges: Option<Arc<crate::cluster::edge::Edges>>,
}

/// `[transcode]` and the codecs the configured renditions use.
#[derive(Debug, Clone)]
pub struct EncoderInputs {
    pub transcode: TranscodeConfig,
    pub codecs: Vec<VideoCodec>,
}

/// The server's config reload, as the API triggers it.
pub trait Reload: Send + Sync {
    /// Re-read the config file; `trigger` names who asked, for the log.
    fn reload(&self, trigger: &'static str) -> BoxFuture<'_, ReloadOutcome>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a config reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// In force for whatever starts from now on; `changed` names the
    /// sections that differ (`rtmp`, `apps.live`), never their values.
    Reloaded { changed: Vec<String> },
    /// The file does not load (a TOML error or a bad value, named by its
    /// key): the old configuration stays.
    Invalid(String),
    /// The file loads but cannot be applied live (a key only a restart
    /// changes, an encoder that does not work): the old one stays.
    Refused(String),
    /// There is nothing to reload: started without `--config`.
    NoFile,
}

impl ReloadOutcome {
    /// The `result` label of `sluice_config_reloads_total` and the API's.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadOutcome::Reloaded { .. } => "ok",
            ReloadOutcome::Invalid(_) => "invalid",
            ReloadOutcome::Refused(_) => "refused",
            ReloadOutcome::NoFile => "error",
        }
    }

    /// What went wrong, for the log and the API; `None` when reloaded.
    pub fn error(&self) -> Option<String> {
        match self {
            ReloadOutcome::Reloaded { .. } => None,
            ReloadOutcome::Invalid(e) => Some(format!("{e}; the running configuration is kept")),
            ReloadOutcome::Refused(e) => Some(format!("{e}; the running configuration is kept")),
            ReloadOutcome::NoFile => {
                Some("sluice was started without --config: there is no file to reload".to_string())
            }
        }
    }
}

/// The router. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: without the
/// peer address every change is refused when no token is set.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/streams/{app}/{key}", get(one_stream))
        .route("/api/v1/recordings", get(recordings))
        .route("/api/v1/gpus", get(gpus))
        .route("/api/v1/encoders", get(encoders))
        .route("/api/v1/encoders/probe", post(reprobe))
        .route("/api/v1/config/reload", post(reload))
        .fallback(not_found)
        // Around the fallback too: unknown paths tell a caller without the
        // token nothing about which exist.
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Answered to anyone: liveness and readiness probes and Prometheus
/// scrapers carry no credentials.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The bearer token of the HTTP API (`[server] api_token`). Only its
/// SHA-256 digest is kept, and a presented token is compared digest to
/// digest in constant time, so neither where a guess differs nor its
/// length shows in the time taken. Debug output never shows it.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// The shortest token accepted: 16 characters leave no room for guessing
/// even without a rate limit.
pub const API_TOKEN_MIN_LEN: usize = 16;

impl ApiToken {
    /// A token of at least [`API_TOKEN_MIN_LEN`] visible ASCII characters
    /// (it travels in an HTTP header). The error never repeats the token.
    pub fn new(token: &str) -> Result<ApiToken, String> {
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "a token is visible ASCII without spaces (it is sent as `Authorization: Bearer TOKEN`)"
                    .into(),
            );
        }
        if token.len() < API_TOKEN_MIN_LEN {
            return Err(format!(
                "a token must be at least {API_TOKEN_MIN_LEN} characters, not {} (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        Ok(ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token.
    pub fn verify(&self, presented: &[u8]) -> bool {
        ct_eq(&self.digest, &Sha256::digest(presented).into())
    }
}

/// In a config file the token is a string, checked by [`ApiToken::new`].
impl<'de> serde::Deserialize<'de> for ApiToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        ApiToken::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Equal, in a time that does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The credentials of `Authorization: Bearer TOKEN` (RFC 6750 2.1); the
/// scheme is case-insensitive (RFC 7235 2.1). `None` for another scheme.
fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let space = authorization.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = authorization.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// What [`access`] decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allow,
    /// A token is set and the request carries no bearer credentials.
    MissingToken,
    /// A token is set and the request carries another.
    BadToken,
    /// No token is set and a client other than loopback asks for a change.
    NotLoopback,
}

impl Access {
    /// The `reason` label of `sluice_auth_rejects_total{action="api"}`.
    pub fn reason(self) -> &'static str {
        match self {
            Access::Allow => "allow",
            Access::MissingToken => "missing_token",
            Access::BadToken => "bad_token",
            Access::NotLoopback => "not_loopback",
        }
    }
}

/// Who may do what over HTTP. [`OPEN_PATHS`] are open to all. With a token
/// every other request needs `Authorization: Bearer TOKEN`. Without one,
/// GET and HEAD stay open (the API as it always was) and anything else is
/// answered only for a loopback `peer`; an unknown peer counts as remote.
pub fn access(
    token: Option<&ApiToken>,
    method: &Method,
    path: &str,
    authorization: Option<&HeaderValue>,
    peer: Option<IpAddr>,
) -> Access {
    if OPEN_PATHS.contains(&path) {
        return Access::Allow;
    }
    match token {
        Some(token) => match authorization.and_then(|v| bearer(v.as_bytes())) {
            None => Access::MissingToken,
            Some(presented) if token.verify(presented) => Access::Allow,
            Some(_) => Access::BadToken,
        },
        None if method == Method::GET || method == Method::HEAD => Access::Allow,
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
        None if peer.is_some_and(|ip| ip.to_canonical().is_loopback()) => Access::Allow,
        None => Access::NotLoopback,
    }
}

/// [`access`] in front of every route; refusals are counted, never logged
/// with what the client sent.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = s.api_token.get();
    let decision = access(
        token.as_ref().as_ref(),
        req.method(),
        req.uri().path(),
        req.headers().get(header::AUTHORIZATION),
        peer,
    );
    if decision == Access::Allow {
        return next.run(req).await;
    }
    metrics::counter!(crate::telemetry::AUTH_REJECTS_TOTAL, "action" => "api", "reason" => decision.reason())
        .increment(1);
    tracing::debug!(peer = ?peer, reason = decision.reason(), method = %req.method(), "api request refused");
    let challenge = |value: &'static str| [(header::WWW_AUTHENTICATE, value)];
    match decision {
        Access::MissingToken => (
            challenge(r#"Bearer realm="sluice""#),
            error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs `Authorization: Bearer TOKEN` with the token of server.api_token",
            ),
        )
            .into_response(),
        Access::BadToken => (
            challenge(r#"Bearer realm="sluice", error="invalid_token""#),
            error(StatusCode::UNAUTHORIZED, "the bearer token is not valid"),
        )
            .into_response(),
        _ => error(
            StatusCode::FORBIDDEN,
            &format!(
                "{} requests are answered only for loopback clients while server.api_token is not set; \
                 set server.api_token and send `Authorization: Bearer TOKEN`",
                req.method()
            ),
        ),
    }
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
    // Redis trouble shows here and never fails readiness: streams go on
    // node-locally without it.
    if let Some(c) = &s.cluster {
        body["cluster"] = json!(c.state());
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
    let inputs = s.encoder_inputs.get();
    let result =
        crate::transcode::choose_encoders(&inputs.transcode, &inputs.codecs, &s.gpus).await;
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

/// Re-read the config file for whatever starts from now on (as SIGHUP
/// does): 200 with the sections that changed, 400 for a file that does not
/// load, 409 for a change only a restart applies or without a file; the
/// running configuration stays unless the answer is 200.
async fn reload(State(s): State<AppState>) -> Response {
    let outcome = s.reload.reload("api").await;
    let code = match &outcome {
        ReloadOutcome::Reloaded { .. } => StatusCode::OK,
        ReloadOutcome::Invalid(_) => StatusCode::BAD_REQUEST,
        ReloadOutcome::Refused(_) | ReloadOutcome::NoFile => StatusCode::CONFLICT,
    };
    let mut body = json!({"result": outcome.result()});
    match &outcome {
        ReloadOutcome::Reloaded { changed } => body["changed"] = json!(changed),
        _ => body["error"] = json!(outcome.error()),
    }
    (code, Json(body)).into_response()
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

/// `?scope=cluster` of `GET /api/v1/streams`.
#[derive(Debug, serde::Deserialize)]
struct StreamsQuery {
    scope: Option<String>,
}

async fn streams(State(s): State<AppState>, Query(q): Query<StreamsQuery>) -> Response {
    match q.scope.as_deref() {
        None | Some("node") => local_streams(&s).into_response(),
        Some("cluster") => cluster_streams(&s).await,
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            &format!(
                "scope={} is not a scope: use node or cluster",
                crate::auth::redact(other)
            ),
        ),
    }
}

/// Every node's streams from the directory: path, node, since.
async fn cluster_streams(s: &AppState) -> Response {
    let Some(c) = &s.cluster else {
        return error(
            StatusCode::NOT_FOUND,
            "this node is not in a cluster (no [cluster] section)",
        );
    };
    match c.list().await {
        Ok(claims) => Json(Value::Array(
            claims
                .into_iter()
                .map(|(path, o)| {
                    json!({
                        "path": path,
                        "node": o.node,
                        "srt": o.srt,
                        "since": o.since_ms / 1000,
                        "since_ms": o.since_ms,
                        "renditions": o.renditions,
                    })
                })
                .collect(),
        ))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

fn local_streams(s: &AppState) -> Json<Value> {
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

/// `?app=`, `?key=` and `?limit=` of `GET /api/v1/recordings`.
#[derive(Debug, serde::Deserialize)]
struct RecordingsQuery {
    app: Option<String>,
    key: Option<String>,
    limit: Option<usize>,
}

/// Every recorded segment of the applications that record (optionally of
/// one application and/or key); the walk runs off the async workers.
async fn recordings(State(s): State<AppState>, Query(q): Query<RecordingsQuery>) -> Response {
    let roots = (s.record_roots)();
    use crate::record::list::{DEFAULT_LIMIT, MAX_LIMIT};
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let walk = move || crate::record::list::list(&roots, q.app.as_deref(), q.key.as_deref(), limit);
    match tokio::task::spawn_blocking(walk).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("listing recordings failed: {e}"),
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
        "publisher": {"peer": st.peer, "encoder": meta.encoder, "protocol": st.protocol.get()},
        "origin_node": st.origin_node.get(),
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
        "legs": st.legs().iter().map(|l| describe_leg(l, now)).collect::<Vec<_>>(),
    })
}

/// One leg: what and where, its state, retries and last error.
fn describe_leg(l: &crate::stream::LegView, now: Instant) -> Value {
    let retry_in = match l.status.state {
        crate::stream::group::LegState::Retrying { at } => {
            Some(at.saturating_duration_since(now).as_millis() as u64)
        }
        _ => None,
    };
    json!({
        "kind": l.kind,
        "target": l.target,
        "required": l.required,
        "state": l.status.state.as_str(),
        "retries": l.status.retries,
        "last_error": l.status.last_error,
        "retry_in_ms": retry_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    fn token() -> ApiToken {
        ApiToken::new(TOKEN).unwrap()
    }

    #[test]
    fn ct_eq_is_equality_wherever_the_inputs_differ() {
        let a = [7u8; 32];
        assert!(ct_eq(&a, &a.clone()));
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut b = a;
                b[i] ^= bit;
                assert!(!ct_eq(&a, &b), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn a_token_verifies_itself_only() {
        let t = token();
        assert!(t.verify(TOKEN.as_bytes()));
        for other in [
            "",
            "0",
            &TOKEN[..TOKEN.len() - 1],
            &format!("{TOKEN}x"),
            &format!("{TOKEN} "),
            &TOKEN.to_uppercase(),
            "1123456789abcdef-token",
            "0123456789abcdef-tokeN",
        ] {
            assert!(!t.verify(other.as_bytes()), "{other:?}");
        }
    }

    #[test]
    fn tokens_are_long_visible_ascii_and_never_shown() {
        assert!(ApiToken::new("0123456789abcdef").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("0123456789abcde", "at least 16"),
            ("0123456789 abcdef", "spaces"),
            ("0123456789abcdef\n", "spaces"),
            ("0123456789abcdéf0", "spaces"),
        ] {
            let e = ApiToken::new(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            if !bad.is_empty() {
                assert!(!e.contains(bad), "the error repeats the token: {e}");
            }
        }
        assert_eq!(format!("{:?}", token()), "ApiToken(..)");
        assert_eq!(format!("{:?}", Some(token())), "Some(ApiToken(..))");
    }

    #[test]
    fn bearer_credentials_are_read_per_rfc_6750() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER   abc  "), Some(&b"abc"[..]));
        for none in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer    ",
            b"Basic abc",
            b"Bearerabc",
            b"abc",
            b"",
            b" Bearer abc",
        ] {
            assert_eq!(bearer(none), None, "{:?}", String::from_utf8_lossy(none));
        }
    }

    fn decide(
        token: Option<&ApiToken>,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        peer: Option<&str>,
    ) -> Access {
        let auth = authorization.map(|a| HeaderValue::from_str(a).unwrap());
        let peer = peer.map(|p| p.parse::<IpAddr>().unwrap());
        access(token, &method, path, auth.as_ref(), peer)
    }

    #[test]
    fn with_a_token_everything_but_the_open_paths_needs_it() {
        let t = token();
        let t = Some(&t);
        let right = format!("Bearer {TOKEN}");
        for path in OPEN_PATHS {
            for method in [Method::GET, Method::HEAD, Method::POST] {
                assert_eq!(
                    decide(t, method, path, None, Some("203.0.113.9")),
                    Access::Allow
                );
            }
        }
        for path in [
            "/api/v1/streams",
            "/api/v1/encoders/probe",
            "/api/v1/nope",
            "/nope",
            "/healthz/extra",
            "/metrics/",
            "//healthz",
        ] {
            for method in [Method::GET, Method::HEAD, Method::POST, Method::DELETE] {
                for peer in [None, Some("127.0.0.1"), Some("::1"), Some("203.0.113.9")] {
                    let d = |auth: Option<&str>| decide(t, method.clone(), path, auth, peer);
                    assert_eq!(d(None), Access::MissingToken, "{method} {path} {peer:?}");
                    assert_eq!(d(Some(&format!("Basic {TOKEN}"))), Access::MissingToken);
                    assert_eq!(d(Some(TOKEN)), Access::MissingToken);
                    assert_eq!(d(Some("Bearer wrong")), Access::BadToken);
                    assert_eq!(d(Some(&format!("Bearer {TOKEN}x"))), Access::BadToken);
                    assert_eq!(d(Some(&right)), Access::Allow, "{method} {path} {peer:?}");
                }
            }
        }
    }

    #[test]
    fn without_a_token_reads_are_open_and_changes_loopback_only() {
        let loopback = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"];
        let remote = [
            "192.0.2.2",
            "10.0.0.5",
            "0.0.0.0",
            "::",
            "::ffff:192.0.2.2",
            "fd00::2",
        ];
        for path in ["/api/v1/streams", "/api/v1/encoders/probe", "/nope"] {
            for peer in loopback.iter().chain(&remote) {
                for method in [Method::GET, Method::HEAD] {
                    assert_eq!(decide(None, method, path, None, Some(peer)), Access::Allow);
                }
            }
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                for peer in loopback {
                    assert_eq!(
                        decide(None, method.clone(), path, None, Some(peer)),
                        Access::Allow,
                        "{method} {path} from {peer}"
                    );
                }
                for peer in remote {
                    assert_eq!(
                        decide(None, method.clone(), path, None, Some(peer)),
                        Access::NotLoopback,
                        "{method} {path} from {peer}"
                    );
                }
                // A bearer header changes nothing, and an unknown peer is remote.
                assert_eq!(
                    decide(
                        None,
                        method.clone(),
                        path,
                        Some("Bearer x"),
                        Some("192.0.2.2")
                    ),
                    Access::NotLoopback
                );
                assert_eq!(
                    decide(None, method.clone(), path, None, None),
                    Access::NotLoopback
                );
            }
        }
        for path in OPEN_PATHS {
            assert_eq!(
                decide(None, Method::POST, path, None, Some("192.0.2.2")),
                Access::Allow
            );
        }
    }
}
