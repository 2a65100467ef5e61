#![no_main]
// FFmpeg's MPEG-TS into relay chunks: the same output for any split, whole packets, keyframe chunks start PAT, PMT.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::transcode::repack::fuzz_repack(data));
