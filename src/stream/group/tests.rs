//! The group core on its own, on virtual time: every output checked.
//! (The RTMP → group → SRT pair runs in `pair.rs`.)

use super::*;
use crate::media::{Codec, CodecConfig, MediaEvent};
use bytes::Bytes;

use super::fixtures::{audio_config, video, video_config};

/// A group on a virtual clock, its outputs collected.
struct T {
    g: Group,
    t0: Instant,
    now: Instant,
    out: Vec<Output>,
}

impl T {
    fn new(legs: Vec<LegInfo>) -> T {
        let t0 = Instant::now();
        let p = GroupParams {
            published: t0 + Duration::from_millis(50),
            setup_start: t0,
            setup_timeout: Duration::from_secs(8),
            max_ingest_kbps: 10_000,
            legs,
        };
        let mut t = T {
            g: Group::new(p, GroupMetrics::noop()),
            t0,
            now: t0 + Duration::from_millis(50),
            out: Vec::new(),
        };
        t.drain();
        t
    }

    fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.g.poll_output() {
                Output::Timeout(t) => return t,
                o => self.out.push(o),
            }
        }
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = self.t0 + Duration::from_millis(ms);
        self
    }

    fn input(&mut self, i: Input) -> Option<Instant> {
        self.g.handle_input(self.now, i);
        self.drain()
    }

    fn media(&mut self, ev: MediaEvent) -> Option<Instant> {
        let at = self.now;
        self.input(Input::Media {
            at,
            bytes: 100,
            event: Some(ev),
            timestamp_jump: false,
        })
    }

    /// Config and one keyframe: a decodable source.
    fn keyframe(&mut self) {
        self.media(video_config());
        self.media(audio_config());
        self.media(video(0, true));
    }

    fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn teardown(&self) -> Option<(Cause, String)> {
        self.out.iter().find_map(|o| match o {
            Output::Teardown { cause, why } => Some((*cause, why.clone())),
            _ => None,
        })
    }

    fn status(&self) -> Option<(StatusKind, String)> {
        self.out.iter().find_map(|o| match o {
            Output::Status { kind, description } => Some((*kind, description.clone())),
            _ => None,
        })
    }

    fn ready(&self) -> bool {
        self.out.iter().any(|o| matches!(o, Output::Ready { .. }))
    }
}

fn push_leg() -> LegInfo {
    LegInfo {
        kind: LegKind::SrtPush,
        required: true,
    }
}

fn transcode_leg(renditions: usize) -> LegInfo {
    LegInfo {
        kind: LegKind::Transcode { renditions },
        required: true,
    }
}

#[test]
fn a_keyframe_makes_a_group_without_legs_ready_and_the_source_gets_chunks() {
    let mut t = T::new(vec![]);
    assert!(t.out.is_empty());
    t.at(100);
    assert_eq!(t.media(video_config()), Some(t.t0 + Duration::from_secs(8)));
    t.media(audio_config());
    let wake = t.media(video(0, true));
    assert_eq!(wake, None, "no timer once live");
    let out = t.take();
    let chunks: Vec<&TsChunk> = out
        .iter()
        .filter_map(|o| match o {
            Output::Source(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(chunks[0].keyframe, "the first chunk starts the keyframe");
    assert_eq!(chunks[0].origin, Some(t.now));
    assert_eq!(
        out.last(),
        Some(&Output::Ready {
            took: Duration::from_millis(100)
        })
    );
    assert!(t.g.is_ready());
    assert_eq!(t.g.stats().stats.frames_video, 1);
}

#[test]
fn no_keyframe_by_the_deadline_fails_setup_with_the_reason() {
    let mut t = T::new(vec![]);
    t.at(1000).media(video_config());
    t.at(3000).media(video(0, false));
    t.at(8000).input(Input::Timeout);
    let (cause, why) = t.teardown().unwrap();
    assert_eq!(
        cause,
        Cause::SetupTimeout {
            reason: "no_keyframe"
        }
    );
    assert_eq!(cause.label(), "setup_timeout");
    let (kind, text) = t.status().unwrap();
    assert_eq!(kind, StatusKind::Failed);
    assert!(
        text.starts_with("stream not playable within 8s of connecting (server.setup_timeout)"),
        "{text}"
    );
    assert!(
        text.ends_with(&why),
        "the log's why is the bare reason: {why}"
    );
    assert_eq!(
        why,
        "no video keyframe with its sequence header (or AAC audio) arrived"
    );
    assert!(t.g.is_ended());
    // Nothing changes after the end.
    t.take();
    t.at(9000).media(video(100, true));
    assert!(t.out.is_empty());
}

#[test]
fn media_the_muxer_refuses_is_named_when_setup_times_out() {
    let mut t = T::new(vec![]);
    t.at(100).media(MediaEvent::Config(CodecConfig::Video {
        codec: Codec::Av1,
        record: Bytes::from_static(&[0x81, 0, 0, 0]),
        params: None,
    }));
    t.at(8000).input(Input::Timeout);
    assert_eq!(
        t.teardown().unwrap().0,
        Cause::SetupTimeout {
            reason: "unsupported_media"
        }
    );
}

#[test]
fn push_legs_start_at_publish_and_setup_waits_for_them() {
    let mut t = T::new(vec![push_leg(), push_leg()]);
    assert_eq!(
        t.take(),
        vec![
            Output::StartLeg {
                leg: LegId(0),
                source: None
            },
            Output::StartLeg {
                leg: LegId(1),
                source: None
            }
        ]
    );
    t.at(200).keyframe();
    assert!(!t.ready());
    t.at(300).input(Input::LegConnected(LegId(0)));
    assert!(!t.ready());
    t.at(400).input(Input::LegConnected(LegId(1)));
    assert!(t.out.contains(&Output::Ready {
        took: Duration::from_millis(400)
    }));
}

#[test]
fn a_push_leg_that_connects_after_the_deadline_fails_the_publish() {
    let mut t = T::new(vec![push_leg(), push_leg()]);
    t.at(200).keyframe();
    t.at(300).input(Input::LegConnected(LegId(0)));
    // The deadline is judged before the late input.
    t.at(8001).input(Input::LegConnected(LegId(1)));
    assert!(!t.ready());
    let (cause, why) = t.teardown().unwrap();
    assert_eq!(cause.setup_reason(), Some("push_connect"));
    assert!(
        why.ends_with("1 of 2 SRT push destinations connected"),
        "{why}"
    );
}

#[test]
fn the_transcode_starts_at_the_first_video_keyframe_and_is_fed_from_it() {
    let mut t = T::new(vec![transcode_leg(2)]);
    assert!(t.out.is_empty(), "a transcode waits for the keyframe");
    t.at(100).media(video_config());
    t.media(audio_config());
    t.input(Input::Framerate(25.0));
    t.media(video(0, false));
    assert!(!t.out.iter().any(|o| matches!(o, Output::StartLeg { .. })));
    t.take();
    t.media(video(40, true));
    let out = t.take();
    let Output::StartLeg {
        leg: LegId(0),
        source: Some(src),
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(src.configs, vec![video_config(), audio_config()]);
    assert!(src.aac_audio);
    assert_eq!(src.fps, Some(25.0), "from the metadata: too few frames");
    assert_eq!(
        out[1],
        Output::Feed {
            leg: LegId(0),
            event: video(40, true)
        }
    );
    assert!(!t.ready(), "renditions not produced yet");
    t.media(video(80, false));
    assert!(t.out.contains(&Output::Feed {
        leg: LegId(0),
        event: video(80, false)
    }));
    t.at(900).input(Input::RenditionReady(LegId(0)));
    assert!(!t.ready());
    t.at(950).input(Input::RenditionReady(LegId(0)));
    assert!(t.ready());
}

#[test]
fn a_rendition_whose_first_idr_never_comes_fails_setup() {
    let mut t = T::new(vec![transcode_leg(2)]);
    t.at(100).keyframe();
    t.at(500).input(Input::RenditionReady(LegId(0)));
    t.at(8000).input(Input::Timeout);
    let (cause, why) = t.teardown().unwrap();
    assert_eq!(cause.setup_reason(), Some("transcode_first_idr"));
    assert!(why.ends_with("1 of 2 transcoded renditions produced their first IDR"));
}

#[test]
fn a_transcode_failing_in_setup_is_a_setup_failure_with_its_reason() {
    let mut t = T::new(vec![transcode_leg(1)]);
    t.at(100).keyframe();
    t.input(Input::LegEnded(
        LegId(0),
        Err(LegFailure {
            reason: "ffmpeg_missing",
            detail: "ffmpeg not found".into(),
        }),
    ));
    assert_eq!(
        t.teardown().unwrap().0,
        Cause::SetupFailed {
            reason: "ffmpeg_missing"
        }
    );
    assert_eq!(
        t.status().unwrap().1,
        "stream setup failed: ffmpeg not found"
    );
}

#[test]
fn a_leg_failing_mid_stream_tears_everything_down_with_the_cause() {
    let mut t = T::new(vec![push_leg(), transcode_leg(1)]);
    t.at(100).keyframe();
    t.input(Input::LegConnected(LegId(0)));
    t.input(Input::RenditionReady(LegId(1)));
    assert!(t.ready());
    t.take();
    t.at(5000).input(Input::LegEnded(
        LegId(0),
        Err(LegFailure {
            reason: "push_closed",
            detail: "srt://127.0.0.1:9999: the connection closed".into(),
        }),
    ));
    let out = t.take();
    assert_eq!(
        out,
        vec![
            Output::Status {
                kind: StatusKind::Failed,
                description: "SRT push failed: srt://127.0.0.1:9999: the connection closed".into()
            },
            Output::Teardown {
                cause: Cause::LegFailed {
                    kind: LegKind::SrtPush
                },
                why: "srt://127.0.0.1:9999: the connection closed".into()
            }
        ]
    );
    // The other leg's end (it was cancelled) changes nothing.
    t.input(Input::LegEnded(LegId(1), Ok(())));
    assert!(t.out.is_empty());
}

#[test]
fn an_optional_leg_neither_holds_setup_nor_ends_the_stream() {
    let mut t = T::new(vec![LegInfo {
        kind: LegKind::SrtPush,
        required: false,
    }]);
    t.at(100).keyframe();
    assert!(t.ready());
    t.take();
    t.input(Input::LegEnded(
        LegId(0),
        Err(LegFailure {
            reason: "push_closed",
            detail: "gone".into(),
        }),
    ));
    assert!(t.out.is_empty());
    assert!(!t.g.is_ended());
}

#[test]
fn takeover_shutdown_and_a_leaving_publisher_end_with_their_causes() {
    for (input, status, cause) in [
        (
            Input::TakenOver,
            Some(StatusKind::TakenOver),
            Cause::TakenOver,
        ),
        (Input::Shutdown, Some(StatusKind::Stopped), Cause::Shutdown),
        (
            Input::PublisherGone {
                reason: "unpublished",
            },
            None,
            Cause::Publisher("unpublished"),
        ),
    ] {
        let mut t = T::new(vec![]);
        t.at(100).keyframe();
        t.take();
        t.at(200).input(input);
        assert_eq!(t.status().map(|s| s.0), status);
        assert_eq!(t.teardown().unwrap().0, cause);
        assert_eq!(t.out.len(), 1 + usize::from(status.is_some()));
    }
    assert_eq!(Cause::Publisher("unpublished").label(), "unpublished");
}

#[test]
fn an_ingest_over_the_bitrate_cap_is_stopped_after_the_warmup() {
    let mut t = T::new(vec![]);
    t.at(100).keyframe();
    // 20 Mbit/s against a 10 Mbit/s cap, 250 kB every 100 ms.
    let mut ms = 100;
    while !t.g.is_ended() && ms < 10_000 {
        ms += 100;
        let at = t.t0 + Duration::from_millis(ms);
        t.at(ms).input(Input::Media {
            at,
            bytes: 250_000,
            event: None,
            timestamp_jump: false,
        });
    }
    // Judged once the 3 s window after the publish is full.
    assert!((3000..=3500).contains(&ms), "{ms}");
    let (cause, _) = t.teardown().unwrap();
    assert!(matches!(cause, Cause::BitrateLimit { limit_kbps: 10_000, kbps } if kbps > 11_000));
    assert!(t
        .status()
        .unwrap()
        .1
        .contains("exceeds rtmp.max_ingest_bitrate (10000 kbit/s)"));
}

/// A setup timeout too large for `Instant` (the config refuses one over an
/// hour) neither panics nor ends the stream.
#[test]
fn a_huge_setup_timeout_does_not_overflow() {
    let t0 = Instant::now();
    let p = GroupParams {
        published: t0,
        setup_start: t0,
        setup_timeout: Duration::MAX,
        max_ingest_kbps: 10_000,
        legs: vec![],
    };
    let mut g = Group::new(p, GroupMetrics::noop());
    let later = t0 + Duration::from_secs(3600);
    g.handle_input(later, Input::Timeout);
    assert!(matches!(g.poll_output(), Output::Timeout(Some(t)) if t > later));
    assert!(!g.is_ended());
}

fn optional(kind: LegKind) -> LegInfo {
    LegInfo {
        kind,
        required: false,
    }
}

fn starts(out: &[Output]) -> Vec<(usize, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::StartLeg { leg, source } => Some((leg.0, source.is_some())),
            _ => None,
        })
        .collect()
}

fn failure() -> Result<(), LegFailure> {
    Err(LegFailure {
        reason: "push_connect",
        detail: "rtmp://127.0.0.1:9/live/…: connection refused".into(),
    })
}

#[test]
fn an_optional_leg_never_holds_setup_and_is_retried_with_capped_backoff() {
    let mut t = T::new(vec![optional(LegKind::RtmpPush), push_leg()]);
    // Both start with the publish; the fed restream gets the source info.
    assert_eq!(starts(&t.take()), vec![(0, true), (1, false)]);
    t.at(100).input(Input::LegConnected(LegId(1)));
    t.keyframe();
    assert!(t.ready(), "setup does not wait for the optional leg");
    t.take();
    // Each failure in a row doubles the wait, up to 30 s.
    let mut now = 200;
    for (n, wait) in [1u64, 2, 4, 8, 16, 30, 30].into_iter().enumerate() {
        let wake = t.at(now).input(Input::LegEnded(LegId(0), failure()));
        assert_eq!(wake, Some(t.t0 + Duration::from_millis(now + wait * 1000)));
        assert!(t.teardown().is_none() && t.status().is_none());
        let st = t.g.leg_statuses().next().unwrap().clone();
        assert!(matches!(st.state, LegState::Retrying { .. }), "{st:?}");
        assert_eq!(st.retries, n as u32);
        assert!(st.last_error.unwrap().contains("connection refused"));
        // Nothing before its time; then it starts again.
        t.at(now + wait * 1000 - 1).input(Input::Timeout);
        assert!(starts(&t.take()).is_empty());
        now += wait * 1000;
        t.at(now).input(Input::Timeout);
        assert_eq!(starts(&t.take()), vec![(0, true)]);
        assert_eq!(t.g.leg_statuses().next().unwrap().state, LegState::Starting);
    }
    // Connected for a minute, then failing: the backoff starts over.
    t.at(now).input(Input::LegConnected(LegId(0)));
    assert_eq!(t.g.leg_statuses().next().unwrap().state, LegState::Up);
    now += 61_000;
    let wake = t.at(now).input(Input::LegEnded(LegId(0), failure()));
    assert_eq!(wake, Some(t.t0 + Duration::from_millis(now + 1000)));
    // A required leg failing still ends the stream.
    t.at(now + 10).input(Input::LegEnded(LegId(1), failure()));
    let (cause, _) = t.teardown().unwrap();
    assert_eq!(cause.label(), "leg_failed");
    assert!(t.g.leg_statuses().all(|s| s.state == LegState::Stopped));
}

#[test]
fn a_fed_leg_started_at_publish_gets_the_configs_then_the_keyframe_first() {
    let mut t = T::new(vec![optional(LegKind::RtmpPush)]);
    t.take();
    t.at(100);
    t.media(video_config());
    t.media(audio_config());
    t.media(video(0, false));
    assert!(
        !t.take().iter().any(|o| matches!(o, Output::Feed { .. })),
        "nothing before a keyframe"
    );
    t.media(video(33, true));
    t.media(video(66, false));
    let fed: Vec<MediaEvent> = t
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Feed { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(
        fed,
        vec![
            video_config(),
            audio_config(),
            video(33, true),
            video(66, false)
        ]
    );
    // Restarted after a failure: configs again, from the next keyframe.
    t.at(200).input(Input::LegEnded(LegId(0), failure()));
    t.at(1200).input(Input::Timeout);
    t.media(video(99, false));
    t.media(video(133, true));
    let fed: Vec<MediaEvent> = t
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Feed { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(fed, vec![video_config(), audio_config(), video(133, true)]);
}

#[test]
fn a_required_recording_that_never_opens_fails_setup_naming_it() {
    let mut t = T::new(vec![LegInfo {
        kind: LegKind::Record,
        required: true,
    }]);
    assert_eq!(starts(&t.take()), vec![(0, false)]);
    t.at(100).keyframe();
    assert!(!t.ready());
    t.at(8000).input(Input::Timeout);
    let (cause, why) = t.teardown().unwrap();
    assert_eq!(cause.setup_reason(), Some("record_start"));
    assert!(why.contains("recording"), "{why}");
}

fn claim_leg() -> LegInfo {
    LegInfo {
        kind: LegKind::Claim,
        required: true,
    }
}

/// `[cluster]`: the claim is part of setup (the stream is not ready until
/// the path is held); another node holding the path is a bad name naming
/// it; losing the path later stops the stream with that cause; a claim
/// that never answers is named when setup times out.
#[test]
fn the_cluster_claim_holds_setup_and_another_node_is_a_bad_name() {
    let mut t = T::new(vec![claim_leg()]);
    assert_eq!(starts(&t.take()), vec![(0, false)], "claimed at publish");
    t.at(100).keyframe();
    assert!(!t.ready(), "not ready before the claim");
    t.at(120).input(Input::LegConnected(LegId(0)));
    assert!(t.ready());
    t.take();
    t.at(9000).input(Input::LegEnded(
        LegId(0),
        Err(LegFailure {
            reason: "cluster_taken_over",
            detail: "node b took live/cam1 over".into(),
        }),
    ));
    assert_eq!(
        t.status(),
        Some((StatusKind::TakenOver, "node b took live/cam1 over".into()))
    );
    let (cause, _) = t.teardown().unwrap();
    assert_eq!(cause.label(), "cluster_taken_over");

    let mut t = T::new(vec![claim_leg()]);
    t.at(100).keyframe();
    t.input(Input::LegEnded(
        LegId(0),
        Err(LegFailure {
            reason: "cluster_busy",
            detail: "live/cam1 is being published on node a".into(),
        }),
    ));
    assert_eq!(
        t.status(),
        Some((
            StatusKind::TakenOver,
            "live/cam1 is being published on node a".into()
        ))
    );
    assert_eq!(
        t.teardown().unwrap().0,
        Cause::SetupFailed {
            reason: "cluster_busy"
        }
    );

    let mut t = T::new(vec![claim_leg()]);
    t.at(100).keyframe();
    t.at(8000).input(Input::Timeout);
    assert_eq!(
        t.teardown().unwrap().0,
        Cause::SetupTimeout {
            reason: "cluster_claim"
        }
    );
}
