//! `cargo xtask record`: build task samples, run the full cache, write traces.

use std::time::Instant;

use anyhow::Context;
use kvbench::bench::Tier;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The model whose traces to write.
    #[arg(long, value_enum, default_value_t = Pinned::Smollm2)]
    model: Pinned,
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
    /// Record attention probes (one layer's queries, keys and values, fp16) for the first N
    /// samples of each task; default: 1 at the default tier for SmolLM2, else 0 (the full tier's
    /// long prompts would make probes of megabytes; Gemma's default probed layer slides).
    #[arg(long)]
    probe_samples: Option<usize>,
    /// Layers to probe, comma-separated (default: the middle layer).
    #[arg(long, value_delimiter = ',')]
    probe_layers: Vec<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tier = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let tasks = match &args.task {
        Some(name) => vec![Task::from_name(name)?],
        None => Task::ALL.to_vec(),
    };
    let probes = record::ProbeOptions {
        // the first model's default traces carry probes (tests/probes.rs reads them); Gemma's
        // middle layer, the default probed one, slides, and a sliding store records no queries
        samples: args.probe_samples.unwrap_or(if tier == Tier::Default && args.model == Pinned::Smollm2 {
            1
        } else {
            0
        }),
        layers: args.probe_layers.clone(),
    };
    let gguf = args.model.gguf().with_context(|| format!("fetching {}", args.model.name()))?;
    let mut rt =
        Runtime::load(&LoadOptions { gguf: Some(gguf), ..LoadOptions::default() }).context("loading the model")?;
    for task in tasks {
        let samples = args.samples.unwrap_or(tier.samples(args.model, task));
        let lens = args.len.map_or_else(|| tier.lens(task), |l| vec![l]);
        let clock = Instant::now();
        eprintln!(
            "record {} for {}: {samples} samples of {lens:?} tokens, answers of up to {} ({} tier)",
            task.name(),
            args.model.name(),
            tier.max_new_tokens(task),
            tier.name()
        );
        let trace = record::record(
            &mut rt,
            task,
            samples,
            &lens,
            tier.max_new_tokens(task),
            tier.name(),
            &probes,
            |done, total, s| {
                eprintln!(
                    "  [{done}/{total}] {} ({} tokens{}): {:?} score {:.2} ({:.0} s so far)",
                    s.meta.id,
                    s.meta.prompt_len,
                    if s.probe.is_some() { ", probed" } else { "" },
                    s.meta.reference_text.trim(),
                    s.meta.reference_score,
                    clock.elapsed().as_secs_f64()
                );
            },
        )?;
        let path = tier.trace_path(args.model, task);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        trace.write(&path)?;
        let size = std::fs::metadata(&path)?.len();
        eprintln!("  wrote {} ({size} bytes)", path.display());
    }
    Ok(())
}
