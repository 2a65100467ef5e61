//! RTMP ingest: a sans-IO protocol core (`proto`), AMF0 (`amf0`), and the
//! tokio driver (`server`).

pub mod amf0;
pub mod proto;
pub mod server;
