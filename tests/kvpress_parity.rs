//! kvbench's token methods (and ThinK's key channels) against NVIDIA kvpress's presses on the same
//! recorded probes, with no Python: the fixture `tests/data/kvpress_parity.json` holds what each
//! press kept (made by `cargo xtask kvpress-parity`, which says how each was configured); this
//! replays kvbench's methods on the default tier's probes and fails on any case whose expectation
//! does not hold (`kvbench::bench::parity::check`, `kvbench::eval::parity::compare`).

use kvbench::eval::parity::{self, Expect, Fixture};

#[test]
fn token_methods_keep_what_kvpress_keeps() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kvpress_parity.json");
    let fixture: Fixture = serde_json::from_slice(&std::fs::read(path).expect("the committed fixture"))
        .expect("the fixture parses (regenerate it with `cargo xtask kvpress-parity`)");
    let outcomes = kvbench::bench::parity::check(&fixture).unwrap_or_else(|e| panic!("{e}"));
    let must: Vec<_> = outcomes.iter().filter(|o| o.expect != Expect::Overlap).collect();
    // every method kvpress also has, at every ratio, on every task
    let families =
        ["knorm", "keydiff", "streamingllm", "tova-pooled", "snapkv", "pyramidkv", "adakv", "chunkkv", "think"]
            .into_iter()
            .chain(["expected-attention"]);
    for family in families {
        assert!(
            must.iter().filter(|o| o.method.rsplit_once('-').is_some_and(|(f, _)| f == family)).count() >= 7 * 3,
            "{family}: fewer cases than 7 tasks × 3 ratios"
        );
    }
    let failed: Vec<String> =
        must.iter().filter(|o| !o.holds).map(|o| format!("{} on {} against {}", o.method, o.task, o.press)).collect();
    assert!(failed.is_empty(), "{}\n{}", failed.join("\n"), parity::markdown(&outcomes));
}
