//! Shared harness for sluice's integration tests.
//!
//! Every test starts its own `sluice` process on ephemeral ports, talks to it
//! over real sockets (a tiny HTTP/1.0 client, an independent RTMP client in
//! `rtmp_client`) and drives real encoders (`ffmpeg`, `gst-launch-1.0`) as
//! child processes. Every child is owned by a guard whose `Drop` kills its
//! whole process group and reaps it, so a failing test leaves nothing behind.

#![allow(dead_code)]

pub mod flv;
pub mod rtmp_client;
pub mod srt_packets;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long the server may take to print its `listening` line.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A uniquely named directory under `std::env::temp_dir()`, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Lines read from a child's pipe by a background thread.
#[derive(Clone, Default)]
pub struct Captured {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Captured {
    fn spawn_reader<R: Read + Send + 'static>(reader: R, label: String) -> Captured {
        let captured = Captured::default();
        let lines = captured.lines.clone();
        std::thread::Builder::new()
            .name(format!("capture-{label}"))
            .spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf)
                                .trim_end_matches(['\r', '\n'])
                                .to_string();
                            lines.lock().unwrap().push(line);
                        }
                    }
                }
            })
            .expect("spawn capture thread");
        captured
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

/// A child process that is killed (its whole process group) and reaped on
/// drop. stdout and stderr are captured line by line.
pub struct ChildGuard {
    name: String,
    child: Child,
    pid: u32,
    stdout: Captured,
    stderr: Captured,
    exit: Option<(ExitStatus, Instant)>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group with stdin closed and stdout and
    /// stderr captured. Panics with a clear message when the program is
    /// missing.
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id();
        let stdout = Captured::spawn_reader(child.stdout.take().unwrap(), format!("{name}-out"));
        let stderr = Captured::spawn_reader(child.stderr.take().unwrap(), format!("{name}-err"));
        ChildGuard {
            name: name.to_string(),
            child,
            pid,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout(&self) -> &Captured {
        &self.stdout
    }

    pub fn stderr(&self) -> &Captured {
        &self.stderr
    }

    /// Non-blocking: the exit status if the child has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some((status, _)) = self.exit {
            return Some(status);
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some((status, Instant::now()));
                Some(status)
            }
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// When the exit was first observed (polling every 10 ms).
    pub fn exit_instant(&self) -> Option<Instant> {
        self.exit.map(|(_, t)| t)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit or panics with the tail of stderr.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) still running after {timeout:?}; stderr tail:\n{}",
                self.name,
                self.pid,
                self.stderr.tail(40)
            ),
        }
    }

    /// Kills the whole process group and reaps the child.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            // The leader is not reaped yet, so the group id is still ours.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{}", self.pid))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some((status, Instant::now()));
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of a program in PATH, or a panic that says what to install.
pub fn require_program(name: &str, package_hint: &str) -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("required program `{name}` is not installed (install {package_hint})");
}

/// Runs a command to completion (with a timeout) and returns
/// (exit status, stdout, stderr).
pub fn run_to_exit(name: &str, cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut guard = ChildGuard::spawn(name, cmd);
    let status = guard.expect_exit(timeout);
    // Give the capture threads a moment to drain the pipes after exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = (usize::MAX, usize::MAX);
    loop {
        let now = (guard.stdout.lines().len(), guard.stderr.lines().len());
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(50));
    }
    (status, guard.stdout.text(), guard.stderr.text())
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

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

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
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
        let dir = TempDir::new("server");
        let mut cmd = sluice_command();
        if let Some(cfg) = config_toml {
            let path = dir.join("sluice.toml");
            fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(&args);
        let mut child = ChildGuard::spawn("sluice", cmd);
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

    fn try_streams(&self) -> Result<Value, String> {
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

    fn find_stream(list: &Value, path: &str) -> Option<Value> {
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

// ---------------------------------------------------------------------------
// A tiny HTTP client
// ---------------------------------------------------------------------------

/// `GET path` over a fresh connection with HTTP/1.0 semantics
/// (`Connection: close`); decodes a chunked body if the server sends one.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_request(addr, "GET", path, Duration::from_secs(10))
}

/// One HTTP/1.0 request without a body (GET, POST, ...).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n"
    )?;
    s.flush()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let _ = s.shutdown(Shutdown::Both);
    parse_http_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = decode_chunked(&body)?;
    } else if let Some((_, len)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if body.len() < len {
            return Err(format!("body truncated: {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: no chunk size line")?;
        let size_str = String::from_utf8_lossy(&data[..eol]).to_string();
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| format!("chunked body: bad size {size_str:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunked body: truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Prometheus text parsing
// ---------------------------------------------------------------------------

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric name, its labels, and the unparsed rest of the line.
type Series<'a> = (String, Vec<(String, String)>, &'a str);

/// Parses `name{a="b",c="d"}` (labels optional); returns the rest of input.
fn parse_series(s: &str) -> Result<Series<'_>, String> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let name = s[..name_end].to_string();
    if name.is_empty() {
        return Err(format!("no metric name in {s:?}"));
    }
    let mut rest = &s[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("bad labels in {s:?}"))?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start();
            let r = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("unquoted label value in {s:?}"))?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c2)) => value.push(c2),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
            rest = &r[end + 1..];
            labels.push((key, value));
        }
    }
    Ok((name, labels, rest))
}

/// Parses Prometheus text exposition format (comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (name, labels, rest) = parse_series(l).ok()?;
            let v = rest.split_whitespace().next()?;
            let value = match v {
                "+Inf" | "Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().ok()?,
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// Sum of the series named in `query` whose labels include the query's.
pub fn metric_value(text: &str, query: &str) -> Option<f64> {
    let (qname, qlabels, _) =
        parse_series(query).unwrap_or_else(|e| panic!("bad metric query {query:?}: {e}"));
    let mut found = None;
    for s in parse_prometheus(text) {
        if s.name != qname {
            continue;
        }
        if qlabels
            .iter()
            .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Encoders: ffmpeg and GStreamer
// ---------------------------------------------------------------------------

pub fn require_ffmpeg() -> PathBuf {
    require_program("ffmpeg", "the `ffmpeg` Debian package")
}

/// Starts `ffmpeg -hide_banner -nostdin -y ARGS` as a guarded child.
pub fn spawn_ffmpeg(args: &[&str]) -> ChildGuard {
    let bin = require_ffmpeg();
    let mut cmd = Command::new(bin);
    cmd.args(["-hide_banner", "-nostdin", "-y"]).args(args);
    ChildGuard::spawn("ffmpeg", cmd)
}

/// The last `frame=N` progress value ffmpeg printed (frames it encoded).
pub fn ffmpeg_frame_count(stderr: &str) -> Option<u64> {
    let text = stderr.replace('\r', "\n");
    let mut last = None;
    let mut rest = text.as_str();
    while let Some(i) = rest.find("frame=") {
        rest = &rest[i + 6..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            last = Some(n);
        }
    }
    last
}

/// Panics with a message naming the element when a GStreamer element is
/// not installed (so a missing plugin never makes a test pass silently).
pub fn require_gst_element(element: &str, package_hint: &str) {
    let bin = require_program("gst-inspect-1.0", "gstreamer1.0-tools");
    let out = Command::new(bin)
        .arg("--exists")
        .arg(element)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gst-inspect-1.0: {e}"));
    if !out.status.success() {
        panic!("GStreamer element `{element}` is not installed (install {package_hint})");
    }
}

/// Starts `gst-launch-1.0 -q PIPELINE...` (one argv word per pipeline token)
/// as a guarded child.
pub fn spawn_gst_launch(pipeline: &[String]) -> ChildGuard {
    let bin = require_program("gst-launch-1.0", "gstreamer1.0-tools");
    let mut cmd = Command::new(bin);
    cmd.arg("-q").args(pipeline);
    ChildGuard::spawn("gst-launch-1.0", cmd)
}

// ---------------------------------------------------------------------------
// Fixtures made with ffmpeg
// ---------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("sluice-test-fixtures-v1");
    fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

/// Makes `name` in the shared fixture directory by running ffmpeg with
/// `args` followed by the output path. Made once per test process (and
/// reused across processes: files appear by atomic rename only).
pub fn ffmpeg_fixture(name: &str, args: &[&str]) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = made.get(name) {
        return p.clone();
    }
    let path = fixture_dir().join(name);
    if !path.is_file() {
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = fixture_dir().join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut full: Vec<&str> = vec!["-loglevel", "error"];
        full.extend_from_slice(args);
        let tmp_str = tmp.to_str().expect("utf-8 temp path");
        full.push(tmp_str);
        let mut ff = spawn_ffmpeg(&full);
        let status = ff.expect_exit(Duration::from_secs(180));
        if !status.success() {
            let _ = fs::remove_file(&tmp);
            panic!(
                "ffmpeg could not make fixture {name} ({status}); args {full:?}; stderr:\n{}",
                ff.stderr().tail(40)
            );
        }
        fs::rename(&tmp, &path).expect("rename fixture");
    }
    made.insert(name.to_string(), path.clone());
    path
}

/// Splits an ffmpeg argument string on whitespace.
fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// FLV with 640x360 @ 30 fps H.264 (libx264 veryfast, B-frames on, GOP 60)
/// and AAC-LC 48 kHz stereo, `secs` seconds long.
pub fn fixture_avc_aac(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i testsrc2=size=640x360:rate=30 \
         -f lavfi -i sine=frequency=440:sample_rate=48000 -t {secs} \
         -c:v libx264 -preset veryfast -bf 3 -g 60 -pix_fmt yuv420p \
         -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv"
    );
    ffmpeg_fixture(&format!("avc_aac_640x360_30fps_{secs}s.flv"), &words(&args))
}

/// FLV with AAC-LC 48 kHz stereo only, `secs` seconds long.
pub fn fixture_aac_only(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i sine=frequency=440:sample_rate=48000 -t {secs} \
         -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv"
    );
    ffmpeg_fixture(&format!("aac_48k_stereo_{secs}s.flv"), &words(&args))
}

/// Raw HEVC (Annex B) 640x360 @ 30 fps from libx265, no B-frames, one
/// slice per picture, GOP 60, `secs` seconds long.
pub fn fixture_hevc_annexb(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i testsrc2=size=640x360:rate=30 -t {secs} \
         -c:v libx265 -preset ultrafast \
         -x265-params bframes=0:keyint=60:min-keyint=60:scenecut=0:log-level=error \
         -pix_fmt yuv420p -f hevc"
    );
    ffmpeg_fixture(&format!("hevc_640x360_30fps_{secs}s.hevc"), &words(&args))
}

// ---------------------------------------------------------------------------
// Raw sockets for hostile tests
// ---------------------------------------------------------------------------

/// How a socket was seen to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset(String),
}

/// A TCP connection with generous timeouts and Nagle off.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes all of `data`, reporting (not panicking on) a closed peer.
pub fn write_ignoring_close(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    s.write_all(data)
}

/// Reads and discards until the peer closes (EOF or reset). Returns how it
/// closed, or an error message if it was still open after `timeout`.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Result<Closed, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16384];
    let mut received = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "connection still open after {timeout:?} ({received} bytes received meanwhile)"
            ));
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Ok(Closed::Eof),
            Ok(n) => received += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(Closed::Reset(e.to_string())),
        }
    }
}

/// Polls `cond` every 50 ms until true or `timeout`; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Assertions on the streams API
// ---------------------------------------------------------------------------

pub fn json_f64(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

pub fn json_str<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Whether `actual` is within `pct` percent of `expected`.
pub fn within_pct(actual: f64, expected: f64, pct: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * pct / 100.0
}

/// Expected video/audio properties of a published stream.
#[derive(Debug, Clone)]
pub struct Expect {
    pub app: String,
    pub key: String,
    pub video: Option<(&'static str, u64, u64, f64)>,
    pub audio: Option<(&'static str, u64, u64)>,
}

impl Expect {
    pub fn new(path: &str) -> Expect {
        let (app, key) = path.split_once('/').expect("path is APP/KEY");
        Expect {
            app: app.into(),
            key: key.into(),
            video: None,
            audio: None,
        }
    }

    /// Video codec name, width, height, fps.
    pub fn video(mut self, codec: &'static str, w: u64, h: u64, fps: f64) -> Self {
        self.video = Some((codec, w, h, fps));
        self
    }

    /// Audio codec name, sample rate, channels.
    pub fn audio(mut self, codec: &'static str, rate: u64, channels: u64) -> Self {
        self.audio = Some((codec, rate, channels));
        self
    }

    /// Every mismatch between `s` (a stream object) and the expectation.
    pub fn mismatches(&self, s: &Value) -> Vec<String> {
        let mut bad = Vec::new();
        let path = format!("{}/{}", self.app, self.key);
        let mut check = |ok: bool, what: String| {
            if !ok {
                bad.push(what);
            }
        };
        check(
            json_str(s, "/path") == Some(path.as_str()),
            format!("path != {path}"),
        );
        check(
            json_str(s, "/app") == Some(self.app.as_str()),
            format!("app != {}", self.app),
        );
        check(
            json_str(s, "/key") == Some(self.key.as_str()),
            format!("key != {}", self.key),
        );
        check(
            json_str(s, "/state") == Some("live"),
            "state != live".into(),
        );
        check(
            json_f64(s, "/uptime_seconds").is_some_and(|u| u >= 0.0),
            "uptime_seconds not a number >= 0".into(),
        );
        check(
            json_f64(s, "/ingest_bitrate_bps").is_some_and(|b| b > 0.0),
            "ingest_bitrate_bps not > 0".into(),
        );
        check(
            json_f64(s, "/bytes_in").is_some_and(|b| b > 0.0),
            "bytes_in not > 0".into(),
        );
        check(
            json_f64(s, "/timestamp_jumps") == Some(0.0),
            "timestamp_jumps != 0".into(),
        );
        let renditions_ok = s
            .get("renditions")
            .and_then(Value::as_array)
            .is_some_and(|r| {
                r.iter().any(|x| {
                    json_str(x, "/name") == Some("source") && json_f64(x, "/players").is_some()
                })
            });
        check(
            renditions_ok,
            "renditions lacks {name:source, players:N}".into(),
        );
        match self.video {
            Some((codec, w, h, fps)) => {
                check(
                    json_str(s, "/codecs/video") == Some(codec),
                    format!("codecs.video != {codec}"),
                );
                check(
                    json_f64(s, "/width") == Some(w as f64),
                    format!("width != {w}"),
                );
                check(
                    json_f64(s, "/height") == Some(h as f64),
                    format!("height != {h}"),
                );
                check(
                    json_f64(s, "/fps").is_some_and(|f| within_pct(f, fps, 10.0)),
                    format!("fps not within 10% of {fps}"),
                );
                check(
                    json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
                    "frames_in.video not > 0".into(),
                );
            }
            None => {
                check(
                    s.pointer("/codecs/video") == Some(&Value::Null),
                    "codecs.video not null".into(),
                );
                check(
                    s.get("width") == Some(&Value::Null),
                    "width not null".into(),
                );
                check(
                    s.get("height") == Some(&Value::Null),
                    "height not null".into(),
                );
                check(s.get("fps") == Some(&Value::Null), "fps not null".into());
            }
        }
        match self.audio {
            Some((codec, rate, ch)) => {
                check(
                    json_str(s, "/codecs/audio") == Some(codec),
                    format!("codecs.audio != {codec}"),
                );
                check(
                    json_f64(s, "/audio/sample_rate") == Some(rate as f64),
                    format!("audio.sample_rate != {rate}"),
                );
                check(
                    json_f64(s, "/audio/channels") == Some(ch as f64),
                    format!("audio.channels != {ch}"),
                );
                check(
                    json_f64(s, "/frames_in/audio").is_some_and(|n| n > 0.0),
                    "frames_in.audio not > 0".into(),
                );
            }
            None => {
                check(
                    s.pointer("/codecs/audio") == Some(&Value::Null),
                    "codecs.audio not null".into(),
                );
                check(
                    s.get("audio") == Some(&Value::Null),
                    "audio not null".into(),
                );
            }
        }
        bad
    }

    /// Waits until the stream is listed and matches; panics with the
    /// mismatches and the last object seen otherwise.
    pub fn wait(&self, server: &Sluice, timeout: Duration) -> Value {
        let path = format!("{}/{}", self.app, self.key);
        let deadline = Instant::now() + timeout;
        loop {
            let found = server
                .try_streams()
                .ok()
                .and_then(|l| Sluice::find_stream(&l, &path));
            if let Some(s) = &found {
                let bad = self.mismatches(s);
                if bad.is_empty() {
                    return s.clone();
                }
                if Instant::now() > deadline {
                    panic!(
                        "stream {path} never matched within {timeout:?}: {bad:?}\nlast object:\n{}",
                        serde_json::to_string_pretty(s).unwrap()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "stream {path} not listed within {timeout:?}; list: {:?}; server stderr:\n{}",
                    server.try_streams(),
                    server.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

// ---------------------------------------------------------------------------
// SRT
// ---------------------------------------------------------------------------

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

/// What a test webhook received: every JSON body, in order.
pub type WebhookLog = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// An HTTP webhook on loopback for authorization tests: each POSTed JSON
/// body is logged and answered with the status `rule` gives, after its
/// delay. Returns the port.
pub fn webhook_server(rule: fn(&Value) -> (u16, Duration)) -> (u16, WebhookLog) {
    serve_webhook(rule, None)
}

/// Like [`webhook_server`], over TLS with `tls` (an `https://` webhook).
pub fn webhook_server_tls(
    rule: fn(&Value) -> (u16, Duration),
    tls: Arc<rustls::ServerConfig>,
) -> (u16, WebhookLog) {
    serve_webhook(rule, Some(tls))
}

fn serve_webhook(
    rule: fn(&Value) -> (u16, Duration),
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, WebhookLog) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: WebhookLog = Default::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { continue };
            let log = log.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                None => answer_webhook(s, &log, rule),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    answer_webhook(rustls::StreamOwned::new(conn, s), &log, rule)
                }
            });
        }
    });
    (port, seen)
}

fn answer_webhook(mut s: impl Read + Write, log: &WebhookLog, rule: fn(&Value) -> (u16, Duration)) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    // Headers, then Content-Length bytes of body.
    let body = loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break body.to_string();
            }
        }
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(v.clone());
    let (status, delay) = rule(&v);
    std::thread::sleep(delay);
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
    let _ = s.write_all(answer.as_bytes());
    let _ = s.flush();
}
