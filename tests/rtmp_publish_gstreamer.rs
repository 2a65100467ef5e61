//! Real GStreamer publishers against sluice: `rtmp2sink` (GStreamer's own
//! RTMP client) and `rtmpsink` (librtmp), both muxing H.264 + AAC with
//! `flvmux`. A missing element fails the test with the element's name.

mod common;

use std::time::Duration;

use common::*;

const ELEMENTS: &[(&str, &str)] = &[
    ("videotestsrc", "gstreamer1.0-plugins-base"),
    ("audiotestsrc", "gstreamer1.0-plugins-base"),
    ("audioconvert", "gstreamer1.0-plugins-base"),
    ("audioresample", "gstreamer1.0-plugins-base"),
    ("x264enc", "gstreamer1.0-plugins-ugly"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("avenc_aac", "gstreamer1.0-libav"),
    ("aacparse", "gstreamer1.0-plugins-good"),
    ("flvmux", "gstreamer1.0-plugins-good"),
];

/// videotestsrc 320x240@25 → x264 → flvmux ← AAC 48 kHz stereo, into
/// `sink` (its element and properties as argv words).
fn pipeline(sink: &[String]) -> Vec<String> {
    let mut p: Vec<String> = "videotestsrc is-live=true \
        ! video/x-raw,width=320,height=240,framerate=25/1 \
        ! x264enc tune=zerolatency key-int-max=50 \
        ! h264parse ! queue ! flvmux name=m streamable=true !"
        .split_whitespace()
        .map(str::to_string)
        .collect();
    p.extend(sink.iter().cloned());
    p.extend(
        "audiotestsrc is-live=true ! audioconvert ! audioresample \
         ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! queue ! m."
            .split_whitespace()
            .map(str::to_string),
    );
    p
}

fn publish_and_check(path: &str, sink_element: &str, sink: Vec<String>) {
    for (e, pkg) in ELEMENTS {
        require_gst_element(e, pkg);
    }
    require_gst_element(sink_element, "gstreamer1.0-plugins-bad");
    let server = Sluice::start(None);
    let sink: Vec<String> = sink
        .into_iter()
        .map(|w| w.replace("{URL}", &server.rtmp_url(path)))
        .collect();
    let mut gst = spawn_gst_launch(&pipeline(&sink));
    let expect = Expect::new(path)
        .video("h264", 320, 240, 25.0)
        .audio("aac", 48000, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    // Fail early and clearly if gst-launch dies.
    loop {
        if let Some(status) = gst.try_exit() {
            panic!(
                "gst-launch-1.0 exited ({status}) while publishing:\n{}",
                gst.stderr().tail(20)
            );
        }
        if let Some(s) = server.stream(path) {
            if expect.mismatches(&s).is_empty() || std::time::Instant::now() > deadline {
                break;
            }
        } else if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let s = expect.wait(&server, Duration::from_secs(1));
    assert!(gst.is_running(), "gst-launch-1.0 stopped: {s}");
    // Frames keep flowing.
    let n = json_f64(&s, "/frames_in/video").unwrap();
    server.wait_for_stream(
        path,
        |s| json_f64(s, "/frames_in/video").is_some_and(|m| m >= n + 25.0),
        Duration::from_secs(10),
    );
    // The publisher vanishing (killed, no goodbye) ends the stream.
    gst.kill();
    server.wait_stream_gone(path, Duration::from_secs(10));
}

#[test]
fn gstreamer_rtmp2sink_h264_aac_is_listed_320x240_25fps() {
    publish_and_check(
        "live/g2",
        "rtmp2sink",
        vec!["rtmp2sink".into(), "location={URL}".into()],
    );
}

#[test]
fn gstreamer_librtmp_rtmpsink_h264_aac_is_listed_320x240_25fps() {
    publish_and_check(
        "live/g1",
        "rtmpsink",
        vec!["rtmpsink".into(), "location={URL} live=1".into()],
    );
}
