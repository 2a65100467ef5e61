//! The stream groups' legs, wired to the modules that implement them: SRT
//! push legs (`srt::push`), RTMP(S) restreams (`rtmp::client`), the
//! transcode (`transcode`), the recording (`record`) and the cluster
//! claim (`cluster::claim`).

use std::sync::Arc;
use std::time::Duration;

use super::Config;
use crate::config::Live;
use crate::stream::leg::{LegContext, LegFuture, LegSpec, LegStarter};
use crate::transcode::config::TranscodeConfig;
use crate::transcode::{self, EncoderState};

/// What starting a leg needs from the server's configuration.
pub(super) struct Legs {
    /// Replaced by a config reload: legs that start afterwards read the
    /// new settings, running ones keep theirs.
    settings: Live<LegSettings>,
    /// New transcodes take the encoder choice in force when they start.
    encoders: Arc<EncoderState>,
    /// `[cluster]`: the directory claim legs hold paths in.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

struct LegSettings {
    srt_latency: Duration,
    srt_idle_timeout: Duration,
    transcode: TranscodeConfig,
}

impl LegSettings {
    fn of(config: &Config) -> LegSettings {
        LegSettings {
            srt_latency: config.srt.latency,
            srt_idle_timeout: config.srt.peer_idle_timeout,
            transcode: config.transcode.clone(),
        }
    }
}

impl Legs {
    pub(super) fn new(
        config: &Config,
        encoders: Arc<EncoderState>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Legs {
        Legs {
            settings: Live::new(LegSettings::of(config)),
            encoders,
            cluster,
        }
    }

    /// Settings for legs that start from now on.
    pub(super) fn reload(&self, config: &Config) {
        self.settings.set(LegSettings::of(config));
    }
}

impl LegStarter for Legs {
    fn start(&self, spec: &LegSpec, ctx: LegContext) -> LegFuture {
        let settings = self.settings.get();
        match spec {
            LegSpec::SrtPush { target, .. } => Box::pin(crate::srt::push::run_leg(
                target.clone(),
                settings.srt_latency,
                settings.srt_idle_timeout,
                ctx,
            )),
            LegSpec::RtmpPush { target, .. } => Box::pin(crate::rtmp::client::run_leg(
                target.clone(),
                crate::rtmp::client::PushSettings::default(),
                ctx,
            )),
            LegSpec::Transcode(renditions) => {
                let params = transcode::Params {
                    config: settings.transcode.clone(),
                    encoders: self.encoders.get(),
                    renditions: renditions.clone(),
                };
                Box::pin(transcode::run_leg(params, ctx))
            }
            LegSpec::Record(spec) => Box::pin(crate::record::run_leg(spec.clone(), ctx)),
            LegSpec::Claim { takeover } => match &self.cluster {
                Some(c) => Box::pin(crate::cluster::claim::run_leg(c.clone(), *takeover, ctx)),
                // Streams are told to claim only when the cluster is on.
                None => Box::pin(async { Ok(()) }),
            },
        }
    }
}
