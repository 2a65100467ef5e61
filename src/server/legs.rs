//! The stream groups' legs, wired to the modules that implement them: SRT
//! push legs (`srt::push`), the transcode (`transcode`) and the recording
//! (`record`).

use std::sync::Arc;
use std::time::Duration;

use super::Config;
use crate::stream::leg::{LegContext, LegFuture, LegSpec, LegStarter};
use crate::transcode::config::TranscodeConfig;
use crate::transcode::{self, EncoderState};

/// What starting a leg needs from the server's configuration.
pub(super) struct Legs {
    srt_latency: Duration,
    srt_idle_timeout: Duration,
    transcode: TranscodeConfig,
    /// New transcodes take the encoder choice in force when they start.
    encoders: Arc<EncoderState>,
}

impl Legs {
    pub(super) fn new(config: &Config, encoders: Arc<EncoderState>) -> Legs {
        Legs {
            srt_latency: config.srt.latency,
            srt_idle_timeout: config.srt.peer_idle_timeout,
            transcode: config.transcode.clone(),
            encoders,
        }
    }
}

impl LegStarter for Legs {
    fn start(&self, spec: &LegSpec, ctx: LegContext) -> LegFuture {
        match spec {
            LegSpec::SrtPush { target, .. } => Box::pin(crate::srt::push::run_leg(
                target.clone(),
                self.srt_latency,
                self.srt_idle_timeout,
                ctx,
            )),
            // Replaced by the RTMP client leg (rtmp::client) when it lands.
            LegSpec::RtmpPush { target, .. } => {
                let detail = format!("{target}: RTMP restream is not available in this build");
                Box::pin(async move {
                    Err(crate::stream::leg::LegFailure {
                        reason: "rtmp_unavailable",
                        detail,
                    })
                })
            }
            LegSpec::Transcode(renditions) => {
                let params = transcode::Params {
                    config: self.transcode.clone(),
                    encoders: self.encoders.get(),
                    renditions: renditions.clone(),
                };
                Box::pin(transcode::run_leg(params, ctx))
            }
            LegSpec::Record(spec) => Box::pin(crate::record::run_leg(spec.clone(), ctx)),
        }
    }
}
