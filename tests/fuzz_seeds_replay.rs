//! Replays every committed fuzz seed (and any crash reproducer saved under
//! `fuzz/artifacts/`) through the same functions the `cargo fuzz` targets
//! call, on stable, so CI checks the corpora without a fuzzing toolchain.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("seeds").join(target),
        root.join("artifacts").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).expect("readable seed");
            f(&data);
            // Every prefix too: truncation is the most common hostile input.
            for cut in (0..data.len()).step_by((data.len() / 64).max(1)) {
                f(&data[..cut]);
            }
            n += 1;
        }
    }
    n
}

#[test]
fn rtmp_session_seeds_replay_without_panic() {
    assert!(replay("rtmp_session", sluice::rtmp::proto::fuzz_session) >= 3);
}

#[test]
fn rtmp_client_seeds_replay_without_panic() {
    assert!(replay("rtmp_client", sluice::rtmp::client::core::fuzz_client) >= 2);
}

#[test]
fn amf0_seeds_round_trip() {
    assert!(replay("amf0", sluice::rtmp::amf0::fuzz_roundtrip) >= 4);
}

#[test]
fn flv_tag_seeds_replay_without_panic() {
    assert!(replay("flv_tag", sluice::flv::fuzz_tag) >= 10);
}

#[test]
fn ts_roundtrip_seeds_round_trip() {
    assert!(replay("ts_roundtrip", sluice::ts::fuzz_roundtrip) >= 6);
}

#[test]
fn srt_guard_seeds_replay_without_panic() {
    assert!(replay("srt_guard", sluice::srt::guard::fuzz_check) >= 10);
}

#[test]
fn ts_repack_seeds_replay_without_panic() {
    assert!(replay("ts_repack", sluice::transcode::repack::fuzz_repack) >= 6);
}

#[test]
fn ts_demux_seeds_replay_without_panic() {
    assert!(replay("ts_demux", sluice::ts::demux::fuzz_demux) >= 4);
}

#[test]
fn ts_ingest_seeds_replay_without_panic() {
    assert!(replay("ts_ingest", sluice::ts::ingest::fuzz_ingest) >= 5);
}

/// The ingest seeds reach deep: configurations and frames of both tracks.
#[test]
fn ts_ingest_seed_reaches_frames() {
    use sluice::media::{MediaEvent, Track};
    let data = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/ts_ingest/ffmpeg5.1-x264-bframes-aac.bin"),
    )
    .unwrap();
    let mut ing = sluice::ts::TsIngest::new(std::time::Duration::from_secs(10));
    let mut out = Vec::new();
    ing.push(&data[1..], &mut out);
    ing.flush(&mut out);
    let count = |t: Track| {
        out.iter()
            .filter(|i| matches!(&i.event, MediaEvent::Frame(f) if f.track == t))
            .count()
    };
    assert!(count(Track::Video) >= 7, "{:?}", ing.stats());
    assert!(count(Track::Audio) >= 10, "{:?}", ing.stats());
}

#[test]
fn srt_streamid_seeds_replay_without_panic() {
    assert!(replay("srt_streamid", sluice::srt::streamid::fuzz_streamid) >= 12);
}

#[test]
fn srt_listener_seeds_replay_without_panic() {
    assert!(replay("srt_listener", sluice::srt::fuzz::fuzz_listener) >= 6);
}

/// The seeds must reach deep: a real ffmpeg publish seed drives the session
/// all the way to media events.
#[test]
fn ffmpeg_seed_reaches_media() {
    use sluice::rtmp::proto::{Event, Limits, Session};
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/rtmp_session/ffmpeg-publish.bin"),
    )
    .unwrap();
    let now = std::time::Instant::now();
    let mut s = Session::new(Limits::default(), now, 1);
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[0u8; 3072]);
    s.handle_input(now, &hello).unwrap();
    s.handle_input(now, &data).unwrap();
    let mut media = 0;
    loop {
        let Some(ev) = s.poll_event() else { break };
        match ev {
            Event::Connect { .. } => s.accept_connect().unwrap(),
            Event::Publish { .. } => s.accept_publish().unwrap(),
            Event::Media { .. } => media += 1,
            _ => {}
        }
    }
    assert!(media > 5, "only {media} media messages");
}

/// The listener seeds must get past the SYN cookie and the access decision:
/// real callers (plain and encrypted) are accepted and fed, and each
/// rejection seed gets its code.
#[test]
fn srt_listener_seeds_reach_players_and_rejections() {
    use sluice::srt::fuzz::run;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/srt_listener");
    let seed = |name: &str| run(&std::fs::read(dir.join(name)).unwrap());
    for name in [
        "srt-live-transmit1.5.1-caller-plays-then-closes.bin",
        "srt-live-transmit1.5.1-caller-aes256.bin",
        "ffmpeg5.1-libsrt1.5.1-caller-latency200.bin",
        "ffmpeg5.1-libsrt1.5.1-caller-aes128.bin",
        "accept-play-then-publisher-leaves.bin",
        "accept-720p-short-form-then-shutdown.bin",
    ] {
        let o = seed(name);
        assert!(o.accepted >= 1 && o.data_packets >= 3, "{name}: {o:?}");
    }
    assert_eq!(seed("ipv6-callers.bin").max_players, 2);
    for (name, codes) in [
        (
            "rejections-codes-mss-congestion-v4.bin",
            &[1404, 1405, 1400][..],
        ),
        ("max-players-1-second-caller-1402.bin", &[1402]),
        ("draining-1503.bin", &[1503]),
    ] {
        let o = seed(name);
        for c in codes {
            assert!(o.rejected.contains(c), "{name}: no {c} in {o:?}");
        }
    }
    let o = seed("srt-live-transmit1.5.1-caller-wrong-passphrase-retries.bin");
    assert!(o.max_players == 0 && !o.rejected.is_empty(), "{o:?}");
}

/// The issue 12 attack seeds still do what they are named for.
#[test]
fn srt_listener_attack_seeds_meet_the_policies() {
    use sluice::srt::fuzz::run;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/srt_listener");
    let seed = |name: &str| run(&std::fs::read(dir.join(name)).unwrap());
    let count = |o: &sluice::srt::fuzz::Outcome, code: i32| {
        o.rejected.iter().filter(|c| **c == code).count()
    };
    // Unknown applications get 1404; the configured one plays.
    let o = seed("unknown-app-1404-configured-app-plays.bin");
    assert_eq!(count(&o, 1404), 2, "{o:?}");
    assert!(o.accepted == 1 && o.data_packets >= 3, "{o:?}");
    // "*" asks other applications for a token; the named one stays open.
    let o = seed("default-app-tokens.bin");
    assert_eq!(count(&o, 1401), 1, "{o:?}");
    assert!(o.accepted == 1 && o.data_packets >= 3, "{o:?}");
    // 60 Conclusions on one cookie in one second: 20 answered; a second
    // later 6 more; another caller is not affected.
    let o = seed("conclusion-flood-one-cookie.bin");
    assert_eq!(count(&o, 1404), 26, "{o:?}");
    assert!(o.accepted == 1 && o.data_packets >= 3, "{o:?}");
}
