//! Join at the live edge (`join = "live"`): the GOP cache rewritten for one
//! new player, so that it decodes from the cached keyframe yet presents from
//! the live point.
//!
//! A joiner gets everything from the ring's newest keyframe, which is up to
//! a GOP old. Sent as it is, a player that presents by timestamp from its
//! first picture (ffplay, VLC) stays that far behind live for the whole
//! session. [`catch_up`] keeps every video packet (the decoder needs the
//! references) but moves the cached frames' PTS/DTS (and the PCR) into the
//! last few milliseconds before the newest cached frame, by one monotonic
//! map: order, PTS ≥ DTS and the B-frame structure are kept, the frames are
//! decoded at once and the live frames that follow are presented on time.
//! Audio (and any other non-video stream) is not retimed: its cached PES
//! before the live point are dropped (no stale sound), and the ones at the
//! live point are moved in front of the video, so a player that probes only
//! the first few KiB finds the audio too.
//!
//! An adaptation-only packet with the keyframe's PCR leads (demuxers that
//! time PES by the PCR, like GStreamer's, can then time the audio moved
//! ahead), and an IDR keyframe is sent a few times ahead of itself, for
//! players whose probe drops what it reads ([`lead_in_copies`]).
//!
//! Continuity counters stay right: video and PSI packets are all kept in
//! order, the added packets get the counters that lead into the
//! keyframe's own, and every other PID starts at a PES start and runs
//! unbroken into the live chunks that follow. Anything this module
//! cannot parse with certainty (no PAT/PMT, a video PES header it cannot
//! patch) leaves the burst as it was: the player then joins as with
//! `join = "cache"`. Sans-IO; never panics on any input.

use bytes::{Bytes, BytesMut};

use super::psi::{pat_programs, pmt_entries, section_body};
use super::{decode_timestamp, encode_timestamp, TsChunk, CHUNK, PACKET, PID_PAT, SYNC_BYTE};

/// The span the cached frames are moved into, at least: 5 ms at 90 kHz.
const MIN_SQUEEZE_90K: u64 = 450;
/// And at least this much per cached frame (0.1 ms), so that no two
/// frames share a timestamp however long the GOP.
const SQUEEZE_PER_FRAME_90K: u64 = 9;
/// What a player that drops the packets it probes (FFmpeg with
/// `-fflags nobuffer`) reads before it starts decoding, at most: its probe
/// ends once it read `-probesize` bytes (32 KiB in the flags README gives)
/// or `-analyzeduration` of one stream (200 ms: at 30 fps, 7 video packets).
const PROBE_BYTES: usize = 32 * 1024;
const PROBE_SECONDS_90K: u64 = 18_000;
/// Copies of the keyframe sent ahead of it for such a probe, at most.
const MAX_LEAD_IN: usize = 16;
/// 33-bit PTS/DTS/PCR base arithmetic.
const WRAP: i64 = 1 << 33;
/// stream_types (Table 2-34, and common registrations) that are video.
const VIDEO_STREAM_TYPES: [u8; 8] = [0x01, 0x02, 0x10, 0x1B, 0x20, 0x24, 0x33, 0xD1];

/// What [`catch_up`] made of a burst.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    /// The chunks to send instead of the burst.
    pub chunks: Vec<TsChunk>,
    /// Video frames whose timestamps were moved (0: sent as it was).
    pub frames: u32,
    /// Media time the player skips: from the cached keyframe to the start
    /// of the squeezed span, 90 kHz.
    pub skipped_90k: u64,
    /// Stale non-video PES left out.
    pub dropped_pes: u32,
    /// Copies of the keyframe sent ahead of it (see [`lead_in_copies`]).
    pub lead_in: u32,
    /// Why the burst was sent as it was, when it was (a metric label:
    /// `no_video`, `no_psi`, `not_packets`, `pes_header_split`,
    /// `pes_without_pts`; the sender adds `too_large`).
    pub unchanged: Option<&'static str>,
}

impl CatchUp {
    fn unchanged(chunks: Vec<TsChunk>, why: &'static str) -> CatchUp {
        CatchUp {
            chunks,
            frames: 0,
            skipped_90k: 0,
            dropped_pes: 0,
            lead_in: 0,
            unchanged: Some(why),
        }
    }
}

/// One TS packet's header fields this module needs.
#[derive(Debug, Clone, Copy)]
struct Header {
    pid: u16,
    pusi: bool,
    /// Offset of the payload in the packet (188 when there is none).
    payload: usize,
    /// Offset of the 6-byte PCR in the packet.
    pcr: Option<usize>,
}

fn header(p: &[u8]) -> Option<Header> {
    if p.len() != PACKET || p[0] != SYNC_BYTE {
        return None;
    }
    let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
    let pusi = p[1] & 0x40 != 0;
    let afc = (p[3] >> 4) & 0x03;
    let mut payload = 4;
    let mut pcr = None;
    if afc & 0x02 != 0 {
        let len = usize::from(p[4]);
        if 5 + len > PACKET {
            return None;
        }
        if len >= 7 && p[5] & 0x10 != 0 {
            pcr = Some(6);
        }
        payload = 5 + len;
    }
    if afc & 0x01 == 0 {
        payload = PACKET;
    }
    Some(Header {
        pid,
        pusi,
        payload,
        pcr,
    })
}

fn read_pcr_base(p: &[u8], at: usize) -> u64 {
    let b = &p[at..at + 6];
    u64::from(b[0]) << 25
        | u64::from(b[1]) << 17
        | u64::from(b[2]) << 9
        | u64::from(b[3]) << 1
        | u64::from(b[4] >> 7)
}

fn write_pcr_base(p: &mut [u8], at: usize, base: u64) {
    p[at] = (base >> 25) as u8;
    p[at + 1] = (base >> 17) as u8;
    p[at + 2] = (base >> 9) as u8;
    p[at + 3] = (base >> 1) as u8;
    // Keep the 6 reserved bits and the extension's top bit.
    p[at + 4] = ((base & 1) << 7) as u8 | (p[at + 4] & 0x7F);
}

/// The section a PSI packet starts (after pointer_field), if it starts one.
fn section<'a>(p: &'a [u8], h: &Header) -> Option<&'a [u8]> {
    if !h.pusi || h.payload >= PACKET {
        return None;
    }
    let pointer = usize::from(p[h.payload]);
    let start = h.payload + 1 + pointer;
    let s = p.get(start..)?;
    if s.len() < 3 {
        return None;
    }
    let len = usize::from(s[1] & 0x0F) << 8 | usize::from(s[2]);
    s.get(..3 + len)
}

/// The PMT PID of the first program in a PAT section (2.4.4.3).
fn pat_pmt_pid(s: &[u8]) -> Option<u16> {
    pat_programs(section_body(s, 0x00)?)
        .next()
        .map(|(_, pid)| pid)
}

/// The elementary streams of a PMT section (2.4.4.8).
fn pmt_streams(s: &[u8]) -> Option<Vec<Es>> {
    let (_, entries) = pmt_entries(section_body(s, 0x02)?)?;
    Some(
        entries
            .into_iter()
            .map(|e| Es {
                pid: e.pid,
                stream_type: e.stream_type,
                video: VIDEO_STREAM_TYPES.contains(&e.stream_type),
            })
            .collect(),
    )
}

/// Where a PES header's PTS and DTS sit in the packet (offsets of their
/// 5-byte fields), when the whole header is in this packet.
#[derive(Debug, Clone, Copy)]
struct PesTimes {
    pts: Option<usize>,
    dts: Option<usize>,
}

fn pes_times(p: &[u8], h: &Header) -> Option<PesTimes> {
    let b = p.get(h.payload..)?;
    if b.len() < 9 || b[..3] != [0, 0, 1] {
        return None;
    }
    // Stream ids without the optional header (2.4.3.7: padding, private 2, …).
    if matches!(b[3], 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF) {
        return Some(PesTimes {
            pts: None,
            dts: None,
        });
    }
    let flags = b[7] >> 6;
    let header_len = usize::from(b[8]);
    let need = match flags {
        0b10 => 5,
        0b11 => 10,
        _ => 0,
    };
    if header_len < need || b.len() < 9 + need {
        return None;
    }
    let at = h.payload + 9;
    Some(PesTimes {
        pts: (flags & 0b10 != 0).then_some(at),
        dts: (flags == 0b11).then_some(at + 5),
    })
}

fn read_ts(p: &[u8], at: usize) -> u64 {
    let mut f = [0u8; 5];
    f.copy_from_slice(&p[at..at + 5]);
    decode_timestamp(f)
}

fn write_ts(p: &mut [u8], at: usize, ts: u64) {
    let prefix = p[at] >> 4;
    p[at..at + 5].copy_from_slice(&encode_timestamp(prefix, ts));
}

/// `t` relative to `origin` on the 33-bit circle, in (-2^32, 2^32].
fn rel(t: u64, origin: u64) -> i64 {
    let d = (t as i64 - origin as i64).rem_euclid(WRAP);
    if d > WRAP / 2 {
        d - WRAP
    } else {
        d
    }
}

fn abs(r: i64, origin: u64) -> u64 {
    (origin as i64 + r).rem_euclid(WRAP) as u64
}

/// The retiming: times up to `top` are pulled towards it by `squeeze/span`.
#[derive(Debug, Clone, Copy)]
struct Squeeze {
    span: i64,
    squeeze: i64,
}

impl Squeeze {
    fn map(&self, r: i64, top: i64) -> i64 {
        if r >= top || self.squeeze == 0 {
            return r;
        }
        let pulled = i128::from(top - r) * i128::from(self.squeeze) / i128::from(self.span);
        top - pulled as i64
    }
}

/// One elementary stream of the PMT.
#[derive(Debug, Clone, Copy)]
struct Es {
    pid: u16,
    stream_type: u8,
    video: bool,
}

/// A video PES start in the burst: where its header is, its times relative
/// to the keyframe's DTS, and the times it is given.
#[derive(Debug, Clone, Copy)]
struct VideoPes {
    index: usize,
    dts: i64,
    pts: i64,
    new_dts: i64,
    new_pts: i64,
}

/// Rewrites `burst` (a ring's items from its newest keyframe to its end)
/// for a player that joins now: see the module documentation.
pub fn catch_up(burst: Vec<TsChunk>) -> CatchUp {
    let streams = match program(&burst) {
        Ok(s) => s,
        Err(why) => return CatchUp::unchanged(burst, why),
    };
    let es = |pid: u16| streams.iter().find(|e| e.pid == pid);
    let is_video = |pid: u16| es(pid).is_some_and(|e| e.video);
    let is_other_es = |pid: u16| es(pid).is_some_and(|e| !e.video);

    // Every packet's header; the video PES starts; the other streams' PES
    // starts (PID, index, PTS); the newest PCR.
    let mut seen: Vec<Header> = Vec::new();
    let mut video: Vec<VideoPes> = Vec::new();
    let mut starts: Vec<(u16, usize, Option<u64>)> = Vec::new();
    let mut origin: Option<u64> = None;
    let mut last_pcr: Option<u64> = None;
    let mut first_video: Option<usize> = None;
    for (index, p) in burst.iter().flat_map(|c| c.data.chunks(PACKET)).enumerate() {
        let Some(h) = header(p) else {
            return CatchUp::unchanged(burst, "not_packets");
        };
        if let Some(at) = h.pcr {
            last_pcr = Some(read_pcr_base(p, at));
        }
        if is_video(h.pid) {
            first_video.get_or_insert(index);
            if h.pusi {
                let Some(t) = pes_times(p, &h) else {
                    return CatchUp::unchanged(burst, "pes_header_split");
                };
                let Some(pts_at) = t.pts else {
                    return CatchUp::unchanged(burst, "pes_without_pts");
                };
                let dts = read_ts(p, t.dts.unwrap_or(pts_at));
                let o = *origin.get_or_insert(dts);
                let (dts, pts) = (rel(dts, o), rel(read_ts(p, pts_at), o));
                video.push(VideoPes {
                    index,
                    dts,
                    pts,
                    new_dts: dts,
                    new_pts: pts,
                });
            }
        } else if is_other_es(h.pid) && h.pusi {
            let pts = pes_times(p, &h)
                .and_then(|t| t.pts)
                .map(|at| read_ts(p, at));
            starts.push((h.pid, index, pts));
        }
        seen.push(h);
    }
    let (Some(origin), Some(first_video)) = (origin, first_video) else {
        return CatchUp::unchanged(burst, "no_video");
    };
    let frames = video.len() as u32;
    let top = video.iter().map(|v| v.dts).max().unwrap_or(0);
    // Joined (almost) at the keyframe: nothing to squeeze, the lead-in
    // still helps.
    let squeeze = (MIN_SQUEEZE_90K.max(u64::from(frames) * SQUEEZE_PER_FRAME_90K)) as i64;
    let squeezing = top > squeeze;
    let sq = if squeezing {
        Squeeze { span: top, squeeze }
    } else {
        Squeeze {
            span: 1,
            squeeze: 0,
        }
    };
    squeeze_frames(&mut video, &sq, top);
    let pcr_top = last_pcr.map(|p| rel(p, origin));

    // Each other stream starts at its first PES at or after the start of
    // the squeezed span (else at its newest one); packets before it go.
    let cutoff = if squeezing { top - squeeze } else { top };
    let mut keep_from: Vec<(u16, usize)> = Vec::new();
    for e in streams.iter().filter(|e| !e.video) {
        let mine = starts.iter().filter(|s| s.0 == e.pid);
        let at = mine
            .clone()
            .find(|s| s.2.is_some_and(|t| rel(t, origin) >= cutoff))
            .or_else(|| mine.clone().next_back())
            .map_or(usize::MAX, |s| s.1);
        keep_from.push((e.pid, at));
    }
    let dropped_pes = starts
        .iter()
        .filter(|s| keep_from.iter().any(|&(pid, at)| pid == s.0 && s.1 < at))
        .count() as u32;
    let kept = |h: &Header, index: usize| {
        keep_from
            .iter()
            .find(|&&(pid, _)| pid == h.pid)
            .is_none_or(|&(_, at)| index >= at)
    };

    let packets: Vec<(&TsChunk, &[u8])> = burst
        .iter()
        .flat_map(|c| c.data.chunks(PACKET).map(move |p| (c, p)))
        .collect();
    // A packet's PCR and, for a video PES start, its PTS/DTS as rewritten,
    // `earlier` ticks before that (the keyframe's copies).
    let retime = |i: usize, earlier: i64| -> [u8; PACKET] {
        let (_, p) = packets[i];
        let h = &seen[i];
        let mut q = [0u8; PACKET];
        q.copy_from_slice(p);
        if let (Some(at), Some(top)) = (h.pcr, pcr_top) {
            let r = rel(read_pcr_base(p, at), origin);
            write_pcr_base(&mut q, at, abs(sq.map(r, top) - earlier, origin));
        }
        if h.pusi && is_video(h.pid) {
            let v = video
                .binary_search_by_key(&i, |v| v.index)
                .ok()
                .map(|k| video[k]);
            if let (Some(v), Some(t)) = (v, pes_times(p, h)) {
                if let Some(at) = t.pts {
                    write_ts(&mut q, at, abs(v.new_pts - earlier, origin));
                }
                if let Some(at) = t.dts {
                    write_ts(&mut q, at, abs(v.new_dts - earlier, origin));
                }
            }
        }
        q
    };
    let changes = |i: usize| seen[i].pcr.is_some() || (seen[i].pusi && is_video(seen[i].pid));

    // The keyframe's copies: how many, and their packets.
    let key = lead_in(&seen, &packets, first_video, &streams);
    let copies = key.as_ref().map_or(0, |key| {
        let fps_90k = if frames >= 2 && squeezing {
            u64::from(frames - 1) * 90_000 * 1000 / top as u64
        } else {
            30_000
        };
        lead_in_copies(key.len() * (PACKET - 4), fps_90k)
    });
    let step = SQUEEZE_PER_FRAME_90K as i64;
    // Continuity counter of the first video packet sent.
    let key_cc = packets[first_video].1[3] & 0x0F;
    let copied = copies * key.as_ref().map_or(0, Vec::len);
    let first_cc = (i64::from(key_cc) - copied as i64).rem_euclid(16) as u8;

    // Emit: what precedes the first video packet, the keyframe's PCR (so
    // that a demuxer that times by the PCR, like GStreamer's, can time the
    // audio that follows), the other streams at the live point, the
    // keyframe's copies, then the rest in order, retimed.
    let mut out = Out::default();
    for i in 0..first_video {
        if kept(&seen[i], i) {
            out.packet(packets[i].0, &retime(i, 0));
        }
    }
    // (Only before a packet with payload: one without repeats its
    // predecessor's counter, which this one could not match.)
    if let Some(at) = seen[first_video]
        .pcr
        .filter(|_| seen[first_video].payload < PACKET)
    {
        let q = retime(first_video, (copies as i64 + 1) * step);
        out.packet(
            packets[first_video].0,
            &pcr_packet(seen[first_video].pid, first_cc, &q[at..at + 6]),
        );
    }
    for i in first_video..seen.len() {
        if is_other_es(seen[i].pid) && kept(&seen[i], i) {
            out.packet(packets[i].0, &retime(i, 0));
        }
    }
    // Each copy a tenth of a millisecond before the next, with the
    // continuity counters that lead into the keyframe's own.
    if let Some(key) = &key {
        let mut cc = first_cc;
        for copy in 0..copies {
            let earlier = (copies - copy) as i64 * step;
            for &k in key {
                let mut q = retime(k, earlier);
                q[3] = (q[3] & 0xF0) | cc;
                out.packet(packets[k].0, &q);
                cc = (cc + 1) & 0x0F;
            }
        }
    }
    let mut i = first_video;
    while i < seen.len() {
        // A chunk is passed on whole when none of its packets changes.
        let (chunk, p) = packets[i];
        let in_chunk = chunk.data.len() / PACKET;
        let chunk_start = i == 0 || !std::ptr::eq(packets[i - 1].0, chunk);
        if chunk_start
            && i + in_chunk <= seen.len()
            && (i..i + in_chunk).all(|j| !is_other_es(seen[j].pid) && !changes(j))
        {
            out.chunk(chunk);
            i += in_chunk;
            continue;
        }
        if !is_other_es(seen[i].pid) {
            if changes(i) {
                out.packet(chunk, &retime(i, 0));
            } else {
                out.packet(chunk, p);
            }
        }
        i += 1;
    }
    CatchUp {
        chunks: out.finish(),
        frames: if squeezing { frames } else { 0 },
        skipped_90k: if squeezing { cutoff as u64 } else { 0 },
        dropped_pes,
        lead_in: copies as u32,
        unchanged: None,
    }
}

/// An adaptation-only packet on `pid` carrying `pcr` (its 6 bytes as in
/// the adaptation field). Its continuity counter is `next_cc` - 1: a packet
/// without payload repeats the counter of the one before (2.4.3.3), so the
/// next packet with payload, `next_cc`, follows on.
fn pcr_packet(pid: u16, next_cc: u8, pcr: &[u8]) -> [u8; PACKET] {
    let mut p = [0xFF; PACKET];
    p[0] = SYNC_BYTE;
    p[1] = (pid >> 8) as u8 & 0x1F;
    p[2] = pid as u8;
    p[3] = 0x20 | (next_cc.wrapping_sub(1) & 0x0F);
    p[4] = (PACKET - 5) as u8;
    p[5] = 0x10; // PCR_flag
    p[6..12].copy_from_slice(pcr);
    p
}

/// The elementary streams of the burst's first PAT's first program.
fn program(burst: &[TsChunk]) -> Result<Vec<Es>, &'static str> {
    let mut pmt_pid = None;
    for p in burst.iter().flat_map(|c| c.data.chunks(PACKET)) {
        let h = header(p).ok_or("not_packets")?;
        if h.pid == PID_PAT && pmt_pid.is_none() {
            pmt_pid = section(p, &h).and_then(pat_pmt_pid);
        } else if Some(h.pid) == pmt_pid {
            if let Some(streams) = section(p, &h).and_then(pmt_streams) {
                return Ok(streams);
            }
        }
    }
    Err("no_psi")
}

/// The squeeze applied to every video PES start, then DTS made strictly
/// increasing from the newest frame down (a frame whose mapped time rounds
/// onto the next one's, as very uneven frame times can give, goes one tick
/// earlier) and PTS kept at or above DTS.
fn squeeze_frames(video: &mut [VideoPes], sq: &Squeeze, top: i64) {
    let mut next: Option<i64> = None;
    for v in video.iter_mut().rev() {
        let mut dts = sq.map(v.dts, top);
        if let Some(n) = next {
            dts = dts.min(n - 1);
        }
        v.new_dts = dts;
        // A PES with a PTS only has DTS = PTS.
        v.new_pts = if v.pts == v.dts {
            dts
        } else {
            sq.map(v.pts, top).max(dts)
        };
        next = Some(dts);
    }
}

/// The keyframe's packets, to be sent ahead of it as copies, when that is
/// safe: an H.264 or HEVC IDR (an IDR starts decoding afresh however often
/// it repeats; a CRA or a recovery-point I-frame does not), whole in the
/// burst, every packet with payload (continuity counters then step by one
/// per packet). Muxers write a PES's packets in one run (ours and
/// FFmpeg's), so a packet of another elementary stream or a new PES start
/// on the keyframe's PID says it ended; PSI and PCR-only PIDs between are
/// not part of it.
fn lead_in(
    seen: &[Header],
    packets: &[(&TsChunk, &[u8])],
    first_video: usize,
    streams: &[Es],
) -> Option<Vec<usize>> {
    let first = seen.get(first_video)?;
    let stream_type = streams.iter().find(|e| e.pid == first.pid)?.stream_type;
    if !first.pusi {
        return None;
    }
    let mut key = vec![first_video];
    let mut whole = false;
    for (i, h) in seen.iter().enumerate().skip(first_video + 1) {
        if h.pid == first.pid {
            if h.pusi {
                whole = true;
                break;
            }
            key.push(i);
        } else if streams.iter().any(|e| e.pid == h.pid) {
            whole = true;
            break;
        }
    }
    if !whole || key.iter().any(|&i| seen[i].payload >= PACKET) {
        return None;
    }
    // The elementary stream bytes: past the PES header in the first packet.
    let (_, p) = packets[first_video];
    let es_start = first.payload + 9 + usize::from(*p.get(first.payload + 8)?);
    let es = key.iter().flat_map(|&i| {
        let (_, p) = packets[i];
        let from = if i == first_video {
            es_start
        } else {
            seen[i].payload
        };
        p.get(from..).unwrap_or(&[]).iter().copied()
    });
    is_idr(stream_type, es).then_some(key)
}

/// Whether the first coded slice of an access unit (Annex B) is an IDR:
/// H.264 nal_unit_type 5, HEVC 19 or 20.
fn is_idr(stream_type: u8, bytes: impl Iterator<Item = u8>) -> bool {
    let hevc = match stream_type {
        super::STREAM_TYPE_H264 => false,
        super::STREAM_TYPE_HEVC => true,
        _ => return false,
    };
    let mut zeros = 0;
    let mut take_next = false;
    for b in bytes {
        if take_next {
            take_next = false;
            if hevc {
                let t = (b >> 1) & 0x3F;
                if t <= 31 {
                    return t == 19 || t == 20;
                }
            } else {
                let t = b & 0x1F;
                if (1..=5).contains(&t) {
                    return t == 5;
                }
            }
            continue;
        }
        if b == 1 && zeros >= 2 {
            take_next = true;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    false
}

/// How many copies of a keyframe of about `key_bytes` to send ahead of it
/// so that a player which drops what it probes still decodes from a
/// keyframe: as many as its probe can read ([`PROBE_BYTES`], or
/// [`PROBE_SECONDS_90K`] of frames at `fps_90k` / 1000 frames a second,
/// plus one for the probe's first frame), at most [`MAX_LEAD_IN`]. A player
/// that keeps what it probes decodes the copies too: a few identical
/// pictures within a millisecond.
fn lead_in_copies(key_bytes: usize, fps_90k: u64) -> usize {
    let by_bytes = PROBE_BYTES.div_ceil(key_bytes.max(1));
    let by_time = (PROBE_SECONDS_90K * fps_90k).div_ceil(90_000 * 1000) as usize + 1;
    by_bytes.min(by_time).clamp(1, MAX_LEAD_IN)
}

/// The rewritten burst being assembled: whole chunks passed on as they are
/// (their bytes shared with the ring), changed packets copied into fresh
/// chunks of at most 7.
#[derive(Default)]
struct Out {
    chunks: Vec<TsChunk>,
    buf: BytesMut,
    /// The DTS the chunk being filled carries: its first packet's chunk's.
    dts_90k: u64,
}

impl Out {
    fn packet(&mut self, from: &TsChunk, p: &[u8]) {
        if self.buf.is_empty() {
            self.buf.reserve(CHUNK);
            self.dts_90k = from.dts_90k;
        }
        self.buf.extend_from_slice(p);
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    fn chunk(&mut self, c: &TsChunk) {
        self.flush();
        self.dts_90k = c.dts_90k;
        self.push(c.data.clone());
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let data = self.buf.split().freeze();
            self.push(data);
        }
    }

    fn push(&mut self, data: Bytes) {
        let keyframe = self.chunks.is_empty();
        self.chunks.push(TsChunk {
            data,
            keyframe,
            dts_90k: self.dts_90k,
            origin: None,
        });
    }

    fn finish(mut self) -> Vec<TsChunk> {
        self.flush();
        self.chunks
    }
}

/// Fuzzing check (from the repack and roundtrip targets, whose outputs are
/// what rings hold): [`catch_up`] never panics, hands out whole packets
/// starting with a keyframe chunk, leaves a burst it cannot parse as it
/// was, and adds nothing but the keyframe's copies and one PCR packet.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_check(burst: &[TsChunk]) {
    let packets = |v: &[TsChunk]| v.iter().map(|c| c.data.len() / PACKET).sum::<usize>();
    let c = catch_up(burst.to_vec());
    if c.unchanged.is_some() {
        assert_eq!(c.chunks, burst, "an unparsed burst was changed");
        return;
    }
    assert!(c.chunks.first().is_some_and(|c| c.keyframe));
    for chunk in &c.chunks {
        assert!(!chunk.data.is_empty() && chunk.data.len() <= CHUNK);
        assert_eq!(chunk.data.len() % PACKET, 0);
        assert!(chunk.data.chunks(PACKET).all(|p| p[0] == SYNC_BYTE));
    }
    // No continuity error the burst did not have already.
    assert!(
        cc_breaks(&c.chunks) <= cc_breaks(burst),
        "the rewrite broke continuity"
    );
    // Each copy of the keyframe is at most the whole burst.
    assert!(c.lead_in as usize <= MAX_LEAD_IN);
    assert!(packets(&c.chunks) <= packets(burst) * (1 + c.lead_in as usize) + 1);
}

/// Continuity counter breaks (2.4.3.3) in `chunks`, per PID after its
/// first packet: a packet with payload must step the counter by one, one
/// without must repeat it.
#[cfg(any(test, feature = "fuzzing"))]
fn cc_breaks(chunks: &[TsChunk]) -> usize {
    let mut last: std::collections::HashMap<u16, u8> = std::collections::HashMap::new();
    let mut breaks = 0;
    for p in chunks.iter().flat_map(|c| c.data.chunks(PACKET)) {
        let Some(h) = header(p) else { continue };
        if h.pid == 0x1FFF {
            continue;
        }
        let cc = p[3] & 0x0F;
        if let Some(prev) = last.insert(h.pid, cc) {
            let want = if h.payload < PACKET {
                (prev + 1) & 0x0F
            } else {
                prev
            };
            if cc != want {
                breaks += 1;
            }
        }
    }
    breaks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::fixtures::{aac_config, h264_config};
    use crate::media::{Codec, Frame, Track};
    use crate::ts::{Demuxer, Muxer, Pes, PID_AUDIO, PID_VIDEO, TIMESTAMP_MASK};

    const MS: u64 = 90;
    /// The muxer's 1.4 s timestamp offset, at 90 kHz.
    const OFFSET: u64 = 1400 * MS;

    fn video(dts: u64, cts: i32, keyframe: bool) -> Frame {
        let mut nal = vec![if keyframe { 0x65 } else { 0x41 }];
        // Big enough to span several chunks, like a real frame.
        nal.extend((0..if keyframe { 30000 } else { 8000 }).map(|i| (i % 251) as u8 | 1));
        let mut data = (nal.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&nal);
        Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            cts,
            keyframe,
            data: Bytes::from(data),
        }
    }

    fn audio(dts: u64) -> Frame {
        Frame {
            track: Track::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: true,
            data: Bytes::from(vec![0x21; 300]),
        }
    }

    /// 30 fps video with B-frames (IBBP…, one keyframe every `gop` frames)
    /// and 48 kHz AAC (21.33 ms frames), interleaved by time from `from_ms`
    /// to `to_ms`.
    fn media(from_ms: u64, to_ms: u64, gop: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut a = (from_ms * 3 / 64) * 64 / 3; // on the audio grid
        let mut v = from_ms.div_ceil(100) * 100 / 3; // frame index
        loop {
            let vt = v * 100 / 3;
            let at = a;
            if vt >= to_ms && at >= to_ms {
                break;
            }
            if vt <= at {
                // Decode order I P B B …: a P shown 3 frames later, Bs 1 earlier.
                let n = v % gop;
                let cts = if n == 0 {
                    33
                } else if n % 3 == 1 {
                    100
                } else {
                    0
                };
                out.push(video(vt, cts, n == 0));
                v += 1;
            } else {
                out.push(audio(at));
                a = ((a * 3 + 64) / 3).max(a + 1);
            }
        }
        out
    }

    fn muxer() -> Muxer {
        let mut m = Muxer::new();
        m.set_config(&h264_config()).unwrap();
        m.set_config(&aac_config()).unwrap();
        m
    }

    fn mux(m: &mut Muxer, frames: &[Frame]) -> Vec<TsChunk> {
        let mut out = Vec::new();
        for f in frames {
            m.push(f, &mut out).unwrap();
        }
        out
    }

    /// What a joiner at `join_ms` gets from a ring: the chunks from the
    /// newest keyframe up to then; and what follows live until `end_ms`.
    fn join_at(join_ms: u64, end_ms: u64, gop: u64) -> (Vec<TsChunk>, Vec<TsChunk>) {
        let mut m = muxer();
        let all = mux(&mut m, &media(0, join_ms, gop));
        let k = all.iter().rposition(|c| c.keyframe).unwrap();
        let live = mux(&mut m, &media(join_ms, end_ms, gop));
        (all[k..].to_vec(), live)
    }

    fn demux(chunks: &[TsChunk]) -> (Vec<Pes>, u64) {
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(&c.data, &mut out).unwrap();
        }
        d.flush(&mut out);
        (out, d.continuity_errors())
    }

    fn dts(p: &Pes) -> u64 {
        p.dts.or(p.pts).unwrap()
    }

    /// The video PES of `pes` after the keyframe copies of the lead-in,
    /// checking those: `copies` keyframes with the keyframe's data, each
    /// a tenth of a millisecond before the next.
    fn after_lead_in(pes: &[Pes], copies: u32) -> Vec<&Pes> {
        let video: Vec<&Pes> = pes.iter().filter(|p| p.pid == PID_VIDEO).collect();
        let copies = copies as usize;
        let key = video[copies];
        assert!(key.keyframe);
        for (i, c) in video[..copies].iter().enumerate() {
            assert!(c.keyframe);
            assert!(c.data == key.data, "copy {i} differs from the keyframe");
            let ahead = ((copies - i) as u64) * SQUEEZE_PER_FRAME_90K;
            assert_eq!(dts(c) + ahead, dts(key));
            assert_eq!(c.pts.unwrap() + ahead, key.pts.unwrap());
        }
        video[copies..].to_vec()
    }

    #[test]
    fn cached_video_is_squeezed_before_the_live_point_and_audio_starts_there() {
        // 1.5 s into a 2 s GOP: 45 cached frames.
        let (burst, live) = join_at(1500, 2500, 60);
        let plain = demux(&burst).0;
        let c = catch_up(burst);
        assert_eq!(c.unchanged, None);
        assert_eq!(c.frames, 45);
        // A 30 KB keyframe: one copy covers a 32 KiB probe, two to spare.
        assert_eq!(c.lead_in, 2);
        assert!(c.chunks[0].keyframe && c.chunks.iter().skip(1).all(|c| !c.keyframe));
        let all: Vec<TsChunk> = c.chunks.iter().chain(&live).cloned().collect();
        let (pes, cc_errors) = demux(&all);
        assert_eq!(cc_errors, 0, "continuity into the live chunks");
        assert_eq!(cc_breaks(&all), 0);
        let all_video: Vec<&Pes> = pes.iter().filter(|p| p.pid == PID_VIDEO).collect();
        let video = after_lead_in(&pes, c.lead_in);
        let audio: Vec<&Pes> = pes.iter().filter(|p| p.pid == PID_AUDIO).collect();
        // Every cached frame is kept, in order, with its data.
        let cached: Vec<&Pes> = plain.iter().filter(|p| p.pid == PID_VIDEO).collect();
        assert_eq!(cached.len(), 45);
        for (a, b) in cached.iter().zip(&video) {
            assert!(a.data == b.data);
        }
        // Decode order strictly increasing, PTS >= DTS, across the join.
        for w in all_video.windows(2) {
            assert!(dts(w[0]) < dts(w[1]), "{} then {}", dts(w[0]), dts(w[1]));
        }
        assert!(all_video.iter().all(|p| p.pts.unwrap() >= dts(p)));
        // The newest cached frame keeps its time; the keyframe sits 45 × 0.1 ms
        // (the squeeze, at least 5 ms) before it, not 1.5 s.
        let newest = dts(cached[44]);
        assert_eq!(dts(video[44]), newest);
        assert_eq!(newest - dts(video[0]), 5 * MS);
        assert_eq!(c.skipped_90k, newest - dts(cached[0]) - 5 * MS);
        // Display order is kept: the PTS order of the squeezed frames is the
        // original one.
        let mut by_pts: Vec<usize> = (0..45).collect();
        by_pts.sort_by_key(|&i| cached[i].pts);
        let mut by_new_pts: Vec<usize> = (0..45).collect();
        by_new_pts.sort_by_key(|&i| video[i].pts);
        assert_eq!(by_pts, by_new_pts);
        // Audio: nothing stale, and it starts within the squeezed span,
        // ahead of the video in the stream.
        let first_audio = audio[0].pts.unwrap();
        assert!(first_audio >= newest - 5 * MS, "{first_audio} vs {newest}");
        assert!(first_audio <= newest + 22 * MS);
        assert!(c.dropped_pes > 60, "{}", c.dropped_pes);
        let first = pes.iter().position(|p| p.pid == PID_AUDIO).unwrap();
        assert!(first < 2, "audio leads the burst");
        // A PCR comes before it (GStreamer times PES by the PCR).
        let order: Vec<(u16, bool)> = c.chunks[0]
            .data
            .chunks(PACKET)
            .map(|p| {
                let h = header(p).unwrap();
                (h.pid, h.pcr.is_some())
            })
            .collect();
        assert_eq!(&order[2..4], &[(PID_VIDEO, true), (PID_AUDIO, false)]);
        // Audio is continuous from there into live.
        for w in audio.windows(2) {
            assert!(w[1].pts.unwrap() > w[0].pts.unwrap());
            assert!(w[1].pts.unwrap() - w[0].pts.unwrap() <= 22 * MS);
        }
        let pcrs = pcrs(&all);
        assert!(pcrs.windows(2).all(|w| w[0] <= w[1]), "PCR never goes back");
    }

    fn pcrs(chunks: &[TsChunk]) -> Vec<u64> {
        chunks
            .iter()
            .flat_map(|c| c.data.chunks(PACKET))
            .filter_map(|p| {
                let h = header(p)?;
                h.pcr.map(|at| read_pcr_base(p, at))
            })
            .collect()
    }

    #[test]
    fn unchanged_chunks_share_the_ring_bytes() {
        let (burst, _) = join_at(1000, 1000, 60);
        let total: usize = burst.iter().map(|c| c.data.len()).sum();
        let ptrs: Vec<*const u8> = burst.iter().map(|c| c.data.as_ptr()).collect();
        let c = catch_up(burst);
        let shared = c
            .chunks
            .iter()
            .filter(|c| ptrs.contains(&c.data.as_ptr()))
            .map(|c| c.data.len())
            .sum::<usize>();
        // Only each frame's first chunk (PES header, PCR) and the audio are copied.
        assert!(shared * 2 > total, "{shared} of {total} bytes shared");
    }

    #[test]
    fn a_join_at_the_keyframe_keeps_its_timestamps_and_gets_the_lead_in() {
        // The keyframe at 2 s and the audio frame after it (2016 ms).
        let (burst, live) = join_at(2020, 2500, 60);
        let plain = demux(&burst).0;
        let c = catch_up(burst);
        assert_eq!((c.unchanged, c.frames, c.lead_in), (None, 0, 2));
        let all: Vec<TsChunk> = c.chunks.iter().chain(&live).cloned().collect();
        let (pes, cc_errors) = demux(&all);
        assert_eq!(cc_errors, 0);
        let video = after_lead_in(&pes, c.lead_in);
        let cached: Vec<&Pes> = plain.iter().filter(|p| p.pid == PID_VIDEO).collect();
        for (a, b) in cached.iter().zip(&video) {
            assert_eq!((a.pts, a.dts), (b.pts, b.dts));
        }
    }

    #[test]
    fn small_keyframes_get_a_copy_per_probed_frame() {
        // A 32 KiB probe holds 7 keyframes of 5 KB; 200 ms holds 7 frames
        // at 30 fps (the first is not counted), 13 at 60 fps.
        assert_eq!(lead_in_copies(5_000, 30_000), 7);
        assert_eq!(lead_in_copies(5_000, 60_000), 7);
        assert_eq!(lead_in_copies(2_000, 60_000), 13);
        assert_eq!(lead_in_copies(200_000, 30_000), 1);
        assert_eq!(lead_in_copies(0, 1_000_000), MAX_LEAD_IN);
    }

    #[test]
    fn streams_without_video_or_psi_are_left_as_they_are() {
        let mut m = Muxer::new();
        m.set_config(&aac_config()).unwrap();
        let frames: Vec<Frame> = (0..20).map(|i| audio(i * 21)).collect();
        let burst = mux(&mut m, &frames);
        let c = catch_up(burst.clone());
        assert_eq!(c.unchanged, Some("no_video"));
        assert_eq!(c.chunks, burst);

        let c = catch_up(vec![TsChunk {
            data: Bytes::from_static(&[0x47; 100]),
            keyframe: true,
            dts_90k: 0,
            origin: None,
        }]);
        assert_eq!(c.unchanged, Some("not_packets"));
        let (burst, _) = join_at(1500, 1500, 60);
        let c = catch_up(burst[1..].to_vec());
        assert_eq!(c.unchanged, Some("no_psi"));
    }

    #[test]
    fn timestamps_are_squeezed_across_the_33_bit_wrap() {
        // Media time near 2^33 ticks (26.5 h) minus the offset.
        let base_ms = (TIMESTAMP_MASK + 1) / MS - OFFSET / MS - 1000;
        let mut m = muxer();
        let mut frames: Vec<Frame> = media(0, 1900, 60);
        for f in &mut frames {
            f.dts += base_ms;
        }
        let all = mux(&mut m, &frames);
        let k = all.iter().rposition(|c| c.keyframe).unwrap();
        let c = catch_up(all[k..].to_vec());
        assert_eq!(c.unchanged, None);
        assert_eq!(c.frames, 57);
        let (pes, _) = demux(&c.chunks);
        let video: Vec<u64> = after_lead_in(&pes, c.lead_in)
            .iter()
            .map(|p| dts(p))
            .collect();
        let newest = *video.last().unwrap();
        // Unwrapped, every frame sits within the squeeze before the newest.
        for t in &video {
            let back = (newest + (TIMESTAMP_MASK + 1) - t) & TIMESTAMP_MASK;
            assert!(
                back <= u64::from(c.frames) * SQUEEZE_PER_FRAME_90K,
                "{back}"
            );
        }
    }

    #[test]
    fn long_gops_get_a_tenth_of_a_millisecond_per_frame() {
        // 9 s into a 10 s GOP: 270 frames.
        let (burst, _) = join_at(9000, 9000, 300);
        let c = catch_up(burst);
        assert_eq!(c.frames, 270);
        let (pes, _) = demux(&c.chunks);
        let video: Vec<u64> = after_lead_in(&pes, c.lead_in)
            .iter()
            .map(|p| dts(p))
            .collect();
        assert_eq!(video.last().unwrap() - video[0], 270 * 9);
        assert!(video.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn only_idr_keyframes_are_copied() {
        // An I-frame the publisher flagged as a keyframe but which is no
        // IDR (open GOP, recovery point): copies of it would not decode.
        let mut m = muxer();
        let mut frames = media(0, 1500, 60);
        if let Some(f) = frames
            .iter_mut()
            .find(|f| f.keyframe && f.track == Track::Video)
        {
            let mut data = f.data.to_vec();
            data[4] = 0x41;
            f.data = Bytes::from(data);
        }
        let c = catch_up(mux(&mut m, &frames));
        assert_eq!((c.unchanged, c.lead_in, c.frames), (None, 0, 45));

        fn nal(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
            bytes.iter().copied()
        }
        let h264 = super::super::STREAM_TYPE_H264;
        let hevc = super::super::STREAM_TYPE_HEVC;
        // AUD, SPS, PPS, then the slice decides.
        let sps_pps = [
            0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3,
        ];
        assert!(is_idr(
            h264,
            nal(&[&sps_pps[..], &[0, 0, 1, 0x65, 0x88]].concat())
        ));
        assert!(!is_idr(
            h264,
            nal(&[&sps_pps[..], &[0, 0, 1, 0x41, 0x9a]].concat())
        ));
        // HEVC: IDR_W_RADL (19) and IDR_N_LP (20) yes, CRA (21) no; VPS (32) skipped.
        assert!(is_idr(hevc, nal(&[0, 0, 1, 0x40, 1, 0, 0, 1, 0x26, 1])));
        assert!(is_idr(hevc, nal(&[0, 0, 1, 0x28, 1])));
        assert!(!is_idr(hevc, nal(&[0, 0, 1, 0x40, 1, 0, 0, 1, 0x2A, 1])));
        assert!(!is_idr(0x02, nal(&[0, 0, 1, 0x65])));
        assert!(!is_idr(h264, nal(&[0, 0, 1])));
    }

    #[test]
    fn uneven_frame_times_never_share_a_dts() {
        // A keyframe, 9 s of nothing, then 10 frames 1 ms apart (a screen
        // share): the squeeze alone would round the 10 onto one tick.
        let mut m = muxer();
        let mut frames = vec![video(0, 0, true)];
        frames.extend((0..10).map(|i| video(9000 + i, 0, false)));
        let c = catch_up(mux(&mut m, &frames));
        assert_eq!(c.frames, 11);
        let (pes, _) = demux(&c.chunks);
        let video: Vec<&Pes> = after_lead_in(&pes, c.lead_in);
        assert_eq!(video.len(), 11);
        for w in video.windows(2) {
            assert!(dts(w[0]) < dts(w[1]), "{} then {}", dts(w[0]), dts(w[1]));
            assert!(w[1].pts >= w[1].dts);
        }
        // The newest keeps its time.
        assert_eq!(dts(video[10]), OFFSET + 9009 * MS);
    }

    #[test]
    fn a_keyframe_with_an_adaptation_only_packet_gets_no_copies() {
        // Such a packet repeats the continuity counter; copies counted per
        // packet would then break it.
        let (burst, _) = join_at(1500, 1500, 60);
        let mut data: Vec<u8> = burst.iter().flat_map(|c| c.data.to_vec()).collect();
        // The keyframe's third packet (after PAT, PMT, its first two) made
        // adaptation-only, as a PCR-only packet would be.
        let at = 4 * PACKET;
        assert_eq!(
            u16::from(data[at + 1] & 0x1F) << 8 | u16::from(data[at + 2]),
            PID_VIDEO
        );
        data[at + 3] = (data[at + 3] & 0xCF) | 0x20;
        data[at + 4] = 183;
        data[at + 5] = 0;
        let chunks: Vec<TsChunk> = data
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, d)| TsChunk {
                data: Bytes::copy_from_slice(d),
                keyframe: i == 0,
                dts_90k: 0,
                origin: None,
            })
            .collect();
        let c = catch_up(chunks);
        assert_eq!((c.unchanged, c.lead_in), (None, 0));
        assert_eq!(c.frames, 45);
    }
}
