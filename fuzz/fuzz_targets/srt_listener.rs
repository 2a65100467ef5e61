#![no_main]
// SRT listener: scripted callers and publisher events on virtual time (src/srt/fuzz.rs).
//
// The listener runs srt-protocol under catch_unwind and drops only that
// peer, so a caught panic is not a crash here: this hook reports each panic
// site once instead of aborting. A panic that escapes the listener still
// aborts (libfuzzer-sys catches it at the top and aborts).
use std::collections::HashSet;
use std::sync::Mutex;

static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(
    init: {
        // Replaces libfuzzer-sys's hook, which aborts on every panic.
        std::panic::set_hook(Box::new(|info| {
            let site = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            if seen.get_or_insert_with(HashSet::new).insert(site) {
                eprintln!(
                    "srt_listener: {info}\n(caught by the listener unless the run aborts next)\n{}",
                    std::backtrace::Backtrace::capture()
                );
            }
        }));
    },
    |data: &[u8]| sluice::srt::fuzz::fuzz_listener(data)
);
