//! A tiny FLV file reader (Adobe FLV spec v10.1, annex E) and helpers that
//! build FLV video tags for HEVC from a raw Annex B elementary stream, both
//! as Enhanced RTMP (FourCC `hvc1`) and as the legacy codec id 12.

use std::path::Path;

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// One FLV tag: type, 32-bit millisecond timestamp, tag body.
#[derive(Clone, Debug)]
pub struct FlvTag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub data: Vec<u8>,
}

/// What a media tag carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagKind {
    /// Decoder configuration (AVC/HEVC sequence header, AAC AudioSpecificConfig).
    Config,
    /// A coded frame.
    Frame,
    /// End of sequence, metadata, command frames and the like.
    Other,
}

impl FlvTag {
    pub fn is_audio(&self) -> bool {
        self.tag_type == TAG_AUDIO
    }

    pub fn is_video(&self) -> bool {
        self.tag_type == TAG_VIDEO
    }

    pub fn kind(&self) -> TagKind {
        let d = &self.data;
        match self.tag_type {
            TAG_VIDEO => {
                let Some(&b0) = d.first() else {
                    return TagKind::Other;
                };
                if b0 & 0x80 != 0 {
                    // Enhanced RTMP: IsExHeader | FrameType(3) | PacketType(4).
                    let frame_type = (b0 >> 4) & 0x07;
                    if frame_type == 5 {
                        return TagKind::Other;
                    }
                    return match b0 & 0x0F {
                        0 => TagKind::Config,
                        1 | 3 => TagKind::Frame,
                        _ => TagKind::Other,
                    };
                }
                let frame_type = b0 >> 4;
                let codec = b0 & 0x0F;
                if frame_type == 5 {
                    return TagKind::Other;
                }
                if codec == 7 || codec == 12 {
                    match d.get(1) {
                        Some(0) => TagKind::Config,
                        Some(1) => TagKind::Frame,
                        _ => TagKind::Other,
                    }
                } else {
                    TagKind::Frame
                }
            }
            TAG_AUDIO => {
                let Some(&b0) = d.first() else {
                    return TagKind::Other;
                };
                if b0 >> 4 == 10 {
                    match d.get(1) {
                        Some(0) => TagKind::Config,
                        Some(1) => TagKind::Frame,
                        _ => TagKind::Other,
                    }
                } else {
                    TagKind::Frame
                }
            }
            _ => TagKind::Other,
        }
    }

    pub fn is_frame(&self) -> bool {
        self.kind() == TagKind::Frame
    }

    /// Video frame with frame type 1 (keyframe).
    pub fn is_keyframe(&self) -> bool {
        if !self.is_video() || !self.is_frame() {
            return false;
        }
        let b0 = self.data[0];
        if b0 & 0x80 != 0 {
            (b0 >> 4) & 0x07 == 1
        } else {
            b0 >> 4 == 1
        }
    }

    /// The signed 24-bit composition time offset of an AVC / legacy HEVC
    /// NALU tag.
    pub fn composition_time(&self) -> Option<i32> {
        if !self.is_video() || self.data.len() < 5 || self.data[0] & 0x80 != 0 {
            return None;
        }
        let codec = self.data[0] & 0x0F;
        if (codec != 7 && codec != 12) || self.data[1] != 1 {
            return None;
        }
        let raw = u32::from_be_bytes([0, self.data[2], self.data[3], self.data[4]]);
        Some(((raw << 8) as i32) >> 8)
    }
}

/// A parsed FLV file.
#[derive(Clone, Debug)]
pub struct FlvFile {
    pub has_audio: bool,
    pub has_video: bool,
    pub tags: Vec<FlvTag>,
}

impl FlvFile {
    /// (video frames, audio frames): coded frames only, without decoder
    /// configuration or end-of-sequence tags.
    pub fn frame_counts(&self) -> (u64, u64) {
        frame_counts(&self.tags)
    }

    /// Duration between the first and the last media tag, in ms.
    pub fn duration_ms(&self) -> u32 {
        let ts: Vec<u32> = self
            .tags
            .iter()
            .filter(|t| t.is_audio() || t.is_video())
            .map(|t| t.timestamp)
            .collect();
        match (ts.iter().min(), ts.iter().max()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }
}

/// (video frames, audio frames) among `tags`.
pub fn frame_counts(tags: &[FlvTag]) -> (u64, u64) {
    let v = tags.iter().filter(|t| t.is_video() && t.is_frame()).count() as u64;
    let a = tags.iter().filter(|t| t.is_audio() && t.is_frame()).count() as u64;
    (v, a)
}

fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

/// Parses an FLV file: 9-byte header, then (PreviousTagSize, tag)*.
pub fn parse_flv(bytes: &[u8]) -> Result<FlvFile, String> {
    if bytes.len() < 9 || &bytes[..3] != b"FLV" {
        return Err("not an FLV file (no `FLV` signature)".into());
    }
    if bytes[3] != 1 {
        return Err(format!("unknown FLV version {}", bytes[3]));
    }
    let flags = bytes[4];
    let offset = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    if offset < 9 || offset > bytes.len() {
        return Err(format!("bad FLV data offset {offset}"));
    }
    let mut pos = offset;
    let mut tags = Vec::new();
    let mut prev_size_expected = 0u32;
    loop {
        if pos + 4 > bytes.len() {
            break;
        }
        let prev = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        if prev != prev_size_expected {
            return Err(format!(
                "PreviousTagSize {prev} at offset {pos}, expected {prev_size_expected}"
            ));
        }
        pos += 4;
        if pos == bytes.len() {
            break;
        }
        if pos + 11 > bytes.len() {
            return Err(format!("truncated tag header at offset {pos}"));
        }
        let h = &bytes[pos..pos + 11];
        if h[0] & 0x20 != 0 {
            return Err("encrypted (filtered) FLV tags are not supported".into());
        }
        let tag_type = h[0] & 0x1F;
        let size = be24(&h[1..4]) as usize;
        let timestamp = be24(&h[4..7]) | (u32::from(h[7]) << 24);
        let body_start = pos + 11;
        if body_start + size > bytes.len() {
            return Err(format!("truncated tag body at offset {body_start}"));
        }
        tags.push(FlvTag {
            tag_type,
            timestamp,
            data: bytes[body_start..body_start + size].to_vec(),
        });
        pos = body_start + size;
        prev_size_expected = 11 + size as u32;
    }
    Ok(FlvFile {
        has_audio: flags & 0x04 != 0,
        has_video: flags & 0x01 != 0,
        tags,
    })
}

/// Reads and parses an FLV file, panicking with the path on error.
pub fn read_flv(path: &Path) -> FlvFile {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_flv(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Merges two tag lists by timestamp (stable: `a` first on ties).
pub fn merge_by_timestamp(a: Vec<FlvTag>, b: Vec<FlvTag>) -> Vec<FlvTag> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut ia = a.into_iter().peekable();
    let mut ib = b.into_iter().peekable();
    loop {
        let take_a = match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) => x.timestamp <= y.timestamp,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.push(if take_a { ia.next() } else { ib.next() }.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------
// HEVC: Annex B → FLV video tags
// ---------------------------------------------------------------------------

/// Splits an Annex B byte stream into NAL units (without start codes).
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start of start code, start of NAL)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let sc = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((sc, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (k, &(_, nal_start)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map(|&(sc, _)| sc).unwrap_or(data.len());
        let mut nal = &data[nal_start..end];
        while nal.last() == Some(&0) {
            nal = &nal[..nal.len() - 1];
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    nals
}

fn hevc_nal_type(nal: &[u8]) -> u8 {
    (nal[0] >> 1) & 0x3F
}

/// Removes emulation prevention bytes (00 00 03 → 00 00).
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Builds an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1)
/// for 8-bit 4:2:0 video from one VPS, SPS and PPS.
pub fn build_hvcc(vps: &[u8], sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let r = rbsp(sps);
    assert!(r.len() >= 15, "SPS too short");
    // r[0..2]: NAL header; r[2]: vps id(4) max_sub_layers_minus1(3) nesting(1);
    // r[3..15]: general profile_tier_level (12 bytes).
    let max_sub_layers = ((r[2] >> 1) & 0x07) + 1;
    let nesting = r[2] & 1;
    let mut c = vec![1u8];
    c.extend_from_slice(&r[3..15]);
    c.extend_from_slice(&[0xF0, 0x00]); // min_spatial_segmentation_idc = 0
    c.push(0xFC); // parallelismType = 0
    c.push(0xFD); // chromaFormat = 1 (4:2:0)
    c.push(0xF8); // bitDepthLumaMinus8 = 0
    c.push(0xF8); // bitDepthChromaMinus8 = 0
    c.extend_from_slice(&[0, 0]); // avgFrameRate
    c.push((max_sub_layers << 3) | (nesting << 2) | 3); // lengthSizeMinusOne = 3
    c.push(3);
    for (ty, nal) in [(32u8, vps), (33, sps), (34, pps)] {
        c.push(0x80 | ty);
        c.extend_from_slice(&1u16.to_be_bytes());
        c.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        c.extend_from_slice(nal);
    }
    c
}

/// One HEVC access unit: length-prefixed NAL units (parameter sets removed).
#[derive(Clone, Debug)]
pub struct HevcFrame {
    pub keyframe: bool,
    pub avcc: Vec<u8>,
}

/// Parses an Annex B HEVC stream with one slice per picture and no
/// reordering into (hvcC, frames).
pub fn hevc_frames(data: &[u8]) -> (Vec<u8>, Vec<HevcFrame>) {
    let (mut vps, mut sps, mut pps) = (None, None, None);
    let mut frames = Vec::new();
    let mut pending: Vec<&[u8]> = Vec::new(); // non-VCL NALs for the next frame
    for nal in split_annexb(data) {
        if nal.len() < 3 {
            continue;
        }
        let ty = hevc_nal_type(nal);
        match ty {
            32 => {
                vps.get_or_insert(nal);
            }
            33 => {
                sps.get_or_insert(nal);
            }
            34 => {
                pps.get_or_insert(nal);
            }
            35 => {} // access unit delimiter
            0..=31 => {
                let first_slice = nal[2] & 0x80 != 0;
                assert!(first_slice, "fixture must have one slice per picture");
                let mut avcc = Vec::new();
                for n in pending.drain(..).chain(std::iter::once(nal)) {
                    avcc.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    avcc.extend_from_slice(n);
                }
                frames.push(HevcFrame {
                    keyframe: (16..=21).contains(&ty),
                    avcc,
                });
            }
            _ => pending.push(nal),
        }
    }
    let hvcc = build_hvcc(
        vps.expect("no VPS in HEVC stream"),
        sps.expect("no SPS in HEVC stream"),
        pps.expect("no PPS in HEVC stream"),
    );
    (hvcc, frames)
}

/// FLV video tags for an HEVC stream at `fps` (timestamps from 0).
/// `enhanced`: Enhanced RTMP with FourCC `hvc1` (SequenceStart, then
/// CodedFrames for keyframes and CodedFramesX for the others); otherwise
/// the legacy layout with codec id 12 (same as AVC's).
pub fn hevc_tags(data: &[u8], fps: u32, enhanced: bool) -> Vec<FlvTag> {
    let (hvcc, frames) = hevc_frames(data);
    let mut tags = Vec::with_capacity(frames.len() + 1);
    let mut config = Vec::new();
    if enhanced {
        config.push(0x80 | (1 << 4)); // keyframe, SequenceStart
        config.extend_from_slice(b"hvc1");
    } else {
        config.extend_from_slice(&[(1 << 4) | 12, 0, 0, 0, 0]);
    }
    config.extend_from_slice(&hvcc);
    tags.push(FlvTag {
        tag_type: TAG_VIDEO,
        timestamp: 0,
        data: config,
    });
    for (i, f) in frames.iter().enumerate() {
        let ts = (i as u64 * 1000 / fps as u64) as u32;
        let frame_type: u8 = if f.keyframe { 1 } else { 2 };
        let mut d = Vec::with_capacity(f.avcc.len() + 8);
        if enhanced {
            if f.keyframe {
                d.push(0x80 | (frame_type << 4) | 1); // CodedFrames + SI24 cts
                d.extend_from_slice(b"hvc1");
                d.extend_from_slice(&[0, 0, 0]);
            } else {
                d.push(0x80 | (frame_type << 4) | 3); // CodedFramesX
                d.extend_from_slice(b"hvc1");
            }
        } else {
            d.extend_from_slice(&[(frame_type << 4) | 12, 1, 0, 0, 0]);
        }
        d.extend_from_slice(&f.avcc);
        tags.push(FlvTag {
            tag_type: TAG_VIDEO,
            timestamp: ts,
            data: d,
        });
    }
    tags
}
