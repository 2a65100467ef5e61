//! Reads FFmpeg's MPEG-TS output back into relay chunks: bytes from a
//! rendition's pipe in (any split), [`TsChunk`]s out that follow the same
//! rules as the ones our own muxer writes, so the ring and the players
//! cannot tell a rendition from the source. Sans-IO and bounded; a panic is
//! a bug, never bad input. The chunk rules and what FFmpeg writes:
//! docs/ts.md.

use bytes::{BufMut, BytesMut};

use crate::ts::psi::{pat_programs, pmt_entries, section_body, PmtEntry};

use crate::ts::{
    decode_timestamp, TsChunk, CHUNK, PACKET, PID_NULL, PID_PAT, STREAM_TYPE_AAC_ADTS,
    STREAM_TYPE_H264, STREAM_TYPE_HEVC, SYNC_BYTE, TIMESTAMP_MASK,
};

/// PAT/PMT repetition in streams without video: 100 ms at 90 kHz, as the muxer does.
const AUDIO_ONLY_PSI_INTERVAL_90K: i64 = 9_000;
/// In streams without video and without PTS: audio PES starts between join points.
const AUDIO_ONLY_PSI_INTERVAL_PES: u32 = 16;
/// Packets a cached PAT or PMT may span: PAT, PMT and the first media packet fit one chunk.
const MAX_PSI_PACKETS: usize = 3;
/// FFmpeg's PSI packets held back until the next media packet.
const MAX_PENDING: usize = 2 * MAX_PSI_PACKETS;
/// Elementary streams followed from the PMT.
const MAX_STREAMS: usize = 16;
/// PIDs we keep a continuity counter for (PID 0 and the PMT PIDs seen).
const MAX_PSI_PIDS: usize = 8;
/// A section is at most 1024 bytes (2.4.4.3, 2.4.4.8: section_length <= 1021).
const MAX_SECTION: usize = 1024;
/// Input is copied to the parse buffer in pieces of at most this many bytes.
const PIECE: usize = 64 * PACKET;
/// stream_types taken for audio (Table 2-34): MPEG-1/2 audio, ADTS AAC,
/// LATM AAC, private data (FFmpeg's Opus), AC-3.
const AUDIO_STREAM_TYPES: [u8; 6] = [0x03, 0x04, STREAM_TYPE_AAC_ADTS, 0x11, 0x06, 0x81];

/// What the repacker has seen; counters only grow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepackStats {
    /// Transport packets read (after resynchronisation).
    pub packets_in: u64,
    /// PES starts on the video PID.
    pub video_frames: u64,
    /// Video PES starts that are random access points.
    pub keyframes: u64,
    /// PES starts on the audio PID.
    pub audio_frames: u64,
    /// Bytes skipped to find the sync byte again.
    pub bytes_skipped: u64,
    /// Packets not passed on: before the first keyframe, null, SDT and
    /// unlisted PIDs, damaged headers, and FFmpeg's PAT/PMT replaced by ours.
    pub packets_dropped: u64,
    /// PAT/PMT packets we added in front of keyframes.
    pub psi_injected: u64,
    /// DTS (PTS without DTS) of the latest video PES, or audio PES when the
    /// stream has no video; 90 kHz, unwrapped across 2^33, never decreasing.
    pub last_dts_90k: Option<u64>,
    /// The PMT lists a video stream.
    pub has_video: bool,
}

/// An elementary stream the PMT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Es {
    pid: u16,
    stream_type: u8,
}

/// A PSI table on one PID: the section being assembled and the packets of
/// the last good one, re-emitted before keyframes.
#[derive(Debug, Default)]
struct Table {
    /// Packets of the section being assembled; the first has PUSI.
    group: Vec<[u8; PACKET]>,
    section: Vec<u8>,
    active: bool,
    cached: Vec<[u8; PACKET]>,
}

impl Table {
    /// Adds a packet's payload (2.4.4.1: pointer_field on PUSI); returns the
    /// first section that starts in `group` once it is complete. Sections
    /// longer than [`MAX_PSI_PACKETS`] packets are not followed.
    fn assemble(&mut self, p: &[u8; PACKET], pusi: bool, payload: &[u8]) -> Option<Vec<u8>> {
        if pusi {
            self.group.clear();
            self.section.clear();
            self.active = false;
            let (&pointer, rest) = payload.split_first()?;
            self.section
                .extend_from_slice(rest.get(usize::from(pointer)..)?);
            self.group.push(*p);
            self.active = true;
        } else {
            if !self.active {
                return None;
            }
            if self.group.len() >= MAX_PSI_PACKETS {
                self.active = false;
                return None;
            }
            self.group.push(*p);
            self.section.extend_from_slice(payload);
        }
        let &[table_id, hi, lo] = self.section.get(..3)? else {
            return None;
        };
        let len = 3 + usize::from(u16::from_be_bytes([hi, lo]) & 0x0FFF);
        if table_id == 0xFF || len > MAX_SECTION {
            self.active = false;
            return None;
        }
        let s = self.section.get(..len)?.to_vec();
        self.active = false;
        Some(s)
    }
}

/// Places wrapping 33-bit timestamps on a 64-bit timeline: each one lands
/// nearest the previous (so a step back is a step back, not 26 hours on).
#[derive(Debug, Default)]
struct Timeline {
    /// The latest timestamp, unwrapped (may step back, even below 0).
    last: Option<i64>,
    /// The largest unwrapped timestamp, floored at 0.
    max: Option<u64>,
}

impl Timeline {
    fn update(&mut self, raw: u64) -> i64 {
        const WRAP: i64 = 1 << 33;
        let raw = (raw & TIMESTAMP_MASK) as i64;
        let t = match self.last {
            None => raw,
            Some(last) => {
                let mut step = (raw - last.rem_euclid(WRAP)).rem_euclid(WRAP);
                if step >= WRAP / 2 {
                    step -= WRAP;
                }
                last.saturating_add(step)
            }
        };
        self.last = Some(t);
        let t0 = t.max(0) as u64;
        self.max = Some(self.max.map_or(t0, |m| m.max(t0)));
        t
    }
}

/// The fields of a transport packet header (2.4.3.2) and adaptation field
/// (2.4.3.4) the repacker needs.
struct Header<'a> {
    pid: u16,
    pusi: bool,
    random_access: bool,
    scrambled: bool,
    /// `None` when adaptation_field_control says there is no payload.
    payload: Option<&'a [u8]>,
}

impl<'a> Header<'a> {
    /// `None` for packets no decoder would use: transport_error_indicator,
    /// reserved adaptation_field_control 00, an adaptation field past the end.
    fn parse(p: &'a [u8; PACKET]) -> Option<Self> {
        if p[1] & 0x80 != 0 {
            return None;
        }
        let afc = (p[3] >> 4) & 0x03;
        if afc == 0 {
            return None;
        }
        let mut start = 4;
        let mut random_access = false;
        if afc & 0x02 != 0 {
            let len = usize::from(p[4]);
            if len > PACKET - 5 {
                return None;
            }
            random_access = len > 0 && p[5] & 0x40 != 0;
            start = 5 + len;
        }
        Some(Header {
            pid: u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]),
            pusi: p[1] & 0x40 != 0,
            random_access,
            scrambled: p[3] & 0xC0 != 0,
            payload: (afc & 0x01 != 0).then(|| p.get(start..).unwrap_or(&[])),
        })
    }
}

/// The start of a PES (2.4.3.6) as far as the first packet holds it.
struct PesStart<'a> {
    /// DTS, or PTS when there is no DTS (2.4.3.7); 33 bits.
    ts: Option<u64>,
    /// Elementary stream bytes after the header, within this packet.
    es: &'a [u8],
}

fn pes_start(payload: &[u8]) -> PesStart<'_> {
    let none = PesStart { ts: None, es: &[] };
    let Some(&[0, 0, 1, stream_id, _, _]) = payload.get(..6) else {
        return none;
    };
    // Table 2-22: these stream_ids have no PES header extension.
    if matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    ) {
        return PesStart {
            ts: None,
            es: payload.get(6..).unwrap_or(&[]),
        };
    }
    let Some(&[flags1, flags2, header_data_length]) = payload.get(6..9) else {
        return none;
    };
    if flags1 & 0xC0 != 0x80 {
        return none;
    }
    let field = |at: usize| -> Option<u64> {
        let b: [u8; 5] = payload.get(at..at + 5)?.try_into().ok()?;
        Some(decode_timestamp(b))
    };
    let ts = match flags2 >> 6 {
        0b10 if header_data_length >= 5 => field(9),
        0b11 if header_data_length >= 10 => field(14),
        _ => None,
    };
    PesStart {
        ts,
        es: payload
            .get(9 + usize::from(header_data_length)..)
            .unwrap_or(&[]),
    }
}

/// FFmpeg's MPEG-TS in, relay chunks out (rules in docs/ts.md). Feed it with
/// [`Repacker::push`]; [`Repacker::flush`] hands out the chunk being filled.
#[derive(Debug)]
pub struct Repacker {
    /// Input not parsed yet: part of a packet, or bytes waiting to confirm sync.
    buf: Vec<u8>,
    /// The last packet started with the sync byte; if not, a 0x47 must be
    /// followed by another 188 bytes on before it counts.
    synced: bool,
    pat: Table,
    pmt: Table,
    /// program_number and PMT PID of the program followed (the PAT's first).
    program: Option<(u16, u16)>,
    /// Elementary PIDs of the PMT, and its PCR PID; all passed on.
    streams: Vec<Es>,
    video: Option<Es>,
    audio: Option<Es>,
    /// A join point has been emitted since the stream (or its PIDs) began.
    started: bool,
    chunk: BytesMut,
    chunk_keyframe: bool,
    chunk_dts: u64,
    /// FFmpeg's PAT/PMT packets, passed on before the next media packet
    /// unless a keyframe replaces them.
    pending: Vec<[u8; PACKET]>,
    /// Our continuity_counter for each PSI PID: (pid, next).
    cc: Vec<(u16, u8)>,
    clock: Timeline,
    /// Audio-only streams: unwrapped PTS of the last join point.
    last_psi_90k: Option<i64>,
    pes_since_psi: u32,
    stats: RepackStats,
}

impl Default for Repacker {
    fn default() -> Self {
        Self::new()
    }
}

impl Repacker {
    pub fn new() -> Self {
        Repacker {
            buf: Vec::new(),
            synced: true,
            pat: Table::default(),
            pmt: Table::default(),
            program: None,
            streams: Vec::new(),
            video: None,
            audio: None,
            started: false,
            chunk: BytesMut::new(),
            chunk_keyframe: false,
            chunk_dts: 0,
            pending: Vec::new(),
            cc: Vec::new(),
            clock: Timeline::default(),
            last_psi_90k: None,
            pes_since_psi: 0,
            stats: RepackStats::default(),
        }
    }

    /// Bytes from FFmpeg, split anywhere. Completed chunks are appended to
    /// `out`. The output does not depend on how the input is split.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<TsChunk>) {
        while !data.is_empty() {
            let n = data.len().min(PIECE);
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.parse(out);
        }
    }

    /// Emits the partially filled chunk, if any. Call at the end of the
    /// input; calling it mid-stream is safe too (a short chunk, less delay).
    pub fn flush(&mut self, out: &mut Vec<TsChunk>) {
        self.close_chunk(out);
    }

    pub fn stats(&self) -> &RepackStats {
        &self.stats
    }

    /// Splits `buf` into packets. In sync, a packet is taken when it starts
    /// with 0x47 (waiting for the next one would delay the last packet of
    /// every pipe write); after a miss, only a 0x47 with another 188 bytes
    /// on restores sync.
    fn parse(&mut self, out: &mut Vec<TsChunk>) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        loop {
            let rest = buf.get(pos..).unwrap_or(&[]);
            if self.synced {
                let Some(p) = rest.first_chunk::<PACKET>() else {
                    break;
                };
                if p[0] == SYNC_BYTE {
                    self.packet(p, out);
                    pos += PACKET;
                    continue;
                }
                self.synced = false;
            }
            // Out of sync: skip every byte that cannot start a packet.
            let (skip, wait) = match rest.iter().position(|&b| b == SYNC_BYTE) {
                None => (rest.len(), true),
                Some(at) => match rest.get(at + PACKET) {
                    Some(&SYNC_BYTE) => {
                        self.synced = true;
                        (at, false)
                    }
                    Some(_) => (at + 1, false),
                    None => (at, true), // wait for the byte that confirms it
                },
            };
            self.stats.bytes_skipped += skip as u64;
            pos += skip;
            if wait {
                break;
            }
        }
        buf.drain(..pos.min(buf.len()));
        self.buf = buf;
    }

    fn drop_packet(&mut self) {
        self.stats.packets_dropped += 1;
    }

    fn packet(&mut self, p: &[u8; PACKET], out: &mut Vec<TsChunk>) {
        self.stats.packets_in += 1;
        let Some(h) = Header::parse(p) else {
            return self.drop_packet();
        };
        if h.pid == PID_PAT || self.program.is_some_and(|(_, pid)| pid == h.pid) {
            return self.psi_packet(&h, p, out);
        }
        let Some(es) = self.streams.iter().find(|s| s.pid == h.pid).copied() else {
            return self.drop_packet();
        };
        let mut join = false;
        if let Some(payload) = h.payload.filter(|_| h.pusi) {
            let pes = pes_start(payload);
            if self.video == Some(es) {
                self.stats.video_frames += 1;
                if let Some(ts) = pes.ts {
                    self.clock.update(ts);
                }
                if h.random_access || crate::ts::demux::annexb_keyframe(es.stream_type, pes.es) {
                    self.stats.keyframes += 1;
                    join = true;
                }
            } else if self.audio == Some(es) {
                self.stats.audio_frames += 1;
                if self.video.is_none() {
                    let now = pes.ts.map(|ts| self.clock.update(ts));
                    self.pes_since_psi += 1;
                    join = self.audio_join_due(now);
                    if join {
                        self.last_psi_90k = now;
                        self.pes_since_psi = 0;
                    }
                }
            }
            self.stats.last_dts_90k = self.clock.max;
        }
        if join && !self.pat.cached.is_empty() && !self.pmt.cached.is_empty() {
            self.open_keyframe_chunk(out);
        } else if !self.started {
            return self.drop_packet();
        } else {
            self.flush_pending(out);
        }
        self.put(p, out);
    }

    /// Without video, whether this audio PES start becomes a join point.
    fn audio_join_due(&self, now: Option<i64>) -> bool {
        if !self.started {
            return true;
        }
        match (now, self.last_psi_90k) {
            (Some(now), Some(last)) => now < last || now - last >= AUDIO_ONLY_PSI_INTERVAL_90K,
            (Some(_), None) => true,
            (None, _) => self.pes_since_psi >= AUDIO_ONLY_PSI_INTERVAL_PES,
        }
    }

    /// A PAT or PMT packet: parsed, then held back until the next media
    /// packet (or dropped before the first keyframe).
    fn psi_packet(&mut self, h: &Header<'_>, p: &[u8; PACKET], out: &mut Vec<TsChunk>) {
        let Some(payload) = h.payload.filter(|_| !h.scrambled) else {
            return self.drop_packet();
        };
        if h.pid == PID_PAT {
            if let Some(s) = self.pat.assemble(p, h.pusi, payload) {
                self.on_pat(&s, out);
            }
        } else if let Some(s) = self.pmt.assemble(p, h.pusi, payload) {
            self.on_pmt(&s, out);
        }
        if !self.started {
            return self.drop_packet();
        }
        if self.pending.len() >= MAX_PENDING {
            self.flush_pending(out);
        }
        self.pending.push(*p);
    }

    /// The program association section (2.4.4.3): follows the program it
    /// follows already if still listed, else the first one.
    fn on_pat(&mut self, s: &[u8], out: &mut Vec<TsChunk>) {
        let Some(body) = section_body(s, 0x00) else {
            return;
        };
        let mut programs = pat_programs(body);
        let first = programs.next();
        let program = match self.program {
            Some(current) if first == Some(current) || programs.any(|p| p == current) => current,
            _ => match first {
                Some(p) => p,
                None => return,
            },
        };
        self.pat.cached.clone_from(&self.pat.group);
        if self.program != Some(program) {
            self.program = Some(program);
            self.pmt = Table::default();
            self.set_streams(Vec::new(), None, None, out);
        }
    }

    /// The program map section (2.4.4.8) of the program followed.
    fn on_pmt(&mut self, s: &[u8], out: &mut Vec<TsChunk>) {
        let Some((number, pmt_pid)) = self.program else {
            return;
        };
        let Some(body) = section_body(s, 0x02) else {
            return;
        };
        if s.get(3..5) != Some(&number.to_be_bytes()[..]) {
            return;
        }
        let Some((pcr_pid, entries)) = pmt_entries(body) else {
            return;
        };
        let usable = |pid: u16| pid != PID_PAT && pid != PID_NULL && pid != pmt_pid;
        let mut streams: Vec<Es> = Vec::new();
        for PmtEntry { stream_type, pid } in entries {
            if usable(pid) && streams.len() < MAX_STREAMS && !streams.iter().any(|e| e.pid == pid) {
                streams.push(Es { pid, stream_type });
            }
        }
        let video = streams
            .iter()
            .find(|e| matches!(e.stream_type, STREAM_TYPE_H264 | STREAM_TYPE_HEVC))
            .copied();
        let audio = streams
            .iter()
            .find(|e| AUDIO_STREAM_TYPES.contains(&e.stream_type))
            .copied();
        // The PCR may sit on a PID of its own; players need it.
        if usable(pcr_pid) && !streams.iter().any(|e| e.pid == pcr_pid) {
            streams.push(Es {
                pid: pcr_pid,
                stream_type: 0,
            });
        }
        self.pmt.cached.clone_from(&self.pmt.group);
        self.set_streams(streams, video, audio, out);
    }

    /// New elementary streams. When the PID players join on changes, the
    /// stream starts over at the next keyframe (or audio PES).
    fn set_streams(
        &mut self,
        streams: Vec<Es>,
        video: Option<Es>,
        audio: Option<Es>,
        out: &mut Vec<TsChunk>,
    ) {
        let join_pid = |v: Option<Es>, a: Option<Es>| v.or(a).map(|e| e.pid);
        if join_pid(video, audio) != join_pid(self.video, self.audio)
            || video.is_some() != self.video.is_some()
        {
            self.started = false;
            self.close_chunk(out);
        }
        self.streams = streams;
        self.video = video;
        self.audio = audio;
        self.stats.has_video = video.is_some();
    }

    /// Closes the chunk being filled and opens a keyframe chunk with the
    /// cached PAT and PMT; FFmpeg's waiting copies are dropped for them.
    fn open_keyframe_chunk(&mut self, out: &mut Vec<TsChunk>) {
        self.close_chunk(out);
        self.stats.packets_dropped += self.pending.len() as u64;
        self.pending.clear();
        let pat = std::mem::take(&mut self.pat.cached);
        let pmt = std::mem::take(&mut self.pmt.cached);
        for p in pat.iter().chain(&pmt) {
            self.put_psi(p, out);
        }
        self.stats.psi_injected += (pat.len() + pmt.len()) as u64;
        self.pat.cached = pat;
        self.pmt.cached = pmt;
        self.chunk_keyframe = true;
        self.started = true;
    }

    fn flush_pending(&mut self, out: &mut Vec<TsChunk>) {
        let pending = std::mem::take(&mut self.pending);
        for p in &pending {
            self.put_psi(p, out);
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// A PSI packet with our own continuity_counter (2.4.3.3).
    fn put_psi(&mut self, p: &[u8; PACKET], out: &mut Vec<TsChunk>) {
        let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
        let i = match self.cc.iter().position(|&(q, _)| q == pid) {
            Some(i) => i,
            None => {
                if self.cc.len() >= MAX_PSI_PIDS {
                    self.cc.remove(0);
                }
                self.cc.push((pid, 0));
                self.cc.len() - 1
            }
        };
        let mut q = *p;
        if let Some((_, next)) = self.cc.get_mut(i) {
            q[3] = (q[3] & 0xF0) | *next;
            *next = (*next + 1) & 0x0F;
        }
        self.put(&q, out);
    }

    fn put(&mut self, p: &[u8; PACKET], out: &mut Vec<TsChunk>) {
        if self.chunk.is_empty() {
            self.chunk.reserve(CHUNK);
            self.chunk_keyframe = false;
            self.chunk_dts = self.clock.max.unwrap_or(0);
        }
        self.chunk.put_slice(p);
        if self.chunk.len() >= CHUNK {
            self.close_chunk(out);
        }
    }

    fn close_chunk(&mut self, out: &mut Vec<TsChunk>) {
        if self.chunk.is_empty() {
            return;
        }
        out.push(TsChunk {
            data: self.chunk.split().freeze(),
            keyframe: self.chunk_keyframe,
            dts_90k: self.chunk_dts,
            origin: None,
        });
    }
}

/// Split sizes the fuzz entry picks from: single bytes, around one packet, whole chunks.
#[cfg(feature = "fuzzing")]
const FUZZ_SPLITS: [usize; 10] = [1, 2, 7, 100, 187, 188, 189, 376, 1316, 5000];

/// Fuzzing entry point. The first byte seeds the splits; the rest is TS.
/// Feeds it whole and in pieces (the output must not differ), then checks
/// the chunk rules: whole packets, 1 to 7 of them; the first chunk and
/// every keyframe chunk start PAT, PMT, PES start; PAT/PMT continuity
/// counters step by one; every packet in is accounted for; bounded memory.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_repack(data: &[u8]) {
    let Some((&seed, ts)) = data.split_first() else {
        return;
    };
    let mut whole = Repacker::new();
    let mut a = Vec::new();
    whole.push(ts, &mut a);
    whole.check_bounds();

    let mut split = Repacker::new();
    let mut flushed = Repacker::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for (_, piece) in crate::ts::fuzz_pieces(seed, ts, &FUZZ_SPLITS) {
        split.push(piece, &mut b);
        split.check_bounds();
        flushed.push(piece, &mut c);
        flushed.flush(&mut c);
    }
    assert_eq!(a, b, "the split changed the output");
    assert_eq!(whole.stats, split.stats);
    assert_eq!(whole.stats, flushed.stats);

    whole.flush(&mut a);
    check_chunks(&a);
    check_chunks(&c);
    let out = |v: &[TsChunk]| v.iter().map(|c| c.data.len() / PACKET).sum::<usize>() as u64;
    let s = &whole.stats;
    for (r, v) in [(&whole, &a), (&flushed, &c)] {
        assert_eq!(
            out(v) + r.pending.len() as u64,
            s.packets_in - s.packets_dropped + s.psi_injected,
            "packets unaccounted for"
        );
    }
    // A player joining now gets the chunks from the newest keyframe, as
    // the ring hands them out, rewritten for the live edge.
    if let Some(k) = a.iter().rposition(|c| c.keyframe) {
        crate::ts::join::fuzz_check(&a[k..]);
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Repacker {
    fn check_bounds(&self) {
        assert!(
            self.buf.len() <= PACKET,
            "{} bytes buffered",
            self.buf.len()
        );
        assert!(self.chunk.len() < CHUNK && self.chunk.len() % PACKET == 0);
        assert!(self.pending.len() <= MAX_PENDING);
        assert!(self.pat.cached.len() + self.pmt.cached.len() < CHUNK / PACKET);
        assert!(self.pat.section.len() <= MAX_PSI_PACKETS * PACKET);
        assert!(self.pmt.section.len() <= MAX_PSI_PACKETS * PACKET);
        assert!(self.streams.len() <= MAX_STREAMS + 1 && self.cc.len() <= MAX_PSI_PIDS);
    }
}

#[cfg(any(test, feature = "fuzzing"))]
fn packet_pid(p: &[u8]) -> u16 {
    u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])
}

/// The chunk rules (docs/ts.md), asserted over a whole output.
#[cfg(any(test, feature = "fuzzing"))]
fn check_chunks(chunks: &[TsChunk]) {
    let mut psi_pids = vec![PID_PAT];
    let mut last_dts = 0;
    for (i, c) in chunks.iter().enumerate() {
        let n = c.data.len() / PACKET;
        assert!(
            c.data.len() % PACKET == 0 && (1..=CHUNK / PACKET).contains(&n),
            "chunk {i}: {} bytes",
            c.data.len()
        );
        let packets: Vec<&[u8]> = c.data.chunks(PACKET).collect();
        assert!(packets.iter().all(|p| p[0] == SYNC_BYTE), "chunk {i}: sync");
        assert!(c.dts_90k >= last_dts, "chunk {i}: dts went back");
        assert!(c.origin.is_none());
        last_dts = c.dts_90k;
        assert!(
            i > 0 || c.keyframe,
            "the first chunk is not a keyframe chunk"
        );
        if !c.keyframe {
            continue;
        }
        let pats = packets
            .iter()
            .take_while(|p| packet_pid(p) == PID_PAT)
            .count();
        assert!(pats >= 1 && packets[0][1] & 0x40 != 0, "chunk {i}: no PAT");
        let pmt = packets.get(pats).map(|p| packet_pid(p));
        let pmts = packets[pats..]
            .iter()
            .take_while(|p| Some(packet_pid(p)) == pmt)
            .count();
        assert!(
            pmts >= 1 && packets[pats][1] & 0x40 != 0,
            "chunk {i}: no PMT"
        );
        let first = packets.get(pats + pmts).expect("a media packet");
        assert!(first[1] & 0x40 != 0, "chunk {i}: no PES start");
        if let Some(pmt) = pmt.filter(|p| !psi_pids.contains(p)) {
            psi_pids.push(pmt);
        }
    }
    let mut next: Vec<(u16, u8)> = Vec::new();
    for p in chunks.iter().flat_map(|c| c.data.chunks(PACKET)) {
        let pid = packet_pid(p);
        if !psi_pids.contains(&pid) {
            continue;
        }
        let cc = p[3] & 0x0F;
        match next.iter_mut().find(|(q, _)| *q == pid) {
            Some((_, want)) => {
                assert_eq!(cc, *want, "continuity on PID {pid:#x}");
                *want = (cc + 1) & 0x0F;
            }
            None => next.push((pid, (cc + 1) & 0x0F)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::{Codec, CodecConfig, Frame, Track};
    use crate::ts::{Demuxer, Muxer, Pes, PID_AUDIO, PID_PMT, PID_VIDEO};

    const FFMPEG_X264: &[u8] =
        include_bytes!("../../fuzz/seeds/ts_repack/ffmpeg5.1-x264-320x240-aac.bin");
    const FFMPEG_X264_WRAP: &[u8] = include_bytes!(
        "../../fuzz/seeds/ts_repack/ffmpeg5.1-x264-bframes-aac-across-33bit-wrap.bin"
    );
    const FFMPEG_X265: &[u8] =
        include_bytes!("../../fuzz/seeds/ts_repack/ffmpeg5.1-x265-320x240.bin");
    const FFMPEG_AAC: &[u8] = include_bytes!("../../fuzz/seeds/ts_repack/ffmpeg5.1-aac-only.bin");
    const FFMPEG_MID_GOP: &[u8] =
        include_bytes!("../../fuzz/seeds/ts_repack/ffmpeg5.1-x264-mid-gop-no-rai.bin");
    const GARBAGE: &[u8] = include_bytes!("../../fuzz/seeds/ts_repack/garbage-and-truncation.bin");

    /// The TS in a seed file; its first byte seeds the fuzz splits.
    fn ts_of(seed: &[u8]) -> &[u8] {
        &seed[1..]
    }

    fn packets(data: &[u8]) -> impl Iterator<Item = &[u8]> {
        data.chunks(PACKET)
    }

    fn pusi(p: &[u8]) -> bool {
        p[1] & 0x40 != 0
    }

    fn random_access(p: &[u8]) -> bool {
        p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x40 != 0
    }

    /// Feeds `ts` in pieces of `step` bytes, flushes, checks the chunk rules.
    fn repack(ts: &[u8], step: usize) -> (Vec<TsChunk>, RepackStats) {
        let mut r = Repacker::new();
        let mut out = Vec::new();
        for piece in ts.chunks(step) {
            r.push(piece, &mut out);
            r.check_bounds();
        }
        r.flush(&mut out);
        check_chunks(&out);
        (out, r.stats().clone())
    }

    fn concat(chunks: &[TsChunk]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
    }

    fn demux(ts: &[u8]) -> (Vec<Pes>, u64) {
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        let _ = d.push(ts, &mut out);
        d.flush(&mut out);
        (out, d.continuity_errors())
    }

    /// Packets on the media PIDs, from the first packet of the first video
    /// keyframe (or of anything, without video) on.
    fn media_from_first_keyframe(ts: &[u8], media: &[u16]) -> Vec<Vec<u8>> {
        packets(ts)
            .skip_while(|p| !(packet_pid(p) == media[0] && pusi(p) && random_access(p)))
            .filter(|p| media.contains(&packet_pid(p)))
            .map(<[u8]>::to_vec)
            .collect()
    }

    const FRAME_MS: u64 = 40;

    /// Our muxer's output: 25 fps H.264 with a keyframe every `gop` frames
    /// and/or AAC every 21 ms, the first frame at `start_ms`.
    fn muxed(frames: u64, gop: u64, start_ms: u64, video: bool, audio: bool) -> Vec<u8> {
        let mut m = Muxer::new();
        if video {
            let record = vec![
                1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 4, 0x67, 0x42, 0, 0x1E, 1, 0, 2, 0x68, 0xCE,
            ];
            m.set_config(&CodecConfig::Video {
                codec: Codec::H264,
                record: Bytes::from(record),
                params: None,
            })
            .unwrap();
        }
        if audio {
            m.set_config(&CodecConfig::Audio {
                codec: Codec::Aac,
                config: Bytes::from_static(&[0x12, 0x10]),
                params: None,
            })
            .unwrap();
        }
        let mut chunks = Vec::new();
        for i in 0..frames {
            if video {
                let key = i % gop == 0;
                let size = 100 + (i as usize * 211) % 3000;
                let mut data = (size as u32 + 1).to_be_bytes().to_vec();
                data.push(if key { 0x65 } else { 0x41 });
                data.extend(std::iter::repeat_n(0xAB, size));
                let frame = Frame {
                    track: Track::Video,
                    codec: Codec::H264,
                    dts: start_ms + i * FRAME_MS,
                    cts: 0,
                    keyframe: key,
                    data: Bytes::from(data),
                };
                m.push(&frame, &mut chunks).unwrap();
            }
            if audio {
                for a in 0..2 {
                    let frame = Frame {
                        track: Track::Audio,
                        codec: Codec::Aac,
                        dts: start_ms + i * FRAME_MS + a * 21,
                        cts: 0,
                        keyframe: true,
                        data: Bytes::from(vec![0x5A; 90 + i as usize % 50]),
                    };
                    m.push(&frame, &mut chunks).unwrap();
                }
            }
        }
        concat(&chunks)
    }

    #[test]
    fn keyframe_chunks_start_with_pat_pmt_and_the_keyframe_pes() {
        let ts = muxed(60, 15, 0, true, true);
        let (chunks, stats) = repack(&ts, 1000);
        let keys: Vec<&TsChunk> = chunks.iter().filter(|c| c.keyframe).collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(stats.keyframes, 4);
        assert_eq!(stats.video_frames, 60);
        assert_eq!(stats.audio_frames, 120);
        assert!(stats.has_video);
        for (i, c) in keys.iter().enumerate() {
            let p: Vec<&[u8]> = packets(&c.data).collect();
            let pids: Vec<u16> = p.iter().take(3).map(|p| packet_pid(p)).collect();
            assert_eq!(pids, [PID_PAT, PID_PMT, PID_VIDEO]);
            assert!(pusi(p[2]) && random_access(p[2]));
            assert_eq!(c.dts_90k, (1400 + i as u64 * 15 * FRAME_MS) * 90);
        }
        // Filled to 7 packets except before a keyframe and at the end.
        for w in chunks.windows(2) {
            assert!(w[1].keyframe || w[0].data.len() == CHUNK);
        }
        assert_eq!(stats.last_dts_90k, Some((1400 + 59 * FRAME_MS) * 90));
    }

    #[test]
    fn media_packets_pass_through_in_order_and_byte_identical() {
        let ts = muxed(40, 10, 0, true, true);
        let (chunks, _) = repack(&ts, 188);
        let media = [PID_VIDEO, PID_AUDIO];
        let out = media_from_first_keyframe(&concat(&chunks), &media);
        assert_eq!(out, media_from_first_keyframe(&ts, &media));

        let ts = ts_of(FFMPEG_X264);
        let (chunks, _) = repack(ts, 1316);
        let out = media_from_first_keyframe(&concat(&chunks), &media);
        assert_eq!(out, media_from_first_keyframe(ts, &media));
        assert!(out.len() > 50);
    }

    #[test]
    fn any_split_gives_the_same_chunks() {
        for ts in [
            muxed(30, 10, 0, true, true),
            ts_of(FFMPEG_X264).to_vec(),
            ts_of(GARBAGE).to_vec(),
        ] {
            let (whole, stats) = repack(&ts, usize::MAX);
            for step in [1, 7, 187, 188, 189, 1000, 1316] {
                let (split, s) = repack(&ts, step);
                assert_eq!(split, whole, "step {step}");
                assert_eq!(s, stats, "step {step}");
            }
        }
    }

    #[test]
    fn output_demuxes_to_the_same_pes_without_continuity_errors() {
        for ts in [
            muxed(50, 12, 0, true, true),
            ts_of(FFMPEG_X264).to_vec(),
            ts_of(FFMPEG_X264_WRAP).to_vec(),
            ts_of(FFMPEG_X265).to_vec(),
            ts_of(FFMPEG_AAC).to_vec(),
        ] {
            let (chunks, _) = repack(&ts, 777);
            let (pes_in, errors_in) = demux(&ts);
            let (pes_out, errors_out) = demux(&concat(&chunks));
            assert_eq!(errors_in, 0);
            assert_eq!(errors_out, 0);
            assert!(pes_in.len() >= 3);
            assert_eq!(pes_out, pes_in);
        }
    }

    #[test]
    fn ffmpeg_sets_random_access_on_exactly_the_idr_pes() {
        // Checked on the committed FFmpeg 5.1 captures (libx264, libx265):
        // random_access_indicator is set on the first packet of every
        // IDR/IRAP PES and of no other video PES.
        for (seed, keyframes) in [(FFMPEG_X264, 3), (FFMPEG_X265, 3)] {
            let ts = ts_of(seed);
            let flags: Vec<bool> = packets(ts)
                .filter(|p| packet_pid(p) == PID_VIDEO && pusi(p))
                .map(random_access)
                .collect();
            let (pes, _) = demux(ts);
            let idr: Vec<bool> = pes
                .iter()
                .filter(|p| p.pid == PID_VIDEO)
                .map(|p| crate::ts::demux::annexb_keyframe(p.stream_type, &p.data))
                .collect();
            assert_eq!(flags, idr);
            assert_eq!(idr.iter().filter(|&&k| k).count(), keyframes);
            let (chunks, stats) = repack(ts, 4096);
            assert_eq!(stats.keyframes, keyframes as u64);
            assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), keyframes);
            assert_eq!(stats.video_frames, flags.len() as u64);
        }
    }

    #[test]
    fn ffmpeg_pat_and_pmt_before_a_keyframe_are_replaced_not_duplicated() {
        // FFmpeg writes PAT, PMT right before every keyframe (and every 100 ms).
        let ts = ts_of(FFMPEG_X264);
        let before_key = packets(ts)
            .collect::<Vec<_>>()
            .windows(3)
            .filter(|w| random_access(w[2]) && packet_pid(w[2]) == PID_VIDEO)
            .filter(|w| packet_pid(w[0]) == PID_PAT && packet_pid(w[1]) == PID_PMT)
            .count();
        assert_eq!(before_key, 3);
        let (chunks, stats) = repack(ts, 1316);
        let out = concat(&chunks);
        let count = |data: &[u8], pid| packets(data).filter(|p| packet_pid(p) == pid).count();
        // The first PAT/PMT (before the first keyframe) are dropped, the
        // others are passed or replaced one for one.
        assert_eq!(count(&out, PID_PAT), count(ts, PID_PAT));
        assert_eq!(count(&out, PID_PMT), count(ts, PID_PMT));
        assert_eq!(stats.psi_injected, 6);
        // No chunk ends with the PSI of the keyframe chunk after it.
        for w in chunks.windows(2).filter(|w| w[1].keyframe) {
            let last = w[0].data.len() - PACKET;
            assert!(![PID_PAT, PID_PMT].contains(&packet_pid(&w[0].data[last..])));
        }
        // SDT (0x11) is dropped.
        assert_eq!(count(ts, 0x11), 2);
        assert_eq!(count(&out, 0x11), 0);
    }

    #[test]
    fn pat_and_pmt_are_injected_before_keyframes_that_lack_them() {
        let ts = muxed(45, 15, 0, true, true);
        // Keep only the first PAT and PMT.
        let mut seen = 0;
        let stripped: Vec<u8> = packets(&ts)
            .filter(|p| {
                let psi = [PID_PAT, PID_PMT].contains(&packet_pid(p));
                seen += usize::from(psi);
                !psi || seen <= 2
            })
            .flatten()
            .copied()
            .collect();
        assert!(stripped.len() < ts.len());
        let (chunks, stats) = repack(&stripped, 500);
        assert_eq!(stats.psi_injected, 6);
        assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 3);
        let out = concat(&chunks);
        assert_eq!(demux(&out), demux(&ts));
        assert_eq!(demux(&out).1, 0);
    }

    #[test]
    fn pat_and_pmt_mid_gop_pass_with_our_continuity_counters() {
        let ts = muxed(20, 10, 0, true, false);
        let pat = packets(&ts)
            .find(|p| packet_pid(p) == PID_PAT)
            .unwrap()
            .to_vec();
        let pmt = packets(&ts)
            .find(|p| packet_pid(p) == PID_PMT)
            .unwrap()
            .to_vec();
        // FFmpeg's repetitions: a PAT/PMT pair after every 5th packet, with
        // their own counters (which clash with the muxer's).
        let mut with_psi = Vec::new();
        for (i, p) in packets(&ts).enumerate() {
            with_psi.extend_from_slice(p);
            if i % 5 == 4 {
                with_psi.extend_from_slice(&pat);
                with_psi.extend_from_slice(&pmt);
            }
        }
        let (chunks, stats) = repack(&with_psi, 188);
        let out = concat(&chunks);
        let (pes, errors) = demux(&out);
        assert_eq!(errors, 0);
        assert_eq!(pes, demux(&ts).0);
        assert_eq!(stats.keyframes, 2);
        assert!(packets(&out).filter(|p| packet_pid(p) == PID_PAT).count() > 4);
    }

    #[test]
    fn nothing_is_emitted_before_the_first_keyframe() {
        let ts = muxed(30, 10, 0, true, true);
        // Start in the middle of the first GOP.
        let cut = packets(&ts)
            .position(|p| packet_pid(p) == PID_VIDEO && pusi(p) && !random_access(p))
            .unwrap();
        let tail = &ts[cut * PACKET..];
        let (chunks, stats) = repack(tail, 1316);
        assert!(chunks[0].keyframe);
        assert_eq!(chunks[0].dts_90k, (1400 + 10 * FRAME_MS) * 90);
        assert_eq!(stats.keyframes, 2);
        let first_key = packets(tail)
            .position(|p| packet_pid(p) == PID_VIDEO && random_access(p))
            .unwrap();
        // Everything before it is dropped, and the muxer's PAT/PMT before
        // the second keyframe are replaced by the cached copies.
        assert_eq!(stats.packets_dropped, first_key as u64 + 2);
        // Frames before the first PMT are on a PID not known to be video yet.
        assert_eq!(stats.video_frames, 20);

        // FFmpeg, mid-GOP, random_access_indicator cleared: the IDR is found
        // in the NAL units.
        let (chunks, stats) = repack(ts_of(FFMPEG_MID_GOP), 1316);
        assert_eq!(stats.keyframes, 2);
        assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 2);
        assert!(chunks[0].keyframe);
    }

    #[test]
    fn resynchronises_after_garbage() {
        let ts = muxed(20, 10, 0, true, true);
        let (clean, _) = repack(&ts, usize::MAX);
        let mut dirty = vec![0x00, 0x47, 0x12];
        let mut garbage = 3;
        for (i, p) in packets(&ts).enumerate() {
            dirty.extend_from_slice(p);
            if i % 7 == 3 {
                // Never a 0x47 first: in sync, a 0x47 is taken for a packet.
                let g: Vec<u8> = (0..(i % 150) + 1)
                    .map(|j| {
                        if j % 3 == 1 {
                            SYNC_BYTE
                        } else {
                            j as u8 | 0x80
                        }
                    })
                    .collect();
                garbage += g.len();
                dirty.extend_from_slice(&g);
            }
        }
        for step in [1, 100, 188, usize::MAX] {
            let (chunks, stats) = repack(&dirty, step);
            assert_eq!(stats.bytes_skipped, garbage as u64);
            assert_eq!(chunks, clean);
        }
        // A truncated packet costs that packet and the one it ran into.
        let (chunks, stats) = repack(ts_of(GARBAGE), 1000);
        // Some of its garbage starts with 0x47 and passes for a packet
        // (dropped: no PID it follows); the rest is skipped.
        assert!(stats.bytes_skipped > 100, "{stats:?}");
        assert!(chunks[0].keyframe);
        let (pes, _) = demux(&concat(&chunks));
        assert!(pes.len() > 3);
    }

    #[test]
    fn timeline_unwraps_33_bit_timestamps() {
        const WRAP: u64 = 1 << 33;
        let mut t = Timeline::default();
        assert_eq!(t.update(WRAP - 3000), (WRAP - 3000) as i64);
        assert_eq!(t.update(1000), (WRAP + 1000) as i64);
        // A step back is a step back, but the maximum stays.
        assert_eq!(t.update(WRAP - 100), (WRAP - 100) as i64);
        assert_eq!(t.max, Some(WRAP + 1000));
        assert_eq!(t.update(2 * WRAP + 5), (WRAP + 5) as i64);
        // Backwards across the wrap from the start: below 0, floored.
        let mut t = Timeline::default();
        t.update(100);
        assert_eq!(t.update(WRAP - 100), -100);
        assert_eq!(t.max, Some(100));
    }

    #[test]
    fn dts_is_unwrapped_across_the_33_bit_wrap() {
        // Frames from 2 s before the wrap to 2 s after it.
        let start_ms = (1u64 << 33) / 90 - 1400 - 2000;
        let ts = muxed(100, 25, start_ms, true, true);
        let (chunks, stats) = repack(&ts, 1316);
        let keys: Vec<u64> = chunks
            .iter()
            .filter(|c| c.keyframe)
            .map(|c| c.dts_90k)
            .collect();
        let want: Vec<u64> = (0..4)
            .map(|i| (start_ms + 1400 + i * 25 * FRAME_MS) * 90)
            .collect();
        assert_eq!(keys, want);
        assert!(want[3] > 1 << 33);
        assert_eq!(
            stats.last_dts_90k,
            Some((start_ms + 1400 + 99 * FRAME_MS) * 90)
        );

        // FFmpeg with B-frames, wrapping 0.4 s in.
        let (chunks, stats) = repack(ts_of(FFMPEG_X264_WRAP), 1316);
        let last = stats.last_dts_90k.unwrap();
        assert!(last > 1 << 33 && last < (1 << 33) + 90_000, "{last}");
        assert!(chunks.windows(2).all(|w| w[0].dts_90k <= w[1].dts_90k));
    }

    #[test]
    fn audio_only_streams_join_at_most_every_100_ms() {
        let ts = muxed(50, 1, 0, false, true);
        // The muxer writes PAT/PMT every 100 ms itself; strip all but the
        // first pair so they must be injected.
        let mut seen = 0;
        let stripped: Vec<u8> = packets(&ts)
            .filter(|p| {
                let psi = [PID_PAT, PID_PMT].contains(&packet_pid(p));
                seen += usize::from(psi);
                !psi || seen <= 2
            })
            .flatten()
            .copied()
            .collect();
        for input in [&ts, &stripped] {
            let (chunks, stats) = repack(input, 300);
            assert!(!stats.has_video);
            assert_eq!(stats.audio_frames, 100);
            let keys: Vec<&TsChunk> = chunks.iter().filter(|c| c.keyframe).collect();
            for c in &keys {
                let pids: Vec<u16> = packets(&c.data).take(3).map(packet_pid).collect();
                assert_eq!(pids, [PID_PAT, PID_PMT, PID_AUDIO]);
            }
            for w in keys.windows(2) {
                let gap = w[1].dts_90k - w[0].dts_90k;
                assert!((9_000..9_000 + 21 * 90).contains(&gap), "{gap}");
            }
            // Audio frames 21 and 19 ms apart land 20 ms past each 100 ms
            // mark: a join point every 120 ms over 2 s.
            assert_eq!(keys.len(), 17);
            assert_eq!(demux(&concat(&chunks)), demux(&ts));
        }
        // FFmpeg puts 16 AAC frames in one PES, 371 ms apart: each is a join point.
        let (chunks, stats) = repack(ts_of(FFMPEG_AAC), 188);
        assert_eq!(stats.audio_frames, 3);
        assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 3);
    }

    #[test]
    fn null_and_unlisted_packets_are_dropped() {
        let ts = muxed(10, 10, 0, true, false);
        let mut null = [0xFFu8; PACKET];
        null[..4].copy_from_slice(&[SYNC_BYTE, 0x1F, 0xFF, 0x10]);
        let mut other = null;
        other[1..3].copy_from_slice(&[0x00, 0x42]);
        let mut input = Vec::new();
        for p in packets(&ts) {
            input.extend_from_slice(p);
            input.extend_from_slice(&null);
            input.extend_from_slice(&other);
        }
        let (chunks, stats) = repack(&input, 1316);
        assert_eq!(
            concat(&chunks),
            repack(&ts, 1316)
                .0
                .iter()
                .flat_map(|c| c.data.to_vec())
                .collect::<Vec<u8>>()
        );
        assert_eq!(
            stats.packets_dropped,
            2 * (ts.len() / PACKET) as u64 + 2 // and the muxer's first PAT/PMT
        );
    }

    #[test]
    fn a_restarted_stream_keeps_the_chunk_rules() {
        // Two encodes back to back: counters and timestamps start over.
        let mut ts = muxed(30, 10, 0, true, true);
        ts.extend_from_slice(&muxed(30, 10, 0, true, true));
        let (chunks, stats) = repack(&ts, 1316);
        assert_eq!(stats.keyframes, 6);
        assert_eq!(chunks.iter().filter(|c| c.keyframe).count(), 6);
        assert_eq!(stats.last_dts_90k, Some((1400 + 29 * FRAME_MS) * 90));
    }

    #[test]
    fn flush_emits_the_partial_chunk_and_is_safe_mid_stream() {
        let ts = muxed(10, 5, 0, true, true);
        let mut r = Repacker::new();
        let mut out = Vec::new();
        for piece in ts.chunks(500) {
            r.push(piece, &mut out);
            r.flush(&mut out);
        }
        check_chunks(&out);
        assert_eq!(demux(&concat(&out)), demux(&ts));
        let n = out.len();
        r.flush(&mut out);
        assert_eq!(out.len(), n, "nothing left to flush");
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut rng = 0x2545_F491_u32;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng
        };
        // Random bytes, sometimes with sync bytes at packet distance.
        for len in [0, 1, 187, 188, 189, 400, 3000] {
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for i in (0..len).step_by(PACKET) {
                if next() % 2 == 0 {
                    data[i] = SYNC_BYTE;
                }
            }
            fuzz_repack(&data);
        }
        // Real captures with bytes flipped.
        for seed in [FFMPEG_X264, FFMPEG_X265, FFMPEG_AAC, FFMPEG_X264_WRAP] {
            for _ in 0..20 {
                let mut data = seed.to_vec();
                for _ in 0..(next() % 20) {
                    let at = next() as usize % data.len();
                    data[at] = next() as u8;
                }
                fuzz_repack(&data);
            }
        }
        for seed in [FFMPEG_X264, GARBAGE] {
            for cut in (0..2000).step_by(37) {
                fuzz_repack(&seed[..cut]);
            }
        }
    }
}
