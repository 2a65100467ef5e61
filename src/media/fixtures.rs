//! Codec configurations for tests: an H.264 High 3.0 `avcC` record (one
//! SPS, one PPS) and AAC-LC 48 kHz stereo, both accepted by the muxer.

use bytes::Bytes;

use super::{Codec, CodecConfig};

/// AVCDecoderConfigurationRecord: version 1, High profile, level 3.0,
/// 4-byte lengths, one SPS, one PPS.
pub(crate) fn avcc_record() -> Bytes {
    let sps = [0x67, 0x64, 0x00, 0x1E, 0xAC, 0xD9];
    let pps = [0x68, 0xEB, 0xE3, 0xCB];
    let mut r = vec![1, 0x64, 0x00, 0x1E, 0xFF, 0xE1, 0x00, sps.len() as u8];
    r.extend_from_slice(&sps);
    r.extend_from_slice(&[1, 0x00, pps.len() as u8]);
    r.extend_from_slice(&pps);
    Bytes::from(r)
}

pub(crate) fn h264_config() -> CodecConfig {
    CodecConfig::Video {
        codec: Codec::H264,
        record: avcc_record(),
        params: None,
    }
}

/// AAC LC, 48 kHz (index 3), stereo.
pub(crate) fn aac_config() -> CodecConfig {
    CodecConfig::Audio {
        codec: Codec::Aac,
        config: Bytes::from_static(&[0x11, 0x90]),
        params: None,
    }
}
