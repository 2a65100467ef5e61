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
