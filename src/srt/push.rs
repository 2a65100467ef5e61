//! SRT push legs: sluice as an SRT caller streaming a rendition to a
//! configured destination (`srt://host:port?streamid=..&passphrase=..&latency=..`).
//!
//! A leg is a leg of its stream's cancellation group: it must connect during
//! setup, and if it fails later the whole stream is torn down. It drives
//! srt-protocol's sans-IO caller (`Connect`, then `DuplexConnection`) from
//! its own UDP socket; every call into srt-protocol is panic-isolated and,
//! once connected, inbound control packets pass the same guard as the
//! listener's.

use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use srt_protocol::connection::DuplexConnection;
use srt_protocol::options::{KeySize, PacketCount, Passphrase};
use srt_protocol::packet::{Packet, SeqNumber, SocketId};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::{ConnectionReject, ConnectionResult};
use srt_protocol::settings::{ConnInitSettings, KeySettings};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::config::PushTarget;
use super::guard::{self, Verdict};
use crate::stream::{Read, Ring};
use crate::ts::TsChunk;

/// Largest number of packets buffered towards a destination before we stop
/// feeding it (srt-protocol would otherwise drop the oldest itself).
const FEED_CAP_PACKETS: u64 = 2048;
/// A destination that keeps us over the cap this long has failed.
const STUCK_LIMIT: Duration = Duration::from_secs(4);
/// How long a closing leg waits for the destination to confirm.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Handshake retransmission interval.
const HANDSHAKE_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}: cannot resolve or bind: {1}")]
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
}

fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

fn serialize(p: &Packet, buf: &mut BytesMut) {
    buf.clear();
    p.serialize(buf);
}

/// Run one push leg until the stream ends (`Ok`), the leg fails (`Err`), or
/// `cancel` fires (`Ok`). One `()` goes to `connected` once the handshake is done.
pub async fn run(
    target: PushTarget,
    default_latency: Duration,
    peer_idle_timeout: Duration,
    ring: Arc<Ring<TsChunk>>,
    connected: mpsc::Sender<()>,
    cancel: CancellationToken,
) -> Result<(), PushError> {
    let name = target.display.clone();
    let remote: SocketAddr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| PushError::Io(name.clone(), e))?
        .next()
        .ok_or_else(|| {
            PushError::Io(
                name.clone(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            )
        })?;
    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| PushError::Settings(name.clone(), format!("{e}")))?;
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| PushError::Io(name.clone(), e))?;
    sock.connect(remote)
        .await
        .map_err(|e| PushError::Io(name.clone(), e))?;
    let local_ip = sock
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| PushError::Io(name.clone(), e))?;
    let latency = target.latency.unwrap_or(default_latency);
    let key_settings = match &target.passphrase {
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
        target.streamid.clone(),
        SeqNumber::new_truncate(rand::random::<u32>()),
    );
    let mut buf = vec![0u8; 2048];
    let mut out = BytesMut::with_capacity(1500);

    // Handshake: retransmit every tick until connected, rejected or cancelled
    // (the stream's setup deadline cancels us).
    let mut tick = tokio::time::interval(HANDSHAKE_TICK);
    let connection = loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
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
        match result.ok_or_else(|| PushError::Panicked(name.clone()))? {
            ConnectionResult::SendPacket((p, _)) => {
                serialize(&p, &mut out);
                let _ = sock.send(&out).await;
            }
            ConnectionResult::Connected(reply, conn) => {
                if let Some((p, _)) = reply {
                    serialize(&p, &mut out);
                    let _ = sock.send(&out).await;
                }
                break conn;
            }
            ConnectionResult::Reject(reply, why) => {
                if let Some((p, _)) = reply {
                    serialize(&p, &mut out);
                    let _ = sock.send(&out).await;
                }
                let why = match why {
                    ConnectionReject::Rejected(r) | ConnectionReject::Rejecting(r) => {
                        format!("{r}")
                    }
                };
                return Err(PushError::Rejected(name, why));
            }
            ConnectionResult::Failure(e) => return Err(PushError::Io(name, e)),
            _ => {}
        }
    };
    let mut conn = DuplexConnection::new(connection);
    info!(destination = %name, ?latency, "srt push leg connected");
    let _ = connected.try_send(());

    let mut cursor = ring.subscribe();
    let mut chunks = Vec::new();
    let mut over_cap_since: Option<Instant> = None;
    let mut ending = false;
    let mut ending_since = Instant::now();
    let mut fed_any = false;
    loop {
        let now = Instant::now();
        // Teardown is bounded: a destination that never confirms the
        // shutdown is left after the grace period.
        if ending && now.saturating_duration_since(ending_since) > CLOSE_GRACE {
            info!(destination = %name, "srt push leg closed (no shutdown confirmation)");
            return Ok(());
        }
        // Feed under the cap.
        let mut stream_ended = false;
        loop {
            if ending {
                break;
            }
            let Some(buffered) = caught(|| {
                conn.update_statistics(now);
                conn.statistics().tx_buffered_data
            }) else {
                return Err(PushError::Panicked(name));
            };
            if buffered >= FEED_CAP_PACKETS {
                let since = *over_cap_since.get_or_insert(now);
                if now.saturating_duration_since(since) > STUCK_LIMIT {
                    return Err(PushError::Stuck(name, STUCK_LIMIT));
                }
                break;
            }
            over_cap_since = None;
            chunks.clear();
            match cursor.try_read(64, &mut chunks) {
                None => break,
                Some(Read::Items) => {
                    for c in chunks.drain(..) {
                        let input_at = if fed_any {
                            now
                        } else {
                            super::listener::pacing_primer(now)
                        };
                        fed_any = true;
                        if caught(|| conn.handle_data_input(input_at, Some((now, c.data))))
                            .is_none()
                        {
                            return Err(PushError::Panicked(name));
                        }
                    }
                }
                Some(Read::Skipped { dropped }) => {
                    debug!(destination = %name, dropped, "push leg skipped to the newest keyframe");
                }
                Some(Read::TooSlow) => return Err(PushError::TooSlow(name)),
                Some(Read::Closed) => {
                    stream_ended = true;
                    break;
                }
            }
        }
        if stream_ended {
            // Flush, then Shutdown; give the destination a moment to ack.
            let _ = caught(|| conn.handle_data_input(now, None));
            ending = true;
            ending_since = now;
        }
        // Timers and output.
        let Some((next, packets)) = caught(|| {
            let next = conn.check_timers(now);
            let mut packets = Vec::new();
            while let Some((p, _)) = conn.next_packet(now) {
                packets.push(p);
            }
            while conn.next_data(now).is_some() {}
            (next, packets)
        }) else {
            return Err(PushError::Panicked(name));
        };
        for p in packets {
            serialize(&p, &mut out);
            let _ = sock.send(&out).await;
        }
        if !conn.is_open() {
            if ending {
                info!(destination = %name, "srt push leg closed");
                return Ok(());
            }
            return Err(PushError::Closed(name));
        }
        let wake = tokio::time::Instant::from_std(next.max(now + Duration::from_micros(500)));
        tokio::select! {
            _ = cancel.cancelled(), if !ending => {
                let _ = caught(|| conn.handle_data_input(Instant::now(), None));
                ending = true;
                ending_since = Instant::now();
            }
            // Woken by new data (or the stream's end); the loop above reads it.
            _ = cursor.read(0, &mut chunks), if !ending && over_cap_since.is_none() => {}
            _ = tokio::time::sleep_until(wake) => {}
            r = sock.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let data = &buf[..n];
                if !matches!(guard::check(data), Verdict::Pass) {
                    continue;
                }
                match guard::parse_caught(data, remote.is_ipv6()) {
                    Some(Ok(p)) => {
                        let now = Instant::now();
                        if caught(|| conn.handle_packet_input(now, Ok((p, remote)))).is_none() {
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
