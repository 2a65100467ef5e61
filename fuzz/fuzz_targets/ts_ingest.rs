#![no_main]
// MPEG-TS ingest: any bytes in any split, with transport gaps; bounded state, well-formed frames the muxer accepts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::ts::ingest::fuzz_ingest(data));
