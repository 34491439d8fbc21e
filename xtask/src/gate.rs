//! `cargo xtask gate`: hold a folder of trial results against a tier's golden snapshots with
//! that tier's gate, without running anything, and count the verdicts by method kind. It is how
//! the gate's error rates in docs/HARNESS.md ("The gate") are measured: results of a perturbed
//! build (false failures) or of broken methods (catches), gated as the trials would gate them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use kvbench::bench::Tier;
use kvbench::bench::golden::{self, GoldenTrial, Verdict};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The model whose goldens to use.
    #[arg(long, value_enum, default_value_t = kvbench::model::pinned::Pinned::Smollm2)]
    model: kvbench::model::pinned::Pinned,
    /// The tier whose goldens and gate to use.
    #[arg(long, default_value = "default")]
    tier: String,
    /// A folder of trial results (`KVBENCH_RESULTS` of the run), or a merged results file.
    results: PathBuf,
    /// Print every failing trial's reason.
    #[arg(long)]
    verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tier = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    // a run's folder holds each model but the first in a folder of its own: take that
    let trials = crate::report::merge(&[args.model.within(&args.results)])?;
    let dir = tier.golden_dir(args.model);
    // kind → (trials, failed)
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in &trials {
        let path = golden::path(&dir, &t.trial);
        let golden =
            golden::read(&path).map_err(anyhow::Error::msg)?.with_context(|| format!("no {}", path.display()))?;
        let verdict = golden::check(&GoldenTrial::of(t, tier.name()), &golden, tier.gate());
        let kind = kvbench::kv::methods::kind_of(&t.method)
            .and_then(|k| serde_json::to_value(k).ok()?.as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into());
        let entry = counts.entry(kind).or_default();
        entry.0 += 1;
        if let Verdict::Changed(why) = verdict {
            entry.1 += 1;
            if args.verbose {
                println!("{}: {why}", t.trial);
            }
        }
    }
    println!("| kind | trials | failed |\n|---|---:|---:|");
    let (mut all, mut failed) = (0, 0);
    for (kind, (n, f)) in &counts {
        println!("| {kind} | {n} | {f} |");
        (all, failed) = (all + n, failed + f);
    }
    println!("| all | {all} | {failed} |");
    Ok(())
}
