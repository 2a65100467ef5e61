//! H.265/HEVC sequence parameter set parsing (ISO/IEC 23008-2 7.3.2.2) and the
//! HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1) carried by FLV/E-RTMP sequence headers.
//! Extracts displayed size (after the conformance window), profile and level; every read is bounds-checked.

use bytes::Bytes;

use super::bits::{remove_emulation_prevention, BitReader};
use super::{ByteReader, MediaError, Pos, VideoParams};

const SPS: &str = "HEVC SPS";
const HVCC: &str = "HEVCDecoderConfigurationRecord";

/// nal_unit_type values (ISO/IEC 23008-2 Table 7-1).
pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;

/// The contents of an HEVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct HevcConfig {
    /// Size in bytes of the NAL unit length prefix in frames (lengthSizeMinusOne + 1).
    pub nal_length_size: u8,
    /// general_profile_idc as carried in the record.
    pub general_profile_idc: u8,
    /// general_level_idc as carried in the record.
    pub general_level_idc: u8,
    /// Video parameter set NAL units (with their 2-byte NAL header).
    pub vps: Vec<Bytes>,
    /// Sequence parameter set NAL units (with their 2-byte NAL header).
    pub sps: Vec<Bytes>,
    /// Picture parameter set NAL units (with their 2-byte NAL header).
    pub pps: Vec<Bytes>,
    /// Parameters from the first SPS; `None` if there is none or it does not parse.
    pub params: Option<VideoParams>,
}

/// Human-readable name of an HEVC general_profile_idc (Annex A.3).
pub fn profile_name(profile_idc: u8) -> Option<&'static str> {
    Some(match profile_idc {
        1 => "Main",
        2 => "Main 10",
        3 => "Main Still Picture",
        4 => "Rext",
        5 => "High Throughput",
        6 => "Multiview Main",
        7 => "Scalable Main",
        8 => "3D Main",
        9 => "Screen Extended",
        10 => "Scalable Rext",
        11 => "High Throughput Screen Extended",
        _ => return None,
    })
}

/// The RBSP of an SPS NAL unit, after checking its nal_unit_header():
/// forbidden_zero_bit, nal_unit_type u(6), layer id u(6), tid u(3)
/// (7.3.1.2).
fn sps_rbsp(nal: &[u8]) -> Result<Vec<u8>, MediaError> {
    let nal_type = nal.first().map_or(0, |h| (h >> 1) & 0x3F);
    if nal_type != NAL_SPS {
        return Err(MediaError::Invalid {
            what: SPS,
            field: "nal_unit_type",
            value: u64::from(nal_type),
            at: Pos::Byte(0),
            reason: "expected 33 (sequence parameter set)",
        });
    }
    Ok(remove_emulation_prevention(nal.get(2..).unwrap_or(&[])))
}

/// Parses an HEVC SPS NAL unit, including its 2-byte NAL header.
pub fn parse_sps(nal: &[u8]) -> Result<VideoParams, MediaError> {
    let (Some(_), Some(_)) = (nal.first(), nal.get(1)) else {
        return Err(MediaError::Truncated {
            what: SPS,
            field: "nal_unit_header",
            at: Pos::Byte(nal.len()),
        });
    };
    let rbsp = sps_rbsp(nal)?;
    let mut r = BitReader::new(&rbsp, SPS);

    r.skip_bits(4, "sps_video_parameter_set_id")?;
    let max_sub_layers_minus1 = r.read_bits(3, "sps_max_sub_layers_minus1")?;
    if max_sub_layers_minus1 > 6 {
        return Err(r.invalid(
            "sps_max_sub_layers_minus1",
            max_sub_layers_minus1.into(),
            "must be 0..=6",
        ));
    }
    r.skip_bits(1, "sps_temporal_id_nesting_flag")?;
    let (profile_idc, compat, level_idc) = profile_tier_level(&mut r, max_sub_layers_minus1)?;

    let sps_id = r.read_ue("sps_seq_parameter_set_id")?;
    if sps_id > 15 {
        return Err(r.invalid("sps_seq_parameter_set_id", sps_id.into(), "must be 0..=15"));
    }
    let chroma_format_idc = r.read_ue("chroma_format_idc")?;
    if chroma_format_idc > 3 {
        return Err(r.invalid(
            "chroma_format_idc",
            chroma_format_idc.into(),
            "must be 0..=3",
        ));
    }
    let mut separate_colour_plane = false;
    if chroma_format_idc == 3 {
        separate_colour_plane = r.read_bit("separate_colour_plane_flag")?;
    }
    let width_at = r.bit_pos();
    let pic_w = u64::from(r.read_ue("pic_width_in_luma_samples")?);
    let pic_h = u64::from(r.read_ue("pic_height_in_luma_samples")?);
    if pic_w == 0 || pic_h == 0 {
        return Err(MediaError::Invalid {
            what: SPS,
            field: "pic_width_in_luma_samples/pic_height_in_luma_samples",
            value: 0,
            at: Pos::Bit(width_at),
            reason: "picture size must be non-zero",
        });
    }
    // SubWidthC/SubHeightC from Table 6-1; separate planes code like 4:0:0.
    let (sub_w, sub_h): (u64, u64) = match (chroma_format_idc, separate_colour_plane) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let (mut left, mut right, mut top, mut bottom) = (0u64, 0u64, 0u64, 0u64);
    let conf_at = r.bit_pos();
    if r.read_bit("conformance_window_flag")? {
        left = r.read_ue("conf_win_left_offset")?.into();
        right = r.read_ue("conf_win_right_offset")?.into();
        top = r.read_ue("conf_win_top_offset")?.into();
        bottom = r.read_ue("conf_win_bottom_offset")?.into();
    }
    // 7.4.3.2.1: the window is SubWidthC * offsets luma samples on each side.
    let crop_w = sub_w * (left + right);
    let crop_h = sub_h * (top + bottom);
    if crop_w >= pic_w || crop_h >= pic_h {
        return Err(MediaError::Invalid {
            what: SPS,
            field: "conf_win_offsets",
            value: crop_w.max(crop_h),
            at: Pos::Bit(conf_at),
            reason: "conformance window removes the whole picture",
        });
    }
    let width = u32::try_from(pic_w - crop_w)
        .map_err(|_| r.invalid("pic_width_in_luma_samples", pic_w, "picture too wide"))?;
    let height = u32::try_from(pic_h - crop_h)
        .map_err(|_| r.invalid("pic_height_in_luma_samples", pic_h, "picture too tall"))?;

    // general_profile_idc 0 with compatibility flags set is legal: the
    // lowest flagged profile is the one the stream conforms to (A.3).
    let profile = if profile_idc != 0 {
        profile_name(profile_idc)
    } else {
        (1u8..32)
            .find(|j| compat & (1u32 << (31 - u32::from(*j))) != 0)
            .and_then(profile_name)
    };
    Ok(VideoParams {
        width,
        height,
        profile: profile.map(str::to_owned),
        level: Some(level_idc),
    })
}

/// Reads profile_tier_level(1, maxNumSubLayersMinus1) (7.3.3) and returns
/// (general_profile_idc, general_profile_compatibility_flags, general_level_idc).
/// Sub-layer entries are skipped; their sizes depend on per-layer presence flags.
fn profile_tier_level(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: u32,
) -> Result<(u8, u32, u8), MediaError> {
    r.skip_bits(2, "general_profile_space")?;
    r.skip_bits(1, "general_tier_flag")?;
    let profile_idc = r.read_bits(5, "general_profile_idc")?;
    let compat = r.read_bits(32, "general_profile_compatibility_flags")?;
    // progressive, interlaced, non_packed, frame_only (4) + 43 constraint
    // bits + general_inbld_flag/reserved (1).
    r.skip_bits(48, "general_constraint_flags")?;
    let level_idc = r.read_u8("general_level_idc")?;

    let mut profile_present = [false; 7];
    let mut level_present = [false; 7];
    let n = max_sub_layers_minus1 as usize;
    for i in 0..n {
        let p = r.read_bit("sub_layer_profile_present_flag")?;
        let l = r.read_bit("sub_layer_level_present_flag")?;
        if let (Some(pp), Some(lp)) = (profile_present.get_mut(i), level_present.get_mut(i)) {
            *pp = p;
            *lp = l;
        }
    }
    if n > 0 {
        // reserved_zero_2bits for i in maxNumSubLayersMinus1..8
        r.skip_bits(2 * (8 - n), "reserved_zero_2bits")?;
    }
    for i in 0..n {
        if profile_present.get(i).copied().unwrap_or(false) {
            // space(2) tier(1) idc(5) compat(32) flags(4) constraints(43) inbld(1)
            r.skip_bits(88, "sub_layer_profile")?;
        }
        if level_present.get(i).copied().unwrap_or(false) {
            r.skip_bits(8, "sub_layer_level_idc")?;
        }
    }
    let profile_idc = u8::try_from(profile_idc).unwrap_or(0);
    Ok((profile_idc, compat, level_idc))
}

/// Parses an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1.2).
/// Arrays of VPS/SPS/PPS are copied out; other arrays (SEI) are skipped.
/// `params` come from the first SPS that parses.
pub fn parse_hevc_decoder_config(record: &[u8]) -> Result<HevcConfig, MediaError> {
    let mut r = ByteReader::new(record, HVCC);
    let version = r.u8("configurationVersion")?;
    if version == 0 {
        return Err(r.invalid(
            "configurationVersion",
            0,
            "must be 1 (data looks like Annex B, not hvcC)",
        ));
    }
    let general_profile_idc = r.u8("general_profile_space/tier/profile_idc")? & 0x1F;
    r.take(4, "general_profile_compatibility_flags")?;
    r.take(6, "general_constraint_indicator_flags")?;
    let general_level_idc = r.u8("general_level_idc")?;
    r.take(2, "min_spatial_segmentation_idc")?;
    r.u8("parallelismType")?;
    r.u8("chromaFormat")?;
    r.u8("bitDepthLumaMinus8")?;
    r.u8("bitDepthChromaMinus8")?;
    r.take(2, "avgFrameRate")?;
    let nal_length_size = (r.u8("lengthSizeMinusOne")? & 0x03) + 1;
    let num_arrays = r.u8("numOfArrays")?;
    let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..num_arrays {
        let nal_type = r.u8("NAL_unit_type")? & 0x3F;
        let num_nalus = r.u16("numNalus")?;
        for _ in 0..num_nalus {
            let len = usize::from(r.u16("nalUnitLength")?);
            let nal = r.take(len, "nalUnit")?;
            let list = match nal_type {
                NAL_VPS => &mut vps,
                NAL_SPS => &mut sps,
                NAL_PPS => &mut pps,
                _ => continue,
            };
            list.push(Bytes::copy_from_slice(nal));
        }
    }
    let params = sps.iter().find_map(|s| parse_sps(s).ok());
    Ok(HevcConfig {
        nal_length_size,
        general_profile_idc,
        general_level_idc,
        vps,
        sps,
        pps,
        params,
    })
}

/// Most NAL units of one type an HEVCDecoderConfigurationRecord built here
/// holds (VPS ids are 4 bits, SPS 4 bits, PPS 6 bits: 16, 16 and 64 sets).
pub const MAX_RECORD_NALUS: usize = 64;

/// The fields of an SPS an HEVCDecoderConfigurationRecord repeats (14496-15 8.3.3.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordFields {
    /// general_profile_space(2) general_tier_flag(1) general_profile_idc(5).
    profile_byte: u8,
    compat: [u8; 4],
    constraints: [u8; 6],
    level_idc: u8,
    max_sub_layers_minus1: u8,
    temporal_id_nesting: bool,
    chroma_format_idc: u8,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
}

/// Reads [`RecordFields`] from an SPS NAL unit (7.3.2.2.1): the general
/// profile_tier_level is byte-aligned right after the first RBSP byte; the
/// chroma format and bit depths follow the picture size and conformance window.
fn record_fields(nal: &[u8]) -> Result<RecordFields, MediaError> {
    let rbsp = sps_rbsp(nal)?;
    let Some(&[first, profile_byte, c0, c1, c2, c3, k0, k1, k2, k3, k4, k5, level_idc]) =
        rbsp.get(..13)
    else {
        return Err(MediaError::Truncated {
            what: SPS,
            field: "profile_tier_level",
            at: Pos::Byte(rbsp.len() + 2),
        });
    };
    let max_sub_layers_minus1 = (first >> 1) & 0x07;
    let mut r = BitReader::new(&rbsp, SPS);
    r.skip_bits(8, "sps_video_parameter_set_id/max_sub_layers/nesting")?;
    if max_sub_layers_minus1 > 6 {
        return Err(r.invalid(
            "sps_max_sub_layers_minus1",
            max_sub_layers_minus1.into(),
            "must be 0..=6",
        ));
    }
    profile_tier_level(&mut r, max_sub_layers_minus1.into())?;
    r.read_ue("sps_seq_parameter_set_id")?;
    let chroma = r.read_ue("chroma_format_idc")?;
    if chroma > 3 {
        return Err(r.invalid("chroma_format_idc", chroma.into(), "must be 0..=3"));
    }
    if chroma == 3 {
        r.skip_bits(1, "separate_colour_plane_flag")?;
    }
    r.read_ue("pic_width_in_luma_samples")?;
    r.read_ue("pic_height_in_luma_samples")?;
    if r.read_bit("conformance_window_flag")? {
        for field in [
            "conf_win_left_offset",
            "conf_win_right_offset",
            "conf_win_top_offset",
            "conf_win_bottom_offset",
        ] {
            r.read_ue(field)?;
        }
    }
    let luma = r.read_ue("bit_depth_luma_minus8")?;
    let chroma_depth = r.read_ue("bit_depth_chroma_minus8")?;
    // 7.4.3.2.1: both are 0..=8.
    if luma > 8 || chroma_depth > 8 {
        return Err(r.invalid(
            "bit_depth_minus8",
            luma.max(chroma_depth).into(),
            "must be 0..=8",
        ));
    }
    Ok(RecordFields {
        profile_byte,
        compat: [c0, c1, c2, c3],
        constraints: [k0, k1, k2, k3, k4, k5],
        level_idc,
        max_sub_layers_minus1,
        temporal_id_nesting: first & 0x01 != 0,
        chroma_format_idc: chroma as u8,
        bit_depth_luma_minus8: luma as u8,
        bit_depth_chroma_minus8: chroma_depth as u8,
    })
}

/// Builds an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1) with
/// 4-byte NAL lengths from parameter sets found in-band (Annex B). Profile,
/// tier, level, constraint flags, chroma format, bit depths and temporal
/// layering come from the first SPS; min_spatial_segmentation_idc,
/// parallelismType and avgFrameRate are written as 0 ("unknown"), which
/// decoders accept. The arrays are complete (array_completeness 1).
pub fn hevc_decoder_config_record(
    vps: &[Bytes],
    sps: &[Bytes],
    pps: &[Bytes],
) -> Result<Bytes, MediaError> {
    let bad = |field, value: usize, reason| MediaError::Invalid {
        what: HVCC,
        field,
        value: value as u64,
        at: Pos::Byte(0),
        reason,
    };
    for (field, list) in [("VPS", vps), ("SPS", sps), ("PPS", pps)] {
        if list.is_empty() || list.len() > MAX_RECORD_NALUS {
            return Err(bad(
                field,
                list.len(),
                "1..=64 parameter sets of each kind are needed",
            ));
        }
    }
    let first = sps.first().map(|b| &b[..]).unwrap_or_default();
    let f = record_fields(first)?;
    let mut r = Vec::with_capacity(
        23 + 3 * 3
            + vps
                .iter()
                .chain(sps)
                .chain(pps)
                .map(|n| 2 + n.len())
                .sum::<usize>(),
    );
    r.push(1);
    r.push(f.profile_byte);
    r.extend_from_slice(&f.compat);
    r.extend_from_slice(&f.constraints);
    r.push(f.level_idc);
    // reserved(4) min_spatial_segmentation_idc(12) = 0; reserved(6) parallelismType(2) = 0.
    r.extend_from_slice(&[0xF0, 0x00, 0xFC]);
    r.push(0xFC | f.chroma_format_idc);
    r.push(0xF8 | f.bit_depth_luma_minus8);
    r.push(0xF8 | f.bit_depth_chroma_minus8);
    // avgFrameRate = 0; constantFrameRate(2) = 0, numTemporalLayers(3),
    // temporalIdNested(1), lengthSizeMinusOne(2) = 3.
    r.extend_from_slice(&[0, 0]);
    r.push(((f.max_sub_layers_minus1 + 1) << 3) | (u8::from(f.temporal_id_nesting) << 2) | 3);
    r.push(3);
    for (nal_type, list) in [(NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)] {
        // array_completeness(1) = 1, reserved(1) = 0, NAL_unit_type(6).
        r.push(0x80 | nal_type);
        r.extend_from_slice(&(list.len() as u16).to_be_bytes());
        for nal in list {
            let len = u16::try_from(nal.len())
                .ok()
                .filter(|&l| l >= 2)
                .ok_or_else(|| bad("nalUnitLength", nal.len(), "must be 2..=65535 bytes"))?;
            r.extend_from_slice(&len.to_be_bytes());
            r.extend_from_slice(nal);
        }
    }
    Ok(Bytes::from(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct BitWriter {
        out: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn new() -> Self {
            BitWriter {
                out: Vec::new(),
                bits: 0,
            }
        }
        fn bit(&mut self, b: bool) {
            if self.bits % 8 == 0 {
                self.out.push(0);
            }
            if b {
                *self.out.last_mut().unwrap() |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
        fn bits(&mut self, n: u32, v: u64) {
            for i in (0..n).rev() {
                self.bit(i < 64 && (v >> i) & 1 == 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(len - 1, 0);
            self.bits(len, x);
        }
    }

    /// Builds the head of an SPS up to the conformance window (enough for
    /// the parser, which stops there).
    fn build_sps(
        sub_layers_minus1: u32,
        chroma: u32,
        w: u32,
        h: u32,
        conf: Option<(u32, u32, u32, u32)>,
    ) -> Vec<u8> {
        let mut b = BitWriter::new();
        b.bits(4, 0);
        b.bits(3, sub_layers_minus1.into());
        b.bit(true);
        // general PTL: Main profile, level 4.1
        b.bits(2, 0);
        b.bit(false);
        b.bits(5, 1);
        b.bits(32, 0x6000_0000);
        b.bits(48, 0);
        b.bits(8, 123);
        for i in 0..sub_layers_minus1 {
            b.bit(i % 2 == 0); // profile present on even layers
            b.bit(true); // level present
        }
        if sub_layers_minus1 > 0 {
            b.bits(2 * (8 - sub_layers_minus1), 0);
        }
        for i in 0..sub_layers_minus1 {
            if i % 2 == 0 {
                b.bits(88, 0x5A5A);
            }
            b.bits(8, 90);
        }
        b.ue(0);
        b.ue(chroma);
        if chroma == 3 {
            b.bit(false);
        }
        b.ue(w);
        b.ue(h);
        match conf {
            Some((l, r, t, bo)) => {
                b.bit(true);
                b.ue(l);
                b.ue(r);
                b.ue(t);
                b.ue(bo);
            }
            None => b.bit(false),
        }
        b.ue(0); // bit_depth_luma_minus8, so the stream goes on a bit
        b.bit(true);
        let mut nal = vec![0x42, 0x01];
        let mut zeros = 0;
        for x in b.out {
            if zeros >= 2 && x <= 3 {
                nal.push(3);
                zeros = 0;
            }
            zeros = if x == 0 { zeros + 1 } else { 0 };
            nal.push(x);
        }
        nal
    }

    #[test]
    fn parses_size_profile_and_level() {
        let p = parse_sps(&build_sps(0, 1, 1280, 720, None)).unwrap();
        assert_eq!((p.width, p.height), (1280, 720));
        assert_eq!(p.profile.as_deref(), Some("Main"));
        assert_eq!(p.level, Some(123));
    }

    #[test]
    fn applies_conformance_window_in_chroma_units() {
        // 4:2:0: offsets are in units of 2 luma samples.
        let p = parse_sps(&build_sps(0, 1, 1920, 1088, Some((0, 0, 0, 4)))).unwrap();
        assert_eq!((p.width, p.height), (1920, 1080));
        // 4:2:2: SubHeightC = 1.
        let p = parse_sps(&build_sps(0, 2, 1920, 1088, Some((1, 1, 0, 8)))).unwrap();
        assert_eq!((p.width, p.height), (1916, 1080));
        // 4:4:4 and 4:0:0: units of 1.
        let p = parse_sps(&build_sps(0, 3, 1920, 1088, Some((1, 1, 0, 8)))).unwrap();
        assert_eq!((p.width, p.height), (1918, 1080));
        let p = parse_sps(&build_sps(0, 0, 1920, 1088, Some((1, 1, 0, 8)))).unwrap();
        assert_eq!((p.width, p.height), (1918, 1080));
    }

    #[test]
    fn skips_sub_layer_profile_and_level_entries() {
        for layers in 0..=6 {
            let p = parse_sps(&build_sps(layers, 1, 640, 360, None)).unwrap();
            assert_eq!((p.width, p.height), (640, 360), "sub layers {layers}");
        }
    }

    #[test]
    fn rejects_bad_headers_and_windows() {
        assert!(parse_sps(&[0x40, 0x01, 0])
            .unwrap_err()
            .to_string()
            .contains("nal_unit_type = 32"));
        assert!(parse_sps(&[0x42]).is_err());
        let e = parse_sps(&build_sps(0, 1, 64, 64, Some((16, 16, 0, 0)))).unwrap_err();
        assert!(e.to_string().contains("conformance window"), "{e}");
        let e = parse_sps(&build_sps(0, 1, 0, 64, None)).unwrap_err();
        assert!(e.to_string().contains("non-zero"), "{e}");
        let mut sps = build_sps(0, 1, 64, 64, None);
        sps[2] = 0x0F; // sps_max_sub_layers_minus1 = 7
        assert!(parse_sps(&sps)
            .unwrap_err()
            .to_string()
            .contains("sps_max_sub_layers_minus1"));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let nal = build_sps(3, 1, 1920, 1088, Some((0, 0, 0, 4)));
        for n in 0..nal.len() {
            let _ = parse_sps(&nal[..n]);
        }
        assert!(parse_sps(&nal[..nal.len() / 2]).is_err());
    }

    fn build_record(arrays: &[(u8, Vec<Vec<u8>>)]) -> Vec<u8> {
        let mut r = vec![
            1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 123, 0xF0, 0, 0xFC, 0xFD, 0xF8, 0xF8, 0,
            0, 0x0F,
        ];
        r.push(arrays.len() as u8);
        for (t, nalus) in arrays {
            r.push(0x80 | t);
            r.extend_from_slice(&(nalus.len() as u16).to_be_bytes());
            for n in nalus {
                r.extend_from_slice(&(n.len() as u16).to_be_bytes());
                r.extend_from_slice(n);
            }
        }
        r
    }

    #[test]
    fn parses_hevc_decoder_configuration_record() {
        let sps = build_sps(0, 1, 1280, 720, None);
        let rec = build_record(&[
            (32, vec![vec![0x40, 0x01, 0xAA]]),
            (33, vec![sps.clone()]),
            (34, vec![vec![0x44, 0x01, 0xC1], vec![0x44, 0x01, 0xC2]]),
            (39, vec![vec![0x4E, 0x01, 0x05]]),
        ]);
        let c = parse_hevc_decoder_config(&rec).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.general_profile_idc, 1);
        assert_eq!(c.general_level_idc, 123);
        assert_eq!(c.vps.len(), 1);
        assert_eq!(c.sps, vec![Bytes::from(sps)]);
        assert_eq!(c.pps.len(), 2);
        assert_eq!(c.params.map(|p| (p.width, p.height)), Some((1280, 720)));
        for n in 0..rec.len() {
            assert!(parse_hevc_decoder_config(&rec[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn record_with_huge_counts_and_no_data_is_an_error() {
        let mut rec = build_record(&[]);
        *rec.last_mut().unwrap() = 255;
        rec.extend_from_slice(&[0xA1, 0xFF, 0xFF]);
        assert!(parse_hevc_decoder_config(&rec).is_err());
        assert!(parse_hevc_decoder_config(&[0, 0, 0, 1])
            .unwrap_err()
            .to_string()
            .contains("Annex B"));
    }

    #[test]
    fn builds_a_record_from_the_sps() {
        // build_sps ends with bit_depth_luma_minus8 ue(0) and a 1 bit, which
        // reads as bit_depth_chroma_minus8 ue(0).
        let sps = build_sps(2, 1, 1280, 720, None);
        let vps = Bytes::from_static(&[0x40, 0x01, 0x0C]);
        let pps = Bytes::from_static(&[0x44, 0x01, 0xC1]);
        let rec = hevc_decoder_config_record(
            std::slice::from_ref(&vps),
            &[Bytes::from(sps.clone())],
            std::slice::from_ref(&pps),
        )
        .unwrap();
        let c = parse_hevc_decoder_config(&rec).unwrap();
        assert_eq!((c.vps, c.pps), (vec![vps.clone()], vec![pps.clone()]));
        assert_eq!(c.sps, vec![Bytes::from(sps.clone())]);
        assert_eq!((c.general_profile_idc, c.general_level_idc), (1, 123));
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.params.map(|p| (p.width, p.height)), Some((1280, 720)));
        // chromaFormat 4:2:0; three temporal layers, nested.
        assert_eq!(rec[16], 0xFD);
        assert_eq!(rec[21], (3 << 3) | (1 << 2) | 3);
        assert!(hevc_decoder_config_record(
            &[],
            &[Bytes::from(sps.clone())],
            std::slice::from_ref(&pps)
        )
        .is_err());
        assert!(hevc_decoder_config_record(
            std::slice::from_ref(&vps),
            std::slice::from_ref(&pps),
            std::slice::from_ref(&pps)
        )
        .is_err());
        for n in 0..sps.len() {
            let _ = hevc_decoder_config_record(
                std::slice::from_ref(&vps),
                &[Bytes::copy_from_slice(&sps[..n])],
                std::slice::from_ref(&pps),
            );
        }
    }
}
