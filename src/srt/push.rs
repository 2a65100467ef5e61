//! SRT push legs: sluice as an SRT caller streaming a rendition to a
//! configured destination. The handshake is srt-protocol's sans-IO caller;
//! once connected, the shared sender core (`sender`) feeds the connection
//! from the rendition's ring. Every call into srt-protocol is
//! panic-isolated and inbound packets pass the listener's guard. The
//! destination's name is resolved off the runtime's workers, at most
//! `MAX_LOOKUPS` names at once and one lookup per name, giving up before
//! the stream's setup deadline with the host named. Targets show as
//! `PushTarget`'s `Display`: never with their streamid or passphrase.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use srt_protocol::connection::{Connection, DuplexConnection};
use srt_protocol::options::{KeySize, PacketCount, Passphrase};
use srt_protocol::packet::{Packet, SeqNumber, SocketId};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::{ConnectionReject, ConnectionResult};
use srt_protocol::settings::{ConnInitSettings, KeySettings};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::config::PushTarget;
use super::guard::{self, Verdict};
use super::sender::{End, Sender, SenderMetrics};
use crate::stream::leg::{LegContext, LegFailure};

/// How long a closing leg waits for the destination to confirm.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Handshake retransmission interval.
const HANDSHAKE_TICK: Duration = Duration::from_millis(100);
/// A push leg feeds everything the ring has in one turn (it is alone on
/// its socket).
const FEED_BATCH: usize = usize::MAX;
/// Most host-name lookups in flight at once, every push leg together. Each
/// holds a thread of tokio's blocking pool until `getaddrinfo` returns,
/// which no cancellation shortens: a hanging resolver can take this many
/// threads, never the pool.
pub const MAX_LOOKUPS: usize = 8;
/// A lookup gives up this long before the stream's setup deadline, so that
/// its failure (naming the host) reaches the group before the deadline.
const RESOLVE_MARGIN: Duration = Duration::from_millis(250);
/// How long a leg started on a live stream (no setup deadline) waits for
/// its lookup.
const RESOLVE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot resolve push host {0:?}: {1}")]
    Resolve(String, String),
    #[error("{0}: socket error: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: the destination rejected the connection ({1})")]
    Rejected(String, String),
    #[error("{0}: bad settings: {1}")]
    Settings(String, String),
    #[error("{0}: the connection closed (destination gone or timed out)")]
    Closed(String),
    #[error("{0}: the destination does not keep up (send buffer full for {1:?})")]
    Stuck(String, Duration),
    #[error("{0}: the destination fell behind the stream")]
    TooSlow(String),
    #[error("{0}: srt-protocol panicked handling this destination")]
    Panicked(String),
    #[error("{0}: the stream has no rendition {1:?}")]
    NoRendition(String, String),
}

impl PushError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Resolve(..) => "push_resolve",
            PushError::Io(..) => "push_io",
            PushError::Rejected(..) => "push_rejected",
            PushError::Settings(..) => "push_settings",
            PushError::Closed(..) => "push_closed",
            PushError::Stuck(..) => "push_stuck",
            PushError::TooSlow(..) => "push_too_slow",
            PushError::Panicked(..) => "push_panicked",
            PushError::NoRendition(..) => "push_no_rendition",
        }
    }
}

fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// The SRT push leg of a stream: connects (during setup), then streams its
/// rendition until the stream ends (`Ok`) or the destination fails.
pub async fn run_leg(
    target: PushTarget,
    default_latency: Duration,
    peer_idle_timeout: Duration,
    ctx: LegContext,
) -> Result<(), LegFailure> {
    run(target, default_latency, peer_idle_timeout, ctx)
        .await
        .map_err(|e| LegFailure {
            reason: e.reason(),
            detail: e.to_string(),
        })
}

async fn run(
    target: PushTarget,
    default_latency: Duration,
    peer_idle_timeout: Duration,
    ctx: LegContext,
) -> Result<(), PushError> {
    let name = target.to_string();
    let ring = match ctx.stream.rendition(&target.rendition) {
        Some(r) => r.ring.clone(),
        None => return Err(PushError::NoRendition(name, target.rendition.clone())),
    };
    // A slow resolver fails the leg, naming the host, just before the
    // stream's setup deadline; the stream's end stops the wait earlier.
    let remote = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(()),
        r = resolve_host(&target.host, target.port, ctx.events.setup_deadline()) => {
            r.map_err(|why| PushError::Resolve(target.host.clone(), why))?
        }
    };
    let (sock, remote) = bind(&name, remote).await?;
    let latency = target.latency.unwrap_or(default_latency);
    let Some(connection) = handshake(
        &sock,
        remote,
        &target,
        latency,
        peer_idle_timeout,
        &ctx.cancel,
    )
    .await?
    else {
        return Ok(());
    };
    info!(destination = %name, ?latency, "srt push leg connected");
    ctx.events.connected();
    let now = Instant::now();
    let Some(conn) = caught(|| DuplexConnection::new(connection)) else {
        return Err(PushError::Panicked(name));
    };
    let sender = Sender::new(
        conn,
        ring.subscribe(),
        FEED_BATCH,
        CLOSE_GRACE,
        SenderMetrics::noop(),
        name.clone(),
        now,
    );
    stream(sock, remote, sender, name, ctx.cancel).await
}

/// A push destination's address (SRT and RTMP legs share this): looked up
/// by the stream's setup deadline less a margin, or within the lookup limit
/// for a leg started on a live stream (`setup_deadline` `None`). The error
/// says why, and which limit ran out, without the host (the caller names it).
pub async fn resolve_host(
    host: &str,
    port: u16,
    setup_deadline: Option<Instant>,
) -> Result<SocketAddr, String> {
    let now = Instant::now();
    let by = match setup_deadline {
        Some(d) => Deadline {
            at: d.checked_sub(RESOLVE_MARGIN).unwrap_or(now).max(now),
            what: ", before the stream's setup deadline (server.setup_timeout)",
        },
        None => Deadline {
            at: now + RESOLVE_LIMIT,
            what: " (the push host lookup limit)",
        },
    };
    resolve(host, port, by).await
}

/// The destination's address by `by`; an IPv4 address is preferred, as
/// libsrt's own tools do, so that `localhost` reaches a listener bound to
/// IPv4 only.
async fn resolve(host: &str, port: u16, by: Deadline) -> Result<SocketAddr, String> {
    let ips = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => lookup(host, by).await?,
    };
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or(ips.first())
        .map(|ip| SocketAddr::new(*ip, port))
        .ok_or_else(|| "no address".into())
}

/// When a leg stops waiting for its lookup, and what that limit is (as
/// its error says it, after the time waited).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    what: &'static str,
}

/// A name's lookup as its waiters see it.
#[derive(Debug, Clone)]
enum Lookup {
    /// Waiting for one of the `MAX_LOOKUPS` slots.
    Queued,
    /// `getaddrinfo` runs.
    Running,
    Done(Result<Vec<IpAddr>, String>),
}

/// The lookup slots, and the lookups in flight by name: a leg joins the
/// one running for its host instead of starting another.
static SLOTS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);
type InFlight = HashMap<String, Arc<watch::Sender<Lookup>>>;
static IN_FLIGHT: LazyLock<Mutex<InFlight>> = LazyLock::new(Mutex::default);

fn in_flight() -> std::sync::MutexGuard<'static, InFlight> {
    IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host`'s addresses, from the lookup in flight for it or a new one;
/// gives up at `by` (the lookup itself runs on until `getaddrinfo`
/// returns, then frees its slot).
async fn lookup(host: &str, by: Deadline) -> Result<Vec<IpAddr>, String> {
    let started = Instant::now();
    if started >= by.at {
        // Decided here, not by which of the timer and a fast answer the
        // runtime happens to see first.
        return Err(format!("no time left to look it up{}", by.what));
    }
    // Spellings of one name (`Host.Example.`) share its lookup.
    let key = host.trim_end_matches('.').to_ascii_lowercase();
    let mut rx = {
        let mut map = in_flight();
        match map.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let tx = Arc::new(watch::Sender::new(Lookup::Queued));
                let rx = tx.subscribe();
                map.insert(key.clone(), tx.clone());
                tokio::spawn(run_lookup(host.to_string(), key, tx));
                rx
            }
        }
    };
    let done = |l: &Lookup| matches!(l, Lookup::Done(_));
    let waited = {
        let w = tokio::time::timeout_at(by.at.into(), rx.wait_for(done)).await;
        w.map(|r| {
            r.ok().and_then(|l| match &*l {
                Lookup::Done(answer) => Some(answer.clone()),
                _ => None,
            })
        })
    };
    match waited {
        Ok(Some(answer)) => answer,
        Ok(None) => Err("the lookup ended without an answer".into()),
        Err(_) => {
            let waited = Duration::from_millis(started.elapsed().as_millis() as u64);
            Err(if matches!(*rx.borrow(), Lookup::Queued) {
                format!(
                    "no lookup slot free within {waited:?} ({MAX_LOOKUPS} push host lookups \
                     in flight){}",
                    by.what
                )
            } else {
                format!("timed out after {waited:?}{}", by.what)
            })
        }
    }
}

/// One name's lookup: wait for a slot (unless every waiter has gone), run
/// `getaddrinfo` on the blocking pool holding it, publish the answer.
async fn run_lookup(host: String, key: String, tx: Arc<watch::Sender<Lookup>>) {
    // However this task ends (answered, abandoned, dropped with its
    // runtime), later legs must not join a lookup nobody runs.
    struct Entry {
        key: String,
        tx: Arc<watch::Sender<Lookup>>,
    }
    impl Drop for Entry {
        fn drop(&mut self) {
            forget(&mut in_flight(), &self.key, &self.tx);
        }
    }
    let entry = Entry {
        key,
        tx: tx.clone(),
    };
    let slot = loop {
        tokio::select! {
            slot = SLOTS.acquire() => break slot,
            _ = tx.closed() => {
                // Under the map's lock: no leg can join between the count
                // and the removal.
                let mut map = in_flight();
                if tx.receiver_count() == 0 {
                    forget(&mut map, &entry.key, &tx);
                    return;
                }
            }
        }
    };
    let answer = match slot {
        Ok(slot) => {
            tx.send_replace(Lookup::Running);
            let name = host.clone();
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                (name.as_str(), 0)
                    .to_socket_addrs()
                    .map(|addrs| addrs.map(|a| a.ip()).collect())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the lookup failed: {e}")))
        }
        Err(e) => Err(e.to_string()),
    };
    drop(entry);
    tx.send_replace(Lookup::Done(answer));
}

/// Remove `host`'s entry if it is still this lookup's.
fn forget(map: &mut InFlight, host: &str, tx: &Arc<watch::Sender<Lookup>>) {
    if map.get(host).is_some_and(|t| Arc::ptr_eq(t, tx)) {
        map.remove(host);
    }
}

/// Open a UDP socket connected to the destination.
pub async fn bind(name: &str, remote: SocketAddr) -> Result<(UdpSocket, SocketAddr), PushError> {
    let io = |e| PushError::Io(name.to_string(), e);
    let bind: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    // An edge pull receives its origin's GOP cache as one burst (the
    // send-only player sender does not pace): give it room beyond the
    // default ~208 KiB so a busy task does not lose the burst's tail.
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(CALLER_RECV_BUFFER);
    sock.connect(remote).await.map_err(io)?;
    Ok((sock, remote))
}

/// Receive buffer asked for a caller socket (push leg, edge pull).
const CALLER_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Retransmit the caller handshake every tick until connected, rejected or
/// cancelled (the stream's setup deadline cancels us: `Ok(None)`).
async fn handshake(
    sock: &UdpSocket,
    remote: SocketAddr,
    target: &PushTarget,
    latency: Duration,
    peer_idle_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Option<Connection>, PushError> {
    let caller = Caller {
        name: target.to_string(),
        streamid: target.streamid.clone(),
        passphrase: target.passphrase.clone(),
        latency,
        peer_idle_timeout,
    };
    connect_caller(sock, remote, &caller, cancel).await
}

/// What an SRT caller asks for (a push leg's destination, an edge pull).
/// Its `Debug` shows neither the streamid nor the passphrase.
#[derive(Clone)]
pub struct Caller {
    /// How errors name the peer (no secrets).
    pub name: String,
    pub streamid: Option<String>,
    pub passphrase: Option<String>,
    pub latency: Duration,
    pub peer_idle_timeout: Duration,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

/// The caller handshake on `sock` (connected to `remote`), retransmitted
/// every tick until connected, rejected or cancelled (`Ok(None)`).
pub async fn connect_caller(
    sock: &UdpSocket,
    remote: SocketAddr,
    caller: &Caller,
    cancel: &CancellationToken,
) -> Result<Option<Connection>, PushError> {
    let name = caller.name.clone();
    let latency = caller.latency;
    let peer_idle_timeout = caller.peer_idle_timeout;
    let local_ip = sock
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| PushError::Io(name.clone(), e))?;
    let key_settings = match &caller.passphrase {
        Some(p) => Some(KeySettings {
            key_size: KeySize::AES128,
            passphrase: Passphrase::try_from(p.clone())
                .map_err(|e| PushError::Settings(name.clone(), format!("{e:?}")))?,
        }),
        None => None,
    };
    let settings = ConnInitSettings {
        local_sockid: SocketId(rand::random::<u32>() & 0x7FFF_FFFF | 1),
        send_latency: latency,
        recv_latency: latency,
        peer_idle_timeout,
        send_buffer_size: PacketCount(u64::from(guard::MAX_LOSS)),
        key_settings,
        ..ConnInitSettings::default()
    };
    let mut connect = Connect::new(
        remote,
        local_ip,
        settings,
        caller.streamid.clone(),
        SeqNumber::new_truncate(rand::random::<u32>()),
    );
    let mut buf = vec![0u8; 2048];
    let mut out = BytesMut::with_capacity(1500);
    let mut tick = tokio::time::interval(HANDSHAKE_TICK);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tick.tick() => caught(|| connect.handle_tick(Instant::now())),
            r = sock.recv(&mut buf) => match r {
                Ok(n) => match guard::parse_caught(&buf[..n], remote.is_ipv6()) {
                    Some(Ok(p)) => caught(|| connect.handle_packet(Ok((p, remote)), Instant::now())),
                    Some(Err(_)) => continue,
                    None => None,
                },
                // ICMP port unreachable while the destination is not up yet.
                Err(_) => continue,
            },
        };
        let reply = match result.ok_or_else(|| PushError::Panicked(name.clone()))? {
            ConnectionResult::SendPacket((p, _)) => Some(p),
            ConnectionResult::Connected(reply, conn) => {
                send(sock, &mut out, reply.map(|(p, _)| p)).await;
                return Ok(Some(conn));
            }
            ConnectionResult::Reject(reply, why) => {
                send(sock, &mut out, reply.map(|(p, _)| p)).await;
                let (ConnectionReject::Rejected(r) | ConnectionReject::Rejecting(r)) = why;
                return Err(PushError::Rejected(name.clone(), format!("{r}")));
            }
            ConnectionResult::Failure(e) => return Err(PushError::Io(name.clone(), e)),
            _ => None,
        };
        send(sock, &mut out, reply).await;
    }
}

/// Best effort: a lost datagram is SRT's business.
pub async fn send(sock: &UdpSocket, out: &mut BytesMut, p: Option<Packet>) {
    if let Some(p) = p {
        out.clear();
        p.serialize(out);
        let _ = sock.send(out).await;
    }
}

/// Feed the destination until the stream ends or the leg fails; the clock
/// is read once per turn.
async fn stream(
    sock: UdpSocket,
    remote: SocketAddr,
    mut sender: Sender,
    name: String,
    cancel: CancellationToken,
) -> Result<(), PushError> {
    let mut buf = vec![0u8; 2048];
    let mut wire = BytesMut::with_capacity(1500);
    let mut packets = Vec::new();
    loop {
        let now = Instant::now();
        let Some(end) = caught(|| sender.pump(now, &mut packets)) else {
            return Err(PushError::Panicked(name));
        };
        for (p, _) in packets.drain(..) {
            send(&sock, &mut wire, Some(p)).await;
        }
        match end {
            None => {}
            Some(End::StreamEnded { confirmed } | End::Closed { confirmed }) => {
                let how = if confirmed {
                    ""
                } else {
                    " (no shutdown confirmation)"
                };
                info!(destination = %name, "srt push leg closed{how}");
                return Ok(());
            }
            Some(End::PeerClosed) => return Err(PushError::Closed(name)),
            Some(End::Stuck) => return Err(PushError::Stuck(name, super::sender::STUCK_LIMIT)),
            Some(End::TooSlow) => return Err(PushError::TooSlow(name)),
        }
        let wake = sender.next_wake().max(now + Duration::from_micros(500));
        let wait_data = !sender.is_closing() && !sender.is_over_cap();
        tokio::select! {
            _ = cancel.cancelled(), if !sender.is_closing() => {
                if caught(|| sender.close(Instant::now())).is_none() {
                    return Err(PushError::Panicked(name));
                }
            }
            // Woken by new data (or the stream's end); the pump reads it.
            _ = sender.data_ready(), if wait_data => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = sock.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let data = &buf[..n];
                if !matches!(guard::check(data), Verdict::Pass) {
                    continue;
                }
                match guard::parse_caught(data, remote.is_ipv6()) {
                    Some(Ok(p)) => {
                        let now = Instant::now();
                        if caught(|| sender.handle_packet(now, p, remote)).is_none() {
                            return Err(PushError::Panicked(name));
                        }
                    }
                    Some(Err(_)) => {}
                    None => return Err(PushError::Panicked(name)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::config::parse_push_url;

    fn deadline(at: Instant) -> Deadline {
        Deadline {
            at,
            what: " (test)",
        }
    }

    #[tokio::test]
    async fn addresses_resolve_and_an_expired_wait_names_the_host() {
        // A literal address needs no lookup, however late.
        let t = parse_push_url("srt://127.0.0.1:9000").unwrap();
        let past = deadline(Instant::now());
        assert_eq!(
            resolve(&t.host, t.port, past).await.unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        // Names are looked up; IPv4 first.
        let t = parse_push_url("srt://localhost:9001").unwrap();
        let soon = deadline(Instant::now() + Duration::from_secs(10));
        assert_eq!(
            resolve(&t.host, t.port, soon).await.unwrap(),
            "127.0.0.1:9001".parse().unwrap()
        );
        // A wait that is over fails at once, naming the host and the limit.
        let t = parse_push_url("srt://expired.invalid:9000").unwrap();
        let e = resolve(&t.host, t.port, deadline(Instant::now()))
            .await
            .map_err(|why| PushError::Resolve(t.host.clone(), why))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(r#"cannot resolve push host "expired.invalid": "#),
            "{text}"
        );
        assert!(text.ends_with(" (test)"), "{text}");
        assert_eq!(e.reason(), "push_resolve");
    }
}
