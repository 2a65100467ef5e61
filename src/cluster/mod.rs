//! Past one box: a stream directory in Redis (`[cluster]`).
//!
//! Every node that holds a publish claims `sluice:stream:APP/KEY` with a
//! JSON value naming itself (node, SRT address, since, renditions), set if
//! absent with a TTL of `lease_ttl` and renewed every third of it by the
//! stream group's claim leg ([`claim`]); released when the stream ends and
//! at once when the node starts draining; a crashed node's claims expire.
//! A player asking a node for a stream it does not hold is served from an
//! edge pull ([`edge`]): one SRT pull per stream (and rendition) from the
//! owner's `advertise_srt`, signed with the shared `secret`.
//!
//! Redis trouble never stops a stream: every call has a short deadline,
//! running streams and pulls go on without Redis, new publishes proceed
//! node-locally and their claims are written when Redis answers again (a
//! conflict found then stops the newer stream). No home-made consensus:
//! Redis's atomic `SET NX PX` and two small scripts decide.

pub mod claim;
pub mod config;
pub mod edge;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use serde::{Deserialize, Serialize};

use crate::auth::NodeSecret;
use crate::telemetry as t;
pub use config::ClusterConfig;

/// Every Redis call gives up after this: a slow Redis must not hold a
/// publish's setup (8 s) or a player's handshake (libsrt waits 3 s).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Directory keys: `sluice:stream:APP/KEY`.
const STREAM_PREFIX: &str = "sluice:stream:";
/// Keys read per `SCAN` step and per `MGET` when listing the directory.
const SCAN_BATCH: usize = 500;
/// The longest a `scope=cluster` listing may take (a Redis shared with
/// millions of other keys is scanned 500 at a time).
pub const LIST_LIMIT: Duration = Duration::from_secs(3);
/// Most claims listed by `scope=cluster`.
pub const MAX_LISTED: usize = 10_000;

/// Renew our claim: `1` kept, `2` written again (it was gone: Redis lost
/// it or it expired while Redis was unreachable), else the value another
/// claim holds.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return v
";

/// Delete our claim, only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A claim's value: who holds the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: String,
    /// Where other nodes pull it from (`advertise_srt`).
    pub srt: String,
    /// When the publish started, unix milliseconds: the older of two
    /// streams that claimed the same path while Redis was unreachable
    /// keeps it.
    pub since_ms: u64,
    /// Its renditions, "source" first.
    #[serde(default)]
    pub renditions: Vec<String>,
    /// Claimed by taking the path over from another node.
    #[serde(default)]
    pub takeover: bool,
    /// The process that wrote it (random per start): tells a claim of a
    /// previous run of this node, or of another node given the same
    /// `node_id`, from this process's own.
    #[serde(default)]
    pub instance: String,
}

impl Owner {
    /// Whether this claim gives way to `other` for the same path: a
    /// takeover newer than it, or an older stream (ties by node name).
    pub fn yields_to(&self, other: &Owner) -> bool {
        if other.takeover && other.since_ms >= self.since_ms {
            return true;
        }
        if self.takeover && self.since_ms >= other.since_ms {
            return false;
        }
        (other.since_ms, &other.node) < (self.since_ms, &self.node)
    }
}

/// What claiming a path found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// Ours now.
    Yes,
    /// Another live node holds it.
    HeldBy(Owner),
    /// Redis did not answer: go on node-locally.
    Unreachable(String),
}

/// What renewing a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Renewed {
    Kept,
    /// It was gone and is written again.
    Rewritten,
    /// Another claim holds the path.
    Other(Owner),
    Unreachable(String),
}

/// The cluster's state as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterState {
    pub node_id: String,
    pub advertise_srt: String,
    /// `ok`, or `unreachable` with the last error.
    pub redis: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_error: Option<String>,
    /// Claims this node holds, and those not yet written (Redis was
    /// unreachable when their stream started).
    pub claims: usize,
    pub claims_pending: usize,
    pub edge_pulls: usize,
    pub draining: bool,
}

/// One claim this node holds.
#[derive(Debug, Clone)]
struct Held {
    value: String,
    written: bool,
}

/// This node's view of the cluster: its identity, the Redis connection,
/// the claims it holds.
pub struct Cluster {
    node: String,
    advertise_srt: String,
    lease_ttl: Duration,
    secret: NodeSecret,
    edge_idle: Duration,
    client: redis::Client,
    redis_shown: String,
    /// One multiplexed connection, opened on first use and again after it
    /// broke.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The last error while Redis is unreachable.
    down: Mutex<Option<String>>,
    claims: Mutex<HashMap<String, Held>>,
    /// This process, in the claims it writes.
    instance: String,
    edge_pulls: std::sync::atomic::AtomicUsize,
    draining: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("redis", &self.redis_shown)
            .finish_non_exhaustive()
    }
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(path: &str) -> String {
    format!("{STREAM_PREFIX}{path}")
}

impl Cluster {
    /// From a checked `[cluster]` (the URL parsed, the secret set).
    pub fn new(cfg: &ClusterConfig) -> Result<Cluster, String> {
        let client = redis::Client::open(cfg.redis_url.trim())
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let secret = cfg.load_secret()?;
        Ok(Cluster {
            node: cfg.node(),
            advertise_srt: cfg.advertise()?,
            lease_ttl: cfg.lease_ttl,
            secret,
            edge_idle: cfg.edge_idle,
            client,
            redis_shown: config::redact_url(cfg.redis_url.trim()),
            conn: tokio::sync::Mutex::new(None),
            down: Mutex::new(None),
            claims: Mutex::new(HashMap::new()),
            instance: format!("{:016x}", rand::random::<u64>()),
            edge_pulls: std::sync::atomic::AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn advertise_srt(&self) -> &str {
        &self.advertise_srt
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn edge_idle(&self) -> Duration {
        self.edge_idle
    }

    pub fn secret(&self) -> &NodeSecret {
        &self.secret
    }

    /// The Redis URL without its password, for logs.
    pub fn redis_shown(&self) -> &str {
        &self.redis_shown
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The directory entry this node writes for a stream started at
    /// `started_at` with `renditions`.
    pub fn owner_for(
        &self,
        started_at: SystemTime,
        renditions: Vec<String>,
        takeover: bool,
    ) -> Owner {
        Owner {
            node: self.node.clone(),
            srt: self.advertise_srt.clone(),
            since_ms: unix_ms(started_at),
            renditions,
            takeover,
            instance: self.instance.clone(),
        }
    }

    /// Whether this process wrote `owner`.
    pub fn is_mine(&self, owner: &Owner) -> bool {
        owner.node == self.node && owner.instance == self.instance
    }

    fn locked_claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember a claim this node holds (`written`: Redis has it).
    pub(crate) fn hold(&self, path: &str, value: &str, written: bool) {
        let mut c = self.locked_claims();
        c.insert(
            path.to_string(),
            Held {
                value: value.to_string(),
                written,
            },
        );
        gauge!(t::CLUSTER_CLAIMS).set(c.len() as f64);
    }

    /// Forget a claim if it is still `value` (a takeover on this node may
    /// have put a newer one there).
    pub(crate) fn forget(&self, path: &str, value: &str) {
        let mut c = self.locked_claims();
        if c.get(path).is_some_and(|h| h.value == value) {
            c.remove(path);
        }
        gauge!(t::CLUSTER_CLAIMS).set(c.len() as f64);
    }

    pub(crate) fn edge_pull_started(&self) {
        let n = self.edge_pulls.fetch_add(1, Ordering::SeqCst) + 1;
        gauge!(t::CLUSTER_EDGE_PULLS).set(n as f64);
    }

    pub(crate) fn edge_pull_ended(&self) {
        let n = self
            .edge_pulls
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        gauge!(t::CLUSTER_EDGE_PULLS).set(n as f64);
    }

    /// What `/readyz` shows.
    pub fn state(&self) -> ClusterState {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let claims = self.locked_claims();
        ClusterState {
            node_id: self.node.clone(),
            advertise_srt: self.advertise_srt.clone(),
            redis: if down.is_some() { "unreachable" } else { "ok" },
            redis_error: down,
            claims: claims.len(),
            claims_pending: claims.values().filter(|h| !h.written).count(),
            edge_pulls: self.edge_pulls.load(Ordering::SeqCst),
            draining: self.is_draining(),
        }
    }

    /// The connection, opened if there is none.
    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Run one Redis operation under [`REDIS_TIMEOUT`], timed and counted;
    /// a broken connection is dropped so the next call opens a new one.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            let conn = self.conn().await?;
            f(conn).await
        })
        .await;
        histogram!(t::CLUSTER_REDIS_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(v)) => {
                let was = self.down.lock().unwrap_or_else(|e| e.into_inner()).take();
                if was.is_some() {
                    gauge!(t::CLUSTER_REDIS_UP).set(1.0);
                    tracing::info!(redis = %self.redis_shown, "redis reachable again");
                }
                return Ok(v);
            }
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    *self.conn.lock().await = None;
                }
                e.to_string()
            }
            Err(_) => {
                *self.conn.lock().await = None;
                format!("no answer within {REDIS_TIMEOUT:?}")
            }
        };
        counter!(t::CLUSTER_REDIS_ERRORS_TOTAL, "op" => op).increment(1);
        gauge!(t::CLUSTER_REDIS_UP).set(0.0);
        let why = format!("redis {}: {error}", self.redis_shown);
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        Err(why)
    }

    /// Check that Redis answers (at start, for the log and `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        self.call("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Claim `path` for `owner`: set if absent (or over anything with
    /// `takeover`). A claim of this node's own name is replaced: this
    /// process's registry already allows one publisher per path, and one
    /// of another process is a leftover of a crashed run (or a second node
    /// with the same `node_id`, which is said).
    pub async fn claim(&self, path: &str, owner: &Owner) -> Claimed {
        let value = serde_json::to_string(owner).unwrap_or_default();
        let ttl = self.lease_ttl.as_millis() as u64;
        for _ in 0..2 {
            let k = key(path);
            let v = value.clone();
            let set = self
                .call("claim", |mut c| async move {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&k).arg(&v).arg("PX").arg(ttl);
                    if !owner.takeover {
                        cmd.arg("NX");
                    }
                    cmd.query_async::<Option<String>>(&mut c).await
                })
                .await;
            match set {
                Err(e) => return Claimed::Unreachable(e),
                Ok(Some(_)) => return Claimed::Yes,
                Ok(None) => {}
            }
            match self.owner(path).await {
                Err(e) => return Claimed::Unreachable(e),
                // Gone meanwhile (expired): try again.
                Ok(None) => continue,
                Ok(Some(other)) if other.node == self.node => {
                    if other.instance != self.instance {
                        tracing::warn!(stream = %path, node = %self.node,
                            "replacing a claim of this node_id written by another process: a previous run, or another node with the same node_id (give every node its own)");
                    }
                    if let Err(e) = self.overwrite(path, &value).await {
                        return Claimed::Unreachable(e);
                    }
                    return Claimed::Yes;
                }
                Ok(Some(other)) => return Claimed::HeldBy(other),
            }
        }
        Claimed::Unreachable("the claim kept expiring while it was read".into())
    }

    /// Renew our claim `value` on `path` (write it if it is gone).
    pub async fn renew(&self, path: &str, value: &str) -> Renewed {
        let k = key(path);
        let ttl = self.lease_ttl.as_millis() as u64;
        let r = self
            .call("renew", |mut c| async move {
                redis::Script::new(RENEW)
                    .key(&k)
                    .arg(value)
                    .arg(ttl)
                    .invoke_async::<redis::Value>(&mut c)
                    .await
            })
            .await;
        match r {
            Err(e) => Renewed::Unreachable(e),
            Ok(redis::Value::Int(1)) => Renewed::Kept,
            Ok(redis::Value::Int(_)) => Renewed::Rewritten,
            Ok(other) => match redis::from_redis_value::<String>(&other)
                .ok()
                .and_then(|s| serde_json::from_str::<Owner>(&s).ok())
            {
                Some(o) => Renewed::Other(o),
                None => {
                    Renewed::Unreachable("the directory holds something that is not a claim".into())
                }
            },
        }
    }

    /// Write our claim over whatever holds `path`.
    pub async fn overwrite(&self, path: &str, value: &str) -> Result<(), String> {
        let k = key(path);
        let ttl = self.lease_ttl.as_millis() as u64;
        self.call("claim", |mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Delete our claim `value` on `path` if it is still ours.
    pub async fn release(&self, path: &str, value: &str) -> Result<(), String> {
        let k = key(path);
        self.call("release", |mut c| async move {
            redis::Script::new(RELEASE)
                .key(&k)
                .arg(value)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Who holds `path`, if anyone.
    pub async fn owner(&self, path: &str) -> Result<Option<Owner>, String> {
        let k = key(path);
        let v = self
            .call("lookup", |mut c| async move {
                redis::cmd("GET")
                    .arg(&k)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Every claim in the directory (at most [`MAX_LISTED`]), by path,
    /// within [`LIST_LIMIT`] in all.
    pub async fn list(&self) -> Result<Vec<(String, Owner)>, String> {
        tokio::time::timeout(LIST_LIMIT, self.list_all())
            .await
            .unwrap_or_else(|_| Err(format!("listing the directory took over {LIST_LIMIT:?}")))
    }

    async fn list_all(&self) -> Result<Vec<(String, Owner)>, String> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys) = self
                .call("list", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{STREAM_PREFIX}*"))
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async::<(u64, Vec<String>)>(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let ks = keys.clone();
                let values = self
                    .call("list", |mut c| async move {
                        redis::cmd("MGET")
                            .arg(&ks)
                            .query_async::<Vec<Option<String>>>(&mut c)
                            .await
                    })
                    .await?;
                for (k, v) in keys.iter().zip(values) {
                    let owner = v.and_then(|s| serde_json::from_str::<Owner>(&s).ok());
                    if let (Some(path), Some(owner)) = (k.strip_prefix(STREAM_PREFIX), owner) {
                        out.push((path.to_string(), owner));
                    }
                }
            }
            cursor = next;
            if cursor == 0 || out.len() >= MAX_LISTED {
                break;
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out.truncate(MAX_LISTED);
        Ok(out)
    }

    /// Drain: release every claim this node holds at once (another node
    /// may take the publish now) and stop renewing them.
    pub async fn release_all(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let held: Vec<(String, Held)> = self.locked_claims().drain().collect();
        gauge!(t::CLUSTER_CLAIMS).set(0.0);
        let mut released = 0usize;
        for (path, h) in &held {
            if !h.written {
                continue;
            }
            match self.release(path, &h.value).await {
                Ok(()) => released += 1,
                Err(e) => {
                    tracing::warn!(stream = %path, error = %e, "claim not released; it expires after lease_ttl")
                }
            }
        }
        tracing::info!(released, "draining: cluster claims released");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str, since_ms: u64, takeover: bool) -> Owner {
        Owner {
            node: node.into(),
            srt: "h:1".into(),
            since_ms,
            renditions: vec!["source".into()],
            takeover,
            instance: "1".into(),
        }
    }

    #[test]
    fn the_newer_of_two_claims_yields_unless_it_took_over() {
        let old = owner("a", 1000, false);
        let new = owner("b", 2000, false);
        assert!(new.yields_to(&old));
        assert!(!old.yields_to(&new));
        // A takeover moves the claim from an older stream.
        let took = owner("b", 2000, true);
        assert!(old.yields_to(&took));
        assert!(!took.yields_to(&old));
        // Ties by node name, the same answer on both sides.
        let (x, y) = (owner("a", 5, false), owner("b", 5, false));
        assert!(y.yields_to(&x) != x.yields_to(&y));
    }

    #[test]
    fn a_claim_reads_back_as_it_was_written() {
        let o = owner("a", 7, true);
        let s = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Owner>(&s).unwrap(), o);
        // Older nodes' entries without the optional fields still read.
        let o: Owner = serde_json::from_str(r#"{"node":"a","srt":"h:1","since_ms":3}"#).unwrap();
        assert!(o.renditions.is_empty() && !o.takeover);
    }
}
