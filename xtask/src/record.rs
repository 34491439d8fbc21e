//! `cargo xtask record`: build task samples, run the full cache, write traces.

use std::time::Instant;

use anyhow::Context;
use kvbench::bench::Tier;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Tier whose traces to write (`default` or `full`): sets the sample count and length.
    #[arg(long, default_value = "default")]
    tier: String,
    /// Only this task (default: all seven).
    #[arg(long)]
    task: Option<String>,
    /// Override the tier's sample count.
    #[arg(long)]
    samples: Option<usize>,
    /// Override the tier's prompt length in tokens.
    #[arg(long)]
    len: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tier = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let tasks = match &args.task {
        Some(name) => vec![Task::from_name(name)?],
        None => Task::ALL.to_vec(),
    };
    let mut rt = Runtime::load(&LoadOptions::default()).context("loading the model")?;
    for task in tasks {
        let samples = args.samples.unwrap_or(tier.samples(task));
        let lens = args.len.map_or_else(|| tier.lens(task), |l| vec![l]);
        let clock = Instant::now();
        eprintln!("record {}: {samples} samples of {lens:?} tokens ({} tier)", task.name(), tier.name());
        let trace = record::record(&mut rt, task, samples, &lens, tier.name(), |done, total, s| {
            eprintln!(
                "  [{done}/{total}] {} ({} tokens): {:?} score {:.2} ({:.0} s so far)",
                s.meta.id,
                s.meta.prompt_len,
                s.meta.reference_text.trim(),
                s.meta.reference_score,
                clock.elapsed().as_secs_f64()
            );
        })?;
        let path = tier.trace_path(task);
        trace.write(&path)?;
        let size = std::fs::metadata(&path)?.len();
        eprintln!("  wrote {} ({size} bytes)", path.display());
    }
    Ok(())
}
