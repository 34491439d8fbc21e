//! The trace reader past the checksum (which random bytes never pass): the JSON header and the
//! binary sections it describes. A payload that parses must encode back to a file that reads
//! back the same, bit for bit.
#![no_main]

use std::path::Path;

use kvbench::trace::{Trace, TraceSample};

/// Everything of a sample, with the log-probs and probe values as bits (NaN is a legal float in a
/// trace).
fn bits(s: &TraceSample) -> impl PartialEq + std::fmt::Debug + '_ {
    let topk: Vec<Vec<(u32, u32)>> =
        s.reference_topk.iter().map(|step| step.iter().map(|&(id, lp)| (id, lp.to_bits())).collect()).collect();
    let probe = s.probe.as_ref().map(|p| {
        let layers: Vec<Vec<u16>> = p
            .layers
            .iter()
            .map(|l| l.queries.iter().chain(&l.keys).chain(&l.values).map(|x| x.to_bits()).collect())
            .collect();
        (p.tokens, layers)
    });
    (&s.meta, &s.prompt_ids, &s.reference_ids, topk, probe)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(trace) = Trace::from_payload(data, Path::new("fuzz.payload")) {
        let again = Trace::from_bytes(&trace.to_bytes(), Path::new("fuzz.roundtrip")).expect("a parsed trace re-reads");
        assert_eq!(again.samples.len(), trace.samples.len());
        assert_eq!(again.header.probe.is_some(), trace.header.probe.is_some());
        for (a, b) in again.samples.iter().zip(&trace.samples) {
            assert_eq!(bits(a), bits(b));
        }
    }
});
