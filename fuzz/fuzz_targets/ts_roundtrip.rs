#![no_main]
// MPEG-TS: frames derived from the input are muxed and demuxed back exactly; the raw input is demuxed too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::ts::fuzz_roundtrip(data));
