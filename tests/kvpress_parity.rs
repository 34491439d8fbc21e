//! kvbench's token methods (and ThinK's key channels) against NVIDIA kvpress's presses on the same
//! recorded probes, with no Python: the fixture `tests/data/kvpress_parity.json` holds what each
//! press kept (made by `cargo xtask kvpress-parity`, which says how each was configured); this
//! replays kvbench's methods on the default tier's probes and fails on any case whose expectation
//! does not hold (`kvbench::bench::parity::check`, `kvbench::eval::parity::compare`).

use kvbench::eval::parity::{self, Expect, Fixture};

/// The committed fixture.
fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kvpress_parity.json");
    serde_json::from_slice(&std::fs::read(path).expect("the committed fixture"))
        .expect("the fixture parses (regenerate it with `cargo xtask kvpress-parity`)")
}

#[test]
fn token_methods_keep_what_kvpress_keeps() {
    let fixture = fixture();
    let outcomes = kvbench::bench::parity::check(&fixture).unwrap_or_else(|e| panic!("{e}"));
    let must: Vec<_> = outcomes.iter().filter(|o| o.expect != Expect::Overlap).collect();
    // every method kvpress also has, at every ratio, on every task
    let families =
        ["knorm", "keydiff", "streamingllm", "tova-pooled", "snapkv", "pyramidkv", "adakv", "chunkkv", "think"]
            .into_iter()
            .chain(["expected-attention", "criticalkv", "duoattention"]);
    for family in families {
        // CriticalKV is required wherever its first stage holds SnapKV's 32-token window (every
        // task at 2×, the longer probes at 4×); below that kvpress's top-k chooses among the
        // window's tied scores in its own order (module doc), reported but not required
        let ratios = if family == "criticalkv" { 1 } else { 3 };
        let cases = must.iter().filter(|o| o.method.rsplit_once('-').is_some_and(|(f, _)| f == family)).count();
        assert!(cases >= 7 * ratios, "{family}: fewer cases than 7 tasks × {ratios} ratio(s)");
    }
    let failed: Vec<String> =
        must.iter().filter(|o| !o.holds).map(|o| format!("{} on {} against {}", o.method, o.task, o.press)).collect();
    assert!(failed.is_empty(), "{}\n{}", failed.join("\n"), parity::markdown(&outcomes));
}

/// DuoAttention's head scores (the area under each head's cumulative attention from the mean
/// query and key) equal kvpress's on-the-fly scoring of the same probe, to float32 rounding: the
/// kept positions alone cannot show it, since the probes' one layer has three kv heads.
#[test]
fn duoattention_scores_heads_as_kvpress_does() {
    let fixture = fixture();
    let reach = kvbench::bench::parity::duo_reach(&fixture).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reach.len(), 7, "every task's probe has kvpress's scores");
    for (task, theirs, ours) in reach {
        assert_eq!(theirs.len(), ours.len(), "{task}");
        for (a, b) in theirs.iter().zip(&ours) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "{task}: kvpress {theirs:?}, kvbench {ours:?}");
        }
    }
}
