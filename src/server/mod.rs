//! Process lifecycle: load the TLS files, bind every listener, serve, and
//! drain on SIGTERM or SIGINT (`/readyz` 503 at once, new publishers
//! refused, running streams get `server.drain_timeout`, then everything is
//! cancelled). The top-level [`Config`] lives here, above every section it
//! holds; each part of the server gets only the sections it reads.

pub mod config;
mod legs;
mod reload;
mod tls;

pub use config::{Config, Loaded, ServerConfig, Source};
pub use tls::load_tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Live;
use crate::gpu::{self, Gpus};
use crate::http::{self, AppState, EncoderInputs};
use crate::rtmp::server::{self as rtmp_server, Context, Listeners, Settings as RtmpSettings};
use crate::srt::listener::{self as srt_listener, Listener as SrtListener, ListenerSettings};
use crate::stream::config::Apps;
use crate::stream::driver::{StreamSettings, Streams};
use crate::stream::{Registry, RingConfig, StreamLimits};
use crate::telemetry;
use crate::transcode::{self, EncoderState};
use reload::Reloader;

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
    /// A configuration error only found at start (a file to read).
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error("{0}")]
    Metrics(String),
    #[error("{0}")]
    Srt(#[from] srt_listener::ListenerError),
    #[error("{0}")]
    Transcode(String),
    #[error("{0}")]
    Cluster(String),
}

/// Every listener, bound.
struct Bound {
    rtmp: TcpListener,
    rtmps: Option<TcpListener>,
    http: TcpListener,
    /// One per `srt.workers`, all on one port.
    srt: Vec<UdpSocket>,
}

/// What the configuration needs besides its own keys, checked the same way
/// at the start and at every reload: the API token file, the TLS files and
/// the webhook CA bundle read, the applications' SRT read rules built.
struct Checked {
    api_token: Option<crate::http::ApiToken>,
    /// The RTMPS acceptor, when `server.rtmps_addr` is set.
    tls: Option<TlsAcceptor>,
}

fn check(config: &Config) -> Result<Checked, ServerError> {
    let api_token = config
        .server
        .load_api_token()
        .map_err(|e| ServerError::Config(e.under("server")))?;
    let tls = tls::prepare(config)?;
    srt_listener::ReadRules::from_apps(&config.apps)?;
    Ok(Checked { api_token, tls })
}

/// What the RTMP side reads from the configuration.
fn rtmp_settings(config: &Config, apps: Arc<Apps>, tls: Option<TlsAcceptor>) -> RtmpSettings {
    RtmpSettings {
        rtmp: config.rtmp.clone(),
        setup_timeout: config.server.setup_timeout,
        apps,
        tls,
    }
}

/// `[cluster]`: the directory, and whether Redis answers now (a node
/// starts without it: streams go on node-locally until it answers).
async fn start_cluster(
    config: &Config,
) -> Result<Option<Arc<crate::cluster::Cluster>>, ServerError> {
    let Some(cfg) = &config.cluster else {
        return Ok(None);
    };
    let cluster = crate::cluster::Cluster::new(cfg).map_err(ServerError::Cluster)?;
    match cluster.ping().await {
        Ok(()) => info!(
            node = cluster.node(),
            advertise_srt = cluster.advertise_srt(),
            redis = cluster.redis_shown(),
            lease_ttl_ms = cfg.lease_ttl.as_millis() as u64,
            "cluster directory reachable"
        ),
        Err(e) => warn!(
            node = cluster.node(),
            error = %e,
            "cluster directory unreachable at start; publishing node-locally until it answers"
        ),
    }
    Ok(Some(Arc::new(cluster)))
}

/// What edge pulls read from the configuration.
pub(super) fn edge_settings(config: &Config) -> crate::cluster::edge::EdgeSettings {
    crate::cluster::edge::EdgeSettings {
        latency: config.srt.latency,
        peer_idle_timeout: config.srt.peer_idle_timeout,
        ring: RingConfig::default(),
        apps: Arc::new(config.apps.clone()),
        default_passphrase: config.srt.passphrase.clone(),
    }
}

/// What every new stream group reads from the configuration.
fn stream_settings(config: &Config) -> StreamSettings {
    StreamSettings {
        setup_timeout: config.server.setup_timeout,
        max_ingest_kbps: config.rtmp.max_ingest_kbps,
        stale_after: config.rtmp.stale_publisher_timeout,
        ring: RingConfig::default(),
        cluster: config.cluster.is_some(),
    }
}

fn stream_limits(config: &Config) -> StreamLimits {
    StreamLimits {
        max_streams: config.rtmp.max_streams,
        max_publishes_per_ip: config.rtmp.max_publishes_per_ip,
    }
}

/// Run until a shutdown signal has been handled; returns after the drain.
/// `source` is where `loaded` came from: SIGHUP and `POST
/// /api/v1/config/reload` read it again.
pub async fn run(loaded: Loaded, source: Source) -> Result<(), ServerError> {
    let config = &loaded.config;
    // Bad TLS or token files stop the start before anything else is set up.
    let checked = check(config)?;
    let metrics = telemetry::install_metrics().map_err(ServerError::Metrics)?;
    let codecs = config.apps.rendition_codecs();
    let registry = Registry::with_limits(stream_limits(config));
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
    let cluster = start_cluster(config).await?;
    let bound = bind(config).await?;
    let mut srt = SrtListener::new(registry.clone(), &config.srt)?;
    srt.set_apps(Arc::new(config.apps.clone()))?;
    // Handlers first: a supervisor may signal as soon as it reads `listening`.
    let signals = Signals::install();
    log_applications(&config.apps);
    log_listening(&bound);

    let legs = Arc::new(legs::Legs::new(config, encoders.clone(), cluster.clone()));
    let edges = cluster.as_ref().map(|c| {
        crate::cluster::edge::Edges::new(
            c.clone(),
            registry.clone(),
            root.clone(),
            edge_settings(config),
        )
    });
    if let Some(e) = &edges {
        srt.set_remote(e.clone());
    }
    let streams = Arc::new(Streams::new(
        registry.clone(),
        legs.clone(),
        root.clone(),
        stream_settings(config),
    ));
    let apps = Arc::new(config.apps.clone());
    srt.enable_publish(
        streams.clone(),
        config.rtmp.max_timestamp_jump,
        config.rtmp.max_ingest_kbps,
    );
    let ctx = Arc::new(Context {
        settings: Live::new(rtmp_settings(config, apps.clone(), checked.tls)),
        streams: streams.clone(),
        shutdown: root.clone(),
        remote: edges
            .clone()
            .map(|e| e as Arc<dyn crate::stream::remote::Remote>),
    });
    let (srt_settings, srt_reloads) = watch::channel(Arc::new(ListenerSettings {
        srt: config.srt.clone(),
        apps,
        max_timestamp_jump: config.rtmp.max_timestamp_jump,
        max_ingest_kbps: config.rtmp.max_ingest_kbps,
    }));
    let api_token = Arc::new(Live::new(checked.api_token));
    let encoder_inputs = Arc::new(Live::new(EncoderInputs {
        transcode: config.transcode.clone(),
        codecs,
    }));
    let reloader = Arc::new(Reloader::new(
        source,
        loaded,
        reload::Targets {
            ctx: ctx.clone(),
            streams: streams.clone(),
            registry: registry.clone(),
            legs,
            srt: srt_settings,
            api_token: api_token.clone(),
            encoder_inputs: encoder_inputs.clone(),
            encoders: encoders.clone(),
            gpus: gpus.clone(),
            edges: edges.clone(),
        },
    ));
    let Bound {
        rtmp,
        rtmps,
        http,
        srt: srt_socket,
    } = bound;
    let rtmp_task = tokio::spawn(rtmp_server::serve(Listeners { rtmp, rtmps }, ctx));
    let mut srt_tasks = Vec::new();
    let mut sockets = srt_socket.into_iter();
    let first = sockets.next().expect("one SRT socket at least");
    for socket in sockets {
        srt_tasks.push(tokio::spawn(srt_listener::serve(
            socket,
            srt.shard(),
            Some(srt_reloads.clone()),
            root.clone(),
        )));
    }
    srt_tasks.push(tokio::spawn(srt_listener::serve(
        first,
        srt,
        Some(srt_reloads),
        root.clone(),
    )));
    // Recording's listing and retention read the applications in force
    // (a reload changes them) on every use.
    let record_roots: crate::record::RootsFn = {
        let reloader = reloader.clone();
        Arc::new(move || crate::record::roots(&reloader.current().apps))
    };
    let app = http::router(AppState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        encoders,
        gpus,
        encoder_inputs,
        api_token,
        reload: reloader.clone(),
        record_roots: record_roots.clone(),
        cluster: cluster.clone(),
        edges: edges.clone(),
    });
    spawn_upkeep(metrics, registry.clone(), root.clone());
    crate::record::retention::spawn(record_roots, root.clone());
    let Signals { term, int, hup } = signals;
    spawn_reloads(hup, reloader.clone(), root.clone());
    // Ready before the first HTTP request is answered: a probe that
    // connected once `listening` was logged must not see "starting" (the
    // HTTP task used to run before this store on another worker).
    ready.store(true, Ordering::SeqCst);
    let http_task = serve_http(http, app, root.clone());

    let signal = Signals::wait(term, int).await;
    let drain_timeout = reloader.current().server.drain_timeout;
    info!(signal, ?drain_timeout, "draining");
    registry.start_draining();
    if let Some(c) = &cluster {
        // Another node may take the publishes now; the streams here run
        // out their drain without their claims.
        let _ = tokio::time::timeout(Duration::from_secs(2), c.release_all()).await;
    }
    // Running streams finish on their own until the drain timeout; this
    // waits on the stream groups themselves, not on the registry.
    if !streams.wait_ended(drain_timeout).await {
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
        // Every worker's socket stays open until all are done.
        let mut sockets = Vec::new();
        for t in srt_tasks {
            sockets.extend(t.await.ok());
        }
    })
    .await;
    // Legs stop with their group: SRT pushes flush, FFmpeg gets SIGTERM,
    // then SIGKILL after its grace, and is reaped.
    if !streams
        .wait_ended(transcode::KILL_GRACE + Duration::from_secs(1))
        .await
    {
        warn!("ffmpeg supervisors still running at exit; the parent-death signal stops them");
    }
    info!("stopped");
    Ok(())
}

/// Bind every configured listener; errors say where the address is set.
/// RTMPS is bound when `server.rtmps_addr` is set (its TLS files were
/// checked with the config).
async fn bind(config: &Config) -> Result<Bound, ServerError> {
    let s = &config.server;
    let tcp = |what: &'static str, addr, hint: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what,
                addr,
                source,
                hint,
            })
    };
    let rtmp = tcp("rtmp", s.rtmp_addr, "set --rtmp-addr or server.rtmp_addr").await?;
    let rtmps = match s.rtmps_addr {
        Some(addr) => Some(tcp("rtmps", addr, "set server.rtmps_addr").await?),
        None => None,
    };
    let http = tcp("http", s.http_addr, "set --http-addr or server.http_addr").await?;
    let srt = bind_udp(s.srt_addr, config.srt.workers).map_err(|source| ServerError::Bind {
        what: "srt",
        addr: s.srt_addr,
        source,
        hint: "set --srt-addr or server.srt_addr",
    })?;
    Ok(Bound {
        rtmp,
        rtmps,
        http,
        srt,
    })
}

/// The application policy in force, once: which applications are
/// configured and what every other one gets (a config from before the
/// unknown-application policy now refuses what it does not list), and a
/// warning when the default section pushes without authenticating
/// publishers.
fn log_applications(apps: &Apps) {
    let configured = apps.named().collect::<Vec<_>>().join(",");
    info!(
        configured,
        unknown = apps.unknown().as_str(),
        "applications"
    );
    let guarded = apps.guarded_beside_open_default();
    if !guarded.is_empty() {
        warn!(
            guarded = guarded.join(","),
            risk = "these applications authenticate publishers or players, but [apps.\"*\"] \
                    authenticates nothing, so anyone can publish and play without \
                    credentials under any other application name (`Live`, `other`); give [apps.\"*\"] keys, a webhook or \
                    read authentication, or remove it to refuse unlisted applications",
            "[apps.\"*\"] is open beside authenticated applications"
        );
    }
    if let Some(default) = apps.open_default_push() {
        let push = default
            .push
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        warn!(
            push,
            risk = "anyone can publish under any application name not configured by name, \
                    and every such stream is pushed to these destinations; set publish_keys \
                    or publish_webhook in [apps.\"*\"] unless the network is private",
            "[apps.\"*\"] pushes without publish authentication"
        );
    }
}

/// The `listening` line with every bound address (`rtmps_addr` absent
/// when RTMPS is off).
fn log_listening(b: &Bound) {
    let addr = |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).ok();
    let rtmps_addr = b.rtmps.as_ref().and_then(|l| addr(l.local_addr()));
    info!(
        rtmp_addr = addr(b.rtmp.local_addr()).unwrap_or_default(),
        rtmps_addr,
        http_addr = addr(b.http.local_addr()).unwrap_or_default(),
        srt_addr = addr(b.srt[0].local_addr()).unwrap_or_default(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
}

fn serve_http(listener: TcpListener, app: axum::Router, root: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The peer address decides who may change things without a token.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { root.cancelled().await })
            .await;
        if let Err(e) = r {
            error!(error = %e, "http server failed");
        }
    })
}

/// Histogram samples recorded since the last drain are held one by one by
/// the exporter (8+ bytes each); players record one per chunk sent (the
/// relay latency), so at 500 players five seconds of them were ~14 MB.
const HISTOGRAM_DRAIN: Duration = Duration::from_secs(1);
/// Drains per upkeep tick (5 s: gauges, the trim checks).
const DRAINS_PER_TICK: u32 = 5;

/// Keep gauges and histogram summaries fresh even when nobody scrapes, and
/// give memory back after bursts of closed connections.
fn spawn_upkeep(metrics: PrometheusHandle, registry: Arc<Registry>, root: CancellationToken) {
    tokio::spawn(async move {
        let mut drain = tokio::time::interval(HISTOGRAM_DRAIN);
        let mut drains = 0u32;
        loop {
            tokio::select! {
                _ = root.cancelled() => break,
                _ = drain.tick() => {
                    metrics.run_upkeep();
                    let tick = drains % DRAINS_PER_TICK == 0;
                    drains = drains.wrapping_add(1);
                    if !tick {
                        continue;
                    }
                    metrics::gauge!(telemetry::STREAMS).set(registry.len() as f64);
                    // Off the async workers: it takes the allocator's locks.
                    if telemetry::burst_closed() {
                        let _ = tokio::task::spawn_blocking(telemetry::trim).await;
                    }
                }
            }
        }
    });
}

/// Kernel socket buffers for the SRT socket. One socket carries every
/// player's ACKs and NAKs; with the default (~208 KiB) the kernel drops
/// them under load (seen at 75 players), which triggers needless
/// retransmissions.
const SRT_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Bind the SRT UDP socket with large buffers (the kernel caps them at
/// net.core.rmem_max/wmem_max; raise those for hundreds of players).
fn bind_udp(addr: std::net::SocketAddr, workers: usize) -> std::io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let one = |addr: std::net::SocketAddr| -> std::io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: a smaller cap is not an error.
        let _ = sock.set_recv_buffer_size(SRT_SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SRT_SOCKET_BUFFER);
        if workers > 1 {
            // Linux lets only sockets of this user join the group.
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        sock.set_nonblocking(true)?;
        UdpSocket::from_std(sock.into())
    };
    let first = one(addr)?;
    // Port 0 picked a port: the other workers bind that one.
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(one(bound)?);
    }
    Ok(all)
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed
/// (SIGHUP's default action would end the process).
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// The first of SIGTERM and SIGINT to arrive.
    async fn wait(term: Option<Signal>, int: Option<Signal>) -> &'static str {
        match (term, int) {
            (Some(mut term), Some(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

/// Reload the config file on every SIGHUP until the drain ends; reloads
/// never overlap (a second SIGHUP during one waits for it).
fn spawn_reloads(hup: Option<Signal>, reloader: Arc<Reloader>, root: CancellationToken) {
    let Some(mut hup) = hup else {
        warn!("cannot catch SIGHUP: the config reload is only available over HTTP");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = root.cancelled() => break,
                got = hup.recv() => match got {
                    Some(()) => {
                        reloader.run("SIGHUP").await;
                    }
                    None => break,
                },
            }
        }
    });
}
