//! The MPEG-TS muxer judged by FFmpeg: real encoder captures (x264 with B-frames and AAC, x265 HEVC) are
//! muxed with `sluice::ts::Muxer`, and ffprobe/ffmpeg must find the right streams, the exact timestamps, one
//! packet per frame and zero decode errors, also for a player joining at a later keyframe chunk.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use common::flv as test_flv;
use common::{ffmpeg_fixture, fixture_hevc_annexb, require_program, run_to_exit, TempDir};
use sluice::flv::{self, AudioTag, FileReader, VideoTag};
use sluice::media::{Frame, Track};
use sluice::ts::mux::TIMESTAMP_OFFSET_MS;
use sluice::ts::{Demuxer, Muxer, TsChunk, CHUNK, PACKET};

const X264_AAC: &str = "tests/fixtures/ffmpeg5.1-x264-640x360-aac.flv";
const X265: &str = "tests/fixtures/ffmpeg5.1-x265-1280x720-ertmp-hvc1.flv";

/// The muxer's output and the (PTS, DTS) it was asked to write per track.
struct Muxed {
    chunks: Vec<TsChunk>,
    video: Vec<(i64, i64)>,
    audio: Vec<(i64, i64)>,
}

impl Muxed {
    fn bytes_from(&self, first_chunk: usize) -> Vec<u8> {
        self.chunks[first_chunk..]
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect()
    }
}

/// Expected 90 kHz (PTS, DTS) for a frame: the muxer's constant offset, no clamping (CTS >= 0 here).
fn expected(dts_ms: u64, cts: i32) -> (i64, i64) {
    assert!(cts >= 0, "fixtures have no negative composition offsets");
    let dts = (dts_ms + TIMESTAMP_OFFSET_MS) as i64 * 90;
    (dts + i64::from(cts) * 90, dts)
}

/// Muxes every tag of an FLV file, the way the relay will: configs as they
/// come, frames with dts = tag timestamp.
fn mux_flv(file: Bytes) -> Muxed {
    let mut m = Muxer::new();
    let mut out = Muxed {
        chunks: Vec::new(),
        video: Vec::new(),
        audio: Vec::new(),
    };
    for tag in FileReader::new(file).expect("FLV header") {
        let tag = tag.expect("FLV tag");
        let dts = u64::from(tag.timestamp);
        match tag.tag_type {
            flv::TAG_VIDEO => match flv::parse_video(tag.body).expect("video tag") {
                VideoTag::Config(cfg) => m.set_config(&cfg).expect("video config"),
                VideoTag::Frame {
                    codec,
                    keyframe,
                    cts,
                    data,
                } => {
                    let frame = Frame {
                        track: Track::Video,
                        codec,
                        dts,
                        cts,
                        keyframe,
                        data,
                    };
                    m.push(&frame, &mut out.chunks).expect("video frame");
                    out.video.push(expected(dts, cts));
                }
                _ => {}
            },
            flv::TAG_AUDIO => match flv::parse_audio(tag.body).expect("audio tag") {
                AudioTag::Config(cfg) => m.set_config(&cfg).expect("audio config"),
                AudioTag::Frame { codec, data } => {
                    let frame = Frame {
                        track: Track::Audio,
                        codec,
                        dts,
                        cts: 0,
                        keyframe: true,
                        data,
                    };
                    m.push(&frame, &mut out.chunks).expect("audio frame");
                    out.audio.push(expected(dts, 0));
                }
            },
            _ => {}
        }
    }
    for c in &out.chunks {
        assert!(c.data.len() % PACKET == 0 && !c.data.is_empty() && c.data.len() <= CHUNK);
    }
    out
}

fn mux_file(path: &str) -> Muxed {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    mux_flv(Bytes::from(std::fs::read(&full).expect("read fixture")))
}

/// Runs a tool to completion; returns (stdout, stderr) and insists on success.
fn run(program: &str, args: &[&str]) -> (String, String) {
    let bin = require_program(program, "ffmpeg");
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let (status, stdout, stderr) = run_to_exit(program, cmd, Duration::from_secs(120));
    assert!(
        status.success(),
        "{program} {args:?} failed ({status}):\n{stderr}"
    );
    (stdout, stderr)
}

fn ffprobe_json(args: &[&str], file: &Path) -> Value {
    let file = file.to_str().expect("utf-8 path");
    let mut all = vec!["-v", "error", "-of", "json"];
    all.extend_from_slice(args);
    all.push(file);
    let (stdout, stderr) = run("ffprobe", &all);
    assert!(stderr.trim().is_empty(), "ffprobe complained:\n{stderr}");
    serde_json::from_str(&stdout).expect("ffprobe JSON")
}

/// (codec_name, width, height) per stream.
fn streams(file: &Path) -> Vec<(String, i64, i64)> {
    let v = ffprobe_json(&["-show_entries", "stream=codec_name,width,height"], file);
    v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap_or("").to_string(),
                s["width"].as_i64().unwrap_or(0),
                s["height"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// One demuxed packet as ffprobe sees it.
#[derive(Debug)]
struct Packet {
    codec_type: String,
    pts: i64,
    dts: i64,
    key: bool,
}

fn packets(file: &Path) -> Vec<Packet> {
    let v = ffprobe_json(&["-show_entries", "packet=codec_type,pts,dts,flags"], file);
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| Packet {
            codec_type: p["codec_type"].as_str().unwrap_or("").to_string(),
            pts: p["pts"].as_i64().expect("every packet has a PTS"),
            dts: p["dts"].as_i64().expect("every packet has a DTS"),
            key: p["flags"].as_str().unwrap_or("").starts_with('K'),
        })
        .collect()
}

/// ffprobe's packets of one kind must be exactly the frames muxed: same
/// count, same (PTS, DTS), DTS non-decreasing, PTS >= DTS.
fn assert_packets_match(file: &Path, codec_type: &str, want: &[(i64, i64)]) {
    let got: Vec<(i64, i64)> = packets(file)
        .into_iter()
        .filter(|p| p.codec_type == codec_type)
        .map(|p| (p.pts, p.dts))
        .collect();
    assert_eq!(got.len(), want.len(), "{codec_type} packet count");
    for (i, w) in got.windows(2).enumerate() {
        assert!(
            w[1].1 >= w[0].1,
            "{codec_type} DTS goes back at packet {}",
            i + 1
        );
    }
    for (i, &(pts, dts)) in got.iter().enumerate() {
        assert!(pts >= dts, "{codec_type} packet {i}: PTS {pts} < DTS {dts}");
    }
    assert_eq!(
        got, want,
        "{codec_type} (PTS, DTS) differ from what was muxed"
    );
}

/// `ffmpeg -v error` decoding the whole file prints nothing.
fn assert_decodes_cleanly(file: &Path, extra: &[&str]) {
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec!["-nostdin", "-v", "error", "-i", file];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "null", "-"]);
    let (_, stderr) = run("ffmpeg", &args);
    assert!(
        stderr.trim().is_empty(),
        "decode errors for {file} {extra:?}:\n{stderr}"
    );
}

/// Writes the stream from its `n`-th keyframe chunk on and checks that a
/// player joining there decodes at once: first video packet is the keyframe,
/// and its first frame decodes without an error.
fn assert_joinable_at_keyframe(muxed: &Muxed, n: usize, dir: &TempDir, name: &str) {
    let keys: Vec<usize> = muxed
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.keyframe)
        .map(|(i, _)| i)
        .collect();
    assert!(keys.len() > n, "only {} keyframe chunks", keys.len());
    let cut = dir.join(name);
    std::fs::write(&cut, muxed.bytes_from(keys[n])).unwrap();
    let first_video = packets(&cut)
        .into_iter()
        .find(|p| p.codec_type == "video")
        .expect("video after the cut");
    assert!(
        first_video.key,
        "first video packet after the cut is not a keyframe"
    );
    let key_dts = muxed.chunks[keys[n]].dts_90k as i64;
    assert_eq!(first_video.dts, key_dts);
    assert_decodes_cleanly(&cut, &["-frames:v", "1"]);
}

/// 4 s of x264 (GOP 25 at 25 fps, two B-frames) with AAC, made once per machine.
fn x264_gops() -> std::path::PathBuf {
    ffmpeg_fixture(
        "ts_mux_x264_320x180_25fps_g25_bf2_aac_4s.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ],
    )
}

#[test]
fn x264_with_b_frames_and_aac_probe_and_decode_exactly() {
    let dir = TempDir::new("ts-mux");
    let muxed = mux_file(X264_AAC);
    assert!(muxed.chunks[0].keyframe);
    let file = dir.join("x264.ts");
    std::fs::write(&file, muxed.bytes_from(0)).unwrap();

    let s = streams(&file);
    assert!(s.contains(&("h264".into(), 640, 360)), "{s:?}");
    assert!(s.iter().any(|(c, _, _)| c == "aac"), "{s:?}");
    assert_eq!(s.len(), 2);
    // B-frames: some PTS differ from their DTS.
    assert!(muxed.video.iter().any(|(p, d)| p != d));
    assert_packets_match(&file, "video", &muxed.video);
    assert_packets_match(&file, "audio", &muxed.audio);
    assert_decodes_cleanly(&file, &[]);
}

#[test]
fn x265_hevc_probes_and_decodes_exactly() {
    let dir = TempDir::new("ts-mux");
    let muxed = mux_file(X265);
    assert!(muxed.chunks[0].keyframe);
    let file = dir.join("x265.ts");
    std::fs::write(&file, muxed.bytes_from(0)).unwrap();
    let s = streams(&file);
    assert!(s.contains(&("hevc".into(), 1280, 720)), "{s:?}");
    assert_packets_match(&file, "video", &muxed.video);
    assert_packets_match(&file, "audio", &muxed.audio);
    assert_decodes_cleanly(&file, &[]);
}

/// Several GOPs from x264 (GOP 25, two B-frames) with AAC: the whole file
/// decodes cleanly, and so does the stream cut at the second keyframe chunk.
#[test]
fn x264_joins_at_a_later_keyframe_chunk() {
    let flv_path = x264_gops();
    let muxed = mux_flv(Bytes::from(std::fs::read(flv_path).unwrap()));
    let dir = TempDir::new("ts-mux");
    let file = dir.join("gops.ts");
    std::fs::write(&file, muxed.bytes_from(0)).unwrap();
    assert!(
        muxed.video.len() >= 95,
        "{} video frames",
        muxed.video.len()
    );
    assert_packets_match(&file, "video", &muxed.video);
    assert_packets_match(&file, "audio", &muxed.audio);
    assert_decodes_cleanly(&file, &[]);
    assert_joinable_at_keyframe(&muxed, 1, &dir, "from-second-keyframe.ts");
    assert_joinable_at_keyframe(&muxed, 2, &dir, "from-third-keyframe.ts");
}

/// The same for HEVC from libx265 (GOP 60 at 30 fps), framed as Enhanced RTMP.
#[test]
fn hevc_joins_at_a_later_keyframe_chunk() {
    let hevc = std::fs::read(fixture_hevc_annexb(5)).expect("HEVC fixture");
    let mut w = flv::FileWriter::new(false, true);
    for tag in test_flv::hevc_tags(&hevc, 30, true) {
        w.write_tag(tag.tag_type, tag.timestamp, &tag.data).unwrap();
    }
    let muxed = mux_flv(w.take());
    let dir = TempDir::new("ts-mux");
    let file = dir.join("hevc.ts");
    std::fs::write(&file, muxed.bytes_from(0)).unwrap();
    let s = streams(&file);
    assert_eq!(s, vec![("hevc".to_string(), 640, 360)]);
    assert_packets_match(&file, "video", &muxed.video);
    assert_decodes_cleanly(&file, &[]);
    assert_joinable_at_keyframe(&muxed, 1, &dir, "hevc-from-second-keyframe.ts");
}

/// The demuxer reads FFmpeg's own TS: every packet ffprobe sees, with the
/// same timestamps, and the keyframes where ffprobe flags them.
#[test]
fn demuxer_finds_ffmpeg_keyframes() {
    let flv_path = x264_gops();
    let dir = TempDir::new("ts-demux");
    let ts = dir.join("ffmpeg.ts");
    run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            flv_path.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "mpegts",
            ts.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&ts).unwrap();
    let mut d = Demuxer::new();
    let mut pes = Vec::new();
    // Odd-sized reads, as from a pipe.
    for piece in data.chunks(1000) {
        d.push(piece, &mut pes).expect("clean FFmpeg TS");
    }
    d.flush(&mut pes);
    assert_eq!(d.continuity_errors(), 0);

    let probe = packets(&ts);
    let video: Vec<_> = pes.iter().filter(|p| p.stream_type == 0x1B).collect();
    let probe_video: Vec<_> = probe.iter().filter(|p| p.codec_type == "video").collect();
    assert_eq!(video.len(), probe_video.len());
    for (p, q) in video.iter().zip(&probe_video) {
        assert_eq!(p.pts, Some(q.pts as u64));
        assert_eq!(p.dts.or(p.pts), Some(q.dts as u64));
        assert_eq!(p.keyframe, q.key, "keyframe flag at PTS {}", q.pts);
    }
    assert!(video.iter().filter(|p| p.keyframe).count() >= 4);
    // FFmpeg packs several ADTS frames into one audio PES: count frames.
    let adts_frames: usize = pes
        .iter()
        .filter(|p| p.stream_type == 0x0F)
        .map(|p| count_adts_frames(&p.data))
        .sum();
    let probe_audio = probe.iter().filter(|p| p.codec_type == "audio").count();
    assert_eq!(adts_frames, probe_audio);
}

/// Walks ADTS headers (ISO/IEC 14496-3 1.A.2.2): sync word, 13-bit frame_length.
fn count_adts_frames(mut data: &[u8]) -> usize {
    let mut n = 0;
    while data.len() >= 7 {
        assert_eq!((data[0], data[1] & 0xF0), (0xFF, 0xF0), "ADTS sync");
        let len = usize::from(data[3] & 0x03) << 11
            | usize::from(data[4]) << 3
            | usize::from(data[5] >> 5);
        assert!(len >= 7 && len <= data.len(), "ADTS frame_length {len}");
        data = &data[len..];
        n += 1;
    }
    assert!(data.is_empty());
    n
}
