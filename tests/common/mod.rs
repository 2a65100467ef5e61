//! Shared harness for sluice's integration tests, one module per concern.
//!
//! Every test starts its own `sluice` process on ephemeral ports ([`harness`]),
//! talks to it over real sockets ([`http`], [`net`], an independent RTMP
//! client in [`rtmp_client`]) and drives real encoders ([`media`]) as child
//! processes owned by guards that kill and reap them ([`process`]). The
//! benches in `benches/` include some of these modules by path.

// Each test binary uses a different part of the helpers.
#![allow(dead_code)]

pub mod bystander;
pub mod expect;
pub mod flv;
pub mod harness;
pub mod http;
pub mod json;
pub mod media;
pub mod net;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod rtmp_client;
pub mod srt_caller;
pub mod srt_packets;
pub mod webhook;

// `use common::*;` reaches every helper; each test binary uses some of them.
#[allow(unused_imports)]
pub use {
    bystander::*, expect::*, harness::*, http::*, json::*, media::*, net::*, otlp::*, process::*,
    prometheus::*, redis::*, srt_caller::*, webhook::*,
};
