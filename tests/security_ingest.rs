//! A publisher or a connection trying to make the RTMP ingest hold memory,
//! a slot or the log: floods of tiny, audio and zero-length messages whose
//! timestamps do not advance, connections that never publish (a byte every
//! 9 s, a `connect` and nothing more, a publish whose webhook never
//! answers while the client keeps sending), and a publisher whose every
//! frame jumps its timestamps.
//!
//! Each case runs beside a [`Bystander`] (a real publisher and a recorded
//! SRT player on another stream, which must lose no frame) and ends with
//! sluice's fds, tasks and RSS back at their baseline. The cases run one
//! at a time (they measure the process's memory and time its closes).
//!
//! `cargo test --test security_ingest -- --ignored --nocapture` runs the
//! measurements the README quotes: RSS during 60 s of each flood and the
//! time until a trickling connection is closed at the default deadline.

mod common;

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::flv::{self, FlvTag};
use common::rtmp_client::{
    amf_encode_all, basic_header, connect_and_publish, handshake, obj, s, Amf, ChunkWriter,
    PublishOptions, PublishOutcome, RtmpPublisher, MSG_AUDIO, MSG_COMMAND_AMF0, MSG_VIDEO,
};
use common::*;

/// One case at a time: each measures the whole process.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const BYSTANDER: &str = "live/cam1";
/// How long a flood may go on before the test calls it unbounded.
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// RSS a flood may add while it runs ("a few MiB" plus allocator slack).
const FLOOD_RSS_MARGIN_MIB: f64 = 16.0;

/// The tiny messages of a flood.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// An 11-byte AVC inter frame (one 2-byte NAL unit).
    TinyVideo,
    /// A 3-byte AAC frame.
    TinyAudio,
    /// Video messages with no payload at all.
    EmptyVideo,
}

impl Flood {
    fn message(self) -> (u8, &'static [u8]) {
        match self {
            Flood::TinyVideo => (MSG_VIDEO, &[0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 0x9A]),
            Flood::TinyAudio => (MSG_AUDIO, &[0xAF, 1, 0x21]),
            Flood::EmptyVideo => (MSG_VIDEO, &[]),
        }
    }

    /// `n` messages on chunk stream 7 of message stream `sid`, all at
    /// timestamp `ts`: a type 0 header, a type 2 header with delta 0, then
    /// type 3 headers (one byte each) that repeat it.
    fn wire(self, sid: u32, ts: u32, n: usize) -> Vec<u8> {
        let (type_id, payload) = self.message();
        let mut w = basic_header(0, 7);
        w.extend_from_slice(&ts.to_be_bytes()[1..]);
        w.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        w.push(type_id);
        w.extend_from_slice(&sid.to_le_bytes());
        w.extend_from_slice(payload);
        w.extend(basic_header(2, 7));
        w.extend_from_slice(&[0, 0, 0]);
        w.extend_from_slice(payload);
        for _ in 2..n {
            w.extend(basic_header(3, 7));
            w.extend_from_slice(payload);
        }
        w
    }
}

/// The fixture's tags up to its first video keyframe: metadata, both
/// configurations and the keyframe (the stream becomes playable).
fn opening(tags: &[FlvTag]) -> Vec<FlvTag> {
    let first_key = tags
        .iter()
        .position(|t| t.tag_type == flv::TAG_VIDEO && t.kind() == flv::TagKind::Frame)
        .expect("a video frame");
    tags[..=first_key + 2].to_vec()
}

/// Publishes `path` (its opening, as fast as the socket takes it), then
/// sends `kind` messages as fast as the socket takes them for up to
/// `limit`, sampling sluice's RSS. Returns the publisher, the peak RSS,
/// how long it flooded and how many messages went out.
fn flood(
    server: &Sluice,
    path: &str,
    kind: Flood,
    limit: Duration,
) -> (RtmpPublisher, f64, Duration, u64) {
    let file = flv::read_flv(&fixture_avc_aac(2));
    let open = opening(&file.tags);
    let opts = PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    };
    let mut p = connect_and_publish(server.rtmp_addr(), path, opts);
    let report = p.send_tags(&open);
    assert!(report.error.is_none(), "{kind:?} opening: {report:?}");
    let ts = open.last().unwrap().timestamp;
    const BATCH: usize = 8192;
    let first = kind.wire(p.stream_id(), ts, BATCH);
    let (_, payload) = kind.message();
    let repeat: Vec<u8> = (0..BATCH)
        .flat_map(|_| {
            basic_header(3, 7)
                .into_iter()
                .chain(payload.iter().copied())
        })
        .collect();
    let start = Instant::now();
    let mut peak = server.usage().rss_mib;
    let mut next_sample = start;
    let mut sent = 0u64;
    let mut batch = &first;
    while start.elapsed() < limit {
        if p.send_raw(batch, Duration::from_secs(1)).is_err() {
            break;
        }
        sent += BATCH as u64;
        batch = &repeat;
        if Instant::now() >= next_sample {
            peak = peak.max(server.usage().rss_mib);
            next_sample += Duration::from_millis(250);
        }
    }
    let took = start.elapsed();
    peak = peak.max(server.usage().rss_mib);
    (p, peak, took, sent)
}

/// A tiny-message flood is cut by `rtmp.max_messages_per_second`: the
/// publisher is told which limit, the close and the teardown are counted
/// under `message_rate`, sluice's memory stays near its baseline while it
/// lasts and comes back after it, and the bystander loses nothing.
fn flood_case(kind: Flood, path: &str) {
    let _one = serial();
    let mut server = Sluice::start(None);
    let mut bystander = Bystander::start(&server, BYSTANDER, "", "", 30);
    std::thread::sleep(Duration::from_secs(1));
    let base = server.usage();

    let (mut p, peak, took, sent) = flood(&server, path, kind, FLOOD_FOR);
    let closed = p.wait_server_close(Duration::from_secs(5));
    println!(
        "{kind:?} flood: {sent} messages written in {took:?}, peak RSS {peak:.1} MiB (baseline {:.1})",
        base.rss_mib
    );
    assert!(
        peak <= base.rss_mib + FLOOD_RSS_MARGIN_MIB && closed.is_some(),
        "{kind:?} flood of {sent} messages over {took:?}: RSS went from {:.1} to {peak:.1} MiB \
         and the publisher was {}",
        base.rss_mib,
        match &closed {
            Some(why) => format!("closed ({why})"),
            None => "never disconnected".into(),
        }
    );
    let failed = p
        .statuses
        .iter()
        .find(|s| s.code == "NetStream.Publish.Failed")
        .unwrap_or_else(|| panic!("{kind:?}: no NetStream.Publish.Failed: {:?}", p.statuses));
    assert!(
        failed.description.contains("rtmp.max_messages_per_second"),
        "{failed:?}"
    );
    server.wait_metric(
        r#"sluice_rtmp_protocol_errors_total{reason="message_rate"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_metric(
        r#"sluice_stream_teardowns_total{cause="message_rate"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    server.wait_log_fields(
        &[
            ("message", "rtmp connection closed"),
            ("reason", "message_rate"),
        ],
        Duration::from_secs(5),
    );
    drop(p);
    server.wait_stream_gone(path, Duration::from_secs(5));
    server.wait_usage_back(base, &format!("{kind:?} flood"));
    server.assert_alive("after the flood");
    bystander.assert_playing("after the flood");
    bystander.finish(5.0);
}

#[test]
fn tiny_video_flood_with_frozen_timestamps_is_cut_at_the_message_rate() {
    flood_case(Flood::TinyVideo, "live/tinyvideo");
}

#[test]
fn tiny_audio_flood_is_cut_at_the_message_rate() {
    flood_case(Flood::TinyAudio, "live/tinyaudio");
}

#[test]
fn zero_length_video_flood_is_cut_at_the_message_rate() {
    flood_case(Flood::EmptyVideo, "live/emptyvideo");
}

/// A connection after the RTMP handshake, with nothing else sent.
fn handshaken(server: &Sluice) -> TcpStream {
    let mut sock = raw_connect(server.rtmp_addr());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    handshake(&mut sock).expect("handshake with sluice");
    sock
}

const SETUP_3S: &str = "[server]\nsetup_timeout = \"3s\"\n";

/// Connections that never publish are closed at `server.setup_timeout`
/// from their accept, whatever they keep sending: a byte every 9 s after
/// the handshake (each one resets the idle timer), and an accepted
/// `connect` followed by pings. Counted and logged as `setup_timeout`.
#[test]
fn connections_that_never_publish_are_closed_at_the_setup_deadline() {
    let _one = serial();
    let mut server = Sluice::start(Some(SETUP_3S));
    let bystander = Bystander::start(&server, BYSTANDER, "", "", 40);
    std::thread::sleep(Duration::from_secs(1));
    let base = server.usage();

    // 1. One byte every 9 s after the handshake: the start of a chunk.
    let t0 = Instant::now();
    let mut sock = handshaken(&server);
    let connect = ChunkWriter::default().message(
        3,
        MSG_COMMAND_AMF0,
        0,
        0,
        &amf_encode_all(&[s("connect"), Amf::Number(1.0), obj(&[("app", s("live"))])]),
    );
    let mut at = None;
    for b in connect.iter().take(3) {
        let _ = sock.write_all(&[*b]);
        if wait_closed(&mut sock, Duration::from_secs(9)).is_ok() {
            at = Some(t0.elapsed());
            break;
        }
    }
    let at = at.unwrap_or_else(|| {
        panic!(
            "a connection sending one byte every 9 s was still open after {:?}",
            t0.elapsed()
        )
    });
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&at),
        "trickle closed after {at:?} with setup_timeout = 3s"
    );
    println!("trickle closed after {at:?} (setup_timeout 3 s)");

    // 2. `connect` accepted, then a ping every second and no publish.
    let t1 = Instant::now();
    let mut sock = handshaken(&server);
    let mut w = ChunkWriter::default();
    sock.write_all(&w.message(
        3,
        MSG_COMMAND_AMF0,
        0,
        0,
        &amf_encode_all(&[s("connect"), Amf::Number(1.0), obj(&[("app", s("live"))])]),
    ))
    .unwrap();
    let mut closed = None;
    for i in 0..12 {
        let ping = w.message(2, 4, 0, 0, &[0, 6, 0, 0, 0, i]);
        if sock.write_all(&ping).is_err() || wait_closed(&mut sock, Duration::from_secs(1)).is_ok()
        {
            closed = Some(t1.elapsed());
            break;
        }
    }
    let closed =
        closed.unwrap_or_else(|| panic!("a connected client that never publishes stayed open"));
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&closed),
        "connect-only client closed after {closed:?} with setup_timeout = 3s"
    );

    server.wait_metric(
        r#"sluice_rtmp_connections_rejected_total{reason="setup_timeout"}"#,
        |v| v == Some(2.0),
        Duration::from_secs(5),
    );
    let lines = server.log_json_matching(&[
        ("message", "rtmp connection closed"),
        ("reason", "setup_timeout"),
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    server.wait_usage_back(base, "connections that never publish");
    server.assert_alive("after the trickles");
    bystander.finish(10.0);
}

/// The deadline is for connections that are not publishing: one that
/// published, stopped (FCUnpublish + deleteStream) and stays gets
/// `server.setup_timeout` again from there, and its next publish is set up
/// against that, not against the long-past accept.
#[test]
fn a_connection_that_republishes_after_the_first_deadline_is_set_up_again() {
    let _one = serial();
    let server = Sluice::start(Some(SETUP_3S));
    let file = flv::read_flv(&fixture_avc_aac(8));
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), "live", PublishOptions::default())
        .expect("connect");
    assert!(p.publish("again").is_accepted());
    // 4 s of real-time media: the first publish outlives the accept's deadline.
    let report = p.send_tags(&file.tags[..file.tags.len() / 2]);
    assert!(report.error.is_none(), "{report:?}");
    p.unpublish().expect("unpublish");
    server.wait_stream_gone("live/again", Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(1));
    assert!(p.publish("again").is_accepted(), "{:?}", p.closed);
    let report = p.send_tags(&file.tags[..file.tags.len() / 4]);
    assert!(report.error.is_none(), "second publish: {report:?}");
    server.wait_log_fields(
        &[("message", "stream ready"), ("stream", "live/again")],
        Duration::from_secs(5),
    );
    let ready = server.log_json_matching(&[("message", "stream ready"), ("stream", "live/again")]);
    assert_eq!(ready.len(), 2, "{ready:?}");
    p.unpublish().expect("unpublish");
    // Then nothing: the connection is closed at the new deadline.
    let t0 = Instant::now();
    assert!(
        p.wait_server_close(Duration::from_secs(8)).is_some(),
        "a connection idle after its unpublish stayed"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        server.metric(r#"sluice_stream_setup_failures_total{reason="no_keyframe"}"#),
        None
    );
}

/// A publish waiting on a webhook that never answers, while the client
/// keeps sending as fast as it can: sluice stops reading (TCP pushes back,
/// so the client can only fill the socket buffers), its memory does not
/// grow, and the connection is closed at `server.setup_timeout` with
/// `NetStream.Publish.Failed`; the webhook call is abandoned with it.
#[test]
fn a_publish_whose_webhook_never_answers_is_not_read_and_ends_at_the_setup_deadline() {
    let _one = serial();
    let (port, hooks) = webhook_server(|_| (200, Duration::from_secs(60)));
    let config = format!(
        "{SETUP_3S}\n[apps.live]\n\n[apps.hooked]\npublish_webhook = \"http://127.0.0.1:{port}/hook\"\n\
         webhook_timeout = \"30s\"\n"
    );
    let mut server = Sluice::start(Some(&config));
    let bystander = Bystander::start(&server, BYSTANDER, "", "", 30);
    std::thread::sleep(Duration::from_secs(1));
    let base = server.usage();

    let t0 = Instant::now();
    let opts = PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    };
    let mut p = RtmpPublisher::connect(server.rtmp_addr(), "hooked", opts).expect("connect");
    if let Err(e) = p.request_publish("cam") {
        panic!("publish request: {e:?}");
    }
    assert!(poll_until(Duration::from_secs(2), || !hooks
        .lock()
        .unwrap()
        .is_empty()));
    // Video messages of 60 KiB in 16 KiB writes, up to 256 MiB.
    let mut w = ChunkWriter::default();
    w.chunk_size = 4096;
    let big = w.message(9, MSG_VIDEO, p.stream_id(), 0, &vec![0x27; 60 * 1024]);
    let mut written = 0usize;
    let mut peak = base.rss_mib;
    let mut pushed_back = false;
    'send: while written < 256 << 20 && t0.elapsed() < Duration::from_millis(2500) {
        for piece in big.chunks(16 * 1024) {
            match p.send_raw(piece, Duration::from_millis(300)) {
                Ok(()) => written += piece.len(),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    pushed_back = true;
                    break 'send;
                }
                Err(e) => panic!("write failed before the deadline: {e}"),
            }
        }
        peak = peak.max(server.usage().rss_mib);
    }
    peak = peak.max(server.usage().rss_mib);
    println!(
        "pending publish: the client wrote {:.1} MiB, pushed back: {pushed_back}, peak RSS {peak:.1} MiB (baseline {:.1})",
        written as f64 / (1 << 20) as f64,
        base.rss_mib
    );
    assert!(
        written < 32 << 20 && peak <= base.rss_mib + FLOOD_RSS_MARGIN_MIB,
        "while its publish waited on the webhook, sluice took {:.1} MiB from the client and its \
         RSS went from {:.1} to {peak:.1} MiB",
        written as f64 / (1 << 20) as f64,
        base.rss_mib
    );
    let outcome = p.wait_publish_status();
    let at = t0.elapsed();
    match &outcome {
        PublishOutcome::Refused(st) => {
            assert_eq!(st.code, "NetStream.Publish.Failed", "{st:?}");
            assert!(st.description.contains("server.setup_timeout"), "{st:?}");
        }
        other => panic!("the pending publish ended with {other:?} after {at:?}"),
    }
    assert!(
        p.wait_server_close(Duration::from_secs(3)).is_some(),
        "not closed"
    );
    let at = t0.elapsed();
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&at),
        "closed after {at:?} with setup_timeout = 3s"
    );
    server.wait_metric(
        r#"sluice_rtmp_connections_rejected_total{reason="setup_timeout"}"#,
        |v| v == Some(1.0),
        Duration::from_secs(5),
    );
    drop(p);
    server.wait_usage_back(base, "publish pending on a silent webhook");
    server.assert_alive("after the pending publish");
    bystander.finish(5.0);
}

/// A publisher whose every frame jumps its timestamps by 20 s: every jump
/// is counted, but the warning is logged at most once per interval per
/// stream, saying how many it stands for.
#[test]
fn timestamp_jumps_on_every_frame_log_a_few_lines_not_one_per_frame() {
    let _one = serial();
    let mut server = Sluice::start(None);
    let bystander = Bystander::start(&server, BYSTANDER, "", "", 30);
    std::thread::sleep(Duration::from_secs(1));
    let base = server.usage();

    let path = "live/jumpy";
    let file = flv::read_flv(&fixture_avc_aac(12));
    let opts = PublishOptions {
        realtime: false,
        ..PublishOptions::default()
    };
    let mut p = connect_and_publish(server.rtmp_addr(), path, opts);
    let start = Instant::now();
    // Per track, every other frame 20 s ahead: each frame jumps.
    let mut ahead = [false; 2];
    for tag in &file.tags {
        let due = start + Duration::from_millis(u64::from(tag.timestamp));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut t = tag.clone();
        if t.kind() == flv::TagKind::Frame {
            let track = &mut ahead[usize::from(t.tag_type == flv::TAG_VIDEO)];
            *track = !*track;
            if *track {
                t.timestamp += 20_000;
            }
        }
        let r = p.send_tags(&[t]);
        assert!(r.error.is_none(), "{r:?}");
    }
    let jumps = server
        .wait_metric(
            &format!(r#"sluice_timestamp_jumps_total{{stream="{path}"}}"#),
            |v| v.is_some_and(|n| n >= 300.0),
            Duration::from_secs(5),
        )
        .unwrap();
    let lines = server.log_json_matching(&[("message", "timestamp jumped; timeline re-based")]);
    println!(
        "{jumps} jumps in {:?}: {} warning lines",
        start.elapsed(),
        lines.len()
    );
    // 12 s at one line per 5 s: 3, with room for the interval's edges.
    assert!(
        !lines.is_empty() && lines.len() <= 5,
        "{jumps} timestamp jumps gave {} warning lines",
        lines.len()
    );
    // A line after the first stands for the jumps of its interval.
    let suppressed: Vec<u64> = lines
        .iter()
        .filter_map(|l| log_field(l, "suppressed").and_then(|v| v.as_u64()))
        .collect();
    assert!(
        suppressed.iter().any(|&n| n >= 100) && suppressed.iter().sum::<u64>() < jumps as u64,
        "`suppressed` of the warning lines: {suppressed:?} for {jumps} jumps: {lines:?}"
    );
    p.close();
    server.wait_stream_gone(path, Duration::from_secs(5));
    server.wait_usage_back(base, "timestamp jumps on every frame");
    server.assert_alive("after the jumps");
    bystander.finish(10.0);
}

/// Sluice's RSS sampled while `run` goes on for `dur`: (peak, last).
fn rss_while(server: &Sluice, dur: Duration, mut run: impl FnMut(Duration) -> bool) -> (f64, f64) {
    let start = Instant::now();
    let mut peak = 0.0f64;
    let mut next = start;
    while start.elapsed() < dur {
        if !run(dur - start.elapsed()) {
            break;
        }
        if Instant::now() >= next {
            peak = peak.max(server.usage().rss_mib);
            next += Duration::from_millis(500);
        }
    }
    let last = server.usage().rss_mib;
    (peak.max(last), last)
}

/// The figures the README quotes. For each flood: 60 s of an attacker
/// that floods as fast as its socket takes it and reconnects each time it
/// is cut, then 60 s of one that stays just under the default message
/// rate (4 500 a second, paced). Then the time until a connection sending
/// a byte every 9 s is closed at the default `server.setup_timeout`.
#[test]
#[ignore = "measurement, about 7 minutes: cargo test --test security_ingest -- --ignored --nocapture"]
fn measure_rss_under_floods_and_the_trickle_close_time() {
    let _one = serial();
    let server = Sluice::start(None);
    let bystander = Bystander::start(&server, BYSTANDER, "", "", 400);
    std::thread::sleep(Duration::from_secs(2));
    let base = server.usage();
    println!("baseline: {base}");
    let path = "live/flood";
    for kind in [Flood::TinyVideo, Flood::TinyAudio, Flood::EmptyVideo] {
        let mut cut = 0u64;
        let (peak, last) = rss_while(&server, Duration::from_secs(60), |left| {
            let (mut p, _, _, _) = flood(&server, path, kind, left);
            if p.wait_server_close(Duration::from_secs(2)).is_some() {
                cut += 1;
            }
            drop(p);
            server.wait_stream_gone(path, Duration::from_secs(5));
            true
        });
        println!(
            "{kind:?}, as fast as possible for 60 s: {cut} connections cut, \
             RSS peak {peak:.1} MiB, last {last:.1} MiB (baseline {:.1})",
            base.rss_mib
        );
        server.wait_usage_back(base, &format!("{kind:?} fastest"));

        // Just under the cap: 450 messages every 100 ms.
        let (mut p, _, _, _) = flood(&server, path, kind, Duration::ZERO);
        let (_, payload) = kind.message();
        let tick: Vec<u8> = (0..450)
            .flat_map(|_| {
                basic_header(3, 7)
                    .into_iter()
                    .chain(payload.iter().copied())
            })
            .collect();
        let first = kind.wire(p.stream_id(), 0, 450);
        let mut batch = &first;
        let start = Instant::now();
        let mut ticks = 0u32;
        let (peak, last) = rss_while(&server, Duration::from_secs(60), |_| {
            let due = start + Duration::from_millis(100) * ticks;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            ticks += 1;
            let ok = p.send_raw(batch, Duration::from_secs(2)).is_ok();
            batch = &tick;
            ok
        });
        p.poll_events();
        println!(
            "{kind:?}, 4 500/s for {:?}: still publishing: {}, RSS peak {peak:.1} MiB, last {last:.1} MiB (baseline {:.1})",
            start.elapsed(),
            p.closed.is_none(),
            base.rss_mib
        );
        p.close();
        server.wait_stream_gone(path, Duration::from_secs(5));
        server.wait_usage_back(base, &format!("{kind:?} under the cap"));
    }
    bystander.finish(60.0);

    let t0 = Instant::now();
    let mut sock = handshaken(&server);
    let mut closed = None;
    for _ in 0..3 {
        let _ = sock.write_all(&[3]);
        if wait_closed(&mut sock, Duration::from_secs(9)).is_ok() {
            closed = Some(t0.elapsed());
            break;
        }
    }
    println!("a byte every 9 s, default server.setup_timeout: closed after {closed:?}");
}
