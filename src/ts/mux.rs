//! The MPEG-TS muxer: codec configs and [`Frame`]s in, 1316-byte [`TsChunk`]s (7 TS packets, one SRT
//! payload) out. H.264/HEVC are rewritten from length-prefixed NAL units to Annex B with an AUD and, before
//! IDRs, the parameter sets; AAC gets ADTS headers. Sans-IO: one `BytesMut` per frame, no per-packet allocation.

use bytes::{BufMut, Bytes, BytesMut};

use super::psi::{self, PmtEntry};
use super::{
    encode_timestamp, TsError, PID_AUDIO, PID_NULL, PID_VIDEO, STREAM_TYPE_AAC_ADTS,
    STREAM_TYPE_H264, STREAM_TYPE_HEVC, SYNC_BYTE, TIMESTAMP_MASK,
};
use crate::media::aac::AudioSpecificConfig;
use crate::media::{h264, hevc, Codec, CodecConfig, Frame};

/// Size of a transport packet (2.4.3.2).
pub const PACKET: usize = 188;
/// One SRT payload: 7 transport packets, 1316 bytes.
pub const CHUNK: usize = 7 * PACKET;

/// Added to every timestamp (ms) so the first PTS/DTS sit at 1.4 s, not
/// near 0: negative composition offsets and the PCR margin never underflow.
pub const TIMESTAMP_OFFSET_MS: u64 = 1400;
/// How far the PCR runs behind the DTS of the PES that carries it: 100 ms
/// at 90 kHz. Enough for a relay; a player buffers about this much.
pub const PCR_DELAY_90K: u64 = 9_000;
/// PAT/PMT repetition for streams without video (100 ms at 90 kHz), where
/// no keyframe brings them round.
const AUDIO_ONLY_PSI_INTERVAL_90K: u64 = 9_000;

/// Payload bytes in a transport packet after the 4-byte header.
const PAYLOAD: usize = PACKET - 4;
/// ADTS frame_length is 13 bits and counts the 7-byte header (14496-3 1.A.2.2).
const MAX_ADTS_PAYLOAD: usize = 0x1FFF - 7;
const START_CODE: &[u8] = &[0, 0, 0, 1];
const STREAM_ID_VIDEO: u8 = 0xE0;
const STREAM_ID_AUDIO: u8 = 0xC0;

/// One output unit for the fan-out ring: up to 7 TS packets (a multiple of 188 bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct TsChunk {
    pub data: Bytes,
    /// The chunk starts with PAT and PMT followed by a video keyframe access
    /// unit (parameter sets, IDR). In a stream without video it starts with
    /// PAT and PMT followed by an audio frame, where a player can also join.
    pub keyframe: bool,
    /// DTS of the frame the chunk belongs to, 90 kHz, including
    /// [`TIMESTAMP_OFFSET_MS`]; monotonic (not wrapped at 2^33 like the PES field).
    pub dts_90k: u64,
    /// When the frame reached the relay; the muxer leaves it `None` and the
    /// driver stamps it, so the SRT side can measure relay-added latency.
    pub origin: Option<std::time::Instant>,
}

#[derive(Debug)]
struct VideoTrack {
    codec: Codec,
    record: Bytes,
    nal_length_size: u8,
    /// The config's parameter sets in Annex B (VPS, SPS, PPS), put before
    /// every IDR that does not carry its own.
    params: Vec<u8>,
}

impl VideoTrack {
    fn stream_type(&self) -> u8 {
        if self.codec == Codec::H265 {
            STREAM_TYPE_HEVC
        } else {
            STREAM_TYPE_H264
        }
    }
}

#[derive(Debug)]
struct AudioTrack {
    config: Bytes,
    /// The ADTS header for this config with frame_length 0.
    adts: [u8; 7],
}

/// A piece of a PES, copied straight into the packets that carry it.
#[derive(Debug, Clone, Copy)]
enum Seg {
    PesHeader,
    Aud,
    Params,
    Adts,
    StartCode,
    /// A byte range of the frame's data.
    Frame(usize, usize),
}

/// Where [`Seg`]s point for the frame being written.
struct Sources<'a> {
    pes_header: &'a [u8],
    aud: &'a [u8],
    params: &'a [u8],
    adts: &'a [u8],
    frame: &'a [u8],
}

impl Sources<'_> {
    fn bytes(&self, seg: Seg) -> &[u8] {
        match seg {
            Seg::PesHeader => self.pes_header,
            Seg::Aud => self.aud,
            Seg::Params => self.params,
            Seg::Adts => self.adts,
            Seg::StartCode => START_CODE,
            Seg::Frame(start, end) => self.frame.get(start..end).unwrap_or(&[]),
        }
    }
}

/// Per-elementary-stream state.
#[derive(Debug, Default)]
struct EsState {
    /// continuity_counter of the next packet (2.4.3.3).
    cc: u8,
    /// DTS (90 kHz, unwrapped) of the last frame written.
    last_dts: Option<u64>,
}

/// The sans-IO MPEG-TS muxer for one rendition; see the module docs.
#[derive(Debug)]
pub struct Muxer {
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    pat: [u8; PACKET],
    pmt: [u8; PACKET],
    pmt_version: u8,
    /// PAT/PMT have been written at least once.
    psi_written: bool,
    /// PAT/PMT must precede the next frame (start, or the PMT changed).
    psi_pending: bool,
    last_psi_90k: Option<u64>,
    cc_pat: u8,
    cc_pmt: u8,
    video_es: EsState,
    audio_es: EsState,
    /// NAL unit ranges of the frame being muxed (kept for their capacity).
    nals: Vec<(usize, usize)>,
    segs: Vec<Seg>,
    aud: [u8; 7],
    aud_len: usize,
    buf: BytesMut,
}

impl Default for Muxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Muxer {
    pub fn new() -> Self {
        let mut m = Muxer {
            video: None,
            audio: None,
            pat: psi::pat_packet(),
            pmt: [0; PACKET],
            pmt_version: 0,
            psi_written: false,
            psi_pending: true,
            last_psi_90k: None,
            cc_pat: 0,
            cc_pmt: 0,
            video_es: EsState::default(),
            audio_es: EsState::default(),
            nals: Vec::new(),
            segs: Vec::new(),
            aud: [0; 7],
            aud_len: 0,
            buf: BytesMut::new(),
        };
        m.rebuild_pmt();
        m
    }

    /// Codec configuration (replayed before every IDR). Video: H.264 or HEVC record; audio: AAC ASC.
    /// A config equal to the current one changes nothing; a different one
    /// bumps the PMT version and PAT/PMT go out before the next frame.
    pub fn set_config(&mut self, cfg: &CodecConfig) -> Result<(), TsError> {
        match cfg {
            CodecConfig::Video { codec, record, .. } => {
                let codec = *codec;
                if self
                    .video
                    .as_ref()
                    .is_some_and(|v| v.codec == codec && v.record == *record)
                {
                    return Ok(());
                }
                let bad = |source| TsError::BadConfig { codec, source };
                let (nal_length_size, sets) = match codec {
                    Codec::H264 => {
                        let c = h264::parse_avc_decoder_config(record).map_err(bad)?;
                        (c.nal_length_size, [Vec::new(), c.sps, c.pps])
                    }
                    Codec::H265 => {
                        let c = hevc::parse_hevc_decoder_config(record).map_err(bad)?;
                        (c.nal_length_size, [c.vps, c.sps, c.pps])
                    }
                    _ => return Err(TsError::UnsupportedCodec { codec }),
                };
                let mut params = Vec::new();
                for nal in sets.iter().flatten().filter(|n| !n.is_empty()) {
                    params.extend_from_slice(START_CODE);
                    params.extend_from_slice(nal);
                }
                self.video = Some(VideoTrack {
                    codec,
                    record: record.clone(),
                    nal_length_size,
                    params,
                });
            }
            CodecConfig::Audio { codec, config, .. } => {
                if *codec != Codec::Aac {
                    return Err(TsError::UnsupportedCodec { codec: *codec });
                }
                if self.audio.as_ref().is_some_and(|a| a.config == *config) {
                    return Ok(());
                }
                let asc =
                    AudioSpecificConfig::parse(config).map_err(|source| TsError::BadConfig {
                        codec: Codec::Aac,
                        source,
                    })?;
                self.audio = Some(AudioTrack {
                    config: config.clone(),
                    adts: adts_header(&asc)?,
                });
            }
        }
        if self.psi_written {
            self.pmt_version = (self.pmt_version + 1) & 0x1F;
        }
        self.rebuild_pmt();
        self.psi_pending = true;
        Ok(())
    }

    /// Mux one frame; appends finished chunks to `out`. Chunks are emitted at the end of every frame
    /// (the last chunk of a frame may hold fewer than 7 packets) so no frame waits for the next one — latency matters.
    /// On error nothing is written and the muxer state is unchanged.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<TsChunk>) -> Result<(), TsError> {
        match frame.codec {
            Codec::H264 | Codec::H265 => self.push_video(frame, out),
            Codec::Aac => self.push_audio(frame, out),
            codec => Err(TsError::UnsupportedCodec { codec }),
        }
    }

    fn rebuild_pmt(&mut self) {
        let mut entries = [PmtEntry {
            stream_type: 0,
            pid: 0,
        }; psi::MAX_PMT_ENTRIES];
        let mut n = 0;
        if let Some(v) = &self.video {
            entries[n] = PmtEntry {
                stream_type: v.stream_type(),
                pid: PID_VIDEO,
            };
            n += 1;
        }
        if self.audio.is_some() {
            entries[n] = PmtEntry {
                stream_type: STREAM_TYPE_AAC_ADTS,
                pid: PID_AUDIO,
            };
            n += 1;
        }
        self.pmt = psi::pmt_packet(self.pmt_version, self.pcr_pid(), &entries[..n]);
    }

    /// PCR goes on the video PID, or on the audio PID when there is no video.
    fn pcr_pid(&self) -> u16 {
        if self.video.is_some() {
            PID_VIDEO
        } else if self.audio.is_some() {
            PID_AUDIO
        } else {
            PID_NULL
        }
    }

    fn push_video(&mut self, frame: &Frame, out: &mut Vec<TsChunk>) -> Result<(), TsError> {
        let Some(video) = &self.video else {
            return Err(TsError::MissingConfig { codec: frame.codec });
        };
        if video.codec != frame.codec {
            return Err(TsError::CodecMismatch {
                frame: frame.codec,
                configured: video.codec,
                track: "video",
            });
        }
        let hevc = video.codec == Codec::H265;
        let has_params = !video.params.is_empty();
        let scan = split_nal_units(frame, video.nal_length_size, hevc, &mut self.nals)?;
        let keyframe = frame.keyframe || scan.irap;
        let insert_params = keyframe && has_params && !scan.has_all_params();

        // Access unit: AUD, parameter sets before an IDR, then the frame's NAL
        // units in Annex B (14496-10 7.4.1.2.3 order, Annex B byte stream).
        self.segs.clear();
        self.segs.push(Seg::PesHeader);
        let mut es_len = 0;
        if scan.aud_first {
            // The encoder's own AUD(s) stay, and no second one is added.
            self.aud_len = 0;
        } else {
            self.aud_len = if hevc {
                self.aud[..7].copy_from_slice(&[0, 0, 0, 1, 0x46, scan.hevc_tid_plus1, 0x50]);
                7
            } else {
                self.aud[..6].copy_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
                6
            };
            self.segs.push(Seg::Aud);
            es_len += self.aud_len;
        }
        let mut params_pending = insert_params;
        for (i, &(start, end)) in self.nals.iter().enumerate() {
            let ty = nal_type(frame.data.get(start).copied().unwrap_or(0), hevc);
            let is_aud = ty == if hevc { 35 } else { 9 };
            if is_aud && !scan.aud_first {
                continue;
            }
            if params_pending && !(scan.aud_first && i == 0) {
                self.segs.push(Seg::Params);
                es_len += video.params.len();
                params_pending = false;
            }
            self.segs.push(Seg::StartCode);
            self.segs.push(Seg::Frame(start, end));
            es_len += START_CODE.len() + (end - start);
        }
        if params_pending {
            self.segs.push(Seg::Params);
            es_len += video.params.len();
        }

        let (dts, pts) = timestamps_90k(frame, self.video_es.last_dts);
        self.video_es.last_dts = Some(dts);
        let psi = self.psi_pending || keyframe;
        let header = pes_header(STREAM_ID_VIDEO, dts, pts, None);
        self.reserve(header.len() + es_len, psi);
        if psi {
            self.write_psi(dts);
        }
        // Borrowed again after `write_psi`; it was checked above and is still set.
        let Some(video) = &self.video else {
            return Ok(());
        };
        let src = Sources {
            pes_header: header.as_slice(),
            aud: self.aud.get(..self.aud_len).unwrap_or(&[]),
            params: &video.params,
            adts: &[],
            frame: &frame.data,
        };
        write_pes(
            &mut self.buf,
            &mut self.video_es.cc,
            PID_VIDEO,
            &self.segs,
            &src,
            header.len() + es_len,
            Some(dts.saturating_sub(PCR_DELAY_90K)),
            keyframe,
        );
        self.emit(psi && keyframe, dts, out);
        Ok(())
    }

    fn push_audio(&mut self, frame: &Frame, out: &mut Vec<TsChunk>) -> Result<(), TsError> {
        let Some(audio) = &self.audio else {
            return Err(TsError::MissingConfig { codec: frame.codec });
        };
        let len = frame.data.len();
        if len > MAX_ADTS_PAYLOAD {
            return Err(TsError::AacFrameTooLarge {
                dts: frame.dts,
                len,
                max: MAX_ADTS_PAYLOAD,
            });
        }
        // ADTS frame_length (13 bits) includes the header (14496-3 1.A.2.2.2).
        let mut adts = audio.adts;
        let frame_length = len + 7;
        adts[3] |= (frame_length >> 11) as u8 & 0x03;
        adts[4] = (frame_length >> 3) as u8;
        adts[5] = ((frame_length & 0x07) << 5) as u8 | 0x1F;

        let (dts, pts) = timestamps_90k(frame, self.audio_es.last_dts);
        self.audio_es.last_dts = Some(dts);
        let audio_only = self.video.is_none();
        let psi = self.psi_pending
            || (audio_only
                && self
                    .last_psi_90k
                    .is_none_or(|t| dts < t || dts - t >= AUDIO_ONLY_PSI_INTERVAL_90K));
        self.segs.clear();
        self.segs
            .extend_from_slice(&[Seg::PesHeader, Seg::Adts, Seg::Frame(0, len)]);
        let es_len = adts.len() + len;
        let header = pes_header(STREAM_ID_AUDIO, dts, pts, Some(es_len));
        self.reserve(header.len() + es_len, psi);
        if psi {
            self.write_psi(dts);
        }
        let src = Sources {
            pes_header: header.as_slice(),
            aud: &[],
            params: &[],
            adts: &adts,
            frame: &frame.data,
        };
        write_pes(
            &mut self.buf,
            &mut self.audio_es.cc,
            PID_AUDIO,
            &self.segs,
            &src,
            header.len() + es_len,
            audio_only.then(|| dts.saturating_sub(PCR_DELAY_90K)),
            audio_only && psi,
        );
        self.emit(audio_only && psi, dts, out);
        Ok(())
    }

    /// Makes room for one frame: PAT, PMT and the PES packets, so the
    /// writes below never reallocate.
    fn reserve(&mut self, pes_len: usize, psi: bool) {
        // The first packet loses up to 8 bytes to the adaptation field (PCR).
        let packets = (pes_len + 8).div_ceil(PAYLOAD) + if psi { 2 } else { 0 };
        self.buf.reserve(packets * PACKET);
    }

    /// PAT then PMT (2.4.4.3, 2.4.4.8), with their continuity counters.
    fn write_psi(&mut self, dts: u64) {
        let mut p = self.pat;
        p[3] = 0x10 | self.cc_pat;
        self.cc_pat = (self.cc_pat + 1) & 0x0F;
        self.buf.put_slice(&p);
        p = self.pmt;
        p[3] = 0x10 | self.cc_pmt;
        self.cc_pmt = (self.cc_pmt + 1) & 0x0F;
        self.buf.put_slice(&p);
        self.psi_written = true;
        self.psi_pending = false;
        self.last_psi_90k = Some(dts);
    }

    /// Hands out everything written for this frame as chunks of at most 7 packets.
    fn emit(&mut self, keyframe: bool, dts_90k: u64, out: &mut Vec<TsChunk>) {
        let mut first = true;
        while !self.buf.is_empty() {
            let n = self.buf.len().min(CHUNK);
            out.push(TsChunk {
                data: self.buf.split_to(n).freeze(),
                keyframe: keyframe && first,
                dts_90k,
                origin: None,
            });
            first = false;
        }
    }
}

/// DTS and PTS in 90 kHz on the unwrapped timeline, offset by
/// [`TIMESTAMP_OFFSET_MS`]. PTS = DTS + CTS; MPEG-TS needs PTS >= DTS
/// (2.4.3.7), so a negative CTS that would break that lowers the DTS to the
/// PTS, but not below the previous frame's DTS (decode order must not go
/// backwards); if that is still above the PTS, the PTS is raised to it.
pub(crate) fn timestamps_90k(frame: &Frame, last_dts: Option<u64>) -> (u64, u64) {
    let dts = frame.dts.wrapping_add(TIMESTAMP_OFFSET_MS).wrapping_mul(90);
    let cts = i64::from(frame.cts) * 90;
    let pts = if cts >= 0 {
        dts.saturating_add(cts.unsigned_abs())
    } else {
        dts.saturating_sub(cts.unsigned_abs())
    };
    if pts >= dts {
        return (dts, pts);
    }
    let floor = last_dts.map_or(pts, |last| last.min(dts));
    let dts = pts.max(floor);
    (dts, pts.max(dts))
}

/// What [`split_nal_units`] saw in a frame.
#[derive(Debug, Default)]
struct NalScan {
    aud_first: bool,
    vps: bool,
    sps: bool,
    pps: bool,
    hevc: bool,
    /// H.264 IDR (type 5) or HEVC IRAP (types 16..=21).
    irap: bool,
    /// nuh_temporal_id_plus1 of the first HEVC VCL NAL unit of two bytes or
    /// more (1 if none, or if that says 0).
    hevc_tid_plus1: u8,
}

impl NalScan {
    fn has_all_params(&self) -> bool {
        self.sps && self.pps && (self.vps || !self.hevc)
    }
}

/// nal_unit_type from the first header byte (14496-10 7.3.1; 23008-2 7.3.1.2).
fn nal_type(b: u8, hevc: bool) -> u8 {
    if hevc {
        (b >> 1) & 0x3F
    } else {
        b & 0x1F
    }
}

/// Splits AVCC/HVCC length-prefixed NAL units (14496-15 5.3.2 / 8.3.2) into
/// `nals` (ranges of `frame.data`, empty units dropped) and notes what they
/// are. Validates every length before anything is written.
fn split_nal_units(
    frame: &Frame,
    length_size: u8,
    hevc: bool,
    nals: &mut Vec<(usize, usize)>,
) -> Result<NalScan, TsError> {
    nals.clear();
    let data = &frame.data[..];
    let n = usize::from(length_size);
    let mut scan = NalScan {
        hevc,
        hevc_tid_plus1: 0,
        ..NalScan::default()
    };
    let mut first_vcl_tid = None;
    let mut pos = 0;
    while pos < data.len() {
        let bad = |len: usize, remaining: usize| TsError::BadNalLength {
            codec: frame.codec,
            dts: frame.dts,
            offset: pos,
            len,
            remaining,
            length_size,
        };
        let prefix = data
            .get(pos..pos + n)
            .ok_or_else(|| bad(n, data.len() - pos))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let start = pos + n;
        let remaining = data.len() - start;
        if len > remaining {
            return Err(bad(len, remaining));
        }
        let end = start + len;
        pos = end;
        let Some(&b0) = data.get(start).filter(|_| len > 0) else {
            continue;
        };
        let ty = nal_type(b0, hevc);
        if nals.is_empty() {
            scan.aud_first = ty == if hevc { 35 } else { 9 };
        }
        if hevc {
            match ty {
                32 => scan.vps = true,
                33 => scan.sps = true,
                34 => scan.pps = true,
                16..=21 => scan.irap = true,
                _ => {}
            }
            if ty <= 31 && first_vcl_tid.is_none() && len >= 2 {
                first_vcl_tid = data.get(start + 1).map(|b| b & 0x07);
            }
        } else {
            match ty {
                h264::NAL_SPS => scan.sps = true,
                h264::NAL_PPS => scan.pps = true,
                h264::NAL_IDR => scan.irap = true,
                _ => {}
            }
        }
        nals.push((start, end));
    }
    // An AUD takes its access unit's TemporalId (23008-2 7.4.2.4.4);
    // nuh_temporal_id_plus1 must not be 0.
    scan.hevc_tid_plus1 = first_vcl_tid.filter(|&t| t != 0).unwrap_or(1);
    Ok(scan)
}

/// The 7-byte ADTS header without CRC (14496-3 1.A.2.2) for an
/// AudioSpecificConfig, frame_length left 0: sync 0xFFF, MPEG-4, layer 0,
/// protection_absent 1, profile = object type - 1, buffer fullness 0x7FF (VBR).
fn adts_header(asc: &AudioSpecificConfig) -> Result<[u8; 7], TsError> {
    let object_type = asc.object_type;
    if !(1..=4).contains(&object_type) {
        return Err(TsError::AdtsUnsupported {
            field: "audio object type",
            value: u32::from(object_type),
            reason: "ADTS profile is 2 bits: object types 1-4 (AAC Main, LC, SSR, LTP) only",
        });
    }
    let sfi = asc.sampling_frequency_index;
    if sfi > 12 {
        return Err(TsError::AdtsUnsupported {
            field: "sampling_frequency_index",
            value: u32::from(sfi),
            reason: "ADTS has no escape for an explicit sampling frequency",
        });
    }
    let ch = asc.channel_configuration;
    if ch > 7 {
        return Err(TsError::AdtsUnsupported {
            field: "channel_configuration",
            value: u32::from(ch),
            reason: "ADTS channel_configuration is 3 bits",
        });
    }
    let profile = object_type - 1;
    Ok([
        0xFF,
        0xF1,
        (profile << 6) | (sfi << 2) | (ch >> 2),
        (ch & 0x03) << 6,
        0x00,
        0x1F,
        0xFC,
    ])
}

/// A PES header (2.4.3.6) with PTS, and DTS when it differs (2.4.3.7).
/// `payload_len`: Some for a bounded PES_packet_length, None for 0 (video).
struct PesHeader {
    bytes: [u8; 19],
    len: usize,
}

impl PesHeader {
    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    fn len(&self) -> usize {
        self.len
    }
}

fn pes_header(stream_id: u8, dts: u64, pts: u64, payload_len: Option<usize>) -> PesHeader {
    let with_dts = (dts & TIMESTAMP_MASK) != (pts & TIMESTAMP_MASK);
    let header_data_length: u8 = if with_dts { 10 } else { 5 };
    let packet_length = payload_len
        .map(|n| n + 3 + usize::from(header_data_length))
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(0);
    let mut b = [0u8; 19];
    b[..3].copy_from_slice(&[0, 0, 1]);
    b[3] = stream_id;
    b[4..6].copy_from_slice(&packet_length.to_be_bytes());
    // '10', not scrambled, priority 0, data_alignment_indicator 1: every PES
    // starts with an access unit (AUD or ADTS sync word).
    b[6] = 0x84;
    b[7] = if with_dts { 0xC0 } else { 0x80 };
    b[8] = header_data_length;
    b[9..14].copy_from_slice(&encode_timestamp(
        if with_dts { 0b0011 } else { 0b0010 },
        pts,
    ));
    if with_dts {
        b[14..19].copy_from_slice(&encode_timestamp(0b0001, dts));
    }
    PesHeader {
        bytes: b,
        len: 9 + usize::from(header_data_length),
    }
}

/// The 6-byte program_clock_reference (2.4.3.4): 33-bit base, 6 reserved
/// bits, 9-bit extension (0: the relay's clock is the 90 kHz DTS).
fn encode_pcr(base: u64) -> [u8; 6] {
    let base = base & TIMESTAMP_MASK;
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) << 7) as u8 | 0x7E,
        0x00,
    ]
}

/// Packetises one PES of `total` bytes described by `segs` (2.4.3.2). The
/// first packet sets payload_unit_start_indicator and carries the PCR and
/// random_access_indicator in its adaptation field (2.4.3.4); the last one is
/// padded with adaptation-field stuffing so the PES payload stays exact.
#[allow(clippy::too_many_arguments)]
fn write_pes(
    buf: &mut BytesMut,
    cc: &mut u8,
    pid: u16,
    segs: &[Seg],
    src: &Sources<'_>,
    total: usize,
    pcr: Option<u64>,
    random_access: bool,
) {
    let mut cursor = SegCursor { seg: 0, off: 0 };
    let mut remaining = total;
    let mut first = true;
    while remaining > 0 {
        // Adaptation field body: flags byte, then the optional PCR.
        let mut af = [0u8; 7];
        let mut af_body = 0;
        if first && (pcr.is_some() || random_access) {
            af[0] = if random_access { 0x40 } else { 0 };
            af_body = 1;
            if let Some(pcr) = pcr {
                af[0] |= 0x10;
                af[1..7].copy_from_slice(&encode_pcr(pcr));
                af_body = 7;
            }
        }
        let af_min = if af_body > 0 { 1 + af_body } else { 0 };
        let n = remaining.min(PAYLOAD - af_min);
        // Everything the payload leaves free goes to the adaptation field.
        let af_total = PAYLOAD - n;
        let mut p = [0xFFu8; PACKET];
        p[0] = SYNC_BYTE;
        p[1] = (if first { 0x40 } else { 0 }) | ((pid >> 8) as u8 & 0x1F);
        p[2] = pid as u8;
        p[3] = (if af_total > 0 { 0x30 } else { 0x10 }) | *cc;
        *cc = (*cc + 1) & 0x0F;
        if af_total > 0 {
            // adaptation_field_length counts the bytes after itself; a single
            // stuffing byte is just a length of 0.
            p[4] = (af_total - 1) as u8;
            if af_total > 1 {
                let body = af_body.max(1);
                p[5..5 + body].copy_from_slice(&af[..body]);
                // The rest up to the payload stays 0xFF: stuffing_byte.
            }
        }
        let start = 4 + af_total;
        cursor.fill(&mut p[start..start + n], segs, src);
        buf.put_slice(&p);
        remaining -= n;
        first = false;
    }
}

/// Position in a list of [`Seg`]s while it is spread over packets.
struct SegCursor {
    seg: usize,
    off: usize,
}

impl SegCursor {
    fn fill(&mut self, dst: &mut [u8], segs: &[Seg], src: &Sources<'_>) {
        let mut w = 0;
        while w < dst.len() {
            let Some(&seg) = segs.get(self.seg) else {
                return;
            };
            let bytes = src.bytes(seg);
            let avail = bytes.get(self.off..).unwrap_or(&[]);
            let n = avail.len().min(dst.len() - w);
            dst[w..w + n].copy_from_slice(&avail[..n]);
            w += n;
            self.off += n;
            if self.off >= bytes.len() {
                self.seg += 1;
                self.off = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::fixtures::{
        aac_config as audio_config, avcc_record, h264_config as video_config,
    };
    use crate::media::Track;

    fn avcc(nals: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        Bytes::from(out)
    }

    fn video(dts: u64, cts: i32, keyframe: bool, size: usize) -> Frame {
        let mut slice = vec![if keyframe { 0x65 } else { 0x41 }];
        slice.extend((0..size).map(|i| (i % 251) as u8 | 1));
        Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            cts,
            keyframe,
            data: avcc(&[&slice]),
        }
    }

    fn audio(dts: u64, size: usize) -> Frame {
        Frame {
            track: Track::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: true,
            data: Bytes::from(vec![0x21; size]),
        }
    }

    /// The payload of a packet, after the adaptation field if there is one.
    fn payload(p: &[u8]) -> &[u8] {
        if p[3] & 0x20 != 0 {
            &p[5 + usize::from(p[4])..188]
        } else {
            &p[4..188]
        }
    }

    fn pid(p: &[u8]) -> u16 {
        u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])
    }

    fn muxer() -> Muxer {
        let mut m = Muxer::new();
        m.set_config(&video_config()).unwrap();
        m.set_config(&audio_config()).unwrap();
        m
    }

    #[test]
    fn keyframe_chunk_starts_with_pat_pmt_then_random_access_video() {
        let mut m = muxer();
        let mut out = Vec::new();
        m.push(&audio(0, 300), &mut out).unwrap();
        out.clear();
        m.push(&video(0, 0, false, 500), &mut out).unwrap();
        assert!(out.iter().all(|c| !c.keyframe));
        out.clear();
        m.push(&video(40, 80, true, 5000), &mut out).unwrap();
        assert!(out[0].keyframe);
        assert!(out[1..].iter().all(|c| !c.keyframe));
        let d = &out[0].data;
        assert_eq!(pid(&d[..]), 0);
        assert_eq!(pid(&d[188..]), 0x1000);
        let v = &d[376..564];
        assert_eq!(pid(v), 0x100);
        assert_eq!(v[1] & 0x40, 0x40, "payload_unit_start_indicator");
        assert_eq!(v[3] & 0x30, 0x30, "adaptation field and payload");
        assert_eq!(v[5] & 0x40, 0x40, "random_access_indicator");
        assert_eq!(v[5] & 0x10, 0x10, "PCR flag");
        // PES header follows the 8-byte adaptation field; the ES starts with
        // AUD, SPS, PPS, then the IDR slice.
        let pes = payload(v);
        assert_eq!(&pes[..4], &[0, 0, 1, 0xE0]);
        let es = &pes[9 + usize::from(pes[8])..];
        assert_eq!(&es[..6], &[0, 0, 0, 1, 0x09, 0xF0]);
        assert_eq!(&es[6..11], &[0, 0, 0, 1, 0x67]);
    }

    #[test]
    fn chunks_are_whole_packets_at_most_seven() {
        let mut m = muxer();
        let mut out = Vec::new();
        for (i, size) in [0usize, 1, 150, 170, 171, 183, 184, 1315, 1316, 9000, 70_000]
            .into_iter()
            .enumerate()
        {
            let i = i as u64;
            m.push(&video(i * 40, 0, i % 4 == 0, size), &mut out)
                .unwrap();
            m.push(&audio(i * 40, size.min(MAX_ADTS_PAYLOAD)), &mut out)
                .unwrap();
        }
        assert!(!out.is_empty());
        for c in &out {
            assert!(!c.data.is_empty());
            assert_eq!(c.data.len() % PACKET, 0);
            assert!(c.data.len() <= CHUNK);
            assert!(c.data.chunks(PACKET).all(|p| p[0] == SYNC_BYTE));
        }
    }

    #[test]
    fn continuity_counters_count_payload_packets_per_pid() {
        let mut m = muxer();
        let mut out = Vec::new();
        for i in 0..40u64 {
            m.push(
                &video(i * 40, 0, i % 10 == 0, 700 + i as usize * 37),
                &mut out,
            )
            .unwrap();
            m.push(&audio(i * 40, 200), &mut out).unwrap();
        }
        let mut next = std::collections::HashMap::new();
        for c in &out {
            for p in c.data.chunks(PACKET) {
                assert_ne!(p[3] & 0x10, 0, "every packet has payload");
                let cc = p[3] & 0x0F;
                if let Some(want) = next.insert(pid(p), (cc + 1) & 0x0F) {
                    assert_eq!(cc, want, "pid {:#x}", pid(p));
                }
            }
        }
        assert_eq!(next.len(), 4);
    }

    #[test]
    fn last_packet_is_padded_with_adaptation_stuffing() {
        let mut m = muxer();
        let mut out = Vec::new();
        m.push(&audio(0, 10), &mut out).unwrap();
        out.clear();
        m.push(&audio(21, 10), &mut out).unwrap();
        let p = &out[0].data[..];
        assert_eq!(p.len(), 188);
        // 14-byte PES header + 7-byte ADTS + 10 bytes = 31 bytes of payload.
        assert_eq!(p[3] & 0x30, 0x30);
        assert_eq!(usize::from(p[4]), 184 - 31 - 1);
        assert_eq!(p[5], 0);
        assert!(p[6..188 - 31].iter().all(|&b| b == 0xFF));
        let pes = &p[188 - 31..];
        assert_eq!(&pes[..4], &[0, 0, 1, 0xC0]);
        assert_eq!(u16::from_be_bytes([pes[4], pes[5]]), 31 - 6);
        // ADTS: LC (profile 1), 48 kHz (index 3), 2 channels, length 17.
        assert_eq!(&pes[14..21], &[0xFF, 0xF1, 0x4C, 0x80, 0x02, 0x3F, 0xFC]);
    }

    #[test]
    fn negative_cts_keeps_pts_at_or_above_dts() {
        let f = |dts, cts| Frame {
            cts,
            ..video(dts, 0, false, 0)
        };
        // First frame: PTS below DTS lowers DTS to PTS.
        assert_eq!(timestamps_90k(&f(0, -40), None), (1360 * 90, 1360 * 90));
        // Not below the previous DTS: PTS is raised to meet it.
        assert_eq!(
            timestamps_90k(&f(100, -80), Some(1480 * 90)),
            (1480 * 90, 1480 * 90)
        );
        assert_eq!(
            timestamps_90k(&f(100, -80), Some(1400 * 90)),
            (1420 * 90, 1420 * 90)
        );
        // Huge negative CTS saturates at 0 instead of underflowing.
        assert_eq!(timestamps_90k(&f(0, i32::MIN), None), (0, 0));
        // B-frames: positive CTS is kept as is.
        assert_eq!(
            timestamps_90k(&f(33, 67), Some(1400 * 90)),
            (1433 * 90, 1500 * 90)
        );
    }

    #[test]
    fn pts_and_dts_wrap_at_33_bits() {
        let mut m = muxer();
        let mut out = Vec::new();
        // 2^33 / 90 ms is about 26.5 hours.
        let dts = (1u64 << 33) / 90 - TIMESTAMP_OFFSET_MS + 10;
        m.push(&video(dts, 40, true, 100), &mut out).unwrap();
        let want_dts = (dts + TIMESTAMP_OFFSET_MS) * 90;
        assert_eq!(out[0].dts_90k, want_dts);
        let pes = payload(&out[0].data[376..]);
        assert_eq!(pes[7], 0xC0);
        let pts = super::super::decode_timestamp(pes[9..14].try_into().unwrap());
        let dts = super::super::decode_timestamp(pes[14..19].try_into().unwrap());
        assert_eq!(dts, want_dts & TIMESTAMP_MASK);
        assert_eq!(pts, (want_dts + 40 * 90) & TIMESTAMP_MASK);
        assert!(pts < (1 << 33) && dts < (1 << 33));
    }

    #[test]
    fn config_changes_bump_the_pmt_version() {
        let mut m = muxer();
        let mut out = Vec::new();
        m.push(&video(0, 0, true, 10), &mut out).unwrap();
        let version = |c: &TsChunk| (c.data[188 + 10] >> 1) & 0x1F;
        assert_eq!(version(&out[0]), 0);
        m.set_config(&video_config()).unwrap();
        out.clear();
        // The same config again changes nothing: no PAT/PMT on a P-frame.
        m.push(&video(40, 0, false, 10), &mut out).unwrap();
        assert_eq!(pid(&out[0].data), 0x100);
        let mut record = avcc_record().to_vec();
        record[10] ^= 1; // a different SPS
        m.set_config(&CodecConfig::Video {
            codec: Codec::H264,
            record: Bytes::from(record),
            params: None,
        })
        .unwrap();
        out.clear();
        m.push(&video(80, 0, true, 10), &mut out).unwrap();
        assert_eq!(version(&out[0]), 1);
    }

    #[test]
    fn audio_only_streams_repeat_psi_and_carry_pcr() {
        let mut m = Muxer::new();
        m.set_config(&audio_config()).unwrap();
        let mut out = Vec::new();
        for i in 0..20u64 {
            m.push(&audio(i * 21, 100), &mut out).unwrap();
        }
        let psi: Vec<u64> = out
            .iter()
            .filter(|c| c.keyframe)
            .map(|c| c.dts_90k)
            .collect();
        assert_eq!(psi.len(), 4, "every 100 ms over 400 ms: {psi:?}");
        for c in &out {
            let a = if c.keyframe {
                &c.data[376..]
            } else {
                &c.data[..]
            };
            assert_eq!(pid(a), 0x101);
            assert_eq!(a[5] & 0x10, 0x10, "PCR on the audio PID");
        }
    }

    #[test]
    fn own_aud_and_parameter_sets_are_not_duplicated() {
        let mut m = muxer();
        let mut out = Vec::new();
        let sps = [0x67, 1, 2];
        let pps = [0x68, 3];
        let frame = Frame {
            data: avcc(&[&[0x09, 0x10], &sps, &pps, &[0x65, 7, 7]]),
            ..video(0, 0, true, 0)
        };
        m.push(&frame, &mut out).unwrap();
        let pes = payload(&out[0].data[376..]);
        let es = &pes[9 + usize::from(pes[8])..];
        let want: &[u8] = &[
            0, 0, 0, 1, 0x09, 0x10, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65,
            7, 7,
        ];
        assert_eq!(&es[..want.len()], want);
        // A stray AUD after other NAL units is dropped for the inserted one.
        out.clear();
        let frame = Frame {
            data: avcc(&[&[0x06, 5], &[0x09, 0x10], &[0x41, 8]]),
            ..video(40, 0, false, 0)
        };
        m.push(&frame, &mut out).unwrap();
        let pes = payload(&out[0].data);
        let es = &pes[9 + usize::from(pes[8])..];
        let want: &[u8] = &[
            0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x06, 5, 0, 0, 0, 1, 0x41, 8,
        ];
        assert_eq!(&es[..want.len()], want);
    }

    #[test]
    fn bad_input_is_an_error_and_writes_nothing() {
        let mut m = Muxer::new();
        let mut out = Vec::new();
        assert!(matches!(
            m.push(&video(0, 0, true, 10), &mut out),
            Err(TsError::MissingConfig { codec: Codec::H264 })
        ));
        for codec in [Codec::Av1, Codec::Vp9] {
            let e = m
                .set_config(&CodecConfig::Video {
                    codec,
                    record: Bytes::new(),
                    params: None,
                })
                .unwrap_err();
            assert!(e
                .to_string()
                .contains("not supported in MPEG-TS by sluice yet"));
        }
        for codec in [Codec::Opus, Codec::Mp3] {
            let e = m
                .push(
                    &Frame {
                        codec,
                        ..audio(0, 4)
                    },
                    &mut out,
                )
                .unwrap_err();
            assert_eq!(e, TsError::UnsupportedCodec { codec });
        }
        m.set_config(&video_config()).unwrap();
        let mut f = video(0, 0, true, 10);
        let mut data = f.data.to_vec();
        data[3] += 1; // length one past the end
        f.data = Bytes::from(data);
        let e = m.push(&f, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                TsError::BadNalLength {
                    len: 12,
                    remaining: 11,
                    ..
                }
            ),
            "{e}"
        );
        f.data = Bytes::from_static(&[0, 0]); // truncated length prefix
        assert!(m.push(&f, &mut out).is_err());
        assert!(out.is_empty());
        // An explicit sampling frequency (index 15) has no ADTS encoding.
        assert!(Muxer::new()
            .set_config(&CodecConfig::Audio {
                codec: Codec::Aac,
                config: Bytes::from_static(&[0x17, 0x80, 0x00, 0x00, 0x10]),
                params: None,
            })
            .is_err());
        // Nothing was written by the failures: the first real frame starts
        // every counter at 0.
        m.push(&video(0, 0, true, 10), &mut out).unwrap();
        assert_eq!(out[0].data[3] & 0x0F, 0);
        assert_eq!(out[0].data[376 + 3] & 0x0F, 0);
    }
}
