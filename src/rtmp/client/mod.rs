//! RTMP(S) restream legs: sluice as an RTMP publishing client, feeding a
//! stream's media events to a destination such as YouTube, Twitch or
//! another sluice. The protocol is the sans-IO [`core`]; this driver
//! resolves the host, connects (TLS verified against the system roots for
//! `rtmps://`), moves bytes with bounded waits and ends cleanly with the
//! stream. Targets show as `RtmpTarget`'s `Display`: never with their key.

pub mod core;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::core::{ClientError, ClientEvent, ClientParams, ClientSession};
use super::config::RtmpTarget;
use crate::stream::leg::{LegContext, LegFailure, MediaInput};
use crate::telemetry as t;

/// How long a leg's wait for the server may last when nothing tighter
/// applies, and what a restream does on a slow or silent destination.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// TCP connect (and TLS) at most this long.
    pub connect_timeout: Duration,
    /// From the start to `NetStream.Publish.Start`, for a leg started on a
    /// live stream (during setup, the stream's deadline cuts it first).
    pub publish_timeout: Duration,
    /// A write that makes no progress this long fails the leg
    /// (`push_stalled`): a destination that stops reading is not a hang.
    pub write_timeout: Duration,
    /// The clean end (`FCUnpublish`, `deleteStream`, close) at most this long.
    pub close_grace: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(2),
        }
    }
}

/// Media events handled per turn before the bytes are written.
const FEED_BATCH: usize = 64;
const READ_BUF: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("{0}: cannot resolve push host {1:?}: {2}")]
    Resolve(String, String, String),
    #[error("{0}: cannot connect to {1}: {2}")]
    Connect(String, std::net::SocketAddr, String),
    #[error("{0}: TLS: {1}")]
    Tls(String, String),
    #[error("{0}: {1}")]
    Session(String, ClientError),
    #[error("{0}: the server closed the connection{1}")]
    Closed(String, &'static str),
    #[error("{0}: socket error: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: the destination does not read: no write progress for {1:?}")]
    Stalled(String, Duration),
    #[error("{0}: the leg was started without a media feed")]
    NoMedia(String),
}

impl PushError {
    fn reason(&self) -> &'static str {
        match self {
            PushError::Resolve(..) => "push_resolve",
            PushError::Connect(..) => "push_connect",
            PushError::Tls(..) => "push_tls",
            PushError::Session(_, e) => e.reason(),
            PushError::Closed(..) => "push_closed",
            PushError::Io(..) => "push_io",
            PushError::Stalled(..) => "push_stalled",
            PushError::NoMedia(..) => "push_no_media",
        }
    }
}

/// The RTMP(S) restream leg of a stream: connects and publishes (during
/// setup), then sends the stream's media until the stream ends (`Ok`) or
/// the destination fails.
pub async fn run_leg(
    target: RtmpTarget,
    settings: PushSettings,
    ctx: LegContext,
) -> Result<(), LegFailure> {
    run(target, settings, ctx).await.map_err(|e| LegFailure {
        reason: e.reason(),
        detail: e.to_string(),
    })
}

async fn run(
    target: RtmpTarget,
    settings: PushSettings,
    mut ctx: LegContext,
) -> Result<(), PushError> {
    let started = Instant::now();
    let name = target.to_string();
    let Some(media) = ctx.media.take() else {
        return Err(PushError::NoMedia(name));
    };
    let deadline = ctx.events.setup_deadline();
    let remote = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(()),
        r = crate::srt::push::resolve_host(&target.host, target.port, deadline) => {
            r.map_err(|why| PushError::Resolve(name.clone(), target.host.clone(), why))?
        }
    };
    let connect_by = started + settings.connect_timeout;
    let connect = tokio::time::timeout_at(connect_by.into(), TcpStream::connect(remote));
    let tcp = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(()),
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PushError::Connect(name, remote, e.to_string())),
            Err(_) => return Err(PushError::Connect(
                name,
                remote,
                format!("no answer within {:?}", settings.connect_timeout),
            )),
        },
    };
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return session(tcp, &target, &settings, started, &ctx, media).await;
    }
    let config = tokio::task::spawn_blocking(tls_config)
        .await
        .unwrap_or_else(|e| Err(format!("loading the system CA certificates failed: {e}")))
        .map_err(|e| PushError::Tls(name.clone(), e))?;
    let server_name = rustls_pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
        PushError::Tls(
            name.clone(),
            format!("{:?} is not a TLS server name: {e}", target.host),
        )
    })?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp);
    let tls = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(()),
        r = tokio::time::timeout(settings.connect_timeout, handshake) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PushError::Tls(name, e.to_string())),
            Err(_) => return Err(PushError::Tls(
                name,
                format!("no TLS handshake within {:?}", settings.connect_timeout),
            )),
        },
    };
    session(tls, &target, &settings, started, &ctx, media).await
}

/// The TLS client for `rtmps://` destinations: the system's trust anchors
/// (rustls-native-certs, which honours `SSL_CERT_FILE` / `SSL_CERT_DIR`),
/// loaded once. Blocking: call it off the runtime's workers.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "reading the system CA certificates for rtmps:// restreams");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err("no CA certificates to verify the server with: install \
                            ca-certificates or point SSL_CERT_FILE at a PEM bundle"
                    .into());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Handshake, publish, then stream until the stream ends or the server
/// fails; the clock is read once per turn.
async fn session<S>(
    mut io: S,
    target: &RtmpTarget,
    settings: &PushSettings,
    started: Instant,
    ctx: &LegContext,
    mut media: MediaInput,
) -> Result<(), PushError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = target.to_string();
    let params = ClientParams {
        app: target.app.clone(),
        tc_url: target.tc_url(),
        key: target.key.clone(),
        setup_timeout: settings.publish_timeout,
    };
    let mut core = ClientSession::new(params, Instant::now(), rand::random());
    core.set_framerate(media.source.fps);
    let bytes_out = counter!(t::RTMP_PUSH_BYTES_TOTAL);
    let fail = |e: ClientError| PushError::Session(name.clone(), e);
    let mut buf = vec![0u8; READ_BUF];
    let mut batch = Vec::with_capacity(FEED_BATCH);
    // Connect and publish.
    loop {
        if let Some(out) = core.take_transmit() {
            if !write(&mut io, &out, settings, &ctx.cancel, &name).await? {
                return Ok(());
            }
            bytes_out.increment(out.len() as u64);
        }
        if let Some(ClientEvent::Publishing) = core.poll_event() {
            break;
        }
        let wake = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + settings.publish_timeout);
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(wake.into()) => core.handle_timeout(Instant::now()).map_err(fail)?,
            r = io.read(&mut buf) => match r {
                Ok(0) => return Err(PushError::Closed(name, " before the publish started")),
                Ok(n) => core.handle_input(Instant::now(), &buf[..n]).map_err(fail)?,
                Err(e) => return Err(PushError::Io(name, e)),
            },
        }
    }
    info!(
        destination = %name,
        setup_ms = started.elapsed().as_millis() as u64,
        "restream connected"
    );
    ctx.events.connected();
    // Stream.
    loop {
        if let Some(out) = core.take_transmit() {
            if !write(&mut io, &out, settings, &ctx.cancel, &name).await? {
                break;
            }
            bytes_out.increment(out.len() as u64);
        }
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            r = io.read(&mut buf) => match r {
                Ok(0) => return Err(PushError::Closed(name, "")),
                Ok(n) => core.handle_input(Instant::now(), &buf[..n]).map_err(fail)?,
                Err(e) => return Err(PushError::Io(name, e)),
            },
            n = media.events.recv_many(&mut batch, FEED_BATCH) => {
                if n == 0 {
                    // The group dropped the feed: the stream is over.
                    break;
                }
                for ev in batch.drain(..) {
                    core.send_media(&ev).map_err(fail)?;
                }
            }
        }
    }
    // The clean end, bounded: FCUnpublish and deleteStream, then close.
    core.close();
    let end = async {
        if let Some(out) = core.take_transmit() {
            io.write_all(&out).await?;
        }
        io.shutdown().await
    };
    let _ = tokio::time::timeout(settings.close_grace, end).await;
    info!(destination = %name, "restream closed");
    Ok(())
}

/// Write `out` whole, failing after `write_timeout` without progress
/// (TCP's window stays closed while the server does not read). `Ok(false)`:
/// the stream ended meanwhile.
async fn write<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &Bytes,
    settings: &PushSettings,
    cancel: &CancellationToken,
    name: &str,
) -> Result<bool, PushError> {
    let mut rest = &out[..];
    while !rest.is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            r = tokio::time::timeout(settings.write_timeout, io.write(rest)) => match r {
                Ok(Ok(0)) => return Err(PushError::Closed(name.to_string(), "")),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => return Err(PushError::Io(name.to_string(), e)),
                Err(_) => return Err(PushError::Stalled(name.to_string(), settings.write_timeout)),
            },
        }
    }
    if let Ok(Err(e)) = tokio::time::timeout(settings.write_timeout, io.flush()).await {
        return Err(PushError::Io(name.to_string(), e));
    }
    Ok(true)
}
