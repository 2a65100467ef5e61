//! H.264/AVC sequence parameter set parsing (ISO/IEC 14496-10 7.3.2.1.1) and the
//! AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1) that FLV carries as the AVC sequence header.
//! Only what sluice needs is extracted (displayed size, profile, level); every read is bounds-checked.

use bytes::Bytes;

use super::bits::{remove_emulation_prevention, BitReader};
use super::{ByteReader, MediaError, VideoParams};

const SPS: &str = "H.264 SPS";
const AVCC: &str = "AVCDecoderConfigurationRecord";

/// nal_unit_type of a sequence parameter set (Table 7-1).
pub const NAL_SPS: u8 = 7;
/// nal_unit_type of a picture parameter set (Table 7-1).
pub const NAL_PPS: u8 = 8;
/// nal_unit_type of an IDR slice (Table 7-1).
pub const NAL_IDR: u8 = 5;

/// The contents of an AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct AvcConfig {
    /// Size in bytes of the NAL unit length prefix in frames (lengthSizeMinusOne + 1).
    pub nal_length_size: u8,
    /// AVCProfileIndication as carried in the record.
    pub profile_indication: u8,
    /// AVCLevelIndication as carried in the record.
    pub level_indication: u8,
    /// Sequence parameter set NAL units (with their 1-byte NAL header).
    pub sps: Vec<Bytes>,
    /// Picture parameter set NAL units (with their 1-byte NAL header).
    pub pps: Vec<Bytes>,
    /// Parameters from the first SPS; `None` if there is none or it does not parse.
    pub params: Option<VideoParams>,
}

/// Human-readable name of an H.264 profile_idc (Annex A).
pub fn profile_name(profile_idc: u8) -> Option<&'static str> {
    Some(match profile_idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4",
        44 => "CAVLC 4:4:4 Intra",
        83 => "Scalable Baseline",
        86 => "Scalable High",
        118 => "Multiview High",
        128 => "Stereo High",
        _ => return None,
    })
}

/// Profiles whose SPS carries chroma_format_idc, bit depths and scaling
/// matrices (the `if( profile_idc = = 100 || ... )` branch of 7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Parses a sequence parameter set NAL unit, including its 1-byte NAL header,
/// into displayed width/height, profile and level.
pub fn parse_sps(nal: &[u8]) -> Result<VideoParams, MediaError> {
    let rbsp = sps_rbsp(nal)?;
    let mut r = BitReader::new(&rbsp, SPS);

    let profile_idc = r.read_u8("profile_idc")?;
    r.skip_bits(8, "constraint_set_flags")?;
    let level_idc = r.read_u8("level_idc")?;
    let sps_id = r.read_ue("seq_parameter_set_id")?;
    if sps_id > 31 {
        return Err(r.invalid("seq_parameter_set_id", sps_id.into(), "must be 0..=31"));
    }
    // Defaults when the high-profile branch is absent (7.4.2.1.1): 4:2:0.
    let chroma_array_type = if has_chroma_info(profile_idc) {
        read_chroma_info(&mut r)?
    } else {
        1
    };
    skip_frame_num_and_poc(&mut r)?;
    r.read_ue("max_num_ref_frames")?;
    r.skip_bits(1, "gaps_in_frame_num_value_allowed_flag")?;
    let size = FrameSize::read(&mut r)?;
    // VUI and the rest are not needed.
    let (width, height) = size.displayed(&r, chroma_array_type)?;

    Ok(VideoParams {
        width,
        height,
        profile: profile_name(profile_idc).map(str::to_owned),
        level: Some(level_idc),
    })
}

/// Checks the NAL header of an SPS and returns its RBSP.
fn sps_rbsp(nal: &[u8]) -> Result<Vec<u8>, MediaError> {
    let header = *nal.first().ok_or(MediaError::Truncated {
        what: SPS,
        field: "nal_unit_header",
        at: super::Pos::Byte(0),
    })?;
    let nal_type = header & 0x1F;
    if nal_type != NAL_SPS {
        return Err(MediaError::Invalid {
            what: SPS,
            field: "nal_unit_type",
            value: u64::from(nal_type),
            at: super::Pos::Byte(0),
            reason: "expected 7 (sequence parameter set)",
        });
    }
    // Emulation prevention applies to the NAL payload after the header (7.4.1).
    Ok(remove_emulation_prevention(nal.get(1..).unwrap_or(&[])))
}

/// Reads the high-profile branch of 7.3.2.1.1 (chroma format, bit depths,
/// scaling matrices) and returns ChromaArrayType: chroma_format_idc, or 0
/// for 4:4:4 coded as separate planes.
fn read_chroma_info(r: &mut BitReader<'_>) -> Result<u32, MediaError> {
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
    let bd_luma = r.read_ue("bit_depth_luma_minus8")?;
    if bd_luma > 6 {
        return Err(r.invalid("bit_depth_luma_minus8", bd_luma.into(), "must be 0..=6"));
    }
    let bd_chroma = r.read_ue("bit_depth_chroma_minus8")?;
    if bd_chroma > 6 {
        return Err(r.invalid("bit_depth_chroma_minus8", bd_chroma.into(), "must be 0..=6"));
    }
    r.skip_bits(1, "qpprime_y_zero_transform_bypass_flag")?;
    if r.read_bit("seq_scaling_matrix_present_flag")? {
        // 6 4x4 lists, then 2 8x8 lists, or 6 8x8 lists for 4:4:4.
        let lists = if chroma_format_idc == 3 { 12 } else { 8 };
        for i in 0..lists {
            if r.read_bit("seq_scaling_list_present_flag")? {
                skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
            }
        }
    }
    Ok(if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    })
}

/// Skips log2_max_frame_num_minus4 and the picture order count fields,
/// checking the ranges that decide how many fields follow.
fn skip_frame_num_and_poc(r: &mut BitReader<'_>) -> Result<(), MediaError> {
    let log2_max_frame_num_minus4 = r.read_ue("log2_max_frame_num_minus4")?;
    if log2_max_frame_num_minus4 > 12 {
        return Err(r.invalid(
            "log2_max_frame_num_minus4",
            log2_max_frame_num_minus4.into(),
            "must be 0..=12",
        ));
    }
    let poc_type = r.read_ue("pic_order_cnt_type")?;
    match poc_type {
        0 => {
            let v = r.read_ue("log2_max_pic_order_cnt_lsb_minus4")?;
            if v > 12 {
                return Err(r.invalid(
                    "log2_max_pic_order_cnt_lsb_minus4",
                    v.into(),
                    "must be 0..=12",
                ));
            }
        }
        1 => {
            r.skip_bits(1, "delta_pic_order_always_zero_flag")?;
            r.read_se("offset_for_non_ref_pic")?;
            r.read_se("offset_for_top_to_bottom_field")?;
            let n = r.read_ue("num_ref_frames_in_pic_order_cnt_cycle")?;
            if n > 255 {
                return Err(r.invalid(
                    "num_ref_frames_in_pic_order_cnt_cycle",
                    n.into(),
                    "must be 0..=255",
                ));
            }
            for _ in 0..n {
                r.read_se("offset_for_ref_frame")?;
            }
        }
        2 => {}
        _ => return Err(r.invalid("pic_order_cnt_type", poc_type.into(), "must be 0..=2")),
    }
    Ok(())
}

/// The coded picture size and cropping fields of an SPS.
struct FrameSize {
    width_mbs: u64,
    height_map_units: u64,
    frame_mbs_only: bool,
    /// frame_crop_{left,right,top,bottom}_offset; all 0 without cropping.
    crop: [u64; 4],
    /// Bit position of frame_cropping_flag, for errors.
    crop_at: usize,
}

impl FrameSize {
    /// Reads pic_width_in_mbs_minus1 through the frame cropping offsets.
    fn read(r: &mut BitReader<'_>) -> Result<Self, MediaError> {
        let width_mbs = u64::from(r.read_ue("pic_width_in_mbs_minus1")?) + 1;
        let height_map_units = u64::from(r.read_ue("pic_height_in_map_units_minus1")?) + 1;
        let frame_mbs_only = r.read_bit("frame_mbs_only_flag")?;
        if !frame_mbs_only {
            r.skip_bits(1, "mb_adaptive_frame_field_flag")?;
        }
        r.skip_bits(1, "direct_8x8_inference_flag")?;
        let mut crop = [0u64; 4];
        let crop_at = r.bit_pos();
        if r.read_bit("frame_cropping_flag")? {
            crop[0] = r.read_ue("frame_crop_left_offset")?.into();
            crop[1] = r.read_ue("frame_crop_right_offset")?.into();
            crop[2] = r.read_ue("frame_crop_top_offset")?.into();
            crop[3] = r.read_ue("frame_crop_bottom_offset")?.into();
        }
        Ok(FrameSize {
            width_mbs,
            height_map_units,
            frame_mbs_only,
            crop,
            crop_at,
        })
    }

    /// Displayed width and height: the coded size less the cropping, in
    /// the crop units ChromaArrayType gives (7-19 .. 7-22). `r` only names
    /// the position in errors.
    fn displayed(
        &self,
        r: &BitReader<'_>,
        chroma_array_type: u32,
    ) -> Result<(u32, u32), MediaError> {
        // 7.4.2.1.1: frame height in MBs is doubled for field coding.
        let field_factor: u64 = if self.frame_mbs_only { 1 } else { 2 };
        let (sub_width_c, sub_height_c): (u64, u64) = match chroma_array_type {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let (crop_unit_x, crop_unit_y) = if chroma_array_type == 0 {
            (1, field_factor)
        } else {
            (sub_width_c, sub_height_c * field_factor)
        };
        let [crop_l, crop_r, crop_t, crop_b] = self.crop;
        let coded_w = self.width_mbs * 16;
        let coded_h = field_factor * self.height_map_units * 16;
        let crop_w = crop_unit_x * (crop_l + crop_r);
        let crop_h = crop_unit_y * (crop_t + crop_b);
        if crop_w >= coded_w || crop_h >= coded_h {
            return Err(MediaError::Invalid {
                what: SPS,
                field: "frame_crop_offsets",
                value: crop_w.max(crop_h),
                at: super::Pos::Bit(self.crop_at),
                reason: "cropping removes the whole picture",
            });
        }
        let width = u32::try_from(coded_w - crop_w).map_err(|_| {
            r.invalid(
                "pic_width_in_mbs_minus1",
                self.width_mbs - 1,
                "picture too wide",
            )
        })?;
        let height = u32::try_from(coded_h - crop_h).map_err(|_| {
            r.invalid(
                "pic_height_in_map_units_minus1",
                self.height_map_units - 1,
                "picture too tall",
            )
        })?;
        Ok((width, height))
    }
}

/// Skips one scaling_list() (7.3.2.1.1.1). Only delta_scale is coded; the
/// list ends early once nextScale becomes 0 (fall back to the default matrix
/// or repeat the last scale), so we must track nextScale to know how many
/// se(v) values follow.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), MediaError> {
    let mut last_scale: i32 = 8;
    let mut next_scale: i32 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = r.read_se("delta_scale")?;
            if !(-128..=127).contains(&delta) {
                return Err(r.invalid("delta_scale", delta as u64, "must be -128..=127"));
            }
            next_scale = (last_scale + delta + 256).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// Parses an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1.2), the
/// body of an FLV AVC sequence header. Parameter sets are copied out (the
/// record is small and sent once per sequence). `params` come from the first
/// SPS; an SPS this parser cannot read leaves `params` at `None` rather than
/// rejecting a record a decoder may still accept.
pub fn parse_avc_decoder_config(record: &[u8]) -> Result<AvcConfig, MediaError> {
    let mut r = ByteReader::new(record, AVCC);
    let version = r.u8("configurationVersion")?;
    if version == 0 {
        // A record starting with 0 is almost always Annex B (00 00 00 01 ...)
        // sent where avcC belongs.
        return Err(r.invalid(
            "configurationVersion",
            0,
            "must be 1 (data looks like Annex B, not avcC)",
        ));
    }
    let profile_indication = r.u8("AVCProfileIndication")?;
    r.u8("profile_compatibility")?;
    let level_indication = r.u8("AVCLevelIndication")?;
    let nal_length_size = (r.u8("lengthSizeMinusOne")? & 0x03) + 1;
    let num_sps = r.u8("numOfSequenceParameterSets")? & 0x1F;
    let mut sps = Vec::new();
    for _ in 0..num_sps {
        let len = usize::from(r.u16("sequenceParameterSetLength")?);
        sps.push(Bytes::copy_from_slice(
            r.take(len, "sequenceParameterSetNALUnit")?,
        ));
    }
    let num_pps = r.u8("numOfPictureParameterSets")?;
    let mut pps = Vec::new();
    for _ in 0..num_pps {
        let len = usize::from(r.u16("pictureParameterSetLength")?);
        pps.push(Bytes::copy_from_slice(
            r.take(len, "pictureParameterSetNALUnit")?,
        ));
    }
    // High-profile trailers (chroma_format, bit depths, SPS extensions) are
    // optional in practice and not needed here.
    let params = sps.first().and_then(|s| parse_sps(s).ok());
    Ok(AvcConfig {
        nal_length_size,
        profile_indication,
        level_indication,
        sps,
        pps,
        params,
    })
}

/// Most SPS an AVCDecoderConfigurationRecord holds (numOfSequenceParameterSets is 5 bits).
pub const MAX_RECORD_SPS: usize = 31;
/// Most PPS an AVCDecoderConfigurationRecord holds (numOfPictureParameterSets is 8 bits).
pub const MAX_RECORD_PPS: usize = 255;

/// Builds an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1) with
/// 4-byte NAL lengths from parameter sets found in-band (Annex B streams
/// such as MPEG-TS carry them before IDRs). Profile, compatibility and level
/// are copied from the first SPS; for the High profiles (100, 110, 122, 144)
/// the chroma format and bit depth trailer that 5.3.3.1.2 requires is
/// filled from the SPS. Each NAL unit carries its 1-byte header.
pub fn avc_decoder_config_record(sps: &[Bytes], pps: &[Bytes]) -> Result<Bytes, MediaError> {
    let bad = |field, value: usize, reason| MediaError::Invalid {
        what: AVCC,
        field,
        value: value as u64,
        at: super::Pos::Byte(0),
        reason,
    };
    let first = sps.first().ok_or_else(|| {
        bad(
            "numOfSequenceParameterSets",
            0,
            "at least one SPS is needed",
        )
    })?;
    if sps.len() > MAX_RECORD_SPS {
        return Err(bad("numOfSequenceParameterSets", sps.len(), "at most 31"));
    }
    if pps.is_empty() || pps.len() > MAX_RECORD_PPS {
        return Err(bad(
            "numOfPictureParameterSets",
            pps.len(),
            "must be 1..=255",
        ));
    }
    let Some(&[header, profile_idc, compat, level_idc]) = first.get(..4) else {
        return Err(MediaError::Truncated {
            what: SPS,
            field: "profile_idc/constraint_set_flags/level_idc",
            at: super::Pos::Byte(first.len()),
        });
    };
    if header & 0x1F != NAL_SPS {
        return Err(bad(
            "sequenceParameterSetNALUnit",
            usize::from(header & 0x1F),
            "nal_unit_type must be 7 (SPS)",
        ));
    }
    let mut r =
        Vec::with_capacity(7 + sps.iter().chain(pps).map(|n| 2 + n.len()).sum::<usize>() + 4);
    // configurationVersion, profile, compatibility, level, then
    // reserved(6) lengthSizeMinusOne(2) = 3 and reserved(3) numOfSPS(5).
    r.extend_from_slice(&[1, profile_idc, compat, level_idc, 0xFF]);
    r.push(0xE0 | sps.len() as u8);
    for (field, list) in [
        ("sequenceParameterSetLength", sps),
        ("pictureParameterSetLength", pps),
    ] {
        if field == "pictureParameterSetLength" {
            r.push(pps.len() as u8);
        }
        for nal in list {
            let len = u16::try_from(nal.len())
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| bad(field, nal.len(), "must be 1..=65535 bytes"))?;
            r.extend_from_slice(&len.to_be_bytes());
            r.extend_from_slice(nal);
        }
    }
    if matches!(profile_idc, 100 | 110 | 122 | 144) {
        let (chroma, luma, chroma_depth) = chroma_format_and_bit_depths(first)?;
        // reserved(6) chroma_format(2), reserved(5) bit_depth_luma_minus8(3),
        // reserved(5) bit_depth_chroma_minus8(3), numOfSequenceParameterSetExt.
        r.extend_from_slice(&[
            0xFC | chroma as u8,
            0xF8 | luma as u8,
            0xF8 | chroma_depth as u8,
            0,
        ]);
    }
    Ok(Bytes::from(r))
}

/// chroma_format_idc, bit_depth_luma_minus8 and bit_depth_chroma_minus8 of
/// an SPS (7.3.2.1.1); 4:2:0 8-bit for profiles that do not code them.
pub fn chroma_format_and_bit_depths(nal: &[u8]) -> Result<(u32, u32, u32), MediaError> {
    let rbsp = sps_rbsp(nal)?;
    let mut r = BitReader::new(&rbsp, SPS);
    let profile_idc = r.read_u8("profile_idc")?;
    r.skip_bits(16, "constraint_set_flags/level_idc")?;
    r.read_ue("seq_parameter_set_id")?;
    if !has_chroma_info(profile_idc) {
        return Ok((1, 0, 0));
    }
    let chroma = r.read_ue("chroma_format_idc")?;
    if chroma > 3 {
        return Err(r.invalid("chroma_format_idc", chroma.into(), "must be 0..=3"));
    }
    if chroma == 3 {
        r.skip_bits(1, "separate_colour_plane_flag")?;
    }
    let luma = r.read_ue("bit_depth_luma_minus8")?;
    let chroma_depth = r.read_ue("bit_depth_chroma_minus8")?;
    if luma > 6 || chroma_depth > 6 {
        return Err(r.invalid(
            "bit_depth_minus8",
            luma.max(chroma_depth).into(),
            "must be 0..=6",
        ));
    }
    Ok((chroma, luma, chroma_depth))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits MSB-first, for building SPS fixtures by hand.
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
                let last = self.out.last_mut().unwrap();
                *last |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
        fn bits(&mut self, n: u32, v: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(len - 1, 0);
            for i in (0..len).rev() {
                self.bit((x >> i) & 1 == 1);
            }
        }
        fn se(&mut self, v: i32) {
            let k = if v > 0 {
                2 * v as u32 - 1
            } else {
                (-2 * v) as u32
            };
            self.ue(k);
        }
        fn finish(mut self) -> Vec<u8> {
            // rbsp_stop_one_bit + alignment
            self.bit(true);
            while self.bits % 8 != 0 {
                self.bit(false);
            }
            self.out
        }
    }

    struct SpsSpec {
        profile: u8,
        chroma_format_idc: u32,
        separate_planes: bool,
        scaling: bool,
        poc_type: u32,
        width_mbs: u32,
        height_map_units: u32,
        frame_mbs_only: bool,
        crop: Option<(u32, u32, u32, u32)>,
    }

    fn build_sps(s: &SpsSpec) -> Vec<u8> {
        let mut w = BitWriter::new();
        w.bits(8, u32::from(s.profile));
        w.bits(8, 0);
        w.bits(8, 40);
        w.ue(0);
        if has_chroma_info(s.profile) {
            w.ue(s.chroma_format_idc);
            if s.chroma_format_idc == 3 {
                w.bit(s.separate_planes);
            }
            w.ue(0);
            w.ue(0);
            w.bit(false);
            w.bit(s.scaling);
            if s.scaling {
                let lists = if s.chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    w.bit(true);
                    let size = if i < 6 { 16 } else { 64 };
                    if i == 2 {
                        // useDefaultScalingMatrixFlag: nextScale 0 on the first entry.
                        w.se(-8);
                    } else if i == 3 {
                        // Ends early: after 3 entries nextScale becomes 0.
                        w.se(1);
                        w.se(2);
                        w.se(-11);
                    } else {
                        for j in 0..size {
                            w.se(if j % 2 == 0 { 3 } else { -3 });
                        }
                    }
                }
            }
        }
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(s.poc_type);
        match s.poc_type {
            0 => w.ue(2),
            1 => {
                w.bit(false);
                w.se(-1);
                w.se(2);
                w.ue(3);
                w.se(1);
                w.se(-2);
                w.se(3);
            }
            _ => {}
        }
        w.ue(4); // max_num_ref_frames
        w.bit(false);
        w.ue(s.width_mbs - 1);
        w.ue(s.height_map_units - 1);
        w.bit(s.frame_mbs_only);
        if !s.frame_mbs_only {
            w.bit(true);
        }
        w.bit(true);
        match s.crop {
            Some((l, r, t, b)) => {
                w.bit(true);
                w.ue(l);
                w.ue(r);
                w.ue(t);
                w.ue(b);
            }
            None => w.bit(false),
        }
        w.bit(false); // vui_parameters_present_flag
        let rbsp = w.finish();
        // NAL header (nal_ref_idc 3, type 7) + RBSP with emulation prevention.
        let mut nal = vec![0x67];
        let mut zeros = 0;
        for b in rbsp {
            if zeros >= 2 && b <= 3 {
                nal.push(3);
                zeros = 0;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            nal.push(b);
        }
        nal
    }

    fn spec() -> SpsSpec {
        SpsSpec {
            profile: 100,
            chroma_format_idc: 1,
            separate_planes: false,
            scaling: false,
            poc_type: 0,
            width_mbs: 120,
            height_map_units: 68,
            frame_mbs_only: true,
            crop: Some((0, 0, 0, 4)),
        }
    }

    #[test]
    fn crops_1080p_from_1088_coded_lines() {
        let p = parse_sps(&build_sps(&spec())).unwrap();
        assert_eq!((p.width, p.height), (1920, 1080));
        assert_eq!(p.profile.as_deref(), Some("High"));
        assert_eq!(p.level, Some(40));
    }

    #[test]
    fn crop_units_follow_chroma_format() {
        // 4:2:2: CropUnitX = 2, CropUnitY = 1.
        let mut s = spec();
        s.profile = 122;
        s.chroma_format_idc = 2;
        s.crop = Some((1, 2, 3, 4));
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920 - 6, 1088 - 7));
        assert_eq!(p.profile.as_deref(), Some("High 4:2:2"));
        // 4:4:4: units of 1.
        s.profile = 244;
        s.chroma_format_idc = 3;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920 - 3, 1088 - 7));
        // Monochrome: ChromaArrayType 0.
        s.chroma_format_idc = 0;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920 - 3, 1088 - 7));
        // Separate colour planes: ChromaArrayType 0 even though 4:4:4.
        s.chroma_format_idc = 3;
        s.separate_planes = true;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920 - 3, 1088 - 7));
    }

    #[test]
    fn field_coding_doubles_height_and_crop_unit() {
        let mut s = spec();
        s.frame_mbs_only = false;
        s.height_map_units = 34;
        s.crop = Some((0, 0, 0, 2));
        let p = parse_sps(&build_sps(&s)).unwrap();
        // 2 * 34 * 16 = 1088, CropUnitY = 2 * 2 = 4.
        assert_eq!((p.width, p.height), (1920, 1080));
    }

    #[test]
    fn skips_scaling_lists_for_420_and_444() {
        let mut s = spec();
        s.scaling = true;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920, 1080));
        s.profile = 244;
        s.chroma_format_idc = 3;
        s.crop = None;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!((p.width, p.height), (1920, 1088));
    }

    #[test]
    fn handles_poc_type_1_and_2() {
        let mut s = spec();
        s.poc_type = 1;
        assert_eq!(parse_sps(&build_sps(&s)).unwrap().height, 1080);
        s.poc_type = 2;
        assert_eq!(parse_sps(&build_sps(&s)).unwrap().height, 1080);
    }

    #[test]
    fn baseline_profile_has_no_chroma_fields() {
        let mut s = spec();
        s.profile = 66;
        let p = parse_sps(&build_sps(&s)).unwrap();
        assert_eq!(p.profile.as_deref(), Some("Baseline"));
        assert_eq!((p.width, p.height), (1920, 1080));
        s.profile = 77;
        assert_eq!(
            parse_sps(&build_sps(&s)).unwrap().profile.as_deref(),
            Some("Main")
        );
        s.profile = 99;
        assert_eq!(parse_sps(&build_sps(&s)).unwrap().profile, None);
    }

    #[test]
    fn rejects_crop_larger_than_picture() {
        let mut s = spec();
        s.crop = Some((480, 480, 0, 0));
        let e = parse_sps(&build_sps(&s)).unwrap_err();
        assert!(
            e.to_string().contains("cropping removes the whole picture"),
            "{e}"
        );
    }

    #[test]
    fn rejects_non_sps_nal_and_reports_truncation_offsets() {
        let e = parse_sps(&[0x68, 0x00]).unwrap_err();
        assert!(e.to_string().contains("nal_unit_type = 8"), "{e}");
        let e = parse_sps(&[0x67, 100, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "H.264 SPS: truncated while reading level_idc at bit 16"
        );
        assert!(parse_sps(&[]).is_err());
    }

    #[test]
    fn every_truncation_of_a_built_sps_fails_cleanly() {
        let mut s = spec();
        s.scaling = true;
        s.poc_type = 1;
        let nal = build_sps(&s);
        assert!(parse_sps(&nal).is_ok());
        for n in 0..nal.len() - 1 {
            // The trailing byte may hold only the VUI flag and stop bit.
            let _ = parse_sps(&nal[..n]);
        }
        assert!(parse_sps(&nal[..nal.len() / 2]).is_err());
    }

    #[test]
    fn parses_avc_decoder_configuration_record() {
        let sps = build_sps(&spec());
        let mut rec = vec![1, 100, 0, 40, 0xFF, 0xE1];
        rec.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        rec.extend_from_slice(&sps);
        rec.extend_from_slice(&[1, 0, 4, 0x68, 0xEE, 0x3C, 0x80]);
        let c = parse_avc_decoder_config(&rec).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.profile_indication, 100);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.pps, vec![Bytes::from_static(&[0x68, 0xEE, 0x3C, 0x80])]);
        assert_eq!(
            c.params.as_ref().map(|p| (p.width, p.height)),
            Some((1920, 1080))
        );

        // Every truncation is an error, never a panic.
        for n in 0..rec.len() {
            assert!(parse_avc_decoder_config(&rec[..n]).is_err(), "len {n}");
        }
        // Annex B where avcC belongs.
        let e = parse_avc_decoder_config(&[0, 0, 0, 1, 0x67]).unwrap_err();
        assert!(e.to_string().contains("Annex B"), "{e}");
        // A count that promises more than present.
        let e = parse_avc_decoder_config(&[1, 66, 0, 30, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap_err();
        assert!(e.to_string().contains("sequenceParameterSetNALUnit"), "{e}");
    }

    #[test]
    fn unparseable_sps_in_record_leaves_params_empty() {
        let rec = [1, 100, 0, 40, 0xFF, 0xE1, 0, 2, 0x67, 100, 0];
        let c = parse_avc_decoder_config(&rec).unwrap();
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.params, None);
    }

    #[test]
    fn builds_a_record_the_parser_reads_back() {
        let sps = Bytes::from_static(&[0x67, 0x64, 0x00, 0x1E, 0xAC, 0xD9]);
        let pps = Bytes::from_static(&[0x68, 0xEB, 0xE3, 0xCB]);
        let rec = avc_decoder_config_record(std::slice::from_ref(&sps), std::slice::from_ref(&pps))
            .unwrap();
        let c = parse_avc_decoder_config(&rec).unwrap();
        assert_eq!((c.sps, c.pps), (vec![sps.clone()], vec![pps.clone()]));
        assert_eq!((c.profile_indication, c.level_indication), (100, 30));
        assert_eq!(c.nal_length_size, 4);
        // High profile: the trailer says 4:2:0, 8-bit, no SPS extensions.
        assert_eq!(&rec[rec.len() - 4..], &[0xFD, 0xF8, 0xF8, 0]);
        // Baseline has no trailer.
        let base = Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E, 0xD9]);
        let rec = avc_decoder_config_record(&[base], std::slice::from_ref(&pps)).unwrap();
        assert_eq!(rec.len(), 6 + 2 + 5 + 1 + 2 + 4);
        assert!(avc_decoder_config_record(&[], std::slice::from_ref(&pps)).is_err());
        assert!(avc_decoder_config_record(std::slice::from_ref(&sps), &[]).is_err());
        assert!(
            avc_decoder_config_record(std::slice::from_ref(&pps), std::slice::from_ref(&pps))
                .is_err()
        );
        assert!(avc_decoder_config_record(&[Bytes::from_static(&[0x67])], &[sps]).is_err());
    }
}
