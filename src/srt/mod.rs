//! SRT egress: the `[srt]` section and push targets (`config`), streamid
//! access control (`streamid`), a guard that pre-validates every datagram
//! (`guard`), per-address handshake and webhook budgets (`admission`), the
//! sender core that feeds a connection from a ring (`sender`), the pull
//! listener serving players from one UDP socket (`listener`) and push legs
//! to destinations (`push`). See docs/srt-sans-io.md.

mod admission;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod listener;
pub mod push;
pub mod sender;
pub mod streamid;
