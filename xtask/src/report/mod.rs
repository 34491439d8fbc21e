//! `cargo xtask report`: merge per-trial results (this machine's, or several shards'), then render
//! the markdown table, the score-versus-ratio plots and the needle heatmaps.

mod merge;
mod plots;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kvbench::bench::Tier;
use serde_json::Value;

pub use merge::merge;

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Tier whose results to render.
    #[arg(long, default_value = "default")]
    pub tier: String,
    /// Report the trial results of these folders instead (shards' `target/kvbench-results/<tier>`,
    /// or `KVBENCH_RESULTS` folders, copied here), merged. A merged `results.json` (a committed
    /// report's, such as `docs/report-full/results.json`) counts as a source too, so a report
    /// can grow run by run. Repeatable.
    #[arg(long = "merge", value_name = "DIR|FILE")]
    pub merge: Vec<PathBuf>,
    /// Where to write report.md, the plots and results.json (default: the results folder, or
    /// `target/kvbench-results/<tier>-merged` with --merge).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Trial results in `dir` (every `*.json` but the merged `results.json`), sorted by trial name.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let found = merge::folder_trials(dir)
        .with_context(|| format!("no results in {}: run `cargo xtask bench` (or pass --merge)", dir.display()))?;
    let mut trials: Vec<Value> = Vec::new();
    for (path, v) in found {
        if !v["trial"].is_string() {
            bail!("{path} is not a trial result (no \"trial\" field)");
        }
        trials.push(v);
    }
    trials.sort_by(|a, b| a["trial"].as_str().cmp(&b["trial"].as_str()));
    Ok(trials)
}

/// The merged results: a JSON array with one trial per line, so that a landing that adds trials
/// adds lines (pretty-printed, each of the full tier's trials ran to thousands of lines, and the
/// file to 6 MB at 220 trials, rewritten by every task's landing).
fn results_json(trials: &[Value]) -> serde_json::Result<Vec<u8>> {
    let mut out = b"[".to_vec();
    for (i, trial) in trials.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, trial)?;
    }
    out.extend_from_slice(b"\n]\n");
    Ok(out)
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?;
    let (trials, out) = if args.merge.is_empty() {
        let dir = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?.results_dir();
        (load(&dir)?, args.out.unwrap_or(dir))
    } else {
        let trials = merge(&args.merge)?;
        eprintln!("merged {} trial results from {} sources", trials.len(), args.merge.len());
        let merged = crate::project_root().join("target/kvbench-results").join(format!("{}-merged", args.tier));
        (trials, args.out.unwrap_or(merged))
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("results.json"), results_json(&trials)?)?;

    let needle = !plots::needle_cells(&trials).is_empty();
    let md = table::markdown(&args.tier, &trials, needle);
    std::fs::write(out.join("report.md"), &md)?;
    // the table stands without the plots (which need the font fetched): a plot that cannot be
    // drawn is reported, and the command fails at the end
    let plotted = [
        plots::score_vs_ratio(&trials, &out.join("score-vs-ratio")),
        plots::needle_heatmaps(&trials, &out.join("needle-heatmap")),
    ];
    println!("{md}");
    eprintln!(
        "report: {} with score-vs-ratio.{{svg,png}}, {}results.json ({} trials)",
        out.join("report.md").display(),
        if needle { "needle-heatmap.{svg,png}, " } else { "" },
        trials.len(),
    );
    for result in plotted {
        result.context("report.md is written, but a plot could not be drawn")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_results_are_one_trial_per_line_and_read_back_exactly() {
        let trials: Vec<Value> = vec![
            serde_json::json!({"trial": "a::x", "kl": 0.1 + 0.2, "samples": [{"prediction": "1\n2"}]}),
            serde_json::json!({"trial": "b::x", "kl": 1e-300}),
        ];
        let bytes = results_json(&trials).unwrap();
        assert_eq!(String::from_utf8(bytes.clone()).unwrap().lines().count(), 4);
        assert_eq!(serde_json::from_slice::<Vec<Value>>(&bytes).unwrap(), trials);
        assert_eq!(serde_json::from_slice::<Vec<Value>>(&results_json(&[]).unwrap()).unwrap(), Vec::<Value>::new());
    }
}
