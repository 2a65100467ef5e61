//! Webhook servers on loopback (plain HTTP and TLS) for the authorization
//! tests: they log every JSON body (and, on request, its headers) and answer
//! with a status the test picks. The tiny HTTP/1.1 request reader here,
//! [`read_http_request`], also serves the OTLP receiver in `otlp.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// What a test webhook received: every JSON body, in order.
pub type WebhookLog = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// What [`webhook_server_with_headers`] received: every request's headers
/// (names lowercased) with its JSON body, in order.
pub type WebhookRequests = Arc<Mutex<Vec<(BTreeMap<String, String>, Value)>>>;

/// Where a webhook server records each request: its headers and JSON body.
type Record = Arc<dyn Fn(&BTreeMap<String, String>, &Value) + Send + Sync>;

/// An HTTP webhook on loopback for authorization tests: each POSTed JSON
/// body is logged and answered with the status `rule` gives, after its
/// delay. Returns the port.
pub fn webhook_server(rule: fn(&Value) -> (u16, Duration)) -> (u16, WebhookLog) {
    let (record, log) = body_log();
    (serve_webhook(rule, None, record), log)
}

/// Like [`webhook_server`], over TLS with `tls` (an `https://` webhook).
pub fn webhook_server_tls(
    rule: fn(&Value) -> (u16, Duration),
    tls: Arc<rustls::ServerConfig>,
) -> (u16, WebhookLog) {
    let (record, log) = body_log();
    (serve_webhook(rule, Some(tls), record), log)
}

/// Like [`webhook_server`], logging each request's headers (names
/// lowercased, e.g. `traceparent`) with its JSON body.
pub fn webhook_server_with_headers(rule: fn(&Value) -> (u16, Duration)) -> (u16, WebhookRequests) {
    let log: WebhookRequests = Default::default();
    let seen = log.clone();
    let record: Record =
        Arc::new(move |headers, body| seen.lock().unwrap().push((headers.clone(), body.clone())));
    (serve_webhook(rule, None, record), log)
}

/// A [`Record`] that keeps the bodies only, and the log it fills.
fn body_log() -> (Record, WebhookLog) {
    let log: WebhookLog = Default::default();
    let seen = log.clone();
    let record: Record = Arc::new(move |_, body| seen.lock().unwrap().push(body.clone()));
    (record, log)
}

/// Serves webhook requests on a loopback port, one connection per request;
/// returns the port.
fn serve_webhook(
    rule: fn(&Value) -> (u16, Duration),
    tls: Option<Arc<rustls::ServerConfig>>,
    record: Record,
) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { continue };
            let record = record.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                None => answer_webhook(s, &record, rule),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    answer_webhook(rustls::StreamOwned::new(conn, s), &record, rule)
                }
            });
        }
    });
    port
}

fn answer_webhook(mut s: impl Read + Write, record: &Record, rule: fn(&Value) -> (u16, Duration)) {
    let Some(req) = read_http_request(&mut s, &mut Vec::new()) else {
        return;
    };
    let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    record(&req.headers, &v);
    let (status, delay) = rule(&v);
    std::thread::sleep(delay);
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
    let _ = s.write_all(answer.as_bytes());
    let _ = s.flush();
}

/// One HTTP/1.1 request, as [`read_http_request`] read it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The request target as sent, e.g. `/v1/traces`.
    pub path: String,
    /// Header names lowercased; a repeated header's values joined by `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The value of header `name` (any case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Reads the next request from `s`: its head, then a `Content-Length` or
/// chunked body, bytes and all. `buf` carries what was read past one request
/// to the next on a keep-alive connection: start with an empty one and pass
/// the same one for each request. `None` at end of stream, on a read error
/// or on a malformed request.
pub fn read_http_request(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<HttpRequest> {
    let head = read_until(s, buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        headers
            .entry(name)
            .and_modify(|v| *v = format!("{v}, {value}"))
            .or_insert_with(|| value.to_string());
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(s, buf)?
    } else {
        let len = match headers.get("content-length") {
            Some(len) => len.parse().ok()?,
            None => 0,
        };
        read_exact_buffered(s, buf, len)?
    };
    Some(HttpRequest {
        method,
        path,
        headers,
        body,
    })
}

/// A chunked body's data; its trailers are read and dropped.
fn read_chunked(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_until(s, buf, b"\r\n")?;
        let line = String::from_utf8_lossy(&line).into_owned();
        // The size, then optional `;extensions`.
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_until(s, buf, b"\r\n")?.is_empty() {}
            return Some(body);
        }
        body.extend(read_exact_buffered(s, buf, size)?);
        if !read_until(s, buf, b"\r\n")?.is_empty() {
            return None; // chunk data longer than its size
        }
    }
}

/// The bytes up to `end` (dropped from `buf` with it), reading as needed.
fn read_until(s: &mut impl Read, buf: &mut Vec<u8>, end: &[u8]) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(end.len()).position(|w| w == end) {
            let found = buf[..i].to_vec();
            buf.drain(..i + end.len());
            return Some(found);
        }
        fill(s, buf)?;
    }
}

/// The next `len` bytes (dropped from `buf`), reading as needed.
fn read_exact_buffered(s: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> Option<Vec<u8>> {
    while buf.len() < len {
        fill(s, buf)?;
    }
    Some(buf.drain(..len).collect())
}

/// One read from `s` onto `buf`; `None` at end of stream or on an error.
fn fill(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Some(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}
