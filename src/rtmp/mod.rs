//! RTMP ingest: a sans-IO protocol core (`proto`), AMF0 (`amf0`), the
//! `[rtmp]` section (`config`), FLV tags as media events (`ingest`),
//! publish decisions (`publish`), connection limits (`admission`) and the
//! tokio driver (`server`) that feeds a publish into its stream group.
//! Restream: the publishing client (`client`), a stream group's RTMP(S) leg.

pub mod admission;
pub mod amf0;
pub mod client;
pub mod config;
pub mod ingest;
pub mod proto;
pub mod publish;
pub mod server;
