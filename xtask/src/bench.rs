//! `cargo xtask bench`: the main job. Runs every trial of a tier (`cargo test --test bench`,
//! which fetches what is missing on first use), then merges the per-trial results and renders the
//! report (`cargo xtask report` renders it again from existing results).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// `default` (what CI runs) or `full`.
    #[arg(long, default_value = "default")]
    tier: String,
    /// Extra arguments for the trial harness (a name filter, `--test-threads N`, ...).
    #[arg(last = true)]
    harness: Vec<String>,
}

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Tier whose results to render.
    #[arg(long, default_value = "default")]
    tier: String,
}

fn results_dir(tier: &str) -> PathBuf {
    crate::project_root().join("target/kvbench-results").join(tier)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !matches!(args.tier.as_str(), "default" | "full") {
        bail!("unknown tier {:?}: use `default` or `full`", args.tier);
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(crate::project_root())
        .args(["test", "--test", "bench", "--"])
        .args(&args.harness)
        .env("KVBENCH_TIER", &args.tier)
        .status()
        .context("running cargo test --test bench")?;
    report(ReportArgs { tier: args.tier })?;
    if !status.success() {
        bail!("some trials failed their golden gate (see above); the report covers every trial that ran");
    }
    Ok(())
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let dir = results_dir(&args.tier);
    let mut trials: Vec<Value> = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("no results in {}: run `cargo xtask bench`", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") && path.file_name().is_some_and(|n| n != "results.json") {
            trials.push(serde_json::from_slice(&std::fs::read(&path)?).with_context(|| format!("{}", path.display()))?);
        }
    }
    trials.sort_by(|a, b| a["trial"].as_str().cmp(&b["trial"].as_str()));
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&trials)?)?;

    let tasks = ["needle", "synthetic", "single-doc-qa", "multi-doc-qa", "summarization", "few-shot", "code"];
    let methods: Vec<String> = kvbench::kv::methods::all_at(&kvbench::bench::RATIOS);
    let mut by: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for t in &trials {
        by.insert((t["method"].as_str().unwrap_or("").into(), t["task"].as_str().unwrap_or("").into()), t);
    }
    let mut md = format!(
        "# kvbench report: {} tier\n\nTask scores ×100 with 95% intervals (Wilson for exact-match scores, t otherwise), \
         n samples per cell; `ratio` is the mean measured ratio (fp16 full-cache bytes / peak bytes held after \
         compression), `top-1` the mean agreement with the full cache's answer.\n\n| method | ratio | top-1 |",
        args.tier
    );
    for t in tasks {
        md.push_str(&format!(" {t} |"));
    }
    md.push_str("\n|---|---:|---:|");
    md.push_str(&"---:|".repeat(tasks.len()));
    md.push('\n');
    for m in &methods {
        let cells: Vec<Option<&&Value>> = tasks.iter().map(|t| by.get(&(m.clone(), t.to_string()))).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let mean = |key: &str| {
            let xs: Vec<f64> = cells.iter().flatten().filter_map(|v| v[key].as_f64()).collect();
            xs.iter().sum::<f64>() / xs.len().max(1) as f64
        };
        md.push_str(&format!("| {m} | {:.2}× | {:.2} |", mean("measured_ratio"), mean("top1_agreement")));
        for c in cells {
            match c {
                Some(v) => {
                    let s = &v["score"];
                    // scores live in [0, 1]: show t intervals clipped to it
                    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN).clamp(0.0, 1.0) * 100.0;
                    md.push_str(&format!(" {:.0} [{:.0}, {:.0}] n={} |", f("mean"), f("lo"), f("hi"), s["n"]));
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    let out = dir.join("report.md");
    std::fs::write(&out, &md)?;
    println!("{md}");
    eprintln!(
        "report: {} ({} trials); merged results: {}",
        out.display(),
        trials.len(),
        dir.join("results.json").display()
    );
    Ok(())
}
