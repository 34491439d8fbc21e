//! `cargo xtask sequential`: what the full tier's sequential design
//! (`kvbench::bench::sequential`) saves and what it risks, measured on results that ran every
//! sample (a fixed-n run, or a run with `KVBENCH_SEQUENTIAL=0`).
//!
//! Per task: the trial-seconds of the fixed-n run against those the design would have spent on
//! the same samples (each trial's own per-sample seconds up to where it would stop: the design
//! is a function of the scores in order, so this is what a sequential run computes), how many
//! verdicts the design and the fixed-n test share on the real data, and by simulation on each
//! trial's own scores (`sequential::simulate`) the false-rejection rate under the null (pairs
//! swapped at random) and the power and mean samples with the pairs resampled.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kvbench::bench::paired;
use kvbench::bench::sequential::{self, Simulated, full_tier};
use kvbench::tasks::rng::Rng;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Folders of results (or merged results files) that ran every sample; a trial found in
    /// several is taken from the last.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Simulated draws of each world per trial.
    #[arg(long, default_value_t = 1000)]
    replicates: usize,
}

#[derive(Default)]
struct Row {
    trials: usize,
    n: usize,
    fixed_seconds: f64,
    sequential_seconds: f64,
    stopped: usize,
    /// Real data: verdicts (rejected by the design, rejected by the fixed test).
    both: usize,
    design_only: usize,
    fixed_only: usize,
    sim: Simulated,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let trials = crate::report::merge(&args.results)?;
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let design = full_tier();
    let mut rng = Rng::from_state(0x005e_90e4_71a1);
    for full in trials.iter().filter(|t| t.method == "full") {
        let ids: Vec<&str> = full.samples.iter().map(|s| s.id.as_str()).collect();
        let reference: Vec<f64> = full.samples.iter().map(|s| s.score).collect();
        let row = rows.entry(full.task.clone()).or_default();
        row.n = ids.len();
        row.fixed_seconds += full.seconds;
        row.sequential_seconds += full.seconds;
        for t in trials.iter().filter(|t| t.task == full.task && t.method != "full") {
            let same = t.samples.len() == ids.len() && t.samples.iter().zip(&ids).all(|(s, id)| s.id == *id);
            if !same || t.sequential.is_some_and(|s| s.stopped.is_some()) {
                anyhow::bail!("{}: not a run of every sample of full's (stopped early, or other samples)", t.trial);
            }
            let method: Vec<f64> = t.samples.iter().map(|s| s.score).collect();
            let (rejected, used) = sequential::run(&design, &method, &reference);
            let fixed = paired::compare(&method, &reference).p < design.alpha;
            row.trials += 1;
            // trial seconds outside the samples (loading, checks) are kept whole
            let per_sample: f64 = t.samples.iter().map(|s| s.seconds).sum();
            let overhead = (t.seconds - per_sample).max(0.0);
            row.fixed_seconds += t.seconds;
            row.sequential_seconds += overhead + t.samples[..used].iter().map(|s| s.seconds).sum::<f64>();
            row.stopped += usize::from(used < ids.len());
            match (rejected, fixed) {
                (true, true) => row.both += 1,
                (true, false) => row.design_only += 1,
                (false, true) => row.fixed_only += 1,
                (false, false) => {}
            }
            row.sim += sequential::simulate(&design, &method, &reference, args.replicates, &mut rng);
        }
    }
    println!(
        "Design: first look after {} samples, then every {}, each spending {} and stopping below that over {} \
         configurations; the last analysis at what is left of {} ({} draws of each world per trial).\n",
        design.floor, design.every, design.alpha_look, design.family, design.alpha, args.replicates
    );
    println!(
        "| task | n | trials | trial-seconds, fixed n | with the design | ratio | stopped early | rejected: both, \
         design only, fixed only | null: false rejections, design / fixed | as observed: power, design / fixed | \
         mean samples, as observed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|");
    let mut total = Row::default();
    for (task, r) in &rows {
        let reps = r.sim.replicates.max(1) as f64;
        let pct = |x: usize| 100.0 * x as f64 / reps;
        println!(
            "| {task} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {}, {}, {} | {:.2}% / {:.2}% | {:.1}% / {:.1}% | {:.1} |",
            r.n,
            r.trials,
            r.fixed_seconds,
            r.sequential_seconds,
            r.sequential_seconds / r.fixed_seconds.max(1e-9),
            r.stopped,
            r.both,
            r.design_only,
            r.fixed_only,
            pct(r.sim.null_sequential),
            pct(r.sim.null_fixed),
            pct(r.sim.observed_sequential),
            pct(r.sim.observed_fixed),
            r.sim.observed_samples as f64 / reps,
        );
        total.fixed_seconds += r.fixed_seconds;
        total.sequential_seconds += r.sequential_seconds;
        total.trials += r.trials;
        total.stopped += r.stopped;
        total.sim += r.sim;
    }
    let reps = total.sim.replicates.max(1) as f64;
    println!(
        "| all | | {} | {:.0} | {:.0} | {:.2} | {} | | {:.2}% / {:.2}% | | |",
        total.trials,
        total.fixed_seconds,
        total.sequential_seconds,
        total.sequential_seconds / total.fixed_seconds.max(1e-9),
        total.stopped,
        100.0 * total.sim.null_sequential as f64 / reps,
        100.0 * total.sim.null_fixed as f64 / reps,
    );
    Ok(())
}
