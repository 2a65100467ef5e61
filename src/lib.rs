//! sluice: a low-latency live ingest relay. RTMP in, MPEG-TS over SRT out.
//!
//! The protocol cores (`rtmp::proto`, `rtmp::amf0`, `flv`, `media`) are
//! sans-IO: bytes in, events and bytes out, time passed in. The drivers
//! (`rtmp::server`, `http`, `server`) are thin tokio loops around them.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod flv;
pub mod gpu;
pub mod http;
pub mod media;
pub mod record;
pub mod rtmp;
pub mod server;
pub mod srt;
pub mod stream;
pub mod telemetry;
pub mod transcode;
pub mod ts;
