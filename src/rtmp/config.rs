//! `[rtmp]`: limits of the RTMP(S) ingest. The protocol limits' defaults
//! come from [`Limits::default()`], so the core and the file cannot drift.

use std::time::Duration;

use serde::Deserialize;

use super::proto::Limits;
use crate::config::{self, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_connections: usize,
    /// The wire length field is 24 bits (RTMP spec 5.3.1.2.1).
    #[serde(deserialize_with = "config::int::<1024, 0xFF_FFFF, _, _>")]
    pub max_message_size: u32,
    #[serde(deserialize_with = "config::int::<2, 65_599, _, _>")]
    pub max_chunk_streams: usize,
    #[serde(deserialize_with = "config::int::<2, 1024, _, _>")]
    pub max_amf_depth: usize,
    #[serde(deserialize_with = "config::duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "config::duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "config::int::<128, 0xFF_FFFF, _, _>")]
    pub chunk_size: u32,
    #[serde(deserialize_with = "config::int::<1, 0xFFFF_FFFF, _, _>")]
    pub window_ack_size: u32,
    /// Largest timestamp step accepted as continuous; larger ones re-base.
    #[serde(deserialize_with = "config::duration")]
    pub max_timestamp_jump: Duration,
    /// A live publisher that sent no media for this long may be replaced by
    /// a new publisher on the same path (an encoder reconnecting after its
    /// old TCP connection died silently).
    #[serde(deserialize_with = "config::duration")]
    pub stale_publisher_timeout: Duration,
    /// Open RTMP(S) connections from one client IP.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_connections_per_ip: usize,
    /// Live publishes from one client IP.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_publishes_per_ip: usize,
    /// Live streams on this server.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_streams: usize,
    /// Ingest bitrate cap per stream (kbit/s, averaged over a few seconds);
    /// a publisher above it is disconnected. `max_ingest_bitrate` in the file.
    #[serde(
        rename = "max_ingest_bitrate",
        deserialize_with = "config::bitrate_kbps"
    )]
    pub max_ingest_kbps: u32,
    /// RTMP messages (audio, video, data, commands, control, each
    /// sub-message of an aggregate) one connection may send per second;
    /// more close it with `NetStream.Publish.Failed` naming this key.
    /// Real encoders stay far below: one video track at 60 fps and AAC at
    /// 48 kHz send ~110 a second; Enhanced RTMP multitrack with 4 video
    /// tracks at 120 fps, 8 audio tracks (~47 frames/s each) and metadata
    /// stays under 1 000. The default, 5 000, leaves 5× that for bursts
    /// (an encoder catching up after a stall); a flood of tiny or empty
    /// messages, which the bitrate cap barely sees, is cut at once.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_messages_per_second: u32,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        // The protocol limits have one source of truth: `Limits::default()`.
        let limits = Limits::default();
        RtmpConfig {
            max_connections: 1024,
            max_message_size: limits.max_message_size,
            max_chunk_streams: limits.max_chunk_streams,
            max_amf_depth: limits.max_amf_depth,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            chunk_size: limits.chunk_size,
            window_ack_size: limits.window_ack_size,
            max_timestamp_jump: Duration::from_secs(10),
            stale_publisher_timeout: Duration::from_secs(3),
            max_connections_per_ip: 32,
            max_publishes_per_ip: 8,
            max_streams: 1000,
            max_ingest_kbps: 100_000,
            max_messages_per_second: limits.max_messages_per_second,
        }
    }
}

impl RtmpConfig {
    /// The protocol core's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_chunk_streams: self.max_chunk_streams,
            max_amf_depth: self.max_amf_depth,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            chunk_size: self.chunk_size,
            window_ack_size: self.window_ack_size,
            max_messages_per_second: self.max_messages_per_second,
        }
    }

    /// Rules across keys; errors name keys relative to `[rtmp]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtmp(text: &str) -> Result<RtmpConfig, ConfigError> {
        let c: RtmpConfig = config::section_from_toml("rtmp", text)?;
        c.validate().map_err(|e| e.under("rtmp"))?;
        Ok(c)
    }

    fn err(text: &str) -> String {
        rtmp(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_protocol_limits() {
        let c = rtmp("").unwrap();
        assert_eq!(c.max_chunk_streams, 64);
        assert_eq!(
            format!("{:?}", c.limits()),
            format!("{:?}", Limits::default())
        );
    }

    #[test]
    fn values_are_read() {
        let c = rtmp(
            "max_message_size = 1048576\nhandshake_timeout = \"500ms\"\nmax_ingest_bitrate = \"8M\"",
        )
        .unwrap();
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.limits().handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.max_ingest_kbps, 8000);
        assert_eq!(c.max_messages_per_second, 5000);
        let c = rtmp("max_messages_per_second = 800").unwrap();
        assert_eq!(c.limits().max_messages_per_second, 800);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("max_chunk_stream = 3").contains("`rtmp.max_chunk_stream`"));
        assert_eq!(
            err("max_chunk_streams = 0"),
            "config key `rtmp.max_chunk_streams`: 0 is out of range; allowed 2..=65599"
        );
        assert!(err("idle_timeout = \"soon\"").contains("`rtmp.idle_timeout`"));
        assert!(err("idle_timeout = \"0s\"").contains("`rtmp.idle_timeout`"));
        assert!(err("handshake_timeout = \"0s\"").contains("`rtmp.handshake_timeout`"));
        assert!(err("chunk_size = \"big\"").contains("expected an integer"));
        assert!(err("max_connections = \"many\"").contains("`rtmp.max_connections`"));
        assert!(err("window_ack_size = 4294967296").contains("`rtmp.window_ack_size`"));
        assert!(err("max_ingest_bitrate = 5").contains("`rtmp.max_ingest_bitrate`"));
        assert_eq!(
            err("max_messages_per_second = 0"),
            "config key `rtmp.max_messages_per_second`: 0 is out of range; allowed 1..=1000000"
        );
    }
}

/// An RTMP(S) destination a stream is restreamed to, as platforms give it:
/// `rtmp://a.rtmp.youtube.com/live2/KEY`, `rtmps://host:443/app/KEY`. The
/// last path segment (with any query) is the stream key, what comes
/// before it the application. It displays (and debug-prints) as
/// `rtmp://host:port/app/…`: the key, a credential on every platform,
/// never reaches a log line, a status text or the API.
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpTarget {
    /// `rtmps://`: TLS, the server certificate verified against the
    /// system roots.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The application (`connect`'s `app`), possibly with `/`.
    pub app: String,
    /// The stream key (`publish`'s name), with its query if any.
    pub key: String,
}

impl RtmpTarget {
    /// `tcUrl` of `connect`: the URL without the stream key.
    pub fn tc_url(&self) -> String {
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}/{}", self.host, self.port, self.app)
        } else {
            format!("{scheme}://{}:{}/{}", self.host, self.port, self.app)
        }
    }
}

/// Parse `rtmp://HOST[:PORT]/APP/KEY` or `rtmps://…` (port 1935 and 443
/// by default). Errors never quote the key.
pub fn parse_rtmp_url(raw: &str) -> Result<RtmpTarget, String> {
    let (tls, rest) = if let Some(r) = raw.strip_prefix("rtmp://") {
        (false, r)
    } else if let Some(r) = raw.strip_prefix("rtmps://") {
        (true, r)
    } else {
        return Err("must start with rtmp:// or rtmps:// (rtmp://HOST/APP/KEY)".into());
    };
    let (authority, path) = rest
        .split_once('/')
        .ok_or("needs rtmp://HOST/APP/KEY: no application and stream key")?;
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]` alone has colons but no port after its bracket.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    let host = crate::srt::config::host_of(host)
        .ok_or("the host is not a host name or an IP address (rtmp://HOST/APP/KEY)")?;
    let port = match port {
        None => {
            if tls {
                443
            } else {
                1935
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("the port must be 1 to 65535 (rtmp://HOST:PORT/APP/KEY)")?,
    };
    let (app, key) = path
        .rsplit_once('/')
        .ok_or("needs rtmp://HOST/APP/KEY: the stream key is missing")?;
    if app.is_empty() || app.split('/').any(str::is_empty) {
        return Err("needs rtmp://HOST/APP/KEY: the application is empty".into());
    }
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(app) || app.contains('?') || app.len() > 256 {
        return Err(
            "the application must be printable ASCII without '?', at most 256 bytes".into(),
        );
    }
    if key.is_empty() || !printable(key) || key.len() > 1024 {
        return Err("the stream key must be 1 to 1024 printable ASCII characters".into());
    }
    Ok(RtmpTarget {
        tls,
        host: host.to_string(),
        port,
        app: app.to_string(),
        key: key.to_string(),
    })
}

impl std::fmt::Display for RtmpTarget {
    /// The URL with the stream key hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/…", self.tc_url())
    }
}

impl std::fmt::Debug for RtmpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpTarget")
            .field("url", &format_args!("{self}"))
            .field("key", &"<set>")
            .finish()
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn platform_urls_parse_and_never_show_the_key() {
        let t = parse_rtmp_url("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-1234").unwrap();
        assert_eq!((t.tls, t.port, t.app.as_str()), (false, 1935, "live2"));
        assert_eq!(t.key, "abcd-efgh-1234");
        assert_eq!(t.tc_url(), "rtmp://a.rtmp.youtube.com:1935/live2");
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("abcd"), "{shown}");
        let fb = parse_rtmp_url("rtmps://live-api-s.facebook.com:443/rtmp/FB-123?s_bl=1").unwrap();
        assert_eq!(
            (fb.tls, fb.port, fb.key.as_str()),
            (true, 443, "FB-123?s_bl=1")
        );
        let v6 = parse_rtmp_url("rtmps://[::1]/app/inst/k").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.app.as_str()),
            ("::1", 443, "app/inst")
        );
        assert_eq!(
            parse_rtmp_url("rtmp://[::1]:1936/a/k").unwrap().tc_url(),
            "rtmp://[::1]:1936/a"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_key() {
        for (url, needle) in [
            ("http://h/a/k", "must start with"),
            ("rtmp://h", "no application"),
            ("rtmp://h/secretkey", "stream key is missing"),
            ("rtmp://h:0/a/secretkey", "port"),
            ("rtmp://h:99999/a/secretkey", "port"),
            ("rtmp://bad host/a/secretkey", "host"),
            ("rtmp://h//secretkey", "application is empty"),
            ("rtmp://h/a/", "stream key"),
        ] {
            let e = parse_rtmp_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("secretkey"), "{url}: {e}");
        }
    }
}
