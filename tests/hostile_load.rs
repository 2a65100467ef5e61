//! Hostile peers against a protected relay while a real stream plays.
//!
//! One sluice with publish keys and a per-application SRT passphrase; a
//! real ffmpeg publishes (with its key) and a real ffmpeg player records
//! the stream over SRT for the whole run. Case after case, hostile peers
//! hit every listener: wrong keys, wrong passphrases both ways, forged and
//! oversized streamids, handshake floods from many source ports, thousands
//! of half-open TCP connections, a publisher flooding far above real time,
//! and the malformed RTMP and SRT input of the earlier issues.
//! After each case sluice's file descriptors, tokio tasks and resident
//! memory are back where they were; at the end the recording has no lost
//! frame and no TS continuity error.

mod common;

use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::flv;
use common::rtmp_client::{
    amf_encode_all, basic_header, handshake as rtmp_handshake, s, Amf, ChunkWriter, PublishOptions,
    PublishOutcome, RtmpPublisher, MSG_COMMAND_AMF0, MSG_SET_CHUNK_SIZE,
};
use common::srt_packets::*;
use common::*;

const CONFIG: &str = r#"
[rtmp]
max_connections = 4096
max_connections_per_ip = 4096
max_publishes_per_ip = 100

[srt]
max_handshakes_per_ip_per_second = 1000000

[apps.live.publish_keys]
cam1 = "real-publisher-key"
flood = "flood-publisher-key"

[apps.secure]
read_passphrase = "secure-passphrase-1"
"#;

fn python_libsrt(dir: &TempDir, port: u16, sid: &str, passphrase: &str, n: usize) -> String {
    const SCRIPT: &str = r#"
import ctypes, socket, struct, sys
lib = ctypes.CDLL("libsrt-gnutls.so.1.5")
lib.srt_startup()
lib.srt_setloglevel(2)
port, sid, pw, n = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode(), int(sys.argv[4])
addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
seen = {}
for i in range(n):
    s = lib.srt_create_socket()
    lib.srt_setsockflag(s, 46, ctypes.c_char_p(sid), len(sid))
    if pw:
        lib.srt_setsockflag(s, 26, ctypes.c_char_p(pw), len(pw))
    r = lib.srt_connect(s, ctypes.c_char_p(addr), len(addr))
    k = "connected" if r != -1 else "rejected %d" % lib.srt_getrejectreason(s)
    seen[k] = seen.get(k, 0) + 1
    lib.srt_close(s)
print(",".join("%s x%d" % kv for kv in sorted(seen.items())), flush=True)
lib.srt_cleanup()
"#;
    let script = dir.join("libsrt.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut cmd = Command::new(require_program("python3", "python3"));
    cmd.arg(&script)
        .arg(port.to_string())
        .arg(sid)
        .arg(passphrase)
        .arg(n.to_string());
    let (st, out, err) = run_to_exit("python3 libsrt", cmd, Duration::from_secs(120));
    assert!(st.success(), "{err}");
    out.trim().to_string()
}

#[test]
fn hostile_peers_cost_a_playing_stream_nothing() {
    let mut server = Sluice::start(Some(CONFIG));
    let dir = TempDir::new("hostile");
    let fixture = fixture_avc_aac(60);
    let bystander = Bystander::start(&server, "live/cam1", "?key=real-publisher-key", "", 60);
    server.wait_metric(
        "sluice_srt_players",
        |v| v == Some(1.0),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(1));
    let base = server.usage();
    let srt = server.srt_addr();
    let rtmp = server.rtmp_addr();

    // 1. Wrong, missing and unknown publish keys.
    for (i, name) in ["cam1?key=wrong", "cam1", "ghost?key=real-publisher-key"]
        .iter()
        .cycle()
        .take(60)
        .enumerate()
    {
        let mut p = RtmpPublisher::connect(rtmp, "live", PublishOptions::default()).unwrap();
        match p.publish(name) {
            PublishOutcome::Refused(st) => assert_eq!(st.code, "NetStream.Publish.BadName"),
            other => panic!("attempt {i} ({name}): {other:?}"),
        }
    }
    server.wait_usage_back(base, "wrong publish keys");

    // 2. Wrong passphrases in both directions: a wrong one for a protected
    //    stream, none for it, and one for a stream that has none.
    let _secure = {
        let url = format!("{}?key=unused", server.rtmp_url("secure/cam9"));
        publish_fixture(&fixture, &url, PublishFor::Secs(30))
    };
    server.wait_for_stream("secure/cam9", |_| true, Duration::from_secs(10));
    let port = srt.port();
    assert_eq!(
        python_libsrt(&dir, port, "secure/cam9", "not-the-passphrase", 20),
        "rejected 10 x20"
    );
    assert_eq!(
        python_libsrt(&dir, port, "secure/cam9", "", 20),
        "rejected 11 x20"
    );
    assert_eq!(
        python_libsrt(&dir, port, "live/cam1", "secure-passphrase-1", 20),
        "rejected 11 x20"
    );
    server.wait_usage_back(base, "wrong passphrases");

    // 3. Forged and oversized streamids, as raw handshakes with a valid
    //    cookie (libsrt itself refuses to send more than 512 bytes).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let long = format!("#!::r=live/cam1,u={}", "x".repeat(600));
    for (i, sid) in [
        long.as_str(),
        "#!::r=../../etc,m=request",
        "#!::r=live/cam1,m=publish",
        "\u{0}\u{1}",
    ]
    .iter()
    .cycle()
    .take(40)
    .enumerate()
    {
        let id = 5000 + i as u32;
        let cookie = induce(&sock, srt, id);
        let exts = [hsreq(), sid_ext(sid)];
        sock.send_to(&handshake(5, 5, 1500, -1, id, cookie, &exts), srt)
            .unwrap();
        // Refused (1400-range reply) or dropped by the guard; never accepted.
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let shake = i32::from_be_bytes(buf[36..40].try_into().unwrap());
            assert!(n >= 64 && shake != -1, "streamid {sid:?} was accepted");
        }
    }
    server.wait_usage_back(base, "forged streamids");

    // 4. Handshake floods from many source ports.
    let socks: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for round in 0..10u32 {
        for (i, s) in socks.iter().enumerate() {
            let _ = s.send_to(
                &handshake(4, 2, 1500, 1, round * 1000 + i as u32, 0, &[]),
                srt,
            );
            for d in hostile_datagrams().iter().take(3) {
                let _ = s.send_to(d, srt);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(socks);
    server.wait_usage_back(base, "handshake flood");

    // 5. Thousands of half-open TCP connections on the RTMP port: connected
    //    and silent, then dropped at once.
    let mut half_open = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect_timeout(&rtmp, Duration::from_secs(2)) {
            Ok(s) => half_open.push(s),
            Err(_) => break,
        }
    }
    assert!(
        half_open.len() >= 1000,
        "only {} connections",
        half_open.len()
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(half_open);
    server.wait_usage_back(base, "half-open TCP");

    // 6. A publisher sending as fast as the socket takes it (far above its
    //    declared real-time rate) on its own stream.
    let file = flv::read_flv(&fixture_avc_aac(20));
    let mut flood = RtmpPublisher::connect(
        rtmp,
        "live?key=flood-publisher-key",
        PublishOptions {
            realtime: false,
            ..PublishOptions::default()
        },
    )
    .unwrap();
    assert!(flood.publish("flood").is_accepted());
    let t = Instant::now();
    let report = flood.send_tags(&file.tags);
    println!("flood publisher: {report:?} in {:?}", t.elapsed());
    flood.close();
    server.wait_stream_gone("live/flood", Duration::from_secs(10));
    server.wait_usage_back(base, "flooding publisher");

    // 7. The hostile inputs of the earlier issues, against the same relay:
    //    RTMP garbage and malformed chunk streams, every hostile SRT
    //    datagram. Each is closed or dropped; nothing is held afterwards.
    let garbage = {
        let mut junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        junk.resize(2048, 0xA5);
        junk
    };
    let huge_header = {
        let mut m = basic_header(0, 3);
        m.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF, MSG_COMMAND_AMF0, 0, 0, 0, 0]);
        m.resize(12 + 128, 0x05);
        m
    };
    let deep_amf = {
        let mut payload = amf_encode_all(&[s("connect"), Amf::Number(1.0)]);
        for _ in 0..30_000 {
            payload.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        let mut w = ChunkWriter::default();
        let mut wire = w.message(2, MSG_SET_CHUNK_SIZE, 0, 0, &4096u32.to_be_bytes());
        w.chunk_size = 4096;
        wire.extend(w.message(3, MSG_COMMAND_AMF0, 0, 0, &payload));
        wire
    };
    let many_csids: Vec<u8> = (0..10_000u32)
        .flat_map(|i| {
            let mut c = basic_header(0, 320 + i * 6);
            c.extend_from_slice(&[0, 0, 0, 0, 0, 200, 9, 1, 0, 0, 0]);
            c.extend_from_slice(&[0x17; 128]);
            c
        })
        .collect();
    let chunk_size_zero =
        ChunkWriter::default().message(2, MSG_SET_CHUNK_SIZE, 0, 0, &0u32.to_be_bytes());
    let truncated_amf =
        ChunkWriter::default().message(3, MSG_COMMAND_AMF0, 0, 0, &[0x02, 0x00, 0x07, b'c']);
    let type1_first = {
        let mut c = basic_header(1, 5);
        c.extend_from_slice(&[0, 0, 0, 0, 0, 4, MSG_COMMAND_AMF0, 5, 5, 5, 5]);
        c
    };
    for (name, wire, after_handshake) in [
        ("garbage before the handshake", &garbage, false),
        ("16 MiB message header", &huge_header, true),
        ("30 000-deep AMF0", &deep_amf, true),
        ("10 000 chunk streams", &many_csids, true),
        ("chunk size 0", &chunk_size_zero, true),
        ("truncated AMF0", &truncated_amf, true),
        ("type 1 header on a new chunk stream", &type1_first, true),
    ] {
        for _ in 0..5 {
            let mut sock = raw_connect(rtmp);
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            if after_handshake {
                rtmp_handshake(&mut sock).expect("handshake");
            }
            let _ = write_ignoring_close(&mut sock, wire);
            if let Err(e) = wait_closed(&mut sock, Duration::from_secs(10)) {
                panic!("{name}: not closed: {e}");
            }
        }
        server.wait_usage_back(base, name);
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        for d in hostile_datagrams() {
            let _ = sock.send_to(&d, srt);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(sock);
    server.wait_usage_back(base, "hostile SRT datagrams");
    assert_eq!(
        server.metric_or_zero("sluice_srt_protocol_panics_total"),
        0.0
    );

    // The real stream played through all of it.
    server.assert_alive("after the hostile cases");
    bystander.finish(10.0);
}
