//! Configuration: built-in defaults, an optional TOML file, then CLI flags.
//!
//! Every key is checked when the file is read; an unknown key or a bad value
//! is refused with a message naming the key (`rtmp.max_chunk_streams`) and
//! what was wrong, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::rtmp::proto::Limits;
use crate::srt::push::{parse_push_url, PushTarget};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("unknown config key `{key}`{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub rtmp_addr: SocketAddr,
    pub srt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
    /// From TCP accept until the stream must be playable (first keyframe in
    /// every rendition), or the publish fails.
    pub setup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RtmpConfig {
    pub max_connections: usize,
    pub max_message_size: u32,
    pub max_chunk_streams: usize,
    pub max_amf_depth: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub chunk_size: u32,
    pub window_ack_size: u32,
    /// Largest timestamp step accepted as continuous; larger ones re-base.
    pub max_timestamp_jump: Duration,
    /// A live publisher that sent no media for this long may be replaced by
    /// a new publisher on the same path (an encoder reconnecting after its
    /// old TCP connection died silently).
    pub stale_publisher_timeout: Duration,
}

/// SRT egress (`[srt]`).
#[derive(Debug, Clone)]
pub struct SrtConfig {
    /// TSBPD latency we offer; the larger of ours and the caller's wins.
    pub latency: Duration,
    /// A player silent this long is dropped.
    pub peer_idle_timeout: Duration,
    /// Callers must use this passphrase (10–79 characters) when set.
    pub passphrase: Option<String>,
    /// Most concurrent SRT players on this server; more get 1402.
    pub max_players: usize,
}

/// Per-application settings (`[apps.NAME]`).
#[derive(Debug, Clone, Default)]
pub struct AppConfig {
    /// A new publisher on a live path replaces the old one instead of being refused.
    pub takeover: bool,
    /// SRT destinations every stream of this application is pushed to; each
    /// must connect during setup, and a failing one ends the stream.
    pub push: Vec<PushTarget>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    pub apps: BTreeMap<String, AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            server: ServerConfig {
                rtmp_addr: "0.0.0.0:1935".parse().expect("valid default"),
                srt_addr: "0.0.0.0:9000".parse().expect("valid default"),
                http_addr: "0.0.0.0:8080".parse().expect("valid default"),
                log_format: LogFormat::Text,
                drain_timeout: Duration::from_secs(30),
                setup_timeout: Duration::from_secs(8),
            },
            // The protocol limits have one source of truth: `Limits::default()`.
            rtmp: RtmpConfig {
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
            },
            srt: SrtConfig {
                latency: Duration::from_millis(120),
                peer_idle_timeout: Duration::from_secs(5),
                passphrase: None,
                max_players: 1000,
            },
            apps: BTreeMap::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: "<inline>".into(),
                    message: e.to_string(),
                })?;
        let mut cfg = Config::default();
        let mut root = Section::new("", table);
        if let Some(mut s) = root.section("server")? {
            let c = &mut cfg.server;
            s.addr("rtmp_addr", &mut c.rtmp_addr)?;
            s.addr("srt_addr", &mut c.srt_addr)?;
            s.addr("http_addr", &mut c.http_addr)?;
            if let Some(v) = s.string("log_format")? {
                c.log_format = v
                    .parse()
                    .map_err(|m: String| invalid(&s.key("log_format"), m))?;
            }
            s.duration("drain_timeout", &mut c.drain_timeout)?;
            s.duration("setup_timeout", &mut c.setup_timeout)?;
            s.finish()?;
        }
        if let Some(mut s) = root.section("rtmp")? {
            let c = &mut cfg.rtmp;
            s.int("max_connections", 1, 1_000_000, &mut c.max_connections)?;
            // The wire length field is 24 bits (RTMP spec 5.3.1.2.1).
            s.int("max_message_size", 1024, 0xFF_FFFF, &mut c.max_message_size)?;
            s.int("max_chunk_streams", 2, 65_599, &mut c.max_chunk_streams)?;
            s.int("max_amf_depth", 2, 1024, &mut c.max_amf_depth)?;
            s.duration("handshake_timeout", &mut c.handshake_timeout)?;
            s.duration("idle_timeout", &mut c.idle_timeout)?;
            s.int("chunk_size", 128, 0xFF_FFFF, &mut c.chunk_size)?;
            s.int(
                "window_ack_size",
                1,
                u32::MAX as i64,
                &mut c.window_ack_size,
            )?;
            s.duration("max_timestamp_jump", &mut c.max_timestamp_jump)?;
            s.duration("stale_publisher_timeout", &mut c.stale_publisher_timeout)?;
            s.finish()?;
        }
        if let Some(mut s) = root.section("srt")? {
            let c = &mut cfg.srt;
            s.duration("latency", &mut c.latency)?;
            s.duration("peer_idle_timeout", &mut c.peer_idle_timeout)?;
            if let Some(p) = s.string("passphrase")? {
                // SRT passphrases are 10 to 79 characters (SRTO_PASSPHRASE).
                if !(10..=79).contains(&p.chars().count()) {
                    return Err(invalid(
                        &s.key("passphrase"),
                        "must be 10 to 79 characters long",
                    ));
                }
                c.passphrase = Some(p);
            }
            s.int("max_players", 1, 1_000_000, &mut c.max_players)?;
            s.finish()?;
        }
        if let Some(mut apps) = root.section("apps")? {
            for name in apps.keys() {
                let Some(mut s) = apps.section(&name)? else {
                    continue;
                };
                validate_segment(&name).map_err(|m| invalid(&s.prefix, m))?;
                let mut app = AppConfig::default();
                if let Some(v) = s.bool("takeover")? {
                    app.takeover = v;
                }
                let push_key = s.key("push");
                match s.take("push") {
                    None => {}
                    Some(toml::Value::Array(urls)) => {
                        for (i, u) in urls.iter().enumerate() {
                            let key = format!("{push_key}[{i}]");
                            let url = u.as_str().ok_or_else(|| {
                                invalid(&key, "expected a string srt://host:port?...")
                            })?;
                            app.push
                                .push(parse_push_url(url).map_err(|m| invalid(&key, m))?);
                        }
                    }
                    Some(other) => {
                        return Err(invalid(
                            &push_key,
                            format!("expected a list of srt:// URLs, got a {}", other.type_str()),
                        ))
                    }
                }
                s.finish()?;
                cfg.apps.insert(name, app);
            }
            apps.finish()?;
        }
        root.finish()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks that also cover values given as flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rtmp.idle_timeout.is_zero() {
            return Err(invalid("rtmp.idle_timeout", "must be greater than zero"));
        }
        // SRT carries latency in 16-bit milliseconds on the wire.
        if self.srt.latency > Duration::from_millis(65_535) {
            return Err(invalid("srt.latency", "must be at most 65535ms"));
        }
        if self.rtmp.handshake_timeout.is_zero() {
            return Err(invalid(
                "rtmp.handshake_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    pub fn app(&self, name: &str) -> AppConfig {
        self.apps.get(name).cloned().unwrap_or_default()
    }

    pub fn rtmp_limits(&self) -> Limits {
        let r = &self.rtmp;
        Limits {
            max_message_size: r.max_message_size,
            max_chunk_streams: r.max_chunk_streams,
            max_amf_depth: r.max_amf_depth,
            handshake_timeout: r.handshake_timeout,
            idle_timeout: r.idle_timeout,
            chunk_size: r.chunk_size,
            window_ack_size: r.window_ack_size,
        }
    }
}

/// A path segment (application or stream key): what sluice accepts in
/// `APP/KEY`, so paths are safe in URLs, metrics labels and SRT streamids.
pub fn validate_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 128 {
        return Err(format!("is {} bytes long; at most 128 allowed", s.len()));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use letters, digits, '-', '_', '.', '~'"
        ));
    }
    Ok(())
}

/// Parse "500ms", "5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("expected a duration like \"500ms\", \"5s\" or \"2m\", got {s:?}");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
        _ => return Err(err()),
    };
    Ok(d)
}

/// A TOML table being read; remembers which keys were consumed so the rest
/// can be reported as unknown.
struct Section {
    prefix: String,
    table: toml::Table,
}

impl Section {
    fn new(prefix: &str, table: toml::Table) -> Self {
        Section {
            prefix: prefix.to_string(),
            table,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn keys(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    fn take(&mut self, name: &str) -> Option<toml::Value> {
        self.table.remove(name)
    }

    fn section(&mut self, name: &str) -> Result<Option<Section>, ConfigError> {
        let key = self.key(name);
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(Section::new(&key, t))),
            Some(other) => Err(invalid(
                &key,
                format!("expected a table ([{key}]), got a {}", other.type_str()),
            )),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(
                &self.key(name),
                format!("expected a string, got a {}", other.type_str()),
            )),
        }
    }

    fn bool(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(b)),
            Some(other) => Err(invalid(
                &self.key(name),
                format!("expected true or false, got a {}", other.type_str()),
            )),
        }
    }

    fn addr(&mut self, name: &str, out: &mut SocketAddr) -> Result<(), ConfigError> {
        if let Some(s) = self.string(name)? {
            *out = s.parse().map_err(|_| {
                invalid(
                    &self.key(name),
                    format!("{s:?} is not an IP:port address (e.g. \"0.0.0.0:1935\")"),
                )
            })?;
        }
        Ok(())
    }

    fn duration(&mut self, name: &str, out: &mut Duration) -> Result<(), ConfigError> {
        if let Some(s) = self.string(name)? {
            *out = parse_duration(&s).map_err(|m| invalid(&self.key(name), m))?;
        }
        Ok(())
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        name: &str,
        min: i64,
        max: i64,
        out: &mut T,
    ) -> Result<(), ConfigError> {
        match self.take(name) {
            None => Ok(()),
            Some(toml::Value::Integer(v)) if (min..=max).contains(&v) => {
                *out = T::try_from(v)
                    .map_err(|_| invalid(&self.key(name), format!("{v} is out of range")))?;
                Ok(())
            }
            Some(toml::Value::Integer(v)) => Err(invalid(
                &self.key(name),
                format!("{v} is out of range; allowed {min}..={max}"),
            )),
            Some(other) => Err(invalid(
                &self.key(name),
                format!("expected an integer, got a {}", other.type_str()),
            )),
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        if let Some(k) = self.table.keys().next() {
            let key = self.key(k);
            let hint = match self.prefix.as_str() {
                "" => " (sections: [server], [rtmp], [srt], [apps.NAME])".to_string(),
                _ => String::new(),
            };
            return Err(ConfigError::UnknownKey { key, hint });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.rtmp_addr.port(), 1935);
        assert_eq!(c.server.srt_addr.port(), 9000);
        assert_eq!(c.server.http_addr.port(), 8080);
        assert_eq!(c.rtmp.max_chunk_streams, 64);
    }

    #[test]
    fn full_file_is_read() {
        let c = Config::from_toml(
            r#"
            [server]
            rtmp_addr = "127.0.0.1:1936"
            log_format = "json"
            drain_timeout = "2m"
            [rtmp]
            max_message_size = 1048576
            handshake_timeout = "500ms"
            [apps.live]
            takeover = true
            push = ["srt://127.0.0.1:9100?streamid=live/x&latency=200"]
            "#,
        )
        .unwrap();
        assert_eq!(c.server.rtmp_addr.port(), 1936);
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(120));
        assert_eq!(c.rtmp.max_message_size, 1 << 20);
        assert_eq!(c.rtmp.handshake_timeout, Duration::from_millis(500));
        assert!(c.app("live").takeover);
        assert!(!c.app("other").takeover);
        assert_eq!(c.app("live").push[0].port, 9100);
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[rtmp]\nmax_chunk_stream = 3").contains("`rtmp.max_chunk_stream`"));
        assert!(err("[server]\nrtmp_addr = \"nope\"").contains("`server.rtmp_addr`"));
        assert!(err("[rtmp]\nmax_chunk_streams = 0").contains("`rtmp.max_chunk_streams`"));
        assert!(err("[rtmp]\nidle_timeout = \"soon\"").contains("`rtmp.idle_timeout`"));
        assert!(err("[rtmp]\nidle_timeout = \"0s\"").contains("`rtmp.idle_timeout`"));
        assert!(err("bogus = 1").contains("`bogus`"));
        assert!(err("[apps.live]\ntakover = true").contains("`apps.live.takover`"));
        assert!(err("[apps.\"a b\"]\ntakeover = true").contains("`apps.a b`"));
        assert!(err("[server]\nlog_format = \"xml\"").contains("`server.log_format`"));
        assert!(err("[rtmp]\nchunk_size = \"big\"").contains("expected an integer"));
        assert!(err("[srt]\npassphrase = \"short\"").contains("`srt.passphrase`"));
        assert!(err("[apps.live]\npush = [\"udp://x:1\"]").contains("`apps.live.push[0]`"));
        assert!(err("[apps.live]\npush = \"srt://x:1\"").contains("`apps.live.push`"));
        assert!(err("[srt]\nlatency = \"70s\"").contains("`srt.latency`"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// deploy/sluice.example.toml documents the defaults; keep it true.
    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../deploy/sluice.example.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c.server), format!("{:?}", d.server));
        assert_eq!(format!("{:?}", c.rtmp), format!("{:?}", d.rtmp));
        assert_eq!(format!("{:?}", c.srt), format!("{:?}", d.srt));
        assert!(!c.app("live").takeover);
    }
}
