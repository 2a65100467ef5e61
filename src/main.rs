//! `sluice`: serve with built-in defaults, a config file, and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use sluice::server::{Config, Source};
use sluice::telemetry::LogFormat;

/// Low-latency live ingest relay: RTMP in, MPEG-TS over SRT out.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
struct Cli {
    /// TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// RTMP listen address [default: 0.0.0.0:1935]
    #[arg(long, value_name = "ADDR")]
    rtmp_addr: Option<SocketAddr>,
    /// SRT listen address (UDP) [default: 0.0.0.0:9000]
    #[arg(long, value_name = "ADDR")]
    srt_addr: Option<SocketAddr>,
    /// HTTP listen address (health, metrics, API) [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// File whose trimmed content is the HTTP API's bearer token
    /// (server.api_token_file; replaces server.api_token)
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Print the GPU inventory (NVML), the NVENC/NVDEC trial results and the
    /// encoders renditions would use, as JSON, then exit.
    #[arg(long)]
    probe_gpu: bool,
    /// Print `sha256:SALT:DIGEST` for a publish key, to put in
    /// `[apps.NAME.publish_keys]` instead of the key itself, then exit.
    #[arg(long, value_name = "SECRET")]
    hash_key: Option<String>,
}

/// How long the exit waits for blocking work still running after the drain.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(secret) = &cli.hash_key {
        println!("{}", sluice::auth::Secret::hash(secret));
        return ExitCode::SUCCESS;
    }
    // The reload (SIGHUP) reads the file through the same source, so the
    // flags override it then exactly as now.
    let source = Source {
        file: cli.config.clone(),
        rtmp_addr: cli.rtmp_addr,
        srt_addr: cli.srt_addr,
        http_addr: cli.http_addr,
        api_token_file: cli.api_token_file.clone(),
        log_format: cli
            .log_format
            .as_deref()
            .map(|f| f.parse::<LogFormat>().unwrap_or(LogFormat::Text)),
    };
    let loaded = match source.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    let config = &loaded.config;
    let traces = sluice::telemetry::init_logging(config.server.log_format, &config.telemetry);
    if cli.probe_gpu {
        return probe_gpu(config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(sluice::server::run(loaded, source));
    // Dropping the runtime would wait, without limit, for every thread of
    // its blocking pool: one stuck in `getaddrinfo` for a push host would
    // hold the exit after the drain.
    runtime.shutdown_timeout(SHUTDOWN_LIMIT);
    // The last spans (the drain's teardowns) go out before the exit.
    if let Some(t) = traces {
        t.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sluice failed");
            eprintln!("sluice: {e}");
            // Unusable TLS or token files are a configuration error, like a
            // bad key.
            use sluice::server::ServerError;
            match e {
                ServerError::TlsFile { .. } | ServerError::Tls { .. } | ServerError::Config(_) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `--probe-gpu`: everything the encoder choice is based on, trials forced
/// even when NVML sees no GPU.
fn probe_gpu(config: &Config) -> ExitCode {
    use sluice::gpu::{self, Gpus};
    use sluice::transcode::config::VideoCodec;
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("sluice: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let gpus = Gpus::init();
        let tc = &config.transcode;
        let g = gpus.clone();
        let inventory = tokio::task::spawn_blocking(move || g.inventory())
            .await
            .unwrap_or_default();
        let probe = gpu::run_trials(&tc.ffmpeg, gpu::TRIAL_TIMEOUT).await;
        let chosen = sluice::transcode::resolve(
            tc.encoder,
            tc.gpu_decode,
            &probe,
            &[VideoCodec::H264, VideoCodec::Hevc],
        );
        let out = serde_json::json!({
            "nvml": gpus.why_none().map_or("ok".to_string(), str::to_string),
            "inventory": inventory,
            "probe": probe,
            "encoders": match &chosen {
                Ok(e) => serde_json::to_value(e).unwrap_or_default(),
                Err(e) => serde_json::json!({"error": e}),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        if chosen.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
