//! `cargo xtask baselines`: score the no-context and trivial baselines of every sample of a
//! tier's traces and write them beside each trace (`kvbench::trace::baselines`). Each sample is
//! rebuilt from its seed at the length the recorder used and must give the recorded prompt, so
//! the baselines are of the very samples the trials replay.

use anyhow::{Context, bail};
use kvbench::bench::Tier;
use kvbench::model::generate::full_cache_answer;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::{self, Task};
use kvbench::trace::baselines::{Baselines, SampleBaselines};
use kvbench::trace::record::model_id;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The model whose traces to score.
    #[arg(long, value_enum, default_value_t = Pinned::Smollm2)]
    model: Pinned,
    /// The tier whose traces to score.
    #[arg(long, default_value = "default")]
    tier: String,
    /// One task (every task by default).
    #[arg(long)]
    task: Option<String>,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tier = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let tasks = match &args.task {
        Some(name) => vec![Task::from_name(name)?],
        None => Task::ALL.to_vec(),
    };
    let gguf = args.model.gguf()?;
    let mut rt = Runtime::load(&LoadOptions { gguf: Some(gguf), threads: args.threads, kernel_threads: None })?;
    for task in tasks {
        let path = tier.recorded_trace(args.model, task).map_err(anyhow::Error::msg)?;
        let trace = tier.read_trace(args.model, task, &model_id(&rt)).map_err(anyhow::Error::msg)?;
        let lens = tier.lens(task);
        let mut samples = Vec::with_capacity(trace.samples.len());
        for (i, recorded) in trace.samples.iter().enumerate() {
            let meta = &recorded.meta;
            let len = lens[meta.seed as usize % lens.len()];
            let s = tasks::sample(task, meta.seed, len, rt.tokenizer())?;
            if s.id != meta.id || s.prompt_ids() != recorded.prompt_ids {
                bail!(
                    "{}: sample {} rebuilt from seed {} at {len} tokens is not the recorded one (the task changed \
                     since the trace was recorded: record it again)",
                    path.display(),
                    meta.id,
                    meta.seed
                );
            }
            let answer = full_cache_answer(&mut rt, &s.no_context_ids, s.max_new_tokens, s.answer_end.rule())?;
            samples.push(SampleBaselines {
                id: s.id.clone(),
                no_context: s.score(&answer),
                no_context_answer: answer,
                trivial: s.score(&s.trivial_answer),
            });
            eprint!("\r{} {}: {}/{}", tier.name(), task.name(), i + 1, trace.samples.len());
        }
        let baselines = Baselines {
            task: task.name().into(),
            trace_sha256: kvbench::assets::sha256_file(&path)?,
            model_sha256: rt.gguf_sha256().into(),
            samples,
        };
        let (bare, trivial) = baselines.means();
        let out = Baselines::path_of(&path);
        let json = serde_json::to_vec_pretty(&baselines)?;
        kvbench::assets::write_atomic(&out, &json).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "\r{} {}: no context {:.1}, trivial {:.1} (n = {}) → {}",
            tier.name(),
            task.name(),
            bare * 100.0,
            trivial * 100.0,
            baselines.samples.len(),
            out.display()
        );
    }
    Ok(())
}
