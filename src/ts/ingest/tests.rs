//! The TS ingest against our own muxer (exact round trips), against real
//! encoder output from ffmpeg (libx264 with B-frames, libx265, AAC, the 2^33
//! wrap), and against loss cut into real streams.

use std::io::Write;
use std::process::{Command, Stdio};

use super::*;
use crate::media::fixtures::{aac_config, h264_config};
use crate::ts::{Demuxer, Muxer, PACKET};

const MAX_JUMP: Duration = Duration::from_secs(10);

fn ingest_all(ts: &[u8], step: usize) -> (Vec<Ingested>, TsIngest) {
    let mut ing = TsIngest::new(MAX_JUMP);
    let mut out = Vec::new();
    for piece in ts.chunks(step.max(1)) {
        ing.push(piece, &mut out);
    }
    ing.flush(&mut out);
    (out, ing)
}

fn frames(out: &[Ingested], track: Track) -> Vec<&Frame> {
    out.iter()
        .filter_map(|i| match &i.event {
            MediaEvent::Frame(f) if f.track == track => Some(f),
            _ => None,
        })
        .collect()
}

fn configs(out: &[Ingested]) -> Vec<&CodecConfig> {
    out.iter()
        .filter_map(|i| match &i.event {
            MediaEvent::Config(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn avcc(nals: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for n in nals {
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n);
    }
    Bytes::from(v)
}

/// Known frames: 60 H.264 frames (keyframe every 20, B-frame style
/// composition offsets, an SEI on some) and AAC every 21 ms.
fn known_frames() -> Vec<Frame> {
    let mut v = Vec::new();
    for i in 0..60u64 {
        let key = i % 20 == 0;
        let mut slice = vec![if key { 0x65 } else { 0x41 }, 0x88];
        slice.extend((0..(200 + i * 37) % 3000).map(|b| (b % 251) as u8 + 1));
        let sei = [0x06, 0x05, 0x01, 0xAA, 0x80];
        let data = if i % 7 == 0 {
            avcc(&[&sei, &slice])
        } else {
            avcc(&[&slice])
        };
        v.push(Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts: i * 33,
            cts: [66, 0, 33][i as usize % 3],
            keyframe: key,
            data,
        });
        for k in 0..2u64 {
            let n = i * 2 + k;
            v.push(Frame {
                track: Track::Audio,
                codec: Codec::Aac,
                dts: n * 21 + 5,
                cts: 0,
                keyframe: true,
                data: Bytes::from(vec![(n % 200) as u8 + 1; 50 + n as usize]),
            });
        }
    }
    v
}

fn mux(configs: &[CodecConfig], frames: &[Frame]) -> Vec<u8> {
    let mut m = Muxer::new();
    for c in configs {
        m.set_config(c).unwrap();
    }
    let mut chunks = Vec::new();
    for f in frames {
        m.push(f, &mut chunks).unwrap();
    }
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

#[test]
fn round_trips_what_our_muxer_writes() {
    let known = known_frames();
    let ts = mux(&[h264_config(), aac_config()], &known);
    for step in [1, 100, 188, 1316, 100_000] {
        let (out, ing) = ingest_all(&ts, step);
        // Configurations come first: the same parameter sets, the same ASC.
        let cfgs = configs(&out);
        assert_eq!(cfgs.len(), 2, "step {step}");
        let video_cfg = cfgs
            .iter()
            .find_map(|c| match c {
                CodecConfig::Video { codec, record, .. } => Some((*codec, record.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(video_cfg.0, Codec::H264);
        let got = h264::parse_avc_decoder_config(&video_cfg.1).unwrap();
        let want = h264::parse_avc_decoder_config(&crate::media::fixtures::avcc_record()).unwrap();
        assert_eq!((got.sps, got.pps), (want.sps, want.pps));
        let CodecConfig::Audio {
            config: want_asc, ..
        } = aac_config()
        else {
            unreachable!()
        };
        assert!(cfgs
            .iter()
            .any(|c| matches!(c, CodecConfig::Audio { codec: Codec::Aac, config, .. } if *config == want_asc)));
        // Every frame back: dts, cts, keyframe and payload (the muxer's AUD
        // and the parameter sets it put before keyframes are gone again).
        let back: Vec<Frame> = out
            .iter()
            .filter_map(|i| match &i.event {
                MediaEvent::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        let by_track = |t: Track, v: &[Frame]| -> Vec<Frame> {
            v.iter().filter(|f| f.track == t).cloned().collect()
        };
        // One shift for both tracks (the origin), everything else exact.
        let shift = by_track(Track::Video, &back)[0].dts as i64 - known[0].dts as i64;
        let shifted: Vec<Frame> = known
            .iter()
            .map(|f| Frame {
                dts: (f.dts as i64 + shift) as u64,
                ..f.clone()
            })
            .collect();
        assert_eq!(
            by_track(Track::Video, &back),
            by_track(Track::Video, &shifted)
        );
        assert_eq!(
            by_track(Track::Audio, &back),
            by_track(Track::Audio, &shifted)
        );
        assert!(out.iter().all(|i| !i.timestamp_jump));
        let s = ing.stats();
        assert_eq!((s.frames_video, s.frames_audio), (60, 120));
        assert_eq!(
            (s.continuity_errors, s.dropped_frames, s.truncated_pes),
            (0, 0, 0)
        );
        assert_eq!(s.packets, (ts.len() / PACKET) as u64);
    }
}

#[test]
fn configuration_comes_before_the_first_frame_and_again_on_change() {
    let mut known = known_frames();
    known.retain(|f| f.track == Track::Video);
    let ts1 = mux(&[h264_config()], &known[..20]);
    // A second SPS (different level) from frame 20 on: a new record.
    let sps2 = [0x67, 0x64, 0x00, 0x28, 0xAC, 0xD9];
    let pps = [0x68, 0xEB, 0xE3, 0xCB];
    let mut rec = vec![1, 0x64, 0x00, 0x28, 0xFF, 0xE1, 0x00, 6];
    rec.extend_from_slice(&sps2);
    rec.extend_from_slice(&[1, 0, 4]);
    rec.extend_from_slice(&pps);
    let mut m = Muxer::new();
    m.set_config(&h264_config()).unwrap();
    let mut chunks = Vec::new();
    for f in &known[..20] {
        m.push(f, &mut chunks).unwrap();
    }
    m.set_config(&CodecConfig::Video {
        codec: Codec::H264,
        record: Bytes::from(rec),
        params: None,
    })
    .unwrap();
    for f in &known[20..] {
        m.push(f, &mut chunks).unwrap();
    }
    let ts: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
    assert!(ts.starts_with(&ts1[..PACKET * 2]));
    let (out, _) = ingest_all(&ts, 1316);
    let kinds: Vec<String> = out
        .iter()
        .map(|i| match &i.event {
            MediaEvent::Config(CodecConfig::Video { record, .. }) => format!("cfg{}", record[3]),
            MediaEvent::Frame(f) => format!("{}", u8::from(f.keyframe)),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds[0], "cfg30");
    assert_eq!(kinds[21], "cfg40", "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| k.starts_with("cfg")).count(), 2);
    assert_eq!(kinds[22], "1");
}

/// Runs a binary with `input` on stdin; returns (stdout, stderr, success).
fn run_with_stdin(program: &str, args: &[&str], input: &[u8]) -> (Vec<u8>, String, bool) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (install the ffmpeg package): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// MPEG-TS from ffmpeg's lavfi sources; `args` go between the inputs and `-f mpegts -`.
fn ffmpeg_ts(inputs: &[&str], args: &[&str]) -> Vec<u8> {
    let mut all = vec!["-nostdin", "-hide_banner", "-loglevel", "error"];
    for i in inputs {
        all.extend(["-f", "lavfi", "-i", i]);
    }
    all.extend(args);
    all.extend(["-f", "mpegts", "-"]);
    let (ts, err, ok) = run_with_stdin("ffmpeg", &all, &[]);
    assert!(ok && !ts.is_empty(), "ffmpeg {all:?} failed: {err}");
    ts
}

const VIDEO: &str = "testsrc2=size=320x240:rate=30";
const AUDIO: &str = "sine=frequency=440:sample_rate=48000";

fn h264_aac_ts(extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "-t",
        "3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "2",
        "-g",
        "30",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
    ];
    args.extend(extra);
    ffmpeg_ts(&[VIDEO, AUDIO], &args)
}

/// ffprobe's view of the first stream of `kind` ("v" or "a"): (dts, pts,
/// keyframe) per packet in 90 kHz ticks.
fn ffprobe_packets(ts: &[u8], kind: &str) -> Vec<(i64, i64, bool)> {
    let (out, err, ok) = run_with_stdin(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            &format!("{kind}:0"),
            "-show_entries",
            "packet=dts,pts,flags",
            "-of",
            "csv=p=0",
            "-i",
            "pipe:0",
        ],
        ts,
    );
    assert!(ok, "ffprobe: {err}");
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let pts: i64 = f[0].parse().unwrap();
            let dts: i64 = f[1].parse().unwrap_or(pts);
            (dts, pts, f[2].contains('K'))
        })
        .collect()
}

/// Muxes the ingested events with our muxer and decodes the result with
/// ffmpeg: any decode error fails. Returns the TS.
fn remux_decodes_clean(out: &[Ingested]) -> Vec<u8> {
    let mut m = Muxer::new();
    let mut chunks = Vec::new();
    for i in out {
        match &i.event {
            MediaEvent::Config(c) => m.set_config(c).unwrap(),
            MediaEvent::Frame(f) => m.push(f, &mut chunks).unwrap(),
            MediaEvent::EndOfSequence(_) => {}
        }
    }
    let ts: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
    let (_, err, ok) = run_with_stdin(
        "ffmpeg",
        &["-nostdin", "-v", "error", "-i", "pipe:0", "-f", "null", "-"],
        &ts,
    );
    assert!(ok && err.trim().is_empty(), "decoding the remux: {err}");
    ts
}

#[test]
fn ffmpeg_h264_with_b_frames_and_aac() {
    let ts = h264_aac_ts(&[]);
    let (out, ing) = ingest_all(&ts, 1316);
    let video = frames(&out, Track::Video);
    let audio = frames(&out, Track::Audio);
    assert_eq!(video.len(), 90);
    let keys: Vec<usize> = (0..90).filter(|&i| video[i].keyframe).collect();
    assert_eq!(keys, vec![0, 30, 60]);
    assert!(
        video.windows(2).all(|w| w[1].dts > w[0].dts),
        "monotonic dts"
    );
    assert!(video.iter().any(|f| f.cts > 0), "B-frames have cts > 0");
    assert!(video.iter().all(|f| f.cts >= 0));
    // The same timing as ffprobe reads, on one origin for both tracks.
    let pv = ffprobe_packets(&ts, "v");
    let pa = ffprobe_packets(&ts, "a");
    assert_eq!(pv.len(), 90);
    assert_eq!(pa.len(), audio.len());
    // Relative to the first video frame, to the ms (both are floored).
    let base = video[0].dts as i64;
    let near = |got: u64, ticks: i64| (got as i64 - base - ticks.div_euclid(90)).abs() <= 1;
    for (f, &(dts, pts, key)) in video.iter().zip(&pv) {
        assert!(near(f.dts, dts - pv[0].0), "dts {} vs {}", f.dts, dts);
        assert!(near(f.pts(), pts - pv[0].0), "pts {} vs {}", f.pts(), pts);
        assert_eq!(f.keyframe, key);
    }
    // Audio on the same timeline: A/V sync is kept.
    for (f, &(_, pts, _)) in audio.iter().zip(&pa) {
        assert!(near(f.dts, pts - pv[0].0), "audio {} vs {}", f.dts, pts);
    }
    assert!(audio.len() >= 140, "{} AAC frames in 3 s", audio.len());
    // The configuration precedes the frames of its track.
    let first_video = out
        .iter()
        .position(|i| matches!(&i.event, MediaEvent::Frame(f) if f.track == Track::Video))
        .unwrap();
    assert!(out[..first_video].iter().any(|i| matches!(
        &i.event,
        MediaEvent::Config(CodecConfig::Video { codec: Codec::H264, params: Some(p), .. })
            if (p.width, p.height) == (320, 240)
    )));
    assert!(matches!(
        configs(&out).iter().find(|c| c.track() == Track::Audio),
        Some(CodecConfig::Audio { params: Some(p), .. }) if p.sample_rate == 48_000 && p.channels == 1
    ));
    // No AUD or parameter set in keyframes, and every frame is well formed.
    for f in &video {
        let mut rest = &f.data[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let ty = rest[4] & 0x1F;
            assert_ne!(ty, 9, "AUD left in");
            assert!(
                !(f.keyframe && (ty == 7 || ty == 8)),
                "parameter set left in a keyframe"
            );
            rest = &rest[4 + len..];
        }
    }
    let s = ing.stats();
    assert_eq!(
        (s.dropped_frames, s.continuity_errors, s.truncated_pes),
        (0, 0, 0)
    );
    assert_eq!(s.unsupported_streams, 0);
    let remux = remux_decodes_clean(&out);
    assert_eq!(ffprobe_packets(&remux, "v").len(), 90);
}

#[test]
fn ffmpeg_hevc_with_b_frames() {
    let ts = ffmpeg_ts(
        &[VIDEO],
        &[
            "-t",
            "2",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "bframes=3:keyint=30:min-keyint=30:scenecut=0:log-level=error",
        ],
    );
    let (out, ing) = ingest_all(&ts, 1316);
    let video = frames(&out, Track::Video);
    assert_eq!(video.len(), 60);
    assert!(video.iter().all(|f| f.codec == Codec::H265));
    let probed = ffprobe_packets(&ts, "v");
    let keys: Vec<bool> = probed.iter().map(|p| p.2).collect();
    assert_eq!(video.iter().map(|f| f.keyframe).collect::<Vec<_>>(), keys);
    assert!(video[0].keyframe);
    assert!(video.iter().any(|f| f.cts > 0));
    assert!(video.windows(2).all(|w| w[1].dts > w[0].dts));
    let cfg = configs(&out);
    let Some(CodecConfig::Video {
        codec: Codec::H265,
        record,
        params: Some(p),
    }) = cfg.first()
    else {
        panic!("{cfg:?}");
    };
    assert_eq!((p.width, p.height), (320, 240));
    let parsed = hevc::parse_hevc_decoder_config(record).unwrap();
    assert_eq!(
        (parsed.vps.len(), parsed.sps.len(), parsed.pps.len()),
        (1, 1, 1)
    );
    assert_eq!(parsed.general_profile_idc, 1);
    assert_eq!(ing.stats().dropped_frames, 0);
    remux_decodes_clean(&out);
}

#[test]
fn ffmpeg_audio_only_and_video_only() {
    let ts = ffmpeg_ts(&[AUDIO], &["-t", "2", "-c:a", "aac", "-ac", "2"]);
    let (out, _) = ingest_all(&ts, 188);
    assert!(frames(&out, Track::Video).is_empty());
    let audio = frames(&out, Track::Audio);
    assert_eq!(audio.len(), ffprobe_packets(&ts, "a").len());
    assert!(audio.len() >= 93);
    // 1024 samples at 48 kHz: 21.33 ms apart, on whole ms.
    assert!(audio
        .windows(2)
        .all(|w| (21..=22).contains(&(w[1].dts - w[0].dts))));
    assert!(matches!(
        configs(&out)[..],
        [CodecConfig::Audio {
            params: Some(AudioParams {
                sample_rate: 48_000,
                channels: 2,
                ..
            }),
            ..
        }]
    ));
    remux_decodes_clean(&out);

    let ts = ffmpeg_ts(
        &[VIDEO],
        &["-t", "2", "-c:v", "libx264", "-bf", "0", "-g", "15"],
    );
    let (out, _) = ingest_all(&ts, 5000);
    assert!(frames(&out, Track::Audio).is_empty());
    let video = frames(&out, Track::Video);
    assert_eq!(video.len(), 60);
    assert!(video.iter().all(|f| f.cts == 0));
    assert_eq!(video.iter().filter(|f| f.keyframe).count(), 4);
    remux_decodes_clean(&out);
}

use crate::media::AudioParams;

#[test]
fn the_33_bit_wrap_is_seamless() {
    // 95443.7 s is 2^33 ticks: start 2 s before it.
    let ts = h264_aac_ts(&["-output_ts_offset", "95441.5"]);
    // The raw PES timestamps cross 2^33.
    let mut pes = Vec::new();
    let mut d = Demuxer::new();
    d.push(&ts, &mut pes).unwrap();
    assert!(pes.iter().any(|p| p.pts.unwrap() > TIMESTAMP_MASK - 90_000));
    assert!(pes.iter().any(|p| p.pts.unwrap() < 90_000));
    let (out, ing) = ingest_all(&ts, 1316);
    let video = frames(&out, Track::Video);
    let audio = frames(&out, Track::Audio);
    assert_eq!(video.len(), 90);
    assert!(video
        .windows(2)
        .all(|w| (33..=34).contains(&(w[1].dts - w[0].dts))));
    assert!(audio
        .windows(2)
        .all(|w| (21..=22).contains(&(w[1].dts - w[0].dts))));
    assert!(video.last().unwrap().dts > 2900);
    assert_eq!(ing.stats().timestamp_jumps, 0);
    assert!(out.iter().all(|i| !i.timestamp_jump));
}

#[test]
fn a_jump_re_bases_the_track_and_is_flagged() {
    let mut known = known_frames();
    for f in known.iter_mut().skip(60) {
        f.dts += 3_600_000;
    }
    let ts = mux(&[h264_config(), aac_config()], &known);
    let (out, ing) = ingest_all(&ts, 1316);
    assert_eq!(ing.stats().timestamp_jumps, 2, "one per track");
    let flagged: Vec<&Ingested> = out.iter().filter(|i| i.timestamp_jump).collect();
    assert_eq!(flagged.len(), 2);
    for f in [frames(&out, Track::Video), frames(&out, Track::Audio)] {
        assert!(f
            .windows(2)
            .all(|w| w[1].dts >= w[0].dts && w[1].dts - w[0].dts < 1000));
    }
}

/// (packet index, PID, payload_unit_start) for every packet of `ts`.
fn packets(ts: &[u8]) -> Vec<(usize, u16, bool)> {
    ts.chunks(PACKET)
        .enumerate()
        .map(|(i, p)| {
            (
                i,
                u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]),
                p[1] & 0x40 != 0,
            )
        })
        .collect()
}

/// Checks what survived loss against the lossless run: every frame that
/// comes out is one of the originals, whole, with the same timing (up to one
/// shift for both tracks, to the ms: the origin is the first timestamp that
/// arrives, and ms are floored from 90 kHz ticks);
/// video resumes only at a keyframe after each gap.
fn check_against_clean(clean: &[Ingested], lossy: &[Ingested]) {
    check_against_clean_with(clean, lossy, false)
}

/// [`check_against_clean`]; with `rasl`, frames may also be skipped right
/// after a keyframe (HEVC RASL pictures after a resume).
fn check_against_clean_with(clean: &[Ingested], lossy: &[Ingested], rasl: bool) {
    // The shift, from the first video frame (a keyframe: unique data).
    let mut shift: Option<i64> = None;
    for track in [Track::Video, Track::Audio] {
        let originals = frames(clean, track);
        let got = frames(lossy, track);
        let mut at = 0;
        let mut last_key = false;
        for f in &got {
            let i = originals[at..]
                .iter()
                .position(|o| {
                    o.data == f.data
                        && (o.cts - f.cts).abs() <= 1
                        && shift.is_none_or(|s| (o.dts as i64 + s - f.dts as i64).abs() <= 1)
                })
                .map(|i| i + at)
                .unwrap_or_else(|| {
                    panic!(
                        "{track:?} frame at {} ms ({} bytes, key {}) is not an original",
                        f.dts,
                        f.data.len(),
                        f.keyframe
                    )
                });
            let o = originals[i];
            shift.get_or_insert(f.dts as i64 - o.dts as i64);
            assert_eq!(f.keyframe, o.keyframe);
            if track == Track::Video && i != at && !(rasl && last_key) {
                // Frames were skipped: what follows the gap is a keyframe.
                assert!(
                    f.keyframe,
                    "video resumed at {} ms on a non-keyframe",
                    f.dts
                );
            }
            last_key = f.keyframe;
            at = i + 1;
        }
    }
}

#[test]
fn a_lost_packet_drops_video_to_the_next_keyframe() {
    let ts = h264_aac_ts(&[]);
    let (clean, _) = ingest_all(&ts, 1316);
    let clean_video = frames(&clean, Track::Video);
    let pkts = packets(&ts);
    let video_pid = 0x100;
    // A packet from the middle of the 10th video PES (a non-keyframe).
    let starts: Vec<usize> = pkts
        .iter()
        .filter(|p| p.1 == video_pid && p.2)
        .map(|p| p.0)
        .collect();
    let victim = pkts
        .iter()
        .find(|p| p.1 == video_pid && p.0 > starts[10] && !p.2)
        .unwrap()
        .0;
    let mut lossy = ts.clone();
    lossy.drain(victim * PACKET..(victim + 1) * PACKET);
    let (out, ing) = ingest_all(&lossy, 1316);
    check_against_clean(&clean, &out);
    let video = frames(&out, Track::Video);
    // Frames 0..=9 pass, 10 (damaged) to 29 are dropped, 30 is a keyframe.
    assert_eq!(video.len(), 90 - 20);
    assert_eq!(video[10].dts, clean_video[30].dts);
    assert!(video[10].keyframe);
    let s = ing.stats();
    assert_eq!(s.continuity_errors, 1);
    assert_eq!(s.truncated_pes, 1);
    assert_eq!(
        s.dropped_frames, 19,
        "the 19 intact frames after the damaged one"
    );
    assert_eq!(
        frames(&out, Track::Audio).len(),
        frames(&clean, Track::Audio).len()
    );
    let notes = ing_notes(ing);
    assert!(notes.iter().any(|n| n.contains("continuity")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("next keyframe")),
        "{notes:?}"
    );
}

fn ing_notes(mut ing: TsIngest) -> Vec<String> {
    ing.drain_notes()
}

#[test]
fn lost_srt_payloads_never_yield_a_damaged_frame() {
    let ts = h264_aac_ts(&[]);
    let (clean, _) = ingest_all(&ts, 1316);
    let chunks: Vec<&[u8]> = ts.chunks(1316).collect();
    let mut x = 0x2545_F491_u32;
    for round in 0..24 {
        // Up to 12% loss of whole SRT payloads; every other round the
        // receiver says where the gaps are, as the SRT driver does.
        let told = round % 2 == 0;
        let mut ing = TsIngest::new(MAX_JUMP);
        let mut out = Vec::new();
        let mut lost = 0;
        for c in &chunks {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 100 < round / 2 + 1 {
                lost += 1;
                if told {
                    ing.discontinuity();
                }
                continue;
            }
            ing.push(c, &mut out);
        }
        ing.flush(&mut out);
        check_against_clean(&clean, &out);
        if lost > 0 && !told {
            assert!(ing.stats().continuity_errors > 0);
        }
        let video = frames(&out, Track::Video);
        assert!(
            video.first().is_none_or(|f| f.keyframe),
            "video starts at a keyframe"
        );
        if !video.is_empty() {
            remux_decodes_clean(&out);
        }
    }
}

#[test]
fn video_waits_for_the_first_keyframe_and_audio_does_not() {
    let ts = h264_aac_ts(&[]);
    let pkts = packets(&ts);
    // Start the input at the second video PES (not a keyframe), keeping
    // the PAT and PMT.
    let second = pkts
        .iter()
        .filter(|p| p.1 == 0x100 && p.2)
        .nth(1)
        .unwrap()
        .0;
    let mut cut: Vec<u8> = ts[..5 * PACKET]
        .chunks(PACKET)
        .filter(|p| p[1] & 0x1F == 0 && (p[2] == 0 || p[2] == 0x11) || p[1] & 0x1F == 0x10)
        .flatten()
        .copied()
        .collect();
    cut.extend_from_slice(&ts[second * PACKET..]);
    let (out, ing) = ingest_all(&cut, 1316);
    let video = frames(&out, Track::Video);
    assert!(video[0].keyframe);
    assert_eq!(video.len(), 60);
    assert_eq!(ing.stats().dropped_frames, 29);
    let first_audio = out
        .iter()
        .position(|i| matches!(&i.event, MediaEvent::Frame(f) if f.track == Track::Audio))
        .unwrap();
    let first_video = out
        .iter()
        .position(|i| matches!(&i.event, MediaEvent::Frame(f) if f.track == Track::Video))
        .unwrap();
    assert!(first_audio < first_video, "audio passes while video waits");
}

#[test]
fn streams_we_do_not_carry_are_counted_once_and_ignored() {
    // MP2 audio next to AAC, and a second program.
    let ts = ffmpeg_ts(
        &[VIDEO, AUDIO],
        &[
            "-t", "1", "-map", "0:v", "-map", "1:a", "-map", "1:a", "-c:v", "libx264", "-c:a:0",
            "mp2", "-c:a:1", "aac",
        ],
    );
    let (out, ing) = ingest_all(&ts, 1316);
    assert_eq!(ing.stats().unsupported_streams, 1);
    assert!(
        !frames(&out, Track::Audio).is_empty(),
        "the AAC stream is carried"
    );
    assert!(frames(&out, Track::Audio)
        .iter()
        .all(|f| f.codec == Codec::Aac));
    let d = ing.describe();
    assert!(
        d.contains("video PID 0x0100 h264") && d.contains("stream_type 0x03"),
        "{d}"
    );
}

#[test]
fn annex_b_splitting() {
    let mut v = Vec::new();
    split_annex_b(
        &[9, 9, 0, 0, 0, 1, 0x65, 1, 2, 0, 0, 0, 0, 1, 0x41, 0, 0, 1],
        &mut v,
    );
    assert_eq!(v, vec![(6, 9), (14, 15)]);
    split_annex_b(&[0, 0, 1], &mut v);
    assert!(v.is_empty());
    split_annex_b(&[0, 0, 1, 0x65, 0, 0, 3, 0, 0, 1, 0x06], &mut v);
    assert_eq!(v, vec![(3, 7), (10, 11)]);
}

#[test]
fn timestamps_step_the_short_way_round() {
    assert_eq!(signed_step(5, TIMESTAMP_MASK - 4), 10);
    assert_eq!(signed_step(TIMESTAMP_MASK - 4, 5), -10);
    assert_eq!(to_ms(-90, 180), (0, 1));
    assert_eq!(to_ms(3000, 6000), (33, 67));
}

#[test]
fn noise_and_cut_streams_never_panic() {
    let ts = h264_aac_ts(&[]);
    let mut x = 0x1234_5678_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..50 {
        let mut damaged = ts[..ts.len().min(200 * PACKET)].to_vec();
        for _ in 0..20 {
            let i = next() as usize % damaged.len();
            damaged[i] = next() as u8;
        }
        let (out, _) = ingest_all(&damaged, 1 + next() as usize % 2000);
        for f in frames(&out, Track::Video) {
            assert!(f.data.len() >= 5);
        }
        let noise: Vec<u8> = (0..next() % 5000).map(|_| next() as u8).collect();
        ingest_all(&noise, 7);
    }
}

#[test]
fn hevc_resumes_at_a_cra_without_its_rasl_pictures() {
    // Open GOPs (x265's default): CRA keyframes followed by RASL pictures
    // that reference the GOP before.
    let ts = ffmpeg_ts(
        &[VIDEO],
        &[
            "-t",
            "3",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "bframes=3:keyint=30:min-keyint=30:scenecut=0:open-gop=1:log-level=error",
        ],
    );
    let (clean, _) = ingest_all(&ts, 1316);
    let video = frames(&clean, Track::Video);
    let keys: Vec<usize> = (0..video.len()).filter(|&i| video[i].keyframe).collect();
    assert!(keys.len() >= 2, "{keys:?}");
    // Lose a packet of the frame right before the second keyframe.
    let pkts = packets(&ts);
    let starts: Vec<usize> = pkts
        .iter()
        .filter(|p| p.1 == 0x100 && p.2)
        .map(|p| p.0)
        .collect();
    let victim = starts[keys[1] - 1] + 1;
    assert!(pkts[victim].1 == 0x100 && !pkts[victim].2);
    let mut lossy = ts.clone();
    lossy.drain(victim * PACKET..(victim + 1) * PACKET);
    let (out, ing) = ingest_all(&lossy, 1316);
    check_against_clean_with(&clean, &out, true);
    let video_out = frames(&out, Track::Video);
    let resumed = video_out
        .iter()
        .position(|f| f.dts + 2 >= video[keys[1]].dts)
        .unwrap();
    assert!(video_out[resumed].keyframe);
    // The RASL pictures after that CRA are gone too.
    assert!(video_out.len() < video.len() - 1);
    assert_eq!(ing.stats().truncated_pes, 1);
    assert!(ing.stats().dropped_frames >= 1, "the RASL pictures");
    remux_decodes_clean(&out);
}

/// The index of the first event matching `pred`.
fn first_index(out: &[Ingested], pred: impl Fn(&MediaEvent) -> bool) -> usize {
    out.iter().position(|i| pred(&i.event)).expect("present")
}

#[test]
fn audio_that_starts_after_the_first_keyframe_is_configured_before_it() {
    // The first audio frame comes 200 ms after the first video keyframe,
    // as TS muxers often write it: a leg starting at that keyframe must
    // know the audio already.
    let frames: Vec<Frame> = known_frames()
        .into_iter()
        .filter(|f| f.track == Track::Video || f.dts >= 200)
        .collect();
    let ts = mux(&[h264_config(), aac_config()], &frames);
    for step in [188, 1316] {
        let mut ing = TsIngest::new(MAX_JUMP);
        let mut out = Vec::new();
        let mut first_push_with_output = None;
        for (n, piece) in ts.chunks(step).enumerate() {
            ing.push(piece, &mut out);
            if !out.is_empty() {
                first_push_with_output.get_or_insert(n);
            }
        }
        ing.flush(&mut out);
        let audio_config = first_index(&out, |e| {
            matches!(e, MediaEvent::Config(CodecConfig::Audio { .. }))
        });
        let first_keyframe = first_index(
            &out,
            |e| matches!(e, MediaEvent::Frame(f) if f.keyframe && f.track == Track::Video),
        );
        assert!(
            audio_config < first_keyframe,
            "step {step}: {audio_config} >= {first_keyframe}"
        );
        // Nothing is lost or reordered within a track.
        let video = frames.iter().filter(|f| f.track == Track::Video).count();
        assert_eq!(self::frames(&out, Track::Video).len(), video);
        let dts: Vec<u64> = self::frames(&out, Track::Video)
            .iter()
            .map(|f| f.dts)
            .collect();
        assert!(dts.windows(2).all(|w| w[0] < w[1]), "{dts:?}");
        assert!(first_push_with_output.is_some());
    }
}

#[test]
fn audio_that_never_comes_holds_video_for_a_second_at_most() {
    let video: Vec<Frame> = known_frames()
        .into_iter()
        .filter(|f| f.track == Track::Video)
        .collect();
    // The PMT lists AAC, but no audio frame ever comes.
    let ts = mux(&[h264_config(), aac_config()], &video);
    let mut ing = TsIngest::new(MAX_JUMP);
    let mut out = Vec::new();
    for piece in ts.chunks(1316) {
        ing.push(piece, &mut out);
    }
    let got = frames(&out, Track::Video);
    assert!(!got.is_empty(), "released before the end of the input");
    // Released once the held media spanned just over a second.
    assert!(got.len() < video.len(), "{} of {}", got.len(), video.len());
    ing.flush(&mut out);
    assert_eq!(frames(&out, Track::Video).len(), video.len());
}

#[test]
fn the_start_hold_moves_only_each_tracks_first_configuration_forward() {
    let ev = |event: MediaEvent| Ingested {
        event,
        timestamp_jump: false,
    };
    let frame = |dts: u64| {
        ev(MediaEvent::Frame(Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            cts: 0,
            keyframe: dts == 0,
            data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        }))
    };
    let first = ev(MediaEvent::Config(h264_config()));
    let mut changed_config = h264_config();
    if let CodecConfig::Video { params, .. } = &mut changed_config {
        *params = None;
    }
    let changed = ev(MediaEvent::Config(changed_config));
    let audio = ev(MediaEvent::Config(aac_config()));
    let mut gate = StartGate::default();
    let mut out = Vec::new();
    let mut made = vec![first.clone(), frame(0), changed.clone(), frame(40)];
    gate.pass(&mut made, true, &mut out);
    assert!(
        out.is_empty(),
        "held while the audio configuration is missing"
    );
    gate.pass(&mut vec![audio.clone()], true, &mut out);
    assert_eq!(
        out,
        vec![first, audio, frame(0), changed, frame(40)],
        "the change stays after the frame made before it"
    );
    // Open from then on: everything passes as it comes.
    let mut later = vec![frame(80)];
    gate.pass(&mut later, true, &mut out);
    assert_eq!(out.last(), Some(&frame(80)));
}
