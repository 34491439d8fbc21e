//! Model-free replay of the default tier's attention probes through every method's cache.
//!
//! Each default-tier trace carries one sample's probe: the middle layer's post-RoPE queries, keys
//! and values of the full-cache run (`src/trace/probe.rs`). Every method of the trial matrix that
//! acts on the cache (prompt compression needs the model) is driven through that layer as the
//! model drives it, and its attention output is compared with the full cache's
//! (`eval::fidelity`): relative error, attention mass kept, bytes held. No ONNX Runtime, and of
//! the model only its attention output weights (CriticalKV weighs values by them, read from the
//! GGUF): this runs in seconds and isolates each method's effect on one attention call.
//!
//! The table of each task is gated against `golden/probes/default/<task>.snap`: a method whose
//! error or kept mass moves by more than [`TOLERANCE`] fails, leaving (outside CI) a `.snap.new`
//! to review and accept with `cargo xtask bless`. Then a few facts any correct cache must show
//! are asserted on every task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvbench::bench::golden::round;
use kvbench::bench::{RATIOS, Tier};
use kvbench::eval::fidelity::{self, Fidelity};
use kvbench::kv::Acts;
use kvbench::kv::methods::{self, Kind};
use kvbench::model::pinned::Pinned;
use kvbench::tasks::Task;
use kvbench::trace::Trace;
use serde::{Deserialize, Serialize};

/// Largest move of a relative error or a kept mass (both near [0, 1]) that is float noise.
const TOLERANCE: f64 = 2e-3;

/// One method's row in a task's golden table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    relative_error: f64,
    mass_kept: f64,
    measured_ratio: f64,
}

impl Row {
    fn of(f: &Fidelity) -> Self {
        Self {
            relative_error: round(f.relative_error, 4),
            mass_kept: round(f.mass_kept, 4),
            measured_ratio: round(f.measured_ratio, 2),
        }
    }

    /// Whether `self` is within noise of `golden`.
    fn same(&self, golden: &Row) -> bool {
        (self.relative_error - golden.relative_error).abs() <= TOLERANCE
            && (self.mass_kept - golden.mass_kept).abs() <= TOLERANCE
            && (self.measured_ratio - golden.measured_ratio).abs() <= 0.02
    }
}

/// Every cache method of the trial matrix, each once.
fn cache_methods() -> Vec<String> {
    methods::all_at(&RATIOS)
        .into_iter()
        .filter(|name| methods::by_name(name).expect("matrix names are known").acts() != Acts::BeforePrefill)
        .collect()
}

/// The fidelity of every cache method on `task`'s probes.
fn table(task: Task) -> BTreeMap<String, Fidelity> {
    let path = Tier::Default.trace_path(Pinned::Smollm2, task);
    let trace = Trace::read(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let recordings = trace.probe_recordings().unwrap_or_else(|| {
        panic!(
            "{} holds no attention probes: re-record it with `cargo xtask record --task {}`",
            path.display(),
            task.name()
        )
    });
    assert!(!recordings.is_empty(), "{}: the header promises probes the samples lack", path.display());
    let out_proj = kvbench::bench::parity::smollm2_out_projections().unwrap_or_else(|e| panic!("{e}"));
    let recordings: Vec<_> = recordings.into_iter().map(|r| r.with_out_proj(&out_proj)).collect();
    // prefill in the chunks the reference run used, as the model would
    let chunk = trace.header.chunk;
    let prefills: Vec<_> = recordings.iter().map(|r| r.full_prefills(chunk)).collect();
    cache_methods()
        .into_iter()
        .map(|name| {
            let method = methods::by_name(&name).expect("known");
            let row = fidelity::evaluate(&*method, &recordings, &prefills, chunk);
            (name, row)
        })
        .collect()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/probes/default")
}

/// The golden table of `task`, if one was accepted.
fn golden(task: Task) -> Option<BTreeMap<String, Row>> {
    let path = golden_dir().join(format!("{}.snap", task.name()));
    let text = std::fs::read_to_string(&path).ok()?;
    let body = kvbench::bench::golden::snapshot_body(&text);
    Some(serde_json::from_str(body).unwrap_or_else(|e| panic!("{}: not a probe table: {e}", path.display())))
}

/// `table` against its golden one; the methods that moved, with how.
fn gate(task: Task, table: &BTreeMap<String, Row>) -> Vec<String> {
    let Some(golden) = golden(task) else {
        return vec![format!("no golden table for {} yet", task.name())];
    };
    let mut moved: Vec<String> = table
        .iter()
        .filter(|(name, row)| golden.get(*name).is_none_or(|g| !row.same(g)))
        .map(|(name, row)| match golden.get(name) {
            Some(g) => format!("{name}: {g:?} -> {row:?}"),
            None => format!("{name}: new"),
        })
        .collect();
    moved.extend(golden.keys().filter(|name| !table.contains_key(*name)).map(|name| format!("{name}: gone")));
    moved
}

#[test]
fn every_cache_method_replays_the_probes_as_golden_and_as_a_cache_must() {
    let mut failures = Vec::new();
    let mut by_task = BTreeMap::new();
    for task in Task::ALL {
        let fidelity = table(task);
        let rows: BTreeMap<String, Row> = fidelity.iter().map(|(name, f)| (name.clone(), Row::of(f))).collect();
        let moved = gate(task, &rows);
        if !moved.is_empty() {
            // let insta show the diff and, outside CI, write the .snap.new to review
            let _ = std::panic::catch_unwind(|| {
                insta::with_settings!({ snapshot_path => golden_dir(), prepend_module_to_snapshot => false, omit_expression => true }, {
                    insta::assert_json_snapshot!(task.name(), &rows);
                });
            });
            failures.push(format!("{}: {}", task.name(), moved.join("; ")));
        }
        by_task.insert(task, fidelity);
    }
    assert!(
        failures.is_empty(),
        "probe tables moved past {TOLERANCE} (review, then `cargo xtask bless`):\n{}",
        failures.join("\n")
    );

    for (task, rows) in &by_task {
        let row = |name: &str| rows.get(name).unwrap_or_else(|| panic!("{name} not replayed"));
        let at = |f: &Fidelity| format!("{}: {f:?}", task.name());
        // the reference is itself, and fp16 holds the fp16 probes losslessly
        for exact in ["full", "fp16"] {
            let f = row(exact);
            assert!(f.relative_error < 1e-6 && (f.mass_kept - 1.0).abs() < 1e-9, "{}", at(f));
        }
        // a quantizer reads every token: its loss is in the values, and more bits lose less
        for name in methods::registry::fixed_of(Kind::Quantizer) {
            let f = row(name);
            assert!((f.mass_kept - 1.0).abs() < 1e-9, "{}", at(f));
        }
        for (finer, coarser) in [("q8_0", "q4_0"), ("kivi-4bit", "kivi-2bit"), ("q8_0", "kivi-4bit")] {
            let (f, c) = (row(finer), row(coarser));
            assert!(f.relative_error < c.relative_error, "{} should err less than {}", at(f), at(c));
        }
        // a token method keeps part of the attention and loses some output
        let token_kinds = [Kind::Evicting, Kind::OneShot, Kind::Retrieval];
        let matrix = methods::all_at(&RATIOS);
        for name in matrix.iter().filter(|n| methods::kind_of(n).is_some_and(|k| token_kinds.contains(&k))) {
            let f = row(name);
            assert!(f.mass_kept < 1.0 && f.relative_error > 0.0, "{}", at(f));
        }
        // and a smaller budget keeps less of the mass: asserted for these four, whose selection
        // at a smaller budget is (nearly) a subset of the larger one's; the others' is not, and
        // nothing makes their masses monotone
        for family in ["streamingllm", "snapkv", "pyramidkv", "quest"] {
            let masses: Vec<f64> = RATIOS.iter().map(|r| row(&format!("{family}-{r}x")).mass_kept).collect();
            assert!(
                masses.windows(2).all(|w| w[1] <= w[0] + 1e-9),
                "{} {family}: mass kept {masses:?} rises with the ratio",
                task.name()
            );
        }
    }
}
