//! `kvbench replay`: methods — the trial matrix's, or variants outside it such as `infllm-ref`
//! and `lingua-word` — over one task's recorded trace, compared sample by sample.
//!
//! It runs what a trial runs ([`trial::run`]) on the same trace, so a variant is measured on the
//! benchmark's own samples and scored by its metric; at the default one thread it computes a
//! trial's very bits (more threads may move the last bits: ONNX Runtime splits its products by
//! thread count). It writes no golden snapshot and gates nothing. The first method is the one
//! the others are paired with.

use std::path::PathBuf;

use clap::Args;
use kvbench::bench::golden;
use kvbench::bench::stats::paired_p;
use kvbench::bench::{DiskPrefills, PrefillCache, Provenance, RATIOS, Tier, TrialResult, build_id, trial};
use kvbench::kv::methods;
use kvbench::model::generate::Mode;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record::{model_id, pinned_of};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    model: super::model::ModelArgs,
    /// Task name (needle, synthetic, single-doc-qa, multi-doc-qa, summarization, few-shot, code).
    #[arg(long)]
    task: String,
    /// The tier whose trace is replayed (`default` or `full`).
    #[arg(long, default_value = "default")]
    tier: String,
    /// Comma-separated method names, or `all` for the trial matrix's; the first is the baseline
    /// the others are paired with.
    #[arg(long)]
    methods: String,
    /// Replay this many of the trace's samples, evenly spaced through it (every one by default).
    #[arg(long)]
    samples: Option<usize>,
    /// Compress with the question in the prompt but its last token (query-aware), before the
    /// question (query-agnostic), or as kvbench did before 2026-12, the first answer token from the
    /// uncompressed prefill (query-aware-uncompressed-first-token).
    #[arg(long, value_enum, default_value_t = Mode::QueryAware)]
    mode: Mode,
    /// Threads (1, as in a trial, gives a trial's bits).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write each method's result (a trial result's JSON, with what it was computed from) into
    /// this directory. Not for `cargo xtask report --merge`: it may hold a subset of the samples.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReplayArgs) -> Result<()> {
    let task = Task::from_name(&args.task)?;
    let tier = Tier::from_name(&args.tier)?;
    let names = super::prompt::method_names(&args.methods, &RATIOS)?;
    let methods = names.iter().map(|n| methods::by_name(n)).collect::<std::result::Result<Vec<_>, _>>()?;
    let rt_options = LoadOptions { gguf: Some(args.model.path()?), threads: args.threads, kernel_threads: None };
    let mut rt = Runtime::load(&rt_options)?;
    let pinned = pinned_of(&rt);
    let path = tier.recorded_trace(pinned, task)?;
    let mut trace = tier.read_trace(pinned, task, &model_id(&rt))?;
    trace.samples = evenly_spaced(std::mem::take(&mut trace.samples), args.samples)
        .map_err(|why| format!("--samples: {why} ({})", path.display()))?;
    let provenance = Provenance { build: build_id()?, trace: kvbench::assets::sha256_file(&path)? };
    // methods acting after prefill share each sample's prefill, in memory and on disk as in the
    // trials (`KVBENCH_PREFILL_CACHE`, `KVBENCH_PREFILL_CACHE_GB`)
    let prefills = match DiskPrefills::from_env(tier)? {
        Some(disk) => PrefillCache::with_disk(disk),
        None => PrefillCache::default(),
    };
    let mut results: Vec<TrialResult> = Vec::new();
    let total = trace.samples.len();
    for (m, method) in methods.iter().enumerate() {
        let mut done = 0;
        let result = trial::run_with(&mut rt, method, &trace, &prefills, trial::TrialOptions::new(args.mode), |s| {
            done += 1;
            eprintln!(
                "[{}/{}] {}: sample {done}/{total} ({}, {} tokens): score {:.2}, ratio {:.2}× ({:.1} s)",
                m + 1,
                methods.len(),
                method.name(),
                s.id,
                s.prompt_len,
                s.score,
                s.measured_ratio,
                s.seconds
            );
        })?;
        let result = TrialResult { provenance: provenance.clone(), ..result };
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let out = dir.join(format!("{}.json", golden::file_name(&result.trial)));
            kvbench::assets::write_atomic(&out, &serde_json::to_vec_pretty(&result)?)?;
        }
        results.push(result);
    }
    print!("{}", table(&results, tier));
    Ok(())
}

/// `count` of `samples` evenly spaced (`i · len / count`), or all of them.
fn evenly_spaced<T>(samples: Vec<T>, count: Option<usize>) -> std::result::Result<Vec<T>, String> {
    let len = samples.len();
    match count {
        None => Ok(samples),
        Some(0) => Err("ask for at least one sample".into()),
        Some(n) if n > len => Err(format!("the trace holds {len} samples, not {n}")),
        Some(n) => {
            let picked: Vec<usize> = (0..n).map(|i| i * len / n).collect();
            Ok(samples
                .into_iter()
                .enumerate()
                .filter(|(i, _)| picked.binary_search(i).is_ok())
                .map(|(_, s)| s)
                .collect())
        }
    }
}

/// The results as a markdown table, each method after the first paired with it.
fn table(results: &[TrialResult], tier: Tier) -> String {
    let samples = results.first().map_or(0, |r| r.samples.len());
    let mut out = format!(
        "{} samples of the {} tier's {} trace\n\n\
         | method | score [95% CI] | vs {}: better / worse, paired p | top-1 agreement | KL | measured ratio | seconds |\n\
         |---|---|---|---:|---:|---:|---:|\n",
        samples,
        tier.name(),
        results.first().map_or("?", |r| r.task.as_str()),
        results.first().map_or("?", |r| r.method.as_str()),
    );
    let scores = |r: &TrialResult| r.samples.iter().map(|s| s.score).collect::<Vec<f64>>();
    let base = results.first().map(scores).unwrap_or_default();
    for (i, r) in results.iter().enumerate() {
        let own = scores(r);
        let paired = if i == 0 {
            "—".to_string()
        } else {
            let better = own.iter().zip(&base).filter(|(a, b)| a > b).count();
            let worse = own.iter().zip(&base).filter(|(a, b)| a < b).count();
            format!("{better} / {worse}, p = {:.3}", paired_p(&own, &base))
        };
        out += &format!(
            "| {} | {:.3} [{:.3}, {:.3}] | {paired} | {:.3} | {} | {:.2}× | {:.0} |\n",
            r.method,
            r.score.mean,
            r.score.lo,
            r.score.hi,
            r.top1_agreement,
            r.kl.map_or("not measured".to_string(), |kl| format!("{kl:.3}")),
            r.measured_ratio,
            r.seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_spans_the_trace() {
        let all: Vec<usize> = (0..100).collect();
        assert_eq!(evenly_spaced(all.clone(), Some(4)).unwrap(), [0, 25, 50, 75]);
        assert_eq!(evenly_spaced(all.clone(), Some(100)).unwrap(), all);
        assert_eq!(evenly_spaced(all.clone(), None).unwrap(), all);
        assert_eq!(evenly_spaced((0..3).collect::<Vec<_>>(), Some(2)).unwrap(), [0, 1]);
        assert!(evenly_spaced(all.clone(), Some(0)).is_err());
        assert!(evenly_spaced(all, Some(101)).unwrap_err().contains("holds 100"));
    }
}
