//! Helpers shared by the load tools in `benches/`: child processes that are
//! always reaped, the release binary, the cached 720p fixture, HTTP and
//! Prometheus scraping, and per-process CPU from /proc.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

// ---------------------------------------------------------------------------
// Child processes and temp files
// ---------------------------------------------------------------------------

/// Owns every child process; `Drop` (also during a panic) kills and reaps
/// them. Children stay in our process group, so a Ctrl-C reaches them too.
#[derive(Default)]
pub struct Children {
    pub list: Vec<(String, Child)>,
}

impl Children {
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id();
        self.list.push((name.to_string(), child));
        pid
    }

    /// Exit status of a child that has exited (by pid).
    pub fn exited(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.list
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    pub fn kill_all(&mut self) {
        for (_, c) in self.list.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.list.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sluice_binary(build: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let bin = target.join("release").join("sluice");
    if build || !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        eprintln!("bench: cargo build --release --bin sluice");
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "sluice"])
            .current_dir(manifest_dir())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release --bin sluice failed"
        );
    }
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// The 10 s 1280x720 ~3 Mbit/s H.264 + AAC FLV, encoded once and cached
/// (files appear by atomic rename only).
pub fn fixture() -> PathBuf {
    let dir = std::env::temp_dir().join("sluice-bench-fixtures-v1");
    fs::create_dir_all(&dir).expect("create fixture dir");
    let path = dir.join("h264_aac_1280x720_30fps_3M_10s.flv");
    if path.is_file() {
        return path;
    }
    let tmp = dir.join(format!(".tmp-{}.flv", std::process::id()));
    eprintln!("bench: encoding {} (once)", path.display());
    let args = "-nostdin -loglevel error -y \
        -f lavfi -i testsrc2=size=1280x720:rate=30 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 10 \
        -vf noise=alls=12:allf=t -c:v libx264 -preset veryfast -bf 3 \
        -b:v 3M -maxrate 3M -bufsize 3M -g 60 -keyint_min 60 -sc_threshold 0 \
        -pix_fmt yuv420p -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv";
    let status = Command::new("ffmpeg")
        .args(args.split_whitespace())
        .arg(&tmp)
        .stdin(Stdio::null())
        .status()
        .expect("run ffmpeg (is it installed?)");
    assert!(status.success(), "ffmpeg could not encode the fixture");
    fs::rename(&tmp, &path).expect("rename fixture");
    path
}

// ---------------------------------------------------------------------------
// HTTP, metrics, CPU
// ---------------------------------------------------------------------------

pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Sum of every series of `name` (any labels).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// A Prometheus histogram: cumulative (le, count) pairs, sum, count.
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

pub fn parse_histogram(text: &str, name: &str) -> Histogram {
    let mut by_le: HashMap<String, f64> = HashMap::new();
    let bucket = format!("{name}_bucket{{");
    for l in text.lines().filter(|l| l.starts_with(&bucket)) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_le.entry(le.to_string()).or_default() += v;
    }
    let mut buckets: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, v)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (le, v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Histogram {
        buckets,
        sum: metric_sum(text, &format!("{name}_sum")),
        count: metric_sum(text, &format!("{name}_count")),
    }
}

impl Histogram {
    /// Like PromQL's histogram_quantile: linear inside the bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let span = c - prev.1;
                let frac = if span > 0.0 {
                    (rank - prev.1) / span
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in ticks (`pid` None: this process).
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub struct CpuProbe {
    pid: Option<u32>,
    ticks: u64,
    at: Instant,
}

impl CpuProbe {
    pub fn start(pid: Option<u32>) -> CpuProbe {
        CpuProbe {
            pid,
            ticks: cpu_ticks(pid).unwrap_or(0),
            at: Instant::now(),
        }
    }

    /// CPU % of one core since `start`.
    pub fn percent(&self, hz: f64) -> f64 {
        let t = cpu_ticks(self.pid).unwrap_or(self.ticks);
        let secs = self.at.elapsed().as_secs_f64().max(1e-6);
        (t.saturating_sub(self.ticks)) as f64 / hz / secs * 100.0
    }
}

// ---------------------------------------------------------------------------
// sluice and the publisher
// ---------------------------------------------------------------------------

pub struct Server {
    pub pid: u32,
    pub http: SocketAddr,
    pub srt: SocketAddr,
    pub rtmp: SocketAddr,
    pub log_tail: Arc<Mutex<Vec<String>>>,
}

pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key)
        .or_else(|| v.get("fields").and_then(|f| f.get(key)))
}

pub fn start_sluice(children: &mut Children, bin: &Path, dir: &Path, config: &str) -> Server {
    let cfg = dir.join("sluice.toml");
    fs::write(&cfg, config).expect("write config");
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&cfg)
        .args([
            "--rtmp-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--srt-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let pid = children.spawn("sluice", cmd);
    let stderr = children
        .list
        .last_mut()
        .and_then(|(_, c)| c.stderr.take())
        .expect("sluice stderr");
    let log_tail = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std_mpsc::channel::<Value>();
    let tail = log_tail.clone();
    // Keeps draining stderr so sluice never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) {
                        if field(&v, "message").and_then(Value::as_str) == Some("listening") {
                            let _ = tx.send(v);
                        }
                    }
                    let mut t = tail.lock().unwrap();
                    t.push(line.trim_end().to_string());
                    if t.len() > 200 {
                        t.drain(..100);
                    }
                }
            }
        }
    });
    let v = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "sluice printed no `listening` line; stderr:\n{}",
                log_tail.lock().unwrap().join("\n")
            )
        });
    let addr = |k: &str| -> SocketAddr {
        field(&v, k)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("listening line lacks {k}: {v}"))
    };
    Server {
        pid,
        http: addr("http_addr"),
        srt: addr("srt_addr"),
        rtmp: addr("rtmp_addr"),
        log_tail,
    }
}
