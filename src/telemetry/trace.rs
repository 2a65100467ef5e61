//! Traces: each stream's lifecycle as OpenTelemetry spans, exported over
//! OTLP/HTTP (protobuf) to a collector, and W3C Trace Context for the
//! webhooks sluice calls.
//!
//! Lifecycle spans are ordinary `tracing` spans with the target
//! [`TARGET`]. Only those reach the OpenTelemetry layer (and warnings from
//! sluice's own code, as span events); the log's filter turns them off, so
//! log lines keep the connection spans they always had as their context
//! (tasks are instrumented with both), and with traces off they are
//! disabled callsites. No span is made per packet or per frame.
//!
//! A span's end is its last exit when it was ever entered (that is how
//! tracing-opentelemetry times spans), else its close; steps are parented
//! through their OpenTelemetry context where a `tracing` parent would
//! keep the parent open (the registry closes a span after its children).
//!
//! Export never blocks the relay: a finished span goes into a bounded
//! queue with `try_send` (a full queue drops it, counted in
//! `sluice_trace_spans_dropped_total{reason="queue_full"}`); one thread of
//! its own takes batches off it and posts them, each post bounded by
//! `telemetry.export_timeout`. The SDK's `BatchSpanProcessor` works the
//! same way but keeps its drop count private, hence [`Export`].

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{self, ConfigError};

/// The `tracing` target of lifecycle spans: what the OpenTelemetry layer
/// exports.
pub const TARGET: &str = "sluice::trace";

/// Spans in one export request at most.
const MAX_BATCH: usize = 512;
/// How long the exit waits for the last spans to go out.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// `[telemetry]`: trace export. Off unless `otlp_endpoint` or the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` environment variables name a
/// collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`);
    /// `/v1/traces` is appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    /// Overrides the environment variables.
    pub otlp_endpoint: Option<String>,
    /// The share of publishes (and player sessions) traced, 0.0–1.0. A
    /// span whose parent was sampled is always kept.
    pub sample_ratio: f64,
    /// Finished spans waiting for export at most; more are dropped and
    /// counted.
    #[serde(deserialize_with = "config::int::<64, 1_048_576, _, _>")]
    pub queue_size: usize,
    /// How often queued spans are sent (sooner when a batch is full).
    #[serde(deserialize_with = "config::duration")]
    pub export_interval: Duration,
    /// One export request's limit; a collector slower than this loses
    /// that batch (counted).
    #[serde(deserialize_with = "config::duration")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            queue_size: 4096,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }
}

impl TelemetryConfig {
    /// Rules across keys; errors name keys relative to `[telemetry]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "sample_ratio",
                format!("{} is out of range; allowed 0.0..=1.0", self.sample_ratio),
            ));
        }
        let ms = Duration::from_millis;
        for (key, v, range, allowed) in [
            (
                "export_interval",
                self.export_interval,
                ms(10)..=ms(60_000),
                "10ms..=60s",
            ),
            (
                "export_timeout",
                self.export_timeout,
                ms(100)..=ms(60_000),
                "100ms..=60s",
            ),
        ] {
            if !range.contains(&v) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{v:?} is out of range; allowed {allowed}"),
                ));
            }
        }
        if let Some(url) = &self.otlp_endpoint {
            traces_url(url).map_err(|why| ConfigError::invalid("otlp_endpoint", why))?;
            if url.trim().starts_with("https://") {
                return Err(ConfigError::invalid(
                    "otlp_endpoint",
                    "only http:// collectors are supported (run the collector next to sluice)",
                ));
            }
        }
        Ok(())
    }

    /// The collector's traces URL: the config key, else the standard
    /// environment variables (`…_TRACES_ENDPOINT` as it is, the general
    /// one with `/v1/traces`); `None`: tracing is off.
    pub fn endpoint(&self) -> Option<String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        if let Some(url) = &self.otlp_endpoint {
            return traces_url(url).ok();
        }
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|u| traces_url(&u).ok()))
    }
}

/// `base` with `/v1/traces` (kept when it ends so already).
fn traces_url(base: &str) -> Result<String, String> {
    let base = base.trim();
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| format!("{base:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("{base:?} names no host"));
    }
    if base.trim_end_matches('/').ends_with("/v1/traces") {
        return Ok(base.to_string());
    }
    Ok(format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// The installed exporter: flush it before the process exits.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Send what is queued (within a few seconds) and stop the exporter.
    pub fn shutdown(self) {
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_LIMIT);
    }
}

/// The OTLP pipeline for `cfg`, or why it cannot start. Call once, before
/// the `tracing` subscriber is installed (its layer comes from here).
pub fn pipeline(cfg: &TelemetryConfig, url: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        if !p.is_empty() && p != "http/protobuf" {
            eprintln!(
                "sluice: OTEL_EXPORTER_OTLP_PROTOCOL={p} ignored: traces go as http/protobuf"
            );
        }
    }
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: only http:// collectors are supported (run the collector next to sluice)"
        ));
    }
    let resource = resource();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(cfg.export_timeout)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    // The exporter runs on its own thread: it gets the resource now (the
    // provider would hand it to a processor that forwards it).
    exporter.set_resource(&resource);
    let processor = Export::start(exporter, cfg).map_err(|e| format!("export thread: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// `service.name` from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`,
/// `sluice` when they do not say; the version and this process.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let has = |k: &'static str| {
        detected
            .get(&opentelemetry::Key::from_static_str(k))
            .is_some()
    };
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    // Ours only where the environment does not say (later values win).
    let mut ours = Vec::new();
    if !named {
        ours.push(KeyValue::new("service.name", "sluice"));
    }
    if !has("service.version") {
        ours.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    if !has("service.instance.id") {
        ours.push(KeyValue::new(
            "service.instance.id",
            format!("{:016x}", rand::random::<u64>()),
        ));
    }
    Resource::builder().with_attributes(ours).build()
}

/// The tracer lifecycle spans go to, for the `tracing` layer.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("sluice")
}

/// Remember the provider so the exit can flush it.
pub fn installed(provider: SdkTracerProvider) -> Tracing {
    let _ = ENABLED.set(true);
    Tracing { provider }
}

static ENABLED: OnceLock<bool> = OnceLock::new();

/// Whether spans are exported (a collector is configured).
pub fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

enum Msg {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(mpsc::Sender<()>),
    /// Export what is queued, answer, and end the thread.
    Stop(mpsc::Sender<()>),
}

/// A span processor with a bounded queue and one export thread; drops and
/// failed exports are counted.
/// Counters are looked up when used: the processor starts before the
/// metrics recorder is installed.
#[derive(Debug)]
struct Export {
    tx: SyncSender<Msg>,
}

impl Export {
    fn start<E: SpanExporter + 'static>(
        exporter: E,
        cfg: &TelemetryConfig,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(cfg.queue_size);
        let interval = cfg.export_interval;
        let limit = cfg.export_timeout;
        std::thread::Builder::new()
            .name("sluice-otlp".into())
            .spawn(move || export_loop(exporter, rx, interval, limit))?;
        Ok(Export { tx })
    }

    /// Ask the thread to flush (or stop) and wait at most `limit`.
    fn ask(&self, msg: fn(mpsc::Sender<()>) -> Msg, limit: Duration) -> OTelSdkResult {
        let (done, wait) = mpsc::channel();
        // A full queue: wait for room, but never past the limit.
        let until = Instant::now() + limit;
        let mut m = msg(done);
        loop {
            match self.tx.try_send(m) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < until => {
                    m = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err(OTelSdkError::Timeout(limit)),
            }
        }
        wait.recv_timeout(until.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(limit))
    }
}

impl SpanProcessor for Export {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let reason = match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            // The export thread is gone (no runtime for it).
            Err(TrySendError::Disconnected(_)) => "export_failed",
        };
        metrics::counter!(super::TRACE_SPANS_DROPPED_TOTAL, "reason" => reason).increment(1);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, SHUTDOWN_LIMIT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Msg::Stop, timeout)
    }
}

/// The export thread: batches of at most [`MAX_BATCH`] every `interval`
/// (at once when full), each post bounded by `limit`.
fn export_loop<E: SpanExporter>(
    exporter: E,
    rx: Receiver<Msg>,
    interval: Duration,
    limit: Duration,
) {
    // The HTTP client runs on tokio; this thread has a runtime of its own
    // so that a slow collector never holds a relay worker.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("sluice: no runtime for the trace exporter; spans are dropped");
        return;
    };
    let mut warn = super::LogLimiter::per_interval();
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut next = Instant::now() + interval;
    let send = |batch: &mut Vec<SpanData>, warn: &mut super::LogLimiter| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::take(batch);
        let result = rt.block_on(async {
            tokio::time::timeout(limit, exporter.export(spans))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(limit)))
        });
        match result {
            Ok(()) => metrics::counter!(super::TRACE_SPANS_EXPORTED_TOTAL).increment(n),
            Err(e) => {
                metrics::counter!(super::TRACE_SPANS_DROPPED_TOTAL, "reason" => "export_failed")
                    .increment(n);
                if let Some(more) = warn.check(Instant::now()) {
                    tracing::warn!(
                        spans = n,
                        error = %e,
                        suppressed = more,
                        "trace export failed; the spans are dropped"
                    );
                }
            }
        }
    };
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                if batch.len() >= MAX_BATCH {
                    send(&mut batch, &mut warn);
                }
            }
            Ok(Msg::Flush(done)) => {
                let stop = drain(&rx, &mut batch, &mut |b| send(b, &mut warn));
                send(&mut batch, &mut warn);
                let _ = done.send(());
                if let Some(stop) = stop {
                    let _ = exporter.shutdown();
                    let _ = stop.send(());
                    return;
                }
            }
            Ok(Msg::Stop(done)) => {
                drain(&rx, &mut batch, &mut |b| send(b, &mut warn));
                send(&mut batch, &mut warn);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch, &mut warn);
                next = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &mut warn);
                return;
            }
        }
    }
}

/// Move the spans queued now into `batch`, sending full batches; a stop
/// asked meanwhile is returned, to answer once the batch went out.
fn drain(
    rx: &Receiver<Msg>,
    batch: &mut Vec<SpanData>,
    send: &mut dyn FnMut(&mut Vec<SpanData>),
) -> Option<mpsc::Sender<()>> {
    let mut stop = None;
    while let Ok(m) = rx.try_recv() {
        match m {
            Msg::Span(s) => {
                batch.push(*s);
                if batch.len() >= MAX_BATCH {
                    send(batch);
                }
            }
            // Answered once this flush is done.
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Stop(done) => stop = Some(done),
        }
    }
    stop
}

/// The active span's context, when there is one.
fn active() -> Option<SpanContext> {
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The W3C `traceparent` (and `tracestate`, when not empty) of the active
/// span, for an outgoing HTTP request; `None` without one.
pub fn context_headers() -> Option<(String, Option<String>)> {
    let sc = active()?;
    let parent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let state = sc.trace_state().header();
    Some((parent, (!state.is_empty()).then_some(state)))
}

/// The active span's trace and span ids (hex), for log lines.
pub fn active_ids() -> Option<(String, String)> {
    active().map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Run `fut` as the step `span`: the span's context is current while it
/// runs (an HTTP request made in it carries its `traceparent`), and its
/// result is the span's status (`why`: an error's text). The span is
/// never entered: a future dropped unfinished (an aborted task) would
/// enter it once more, and its end would move to that moment.
pub async fn run_step<T, E>(
    span: &Span,
    fut: impl std::future::Future<Output = Result<T, E>>,
    why: impl FnOnce(&E) -> String,
) -> Result<T, E> {
    use opentelemetry::trace::FutureExt as _;
    let answer = fut.with_context(span.context()).await;
    match &answer {
        Ok(_) => ok(span),
        Err(e) => fail(span, why(e)),
    }
    answer
}

/// Mark `span` failed with `why` (its status description).
pub fn fail(span: &Span, why: impl Into<String>) {
    span.set_status(Status::error(why.into()));
}

/// Mark `span` as succeeded.
pub fn ok(span: &Span) {
    span.set_status(Status::Ok);
}

/// The span context of `span`, to link another trace to it.
pub fn span_context(span: &Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// A player session's trace (`srt_play`): a root of its own, linked to
/// its stream's publish trace when there is one.
pub fn player_span(
    stream: &str,
    rendition: &str,
    peer: std::net::SocketAddr,
    join: &'static str,
    worker: usize,
    link: Option<SpanContext>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "srt_play",
        stream,
        rendition,
        peer = %peer,
        join,
        worker = worker as i64,
        reason = tracing::field::Empty,
        seconds = tracing::field::Empty,
        bytes_out = tracing::field::Empty,
    );
    if let Some(cx) = link.filter(SpanContext::is_valid) {
        span.add_link(cx);
    }
    span
}

/// A player session ended (`failure`: why, when it was one).
pub fn player_ended(
    span: &Span,
    reason: &str,
    failure: Option<&str>,
    lasted: Duration,
    bytes_out: u64,
) {
    span.record("reason", reason);
    span.record("seconds", lasted.as_secs_f64());
    span.record("bytes_out", bytes_out as i64);
    match failure {
        Some(why) => fail(span, why),
        None => ok(span),
    }
}

/// One publish's trace: the root (`publish`, the whole publish) and its
/// `setup` child (first bytes → playable or failed), and the ingest's
/// connection span that log lines show as their context. Cloning shares
/// the spans.
#[derive(Debug, Clone)]
pub struct PublishTrace {
    pub root: Span,
    pub setup: Span,
    /// The ingest connection's `tracing` span (not exported): tasks of
    /// the publish are instrumented with it too, so their log lines keep
    /// it (`peer`, `stream`) as their context.
    pub conn: Span,
}

impl PublishTrace {
    /// A new trace for a publish by `peer` over `protocol` (`rtmp`, `srt`),
    /// on the connection whose log span is `conn`; the stream path is
    /// recorded once known.
    pub fn start(protocol: &'static str, peer: &str, conn: Span) -> PublishTrace {
        let root = tracing::info_span!(
            target: TARGET,
            parent: None,
            "publish",
            protocol,
            peer,
            stream = tracing::field::Empty,
            cause = tracing::field::Empty,
        );
        let setup = tracing::info_span!(target: TARGET, parent: &root, "setup", setup_ms = tracing::field::Empty);
        PublishTrace { root, setup, conn }
    }

    /// No trace (the stream group's tests, tools).
    pub fn none() -> PublishTrace {
        PublishTrace {
            root: Span::none(),
            setup: Span::none(),
            conn: Span::none(),
        }
    }

    pub fn set_stream(&self, path: &dyn std::fmt::Display) {
        self.root.record("stream", tracing::field::display(path));
    }

    /// A step of the setup (`handshake`, `auth`, `cluster_check`): a child
    /// of the setup span that does not keep it open.
    pub fn step(&self, name: Step) -> Span {
        step(&self.setup.context(), name)
    }

    /// The setup span's context, for steps made elsewhere ([`step`]).
    pub fn setup_context(&self) -> opentelemetry::Context {
        self.setup.context()
    }

    /// The ingest ended before a stream group took the trace over: a
    /// refusal (`failed`), or a connection that closed or timed out first.
    /// Its spans end now, the root last.
    pub fn not_published(self, cause: &str, why: &str, failed: bool) {
        if failed {
            fail(&self.setup, why);
            fail(&self.root, why);
        }
        self.root.record("cause", cause);
        drop(self.setup);
        // Entered spans end at their last exit: this one is now.
        self.root.in_scope(|| {});
    }
}

/// A setup step under the setup span whose context is `setup`.
pub fn step(setup: &opentelemetry::Context, name: Step) -> Span {
    let span = match name {
        Step::Handshake => tracing::info_span!(target: TARGET, parent: None, "handshake"),
        Step::Auth => tracing::info_span!(
            target: TARGET,
            parent: None,
            "auth",
            method = tracing::field::Empty
        ),
        Step::ClusterCheck => tracing::info_span!(target: TARGET, parent: None, "cluster_check"),
    };
    let _ = span.set_parent(setup.clone());
    span
}

/// The steps of a setup that ingests trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Handshake,
    Auth,
    ClusterCheck,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("http:///v1").is_err());
    }

    #[test]
    fn the_section_is_checked() {
        let c: TelemetryConfig = config::section_from_toml(
            "telemetry",
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.25\nexport_interval = \"200ms\"",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(
            c.endpoint().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let bad = |text: &str| {
            let c: TelemetryConfig = config::section_from_toml("telemetry", text).unwrap();
            c.validate()
                .map_err(|e| e.under("telemetry"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("sample_ratio = 1.5").contains("telemetry.sample_ratio"));
        assert!(bad("otlp_endpoint = \"collector\"").contains("telemetry.otlp_endpoint"));
        assert!(bad("export_timeout = \"1ms\"").contains("telemetry.export_timeout"));
        let e = config::section_from_toml::<TelemetryConfig>("telemetry", "queue_size = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("telemetry.queue_size"), "{e}");
    }
}
