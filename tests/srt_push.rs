//! SRT push legs: a stream is pushed to a configured SRT destination
//! (srt-live-transmit listening on loopback, by name) and arrives playable;
//! with the destination down, the publish fails within the setup deadline
//! with a clear reason and nothing is left running. A host that does not
//! resolve, or whose lookup hangs past the setup deadline, fails the
//! publish naming the host; a resolver that hangs stalls nothing but its
//! own legs, holds a bounded number of threads and does not hold the exit;
//! a push target's streamid and passphrase reach neither the log nor the
//! publisher.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::flv::{self, FlvTag};
use common::rtmp_client::{PublishOptions, RtmpPublisher, Status};
use common::*;

#[test]
fn a_push_leg_delivers_a_playable_stream_to_srt_live_transmit() {
    require_program("srt-live-transmit", "the `srt-tools` Debian package");
    let dir = TempDir::new("push");
    let out = dir.join("pushed.ts");
    let port = free_udp_port();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec srt-live-transmit -q -a:no 'srt://:{port}?mode=listener' file://con > '{}'",
        out.display()
    ));
    let mut receiver = ChildGuard::spawn("srt-live-transmit", cmd);
    std::thread::sleep(Duration::from_millis(300));
    let server = Sluice::start(Some(&format!(
        "[apps.live]\npush = [\"srt://localhost:{port}?streamid=from-sluice&latency=50\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/pushed");
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    server.wait_log_fields(
        &[("message", "srt push leg connected")],
        Duration::from_secs(10),
    );
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    let status = ffmpeg.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "publisher failed: {}",
        ffmpeg.stderr().tail(20)
    );
    // The leg flushes and closes once the publisher is gone; the receiver
    // (no auto-reconnect) then exits, having written everything.
    let gone = Instant::now();
    assert!(
        receiver.wait_exit(Duration::from_secs(10)).is_some(),
        "the destination was not closed after the publisher left"
    );
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "teardown took {:?}",
        gone.elapsed()
    );
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(size > 200_000, "destination received only {size} bytes");
    let (st, probe, err) = run_to_exit(
        "ffprobe",
        {
            let mut c = Command::new("ffprobe");
            c.args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&out);
            c
        },
        Duration::from_secs(20),
    );
    assert!(st.success(), "ffprobe failed: {err}");
    assert!(probe.contains("h264,640,360"), "{probe}");
    assert!(probe.contains("aac"), "{probe}");
    // The received stream decodes cleanly from its first byte.
    let (st, _, err) = run_to_exit(
        "ffmpeg",
        {
            let mut c = Command::new("ffmpeg");
            c.args(["-v", "error", "-i"])
                .arg(&out)
                .args(["-fps_mode", "vfr", "-f", "null", "-"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        st.success() && err.trim().is_empty(),
        "decode errors: {err}"
    );
}

#[test]
fn with_the_destination_down_the_publish_fails_within_the_deadline() {
    let port = free_udp_port(); // nothing listens there
    let server = Sluice::start(Some(&format!(
        "[server]\nsetup_timeout = \"2s\"\n[apps.live]\npush = [\"srt://127.0.0.1:{port}?streamid=x\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/nowhere");
    let started = Instant::now();
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::WholeFile);
    let line = server.wait_log_fields(
        &[("message", "stream setup failed")],
        Duration::from_secs(10),
    );
    assert_eq!(
        log_field(&line, "reason").and_then(|v| v.as_str()),
        Some("push_connect"),
        "{line}"
    );
    let status = ffmpeg.expect_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(!status.success(), "publisher should have been refused");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    server.wait_metric(
        r#"sluice_stream_setup_failures_total{reason="push_connect"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_stream_gone("live/nowhere", Duration::from_secs(3));
    // Nothing keeps sending: the leg's socket is gone with its task.
    assert_eq!(server.metric_or_zero("sluice_rtmp_connections"), 0.0);
}

/// An srt-live-transmit listener on a free port (URL options `extra`,
/// e.g. `&passphrase=…`) writing what it receives to its stdout, started.
fn discarding_listener(extra: &str) -> (u16, ChildGuard) {
    require_program("srt-live-transmit", "the `srt-tools` Debian package");
    let port = free_udp_port();
    let mut cmd = Command::new("srt-live-transmit");
    cmd.args([
        "-q",
        "-a:no",
        &format!("srt://:{port}?mode=listener{extra}"),
        "file://con",
    ]);
    let receiver = ChildGuard::spawn("srt-live-transmit", cmd);
    std::thread::sleep(Duration::from_millis(300));
    (port, receiver)
}

/// A destination that disappears while the stream runs is a failed leg: the
/// whole group is torn down and the publisher told why.
#[test]
fn losing_the_destination_tears_the_stream_down() {
    let (port, mut receiver) = discarding_listener("");
    let server = Sluice::start(Some(&format!(
        "[srt]\npeer_idle_timeout = \"2s\"\n[apps.live]\npush = [\"srt://127.0.0.1:{port}\"]\n"
    )));
    let fixture = fixture_avc_aac(6);
    let url = server.rtmp_url("live/fragile");
    let mut ffmpeg = publish_fixture(&fixture, &url, PublishFor::Forever);
    server.wait_log_fields(&[("message", "stream ready")], Duration::from_secs(10));
    receiver.kill();
    let line = server.wait_log_fields(
        &[("message", "push leg failed; stopping the stream")],
        Duration::from_secs(20),
    );
    assert!(line.to_string().contains("127.0.0.1"), "{line}");
    assert!(
        ffmpeg.wait_exit(Duration::from_secs(5)).is_some(),
        "the publisher was not disconnected"
    );
    server.wait_stream_gone("live/fragile", Duration::from_secs(3));
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="leg_failed"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
}

/// The first seconds of the shared fixture: configs and a first GOP start.
fn first_tags() -> Vec<FlvTag> {
    let file = flv::read_flv(&fixture_avc_aac(2));
    file.tags[..file.tags.len().min(40)].to_vec()
}

/// Publish `app/key` (accepted: legs start with the publish), send `tags`
/// and wait for the server to end the publish; its `onStatus` infos.
fn publish_until_stopped(rtmp: SocketAddr, app: &str, key: &str, tags: &[FlvTag]) -> Vec<Status> {
    let opts = PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    };
    let mut p =
        RtmpPublisher::connect(rtmp, app, opts).unwrap_or_else(|e| panic!("connect {app}: {e}"));
    let outcome = p.publish(key);
    assert!(outcome.is_accepted(), "{app}/{key}: {outcome:?}");
    p.send_tags(tags);
    assert!(
        p.wait_server_close(Duration::from_secs(20)).is_some(),
        "{app}/{key} was not stopped: {:?}",
        p.statuses
    );
    p.statuses.clone()
}

fn failed(statuses: &[Status]) -> &Status {
    statuses
        .iter()
        .find(|s| s.code == "NetStream.Publish.Failed")
        .unwrap_or_else(|| panic!("no NetStream.Publish.Failed: {statuses:?}"))
}

/// A push whose host does not resolve fails the publish at once, naming the
/// host; neither that failure nor one from a destination that refuses the
/// passphrase shows the push URL's streamid or passphrase, in the status
/// the publisher reads or anywhere in the log.
#[test]
fn push_failures_name_the_destination_without_its_secrets() {
    let (port, _receiver) = discarding_listener("&passphrase=the-right-passphrase");
    let server = Sluice::start(Some(&format!(
        r#"
[server]
setup_timeout = "15s"
[apps.live]
push = ["srt://no-such-host.invalid:9000?streamid=secret-sid-one&passphrase=secret-pass-one"]
[apps.refused]
push = ["srt://127.0.0.1:{port}?streamid=secret-sid-two&passphrase=secret-pass-two&latency=80"]
"#
    )));
    let tags = first_tags();
    let unresolved = publish_until_stopped(server.rtmp_addr(), "live", "cam1", &tags);
    let st = failed(&unresolved);
    assert!(
        st.description
            .contains(r#"cannot resolve push host "no-such-host.invalid""#),
        "{st:?}"
    );
    let refused = publish_until_stopped(server.rtmp_addr(), "refused", "cam1", &tags);
    let st = failed(&refused);
    assert!(
        st.description.contains(&format!("srt://127.0.0.1:{port}")),
        "{st:?}"
    );
    server.wait_log_fields(
        &[("message", "publish ended"), ("stream", "refused/cam1")],
        Duration::from_secs(5),
    );
    for s in unresolved.iter().chain(&refused) {
        println!("{} {}", s.code, s.description);
        assert!(!s.description.contains("secret-"), "a secret in {s:?}");
    }
    let log = server.log_lines();
    let leaked: Vec<&String> = log.iter().filter(|l| l.contains("secret-")).collect();
    assert!(leaked.is_empty(), "secrets in the log: {leaked:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("push leg failed") && l.contains("no-such-host.invalid")),
        "the failure is logged with the host"
    );
}

/// Push hosts of the hanging-resolver case: more distinct names than
/// sluice resolves at once, so some lookups wait for a slot.
const SLOW_HOSTS: usize = 12;
/// Publishers sharing the one name `slow-dns.invalid` (one lookup for all).
const SHARED_HOST_PUBLISHERS: usize = 4;
/// sluice's cap on name lookups in flight (`srt::push`).
const MAX_LOOKUPS: usize = 8;

/// sluice's threads, from `/proc`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// While every resolution of a push host hangs (the resolver reads an
/// `/etc/hosts` that is a FIFO nobody writes, in sluice's own mount
/// namespace): the other streams and the HTTP API go on (a recorded player
/// of another stream loses no frame, `/healthz` answers at once); each
/// publish fails before its setup deadline naming its host; lookups in
/// flight are capped (one per name, at most `MAX_LOOKUPS` threads blocked
/// in `getaddrinfo`, however many publishes); once the resolver answers,
/// fds, tasks and memory come back; and SIGTERM while lookups hang exits 0
/// after the drain, without waiting for them.
#[test]
fn a_hanging_resolver_stalls_nothing_but_its_own_push_legs() {
    require_program("unshare", "the `util-linux` Debian package");
    // A container without user namespaces cannot run this case; say so.
    let probe = Command::new("unshare").args(["-rm", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIPPED: `unshare -rm` is not permitted here (no user namespaces)");
        return;
    }
    let dir = TempDir::new("slow-dns");
    let hosts = dir.join("hosts");
    let st = Command::new("mkfifo").arg(&hosts).status().unwrap();
    assert!(st.success(), "mkfifo failed");
    let mut wrapper = Command::new("unshare");
    wrapper
        .args([
            "-rm",
            "--",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(&hosts)
        // As many workers as hanging legs below would block.
        .env("TOKIO_WORKER_THREADS", "2");
    let mut config = String::from(
        r#"
[server]
setup_timeout = "3s"
drain_timeout = "2s"
[rtmp]
max_publishes_per_ip = 64
[apps.live]
[apps.slow]
push = ["srt://slow-dns.invalid:9000?streamid=x"]
"#,
    );
    for i in 0..SLOW_HOSTS {
        config.push_str(&format!(
            "[apps.s{i}]\npush = [\"srt://h{i}.slow-dns.invalid:9000?streamid=x\"]\n"
        ));
    }
    let mut server = Sluice::start_wrapped(wrapper, Some(&config));
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let base = server.usage();
    let base_threads = threads(server.pid());
    let tags = first_tags();
    // The resolver hangs until `release`: then every open of the FIFO gets
    // an empty file at once (and the name goes to DNS, which fails).
    let release = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let rtmp = server.rtmp_addr();
    let targets: Vec<(String, String)> = (0..SLOW_HOSTS)
        .map(|i| (format!("s{i}"), format!("h{i}.slow-dns.invalid")))
        .chain((0..SHARED_HOST_PUBLISHERS).map(|_| ("slow".into(), "slow-dns.invalid".into())))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if release.load(Ordering::Relaxed) {
                    // ENXIO while nobody has it open for reading.
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&hosts);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        // However this scope ends, the resolver answers and the thread stops.
        let _stop = OnDrop(|| {
            release.store(true, Ordering::Relaxed);
            done.store(true, Ordering::Relaxed);
        });
        let publishers: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, (app, _))| {
                let tags = &tags;
                s.spawn(move || publish_until_stopped(rtmp, app, &format!("k{i}"), tags))
            })
            .collect();
        // Let the legs start and hang, then check that the rest still runs
        // (past the setup deadline: the publishes fail meanwhile).
        std::thread::sleep(Duration::from_millis(500));
        let hold = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut failures = Vec::new();
        let mut most_threads = 0;
        while hold.elapsed() < Duration::from_secs(5) {
            let t = Instant::now();
            match http_request(
                server.http_addr(),
                "GET",
                "/healthz",
                Duration::from_secs(3),
            ) {
                Ok(r) if r.status == 200 => {}
                other => failures.push(format!("{other:?}")),
            }
            slowest = slowest.max(t.elapsed());
            most_threads = most_threads.max(threads(server.pid()));
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("slowest /healthz while push hosts resolved: {slowest:?}");
        assert!(
            failures.is_empty() && slowest < Duration::from_secs(1),
            "/healthz took up to {slowest:?} while push hosts were resolving; failed: {failures:?}"
        );
        // Each publish failed at its setup deadline, naming its host, while
        // the resolver still hangs.
        for (p, (app, host)) in publishers.into_iter().zip(&targets) {
            let statuses = p.join().unwrap();
            let st = failed(&statuses);
            println!("{app} publisher: {}", st.description);
            assert!(
                st.description
                    .contains(&format!("cannot resolve push host \"{host}\"")),
                "{app}: {st:?}"
            );
        }
        println!(
            "threads: {base_threads} before, at most {most_threads} with {} publishes \
             to {} hanging names",
            targets.len(),
            SLOW_HOSTS + 1
        );
        assert!(
            most_threads <= base_threads + MAX_LOOKUPS + 2,
            "{most_threads} threads (from {base_threads}) with {} lookups hanging",
            targets.len()
        );
        bystander.finish(5.0);
        release.store(true, Ordering::Relaxed);
        server.wait_usage_back(base, "hanging resolver");

        // SIGTERM while lookups hang again: the drain runs and the process
        // exits 0 without waiting for `getaddrinfo`.
        release.store(false, Ordering::Relaxed);
        let hanging: Vec<_> = (0..2)
            .map(|i| {
                let tags = &tags;
                s.spawn(move || publish_until_stopped(rtmp, "slow", &format!("late{i}"), tags))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1000));
        let kill = Command::new("kill")
            .args(["-TERM", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let signalled = Instant::now();
        let status = server.wait_exit(Duration::from_secs(10));
        println!(
            "exit {status:?} {:?} after SIGTERM with lookups hanging",
            signalled.elapsed()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "sluice did not exit 0 within drain_timeout (2 s) + 8 s of SIGTERM while \
             push hosts were resolving: {status:?}; log tail:\n{}",
            server.log_tail(10)
        );
        for p in hanging {
            let _ = p.join();
        }
    });
}

/// Runs its closure when dropped, panics included.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
