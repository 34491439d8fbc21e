//! `cargo xtask bench`: the main job. Runs every trial of a tier (`cargo test --test bench`,
//! which fetches what is missing on first use), then merges the per-trial results and renders the
//! report (`cargo xtask report` renders it again from existing results).

use std::path::PathBuf;
use std::process::Command;

use crate::report::ReportArgs;
use anyhow::{Context, bail};

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
    /// Extra arguments for the trial harness (a name filter, `--test-threads N`, ...).
    #[arg(last = true)]
    harness: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    kvbench::bench::Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let status = Command::new(env!("CARGO"))
        .current_dir(crate::project_root())
        .args(["test", "--test", "bench", "--"])
        .args(&args.harness)
        .env("KVBENCH_TIER", &args.tier)
        .envs(args.resume.then_some(("KVBENCH_RESUME", "1")))
        .status()
        .context("running cargo test --test bench")?;
    crate::report::report(ReportArgs { tier: args.tier, merge: Vec::new(), out: args.out })?;
    if !status.success() {
        bail!("some trials failed their golden gate (see above); the report covers every trial that ran");
    }
    Ok(())
}
