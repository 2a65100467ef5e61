//! Connection limits applied at accept: `rtmp.max_connections` (a
//! semaphore) and `rtmp.max_connections_per_ip` (a table of open
//! connections per client IP); a connection holds its [`Admission`] until
//! it ends, however it ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use metrics::counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::config::RtmpConfig;
use crate::telemetry as t;

/// A connection's share of the connection limits, released on drop.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// Apply `rtmp.max_connections` and `rtmp.max_connections_per_ip` to a
/// new TCP connection; `None` (counted and logged) refuses it.
pub fn admit(
    cfg: &RtmpConfig,
    permits: &Arc<Semaphore>,
    per_ip: &Arc<PerIp>,
    peer: SocketAddr,
) -> Option<Admission> {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => "max_connections").increment(1);
        warn!(%peer, limit = cfg.max_connections, "rtmp connection refused: rtmp.max_connections reached");
        return None;
    };
    let limit = cfg.max_connections_per_ip;
    let Some(ip) = per_ip.try_acquire(peer.ip(), limit) else {
        counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => "max_connections_per_ip")
            .increment(1);
        warn!(%peer, limit, "rtmp connection refused: rtmp.max_connections_per_ip reached for this IP");
        return None;
    };
    Some(Admission {
        _permit: permit,
        _ip: ip,
    })
}

/// Open connections per client IP.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more connection from `ip`, unless it already holds `limit`.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut counts = self.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or(0)
    }
}

/// One connection counted in [`PerIp`]; the count drops with it, however
/// the connection ends.
#[derive(Debug)]
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_limited_and_released_on_drop() {
        let table = Arc::new(PerIp::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = table.try_acquire(a, 2).unwrap();
        let s2 = table.try_acquire(a, 2).unwrap();
        assert!(table.try_acquire(a, 2).is_none());
        // IPv4-mapped IPv6 is the same client.
        assert!(table
            .try_acquire("::ffff:10.0.0.1".parse().unwrap(), 2)
            .is_none());
        let other = table.try_acquire(b, 2).unwrap();
        assert_eq!(table.count(a), 2);
        drop(s1);
        let s3 = table.try_acquire(a, 2).unwrap();
        drop((s2, s3, other));
        assert_eq!(table.count(a), 0);
        assert!(table.lock().is_empty(), "no entry left behind");
        // A zero limit refuses without leaving an entry.
        assert!(table.try_acquire(a, 0).is_none());
        assert!(table.lock().is_empty());
    }
}
