//! Live config reload: `SIGHUP` and `POST /api/v1/config/reload` read the
//! config file again through the start's [`Source`] (flags included),
//! check it exactly as the start does, and hand each part of the server
//! its new settings for whatever starts afterwards; running streams,
//! players, legs and connections keep the settings they started with.

use std::sync::Arc;

use metrics::counter;
use tokio::sync::watch;
use tracing::{info, warn};

use super::config::{changed_sections, Config, Loaded, Source};
use super::legs::Legs;
use super::{check, log_applications, rtmp_settings, stream_limits, stream_settings, Checked};
use crate::config::Live;
use crate::gpu::Gpus;
use crate::http::{ApiToken, BoxFuture, EncoderInputs, Reload, ReloadOutcome};
use crate::rtmp::server::Context;
use crate::srt::listener::ListenerSettings;
use crate::stream::driver::Streams;
use crate::stream::Registry;
use crate::telemetry as t;
use crate::transcode::{self, EncoderState};

/// Every holder of settings a reload replaces.
pub(super) struct Targets {
    pub ctx: Arc<Context>,
    pub streams: Arc<Streams>,
    pub registry: Arc<Registry>,
    pub legs: Arc<Legs>,
    pub srt: watch::Sender<Arc<ListenerSettings>>,
    pub api_token: Arc<Live<Option<ApiToken>>>,
    pub encoder_inputs: Arc<Live<EncoderInputs>>,
    pub encoders: Arc<EncoderState>,
    pub gpus: Arc<Gpus>,
    pub edges: Option<Arc<crate::cluster::edge::Edges>>,
}

pub(super) struct Reloader {
    source: Source,
    /// The configuration in force (the drain reads its timeout here).
    current: Live<Config>,
    /// One reload at a time; the text of the file in force.
    text: tokio::sync::Mutex<String>,
    targets: Targets,
}

impl Reloader {
    pub(super) fn new(source: Source, loaded: Loaded, targets: Targets) -> Reloader {
        Reloader {
            source,
            current: Live::new(loaded.config),
            text: tokio::sync::Mutex::new(loaded.text),
            targets,
        }
    }

    /// The configuration in force.
    pub(super) fn current(&self) -> Arc<Config> {
        self.current.get()
    }

    /// Re-read the file and apply it; logs and counts the outcome.
    /// `trigger` (`SIGHUP`, `api`) is logged.
    pub(super) async fn run(&self, trigger: &'static str) -> ReloadOutcome {
        let outcome = self.try_reload().await;
        let result = outcome.result();
        counter!(t::CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
        match &outcome {
            ReloadOutcome::Reloaded { changed } => {
                let changed = if changed.is_empty() {
                    "nothing in the file".to_string()
                } else {
                    changed.join(",")
                };
                info!(
                    trigger,
                    changed,
                    applies_to = "streams, players, legs and connections that start from now on",
                    "config reloaded"
                );
            }
            _ => warn!(
                trigger,
                result,
                error = outcome.error().unwrap_or_default(),
                "config not reloaded"
            ),
        }
        outcome
    }

    async fn try_reload(&self) -> ReloadOutcome {
        if self.source.file.is_none() {
            return ReloadOutcome::NoFile;
        }
        let mut text = self.text.lock().await;
        let loaded = match self.source.load() {
            Ok(l) => l,
            Err(e) => return ReloadOutcome::Invalid(e.to_string()),
        };
        let checked = match check(&loaded.config) {
            Ok(c) => c,
            Err(e) => return ReloadOutcome::Invalid(e.to_string()),
        };
        if let Some(key) = self.current().restart_only_change(&loaded.config) {
            return ReloadOutcome::Refused(format!("{key} changed; restart sluice to change it"));
        }
        if let Err(e) = self.choose_encoders(&loaded.config).await {
            return ReloadOutcome::Refused(format!("transcode.encoder: {e}"));
        }
        // Nothing below fails: the new configuration goes in as a whole.
        self.apply(&loaded.config, checked);
        let changed = changed_sections(&text, &loaded.text);
        *text = loaded.text;
        self.current.set(loaded.config);
        ReloadOutcome::Reloaded { changed }
    }

    /// Run the encoder choice again when `[transcode]` changed or a
    /// rendition codec appeared that it was not made for (a codec's NVENC
    /// trial only runs when some rendition uses it); new transcodes take
    /// the result. An error (NVENC required and not working) refuses the
    /// reload, as it refuses the start.
    async fn choose_encoders(&self, new: &Config) -> Result<(), String> {
        let t = &self.targets;
        let codecs = new.apps.rendition_codecs();
        let inputs = t.encoder_inputs.get();
        let same_transcode = format!("{:?}", inputs.transcode) == format!("{:?}", new.transcode);
        if same_transcode && codecs.iter().all(|c| inputs.codecs.contains(c)) {
            return Ok(());
        }
        let chosen = transcode::choose_encoders(&new.transcode, &codecs, &t.gpus).await?;
        t.encoders
            .replace(chosen, transcode::nvenc_sessions_in_use());
        Ok(())
    }

    fn apply(&self, c: &Config, checked: Checked) {
        let t = &self.targets;
        let apps = Arc::new(c.apps.clone());
        t.ctx
            .settings
            .set(rtmp_settings(c, apps.clone(), checked.tls));
        t.streams.set_settings(stream_settings(c));
        t.registry.set_limits(stream_limits(c));
        t.legs.reload(c);
        if let Some(e) = &t.edges {
            e.set_settings(super::edge_settings(c));
        }
        t.srt.send_replace(Arc::new(ListenerSettings {
            srt: c.srt.clone(),
            apps,
            max_timestamp_jump: c.rtmp.max_timestamp_jump,
            max_ingest_kbps: c.rtmp.max_ingest_kbps,
        }));
        t.api_token.set(checked.api_token);
        t.encoder_inputs.set(EncoderInputs {
            transcode: c.transcode.clone(),
            codecs: c.apps.rendition_codecs(),
        });
        log_applications(&c.apps);
    }
}

impl Reload for Reloader {
    fn reload(&self, trigger: &'static str) -> BoxFuture<'_, ReloadOutcome> {
        Box::pin(self.run(trigger))
    }
}
