//! A small MPEG-TS demuxer: bytes in (any split, resynchronising after garbage), complete PES packets out
//! with PTS/DTS and a keyframe flag. It follows PAT -> PMT -> elementary PIDs and counts continuity errors;
//! sluice uses it to find IDRs in FFmpeg's TS output and to check its own muxer. Memory is bounded.

use bytes::{Bytes, BytesMut};

use super::psi::crc32;
use super::{
    decode_timestamp, TsError, PACKET, PID_NULL, PID_PAT, STREAM_TYPE_H264, STREAM_TYPE_HEVC,
    SYNC_BYTE,
};
use crate::media::Excerpt;

/// A PES larger than this (8 MiB) is dropped and counted.
pub const MAX_PES: usize = 8 << 20;
/// Elementary streams followed at most; further PMT entries are ignored.
const MAX_STREAMS: usize = 16;
/// PMT PIDs followed at most (one per program in the PAT).
const MAX_PROGRAMS: usize = 16;
/// Bytes buffered for one PSI section (a section is at most 1024 bytes,
/// 2.4.4.3 / 2.4.4.8; a few more for what follows it in the packet).
const MAX_SECTION_BUF: usize = 4096;
/// Continuity counter slot for a PID not seen yet.
const CC_NONE: u8 = 0xFF;

/// One reassembled PES packet (2.4.3.6).
#[derive(Debug, Clone, PartialEq)]
pub struct Pes {
    pub pid: u16,
    /// stream_type of the PID in the PMT (Table 2-34).
    pub stream_type: u8,
    /// 33-bit PTS at 90 kHz, as carried.
    pub pts: Option<u64>,
    /// 33-bit DTS at 90 kHz; `None` when the PES carries only a PTS (then DTS = PTS).
    pub dts: Option<u64>,
    /// PES payload (the elementary stream bytes after the PES header).
    pub data: Bytes,
    /// H.264 IDR (nal 5) / HEVC IRAP (16..=21) found in Annex B data, or random_access_indicator.
    pub keyframe: bool,
    /// Data was lost on this PID since the previous PES handed out (a
    /// continuity gap, or a PES dropped as damaged): whatever the lost bytes
    /// held is missing before this PES. Decoders that predict across frames
    /// (video) must wait for the next random access point.
    pub after_loss: bool,
}

/// An elementary stream listed by a PMT (2.4.4.8), as the demuxer follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EsInfo {
    pub pid: u16,
    /// stream_type (Table 2-34).
    pub stream_type: u8,
    /// The PID of the PMT that lists it.
    pub pmt_pid: u16,
}

/// An elementary PID from a PMT and the PES being assembled on it.
#[derive(Debug)]
struct Stream {
    pid: u16,
    stream_type: u8,
    /// The PMT that listed it.
    pmt_pid: u16,
    buf: BytesMut,
    /// A PES is being assembled (its start was seen and nothing was lost since).
    active: bool,
    random_access: bool,
    /// Stream byte offset of the packet that started the PES.
    start_offset: u64,
    /// Index of the packet that started the PES.
    start_packet: u64,
    /// Data was lost since the last PES handed out (see [`Pes::after_loss`]).
    lost: bool,
}

/// Where a packet is in the input, for errors.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    /// Stream byte offset of the packet.
    offset: u64,
    /// Index of the packet among those read (resynchronisation skips bytes,
    /// not packets).
    index: u64,
    packet: &'a [u8],
}

/// A PSI section being assembled on PID 0 or a PMT PID.
#[derive(Debug)]
struct SectionBuf {
    pid: u16,
    buf: Vec<u8>,
    active: bool,
}

/// The demuxer; see the module docs. Feed it with [`Demuxer::push`], and
/// call [`Demuxer::flush`] at the end of the input for the last PES of
/// each PID (a PES with PES_packet_length 0 ends only where the next begins).
#[derive(Debug)]
pub struct Demuxer {
    /// Input not yet parsed: less than a packet, or bytes being resynchronised.
    buf: Vec<u8>,
    /// Stream byte offset of `buf[0]`.
    offset: u64,
    /// Packets read so far.
    packets: u64,
    /// Last continuity_counter per PID (2.4.3.3).
    cc: Vec<u8>,
    pmt_pids: Vec<u16>,
    sections: Vec<SectionBuf>,
    streams: Vec<Stream>,
    continuity_errors: u64,
    dropped_pes: u64,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    pub fn new() -> Self {
        Demuxer {
            buf: Vec::new(),
            offset: 0,
            packets: 0,
            cc: vec![CC_NONE; 0x2000],
            pmt_pids: Vec::new(),
            sections: Vec::new(),
            streams: Vec::new(),
            continuity_errors: 0,
            dropped_pes: 0,
        }
    }

    /// Feed any amount of TS bytes (resynchronises on 0x47 after garbage); completed PES packets are appended to `out`.
    /// All of `data` is always consumed; an error reports the first problem
    /// worth logging in it (lost sync, continuity, a damaged section or PES).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Pes>) -> Result<(), TsError> {
        let mut first_error = None;
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(data);
        let mut pos = 0;
        while buf.len() - pos >= PACKET {
            // A 0x47 starts a packet only if another follows 188 bytes on
            // (when those bytes are here to check), so garbage holding 0x47
            // does not pass for a packet (2.4.3.2: sync_byte).
            let is_sync = |at: usize| {
                buf.get(at) == Some(&SYNC_BYTE)
                    && buf.get(at + PACKET).is_none_or(|&b| b == SYNC_BYTE)
            };
            if !is_sync(pos) {
                let from = pos;
                pos += 1;
                while pos < buf.len() && !is_sync(pos) {
                    pos += 1;
                }
                if first_error.is_none() {
                    first_error = Some(TsError::LostSync {
                        offset: self.offset + from as u64,
                        packet: self.packets,
                        skipped: pos - from,
                        excerpt: Excerpt::new(buf.get(from..pos).unwrap_or_default()),
                    });
                }
                continue;
            }
            if let Some(packet) = buf.get(pos..pos + PACKET) {
                let at = At {
                    offset: self.offset + pos as u64,
                    index: self.packets,
                    packet,
                };
                if let Err(e) = self.packet(at, out) {
                    first_error.get_or_insert(e);
                }
            }
            self.packets += 1;
            pos += PACKET;
        }
        buf.drain(..pos);
        self.offset += pos as u64;
        self.buf = buf;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Completes every PES still being assembled (end of input). PES whose
    /// PES_packet_length says more bytes were due are dropped and counted.
    pub fn flush(&mut self, out: &mut Vec<Pes>) {
        for s in &mut self.streams {
            if s.active && !s.buf.is_empty() && finish_pes(s, out).is_err() {
                self.dropped_pes += 1;
                s.lost = true;
            }
            s.active = false;
            s.buf.clear();
        }
    }

    /// Data was lost before the next input (the transport says so): every
    /// PES in progress is dropped, and the next PES of every PID comes with
    /// [`Pes::after_loss`]. Partial input is dropped too, as the bytes that
    /// follow are not its continuation.
    pub fn discontinuity(&mut self) {
        for s in &mut self.streams {
            if s.active && !s.buf.is_empty() {
                self.dropped_pes += 1;
            }
            s.active = false;
            s.buf.clear();
            s.lost = true;
        }
        for sb in &mut self.sections {
            sb.active = false;
            sb.buf.clear();
        }
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        // The counters jump over the gap; the next packet of each PID starts afresh.
        self.cc.fill(CC_NONE);
    }

    /// Continuity errors seen so far (2.4.3.3): lost or reordered packets.
    pub fn continuity_errors(&self) -> u64 {
        self.continuity_errors
    }

    /// PES packets dropped so far: damaged, truncated, lost data, or over [`MAX_PES`].
    pub fn dropped_pes(&self) -> u64 {
        self.dropped_pes
    }

    /// Transport packets read so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// PMT PIDs in PAT order (the first is the first program's).
    pub fn programs(&self) -> &[u16] {
        &self.pmt_pids
    }

    /// The elementary streams followed, in the order their PMTs list them.
    pub fn streams(&self) -> impl Iterator<Item = EsInfo> + '_ {
        self.streams.iter().map(|s| EsInfo {
            pid: s.pid,
            stream_type: s.stream_type,
            pmt_pid: s.pmt_pid,
        })
    }

    /// One transport packet (2.4.3.2), adaptation field (2.4.3.4) and
    /// continuity check (2.4.3.3), then its payload to PSI or PES assembly.
    fn packet(&mut self, at: At<'_>, out: &mut Vec<Pes>) -> Result<(), TsError> {
        let p = at.packet;
        let (Some(&b1), Some(&b2), Some(&b3)) = (p.get(1), p.get(2), p.get(3)) else {
            return Ok(());
        };
        let pid = u16::from(b1 & 0x1F) << 8 | u16::from(b2);
        let bad = |reason| TsError::BadPacket {
            pid,
            offset: at.offset,
            packet: at.index,
            reason,
            excerpt: Excerpt::new(p),
        };
        if b1 & 0x80 != 0 {
            return Err(bad("transport_error_indicator set; packet skipped"));
        }
        if pid == PID_NULL {
            return Ok(());
        }
        let pusi = b1 & 0x40 != 0;
        let scrambled = b3 & 0xC0 != 0;
        let afc = (b3 >> 4) & 0x03;
        let cc = b3 & 0x0F;
        if afc == 0 {
            return Err(bad(
                "adaptation_field_control 00 is reserved; packet skipped",
            ));
        }
        let has_payload = afc & 0x01 != 0;
        let mut payload_start = 4;
        let mut discontinuity = false;
        let mut random_access = false;
        if afc & 0x02 != 0 {
            let len = usize::from(p.get(4).copied().unwrap_or(0));
            let max = if has_payload { 182 } else { 183 };
            if len > max {
                return Err(bad("adaptation_field_length runs past the packet"));
            }
            if len > 0 {
                let flags = p.get(5).copied().unwrap_or(0);
                discontinuity = flags & 0x80 != 0;
                random_access = flags & 0x40 != 0;
            }
            payload_start = 5 + len;
        }
        // 2.4.3.3: the counter steps by one per packet with payload; one
        // duplicate is allowed; discontinuity_indicator resets the check.
        let mut lost = false;
        let mut result = Ok(());
        if has_payload {
            let slot = self.cc.get_mut(usize::from(pid));
            if let Some(last) = slot {
                if *last != CC_NONE && !discontinuity {
                    if cc == *last {
                        return Ok(());
                    }
                    let expected = (*last + 1) & 0x0F;
                    if cc != expected {
                        lost = true;
                        self.continuity_errors += 1;
                        result = Err(TsError::Continuity {
                            pid,
                            offset: at.offset,
                            packet: at.index,
                            expected,
                            got: cc,
                            excerpt: Excerpt::new(p),
                        });
                    }
                }
                *last = cc;
            }
        }
        if !has_payload || scrambled {
            return result;
        }
        let payload = p.get(payload_start..).unwrap_or(&[]);
        let r = if pid == PID_PAT || self.pmt_pids.contains(&pid) {
            self.section_payload(pid, pusi, payload, at)
        } else if let Some(i) = self.streams.iter().position(|s| s.pid == pid) {
            self.pes_payload(i, pusi, payload, random_access, lost, at, out)
        } else {
            Ok(())
        };
        result.and(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn pes_payload(
        &mut self,
        i: usize,
        pusi: bool,
        payload: &[u8],
        random_access: bool,
        lost: bool,
        at: At<'_>,
        out: &mut Vec<Pes>,
    ) -> Result<(), TsError> {
        let Some(s) = self.streams.get_mut(i) else {
            return Ok(());
        };
        let mut result = Ok(());
        s.lost |= lost;
        if lost && s.active {
            // The PES in progress lost a packet: drop it rather than hand out corrupt data.
            s.active = false;
            s.buf.clear();
            self.dropped_pes += 1;
        }
        if pusi {
            if s.active && !s.buf.is_empty() {
                if let Err(e) = finish_pes(s, out) {
                    self.dropped_pes += 1;
                    s.lost = true;
                    result = Err(e);
                }
            }
            s.buf.clear();
            s.active = true;
            s.random_access = random_access;
            s.start_offset = at.offset;
            s.start_packet = at.index;
        }
        if !s.active {
            return result;
        }
        if s.buf.len() + payload.len() > MAX_PES {
            s.active = false;
            s.buf.clear();
            s.lost = true;
            self.dropped_pes += 1;
            return Err(TsError::PesTooLarge {
                pid: s.pid,
                offset: at.offset,
                packet: at.index,
                limit: MAX_PES,
                excerpt: Excerpt::new(at.packet),
            });
        }
        s.buf.extend_from_slice(payload);
        // A bounded PES is complete once PES_packet_length bytes are in.
        if let Some(&[_, _, _, _, hi, lo]) = s.buf.get(..6) {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len != 0 && s.buf.len() >= 6 + len {
                s.active = false;
                if let Err(e) = finish_pes(s, out) {
                    self.dropped_pes += 1;
                    s.lost = true;
                    result = result.and(Err(e));
                }
                s.buf.clear();
            }
        }
        result
    }

    /// Reassembles PSI sections (2.4.4.1 pointer_field; sections may span
    /// packets and several may share one) on PID 0 and the PMT PIDs.
    fn section_payload(
        &mut self,
        pid: u16,
        pusi: bool,
        payload: &[u8],
        at: At<'_>,
    ) -> Result<(), TsError> {
        let bad = |reason| TsError::BadPsi {
            pid,
            table_id: 0xFF,
            offset: at.offset,
            packet: at.index,
            reason,
            excerpt: Excerpt::new(at.packet),
        };
        let i = match self.sections.iter().position(|s| s.pid == pid) {
            Some(i) => i,
            None => {
                self.sections.push(SectionBuf {
                    pid,
                    buf: Vec::new(),
                    active: false,
                });
                self.sections.len() - 1
            }
        };
        let Some(sb) = self.sections.get_mut(i) else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut sb.buf);
        let mut result = Ok(());
        let mut data = payload;
        let mut finished = Vec::new();
        if pusi {
            let Some((&pointer, rest)) = data.split_first() else {
                sb.buf = buf;
                return Ok(());
            };
            let pointer = usize::from(pointer);
            let Some((tail, next)) = rest.split_at_checked(pointer) else {
                sb.active = false;
                buf.clear();
                sb.buf = buf;
                return Err(bad("pointer_field runs past the packet"));
            };
            if sb.active {
                buf.extend_from_slice(tail);
                take_sections(&mut buf, &mut finished);
            }
            buf.clear();
            sb.active = true;
            data = next;
        } else if !sb.active {
            sb.buf = buf;
            return Ok(());
        }
        if buf.len() + data.len() > MAX_SECTION_BUF {
            sb.active = false;
            buf.clear();
            sb.buf = buf;
            return Err(bad("section longer than 4096 bytes"));
        }
        buf.extend_from_slice(data);
        if !take_sections(&mut buf, &mut finished) {
            sb.active = false;
            buf.clear();
        }
        sb.buf = buf;
        for section in &finished {
            if let Err(e) = self.section(pid, section, at) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// A complete PSI section: the PAT (2.4.4.3) or a PMT (2.4.4.8); `at`
    /// is the packet that completed it.
    fn section(&mut self, pid: u16, s: &[u8], at: At<'_>) -> Result<(), TsError> {
        let table_id = s.first().copied().unwrap_or(0xFF);
        let bad = |reason| TsError::BadPsi {
            pid,
            table_id,
            offset: at.offset,
            packet: at.index,
            reason,
            excerpt: Excerpt::new(s),
        };
        if table_id == 0xFF {
            return Ok(());
        }
        if s.len() < 12 {
            return Err(bad("shorter than the 12-byte minimum"));
        }
        if crc32(s) != 0 {
            return Err(bad("CRC_32 mismatch"));
        }
        // current_next_indicator 0: not applicable yet.
        if s.get(5).is_some_and(|b| b & 0x01 == 0) {
            return Ok(());
        }
        let body = s.get(8..s.len() - 4).unwrap_or(&[]);
        match table_id {
            0x00 if pid == PID_PAT => {
                let mut pmts = Vec::new();
                for e in body.chunks_exact(4) {
                    let program = u16::from_be_bytes([e[0], e[1]]);
                    let pmt = u16::from_be_bytes([e[2], e[3]]) & 0x1FFF;
                    // program_number 0 points at the network PID, not a PMT.
                    if program != 0 && pmts.len() < MAX_PROGRAMS && !pmts.contains(&pmt) {
                        pmts.push(pmt);
                    }
                }
                self.sections
                    .retain(|sb| sb.pid == PID_PAT || pmts.contains(&sb.pid));
                self.streams.retain(|st| pmts.contains(&st.pmt_pid));
                self.pmt_pids = pmts;
                Ok(())
            }
            0x02 if self.pmt_pids.contains(&pid) => {
                let Some(&[_, _, pi_hi, pi_lo]) = body.get(..4) else {
                    return Err(bad("PMT truncated before program_info"));
                };
                let program_info_length = usize::from(u16::from_be_bytes([pi_hi, pi_lo]) & 0x0FFF);
                let mut rest = body
                    .get(4 + program_info_length..)
                    .ok_or_else(|| bad("program_info_length runs past the section"))?;
                let mut listed = Vec::new();
                while let Some(&[stream_type, p_hi, p_lo, i_hi, i_lo]) = rest.get(..5) {
                    let es_pid = u16::from_be_bytes([p_hi, p_lo]) & 0x1FFF;
                    let es_info_length = usize::from(u16::from_be_bytes([i_hi, i_lo]) & 0x0FFF);
                    rest = rest
                        .get(5 + es_info_length..)
                        .ok_or_else(|| bad("ES_info_length runs past the section"))?;
                    listed.push((es_pid, stream_type));
                }
                self.streams
                    .retain(|st| st.pmt_pid != pid || listed.iter().any(|&(p, _)| p == st.pid));
                for (es_pid, stream_type) in listed {
                    if let Some(st) = self.streams.iter_mut().find(|st| st.pid == es_pid) {
                        st.stream_type = stream_type;
                        st.pmt_pid = pid;
                    } else if self.streams.len() < MAX_STREAMS {
                        self.streams.push(Stream {
                            pid: es_pid,
                            stream_type,
                            pmt_pid: pid,
                            buf: BytesMut::new(),
                            active: false,
                            random_access: false,
                            start_offset: 0,
                            start_packet: 0,
                            lost: false,
                        });
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Moves every complete section at the front of `buf` into `out`. Returns
/// false when the rest of `buf` is stuffing (0xFF) or broken, so assembly
/// stops until the next payload_unit_start_indicator.
fn take_sections(buf: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) -> bool {
    loop {
        let Some(&[table_id, hi, lo]) = buf.get(..3) else {
            return true;
        };
        if table_id == 0xFF {
            return false;
        }
        let section_length = usize::from(u16::from_be_bytes([hi, lo]) & 0x0FFF);
        if section_length > 4093 {
            return false;
        }
        let total = 3 + section_length;
        if buf.len() < total {
            return true;
        }
        out.push(buf.drain(..total).collect());
    }
}

/// Parses a complete PES (2.4.3.6, 2.4.3.7) from `s.buf` into `out`.
fn finish_pes(s: &mut Stream, out: &mut Vec<Pes>) -> Result<(), TsError> {
    let raw = s.buf.split().freeze();
    let bad = |reason| TsError::BadPes {
        pid: s.pid,
        offset: s.start_offset,
        packet: s.start_packet,
        reason,
        excerpt: Excerpt::new(&raw),
    };
    let Some(&[0, 0, 1, stream_id, len_hi, len_lo]) = raw.get(..6) else {
        return Err(bad("missing packet_start_code_prefix"));
    };
    let packet_length = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let end = if packet_length == 0 {
        raw.len()
    } else {
        6 + packet_length
    };
    if end > raw.len() {
        return Err(bad("shorter than its PES_packet_length"));
    }
    // Table 2-22: these stream_ids have no PES header extension.
    let plain = matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    );
    let (mut pts, mut dts) = (None, None);
    let start = if plain {
        6
    } else {
        let Some(&[flags1, flags2, header_data_length]) = raw.get(6..9) else {
            return Err(bad("PES header truncated"));
        };
        if flags1 & 0xC0 != 0x80 {
            return Err(bad("PES header does not start with '10'"));
        }
        let start = 9 + usize::from(header_data_length);
        if start > end {
            return Err(bad("PES_header_data_length runs past the packet"));
        }
        let field = |at: usize| -> Option<u64> {
            let b: [u8; 5] = raw.get(at..at + 5)?.try_into().ok()?;
            Some(decode_timestamp(b))
        };
        match flags2 >> 6 {
            0b10 if header_data_length >= 5 => pts = field(9),
            0b11 if header_data_length >= 10 => {
                pts = field(9);
                dts = field(14);
            }
            0b00 => {}
            _ => return Err(bad("PTS_DTS_flags do not match PES_header_data_length")),
        }
        start
    };
    let data = raw.slice(start..end);
    let keyframe = s.random_access || annexb_keyframe(s.stream_type, &data);
    out.push(Pes {
        pid: s.pid,
        stream_type: s.stream_type,
        pts,
        dts,
        data,
        keyframe,
        after_loss: std::mem::take(&mut s.lost),
    });
    Ok(())
}

/// Whether Annex B data (14496-10 Annex B) starts an IDR (H.264 nal 5) or
/// an IRAP picture (HEVC nal 16..=21). The scan stops at the first VCL NAL
/// unit: every slice of a picture has the same type.
pub(crate) fn annexb_keyframe(stream_type: u8, data: &[u8]) -> bool {
    let hevc = match stream_type {
        STREAM_TYPE_H264 => false,
        STREAM_TYPE_HEVC => true,
        _ => return false,
    };
    let mut rest = data;
    while let Some(at) = rest.windows(3).position(|w| w == [0, 0, 1]) {
        let Some(&b) = rest.get(at + 3) else {
            return false;
        };
        if hevc {
            let ty = (b >> 1) & 0x3F;
            if ty <= 31 {
                return (16..=21).contains(&ty);
            }
        } else {
            let ty = b & 0x1F;
            if (1..=5).contains(&ty) {
                return ty == 5;
            }
        }
        rest = rest.get(at + 3..).unwrap_or(&[]);
    }
    false
}

/// Split sizes the fuzz entry picks from: single bytes, around one packet, several packets.
#[cfg(feature = "fuzzing")]
const FUZZ_SPLITS: [usize; 9] = [1, 3, 100, 187, 188, 189, 376, 1316, 5000];

/// Fuzzing entry point. The first byte seeds the splits; the rest is TS.
/// Never panics on input; checks bounded memory after every push, that no
/// PES exceeds [`MAX_PES`] and its timestamps are 33-bit, and that input
/// the demuxer accepted without complaint gives the same PES in any split.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_demux(data: &[u8]) {
    fn check(d: &Demuxer, out: &[Pes]) {
        assert!(d.buf.len() < PACKET, "{} bytes buffered", d.buf.len());
        assert!(d.pmt_pids.len() <= MAX_PROGRAMS);
        assert!(d.sections.len() <= MAX_PROGRAMS + 1);
        assert!(d.sections.iter().all(|s| s.buf.len() <= MAX_SECTION_BUF));
        assert!(d.streams.len() <= MAX_STREAMS);
        assert!(d.streams.iter().all(|s| s.buf.len() <= MAX_PES));
        for p in out {
            assert!(p.data.len() <= MAX_PES, "PES of {} bytes", p.data.len());
            assert!(p.pts.is_none_or(|t| t <= super::TIMESTAMP_MASK));
            assert!(p.dts.is_none_or(|t| t <= super::TIMESTAMP_MASK));
            assert!(p.dts.is_none() || p.pts.is_some(), "DTS without PTS");
        }
    }
    let Some((&seed, ts)) = data.split_first() else {
        return;
    };
    let mut whole = Demuxer::new();
    let mut a = Vec::new();
    let clean = whole.push(ts, &mut a).is_ok();
    check(&whole, &a);
    whole.flush(&mut a);
    check(&whole, &a);

    let mut split = Demuxer::new();
    let mut b = Vec::new();
    let mut split_clean = true;
    for (_, piece) in super::fuzz_pieces(seed, ts, &FUZZ_SPLITS) {
        split_clean &= split.push(piece, &mut b).is_ok();
        check(&split, &b);
    }
    split.flush(&mut b);
    check(&split, &b);
    // Without lost sync every packet boundary is the same in any split (a
    // damaged stream may resynchronise differently when the look-ahead
    // byte has not arrived yet).
    if clean {
        assert!(
            split_clean,
            "the split found errors the whole input had not"
        );
        assert_eq!(a, b, "the split changed the PES");
        assert_eq!(whole.continuity_errors, split.continuity_errors);
        assert_eq!(whole.dropped_pes, split.dropped_pes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, CodecConfig, Frame, Track};
    use crate::ts::Muxer;

    /// A small muxed stream: H.264 with AAC, 10 frames each, keyframe first.
    fn muxed() -> (Vec<u8>, usize) {
        let mut m = Muxer::new();
        let record = vec![
            1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 4, 0x67, 0x42, 0, 0x1E, 1, 0, 2, 0x68, 0xCE,
        ];
        m.set_config(&CodecConfig::Video {
            codec: Codec::H264,
            record: Bytes::from(record),
            params: None,
        })
        .unwrap();
        m.set_config(&CodecConfig::Audio {
            codec: Codec::Aac,
            config: Bytes::from_static(&[0x12, 0x10]),
            params: None,
        })
        .unwrap();
        let mut chunks = Vec::new();
        for i in 0..10u64 {
            let size = 300 + i as usize * 211;
            let mut data = (size as u32 + 1).to_be_bytes().to_vec();
            data.push(if i == 0 { 0x65 } else { 0x41 });
            data.extend(std::iter::repeat_n(0xAB, size));
            m.push(
                &Frame {
                    track: Track::Video,
                    codec: Codec::H264,
                    dts: i * 40,
                    cts: 80,
                    keyframe: i == 0,
                    data: Bytes::from(data),
                },
                &mut chunks,
            )
            .unwrap();
            m.push(
                &Frame {
                    track: Track::Audio,
                    codec: Codec::Aac,
                    dts: i * 40 + 3,
                    cts: 0,
                    keyframe: true,
                    data: Bytes::from(vec![0x5A; 100 + i as usize]),
                },
                &mut chunks,
            )
            .unwrap();
        }
        let ts: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        (ts, 20)
    }

    fn demux_all(d: &mut Demuxer, data: &[u8]) -> (Vec<Pes>, bool) {
        let mut out = Vec::new();
        let ok = d.push(data, &mut out).is_ok();
        d.flush(&mut out);
        (out, ok)
    }

    #[test]
    fn reads_back_what_the_muxer_wrote() {
        let (ts, n) = muxed();
        let mut d = Demuxer::new();
        let (pes, ok) = demux_all(&mut d, &ts);
        assert!(ok);
        assert_eq!(pes.len(), n);
        assert_eq!(d.continuity_errors(), 0);
        let video: Vec<&Pes> = pes.iter().filter(|p| p.pid == 0x100).collect();
        assert_eq!(video.len(), 10);
        assert!(video[0].keyframe && !video[1].keyframe);
        assert_eq!(video[0].stream_type, 0x1B);
        assert_eq!(video[3].dts, Some((1400 + 120) * 90));
        assert_eq!(video[3].pts, Some((1400 + 200) * 90));
        let audio: Vec<&Pes> = pes.iter().filter(|p| p.pid == 0x101).collect();
        assert_eq!(audio[2].pts, Some((1400 + 83) * 90));
        assert_eq!(audio[2].dts, None);
        assert_eq!(audio[2].data.len(), 7 + 102);
        assert_eq!(&audio[2].data[..2], &[0xFF, 0xF1]);
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let (ts, n) = muxed();
        for step in [1, 7, 187, 188, 189, 1316, 5000] {
            let mut d = Demuxer::new();
            let mut out = Vec::new();
            for piece in ts.chunks(step) {
                d.push(piece, &mut out).unwrap();
            }
            d.flush(&mut out);
            assert_eq!(out.len(), n, "step {step}");
        }
    }

    #[test]
    fn resynchronises_after_garbage() {
        let (ts, n) = muxed();
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        // Garbage (with a stray sync byte) before the stream and in the middle.
        let mut garbage = vec![0x47, 1, 2, 3];
        garbage.extend(std::iter::repeat_n(0x47, 3));
        garbage.extend(std::iter::repeat_n(0x00, 100));
        let mut input = garbage.clone();
        input.extend_from_slice(&ts[..188 * 20]);
        input.extend_from_slice(&garbage);
        input.extend_from_slice(&ts[188 * 20..]);
        let e = d.push(&input, &mut out).unwrap_err();
        assert!(matches!(e, TsError::LostSync { offset: 0, .. }), "{e}");
        d.flush(&mut out);
        // Garbage between whole packets loses nothing, even when it starts
        // with a sync byte.
        assert_eq!(d.continuity_errors(), 0);
        assert_eq!(out.len(), n);
    }

    /// Errors name the PID, the packet's index and offset, and show the
    /// packet's first bytes (the skipped bytes, for lost sync).
    #[test]
    fn errors_name_the_pid_packet_offset_and_bytes() {
        let (ts, _) = muxed();
        let mut input = ts.clone();
        // transport_error_indicator on packet 5.
        input[5 * 188 + 1] |= 0x80;
        let mut d = Demuxer::new();
        let e = d.push(&input, &mut Vec::new()).unwrap_err();
        let TsError::BadPacket {
            pid,
            offset,
            packet,
            ref excerpt,
            ..
        } = e
        else {
            panic!("{e}");
        };
        let pid_of = |p: &[u8]| u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
        assert_eq!((pid, packet, offset), (pid_of(&ts[5 * 188..]), 5, 940));
        assert_eq!(excerpt.bytes(), &input[940..940 + 64]);
        assert!(
            e.to_string().starts_with(&format!(
                "bad TS packet: transport_error_indicator set; packet skipped, at PID {pid:#06x}, \
                 packet 5, offset 940: 47 {:02x} {:02x} ",
                input[941], input[942]
            )) && e.to_string().ends_with(" …"),
            "{e}"
        );

        // Lost sync shows the garbage; packets after it keep their index
        // and their offset counts the garbage.
        let mut input = vec![1, 2, 3];
        input.extend_from_slice(&ts[..188 * 4]);
        input[3 + 3 * 188 + 1] |= 0x80;
        let mut d = Demuxer::new();
        let e = d.push(&input[..3 + 3 * 188], &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lost TS sync: skipped 3 bytes to the next 0x47, at packet 0, offset 0: 01 02 03"
        );
        let e = d.push(&input[3 + 3 * 188..], &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                e,
                TsError::BadPacket {
                    packet: 3,
                    offset: 567,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn lost_packets_count_as_continuity_errors_and_drop_the_pes() {
        let (ts, n) = muxed();
        let mut d = Demuxer::new();
        let mut input = ts.clone();
        // Remove one packet from the middle of a large video PES.
        let video_packets: Vec<usize> = (0..ts.len() / 188)
            .filter(|i| {
                let p = &ts[i * 188..];
                (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == 0x100 && p[1] & 0x40 == 0
            })
            .collect();
        let cut = video_packets[video_packets.len() / 2] * 188;
        input.drain(cut..cut + 188);
        let (pes, ok) = demux_all(&mut d, &input);
        assert!(!ok);
        assert_eq!(d.continuity_errors(), 1);
        assert_eq!(d.dropped_pes(), 1);
        assert_eq!(pes.len(), n - 1);
    }

    #[test]
    fn the_pes_after_a_loss_says_so() {
        let (ts, n) = muxed();
        let video_packets: Vec<usize> = (0..ts.len() / 188)
            .filter(|i| {
                let p = &ts[i * 188..];
                (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == 0x100 && p[1] & 0x40 == 0
            })
            .collect();
        let cut = video_packets[video_packets.len() / 2] * 188;
        let mut input = ts.clone();
        input.drain(cut..cut + 188);
        let mut d = Demuxer::new();
        let (pes, _) = demux_all(&mut d, &input);
        let flagged: Vec<&Pes> = pes.iter().filter(|p| p.after_loss).collect();
        assert_eq!(flagged.len(), 1, "only the next PES of that PID");
        assert_eq!(flagged[0].pid, 0x100);
        assert!(pes.len() == n - 1);

        // A gap the transport reports: what was in progress is dropped and
        // the next PES of every PID is flagged.
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        let half = ts.len() / 2 + 100;
        let _ = d.push(&ts[..half], &mut out);
        let before = out.len();
        d.discontinuity();
        let _ = d.push(&ts[half..], &mut out);
        d.flush(&mut out);
        let after = out.get(before..).unwrap_or_default();
        for pid in [0x100, 0x101] {
            let first = after.iter().find(|p| p.pid == pid).unwrap();
            assert!(first.after_loss, "PID {pid:#x}");
        }
        assert_eq!(after.iter().filter(|p| p.after_loss).count(), 2);
        assert_eq!(d.programs(), &[0x1000]);
        assert_eq!(d.streams().count(), 2);
    }

    #[test]
    fn truncations_and_noise_never_panic() {
        let (ts, _) = muxed();
        for cut in (0..ts.len()).step_by(61) {
            let mut d = Demuxer::new();
            let _ = demux_all(&mut d, &ts[..cut]);
            let mut d = Demuxer::new();
            let _ = demux_all(&mut d, &ts[cut..]);
        }
        // Deterministic pseudo-random bytes, and the stream with bytes flipped.
        let mut x = 0x1234_5678_u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..200 {
            let noise: Vec<u8> = (0..next() % 3000).map(|_| next() as u8).collect();
            let mut d = Demuxer::new();
            let _ = demux_all(&mut d, &noise);
            let mut damaged = ts.clone();
            for _ in 0..10 {
                let i = next() as usize % damaged.len();
                damaged[i] = next() as u8;
            }
            let mut d = Demuxer::new();
            let _ = demux_all(&mut d, &damaged);
            // Sync bytes everywhere: every packet header is noise.
            let sync: Vec<u8> = (0..188 * 5)
                .map(|i| if i % 188 == 0 { 0x47 } else { next() as u8 })
                .collect();
            let mut d = Demuxer::new();
            let _ = demux_all(&mut d, &sync);
        }
    }

    #[test]
    fn oversized_pes_is_dropped() {
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        // PAT and PMT for one H.264 stream on 0x100, from the muxer.
        let (ts, _) = muxed();
        d.push(&ts[..376], &mut out).unwrap();
        let mut cc = 0u8;
        let mut packet = |pusi: bool| {
            let mut p = vec![0x47, if pusi { 0x41 } else { 0x01 }, 0x00, 0x10 | cc];
            cc = (cc + 1) & 0x0F;
            if pusi {
                p.extend_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0, 0]);
            }
            p.resize(188, 0xAB);
            p
        };
        let mut input = packet(true);
        for _ in 0..(MAX_PES / 184 + 1) {
            input.extend(packet(false));
        }
        let e = d.push(&input, &mut out).unwrap_err();
        assert!(matches!(e, TsError::PesTooLarge { pid: 0x100, .. }), "{e}");
        d.flush(&mut out);
        assert!(out.is_empty());
        assert_eq!(d.dropped_pes(), 1);
    }

    #[test]
    fn finds_idr_in_annex_b() {
        assert!(annexb_keyframe(
            0x1B,
            &[0, 0, 0, 1, 9, 0xF0, 0, 0, 1, 0x67, 0, 0, 1, 0x65]
        ));
        assert!(!annexb_keyframe(0x1B, &[0, 0, 1, 0x41, 0, 0, 1, 0x65]));
        assert!(annexb_keyframe(0x24, &[0, 0, 1, 0x46, 1, 0, 0, 1, 0x26, 1]));
        assert!(!annexb_keyframe(0x24, &[0, 0, 1, 0x02, 1]));
        assert!(!annexb_keyframe(0x0F, &[0, 0, 1, 0x65]));
        assert!(!annexb_keyframe(0x1B, &[0, 0, 1]));
    }
}
