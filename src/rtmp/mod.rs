//! RTMP ingest: a sans-IO protocol core (`proto`), AMF0 (`amf0`), the
//! `[rtmp]` section (`config`), and the tokio driver (`server`).

pub mod amf0;
pub mod config;
pub mod proto;
pub mod server;
