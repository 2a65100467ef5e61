//! Configuration machinery: TOML text into typed sections, with errors that
//! name the full key (`rtmp.max_chunk_streams`), and the value types the
//! sections share (durations, bitrates, bounded integers, addresses).
//!
//! No section lives here: each owner declares its own as a serde struct with
//! `#[serde(default, deny_unknown_fields)]` and one `Default` impl
//! (`rtmp::config`, `srt::config`, `transcode::config`, `stream::config`,
//! `server::config`), so an unknown key or a bad value is refused with its
//! path and a typo never silently falls back to a default.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

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

impl ConfigError {
    /// A bad value at `key` (relative to the section being checked; see
    /// [`under`](Self::under)).
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error seen from one table up: `under("rtmp")` turns
    /// `idle_timeout` into `rtmp.idle_timeout`, `under("push")` turns `[0]`
    /// into `push[0]`, and an empty key (the table itself) into `rtmp`.
    pub fn under(self, table: &str) -> ConfigError {
        let join = |key: String| match key.chars().next() {
            None => table.to_string(),
            Some('[') => format!("{table}{key}"),
            Some(_) => format!("{table}.{key}"),
        };
        match self {
            ConfigError::UnknownKey { key, hint } => ConfigError::UnknownKey {
                key: join(key),
                hint,
            },
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key: join(key),
                message,
            },
            other => other,
        }
    }
}

/// Read a whole file's TOML text as `T`. An unknown top-level key gets
/// `root_hint` after its name (e.g. the list of sections).
pub fn from_toml<T: DeserializeOwned>(text: &str, root_hint: &str) -> Result<T, ConfigError> {
    read(parse(text)?, root_hint)
}

/// Read `text` as the body of the table `[table]` (`table` may be dotted:
/// `apps.live`): errors name keys as they would appear in a whole file.
/// Lets a section's own tests check its keys without the file around it.
pub fn section_from_toml<T: DeserializeOwned>(table: &str, text: &str) -> Result<T, ConfigError> {
    read(parse(text)?, "").map_err(|e| e.under(table))
}

fn parse(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: "<inline>".into(),
            message: syntax_message(text, &e),
        })
}

/// A TOML error as "line L, column C: what": never the line itself, which
/// `toml`'s own rendering quotes and which may hold a key or passphrase
/// (a half-edited secret is the usual reason a reload fails).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim_end();
    let Some(mut at) = e.span().map(|s| s.start.min(text.len())) else {
        return what.to_string();
    };
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {what}")
}

/// Deserialize through `serde_path_to_error`, which records where the
/// deserializer was when it failed: that path is the key the error names.
fn read<T: DeserializeOwned>(table: toml::Table, root_hint: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let mut key = String::new();
        for segment in e.path().iter() {
            use serde_path_to_error::Segment;
            match segment {
                Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                Segment::Map { key: k } | Segment::Enum { variant: k } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                }
                Segment::Unknown => {}
            }
        }
        let message = e.inner().message();
        // serde's `deny_unknown_fields` error; the path already ends with
        // the unknown key (it is recorded before the key is refused).
        if message.starts_with("unknown field `") {
            let top = e.path().iter().count() <= 1;
            let hint = if top { root_hint } else { "" };
            return ConfigError::UnknownKey {
                key,
                hint: hint.to_string(),
            };
        }
        ConfigError::invalid(key, toml_words(message))
    })
}

/// serde's "invalid type" errors name Rust types (`expected struct
/// RtmpConfig`, `expected a sequence`); say what to write in TOML instead.
fn toml_words(message: &str) -> String {
    let Some((got, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split_once(", expected "))
    else {
        return message.to_string();
    };
    let expected = match expected {
        e if e.starts_with("struct ") => "a table",
        "a map" => "a table",
        "a sequence" => "an array",
        "a boolean" => "true or false",
        "path string" => "a string",
        e => e,
    };
    format!("invalid type: {got}, expected {expected}")
}

/// One setting's current value, shared by every task that starts
/// something with it and replaced as a whole by a config reload. A reader
/// takes the `Arc` in force ([`Live::get`]: a read lock held only for the
/// clone) and keeps it for what it starts, so a reload never changes a
/// stream, a player or a connection that is already running.
#[derive(Debug, Default)]
pub struct Live<T>(std::sync::RwLock<std::sync::Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(std::sync::RwLock::new(std::sync::Arc::new(value)))
    }

    /// The value in force now.
    pub fn get(&self) -> std::sync::Arc<T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replace it for everything that starts from now on.
    pub fn set(&self, value: T) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(value);
    }
}

// ---------------------------------------------------------------------------
// Values shared by sections: `#[serde(deserialize_with = "config::...")]`
// ---------------------------------------------------------------------------

/// A string value, described as `expecting` when it is something else.
fn string<'de, D: Deserializer<'de>>(d: D, expecting: &'static str) -> Result<String, D::Error> {
    struct V(&'static str);
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_string(V(expecting))
}

/// A duration string: `"500ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = string(d, "a duration string like \"500ms\", \"5s\" or \"2m\"")?;
    parse_duration(&s).map_err(de::Error::custom)
}

/// A bitrate string (`"2500k"`, `"2.5M"`) in kbit/s.
pub fn bitrate_kbps<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = string(d, "a bitrate string like \"2500k\" or \"3M\"")?;
    parse_bitrate_kbps(&s).map_err(de::Error::custom)
}

/// An `IP:port` string.
pub fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = string(d, "an IP:port string")?;
    s.parse().map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP:port address (e.g. \"0.0.0.0:1935\")"
        ))
    })
}

/// A string read with the type's `FromStr` (its error is the message).
pub fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = string(d, "a string")?;
    s.parse().map_err(de::Error::custom)
}

/// An integer within `MIN..=MAX`, e.g.
/// `deserialize_with = "config::int::<1, 1_000_000, _, _>"`.
pub fn int<'de, const MIN: i64, const MAX: i64, T, D>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    struct V<T, const MIN: i64, const MAX: i64>(PhantomData<T>);
    impl<T: TryFrom<i64>, const MIN: i64, const MAX: i64> Visitor<'_> for V<T, MIN, MAX> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            if !(MIN..=MAX).contains(&v) {
                return Err(E::custom(format!(
                    "{v} is out of range; allowed {MIN}..={MAX}"
                )));
            }
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            match i64::try_from(v) {
                Ok(v) => self.visit_i64(v),
                Err(_) => Err(E::custom(format!(
                    "{v} is out of range; allowed {MIN}..={MAX}"
                ))),
            }
        }
    }
    d.deserialize_i64(V::<T, MIN, MAX>(PhantomData))
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
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the most any setting takes (24h)"
        ));
    }
    Ok(d)
}

/// The longest duration a setting takes: deadlines are added to the clock,
/// and an absurd value must be refused here rather than overflow there.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn toml_errors_say_where_without_quoting_the_line() {
        for (text, line) in [
            ("[apps.live.publish_keys]\ncam1 = \"TOPSECRET-KEY-123\n", 2),
            (
                "[a]\ncam1 = \"ONE-SECRET-1\"\ncam1 = \"OTHER-SECRET-456\"\n",
                3,
            ),
            ("[rtmp\n", 1),
        ] {
            let e = from_toml::<toml::Table>(text, "").unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}, column ")), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        #[serde(deserialize_with = "int::<2, 64, _, _>")]
        count: usize,
        #[serde(deserialize_with = "duration")]
        wait: Duration,
        #[serde(deserialize_with = "bitrate_kbps")]
        rate: u32,
        list: Vec<Inner>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        #[serde(deserialize_with = "int::<1, 9, _, _>")]
        n: u8,
    }

    fn err(text: &str) -> String {
        from_toml::<Sample>(text, " (hint)")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn values_are_read() {
        let s: Sample = from_toml(
            "count = 3\nwait = \"2m\"\nrate = \"3M\"\n[[list]]\nn = 4",
            "",
        )
        .unwrap();
        assert_eq!(
            (s.count, s.wait, s.rate, s.list[0].n),
            (3, Duration::from_secs(120), 3000, 4)
        );
    }

    #[test]
    fn errors_name_the_full_key() {
        assert_eq!(
            err("count = 0"),
            "config key `count`: 0 is out of range; allowed 2..=64"
        );
        assert!(err("count = \"many\"").contains("expected an integer"));
        assert_eq!(err("bogus = 1"), "unknown config key `bogus` (hint)");
        assert_eq!(
            err("[[list]]\nn = 1\n[[list]]\nm = 1"),
            "unknown config key `list[1].m`"
        );
        assert!(err("[[list]]\nn = 10").starts_with("config key `list[0].n`: 10 is out"));
        assert!(err("wait = \"soon\"").starts_with("config key `wait`: expected a duration"));
        assert_eq!(
            err("wait = 5"),
            "config key `wait`: invalid type: integer `5`, expected a duration string like \"500ms\", \"5s\" or \"2m\""
        );
        assert_eq!(
            err("list = 5"),
            "config key `list`: invalid type: integer `5`, expected an array"
        );
        assert_eq!(
            err("list = [5]"),
            "config key `list[0]`: invalid type: integer `5`, expected a table"
        );
        assert!(err("rate = \"fast\"").starts_with("config key `rate`:"));
        assert!(err("count = 3\n[").contains("not valid TOML"));
        let e = section_from_toml::<Inner>("apps.live", "n = 0").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("config key `apps.live.n`: 0 is out"));
        let e = section_from_toml::<Inner>("apps.live", "x = 0").unwrap_err();
        assert_eq!(e.to_string(), "unknown config key `apps.live.x`");
    }

    #[test]
    fn keys_nest_under_their_table() {
        let e = ConfigError::invalid("", "m").under("[0]").under("push");
        assert_eq!(e.to_string(), "config key `push[0]`: m");
        let e = ConfigError::invalid("name", "m").under("renditions[1]");
        assert_eq!(e.to_string(), "config key `renditions[1].name`: m");
    }

    #[test]
    fn live_values_are_replaced_for_later_readers_only() {
        let v = Live::new(1);
        let before = v.get();
        v.set(2);
        assert_eq!((*before, *v.get()), (1, 2));
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
        // Longer than any setting takes: refused, not overflowed later.
        assert_eq!(parse_duration("24h").unwrap(), MAX_DURATION);
        let e = parse_duration("18446744073709551615s").unwrap_err();
        assert!(e.contains("24h"), "{e}");
        assert!(parse_duration("1441m").is_err());
    }
}
