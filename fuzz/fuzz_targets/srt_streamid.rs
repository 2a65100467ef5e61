#![no_main]
// SRT streamid: never panics, at most 512 bytes accepted, a parsed request written back parses the same.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::srt::streamid::fuzz_streamid(data));
