//! The sluice process under test: started on ephemeral loopback ports with
//! JSON logs, found through its `listening` line, and queried through its
//! HTTP API, `/metrics` and its log lines.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{http_get, HttpResponse};
use super::process::{Captured, ChildGuard, TempDir};
use super::prometheus::metric_value;

/// How long the server may take to print its `listening` line.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the binary under test.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A `Command` for the binary with a clean logging environment.
pub fn sluice_command() -> Command {
    let mut cmd = Command::new(sluice_bin());
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Arguments that put every listener on an ephemeral loopback port and
/// select JSON logs.
pub fn ephemeral_args() -> Vec<String> {
    [
        "--rtmp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--srt-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// [`ephemeral_args`] with the SRT listener on `port` (a node whose SRT
/// address others must know before it starts: a cluster's
/// `advertise_srt`).
pub fn ephemeral_args_srt_port(port: u16) -> Vec<String> {
    let mut args = ephemeral_args();
    if let Some(i) = args.iter().position(|a| a == "--srt-addr") {
        args[i + 1] = format!("127.0.0.1:{port}");
    }
    args
}

/// Looks a field up in a JSON log line: at top level (the contract) or,
/// leniently, under `fields` (tracing's non-flattened layout).
pub fn log_field<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    line.get(key)
        .or_else(|| line.get("fields").and_then(|f| f.get(key)))
}

/// A running sluice process. Dropping it kills the process.
pub struct Sluice {
    child: ChildGuard,
    rtmp: SocketAddr,
    http: SocketAddr,
    listening_line: Value,
    dir: TempDir,
}

/// What a relay holds: see [`Sluice::usage`].
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub fds: f64,
    pub tasks: f64,
    pub rss_mib: f64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fds {} tasks {} RSS {:.1} MiB",
            self.fds, self.tasks, self.rss_mib
        )
    }
}

impl Sluice {
    /// Starts sluice on ephemeral ports with JSON logs, with `config_toml`
    /// written to a temp file and passed with `--config` when given.
    pub fn start(config_toml: Option<&str>) -> Sluice {
        Self::start_with_args(config_toml, &[])
    }

    /// Like `start`, with extra command line arguments appended.
    pub fn start_with_args(config_toml: Option<&str>, extra: &[&str]) -> Sluice {
        let mut args = ephemeral_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_raw(config_toml, args)
    }

    /// Starts sluice with exactly `args` (plus `--config FILE` when a config
    /// is given). The process must print its `listening` line.
    pub fn start_raw(config_toml: Option<&str>, args: Vec<String>) -> Sluice {
        Self::launch(sluice_command(), config_toml, args, ChildGuard::spawn)
    }

    /// Like `start`, with sluice run through `wrapper` (e.g. `unshare` and a
    /// shell that prepares the namespace, then `exec "$@"`): the sluice
    /// binary, `--config FILE` and the ephemeral arguments follow its own.
    pub fn start_wrapped(mut wrapper: Command, config_toml: Option<&str>) -> Sluice {
        wrapper.arg(sluice_bin()).env_remove("RUST_LOG");
        Self::launch(wrapper, config_toml, ephemeral_args(), ChildGuard::spawn)
    }

    /// Starts the sluice binary `bin` (the benches' release build) on
    /// ephemeral ports with JSON logs and `config_toml`, in our process
    /// group (see [`ChildGuard::spawn_foreground`]).
    pub fn start_foreground(bin: &Path, config_toml: &str) -> Sluice {
        Self::launch(
            Command::new(bin),
            Some(config_toml),
            ephemeral_args(),
            ChildGuard::spawn_foreground,
        )
    }

    /// Like [`Sluice::start_foreground`], with exactly `args` (e.g. a fixed
    /// SRT port another process must know before the start).
    pub fn start_foreground_args(bin: &Path, config_toml: &str, args: Vec<String>) -> Sluice {
        Self::launch(
            Command::new(bin),
            Some(config_toml),
            args,
            ChildGuard::spawn_foreground,
        )
    }

    /// Spawns `cmd ARGS` (plus `--config FILE` when a config is given) with
    /// `spawn` and waits for its `listening` line.
    fn launch(
        mut cmd: Command,
        config_toml: Option<&str>,
        args: Vec<String>,
        spawn: fn(&str, Command) -> ChildGuard,
    ) -> Sluice {
        let dir = TempDir::new("server");
        if let Some(cfg) = config_toml {
            let path = dir.join("sluice.toml");
            fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(&args);
        let mut child = spawn("sluice", cmd);
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            for line in child.stderr().lines() {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if log_field(&v, "message").and_then(Value::as_str) != Some("listening") {
                    continue;
                }
                let addr = |key: &str| -> SocketAddr {
                    let s = log_field(&v, key)
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("listening line lacks string `{key}`: {line}"));
                    s.parse().unwrap_or_else(|e| {
                        panic!("`{key}` = {s:?} is not an address ({e}): {line}")
                    })
                };
                let rtmp = addr("rtmp_addr");
                let http = addr("http_addr");
                return Sluice {
                    child,
                    rtmp,
                    http,
                    listening_line: v,
                    dir,
                };
            }
            if let Some(status) = child.try_exit() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "sluice exited ({status}) before listening; args {args:?}; stderr:\n{}",
                    child.stderr().tail(60)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "sluice printed no `listening` JSON line within {SERVER_START_TIMEOUT:?}; \
                     args {args:?}; stderr:\n{}",
                    child.stderr().tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        self.rtmp
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn listening_line(&self) -> &Value {
        &self.listening_line
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `rtmp://127.0.0.1:PORT/APP/KEY` for a stream path `APP/KEY`.
    pub fn rtmp_url(&self, path: &str) -> String {
        format!("rtmp://{}/{}", self.rtmp, path)
    }

    /// Waits for the server process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// Whether the server process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.is_running()
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self, context: &str) {
        if let Some(status) = self.child.try_exit() {
            panic!(
                "sluice died ({status}) {context}; stderr tail:\n{}",
                self.child.stderr().tail(60)
            );
        }
    }

    // -- HTTP ---------------------------------------------------------------

    pub fn try_get_full(&self, path: &str) -> io::Result<HttpResponse> {
        http_get(self.http, path)
    }

    pub fn get_full(&self, path: &str) -> HttpResponse {
        self.try_get_full(path).unwrap_or_else(|e| {
            panic!(
                "GET {path} on {} failed: {e}; server stderr tail:\n{}",
                self.http,
                self.child.stderr().tail(30)
            )
        })
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.get_full(path);
        (r.status, r.body)
    }

    /// `GET /api/v1/streams` as a JSON array, or what went wrong.
    pub fn try_streams(&self) -> Result<Value, String> {
        let r = self
            .try_get_full("/api/v1/streams")
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("status {} body {:?}", r.status, r.body));
        }
        let v: Value =
            serde_json::from_str(&r.body).map_err(|e| format!("not JSON ({e}): {:?}", r.body))?;
        if !v.is_array() {
            return Err(format!("not a JSON array: {v}"));
        }
        Ok(v)
    }

    /// `GET /api/v1/streams`, checked to be 200 and a JSON array.
    pub fn streams(&self) -> Value {
        self.try_streams()
            .unwrap_or_else(|e| panic!("GET /api/v1/streams: {e}"))
    }

    /// The stream object for `path` in a streams list.
    pub fn find_stream(list: &Value, path: &str) -> Option<Value> {
        list.as_array()?
            .iter()
            .find(|s| s.get("path").and_then(Value::as_str) == Some(path))
            .cloned()
    }

    /// The stream object for `path`, if listed now.
    pub fn stream(&self, path: &str) -> Option<Value> {
        Self::find_stream(&self.streams(), path)
    }

    /// Polls `/api/v1/streams` until the stream `path` is listed and
    /// `pred` holds for it; returns that object. Panics on timeout with the
    /// last state seen.
    pub fn wait_for_stream(
        &self,
        path: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_streams() {
                Ok(list) => match Self::find_stream(&list, path) {
                    Some(s) if pred(&s) => return s,
                    Some(s) => serde_json::to_string_pretty(&s).unwrap(),
                    None => format!("stream not listed; list = {list}"),
                },
                Err(e) => format!("request failed: {e}"),
            };
            if Instant::now() > deadline {
                panic!(
                    "stream {path:?} did not reach the expected state within {timeout:?}; \
                     last seen:\n{last}\nserver stderr tail:\n{}",
                    self.child.stderr().tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls (every 50 ms) until `path` is no longer listed; returns the
    /// instant it was first seen gone. Panics on timeout.
    pub fn wait_stream_gone(&self, path: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(list) = self.try_streams() {
                if Self::find_stream(&list, path).is_none() {
                    return Instant::now();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "stream {path:?} still listed after {timeout:?}: {}",
                    self.streams()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // -- metrics ------------------------------------------------------------

    pub fn metrics_text(&self) -> String {
        let r = self.get_full("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        r.body
    }

    /// Value of a Prometheus series, e.g.
    /// `sluice_rtmp_publishes_total{result="accepted"}`. Labels in the query
    /// must all match; series with extra labels are summed. `None` when no
    /// series matches.
    pub fn metric(&self, query: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), query)
    }

    /// Like `metric`, treating a missing series as 0.
    pub fn metric_or_zero(&self, query: &str) -> f64 {
        self.metric(query).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `pred` holds for the value of `query` (a
    /// missing series is passed as `None`). Returns the value.
    pub fn wait_metric(
        &self,
        query: &str,
        pred: impl Fn(Option<f64>) -> bool,
        timeout: Duration,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self
                .try_get_full("/metrics")
                .ok()
                .filter(|r| r.status == 200);
            let v = text.as_ref().and_then(|r| metric_value(&r.body, query));
            if text.is_some() && pred(v) {
                return v;
            }
            if Instant::now() > deadline {
                let relevant: Vec<String> = text
                    .map(|r| {
                        let name = query.split('{').next().unwrap_or(query);
                        r.body
                            .lines()
                            .filter(|l| l.starts_with(name))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "metric {query} did not reach the expected value within {timeout:?}; \
                     last value {v:?}; series with that name:\n{}",
                    relevant.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // -- logs ---------------------------------------------------------------

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.child.stderr().lines()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.child.stderr().tail(n)
    }

    /// The stderr log as read so far, each line with when it was read.
    pub fn log(&self) -> &Captured {
        self.child.stderr()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.child.stderr().contains(needle)
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line containing {needle:?} within {timeout:?}; stderr tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// JSON log lines whose fields equal all of `fields` (string values).
    pub fn log_json_matching(&self, fields: &[(&str, &str)]) -> Vec<Value> {
        self.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                fields
                    .iter()
                    .all(|(k, want)| log_field(v, k).and_then(Value::as_str) == Some(*want))
            })
            .collect()
    }

    /// sluice's open fds, live tokio tasks and resident memory, from the
    /// gauges `/metrics` reads at scrape time.
    pub fn usage(&self) -> Usage {
        let text = self.metrics_text();
        let m = |q: &str| metric_value(&text, q).unwrap_or_else(|| panic!("{q} missing"));
        Usage {
            fds: m("sluice_process_open_fds"),
            tasks: m("sluice_tokio_alive_tasks"),
            rss_mib: m("sluice_process_resident_memory_bytes") / (1024.0 * 1024.0),
        }
    }

    /// After a hostile case: waits (up to 30 s: memory is given back at the
    /// first quiet 5-s tick after a burst) until fds and tasks are back
    /// at `base` (+2 for timers and sockets of the run in flight) and RSS is
    /// within 16 MiB of it (the allocator keeps some of what it freed), and
    /// prints the figures.
    pub fn wait_usage_back(&self, base: Usage, case: &str) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.usage();
            if now.fds <= base.fds + 2.0
                && now.tasks <= base.tasks + 2.0
                && now.rss_mib <= base.rss_mib + 16.0
            {
                println!("{case}: {now} (baseline {base})");
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{case}: {now} did not return to the baseline {base}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a JSON log line whose fields equal all of `fields`.
    pub fn wait_log_fields(&self, fields: &[(&str, &str)], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.log_json_matching(fields).into_iter().next() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no JSON log line with fields {fields:?} within {timeout:?}; stderr tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// SRT
impl Sluice {
    /// The SRT listener's bound UDP address, from the `listening` line.
    pub fn srt_addr(&self) -> SocketAddr {
        log_field(&self.listening_line, "srt_addr")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("listening line lacks srt_addr: {}", self.listening_line))
    }

    /// `srt://127.0.0.1:PORT?streamid=STREAMID` (plus `&EXTRA` when given).
    pub fn srt_url(&self, streamid: &str, extra: &str) -> String {
        let mut url = format!("srt://{}?streamid={streamid}", self.srt_addr());
        if !extra.is_empty() {
            url.push('&');
            url.push_str(extra);
        }
        url
    }
}

// Config reload
impl Sluice {
    /// The file given with `--config` (the server must have been started
    /// with a config).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.join("sluice.toml")
    }

    /// Replace the config file's content (read at the next reload), at
    /// once: written beside it and renamed over it, so that a reload still
    /// running from an earlier step never reads a half-written file (an
    /// empty one is the open zero config).
    pub fn write_config(&self, config_toml: &str) {
        let tmp = self.dir.join("sluice.toml.new");
        fs::write(&tmp, config_toml).expect("write the new config");
        fs::rename(&tmp, self.config_path()).expect("replace the config");
    }

    /// The JSON log lines a config reload ended with so far.
    fn reload_lines(&self) -> Vec<Value> {
        self.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                matches!(
                    log_field(v, "message").and_then(Value::as_str),
                    Some("config reloaded" | "config not reloaded")
                )
            })
            .collect()
    }

    /// Send SIGHUP and wait for the reload's log line (`config reloaded`
    /// or `config not reloaded`), which it returns.
    pub fn sighup(&self) -> Value {
        let before = self.reload_lines().len();
        let st = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.reload_lines().into_iter().nth(before) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no reload log line after SIGHUP; stderr tail:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /api/v1/config/reload` with extra `headers`.
    pub fn post_reload(&self, headers: &[(&str, &str)]) -> HttpResponse {
        super::http::http_request_with(
            self.http,
            "POST",
            "/api/v1/config/reload",
            headers,
            Duration::from_secs(30),
        )
        .expect("POST /api/v1/config/reload")
    }
}
