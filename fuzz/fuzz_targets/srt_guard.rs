#![no_main]
// SRT datagram guard: never panics, and srt-protocol never panics parsing
// what it lets through.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::srt::guard::fuzz_check(data));
