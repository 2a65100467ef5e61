#![no_main]
// MPEG-TS demuxer: any bytes in any split; bounded memory, PES within limits, clean input split-invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::ts::demux::fuzz_demux(data));
