//! `cargo xtask trial-seconds`: the benchmark of what a trial costs. For each (method, task) it
//! runs the trial over the tier's own samples as the benchmark runs it (one thread, shared
//! prefills read from the prefill cache), with every sample decoded alone (`before`: a batch of
//! one, kvbench's decoding until 2026-12-01) and in groups (`after`:
//! `trial::run`), alternating the two, and prints the seconds of each beside the check that both
//! computed the same results. Writes `docs/trial-seconds.json`.

use std::time::Instant;

use anyhow::Context;
use kvbench::bench::trial::{self, SampleOutcome, TrialOptions};
use kvbench::bench::{DiskPrefills, PrefillCache, Tier};
use kvbench::kv::methods;
use kvbench::model::generate::Mode;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record::model_id;
use serde::Serialize;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Tier whose traces to replay.
    #[arg(long, default_value = "full")]
    tier: String,
    /// Comma-separated methods.
    #[arg(long, default_value = "streamingllm-4x,snapkv-4x")]
    methods: String,
    /// Comma-separated tasks.
    #[arg(long, default_value = "needle,summarization,code")]
    tasks: String,
    /// The first this many samples of each trace (all by default).
    #[arg(long)]
    samples: Option<usize>,
    /// Rounds of (before, after) per trial.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where to write the measurements.
    #[arg(long, default_value = "docs/trial-seconds.json")]
    out: std::path::PathBuf,
}

#[derive(Serialize)]
struct Row {
    method: String,
    task: String,
    samples: usize,
    before: Vec<f64>,
    after: Vec<f64>,
    same_results: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tier = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let options = LoadOptions { gguf: None, threads: 1, kernel_threads: Some(1) };
    let mut rt = Runtime::load(&options).context("loading the model")?;
    let prefills = match DiskPrefills::from_env(tier).map_err(anyhow::Error::msg)? {
        Some(disk) => PrefillCache::with_disk(disk),
        None => PrefillCache::default(),
    };
    let mut rows = Vec::new();
    for task in args.tasks.split(',') {
        let task = Task::from_name(task.trim()).map_err(anyhow::Error::msg)?;
        let mut trace = tier
            .read_trace(kvbench::model::pinned::Pinned::Smollm2, task, &model_id(&rt))
            .map_err(anyhow::Error::msg)?;
        if let Some(n) = args.samples {
            trace.samples.truncate(n);
        }
        for name in args.methods.split(',') {
            let method = methods::by_name(name.trim()).map_err(anyhow::Error::msg)?;
            // a first run, untimed, computes the shared prefills a real run finds on disk
            if method.acts() == kvbench::kv::Acts::AfterPrefill {
                trial::run(&mut rt, &method, &trace, Mode::QueryAware, &prefills)?;
            }
            let mut row = Row {
                method: method.name(),
                task: task.name().into(),
                samples: trace.samples.len(),
                before: Vec::new(),
                after: Vec::new(),
                same_results: true,
            };
            let timeless = |s: &[SampleOutcome]| s.iter().map(SampleOutcome::timeless).collect::<Vec<_>>();
            let one_at_a_time = TrialOptions { batch: 1, ..TrialOptions::new(Mode::QueryAware) };
            for _ in 0..args.rounds {
                let clock = Instant::now();
                let alone = trial::run_with(&mut rt, &method, &trace, &prefills, one_at_a_time, |_| {})?;
                row.before.push(clock.elapsed().as_secs_f64());
                let clock = Instant::now();
                let grouped = trial::run(&mut rt, &method, &trace, Mode::QueryAware, &prefills)?;
                row.after.push(clock.elapsed().as_secs_f64());
                row.same_results &= timeless(&alone.samples) == timeless(&grouped.samples);
            }
            eprintln!("{}::{}: before {:?} s, after {:?} s", row.method, row.task, row.before, row.after);
            rows.push(row);
        }
    }
    let median = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| trial | samples | before (s) | after (s) | after / before | same results |\n|---|---:|---:|---:|---:|---|"
    );
    for r in &rows {
        let (b, a) = (median(&r.before), median(&r.after));
        println!(
            "| {}::{} | {} | {b:.1} | {a:.1} | {:.2} | {} |",
            r.method,
            r.task,
            r.samples,
            a / b,
            if r.same_results { "yes" } else { "**no**" }
        );
    }
    let out = crate::project_root().join(&args.out);
    std::fs::write(&out, serde_json::to_vec_pretty(&rows)?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
