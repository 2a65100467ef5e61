//! `[rtmp]`: limits of the RTMP(S) ingest. The protocol limits' defaults
//! come from [`Limits::default()`], so the core and the file cannot drift.

use std::time::Duration;

use serde::Deserialize;

use super::proto::Limits;
use crate::config::{self, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_connections: usize,
    /// The wire length field is 24 bits (RTMP spec 5.3.1.2.1).
    #[serde(deserialize_with = "config::int::<1024, 0xFF_FFFF, _, _>")]
    pub max_message_size: u32,
    #[serde(deserialize_with = "config::int::<2, 65_599, _, _>")]
    pub max_chunk_streams: usize,
    #[serde(deserialize_with = "config::int::<2, 1024, _, _>")]
    pub max_amf_depth: usize,
    #[serde(deserialize_with = "config::duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "config::duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "config::int::<128, 0xFF_FFFF, _, _>")]
    pub chunk_size: u32,
    #[serde(deserialize_with = "config::int::<1, 0xFFFF_FFFF, _, _>")]
    pub window_ack_size: u32,
    /// Largest timestamp step accepted as continuous; larger ones re-base.
    #[serde(deserialize_with = "config::duration")]
    pub max_timestamp_jump: Duration,
    /// A live publisher that sent no media for this long may be replaced by
    /// a new publisher on the same path (an encoder reconnecting after its
    /// old TCP connection died silently).
    #[serde(deserialize_with = "config::duration")]
    pub stale_publisher_timeout: Duration,
    /// Open RTMP(S) connections from one client IP.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_connections_per_ip: usize,
    /// Live publishes from one client IP.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_publishes_per_ip: usize,
    /// Live streams on this server.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_streams: usize,
    /// Ingest bitrate cap per stream (kbit/s, averaged over a few seconds);
    /// a publisher above it is disconnected. `max_ingest_bitrate` in the file.
    #[serde(
        rename = "max_ingest_bitrate",
        deserialize_with = "config::bitrate_kbps"
    )]
    pub max_ingest_kbps: u32,
    /// RTMP messages (audio, video, data, commands, control, each
    /// sub-message of an aggregate) one connection may send per second;
    /// more close it with `NetStream.Publish.Failed` naming this key.
    /// Real encoders stay far below: one video track at 60 fps and AAC at
    /// 48 kHz send ~110 a second; Enhanced RTMP multitrack with 4 video
    /// tracks at 120 fps, 8 audio tracks (~47 frames/s each) and metadata
    /// stays under 1 000. The default, 5 000, leaves 5× that for bursts
    /// (an encoder catching up after a stall); a flood of tiny or empty
    /// messages, which the bitrate cap barely sees, is cut at once.
    #[serde(deserialize_with = "config::int::<1, 1_000_000, _, _>")]
    pub max_messages_per_second: u32,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        // The protocol limits have one source of truth: `Limits::default()`.
        let limits = Limits::default();
        RtmpConfig {
            max_connections: 1024,
            max_message_size: limits.max_message_size,
            max_chunk_streams: limits.max_chunk_streams,
            max_amf_depth: limits.max_amf_depth,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            chunk_size: limits.chunk_size,
            window_ack_size: limits.window_ack_size,
            max_timestamp_jump: Duration::from_secs(10),
            stale_publisher_timeout: Duration::from_secs(3),
            max_connections_per_ip: 32,
            max_publishes_per_ip: 8,
            max_streams: 1000,
            max_ingest_kbps: 100_000,
            max_messages_per_second: limits.max_messages_per_second,
        }
    }
}

impl RtmpConfig {
    /// The protocol core's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_chunk_streams: self.max_chunk_streams,
            max_amf_depth: self.max_amf_depth,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            chunk_size: self.chunk_size,
            window_ack_size: self.window_ack_size,
            max_messages_per_second: self.max_messages_per_second,
        }
    }

    /// Rules across keys; errors name keys relative to `[rtmp]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtmp(text: &str) -> Result<RtmpConfig, ConfigError> {
        let c: RtmpConfig = config::section_from_toml("rtmp", text)?;
        c.validate().map_err(|e| e.under("rtmp"))?;
        Ok(c)
    }

    fn err(text: &str) -> String {
        rtmp(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_protocol_limits() {
        let c = rtmp("").unwrap();
        assert_eq!(c.max_chunk_streams, 64);
        assert_eq!(
            format!("{:?}", c.limits()),
            format!("{:?}", Limits::default())
        );
    }

    #[test]
    fn values_are_read() {
        let c = rtmp(
            "max_message_size = 1048576\nhandshake_timeout = \"500ms\"\nmax_ingest_bitrate = \"8M\"",
        )
        .unwrap();
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.limits().handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.max_ingest_kbps, 8000);
        assert_eq!(c.max_messages_per_second, 5000);
        let c = rtmp("max_messages_per_second = 800").unwrap();
        assert_eq!(c.limits().max_messages_per_second, 800);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("max_chunk_stream = 3").contains("`rtmp.max_chunk_stream`"));
        assert_eq!(
            err("max_chunk_streams = 0"),
            "config key `rtmp.max_chunk_streams`: 0 is out of range; allowed 2..=65599"
        );
        assert!(err("idle_timeout = \"soon\"").contains("`rtmp.idle_timeout`"));
        assert!(err("idle_timeout = \"0s\"").contains("`rtmp.idle_timeout`"));
        assert!(err("handshake_timeout = \"0s\"").contains("`rtmp.handshake_timeout`"));
        assert!(err("chunk_size = \"big\"").contains("expected an integer"));
        assert!(err("max_connections = \"many\"").contains("`rtmp.max_connections`"));
        assert!(err("window_ack_size = 4294967296").contains("`rtmp.window_ack_size`"));
        assert!(err("max_ingest_bitrate = 5").contains("`rtmp.max_ingest_bitrate`"));
        assert_eq!(
            err("max_messages_per_second = 0"),
            "config key `rtmp.max_messages_per_second`: 0 is out of range; allowed 1..=1000000"
        );
    }
}
