//! SRT ingest and egress: the `[srt]` section and push targets (`config`),
//! streamid access control (`streamid`), a guard that pre-validates every
//! datagram (`guard`), per-address handshake and webhook budgets
//! (`admission`), the sender core that feeds a connection from a ring
//! (`sender`) and the receiver core of a publishing connection
//! (`receiver`), the listener serving players and publishers from one UDP
//! socket (`listener`), each publisher's ingest task (`publish`) and push
//! legs to destinations (`push`), and the batched UDP the listener sends
//! and receives with (`udp`: sendmmsg, UDP GSO, recvmmsg). See
//! docs/srt-sans-io.md.

mod admission;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod listener;
pub mod publish;
pub mod push;
pub mod receiver;
pub mod sender;
pub mod sendonly;
pub mod streamid;
pub mod udp;
