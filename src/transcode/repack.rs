//! Reads FFmpeg's MPEG-TS output back into relay chunks.
