//! The trace reader on whole files: preamble, version, size cap, zstd, checksum. Any input must
//! give a trace or an error, never a panic, a hang or an allocation beyond the cap.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kvbench::trace::Trace::from_bytes(data, Path::new("fuzz.trace.zst"));
});
