//! The tokio driver for RTMP and RTMPS: accepts TCP connections (and, on
//! the RTMPS listener, finishes TLS inside the connection task) and moves
//! bytes between each stream and its [`Session`]. All protocol decisions
//! live in `proto`; this loop only reads, writes, waits for timeouts and
//! applies the registry's answers to publish requests. Plain and TLS
//! connections share every line after the TLS handshake.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Counter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::amf0::Amf0Value;
use super::config::RtmpConfig;
use super::proto::{Event, ProtoError, Session};
use crate::srt::config::SrtConfig;
use crate::srt::push::{self, PushError};
use crate::stream::config::Apps;
use crate::stream::{
    ClaimError, ClaimPolicy, MediaEvent, Metadata, PublishGuard, Registry, RingConfig, StreamPath,
};
use crate::telemetry as t;
use crate::transcode::config::{RenditionSpec, TranscodeConfig};
use crate::transcode::{self, EncoderState};
use crate::ts::{Muxer, TsChunk};

/// What every connection task shares.
pub struct Context {
    pub rtmp: RtmpConfig,
    /// Push legs' latency and idle timeout.
    pub srt: SrtConfig,
    pub apps: Apps,
    /// `server.setup_timeout`.
    pub setup_timeout: Duration,
    pub transcode: TranscodeConfig,
    pub registry: Arc<Registry>,
    /// The server's root token: cancelled at the end of a drain.
    pub shutdown: CancellationToken,
    /// Encoders for transcoded renditions (new streams take the current).
    pub encoders: Arc<EncoderState>,
    /// Every FFmpeg supervisor, so shutdown can wait for them to reap.
    pub transcodes: tokio_util::task::TaskTracker,
}

/// The bound RTMP listener and, when `server.rtmps_addr` is set, the RTMPS
/// one with its TLS configuration.
pub struct Listeners {
    pub rtmp: TcpListener,
    pub rtmps: Option<(TcpListener, TlsAcceptor)>,
}

/// Accept connections on both listeners until `ctx.shutdown` is cancelled,
/// then wait for the connection tasks to finish. `rtmp.max_connections`
/// and `rtmp.max_connections_per_ip` count RTMP and RTMPS together.
pub async fn serve(listeners: Listeners, ctx: Arc<Context>) {
    let permits = Arc::new(Semaphore::new(ctx.rtmp.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = JoinSet::new();
    loop {
        let (accepted, tls) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listeners.rtmp.accept() => (r, None),
            (r, acceptor) = accept_tls(&listeners.rtmps) => (r, Some(acceptor)),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "rtmp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admission) = admit(&ctx, &permits, &per_ip, peer) else {
            drop(sock);
            continue;
        };
        let ctx = ctx.clone();
        let span = info_span!("rtmp", %peer, tls = tls.is_some(), stream = tracing::field::Empty);
        tasks.spawn(
            async move {
                let _admission = admission;
                connection(sock, tls, peer, ctx).await;
            }
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
}

/// The next RTMPS connection; pending forever without an RTMPS listener.
async fn accept_tls(
    l: &Option<(TcpListener, TlsAcceptor)>,
) -> (std::io::Result<(TcpStream, SocketAddr)>, TlsAcceptor) {
    match l {
        Some((listener, acceptor)) => (listener.accept().await, acceptor.clone()),
        None => std::future::pending().await,
    }
}

/// A connection's share of the connection limits, released on drop.
struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// Apply `rtmp.max_connections` and `rtmp.max_connections_per_ip` to a
/// new TCP connection; `None` (counted and logged) refuses it.
fn admit(
    ctx: &Context,
    permits: &Arc<Semaphore>,
    per_ip: &Arc<PerIp>,
    peer: SocketAddr,
) -> Option<Admission> {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => "max_connections").increment(1);
        warn!(%peer, limit = ctx.rtmp.max_connections, "rtmp connection refused: rtmp.max_connections reached");
        return None;
    };
    let limit = ctx.rtmp.max_connections_per_ip;
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
struct PerIp {
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

/// One accepted connection: TLS first on the RTMPS listener (under
/// `rtmp.handshake_timeout`, abandoned at shutdown), then RTMP.
async fn connection(
    sock: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    ctx: Arc<Context>,
) {
    let accepted = Instant::now();
    let _ = sock.set_nodelay(true);
    counter!(t::RTMP_CONNECTIONS_TOTAL).increment(1);
    // Counted down on every way out, a panic included.
    struct Open(metrics::Gauge);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.decrement(1.0);
            t::connection_closed();
        }
    }
    let open = Open(gauge!(t::RTMP_CONNECTIONS));
    open.0.increment(1.0);
    match tls {
        None => handle(sock, peer, accepted, ctx).await,
        Some(acceptor) => {
            let limit = ctx.rtmp.handshake_timeout;
            let shutdown = ctx.shutdown.clone();
            let result = tokio::select! {
                r = tokio::time::timeout(limit, acceptor.accept(sock)) => match r {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err(format!(
                        "TLS handshake not finished within {limit:?} (rtmp.handshake_timeout)"
                    )),
                },
                _ = shutdown.cancelled() => Err("server shut down during the TLS handshake".to_string()),
            };
            match result {
                Ok(stream) => {
                    counter!(t::RTMPS_CONNECTIONS_TOTAL).increment(1);
                    debug!("tls handshake done");
                    handle(stream, peer, accepted, ctx).await;
                }
                Err(why) => {
                    counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => "tls_handshake")
                        .increment(1);
                    warn!(
                        reason = "tls_handshake",
                        error = why,
                        "rtmps connection closed"
                    );
                }
            }
        }
    }
    drop(open);
}

/// Why a connection ended.
enum Close {
    PeerClosed,
    Rejected,
    TakenOver,
    Shutdown,
    /// The stream did not become playable within `server.setup_timeout`.
    SetupTimeout,
    /// A leg of the stream's group (a push destination, FFmpeg) failed.
    LegFailed,
    /// A leg failed before the stream became playable.
    SetupFailed,
    /// The publisher sent more than `rtmp.max_ingest_bitrate`.
    BitrateLimit,
    Io(std::io::Error),
    Proto(ProtoError),
}

impl Close {
    fn reason(&self) -> &'static str {
        match self {
            Close::PeerClosed => "peer_closed",
            Close::Rejected => "rejected",
            Close::TakenOver => "taken_over",
            Close::Shutdown => "shutdown",
            Close::SetupTimeout => "setup_timeout",
            Close::LegFailed => "leg_failed",
            Close::SetupFailed => "setup_failed",
            Close::BitrateLimit => "bitrate_limit",
            Close::Io(_) => "io_error",
            Close::Proto(e) => e.reason(),
        }
    }
}

/// A publish in progress on this connection.
struct Publishing {
    guard: PublishGuard,
    /// Native remux into the "source" rendition, inline: no queue between
    /// the RTMP frame and its TS packets.
    muxer: Muxer,
    chunks: Vec<TsChunk>,
    mux_errors: Counter,
    bytes: Counter,
    frames_video: Counter,
    frames_audio: Counter,
    tag_errors: Counter,
    jumps: Counter,
    /// The source rendition holds a decodable start (its first keyframe chunk).
    keyframe_seen: bool,
    /// Setup complete: keyframe seen and every push leg connected.
    ready: bool,
    /// SRT push legs of this stream's group.
    legs: JoinSet<Result<(), PushError>>,
    legs_total: usize,
    legs_connected: usize,
    legs_rx: mpsc::Receiver<()>,
    /// The muxer's last refusal, to explain a setup failure.
    last_mux_error: Option<String>,
    /// Transcoded renditions of this stream (none: no FFmpeg).
    renditions: Vec<RenditionSpec>,
    /// Renditions whose first IDR is in their ring.
    renditions_ready: usize,
    /// FFmpeg, started at the first video keyframe.
    transcode: Option<transcode::Handle>,
    /// Latest codec configurations, the first thing FFmpeg reads.
    video_config: Option<MediaEvent>,
    audio_config: Option<MediaEvent>,
    /// A leg failed inside a handler; the run loop ends the stream.
    failure: Option<(&'static str, String)>,
    published: Instant,
    /// When the ingest bitrate is next compared with the cap.
    next_rate_check: Instant,
    /// The ingest bitrate (bit/s) that broke `rtmp.max_ingest_bitrate`.
    over_bitrate: Option<u64>,
}

impl Drop for Publishing {
    fn drop(&mut self) {
        // The guard's drop (right after this) cancels the group and closes the
        // rings; legs then flush and close on their own within their grace
        // period instead of being aborted mid-packet.
        self.legs.detach_all();
    }
}

/// A publish waiting for the webhook's answer (the session stays paused).
struct PendingAuth {
    path: StreamPath,
    name: String,
    answer: tokio::task::JoinHandle<Result<(), String>>,
}

struct Conn {
    pending_auth: Option<PendingAuth>,
    ctx: Arc<Context>,
    peer: SocketAddr,
    session: Session,
    app: String,
    publishing: Option<Publishing>,
    /// TCP accept: the stream setup deadline counts from here.
    accepted: Instant,
}

/// How often a publisher's ingest bitrate is compared with the cap.
const RATE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The ingest bitrate is judged only after this much publishing: the
/// measuring window (3 s) must be full.
const RATE_WARMUP: Duration = Duration::from_secs(3);

/// Write `out` and flush it (TLS holds records until flushed).
async fn send<S: AsyncWrite + Unpin>(sock: &mut S, out: &[u8]) -> std::io::Result<()> {
    sock.write_all(out).await?;
    sock.flush().await
}

/// Run RTMP on an established byte stream (TCP or TLS over TCP).
async fn handle<S>(mut sock: S, peer: SocketAddr, accepted: Instant, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let seed = rand::random::<u64>();
    let mut conn = Conn {
        session: Session::new(ctx.rtmp.limits(), Instant::now(), seed),
        ctx,
        peer,
        app: String::new(),
        publishing: None,
        accepted,
        pending_auth: None,
    };
    let close = conn.run(&mut sock).await;
    // Best effort: the last words (a rejection) may still be queued.
    if let Some(out) = conn.session.take_transmit() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send(&mut sock, &out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.shutdown()).await;
    let reason = close.reason();
    match &close {
        Close::Proto(e) => {
            counter!(t::RTMP_PROTOCOL_ERRORS_TOTAL, "reason" => reason).increment(1);
            warn!(reason, error = %e, "rtmp connection closed");
        }
        Close::Io(e) => info!(reason, error = %e, "rtmp connection closed"),
        _ => info!(reason, "rtmp connection closed"),
    }
    if let Some(p) = conn.publishing.take() {
        counter!(t::STREAM_TEARDOWNS_TOTAL, "cause" => reason).increment(1);
        info!(stream = %p.guard.stream().path, cause = reason, "publish ended");
    }
}

/// Read buffer of a new connection, and the most it grows to.
const READ_BUF_START: usize = 4 * 1024;
const READ_BUF_MAX: usize = 64 * 1024;

impl Conn {
    async fn run<S>(&mut self, sock: &mut S) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // Small until the peer fills it: thousands of idle or half-open
        // connections then hold 4 KiB each, a publisher grows to 64 KiB.
        let mut buf = vec![0u8; READ_BUF_START];
        let shutdown = self.ctx.shutdown.clone();
        let setup_deadline = tokio::time::Instant::from_std(self.accepted + self.ctx.setup_timeout);
        loop {
            let deadline = tokio::time::Instant::from_std(self.session.poll_timeout());
            let in_setup = self.publishing.as_ref().is_some_and(|p| !p.ready);
            let stream_cancel = self
                .publishing
                .as_ref()
                .map(|p| p.guard.stream().cancel.clone())
                .unwrap_or_default();
            tokio::select! {
                r = sock.read(&mut buf) => match r {
                    Ok(0) => return Close::PeerClosed,
                    Ok(n) => {
                        if let Err(e) = self.session.handle_input(Instant::now(), &buf[..n]) {
                            return Close::Proto(e);
                        }
                        if n == buf.len() && buf.len() < READ_BUF_MAX {
                            buf.resize(buf.len() * 2, 0);
                        }
                    }
                    Err(e) => return Close::Io(e),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(e) = self.session.handle_timeout(Instant::now()) {
                        return Close::Proto(e);
                    }
                }
                _ = stream_cancel.cancelled(), if self.publishing.is_some() => {
                    let taken = self.publishing.as_ref().is_some_and(|p| {
                        p.guard.stream().taken_over.load(std::sync::atomic::Ordering::SeqCst)
                    });
                    if taken {
                        self.session.stop_publish(
                            "NetStream.Publish.BadName",
                            "another publisher took over this stream",
                        );
                        return Close::TakenOver;
                    }
                    self.session.stop_publish("NetStream.Unpublish.Success", "server is shutting down");
                    return Close::Shutdown;
                }
                _ = tokio::time::sleep_until(setup_deadline), if in_setup => {
                    self.fail_setup();
                    return Close::SetupTimeout;
                }
                ev = leg_event(&mut self.publishing, in_setup) => match ev {
                    LegEvent::Connected => {
                        if let Some(p) = &mut self.publishing {
                            p.legs_connected += 1;
                        }
                        self.check_ready();
                    }
                    LegEvent::Ended(Ok(Ok(()))) => {}
                    LegEvent::Ended(Ok(Err(e))) => {
                        self.fail_leg(Leg::Push, &e.to_string());
                        return Close::LegFailed;
                    }
                    LegEvent::Ended(Err(e)) => {
                        self.fail_leg(Leg::Push, &format!("push leg task failed: {e}"));
                        return Close::LegFailed;
                    }
                    LegEvent::Transcode(transcode::Event::FirstIdr { .. }) => {
                        if let Some(p) = &mut self.publishing {
                            p.renditions_ready += 1;
                        }
                        self.check_ready();
                    }
                    LegEvent::Transcode(transcode::Event::Failed { reason, detail }) => {
                        if let Some(p) = &mut self.publishing {
                            p.failure = Some((reason, detail));
                        }
                    }
                },
                answer = auth_answer(&mut self.pending_auth) => {
                if let Some(pending) = self.pending_auth.take() {
                    match answer {
                        Ok(()) => {
                            if let Err(e) = self.start_publish(pending.path, &pending.name) {
                                return Close::Proto(e);
                            }
                        }
                        Err(why) => self.refuse_publish(&pending.path, "webhook_denied", &why),
                    }
                }
            }
                _ = shutdown.cancelled() => return Close::Shutdown,
            }
            if let Err(e) = self.drain_events() {
                return Close::Proto(e);
            }
            if let Some(close) = self.take_failure().or_else(|| self.take_over_limit()) {
                if let Some(out) = self.session.take_transmit() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), send(sock, &out)).await;
                }
                return close;
            }
            if let Some(out) = self.session.take_transmit() {
                // A peer that stops reading must not pin this task forever.
                let idle = self.ctx.rtmp.idle_timeout;
                match tokio::time::timeout(idle, send(sock, &out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Close::Io(e),
                    Err(_) => return Close::Proto(ProtoError::IdleTimeout(idle)),
                }
            }
            if self.session.is_closing() {
                return Close::Rejected;
            }
        }
    }

    /// A leg reported a failure: before the stream was ready it is a setup
    /// failure, afterwards a leg failure; either way every leg stops.
    fn take_failure(&mut self) -> Option<Close> {
        let p = self.publishing.as_mut()?;
        let (reason, detail) = p.failure.take()?;
        if p.ready {
            self.fail_leg(Leg::Transcode, &detail);
            return Some(Close::LegFailed);
        }
        counter!(t::STREAM_SETUP_FAILURES_TOTAL, "reason" => reason).increment(1);
        warn!(stream = %p.guard.stream().path, reason, why = detail, "stream setup failed");
        self.session.stop_publish(
            "NetStream.Publish.Failed",
            &format!("stream setup failed: {detail}"),
        );
        Some(Close::SetupFailed)
    }

    /// The publisher went over `rtmp.max_ingest_bitrate`: stop its stream.
    fn take_over_limit(&mut self) -> Option<Close> {
        let p = self.publishing.as_mut()?;
        let bps = p.over_bitrate.take()?;
        let cap = self.ctx.rtmp.max_ingest_kbps;
        let kbps = bps / 1000;
        warn!(
            stream = %p.guard.stream().path,
            ingest_kbps = kbps,
            limit_kbps = cap,
            "ingest bitrate over rtmp.max_ingest_bitrate; stopping the stream"
        );
        self.session.stop_publish(
            "NetStream.Publish.Failed",
            &format!("ingest bitrate {kbps} kbit/s exceeds rtmp.max_ingest_bitrate ({cap} kbit/s)"),
        );
        Some(Close::BitrateLimit)
    }

    /// The stream never became playable: tell the publisher why.
    fn fail_setup(&mut self) {
        let timeout = self.ctx.setup_timeout;
        let Some(p) = &self.publishing else { return };
        let (reason, why) = match &p.last_mux_error {
            _ if p.keyframe_seen && p.legs_connected >= p.legs_total => (
                "transcode_first_idr",
                format!(
                    "{} of {} transcoded renditions produced their first IDR",
                    p.renditions_ready,
                    p.renditions.len()
                ),
            ),
            _ if p.keyframe_seen => (
                "push_connect",
                format!(
                    "{} of {} SRT push destinations connected",
                    p.legs_connected, p.legs_total
                ),
            ),
            Some(e) => ("unsupported_media", e.clone()),
            None => (
                "no_keyframe",
                "no video keyframe with its sequence header (or AAC audio) arrived".to_string(),
            ),
        };
        counter!(t::STREAM_SETUP_FAILURES_TOTAL, "reason" => reason).increment(1);
        warn!(stream = %p.guard.stream().path, reason, why, ?timeout, "stream setup failed");
        self.session.stop_publish(
            "NetStream.Publish.Failed",
            &format!("stream not playable within {timeout:?} of connecting (server.setup_timeout): {why}"),
        );
    }

    /// A push leg failed while the stream ran: tear the group down.
    fn fail_leg(&mut self, leg: Leg, why: &str) {
        let Some(p) = &self.publishing else { return };
        let stream = &p.guard.stream().path;
        let status = match leg {
            Leg::Push => {
                warn!(%stream, why, "push leg failed; stopping the stream");
                format!("SRT push failed: {why}")
            }
            Leg::Transcode => {
                warn!(%stream, why, "transcode leg failed; stopping the stream");
                format!("transcoding failed: {why}")
            }
        };
        self.session
            .stop_publish("NetStream.Publish.Failed", &status);
    }

    /// Setup is complete once the source has a keyframe and every push leg
    /// is connected.
    fn check_ready(&mut self) {
        let Some(p) = &mut self.publishing else {
            return;
        };
        if p.ready
            || !p.keyframe_seen
            || p.legs_connected < p.legs_total
            || p.renditions_ready < p.renditions.len()
        {
            return;
        }
        p.ready = true;
        let took = Instant::now().saturating_duration_since(self.accepted);
        histogram!(t::STREAM_SETUP_SECONDS).record(took.as_secs_f64());
        info!(
            stream = %p.guard.stream().path,
            setup_ms = took.as_millis() as u64,
            push_legs = p.legs_total,
            renditions = p.renditions.len(),
            "stream ready"
        );
    }

    fn drain_events(&mut self) -> Result<(), ProtoError> {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::HandshakeDone { kind } => debug!(?kind, "rtmp handshake done"),
                Event::Connect {
                    app,
                    tc_url,
                    flash_ver,
                } => {
                    info!(
                        app = crate::auth::redact(&app),
                        tc_url = tc_url.as_deref().map(crate::auth::redact),
                        flash_ver,
                        "rtmp connect"
                    );
                    if self.ctx.registry.is_draining() {
                        counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "rejected_draining")
                            .increment(1);
                        self.session
                            .reject_connect("server is draining; connect to another instance");
                    } else {
                        self.app = app;
                        self.session.accept_connect()?;
                    }
                }
                Event::Publish { name, .. } => self.on_publish(&name)?,
                Event::Metadata(v) => self.on_metadata(&v),
                Event::Media {
                    video,
                    timestamp,
                    payload,
                } => self.on_media(video, timestamp, payload),
                Event::Unpublish { .. } => {
                    if let Some(p) = self.publishing.take() {
                        counter!(t::STREAM_TEARDOWNS_TOTAL, "cause" => "unpublished").increment(1);
                        info!(stream = %p.guard.stream().path, "publisher unpublished");
                    }
                }
            }
        }
        Ok(())
    }

    fn on_publish(&mut self, name: &str) -> Result<(), ProtoError> {
        let path = match StreamPath::from_rtmp(&self.app, name) {
            Ok(p) => p,
            Err(why) => {
                counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "rejected_bad_name").increment(1);
                warn!(
                    app = crate::auth::redact(&self.app),
                    name = crate::auth::redact(name),
                    why,
                    "publish refused"
                );
                self.session.reject_publish(
                    "NetStream.Publish.BadName",
                    &format!("bad stream name: {why}"),
                );
                return Ok(());
            }
        };
        let app = self.ctx.apps.app(&path.app);
        if let Err(refusal) =
            crate::auth::check_publish(&app.publish_keys, &path.key, &self.app, name)
        {
            self.refuse_publish(&path, refusal.reason(), &refusal.to_string());
            return Ok(());
        }
        if let Some(url) = app.publish_webhook {
            let body = serde_json::json!({
                "action": "publish",
                "protocol": "rtmp",
                "path": path.to_string(),
                "app": path.app,
                "stream": path.key,
                "key": crate::auth::query_param(name, "key")
                    .or_else(|| crate::auth::query_param(&self.app, "key")),
                "query": crate::auth::query_json(name),
                "client": self.peer.to_string(),
            });
            let timeout = app.webhook_timeout;
            let answer =
                tokio::spawn(async move { crate::auth::ask_webhook(&url, &body, timeout).await });
            self.pending_auth = Some(PendingAuth {
                path,
                name: name.to_string(),
                answer,
            });
            return Ok(());
        }
        self.start_publish(path, name)
    }

    /// Refuse a publish for an authorization reason.
    fn refuse_publish(&mut self, path: &StreamPath, reason: &'static str, why: &str) {
        counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "rejected_unauthorized").increment(1);
        counter!(t::AUTH_REJECTS_TOTAL, "action" => "publish", "reason" => reason).increment(1);
        warn!(stream = %path, reason, why, "publish refused");
        self.session.reject_publish(
            "NetStream.Publish.BadName",
            &format!("publish refused: {why}"),
        );
    }

    /// Claim the path and start the stream's legs (the publish is authorized).
    fn start_publish(&mut self, path: StreamPath, name: &str) -> Result<(), ProtoError> {
        let cfg = &self.ctx;
        let claim = self.ctx.registry.claim(
            path.clone(),
            name,
            &self.peer.to_string(),
            ClaimPolicy {
                takeover: cfg.apps.app(&path.app).takeover,
                stale_after: cfg.rtmp.stale_publisher_timeout,
                max_jump: cfg.rtmp.max_timestamp_jump,
                ring: RingConfig::default(),
                renditions: cfg
                    .apps
                    .app(&path.app)
                    .renditions
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            },
            &self.ctx.shutdown,
        );
        match claim {
            Ok(guard) => {
                counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "accepted").increment(1);
                // Start the push legs now: they connect while the first
                // keyframe is on its way (one setup group, one deadline).
                let targets = cfg.apps.app(&path.app).push;
                let legs_total = targets.len();
                let (legs_tx, legs_rx) = mpsc::channel(legs_total.max(1));
                let mut legs = JoinSet::new();
                for target in targets {
                    if let Some(rendition) = guard.stream().rendition(&target.rendition) {
                        legs.spawn(
                            push::run(
                                target,
                                cfg.srt.latency,
                                cfg.srt.peer_idle_timeout,
                                rendition.ring.clone(),
                                legs_tx.clone(),
                                guard.stream().cancel.clone(),
                            )
                            .instrument(tracing::Span::current()),
                        );
                    }
                }
                tracing::Span::current().record("stream", tracing::field::display(&path));
                info!(stream = %path, "publish accepted");
                let label = path.to_string();
                self.publishing = Some(Publishing {
                    guard,
                    muxer: Muxer::new(),
                    chunks: Vec::with_capacity(64),
                    mux_errors: counter!(t::TS_MUX_ERRORS_TOTAL, "stream" => label.clone()),
                    bytes: counter!(t::INGEST_BYTES_TOTAL, "stream" => label.clone()),
                    frames_video: counter!(t::INGEST_FRAMES_TOTAL, "stream" => label.clone(), "track" => "video"),
                    frames_audio: counter!(t::INGEST_FRAMES_TOTAL, "stream" => label.clone(), "track" => "audio"),
                    tag_errors: counter!(t::INGEST_TAG_ERRORS_TOTAL, "stream" => label.clone()),
                    jumps: counter!(t::TIMESTAMP_JUMPS_TOTAL, "stream" => label),
                    keyframe_seen: false,
                    ready: false,
                    legs,
                    legs_total,
                    legs_connected: 0,
                    legs_rx,
                    last_mux_error: None,
                    renditions: cfg.apps.app(&path.app).renditions,
                    renditions_ready: 0,
                    transcode: None,
                    video_config: None,
                    audio_config: None,
                    failure: None,
                    published: Instant::now(),
                    next_rate_check: Instant::now() + RATE_WARMUP,
                    over_bitrate: None,
                });
                self.session.accept_publish()?;
            }
            Err(e) => {
                let (result, code) = match e {
                    ClaimError::Busy(_) => ("rejected_busy", "NetStream.Publish.BadName"),
                    ClaimError::Draining => ("rejected_draining", "NetStream.Publish.Failed"),
                    ClaimError::MaxStreams { .. } | ClaimError::MaxPublishesPerIp { .. } => {
                        ("rejected_limit", "NetStream.Publish.Failed")
                    }
                };
                counter!(t::RTMP_PUBLISHES_TOTAL, "result" => result).increment(1);
                warn!(stream = %path, reason = result, "publish refused: {e}");
                self.session.reject_publish(code, &e.to_string());
            }
        }
        Ok(())
    }

    fn on_metadata(&mut self, v: &Amf0Value) {
        let Some(p) = &self.publishing else { return };
        let num = |k: &str| v.get(k).and_then(Amf0Value::as_f64);
        let m = Metadata {
            encoder: v
                .get("encoder")
                .and_then(Amf0Value::as_str)
                .map(String::from),
            width: num("width"),
            height: num("height"),
            framerate: num("framerate").or_else(|| num("videoframerate")),
        };
        debug!(?m, "metadata");
        p.guard.stream().set_metadata(m);
    }

    fn on_media(&mut self, video: bool, timestamp: u32, payload: Bytes) {
        let Some(p) = &mut self.publishing else {
            return;
        };
        let len = payload.len() as u64;
        p.bytes.increment(len);
        let now = Instant::now();
        let stream = p.guard.stream().clone();
        stream.touch(now);
        // The cap is checked a few times a second, not per message.
        let check_rate = now >= p.next_rate_check;
        let (result, bps) = {
            let mut ingest = stream.ingest();
            let result = ingest.push(now, video, timestamp, payload);
            (result, check_rate.then(|| ingest.bitrate_bps(now)))
        };
        if let Some(bps) = bps {
            p.next_rate_check = now + RATE_CHECK_INTERVAL;
            // 10 % above the cap: encoders overshoot briefly at keyframes.
            let cap = u64::from(self.ctx.rtmp.max_ingest_kbps) * 1000;
            if bps > cap + cap / 10 {
                p.over_bitrate = Some(bps);
            }
        }
        match result {
            Ok((event, jump)) => {
                if let Some(j) = jump {
                    p.jumps.increment(1);
                    warn!(track = ?j.track, jump_ms = j.jump_ms,
                        limit_ms = self.ctx.rtmp.max_timestamp_jump.as_millis() as u64,
                        "timestamp jumped; timeline re-based");
                }
                let muxed = match &event {
                    Some(MediaEvent::Frame(f)) => {
                        match f.track {
                            crate::media::Track::Video => p.frames_video.increment(1),
                            crate::media::Track::Audio => p.frames_audio.increment(1),
                        }
                        p.muxer.push(f, &mut p.chunks)
                    }
                    Some(MediaEvent::Config(c)) => p.muxer.set_config(c),
                    _ => Ok(()),
                };
                if let Err(e) = muxed {
                    p.mux_errors.increment(1);
                    debug!(error = %e, "frame not muxed");
                    p.last_mux_error = Some(e.to_string());
                }
                if let Some(ev) = &event {
                    if !p.renditions.is_empty() {
                        feed_transcode(p, ev, &self.ctx);
                    }
                }
                if !p.chunks.is_empty() {
                    let first_keyframe = !p.keyframe_seen && p.chunks.iter().any(|c| c.keyframe);
                    if let Some(source) = stream.renditions.first() {
                        for mut chunk in p.chunks.drain(..) {
                            chunk.origin = Some(now);
                            source.ring.push(chunk);
                        }
                    }
                    p.chunks.clear();
                    if first_keyframe {
                        p.keyframe_seen = true;
                        self.check_ready();
                    }
                }
            }
            Err(e) => {
                p.tag_errors.increment(1);
                debug!(video, error = %e, "media tag skipped");
            }
        }
    }
}

/// The webhook's answer for a pending publish; pending forever without one.
async fn auth_answer(p: &mut Option<PendingAuth>) -> Result<(), String> {
    match p {
        Some(p) => match (&mut p.answer).await {
            Ok(r) => r,
            Err(e) => Err(format!("webhook task failed: {e}")),
        },
        None => std::future::pending().await,
    }
}

/// Give one stream event to FFmpeg, starting FFmpeg at the first video
/// keyframe (when the codec configurations are known).
fn feed_transcode(p: &mut Publishing, ev: &MediaEvent, ctx: &Context) {
    use crate::media::{Codec, CodecConfig, Track};
    match ev {
        MediaEvent::Config(CodecConfig::Video { .. }) => p.video_config = Some(ev.clone()),
        MediaEvent::Config(CodecConfig::Audio { .. }) => p.audio_config = Some(ev.clone()),
        _ => {}
    }
    if let Some(h) = &mut p.transcode {
        h.feed(ev);
        return;
    }
    let MediaEvent::Frame(f) = ev else { return };
    if f.track != Track::Video || !f.keyframe || p.failure.is_some() {
        return;
    }
    let stream = p.guard.stream().clone();
    let (source_fps, source_size) = {
        let ing = stream.ingest();
        let size = ing.stats.video.as_ref().map(|v| (v.width, v.height));
        (ing.fps(), size)
    };
    let source_fps = source_fps.or_else(|| stream.metadata().and_then(|m| m.framerate));
    let has_audio = matches!(
        &p.audio_config,
        Some(MediaEvent::Config(CodecConfig::Audio {
            codec: Codec::Aac,
            ..
        }))
    );
    let configs: Vec<MediaEvent> = p
        .video_config
        .iter()
        .chain(p.audio_config.iter())
        .cloned()
        .collect();
    let params = transcode::Params {
        config: ctx.transcode.clone(),
        encoders: ctx.encoders.get(),
        renditions: p.renditions.clone(),
        source_fps,
        source_size,
        has_audio,
        published: p.published,
    };
    match transcode::start(params, stream, &configs, &ctx.transcodes) {
        Ok(mut h) => {
            h.feed(ev);
            p.transcode = Some(h);
        }
        Err(e) => p.failure = Some(("transcode_unsupported_source", e.to_string())),
    }
}

/// Which kind of leg failed.
#[derive(Debug, Clone, Copy)]
enum Leg {
    Push,
    Transcode,
}

enum LegEvent {
    Connected,
    Ended(Result<Result<(), PushError>, tokio::task::JoinError>),
    Transcode(transcode::Event),
}

/// The next leg event: a push leg connected (while in setup) or ended, or
/// news from FFmpeg. Pending forever when there is nothing to wait for.
async fn leg_event(p: &mut Option<Publishing>, want_connects: bool) -> LegEvent {
    let Some(p) = p else {
        return std::future::pending().await;
    };
    let legs_live = !p.legs.is_empty();
    let tr = &mut p.transcode;
    let transcode = async move {
        match tr {
            Some(h) => h.events.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(()) = p.legs_rx.recv(), if want_connects => LegEvent::Connected,
        Some(r) = p.legs.join_next(), if legs_live => LegEvent::Ended(r),
        Some(ev) = transcode => LegEvent::Transcode(ev),
        else => std::future::pending().await,
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
