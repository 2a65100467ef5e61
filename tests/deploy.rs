//! `deploy/`: the files people run sluice with, checked the way CI can
//! without a Docker engine or a cluster.
//!
//! - the Grafana dashboard parses and every metric it queries is in
//!   `/metrics` of a running sluice during a publish with a rendition and
//!   SRT players;
//! - the Dockerfile passes hadolint, builds with the command CI runs, and
//!   agrees with sluice's defaults (ports, health path, user);
//! - the compose file, the Kubernetes base and the `gpu` overlay agree with
//!   those too; every rendered manifest validates against the Kubernetes
//!   schemas (kubernetes-validate, offline), and the ConfigMaps are configs
//!   sluice accepts;
//! - the OpenTelemetry Collector they show (compose's `tracing` profile,
//!   the commented OTEL_* env and `[telemetry]` blocks) is one sluice can
//!   export to, and each commented block, uncommented, still validates;
//! - the systemd unit passes `systemd-analyze verify` and its offline
//!   security review.
//!
//! hadolint, kubernetes-validate and PyYAML come from `deploy/tools.sh`
//! (a virtual environment in target/deploy-tools; `.ci/run` runs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice::server::Config;
use sluice::telemetry::trace::TelemetryConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A validator from `deploy/tools.sh`: target/deploy-tools/bin, else PATH.
fn deploy_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("SLUICE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/deploy-tools"));
    let p = venv.join("bin").join(name);
    if p.is_file() {
        return p;
    }
    require_program(
        name,
        "it with `deploy/tools.sh` (a venv in target/deploy-tools)",
    )
}

/// Runs a command to completion; panics (with its output) unless it exits 0.
fn run_ok(what: &str, mut cmd: Command) -> (String, String) {
    cmd.current_dir(repo());
    let (status, out, err) = run_to_exit(what, cmd, Duration::from_secs(120));
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
    (out, err)
}

/// YAML (one or more documents) as JSON values, read by PyYAML.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let mut cmd = Command::new(deploy_tool("python3"));
    cmd.args([
        "-c",
        "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
         json.dump(docs, sys.stdout)",
    ])
    .arg(path);
    let (out, _) = run_ok("yaml to json", cmd);
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: not a YAML stream: {other:?}", path.display()),
    }
}

fn defaults() -> Config {
    Config::default()
}

/// `text` with one commented-out block uncommented: the line that reads
/// `# {first}...` (after its indentation; exactly one must) and every
/// comment line right after it lose their `#` and the space after it.
/// Blocks are written so: explanations above, the block itself up to the
/// next blank or uncommented line.
fn uncomment_block(text: &str, first: &str) -> String {
    let marker = format!("# {first}");
    let starts = text
        .lines()
        .filter(|l| l.trim_start().starts_with(&marker))
        .count();
    assert_eq!(starts, 1, "want one `{marker}` line, found {starts}");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let body = line.trim_start();
        inside = body.starts_with(&marker) || (inside && body.starts_with('#'));
        if inside {
            let rest = &body[1..];
            out.push_str(&line[..line.len() - body.len()]);
            out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The `[telemetry]` a collector URL makes, checked as sluice checks it.
fn telemetry_to(url: &str) -> TelemetryConfig {
    let t = TelemetryConfig {
        otlp_endpoint: Some(url.to_string()),
        ..TelemetryConfig::default()
    };
    t.validate()
        .unwrap_or_else(|e| panic!("{url}: sluice refuses it: {e}"));
    t
}

// ---------------------------------------------------------------------------
// The HTTP API token, as each deployment hands it over
// ---------------------------------------------------------------------------

const DEPLOY_TOKEN: &str = "deploy-test-token-0123456789abcdef";

/// Runs the sluice built here with `args` as a deployment passes them
/// (paths already mapped to files here, one of which holds
/// [`DEPLOY_TOKEN`]), plus ephemeral loopback ports, and checks what the
/// deployment relies on: `probes` and the scraper's `/metrics` answer
/// without a token, the API only with it, and the token is not logged.
fn check_token_wiring(what: &str, mut args: Vec<String>, probes: &[&str]) {
    for (flag, addr) in [
        ("--rtmp-addr", "127.0.0.1:0"),
        ("--http-addr", "127.0.0.1:0"),
        ("--srt-addr", "127.0.0.1:0"),
    ] {
        args.extend([flag.to_string(), addr.to_string()]);
    }
    let server = Sluice::start_raw(None, args);
    let addr = server.http_addr();
    for path in probes.iter().copied().chain(["/metrics"]) {
        let r = http_get(addr, path).unwrap();
        assert_eq!(
            r.status, 200,
            "{what}: GET {path} without a token: {}",
            r.body
        );
    }
    let bare = http_get(addr, "/api/v1/streams").unwrap();
    assert_eq!(
        bare.status, 401,
        "{what}: the API answered without the token"
    );
    let auth = format!("Bearer {DEPLOY_TOKEN}");
    let r = http_request_with(
        addr,
        "GET",
        "/api/v1/streams",
        &[("Authorization", &auth)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{what}: the API with the token: {}", r.body);
    assert!(
        !server.log_contains(DEPLOY_TOKEN),
        "{what}: the token is logged"
    );
}

// ---------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------

/// Every PromQL expression in a dashboard: panel targets and variables.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("sluice_") => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression (sluice's all start with `sluice_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("sluice_") {
        let start = i + off;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The metric family a queried name belongs to: histogram series carry
/// `_bucket`, `_sum` and `_count` suffixes.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// `# TYPE` lines of a Prometheus exposition: family name → type.
fn exposition_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// Names that have at least one sample line.
fn sampled_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

const DASHBOARD_CONFIG: &str = r#"
[transcode]
encoder = "x264"

[[apps.live.renditions]]
name = "240p"
height = 240
video_bitrate = "300k"
audio = "copy"
"#;

#[test]
fn grafana_dashboard_queries_metrics_sluice_exports_during_a_publish() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/sluice.json"))
        .expect("deploy/grafana/sluice.json is not JSON");
    assert_eq!(dashboard["uid"], "sluice-relay");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id: {p}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(
                p["gridPos"][k].is_u64(),
                "panel {} lacks gridPos.{k}",
                p["title"]
            );
        }
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(
        queried.len() >= 40,
        "only {} metric names queried",
        queried.len()
    );

    // A live stream with a transcoded rendition, two SRT players and one
    // rejected player, so the families a dashboard cares about have samples.
    let server = Sluice::start(Some(DASHBOARD_CONFIG));
    let url = server.rtmp_url("live/cam1");
    let _publisher = spawn_ffmpeg(&[
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=426x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "flv",
        &url,
    ]);
    server.wait_metric(
        "sluice_transcode_first_idr_seconds_count",
        |v| v.is_some_and(|n| n >= 1.0),
        Duration::from_secs(30),
    );
    for id in ["live/cam1", "live/cam1/240p"] {
        let src = server.srt_url(id, "");
        let (status, _, err) = run_to_exit(
            "ffmpeg player",
            {
                let mut c = Command::new(require_ffmpeg());
                c.args([
                    "-loglevel",
                    "error",
                    "-i",
                    &src,
                    "-t",
                    "2",
                    "-f",
                    "null",
                    "-",
                ]);
                c
            },
            Duration::from_secs(30),
        );
        assert!(status.success(), "player of {id}: {err}");
    }
    let missing = server.srt_url("live/nobody", "");
    let mut c = Command::new(require_ffmpeg());
    c.args([
        "-loglevel",
        "error",
        "-i",
        &missing,
        "-t",
        "1",
        "-f",
        "null",
        "-",
    ]);
    let (status, _, _) = run_to_exit(
        "ffmpeg player of a missing stream",
        c,
        Duration::from_secs(30),
    );
    assert!(!status.success(), "a missing stream played");
    server.wait_metric(
        "sluice_srt_rejects_total",
        |v| v >= Some(1.0),
        Duration::from_secs(5),
    );

    let text = server.metrics_text();
    let types = exposition_types(&text);
    let sampled = sampled_names(&text);
    let mut absent = Vec::new();
    let mut typed_only = Vec::new();
    for name in &queried {
        let family = family_of(name, &types);
        if !types.contains_key(family) {
            absent.push(name.clone());
        } else if !sampled.contains(name.as_str()) {
            typed_only.push(name.clone());
        }
    }
    assert!(
        absent.is_empty(),
        "the dashboard queries metrics /metrics does not export: {absent:?}"
    );
    // What a live stream with players and a rendition must have produced.
    for name in [
        "sluice_streams",
        "sluice_ingest_bytes_total",
        "sluice_ingest_frames_total",
        "sluice_srt_players",
        "sluice_srt_players_total",
        "sluice_srt_bytes_out_total",
        "sluice_srt_gop_cache_starts_total",
        "sluice_srt_rejects_total",
        "sluice_relay_latency_seconds_bucket",
        "sluice_stream_setup_seconds_bucket",
        "sluice_rtmp_publishes_total",
        "sluice_transcode_encoder",
        "sluice_transcode_ffmpeg_running",
        "sluice_transcode_ffmpeg_starts_total",
        "sluice_transcode_first_idr_seconds_bucket",
        "sluice_transcode_output_bytes_total",
        "sluice_transcode_rendition_fps",
        "sluice_process_resident_memory_bytes",
        "sluice_process_open_fds",
        "sluice_tokio_alive_tasks",
        "sluice_gpus",
    ] {
        assert!(queried.contains(name), "the dashboard does not show {name}");
        assert!(
            sampled.contains(name),
            "{name} has no sample during a publish:\n{text}"
        );
    }
    println!(
        "dashboard: {} metric names queried; {} with samples now; typed only \
         (no event or no GPU yet): {typed_only:?}",
        queried.len(),
        queried.len() - typed_only.len()
    );
}

// ---------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------

const DOCKERFILE: &str = "deploy/docker/Dockerfile";

#[test]
fn dockerfile_passes_hadolint() {
    let mut cmd = Command::new(deploy_tool("hadolint"));
    cmd.arg(DOCKERFILE);
    let (out, err) = run_ok("hadolint", cmd);
    assert!(out.trim().is_empty() && err.trim().is_empty(), "{out}{err}");
}

#[test]
fn dockerfile_builds_with_the_ci_command_and_matches_the_defaults() {
    let dockerfile = read(DOCKERFILE);
    let ci = read(".ci/run");
    let build = ci
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo build --release --locked"))
        .expect(".ci/run has no `cargo build --release --locked` line");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("{build} \\")),
        "the Dockerfile does not build with the command CI runs: `{build}`"
    );

    let d = defaults();
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    for (port, proto) in [
        (d.server.rtmp_addr.port(), "tcp"),
        (d.server.srt_addr.port(), "udp"),
        (d.server.http_addr.port(), "tcp"),
    ] {
        assert!(
            expose.contains(&format!("{port}/{proto}")),
            "{expose} lacks {port}/{proto}"
        );
    }
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    let health = format!("http://127.0.0.1:{}/healthz", d.server.http_addr.port());
    assert!(
        dockerfile
            .lines()
            .any(|l| l.contains("CMD [\"curl\"") && l.contains(&health)),
        "HEALTHCHECK does not ask {health}"
    );
    assert!(
        dockerfile.contains("USER 10001:10001"),
        "not the unprivileged user"
    );
    assert!(dockerfile.contains("NVIDIA_DRIVER_CAPABILITIES=video,compute,utility"));
    // The config baked into the image is one sluice accepts.
    assert!(dockerfile.contains("COPY deploy/sluice.example.toml /etc/sluice/sluice.toml"));
    let c = Config::load(&repo().join("deploy/sluice.example.toml")).expect("example config");
    c.validate().expect("example config validates");
    // Like every other section, [telemetry] shows the defaults: tracing off.
    assert_eq!(c.telemetry, TelemetryConfig::default());
    // Every path the build context needs is not ignored.
    let ignore = read("deploy/docker/Dockerfile.dockerignore");
    for needed in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "deploy",
        "benches",
        "tests",
        "fuzz",
    ] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            "{needed} is excluded from the build context"
        );
    }
}

#[test]
fn compose_file_publishes_the_ports_and_outlasts_the_drain() {
    let docs = yaml_docs(&repo().join("deploy/docker/docker-compose.yml"));
    let compose = &docs[0];
    let d = defaults();
    let drain = d.server.drain_timeout.as_secs();
    for svc in ["sluice", "sluice-gpu"] {
        let s = &compose["services"][svc];
        let ports: Vec<&str> = s["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for (port, proto) in [
            (d.server.rtmp_addr.port(), "tcp"),
            (d.server.srt_addr.port(), "udp"),
            (d.server.http_addr.port(), "tcp"),
        ] {
            let want = format!("{port}:{port}/{proto}");
            assert!(
                ports.contains(&want.as_str()),
                "{svc}: {ports:?} lacks {want}"
            );
        }
        let grace = s["stop_grace_period"].as_str().expect("stop_grace_period");
        let grace = sluice::config::parse_duration(grace)
            .expect("duration")
            .as_secs();
        assert!(
            grace > drain,
            "{svc}: stop_grace_period {grace}s <= drain_timeout {drain}s"
        );
        assert_eq!(s["read_only"], true, "{svc}");
        let vol = s["volumes"][0].as_str().expect("volume");
        let host = vol.split(':').next().unwrap();
        assert!(
            repo().join("deploy/docker").join(host).is_file(),
            "{svc}: mounted config {host} does not exist"
        );
    }
    let gpu = &compose["services"]["sluice-gpu"];
    assert_eq!(gpu["build"]["target"], "cuda");

    // The API token: a secret file, never in git or the build context,
    // passed with --api-token-file where compose mounts secrets.
    let secret = compose["secrets"]["api_token"]["file"]
        .as_str()
        .expect("secrets.api_token.file");
    let secret_rel = format!("deploy/docker/{}", secret.trim_start_matches("./"));
    assert!(
        read(".gitignore")
            .lines()
            .any(|l| l.trim_start_matches('/') == secret_rel),
        "{secret_rel} is not in .gitignore"
    );
    assert!(
        read("deploy/docker/Dockerfile.dockerignore")
            .lines()
            .any(|l| l == secret_rel),
        "{secret_rel} would be sent to the image build"
    );
    let mut command = Vec::new();
    for svc in ["sluice", "sluice-gpu"] {
        let s = &compose["services"][svc];
        assert_eq!(s["secrets"], serde_json::json!(["api_token"]), "{svc}");
        command = s["command"]
            .as_array()
            .expect("command")
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        let at = command
            .iter()
            .position(|a| a == "--api-token-file")
            .unwrap_or_else(|| panic!("{svc}: no --api-token-file in {command:?}"));
        assert_eq!(command[at + 1], "/run/secrets/api_token", "{svc}");
    }
    // The command itself, with compose's mounts mapped to files here.
    let dir = TempDir::new("sluice-compose");
    let token = dir.join("api_token");
    fs::write(&token, format!("{DEPLOY_TOKEN}\n")).unwrap();
    let vol = compose["services"]["sluice"]["volumes"][0]
        .as_str()
        .unwrap();
    let mut parts = vol.split(':');
    let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
    let host = repo().join("deploy/docker").join(host);
    let args: Vec<String> = command
        .iter()
        .map(|a| match a.as_str() {
            "/run/secrets/api_token" => token.display().to_string(),
            a if a == container => host.display().to_string(),
            a => a.to_string(),
        })
        .collect();
    check_token_wiring("compose", args, &["/healthz", "/readyz"]);
    let caps = gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"].to_string();
    for c in ["video", "compute", "utility"] {
        assert!(caps.contains(c), "GPU device request lacks {c}: {caps}");
    }
}

/// The `tracing` profile's OpenTelemetry Collector: `docker compose up`
/// without the profile starts sluice alone; the collector takes OTLP over
/// HTTP on 4318 from the other containers; the endpoint commented on the
/// sluice services (and in the example config compose mounts) names it.
#[test]
fn compose_tracing_profile_adds_a_collector_the_commented_endpoint_names() {
    let compose_file = repo().join("deploy/docker/docker-compose.yml");
    let compose = &yaml_docs(&compose_file)[0];
    let services = compose["services"].as_object().expect("services");
    for (name, s) in services {
        assert!(
            name == "sluice" || !s["profiles"].is_null(),
            "{name} would start with a plain `docker compose up`"
        );
        assert!(
            s["environment"]
                .as_object()
                .is_none_or(|env| !env.keys().any(|k| k.starts_with("OTEL_"))),
            "{name}: OTEL_* set while the collector is optional"
        );
    }
    let (collector, svc) = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("otel/opentelemetry-collector"))
        })
        .expect("an OpenTelemetry Collector service");
    assert_eq!(
        svc["profiles"],
        serde_json::json!(["tracing"]),
        "{collector}"
    );
    let image = svc["image"].as_str().unwrap();
    let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
    assert!(
        tag.split('.').count() == 3 && tag.split('.').all(|n| n.parse::<u32>().is_ok()),
        "{image}: pin a release (X.Y.Z)"
    );
    assert_eq!(svc["read_only"], true, "{collector}");

    // Its config: mounted from deploy/docker where --config reads it.
    let vol = svc["volumes"][0].as_str().expect("collector config volume");
    let mut parts = vol.split(':');
    let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
    let host = repo().join("deploy/docker").join(host);
    assert!(host.is_file(), "{collector}: {} is missing", host.display());
    let command = svc["command"].to_string();
    assert!(
        command.contains(&format!("--config={container}")),
        "{collector}: {command} does not read {container}"
    );
    let config = &yaml_docs(&host)[0];
    let http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .expect("receivers.otlp.protocols.http.endpoint");
    // Not the collector's default localhost: other containers send to it.
    assert_eq!(http, "0.0.0.0:4318", "the OTLP/HTTP receiver");
    let traces = &config["service"]["pipelines"]["traces"];
    assert_eq!(traces["receivers"], serde_json::json!(["otlp"]));
    let exporters = traces["exporters"].as_array().expect("traces exporters");
    assert!(exporters.contains(&Value::from("debug")), "{exporters:?}");
    for e in exporters {
        let e = e.as_str().unwrap();
        assert!(
            config["exporters"].get(e).is_some(),
            "exporter {e} is in the pipeline but not configured"
        );
    }

    // What the comments say to uncomment: each sluice service's
    // OTEL_EXPORTER_OTLP_ENDPOINT, which must name the collector.
    let want = format!("http://{collector}:4318");
    let text = fs::read_to_string(&compose_file).unwrap();
    let text = uncomment_block(&text, "environment:");
    let text = uncomment_block(&text, "OTEL_EXPORTER_OTLP_ENDPOINT:");
    let dir = TempDir::new("sluice-compose-tracing");
    let file = dir.join("docker-compose.yml");
    fs::write(&file, text).unwrap();
    let traced = &yaml_docs(&file)[0];
    for name in ["sluice", "sluice-gpu"] {
        let env = &traced["services"][name]["environment"];
        assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], want.as_str(), "{name}");
        telemetry_to(&want);
    }
    assert_eq!(
        traced["services"]["sluice-gpu"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"],
        "video,compute,utility"
    );
    // The mounted example config's commented otlp_endpoint, the same way.
    let example = uncomment_block(&read("deploy/sluice.example.toml"), "otlp_endpoint");
    let c = Config::from_toml(&example).expect("the example with otlp_endpoint");
    c.validate().expect("the example with otlp_endpoint");
    assert_eq!(c.telemetry, telemetry_to(&want));
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

/// The manifests of a kustomization, rendered by deploy/kubernetes/render.py.
fn render(dir: &str) -> Vec<Value> {
    let mut cmd = Command::new(deploy_tool("python3"));
    cmd.args(["deploy/kubernetes/render.py", "--json", dir]);
    let (out, _) = run_ok("render.py", cmd);
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("render.py {dir}: {other:?}"),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// Checks what the schemas cannot: the pieces agree with each other and
/// with sluice. Returns the container for overlay-specific checks.
fn check_release(dir: &str, docs: &[Value]) -> Value {
    let deploy = docs
        .iter()
        .find(|d| {
            (d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
                && d["metadata"]["name"] == "sluice"
        })
        .unwrap_or_else(|| panic!("{dir}: no sluice Deployment or StatefulSet"));
    let pod = &deploy["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(labels_match(
        &deploy["spec"]["selector"]["matchLabels"],
        labels
    ));
    let spec = &pod["spec"];
    let c = spec["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "sluice"))
        .unwrap_or_else(|| panic!("{dir}: no sluice container"))
        .clone();

    // The ConfigMap the pod mounts is a config sluice accepts.
    let cm_name = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("config volume");
    let cm = find(docs, "ConfigMap", cm_name);
    assert_eq!(
        cm["metadata"]["name"], cm_name,
        "{dir}: the mounted ConfigMap is not rendered"
    );
    let toml = cm["data"]["sluice.toml"].as_str().expect("sluice.toml key");
    let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{dir}: ConfigMap: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{dir}: ConfigMap: {e}"));
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("config mount");
    let config_path = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    assert_eq!(
        config_path,
        format!("{}/sluice.toml", mount["mountPath"].as_str().unwrap()),
        "{dir}: --config does not point into the ConfigMap"
    );

    // Ports by name, matching the config.
    let port = |name: &str| -> (u64, String) {
        let p = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{dir}: no container port {name}"));
        (
            p["containerPort"].as_u64().unwrap(),
            p["protocol"].as_str().unwrap().to_string(),
        )
    };
    let s = &config.server;
    assert_eq!(port("rtmp"), (u64::from(s.rtmp_addr.port()), "TCP".into()));
    assert_eq!(port("srt"), (u64::from(s.srt_addr.port()), "UDP".into()));
    assert_eq!(port("http"), (u64::from(s.http_addr.port()), "TCP".into()));

    // Health: liveness on /healthz, readiness on /readyz (503 while draining).
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    // HTTP comes up after the GPU trials (up to 3 x gpu::TRIAL_TIMEOUT):
    // the startup probe must allow that before liveness counts.
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    let startup = c["startupProbe"]["periodSeconds"].as_u64().unwrap()
        * c["startupProbe"]["failureThreshold"].as_u64().unwrap();
    assert!(
        startup > 3 * sluice::gpu::TRIAL_TIMEOUT.as_secs(),
        "{dir}: startup probe allows only {startup} s"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");

    // Shutdown: preStop, then SIGTERM and the drain, all inside the grace.
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop");
    assert_eq!(pre_stop[0], "sleep");
    let sleep: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let drain = s.drain_timeout.as_secs();
    assert!(
        grace > sleep + drain,
        "{dir}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain_timeout {drain}"
    );

    // Security context and resources.
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        spec["securityContext"]["runAsUser"], 10001,
        "the image's user"
    );
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "{dir}: no {k}.{r}");
        }
    }

    let http = find(docs, "Service", "sluice-http");
    assert!(labels_match(&http["spec"]["selector"], labels));

    // PodMonitor (a CRD: no schema offline, so checked here): same pods,
    // a real port, the metrics path.
    let pm = find(docs, "PodMonitor", "sluice");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(labels_match(&pm["spec"]["selector"]["matchLabels"], labels));
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["path"], "/metrics");
    check_k8s_api_token(dir, spec, &c, &config);
    port(ep["port"].as_str().expect("endpoint port"));
    assert!(sluice::config::parse_duration(ep["interval"].as_str().unwrap()).is_ok());

    let pdb = find(docs, "PodDisruptionBudget", "sluice");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        labels
    ));
    c
}

/// The API token comes from the Secret `sluice-api-token`, mounted where
/// the ConfigMap's `server.api_token_file` points, readable by the pod's
/// user only; every probe and the scrape use paths that need no token.
fn check_k8s_api_token(dir: &str, spec: &Value, c: &Value, config: &Config) {
    assert!(
        config.server.api_token.is_none(),
        "{dir}: a token in the ConfigMap"
    );
    let file = config
        .server
        .api_token_file
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: the ConfigMap sets no server.api_token_file"));
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{dir}: nothing is mounted at {}", file.display()));
    assert_eq!(mount["readOnly"], true, "{dir}");
    let rel = file
        .strip_prefix(mount["mountPath"].as_str().unwrap())
        .unwrap();
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the token volume");
    let secret = &volume["secret"];
    assert_eq!(secret["secretName"], "sluice-api-token", "{dir}: {volume}");
    let item = secret["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| Path::new(i["path"].as_str().unwrap()) == rel)
        })
        .unwrap_or_else(|| panic!("{dir}: no Secret key is mounted as {}", rel.display()));
    assert_eq!(item["key"], "api-token", "{dir}");
    // Group-readable for the pod's fsGroup, nobody else.
    let mode = secret["defaultMode"].as_u64().expect("defaultMode");
    assert_eq!(
        mode & 0o007,
        0,
        "{dir}: the token is world-readable ({mode:o})"
    );
    assert_ne!(mode & 0o040, 0, "{dir}: the group cannot read the token");
    assert_eq!(
        spec["securityContext"]["fsGroup"], spec["securityContext"]["runAsGroup"],
        "{dir}: the token's group is not sluice's"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert!(
            sluice::http::OPEN_PATHS.contains(&path),
            "{dir}: {probe} asks {path}, which needs the token"
        );
    }
    assert!(sluice::http::OPEN_PATHS.contains(&"/metrics"));
}

/// The RTMP (TCP) and SRT (UDP) Services `sluice-rtmp`/`sluice-srt` (or
/// `PREFIX-rtmp`/`PREFIX-srt`): the right named ports and protocols, the
/// client's address kept. Returns their selectors.
fn check_public_services(docs: &[Value], prefix: &str) -> Vec<Value> {
    [("rtmp", "TCP"), ("srt", "UDP")]
        .iter()
        .map(|(name, proto)| {
            let svc = find(docs, "Service", &format!("{prefix}-{name}"));
            let p = &svc["spec"]["ports"][0];
            assert_eq!(p["targetPort"], *name, "{svc}");
            assert_eq!(p["protocol"], *proto, "{svc}");
            assert_eq!(svc["spec"]["type"], "LoadBalancer", "{svc}");
            assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local", "{svc}");
            svc["spec"]["selector"].clone()
        })
        .collect()
}

fn pod_labels(docs: &[Value]) -> Value {
    let w = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .expect("a workload");
    w["spec"]["template"]["metadata"]["labels"].clone()
}

fn validate_schemas(dir: &str) {
    let rendered = TempDir::new("sluice-k8s");
    let mut cmd = Command::new(deploy_tool("python3"));
    cmd.args(["deploy/kubernetes/render.py", dir]);
    let (yaml, _) = run_ok("render.py", cmd);
    let file = rendered.join("manifests.yaml");
    fs::write(&file, &yaml).unwrap();
    // The oldest and the newest Kubernetes the schemas cover that we support.
    for version in ["1.29.0", "1.37.0"] {
        let mut cmd = Command::new(deploy_tool("kubernetes-validate"));
        cmd.args(["--strict", "--kubernetes-version", version])
            .arg(&file);
        let (out, err) = run_ok("kubernetes-validate", cmd);
        let all = format!("{out}{err}");
        let passed = all.matches(" passed for resource ").count();
        let unknown: Vec<&str> = all
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        assert!(
            unknown.iter().all(|l| l.contains("kind PodMonitor")),
            "{dir}: resources without a schema besides the PodMonitor: {unknown:?}"
        );
        let expected = yaml_docs(&file)
            .iter()
            .filter(|d| d["kind"] != "PodMonitor")
            .count();
        assert_eq!(passed, expected, "{dir} on {version}: {all}");
    }
    // Where kubectl is installed (not on CI), kustomize itself must agree
    // with render.py.
    if let Ok(kubectl) = which("kubectl") {
        let mut cmd = Command::new(kubectl);
        cmd.args(["kustomize", dir]);
        let (theirs, _) = run_ok("kubectl kustomize", cmd);
        let theirs_file = rendered.join("kustomize.yaml");
        fs::write(&theirs_file, theirs).unwrap();
        let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
        let mut ours = yaml_docs(&file);
        let mut theirs = yaml_docs(&theirs_file);
        ours.sort_by_key(key);
        theirs.sort_by_key(key);
        assert_eq!(
            ours, theirs,
            "{dir}: render.py and kubectl kustomize differ"
        );
        println!("{dir}: render.py output equals kubectl kustomize");
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

#[test]
fn kubernetes_base_renders_validates_and_agrees_with_sluice() {
    let docs = render("deploy/kubernetes/base");
    let c = check_release("base", &docs);
    let labels = pod_labels(&docs);
    for selector in check_public_services(&docs, "sluice") {
        assert!(labels_match(&selector, &labels), "{selector}");
    }
    assert_eq!(c["image"], "sluice:latest");
    assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());
    // The pod's arguments and ConfigMap, with the Secret's file here.
    let cm = find(&docs, "ConfigMap", "sluice-config");
    let toml = cm["data"]["sluice.toml"].as_str().unwrap();
    let mounted = Config::from_toml(toml)
        .unwrap()
        .server
        .api_token_file
        .unwrap();
    let dir = TempDir::new("sluice-k8s-token");
    let token = dir.join("api-token");
    fs::write(&token, DEPLOY_TOKEN).unwrap();
    let config = dir.join("sluice.toml");
    let mounted = mounted.display().to_string();
    fs::write(
        &config,
        toml.replace(&mounted, &token.display().to_string()),
    )
    .unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a.as_str().unwrap() {
            "/etc/sluice/sluice.toml" => config.display().to_string(),
            a => a.to_string(),
        })
        .collect();
    let probes: Vec<&str> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| c[p]["httpGet"]["path"].as_str().unwrap())
        .collect();
    check_token_wiring("kubernetes base", args, &probes);
    validate_schemas("deploy/kubernetes/base");
}

#[test]
fn kubernetes_gpu_overlay_asks_for_a_gpu_and_configures_renditions() {
    let docs = render("deploy/kubernetes/gpu");
    let c = check_release("gpu", &docs);
    let labels = pod_labels(&docs);
    for selector in check_public_services(&docs, "sluice") {
        assert!(labels_match(&selector, &labels), "{selector}");
    }
    assert_eq!(c["image"], "sluice:cuda", "the cuda image target");
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    let env = c["env"].as_array().expect("env");
    let caps = env
        .iter()
        .find(|e| e["name"] == "NVIDIA_DRIVER_CAPABILITIES")
        .expect("NVIDIA_DRIVER_CAPABILITIES");
    assert_eq!(caps["value"], "video,compute,utility");
    let deploy = find(&docs, "Deployment", "sluice");
    let spec = &deploy["spec"]["template"]["spec"];
    assert!(spec["tolerations"].to_string().contains("nvidia.com/gpu"));
    // One GPU per pod: the old pod must let go of it before the new starts.
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 0);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let cm = find(&docs, "ConfigMap", "sluice-config");
    let config = Config::from_toml(cm["data"]["sluice.toml"].as_str().unwrap()).unwrap();
    let renditions: Vec<&str> = config.apps["live"]
        .renditions
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(renditions, ["720p", "480p"]);
    // The overlay replaced the base ConfigMap rather than adding a second.
    assert_eq!(docs.iter().filter(|d| d["kind"] == "ConfigMap").count(), 1);
    validate_schemas("deploy/kubernetes/gpu");
}

#[test]
fn kubernetes_sharded_overlay_gives_each_pod_its_own_addresses() {
    let docs = render("deploy/kubernetes/sharded");
    check_release("sharded", &docs);
    assert!(
        !docs.iter().any(|d| d["kind"] == "Deployment"),
        "the shared Deployment is still there"
    );
    for gone in ["sluice-rtmp", "sluice-srt"] {
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == gone),
            "{gone} would mix pods"
        );
    }
    let sts = find(&docs, "StatefulSet", "sluice");
    // The pod template is the base Deployment's, exactly.
    let base = render("deploy/kubernetes/base");
    let deployment = find(&base, "Deployment", "sluice");
    assert_eq!(
        sts["spec"]["template"], deployment["spec"]["template"],
        "sharded/statefulset.yaml's pod template drifted from base/deployment.yaml"
    );
    let governing = find(
        &docs,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(governing["spec"]["clusterIP"], "None");
    let labels = pod_labels(&docs);
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2);
    for i in 0..replicas {
        for selector in check_public_services(&docs, &format!("sluice-{i}")) {
            assert_eq!(
                selector["statefulset.kubernetes.io/pod-name"],
                format!("sluice-{i}")
            );
            assert_eq!(
                selector["app.kubernetes.io/name"],
                labels["app.kubernetes.io/name"]
            );
        }
    }
    let per_pod = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && d["spec"]["type"] == "LoadBalancer")
        .count() as u64;
    assert_eq!(
        per_pod,
        2 * replicas,
        "one RTMP and one SRT Service per pod"
    );
    validate_schemas("deploy/kubernetes/sharded");
}

#[test]
fn kubernetes_cluster_overlay_shares_a_directory_and_lets_any_pod_serve_any_stream() {
    let docs = render("deploy/kubernetes/cluster");
    let c = check_release("cluster", &docs);
    let sts = find(&docs, "StatefulSet", "sluice");
    let spec = &sts["spec"]["template"]["spec"];
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let cm = find(&docs, "ConfigMap", "sluice-config");
    let config = Config::from_toml(cm["data"]["sluice.toml"].as_str().unwrap()).unwrap();
    let cluster = config.cluster.clone().expect("[cluster] in the ConfigMap");

    // The directory: redis_url names the Redis Service, which selects the
    // Redis pods (and not the relays).
    let redis = find(&docs, "Service", "sluice-redis");
    let port = redis["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(cluster.redis_url, format!("redis://sluice-redis:{port}"));
    let redis_pods =
        &find(&docs, "Deployment", "sluice-redis")["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(&redis["spec"]["selector"], redis_pods));
    assert!(!labels_match(&redis["spec"]["selector"], labels));
    let redis_c =
        &find(&docs, "Deployment", "sluice-redis")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(redis_c["securityContext"]["readOnlyRootFilesystem"], true);

    // Other pods reach this one at its pod IP and SRT port.
    assert_eq!(
        cluster.advertise_srt,
        format!("${{POD_IP}}:{}", config.server.srt_addr.port())
    );
    let pod_ip = c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "POD_IP"))
        .expect("POD_IP env");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert!(
        cluster.node_id.is_empty(),
        "node_id defaults to the pod name"
    );

    // The secret comes from the Secret, where secret_file points.
    assert!(
        cluster.secret.is_none(),
        "a cluster secret in the ConfigMap"
    );
    let file = cluster.secret_file.clone().expect("secret_file");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cluster-secret")
        .expect("cluster-secret mount");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "cluster-secret")
        .expect("cluster-secret volume");
    assert_eq!(volume["secret"]["secretName"], "sluice-cluster-secret");
    let item = &volume["secret"]["items"][0];
    assert_eq!(
        file.display().to_string(),
        format!(
            "{}/{}",
            mount["mountPath"].as_str().unwrap(),
            item["path"].as_str().unwrap()
        )
    );
    assert_eq!(volume["secret"]["defaultMode"], 0o440);

    // One address for every pod (any pod serves any stream), besides the
    // per-pod ones.
    for name in ["sluice-rtmp", "sluice-srt"] {
        let svc = find(&docs, "Service", name);
        assert_eq!(svc["metadata"]["name"], name);
        assert!(labels_match(&svc["spec"]["selector"], labels), "{name}");
        assert!(svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].is_null());
    }
    validate_schemas("deploy/kubernetes/cluster");
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The collector the Kubernetes files name in their commented blocks.
const K8S_COLLECTOR: &str = "http://otel-collector.observability:4318";

/// The entry `name` of a container's env, with its index.
fn env_entry<'a>(env: &'a [Value], name: &str, what: &str) -> (usize, &'a Value) {
    env.iter()
        .enumerate()
        .find(|(_, e)| e["name"] == name)
        .unwrap_or_else(|| panic!("{what}: no {name} in env"))
}

/// Tracing is off as shipped. The pod template's commented OTEL_* env and
/// each ConfigMap's commented `[telemetry]`, uncommented, make every
/// overlay export to the same collector, with each pod's name in the
/// resource, and the manifests still render, validate and agree with
/// sluice.
#[test]
fn kubernetes_tracing_blocks_uncommented_name_one_collector_and_validate() {
    for overlay in ["base", "gpu", "sharded", "cluster"] {
        let docs = render(&format!("deploy/kubernetes/{overlay}"));
        let c = check_release(overlay, &docs);
        assert!(
            c["env"].as_array().is_none_or(|env| !env
                .iter()
                .any(|e| e["name"].as_str().unwrap().starts_with("OTEL_"))),
            "{overlay}: OTEL_* set as shipped"
        );
        let cm = find(&docs, "ConfigMap", "sluice-config");
        let config = Config::from_toml(cm["data"]["sluice.toml"].as_str().unwrap()).unwrap();
        assert_eq!(config.telemetry, TelemetryConfig::default(), "{overlay}");
    }

    let tree = TempDir::new("sluice-k8s-tracing");
    copy_tree(&repo().join("deploy/kubernetes"), tree.path());
    for (file, block) in [
        ("base/deployment.yaml", "env:"),
        ("sharded/statefulset.yaml", "env:"),
        ("base/sluice.toml", "[telemetry]"),
        ("gpu/sluice.toml", "[telemetry]"),
        ("cluster/sluice.toml", "[telemetry]"),
    ] {
        let path = tree.join(file);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, uncomment_block(&text, block)).unwrap();
    }
    let want = telemetry_to(K8S_COLLECTOR);
    for overlay in ["base", "gpu", "sharded", "cluster"] {
        let dir = tree.join(overlay).display().to_string();
        let what = format!("{overlay} with tracing");
        let docs = render(&dir);
        let c = check_release(&what, &docs);
        let cm = find(&docs, "ConfigMap", "sluice-config");
        let config = Config::from_toml(cm["data"]["sluice.toml"].as_str().unwrap()).unwrap();
        assert_eq!(config.telemetry, want, "{what}: [telemetry]");
        let env = c["env"].as_array().expect("env");
        let (_, endpoint) = env_entry(env, "OTEL_EXPORTER_OTLP_ENDPOINT", &what);
        assert_eq!(endpoint["value"], K8S_COLLECTOR, "{what}");
        let (at, attrs) = env_entry(env, "OTEL_RESOURCE_ATTRIBUTES", &what);
        let attrs = attrs["value"].as_str().unwrap();
        assert!(
            attrs.split(',').any(|kv| kv == "k8s.pod.name=$(POD_NAME)"),
            "{what}: {attrs}"
        );
        // Kubernetes expands $(VAR) only from entries before it.
        for var in attrs.split("$(").skip(1) {
            let var = var.split(')').next().unwrap();
            let (i, _) = env_entry(env, var, &what);
            assert!(i < at, "{what}: {var} comes after OTEL_RESOURCE_ATTRIBUTES");
        }
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            let (_, e) = env_entry(env, var, &what);
            assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field, "{what}");
        }
        // The overlays' own env entries are kept beside them.
        let own = match overlay {
            "gpu" => Some("NVIDIA_DRIVER_CAPABILITIES"),
            "cluster" => Some("POD_IP"),
            _ => None,
        };
        if let Some(var) = own {
            env_entry(env, var, &what);
        }
        validate_schemas(&dir);
    }
    // Uncommented, sharded/statefulset.yaml's template is still the base's.
    let base = render(&tree.join("base").display().to_string());
    let sharded = render(&tree.join("sharded").display().to_string());
    assert_eq!(
        find(&sharded, "StatefulSet", "sluice")["spec"]["template"],
        find(&base, "Deployment", "sluice")["spec"]["template"],
        "the tracing env of sharded/statefulset.yaml and base/deployment.yaml differ"
    );
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn systemd_unit_verifies_and_passes_the_offline_security_review() {
    let analyze = require_program("systemd-analyze", "the `systemd` Debian package");
    let unit = read("deploy/systemd/sluice.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/sluice "), "{exec}");
    assert!(unit.contains("\nKillSignal=SIGTERM\n"));
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop = sluice::config::parse_duration(stop).unwrap();
    assert!(
        stop > defaults().server.drain_timeout,
        "TimeoutStopSec {stop:?} <= drain_timeout"
    );

    // verify needs ExecStart's binary to exist: point it at the one built.
    let dir = TempDir::new("sluice-systemd");
    let file = dir.join("sluice.service");
    fs::write(&file, unit.replace("/usr/local/bin/sluice", sluice_bin())).unwrap();
    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).arg(&file);
    let (out, err) = run_ok("systemd-analyze verify", cmd);
    assert!(
        out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify complained:\n{out}{err}"
    );
    // Exposure 2.0 of 10 at most ("OK"); the unit scores 1.4 today.
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&file);
    let (out, _) = run_ok("systemd-analyze security", cmd);
    let score = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{out}"));
    println!("systemd: {}", score.trim_start_matches('→').trim());

    // ExecStart as systemd runs it: every ${CREDENTIALS_DIRECTORY} file is
    // a LoadCredential=, the API token among them.
    let creds = TempDir::new("sluice-credentials");
    for line in unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
    {
        let (name, source) = line.split_once(':').expect("NAME:PATH");
        let content = match source {
            "/etc/sluice/sluice.toml" => read("deploy/sluice.example.toml"),
            "/etc/sluice/api-token" => format!("{DEPLOY_TOKEN}\n"),
            other => panic!("a credential from {other}, which this test does not know"),
        };
        fs::write(creds.join(name), content).unwrap();
    }
    let words: Vec<&str> = exec.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "--api-token-file")
        .expect("ExecStart has no --api-token-file");
    assert!(
        words[at + 1].starts_with("${CREDENTIALS_DIRECTORY}/"),
        "the token is not a credential: {exec}"
    );
    let mut args: Vec<String> = words[1..]
        .iter()
        .map(|w| w.replace("${CREDENTIALS_DIRECTORY}", creds.path().to_str().unwrap()))
        .collect();
    for a in &args {
        if a.starts_with(creds.path().to_str().unwrap()) {
            assert!(Path::new(a).is_file(), "{a} is no LoadCredential=");
        }
    }
    args.extend(["--log-format".to_string(), "json".to_string()]);
    check_token_wiring("systemd", args, &["/healthz", "/readyz"]);
}
