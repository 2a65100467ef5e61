//! SRT pull through real peers: ffmpeg publishes RTMP, and libsrt callers
//! (ffprobe/ffmpeg, srt-live-transmit, libsrt itself through Python's
//! ctypes for the rejection codes) play it back over SRT. Hostile
//! datagrams come from a plain UDP socket while a player is watching.

mod common;

use std::io::Read as _;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::srt_packets::*;
use common::*;
use serde_json::Value;

const PATH: &str = "live/cam1";

/// Publish the 640x360 H.264 (B-frames, GOP 60) + AAC fixture in real time
/// for `secs` seconds and wait until the stream is playable.
fn publish(server: &Sluice, path: &str, secs: u32) -> ChildGuard {
    let fixture = fixture_avc_aac(60);
    let url = server.rtmp_url(path);
    let ff = publish_fixture(&fixture, &url, PublishFor::Secs(secs));
    server.wait_for_stream(
        path,
        |s| {
            json_str(s, "/codecs/audio") == Some("aac")
                && json_f64(s, "/keyframes_in").is_some_and(|k| k >= 1.0)
        },
        Duration::from_secs(20),
    );
    ff
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(require_program(program, "ffmpeg / srt-tools"));
    cmd.args(args);
    cmd
}

/// ffprobe's stream list (codec_name, width, height) for an SRT URL.
fn probe_streams(url: &str) -> Vec<Value> {
    let (status, out, err) = run_to_exit(
        "ffprobe",
        command(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "json",
                url,
            ],
        ),
        Duration::from_secs(30),
    );
    assert!(status.success(), "ffprobe {url} failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ffprobe json {e}: {out}"));
    v["streams"].as_array().cloned().unwrap_or_default()
}

fn assert_h264_aac(streams: &[Value], url: &str) {
    let video = streams.iter().find(|s| s["codec_name"] == "h264");
    let audio = streams.iter().find(|s| s["codec_name"] == "aac");
    assert!(
        video.is_some_and(|v| v["width"] == 640 && v["height"] == 360) && audio.is_some(),
        "{url}: {streams:?}"
    );
}

/// A player whose stdout (the TS) is counted by a thread with arrival
/// times; killed with its process group on drop.
struct Player {
    child: Child,
    arrivals: Arc<Mutex<Vec<(Instant, u64)>>>,
    head: Arc<Mutex<Vec<u8>>>,
}

impl Player {
    fn srt_live_transmit(url: &str) -> Player {
        let mut cmd = command("srt-live-transmit", &["-q", "-a:no", url, "file://con"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().expect("start srt-live-transmit");
        let mut out = child.stdout.take().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let head = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (arrivals.clone(), head.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut total = 0u64;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                {
                    let mut h = h.lock().unwrap();
                    if h.len() < 188 {
                        let take = (188 - h.len()).min(n);
                        h.extend_from_slice(&buf[..take]);
                    }
                }
                total += n as u64;
                a.lock().unwrap().push((Instant::now(), total));
            }
        });
        Player {
            child,
            arrivals,
            head,
        }
    }

    fn bytes(&self) -> u64 {
        self.arrivals.lock().unwrap().last().map_or(0, |x| x.1)
    }

    fn wait_bytes(&self, n: u64, timeout: Duration) {
        assert!(
            poll_until(timeout, || self.bytes() >= n),
            "player got {} bytes, wanted {n} within {timeout:?}",
            self.bytes()
        );
    }

    /// Longest time without data between `from` and `to`.
    fn max_gap(&self, from: Instant, to: Instant) -> Duration {
        let a = self.arrivals.lock().unwrap();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for &(t, _) in a.iter().filter(|(t, _)| *t >= from && *t <= to) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to.saturating_duration_since(last))
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_streamid_form_plays_h264_and_aac_and_srt_live_transmit_gets_ts() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 40);
    // ffmpeg's `latency` is in microseconds.
    for sid in [
        "live/cam1",
        "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cm%3Drequest",
        "read:live/cam1",
    ] {
        let url = server.srt_url(sid, "latency=20000");
        assert_h264_aac(&probe_streams(&url), &url);
    }
    let player = Player::srt_live_transmit(&server.srt_url(PATH, ""));
    player.wait_bytes(100_000, Duration::from_secs(10));
    assert_eq!(player.head.lock().unwrap()[0], 0x47, "not MPEG-TS");
    assert!(server.metric_or_zero("sluice_srt_players_total") >= 4.0);
    assert!(server.metric_or_zero("sluice_srt_gop_cache_starts_total") >= 1.0);
    assert!(server.metric_or_zero("sluice_srt_bytes_out_total") >= 100_000.0);
    server.wait_for_stream(
        PATH,
        |s| {
            s["renditions"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == "source" && r["players"] == 1))
        },
        Duration::from_secs(5),
    );
    assert!(server.log_contains("srt player connected"));
}

#[test]
fn ffmpeg_decodes_cleanly_including_a_mid_gop_join_with_ordered_timestamps() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 40);
    let url = server.srt_url(PATH, "");
    // Three seconds of decoding: no error at all.
    let (status, _, err) = run_to_exit(
        "ffmpeg",
        command(
            "ffmpeg",
            &[
                "-nostdin",
                "-v",
                "error",
                "-i",
                &url,
                "-t",
                "3",
                "-fps_mode",
                "vfr",
                "-f",
                "null",
                "-",
            ],
        ),
        Duration::from_secs(30),
    );
    assert!(
        status.success() && err.trim().is_empty(),
        "decode errors: {err}"
    );
    // Joins at moments spread over a GOP (2 s): the first frame decodes.
    for delay_ms in [370u64, 1130, 1710] {
        thread::sleep(Duration::from_millis(delay_ms));
        let (status, _, err) = run_to_exit(
            "ffmpeg",
            command(
                "ffmpeg",
                &[
                    "-nostdin",
                    "-v",
                    "error",
                    "-i",
                    &url,
                    "-frames:v",
                    "1",
                    "-fps_mode",
                    "vfr",
                    "-f",
                    "null",
                    "-",
                ],
            ),
            Duration::from_secs(30),
        );
        assert!(
            status.success() && err.trim().is_empty(),
            "join after {delay_ms} ms: {err}"
        );
    }
    // DTS never decreases and PTS >= DTS, per stream.
    let (status, out, err) = run_to_exit(
        "ffprobe",
        command(
            "ffprobe",
            &[
                "-v",
                "error",
                "-read_intervals",
                "%+3",
                "-show_entries",
                "packet=stream_index,pts,dts",
                "-of",
                "csv=p=0",
                &url,
            ],
        ),
        Duration::from_secs(30),
    );
    assert!(status.success(), "ffprobe: {err}");
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut n = 0;
    for line in out.lines() {
        let f: Vec<&str> = line.split(',').filter(|x| !x.is_empty()).collect();
        let [idx, pts, dts] = f[..] else { continue };
        let (Ok(pts), Ok(dts)) = (pts.parse::<i64>(), dts.parse::<i64>()) else {
            continue;
        };
        assert!(pts >= dts, "stream {idx}: pts {pts} < dts {dts}");
        let prev = last.insert(idx.to_string(), dts);
        assert!(
            prev.is_none_or(|p| dts >= p),
            "stream {idx}: dts {dts} after {prev:?}"
        );
        n += 1;
    }
    assert!(n > 100, "only {n} packets:\n{out}");
    assert_eq!(last.len(), 2, "both streams seen");
}

#[test]
fn rejections_carry_the_srt_access_control_codes() {
    let server = Sluice::start(None);
    let dir = TempDir::new("srt-reject");
    let addr = server.srt_addr();
    // No stream at all yet.
    assert_eq!(libsrt_connect(&dir, addr, PATH, ""), "rejected 1404");
    let _publisher = publish(&server, PATH, 40);
    let cases = [
        ("live/nope", "rejected 1404"),
        ("live/cam1/720p", "rejected 1404"),
        // Publishing a live path: conflict.
        ("#!::r=live/cam1,m=publish", "rejected 1409"),
        ("publish:live/cam1", "rejected 1409"),
        ("#!::r=live/cam1,m=bidirectional", "rejected 1405"),
        ("live", "rejected 1400"),
        ("#!::m=request", "rejected 1400"),
        ("%zz", "rejected 1400"),
        // A caller that encrypts, to a listener without a passphrase.
        ("live/cam1", "rejected 11"),
    ];
    for (sid, want) in cases {
        let pw = if want == "rejected 11" {
            "0123456789abc"
        } else {
            ""
        };
        assert_eq!(libsrt_connect(&dir, addr, sid, pw), want, "{sid}");
    }
    assert_eq!(libsrt_connect(&dir, addr, PATH, ""), "connected");
    assert!(server.metric_or_zero("sluice_srt_rejects_total{code=\"1404\"}") >= 3.0);
    assert!(server.metric_or_zero("sluice_srt_rejects_total{code=\"1405\"}") >= 1.0);
    assert!(server.metric_or_zero("sluice_srt_rejects_total{code=\"1409\"}") >= 2.0);
    assert!(server.metric_or_zero("sluice_srt_rejects_total{code=\"1400\"}") >= 3.0);
    // ffprobe itself only says "Input/output error".
    let (status, _, _) = run_to_exit(
        "ffprobe",
        command(
            "ffprobe",
            &["-v", "error", &server.srt_url("live/nope", "")],
        ),
        Duration::from_secs(20),
    );
    assert!(!status.success());
}

#[test]
fn passphrase_protected_listener() {
    let server = Sluice::start(Some(
        "[srt]\npassphrase = \"correcthorse\"\nmax_players = 2\n",
    ));
    let _publisher = publish(&server, PATH, 40);
    for extra in [
        "passphrase=correcthorse",
        "passphrase=correcthorse&pbkeylen=32",
    ] {
        let url = server.srt_url(PATH, extra);
        assert_h264_aac(&probe_streams(&url), &url);
    }
    let dir = TempDir::new("srt-pass");
    let addr = server.srt_addr();
    assert_eq!(
        libsrt_connect(&dir, addr, PATH, "wronghorse!"),
        "rejected 10"
    );
    assert_eq!(libsrt_connect(&dir, addr, PATH, ""), "rejected 11");
    // max_players = 2: a third concurrent player gets 1402.
    let a = Player::srt_live_transmit(&server.srt_url(PATH, "passphrase=correcthorse"));
    let b = Player::srt_live_transmit(&server.srt_url(PATH, "passphrase=correcthorse"));
    a.wait_bytes(10_000, Duration::from_secs(10));
    b.wait_bytes(10_000, Duration::from_secs(10));
    assert_eq!(
        libsrt_connect(&dir, addr, PATH, "correcthorse"),
        "rejected 1402"
    );
}

#[test]
fn players_are_closed_within_two_seconds_when_the_publisher_leaves() {
    let server = Sluice::start(None);
    let mut publisher = publish(&server, PATH, 6);
    let url = server.srt_url(PATH, "");
    let mut reader = spawn_ffmpeg(&["-v", "error", "-i", &url, "-f", "null", "-"]);
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    publisher.expect_exit(Duration::from_secs(30));
    let gone = server.wait_stream_gone(PATH, Duration::from_secs(10));
    reader.expect_exit(Duration::from_secs(10));
    let took = reader
        .exit_instant()
        .unwrap()
        .saturating_duration_since(gone);
    assert!(
        took <= Duration::from_secs(2),
        "reader exited {took:?} after the stream ended"
    );
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(0.0),
        Duration::from_secs(5),
    );
    assert!(server.log_contains("stream ended"));

    // The publisher comes back: new players play the new stream.
    let _again = publish(&server, PATH, 10);
    let streams = probe_streams(&url);
    assert_h264_aac(&streams, &url);
}

/// GStreamer's `srtsrc ! tsdemux` pulls the stream and demuxes both tracks
/// (each sink ends the pipeline after a number of buffers).
#[test]
fn gstreamer_srtsrc_demuxes_h264_and_aac() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 20);
    let uri = format!("uri=srt://{}?streamid={PATH}", server.srt_addr());
    let (status, out, err) = run_to_exit(
        "gst-launch-1.0",
        command(
            "gst-launch-1.0",
            &[
                "-q",
                "srtsrc",
                &uri,
                "!",
                "tsdemux",
                "name=d",
                "d.",
                "!",
                "queue",
                "!",
                "h264parse",
                "!",
                "video/x-h264",
                "!",
                "fakesink",
                "num-buffers=60",
                "d.",
                "!",
                "queue",
                "!",
                "aacparse",
                "!",
                "audio/mpeg",
                "!",
                "fakesink",
                "num-buffers=60",
            ],
        ),
        Duration::from_secs(40),
    );
    assert!(
        status.success(),
        "gst-launch failed ({status}): {out}\n{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
}

#[test]
fn draining_rejects_new_players_with_1503() {
    let server = Sluice::start(Some("[server]\ndrain_timeout = \"20s\"\n"));
    let _publisher = publish(&server, PATH, 40);
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait_log("draining", Duration::from_secs(10));
    let dir = TempDir::new("srt-drain");
    assert_eq!(
        libsrt_connect(&dir, server.srt_addr(), PATH, ""),
        "rejected 1503"
    );
}

// -- hostile datagrams ------------------------------------------------------

#[test]
fn hostile_datagrams_do_not_disturb_a_player() {
    let mut server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 40);
    let srt = server.srt_addr();
    let player = Player::srt_live_transmit(&server.srt_url(PATH, ""));
    player.wait_bytes(50_000, Duration::from_secs(10));
    let start = Instant::now();
    let before = player.bytes();
    let base = server.usage();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for round in 0..20 {
        for d in hostile_datagrams() {
            sock.send_to(&d, srt).unwrap();
        }
        // Handshakes with a valid cookie that srt-protocol cannot take:
        // refused with the Core reasons (libsrt: 13, 14, 15) or 1400.
        if round % 5 == 0 {
            let sid = 100 + round;
            let cookie = induce(&sock, srt, sid);
            let mut exts = vec![hsreq(), sid_ext(PATH)];
            exts.push((6, b"elif".to_vec()));
            sock.send_to(&handshake(5, 5, 1500, -1, sid, cookie, &exts), srt)
                .unwrap();
            assert_eq!(reply_shake(&sock), 1013, "congestion");
            let cookie = induce(&sock, srt, sid + 1);
            let exts = [hsreq(), sid_ext(PATH), (7, b":cef".to_vec())];
            sock.send_to(&handshake(5, 5, 1500, -1, sid + 1, cookie, &exts), srt)
                .unwrap();
            assert_eq!(reply_shake(&sock), 1014, "filter");
            let cookie = induce(&sock, srt, sid + 2);
            let exts = [hsreq(), sid_ext(PATH)];
            sock.send_to(&handshake(5, 5, 0, -1, sid + 2, cookie, &exts), srt)
                .unwrap();
            assert_eq!(reply_shake(&sock), 2400, "MSS 0");
            // A guessed cookie gets nothing.
            sock.send_to(&handshake(5, 5, 1500, -1, sid + 3, 42, &exts), srt)
                .unwrap();
        }
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    let end = Instant::now();
    server.assert_alive("after hostile datagrams");
    let gap = player.max_gap(start, end);
    assert!(gap <= Duration::from_secs(1), "player starved for {gap:?}");
    assert!(player.bytes() > before + 50_000, "player stalled");
    server.wait_usage_back(base, "hostile datagrams");
    // A new player still connects.
    let url = server.srt_url(PATH, "");
    assert_h264_aac(&probe_streams(&url), &url);
    assert_eq!(
        server.metric_or_zero("sluice_srt_protocol_panics_total"),
        0.0
    );
    assert!(server.metric_or_zero("sluice_srt_dropped_datagrams_total") >= 100.0);
    assert!(server.metric_or_zero("sluice_srt_rejects_total{code=\"13\"}") >= 4.0);
}

#[test]
fn twenty_players_one_stalled() {
    let server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 50);
    let url = server.srt_url(PATH, "");
    let players: Vec<Player> = (0..20).map(|_| Player::srt_live_transmit(&url)).collect();
    for p in &players {
        p.wait_bytes(20_000, Duration::from_secs(20));
    }
    server.wait_for_stream(
        PATH,
        |s| {
            s["renditions"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == "source" && r["players"] == 20)
            })
        },
        Duration::from_secs(10),
    );
    players[0].signal("-STOP");
    let start = Instant::now();
    let before: Vec<u64> = players.iter().map(Player::bytes).collect();
    thread::sleep(Duration::from_secs(8));
    let end = Instant::now();
    for (i, p) in players.iter().enumerate().skip(1) {
        assert!(
            p.bytes() > before[i] + 100_000,
            "player {i} got {} bytes in 8 s",
            p.bytes() - before[i]
        );
        let gap = p.max_gap(start, end);
        assert!(
            gap <= Duration::from_millis(1500),
            "player {i} starved {gap:?}"
        );
    }
    // The stalled one is eventually dropped (idle timeout or lag).
    server.wait_for_stream(
        PATH,
        |s| {
            s["renditions"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == "source" && r["players"] == 19)
            })
        },
        Duration::from_secs(15),
    );
    players[0].signal("-CONT");
}

// -- workers ------------------------------------------------------------------

/// `[srt] workers = 4`: four sockets on the SRT port; the kernel spreads
/// players over them by address. Every player plays, a recording through
/// a worker decodes cleanly, the per-stream limit counts the players of
/// every worker, the gauges add up, and the stream's end closes them all.
#[test]
fn players_spread_over_srt_workers_share_the_limits() {
    let server = Sluice::start(Some("[srt]\nworkers = 4\nmax_players_per_stream = 9\n"));
    let dir = TempDir::new("srt-workers");
    let publisher = publish(&server, PATH, 60);
    let url = server.srt_url(PATH, "");
    let players: Vec<Player> = (0..8).map(|_| Player::srt_live_transmit(&url)).collect();
    for p in &players {
        p.wait_bytes(50_000, Duration::from_secs(20));
    }
    let recording = dir.path().join("through-a-worker.ts");
    record_srt(&url, 4, &recording);
    assert_eq!(
        decode_errors(&recording).trim(),
        "",
        "decoding {recording:?}"
    );
    let workers: std::collections::BTreeSet<u64> = server
        .log_json_matching(&[("message", "srt player connected")])
        .iter()
        .filter_map(|l| log_field(l, "worker").and_then(Value::as_u64))
        .collect();
    // 8 addresses on one of 4 workers each: all on one by chance is 1 in
    // 4^7 = 16 384.
    assert!(workers.len() >= 2, "players all on worker {workers:?}");
    assert!(workers.iter().all(|w| *w < 4), "workers {workers:?}");
    // The recording's connection is gone once the server has its Shutdown.
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(8.0),
        Duration::from_secs(10),
    );
    // 8 playing + 1 = the limit of 9, whichever workers they are on.
    let ninth = Player::srt_live_transmit(&url);
    ninth.wait_bytes(20_000, Duration::from_secs(10));
    assert_eq!(
        libsrt_connect(&dir, server.srt_addr(), PATH, ""),
        "rejected 1402"
    );
    // The stream ends: every worker closes its players.
    drop(publisher);
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(0.0),
        Duration::from_secs(10),
    );
    let gone = server.log_json_matching(&[("message", "srt player disconnected")]);
    let came = server.log_json_matching(&[("message", "srt player connected")]);
    // The 8, the recording and the ninth.
    assert_eq!(came.len(), 10);
    assert_eq!(gone.len(), 10, "every worker closed its players");
}

// -- limits -------------------------------------------------------------------

#[test]
fn players_per_stream_are_capped_with_1402() {
    let server = Sluice::start(Some("[srt]\nmax_players_per_stream = 2\n"));
    let dir = TempDir::new("srt-per-stream");
    let _publisher = publish(&server, PATH, 40);
    let a = Player::srt_live_transmit(&server.srt_url(PATH, ""));
    let b = Player::srt_live_transmit(&server.srt_url(PATH, ""));
    a.wait_bytes(20_000, Duration::from_secs(10));
    b.wait_bytes(20_000, Duration::from_secs(10));
    assert_eq!(
        libsrt_connect(&dir, server.srt_addr(), PATH, ""),
        "rejected 1402"
    );
    drop(b);
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    assert_eq!(
        libsrt_connect(&dir, server.srt_addr(), PATH, ""),
        "connected"
    );
    assert!(a.bytes() > 20_000);
}

#[test]
fn a_handshake_flood_from_one_address_is_rate_limited_while_players_play() {
    let server = Sluice::start(Some("[srt]\nmax_handshakes_per_ip_per_second = 20\n"));
    let dir = TempDir::new("srt-flood");
    let _publisher = publish(&server, PATH, 40);
    let srt = server.srt_addr();
    let player = Player::srt_live_transmit(&server.srt_url(PATH, ""));
    player.wait_bytes(50_000, Duration::from_secs(10));
    // The flood comes from another loopback address (127.0.0.2), so the
    // players on 127.0.0.1 have their own budget.
    let flood = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    flood.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut sent = 0u32;
    let mut replies = 0u32;
    let mut buf = [0u8; 1500];
    while start.elapsed() < Duration::from_secs(2) {
        for i in 0..50 {
            let _ = flood.send_to(&handshake(4, 2, 1500, 1, 7000 + i, 0, &[]), srt);
            sent += 1;
        }
        while flood.recv_from(&mut buf).is_ok() {
            replies += 1;
        }
        thread::sleep(Duration::from_millis(5));
        // A real caller connects in the middle of the flood.
        if sent == 50 * 100 {
            assert_eq!(libsrt_connect(&dir, srt, PATH, ""), "connected");
        }
    }
    thread::sleep(Duration::from_millis(200));
    while flood.recv_from(&mut buf).is_ok() {
        replies += 1;
    }
    let end = Instant::now();
    assert!(sent > 1000, "sent only {sent}");
    // At most 20 per started second (3 windows over 2 s).
    assert!(
        replies <= 60,
        "{replies} induction replies to {sent} attempts"
    );
    assert!(replies >= 20, "the flooding address was not served at all");
    let dropped =
        server.metric_or_zero(r#"sluice_srt_dropped_datagrams_total{reason="handshake_rate"}"#);
    assert!(
        dropped >= f64::from(sent - replies) * 0.9,
        "dropped {dropped} of {sent}"
    );
    let gap = player.max_gap(start, end);
    assert!(gap <= Duration::from_secs(1), "player starved for {gap:?}");
    assert_eq!(libsrt_connect(&dir, srt, PATH, ""), "connected");
}

// -- read authorization -------------------------------------------------------

#[test]
fn per_application_passphrases_and_user_tokens() {
    let server = Sluice::start(Some(
        "[apps.live]\nread_passphrase = \"live-passphrase-1\"\n\
         [apps.open]\n\
         [apps.club.read_tokens]\nalice = \"alice-token-1\"\n",
    ));
    let dir = TempDir::new("srt-read-auth");
    let addr = server.srt_addr();
    let _a = publish(&server, "live/cam1", 40);
    let _b = publish(&server, "club/cam2", 40);
    let _c = publish(&server, "open/cam3", 40);
    let cases = [
        // The passphrase is chosen from the streamid: per application.
        ("live/cam1", "live-passphrase-1", "connected"),
        ("live/cam1", "", "rejected 11"),
        ("live/cam1", "wrong-passphrase", "rejected 10"),
        ("open/cam3", "", "connected"),
        ("open/cam3", "live-passphrase-1", "rejected 11"),
        // Tokens: u= with s= (or user_token=).
        ("#!::r=club/cam2,u=alice,s=alice-token-1", "", "connected"),
        (
            "#!::u=alice,user_token=alice-token-1,r=club/cam2",
            "",
            "connected",
        ),
        ("club/cam2", "", "rejected 1401"),
        ("#!::r=club/cam2,u=alice", "", "rejected 1401"),
        ("#!::r=club/cam2,u=alice,s=wrong", "", "rejected 1403"),
        (
            "#!::r=club/cam2,u=mallory,s=alice-token-1",
            "",
            "rejected 1403",
        ),
    ];
    for (sid, pw, want) in cases {
        assert_eq!(libsrt_connect(&dir, addr, sid, pw), want, "{sid} / {pw:?}");
    }
    // ffmpeg plays with the stream's passphrase (and the token form).
    let url = server.srt_url(PATH, "passphrase=live-passphrase-1");
    assert_h264_aac(&probe_streams(&url), &url);
    let url = server.srt_url("%23!::r=club/cam2,u=alice,s=alice-token-1", "");
    assert_h264_aac(&probe_streams(&url), &url);
    assert_eq!(
        server.metric_or_zero(r#"sluice_auth_rejects_total{action="read",reason="wrong_token"}"#),
        1.0
    );
    assert_eq!(
        server.metric_or_zero(r#"sluice_auth_rejects_total{action="read",reason="missing_token"}"#),
        2.0
    );
    // Tokens never reach the log.
    assert!(!server.log_contains("alice-token-1"));
}

/// The test read webhook: allows user `bob` with token `bob-token`, denies
/// everyone else.
fn read_rule(v: &serde_json::Value) -> (u16, Duration) {
    let ok = v["user"] == "bob" && v["token"] == "bob-token";
    (if ok { 204 } else { 403 }, Duration::from_millis(300))
}

#[test]
fn a_read_webhook_decides_srt_players() {
    let (port, seen) = webhook_server(read_rule);
    let server = Sluice::start(Some(&format!(
        "[apps.live]\nread_webhook = \"http://127.0.0.1:{port}/read\"\n"
    )));
    let dir = TempDir::new("srt-read-webhook");
    let addr = server.srt_addr();
    let _a = publish(&server, PATH, 40);
    assert_eq!(
        libsrt_connect(&dir, addr, "#!::r=live/cam1/source,u=bob,s=bob-token", ""),
        "connected"
    );
    let body = seen.lock().unwrap()[0].clone();
    assert_eq!(body["action"], "read");
    assert_eq!(body["protocol"], "srt");
    assert_eq!(body["path"], PATH);
    assert_eq!(body["rendition"], "source");
    assert_eq!(body["user"], "bob");
    assert!(body["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert_eq!(
        libsrt_connect(&dir, addr, "#!::r=live/cam1,u=eve,s=guess", ""),
        "rejected 1403"
    );
    assert_eq!(libsrt_connect(&dir, addr, PATH, ""), "rejected 1403");
    assert_eq!(
        server
            .metric_or_zero(r#"sluice_auth_rejects_total{action="read",reason="webhook_denied"}"#),
        2.0
    );
    // One webhook call per connection attempt, not per retransmission.
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// What the lossy relay saw: each dropped first send (sequence number,
/// when) and the sequence numbers of the retransmissions it passed on.
#[derive(Default)]
struct LossLog {
    dropped: Vec<(u32, Instant)>,
    resent: std::collections::HashSet<u32>,
}

/// A UDP relay between one SRT caller and sluice that drops every `nth`
/// data packet sluice sends for the first time (retransmissions pass).
fn lossy_path(
    sluice: std::net::SocketAddr,
    nth: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (std::net::SocketAddr, Arc<Mutex<LossLog>>) {
    use std::sync::atomic::Ordering;
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(sluice).unwrap();
    let addr = front.local_addr().unwrap();
    let log = Arc::new(Mutex::new(LossLog::default()));
    let caller = Arc::new(Mutex::new(None::<std::net::SocketAddr>));
    let (f2, b2, c2, s2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        caller.clone(),
        stop.clone(),
    );
    f2.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = f2.recv_from(&mut buf) {
                *c2.lock().unwrap() = Some(from);
                let _ = b2.send(&buf[..n]);
            }
        }
    });
    back.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log2 = log.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut first_sends = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = back.recv(&mut buf) else { continue };
            // Data: the top bit of the first word is 0 (the rest is the
            // sequence number); R (retransmitted) is bit 2 of byte 4.
            if n > 16 && buf[0] & 0x80 == 0 {
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                if buf[4] & 0x04 != 0 {
                    log2.lock().unwrap().resent.insert(seq);
                } else {
                    first_sends += 1;
                    if first_sends % nth == 0 {
                        log2.lock().unwrap().dropped.push((seq, Instant::now()));
                        continue;
                    }
                }
            }
            if let Some(to) = *caller.lock().unwrap() {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    (addr, log)
}

#[test]
fn a_player_on_a_lossy_path_gets_what_it_naks_and_decodes_clean() {
    use std::sync::atomic::Ordering;
    let server = Sluice::start(None);
    let _publisher = publish(&server, PATH, 40);
    server.wait_for_stream(
        PATH,
        |s| s["renditions"].is_array(),
        Duration::from_secs(20),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 4 % of the first sends lost, at the default 120 ms latency.
    let (addr, log) = lossy_path(server.srt_addr(), 25, stop.clone());
    let dir = TempDir::new("srt-pull-lossy");
    let out = dir.join("lossy.ts");
    // srt-live-transmit writes exactly what the player received.
    let file = std::fs::File::create(&out).unwrap();
    let mut cmd = command(
        "srt-live-transmit",
        &[
            "-q",
            "-a:no",
            &format!("srt://{addr}?streamid={PATH}"),
            "file://con",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .process_group(0);
    let mut player = cmd.spawn().expect("start srt-live-transmit");
    thread::sleep(Duration::from_secs(6));
    let end = Instant::now();
    // SIGINT: srt-live-transmit flushes and exits.
    unsafe { libc::kill(-(player.id() as i32), libc::SIGINT) };
    if !poll_until(Duration::from_secs(3), || {
        matches!(player.try_wait(), Ok(Some(_)))
    }) {
        let _ = player.kill();
        let _ = player.wait();
    }
    stop.store(true, Ordering::Relaxed);
    let log = log.lock().unwrap();
    // Every packet the path dropped (but the last moments', which the
    // player may not have missed yet) came back as a retransmission.
    let settled: Vec<u32> = log
        .dropped
        .iter()
        .filter(|(_, at)| end.saturating_duration_since(*at) > Duration::from_millis(500))
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        settled.len() >= 10,
        "the path dropped {} packets",
        settled.len()
    );
    let missing: Vec<&u32> = settled.iter().filter(|s| !log.resent.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "never resent: {missing:?} of {settled:?}"
    );
    let data = std::fs::read(&out).unwrap();
    let mut demux = sluice::ts::Demuxer::new();
    demux
        .push(&data, &mut Vec::new())
        .expect("the recording demuxes");
    assert_eq!(
        demux.continuity_errors(),
        0,
        "a lost packet reached the player"
    );
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "{errors}");
    let frames = video_frames(&out, 10_000);
    assert!(frames.len() > 120, "{} frames in 6 s", frames.len());
}
