//! SIGTERM drains: `/readyz` turns 503 at once, new publishers are refused,
//! live streams get `server.drain_timeout`, then the process exits 0 and
//! the publisher is disconnected.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::rtmp_client::{PublishOptions, RtmpPublisher};
use common::*;

#[test]
fn sigterm_turns_readyz_503_refuses_new_publishers_and_exits_0_after_drain_timeout() {
    let mut sluice = Sluice::start(Some("[server]\ndrain_timeout = \"3s\"\n"));
    let url = sluice.rtmp_url("live/drain");
    let mut ffmpeg = spawn_ffmpeg(&[
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25",
        "-t",
        "60",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-f",
        "flv",
        &url,
    ]);
    sluice.wait_for_stream(
        "live/drain",
        |s| s["frames_in"]["video"].as_u64() > Some(10),
        Duration::from_secs(20),
    );
    assert_eq!(sluice.get("/readyz").0, 200);

    let kill = Command::new("kill")
        .args(["-TERM", &sluice.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let signalled = Instant::now();

    // readyz flips as soon as the signal is handled.
    let deadline = signalled + Duration::from_secs(2);
    let body = loop {
        let (code, body) = sluice.get("/readyz");
        if code == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz still {code} 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "draining");
    assert!(v["reason"].is_string());
    assert!(v["timestamp"].is_u64());

    // A new encoder is told it is rejected while the live one keeps going.
    match RtmpPublisher::connect(sluice.rtmp_addr(), "live", PublishOptions::default()) {
        Ok(_) => panic!("connect accepted while draining"),
        Err(e) => assert!(
            e.contains("NetConnection.Connect.Rejected"),
            "unexpected refusal: {e}"
        ),
    }
    assert!(
        ffmpeg.is_running(),
        "the live publisher must be allowed to finish during the drain"
    );
    assert!(sluice.stream("live/drain").is_some());

    // After drain_timeout the stream is stopped and the process exits 0.
    let status = sluice
        .wait_exit(Duration::from_secs(15))
        .expect("sluice did not exit after the drain timeout");
    assert!(status.success(), "exit status {status}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "exited after {took:?}, before the drain timeout"
    );
    assert!(
        ffmpeg.wait_exit(Duration::from_secs(10)).is_some(),
        "publisher not disconnected"
    );
    assert!(sluice.log_contains("\"message\":\"draining\""));
    assert!(sluice.log_contains("\"message\":\"stopped\""));
}

#[test]
fn sigterm_with_no_streams_exits_0_at_once() {
    let mut sluice = Sluice::start(None);
    let kill = Command::new("kill")
        .args(["-TERM", &sluice.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = sluice.wait_exit(Duration::from_secs(10)).expect("no exit");
    assert!(status.success(), "exit status {status}");
}
