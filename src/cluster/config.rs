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
    /// address, not `0.0.0.0`). `${NAME}` is replaced by the environment
    /// variable NAME at start (`"${POD_IP}:9000"` on Kubernetes).
    pub advertise_srt: String,
    /// How long a claim outlives its node: renewed every third of it.
    #[serde(deserialize_with = "config::duration")]
    pub lease_ttl: Duration,
    /// Signs node-to-node pulls; the same on every node. Never logged.
    pub secret: Option<NodeSecret>,
    /// A file whose trimmed content is the secret (a mounted Secret),
    /// read at start; instead of `secret`.
    pub secret_file: Option<std::path::PathBuf>,
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
            secret_file: None,
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
        match (&self.secret, &self.secret_file) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    "secret",
                    "required with [cluster] (or secret_file): a random string of 16 or more characters, the same on every node",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "secret",
                    "set cluster.secret or cluster.secret_file, not both",
                ))
            }
            _ => {}
        }
        if let Err(e) = expand_env(&self.advertise_srt, |_| Some("h".into())) {
            return Err(ConfigError::invalid("advertise_srt", e));
        }
        if !LEASE_TTL_RANGE.contains(&self.lease_ttl) {
            return Err(ConfigError::invalid(
                "lease_ttl",
                format!("{:?} is out of range; allowed 1s..=60s", self.lease_ttl),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.edge_idle) {
            return Err(ConfigError::invalid(
                "edge_idle",
                format!("{:?} is out of range; allowed 1s..=1h", self.edge_idle),
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

    /// `advertise_srt` with `${NAME}` replaced from the environment.
    pub fn advertise(&self) -> Result<String, String> {
        expand_env(self.advertise_srt.trim(), |name| std::env::var(name).ok())
            .map_err(|e| format!("cluster.advertise_srt: {e}"))
    }

    /// `secret`, or what `secret_file` holds (read now, trimmed). Errors
    /// name the key and the file, never the secret.
    pub fn load_secret(&self) -> Result<NodeSecret, String> {
        if let Some(s) = &self.secret {
            return Ok(s.clone());
        }
        let Some(path) = &self.secret_file else {
            return Err("cluster.secret: required with [cluster]".into());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cluster.secret_file ({}): cannot read it: {e}",
                path.display()
            )
        })?;
        NodeSecret::parse(text.trim())
            .map_err(|e| format!("cluster.secret_file ({}): {e}", path.display()))
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

/// `text` with every `${NAME}` replaced by `var(NAME)`; an unset or
/// empty variable, or an unclosed `${`, is an error naming it.
fn expand_env(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let value = var(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
    fn the_advertised_address_may_come_from_the_environment_and_the_secret_from_a_file() {
        let var = |n: &str| (n == "POD_IP").then(|| "10.1.2.3".to_string());
        assert_eq!(expand_env("${POD_IP}:9000", var).unwrap(), "10.1.2.3:9000");
        assert_eq!(expand_env("h:1", var).unwrap(), "h:1");
        assert!(expand_env("${NOPE}:9000", var)
            .unwrap_err()
            .contains("NOPE"));
        assert!(expand_env("${POD_IP:9000", var).is_err());
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-a-mounted-secret-file\n").unwrap();
        let text = format!(
            "redis_url = \"redis://r:6379\"\nadvertise_srt = \"${{POD_IP}}:9000\"\nsecret_file = \"{}\"",
            file.display()
        );
        let c = read(&text).unwrap();
        let s = c.load_secret().unwrap();
        assert!(s.verify_edge_token(&s.edge_token("a/b", "n", 5), "a/b", "n", 5));
        let both = format!("{text}\nsecret = \"0123456789abcdef\"");
        assert!(read(&both).unwrap_err().to_string().contains("not both"));
        std::fs::write(&file, "short").unwrap();
        let e = c.load_secret().unwrap_err();
        assert!(
            e.contains("cluster.secret_file") && !e.contains("short"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
