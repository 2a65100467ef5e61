//! Configuration: built-in defaults, an optional TOML file, then CLI flags.
//!
//! Every key is checked when the file is read; an unknown key or a bad value
//! is refused with a message naming the key (`rtmp.max_chunk_streams`) and
//! what was wrong, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rtmp::proto::Limits;
use crate::srt::push::{parse_push_url, PushTarget};
use crate::stream::path::validate_segment;
use crate::telemetry::LogFormat;

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
    /// RTMPS (RTMP over TLS) listener; off unless set, with `tls_cert` and
    /// `tls_key` (PEM files).
    pub rtmps_addr: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for `https://` webhooks, besides
    /// the system's.
    pub webhook_ca: Option<PathBuf>,
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
    /// Open RTMP(S) connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Live publishes from one client IP.
    pub max_publishes_per_ip: usize,
    /// Live streams on this server.
    pub max_streams: usize,
    /// Ingest bitrate cap per stream (kbit/s, averaged over a few seconds);
    /// a publisher above it is disconnected.
    pub max_ingest_kbps: u32,
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
    /// Most concurrent SRT players of one stream (all renditions); more get 1402.
    pub max_players_per_stream: usize,
    /// SRT handshake attempts (induction datagrams) accepted per client IP
    /// per second; the rest are dropped (a rejected libsrt caller retries
    /// every 50 ms forever).
    pub max_handshakes_per_ip_per_second: u32,
}

/// Per-application settings (`[apps.NAME]`).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// A new publisher on a live path replaces the old one instead of being refused.
    pub takeover: bool,
    /// SRT destinations every stream of this application is pushed to; each
    /// must connect during setup, and a failing one ends the stream.
    pub push: Vec<PushTarget>,
    /// Transcoded renditions every stream of this application gets, besides
    /// "source". Empty: no FFmpeg runs for it.
    pub renditions: Vec<RenditionSpec>,
    /// Stream name → secret. Non-empty: only these streams may be
    /// published, each with its `?key=`.
    pub publish_keys: BTreeMap<String, crate::auth::Secret>,
    /// `http://...` asked (POST JSON) before every publish; 2xx allows.
    pub publish_webhook: Option<String>,
    pub webhook_timeout: Duration,
    /// SRT players of this application's streams must use this passphrase
    /// (instead of `srt.passphrase`).
    pub read_passphrase: Option<String>,
    /// User → secret. Non-empty: players must name a user (`u=`) and its
    /// token (`s=` or `user_token=`) in the streamid.
    pub read_tokens: BTreeMap<String, crate::auth::Secret>,
    /// `http://...` asked (POST JSON, action "read") before every SRT
    /// player of this application is accepted; 2xx allows.
    pub read_webhook: Option<String>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            takeover: false,
            push: Vec::new(),
            renditions: Vec::new(),
            publish_keys: BTreeMap::new(),
            publish_webhook: None,
            webhook_timeout: Duration::from_secs(2),
            read_passphrase: None,
            read_tokens: BTreeMap::new(),
            read_webhook: None,
        }
    }
}

/// Video codec of a transcoded rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
        }
    }
}

/// What a rendition does with the source audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioMode {
    /// Pass the source's AAC through untouched.
    Copy,
    /// Re-encode to AAC-LC at this bitrate.
    Aac { bitrate_kbps: u32 },
    /// No audio in this rendition.
    Off,
}

/// One transcoded rendition (`[[apps.NAME.renditions]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionSpec {
    /// Path suffix: players pull `APP/KEY/NAME`.
    pub name: String,
    /// Output size; when one is omitted it follows the source aspect ratio.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub video_bitrate_kbps: u32,
    /// Frame rate cap: a faster source is reduced to this.
    pub max_fps: Option<u32>,
    pub codec: VideoCodec,
    /// Keyframe interval.
    pub gop: Duration,
    pub audio: AudioMode,
}

/// How renditions are encoded (`transcode.encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderMode {
    /// NVENC where a trial encode proves it works, libx264/libx265 otherwise.
    Auto,
    /// NVENC or refuse to start.
    Nvenc,
    /// Always libx264/libx265.
    Software,
}

impl EncoderMode {
    pub fn name(self) -> &'static str {
        match self {
            EncoderMode::Auto => "auto",
            EncoderMode::Nvenc => "nvenc",
            EncoderMode::Software => "x264",
        }
    }
}

/// FFmpeg transcoding (`[transcode]`).
#[derive(Debug, Clone)]
pub struct TranscodeConfig {
    /// FFmpeg binary: a name looked up on `PATH`, or a path.
    pub ffmpeg: PathBuf,
    pub encoder: EncoderMode,
    /// FFmpeg that writes nothing on some rendition for this long has failed.
    pub stall_timeout: Duration,
    /// libx264/libx265 `-preset`.
    pub x264_preset: String,
    /// Decode (and scale, when `scale_cuda` works) on the GPU when a CUDA
    /// decode trial succeeds.
    pub gpu_decode: bool,
    /// How often NVML gauges are refreshed.
    pub gpu_poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    pub transcode: TranscodeConfig,
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
                rtmps_addr: None,
                tls_cert: None,
                tls_key: None,
                webhook_ca: None,
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
                max_connections_per_ip: 32,
                max_publishes_per_ip: 8,
                max_streams: 1000,
                max_ingest_kbps: 100_000,
            },
            srt: SrtConfig {
                latency: Duration::from_millis(120),
                peer_idle_timeout: Duration::from_secs(5),
                passphrase: None,
                max_players: 1000,
                max_players_per_stream: 500,
                max_handshakes_per_ip_per_second: 20,
            },
            transcode: TranscodeConfig {
                ffmpeg: PathBuf::from("ffmpeg"),
                encoder: EncoderMode::Auto,
                stall_timeout: Duration::from_secs(5),
                x264_preset: "veryfast".into(),
                gpu_decode: true,
                gpu_poll_interval: Duration::from_secs(5),
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
            if let Some(a) = s.string("rtmps_addr")? {
                c.rtmps_addr = Some(a.parse().map_err(|_| {
                    invalid(
                        &s.key("rtmps_addr"),
                        format!("{a:?} is not an IP:port address (e.g. \"0.0.0.0:1936\")"),
                    )
                })?);
            }
            c.tls_cert = s.string("tls_cert")?.map(PathBuf::from);
            c.tls_key = s.string("tls_key")?.map(PathBuf::from);
            c.webhook_ca = s.string("webhook_ca")?.map(PathBuf::from);
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
            s.int(
                "max_connections_per_ip",
                1,
                1_000_000,
                &mut c.max_connections_per_ip,
            )?;
            s.int(
                "max_publishes_per_ip",
                1,
                1_000_000,
                &mut c.max_publishes_per_ip,
            )?;
            s.int("max_streams", 1, 1_000_000, &mut c.max_streams)?;
            if let Some(b) = s.string("max_ingest_bitrate")? {
                c.max_ingest_kbps =
                    parse_bitrate_kbps(&b).map_err(|m| invalid(&s.key("max_ingest_bitrate"), m))?;
            }
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
            s.int(
                "max_players_per_stream",
                1,
                1_000_000,
                &mut c.max_players_per_stream,
            )?;
            s.int(
                "max_handshakes_per_ip_per_second",
                1,
                1_000_000,
                &mut c.max_handshakes_per_ip_per_second,
            )?;
            s.finish()?;
        }
        if let Some(mut s) = root.section("transcode")? {
            let c = &mut cfg.transcode;
            if let Some(v) = s.string("ffmpeg")? {
                if v.trim().is_empty() {
                    return Err(invalid(&s.key("ffmpeg"), "must not be empty"));
                }
                c.ffmpeg = PathBuf::from(v);
            }
            if let Some(v) = s.string("encoder")? {
                c.encoder = match v.as_str() {
                    "auto" => EncoderMode::Auto,
                    "nvenc" => EncoderMode::Nvenc,
                    "x264" | "software" => EncoderMode::Software,
                    _ => {
                        return Err(invalid(
                            &s.key("encoder"),
                            format!("{v:?} is not one of \"auto\", \"nvenc\", \"x264\""),
                        ))
                    }
                };
            }
            s.duration("stall_timeout", &mut c.stall_timeout)?;
            if let Some(v) = s.string("x264_preset")? {
                const PRESETS: [&str; 10] = [
                    "ultrafast",
                    "superfast",
                    "veryfast",
                    "faster",
                    "fast",
                    "medium",
                    "slow",
                    "slower",
                    "veryslow",
                    "placebo",
                ];
                if !PRESETS.contains(&v.as_str()) {
                    return Err(invalid(
                        &s.key("x264_preset"),
                        format!("{v:?} is not an x264 preset ({})", PRESETS.join(", ")),
                    ));
                }
                c.x264_preset = v;
            }
            if let Some(v) = s.bool("gpu_decode")? {
                c.gpu_decode = v;
            }
            s.duration("gpu_poll_interval", &mut c.gpu_poll_interval)?;
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
                if let Some(url) = s.string("publish_webhook")? {
                    crate::auth::parse_webhook_url(&url)
                        .map_err(|m| invalid(&s.key("publish_webhook"), m))?;
                    app.publish_webhook = Some(url);
                }
                if let Some(url) = s.string("read_webhook")? {
                    crate::auth::parse_webhook_url(&url)
                        .map_err(|m| invalid(&s.key("read_webhook"), m))?;
                    app.read_webhook = Some(url);
                }
                s.duration("webhook_timeout", &mut app.webhook_timeout)?;
                if app.webhook_timeout.is_zero() {
                    return Err(invalid(
                        &s.key("webhook_timeout"),
                        "must be greater than zero",
                    ));
                }
                if let Some(p) = s.string("read_passphrase")? {
                    if !(10..=79).contains(&p.chars().count()) {
                        return Err(invalid(
                            &s.key("read_passphrase"),
                            "must be 10 to 79 characters long",
                        ));
                    }
                    app.read_passphrase = Some(p);
                }
                if let Some(mut users) = s.section("read_tokens")? {
                    for user in users.keys() {
                        let k = users.key(&user);
                        if user.is_empty() || user.len() > 64 || user.contains([',', '=']) {
                            return Err(invalid(
                                &k,
                                "user names are 1-64 characters without ',' or '='",
                            ));
                        }
                        let v = users.string(&user)?.unwrap_or_default();
                        let secret = crate::auth::Secret::parse(&v).map_err(|m| invalid(&k, m))?;
                        app.read_tokens.insert(user, secret);
                    }
                    users.finish()?;
                }
                if let Some(mut keys) = s.section("publish_keys")? {
                    for stream in keys.keys() {
                        let k = keys.key(&stream);
                        validate_segment(&stream).map_err(|m| invalid(&k, m))?;
                        let v = keys.string(&stream)?.unwrap_or_default();
                        let secret = crate::auth::Secret::parse(&v).map_err(|m| invalid(&k, m))?;
                        app.publish_keys.insert(stream, secret);
                    }
                    keys.finish()?;
                }
                let key = s.key("renditions");
                match s.take("renditions") {
                    None => {}
                    Some(toml::Value::Array(list)) => {
                        for (i, v) in list.into_iter().enumerate() {
                            let key = format!("{key}[{i}]");
                            let toml::Value::Table(t) = v else {
                                return Err(invalid(
                                    &key,
                                    "expected a table { name = ..., height = ... }",
                                ));
                            };
                            let r = rendition(Section::new(&key, t))?;
                            if app.renditions.iter().any(|o| o.name == r.name) {
                                return Err(invalid(
                                    &format!("{key}.name"),
                                    format!("{:?} is used twice in this application", r.name),
                                ));
                            }
                            app.renditions.push(r);
                        }
                    }
                    Some(other) => {
                        return Err(invalid(
                            &key,
                            format!(
                                "expected a list of tables ([[{key}]]), got a {}",
                                other.type_str()
                            ),
                        ))
                    }
                }
                s.finish()?;
                for (i, t) in app.push.iter().enumerate() {
                    if t.rendition != "source"
                        && !app.renditions.iter().any(|r| r.name == t.rendition)
                    {
                        return Err(invalid(
                            &format!("{push_key}[{i}]"),
                            format!(
                                "pushes rendition {:?}, which apps.{name}.renditions does not define",
                                t.rendition
                            ),
                        ));
                    }
                }
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
        if self.server.rtmps_addr.is_some()
            && (self.server.tls_cert.is_none() || self.server.tls_key.is_none())
        {
            return Err(invalid(
                "server.rtmps_addr",
                "needs server.tls_cert and server.tls_key (PEM files)",
            ));
        }
        if self.transcode.stall_timeout.is_zero() {
            return Err(invalid(
                "transcode.stall_timeout",
                "must be greater than zero",
            ));
        }
        if self.rtmp.handshake_timeout.is_zero() {
            return Err(invalid(
                "rtmp.handshake_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// Whether any application transcodes.
    pub fn has_renditions(&self) -> bool {
        self.apps.values().any(|a| !a.renditions.is_empty())
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

/// One `[[apps.NAME.renditions]]` table.
fn rendition(mut s: Section) -> Result<RenditionSpec, ConfigError> {
    let name = s
        .string("name")?
        .ok_or_else(|| invalid(&s.key("name"), "is required (players pull APP/KEY/NAME)"))?;
    validate_segment(&name).map_err(|m| invalid(&s.key("name"), m))?;
    if name == "source" {
        return Err(invalid(
            &s.key("name"),
            "\"source\" is the untranscoded stream; pick another name",
        ));
    }
    fn dim(s: &mut Section, k: &str) -> Result<Option<u32>, ConfigError> {
        let mut v = 0u32;
        if s.table.contains_key(k) {
            s.int(k, 16, 8192, &mut v)?;
            if v % 2 != 0 {
                return Err(invalid(
                    &s.key(k),
                    format!("{v} is odd; 4:2:0 video needs even sizes"),
                ));
            }
            return Ok(Some(v));
        }
        Ok(None)
    }
    let width = dim(&mut s, "width")?;
    let height = dim(&mut s, "height")?;
    if width.is_none() && height.is_none() {
        return Err(invalid(
            &s.prefix,
            "needs width or height (the other follows the source aspect ratio)",
        ));
    }
    let video_bitrate_kbps = match s.string("video_bitrate")? {
        Some(b) => parse_bitrate_kbps(&b).map_err(|m| invalid(&s.key("video_bitrate"), m))?,
        None => default_bitrate_kbps(width, height),
    };
    let mut max_fps = None;
    if s.table.contains_key("max_fps") {
        let mut v = 0u32;
        s.int("max_fps", 1, 240, &mut v)?;
        max_fps = Some(v);
    }
    let codec = match s.string("codec")?.as_deref() {
        None | Some("h264") => VideoCodec::H264,
        Some("hevc") | Some("h265") => VideoCodec::Hevc,
        Some(other) => {
            return Err(invalid(
                &s.key("codec"),
                format!("{other:?} is not \"h264\" or \"hevc\""),
            ))
        }
    };
    let mut gop = Duration::from_secs(2);
    s.duration("gop", &mut gop)?;
    if gop < Duration::from_millis(250) || gop > Duration::from_secs(20) {
        return Err(invalid(&s.key("gop"), "must be between 250ms and 20s"));
    }
    let audio = match s.string("audio")?.as_deref() {
        None | Some("copy") => AudioMode::Copy,
        Some("none") | Some("off") => AudioMode::Off,
        Some(b) => AudioMode::Aac {
            bitrate_kbps: parse_bitrate_kbps(b)
                .ok()
                .filter(|k| (16..=512).contains(k))
                .ok_or_else(|| {
                    invalid(
                        &s.key("audio"),
                        format!("{b:?}: expected \"copy\", \"none\" or an AAC bitrate from \"16k\" to \"512k\""),
                    )
                })?,
        },
    };
    s.finish()?;
    Ok(RenditionSpec {
        name,
        width,
        height,
        video_bitrate_kbps,
        max_fps,
        codec,
        gop,
        audio,
    })
}

/// "2500k", "2.5M" or "800000" (bits per second) to kbit/s.
pub fn parse_bitrate_kbps(s: &str) -> Result<u32, String> {
    let err = || format!("expected a bitrate like \"2500k\" or \"3M\", got {s:?}");
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k') | Some('K') => (&t[..t.len() - 1], 1.0),
        Some('M') | Some('m') => (&t[..t.len() - 1], 1000.0),
        _ => (t, 0.001),
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    let kbps = (n * mult).round();
    if !kbps.is_finite() || !(16.0..=200_000.0).contains(&kbps) {
        return Err(format!("{s:?} is out of range; allowed 16k..200M"));
    }
    Ok(kbps as u32)
}

/// A sensible video bitrate for a rendition size when none is configured.
fn default_bitrate_kbps(width: Option<u32>, height: Option<u32>) -> u32 {
    // Judge by the shorter side a 16:9 picture of that size would have.
    let short = height.or(width.map(|w| w * 9 / 16)).unwrap_or(720);
    match short {
        1080.. => 5000,
        720.. => 2800,
        480.. => 1200,
        360.. => 800,
        _ => 500,
    }
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
                "" => " (sections: [server], [rtmp], [srt], [transcode], [apps.NAME])".to_string(),
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
    fn renditions_are_read_with_defaults_and_checked() {
        let c = Config::from_toml(
            r#"
            [transcode]
            encoder = "x264"
            [[apps.live.renditions]]
            name = "720p"
            height = 720
            video_bitrate = "2.5M"
            max_fps = 30
            audio = "96k"
            [[apps.live.renditions]]
            name = "small"
            width = 640
            codec = "hevc"
            gop = "1s"
            audio = "none"
            "#,
        )
        .unwrap();
        assert_eq!(c.transcode.encoder, EncoderMode::Software);
        let r = &c.app("live").renditions;
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            RenditionSpec {
                name: "720p".into(),
                width: None,
                height: Some(720),
                video_bitrate_kbps: 2500,
                max_fps: Some(30),
                codec: VideoCodec::H264,
                gop: Duration::from_secs(2),
                audio: AudioMode::Aac { bitrate_kbps: 96 },
            }
        );
        assert_eq!(r[1].codec, VideoCodec::Hevc);
        assert_eq!(r[1].video_bitrate_kbps, 800);
        assert_eq!(r[1].audio, AudioMode::Off);
        assert!(c.has_renditions());

        for (text, key) in [
            ("[[apps.live.renditions]]\nheight = 720", "apps.live.renditions[0].name"),
            ("[[apps.live.renditions]]\nname = \"source\"\nheight = 720", "apps.live.renditions[0].name"),
            ("[[apps.live.renditions]]\nname = \"a\"", "apps.live.renditions[0]"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 721", "apps.live.renditions[0].height"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 720\ncodec = \"vp9\"", "apps.live.renditions[0].codec"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 720\nvideo_bitrate = \"fast\"", "apps.live.renditions[0].video_bitrate"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 720\naudio = \"loud\"", "apps.live.renditions[0].audio"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 720\nfps = 30", "apps.live.renditions[0].fps"),
            ("[[apps.live.renditions]]\nname = \"a\"\nheight = 720\n[[apps.live.renditions]]\nname = \"a\"\nheight = 480", "apps.live.renditions[1].name"),
            ("[apps.live]\nrenditions = \"720p\"", "apps.live.renditions"),
            ("[transcode]\nencoder = \"quicksync\"", "transcode.encoder"),
            ("[apps.live.publish_keys]\ncam1 = \"short\"", "apps.live.publish_keys.cam1"),
            ("[apps.live]\npublish_webhook = \"ftp://x/\"", "apps.live.publish_webhook"),
            ("[apps.live]\nwebhook_timeout = \"0s\"", "apps.live.webhook_timeout"),
            ("[apps.live]\nread_passphrase = \"short\"", "apps.live.read_passphrase"),
            ("[apps.live.read_tokens]\nalice = \"short\"", "apps.live.read_tokens.alice"),
            ("[apps.live.publish_keys]\ncam1 = 5", "apps.live.publish_keys.cam1"),
            ("[apps.live.publish_keys]\n\"a b\" = \"long enough\"", "apps.live.publish_keys.a b"),
            ("[apps.live]\npush = [\"srt://h:1?rendition=720p\"]", "apps.live.push[0]"),
            ("[transcode]\nstall_timeout = \"0s\"", "transcode.stall_timeout"),
            ("[transcode]\nx264_preset = \"warp\"", "transcode.x264_preset"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e:?}, wanted the key {key}");
        }
    }

    #[test]
    fn bitrates_parse() {
        assert_eq!(parse_bitrate_kbps("2500k"), Ok(2500));
        assert_eq!(parse_bitrate_kbps("3M"), Ok(3000));
        assert_eq!(parse_bitrate_kbps("800000"), Ok(800));
        assert!(parse_bitrate_kbps("1k").is_err());
        assert!(parse_bitrate_kbps("k").is_err());
        assert!(parse_bitrate_kbps("NaNk").is_err());
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
        assert_eq!(format!("{:?}", c.transcode), format!("{:?}", d.transcode));
        assert!(!c.app("live").takeover);
        assert!(c.app("live").renditions.is_empty());
    }
}
