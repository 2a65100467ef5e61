#![no_main]
// FLV audio/video tag bodies, including codec configs and parameter sets.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::flv::fuzz_tag(data));
