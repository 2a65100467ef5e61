#![no_main]
// AMF0 decode, re-encode, decode again: never panics, round-trips.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::rtmp::amf0::fuzz_roundtrip(data));
