//! Webhook servers on loopback (plain HTTP and TLS) for the authorization
//! tests: they log every JSON body and answer with a status the test picks.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// What a test webhook received: every JSON body, in order.
pub type WebhookLog = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// An HTTP webhook on loopback for authorization tests: each POSTed JSON
/// body is logged and answered with the status `rule` gives, after its
/// delay. Returns the port.
pub fn webhook_server(rule: fn(&Value) -> (u16, Duration)) -> (u16, WebhookLog) {
    serve_webhook(rule, None)
}

/// Like [`webhook_server`], over TLS with `tls` (an `https://` webhook).
pub fn webhook_server_tls(
    rule: fn(&Value) -> (u16, Duration),
    tls: Arc<rustls::ServerConfig>,
) -> (u16, WebhookLog) {
    serve_webhook(rule, Some(tls))
}

fn serve_webhook(
    rule: fn(&Value) -> (u16, Duration),
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, WebhookLog) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: WebhookLog = Default::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { continue };
            let log = log.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                None => answer_webhook(s, &log, rule),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    answer_webhook(rustls::StreamOwned::new(conn, s), &log, rule)
                }
            });
        }
    });
    (port, seen)
}

fn answer_webhook(mut s: impl Read + Write, log: &WebhookLog, rule: fn(&Value) -> (u16, Duration)) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    // Headers, then Content-Length bytes of body.
    let body = loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break body.to_string();
            }
        }
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(v.clone());
    let (status, delay) = rule(&v);
    std::thread::sleep(delay);
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
    let _ = s.write_all(answer.as_bytes());
    let _ = s.flush();
}
