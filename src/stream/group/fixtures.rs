//! Media events for lifecycle tests: an H.264 + AAC source the muxer
//! accepts.

use bytes::Bytes;

use crate::media::fixtures::{aac_config, h264_config};
use crate::media::{Codec, Frame, MediaEvent, Track};

pub(crate) fn video_config() -> MediaEvent {
    MediaEvent::Config(h264_config())
}

pub(crate) fn audio_config() -> MediaEvent {
    MediaEvent::Config(aac_config())
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
