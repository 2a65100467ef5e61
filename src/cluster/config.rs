//! `[cluster]`: off unless the section is present. With it, streams are
//! claimed cluster-wide in Redis and players may ask any node for any
//! stream (see the module doc of `cluster`).

use std::time::Duration;

use serde::Deserialize;

use crate::auth::NodeSecret;
use crate::config::{self, ConfigError};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS);
    /// Redis 7 or Valkey.
    pub redis_url: String,
    /// This node's name in the directory; the hostname when empty.
    pub node_id: String,
    /// `host:port` other nodes reach this node's SRT listener at (a pod's
    /// address, not `0.0.0.0`).
    pub advertise_srt: String,
    /// How long a claim outlives its node: renewed every third of it.
    #[serde(deserialize_with = "config::duration")]
    pub lease_ttl: Duration,
    /// Signs node-to-node pulls; the same on every node. Never logged.
    pub secret: Option<NodeSecret>,
    /// An edge pull ends this long after its last local player left.
    #[serde(deserialize_with = "config::duration")]
    pub edge_idle: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_id: String::new(),
            advertise_srt: String::new(),
            lease_ttl: Duration::from_secs(5),
            secret: None,
            edge_idle: Duration::from_secs(10),
        }
    }
}

/// Allowed `lease_ttl`: renewals every third of it must fit Redis round
/// trips, and a crashed node's streams must free within a minute.
pub const LEASE_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(60);

impl ClusterConfig {
    /// Rules across keys; errors name keys relative to `[cluster]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.redis_url.trim();
        if url.is_empty() {
            return Err(ConfigError::invalid(
                "redis_url",
                "required with [cluster], e.g. \"redis://127.0.0.1:6379\"",
            ));
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                "redis_url",
                format!("{} is not a redis:// or rediss:// URL", redact_url(url)),
            ));
        }
        if let Err(e) = redis::Client::open(url) {
            return Err(ConfigError::invalid(
                "redis_url",
                format!("{}: {e}", redact_url(url)),
            ));
        }
        if self.advertise_srt.trim().is_empty() {
            return Err(ConfigError::invalid(
                "advertise_srt",
                "required with [cluster]: the host:port other nodes reach this node's SRT listener at",
            ));
        }
        let ok_addr = self
            .advertise_srt
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok_addr {
            return Err(ConfigError::invalid(
                "advertise_srt",
                format!("{:?} is not host:port", self.advertise_srt),
            ));
        }
        if self.secret.is_none() {
            return Err(ConfigError::invalid(
                "secret",
                "required with [cluster]: a random string of 16 or more characters, the same on every node",
            ));
        }
        if !LEASE_TTL_RANGE.contains(&self.lease_ttl) {
            return Err(ConfigError::invalid(
                "lease_ttl",
                format!("{:?} is out of range; allowed 1s..=60s", self.lease_ttl),
            ));
        }
        if self.node_id.len() > 128
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::invalid(
                "node_id",
                "up to 128 letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(())
    }

    /// `node_id`, or the hostname when it is empty.
    pub fn node(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        hostname().unwrap_or_else(|| "sluice".to_string())
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// A Redis URL without its password: `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ClusterConfig, ConfigError> {
        let c: ClusterConfig = config::section_from_toml("cluster", text)?;
        c.validate().map_err(|e| e.under("cluster"))?;
        Ok(c)
    }

    const OK: &str = "redis_url = \"redis://127.0.0.1:6379\"\nadvertise_srt = \"10.0.0.5:9000\"\nsecret = \"0123456789abcdef\"\n";

    #[test]
    fn defaults_and_required_keys() {
        let c = read(OK).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.edge_idle, Duration::from_secs(10));
        assert!(!c.node().is_empty());
        let c = read(&format!("{OK}node_id = \"a-1\"\nlease_ttl = \"3s\"")).unwrap();
        assert_eq!(
            (c.node().as_str(), c.lease_ttl),
            ("a-1", Duration::from_secs(3))
        );
        for (text, key) in [
            (
                "advertise_srt = \"h:1\"\nsecret = \"0123456789abcdef\"",
                "cluster.redis_url",
            ),
            (
                "redis_url = \"http://x\"\nadvertise_srt = \"h:1\"\nsecret = \"0123456789abcdef\"",
                "cluster.redis_url",
            ),
            (
                "redis_url = \"redis://h\"\nsecret = \"0123456789abcdef\"",
                "cluster.advertise_srt",
            ),
            (
                "redis_url = \"redis://h\"\nadvertise_srt = \"h\"\nsecret = \"0123456789abcdef\"",
                "cluster.advertise_srt",
            ),
            (
                "redis_url = \"redis://h\"\nadvertise_srt = \"h:1\"",
                "cluster.secret",
            ),
            (
                "redis_url = \"redis://h\"\nadvertise_srt = \"h:1\"\nsecret = \"short\"",
                "cluster.secret",
            ),
        ] {
            let e = read(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = read(&format!("{OK}lease_ttl = \"0s\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.lease_ttl"), "{e}");
        let e = read(&format!("{OK}node_id = \"a b\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.node_id"), "{e}");
    }

    #[test]
    fn secrets_never_show() {
        let c = read(OK).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        assert_eq!(
            redact_url("redis://app:hunter2@redis:6379/0"),
            "redis://app:***@redis:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@r:6380"), "rediss://:***@r:6380");
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
        let e = read("redis_url = \"http://u:hunter2@r\"\nadvertise_srt = \"h:1\"\nsecret = \"0123456789abcdef\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
