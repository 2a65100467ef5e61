//! Authorization holes an attacker on the network could use, each tried
//! against the real binary beside a recorded bystander stream that must
//! lose nothing: unknown applications on a keyed relay, a read-webhook
//! answer replayed for another stream under the same SRT socket id,
//! percent-encoded streamid tokens in the log, and a Conclusion flood from
//! one address that used to lock every webhook-checked player out. After
//! each case sluice's fds, tasks and RSS are back at their baseline.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use common::rtmp_client::{PublishOptions, PublishOutcome, RtmpPublisher};
use common::srt_packets::*;
use common::*;

/// One libsrt caller (Python's ctypes) from 127.0.0.1: connects with
/// `streamid`, then reads up to `want` bytes (at most 5 s). Prints
/// `connected MS BYTES` or `rejected CODE MS`; returned split in fields.
fn libsrt_play(dir: &TempDir, addr: SocketAddr, streamid: &str, want: usize) -> Vec<String> {
    const SCRIPT: &str = r#"
import ctypes, socket, struct, sys, time
lib = ctypes.CDLL("libsrt-gnutls.so.1.5")
lib.srt_startup()
lib.srt_setloglevel(2)
port, sid, want = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
s = lib.srt_create_socket()
lib.srt_setsockflag(s, 46, ctypes.c_char_p(sid), len(sid))
timeout = ctypes.c_int(5000)
lib.srt_setsockflag(s, 14, ctypes.byref(timeout), 4)
addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
t = time.monotonic()
r = lib.srt_connect(s, ctypes.c_char_p(addr), len(addr))
ms = (time.monotonic() - t) * 1000
if r == -1:
    print("rejected %d %.0f" % (lib.srt_getrejectreason(s), ms), flush=True)
else:
    got, buf, end = 0, ctypes.create_string_buffer(1500), time.monotonic() + 5
    while got < want and time.monotonic() < end:
        n = lib.srt_recvmsg(s, buf, 1500)
        if n <= 0:
            break
        got += n
    print("connected %.0f %d" % (ms, got), flush=True)
lib.srt_close(s)
lib.srt_cleanup()
"#;
    let script = dir.join("libsrt_play.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut cmd = Command::new(require_program("python3", "python3"));
    cmd.arg(&script)
        .arg(addr.port().to_string())
        .arg(streamid)
        .arg(want.to_string());
    let (_, out, err) = run_to_exit("python3 libsrt", cmd, Duration::from_secs(30));
    let line = out.lines().last().unwrap_or_default();
    let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
    assert!(
        fields.len() == 3 && (fields[0] == "connected" || fields[0] == "rejected"),
        "libsrt caller printed {out:?}; stderr {err}"
    );
    fields
}

/// `connected` or `rejected CODE`, as srt_pull's helper says it.
fn libsrt_outcome(dir: &TempDir, addr: SocketAddr, streamid: &str) -> String {
    let f = libsrt_play(dir, addr, streamid, 0);
    if f[0] == "connected" {
        "connected".into()
    } else {
        format!("rejected {}", f[1])
    }
}

/// Publish the fixture to `path` (with `query`) for `secs` and wait until
/// it is ready.
fn publish(server: &Sluice, path: &str, query: &str, secs: u32) -> ChildGuard {
    let url = format!("{}{query}", server.rtmp_url(path));
    let ff = publish_fixture(&fixture_avc_aac(60), &url, PublishFor::Secs(secs));
    server.wait_log_fields(
        &[("message", "stream ready"), ("stream", path)],
        Duration::from_secs(15),
    );
    ff
}

/// The bystander recorded the whole case (give or take its start-up) with
/// no lost frame.
fn finish(bystander: Bystander, watched: Instant) {
    bystander.finish(watched.elapsed().as_secs_f64() - 2.0);
}

fn publish_outcome(server: &Sluice, app: &str, name: &str) -> PublishOutcome {
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), app, PublishOptions::default())
        .expect("rtmp connect");
    p.publish(name)
}

#[test]
fn unknown_applications_are_refused_once_any_is_configured() {
    let mut server = Sluice::start(Some(
        "[apps.live.publish_keys]\ncam1 = \"bystander-key-1\"\n",
    ));
    let dir = TempDir::new("unknown-app");
    let bystander = Bystander::start(&server, "live/cam1", "?key=bystander-key-1", "", 60);
    let watched = Instant::now();
    let base = server.usage();

    // One letter away, or another name: no key was ever asked for these.
    let spellings = ["Live", "LIVE", "other", "live2"];
    for app in spellings {
        match publish_outcome(&server, app, "x") {
            PublishOutcome::Refused(st) => {
                assert_eq!(st.code, "NetStream.Publish.BadName", "{app}: {st:?}");
                assert!(
                    st.description.contains("unknown application"),
                    "{app}: {st:?}"
                );
            }
            other => panic!("{app}/x published on a keyed relay: {other:?}"),
        }
        assert!(server.stream(&format!("{app}/x")).is_none());
    }
    // Nor can anyone read them.
    let srt = server.srt_addr();
    for sid in ["other/x", "#!::r=Live/x,m=request"] {
        assert_eq!(libsrt_outcome(&dir, srt, sid), "rejected 1404", "{sid}");
    }
    server.wait_metric(
        r#"sluice_auth_rejects_total{action="publish",reason="unknown_app"}"#,
        |v| v == Some(spellings.len() as f64),
        Duration::from_secs(5),
    );
    // Two callers; a resent Conclusion crossing a refusal may add one each.
    let refused = server.wait_metric(
        r#"sluice_auth_rejects_total{action="read",reason="unknown_app"}"#,
        |v| v >= Some(2.0),
        Duration::from_secs(5),
    );
    assert!(refused <= Some(4.0), "{refused:?}");
    // The configured application still works as configured.
    match publish_outcome(&server, "live", "cam1") {
        PublishOutcome::Refused(st) => assert!(st.description.contains("missing publish key")),
        other => panic!("{other:?}"),
    }
    server.wait_usage_back(base, "unknown applications");
    server.assert_alive("after unknown applications");
    finish(bystander, watched);
}

#[test]
fn a_default_section_gives_unlisted_applications_its_keys_and_tokens() {
    let mut server = Sluice::start(Some(
        "[apps.live]\n\
         [apps.\"*\".publish_keys]\ncam1 = \"star-publish-key-1\"\n\
         [apps.\"*\".read_tokens]\nalice = \"star-alice-token-1\"\n",
    ));
    let dir = TempDir::new("default-app");
    // The named application has no keys: open.
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let watched = Instant::now();
    let base = server.usage();

    for (app, name, want) in [
        ("other", "cam1", "missing publish key"),
        ("other", "cam1?key=wrong-key-12", "wrong publish key"),
        ("Live", "cam2?key=star-publish-key-1", "not allowed"),
    ] {
        match publish_outcome(&server, app, name) {
            PublishOutcome::Refused(st) => assert!(st.description.contains(want), "{st:?}"),
            other => panic!("{app}/{name}: {other:?}"),
        }
    }
    let _other = publish(&server, "other/cam1", "?key=star-publish-key-1", 60);
    let srt = server.srt_addr();
    assert_eq!(libsrt_outcome(&dir, srt, "other/cam1"), "rejected 1401");
    assert_eq!(
        libsrt_outcome(&dir, srt, "#!::r=other/cam1,u=alice,s=nope"),
        "rejected 1403"
    );
    let played = libsrt_play(
        &dir,
        srt,
        "#!::r=other/cam1,u=alice,s=star-alice-token-1",
        50_000,
    );
    assert_eq!(played[0], "connected", "{played:?}");
    assert!(played[2].parse::<usize>().unwrap() >= 50_000, "{played:?}");
    // The named application does not inherit the default's rules.
    assert_eq!(libsrt_outcome(&dir, srt, "live/cam1"), "connected");
    assert_eq!(
        server
            .metric_or_zero(r#"sluice_auth_rejects_total{action="publish",reason="unknown_app"}"#),
        0.0
    );
    drop(_other);
    server.wait_stream_gone("other/cam1", Duration::from_secs(15));
    server.wait_usage_back(base, "default application");
    server.assert_alive("after the default application");
    finish(bystander, watched);
}

#[test]
fn zero_config_stays_open() {
    let server = Sluice::start(None);
    for app in ["live", "Other", "x"] {
        assert!(
            publish_outcome(&server, app, "cam").is_accepted(),
            "{app}/cam"
        );
    }
}

/// The raw caller of the webhook-reuse case.
const RAW_CALLER: &str = "127.0.0.3";

/// Set by the test once [`RAW_CALLER`] got its answer for club/secret.
static SECRET_REFUSED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The read webhook of `club`: allows `club/public`, refuses everything
/// else, 200 ms late. To [`RAW_CALLER`] it refuses club/secret at once and
/// allows club/public only after the test has seen club/secret refused
/// (sluice's webhook_timeout is 10 s, this waits 30 s at most): that
/// caller has both questions open at once and club/secret is answered
/// first, however slow the machine.
fn public_only(v: &serde_json::Value) -> (u16, Duration) {
    let public = v["path"] == "club/public";
    let raw = v["client"]
        .as_str()
        .is_some_and(|c| c.starts_with(&format!("{RAW_CALLER}:")));
    match (raw, public) {
        (false, _) => (if public { 204 } else { 403 }, Duration::from_millis(200)),
        (true, false) => (403, Duration::ZERO),
        (true, true) => {
            let (refused, cv) = &SECRET_REFUSED;
            let wait = Duration::from_secs(30);
            drop(cv.wait_timeout_while(refused.lock().unwrap(), wait, |r| !*r));
            (204, Duration::ZERO)
        }
    }
}

/// Sends `conclusion` from `sock` until a handshake comes back (the
/// listener says nothing while its webhook is asked), every 250 ms like
/// libsrt, for 10 s at most; returns its shake type (-1 accepted, 1000 +
/// code rejected). `sock` must have a read timeout.
fn conclude(sock: &UdpSocket, srt: SocketAddr, conclusion: &[u8]) -> i32 {
    let mut buf = [0u8; 1500];
    for _ in 0..40 {
        sock.send_to(conclusion, srt).unwrap();
        let deadline = Instant::now() + Duration::from_millis(250);
        while Instant::now() < deadline {
            // A read timeout: wait on until the next resend.
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n >= 64 && buf[0] == 0x80 && buf[1] == 0 {
                return i32::from_be_bytes(buf[36..40].try_into().unwrap());
            }
        }
    }
    panic!("no answer to the Conclusion in 10 s");
}

#[test]
fn a_read_webhook_answer_is_never_reused_for_another_stream() {
    let (port, seen) = webhook_server(public_only);
    let server = Sluice::start(Some(&format!(
        "[apps.live]\n[apps.club]\nread_webhook = \"http://127.0.0.1:{port}/read\"\n\
         webhook_timeout = \"10s\"\n"
    )));
    let dir = TempDir::new("webhook-reuse");
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let watched = Instant::now();
    let _public = publish(&server, "club/public", "", 60);
    let _secret = publish(&server, "club/secret", "", 60);
    let srt = server.srt_addr();
    // The webhook's own rule, one caller each.
    assert_eq!(libsrt_outcome(&dir, srt, "club/public"), "connected");
    assert_eq!(libsrt_outcome(&dir, srt, "club/secret"), "rejected 1403");
    let base = server.usage();

    // A raw caller starts the webhook for club/public with socket id S,
    // then concludes for club/secret with the same S before club/public is
    // answered.
    let sock = UdpSocket::bind(format!("{RAW_CALLER}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let id = 0x0BAD_5EED;
    let cookie = induce(&sock, srt, id);
    let hs = |sid: &str| handshake(5, 5, 1500, -1, id, cookie, &[hsreq(), sid_ext(sid)]);
    sock.send_to(&hs("club/public"), srt).unwrap();
    let asked = poll_until(Duration::from_secs(5), || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|b| b["path"] == "club/public")
            .count()
            >= 2
    });
    assert!(asked, "the webhook was not asked for club/public");
    let shake = conclude(&sock, srt, &hs("club/secret"));
    assert_eq!(
        shake, 2403,
        "club/secret was answered with shake {shake} (-1: accepted on club/public's answer)"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|b| b["path"] == "club/secret")
            .count()
            >= 2,
        "the webhook was not asked for club/secret"
    );
    // Only now may the webhook allow club/public. Its answer serves
    // club/public: the raw caller resends that Conclusion as libsrt would
    // (every 250 ms) until it is accepted, by the listener's replay of the
    // held one or on a retransmission...
    let (refused, cv) = &SECRET_REFUSED;
    *refused.lock().unwrap() = true;
    cv.notify_all();
    let shake = conclude(&sock, srt, &hs("club/public"));
    assert_eq!(shake, -1, "club/public was answered with shake {shake}");
    let peer = sock.local_addr().unwrap().to_string();
    server.wait_log_fields(
        &[
            ("message", "srt player connected"),
            ("peer", &peer),
            ("stream", "club/public"),
        ],
        Duration::from_secs(5),
    );
    // ...and nobody ever played club/secret.
    let secret_players = server.log_json_matching(&[
        ("message", "srt player connected"),
        ("stream", "club/secret"),
    ]);
    assert!(secret_players.is_empty(), "{secret_players:?}");
    // Two refusals (libsrt's caller, the raw one); a resent Conclusion
    // crossing a refusal may add one each.
    let denied = server.wait_metric(
        r#"sluice_auth_rejects_total{action="read",reason="webhook_denied"}"#,
        |v| v >= Some(2.0),
        Duration::from_secs(5),
    );
    assert!(denied <= Some(4.0), "{denied:?}");
    drop(sock);
    server.wait_usage_back(base, "socket id reuse");
    finish(bystander, watched);
}

#[test]
fn streamid_tokens_never_reach_the_log_in_any_encoding() {
    let server = Sluice::start(Some(
        "[apps.live]\n[apps.club.read_tokens]\nalice = \"alice-token-1\"\n",
    ));
    let dir = TempDir::new("sid-secrets");
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let watched = Instant::now();
    let _club = publish(&server, "club/cam2", "", 60);
    let srt = server.srt_addr();
    let base = server.usage();
    let secrets = [
        "WRONG-TOKEN-FULLY-ENCODED",
        "WRONG-TOKEN-HALF-ENCODED",
        "WRONG-USER-TOKEN-ENCODED",
        "MALFORMED-STREAMID-TOKEN",
        "EXTRA-KEY-PARAM-SECRET",
        "BAD-MODE-STREAMID-TOKEN",
    ];
    for (sid, want) in [
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dalice%2Cs%3DWRONG-TOKEN-FULLY-ENCODED",
            "rejected 1403",
        ),
        (
            "#!::r=club/cam2,u=alice,s%3DWRONG-TOKEN-HALF-ENCODED",
            "rejected 1403",
        ),
        (
            "%23%21%3A%3Au%3Dalice%2Cuser_token%3DWRONG-USER-TOKEN-ENCODED%2Cr%3Dclub%2Fcam2",
            "rejected 1403",
        ),
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cs%3DMALFORMED-STREAMID-TOKEN%2Cbroken",
            "rejected 1400",
        ),
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dbob%2Ckey%3DEXTRA-KEY-PARAM-SECRET",
            "rejected 1401",
        ),
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cm%3Dplay%2Cs%3DBAD-MODE-STREAMID-TOKEN",
            "rejected 1405",
        ),
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dalice%2Cs%3Dalice-token-1",
            "connected",
        ),
    ] {
        assert_eq!(libsrt_outcome(&dir, srt, sid), want, "{sid}");
    }
    server.wait_log("srt caller rejected", Duration::from_secs(5));
    let log = server.log_lines().join("\n");
    for s in secrets.iter().chain(["alice-token-1"].iter()) {
        assert!(!log.contains(s), "{s} is in the log");
    }
    // The rejections are still logged, with the secrets masked.
    // Six refused callers; a resent Conclusion crossing a refusal is
    // refused (and logged) again.
    let rejected = server.log_json_matching(&[("message", "srt caller rejected")]);
    assert!((6..=12).contains(&rejected.len()), "{rejected:?}");
    assert!(
        rejected
            .iter()
            .any(|l| log_field(l, "streamid").and_then(|v| v.as_str())
                == Some("#!::r=club/cam2,m=request,s=***,u=alice")),
        "{rejected:?}"
    );
    server.wait_usage_back(base, "streamid secrets");
    finish(bystander, watched);
}

/// Every string in a JSON log value, however deep.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn caller_controlled_names_never_put_control_characters_in_the_log() {
    let mut server = Sluice::start(Some(
        "[apps.live]\n[apps.club.read_tokens]\nalice = \"alice-token-1\"\n",
    ));
    let dir = TempDir::new("sid-control");
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let watched = Instant::now();
    let _club = publish(&server, "club/cam2", "", 60);
    let srt = server.srt_addr();
    let base = server.usage();
    // A user name that, printed raw in the text log format, would end the
    // line and forge another (CR, LF, ESC, NEL, U+2028, NUL, DEL).
    for (sid, want) in [
        (
            "#!::r=club/cam2,u=mallory%0A2027-01-01T00:00:00Z  INFO sluice: srt player connected FORGED,s=x",
            "rejected 1403",
        ),
        (
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dm%0D%1B%5B2KFORGED%C2%85%E2%80%A8%00%7F%2Cs%3Dx",
            "rejected 1403",
        ),
    ] {
        assert_eq!(libsrt_outcome(&dir, srt, sid), want, "{sid}");
    }
    // And raw bytes, not percent-encoded, from a raw caller.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let id = 0x0C0F_FEE0;
    let cookie = induce(&sock, srt, id);
    let raw = "#!::r=club/cam2,u=m\n\r\x1b[31mFORGED\x07\t,s=x";
    let conclusion = handshake(5, 5, 1500, -1, id, cookie, &[hsreq(), sid_ext(raw)]);
    assert_eq!(conclude(&sock, srt, &conclusion), 2403);
    drop(sock);

    let rejected = server.wait_metric(
        r#"sluice_auth_rejects_total{action="read",reason="unknown_user"}"#,
        |v| v >= Some(3.0),
        Duration::from_secs(5),
    );
    assert!(rejected <= Some(6.0), "{rejected:?}");
    let mut reasons = 0;
    for line in server.log_lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let mut texts = Vec::new();
        strings(&v, &mut texts);
        for t in &texts {
            assert!(
                !t.chars()
                    .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
                "a log field holds a control character: {t:?} in {line}"
            );
        }
        reasons += usize::from(
            log_field(&v, "reason")
                .and_then(|r| r.as_str())
                .is_some_and(|r| r.starts_with("unknown user")),
        );
    }
    assert!(reasons >= 3, "the rejections were not logged");
    server.wait_usage_back(base, "control characters in the streamid");
    server.assert_alive("after control characters in the streamid");
    finish(bystander, watched);
}

/// The read webhook of `club`: the viewer's token at once; everyone else
/// is refused, 3 s late (after sluice's 2 s timeout).
fn slow_for_strangers(v: &serde_json::Value) -> (u16, Duration) {
    if v["user"] == "viewer" && v["token"] == "viewer-token-1" {
        (204, Duration::ZERO)
    } else {
        (403, Duration::from_secs(3))
    }
}

#[test]
fn a_conclusion_flood_from_one_address_locks_no_player_out() {
    let (port, _seen) = webhook_server(slow_for_strangers);
    let server = Sluice::start(Some(&format!(
        "[apps.live]\n[apps.club]\nread_webhook = \"http://127.0.0.1:{port}/read\"\n"
    )));
    let dir = TempDir::new("conclusion-flood");
    let bystander = Bystander::start(&server, "live/cam1", "", "", 60);
    let watched = Instant::now();
    let _club = publish(&server, "club/cam1", "", 60);
    let srt = server.srt_addr();
    let viewer = "#!::r=club/cam1,u=viewer,s=viewer-token-1";
    let quiet = libsrt_play(&dir, srt, viewer, 50_000);
    assert_eq!(quiet[0], "connected", "{quiet:?}");
    let base = server.usage();

    // One cookie from 127.0.0.2, then Conclusions with new socket ids.
    let flood = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    flood
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let cookie = induce(&flood, srt, 1);
    flood.set_nonblocking(true).unwrap();
    let conclusion = |id: u32| {
        let sid = format!("#!::r=club/cam1,u=mallory,s=guess{id}");
        handshake(5, 5, 1500, -1, id, cookie, &[hsreq(), sid_ext(&sid)])
    };
    let mut buf = [0u8; 1500];
    let mut overloaded = 0;
    let mut drain = |flood: &UdpSocket| {
        while let Ok((n, _)) = flood.recv_from(&mut buf) {
            if n >= 64 && i32::from_be_bytes(buf[36..40].try_into().unwrap()) == 2402 {
                overloaded += 1;
            }
        }
    };
    let mut sent = 0u32;
    // 2 000 a second: enough to have filled the pending table within a
    // webhook's lifetime, slow enough that sluice reads every one (the
    // count below is of rate-limited ones, not of kernel drops).
    for id in 2..1200 {
        let _ = flood.send_to(&conclusion(id), srt);
        sent += 1;
        if id % 20 == 0 {
            std::thread::sleep(Duration::from_millis(10));
            drain(&flood);
        }
    }
    // The flood goes on while a real player connects and plays.
    let player =
        std::thread::spawn(move || libsrt_play(&TempDir::new("flood-player"), srt, viewer, 50_000));
    let mut id = 5000;
    while !player.is_finished() {
        for _ in 0..20 {
            let _ = flood.send_to(&conclusion(id), srt);
            id += 1;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        drain(&flood);
    }
    let played = player.join().unwrap();
    println!(
        "legitimate SRT player: connected in {} ms without a flood, {} ms during a flood of {sent} \
         conclusions from 127.0.0.2 ({overloaded} answered 1402)",
        quiet[1], played[1]
    );
    assert_eq!(played[0], "connected", "{played:?}");
    assert!(played[2].parse::<usize>().unwrap() >= 50_000, "{played:?}");
    assert!(sent >= 1100);
    let limited =
        server.metric_or_zero(r#"sluice_srt_dropped_datagrams_total{reason="handshake_rate"}"#);
    assert!(limited >= 1000.0, "only {limited} conclusions rate-limited");
    drop(flood);
    server.wait_usage_back(base, "conclusion flood");
    finish(bystander, watched);
}

/// A publisher (zero config lets anyone publish) that sends one packet far
/// ahead and floods small packets just behind it, leaving thousands of
/// missing slots at the head of srt-protocol's receive buffer (which it
/// walks each time it is asked for a payload; sluice asks at most once a
/// millisecond while nothing is due). The one UDP loop serves every player
/// and publisher: the flood past the publisher's datagram allowance is
/// dropped before srt-protocol sees it, counted, and a bystander's publish
/// and player lose nothing.
#[test]
fn a_publisher_flooding_behind_a_hole_costs_the_other_streams_nothing() {
    let mut server = Sluice::start(Some("[rtmp]\nmax_ingest_bitrate = \"8M\"\n"));
    let bystander = Bystander::start(&server, "live/cam1", "", "", 40);
    let watched = Instant::now();
    let srt = server.srt_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let id = 0x0F10_0D01;
    let cookie = induce(&sock, srt, id);
    let hs = handshake(
        5,
        5,
        1500,
        -1,
        id,
        cookie,
        &[hsreq(), sid_ext("#!::r=live/flood,m=publish")],
    );
    // Accepted: the reply carries the listener's socket id for our data.
    let mut buf = [0u8; 1500];
    let mut listener_id = None;
    for _ in 0..40 {
        sock.send_to(&hs, srt).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 64 && buf[0] == 0x80 && buf[1] == 0 {
                let shake = i32::from_be_bytes(buf[36..40].try_into().unwrap());
                assert_eq!(shake, -1, "the publisher was refused: {shake}");
                listener_id = Some(u32::from_be_bytes(buf[40..44].try_into().unwrap()));
                break;
            }
        }
    }
    let listener_id = listener_id.expect("the publish was answered");
    // The handshake's initial sequence number (srt_packets::handshake).
    let isn = 12345u32;
    let data = |seq: u32, ts_us: u32| {
        let mut v = Vec::with_capacity(16 + 188);
        v.extend((seq & 0x7FFF_FFFF).to_be_bytes());
        v.extend((0xC000_0000u32 | 1).to_be_bytes());
        v.extend(ts_us.to_be_bytes());
        v.extend(listener_id.to_be_bytes());
        v.extend([0x47; 188]);
        v
    };
    // One packet at the far end of the window, due in a minute, and 5 s of
    // small packets just behind it, 50 000 a second (over four times the
    // allowance an 8 Mbit/s cap gives), never filling the 8000 slots
    // before them.
    sock.send_to(&data(isn + 8100, 60_000_000), srt).unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        for _ in 0..500 {
            // Near the far packet: thousands of missing slots stay ahead.
            let seq = isn + 8000 + (sent % 99) as u32;
            let _ = sock.send_to(&data(seq, 60_000_000), srt);
            sent += 1;
        }
        let due = start + Duration::from_micros(sent * 20);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
    }
    server.assert_alive("after the flood");
    drop(sock);
    finish(bystander, watched);
    let dropped =
        server.metric_or_zero(r#"sluice_srt_dropped_datagrams_total{reason="publisher_rate"}"#);
    // The allowance is about 11 100 a second at 8 Mbit/s; whatever the
    // kernel dropped on a loaded machine never reached sluice to count.
    assert!(
        dropped >= 10_000.0,
        "{dropped} of {sent} flood datagrams dropped over the allowance"
    );
}
