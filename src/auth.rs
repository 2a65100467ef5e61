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
    if keys.is_empty() {
        return Ok(());
    }
    let secret = keys
        .get(stream)
        .ok_or_else(|| Refusal::UnknownStream(stream.to_string()))?;
    let presented = query_param(name_raw, "key")
        .or_else(|| query_param(app_raw, "key"))
        .ok_or(Refusal::MissingKey)?;
    if secret.verify(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongKey)
    }
}

#[cfg(test)]
mod tests {
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
