//! The tokio driver for RTMP and RTMPS: accepts TCP connections (TLS first
//! on the RTMPS listener) and moves bytes between each socket and its
//! `proto::Session`, and a publish's media into its stream group. The
//! protocol lives in `proto`, publish decisions in `publish`, the stream's
//! lifecycle in `stream`; this loop reads, writes and waits.
//!
//! Every connection is under `server.setup_timeout` from its TCP accept
//! until it publishes (then the stream group's deadline, counted from the
//! same accept, takes over): one that never publishes is closed whatever
//! it sends. While a publish waits for its webhook the socket is not read,
//! so TCP pushes back on the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge, Counter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument, Span};

use super::admission::{self, PerIp};
use super::amf0::Amf0Value;
use super::config::RtmpConfig;
use super::ingest::FlvIngest;
use super::proto::{Event, ProtoError, Session};
use super::publish::{self, Decision};
use crate::config::Live;
use crate::stream::config::{AppConfig, Apps};
use crate::stream::driver::{GroupHandle, Publish, Stopped, Streams};
use crate::stream::group::Input;
use crate::stream::{Metadata, StreamPath};
use crate::telemetry::trace::{self as tr, PublishTrace, Step};
use crate::telemetry::{self as t, LogLimiter};

/// What every connection task shares.
pub struct Context {
    /// The settings in force, replaced by a config reload: a connection
    /// takes them at its accept and keeps them; a publish reads the
    /// applications in force when it asks.
    pub settings: Live<Settings>,
    pub streams: Arc<Streams>,
    /// The server's root token: cancelled at the end of a drain.
    pub shutdown: CancellationToken,
    /// `[cluster]`: a publish of a path another node holds is refused
    /// before it starts (BadName naming that node).
    pub remote: Option<Arc<dyn crate::stream::remote::Remote>>,
}

/// The configuration the RTMP side reads.
pub struct Settings {
    pub rtmp: RtmpConfig,
    /// `server.setup_timeout`: a connection not publishing this long after
    /// its accept is closed.
    pub setup_timeout: Duration,
    pub apps: Arc<Apps>,
    /// The RTMPS listener's TLS configuration (`server.tls_cert`,
    /// `server.tls_key`); `None` without RTMPS.
    pub tls: Option<TlsAcceptor>,
}

/// The bound RTMP listener and, when `server.rtmps_addr` is set, the RTMPS
/// one (its TLS configuration is in [`Settings::tls`]).
pub struct Listeners {
    pub rtmp: TcpListener,
    pub rtmps: Option<TcpListener>,
}

/// `rtmp.max_connections` as a semaphore whose size follows config
/// reloads: raised at once, lowered as open connections end (returned
/// permits are forgotten until the new size is reached), so a lower limit
/// never closes a connection.
struct ConnLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    /// Permits still to forget after a lowered limit.
    owed: usize,
}

impl ConnLimit {
    fn new(limit: usize) -> ConnLimit {
        ConnLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            owed: 0,
        }
    }

    fn resize(&mut self, limit: usize) {
        if limit > self.limit {
            let more = limit - self.limit;
            let repaid = more.min(self.owed);
            self.owed -= repaid;
            self.permits.add_permits(more - repaid);
        } else {
            self.owed += self.limit - limit;
        }
        self.limit = limit;
        self.owed -= self.permits.forget_permits(self.owed);
    }
}

/// Accept connections on both listeners until `ctx.shutdown` is cancelled,
/// then wait for the connection tasks to finish. `rtmp.max_connections`
/// and `rtmp.max_connections_per_ip` count RTMP and RTMPS together.
pub async fn serve(listeners: Listeners, ctx: Arc<Context>) {
    let mut limit = ConnLimit::new(ctx.settings.get().rtmp.max_connections);
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = JoinSet::new();
    loop {
        let (accepted, tls) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listeners.rtmp.accept() => (r, false),
            r = accept_tls(&listeners.rtmps) => (r, true),
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
        let settings = ctx.settings.get();
        limit.resize(settings.rtmp.max_connections);
        let Some(admission) = admission::admit(&settings.rtmp, &limit.permits, &per_ip, peer)
        else {
            drop(sock);
            continue;
        };
        let tls = match (tls, &settings.tls) {
            (false, _) => None,
            (true, Some(acceptor)) => Some(acceptor.clone()),
            // The RTMPS listener exists only with TLS files (checked with
            // the config, and at every reload).
            (true, None) => continue,
        };
        let ctx = ctx.clone();
        let span = info_span!("rtmp", %peer, tls = tls.is_some(), stream = tracing::field::Empty);
        tasks.spawn(
            async move {
                let _admission = admission;
                connection(sock, tls, peer, ctx, settings).await;
            }
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
}

/// The next RTMPS connection; pending forever without an RTMPS listener.
async fn accept_tls(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// One accepted connection: TLS first on the RTMPS listener (under
/// `rtmp.handshake_timeout`, abandoned at shutdown), then RTMP.
async fn connection(
    sock: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    ctx: Arc<Context>,
    cfg: Arc<Settings>,
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
        None => handle(sock, peer, accepted, ctx, cfg).await,
        Some(acceptor) => {
            let limit = cfg.rtmp.handshake_timeout;
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
                    handle(stream, peer, accepted, ctx, cfg).await;
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
    Shutdown,
    /// Not publishing within `server.setup_timeout` of the accept.
    SetupTimeout(Duration),
    /// The stream group ended the publish (its teardown cause).
    Stopped(&'static str),
    Io(std::io::Error),
    Proto(ProtoError),
}

impl Close {
    fn reason(&self) -> &'static str {
        match self {
            Close::PeerClosed => "peer_closed",
            Close::Rejected => "rejected",
            Close::Shutdown => "shutdown",
            Close::SetupTimeout(_) => "setup_timeout",
            Close::Stopped(cause) => cause,
            Close::Io(_) => "io_error",
            Close::Proto(e) => e.reason(),
        }
    }
}

/// A publish in progress on this connection: its media, mapped to
/// protocol-free events, goes to its stream group.
struct Publishing {
    group: GroupHandle,
    flv: FlvIngest,
    tag_errors: Counter,
    jumps: Counter,
    /// A publisher can jump its timestamps on every frame: one warning per
    /// interval, counting the rest.
    jump_log: LogLimiter,
}

/// Why a pending publish was refused: the `sluice_rtmp_publishes_total`
/// label, the auth reject label (if an authorization refused it), why.
type Refusal = (&'static str, Option<&'static str>, String);

/// A publish waiting for the webhook's answer and/or the cluster
/// directory's (the session stays paused and the socket unread).
struct PendingAuth {
    path: StreamPath,
    app: AppConfig,
    name: String,
    answer: tokio::task::JoinHandle<Result<(), Refusal>>,
    /// The trace step the question is in now (auth, then cluster_check).
    step: CurrentStep,
}

/// The setup step a pending question is in, for its connection to fail
/// if the question is abandoned.
type CurrentStep = Arc<std::sync::Mutex<Option<Span>>>;

impl Drop for PendingAuth {
    /// A connection that ends first abandons the webhook call; the step
    /// it was in failed, and ends now.
    fn drop(&mut self) {
        self.answer.abort();
        if let Some(span) = self.step.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tr::fail(
                &span,
                "abandoned: the connection ended or its setup deadline passed",
            );
            span.in_scope(|| {});
        }
    }
}

/// Run `fut` as the step `span` ([`tr::run_step`]), which `current`
/// names while it runs.
async fn in_step<T, E>(
    span: Span,
    current: &CurrentStep,
    fut: impl std::future::Future<Output = Result<T, E>>,
    why: impl FnOnce(&E) -> String,
) -> Result<T, E> {
    *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(span.clone());
    let answer = tr::run_step(&span, fut, why).await;
    current.lock().unwrap_or_else(|e| e.into_inner()).take();
    answer
}

struct Conn {
    ctx: Arc<Context>,
    /// The settings in force at the accept.
    cfg: Arc<Settings>,
    peer: SocketAddr,
    session: Session,
    /// The application as sent in `connect`.
    app: String,
    pending_auth: Option<PendingAuth>,
    publishing: Option<Publishing>,
    /// Setup deadlines count from here: the accept, or the end of the
    /// connection's last publish. Until it publishes, the connection must
    /// do so within `server.setup_timeout`; its stream group's setup
    /// deadline counts from the same instant.
    setup_from: Instant,
    /// The trace of the publish this connection is setting up (handed to
    /// the stream group when it starts), its handshake step until the
    /// `publish` command, and the root whose trace the connection's log
    /// lines carry (the last publish's; see [`in_trace`]).
    trace: Option<PublishTrace>,
    handshake: Option<Span>,
    /// A trace was started (at the first bytes: a TCP check that sends
    /// nothing makes none).
    traced: bool,
    log_trace: Arc<std::sync::Mutex<Option<Span>>>,
    /// The connection's log span (`rtmp`, with `peer`; `stream` once
    /// publishing).
    conn_span: Span,
}

/// Write `out` and flush it (TLS holds records until flushed).
async fn send<S: AsyncWrite + Unpin>(sock: &mut S, out: &[u8]) -> std::io::Result<()> {
    sock.write_all(out).await?;
    sock.flush().await
}

/// Run RTMP on an established byte stream (TCP or TLS over TCP).
async fn handle<S>(
    mut sock: S,
    peer: SocketAddr,
    accepted: Instant,
    ctx: Arc<Context>,
    cfg: Arc<Settings>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let seed = rand::random::<u64>();
    let log_trace = Arc::new(std::sync::Mutex::new(None));
    let mut conn = Conn {
        session: Session::new(cfg.rtmp.limits(), Instant::now(), seed),
        ctx,
        cfg,
        peer,
        app: String::new(),
        pending_auth: None,
        publishing: None,
        setup_from: accepted,
        trace: None,
        handshake: None,
        traced: false,
        log_trace: log_trace.clone(),
        conn_span: Span::current(),
    };
    let close = if tr::enabled() {
        tokio_util::either::Either::Left(in_trace(log_trace, conn.run(&mut sock)))
    } else {
        tokio_util::either::Either::Right(conn.run(&mut sock))
    }
    .await;
    // Best effort: the last words (a rejection, a status) may still be queued.
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
        Close::SetupTimeout(timeout) => {
            counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => reason).increment(1);
            warn!(
                reason,
                ?timeout,
                why = "not publishing within server.setup_timeout of connecting",
                "rtmp connection closed"
            );
        }
        Close::Io(e) => info!(reason, error = %e, "rtmp connection closed"),
        _ => info!(reason, "rtmp connection closed"),
    }
    // A question still pending fails its step first.
    drop(conn.pending_auth.take());
    if let Some(trace) = conn.trace.take() {
        // It never got to publish: a protocol error or the deadline is a
        // failure; a peer that just went away is not.
        let failed = matches!(close, Close::Proto(_) | Close::SetupTimeout(_));
        let why = format!("the connection closed before publishing ({reason})");
        if let Some(h) = conn.handshake.take() {
            if failed {
                tr::fail(&h, why.clone());
            }
        }
        trace.not_published(reason, &why, failed);
    }
    if let Some(p) = conn.publishing.take() {
        p.group.end(reason).await;
    }
}

/// Poll `fut` inside a publish trace's root: a connection's log lines
/// carry its current publish's trace. The connection leaves a new root
/// (or none, once a publish ended) in `next`, taken up after this poll.
async fn in_trace<F: std::future::Future>(
    next: Arc<std::sync::Mutex<Option<Span>>>,
    fut: F,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut current = Span::none();
    std::future::poll_fn(|cx| {
        let out = current.in_scope(|| fut.as_mut().poll(cx));
        if let Some(span) = next.lock().unwrap_or_else(|e| e.into_inner()).take() {
            current = span;
        }
        out
    })
    .await
}

/// The cluster directory's answer as the setup's `cluster_check` step
/// (`setup`: the setup span's context), timed from when it is asked.
async fn traced_check(
    check: impl std::future::Future<Output = Result<(), Refusal>>,
    setup: opentelemetry::Context,
    current: CurrentStep,
) -> Result<(), Refusal> {
    let span = tr::step(&setup, Step::ClusterCheck);
    in_step(span, &current, check, |(_, _, why)| why.clone()).await
}

/// Sleep until `at`; `None` never wakes.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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
        let setup_timeout = self.cfg.setup_timeout;
        loop {
            let deadline = tokio::time::Instant::from_std(self.session.poll_timeout());
            let publishing = self.publishing.is_some();
            // `server.setup_timeout` is at most an hour (checked at load);
            // a value past `Instant`'s range would mean no deadline.
            let setup_deadline = self.setup_from.checked_add(setup_timeout);
            // While the webhook decides, nothing is read: the session holds
            // only what came with the publish, TCP pushes back on the rest.
            let reading = self.pending_auth.is_none();
            tokio::select! {
                r = sock.read(&mut buf), if reading => match r {
                    Ok(0) => return Close::PeerClosed,
                    Ok(n) => {
                        if !self.traced {
                            // The first bytes start the trace and its
                            // handshake step.
                            self.traced = true;
                            self.new_trace();
                            self.handshake = self.trace.as_ref().map(|t| t.step(Step::Handshake));
                        }
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
                // Once publishing, the stream group's own setup deadline
                // (from the same accept) takes over.
                _ = sleep_until_some(setup_deadline), if !publishing => {
                    if let Some(pending) = self.pending_auth.take() {
                        let why = format!(
                            "not publishing within {setup_timeout:?} of connecting \
                             (server.setup_timeout): the publish webhook or the cluster directory did not answer"
                        );
                        warn!(stream = %pending.path, why, "publish refused");
                        counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "rejected_setup_timeout")
                            .increment(1);
                        self.session.reject_publish("NetStream.Publish.Failed", &why);
                        // Its step fails and ends first, then the trace.
                        drop(pending);
                        if let Some(trace) = self.trace.take() {
                            trace.not_published("rejected_setup_timeout", &why, true);
                        }
                    }
                    return Close::SetupTimeout(setup_timeout);
                }
                stopped = group_stopped(&mut self.publishing) => {
                    self.publishing = None;
                    self.session.stop_publish(publish::status_code(stopped.kind), &stopped.description);
                    if let Some(out) = self.session.take_transmit() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), send(sock, &out)).await;
                    }
                    return Close::Stopped(stopped.cause);
                }
                answer = auth_answer(&mut self.pending_auth) => {
                    if let Some(pending) = self.pending_auth.take() {
                        match answer {
                            Ok(()) => {
                                if let Err(e) = self.start_publish(pending.path.clone(), &pending.name, &pending.app) {
                                    return Close::Proto(e);
                                }
                            }
                            Err((result, reason, why)) => self.refuse(Some(&pending.path), &pending.name, result, reason, &why),
                        }
                    }
                }
                // A publishing connection ends through its group (which
                // tells the publisher why).
                _ = shutdown.cancelled(), if !publishing => return Close::Shutdown,
            }
            if let Err(e) = self.drain_events(Instant::now()).await {
                return Close::Proto(e);
            }
            if let Some(out) = self.session.take_transmit() {
                // A peer that stops reading must not pin this task forever.
                let idle = self.cfg.rtmp.idle_timeout;
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

    /// Act on the session's events; media goes to the stream's group
    /// (waiting while its queue is full: backpressure on the publisher).
    async fn drain_events(&mut self, now: Instant) -> Result<(), ProtoError> {
        while let Some(ev) = self.session.poll_event() {
            let input = match ev {
                Event::HandshakeDone { kind } => {
                    debug!(?kind, "rtmp handshake done");
                    None
                }
                Event::Connect {
                    app,
                    tc_url,
                    flash_ver,
                } => {
                    self.on_connect(app, tc_url, flash_ver)?;
                    None
                }
                Event::Publish { name, .. } => {
                    self.on_publish(&name)?;
                    None
                }
                Event::Metadata(v) => self.on_metadata(&v),
                Event::Media {
                    video,
                    timestamp,
                    payload,
                } => self.on_media(now, video, timestamp, payload),
                Event::Unpublish { .. } => {
                    if let Some(p) = self.publishing.take() {
                        info!(stream = %p.group.stream().path, "publisher unpublished");
                        p.group.end("unpublished").await;
                        // A connection that stays must publish again in time.
                        self.setup_from = Instant::now();
                        self.stop_log_trace();
                    }
                    None
                }
            };
            if let (Some(input), Some(p)) = (input, &self.publishing) {
                // `false`: the group ended; its status comes next turn.
                let _ = p.group.send(input).await;
            }
        }
        Ok(())
    }

    fn on_connect(
        &mut self,
        app: String,
        tc_url: Option<String>,
        flash_ver: Option<String>,
    ) -> Result<(), ProtoError> {
        info!(
            app = crate::auth::redact(&app),
            tc_url = tc_url.as_deref().map(crate::auth::redact),
            flash_ver,
            "rtmp connect"
        );
        if self.ctx.streams.registry().is_draining() {
            counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "rejected_draining").increment(1);
            self.session
                .reject_connect("server is draining; connect to another instance");
            return Ok(());
        }
        self.app = app;
        self.session.accept_connect()
    }

    fn on_publish(&mut self, name: &str) -> Result<(), ProtoError> {
        if let Some(h) = self.handshake.take() {
            tr::ok(&h);
        }
        if self.trace.is_none() {
            // A publish after an unpublish (or a refusal) on the same
            // connection: a trace of its own.
            self.new_trace();
        }
        let trace = self.trace.clone().unwrap_or_else(PublishTrace::none);
        let setup = trace.setup_context();
        let auth = trace.step(Step::Auth);
        // The applications in force now: a publish after a reload gets
        // its keys, even on a connection from before it.
        let apps = self.ctx.settings.get().apps.clone();
        match publish::decide(&self.app, name, self.peer, &apps) {
            Decision::Allow { path, app } => {
                trace.set_stream(&path);
                auth.record("method", "keys");
                tr::ok(&auth);
                drop(auth);
                let Some(check) = self.cluster_check(&path, &app) else {
                    return self.start_publish(path, name, &app);
                };
                let step = CurrentStep::default();
                let answer = tokio::spawn(traced_check(check, setup, step.clone()));
                self.pending_auth = Some(PendingAuth {
                    path,
                    app,
                    name: name.to_string(),
                    answer,
                    step,
                });
            }
            Decision::Refuse {
                path,
                result,
                reason,
                why,
            } => {
                if let Some(p) = &path {
                    trace.set_stream(p);
                }
                auth.record("method", "keys");
                tr::fail(&auth, why.clone());
                drop(auth);
                self.refuse(path.as_ref(), name, result, reason, &why)
            }
            Decision::AskWebhook {
                path,
                app,
                url,
                body,
                timeout,
            } => {
                trace.set_stream(&path);
                auth.record("method", "webhook");
                let check = self.cluster_check(&path, &app);
                let step = CurrentStep::default();
                let current = step.clone();
                let answer = tokio::spawn(async move {
                    // The webhook request carries the auth step's context
                    // (`traceparent`): the auth service joins the trace.
                    in_step(
                        auth,
                        &current,
                        crate::auth::ask_webhook(&url, &body, timeout),
                        String::clone,
                    )
                    .await
                    .map_err(|why| ("rejected_unauthorized", Some("webhook_denied"), why))?;
                    match check {
                        Some(c) => traced_check(c, setup, current).await,
                        None => Ok(()),
                    }
                });
                self.pending_auth = Some(PendingAuth {
                    path,
                    app,
                    name: name.to_string(),
                    answer,
                    step,
                });
            }
        }
        Ok(())
    }

    /// `[cluster]`: the question whether another node holds `path` (none
    /// when the application takes over, or without a cluster).
    fn cluster_check(
        &self,
        path: &StreamPath,
        app: &AppConfig,
    ) -> Option<impl std::future::Future<Output = Result<(), Refusal>> + Send + 'static> {
        let remote = self.ctx.remote.clone()?;
        if app.takeover {
            return None;
        }
        let path = path.clone();
        Some(async move {
            match remote.held_elsewhere(path.clone()).await {
                None => Ok(()),
                Some(node) => Err((
                    "rejected_busy",
                    None,
                    format!(
                        "{path} is being published on {node}; stop that publisher first, or set takeover = true for this application"
                    ),
                )),
            }
        })
    }

    /// Refuse a publish: count, log and tell the publisher.
    fn refuse(
        &mut self,
        path: Option<&StreamPath>,
        name: &str,
        result: &'static str,
        reason: Option<&'static str>,
        why: &str,
    ) {
        counter!(t::RTMP_PUBLISHES_TOTAL, "result" => result).increment(1);
        if let Some(reason) = reason {
            counter!(t::AUTH_REJECTS_TOTAL, "action" => "publish", "reason" => reason).increment(1);
        }
        match path {
            Some(stream) => {
                warn!(%stream, reason = reason.unwrap_or(result), why, "publish refused")
            }
            None => warn!(
                app = crate::auth::redact(&self.app),
                name = crate::auth::redact(name),
                why,
                "publish refused"
            ),
        }
        let text = publish::refusal_text(path, why);
        self.session
            .reject_publish("NetStream.Publish.BadName", &text);
        if let Some(trace) = self.trace.take() {
            trace.not_published(result, why, true);
            self.stop_log_trace();
        }
    }

    /// The connection's lines no longer belong to the publish that ended.
    fn stop_log_trace(&self) {
        *self.log_trace.lock().unwrap_or_else(|e| e.into_inner()) = Some(Span::none());
    }

    /// A fresh trace for the connection's next publish, which its log
    /// lines carry from now on.
    fn new_trace(&mut self) {
        let trace = PublishTrace::start("rtmp", &self.peer.to_string(), self.conn_span.clone());
        *self.log_trace.lock().unwrap_or_else(|e| e.into_inner()) = Some(trace.root.clone());
        self.trace = Some(trace);
    }

    /// Start the stream's group (the publish is authorized).
    fn start_publish(
        &mut self,
        path: StreamPath,
        name: &str,
        app: &AppConfig,
    ) -> Result<(), ProtoError> {
        let peer = self.peer.to_string();
        let trace = self.trace.take().unwrap_or_else(PublishTrace::none);
        let started = self.ctx.streams.start(Publish {
            path: path.clone(),
            name,
            peer: &peer,
            protocol: "rtmp",
            app,
            accepted: self.setup_from,
            trace: trace.clone(),
        });
        match started {
            Ok(group) => {
                counter!(t::RTMP_PUBLISHES_TOTAL, "result" => "accepted").increment(1);
                self.conn_span
                    .record("stream", tracing::field::display(&path));
                info!(stream = %path, "publish accepted");
                let stream = group.stream().clone();
                self.publishing = Some(Publishing {
                    group,
                    flv: FlvIngest::new(self.cfg.rtmp.max_timestamp_jump),
                    tag_errors: stream.series.counter(t::INGEST_TAG_ERRORS_TOTAL, &[]),
                    jumps: stream.series.counter(t::TIMESTAMP_JUMPS_TOTAL, &[]),
                    jump_log: LogLimiter::per_interval(),
                });
                // Media the publisher sent right after `publish` is read
                // now; a protocol error in it closes the connection.
                self.session.accept_publish()?;
            }
            Err(e) => {
                let (result, code) = publish::claim_refusal(&e);
                counter!(t::RTMP_PUBLISHES_TOTAL, "result" => result).increment(1);
                warn!(stream = %path, reason = result, "publish refused: {e}");
                self.session.reject_publish(code, &e.to_string());
                trace.not_published(result, &e.to_string(), true);
                self.stop_log_trace();
            }
        }
        Ok(())
    }

    fn on_metadata(&mut self, v: &Amf0Value) -> Option<Input> {
        let p = self.publishing.as_ref()?;
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
        let fps = m.framerate;
        p.group.stream().set_metadata(m);
        fps.map(Input::Framerate)
    }

    /// An FLV tag body, as the group's input.
    fn on_media(&mut self, now: Instant, video: bool, ts: u32, payload: Bytes) -> Option<Input> {
        let p = self.publishing.as_mut()?;
        let bytes = payload.len() as u64;
        let (event, jump) = match p.flv.push(video, ts, payload) {
            Ok(x) => x,
            Err(e) => {
                p.tag_errors.increment(1);
                debug!(video, error = %e, "media tag skipped");
                (None, None)
            }
        };
        if let Some(j) = jump {
            p.jumps.increment(1);
            if let Some(suppressed) = p.jump_log.check(now) {
                warn!(track = ?j.track, jump_ms = j.jump_ms,
                    limit_ms = self.cfg.rtmp.max_timestamp_jump.as_millis() as u64,
                    suppressed,
                    "timestamp jumped; timeline re-based");
            }
        }
        Some(Input::Media {
            at: now,
            bytes,
            event,
            timestamp_jump: jump.is_some(),
        })
    }
}

/// How the group ended the publish; pending forever while not publishing.
async fn group_stopped(p: &mut Option<Publishing>) -> Stopped {
    match p {
        Some(p) => p.group.stopped().await,
        None => std::future::pending().await,
    }
}

/// The webhook's (and the cluster directory's) answer for a pending
/// publish; pending forever without one.
async fn auth_answer(p: &mut Option<PendingAuth>) -> Result<(), Refusal> {
    match p {
        Some(p) => match (&mut p.answer).await {
            Ok(r) => r,
            Err(e) => Err((
                "rejected_unauthorized",
                Some("webhook_denied"),
                format!("webhook task failed: {e}"),
            )),
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_follows_reloads_without_closing_anyone() {
        let mut l = ConnLimit::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| l.permits.clone().try_acquire_owned().unwrap())
            .collect();
        // Lowered below what is open: nobody is closed, nobody new gets in
        // until enough have left.
        l.resize(1);
        assert!(l.permits.clone().try_acquire_owned().is_err());
        let mut held = held.into_iter();
        drop(held.next());
        l.resize(1);
        assert!(l.permits.clone().try_acquire_owned().is_err());
        drop(held.next());
        l.resize(1);
        assert!(l.permits.clone().try_acquire_owned().is_err());
        drop(held.next());
        l.resize(1);
        let one = l.permits.clone().try_acquire_owned().unwrap();
        assert!(l.permits.clone().try_acquire_owned().is_err());
        // Raised: room at once, a debt still owed is paid first.
        l.resize(0);
        l.resize(4);
        assert_eq!(l.permits.available_permits(), 3);
        drop(one);
        l.resize(4);
        assert_eq!((l.permits.available_permits(), l.owed), (4, 0));
    }
}
