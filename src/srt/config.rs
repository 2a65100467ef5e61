//! `[srt]` (the SRT listener's settings) and SRT push targets
//! (`srt://host:port?...`), each parsing and checking itself. Pure data.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::config::{self, ConfigError};
use crate::stream::path::validate_segment;

/// SRT egress (`[srt]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrtConfig {
    /// TSBPD latency we offer; the larger of ours and the caller's wins.
    #[serde(deserialize_with = "config::duration")]
    pub latency: Duration,
    /// A player silent this long is dropped.
    #[serde(deserialize_with = "config::duration")]
    pub peer_idle_timeout: Duration,
    /// Callers must use this passphrase (10–79 characters) when set.
    #[serde(deserialize_with = "passphrase")]
    pub passphrase: Option<String>,
    /// Most concurrent SRT players on this server; more get 1402.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_players: usize,
    /// Most concurrent SRT players of one stream (all renditions); more get 1402.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_players_per_stream: usize,
    /// SRT handshake datagrams accepted per client IP per second, for
    /// Inductions and for Conclusions with a valid cookie each; the rest
    /// are dropped (a rejected libsrt caller retries every 50 ms forever,
    /// and one cookie serves any number of Conclusions).
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_handshakes_per_ip_per_second: u32,
    /// Listener workers: this many sockets on the SRT port
    /// (`SO_REUSEPORT`), each served by its own task, so players use more
    /// than one core. The kernel sends each peer address to one of them,
    /// always the same. Per-address handshake and webhook budgets are per
    /// worker; the player limits hold for the server. Restart only.
    #[serde(deserialize_with = "config::int::<1, 64, _, _>")]
    pub workers: usize,
}

impl Default for SrtConfig {
    fn default() -> Self {
        SrtConfig {
            latency: Duration::from_millis(120),
            peer_idle_timeout: Duration::from_secs(5),
            passphrase: None,
            max_players: 1000,
            max_players_per_stream: 500,
            max_handshakes_per_ip_per_second: 20,
            workers: 1,
        }
    }
}

impl SrtConfig {
    /// Rules across keys; errors name keys relative to `[srt]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // SRT carries latency in 16-bit milliseconds on the wire.
        if self.latency > Duration::from_millis(65_535) {
            return Err(ConfigError::invalid("latency", "must be at most 65535ms"));
        }
        Ok(())
    }
}

/// An SRT passphrase: 10 to 79 characters (SRTO_PASSPHRASE).
pub fn passphrase<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let p = String::deserialize(d)?;
    if !(10..=79).contains(&p.chars().count()) {
        return Err(de::Error::custom("must be 10 to 79 characters long"));
    }
    Ok(Some(p))
}

/// One configured destination. It displays (and debug-prints) as
/// `srt://host:port` with its non-secret options only: its streamid and
/// passphrase never reach a log line, a status text or the API.
#[derive(Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub host: String,
    pub port: u16,
    pub streamid: Option<String>,
    pub passphrase: Option<String>,
    /// TSBPD latency; `None` uses `srt.latency`.
    pub latency: Option<Duration>,
    /// Which rendition of the stream is pushed ("source" unless `rendition=`).
    pub rendition: String,
}

/// Parse `srt://host:port?streamid=..&passphrase=..&latency=MS&rendition=NAME`
/// (latency in milliseconds, as srt-live-transmit and libsrt URIs use).
/// Errors show nothing past `srt://HOST:PORT` but option names: a secret
/// typed where it does not belong (`srt://h:1&streamid=…`) never reaches a
/// message, and a host must be a host name or an IP address.
pub fn parse_push_url(raw: &str) -> Result<PushTarget, String> {
    let rest = raw
        .strip_prefix("srt://")
        .ok_or("must start with srt:// (srt://HOST:PORT?options)")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or("needs srt://HOST:PORT (options after \"?\")")?;
    let host = host_of(host)
        .ok_or("the host is not a host name or an IP address (srt://HOST:PORT?options)")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{}\": the port is not a number 1 to 65535 (options start after \"?\")",
            shown(host, "…")
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("\"{}\": the port must be 1 to 65535", shown(host, port)))?;
    let mut t = PushTarget {
        host: host.to_string(),
        port,
        streamid: None,
        passphrase: None,
        latency: None,
        rendition: "source".to_string(),
    };
    let url = shown(host, &port.to_string());
    let bad = |what: &str| format!("\"{url}\": {what}");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(bad("an option is not NAME=VALUE"));
        };
        match k {
            "streamid" => {
                if v.len() > super::streamid::MAX_LEN {
                    return Err(bad("streamid longer than 512 bytes"));
                }
                t.streamid = Some(v.to_string());
            }
            "passphrase" => {
                if !(10..=79).contains(&v.len()) {
                    return Err(bad("passphrase must be 10 to 79 characters"));
                }
                t.passphrase = Some(v.to_string());
            }
            "latency" => {
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| *ms <= 65_535)
                    .ok_or_else(|| bad("latency must be 0 to 65535 (ms)"))?;
                t.latency = Some(Duration::from_millis(ms));
            }
            "rendition" => {
                validate_segment(v).map_err(|_| {
                    bad("rendition must be a name of letters, digits, '-', '_', '.', '~'")
                })?;
                t.rendition = v.to_string();
            }
            // An option's name is shown only when it looks like one.
            other if is_option_name(other) => {
                return Err(bad(&format!("unsupported option {other:?}")))
            }
            _ => return Err(bad("an option name is not letters, digits or '_'")),
        }
    }
    Ok(t)
}

/// `host` (an IPv6 address in brackets, or bare) when it is an IP address
/// or a DNS name (letters, digits, '-', '_' in dot-separated labels).
pub(crate) fn host_of(host: &str) -> Option<&str> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok().then_some(v6);
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some(host);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(host)
}

/// `srt://HOST:PORT` as errors show it.
fn shown(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("srt://[{host}]:{port}")
    } else {
        format!("srt://{host}:{port}")
    }
}

fn is_option_name(k: &str) -> bool {
    (1..=32).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl fmt::Display for PushTarget {
    /// `srt://host:port` and the options that are no secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "srt://[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "srt://{}:{}", self.host, self.port)?;
        }
        let mut sep = '?';
        if let Some(l) = self.latency {
            write!(f, "{sep}latency={}", l.as_millis())?;
            sep = '&';
        }
        if self.rendition != "source" {
            write!(f, "{sep}rendition={}", self.rendition)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PushTarget {
    /// Like `Display`: a stray `{:?}` shows whether a secret is set, never
    /// the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("PushTarget")
            .field("url", &format_args!("{self}"))
            .field("streamid", &format_args!("{}", set(&self.streamid)))
            .field("passphrase", &format_args!("{}", set(&self.passphrase)))
            .finish()
    }
}

/// A push target in a config file is its URL string.
impl<'de> Deserialize<'de> for PushTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PushTarget;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string srt://host:port?...")
            }
            fn visit_str<E: de::Error>(self, url: &str) -> Result<PushTarget, E> {
                parse_push_url(url).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srt(text: &str) -> Result<SrtConfig, ConfigError> {
        let c: SrtConfig = config::section_from_toml("srt", text)?;
        c.validate().map_err(|e| e.under("srt"))?;
        Ok(c)
    }

    #[test]
    fn srt_section_is_read_and_checked() {
        let c = srt("latency = \"200ms\"\npassphrase = \"0123456789\"").unwrap();
        assert_eq!(c.latency, Duration::from_millis(200));
        assert_eq!(c.passphrase.as_deref(), Some("0123456789"));
        assert_eq!(
            format!("{:?}", srt("").unwrap()),
            format!("{:?}", SrtConfig::default())
        );
        for (text, key) in [
            ("passphrase = \"short\"", "`srt.passphrase`"),
            ("latency = \"70s\"", "`srt.latency`"),
            ("max_players = 0", "`srt.max_players`"),
            ("max_player = 1", "`srt.max_player`"),
        ] {
            let e = srt(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e:?}, wanted the key {key}");
        }
    }

    #[test]
    fn push_urls_parse_and_errors_name_the_problem() {
        let t = parse_push_url("srt://127.0.0.1:9999?streamid=live/x&latency=200").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9999));
        assert_eq!(t.streamid.as_deref(), Some("live/x"));
        assert_eq!(t.latency, Some(Duration::from_millis(200)));
        assert_eq!(t.to_string(), "srt://127.0.0.1:9999?latency=200");
        let t = parse_push_url("srt://[::1]:9000?passphrase=0123456789abc").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.to_string(), "srt://[::1]:9000");
        for ok in [
            "srt://localhost:1",
            "srt://ingest.example.net.:9000",
            "srt://a_b-c.d:1",
            "srt://[fe80::1]:1",
            "srt://::1:1",
        ] {
            assert!(parse_push_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "srt://a..b:1",
            "srt://h h:1",
            "srt://[h]:1",
            "udp://h:1",
            "srt://h",
            "srt://h:0",
            "srt://:9000",
            "srt://h:1?latency=abc",
            "srt://h:1?passphrase=short",
            "srt://h:1?mode=listener",
        ] {
            assert!(parse_push_url(bad).is_err(), "{bad}");
        }
    }

    /// Whatever the shape of a bad URL, its error shows nothing past
    /// `srt://HOST:PORT` but option names: a secret mistyped into the
    /// host, the port or an option's value never reaches the message.
    #[test]
    fn malformed_push_urls_never_echo_a_secret() {
        for bad in [
            "srt://h:1&streamid=S3CRET",
            "srt://h:1&passphrase=S3CRET-0123",
            "srt://h:1#streamid=S3CRET",
            "srt://h:1/streamid=S3CRET",
            "srt://h:1;passphrase=S3CRET-0123",
            "srt://h:1&streamid=a:S3CRET",
            "srt://streamid=S3CRET@h:1",
            "srt://streamid=S3CRET@h:1?latency=x",
            "srt://h:1?Streamid=S3CRET",
            "srt://h:1?STREAMID=S3CRET&mode=x",
            "srt://h:1?streamid:S3CRET",
            "srt://h:1?x=1&streamid=S3CRET&passphrase=short",
            "srt://h:1?latency=80?streamid=S3CRET",
            "srt://h:1?rendition=720p?streamid=S3CRET",
            "srt://h:1?passphrase=S3CRET",
            "srtt://h:1?streamid=S3CRET",
            "streamid=S3CRET",
        ] {
            let e = parse_push_url(bad).expect_err(bad);
            assert!(!e.contains("S3CRET"), "{bad}: {e}");
        }
        // Still says what is wrong, and where.
        let e = |url: &str| parse_push_url(url).unwrap_err();
        assert_eq!(
            e("srt://h:1&streamid=S3CRET"),
            r#""srt://h:…": the port is not a number 1 to 65535 (options start after "?")"#
        );
        assert_eq!(
            e("srt://h:0"),
            r#""srt://h:0": the port must be 1 to 65535"#
        );
        assert_eq!(
            e("srt://streamid=S3CRET@h:1"),
            "the host is not a host name or an IP address (srt://HOST:PORT?options)"
        );
        assert_eq!(
            e("srt://h:1?Streamid=S3CRET"),
            r#""srt://h:1": unsupported option "Streamid""#
        );
        assert_eq!(
            e("srt://h:1?streamid:S3CRET"),
            r#""srt://h:1": an option is not NAME=VALUE"#
        );
        assert_eq!(
            e("srt://h:1?latency=80?streamid=S3CRET"),
            r#""srt://h:1": latency must be 0 to 65535 (ms)"#
        );
    }

    #[test]
    fn push_targets_show_no_secret_in_display_debug_or_errors() {
        let t =
            parse_push_url("srt://h:1?streamid=sid-secret&passphrase=pass-secret-1&rendition=720p")
                .unwrap();
        assert_eq!(t.to_string(), "srt://h:1?rendition=720p");
        let debug = format!("{t:?}");
        assert_eq!(
            debug,
            "PushTarget { url: srt://h:1?rendition=720p, streamid: <set>, passphrase: <set> }"
        );
        for bad in [
            "srt://h:1?streamid=sid-secret&passphrase=short",
            "srt://h:1?passphrase=pass-secret-1&mode=listener",
            "srt://h:0?streamid=sid-secret",
            "srt://h:1?streamid=sid-secret&latency=x",
        ] {
            let e = parse_push_url(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
            assert!(e.contains("srt://h:"), "{e}");
        }
        let e = parse_push_url("srt://h:1?passphrase=pass-secret-1&mode=listener").unwrap_err();
        assert_eq!(e, r#""srt://h:1": unsupported option "mode""#);
    }
}
