#![no_main]
// Chunk stream + command layer: arbitrary bytes after a valid handshake.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::rtmp::proto::fuzz_session(data));
