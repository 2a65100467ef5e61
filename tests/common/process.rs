//! Child processes and temporary directories that clean up after themselves:
//! every child is owned by a guard whose `Drop` kills and reaps it, so a
//! failing test (or a benchmark that panics) leaves nothing behind.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs()
}

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

/// Lines read from a child's pipe by a background thread, each with the
/// instant the reader saw it.
#[derive(Clone, Default)]
pub struct Captured {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Captured {
    /// Reads `reader` to its end on a thread of its own. A line ends at
    /// `\n` (a trailing `\r` dropped) or, with `split_cr`, at `\r` too:
    /// progress lines that rewrite themselves (ffplay's status line) then
    /// arrive one by one instead of with the next newline; empty lines are
    /// skipped in that mode.
    fn spawn_reader<R: Read + Send + 'static>(
        reader: R,
        label: String,
        split_cr: bool,
    ) -> Captured {
        let captured = Captured::default();
        let lines = captured.lines.clone();
        std::thread::Builder::new()
            .name(format!("capture-{label}"))
            .spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut line = Vec::new();
                let push = |line: &mut Vec<u8>, at: Instant| {
                    let text = String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_string();
                    line.clear();
                    if !(split_cr && text.is_empty()) {
                        lines.lock().unwrap().push((at, text));
                    }
                };
                loop {
                    let buf = match reader.fill_buf() {
                        Ok([]) | Err(_) => break,
                        Ok(buf) => buf,
                    };
                    let at = Instant::now();
                    let n = buf.len();
                    for &b in buf {
                        if b == b'\n' || (split_cr && b == b'\r') {
                            push(&mut line, at);
                        } else {
                            line.push(b);
                        }
                    }
                    reader.consume(n);
                }
                if !line.is_empty() {
                    push(&mut line, Instant::now());
                }
            })
            .expect("spawn capture thread");
        captured
    }

    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Every line with the instant it was read, from index `from` on.
    pub fn timed_lines(&self, from: usize) -> Vec<(Instant, String)> {
        let lines = self.lines.lock().unwrap();
        lines.get(from..).unwrap_or_default().to_vec()
    }

    /// How many lines were read so far.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        let tail: Vec<&str> = lines[start..].iter().map(|(_, l)| l.as_str()).collect();
        tail.join("\n")
    }
}

/// A child process that is killed (with its whole process group, unless
/// spawned in the foreground) and reaped on drop. stdout and stderr are
/// captured line by line.
pub struct ChildGuard {
    name: String,
    child: Child,
    pid: u32,
    /// Whether the child leads its own process group.
    own_group: bool,
    stdout: Captured,
    stderr: Captured,
    exit: Option<(ExitStatus, Instant)>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group with stdin closed and stdout and
    /// stderr captured. Panics with a clear message when the program is
    /// missing.
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        cmd.process_group(0);
        Self::spawn_in_group(name, cmd, true, false)
    }

    /// Like [`ChildGuard::spawn`], but the child stays in our process group,
    /// so a Ctrl-C at the terminal stops it too: for the benches, which run
    /// for minutes in a terminal (a killed process runs no `Drop`). Only the
    /// child itself is killed on drop.
    pub fn spawn_foreground(name: &str, cmd: Command) -> ChildGuard {
        Self::spawn_in_group(name, cmd, false, false)
    }

    /// Like [`ChildGuard::spawn_foreground`], with output lines also ended
    /// by `\r` (see [`Captured`]): for players a bench times line by line.
    pub fn spawn_foreground_split_cr(name: &str, cmd: Command) -> ChildGuard {
        Self::spawn_in_group(name, cmd, false, true)
    }

    fn spawn_in_group(name: &str, mut cmd: Command, own_group: bool, split_cr: bool) -> ChildGuard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id();
        let stdout = Captured::spawn_reader(
            child.stdout.take().unwrap(),
            format!("{name}-out"),
            split_cr,
        );
        let stderr = Captured::spawn_reader(
            child.stderr.take().unwrap(),
            format!("{name}-err"),
            split_cr,
        );
        ChildGuard {
            name: name.to_string(),
            child,
            pid,
            own_group,
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

    /// Kills the whole process group (or only the child, when it shares
    /// ours) and reaps the child.
    pub fn kill(&mut self) {
        if self.exit.is_none() && self.own_group {
            // The leader is not reaped yet, so the group id is still ours.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{}", self.pid))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.exit.is_none() {
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
