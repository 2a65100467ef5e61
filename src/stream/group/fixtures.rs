//! Media events for lifecycle tests: an H.264 + AAC source the muxer
//! accepts.

use bytes::Bytes;

use crate::media::{Codec, CodecConfig, Frame, MediaEvent, Track};

fn avcc_record() -> Bytes {
    // version 1, High profile, level 3.0, 4-byte lengths, one SPS, one PPS.
    let sps = [0x67, 0x64, 0x00, 0x1E, 0xAC, 0xD9];
    let pps = [0x68, 0xEB, 0xE3, 0xCB];
    let mut r = vec![1, 0x64, 0x00, 0x1E, 0xFF, 0xE1, 0x00, sps.len() as u8];
    r.extend_from_slice(&sps);
    r.extend_from_slice(&[1, 0x00, pps.len() as u8]);
    r.extend_from_slice(&pps);
    Bytes::from(r)
}

pub(crate) fn video_config() -> MediaEvent {
    MediaEvent::Config(CodecConfig::Video {
        codec: Codec::H264,
        record: avcc_record(),
        params: None,
    })
}

pub(crate) fn audio_config() -> MediaEvent {
    MediaEvent::Config(CodecConfig::Audio {
        codec: Codec::Aac,
        config: Bytes::from_static(&[0x11, 0x90]),
        params: None,
    })
}

pub(crate) fn video(dts: u64, keyframe: bool) -> MediaEvent {
    let mut nal = vec![0, 0, 0, 40, if keyframe { 0x65 } else { 0x41 }];
    nal.extend((0..39).map(|i| i as u8 | 1));
    MediaEvent::Frame(Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts,
        cts: 0,
        keyframe,
        data: Bytes::from(nal),
    })
}
