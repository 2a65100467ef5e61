//! What an RTMP publish asks of the server, decided without I/O: the path
//! and its authorization (publish keys, or the webhook's question), the
//! refusal a claim error becomes, and how a stream group's verdict reads
//! as an `onStatus`. The connection driver (`server`) executes them.

use std::net::SocketAddr;

use crate::auth;
use crate::stream::config::{AppConfig, Apps};
use crate::stream::group::StatusKind;
use crate::stream::{ClaimError, StreamPath};

/// What to do with a `publish` command.
#[derive(Debug)]
pub enum Decision {
    /// Start the stream with its application's settings.
    Allow { path: StreamPath, app: AppConfig },
    /// Refuse with `NetStream.Publish.BadName`: `result` is the
    /// `sluice_rtmp_publishes_total` label, `reason` the auth reject
    /// label (if an authorization refused it), `why` the bare reason
    /// ([`refusal_text`] is what the publisher reads).
    Refuse {
        path: Option<StreamPath>,
        result: &'static str,
        reason: Option<&'static str>,
        why: String,
    },
    /// Ask the application's webhook first (POST `body`).
    AskWebhook {
        path: StreamPath,
        app: AppConfig,
        url: String,
        body: serde_json::Value,
        timeout: std::time::Duration,
    },
}

/// Decide a publish of `name` (the publishing name with its query) on
/// connection `app_raw` (the application as sent in `connect`, query
/// included), with the settings of the application the path names (its
/// section, else `[apps."*"]`; an application with neither is refused
/// once any is configured, reason `unknown_app`).
pub fn decide(app_raw: &str, name: &str, peer: SocketAddr, apps: &Apps) -> Decision {
    let path = match StreamPath::from_rtmp(app_raw, name) {
        Ok(p) => p,
        Err(why) => {
            return Decision::Refuse {
                path: None,
                result: "rejected_bad_name",
                reason: None,
                why,
            }
        }
    };
    let Some(app) = apps.lookup(&path.app) else {
        return Decision::Refuse {
            why: format!("unknown application {:?}", path.app),
            path: Some(path),
            result: "rejected_unauthorized",
            reason: Some("unknown_app"),
        };
    };
    let app = app.clone();
    if let Err(refusal) = auth::check_publish(&app.publish_keys, &path.key, app_raw, name) {
        return Decision::Refuse {
            path: Some(path),
            result: "rejected_unauthorized",
            reason: Some(refusal.reason()),
            why: refusal.to_string(),
        };
    }
    let Some(url) = app.publish_webhook.clone() else {
        return Decision::Allow { path, app };
    };
    let body = serde_json::json!({
        "action": "publish",
        "protocol": "rtmp",
        "path": path.to_string(),
        "app": path.app,
        "stream": path.key,
        "key": auth::query_param(name, "key").or_else(|| auth::query_param(app_raw, "key")),
        "query": auth::query_json(name),
        "client": peer.to_string(),
    });
    let timeout = app.webhook_timeout;
    Decision::AskWebhook {
        path,
        app,
        url,
        body,
        timeout,
    }
}

/// What a publisher refused for `why` reads: a bad name (no path) or a
/// refused publish.
pub fn refusal_text(path: Option<&StreamPath>, why: &str) -> String {
    match path {
        None => format!("bad stream name: {why}"),
        Some(_) => format!("publish refused: {why}"),
    }
}

/// The `onStatus` code and `sluice_rtmp_publishes_total` label a refused
/// claim gets.
pub fn claim_refusal(e: &ClaimError) -> (&'static str, &'static str) {
    match e {
        ClaimError::Busy(_) | ClaimError::PublishedOn { .. } => {
            ("rejected_busy", "NetStream.Publish.BadName")
        }
        ClaimError::Draining => ("rejected_draining", "NetStream.Publish.Failed"),
        ClaimError::MaxStreams { .. } | ClaimError::MaxPublishesPerIp { .. } => {
            ("rejected_limit", "NetStream.Publish.Failed")
        }
    }
}

/// The `onStatus` code that tells a publisher how its stream group ended it.
pub fn status_code(kind: StatusKind) -> &'static str {
    match kind {
        StatusKind::Failed => "NetStream.Publish.Failed",
        StatusKind::TakenOver => "NetStream.Publish.BadName",
        StatusKind::Stopped => "NetStream.Unpublish.Success",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn peer() -> SocketAddr {
        "10.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn open_apps_allow_and_bad_names_are_refused() {
        let apps = Apps::default();
        assert!(
            matches!(decide("live", "cam1", peer(), &apps), Decision::Allow { path, .. } if path.to_string() == "live/cam1")
        );
        let Decision::Refuse { result, why, .. } = decide("live", "a/b", peer(), &apps) else {
            panic!()
        };
        assert_eq!(result, "rejected_bad_name");
        assert!(why.contains("stream key"), "{why}");
        assert!(refusal_text(None, &why).starts_with("bad stream name: "));
    }

    #[test]
    fn keys_are_checked_before_the_webhook_is_asked() {
        let mut app = AppConfig::default();
        app.publish_keys
            .insert("cam1".into(), Secret::parse("s3cret-key").unwrap());
        app.publish_webhook = Some("http://127.0.0.1:1/hook".into());
        let apps: Apps = [("live".to_string(), app)].into_iter().collect();
        let Decision::Refuse { reason, .. } = decide("live", "cam1?key=wrong", peer(), &apps)
        else {
            panic!()
        };
        assert!(reason.is_some());
        // Another application is not configured: refused.
        let Decision::Refuse {
            result,
            reason,
            why,
            ..
        } = decide("other", "cam1", peer(), &apps)
        else {
            panic!()
        };
        assert_eq!(
            (result, reason),
            ("rejected_unauthorized", Some("unknown_app"))
        );
        assert!(why.contains("unknown application"), "{why}");
        let Decision::AskWebhook { body, app, .. } =
            decide("live", "cam1?key=s3cret-key", peer(), &apps)
        else {
            panic!()
        };
        assert!(app.publish_webhook.is_some());
        assert_eq!(body["path"], "live/cam1");
        assert_eq!(body["key"], "s3cret-key");
        assert_eq!(body["client"], "10.0.0.1:5000");
    }

    #[test]
    fn the_default_section_governs_unlisted_applications() {
        let text = r#"
            [live]
            ["*"]
            push = ["srt://127.0.0.1:9100?streamid=x&rendition=480p"]
            [["*".renditions]]
            name = "480p"
            height = 480
            ["*".publish_keys]
            cam1 = "s3cret-key"
        "#;
        let mut apps: Apps = crate::config::section_from_toml("apps", text).unwrap();
        apps.resolve().unwrap();
        // Keys of "*" for an unlisted application, in any spelling.
        for app in ["other", "Live"] {
            let Decision::Refuse { reason, .. } = decide(app, "cam1", peer(), &apps) else {
                panic!("{app}")
            };
            assert_eq!(reason, Some("missing_key"));
            let Decision::Allow {
                path,
                app: settings,
            } = decide(app, "cam1?key=s3cret-key", peer(), &apps)
            else {
                panic!("{app}")
            };
            assert_eq!(path.to_string(), format!("{app}/cam1"));
            // Its streams get the default's renditions and push legs.
            assert_eq!(settings.renditions[0].name, "480p");
            assert_eq!(settings.push[0].rendition(), "480p");
        }
        // The named application keeps its own (open) settings.
        let Decision::Allow { app: live, .. } = decide("live", "any", peer(), &apps) else {
            panic!()
        };
        assert!(live.push.is_empty() && live.renditions.is_empty());
    }

    #[test]
    fn group_verdicts_map_to_rtmp_codes() {
        assert_eq!(
            status_code(StatusKind::TakenOver),
            "NetStream.Publish.BadName"
        );
        assert_eq!(
            status_code(StatusKind::Stopped),
            "NetStream.Unpublish.Success"
        );
        assert_eq!(
            claim_refusal(&ClaimError::Draining),
            ("rejected_draining", "NetStream.Publish.Failed")
        );
    }
}
