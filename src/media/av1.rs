//! AV1CodecConfigurationRecord parsing (AV1 Codec ISO Media File Format Binding 2.3.3) and the
//! sequence header OBU inside it (AV1 Bitstream & Decoding Process Specification 5.5.1), as carried by E-RTMP `av01`.
//! Only the maximum frame size, profile and level are extracted; every read is bounds-checked.

use super::bits::BitReader;
use super::{ByteReader, MediaError, VideoParams};

const AV1C: &str = "AV1CodecConfigurationRecord";
const SEQ: &str = "AV1 sequence header OBU";

/// obu_type of a sequence header (AV1 spec 6.2.2).
pub const OBU_SEQUENCE_HEADER: u8 = 1;

/// The leading fields of an AV1CodecConfigurationRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct Av1Config {
    pub seq_profile: u8,
    pub seq_level_idx_0: u8,
    /// From the sequence header OBU in configOBUs, if present and parseable.
    pub params: Option<VideoParams>,
}

/// Human-readable AV1 profile name (AV1 spec Annex A.2).
pub fn profile_name(seq_profile: u8) -> Option<&'static str> {
    match seq_profile {
        0 => Some("Main"),
        1 => Some("High"),
        2 => Some("Professional"),
        _ => None,
    }
}

/// Parses an AV1CodecConfigurationRecord and, if its configOBUs hold a
/// sequence header, the frame size from it.
pub fn parse_av1_codec_config(record: &[u8]) -> Result<Av1Config, MediaError> {
    let mut r = ByteReader::new(record, AV1C);
    let b0 = r.u8("marker/version")?;
    if b0 & 0x80 == 0 {
        return Err(r.invalid("marker", 0, "must be 1"));
    }
    let b1 = r.u8("seq_profile/seq_level_idx_0")?;
    r.u8("seq_tier_0/bitdepth/chroma flags")?;
    r.u8("initial_presentation_delay")?;
    let seq_profile = b1 >> 5;
    let seq_level_idx_0 = b1 & 0x1F;
    let mut params = None;
    // configOBUs: low-overhead OBUs, normally just the sequence header.
    while r.remaining() > 0 && params.is_none() {
        let (obu_type, payload) = next_obu(&mut r)?;
        if obu_type == OBU_SEQUENCE_HEADER {
            params = parse_sequence_header_obu(payload).ok();
        }
    }
    Ok(Av1Config {
        seq_profile,
        seq_level_idx_0,
        params,
    })
}

/// Reads one OBU (AV1 spec 5.3): header, optional extension, optional
/// leb128 size (else the OBU runs to the end), and returns (type, payload).
fn next_obu<'a>(r: &mut ByteReader<'a>) -> Result<(u8, &'a [u8]), MediaError> {
    let h = r.u8("obu_header")?;
    if h & 0x80 != 0 {
        return Err(r.invalid("obu_forbidden_bit", 1, "must be 0"));
    }
    let obu_type = (h >> 3) & 0x0F;
    if h & 0x04 != 0 {
        r.u8("obu_extension_header")?;
    }
    let size = if h & 0x02 != 0 {
        let v = leb128(r)?;
        usize::try_from(v).map_err(|_| r.invalid("obu_size", v, "too large"))?
    } else {
        r.remaining()
    };
    Ok((obu_type, r.take(size, "obu payload")?))
}

/// leb128() (AV1 spec 4.10.5): at most 8 bytes, value must fit 32 bits.
fn leb128(r: &mut ByteReader<'_>) -> Result<u64, MediaError> {
    let mut value: u64 = 0;
    for i in 0..8u32 {
        let b = r.u8("leb128")?;
        value |= u64::from(b & 0x7F) << (i * 7);
        if b & 0x80 == 0 {
            if value > u64::from(u32::MAX) {
                return Err(r.invalid("leb128", value, "exceeds 2^32 - 1"));
            }
            return Ok(value);
        }
    }
    Err(r.invalid("leb128", value, "longer than 8 bytes"))
}

/// Parses a sequence_header_obu() payload (AV1 spec 5.5.1) up to
/// max_frame_height_minus_1.
pub fn parse_sequence_header_obu(payload: &[u8]) -> Result<VideoParams, MediaError> {
    let mut r = BitReader::new(payload, SEQ);
    let seq_profile = r.read_bits(3, "seq_profile")?;
    r.skip_bits(1, "still_picture")?;
    let reduced = r.read_bit("reduced_still_picture_header")?;
    let level;
    if reduced {
        level = r.read_bits(5, "seq_level_idx[0]")?;
    } else {
        let timing_info_present = r.read_bit("timing_info_present_flag")?;
        let mut decoder_model_info_present = false;
        let mut buffer_delay_length = 0u32;
        if timing_info_present {
            // timing_info() 5.5.3
            r.skip_bits(32, "num_units_in_display_tick")?;
            r.skip_bits(32, "time_scale")?;
            if r.read_bit("equal_picture_interval")? {
                r.read_uvlc("num_ticks_per_picture_minus_1")?;
            }
            decoder_model_info_present = r.read_bit("decoder_model_info_present_flag")?;
            if decoder_model_info_present {
                // decoder_model_info() 5.5.4
                buffer_delay_length = r.read_bits(5, "buffer_delay_length_minus_1")? + 1;
                r.skip_bits(32, "num_units_in_decoding_tick")?;
                r.skip_bits(5, "buffer_removal_time_length_minus_1")?;
                r.skip_bits(5, "frame_presentation_time_length_minus_1")?;
            }
        }
        let initial_display_delay_present = r.read_bit("initial_display_delay_present_flag")?;
        let op_count = r.read_bits(5, "operating_points_cnt_minus_1")? + 1;
        let mut first_level = None;
        for _ in 0..op_count {
            r.skip_bits(12, "operating_point_idc")?;
            let lvl = r.read_bits(5, "seq_level_idx")?;
            first_level.get_or_insert(lvl);
            if lvl > 7 {
                r.skip_bits(1, "seq_tier")?;
            }
            if decoder_model_info_present && r.read_bit("decoder_model_present_for_this_op")? {
                // operating_parameters_info() 5.5.5
                let n = buffer_delay_length as usize;
                r.skip_bits(n, "decoder_buffer_delay")?;
                r.skip_bits(n, "encoder_buffer_delay")?;
                r.skip_bits(1, "low_delay_mode_flag")?;
            }
            if initial_display_delay_present
                && r.read_bit("initial_display_delay_present_for_this_op")?
            {
                r.skip_bits(4, "initial_display_delay_minus_1")?;
            }
        }
        level = first_level.unwrap_or(0);
    }
    let w_bits = r.read_bits(4, "frame_width_bits_minus_1")? + 1;
    let h_bits = r.read_bits(4, "frame_height_bits_minus_1")? + 1;
    let w = u64::from(r.read_bits(w_bits, "max_frame_width_minus_1")?) + 1;
    let h = u64::from(r.read_bits(h_bits, "max_frame_height_minus_1")?) + 1;
    let width =
        u32::try_from(w).map_err(|_| r.invalid("max_frame_width_minus_1", w, "too wide"))?;
    let height =
        u32::try_from(h).map_err(|_| r.invalid("max_frame_height_minus_1", h, "too tall"))?;
    Ok(VideoParams {
        width,
        height,
        profile: u8::try_from(seq_profile)
            .ok()
            .and_then(profile_name)
            .map(str::to_owned),
        level: u8::try_from(level).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// av1C from libaom (ffmpeg 5.1, 320x180) with its sequence header OBU.
    const AV1C_320X180: [u8; 17] = [
        0x81, 0x00, 0x0c, 0x00, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xfe, 0xcc, 0xda, 0xf9,
        0x00, 0x40,
    ];

    #[test]
    fn parses_libaom_sequence_header() {
        let c = parse_av1_codec_config(&AV1C_320X180).unwrap();
        assert_eq!(c.seq_profile, 0);
        let p = c.params.unwrap();
        assert_eq!((p.width, p.height), (320, 180));
        assert_eq!(p.profile.as_deref(), Some("Main"));
    }

    #[test]
    fn record_without_config_obus_has_no_params() {
        let c = parse_av1_codec_config(&AV1C_320X180[..4]).unwrap();
        assert_eq!(c.params, None);
        assert!(parse_av1_codec_config(&[0x01, 0, 0, 0]).is_err());
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        for n in 0..AV1C_320X180.len() {
            let _ = parse_av1_codec_config(&AV1C_320X180[..n]);
        }
        for n in 0..11 {
            let _ = parse_sequence_header_obu(&AV1C_320X180[6..6 + n]);
        }
        assert!(parse_sequence_header_obu(&AV1C_320X180[6..10]).is_err());
    }

    #[test]
    fn rejects_overlong_leb128() {
        let rec = [
            0x81, 0, 0, 0, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
        ];
        assert!(parse_av1_codec_config(&rec).is_err());
        let rec = [0x81, 0, 0, 0, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
        assert!(parse_av1_codec_config(&rec)
            .unwrap_err()
            .to_string()
            .contains("2^32"));
    }
}
