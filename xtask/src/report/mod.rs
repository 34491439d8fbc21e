//! `cargo xtask report`: merge per-trial results (this machine's, or several shards'), then render
//! the markdown table, the score-versus-ratio plots and the needle heatmaps.

mod frontier;
pub mod merge;
mod plots;
mod survival;
mod table;
mod versus;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kvbench::bench::{Tier, TrialResult};
use kvbench::model::pinned::Pinned;

pub use merge::merge;

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Tier whose results to render.
    #[arg(long, default_value = "default")]
    pub tier: String,
    /// The model whose results to render (each model's trials are reported apart).
    #[arg(long, value_enum, default_value_t = Pinned::Smollm2)]
    pub model: Pinned,
    /// Report the trial results of these folders instead (shards' `target/kvbench-results/<tier>`,
    /// or `KVBENCH_RESULTS` folders, copied here), merged. A report's merged results (a committed
    /// report's `results/` folder, such as `docs/report-full/results`, or one file of it) count
    /// as a source too, so a report can grow run by run. Repeatable.
    #[arg(long = "merge", value_name = "DIR|FILE")]
    pub merge: Vec<PathBuf>,
    /// Where to write report.md, the plots and the merged results/ (default: the results folder, or
    /// `target/kvbench-results/<tier>-merged` with --merge).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Trial results in `dir` (its per-trial JSONs), sorted by trial name.
pub fn load(dir: &Path) -> anyhow::Result<Vec<TrialResult>> {
    let found = merge::folder_trials(dir)
        .with_context(|| format!("no results in {}: run `cargo xtask bench` (or pass --merge)", dir.display()))?;
    let mut trials: Vec<TrialResult> = found.into_iter().map(|(_, t)| t).collect();
    trials.sort_by(|a, b| a.trial.cmp(&b.trial));
    Ok(trials)
}

/// The merged results, one file per task (`results/<task>.json`): a JSON array with one trial
/// per line, so that a landing that adds trials adds lines to its task's file only. (Pretty-printed,
/// each of the full tier's trials ran to thousands of lines; as one file, the full tier's 308
/// trials, each with its samples' predictions, would be 7 MB.) Each file is replaced atomically;
/// then the files of tasks no longer present are removed, and so is the single `results.json`
/// that older reports wrote.
fn write_merged(out: &Path, trials: &[TrialResult]) -> anyhow::Result<()> {
    let mut by_task: BTreeMap<&str, Vec<&TrialResult>> = BTreeMap::new();
    for t in trials {
        match t.task.as_str() {
            task if !task.is_empty() && task.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                by_task.entry(task).or_default().push(t)
            }
            _ => bail!("trial {} has no task name (letters, digits, '-'): not a trial result", t.trial),
        }
    }
    let dir = out.join("results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (task, trials) in &by_task {
        let path = dir.join(format!("{task}.json"));
        kvbench::assets::write_atomic(&path, &results_json(trials)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stale = |p: &Path| {
        p.extension().is_some_and(|e| e == "json")
            && p.file_stem().and_then(|s| s.to_str()).is_none_or(|task| !by_task.contains_key(task))
    };
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if stale(&path) {
            std::fs::remove_file(&path).with_context(|| format!("removing the old {}", path.display()))?;
        }
    }
    let legacy = out.join("results.json");
    if legacy.is_file() {
        std::fs::remove_file(&legacy).with_context(|| format!("removing the old {}", legacy.display()))?;
    }
    Ok(())
}

/// One merged file: a JSON array with one trial per line.
fn results_json(trials: &[&TrialResult]) -> serde_json::Result<Vec<u8>> {
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
        let dir = Tier::from_name(&args.tier).map_err(anyhow::Error::msg)?.results_dir(args.model);
        (load(&dir)?, args.out.unwrap_or(dir))
    } else {
        // a run's folder holds each model but the first in a folder of its own: take that
        let sources: Vec<PathBuf> = args.merge.iter().map(|dir| args.model.within(dir)).collect();
        let trials = merge(&sources)?;
        eprintln!("merged {} trial results from {} sources", trials.len(), args.merge.len());
        let merged = crate::project_root().join("target/kvbench-results").join(format!("{}-merged", args.tier));
        let merged = args.model.subdir().map_or(merged.clone(), |sub| merged.join(sub));
        (trials, args.out.unwrap_or(merged))
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_merged(&out, &trials)?;

    let needle = !plots::needle_cells(&trials).is_empty();
    let md =
        table::markdown(&args.tier, args.model, &trials, needle, &versus::baselines(&args.tier, args.model, &trials));
    // atomically, as every output: a run killed mid-write leaves the previous report whole
    kvbench::assets::write_atomic(&out.join("report.md"), md.as_bytes())?;
    // the table stands without the plots (which need the font fetched): a plot that cannot be
    // drawn is reported, and the command fails at the end
    let plotted = [
        plots::score_vs_ratio(&trials, &out.join("score-vs-ratio")),
        plots::needle_heatmaps(&trials, &out.join("needle-heatmap")),
    ];
    println!("{md}");
    eprintln!(
        "report: {} with score-vs-ratio.{{svg,png}}, {}results/<task>.json ({} trials)",
        out.join("report.md").display(),
        if needle { "needle-heatmap.{svg,png}, " } else { "" },
        trials.len(),
    );
    for result in plotted {
        result.context("report.md is written, but a plot could not be drawn")?;
    }
    Ok(())
}

/// Trial results for the report's tests.
#[cfg(test)]
pub(crate) mod fixture {
    use kvbench::bench::stats;
    use kvbench::bench::trial::SampleOutcome;
    use kvbench::bench::{Provenance, TrialResult};
    use kvbench::model::generate::Mode;

    /// `trial` (`method::task`) whose samples score `scores`, id'd `s0`, `s1`, … (one sample of
    /// score `mean` for [`result`]).
    pub fn with_scores(trial: &str, scores: &[f64]) -> TrialResult {
        let (method, task) = trial.split_once("::").expect("method::task");
        let method_ = kvbench::kv::methods::by_name(method).ok();
        let samples: Vec<SampleOutcome> = scores
            .iter()
            .enumerate()
            .map(|(i, &score)| SampleOutcome {
                id: format!("s{i}"),
                prompt_len: 100,
                depth: None,
                score,
                prediction: format!("answer {i}"),
                top1_agreement: 1.0,
                kl: Some(0.0),
                measured_ratio: 1.0,
                peak_bytes: Some(1000),
                peak_ratio: Some(1.0),
                read_ratio: Some(1.0),
                margin: Some(1.0),
                answer_kept: None,
                seconds: 0.5,
            })
            .collect();
        TrialResult {
            trial: trial.into(),
            method: method.into(),
            settings: method_.as_ref().map_or(serde_json::json!({}), |m| m.settings()),
            description: method_.as_ref().map_or(String::new(), |m| m.description()),
            task: task.into(),
            mode: Mode::QueryAware,
            score: stats::estimate(scores),
            top1_agreement: 1.0,
            kl: Some(0.0),
            nominal_ratio: method_.as_ref().and_then(|m| m.nominal_ratio()),
            measured_ratio: 1.0,
            mean_peak_bytes: Some(1000.0),
            samples,
            sequential: None,
            seconds: 0.5 * scores.len() as f64,
            provenance: Provenance::default(),
        }
    }

    /// `trial` with one sample of score `mean`.
    pub fn result(trial: &str, mean: f64) -> TrialResult {
        with_scores(trial, &[mean])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_results_are_one_trial_per_line_and_read_back_exactly() {
        let mut a = fixture::result("full::code", 0.5);
        a.kl = Some(0.1 + 0.2);
        a.samples[0].prediction = "1\n2".into();
        let mut b = fixture::result("h2o-2x::code", 0.25);
        b.kl = Some(1e-300);
        let trials = vec![a, b];
        let bytes = results_json(&trials.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(String::from_utf8(bytes.clone()).unwrap().lines().count(), 4);
        assert_eq!(serde_json::from_slice::<Vec<TrialResult>>(&bytes).unwrap(), trials);
        assert!(serde_json::from_slice::<Vec<TrialResult>>(&results_json(&[]).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn merged_results_are_split_by_task_and_merge_back_whole() {
        let out = std::env::temp_dir().join(format!("kvbench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("results")).unwrap();
        // left by an older report, or by an earlier report that had a task this one lacks
        std::fs::write(out.join("results.json"), "[]").unwrap();
        std::fs::write(out.join("results/summarization.json"), "[]").unwrap();
        let trials: Vec<TrialResult> =
            ["full::code", "h2o-2x::code", "full::needle"].iter().map(|n| fixture::result(n, 0.5)).collect();
        write_merged(&out, &trials).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(out.join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["code.json", "needle.json"]);
        assert!(!out.join("results.json").exists());
        let mut back = merge(&[out.join("results")]).unwrap();
        back.sort_by(|a, b| a.trial.cmp(&b.trial));
        let mut want = trials.clone();
        want.sort_by(|a, b| a.trial.cmp(&b.trial));
        assert_eq!(back, want);
        // a bad result is refused before anything is written or removed
        let bad_task = |task: &str| TrialResult { task: task.into(), ..fixture::result("x::y", 0.0) };
        for bad in [bad_task(""), bad_task("../y")] {
            let e = write_merged(&out, &[bad]).unwrap_err().to_string();
            assert!(e.contains("no task name"), "{e}");
        }
        assert!(out.join("results/code.json").exists());
        std::fs::remove_dir_all(out).unwrap();
    }

    /// Every output is replaced, never rewritten in place: a copy of the old file (a hard link to
    /// it, as a reader holding it open would see it) keeps the old bytes, so a run killed
    /// mid-write could not have left a truncated file where the old one was.
    #[test]
    fn outputs_are_replaced_atomically() {
        let out = std::env::temp_dir().join(format!("kvbench-report-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let outputs =
            ["report.md", "score-vs-ratio.svg", "score-vs-ratio.png", "needle-heatmap.svg", "needle-heatmap.png"];
        for name in outputs {
            std::fs::write(out.join(name), "old").unwrap();
            std::fs::hard_link(out.join(name), out.join(format!("{name}.old"))).unwrap();
        }
        let results = crate::project_root().join("docs/report-default/results");
        report(ReportArgs {
            tier: "default".into(),
            model: Pinned::Smollm2,
            merge: vec![results],
            out: Some(out.clone()),
        })
        .unwrap();
        for name in outputs {
            assert_eq!(
                std::fs::read(out.join(format!("{name}.old"))).unwrap(),
                b"old",
                "{name} was rewritten in place"
            );
            assert_ne!(std::fs::read(out.join(name)).unwrap(), b"old", "{name} was not written");
        }
        let left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        std::fs::remove_dir_all(out).unwrap();
    }
}
