//! A real OTLP/HTTP trace receiver on loopback for the tracing tests: sluice
//! exports to it (`POST /v1/traces`, protobuf, keep-alive connections) and
//! the test reads back every span, flattened into a [`RecvSpan`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

use super::webhook::{read_http_request, HttpRequest};

/// One span as the receiver got it, flattened out of its export request.
#[derive(Debug, Clone)]
pub struct RecvSpan {
    /// Lowercase hex, 32 characters.
    pub trace_id: String,
    /// Lowercase hex, 16 characters.
    pub span_id: String,
    /// Lowercase hex; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// Values as text: strings as they are, numbers and booleans printed.
    pub attributes: BTreeMap<String, String>,
    /// The linked spans, as (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
    /// Event names, in order.
    pub events: Vec<String>,
    /// The attributes of the resource that exported it (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
}

impl RecvSpan {
    /// The attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// From start to end (zero if the end is before the start).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
}

/// An OTLP/HTTP trace receiver on a loopback port, serving on its own
/// threads until dropped. Point an exporter at [`OtlpReceiver::endpoint`].
pub struct OtlpReceiver {
    port: u16,
    state: Arc<Mutex<State>>,
    stopped: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    spans: Vec<RecvSpan>,
    /// Export requests decoded and answered 200.
    requests: usize,
    /// Every request answered otherwise, and why: for failure messages.
    rejected: Vec<String>,
    /// The open connections by number, shut down when the receiver drops.
    conns: BTreeMap<u64, TcpStream>,
}

impl OtlpReceiver {
    /// Binds 127.0.0.1 on a free port and serves on background threads.
    pub fn start() -> OtlpReceiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver on loopback");
        let port = l.local_addr().expect("the OTLP receiver's address").port();
        let state: Arc<Mutex<State>> = Default::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let (st, stop) = (state.clone(), stopped.clone());
        std::thread::Builder::new()
            .name("otlp-accept".into())
            .spawn(move || accept_loop(l, st, stop))
            .expect("spawn the OTLP receiver");
        OtlpReceiver {
            port,
            state,
            stopped,
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`: exporters add `/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<RecvSpan> {
        self.state.lock().unwrap().spans.clone()
    }

    /// How many export requests were received (decoded and answered 200).
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Polls every 50 ms until `pred` holds for the spans received, and
    /// returns them; panics after `timeout` with `what` it waited for and
    /// every span (name, ids) and rejected request it got.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[RecvSpan]) -> bool,
    ) -> Vec<RecvSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if Instant::now() >= deadline {
                panic!("{}", self.report(what, timeout, &spans));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The failure message of [`OtlpReceiver::wait_for`].
    fn report(&self, what: &str, timeout: Duration, spans: &[RecvSpan]) -> String {
        let state = self.state.lock().unwrap();
        let mut msg = format!(
            "OTLP receiver: waited {timeout:?} for {what}; got {} export requests, {} spans:",
            state.requests,
            spans.len()
        );
        for s in spans {
            let parent = if s.parent_span_id.is_empty() {
                "-"
            } else {
                &s.parent_span_id
            };
            msg.push_str(&format!(
                "\n  {:?} trace={} span={} parent={parent}",
                s.name, s.trace_id, s.span_id
            ));
        }
        if !state.rejected.is_empty() {
            msg.push_str("\nrejected requests:");
            for r in &state.rejected {
                msg.push_str(&format!("\n  {r}"));
            }
        }
        msg
    }
}

impl Drop for OtlpReceiver {
    /// Stops accepting and closes the open connections.
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Ok(state) = self.state.lock() {
            for c in state.conns.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(l: TcpListener, state: Arc<Mutex<State>>, stopped: Arc<AtomicBool>) {
    for (id, conn) in (0u64..).zip(l.incoming()) {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(s) = conn else { continue };
        if let Ok(clone) = s.try_clone() {
            state.lock().unwrap().conns.insert(id, clone);
        }
        let state = state.clone();
        let _ = std::thread::Builder::new()
            .name("otlp-conn".into())
            .spawn(move || {
                serve_connection(s, &state);
                state.lock().unwrap().conns.remove(&id);
            });
    }
}

/// Answers requests on one connection until the client closes it (the
/// exporter's client keeps connections alive) or asks to close.
fn serve_connection(mut s: TcpStream, state: &Mutex<State>) {
    let mut buf = Vec::new();
    while let Some(req) = read_http_request(&mut s, &mut buf) {
        let answer = answer(&req, state);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            answer.status,
            answer.reason,
            answer.content_type,
            answer.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&answer.body);
        if s.write_all(&out).and_then(|()| s.flush()).is_err() {
            return;
        }
        let close = req.header("connection");
        if close.is_some_and(|c| c.eq_ignore_ascii_case("close")) {
            return;
        }
    }
}

/// An HTTP response to send.
struct Answer {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

/// Decodes and records an export request, or says why not.
fn answer(req: &HttpRequest, state: &Mutex<State>) -> Answer {
    let reject = |status, reason, why: String| {
        let line = format!("{} {}: {status} {why}", req.method, req.path);
        state.lock().unwrap().rejected.push(line);
        Answer {
            status,
            reason,
            content_type: "text/plain",
            body: why.into_bytes(),
        }
    };
    if req.path != "/v1/traces" {
        return reject(404, "Not Found", "only /v1/traces is served".into());
    }
    if req.method != "POST" {
        return reject(405, "Method Not Allowed", "POST only".into());
    }
    // We do not enable compression on the exporter: gzip here is a bug.
    if let Some(encoding) = req.header("content-encoding") {
        if !encoding.eq_ignore_ascii_case("identity") {
            let why = format!("content-encoding {encoding} not supported");
            return reject(415, "Unsupported Media Type", why);
        }
    }
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        let why = format!("content-type {content_type:?}, not application/x-protobuf");
        return reject(415, "Unsupported Media Type", why);
    }
    let export = match ExportTraceServiceRequest::decode(req.body.as_slice()) {
        Ok(export) => export,
        Err(e) => {
            let why = format!("undecodable ExportTraceServiceRequest ({e})");
            return reject(400, "Bad Request", why);
        }
    };
    let mut state = state.lock().unwrap();
    state.spans.extend(flatten(export));
    state.requests += 1;
    Answer {
        status: 200,
        reason: "OK",
        content_type: "application/x-protobuf",
        body: ExportTraceServiceResponse::default().encode_to_vec(),
    }
}

/// Every span of an export request, with its resource's attributes.
fn flatten(export: ExportTraceServiceRequest) -> Vec<RecvSpan> {
    let mut spans = Vec::new();
    for rs in export.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            let status = span.status.unwrap_or_default();
            spans.push(RecvSpan {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name,
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                status_code: status.code,
                status_message: status.message,
                attributes: attributes(&span.attributes),
                links: (span.links.iter())
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
                events: span.events.into_iter().map(|e| e.name).collect(),
                resource: resource.clone(),
            });
        }
    }
    spans
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// An attribute value as text; arrays and maps in a readable form.
fn text(v: &AnyValue) -> String {
    use any_value::Value;
    match &v.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(text).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(kvs)) => {
            let items: Vec<String> = attributes(&kvs.values)
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::StringValueStrindex(i)) => format!("strindex {i}"),
    }
}

/// Lowercase hex; empty for no bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
