//! Resource leaks: 1 000 publish/unpublish cycles and 1 000 SRT player
//! connect/disconnect cycles; afterwards sluice's open file descriptors,
//! live tokio tasks and resident memory are back near where they started.
//! 1 000 publishes on 1 000 distinct keys leave no series in `/metrics`.
//! The figures are printed (`cargo test --test leak -- --nocapture`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::flv;
use common::flv::FlvTag;
use common::rtmp_client::{connect_and_publish, PublishOptions};
use common::*;

const CYCLES: usize = 1000;

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: f64,
    tasks: f64,
    rss_mib: f64,
}

fn usage(server: &Sluice) -> Usage {
    let m = |q: &str| server.metric(q).unwrap_or_else(|| panic!("{q} missing"));
    Usage {
        fds: m("sluice_process_open_fds"),
        tasks: m("sluice_tokio_alive_tasks"),
        rss_mib: m("sluice_process_resident_memory_bytes") / (1024.0 * 1024.0),
    }
}

/// Wait until the figures settle (teardown is asynchronous but bounded).
fn settled(server: &Sluice, base: Usage) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = usage(server);
        if (u.fds <= base.fds + 2.0 && u.tasks <= base.tasks + 2.0) || Instant::now() > deadline {
            return u;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check(what: &str, base: Usage, after: Usage) {
    println!(
        "{what}: fds {} -> {}, tokio tasks {} -> {}, RSS {:.1} -> {:.1} MiB",
        base.fds, after.fds, base.tasks, after.tasks, base.rss_mib, after.rss_mib
    );
    assert!(
        after.fds <= base.fds + 2.0,
        "{what}: fds grew {base:?} -> {after:?}"
    );
    assert!(
        after.tasks <= base.tasks + 2.0,
        "{what}: tasks grew {base:?} -> {after:?}"
    );
    // The allocator keeps some freed memory; a leak of even 1 KiB per cycle
    // would show as 1 MiB, a real one far more.
    assert!(
        after.rss_mib <= base.rss_mib + 16.0,
        "{what}: RSS grew {base:?} -> {after:?}"
    );
}

#[test]
fn publish_and_player_cycles_leave_nothing_behind() {
    let server = Sluice::start(None);
    let file = flv::read_flv(&fixture_avc_aac(2));
    // Enough for a stream to become ready: configs and the first GOP start.
    let tags = &file.tags[..file.tags.len().min(40)];
    let cycle = |i: usize| {
        let opts = PublishOptions {
            realtime: false,
            ..PublishOptions::default()
        };
        let mut p = connect_and_publish(server.rtmp_addr(), "live/leak", opts);
        let report = p.send_tags(tags);
        assert!(report.error.is_none(), "cycle {i}: {report:?}");
        p.close();
        server.wait_stream_gone("live/leak", Duration::from_secs(5));
    };
    // Warm-up: lazily created state (metric handles, buffers) is not a leak.
    for i in 0..20 {
        cycle(i);
    }
    let base = settled(&server, usage(&server));
    let t = Instant::now();
    for i in 0..CYCLES {
        cycle(i);
    }
    println!("{CYCLES} publish/unpublish cycles in {:?}", t.elapsed());
    let after = settled(&server, base);
    check("publish cycles", base, after);

    // Players: one live stream, libsrt connects and closes in a loop.
    let fixture = fixture_avc_aac(60);
    let url = server.rtmp_url("live/cam1");
    let _ff = publish_fixture(&fixture, &url, PublishFor::Forever);
    server.wait_for_stream(
        "live/cam1",
        |s| json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0),
        Duration::from_secs(15),
    );
    let dir = TempDir::new("leak");
    let players = |n: usize| {
        let script = dir.join("cycles.py");
        std::fs::write(&script, PLAYER_CYCLES).unwrap();
        let mut cmd = std::process::Command::new(require_program("python3", "python3"));
        cmd.arg(&script)
            .arg(server.srt_addr().port().to_string())
            .arg(n.to_string());
        let (st, out, err) = run_to_exit("python3 libsrt cycles", cmd, Duration::from_secs(300));
        assert!(st.success(), "{out}\n{err}");
        assert_eq!(out.trim(), format!("connected {n}"), "{err}");
    };
    players(20);
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(0.0),
        Duration::from_secs(10),
    );
    let base = settled(&server, usage(&server));
    let t = Instant::now();
    players(CYCLES);
    println!("{CYCLES} SRT player cycles in {:?}", t.elapsed());
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(0.0),
        Duration::from_secs(10),
    );
    let after = settled(&server, base);
    check("player cycles", base, after);
}

/// One short RTMP publish of `tags` on `path`, until the stream is gone.
fn publish_once(server: &Sluice, path: &str, tags: &[FlvTag]) {
    let opts = PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    };
    let mut p = connect_and_publish(server.rtmp_addr(), path, opts);
    let report = p.send_tags(tags);
    assert!(report.error.is_none(), "{path}: {report:?}");
    p.close();
    server.wait_stream_gone(path, Duration::from_secs(5));
}

/// Series of streams that ended are not in `/metrics`: after 1 000
/// publishes on 1 000 distinct keys it has as many lines as after one, and
/// RSS is back near where it was; a live stream keeps its series
/// throughout, and its player loses nothing.
#[test]
fn per_stream_series_end_with_their_stream() {
    let server = Sluice::start(None);
    let bystander = Bystander::start(&server, "live/cam1", "", "", 300);
    let file = flv::read_flv(&fixture_avc_aac(2));
    let tags = &file.tags[..file.tags.len().min(40)];
    let bystander_bytes = || {
        server
            .metric(r#"sluice_ingest_bytes_total{stream="live/cam1"}"#)
            .expect("the live stream's series is in /metrics")
    };
    // A live stream has its series; they end with it.
    let mut p = connect_and_publish(
        server.rtmp_addr(),
        "live/series-first",
        PublishOptions {
            realtime: false,
            ..PublishOptions::default()
        },
    );
    assert!(p.send_tags(tags).error.is_none());
    server.wait_metric(
        r#"sluice_ingest_frames_total{stream="live/series-first",track="video"}"#,
        |v| v.is_some_and(|n| n >= 1.0),
        Duration::from_secs(5),
    );
    p.close();
    server.wait_stream_gone("live/series-first", Duration::from_secs(5));
    // Warm-up: lazily created state is not a leak.
    for i in 0..20 {
        publish_once(&server, &format!("live/warm-{i}"), tags);
    }
    let lines = |text: &str| text.lines().count();
    let one = server.metrics_text();
    let base = server.usage();
    let before = bystander_bytes();
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CYCLES {
                    return;
                }
                publish_once(&server, &format!("live/series-{i}"), tags);
            });
        }
    });
    println!(
        "{CYCLES} publish/unpublish cycles on distinct keys in {:?}",
        t.elapsed()
    );
    let after = server.metrics_text();
    let leftover: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("stream=\"live/series-") || l.contains("stream=\"live/warm-"))
        .collect();
    println!(
        "/metrics: {} lines after one cycle, {} after {CYCLES} more",
        lines(&one),
        lines(&after)
    );
    assert!(
        leftover.is_empty(),
        "{} series of ended streams are still exported, e.g. {:?}",
        leftover.len(),
        &leftover[..leftover.len().min(5)]
    );
    assert!(
        lines(&after).abs_diff(lines(&one)) <= 5,
        "/metrics grew from {} to {} lines",
        lines(&one),
        lines(&after)
    );
    assert!(
        bystander_bytes() > before,
        "the live stream's counter moves"
    );
    server.wait_usage_back(base, "1 000 publishes on distinct keys");
    bystander.finish(10.0);
}

/// Connect to `live/cam1` and close, N times, with libsrt (srt-tools).
const PLAYER_CYCLES: &str = r#"
import ctypes, socket, struct, sys
lib = ctypes.CDLL("libsrt-gnutls.so.1.5")
lib.srt_startup()
lib.srt_setloglevel(2)
port, n = int(sys.argv[1]), int(sys.argv[2])
sid = b"live/cam1"
addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
ok = 0
for i in range(n):
    s = lib.srt_create_socket()
    lib.srt_setsockflag(s, 46, ctypes.c_char_p(sid), len(sid))
    if lib.srt_connect(s, ctypes.c_char_p(addr), len(addr)) != -1:
        ok += 1
    else:
        print("rejected %d" % lib.srt_getrejectreason(s), file=sys.stderr)
    lib.srt_close(s)
print("connected %d" % ok, flush=True)
lib.srt_cleanup()
"#;
