//! Scale-out: `cargo nextest run --test bench --partition hash:K/N` (docs/HARNESS.md, "Shards")
//! must give every trial to exactly one shard. nextest finds the trials through the harness's
//! `--list` and picks a shard by hashing their names, so this holds the real tool to the trial
//! matrix: N shards' lists are disjoint and together are every trial of the matrix. (That shard results
//! merge into one report is tested in `xtask/src/report/merge.rs`.)

use std::collections::BTreeSet;
use std::process::Command;

/// The trials `cargo nextest list` gives shard `k` of `n`.
fn shard(k: usize, n: usize) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let partition = format!("hash:{k}/{n}");
    let out = Command::new(&cargo)
        // --workspace: the features `cargo test --workspace` built with, so nothing is rebuilt
        .args(["nextest", "list", "--workspace", "--test", "bench", "--message-format", "oneline"])
        .args(["--partition", &partition])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`cargo nextest list --partition {partition}` failed (is cargo-nextest installed? `cargo install cargo-nextest`):\n{stderr}"
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let name = line.strip_prefix("kvbench::bench ").unwrap_or_else(|| panic!("not a bench trial: {line:?}"));
            name.to_string()
        })
        .collect()
}

#[test]
fn nextest_shards_split_the_trials_without_overlap_or_loss() {
    let matrix: BTreeSet<String> = kvbench::bench::trials().iter().map(|t| t.name()).collect();
    // every matrix method against every task for every model, each once (the counts come from
    // the registry)
    let methods = kvbench::kv::methods::all_at(&kvbench::bench::RATIOS);
    let models = kvbench::model::pinned::Pinned::ALL.len();
    assert_eq!(matrix.len(), methods.len() * kvbench::tasks::Task::ALL.len() * models);
    let n = 3;
    let mut seen = BTreeSet::new();
    for k in 1..=n {
        let trials = shard(k, n);
        assert!(!trials.is_empty() && trials.len() < matrix.len(), "shard {k}/{n} holds {} trials", trials.len());
        for trial in trials {
            assert!(matrix.contains(&trial), "shard {k}/{n} runs {trial}, which is not in the trial matrix");
            assert!(seen.insert(trial.clone()), "{trial} is in two shards");
        }
    }
    let lost: Vec<_> = matrix.difference(&seen).collect();
    assert!(lost.is_empty(), "no shard runs {lost:?}");
}
