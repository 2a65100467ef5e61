//! The recording settings of `[apps.NAME]` (`record`, `record_dir`,
//! `record_segment`, `record_required`, `record_keep`): their value types
//! and rules. Pure data; the recording leg in `record` writes what they say.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::{parse_duration, ConfigError};

/// Where recordings go when `record_dir` is not set (relative paths are
/// under the server's working directory).
pub const DEFAULT_DIR: &str = "recordings";
/// `record_segment` when not set.
pub const DEFAULT_SEGMENT: Duration = Duration::from_secs(60);
/// Shortest segment: shorter ones are mostly PAT/PMT and parameter sets,
/// and a directory entry per second is already a lot to list.
pub const MIN_SEGMENT: Duration = Duration::from_secs(1);
/// Longest segment (a day): also keeps a segment's 33-bit PTS span
/// (26.5 h) unambiguous.
pub const MAX_SEGMENT: Duration = Duration::from_secs(24 * 3600);
/// Longest `record_keep`: ten years, so that adding it to a time never
/// overflows.
pub const MAX_KEEP: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// One application's recording, as its leg runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// `record_dir`; segments go to `DIR/APP/KEY/`.
    pub dir: PathBuf,
    /// `record_segment`: a segment is cut at the first keyframe at least
    /// this far (in media time) from its start.
    pub segment: Duration,
    /// `record_keep`: segments older than this are deleted; `None` keeps
    /// them forever.
    pub keep: Option<Duration>,
    /// `record_required`: a recording that cannot start fails the publish
    /// and a failing one ends the stream; otherwise it is retried.
    pub required: bool,
}

impl Default for RecordSpec {
    fn default() -> Self {
        RecordSpec {
            dir: PathBuf::from(DEFAULT_DIR),
            segment: DEFAULT_SEGMENT,
            keep: None,
            required: false,
        }
    }
}

/// `record_segment`: a duration from 1 s to 24 h.
pub fn segment<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = parse_duration(&s).map_err(de::Error::custom)?;
    if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&v) {
        return Err(de::Error::custom(format!(
            "{s:?} is out of range; a segment lasts from \"1s\" to \"24h\""
        )));
    }
    Ok(v)
}

/// `record_keep`: an age like `"7d"`, `"168h"`, `"30m"`.
pub fn keep<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_age(&s).map(Some).map_err(de::Error::custom)
}

/// An age: a whole number with `s`, `m`, `h` or `d`, more than zero and at
/// most ten years.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let err = || format!("expected an age like \"7d\", \"168h\" or \"30m\", got {s:?}");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(err()),
    };
    let d = Duration::from_secs(secs.ok_or_else(err)?);
    if d.is_zero() {
        return Err(format!(
            "{s:?} would delete every segment at once; give an age greater than zero"
        ));
    }
    if d > MAX_KEEP {
        return Err(format!(
            "{s:?} is longer than ten years; leave record_keep out to keep segments forever"
        ));
    }
    Ok(d)
}

/// Rules across the keys: a segment must outlive its own length, or it
/// would be deleted as it closes. Keys are relative to `[apps.NAME]`.
pub fn check(segment: Duration, keep: Option<Duration>) -> Result<(), ConfigError> {
    if let Some(keep) = keep {
        if keep < segment {
            return Err(ConfigError::invalid(
                "record_keep",
                format!(
                    "{keep:?} is shorter than record_segment ({segment:?}): every segment would \
                     be deleted as it closes; keep at least one segment's length"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_days() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("168h"), Ok(Duration::from_secs(168 * 3600)));
        assert_eq!(parse_age(" 30m "), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("3s"), Ok(Duration::from_secs(3)));
        for bad in [
            "",
            "7",
            "d",
            "7w",
            "-1d",
            "1.5d",
            "0s",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        assert!(parse_age("4000d").unwrap_err().contains("ten years"));
    }

    #[test]
    fn keep_shorter_than_a_segment_is_refused_naming_the_key() {
        let seg = Duration::from_secs(60);
        assert!(check(seg, None).is_ok());
        assert!(check(seg, Some(seg)).is_ok());
        let e = check(seg, Some(Duration::from_secs(59))).unwrap_err();
        assert!(e.to_string().contains("`record_keep`"), "{e}");
    }
}
