//! `cargo xtask bench`: the main job. Runs every trial of a tier (`cargo test --test bench`,
//! which fetches what is missing on first use), then merges the per-trial results and renders the
//! report (`cargo xtask report` renders it again from existing results).
//!
//! With `--shard K/N` it runs only the K-th of N disjoint shards of the trials (cargo nextest's
//! `--partition hash:K/N`, `tests/shards.rs`) into a folder of the shard's own; the machines of a
//! GitHub Actions matrix or a Slurm job array each run one, and `cargo xtask report --merge`
//! joins the folders (`docs/HARNESS.md`, "Shards"; `.github/workflows/full-tier.yml`,
//! `scripts/slurm/`).

use std::path::PathBuf;
use std::process::Command;

use crate::report::ReportArgs;
use anyhow::{Context, bail};
use kvbench::model::pinned::Pinned;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (what CI runs) or `full`.
    #[arg(long, default_value = "default")]
    tier: String,
    /// Where to write report.md and the plots (default: `target/kvbench-results/<tier>`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Take each trial's result from an earlier run of this same build over the same trace
    /// instead of running it again (the gate still checks it): continue an interrupted run.
    #[arg(long)]
    resume: bool,
    /// Run only shard K of N (1 ≤ K ≤ N) of the trials, with cargo nextest, into
    /// `target/kvbench-results/<tier>-shard-K-of-N`, and render that shard's report there.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Extra arguments for the trial harness (a name filter, `--skip F`, `--test-threads N`, ...;
    /// with `--shard`, what nextest takes after `--`: name filters, `--skip F`, `--exact`).
    #[arg(last = true)]
    harness: Vec<String>,
}

/// `K/N` with 1 ≤ K ≤ N.
fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{text:?}: a shard is K/N with 1 <= K <= N, such as 2/8");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if k == 0 || k > n { Err(bad()) } else { Ok((k, n)) }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    kvbench::bench::Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(crate::project_root()).env("KVBENCH_TIER", &args.tier);
    command.envs(args.resume.then_some(("KVBENCH_RESUME", "1")));
    // (the results folder of the shard, if one)
    let (folder, out) = match args.shard {
        None => {
            command.args(["test", "--test", "bench", "--"]).args(&args.harness);
            (None, args.out)
        }
        Some((k, n)) => {
            let folder =
                crate::project_root().join("target/kvbench-results").join(format!("{}-shard-{k}-of-{n}", args.tier));
            let partition = format!("hash:{k}/{n}");
            command.args([
                "nextest",
                "run",
                "--workspace",
                "--test",
                "bench",
                "--no-fail-fast",
                "--partition",
                &partition,
            ]);
            // after `--`, where nextest takes libtest's filters and `--skip`/`--exact`
            if !args.harness.is_empty() {
                command.arg("--").args(&args.harness);
            }
            command.env("KVBENCH_RESULTS", &folder);
            eprintln!("xtask: shard {k} of {n} into {}", folder.display());
            (Some(folder.clone()), Some(args.out.unwrap_or(folder)))
        }
    };
    let status = command.status().context("running the trials (cargo test, or cargo nextest with --shard)")?;
    let tier = kvbench::bench::Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    // a report per model whose trials ran (a name filter may have left one out), each model's
    // but the first in a folder of its own
    for model in Pinned::ALL {
        let within = |dir: &PathBuf| model.subdir().map_or(dir.clone(), |sub| dir.join(sub));
        let results = folder.as_ref().map_or_else(|| tier.results_dir(model), within);
        if !crate::report::merge::has_trials(&results) {
            eprintln!("xtask: no {} results in {}: no report for it", model.name(), results.display());
            continue;
        }
        let merge = if folder.is_some() { vec![results] } else { Vec::new() };
        let out = out.as_ref().map(within);
        crate::report::report(ReportArgs { tier: args.tier.clone(), model, merge, out })?;
    }
    if !status.success() {
        bail!("some trials failed their golden gate (see above); the report covers every trial that ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shards_are_k_of_n() {
        assert_eq!(super::parse_shard("2/8"), Ok((2, 8)));
        assert_eq!(super::parse_shard("1/1"), Ok((1, 1)));
        for bad in ["0/3", "4/3", "3", "a/b", "/2", "2/"] {
            assert!(super::parse_shard(bad).is_err(), "{bad}");
        }
    }
}
