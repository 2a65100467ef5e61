//! `[apps.NAME]`: what every stream of an application gets (takeover, push
//! targets, renditions) and who may publish and play it. Assembled from the
//! owners' types: `auth` secrets and webhook URLs, `srt` push targets and
//! passphrases, `transcode` renditions. Pure data.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::path::validate_segment;
use crate::auth::Secret;
use crate::config::{self, ConfigError};
use crate::record::config::{self as record_config, RecordSpec};
use crate::rtmp::config::{parse_rtmp_url, RtmpTarget};
use crate::srt::config::{parse_push_url, passphrase, PushTarget};
use crate::transcode::config::{rendition_rules, RenditionSpec, VideoCodec};

/// Per-application settings (`[apps.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// A new publisher on a live path replaces the old one instead of being refused.
    pub takeover: bool,
    /// Destinations every stream of this application is pushed to (SRT,
    /// RTMP, RTMPS). A required one (a plain URL) must connect during setup
    /// and a failing one ends the stream; an optional one
    /// (`{ url = "…", required = false }`) is retried while the stream runs.
    pub push: Vec<PushEntry>,
    /// Transcoded renditions every stream of this application gets, besides
    /// "source". Empty: no FFmpeg runs for it.
    pub renditions: Vec<RenditionSpec>,
    /// Stream name → secret. Non-empty: only these streams may be
    /// published, each with its `?key=`.
    pub publish_keys: BTreeMap<String, Secret>,
    /// `http://...` asked (POST JSON) before every publish; 2xx allows.
    #[serde(deserialize_with = "webhook")]
    pub publish_webhook: Option<String>,
    #[serde(deserialize_with = "config::duration")]
    pub webhook_timeout: Duration,
    /// SRT publishers of this application's streams must use this
    /// passphrase (instead of `srt.passphrase`).
    #[serde(deserialize_with = "passphrase")]
    pub publish_passphrase: Option<String>,
    /// SRT players of this application's streams must use this passphrase
    /// (instead of `srt.passphrase`).
    #[serde(deserialize_with = "passphrase")]
    pub read_passphrase: Option<String>,
    /// User → secret. Non-empty: players must name a user (`u=`) and its
    /// token (`s=` or `user_token=`) in the streamid.
    pub read_tokens: BTreeMap<String, Secret>,
    /// `http://...` asked (POST JSON, action "read") before every SRT
    /// player of this application is accepted; 2xx allows.
    #[serde(deserialize_with = "webhook")]
    pub read_webhook: Option<String>,
    /// Record the source rendition of every stream to MPEG-TS segments
    /// under `record_dir/APP/KEY/`.
    pub record: bool,
    /// Relative paths are under the server's working directory.
    pub record_dir: PathBuf,
    /// Segments are cut at the first keyframe this long after their start.
    #[serde(deserialize_with = "record_config::segment")]
    pub record_segment: Duration,
    /// A recording that cannot start fails the publish; one that fails
    /// ends the stream. Otherwise (the default) it is retried.
    pub record_required: bool,
    /// Segments older than this are deleted; unset keeps them forever.
    #[serde(deserialize_with = "record_config::keep")]
    pub record_keep: Option<Duration>,
    /// How an SRT player that joins a running stream starts (a player can
    /// ask for another with `join=` in its streamid).
    pub join: JoinMode,
}

/// How an SRT player joins a running stream (`join = "…"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// The GOP cache at once, its video retimed into the few milliseconds
    /// before the live point and its audio from the live point: the first
    /// picture at once, and presented live (`ts::join`).
    #[default]
    Live,
    /// The GOP cache at once with its own timestamps: the first picture at
    /// once, but a player that presents by timestamp stays behind live by
    /// the cached keyframe's age.
    Cache,
    /// Nothing until the next keyframe: live, after a wait of up to a GOP.
    Keyframe,
}

impl JoinMode {
    pub const ALL: [JoinMode; 3] = [JoinMode::Live, JoinMode::Cache, JoinMode::Keyframe];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinMode::Live => "live",
            JoinMode::Cache => "cache",
            JoinMode::Keyframe => "keyframe",
        }
    }

    /// From a streamid's `join=` value.
    pub fn parse(s: &str) -> Option<JoinMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
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
            publish_passphrase: None,
            read_passphrase: None,
            read_tokens: BTreeMap::new(),
            read_webhook: None,
            record: false,
            record_dir: PathBuf::from(record_config::DEFAULT_DIR),
            record_segment: record_config::DEFAULT_SEGMENT,
            record_required: false,
            record_keep: None,
            join: JoinMode::Live,
        }
    }
}

fn webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    crate::auth::parse_webhook_url(&url).map_err(de::Error::custom)?;
    Ok(Some(url))
}

/// Where a `push` entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDest {
    Srt(PushTarget),
    /// `rtmp://` or `rtmps://` (restream to a platform or another server).
    Rtmp(RtmpTarget),
}

/// One `push` entry: a URL (a required leg), or a table
/// `{ url = "…", required = false, rendition = "720p" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEntry {
    pub dest: PushDest,
    /// A required leg must connect during setup and ends the stream when
    /// it fails; an optional one is retried with backoff and never does.
    pub required: bool,
}

impl PushEntry {
    /// A required entry from its URL (`srt://`, `rtmp://`, `rtmps://`).
    pub fn parse(url: &str) -> Result<PushEntry, String> {
        let dest = if url.starts_with("srt://") {
            PushDest::Srt(parse_push_url(url)?)
        } else if url.starts_with("rtmp://") || url.starts_with("rtmps://") {
            PushDest::Rtmp(parse_rtmp_url(url)?)
        } else {
            return Err(
                "must start with srt://, rtmp:// or rtmps:// (srt://HOST:PORT?options, rtmp://HOST/APP/KEY)"
                    .into(),
            );
        };
        Ok(PushEntry {
            dest,
            required: true,
        })
    }

    /// The rendition pushed ("source" unless named).
    pub fn rendition(&self) -> &str {
        match &self.dest {
            PushDest::Srt(t) => &t.rendition,
            PushDest::Rtmp(_) => "source",
        }
    }
}

impl std::fmt::Display for PushEntry {
    /// The destination without its secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dest {
            PushDest::Srt(t) => t.fmt(f),
            PushDest::Rtmp(t) => t.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for PushEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = PushEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a URL (srt://…, rtmp://…, rtmps://…) or a table { url = \"…\", required = false, rendition = \"NAME\" }",
                )
            }
            fn visit_str<E: de::Error>(self, url: &str) -> Result<PushEntry, E> {
                PushEntry::parse(url).map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<PushEntry, A::Error> {
                let mut url: Option<String> = None;
                let mut required = None;
                let mut rendition: Option<String> = None;
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "url" => url = Some(map.next_value()?),
                        "required" => required = Some(map.next_value::<bool>()?),
                        "rendition" => rendition = Some(map.next_value()?),
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["url", "required", "rendition"],
                            ))
                        }
                    }
                }
                let url = url.ok_or_else(|| de::Error::missing_field("url"))?;
                let mut e = PushEntry::parse(&url).map_err(de::Error::custom)?;
                e.required = required.unwrap_or(true);
                if let Some(r) = rendition {
                    validate_segment(&r).map_err(|_| {
                        de::Error::custom(
                            "rendition must be a name of letters, digits, '-', '_', '.', '~'",
                        )
                    })?;
                    match &mut e.dest {
                        PushDest::Srt(t) if t.rendition != "source" && t.rendition != r => {
                            return Err(de::Error::custom(
                                "the URL's rendition= and the table's rendition differ",
                            ))
                        }
                        PushDest::Srt(t) => t.rendition = r,
                        PushDest::Rtmp(_) if r != "source" => {
                            return Err(de::Error::custom(
                                "an RTMP push carries the source rendition only",
                            ))
                        }
                        PushDest::Rtmp(_) => {}
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_any(V)
    }
}

impl AppConfig {
    /// Whether publishes need a key or the webhook's answer.
    pub fn authenticates_publishers(&self) -> bool {
        !self.publish_keys.is_empty() || self.publish_webhook.is_some()
    }

    /// Whether its players must prove anything (a passphrase of its own,
    /// user tokens or the read webhook).
    pub fn authenticates_readers(&self) -> bool {
        self.read_passphrase.is_some()
            || !self.read_tokens.is_empty()
            || self.read_webhook.is_some()
    }

    /// The recording leg of its streams, when `record = true`.
    pub fn record_spec(&self) -> Option<RecordSpec> {
        self.record.then(|| RecordSpec {
            dir: self.record_dir.clone(),
            segment: self.record_segment,
            keep: self.record_keep,
            required: self.record_required,
        })
    }

    /// Rules across keys, after the table was read: names of streams and
    /// users, the rendition table (which also fills in size-based
    /// bitrates), and pushes of renditions that exist. `name` is the
    /// application's; errors name keys relative to `[apps.NAME]`.
    pub fn resolve(&mut self, name: &str) -> Result<(), ConfigError> {
        if self.webhook_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "webhook_timeout",
                "must be greater than zero",
            ));
        }
        for user in self.read_tokens.keys() {
            if user.is_empty() || user.len() > 64 || user.contains([',', '=']) {
                return Err(ConfigError::invalid(
                    format!("read_tokens.{user}"),
                    "user names are 1-64 characters without ',' or '='",
                ));
            }
        }
        for stream in self.publish_keys.keys() {
            validate_segment(stream)
                .map_err(|m| ConfigError::invalid(format!("publish_keys.{stream}"), m))?;
        }
        rendition_rules(&mut self.renditions).map_err(|e| e.under("renditions"))?;
        record_config::check(self.record_segment, self.record_keep)?;
        if self.record_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "record_dir",
                "must not be empty; leave it out for \"recordings\" under the working directory",
            ));
        }
        for (i, t) in self.push.iter().enumerate() {
            let rendition = t.rendition();
            if rendition != "source" && !self.renditions.iter().any(|r| r.name == rendition) {
                return Err(ConfigError::invalid(
                    format!("push[{i}]"),
                    format!(
                        "pushes rendition {rendition:?}, which apps.{name}.renditions does not define"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The name of the default section, `[apps."*"]`: its settings apply to
/// every application not configured by name.
pub const DEFAULT_APP: &str = "*";

/// What an application not configured by name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownApps {
    /// No application is configured: every one is served with the defaults.
    Open,
    /// `[apps."*"]` gives its settings.
    DefaultSection,
    /// Publishes and reads are refused (`unknown_app`).
    Refused,
}

impl UnknownApps {
    /// As the start-up log says it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownApps::Open => "open",
            UnknownApps::DefaultSection => "default section",
            UnknownApps::Refused => "refused",
        }
    }
}

/// Every `[apps.NAME]`, by name (and `[apps."*"]`, the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Apps(BTreeMap<String, AppConfig>);

impl Apps {
    /// Check every application (see [`AppConfig::resolve`]); errors name
    /// keys relative to `[apps]`.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        for (name, app) in &mut self.0 {
            // "*" is the one name that is not a path segment: no stream
            // path can name it, so it can only be the default section.
            if name != DEFAULT_APP {
                validate_segment(name).map_err(|m| ConfigError::invalid(name.as_str(), m))?;
            }
            app.resolve(name).map_err(|e| e.under(name))?;
        }
        Ok(())
    }

    /// The settings that govern application `name`: its own section, else
    /// the default section `[apps."*"]`. `None` when neither exists but
    /// some application is configured: an unknown application, refused
    /// (a keyed relay must not be open one letter away). With no
    /// application configured at all (zero config), every application
    /// gets the defaults.
    pub fn lookup(&self, name: &str) -> Option<&AppConfig> {
        static OPEN: LazyLock<AppConfig> = LazyLock::new(AppConfig::default);
        if self.0.is_empty() {
            return Some(&OPEN);
        }
        self.0.get(name).or_else(|| self.0.get(DEFAULT_APP))
    }

    /// The applications configured by name (not the default section).
    pub fn named(&self) -> impl Iterator<Item = &str> {
        self.0
            .keys()
            .map(String::as_str)
            .filter(|n| *n != DEFAULT_APP)
    }

    /// What [`Apps::lookup`] does for a name not configured.
    pub fn unknown(&self) -> UnknownApps {
        if self.0.is_empty() {
            UnknownApps::Open
        } else if self.0.contains_key(DEFAULT_APP) {
            UnknownApps::DefaultSection
        } else {
            UnknownApps::Refused
        }
    }

    /// The default section when it pushes and nothing authenticates its
    /// publishers: anyone may then publish under any unlisted name into
    /// its destinations.
    pub fn open_default_push(&self) -> Option<&AppConfig> {
        self.0
            .get(DEFAULT_APP)
            .filter(|d| !d.push.is_empty() && !d.authenticates_publishers())
    }

    /// Named applications that authenticate publishers or players while
    /// the default section authenticates neither: such an application is
    /// open anyway under any other spelling (`Live`, `other`), through the
    /// default section — the hole the unknown-application policy closes.
    /// Empty without a default section, or when it authenticates.
    pub fn guarded_beside_open_default(&self) -> Vec<&str> {
        match self.0.get(DEFAULT_APP) {
            Some(d) if !d.authenticates_publishers() && !d.authenticates_readers() => self
                .0
                .iter()
                .filter(|(n, a)| {
                    *n != DEFAULT_APP && (a.authenticates_publishers() || a.authenticates_readers())
                })
                .map(|(n, _)| n.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether any application transcodes.
    pub fn has_renditions(&self) -> bool {
        self.0.values().any(|a| !a.renditions.is_empty())
    }

    /// The codec of every configured rendition (what the encoder choice
    /// must cover); empty when nothing transcodes.
    pub fn rendition_codecs(&self) -> Vec<VideoCodec> {
        self.0
            .values()
            .flat_map(|a| a.renditions.iter().map(|r| r.codec))
            .collect()
    }
}

impl Deref for Apps {
    type Target = BTreeMap<String, AppConfig>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromIterator<(String, AppConfig)> for Apps {
    fn from_iter<I: IntoIterator<Item = (String, AppConfig)>>(iter: I) -> Self {
        Apps(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps(text: &str) -> Result<Apps, ConfigError> {
        let mut a: Apps = config::section_from_toml("apps", text)?;
        a.resolve().map_err(|e| e.under("apps"))?;
        Ok(a)
    }

    fn err(text: &str) -> String {
        apps(text).unwrap_err().to_string()
    }

    #[test]
    fn apps_are_read() {
        let a = apps(
            r#"
            [live]
            takeover = true
            push = ["srt://127.0.0.1:9100?streamid=live/x&latency=200"]
            webhook_timeout = "500ms"
            [live.publish_keys]
            cam1 = "long enough"
            [[live.renditions]]
            name = "720p"
            height = 720
            "#,
        )
        .unwrap();
        let live = a.lookup("live").unwrap();
        assert!(live.takeover);
        assert!(live.push[0].to_string().contains(":9100"));
        assert_eq!(live.webhook_timeout, Duration::from_millis(500));
        assert!(live.publish_keys["cam1"].verify("long enough"));
        assert_eq!(live.renditions[0].video_bitrate_kbps, 2800);
        assert!(a.has_renditions());
        assert_eq!(a.rendition_codecs(), vec![VideoCodec::H264]);
        assert!(!apps("[live]").unwrap().has_renditions());
    }

    #[test]
    fn unknown_applications_are_refused_unless_a_default_is_configured() {
        // Zero config: everything is open, with the defaults.
        let open = Apps::default();
        let any = open.lookup("anything").unwrap();
        assert!(any.publish_keys.is_empty() && !any.takeover);
        assert_eq!(any.webhook_timeout, Duration::from_secs(2));
        // Any section: only the configured names (case matters).
        let a = apps("[live]\ntakeover = true").unwrap();
        assert!(a.lookup("live").unwrap().takeover);
        for unknown in ["Live", "other", "live2", "*x"] {
            assert!(a.lookup(unknown).is_none(), "{unknown}");
        }
        // A default section covers every other name, not the named ones.
        let a = apps(
            r#"
            [live]
            takeover = true
            ["*"]
            push = ["srt://127.0.0.1:9100?streamid=x"]
            webhook_timeout = "1s"
            [[ "*".renditions ]]
            name = "480p"
            height = 480
            ["*".publish_keys]
            cam1 = "long enough"
            "#,
        )
        .unwrap();
        let other = a.lookup("other").unwrap();
        assert!(other.publish_keys["cam1"].verify("long enough"));
        assert_eq!(other.renditions[0].name, "480p");
        assert!(other.push[0].to_string().contains(":9100"));
        assert_eq!(other.webhook_timeout, Duration::from_secs(1));
        let live = a.lookup("live").unwrap();
        assert!(live.takeover && live.publish_keys.is_empty() && live.push.is_empty());
        assert!(a.has_renditions());
    }

    #[test]
    fn the_policy_for_unknown_applications_is_described() {
        let open = Apps::default();
        assert_eq!(open.unknown(), UnknownApps::Open);
        assert_eq!(open.named().count(), 0);
        let a = apps("[live]\n[studio]").unwrap();
        assert_eq!(a.unknown(), UnknownApps::Refused);
        assert_eq!(a.named().collect::<Vec<_>>(), ["live", "studio"]);
        let push = "push = [\"srt://h:1\"]";
        let a = apps(&format!("[live]\n[\"*\"]\n{push}")).unwrap();
        assert_eq!(a.unknown(), UnknownApps::DefaultSection);
        assert_eq!(a.named().collect::<Vec<_>>(), ["live"]);
        assert!(a.open_default_push().unwrap().push[0]
            .to_string()
            .ends_with(":1"));
        for guarded in [
            format!("[\"*\"]\n{push}\npublish_webhook = \"http://h/\""),
            format!("[\"*\"]\n{push}\n[\"*\".publish_keys]\ncam1 = \"long enough\""),
            format!("[\"*\"]\n[live]\n{push}"),
        ] {
            assert!(
                apps(&guarded).unwrap().open_default_push().is_none(),
                "{guarded}"
            );
        }
    }

    #[test]
    fn an_open_default_beside_guarded_applications_is_found() {
        let keyed = "[live.publish_keys]\ncam1 = \"long enough\"";
        let a = apps(&format!(
            "[\"*\"]\n[open]\n{keyed}\n[club]\nread_tokens = {{ alice = \"long enough\" }}"
        ))
        .unwrap();
        assert_eq!(a.guarded_beside_open_default(), ["club", "live"]);
        // No default section, or one that authenticates: nothing to say.
        assert!(apps(keyed)
            .unwrap()
            .guarded_beside_open_default()
            .is_empty());
        let guarded = format!("[\"*\"]\npublish_webhook = \"http://h/\"\n{keyed}");
        assert!(apps(&guarded)
            .unwrap()
            .guarded_beside_open_default()
            .is_empty());
        let read_guarded = format!("[\"*\"]\nread_passphrase = \"long enough pass\"\n{keyed}");
        assert!(apps(&read_guarded)
            .unwrap()
            .guarded_beside_open_default()
            .is_empty());
        // Nothing named authenticates: the default is as open as they are.
        assert!(apps("[\"*\"]\n[live]")
            .unwrap()
            .guarded_beside_open_default()
            .is_empty());
    }

    #[test]
    fn recording_is_read_with_its_defaults() {
        let a = apps("[live]\n[studio]\nrecord = true\nrecord_dir = \"/srv/rec\"\nrecord_segment = \"10s\"\nrecord_keep = \"7d\"\nrecord_required = true").unwrap();
        assert_eq!(a.lookup("live").unwrap().record_spec(), None);
        let s = a.lookup("studio").unwrap().record_spec().unwrap();
        assert_eq!(s.dir, PathBuf::from("/srv/rec"));
        assert_eq!(s.segment, Duration::from_secs(10));
        assert_eq!(s.keep, Some(Duration::from_secs(7 * 86_400)));
        assert!(s.required);
        let d = apps("[live]\nrecord = true").unwrap();
        assert_eq!(
            d.lookup("live").unwrap().record_spec(),
            Some(RecordSpec::default())
        );
    }

    #[test]
    fn only_the_exact_key_star_is_the_default() {
        for name in ["\"**\"", "\"*a\"", "\"a*\"", "\" *\""] {
            let e = err(&format!("[{name}]\ntakeover = true"));
            assert!(e.contains("contains"), "{name}: {e}");
        }
        let e = err("[\"*\"]\ntakover = true");
        assert!(e.contains("`apps.*.takover`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[live]\ntakover = true", "`apps.live.takover`"),
            ("[live]\ntakeover = \"yes\"", "`apps.live.takeover`"),
            ("[\"a b\"]\ntakeover = true", "`apps.a b`"),
            ("[live]\npush = [\"udp://x:1\"]", "`apps.live.push[0]`"),
            ("[live]\npush = [5]", "`apps.live.push[0]`"),
            ("[live]\npush = \"srt://x:1\"", "`apps.live.push`"),
            (
                "[live]\npush = [\"srt://h:1?rendition=720p\"]",
                "`apps.live.push[0]`",
            ),
            ("[live]\nrenditions = \"720p\"", "`apps.live.renditions`"),
            (
                "[[live.renditions]]\nname = \"a\"",
                "`apps.live.renditions[0]`",
            ),
            (
                "[live.publish_keys]\ncam1 = \"short\"",
                "`apps.live.publish_keys.cam1`",
            ),
            (
                "[live.publish_keys]\ncam1 = 5",
                "`apps.live.publish_keys.cam1`",
            ),
            (
                "[live.publish_keys]\n\"a b\" = \"long enough\"",
                "`apps.live.publish_keys.a b`",
            ),
            (
                "[live]\npublish_webhook = \"ftp://x/\"",
                "`apps.live.publish_webhook`",
            ),
            (
                "[live]\nread_webhook = \"ftp://x/\"",
                "`apps.live.read_webhook`",
            ),
            (
                "[live]\nwebhook_timeout = \"0s\"",
                "`apps.live.webhook_timeout`",
            ),
            (
                "[live]\nread_passphrase = \"short\"",
                "`apps.live.read_passphrase`",
            ),
            (
                "[live]\npublish_passphrase = \"short\"",
                "`apps.live.publish_passphrase`",
            ),
            (
                "[live.read_tokens]\nalice = \"short\"",
                "`apps.live.read_tokens.alice`",
            ),
            (
                "[live.read_tokens]\n\"a=b\" = \"long enough\"",
                "`apps.live.read_tokens.a=b`",
            ),
            ("live = 5", "`apps.live`"),
            (
                "[live]\nrecord_segment = \"0s\"",
                "`apps.live.record_segment`",
            ),
            (
                "[live]\nrecord_segment = \"25h\"",
                "`apps.live.record_segment`",
            ),
            ("[live]\nrecord_segment = 5", "`apps.live.record_segment`"),
            ("[live]\nrecord_keep = \"1w\"", "`apps.live.record_keep`"),
            (
                "[live]\nrecord_segment = \"2m\"\nrecord_keep = \"1m\"",
                "`apps.live.record_keep`",
            ),
            ("[live]\nrecord_dir = \"\"", "`apps.live.record_dir`"),
            ("[live]\nrecord = \"yes\"", "`apps.live.record`"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e:?}, wanted the key {key}");
        }
    }
}
