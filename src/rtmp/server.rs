//! The tokio driver for RTMP: accepts TCP connections and moves bytes
//! between each socket and its [`Session`]. All protocol decisions live in
//! `proto`; this loop only reads, writes, waits for timeouts and applies the
//! registry's answers to publish requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics::{counter, gauge, histogram, Counter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::amf0::Amf0Value;
use super::proto::{Event, ProtoError, Session};
use crate::config::{Config, RenditionSpec};
use crate::srt::push::{self, PushError};
use crate::stream::{
    ClaimError, ClaimPolicy, MediaEvent, Metadata, PublishGuard, Registry, RingConfig, StreamPath,
};
use crate::telemetry as t;
use crate::transcode::{self, Encoders};
use crate::ts::{Muxer, TsChunk};

/// What every connection task shares.
pub struct Context {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    /// The server's root token: cancelled at the end of a drain.
    pub shutdown: CancellationToken,
    /// Encoders chosen at start for transcoded renditions.
    pub encoders: Arc<Encoders>,
    /// Every FFmpeg supervisor, so shutdown can wait for them to reap.
    pub transcodes: tokio_util::task::TaskTracker,
}

/// Accept connections until `ctx.shutdown` is cancelled, then wait for the
/// connection tasks to finish.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let permits = Arc::new(Semaphore::new(ctx.config.rtmp.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "rtmp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counter!(t::RTMP_CONNECTIONS_REJECTED_TOTAL, "reason" => "max_connections")
                .increment(1);
            warn!(%peer, limit = ctx.config.rtmp.max_connections, "rtmp connection refused: rtmp.max_connections reached");
            drop(sock);
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(
            async move {
                let _permit = permit;
                handle(sock, peer, ctx).await;
            }
            .instrument(info_span!("rtmp", %peer, stream = tracing::field::Empty)),
        );
    }
    while tasks.join_next().await.is_some() {}
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

async fn handle(mut sock: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    counter!(t::RTMP_CONNECTIONS_TOTAL).increment(1);
    let open = gauge!(t::RTMP_CONNECTIONS);
    open.increment(1.0);
    let _ = sock.set_nodelay(true);
    let seed = rand::random::<u64>();
    let mut conn = Conn {
        session: Session::new(ctx.config.rtmp_limits(), Instant::now(), seed),
        ctx,
        peer,
        app: String::new(),
        publishing: None,
        accepted: Instant::now(),
        pending_auth: None,
    };
    let close = conn.run(&mut sock).await;
    // Best effort: the last words (a rejection) may still be queued.
    if let Some(out) = conn.session.take_transmit() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sock.write_all(&out)).await;
    }
    let _ = sock.shutdown().await;
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
    open.decrement(1.0);
}

impl Conn {
    async fn run(&mut self, sock: &mut TcpStream) -> Close {
        let mut buf = vec![0u8; 64 * 1024];
        let shutdown = self.ctx.shutdown.clone();
        let setup_deadline =
            tokio::time::Instant::from_std(self.accepted + self.ctx.config.server.setup_timeout);
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
            if let Some(close) = self.take_failure() {
                if let Some(out) = self.session.take_transmit() {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        sock.write_all(&out),
                    )
                    .await;
                }
                return close;
            }
            if let Some(out) = self.session.take_transmit() {
                // A peer that stops reading must not pin this task forever.
                let idle = self.ctx.config.rtmp.idle_timeout;
                match tokio::time::timeout(idle, sock.write_all(&out)).await {
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

    /// The stream never became playable: tell the publisher why.
    fn fail_setup(&mut self) {
        let timeout = self.ctx.config.server.setup_timeout;
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
        let app = self.ctx.config.app(&path.app);
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
        let cfg = &self.ctx.config;
        let claim = self.ctx.registry.claim(
            path.clone(),
            name,
            &self.peer.to_string(),
            ClaimPolicy {
                takeover: cfg.app(&path.app).takeover,
                stale_after: cfg.rtmp.stale_publisher_timeout,
                max_jump: cfg.rtmp.max_timestamp_jump,
                ring: RingConfig::default(),
                renditions: cfg
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
                let targets = cfg.app(&path.app).push;
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
                    renditions: cfg.app(&path.app).renditions,
                    renditions_ready: 0,
                    transcode: None,
                    video_config: None,
                    audio_config: None,
                    failure: None,
                    published: Instant::now(),
                });
                self.session.accept_publish()?;
            }
            Err(e) => {
                let (result, code) = match e {
                    ClaimError::Busy(_) => ("rejected_busy", "NetStream.Publish.BadName"),
                    ClaimError::Draining => ("rejected_draining", "NetStream.Publish.Failed"),
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
        let result = stream.ingest().push(now, video, timestamp, payload);
        match result {
            Ok((event, jump)) => {
                if let Some(j) = jump {
                    p.jumps.increment(1);
                    warn!(track = ?j.track, jump_ms = j.jump_ms,
                        limit_ms = self.ctx.config.rtmp.max_timestamp_jump.as_millis() as u64,
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
        config: ctx.config.transcode.clone(),
        encoders: ctx.encoders.clone(),
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
