//! Hostile RTMP connections. Each test runs a real publish (the test
//! client, real-time paced, 8 s) on one connection and attacks the server
//! on another. For each attack: the hostile socket is closed by the server
//! (EOF or reset), `sluice_rtmp_protocol_errors_total{reason}` moves, a
//! `"rtmp connection closed"` log line carries the same reason, the server
//! still answers `/healthz`, its fds, tasks and memory return to where they
//! were before the attack, and the concurrent publish loses no frame.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flv;
use common::rtmp_client::{
    amf_encode_all, basic_header, handshake, s, Amf, BackgroundPublish, ChunkWriter,
    PublishOptions, MSG_COMMAND_AMF0, MSG_SET_CHUNK_SIZE,
};
use common::*;

const STEADY: &str = "live/steady";

fn errors_query(reason: &str) -> String {
    format!(r#"sluice_rtmp_protocol_errors_total{{reason="{reason}"}}"#)
}

/// Starts a server (with `config`) and a steady publish, runs `attack`,
/// then checks everything listed in the module doc for one of `reasons`.
/// With a short idle timeout the server may rightly close the publisher
/// once it has sent everything and gone quiet, so its frames are then
/// checked on the (persistent) metrics instead of the streams API.
fn under_attack(config: Option<&str>, reasons: &[&str], attack: impl FnOnce(&mut Sluice)) {
    let publisher_may_idle = config.is_some_and(|c| c.contains("idle_timeout"));
    let mut server = Sluice::start(config);
    let file = flv::read_flv(&fixture_avc_aac(8));
    let (want_v, want_a) = file.frame_counts();
    let mut publish = BackgroundPublish::spawn(
        server.rtmp_addr(),
        STEADY,
        Arc::new(file.tags),
        PublishOptions::default(),
    );
    server.wait_for_stream(
        STEADY,
        |s| json_f64(s, "/frames_in/video").is_some_and(|n| n > 0.0),
        Duration::from_secs(15),
    );
    let before: f64 = reasons
        .iter()
        .map(|r| server.metric_or_zero(&errors_query(r)))
        .sum();
    let base = server.usage();

    attack(&mut server);

    // The error was counted under one of the expected reasons...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: f64 = reasons
            .iter()
            .map(|r| server.metric_or_zero(&errors_query(r)))
            .sum();
        if now >= before + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sluice_rtmp_protocol_errors_total for {reasons:?} stayed at {now}; metrics:\n{}",
            server
                .metrics_text()
                .lines()
                .filter(|l| l.contains("protocol_errors"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...and logged with that reason.
    assert!(
        poll_until(Duration::from_secs(10), || reasons.iter().any(|r| {
            !server
                .log_json_matching(&[("message", "rtmp connection closed"), ("reason", r)])
                .is_empty()
        })),
        "no `rtmp connection closed` log line with reason in {reasons:?}; stderr tail:\n{}",
        server.log_tail(30)
    );
    server.assert_alive("after the attack");
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "/healthz after the attack: {body}");
    // What the hostile connection held is released.
    server.wait_usage_back(base, &format!("after {reasons:?}"));

    // The honest publisher lost nothing.
    let report = publish.wait_report(Duration::from_secs(40));
    assert!(
        report.error.is_none(),
        "the concurrent publish was disturbed: {report:?}"
    );
    assert_eq!((report.video_frames, report.audio_frames), (want_v, want_a));
    if !publisher_may_idle {
        server.wait_for_stream(
            STEADY,
            |s| {
                json_f64(s, "/frames_in/video") == Some(want_v as f64)
                    && json_f64(s, "/frames_in/audio") == Some(want_a as f64)
                    && json_f64(s, "/timestamp_jumps") == Some(0.0)
            },
            Duration::from_secs(10),
        );
    }
    for (track, want) in [("video", want_v), ("audio", want_a)] {
        server.wait_metric(
            &format!(r#"sluice_ingest_frames_total{{stream="{STEADY}",track="{track}"}}"#),
            |v| v == Some(want as f64),
            Duration::from_secs(10),
        );
    }
    publish.release();
    server.assert_alive("at the end");
}

/// Asserts the server closes `sock` within `timeout`.
fn assert_closed(sock: &mut TcpStream, timeout: Duration, what: &str) {
    if let Err(e) = wait_closed(sock, timeout) {
        panic!("{what}: the server did not close the hostile connection: {e}");
    }
}

fn handshaken(server: &Sluice) -> TcpStream {
    let mut sock = raw_connect(server.rtmp_addr());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    handshake(&mut sock).expect("handshake with sluice");
    sock
}

#[test]
fn garbage_before_handshake_is_closed_bad_handshake() {
    under_attack(None, &["bad_handshake"], |server| {
        let mut sock = raw_connect(server.rtmp_addr());
        // C0 = 0x47 ('G'): an HTTP request on the RTMP port, then junk.
        let mut junk = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec();
        let mut x: u32 = 0x1234_5678;
        while junk.len() < 2048 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            junk.push(x as u8);
        }
        let _ = sock.write_all(&junk);
        assert_closed(&mut sock, Duration::from_secs(10), "garbage handshake");
    });
}

#[test]
fn handshake_at_one_byte_per_second_is_closed_at_handshake_timeout() {
    let config = "[rtmp]\nhandshake_timeout = \"2s\"\n";
    under_attack(Some(config), &["handshake_timeout"], |server| {
        let mut sock = raw_connect(server.rtmp_addr());
        let start = Instant::now();
        let mut c0c1 = vec![0u8; 1537];
        c0c1[0] = 3;
        let mut closed = None;
        for (i, b) in c0c1.iter().enumerate() {
            if i > 0 {
                // One byte per second; watch for the close meanwhile.
                if let Ok(how) = wait_closed(&mut sock, Duration::from_secs(1)) {
                    closed = Some((start.elapsed(), how));
                    break;
                }
            }
            if sock.write_all(&[*b]).is_err() {
                let _ = wait_closed(&mut sock, Duration::from_secs(2));
                closed = Some((start.elapsed(), Closed::Reset("write failed".into())));
                break;
            }
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        let (elapsed, how) = closed.expect("slow handshake was never closed (15 s)");
        assert!(
            elapsed >= Duration::from_millis(1500),
            "closed after {elapsed:?} ({how:?}), before the 2 s handshake timeout"
        );
        assert!(
            elapsed <= Duration::from_secs(10),
            "closed only after {elapsed:?} with handshake_timeout = 2s"
        );
    });
}

#[test]
fn sixteen_mib_message_header_is_closed_message_too_large() {
    under_attack(None, &["message_too_large"], |server| {
        let mut sock = handshaken(server);
        // Type 0 header on csid 3: timestamp 0, length 0xFFFFFF, command
        // message (type 20), stream 0; then the first 128-byte chunk.
        let mut m = basic_header(0, 3);
        m.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF, MSG_COMMAND_AMF0, 0, 0, 0, 0]);
        m.extend_from_slice(&amf_encode_all(&[s("connect"), Amf::Number(1.0)]));
        m.resize(12 + 128, 0x05);
        let _ = sock.write_all(&m);
        assert_closed(&mut sock, Duration::from_secs(8), "16 MiB message header");
    });
}

#[test]
fn connect_with_amf0_nested_30000_deep_is_closed_and_server_survives() {
    under_attack(None, &["amf_depth", "amf_invalid"], |server| {
        let mut sock = handshaken(server);
        const DEPTH: usize = 30_000;
        let mut payload = amf_encode_all(&[s("connect"), Amf::Number(1.0)]);
        for _ in 0..DEPTH {
            payload.extend_from_slice(&[0x03, 0x00, 0x01, b'a']); // { "a": ...
        }
        payload.extend_from_slice(&[0x03, 0x00, 0x00, 0x09]); // {}
        for _ in 0..DEPTH {
            payload.extend_from_slice(&[0x00, 0x00, 0x09]); // }
        }
        let mut w = ChunkWriter::default();
        let mut wire = w.message(2, MSG_SET_CHUNK_SIZE, 0, 0, &4096u32.to_be_bytes());
        w.chunk_size = 4096;
        wire.extend(w.message(3, MSG_COMMAND_AMF0, 0, 0, &payload));
        let _ = sock.write_all(&wire);
        assert_closed(&mut sock, Duration::from_secs(10), "deep AMF0 nesting");
    });
}

#[test]
fn ten_thousand_chunk_streams_are_closed_too_many_chunk_streams() {
    under_attack(None, &["too_many_chunk_streams"], |server| {
        let mut sock = handshaken(server);
        // Type 0 headers in the 3-byte csid form (320..=65599), each
        // starting a 200-byte video message with its first 128-byte chunk.
        let mut csids: Vec<u32> = (0..9_999).map(|i| 320 + i * 6).collect();
        csids.push(65_599);
        let mut batch = Vec::new();
        for (i, csid) in csids.iter().enumerate() {
            let mut c = basic_header(0, *csid);
            assert_eq!(c.len(), 3);
            c.extend_from_slice(&[0, 0, 0, 0, 0, 200, 9, 1, 0, 0, 0]);
            c.extend_from_slice(&[0x17; 128]);
            batch.extend_from_slice(&c);
            if i % 100 == 99 || i + 1 == csids.len() {
                if sock.write_all(&batch).is_err() {
                    break; // closed already
                }
                batch.clear();
            }
        }
        assert_closed(&mut sock, Duration::from_secs(10), "10 000 chunk streams");
    });
}

#[test]
fn set_chunk_size_zero_is_closed_bad_chunk_size() {
    under_attack(None, &["bad_chunk_size"], |server| {
        let mut sock = handshaken(server);
        let wire = ChunkWriter::default().message(2, MSG_SET_CHUNK_SIZE, 0, 0, &0u32.to_be_bytes());
        let _ = sock.write_all(&wire);
        assert_closed(&mut sock, Duration::from_secs(10), "Set Chunk Size 0");
    });
}

#[test]
fn silent_connection_after_handshake_is_closed_idle_timeout_but_publisher_is_not() {
    let config = "[rtmp]\nidle_timeout = \"2s\"\n";
    under_attack(Some(config), &["idle_timeout"], |server| {
        let mut sock = handshaken(server);
        let start = Instant::now();
        assert_closed(&mut sock, Duration::from_secs(12), "idle connection");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1500),
            "closed after {elapsed:?}, before the 2 s idle timeout"
        );
    });
}

#[test]
fn truncated_amf0_command_is_closed_amf_invalid() {
    under_attack(None, &["amf_invalid"], |server| {
        let mut sock = handshaken(server);
        // A 4-byte command: a string marker announcing 7 bytes, then 1 byte.
        let wire =
            ChunkWriter::default().message(3, MSG_COMMAND_AMF0, 0, 0, &[0x02, 0x00, 0x07, b'c']);
        let _ = sock.write_all(&wire);
        assert_closed(&mut sock, Duration::from_secs(10), "truncated AMF0 command");
    });
}

#[test]
fn chunk_stream_opened_with_a_type1_header_is_closed_protocol_violation() {
    under_attack(None, &["protocol_violation"], |server| {
        let mut sock = handshaken(server);
        // RTMP 5.3.1.2: a chunk stream starts with a type 0 header. Here
        // csid 5 starts with a type 1 header (no stream id).
        let mut c = basic_header(1, 5);
        c.extend_from_slice(&[0, 0, 0, 0, 0, 4, MSG_COMMAND_AMF0]);
        c.extend_from_slice(&[0x05, 0x05, 0x05, 0x05]);
        let _ = sock.write_all(&c);
        assert_closed(
            &mut sock,
            Duration::from_secs(10),
            "type 1 header on a new chunk stream",
        );
    });
}
