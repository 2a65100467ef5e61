//! Past one box, measured (issue 15): what an edge node costs a player and
//! the origin.
//!
//! `cargo bench --bench cluster_edge -- [--joins 8] [--edges 4]
//! [--secs 10] [--latency-ms 20] [--no-build]`
//!
//! A real `redis-server`, an origin node A and edge nodes (release
//! `sluice`, `[srt] latency`, `[cluster] edge_idle = "1s"`), one looping
//! RTMP publisher of the 720p30 3 Mbit/s fixture (2 s GOP) on A. Players
//! are in-process srt-protocol callers (`common::srt_player`) timing every
//! video frame at network arrival. It prints:
//!
//! * **first IDR**, player start → its first complete IDR at arrival:
//!   `local` (on A), `edge cold` (on B with no pull running: B looks the
//!   path up in Redis, opens the pull, waits for the GOP), `edge warm`
//!   (on B while another player keeps the pull up). Median and max over
//!   `--joins`.
//! * **relay-added latency of the edge hop**: a player on A and one on B
//!   play at once for `--secs`; for every video frame both received, the
//!   difference of their arrival (and of their release after the players'
//!   own TSBPD) instants. The origin's own relay-added latency is in
//!   README's Performance section; the edge adds this on top.
//! * **origin CPU**, % of one core over `--secs`: N players on A versus N
//!   edge nodes with one player each (every edge is one player to A).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::harness::{ephemeral_args_srt_port, Sluice};
use common::process::ChildGuard;
use common::redis::{free_udp_port, Redis};
use common::srt_player::{play, Played};
use common::*;

const PATH: &str = "live/bench";
const SECRET: &str = "bench-cluster-secret-0123456789";

struct Opts {
    joins: usize,
    edges: usize,
    secs: u64,
    latency_ms: u64,
    build: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        joins: 8,
        edges: 4,
        secs: 10,
        latency_ms: 20,
        build: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--joins" => o.joins = val().expect("--joins N") as usize,
            "--edges" => o.edges = val().expect("--edges N") as usize,
            "--secs" => o.secs = val().expect("--secs N"),
            "--latency-ms" => o.latency_ms = val().expect("--latency-ms N"),
            "--no-build" => {
                o.build = false;
                i += 1;
                continue;
            }
            // cargo bench passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// One node on a fixed SRT port (the one it advertises).
fn node(bin: &Path, redis: &Redis, id: &str, latency_ms: u64) -> Sluice {
    let srt = free_udp_port();
    let config = format!(
        "[srt]\nlatency = \"{latency_ms}ms\"\nmax_handshakes_per_ip_per_second = 1000\n\
         [cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nadvertise_srt = \"127.0.0.1:{srt}\"\n\
         secret = \"{SECRET}\"\nedge_idle = \"1s\"\n",
        redis.url()
    );
    let args = ephemeral_args_srt_port(srt);
    Sluice::start_foreground_args(bin, &config, args)
}

/// A player on `at` for `secs`, on its own thread.
fn spawn_player(
    at: SocketAddr,
    latency: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Played, String>> {
    std::thread::spawn(move || play(at, PATH, latency, &stop))
}

fn play_for(at: SocketAddr, latency: Duration, secs: f64) -> Played {
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_player(at, latency, stop.clone());
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    t.join().expect("player thread").expect("player")
}

/// Player start → its first complete IDR at arrival, ms.
fn first_idr_ms(p: &Played) -> Option<f64> {
    p.frames
        .iter()
        .find(|f| f.idr)
        .map(|f| f.last.duration_since(p.started).as_secs_f64() * 1000.0)
}

fn summary(name: &str, v: &mut [f64]) {
    if v.is_empty() {
        println!("  {name:<12} no samples");
        return;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "  {name:<12} n={:<3} median {:7.1}  p90 {:7.1}  max {:7.1} ms",
        v.len(),
        q(0.5),
        q(0.9),
        v[v.len() - 1]
    );
}

/// Wait until `server` no longer has the stream (its edge pull ended).
fn wait_no_edge(server: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.stream(PATH).is_some() {
        assert!(
            Instant::now() < deadline,
            "the edge pull did not end: {}",
            server.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let o = opts();
    let bin = sluice_binary(o.build);
    let latency = Duration::from_millis(o.latency_ms);
    let redis = Redis::start();
    let a = node(&bin, &redis, "a", o.latency_ms);
    let b = node(&bin, &redis, "b", o.latency_ms);
    let _publisher: ChildGuard = publish_looped(&a, &fixture(), PATH);
    wait_live(&a, PATH);
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "cluster_edge: origin a, edge b, redis-server {}, SRT latency {} ms, 720p30 3 Mbit/s, 2 s GOP",
        redis.port, o.latency_ms
    );

    // First IDR: cold edge joins (each after the previous pull ended).
    let mut cold = Vec::new();
    for _ in 0..o.joins {
        wait_no_edge(&b);
        let p = play_for(b.srt_addr(), latency, 1.5);
        cold.extend(first_idr_ms(&p));
    }
    // Warm: a holder keeps B's pull up; joins on B and on A.
    let stop_holder = Arc::new(AtomicBool::new(false));
    let holder = spawn_player(b.srt_addr(), latency, stop_holder.clone());
    std::thread::sleep(Duration::from_secs(1));
    let (mut warm, mut local) = (Vec::new(), Vec::new());
    for i in 0..o.joins {
        // Spread the joins over the GOP.
        std::thread::sleep(Duration::from_millis(250 + 137 * i as u64 % 700));
        warm.extend(first_idr_ms(&play_for(b.srt_addr(), latency, 1.2)));
        local.extend(first_idr_ms(&play_for(a.srt_addr(), latency, 1.2)));
    }
    println!("first IDR, player start -> complete IDR at arrival:");
    summary("local", &mut local);
    summary("edge cold", &mut cold);
    summary("edge warm", &mut warm);

    // The edge hop: one player on A and one on B at once.
    let stop = Arc::new(AtomicBool::new(false));
    let on_a = spawn_player(a.srt_addr(), latency, stop.clone());
    let on_b = spawn_player(b.srt_addr(), latency, stop.clone());
    std::thread::sleep(Duration::from_secs(o.secs));
    stop.store(true, Ordering::Relaxed);
    let (pa, pb) = (
        on_a.join().unwrap().expect("player on a"),
        on_b.join().unwrap().expect("player on b"),
    );
    stop_holder.store(true, Ordering::Relaxed);
    let _ = holder.join();
    let diffs = |x: &[common::frames::TsFrame], y: &[common::frames::TsFrame]| -> Vec<f64> {
        let by_key: std::collections::HashMap<u64, Instant> =
            x.iter().map(|f| (f.key, f.last)).collect();
        y.iter()
            .filter_map(|f| {
                let t = by_key.get(&f.key)?;
                Some(f.last.saturating_duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    println!("edge hop (player on b - player on a, same frame), ms:");
    summary("arrival", &mut diffs(&pa.frames, &pb.frames));
    summary("released", &mut diffs(&pa.released, &pb.released));

    // Origin CPU: N local players, then N edges with one player each.
    let hz = clock_ticks();
    let n = o.edges;
    let measure = |addrs: &[SocketAddr]| -> f64 {
        let stop = Arc::new(AtomicBool::new(false));
        let players: Vec<_> = addrs
            .iter()
            .map(|&at| spawn_player(at, latency, stop.clone()))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let cpu = CpuProbe::start(Some(a.pid()));
        std::thread::sleep(Duration::from_secs(o.secs));
        let pct = cpu.percent(hz);
        stop.store(true, Ordering::Relaxed);
        for p in players {
            let _ = p.join();
        }
        pct
    };
    let base = {
        let cpu = CpuProbe::start(Some(a.pid()));
        std::thread::sleep(Duration::from_secs(o.secs));
        cpu.percent(hz)
    };
    let local_cpu = measure(&vec![a.srt_addr(); n]);
    wait_no_edge(&b);
    let edges: Vec<Sluice> = (0..n)
        .map(|i| node(&bin, &redis, &format!("e{i}"), o.latency_ms))
        .collect();
    let edge_addrs: Vec<SocketAddr> = edges.iter().map(|e| e.srt_addr()).collect();
    let edge_cpu = measure(&edge_addrs);
    println!("origin CPU (% of one core over {} s):", o.secs);
    println!("  publisher only        {base:6.1}");
    println!("  {n} local players      {local_cpu:6.1}");
    println!("  {n} edges, 1 player each {edge_cpu:6.1}");
    let served = a.metric_or_zero("sluice_cluster_edge_pulls_served_total{result=\"accepted\"}");
    println!("  pulls the origin served: {served}");
}
