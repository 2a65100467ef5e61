//! Deciding the rendition encoders, at start and on re-probe: the NVML
//! inventory (logged), then trial encodes unless nothing transcodes or the
//! mode is software-only, then [`resolve`](super::resolve).

use tracing::{info, warn};

use super::config::{EncoderMode, TranscodeConfig, VideoCodec};
use super::Encoders;
use crate::gpu::{self, Gpus};

/// Read the GPUs and decide the rendition encoders (NVENC only where a
/// trial encode works). `codecs` are those the configured renditions use;
/// trials run only when there is one and the mode is not software-only.
pub async fn choose_encoders(
    tc: &TranscodeConfig,
    codecs: &[VideoCodec],
    gpus: &Gpus,
) -> Result<Encoders, String> {
    if let Some(why) = gpus.why_none() {
        info!(
            reason = why,
            "no NVIDIA GPU; renditions are encoded on the CPU"
        );
    } else {
        // NVML calls block: not on an async worker.
        let g = gpus.clone();
        let inv = tokio::task::spawn_blocking(move || g.inventory())
            .await
            .unwrap_or_default();
        for g in &inv.gpus {
            info!(
                gpu = g.index,
                name = g.name,
                memory_total_bytes = g.memory_total_bytes,
                encoder_capacity_h264 = g.encoder_capacity_h264,
                "GPU found"
            );
        }
    }
    if codecs.is_empty() {
        return Ok(Encoders::software(
            tc.encoder,
            "no application has renditions; NVENC not probed",
        ));
    }
    if super::find_ffmpeg(&tc.ffmpeg).is_none() {
        warn!(ffmpeg = %tc.ffmpeg.display(), "ffmpeg not found: streams of applications with renditions will fail setup until it is installed");
    }
    if tc.encoder == EncoderMode::Software {
        return Ok(Encoders::software(
            tc.encoder,
            "transcode.encoder = \"x264\"",
        ));
    }
    let probe = gpu::probe(&tc.ffmpeg, gpus).await;
    super::resolve(tc.encoder, tc.gpu_decode, &probe, codecs)
}
