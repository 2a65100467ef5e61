//! The fuzzing round trip behind [`super::fuzz_roundtrip`]: frames derived from fuzz input go through the
//! muxer and back through the demuxer and must come out byte- and timestamp-exact. The expectations are built
//! here from the documented rules (Annex B with AUD and parameter sets, ADTS, PTS >= DTS), not from muxer code.

use std::sync::OnceLock;

use bytes::Bytes;

use super::mux::TIMESTAMP_OFFSET_MS;
use super::{
    Demuxer, Muxer, Pes, TsChunk, CHUNK, PACKET, PID_AUDIO, PID_PAT, PID_PMT, PID_VIDEO,
    STREAM_TYPE_AAC_ADTS, STREAM_TYPE_H264, STREAM_TYPE_HEVC, TIMESTAMP_MASK,
};
use crate::flv::{self, AudioTag, FileReader, VideoTag};
use crate::media::aac::AudioSpecificConfig;
use crate::media::{h264, hevc, Codec, CodecConfig, Frame, Track};

const AVC_FLV: &[u8] = include_bytes!("../../tests/fixtures/ffmpeg5.1-x264-640x360-aac.flv");
const HEVC_FLV: &[u8] =
    include_bytes!("../../tests/fixtures/ffmpeg5.1-x265-1280x720-ertmp-hvc1.flv");

/// Configs and frames (as NAL unit lists) of the committed encoder captures.
struct Fixture {
    avc_record: Bytes,
    hevc_record: Bytes,
    asc: Bytes,
    avc_frames: Vec<Vec<Bytes>>,
    hevc_frames: Vec<Vec<Bytes>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut f = Fixture {
            avc_record: Bytes::new(),
            hevc_record: Bytes::new(),
            asc: Bytes::new(),
            avc_frames: Vec::new(),
            hevc_frames: Vec::new(),
        };
        for file in [AVC_FLV, HEVC_FLV] {
            let Ok(reader) = FileReader::new(Bytes::from_static(file)) else {
                continue;
            };
            for tag in reader.flatten() {
                match tag.tag_type {
                    flv::TAG_VIDEO => match flv::parse_video(tag.body) {
                        Ok(VideoTag::Config(CodecConfig::Video { codec, record, .. })) => {
                            match codec {
                                Codec::H264 => f.avc_record = record,
                                Codec::H265 => f.hevc_record = record,
                                _ => {}
                            }
                        }
                        Ok(VideoTag::Frame { codec, data, .. }) => {
                            let nals = split_avcc(&data);
                            match codec {
                                Codec::H264 => f.avc_frames.push(nals),
                                Codec::H265 => f.hevc_frames.push(nals),
                                _ => {}
                            }
                        }
                        _ => {}
                    },
                    flv::TAG_AUDIO => {
                        if let Ok(AudioTag::Config(CodecConfig::Audio { config, .. })) =
                            flv::parse_audio(tag.body)
                        {
                            f.asc = config;
                        }
                    }
                    _ => {}
                }
            }
        }
        f
    })
}

/// NAL units of an FLV frame (4-byte lengths, as the fixtures carry them).
fn split_avcc(data: &Bytes) -> Vec<Bytes> {
    let mut nals = Vec::new();
    let mut pos = 0;
    while let Some(&[a, b, c, d]) = data.get(pos..pos + 4) {
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let Some(end) = pos.checked_add(4 + len).filter(|&e| e <= data.len()) else {
            break;
        };
        nals.push(data.slice(pos + 4..end));
        pos = end;
    }
    nals
}

/// Reads fuzz input as numbers; past the end everything is 0.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }
}

/// What one muxed frame must come back as.
struct Expected {
    pid: u16,
    data: Vec<u8>,
    pts: u64,
    dts: u64,
    keyframe: bool,
}

/// Expected (DTS, PTS) at 90 kHz: (ms + offset) * 90, PTS = DTS + CTS
/// saturating at 0; when that puts PTS below DTS, DTS drops to PTS but not
/// below the previous DTS (unless that is above this DTS), and PTS rises to DTS.
fn expected_timestamps(dts_ms: u64, cts: i32, last: Option<u64>) -> (u64, u64) {
    let dts = dts_ms.wrapping_add(TIMESTAMP_OFFSET_MS).wrapping_mul(90);
    let pts = i128::from(dts) + i128::from(cts) * 90;
    let pts = u64::try_from(pts.max(0)).unwrap_or(u64::MAX);
    if pts >= dts {
        return (dts, pts);
    }
    let floor = match last {
        None => pts,
        Some(l) => l.min(dts),
    };
    let dts = pts.max(floor);
    (dts, pts.max(dts))
}

fn annexb(out: &mut Vec<u8>, nal: &[u8]) {
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(nal);
}

/// A video frame's elementary stream after the muxer: the frame's own AUD
/// if it leads (and then all its NAL units as they are), else an inserted
/// AUD and the frame's NAL units without AUDs; on a keyframe lacking
/// parameter sets, the config's right after the leading AUD.
fn expected_video(nals: &[Bytes], hevc: bool, keyframe: bool, params: &[Bytes]) -> (Vec<u8>, bool) {
    let ty = |n: &Bytes| {
        let b = n.first().copied().unwrap_or(0);
        if hevc {
            (b >> 1) & 0x3F
        } else {
            b & 0x1F
        }
    };
    let nals: Vec<&Bytes> = nals.iter().filter(|n| !n.is_empty()).collect();
    let aud = if hevc { 35 } else { 9 };
    let types: Vec<u8> = nals.iter().map(|n| ty(n)).collect();
    let irap = types
        .iter()
        .any(|&t| if hevc { (16..=21).contains(&t) } else { t == 5 });
    let has = |t: u8| types.contains(&t);
    let all_params = if hevc {
        has(32) && has(33) && has(34)
    } else {
        has(7) && has(8)
    };
    let key = keyframe || irap;
    let insert = key && !params.is_empty() && !all_params;
    let aud_first = types.first() == Some(&aud);
    let mut out = Vec::new();
    let mut rest: &[&Bytes] = &nals;
    if aud_first {
        annexb(&mut out, nals[0]);
        rest = &nals[1..];
    } else if hevc {
        let tid = nals
            .iter()
            .find(|n| n.len() >= 2 && ty(n) <= 31)
            .map_or(0, |n| n[1] & 0x07);
        annexb(&mut out, &[0x46, tid.max(1), 0x50]);
    } else {
        annexb(&mut out, &[0x09, 0xF0]);
    }
    if insert {
        for p in params {
            annexb(&mut out, p);
        }
    }
    for n in rest {
        if aud_first || ty(n) != aud {
            annexb(&mut out, n);
        }
    }
    (out, key)
}

/// Builds length-prefixed frame data; None if a NAL unit is too long for the prefix.
fn avcc(nals: &[Bytes], length_size: usize) -> Option<Bytes> {
    let mut out = Vec::new();
    for n in nals {
        if length_size < 4 && n.len() >= 1 << (8 * length_size) {
            return None;
        }
        let len = (n.len() as u32).to_be_bytes();
        out.extend_from_slice(&len[4 - length_size..]);
        out.extend_from_slice(n);
    }
    Some(Bytes::from(out))
}

fn pid_of(p: &[u8]) -> u16 {
    match p {
        [_, b1, b2, ..] => u16::from(b1 & 0x1F) << 8 | u16::from(*b2),
        _ => 0xFFFF,
    }
}

/// Chunk shape: whole packets, at most 7; a keyframe chunk opens with PAT,
/// PMT, then the random-access PES (random_access_indicator set).
fn check_chunk(c: &TsChunk, key_pid: u16) {
    assert!(
        !c.data.is_empty() && c.data.len() % PACKET == 0 && c.data.len() <= CHUNK,
        "chunk of {} bytes",
        c.data.len()
    );
    if c.keyframe {
        let p: Vec<&[u8]> = c.data.chunks(PACKET).collect();
        assert!(p.len() >= 3, "keyframe chunk too short");
        assert_eq!(pid_of(p[0]), PID_PAT);
        assert_eq!(pid_of(p[1]), PID_PMT);
        assert_eq!(pid_of(p[2]), key_pid);
        assert_eq!(p[2][1] & 0x40, 0x40, "PES starts in the keyframe chunk");
        assert!(
            p[2][3] & 0x20 != 0 && p[2][4] > 0 && p[2][5] & 0x40 != 0,
            "random_access_indicator"
        );
    }
}

/// Returns how many frames made the round trip.
pub(super) fn run(data: &[u8]) -> usize {
    demux_raw(data);
    let mut input = Input { data };
    let Some(mut rt) = RoundTrip::new(&mut input) else {
        return 0;
    };
    // Timestamps start anywhere in several 33-bit wraps (2^33 / 90 ms ~ 26.5 h).
    let mut dts = u64::from(input.u32()) * 32;
    while !input.is_empty() && rt.expected.len() < 48 {
        let kind = input.u8();
        dts += if kind & 0x80 != 0 {
            u64::from(input.u32())
        } else {
            u64::from(input.u8())
        };
        let audio = rt.with_audio && (!rt.with_video || kind & 0x01 != 0);
        if kind & 0x60 == 0x60 {
            rt.push_rejected(&mut input, audio, dts);
        } else if audio {
            rt.push_audio(&mut input, kind, dts);
        } else {
            rt.push_video(&mut input, kind, dts);
        }
    }
    rt.check();
    #[cfg(feature = "fuzzing")]
    if let Some(k) = rt.chunks.iter().rposition(|c| c.keyframe) {
        super::join::fuzz_check(&rt.chunks[k..]);
    }
    rt.expected.len()
}

/// Raw input straight into the demuxer, whole and in pieces: no panic.
fn demux_raw(data: &[u8]) {
    let mut d = Demuxer::new();
    let mut pes = Vec::new();
    let _ = d.push(data, &mut pes);
    d.flush(&mut pes);
    let mut d = Demuxer::new();
    for piece in data.chunks(1 + usize::from(data.first().copied().unwrap_or(0))) {
        let _ = d.push(piece, &mut pes);
    }
    d.flush(&mut pes);
}

/// One round trip: the stream shape the first input byte selects, the muxer
/// configured for it, what it wrote and what must come back.
struct RoundTrip {
    sel: u8,
    hevc: bool,
    length_size: usize,
    with_audio: bool,
    with_video: bool,
    codec: Codec,
    /// The video config's parameter sets (the muxer inserts them before a
    /// keyframe that lacks them).
    params: Vec<Bytes>,
    /// ADTS header of the audio config, frame length still 0.
    adts: [u8; 7],
    /// The fixture's frames for the selected video codec.
    frames: &'static [Vec<Bytes>],
    muxer: Muxer,
    chunks: Vec<TsChunk>,
    expected: Vec<Expected>,
    last_video: Option<u64>,
    last_audio: Option<u64>,
}

impl RoundTrip {
    /// Reads the selector byte and configures the muxer; `None` if the
    /// fixture's configs do not fit the selection.
    fn new(input: &mut Input<'_>) -> Option<Self> {
        let fx = fixture();
        let sel = input.u8();
        let hevc = sel & 0x01 != 0;
        let length_size = usize::from((sel >> 1) & 0x03) + 1;
        let with_audio = sel & 0x08 == 0;
        let with_video = sel & 0x10 == 0 || !with_audio;
        let codec = if hevc { Codec::H265 } else { Codec::H264 };
        let mut muxer = Muxer::new();
        let params = if with_video {
            configure_video(&mut muxer, fx, codec, length_size)?
        } else {
            Vec::new()
        };
        let adts = if with_audio {
            configure_audio(&mut muxer, fx)?
        } else {
            [0; 7]
        };
        Some(RoundTrip {
            sel,
            hevc,
            length_size,
            with_audio,
            with_video,
            codec,
            params,
            adts,
            frames: if hevc {
                &fx.hevc_frames
            } else {
                &fx.avc_frames
            },
            muxer,
            chunks: Vec::new(),
            expected: Vec::new(),
            last_video: None,
            last_audio: None,
        })
    }

    /// A damaged or unsupported frame: an error, and nothing written.
    fn push_rejected(&mut self, input: &mut Input<'_>, audio: bool, dts: u64) {
        let before = self.chunks.len();
        let bad = if audio {
            Frame {
                track: Track::Audio,
                codec: Codec::Opus,
                dts,
                cts: 0,
                keyframe: false,
                data: Bytes::from_static(&[1, 2, 3]),
            }
        } else {
            let k = usize::from(input.u8() % 100);
            let mut data = ((k + 1) as u32).to_be_bytes()[4 - self.length_size..].to_vec();
            data.extend(std::iter::repeat_n(0x41, k));
            Frame {
                track: Track::Video,
                codec: self.codec,
                dts,
                cts: 0,
                keyframe: false,
                data: Bytes::from(data),
            }
        };
        assert!(
            self.muxer.push(&bad, &mut self.chunks).is_err(),
            "bad frame accepted"
        );
        assert_eq!(self.chunks.len(), before, "output for a rejected frame");
    }

    fn push_audio(&mut self, input: &mut Input<'_>, kind: u8, dts: u64) {
        let len = if kind & 0x06 == 0x06 {
            usize::from(input.u16() % 1000)
        } else {
            usize::from(input.u8())
        };
        let payload = Bytes::copy_from_slice(input.bytes(len));
        let frame = Frame {
            track: Track::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: true,
            data: payload.clone(),
        };
        if let Err(e) = self.muxer.push(&frame, &mut self.chunks) {
            panic!("audio frame rejected: {e}");
        }
        let (d, p) = expected_timestamps(dts, 0, self.last_audio);
        self.last_audio = Some(d);
        let mut es = self.adts.to_vec();
        let flen = payload.len() + 7;
        es[3] |= (flen >> 11) as u8;
        es[4] = (flen >> 3) as u8;
        es[5] = ((flen & 7) << 5) as u8 | 0x1F;
        es.extend_from_slice(&payload);
        self.expected.push(Expected {
            pid: PID_AUDIO,
            data: es,
            pts: p,
            dts: d,
            // random_access_indicator only comes with the periodic PAT/PMT.
            keyframe: false,
        });
    }

    fn push_video(&mut self, input: &mut Input<'_>, kind: u8, dts: u64) {
        let keyframe = kind & 0x02 != 0;
        let cts = i32::from(input.u16() as i16);
        let nals = self.video_nals(input, kind);
        let Some(payload) = avcc(&nals, self.length_size) else {
            return;
        };
        let frame = Frame {
            track: Track::Video,
            codec: self.codec,
            dts,
            cts,
            keyframe,
            data: payload,
        };
        if let Err(e) = self.muxer.push(&frame, &mut self.chunks) {
            panic!("video frame rejected: {e}");
        }
        let (es, key) = expected_video(&nals, self.hevc, keyframe, &self.params);
        let (d, p) = expected_timestamps(dts, cts, self.last_video);
        self.last_video = Some(d);
        self.expected.push(Expected {
            pid: PID_VIDEO,
            data: es,
            pts: p,
            dts: d,
            keyframe: key,
        });
    }

    /// A frame's NAL units: optionally an AUD and the parameter sets, then a
    /// fixture frame or up to three NAL units made from the input.
    fn video_nals(&self, input: &mut Input<'_>, kind: u8) -> Vec<Bytes> {
        let mut nals: Vec<Bytes> = Vec::new();
        if kind & 0x04 != 0 {
            nals.push(if self.hevc {
                Bytes::from_static(&[0x46, 0x01, 0x50])
            } else {
                Bytes::from_static(&[0x09, 0x10])
            });
        }
        if kind & 0x08 != 0 {
            nals.extend(self.params.iter().cloned());
        }
        let pick = usize::from(input.u8());
        if kind & 0x10 != 0 && !self.frames.is_empty() {
            nals.extend(self.frames[pick % self.frames.len()].iter().cloned());
        } else {
            for _ in 0..pick % 4 {
                nals.push(input_nal(input, self.hevc));
            }
        }
        nals
    }

    /// The chunks keep their shape, and demuxed they give back every frame
    /// with its payload, timestamps and keyframe flag.
    fn check(&self) {
        let key_pid = if self.with_video {
            PID_VIDEO
        } else {
            PID_AUDIO
        };
        for c in &self.chunks {
            check_chunk(c, key_pid);
        }
        let ts: Vec<u8> = self
            .chunks
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect();
        let mut demuxer = Demuxer::new();
        let mut got: Vec<Pes> = Vec::new();
        for (i, piece) in ts.chunks(1 + usize::from(self.sel) * 7).enumerate() {
            if let Err(e) = demuxer.push(piece, &mut got) {
                panic!("demuxing the muxer's output failed at piece {i}: {e}");
            }
        }
        demuxer.flush(&mut got);
        assert_eq!(demuxer.continuity_errors(), 0);
        assert_eq!(demuxer.dropped_pes(), 0);
        for pid in [PID_VIDEO, PID_AUDIO] {
            self.check_pid(pid, &got);
        }
    }

    fn check_pid(&self, pid: u16, got: &[Pes]) {
        let want: Vec<&Expected> = self.expected.iter().filter(|e| e.pid == pid).collect();
        let have: Vec<&Pes> = got.iter().filter(|p| p.pid == pid).collect();
        assert_eq!(have.len(), want.len(), "PES count on PID {pid:#x}");
        let stream_type = match (pid, self.hevc) {
            (PID_AUDIO, _) => STREAM_TYPE_AAC_ADTS,
            (_, true) => STREAM_TYPE_HEVC,
            (_, false) => STREAM_TYPE_H264,
        };
        for (i, (w, h)) in want.iter().zip(&have).enumerate() {
            assert_eq!(h.stream_type, stream_type);
            assert!(h.data == w.data, "PES {i} on PID {pid:#x}: payload differs");
            assert_eq!(
                h.pts,
                Some(w.pts & TIMESTAMP_MASK),
                "PTS of PES {i} on {pid:#x}"
            );
            assert_eq!(
                h.dts.or(h.pts),
                Some(w.dts & TIMESTAMP_MASK),
                "DTS of PES {i} on {pid:#x}"
            );
            if w.keyframe {
                assert!(h.keyframe, "PES {i} on {pid:#x} lost its keyframe flag");
            }
        }
    }
}

/// Configures the fixture's video record, with lengthSizeMinusOne patched
/// (avcC byte 4, hvcC byte 21); returns its parameter sets.
fn configure_video(
    muxer: &mut Muxer,
    fx: &Fixture,
    codec: Codec,
    length_size: usize,
) -> Option<Vec<Bytes>> {
    let hevc = codec == Codec::H265;
    let mut record = if hevc {
        fx.hevc_record.to_vec()
    } else {
        fx.avc_record.to_vec()
    };
    let at = if hevc { 21 } else { 4 };
    let b = record.get_mut(at)?;
    *b = (*b & 0xFC) | (length_size as u8 - 1);
    let mut params = Vec::new();
    if hevc {
        let c = hevc::parse_hevc_decoder_config(&record).ok()?;
        params.extend(c.vps.into_iter().chain(c.sps).chain(c.pps));
    } else {
        let c = h264::parse_avc_decoder_config(&record).ok()?;
        params.extend(c.sps.into_iter().chain(c.pps));
    }
    let cfg = CodecConfig::Video {
        codec,
        record: Bytes::from(record),
        params: None,
    };
    if let Err(e) = muxer.set_config(&cfg) {
        panic!("fixture video config rejected: {e}");
    }
    Some(params)
}

/// Configures the fixture's AAC config; returns its ADTS header (frame
/// length 0).
fn configure_audio(muxer: &mut Muxer, fx: &Fixture) -> Option<[u8; 7]> {
    let asc = AudioSpecificConfig::parse(&fx.asc).ok()?;
    let adts = [
        0xFF,
        0xF1,
        (asc.object_type - 1) << 6
            | asc.sampling_frequency_index << 2
            | asc.channel_configuration >> 2,
        (asc.channel_configuration & 3) << 6,
        0,
        0x1F,
        0xFC,
    ];
    let cfg = CodecConfig::Audio {
        codec: Codec::Aac,
        config: fx.asc.clone(),
        params: None,
    };
    if let Err(e) = muxer.set_config(&cfg) {
        panic!("fixture audio config rejected: {e}");
    }
    Some(adts)
}

/// One NAL unit made from the input: slices (IDR and not), SEI, and now and
/// then a stray AUD or an empty unit.
fn input_nal(input: &mut Input<'_>, hevc: bool) -> Bytes {
    let t = input.u8();
    let len = if t & 0x70 == 0x70 {
        usize::from(input.u16() % 1500)
    } else {
        usize::from(input.u8())
    };
    let body = input.bytes(len);
    if t & 0x88 == 0x88 {
        return Bytes::new();
    }
    let mut nal = match (hevc, t % 5) {
        (false, 0) => vec![0x65],
        (false, 1 | 2) => vec![0x41],
        (false, 3) => vec![0x06],
        (false, _) => vec![0x09],
        (true, 0) => vec![0x26, 0x01],
        (true, 1) => vec![0x02, 0x01 + ((t >> 5) & 1)],
        (true, 2) => vec![0x02],
        (true, 3) => vec![0x4E, 0x01],
        (true, _) => vec![0x46, 0x01],
    };
    nal.extend_from_slice(body);
    Bytes::from(nal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_load() {
        let fx = fixture();
        assert!(!fx.avc_record.is_empty() && !fx.hevc_record.is_empty());
        assert!(!fx.asc.is_empty());
        assert!(!fx.avc_frames.is_empty() && !fx.hevc_frames.is_empty());
    }

    #[test]
    fn round_trips_derived_streams() {
        // Deterministic pseudo-random inputs over every selector value.
        let mut x = 0x9E37_79B9_u32;
        let mut frames = 0;
        for sel in 0..=255u8 {
            let mut data = vec![sel];
            for _ in 0..1500 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            frames += run(&data);
            frames += run(&data[..data.len() / 3]);
        }
        assert!(frames > 256 * 6, "only {frames} frames");
        assert_eq!(run(&[]), 0);
        assert_eq!(run(&[0x08]), 0);
    }

    #[test]
    fn committed_seeds_reach_the_round_trip() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/ts_roundtrip");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let frames = run(&data);
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("ffmpeg") {
                assert!(frames >= 5, "{name}: only {frames} frames");
            }
            seen += 1;
        }
        assert!(seen >= 6);
    }

    #[test]
    fn round_trips_across_the_33_bit_wrap() {
        // Start just below the wrap: u32 * 32 ms; 2^33 / 90 ms = 95_443_717.
        let start = (95_443_717u32 - 1400 - 200) / 32;
        // H.264 with 4-byte lengths, audio and video.
        let mut data = vec![0x06];
        data.extend_from_slice(&start.to_be_bytes());
        for i in 0..24u8 {
            // A fixture frame (IDR every other), CTS 66 ms, then audio.
            data.extend_from_slice(&[0x10 | (i & 1) << 1, 20, 0, 66, i]);
            data.extend_from_slice(&[0x01, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        }
        assert_eq!(run(&data), 48);
    }
}
