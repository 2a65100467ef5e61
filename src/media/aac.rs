//! MPEG-4 AudioSpecificConfig parsing (ISO/IEC 14496-3 1.6.2.1), the AAC sequence header in FLV.
//! Reads the audio object type (with the escape for types >= 32), the sampling frequency (index or explicit 24-bit value),
//! the channel configuration, and explicit SBR/PS signalling; everything after that is left to the decoder.

use super::bits::BitReader;
use super::{AudioParams, MediaError};

const ASC: &str = "AudioSpecificConfig";

/// samplingFrequencyIndex table (ISO/IEC 14496-3 1.6.3.3, Table 1.18).
const SAMPLING_FREQUENCIES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Audio object type: SBR (HE-AAC v1, explicit hierarchical signalling).
pub const AOT_SBR: u8 = 5;
/// Audio object type: Parametric Stereo (HE-AAC v2).
pub const AOT_PS: u8 = 29;

/// The leading fields of an AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Core audio object type (2 = AAC LC). For explicitly signalled HE-AAC
    /// this is the underlying core type, not 5/29.
    pub object_type: u8,
    /// samplingFrequencyIndex of the core (0xF = explicit frequency).
    pub sampling_frequency_index: u8,
    /// Core sampling frequency in Hz.
    pub sampling_frequency: u32,
    /// channelConfiguration (0 = defined by a program_config_element).
    pub channel_configuration: u8,
    /// SBR was signalled explicitly (object type 5 or 29).
    pub sbr: bool,
    /// Parametric stereo was signalled explicitly (object type 29).
    pub ps: bool,
    /// Output sampling frequency when SBR is signalled.
    pub extension_sampling_frequency: Option<u32>,
}

impl AudioSpecificConfig {
    /// Parses the leading fields of an AudioSpecificConfig (1.6.2.1).
    pub fn parse(asc: &[u8]) -> Result<Self, MediaError> {
        let mut r = BitReader::new(asc, ASC);
        let mut object_type = read_object_type(&mut r)?;
        let (sampling_frequency_index, sampling_frequency) = read_sampling_frequency(&mut r)?;
        let channel_configuration = r.read_bits(4, "channelConfiguration")?;
        let channel_configuration = u8::try_from(channel_configuration).unwrap_or(0);
        let mut sbr = false;
        let mut ps = false;
        let mut extension_sampling_frequency = None;
        if object_type == AOT_SBR || object_type == AOT_PS {
            // Explicit hierarchical signalling: the extension sampling
            // frequency follows, then the core object type.
            sbr = true;
            ps = object_type == AOT_PS;
            let (_, ext) = read_sampling_frequency(&mut r)?;
            extension_sampling_frequency = Some(ext);
            object_type = read_object_type(&mut r)?;
            if object_type == 22 {
                r.skip_bits(4, "extensionChannelConfiguration")?;
            }
        }
        if object_type == 0 {
            return Err(r.invalid("audioObjectType", 0, "0 is the null object"));
        }
        Ok(AudioSpecificConfig {
            object_type,
            sampling_frequency_index,
            sampling_frequency,
            channel_configuration,
            sbr,
            ps,
            extension_sampling_frequency,
        })
    }

    /// Number of output channels for the channel configuration (Table 1.19,
    /// plus configurations 11-14 from later amendments); 0 means the layout is
    /// given in-band by a program_config_element.
    pub fn channels(&self) -> u8 {
        let base = match self.channel_configuration {
            1..=6 => self.channel_configuration,
            7 => 8,
            11 => 7,
            12 | 14 => 8,
            13 => 24,
            _ => 0,
        };
        // Parametric stereo decodes a mono core to stereo (ISO/IEC 14496-3 8.6.4).
        if self.ps && base == 1 {
            2
        } else {
            base
        }
    }

    /// The object type as signalled: 29 for PS, 5 for SBR, else the core type.
    pub fn signalled_object_type(&self) -> u8 {
        if self.ps {
            AOT_PS
        } else if self.sbr {
            AOT_SBR
        } else {
            self.object_type
        }
    }

    /// Summary parameters: output rate (SBR doubles it), channels, object type.
    pub fn params(&self) -> AudioParams {
        AudioParams {
            sample_rate: self
                .extension_sampling_frequency
                .unwrap_or(self.sampling_frequency),
            channels: self.channels(),
            object_type: Some(self.signalled_object_type()),
        }
    }
}

/// GetAudioObjectType() (1.6.2.1.1): 5 bits, 31 escapes to 32 + 6 bits.
fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, MediaError> {
    let aot = r.read_bits(5, "audioObjectType")?;
    let aot = if aot == 31 {
        32 + r.read_bits(6, "audioObjectTypeExt")?
    } else {
        aot
    };
    // At most 32 + 63 = 95.
    u8::try_from(aot).map_err(|_| r.invalid("audioObjectType", aot.into(), "out of range"))
}

/// samplingFrequencyIndex (4 bits) or, for 0xF, an explicit 24-bit frequency.
fn read_sampling_frequency(r: &mut BitReader<'_>) -> Result<(u8, u32), MediaError> {
    let idx = r.read_bits(4, "samplingFrequencyIndex")?;
    if idx == 0xF {
        let f = r.read_bits(24, "samplingFrequency")?;
        if f == 0 {
            return Err(r.invalid("samplingFrequency", 0, "must be non-zero"));
        }
        return Ok((0xF, f));
    }
    let f = usize::try_from(idx)
        .ok()
        .and_then(|i| SAMPLING_FREQUENCIES.get(i))
        .copied()
        .ok_or_else(|| {
            r.invalid(
                "samplingFrequencyIndex",
                idx.into(),
                "13 and 14 are reserved",
            )
        })?;
    Ok((u8::try_from(idx).unwrap_or(0), f))
}

/// Parses an AudioSpecificConfig into output sample rate, channels and object type.
pub fn parse_audio_specific_config(asc: &[u8]) -> Result<AudioParams, MediaError> {
    AudioSpecificConfig::parse(asc).map(|c| c.params())
}

const ADTS: &str = "ADTS header";

/// The fixed and variable ADTS header fields sluice needs (ISO/IEC 14496-3
/// 1.A.2.2, the same layout as ISO/IEC 13818-7 6.2 for MPEG-2 AAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// Audio object type: profile_ObjectType + 1 (1.A.3.2.1; 2 = AAC LC).
    pub object_type: u8,
    /// sampling_frequency_index (0..=12).
    pub sampling_frequency_index: u8,
    /// channel_configuration (0 = a program_config_element in the payload).
    pub channel_configuration: u8,
    /// frame_length: the whole ADTS frame, header included.
    pub frame_length: usize,
    /// 7 bytes, or 9 with the CRC (protection_absent = 0).
    pub header_length: usize,
}

impl AdtsHeader {
    /// Smallest ADTS header (protection_absent = 1).
    pub const MIN_LEN: usize = 7;

    /// Parses the header at the start of `data`. Fails on a wrong sync word
    /// or layer, reserved sampling frequencies, a frame_length shorter than
    /// its header, and frames of several raw_data_blocks (each 1024-sample
    /// block would be its own access unit, and without CRC their bounds are
    /// not signalled).
    pub fn parse(data: &[u8]) -> Result<Self, MediaError> {
        let mut r = BitReader::new(data, ADTS);
        let sync = r.read_bits(12, "syncword")?;
        if sync != 0xFFF {
            return Err(r.invalid("syncword", sync.into(), "must be 0xFFF"));
        }
        r.skip_bits(1, "ID")?;
        let layer = r.read_bits(2, "layer")?;
        if layer != 0 {
            return Err(r.invalid("layer", layer.into(), "must be 0"));
        }
        let protection_absent = r.read_bit("protection_absent")?;
        let profile = r.read_bits(2, "profile_ObjectType")?;
        let sfi = r.read_bits(4, "sampling_frequency_index")?;
        if sfi > 12 {
            return Err(r.invalid(
                "sampling_frequency_index",
                sfi.into(),
                "13..=15 are reserved in ADTS",
            ));
        }
        r.skip_bits(1, "private_bit")?;
        let channels = r.read_bits(3, "channel_configuration")?;
        r.skip_bits(4, "original_copy/home/copyright_id_bits")?;
        let frame_length = r.read_bits(13, "frame_length")? as usize;
        r.skip_bits(11, "adts_buffer_fullness")?;
        let blocks = r.read_bits(2, "number_of_raw_data_blocks_in_frame")?;
        let header_length = if protection_absent { 7 } else { 9 };
        if frame_length < header_length {
            return Err(r.invalid(
                "frame_length",
                frame_length as u64,
                "shorter than the header",
            ));
        }
        if blocks != 0 {
            return Err(MediaError::Unsupported {
                what: ADTS,
                field: "number_of_raw_data_blocks_in_frame",
                value: blocks.into(),
            });
        }
        Ok(AdtsHeader {
            object_type: profile as u8 + 1,
            sampling_frequency_index: sfi as u8,
            channel_configuration: channels as u8,
            frame_length,
            header_length,
        })
    }

    /// The sampling frequency in Hz (Table 1.18).
    pub fn sample_rate(&self) -> u32 {
        SAMPLING_FREQUENCIES
            .get(usize::from(self.sampling_frequency_index))
            .copied()
            .unwrap_or(0)
    }

    /// The 2-byte AudioSpecificConfig (1.6.2.1) this header implies:
    /// audioObjectType(5) samplingFrequencyIndex(4) channelConfiguration(4)
    /// and GASpecificConfig's three 0 flags.
    pub fn audio_specific_config(&self) -> [u8; 2] {
        let v: u16 = u16::from(self.object_type & 0x1F) << 11
            | u16::from(self.sampling_frequency_index & 0x0F) << 7
            | u16::from(self.channel_configuration & 0x0F) << 3;
        v.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aac_lc_48khz_stereo() {
        // 00010 0011 0010 000 -> LC, 48 kHz, 2 channels
        let p = parse_audio_specific_config(&[0x11, 0x90]).unwrap();
        assert_eq!(
            p,
            AudioParams {
                sample_rate: 48000,
                channels: 2,
                object_type: Some(2)
            }
        );
    }

    #[test]
    fn aac_lc_44100_mono() {
        // 00010 0100 0001 000
        let p = parse_audio_specific_config(&[0x12, 0x08]).unwrap();
        assert_eq!(
            p,
            AudioParams {
                sample_rate: 44100,
                channels: 1,
                object_type: Some(2)
            }
        );
    }

    #[test]
    fn explicit_24_bit_sampling_frequency() {
        // 00010 1111 <24 bits = 50000> 0010 000
        let f: u32 = 50_000;
        let bits: u64 = (2u64 << 35) | (0xFu64 << 31) | (u64::from(f) << 7) | (2 << 3);
        let bytes = bits.to_be_bytes();
        let asc = &bytes[3..];
        let c = AudioSpecificConfig::parse(asc).unwrap();
        assert_eq!(c.sampling_frequency_index, 0xF);
        assert_eq!(c.sampling_frequency, 50_000);
        assert_eq!(c.channels(), 2);
    }

    #[test]
    fn escaped_object_type() {
        // 11111 000010 (AOT 34) 0011 (48k) 0001 (mono)
        // 1111 1000 0100 0110 0010 0000
        let c = AudioSpecificConfig::parse(&[0xF8, 0x46, 0x20]).unwrap();
        assert_eq!(c.object_type, 34);
        assert_eq!(c.sampling_frequency, 48000);
        assert_eq!(c.channel_configuration, 1);
    }

    #[test]
    fn explicit_he_aac_reports_output_rate_and_core_type() {
        // 00101 (SBR) 0110 (24k) 0010 (stereo) 0011 (ext 48k) 00010 (LC)
        // 0010 1011 0001 0001 1000 1000 -> 0x2B 0x11 0x88
        let c = AudioSpecificConfig::parse(&[0x2B, 0x11, 0x88]).unwrap();
        assert!(c.sbr && !c.ps);
        assert_eq!(c.object_type, 2);
        assert_eq!(c.sampling_frequency, 24000);
        let p = c.params();
        assert_eq!(
            p,
            AudioParams {
                sample_rate: 48000,
                channels: 2,
                object_type: Some(5)
            }
        );
        // PS with a mono core decodes to stereo.
        // 11101 (29) 0110 0001 0011 00010 -> 1110 1011 0000 1001 1000 1000
        let p = parse_audio_specific_config(&[0xEB, 0x09, 0x88]).unwrap();
        assert_eq!(
            p,
            AudioParams {
                sample_rate: 48000,
                channels: 2,
                object_type: Some(29)
            }
        );
    }

    #[test]
    fn rejects_reserved_index_truncation_and_null_object() {
        // LC, index 13
        let e = parse_audio_specific_config(&[0x16, 0x90]).unwrap_err();
        assert!(e.to_string().contains("samplingFrequencyIndex = 13"), "{e}");
        assert!(parse_audio_specific_config(&[]).is_err());
        assert!(parse_audio_specific_config(&[0x11]).is_err());
        assert!(parse_audio_specific_config(&[0x01, 0x90]).is_err());
        // explicit frequency cut short
        assert!(parse_audio_specific_config(&[0x17, 0x80, 0x00]).is_err());
    }

    #[test]
    fn seven_channel_configuration_is_eight_channels() {
        // LC 48k config 7: 00010 0011 0111 000
        let p = parse_audio_specific_config(&[0x11, 0xB8]).unwrap();
        assert_eq!(p.channels, 8);
    }

    #[test]
    fn adts_headers_give_the_audio_specific_config() {
        // AAC LC, 48 kHz (3), stereo, no CRC, frame_length 0x123.
        let len: u32 = 0x123;
        let h = [
            0xFF,
            0xF1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) & 3) as u8,
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1F,
            0xFC,
        ];
        let a = AdtsHeader::parse(&h).unwrap();
        assert_eq!(
            (
                a.object_type,
                a.sampling_frequency_index,
                a.channel_configuration
            ),
            (2, 3, 2)
        );
        assert_eq!(
            (a.frame_length, a.header_length, a.sample_rate()),
            (0x123, 7, 48_000)
        );
        assert_eq!(a.audio_specific_config(), [0x11, 0x90]);
        // With CRC: a 9-byte header.
        let mut crc = h;
        crc[1] = 0xF0;
        assert_eq!(AdtsHeader::parse(&crc).unwrap().header_length, 9);
        // Errors: sync word, layer, reserved frequency, short length, several blocks.
        let mut bad = h;
        bad[0] = 0xFE;
        assert!(AdtsHeader::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("syncword"));
        let mut bad = h;
        bad[1] = 0xF3;
        assert!(AdtsHeader::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("layer"));
        let mut bad = h;
        bad[2] = (1 << 6) | (13 << 2);
        assert!(AdtsHeader::parse(&bad).is_err());
        let mut bad = h;
        bad[3] = 2 << 6;
        bad[4] = 0;
        bad[5] = 0x1F;
        assert!(AdtsHeader::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("frame_length"));
        let mut bad = h;
        bad[6] = 0xFD;
        assert!(AdtsHeader::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("raw_data_blocks"));
        for n in 0..7 {
            assert!(AdtsHeader::parse(&h[..n]).is_err());
        }
    }
}
