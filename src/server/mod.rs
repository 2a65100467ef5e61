//! Process lifecycle: load the TLS files, bind every listener, serve, and
//! drain on SIGTERM or SIGINT (`/readyz` 503 at once, new publishers
//! refused, running streams get `server.drain_timeout`, then everything is
//! cancelled). The top-level [`Config`] lives here, above every section it
//! holds; each part of the server gets only the sections it reads.

pub mod config;

pub use config::{Config, ServerConfig};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::gpu::{self, Gpus};
use crate::http::{self, AppState};
use crate::rtmp::server::{self as rtmp_server, Context, Listeners};
use crate::srt::listener::{self as srt_listener, Listener as SrtListener};
use crate::stream::{Registry, StreamLimits};
use crate::telemetry;
use crate::transcode::{self, EncoderState};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {what} on {addr}: {source} ({hint})")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
        /// Where the address is configured.
        hint: &'static str,
    },
    #[error("cannot read {key} ({}): {source}", path.display())]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} ({}): {why}", path.display())]
    Tls {
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{0}")]
    Metrics(String),
    #[error("{0}")]
    Srt(#[from] srt_listener::ListenerError),
    #[error("{0}")]
    Transcode(String),
}

/// Read `server.tls_cert` (PEM chain, leaf first) and `server.tls_key`
/// (PEM PKCS#8, PKCS#1 or SEC1) into a TLS acceptor. Errors name the key
/// and the file.
pub fn load_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |k: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            key: k,
            path: path.to_path_buf(),
            source,
        })
    };
    let bad = |k: &'static str, path: &Path, why: String| ServerError::Tls {
        key: k,
        path: path.to_path_buf(),
        why,
    };
    let cert_pem = read("server.tls_cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server.tls_cert", cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "server.tls_cert",
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) found".into(),
        ));
    }
    let key_pem = read("server.tls_key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            "server.tls_key",
            key,
            format!(
                "no usable PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY): {e}"
            ),
        )
    })?;
    // The ring provider, explicitly: no process-wide default to install.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("server.tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            bad(
                "server.tls_key",
                key,
                format!("does not fit server.tls_cert ({}): {e}", cert.display()),
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Run until a shutdown signal has been handled; returns after the drain.
pub async fn run(config: Config) -> Result<(), ServerError> {
    // Bad TLS files stop the start before anything else is set up.
    let tls = match (
        config.server.rtmps_addr,
        &config.server.tls_cert,
        &config.server.tls_key,
    ) {
        (Some(_), Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        _ => None,
    };
    let https_webhook = config.apps.values().any(|a| {
        [&a.publish_webhook, &a.read_webhook]
            .into_iter()
            .flatten()
            .any(|u| u.starts_with("https://"))
    });
    crate::auth::init_webhook_tls(config.server.webhook_ca.as_deref(), https_webhook).map_err(
        |why| ServerError::Tls {
            key: "server.webhook_ca",
            path: config
                .server
                .webhook_ca
                .clone()
                .unwrap_or_else(|| PathBuf::from("not set")),
            why,
        },
    )?;
    let metrics = telemetry::install_metrics().map_err(ServerError::Metrics)?;
    let codecs = config.apps.rendition_codecs();
    let registry = Registry::with_limits(StreamLimits {
        max_streams: config.rtmp.max_streams,
        max_publishes_per_ip: config.rtmp.max_publishes_per_ip,
    });
    let root = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let gpus = Arc::new(Gpus::init());
    let encoders = Arc::new(EncoderState::new(
        transcode::choose_encoders(&config.transcode, &codecs, &gpus)
            .await
            .map_err(ServerError::Transcode)?,
    ));
    transcode::report(&encoders.get());
    tokio::spawn(gpu::poll_metrics(
        gpus.clone(),
        config.transcode.gpu_poll_interval,
        root.clone(),
    ));
    let transcodes = tokio_util::task::TaskTracker::new();

    let s = &config.server;
    let rtmp = TcpListener::bind(s.rtmp_addr)
        .await
        .map_err(|source| ServerError::Bind {
            what: "rtmp",
            addr: s.rtmp_addr,
            source,
            hint: "set --rtmp-addr or server.rtmp_addr",
        })?;
    let rtmps = match (s.rtmps_addr, tls) {
        (Some(addr), Some(acceptor)) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "rtmps",
                    addr,
                    source,
                    hint: "set server.rtmps_addr",
                })?;
            Some((l, acceptor))
        }
        _ => None,
    };
    let http_listener =
        TcpListener::bind(s.http_addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "http",
                addr: s.http_addr,
                source,
                hint: "set --http-addr or server.http_addr",
            })?;
    let srt_socket = bind_udp(s.srt_addr).map_err(|source| ServerError::Bind {
        what: "srt",
        addr: s.srt_addr,
        source,
        hint: "set --srt-addr or server.srt_addr",
    })?;
    let mut srt = SrtListener::new(registry.clone(), &config.srt)?;
    let mut read_auth = std::collections::HashMap::new();
    for (name, app) in config.apps.iter() {
        read_auth.insert(name.clone(), srt_listener::ReadAuth::from_app(app)?);
    }
    srt.set_read_auth(read_auth);
    let rtmp_addr = rtmp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let rtmps_addr = rtmps
        .as_ref()
        .and_then(|(l, _)| l.local_addr().ok())
        .map(|a| a.to_string());
    let srt_addr = srt_socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let http_addr = http_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // `rtmps_addr` is absent from the line when RTMPS is off.
    info!(
        rtmp_addr,
        rtmps_addr,
        http_addr,
        srt_addr,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );

    let ctx = Arc::new(Context {
        rtmp: config.rtmp.clone(),
        srt: config.srt.clone(),
        apps: config.apps.clone(),
        setup_timeout: config.server.setup_timeout,
        transcode: config.transcode.clone(),
        registry: registry.clone(),
        shutdown: root.clone(),
        encoders: encoders.clone(),
        transcodes: transcodes.clone(),
    });
    let rtmp_task = tokio::spawn(rtmp_server::serve(Listeners { rtmp, rtmps }, ctx));
    let srt_task = tokio::spawn(srt_listener::serve(srt_socket, srt, root.clone()));
    let app = http::router(AppState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        encoders,
        gpus,
        transcode: config.transcode.clone(),
        codecs,
    });
    let http_root = root.clone();
    let http_task = tokio::spawn(async move {
        let r = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move { http_root.cancelled().await })
            .await;
        if let Err(e) = r {
            error!(error = %e, "http server failed");
        }
    });
    // Keep gauges and histogram summaries fresh even when nobody scrapes.
    let upkeep_root = root.clone();
    let upkeep_registry = registry.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_root.cancelled() => break,
                _ = tick.tick() => {
                    metrics.run_upkeep();
                    metrics::gauge!(telemetry::STREAMS).set(upkeep_registry.len() as f64);
                    // Off the async workers: it takes the allocator's locks.
                    if telemetry::burst_closed() {
                        let _ = tokio::task::spawn_blocking(telemetry::trim).await;
                    }
                }
            }
        }
    });
    ready.store(true, Ordering::SeqCst);

    let signal = wait_for_signal().await;
    info!(signal, drain_timeout = ?config.server.drain_timeout, "draining");
    registry.start_draining();
    let deadline = tokio::time::Instant::now() + config.server.drain_timeout;
    while !registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !registry.is_empty() {
        warn!(
            streams = registry.len(),
            "drain timeout reached; stopping live streams"
        );
    }
    root.cancel();
    // Teardown is bounded: connection tasks only need to flush a status.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = rtmp_task.await;
        let _ = http_task.await;
        let _ = srt_task.await;
    })
    .await;
    // FFmpeg gets SIGTERM, then SIGKILL after its grace, and is reaped.
    transcodes.close();
    if tokio::time::timeout(
        transcode::KILL_GRACE + Duration::from_secs(1),
        transcodes.wait(),
    )
    .await
    .is_err()
    {
        warn!("ffmpeg supervisors still running at exit; the parent-death signal stops them");
    }
    info!("stopped");
    Ok(())
}

/// Kernel socket buffers for the SRT socket. One socket carries every
/// player's ACKs and NAKs; with the default (~208 KiB) the kernel drops
/// them under load (seen at 75 players), which triggers needless
/// retransmissions.
const SRT_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Bind the SRT UDP socket with large buffers (the kernel caps them at
/// net.core.rmem_max/wmem_max; raise those for hundreds of players).
fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller cap is not an error.
    let _ = sock.set_recv_buffer_size(SRT_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SRT_SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
