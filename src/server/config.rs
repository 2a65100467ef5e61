//! The whole configuration: `[server]` and every owner's section, read from
//! one TOML file. Built-in defaults, then the file, then flags (`main`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Deserializer;
use serde::Deserialize;

use crate::cluster::ClusterConfig;
use crate::config::{self, ConfigError};
use crate::http::ApiToken;
use crate::rtmp::config::RtmpConfig;
use crate::srt::config::SrtConfig;
use crate::stream::config::{AppConfig, Apps};
use crate::telemetry::trace::TelemetryConfig;
use crate::telemetry::LogFormat;
use crate::transcode::config::TranscodeConfig;

/// Listed after an unknown top-level key.
const SECTIONS: &str =
    " (sections: [server], [rtmp], [srt], [transcode], [cluster], [telemetry], [apps.NAME])";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    pub transcode: TranscodeConfig,
    /// Off (`None`) unless the file has a `[cluster]` section.
    pub cluster: Option<ClusterConfig>,
    /// Trace export (off unless a collector is named).
    pub telemetry: TelemetryConfig,
    pub apps: Apps,
}

/// Listeners, TLS files and the process lifecycle (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "config::addr")]
    pub rtmp_addr: SocketAddr,
    #[serde(deserialize_with = "config::addr")]
    pub srt_addr: SocketAddr,
    #[serde(deserialize_with = "config::addr")]
    pub http_addr: SocketAddr,
    #[serde(deserialize_with = "config::parsed")]
    pub log_format: LogFormat,
    #[serde(deserialize_with = "config::duration")]
    pub drain_timeout: Duration,
    /// From TCP accept until the stream must be playable (first keyframe in
    /// every rendition), or the publish fails.
    #[serde(deserialize_with = "config::duration")]
    pub setup_timeout: Duration,
    /// RTMPS (RTMP over TLS) listener; off unless set, with `tls_cert` and
    /// `tls_key` (PEM files).
    #[serde(deserialize_with = "rtmps_addr")]
    pub rtmps_addr: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for `https://` webhooks, besides
    /// the system's.
    pub webhook_ca: Option<PathBuf>,
    /// Bearer token every HTTP request but `/healthz`, `/readyz` and
    /// `/metrics` must carry. Unset: reads stay open and changes are
    /// answered only for loopback clients.
    pub api_token: Option<ApiToken>,
    /// A file whose trimmed content is the token (a mounted Secret, a
    /// systemd credential), read at start; instead of `api_token`.
    pub api_token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            rtmp_addr: SocketAddr::from(([0, 0, 0, 0], 1935)),
            srt_addr: SocketAddr::from(([0, 0, 0, 0], 9000)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            log_format: LogFormat::Text,
            drain_timeout: Duration::from_secs(30),
            setup_timeout: Duration::from_secs(8),
            rtmps_addr: None,
            tls_cert: None,
            tls_key: None,
            webhook_ca: None,
            api_token: None,
            api_token_file: None,
        }
    }
}

/// `server.setup_timeout`'s allowed values.
pub const SETUP_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

fn rtmps_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let a = String::deserialize(d)?;
    a.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{a:?} is not an IP:port address (e.g. \"0.0.0.0:1936\")"
        ))
    })
}

impl ServerConfig {
    /// Rules across keys; errors name keys relative to `[server]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // 0 would close every connection before it could publish; past
        // `Instant`'s range every deadline computed from it would overflow.
        if !SETUP_TIMEOUT_RANGE.contains(&self.setup_timeout) {
            return Err(ConfigError::invalid(
                "setup_timeout",
                format!("{:?} is out of range; allowed 1s..=1h", self.setup_timeout),
            ));
        }
        if self.rtmps_addr.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(ConfigError::invalid(
                "rtmps_addr",
                "needs server.tls_cert and server.tls_key (PEM files)",
            ));
        }
        if self.api_token.is_some() && self.api_token_file.is_some() {
            return Err(ConfigError::invalid(
                "api_token",
                "set server.api_token or server.api_token_file, not both",
            ));
        }
        Ok(())
    }

    /// The HTTP API's token: `api_token`, or what `api_token_file` holds
    /// (read now, surrounding whitespace trimmed). Errors name the key and
    /// the file, never the token.
    pub fn load_api_token(&self) -> Result<Option<ApiToken>, ConfigError> {
        self.validate()?;
        let Some(path) = &self.api_token_file else {
            return Ok(self.api_token.clone());
        };
        let bad = |why: String| {
            ConfigError::invalid("api_token_file", format!("{}: {why}", path.display()))
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        ApiToken::new(text.trim()).map(Some).map_err(bad)
    }
}

/// Where the configuration comes from: the file given with `--config` (the
/// built-in defaults without one) and the flags that override it. The
/// start and every reload read through here, so a reload applies the flags
/// exactly as the start did.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub rtmp_addr: Option<SocketAddr>,
    pub srt_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// Replaces `server.api_token` and `server.api_token_file`.
    pub api_token_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Source {
    /// The configuration, checked: the file's keys, the flags over them,
    /// then the rules across keys again.
    pub fn read(&self) -> Result<Config, ConfigError> {
        self.load().map(|l| l.config)
    }

    /// Like [`read`](Self::read), with the file's text.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let (mut config, text) = match &self.file {
            Some(path) => {
                let text = read_file(path)?;
                (Config::from_file_text(path, &text)?, text)
            }
            None => (Config::default(), String::new()),
        };
        self.overlay(&mut config);
        config.validate()?;
        Ok(Loaded { config, text })
    }

    /// Put the flags over `config`.
    fn overlay(&self, config: &mut Config) {
        let s = &mut config.server;
        if let Some(a) = self.rtmp_addr {
            s.rtmp_addr = a;
        }
        if let Some(a) = self.srt_addr {
            s.srt_addr = a;
        }
        if let Some(a) = self.http_addr {
            s.http_addr = a;
        }
        if let Some(f) = &self.api_token_file {
            s.api_token = None;
            s.api_token_file = Some(f.clone());
        }
        if let Some(f) = self.log_format {
            s.log_format = f;
        }
    }
}

/// A configuration as [`Source::load`] read it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file's text (empty without a file): what the next reload
    /// compares with ([`changed_sections`]).
    pub text: String,
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The sections that differ between two config files' texts, by name
/// (`server`, `rtmp`, `apps.live`, ...): what a reload log line says
/// changed. Only names, never values (keys and tokens are secrets); a text
/// that does not parse counts as empty.
pub fn changed_sections(old: &str, new: &str) -> Vec<String> {
    let table = |t: &str| t.parse::<toml::Table>().unwrap_or_default();
    let (old, new) = (table(old), table(new));
    let mut changed = Vec::new();
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (a, b) = (old.get(name), new.get(name));
        if name != "apps" {
            if a != b {
                changed.push(name.clone());
            }
            continue;
        }
        let apps = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).cloned();
        let (a, b) = (apps(a).unwrap_or_default(), apps(b).unwrap_or_default());
        let apps: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for app in apps {
            if a.get(app) != b.get(app) {
                changed.push(format!("apps.{app}"));
            }
        }
    }
    changed
}

impl Config {
    /// The first key whose new value only a restart can apply: listeners
    /// are bound, the log format and the webhook CA bundle are installed
    /// once per process, the NVML poller runs on its interval. `None`:
    /// everything in `new` can take effect live.
    pub fn restart_only_change(&self, new: &Config) -> Option<&'static str> {
        let (a, b) = (&self.server, &new.server);
        [
            ("server.rtmp_addr", a.rtmp_addr != b.rtmp_addr),
            ("server.srt_addr", a.srt_addr != b.srt_addr),
            ("server.http_addr", a.http_addr != b.http_addr),
            ("server.rtmps_addr", a.rtmps_addr != b.rtmps_addr),
            ("server.log_format", a.log_format != b.log_format),
            ("server.webhook_ca", a.webhook_ca != b.webhook_ca),
            ("srt.workers", self.srt.workers != new.srt.workers),
            ("cluster", self.cluster != new.cluster),
            ("telemetry", self.telemetry != new.telemetry),
            (
                "transcode.gpu_poll_interval",
                self.transcode.gpu_poll_interval != new.transcode.gpu_poll_interval,
            ),
        ]
        .into_iter()
        .find_map(|(key, changed)| changed.then_some(key))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_file_text(path, &read_file(path)?)
    }

    /// [`from_toml`](Self::from_toml), with syntax errors naming `path`.
    fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = config::from_toml(text, SECTIONS)?;
        cfg.apps.resolve().map_err(|e| e.under("apps"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rules across keys, checked again after flags override the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate().map_err(|e| e.under("server"))?;
        self.rtmp.validate().map_err(|e| e.under("rtmp"))?;
        self.srt.validate().map_err(|e| e.under("srt"))?;
        self.transcode
            .validate()
            .map_err(|e| e.under("transcode"))?;
        if let Some(c) = &self.cluster {
            c.validate().map_err(|e| e.under("cluster"))?;
        }
        self.telemetry
            .validate()
            .map_err(|e| e.under("telemetry"))?;
        Ok(())
    }

    /// Whether any application transcodes.
    pub fn has_renditions(&self) -> bool {
        self.apps.has_renditions()
    }

    /// The settings that govern application `name` (see [`Apps::lookup`]);
    /// `None`: an unknown application, refused.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.lookup(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcode::config::{AudioMode, EncoderMode, RenditionSpec, VideoCodec};

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
        assert!(c.app("live").unwrap().takeover);
        assert!(c.app("other").is_none());
        assert!(c.app("live").unwrap().push[0].to_string().contains(":9100"));
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
    fn setup_timeout_is_one_second_to_one_hour() {
        for ok in ["1s", "8s", "1h", "60m"] {
            let c = Config::from_toml(&format!("[server]\nsetup_timeout = \"{ok}\""));
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        for (bad, shown) in [("0s", "0ns"), ("999ms", "999ms"), ("61m", "3660s")] {
            assert_eq!(
                err(&format!("[server]\nsetup_timeout = \"{bad}\"")),
                format!(
                    "config key `server.setup_timeout`: {shown} is out of range; allowed 1s..=1h"
                )
            );
        }
        // Past every duration's bound (24h): refused where it is read.
        let e = err("[server]\nsetup_timeout = \"18446744073709551615s\"");
        assert!(
            e.contains("server.setup_timeout") && e.contains("24h"),
            "{e}"
        );
        // Checked again after flags override the file.
        let mut c = Config::default();
        c.server.setup_timeout = Duration::MAX;
        assert!(c.validate().is_err());
    }

    #[test]
    fn messages_keep_their_wording() {
        assert_eq!(
            err("[rtmp]\nmax_chunk_streams = 0"),
            "config key `rtmp.max_chunk_streams`: 0 is out of range; allowed 2..=65599"
        );
        assert_eq!(
            err("[transcoding]\nenabled = true"),
            "unknown config key `transcoding` (sections: [server], [rtmp], [srt], [transcode], [cluster], [telemetry], [apps.NAME])"
        );
        assert_eq!(err("[rtmp]\nx = 1"), "unknown config key `rtmp.x`");
        assert_eq!(
            err("[server]\nrtmp_addr = \"nope\""),
            "config key `server.rtmp_addr`: \"nope\" is not an IP:port address (e.g. \"0.0.0.0:1935\")"
        );
        assert_eq!(
            err("[server]\nrtmps_addr = \"0.0.0.0:1936\""),
            "config key `server.rtmps_addr`: needs server.tls_cert and server.tls_key (PEM files)"
        );
        assert_eq!(
            err("[server]\nlog_format = \"xml\""),
            "config key `server.log_format`: expected \"text\" or \"json\", got \"xml\""
        );
        assert!(err("[rtmp\n").starts_with("config file <inline> is not valid TOML: "));
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
        let r = &c.app("live").unwrap().renditions;
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
    fn api_token_is_inline_or_from_a_file_never_both() {
        let c = Config::from_toml("[server]\napi_token = \"0123456789abcdef\"").unwrap();
        let t = c.server.load_api_token().unwrap().expect("a token");
        assert!(t.verify(b"0123456789abcdef"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        assert!(Config::default().server.load_api_token().unwrap().is_none());

        let dir = std::env::temp_dir().join(format!("sluice-api-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "\t0123456789abcdef-from-file\r\n").unwrap();
        let text = format!(
            "[server]\napi_token_file = {:?}",
            file.display().to_string()
        );
        let c = Config::from_toml(&text).unwrap();
        let t = c.server.load_api_token().unwrap().expect("a token");
        assert!(t.verify(b"0123456789abcdef-from-file"));

        let both = format!("{text}\napi_token = \"0123456789abcdef\"");
        assert_eq!(
            err(&both),
            "config key `server.api_token`: set server.api_token or server.api_token_file, not both"
        );
        std::fs::write(&file, "too-short\n").unwrap();
        let e = c
            .server
            .load_api_token()
            .unwrap_err()
            .under("server")
            .to_string();
        assert!(e.starts_with("config key `server.api_token_file`: "), "{e}");
        assert!(e.contains("at least 16") && !e.contains("too-short"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = c.server.load_api_token().unwrap_err().to_string();
        assert!(e.contains("cannot read it"), "{e}");
        assert!(err("[server]\napi_token = \"short\"").contains("`server.api_token`"));
    }

    #[test]
    fn a_reload_names_the_changed_sections_never_their_values() {
        let old = "[rtmp]\nmax_streams = 5\n[apps.live.publish_keys]\ncam1 = \"secret-one-0123\"\n[apps.club]\n";
        let new = "[rtmp]\nmax_streams = 5\n[apps.live.publish_keys]\ncam1 = \"secret-two-0123\"\n[apps.news]\n[srt]\n";
        assert_eq!(
            changed_sections(old, new),
            ["apps.club", "apps.live", "apps.news", "srt"]
        );
        assert!(changed_sections(old, old).is_empty());
        assert_eq!(changed_sections("", "[server]\n"), ["server"]);
    }

    #[test]
    fn restart_only_keys_are_named() {
        let base = Config::default();
        assert_eq!(base.restart_only_change(&base.clone()), None);
        for (text, key) in [
            ("[server]\nrtmp_addr = \"127.0.0.1:1\"", "server.rtmp_addr"),
            ("[server]\nsrt_addr = \"127.0.0.1:1\"", "server.srt_addr"),
            ("[server]\nhttp_addr = \"127.0.0.1:1\"", "server.http_addr"),
            ("[server]\nlog_format = \"json\"", "server.log_format"),
            ("[server]\nwebhook_ca = \"/x.pem\"", "server.webhook_ca"),
            (
                "[transcode]\ngpu_poll_interval = \"1s\"",
                "transcode.gpu_poll_interval",
            ),
        ] {
            let new = Config::from_toml(text).unwrap();
            assert_eq!(base.restart_only_change(&new), Some(key), "{text}");
        }
        // Everything else changes live.
        let new = Config::from_toml(
            "[server]\nsetup_timeout = \"3s\"\ndrain_timeout = \"1s\"\n\
             api_token = \"0123456789abcdef\"\n[rtmp]\nmax_streams = 3\n\
             [srt]\nlatency = \"300ms\"\n[transcode]\nencoder = \"x264\"\n[apps.live]\n",
        )
        .unwrap();
        assert_eq!(base.restart_only_change(&new), None);
    }

    #[test]
    fn flags_override_the_file_at_every_read() {
        let dir = std::env::temp_dir().join(format!("sluice-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sluice.toml");
        std::fs::write(&file, "[server]\nrtmp_addr = \"127.0.0.1:1\"\nlog_format = \"text\"\napi_token = \"0123456789abcdef\"\n").unwrap();
        let source = Source {
            file: Some(file.clone()),
            rtmp_addr: Some("127.0.0.1:2".parse().unwrap()),
            log_format: Some(LogFormat::Json),
            api_token_file: Some(dir.join("token")),
            ..Source::default()
        };
        let loaded = source.load().unwrap();
        let s = &loaded.config.server;
        assert_eq!(s.rtmp_addr.port(), 2);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.api_token.is_none() && s.api_token_file.is_some());
        assert!(loaded.text.contains("rtmp_addr"));
        // The file changes, the flags still win.
        std::fs::write(&file, "[server]\nrtmp_addr = \"127.0.0.1:3\"\n").unwrap();
        assert_eq!(source.read().unwrap().server.rtmp_addr.port(), 2);
        std::fs::write(&file, "[server\n").unwrap();
        let e = source.read().unwrap_err().to_string();
        assert!(
            e.contains("sluice.toml") && e.contains("not valid TOML"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Source::default().load().unwrap().text.is_empty());
    }

    /// deploy/sluice.example.toml documents the defaults; keep it true.
    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../deploy/sluice.example.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c.server), format!("{:?}", d.server));
        assert_eq!(format!("{:?}", c.rtmp), format!("{:?}", d.rtmp));
        assert_eq!(format!("{:?}", c.srt), format!("{:?}", d.srt));
        assert_eq!(format!("{:?}", c.transcode), format!("{:?}", d.transcode));
        assert!(!c.app("live").unwrap().takeover);
        assert!(c.app("live").unwrap().renditions.is_empty());
        // Its applications behave as none at all: every name is served
        // with the defaults.
        for name in ["live", "other"] {
            let app = c.app(name).expect(name);
            assert_eq!(format!("{app:?}"), format!("{:?}", AppConfig::default()));
        }
        assert_eq!(c.apps.named().count(), 0);
    }

    /// README's "Configuration", "Transcoded renditions" and "Tracing"
    /// examples load.
    #[test]
    fn readme_examples_load() {
        let readme = include_str!("../../README.md");
        for title in [
            "## Configuration\n",
            "## Transcoded renditions\n",
            "### Tracing\n",
        ] {
            let section = readme.split(title).nth(1).expect(title);
            let block = section
                .split("```toml\n")
                .nth(1)
                .and_then(|b| b.split("```").next())
                .expect("a toml block");
            if let Err(e) = Config::from_toml(block) {
                panic!("README {title:?} example: {e}");
            }
        }
    }
}
