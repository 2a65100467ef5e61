//! SRT egress. So far: streamid access-control parsing (`streamid`); the
//! listener and push legs come next (see docs/srt-sans-io.md).

pub mod streamid;
