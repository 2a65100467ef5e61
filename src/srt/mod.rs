//! SRT egress: streamid access-control parsing (`streamid`), a guard that
//! pre-validates every datagram before srt-protocol parses it (`guard`),
//! the pull listener that serves rendition rings to SRT callers from one UDP
//! socket and one task (`listener`), and push legs that stream a rendition
//! to configured destinations as an SRT caller (`push`). See
//! docs/srt-sans-io.md.

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod listener;
pub mod push;
pub mod streamid;
