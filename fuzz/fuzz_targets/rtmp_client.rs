#![no_main]
// The restream client: arbitrary server bytes after a valid S0+S1+S2.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::rtmp::client::core::fuzz_client(data));
