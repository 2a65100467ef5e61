//! SRT egress: streamid access-control parsing (`streamid`), a guard that
//! pre-validates every datagram before srt-protocol parses it (`guard`),
//! and the pull listener that serves rendition rings to SRT callers from
//! one UDP socket and one task (`listener`). See docs/srt-sans-io.md.

pub mod guard;
pub mod listener;
pub mod streamid;
