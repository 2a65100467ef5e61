//! An MPEG-TS publish's media as protocol-free events: the demuxer's PES packets turned into the same
//! codec configurations and [`Frame`]s the RTMP ingest produces (H.264/HEVC as length-prefixed NAL units
//! with a decoder configuration record built from the in-band parameter sets, AAC as raw access units
//! with an AudioSpecificConfig from the ADTS headers), on one 64-bit millisecond timeline shared by both
//! tracks. Lost data never yields a damaged frame: video waits for the next keyframe. Sans-IO, bounded.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::demux::{Demuxer, Pes};
use super::{STREAM_TYPE_AAC_ADTS, STREAM_TYPE_H264, STREAM_TYPE_HEVC, TIMESTAMP_MASK};
use crate::media::aac::{AdtsHeader, AudioSpecificConfig};
use crate::media::{h264, hevc, Codec, CodecConfig, Frame, MediaEvent, Track};

/// Parameter sets of one kind kept at most (SPS ids go to 31, HEVC PPS ids
/// to 63; H.264 PPS ids go to 255 but encoders use a handful).
const MAX_PARAM_SETS: usize = 32;
/// Notes kept for [`TsIngest::drain_notes`] between two drains.
const MAX_NOTES: usize = 8;
/// AAC frames are 1024 samples (14496-3 4.5.1.1; 960-sample frames cannot
/// be signalled in ADTS).
const AAC_SAMPLES_PER_FRAME: u64 = 1024;
/// Where the first timestamp seen lands on the timeline: 1 s, so a track
/// that starts up to 1 s before the other keeps its place instead of
/// clamping at 0 (the first PES to complete need not be the first to start:
/// a video PES without a length ends only when the next one starts).
const ORIGIN_90K: i64 = 90_000;
/// 33-bit timestamps' half range: a step further than this is the shorter
/// way round the other direction.
const HALF_RANGE: u64 = 1 << 32;
/// At the start, when the PMT lists audio but its configuration has not
/// come yet, what the ingest made is held (see [`StartGate`]) for at most
/// this much media, or this many events.
const START_HOLD_MS: u64 = 1000;
const START_HOLD_EVENTS: usize = 512;
const START_HOLD_BYTES: usize = 16 << 20;

/// One event out of the ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub event: MediaEvent,
    /// The track's timeline re-based over a jump before this event.
    pub timestamp_jump: bool,
}

/// What the ingest has seen; counters only grow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TsIngestStats {
    /// Transport packets read.
    pub packets: u64,
    pub frames_video: u64,
    pub frames_audio: u64,
    /// Continuity-counter gaps on any PID (2.4.3.3): packets SRT could not recover.
    pub continuity_errors: u64,
    /// Frames dropped because damaged or waiting for the next keyframe after loss
    /// (and, at the start, video before the first keyframe).
    pub dropped_frames: u64,
    /// PES packets the demuxer dropped: cut by loss, shorter than their
    /// PES_packet_length, malformed, or over the size limit.
    pub truncated_pes: u64,
    pub timestamp_jumps: u64,
    /// Elementary streams of a type we do not carry (ignored), counted once per PID.
    pub unsupported_streams: u64,
}

/// One track's position on the shared timeline, in 90 kHz ticks.
#[derive(Debug, Default)]
struct Clock {
    /// (last raw 33-bit timestamp, its position)
    last: Option<(u64, i64)>,
    /// A jump was re-based over and no event has carried the flag yet.
    jump_pending: bool,
}

/// The video track: parameter sets, the configuration sent, loss state.
#[derive(Debug)]
struct Video {
    pid: u16,
    codec: Codec,
    clock: Clock,
    vps: Vec<Bytes>,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
    /// Parameter sets changed since the configuration was last sent.
    dirty: bool,
    /// The record last sent, if any.
    record: Option<Bytes>,
    /// Frames are dropped until the next keyframe (start, or after loss).
    waiting: bool,
    /// HEVC resumed at a keyframe: RASL pictures right after it reference
    /// pictures from before it that were never sent (23008-2 8.1.3), so they
    /// are dropped until the first picture that is not one.
    skip_rasl: bool,
}

#[derive(Debug)]
struct Audio {
    pid: u16,
    clock: Clock,
    /// The AudioSpecificConfig last sent.
    config: Option<[u8; 2]>,
}

/// The TS ingest; see the module docs. Call [`TsIngest::push`] with bytes as
/// they arrive (any split) and [`TsIngest::flush`] at the end of the input;
/// both append what became complete to `out`, in stream order.
#[derive(Debug)]
pub struct TsIngest {
    demux: Demuxer,
    /// Scratch: PES out of the demuxer for one push.
    pes: Vec<Pes>,
    /// Scratch: NAL unit ranges of one access unit.
    nals: Vec<(usize, usize)>,
    max_jump_90k: u64,
    /// The first timestamp seen on any carried track: position [`ORIGIN_90K`] of both tracks.
    origin: Option<u64>,
    /// The position most recently given to any frame, where a track whose
    /// first timestamp is far from the origin starts.
    latest: i64,
    video: Option<Video>,
    audio: Option<Audio>,
    /// PIDs already counted in `unsupported_streams` (one bit per PID).
    reported: Box<[u64; 128]>,
    stats: TsIngestStats,
    notes: Vec<String>,
    notes_dropped: u64,
    /// Events held at the start until every carried track is configured.
    gate: StartGate,
    /// Scratch: what one push made, before the gate.
    made: Vec<Ingested>,
}

/// The start of a publish, held until both tracks the PMT lists have their
/// configuration. In TS the first audio frame (and so the AudioSpecificConfig)
/// often arrives after the first video keyframe; a leg that starts at that
/// keyframe (the transcode) would start without audio. Held events go out in
/// order once the audio configuration is known, every configuration first;
/// or as they are after [`START_HOLD_MS`] of media without it.
#[derive(Debug, Default)]
struct StartGate {
    open: bool,
    held: Vec<Ingested>,
}

impl StartGate {
    /// Pass `made` to `out`, or hold it. `audio_pending`: the PMT lists an
    /// audio track whose configuration has not come out yet.
    fn pass(&mut self, made: &mut Vec<Ingested>, audio_pending: bool, out: &mut Vec<Ingested>) {
        if self.open {
            out.append(made);
            return;
        }
        self.held.append(made);
        let frames = self.held.iter().filter_map(|i| match &i.event {
            MediaEvent::Frame(f) => Some(f.dts),
            _ => None,
        });
        let (first, last) = frames.fold((u64::MAX, 0), |(a, b), d| (a.min(d), b.max(d)));
        if first == u64::MAX {
            // No frame yet (the PMT may not even be known): nothing to wait for.
            return;
        }
        let span = last.saturating_sub(first);
        let bytes: usize = self
            .held
            .iter()
            .map(|i| match &i.event {
                MediaEvent::Frame(f) => f.data.len(),
                _ => 0,
            })
            .sum();
        let audio_config = self
            .held
            .iter()
            .any(|i| matches!(i.event, MediaEvent::Config(CodecConfig::Audio { .. })));
        if audio_config
            || !audio_pending
            || span > START_HOLD_MS
            || self.held.len() > START_HOLD_EVENTS
            || bytes > START_HOLD_BYTES
        {
            self.release(out);
        }
    }

    /// Everything held goes out in order, but for each track's first
    /// configuration, which goes first (a later one, a change, stays where
    /// it was: frames before it were made under the first).
    fn release(&mut self, out: &mut Vec<Ingested>) {
        self.open = true;
        let mut first = [None, None];
        for (i, ev) in self.held.iter().enumerate() {
            if let MediaEvent::Config(c) = &ev.event {
                let slot = &mut first[usize::from(c.track() == Track::Audio)];
                slot.get_or_insert(i);
            }
        }
        let mut held = std::mem::take(&mut self.held);
        for i in first.into_iter().flatten() {
            out.push(held[i].clone());
        }
        out.extend(
            held.drain(..)
                .enumerate()
                .filter(|(i, _)| !first.contains(&Some(*i)))
                .map(|(_, ev)| ev),
        );
    }
}

impl TsIngest {
    /// `max_jump`: a DTS jump larger than this (either way) re-bases the track (like rtmp.max_timestamp_jump).
    pub fn new(max_jump: Duration) -> TsIngest {
        let ticks = max_jump.as_micros().saturating_mul(9) / 100;
        TsIngest {
            demux: Demuxer::new(),
            pes: Vec::new(),
            nals: Vec::new(),
            max_jump_90k: u64::try_from(ticks).unwrap_or(u64::MAX).min(HALF_RANGE - 1),
            origin: None,
            latest: ORIGIN_90K,
            video: None,
            audio: None,
            reported: Box::new([0; 128]),
            stats: TsIngestStats::default(),
            notes: Vec::new(),
            notes_dropped: 0,
            gate: StartGate::default(),
            made: Vec::new(),
        }
    }

    /// TS bytes as received (normally 1316 = 7 packets per SRT payload, but any split must work).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Ingested>) {
        let mut pes = std::mem::take(&mut self.pes);
        if let Err(e) = self.demux.push(data, &mut pes) {
            self.note(e.to_string());
        }
        let mut made = std::mem::take(&mut self.made);
        self.process(&mut pes, &mut made);
        let audio_pending = self.audio.as_ref().is_some_and(|a| a.config.is_none());
        self.gate.pass(&mut made, audio_pending, out);
        self.made = made;
        self.pes = pes;
    }

    /// End of input: emit what is complete (the last PES of each PID).
    pub fn flush(&mut self, out: &mut Vec<Ingested>) {
        let mut pes = std::mem::take(&mut self.pes);
        self.demux.flush(&mut pes);
        let mut made = std::mem::take(&mut self.made);
        self.process(&mut pes, &mut made);
        self.gate.held.append(&mut made);
        self.gate.release(out);
        self.made = made;
        self.pes = pes;
    }

    /// The transport lost data here (SRT knows by its sequence numbers, even
    /// where the continuity counters cannot tell: 16 lost packets of one PID
    /// look continuous). Every PES in progress is dropped and video waits for
    /// its next keyframe; audio resumes at its next PES.
    pub fn discontinuity(&mut self) {
        self.demux.discontinuity();
        if let Some(v) = self.video.as_mut() {
            v.waiting = true;
        }
    }

    pub fn stats(&self) -> &TsIngestStats {
        &self.stats
    }

    /// Why data was dropped or ignored since the last call, oldest first, for
    /// logs: damaged packets (with PID, offset and bytes), frames dropped
    /// after loss, streams ignored. At most a few are kept between calls;
    /// the last line says how many more there were.
    pub fn drain_notes(&mut self) -> Vec<String> {
        let mut notes = std::mem::take(&mut self.notes);
        if self.notes_dropped > 0 {
            notes.push(format!("... and {} more", self.notes_dropped));
            self.notes_dropped = 0;
        }
        notes
    }

    /// What the ingest carries and ignores, for logs: "video PID 0x0100
    /// h264, audio PID 0x0101 aac; ignored PID 0x0102 (stream_type 0x06)".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.video {
            parts.push(format!("video PID {:#06x} {}", v.pid, v.codec));
        }
        if let Some(a) = &self.audio {
            parts.push(format!("audio PID {:#06x} aac", a.pid));
        }
        let mut s = if parts.is_empty() {
            "no audio or video stream yet".to_owned()
        } else {
            parts.join(", ")
        };
        let ignored: Vec<String> = self
            .demux
            .streams()
            .filter(|es| carried_codec(es.stream_type).is_none())
            .map(|es| format!("PID {:#06x} (stream_type {:#04x})", es.pid, es.stream_type))
            .collect();
        if !ignored.is_empty() {
            s.push_str("; ignored ");
            s.push_str(&ignored.join(", "));
        }
        s
    }

    fn note(&mut self, note: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(note);
        } else {
            self.notes_dropped += 1;
        }
    }

    fn process(&mut self, pes: &mut Vec<Pes>, out: &mut Vec<Ingested>) {
        self.select_streams();
        for p in pes.drain(..) {
            if self.video.as_ref().is_some_and(|v| v.pid == p.pid) {
                self.video_pes(p, out);
            } else if self.audio.as_ref().is_some_and(|a| a.pid == p.pid) {
                self.audio_pes(p, out);
            }
        }
        self.stats.packets = self.demux.packets();
        self.stats.continuity_errors = self.demux.continuity_errors();
        self.stats.truncated_pes = self.demux.dropped_pes();
    }

    /// Follows the PMT: the first video and the first AAC stream of the
    /// first program are carried; a change of PID or codec starts that track
    /// afresh (a new configuration, video from its next keyframe). Streams
    /// of types we do not carry are counted once per PID.
    fn select_streams(&mut self) {
        let first_program = self.demux.programs().first().copied();
        let (mut video, mut audio) = (None, None);
        let mut unsupported = Vec::new();
        for es in self.demux.streams() {
            match carried_codec(es.stream_type) {
                None => unsupported.push(es),
                Some(_) if Some(es.pmt_pid) != first_program => {}
                Some(Codec::Aac) => {
                    audio.get_or_insert(es.pid);
                }
                Some(codec) => {
                    video.get_or_insert((es.pid, codec));
                }
            }
        }
        for es in unsupported {
            let (word, bit) = (usize::from(es.pid >> 6), es.pid & 63);
            if let Some(w) = self.reported.get_mut(word) {
                if *w & (1 << bit) == 0 {
                    *w |= 1 << bit;
                    self.stats.unsupported_streams += 1;
                    self.note(format!(
                        "ignoring PID {:#06x}: stream_type {:#04x} is not carried (only H.264, HEVC and AAC in ADTS are)",
                        es.pid, es.stream_type
                    ));
                }
            }
        }
        match (video, &self.video) {
            (Some((pid, codec)), Some(v)) if v.pid == pid && v.codec == codec => {}
            (Some((pid, codec)), _) => {
                self.video = Some(Video {
                    pid,
                    codec,
                    clock: Clock::default(),
                    vps: Vec::new(),
                    sps: Vec::new(),
                    pps: Vec::new(),
                    dirty: false,
                    record: None,
                    waiting: true,
                    skip_rasl: false,
                });
            }
            (None, _) => self.video = None,
        }
        match (audio, &self.audio) {
            (Some(pid), Some(a)) if a.pid == pid => {}
            (Some(pid), _) => {
                self.audio = Some(Audio {
                    pid,
                    clock: Clock::default(),
                    config: None,
                });
            }
            (None, _) => self.audio = None,
        }
    }

    /// Maps a raw 33-bit timestamp of a track onto the shared timeline
    /// (90 kHz ticks; the first timestamp of any track is at [`ORIGIN_90K`]). Steps
    /// are the shorter way round the 2^33 circle, so the wrap (every 26.5 h)
    /// is seamless; a step over `max_jump` holds the track where it was and
    /// goes on from the new value (the policy of [`crate::media::Timeline`]).
    fn unwrap_ts(
        clock: &mut Clock,
        origin: &mut Option<u64>,
        latest: &mut i64,
        max_jump: u64,
        raw: u64,
        jumps: &mut u64,
    ) -> i64 {
        let raw = raw & TIMESTAMP_MASK;
        let (pos, jumped) = match clock.last {
            None => {
                let o = *origin.get_or_insert(raw);
                let d = signed_step(raw, o);
                if d.unsigned_abs() > max_jump {
                    (*latest, true)
                } else {
                    (d.saturating_add(ORIGIN_90K), false)
                }
            }
            Some((last_raw, last_pos)) => {
                let step = signed_step(raw, last_raw);
                if step.unsigned_abs() > max_jump {
                    (last_pos, true)
                } else {
                    (last_pos.saturating_add(step), false)
                }
            }
        };
        if jumped {
            *jumps += 1;
            clock.jump_pending = true;
        }
        clock.last = Some((raw, pos));
        *latest = pos;
        pos
    }

    fn video_pes(&mut self, p: Pes, out: &mut Vec<Ingested>) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        let hevc = v.codec == Codec::H265;
        if p.after_loss && !v.waiting {
            v.waiting = true;
            self.note(format!(
                "data lost on video PID {:#06x}; frames dropped until the next keyframe",
                p.pid
            ));
        }
        let Some(v) = self.video.as_mut() else {
            return;
        };
        let Some(pts) = p.pts else {
            v.waiting = true;
            self.stats.dropped_frames += 1;
            self.note(format!(
                "video PES on PID {:#06x} without a PTS dropped; waiting for the next keyframe",
                p.pid
            ));
            return;
        };
        let dts = p.dts.unwrap_or(pts);
        let pos = Self::unwrap_ts(
            &mut v.clock,
            &mut self.origin,
            &mut self.latest,
            self.max_jump_90k,
            dts,
            &mut self.stats.timestamp_jumps,
        );
        let cts_90k = signed_step(pts, dts);

        // Split the access unit (Annex B, 14496-10 B.1 / 23008-2 B.2) and
        // look at what it holds.
        split_annex_b(&p.data, &mut self.nals);
        let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
        let mut keyframe = false;
        let mut other_slices = false;
        let mut rasl = false;
        let mut size = 0usize;
        for &(s, e) in &self.nals {
            let Some(nal) = p.data.get(s..e) else {
                continue;
            };
            let kind = nal_kind(nal, hevc);
            match kind {
                NalKind::Vps if vps.len() < MAX_PARAM_SETS => vps.push(p.data.slice(s..e)),
                NalKind::Sps if sps.len() < MAX_PARAM_SETS => sps.push(p.data.slice(s..e)),
                NalKind::Pps if pps.len() < MAX_PARAM_SETS => pps.push(p.data.slice(s..e)),
                NalKind::Keyframe => keyframe = true,
                NalKind::Other => {
                    other_slices |= is_non_irap_slice(nal, hevc);
                    // RASL_N, RASL_R (23008-2 Table 7-1).
                    rasl |=
                        hevc && matches!((nal.first().copied().unwrap_or(0) >> 1) & 0x3F, 8 | 9);
                }
                _ => {}
            }
            if kind.kept(false) {
                size += 4 + nal.len();
            }
        }
        for (have, new) in [(&mut v.vps, vps), (&mut v.sps, sps), (&mut v.pps, pps)] {
            if !new.is_empty() && *have != new {
                *have = new;
                v.dirty = true;
            }
        }
        if keyframe && other_slices {
            // Every slice of a picture has the same kind (14496-10 7.4.1.2.4,
            // 23008-2 7.4.2.4.4): this is two pictures glued together by a
            // loss the continuity counter did not show (16 packets of the
            // PID lost).
            v.waiting = true;
            self.stats.dropped_frames += 1;
            self.note(format!(
                "video PES on PID {:#06x} mixes keyframe and other slices (undetected loss); dropped, waiting for the next keyframe",
                p.pid
            ));
            return;
        }
        if v.waiting && !keyframe {
            self.stats.dropped_frames += 1;
            return;
        }
        if v.skip_rasl {
            if rasl {
                self.stats.dropped_frames += 1;
                return;
            }
            v.skip_rasl = false;
        }
        if v.dirty || v.record.is_none() {
            let record = if hevc {
                hevc::hevc_decoder_config_record(&v.vps, &v.sps, &v.pps)
            } else {
                h264::avc_decoder_config_record(&v.sps, &v.pps)
            };
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    v.waiting = true;
                    self.stats.dropped_frames += 1;
                    let codec = v.codec;
                    self.note(format!(
                        "{codec} keyframe dropped: no usable parameter sets yet ({e}); waiting for the next keyframe"
                    ));
                    return;
                }
            };
            v.dirty = false;
            if v.record.as_ref() != Some(&record) {
                let params = v.sps.first().and_then(|s| {
                    if hevc {
                        hevc::parse_sps(s).ok()
                    } else {
                        h264::parse_sps(s).ok()
                    }
                });
                v.record = Some(record.clone());
                out.push(Ingested {
                    event: MediaEvent::Config(CodecConfig::Video {
                        codec: v.codec,
                        record,
                        params,
                    }),
                    timestamp_jump: false,
                });
            }
        }
        if v.waiting {
            v.waiting = false;
            v.skip_rasl = hevc;
        }

        // Length-prefixed NAL units (14496-15 5.3.2 / 8.3.2, 4-byte lengths as
        // in FLV). AUDs and filler go (the muxer writes its own AUD); parameter
        // sets go from keyframes (they are in the record, and every consumer
        // replays the record before a keyframe) but stay on other frames,
        // where only in-band sets would reach a decoder.
        let mut data = BytesMut::with_capacity(size);
        for &(s, e) in &self.nals {
            let Some(nal) = p.data.get(s..e) else {
                continue;
            };
            if nal_kind(nal, hevc).kept(keyframe) {
                data.put_u32(nal.len() as u32);
                data.put_slice(nal);
            }
        }
        if data.is_empty() {
            return;
        }
        let (dts_ms, cts_ms) = to_ms(pos, cts_90k);
        self.stats.frames_video += 1;
        out.push(Ingested {
            event: MediaEvent::Frame(Frame {
                track: Track::Video,
                codec: v.codec,
                dts: dts_ms,
                cts: cts_ms,
                keyframe,
                data: data.freeze(),
            }),
            timestamp_jump: std::mem::take(&mut v.clock.jump_pending),
        });
    }

    fn audio_pes(&mut self, p: Pes, out: &mut Vec<Ingested>) {
        let Some(a) = self.audio.as_mut() else {
            return;
        };
        let Some(pts) = p.pts else {
            self.stats.dropped_frames += 1;
            self.note(format!(
                "audio PES on PID {:#06x} without a PTS dropped",
                p.pid
            ));
            return;
        };
        let pos = Self::unwrap_ts(
            &mut a.clock,
            &mut self.origin,
            &mut self.latest,
            self.max_jump_90k,
            pts,
            &mut self.stats.timestamp_jumps,
        );
        // A PES holds one or more whole ADTS frames (14496-3 1.A.2); each
        // is one access unit of 1024 samples after the PES's PTS.
        let mut at = 0usize;
        let mut n: u64 = 0;
        while at < p.data.len() {
            let rest = p.data.get(at..).unwrap_or_default();
            let header = match AdtsHeader::parse(rest) {
                Ok(h) if h.frame_length <= rest.len() => h,
                Ok(h) => {
                    self.stats.dropped_frames += 1;
                    self.note(format!(
                        "AAC frame on PID {:#06x} cut short: ADTS frame_length {} but {} bytes left in the PES; dropped",
                        p.pid,
                        h.frame_length,
                        rest.len()
                    ));
                    return;
                }
                Err(e) => {
                    self.stats.dropped_frames += 1;
                    self.note(format!(
                        "AAC data on PID {:#06x} dropped at byte {at} of its PES: {e}",
                        p.pid
                    ));
                    return;
                }
            };
            let frame_at = at;
            at += header.frame_length;
            let Some(a) = self.audio.as_mut() else {
                return;
            };
            if header.channel_configuration == 0 {
                // The layout would be in a program_config_element, which
                // the 2-byte AudioSpecificConfig cannot carry.
                self.stats.dropped_frames += 1;
                self.note(format!(
                    "AAC frame on PID {:#06x} dropped: ADTS channel_configuration 0 (layout in-band) is not supported",
                    p.pid
                ));
                continue;
            }
            let asc = header.audio_specific_config();
            if a.config != Some(asc) {
                a.config = Some(asc);
                let config = Bytes::copy_from_slice(&asc);
                let params = AudioSpecificConfig::parse(&config).ok().map(|c| c.params());
                out.push(Ingested {
                    event: MediaEvent::Config(CodecConfig::Audio {
                        codec: Codec::Aac,
                        config,
                        params,
                    }),
                    timestamp_jump: false,
                });
            }
            let raw = p
                .data
                .slice(frame_at + header.header_length..frame_at + header.frame_length);
            let rate = u64::from(header.sample_rate().max(1));
            let offset = n * AAC_SAMPLES_PER_FRAME * 90_000 / rate;
            n += 1;
            if raw.is_empty() {
                continue;
            }
            let (dts_ms, _) = to_ms(pos.saturating_add(offset as i64), 0);
            self.stats.frames_audio += 1;
            out.push(Ingested {
                event: MediaEvent::Frame(Frame {
                    track: Track::Audio,
                    codec: Codec::Aac,
                    dts: dts_ms,
                    cts: 0,
                    keyframe: true,
                    data: raw,
                }),
                timestamp_jump: std::mem::take(&mut a.clock.jump_pending),
            });
        }
    }
}

/// The codec sluice carries for a stream_type (Table 2-34), if any.
fn carried_codec(stream_type: u8) -> Option<Codec> {
    match stream_type {
        STREAM_TYPE_H264 => Some(Codec::H264),
        STREAM_TYPE_HEVC => Some(Codec::H265),
        STREAM_TYPE_AAC_ADTS => Some(Codec::Aac),
        _ => None,
    }
}

/// `a - b` on the 2^33 circle, the shorter way round.
fn signed_step(a: u64, b: u64) -> i64 {
    let d = a.wrapping_sub(b) & TIMESTAMP_MASK;
    if d >= HALF_RANGE {
        d as i64 - (1i64 << 33)
    } else {
        d as i64
    }
}

/// A position and composition offset in 90 kHz ticks to DTS and CTS in ms.
/// Both are floored from the tick values, so the PTS in ms is the floor of
/// the PTS in ticks and no rounding error builds up; positions before the
/// origin (a track starting a little before the other) clamp to 0.
fn to_ms(pos: i64, cts_90k: i64) -> (u64, i32) {
    let dts = pos.div_euclid(90).max(0);
    let pts = pos.saturating_add(cts_90k).div_euclid(90);
    let cts = pts
        .saturating_sub(dts)
        .clamp(i64::from(i32::MIN), i64::from(i32::MAX));
    (dts as u64, cts as i32)
}

/// What a NAL unit is, as far as the ingest cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NalKind {
    Vps,
    Sps,
    Pps,
    /// Access unit delimiter or filler data: dropped.
    Dropped,
    /// H.264 IDR slice (type 5) or HEVC IRAP (16..=21).
    Keyframe,
    Other,
}

impl NalKind {
    /// Whether the NAL unit goes into the frame; parameter sets stay only
    /// on frames that are not keyframes.
    fn kept(self, keyframe: bool) -> bool {
        match self {
            NalKind::Dropped => false,
            NalKind::Vps | NalKind::Sps | NalKind::Pps => !keyframe,
            NalKind::Keyframe | NalKind::Other => true,
        }
    }
}

/// A coded slice that is not an IDR (H.264 types 1..=4) / not IRAP (HEVC
/// VCL types 0..=15, 22..=31).
fn is_non_irap_slice(nal: &[u8], hevc: bool) -> bool {
    let Some(&b) = nal.first() else {
        return false;
    };
    if hevc {
        let t = (b >> 1) & 0x3F;
        t <= 15 || (22..=31).contains(&t)
    } else {
        (1..=4).contains(&(b & 0x1F))
    }
}

/// Classifies a NAL unit by its header (14496-10 Table 7-1, 23008-2 Table 7-1).
fn nal_kind(nal: &[u8], hevc: bool) -> NalKind {
    let Some(&b) = nal.first() else {
        return NalKind::Dropped;
    };
    if hevc {
        // A 2-byte header is required; shorter is not a NAL unit.
        if nal.len() < 2 {
            return NalKind::Dropped;
        }
        match (b >> 1) & 0x3F {
            hevc::NAL_VPS => NalKind::Vps,
            hevc::NAL_SPS => NalKind::Sps,
            hevc::NAL_PPS => NalKind::Pps,
            // AUD, filler data
            35 | 38 => NalKind::Dropped,
            16..=21 => NalKind::Keyframe,
            _ => NalKind::Other,
        }
    } else {
        match b & 0x1F {
            h264::NAL_SPS => NalKind::Sps,
            h264::NAL_PPS => NalKind::Pps,
            // AUD, filler data
            9 | 12 => NalKind::Dropped,
            h264::NAL_IDR => NalKind::Keyframe,
            _ => NalKind::Other,
        }
    }
}

/// Splits an Annex B byte stream (start codes 00 00 01, optionally with a
/// leading zero) into NAL unit ranges of `data`; bytes before the first start
/// code and trailing zero bytes (trailing_zero_8bits, B.1.1) are left out,
/// and so are empty units.
fn split_annex_b(data: &[u8], out: &mut Vec<(usize, usize)>) {
    out.clear();
    let mut start: Option<usize> = None;
    let push = |s: usize, e: usize, out: &mut Vec<(usize, usize)>| {
        let mut e = e;
        while e > s && data.get(e - 1) == Some(&0) {
            e -= 1;
        }
        if e > s {
            out.push((s, e));
        }
    };
    let mut i = 0;
    while let Some(&[a, b, c]) = data.get(i..i + 3) {
        if c > 1 {
            // No start code can begin at i, i + 1 or i + 2.
            i += 3;
        } else if a == 0 && b == 0 && c == 1 {
            if let Some(s) = start {
                push(s, i, out);
            }
            start = Some(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        push(s, data.len(), out);
    }
}

/// Split sizes the fuzz entry picks from: single bytes, around one packet, SRT payloads.
#[cfg(feature = "fuzzing")]
const FUZZ_SPLITS: [usize; 8] = [1, 7, 187, 188, 189, 1316, 2632, 5000];

/// Fuzzing entry point. The first byte seeds the splits (and whether some
/// splits report a transport gap); the rest is TS. Never panics on input;
/// checks bounded state after every push, that every frame is well formed
/// (AVCC lengths that add up, no AUD; ADTS-sized AAC), that each track's
/// configuration comes before its frames, and that our own muxer accepts
/// every configuration and frame the ingest produced.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_ingest(data: &[u8]) {
    fn check(ing: &TsIngest) {
        assert!(ing.notes.len() <= MAX_NOTES);
        if let Some(v) = &ing.video {
            assert!(v.vps.len() <= MAX_PARAM_SETS);
            assert!(v.sps.len() <= MAX_PARAM_SETS);
            assert!(v.pps.len() <= MAX_PARAM_SETS);
        }
        assert!(ing.pes.is_empty());
        assert!(ing.made.is_empty());
        assert!(ing.gate.open || ing.gate.held.len() <= START_HOLD_EVENTS);
    }
    let Some((&seed, ts)) = data.split_first() else {
        return;
    };
    let mut ing = TsIngest::new(Duration::from_secs(u64::from(seed % 16)));
    let mut out = Vec::new();
    for (rng, piece) in super::fuzz_pieces(seed, ts, &FUZZ_SPLITS) {
        if seed & 0x80 != 0 && rng % 29 == 0 {
            ing.discontinuity();
        }
        ing.push(piece, &mut out);
        check(&ing);
    }
    ing.flush(&mut out);
    check(&ing);
    let _ = ing.drain_notes();
    let _ = ing.describe();

    let mut mux = super::Muxer::new();
    let mut chunks = Vec::new();
    let mut configured = (None, None);
    for i in &out {
        match &i.event {
            MediaEvent::Config(c) => {
                mux.set_config(c)
                    .expect("the muxer accepts the ingest's configuration");
                match c.track() {
                    Track::Video => configured.0 = Some(c.codec()),
                    Track::Audio => configured.1 = Some(c.codec()),
                }
            }
            MediaEvent::Frame(f) => {
                match f.track {
                    Track::Video => {
                        assert_eq!(
                            configured.0,
                            Some(f.codec),
                            "video frame before its configuration"
                        );
                        let hevc = f.codec == Codec::H265;
                        let mut rest = &f.data[..];
                        assert!(!rest.is_empty());
                        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                            let len = u32::from_be_bytes(*len) as usize;
                            let nal = tail.get(..len).expect("NAL length within the frame");
                            assert_ne!(
                                nal_kind(nal, hevc),
                                NalKind::Dropped,
                                "AUD or filler left in"
                            );
                            rest = &tail[len..];
                        }
                        assert!(rest.is_empty(), "trailing bytes after the last NAL unit");
                    }
                    Track::Audio => {
                        assert_eq!(
                            configured.1,
                            Some(Codec::Aac),
                            "audio frame before its configuration"
                        );
                        assert!(!f.data.is_empty() && f.data.len() <= 0x1FFF - 7);
                    }
                }
                mux.push(f, &mut chunks)
                    .expect("the muxer accepts the ingest's frame");
                chunks.clear();
            }
            MediaEvent::EndOfSequence(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
