//! Transcoding benchmark: how fast renditions start, what the relay itself
//! spends on a transcoded stream, and how many 720p transcodes this machine
//! keeps in real time.
//!
//! `cargo bench --bench transcode -- [--joins 10] [--cpu-secs 20]
//! [--streams 1,2,3] [--step-secs 20] [--no-build]`
//!
//! It builds the release `sluice`, starts it on loopback with an application
//! `abr` (renditions 720p + 480p, x264), `one` (a single 720p rendition) and
//! `plain` (no renditions), and publishes the cached 1280x720 30 fps 3 Mbit/s
//! H.264 + AAC fixture with `ffmpeg -re -stream_loop -1 -c copy`:
//!
//! * first IDR: publish accepted → each rendition's first IDR back from
//!   FFmpeg (sluice's `rendition ready` log line), over `--joins` publishes;
//! * relay CPU: sluice's own CPU (FFmpeg is a separate process and not
//!   counted) with one `abr` stream versus one `plain` stream;
//! * capacity: N concurrent `one` streams; a step is real time when every
//!   FFmpeg reports speed >= 0.97, every rendition delivers >= 28.5 fps (95 %) and no
//!   input frame was dropped.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::harness::{log_field, Sluice};
use common::process::{poll_until, ChildGuard};
use common::prometheus::metric_value;
use common::*;
use serde_json::Value;

const CONFIG: &str = r#"
[transcode]
encoder = "x264"

[[apps.abr.renditions]]
name = "720p"
height = 720
video_bitrate = "2500k"

[[apps.abr.renditions]]
name = "480p"
height = 480
video_bitrate = "1000k"

[[apps.one.renditions]]
name = "720p"
height = 720
video_bitrate = "2500k"

# Applications are refused unless configured once any is.
[apps.plain]
"#;

struct Opts {
    joins: usize,
    cpu_secs: f64,
    streams: Vec<usize>,
    step_secs: f64,
    build: bool,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            joins: 10,
            cpu_secs: 20.0,
            streams: vec![1, 2, 3],
            step_secs: 20.0,
            build: true,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let next = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
            match args[i].as_str() {
                "--joins" => o.joins = next(i).parse().expect("--joins N"),
                "--cpu-secs" => o.cpu_secs = next(i).parse().expect("--cpu-secs S"),
                "--step-secs" => o.step_secs = next(i).parse().expect("--step-secs S"),
                "--streams" => {
                    o.streams = next(i)
                        .split(',')
                        .map(|s| s.parse().expect("--streams 1,2,3"))
                        .collect()
                }
                "--no-build" => {
                    o.build = false;
                    i += 1;
                    continue;
                }
                // cargo bench passes --bench
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        o
    }
}

fn streams(server: &Sluice) -> Vec<Value> {
    server
        .try_streams()
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(poll_until(timeout, f), "timed out waiting for {what}");
}

/// `/metrics` now, or nothing when the scrape fails.
fn metrics(server: &Sluice) -> String {
    server
        .try_get_full("/metrics")
        .map(|r| r.body)
        .unwrap_or_default()
}

/// `first_idr_ms` of every `rendition ready` line for `stream` seen so far.
fn first_idrs(server: &Sluice, stream: &str) -> Vec<(String, f64)> {
    server
        .log_json_matching(&[("message", "rendition ready"), ("stream", stream)])
        .iter()
        .filter_map(|v| {
            Some((
                log_field(v, "rendition")?.as_str()?.to_string(),
                log_field(v, "first_idr_ms")?.as_f64()?,
            ))
        })
        .collect()
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// CPU ticks of every child of `pid` (the FFmpeg processes).
fn children_ticks(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += t(11) + t(12);
        }
    }
    total
}

fn main() {
    let opts = Opts::parse();
    let hz = clock_ticks();
    let bin = sluice_binary(opts.build);
    let flv = fixture();
    let server = Sluice::start_foreground(&bin, CONFIG);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("transcode bench: {cores} cores, fixture 1280x720 30 fps 3 Mbit/s H.264 + AAC, x264 veryfast");

    // 1. Publish → first IDR per rendition.
    let mut idr: HashMap<String, Vec<f64>> = HashMap::new();
    for i in 0..opts.joins {
        let path = format!("abr/j{i}");
        let publisher = publish_looped(&server, &flv, &path);
        wait_until("two renditions ready", Duration::from_secs(15), || {
            first_idrs(&server, &path).len() >= 2
        });
        for (r, ms) in first_idrs(&server, &path) {
            idr.entry(r).or_default().push(ms);
        }
        drop(publisher);
        wait_until("stream gone", Duration::from_secs(10), || {
            !streams(&server).iter().any(|s| s["path"] == path.as_str())
        });
    }
    println!(
        "\npublish accepted -> first IDR read back ({} publishes):",
        opts.joins
    );
    println!("  rendition     p50 ms   p95 ms   max ms");
    let mut names: Vec<_> = idr.keys().cloned().collect();
    names.sort();
    for n in names {
        let v = idr.get_mut(&n).unwrap();
        v.sort_by(f64::total_cmp);
        println!(
            "  {n:<10} {:>9.0} {:>8.0} {:>8.0}",
            pct(v, 0.5),
            pct(v, 0.95),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }

    // 2. Relay CPU: one transcoded stream versus one plain stream.
    let mut relay_cpu = Vec::new();
    for (app, label) in [
        ("plain", "no renditions"),
        ("abr", "720p + 480p renditions"),
    ] {
        let path = format!("{app}/cpu");
        let publisher = publish_looped(&server, &flv, &path);
        wait_until("stream live", Duration::from_secs(15), || {
            streams(&server).iter().any(|s| s["path"] == path.as_str())
        });
        std::thread::sleep(Duration::from_secs(3));
        let probe = CpuProbe::start(Some(server.pid()));
        let ff0 = children_ticks(server.pid());
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(opts.cpu_secs));
        let sluice_pct = probe.percent(hz);
        let ff_pct = (children_ticks(server.pid()).saturating_sub(ff0)) as f64
            / hz
            / t0.elapsed().as_secs_f64()
            * 100.0;
        relay_cpu.push((label, sluice_pct, ff_pct));
        drop(publisher);
        wait_until("stream gone", Duration::from_secs(10), || {
            !streams(&server).iter().any(|s| s["path"] == path.as_str())
        });
    }
    println!(
        "\nrelay CPU over {:.0} s, % of one core (FFmpeg is a separate process):",
        opts.cpu_secs
    );
    for (label, s, f) in &relay_cpu {
        println!("  one stream, {label:<24} sluice {s:>5.1} %   ffmpeg {f:>6.1} %");
    }

    // 3. Capacity: N concurrent 720p transcodes.
    println!(
        "\nconcurrent 1280x720 -> 720p x264 transcodes, {:.0} s each:",
        opts.step_secs
    );
    println!("  streams  min speed  min fps  input drops  sluice %  ffmpeg %  real time");
    for &n in &opts.streams {
        let paths: Vec<String> = (0..n).map(|i| format!("one/s{n}x{i}")).collect();
        let publishers: Vec<ChildGuard> = paths
            .iter()
            .map(|p| publish_looped(&server, &flv, p))
            .collect();
        wait_until("renditions ready", Duration::from_secs(30), || {
            paths.iter().all(|p| !first_idrs(&server, p).is_empty())
        });
        std::thread::sleep(Duration::from_secs(5));
        let m0 = metrics(&server);
        let probe = CpuProbe::start(Some(server.pid()));
        let ff0 = children_ticks(server.pid());
        let t0 = Instant::now();
        let mut min_speed = f64::INFINITY;
        let mut min_fps = f64::INFINITY;
        while t0.elapsed().as_secs_f64() < opts.step_secs {
            std::thread::sleep(Duration::from_secs(2));
            let m = metrics(&server);
            for p in &paths {
                let speed = metric_value(&m, &format!("sluice_transcode_speed{{stream=\"{p}\"}}"))
                    .unwrap_or(0.0);
                min_speed = min_speed.min(speed);
            }
            for s in streams(&server) {
                if !paths.iter().any(|p| s["path"] == p.as_str()) {
                    continue;
                }
                for r in s["renditions"].as_array().into_iter().flatten() {
                    if r["name"] == "720p" {
                        min_fps = min_fps.min(r["fps"].as_f64().unwrap_or(0.0));
                    }
                }
            }
        }
        let m1 = metrics(&server);
        let dropped =
            |m: &str| metric_value(m, "sluice_transcode_input_dropped_total").unwrap_or(0.0);
        let drops = dropped(&m1) - dropped(&m0);
        let sluice_pct = probe.percent(hz);
        let ff_pct = (children_ticks(server.pid()).saturating_sub(ff0)) as f64
            / hz
            / t0.elapsed().as_secs_f64()
            * 100.0;
        let ok = min_speed >= 0.97 && min_fps >= 28.5 && drops == 0.0;
        println!(
            "  {n:>7}  {min_speed:>9.2}  {min_fps:>7.1}  {drops:>11.0}  {sluice_pct:>8.1}  {ff_pct:>8.1}  {}",
            if ok { "yes" } else { "no" }
        );
        drop(publishers);
        wait_until("streams gone", Duration::from_secs(15), || {
            !streams(&server).iter().any(|s| {
                s["path"]
                    .as_str()
                    .is_some_and(|p| paths.iter().any(|q| q == p))
            })
        });
    }
}
