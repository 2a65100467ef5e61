//! Helpers shared by the load tools in `benches/`. Child processes, the
//! sluice harness, HTTP, Prometheus parsing, ffmpeg fixtures, FLV files and
//! the RTMP publisher are the integration tests' own modules from
//! `tests/common`, included by path; what is here is bench-only: the
//! release binary, the 720p fixture, a looping publisher, per-process CPU
//! from /proc, video frames recognised by content ([`frames`]) and an
//! in-process SRT player ([`srt_player`]).

// Each bench uses part of the test helpers.
#[allow(dead_code)]
#[path = "../../tests/common/flv.rs"]
pub mod flv;
#[allow(dead_code)]
pub mod frames;
#[allow(dead_code)]
#[path = "../../tests/common/harness.rs"]
pub mod harness;
#[allow(dead_code)]
#[path = "../../tests/common/http.rs"]
pub mod http;
#[allow(dead_code)]
#[path = "../../tests/common/media.rs"]
pub mod media;
#[allow(dead_code)]
#[path = "../../tests/common/process.rs"]
pub mod process;
#[allow(dead_code)]
#[path = "../../tests/common/prometheus.rs"]
pub mod prometheus;
#[allow(dead_code)]
#[path = "../../tests/common/redis.rs"]
pub mod redis;
#[allow(dead_code)]
#[path = "../../tests/common/rtmp_client.rs"]
pub mod rtmp_client;
#[allow(dead_code)]
pub mod srt_player;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::Sluice;
use media::{ffmpeg_fixture, publish_fixture_command, PublishFor};
use process::ChildGuard;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release `sluice`, built first unless `build` is false.
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
/// with the test fixtures.
pub fn fixture() -> PathBuf {
    let args = "-f lavfi -i testsrc2=size=1280x720:rate=30 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 10 \
        -vf noise=alls=12:allf=t -c:v libx264 -preset veryfast -bf 3 \
        -b:v 3M -maxrate 3M -bufsize 3M -g 60 -keyint_min 60 -sc_threshold 0 \
        -pix_fmt yuv420p -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv";
    let args: Vec<&str> = args.split_whitespace().collect();
    ffmpeg_fixture("h264_aac_1280x720_30fps_3M_10s.flv", &args)
}

/// Publishes `fixture` to the stream `path` of `server` in real time, in a
/// loop, until the returned guard is dropped.
#[allow(dead_code)] // ingest_latency publishes from its own clients
pub fn publish_looped(server: &Sluice, fixture: &Path, path: &str) -> ChildGuard {
    let cmd = publish_fixture_command(fixture, &server.rtmp_url(path), PublishFor::Forever);
    ChildGuard::spawn_foreground("ffmpeg publisher", cmd)
}

/// Wait until the stream has a keyframe in its cache.
#[allow(dead_code)] // the latency benches
pub fn wait_live(server: &Sluice, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if server
            .stream(path)
            .and_then(|s| s.get("keyframes_in").and_then(|k| k.as_u64()))
            .is_some_and(|k| k >= 1)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics: Vec<String> = server
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("sluice_srt") && !l.starts_with('#'))
        .map(String::from)
        .collect();
    panic!(
        "{path} not live in 15 s:\n{}\n{}",
        metrics.join("\n"),
        server.log_tail(60)
    );
}

#[allow(dead_code)] // the benches that measure CPU
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
#[allow(dead_code)]
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[allow(dead_code)]
pub struct CpuProbe {
    pid: Option<u32>,
    ticks: u64,
    at: Instant,
}

#[allow(dead_code)]
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
