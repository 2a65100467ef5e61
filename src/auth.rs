//! Publish authorization with static stream keys.
//!
//! An application with `[apps.NAME.publish_keys]` only accepts publishes of
//! the listed streams, each with its secret, given as `?key=SECRET` on the
//! stream key (OBS: stream key `cam1?key=SECRET`) or on the application
//! (`rtmp://host/live?key=SECRET`). A secret is stored plain or as
//! `sha256:SALT:DIGEST` (hex; DIGEST = SHA-256(SALT bytes || secret)), so the
//! config file need not hold it. Comparison is constant time.

use sha2::{Digest, Sha256};

/// A configured stream secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    Sha256 { salt: Vec<u8>, digest: [u8; 32] },
}

impl std::fmt::Debug for Secret {
    // Never print a secret, not even in a debug dump of the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(..)"),
            Secret::Sha256 { .. } => f.write_str("Secret::Sha256(..)"),
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal in time independent of where the inputs differ (lengths may leak).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

impl Secret {
    /// `sha256:SALT:DIGEST` or a plain secret (at least 8 characters).
    pub fn parse(s: &str) -> Result<Secret, String> {
        if let Some(rest) = s.strip_prefix("sha256:") {
            let (salt, d) = rest.split_once(':').ok_or(
                "expected sha256:SALT_HEX:DIGEST_HEX (sluice --hash-key SECRET prints one)",
            )?;
            let salt = unhex(salt).ok_or("the salt is not hex")?;
            let digest: [u8; 32] = unhex(d)
                .and_then(|v| v.try_into().ok())
                .ok_or("the digest is not 64 hex digits")?;
            return Ok(Secret::Sha256 { salt, digest });
        }
        if s.chars().count() < 8 {
            return Err("a plain key must be at least 8 characters".into());
        }
        Ok(Secret::Plain(s.to_string()))
    }

    /// `sha256:SALT:DIGEST` for `secret` with a random 16-byte salt.
    pub fn hash(secret: &str) -> String {
        let salt: [u8; 16] = rand::random();
        format!("sha256:{}:{}", hex(&salt), hex(&digest(&salt, secret)))
    }

    pub fn verify(&self, presented: &str) -> bool {
        match self {
            Secret::Plain(p) => ct_eq(p.as_bytes(), presented.as_bytes()),
            Secret::Sha256 { salt, digest: d } => ct_eq(d, &digest(salt, presented)),
        }
    }
}

/// In a config file a secret is a string, read with [`Secret::parse`].
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Secret::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[cluster] secret`: the key nodes sign their pulls from each other with.
/// Plain (both sides compute the same HMAC), at least 16 characters, never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSecret(String);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl NodeSecret {
    pub fn parse(s: &str) -> Result<NodeSecret, String> {
        if s.chars().count() < 16 {
            return Err(
                "must be at least 16 characters (a random string shared by every node)".into(),
            );
        }
        Ok(NodeSecret(s.to_string()))
    }

    fn mac(&self, path: &str, node: &str, unix: u64) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("sluice-edge\n{path}\n{node}\n{unix}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The token node `node` presents (streamid `ct=`) to pull `path` from
    /// another node at `unix` seconds: `UNIX-HEX`, good for
    /// [`EDGE_TOKEN_WINDOW`] either side of the origin's clock.
    pub fn edge_token(&self, path: &str, node: &str, unix: u64) -> String {
        format!("{unix}-{}", hex(&self.mac(path, node, unix)))
    }

    /// Whether `token` authorizes node `node` to pull `path` now (`now`
    /// in unix seconds). Constant time in the MAC.
    pub fn verify_edge_token(&self, token: &str, path: &str, node: &str, now: u64) -> bool {
        let Some((unix, mac)) = token.split_once('-') else {
            return false;
        };
        let Ok(unix) = unix.parse::<u64>() else {
            return false;
        };
        if unix.abs_diff(now) > EDGE_TOKEN_WINDOW.as_secs() {
            return false;
        }
        unhex(mac).is_some_and(|m| ct_eq(&m, &self.mac(path, node, unix)))
    }
}

/// How far an edge token's time may be from the origin's clock.
pub const EDGE_TOKEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

impl<'de> serde::Deserialize<'de> for NodeSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        NodeSecret::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The value of `name` in the query part (`...?a=1&key=x`) of `s`.
pub fn query_param<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = s.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// `s` with the value of every `key=` query parameter replaced by `***`,
/// for logs.
pub fn redact(s: &str) -> String {
    let Some((head, q)) = s.split_once('?') else {
        return s.to_string();
    };
    let q: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == "key" => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}?{}", q.join("&"))
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("stream {0} is not allowed in this application")]
    UnknownStream(String),
    #[error("missing publish key: add ?key=... to the stream key")]
    MissingKey,
    #[error("wrong publish key")]
    WrongKey,
}

impl Refusal {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownStream(_) => "unknown_stream",
            Refusal::MissingKey => "missing_key",
            Refusal::WrongKey => "wrong_key",
        }
    }
}

/// Check a publish of `stream` (the key segment of the path) given the raw
/// RTMP application and publishing name (which may carry `?key=`).
pub fn check_publish(
    keys: &std::collections::BTreeMap<String, Secret>,
    stream: &str,
    app_raw: &str,
    name_raw: &str,
) -> Result<(), Refusal> {
    let presented = query_param(name_raw, "key").or_else(|| query_param(app_raw, "key"));
    check_publish_key(keys, stream, presented)
}

/// Check a publish of `stream` with the key the publisher presented, however
/// its protocol carried it (RTMP `?key=`, SRT streamid `s=`).
pub fn check_publish_key(
    keys: &std::collections::BTreeMap<String, Secret>,
    stream: &str,
    presented: Option<&str>,
) -> Result<(), Refusal> {
    if keys.is_empty() {
        return Ok(());
    }
    let secret = keys
        .get(stream)
        .ok_or_else(|| Refusal::UnknownStream(stream.to_string()))?;
    let presented = presented.ok_or(Refusal::MissingKey)?;
    if secret.verify(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongKey)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn edge_tokens_bind_path_node_and_time_and_are_never_printed() {
        let s = NodeSecret::parse("a-shared-cluster-secret").unwrap();
        assert!(NodeSecret::parse("short").is_err());
        assert_eq!(format!("{s:?}"), "NodeSecret(..)");
        let t = s.edge_token("live/cam1", "b", 1_000_000);
        assert!(s.verify_edge_token(&t, "live/cam1", "b", 1_000_030));
        assert!(!s.verify_edge_token(&t, "live/cam2", "b", 1_000_030));
        assert!(!s.verify_edge_token(&t, "live/cam1", "c", 1_000_030));
        assert!(!s.verify_edge_token(&t, "live/cam1", "b", 1_000_121));
        let other = NodeSecret::parse("another-cluster-secret").unwrap();
        assert!(!other.verify_edge_token(&t, "live/cam1", "b", 1_000_000));
        for bad in ["", "-", "x-00", "1000000-zz", "1000000"] {
            assert!(
                !s.verify_edge_token(bad, "live/cam1", "b", 1_000_000),
                "{bad}"
            );
        }
    }
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn plain_and_hashed_secrets_verify() {
        let p = Secret::parse("correct horse").unwrap();
        assert!(p.verify("correct horse"));
        assert!(!p.verify("correct hors"));
        assert!(!p.verify(""));
        let h = Secret::hash("battery staple");
        let s = Secret::parse(&h).unwrap();
        assert!(s.verify("battery staple"));
        assert!(!s.verify("battery stapl"));
        // Two hashes of one secret differ (random salt), both verify.
        assert_ne!(Secret::hash("x"), Secret::hash("x"));
        assert!(format!("{s:?}").contains(".."));
    }

    #[test]
    fn keys_are_redacted_for_logs() {
        assert_eq!(
            redact("rtmp://h/live?key=abc&x=1"),
            "rtmp://h/live?key=***&x=1"
        );
        assert_eq!(redact("cam1"), "cam1");
        assert_eq!(redact("cam1?monkey=1"), "cam1?monkey=1");
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(Secret::parse("short").is_err());
        assert!(Secret::parse("sha256:zz:00").is_err());
        assert!(Secret::parse("sha256:00").is_err());
        assert!(Secret::parse(&format!("sha256:00:{}", "0".repeat(62))).is_err());
    }

    #[test]
    fn publishes_are_checked_against_the_keys() {
        let mut keys = BTreeMap::new();
        keys.insert("cam1".to_string(), Secret::parse("s3cret-key").unwrap());
        assert_eq!(
            check_publish(&BTreeMap::new(), "any", "live", "any"),
            Ok(())
        );
        assert_eq!(
            check_publish(&keys, "cam1", "live", "cam1?key=s3cret-key"),
            Ok(())
        );
        assert_eq!(
            check_publish(&keys, "cam1", "live?key=s3cret-key", "cam1"),
            Ok(())
        );
        assert_eq!(
            check_publish(&keys, "cam1", "live", "cam1?x=1&key=s3cret-key"),
            Ok(())
        );
        assert_eq!(
            check_publish(&keys, "cam1", "live", "cam1"),
            Err(Refusal::MissingKey)
        );
        assert_eq!(
            check_publish(&keys, "cam1", "live", "cam1?key=nope"),
            Err(Refusal::WrongKey)
        );
        assert_eq!(
            check_publish(&keys, "cam2", "live", "cam2?key=s3cret-key"),
            Err(Refusal::UnknownStream("cam2".into()))
        );
    }
}

/// Ask an HTTP webhook whether to allow a request: POST `body` as JSON to
/// `url` (`http://` or `https://`); any 2xx allows. Everything else — a
/// refusal, no answer within `timeout`, a connection error — denies, with
/// the reason. Runs on its own task; it never blocks other connections.
pub async fn ask_webhook(
    url: &str,
    body: &serde_json::Value,
    timeout: std::time::Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, post_json(url, body)).await {
        Ok(Ok(200..=299)) => Ok(()),
        Ok(Ok(code)) => Err(format!("webhook answered {code}")),
        Ok(Err(e)) => Err(format!("webhook unreachable: {e}")),
        Err(_) => Err(format!("webhook did not answer within {timeout:?}")),
    }
}

/// A parsed webhook address: `http://` or `https://`, host, port, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    /// Host name or IP, for the `Host` header and TLS server name.
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl WebhookUrl {
    fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// `http[s]://host[:port][/path][?query]`, with the port defaulting to 80
/// or 443. IPv6 hosts are bracketed (`[::1]:8443`). User info, port 0,
/// spaces and control characters are refused; a `#fragment` is dropped.
pub fn parse_webhook_url(url: &str) -> Result<WebhookUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{url:?} contains a space or a control character"));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') {
        return Err(format!("{url:?}: user info in the URL is not supported"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{url:?}: unexpected {p:?} after the host"))?,
            ),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{url:?}: [{host}] is not an IPv6 address"));
        }
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{url:?}: {p:?} is not a port")),
            Ok(n) => n,
        },
    };
    let is_v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    if host.is_empty() || (!is_v6 && host.contains([':', '[', ']'])) {
        return Err(format!("{url:?} has no usable host"));
    }
    Ok(WebhookUrl {
        tls,
        host: host.to_string(),
        port,
        path,
    })
}

/// Trust anchors for `https://` webhooks: the system's (`/etc/ssl/certs`
/// through rustls-native-certs) plus `server.webhook_ca`.
static WEBHOOK_TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
    std::sync::OnceLock::new();

/// Build the TLS client for webhooks, once, at start: the system's roots
/// and the PEM certificates in `extra_ca` (a private CA for an internal
/// auth service). An unreadable or empty `extra_ca` is an error; so are no
/// roots at all when some webhook uses https.
pub fn init_webhook_tls(
    extra_ca: Option<&std::path::Path>,
    https_used: bool,
) -> Result<(), String> {
    let config = webhook_tls_config(extra_ca)?;
    if https_used && config.1 == 0 {
        return Err(
            "an https:// webhook is configured but there are no CA certificates to verify it \
             (the system store is empty): install ca-certificates or set this key"
                .to_string(),
        );
    }
    let _ = WEBHOOK_TLS.set(std::sync::Arc::new(config.0));
    Ok(())
}

/// The client config and how many trust anchors it has.
fn webhook_tls_config(
    extra_ca: Option<&std::path::Path>,
) -> Result<(rustls::ClientConfig, usize), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the system CA certificates for https webhooks");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the file".to_string());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
    }
    let anchors = roots.len();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, anchors))
}

async fn post_json(url: &str, body: &serde_json::Value) -> std::io::Result<u16> {
    let u = parse_webhook_url(url).map_err(std::io::Error::other)?;
    let sock = tokio::net::TcpStream::connect((u.host.as_str(), u.port)).await?;
    let _ = sock.set_nodelay(true);
    let body = body.to_string();
    // W3C Trace Context: the auth service's spans join the publish's (or
    // player's) trace.
    let mut trace = String::new();
    if let Some((parent, state)) = crate::telemetry::trace::context_headers() {
        trace = format!("traceparent: {parent}\r\n");
        if let Some(state) = state {
            trace.push_str(&format!("tracestate: {state}\r\n"));
        }
    }
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice/{}\r\n{trace}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        u.path,
        u.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if !u.tls {
        return exchange(sock, req.as_bytes()).await;
    }
    let config = match WEBHOOK_TLS.get() {
        Some(c) => c.clone(),
        None => std::sync::Arc::new(webhook_tls_config(None).map_err(std::io::Error::other)?.0),
    };
    let name = rustls_pki_types::ServerName::try_from(u.host.clone()).map_err(|e| {
        std::io::Error::other(format!("{:?} is not a TLS server name: {e}", u.host))
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, sock)
        .await
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
    exchange(tls, req.as_bytes()).await
}

/// Send the request and read the status code of the answer.
async fn exchange<S>(mut sock: S, req: &[u8]) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(req).await?;
    sock.flush().await?;
    // Only the status line matters; read at most a few KiB of the answer.
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let r = sock.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(std::io::Error::other(format!(
            "not an HTTP answer: {:?}",
            line.chars().take(60).collect::<String>()
        ))),
    }
}

/// The query parameters of `s` as a JSON object (keys other than `key`).
pub fn query_json(s: &str) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some((_, q)) = s.split_once('?') {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            m.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = parse_webhook_url("http://127.0.0.1:9/auth").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9, "/auth")
        );
        let u = parse_webhook_url("http://auth.local").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.host_header()),
            (80, "/", "auth.local".to_string())
        );
        let u = parse_webhook_url("https://auth.example.com/rtmp?x=1").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/rtmp?x=1"));
        assert_eq!(u.host_header(), "auth.example.com");
        let u = parse_webhook_url("https://[::1]:8443/h").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.host_header()),
            ("::1", 8443, "[::1]:8443".to_string())
        );
        let u = parse_webhook_url("http://auth?x=1#frag").unwrap();
        assert_eq!((u.host.as_str(), u.path.as_str()), ("auth", "/?x=1"));
        for bad in [
            "ftp://x/",
            "http:///x",
            "http://x:notaport/",
            "http://x:0/",
            "http://::1/",
            "http://[::1/",
            "http://[[::1]]/",
            "http://[nothost]/",
            "http://user@host/",
            "http://user:pass@host/",
            "http://host/a b",
            "http://host/\r\nX: y",
            "https://",
        ] {
            assert!(parse_webhook_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[tokio::test]
    async fn answers_map_to_decisions() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 403 Forbidden\r\n\r\n",
                "garbage\r\n",
            ] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 2048];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
            // Then one that never answers.
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let url = format!("http://{addr}/hook");
        let body = serde_json::json!({"action": "publish"});
        let t = std::time::Duration::from_millis(500);
        assert_eq!(ask_webhook(&url, &body, t).await, Ok(()));
        assert_eq!(
            ask_webhook(&url, &body, t).await,
            Err("webhook answered 403".into())
        );
        assert!(ask_webhook(&url, &body, t)
            .await
            .unwrap_err()
            .contains("not an HTTP answer"));
        assert!(ask_webhook(&url, &body, t)
            .await
            .unwrap_err()
            .contains("did not answer"));
        assert!(ask_webhook("http://127.0.0.1:1/x", &body, t)
            .await
            .unwrap_err()
            .contains("unreachable"));
    }
}
