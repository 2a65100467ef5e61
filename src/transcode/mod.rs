//! FFmpeg renditions: argument builder, encoder choice, child supervision.

pub mod repack;
