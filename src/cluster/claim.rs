//! The claim leg: a stream group's hold on its path in the directory.
//! Required and started with the publish, so the claim counts against
//! `setup_timeout` like every other part of setup: it connects once the
//! path is ours (or Redis did not answer: then the stream goes on
//! node-locally and the claim is written when Redis is back), renews it
//! every third of `lease_ttl`, and fails, stopping the stream, when
//! another node holds the path (at setup) or takes it (later).

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use tracing::{info, warn};

use super::{Claimed, Cluster, Renewed};
use crate::stream::leg::{LegContext, LegFailure};
use crate::telemetry::{self as t, LogLimiter};

/// Leg failure reasons (`sluice_stream_setup_failures_total{reason}` at
/// setup, the teardown cause later).
pub const BUSY: &str = "cluster_busy";
pub const TAKEN_OVER: &str = "cluster_taken_over";
pub const CONFLICT: &str = "cluster_conflict";

fn claims_total(result: &'static str) {
    counter!(t::CLUSTER_CLAIMS_TOTAL, "result" => result).increment(1);
}

/// Hold the stream's path until the stream ends (`Ok`, the claim
/// released) or another node has it (`Err`).
pub async fn run_leg(
    cluster: Arc<Cluster>,
    takeover: bool,
    ctx: LegContext,
) -> Result<(), LegFailure> {
    let stream = ctx.stream.clone();
    let path = stream.path.to_string();
    let renditions = stream.renditions.iter().map(|r| r.name.clone()).collect();
    let owner = cluster.owner_for(stream.started_at, renditions, takeover);
    let value = serde_json::to_string(&owner).unwrap_or_default();
    let ttl = cluster.lease_ttl();
    // When Redis last confirmed the claim; `None` while it is not written.
    let mut written: Option<Instant> = None;
    match cluster.claim(&path, &owner).await {
        Claimed::Yes => {
            claims_total(if takeover { "taken_over" } else { "claimed" });
            written = Some(Instant::now());
            info!(stream = %path, node = cluster.node(), takeover, "cluster claim held");
        }
        Claimed::HeldBy(other) => {
            claims_total("busy");
            return Err(LegFailure {
                reason: BUSY,
                detail: format!(
                    "{path} is being published on node {}; stop that publisher first, or set takeover = true for this application",
                    other.node
                ),
            });
        }
        Claimed::Unreachable(e) => {
            claims_total("unreachable");
            warn!(stream = %path, error = %e,
                "redis unreachable: publishing on this node only; the claim is written when redis answers");
        }
    }
    cluster.hold(&path, &value, written.is_some());
    if cluster.is_draining() && written.is_some() {
        // The drain released every claim while this one was being made.
        let _ = cluster.release(&path, &value).await;
        cluster.forget(&path, &value);
    }
    ctx.events.connected();
    let mut down_log = LogLimiter::per_interval();
    let every = (ttl / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if cluster.is_draining() {
            // Released already; the stream runs out its drain without it.
            continue;
        }
        let renewed = cluster.renew(&path, &value).await;
        if cluster.is_draining() {
            // The drain's release may have run before this renewal
            // re-wrote the claim: release it again.
            let _ = cluster.release(&path, &value).await;
            continue;
        }
        match renewed {
            Renewed::Kept => written = Some(Instant::now()),
            Renewed::Rewritten => {
                if written.is_none() {
                    claims_total("written_late");
                    info!(stream = %path, "redis answers again: cluster claim written");
                } else if written.is_some_and(|t| t.elapsed() >= ttl) {
                    info!(stream = %path, "cluster claim had expired while redis was unreachable; written again");
                }
                written = Some(Instant::now());
                cluster.hold(&path, &value, true);
            }
            Renewed::Other(other) if other == owner => written = Some(Instant::now()),
            // A newer stream of this path on this node (a takeover or a
            // stale publisher replaced here) wrote its claim: this stream
            // is being replaced; leave the claim to it.
            Renewed::Other(other) if cluster.is_mine(&other) => {
                cluster.forget(&path, &value);
                return Ok(());
            }
            Renewed::Other(other) => {
                if owner.yields_to(&other) {
                    cluster.forget(&path, &value);
                    let (reason, detail) = if other.takeover {
                        claims_total("lost");
                        (TAKEN_OVER, format!("node {} took {path} over", other.node))
                    } else {
                        counter!(t::CLUSTER_CONFLICTS_TOTAL).increment(1);
                        (
                            CONFLICT,
                            format!(
                                "{path} was also published on node {} while redis was unreachable; the newer stream (this one) stops",
                                other.node
                            ),
                        )
                    };
                    return Err(LegFailure { reason, detail });
                }
                // Ours is the older stream: it keeps the path, and the
                // other node stops its own on its next renewal.
                counter!(t::CLUSTER_CONFLICTS_TOTAL).increment(1);
                warn!(stream = %path, other = %other.node,
                    "the path was also published on another node while redis was unreachable; this (older) stream keeps it");
                if cluster.overwrite(&path, &value).await.is_ok() {
                    written = Some(Instant::now());
                    cluster.hold(&path, &value, true);
                }
            }
            Renewed::Unreachable(e) => {
                if let Some(suppressed) = down_log.check(Instant::now()) {
                    warn!(stream = %path, error = %e, suppressed,
                        "cluster claim not renewed: redis unreachable; the stream goes on");
                }
            }
        }
    }
    cluster.forget(&path, &value);
    if written.is_some() && !cluster.is_draining() {
        if let Err(e) = cluster.release(&path, &value).await {
            warn!(stream = %path, error = %e, "cluster claim not released; it expires after lease_ttl");
        }
    }
    Ok(())
}
