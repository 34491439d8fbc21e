//! The report's markdown: methods × task categories, as in the reference study's main table.

use std::collections::BTreeMap;

use kvbench::bench::{Provenance, TrialResult};
use kvbench::model::generate::Mode;

use super::versus::TaskBaselines;

/// Task categories, in the report's column order: the benchmark's own list.
pub const TASKS: [&str; kvbench::tasks::Task::ALL.len()] = {
    let mut names = [""; kvbench::tasks::Task::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = kvbench::tasks::Task::ALL[i].name();
        i += 1;
    }
    names
};

/// Every method of the trial matrix, in its order.
pub fn methods() -> Vec<String> {
    kvbench::kv::methods::all_at(&kvbench::bench::RATIOS)
}

/// The report of `trials`; `needle_heatmaps`: whether the needle heatmaps are drawn (the tier
/// has needle results), so that the table links them.
pub fn markdown(
    tier: &str,
    model: kvbench::model::pinned::Pinned,
    trials: &[TrialResult],
    needle_heatmaps: bool,
    baselines: &TaskBaselines,
) -> String {
    let methods = methods();
    let by: BTreeMap<(&str, &str), &TrialResult> =
        trials.iter().map(|t| ((t.method.as_str(), t.task.as_str()), t)).collect();
    let expected = methods.len() * TASKS.len();
    let missing: Vec<String> = methods
        .iter()
        .flat_map(|m| TASKS.iter().map(move |t| (m.as_str(), *t)))
        .filter(|k| !by.contains_key(k))
        .map(|(m, t)| format!("{}{m}::{t}", model.trial_prefix()))
        .collect();
    let mut md = match model {
        // the first model's reports keep their title
        kvbench::model::pinned::Pinned::Smollm2 => format!("# kvbench report: {tier} tier\n\n"),
        other => format!("# kvbench report: {tier} tier, {}\n\n", other.display_name()),
    };
    if tier == "default" {
        md.push_str(&default_tier_caveat(model));
    }
    md.push_str(&format!(
        "{} of the {expected} trials{}; mode {}.\n\n",
        expected - missing.len(),
        match missing.len() {
            0 => String::new(),
            n if n <= 10 => format!(" (missing: {})", missing.join(", ")),
            n => format!(" ({n} missing: run them, or merge the shards that ran them)"),
        },
        modes(trials)
    ));
    md.push_str(
        "## Scores\n\nTask scores ×100 with 95% intervals (Wilson where every score is 0 or 1, as exact-match scores \
         are; t cut to [0, 1] otherwise), n samples per cell (`n=20/100`: a sequential design stopped the trial \
         after 20 of the trace's 100 samples, its verdict against full reached; its score is of those 20); `ratio` is the mean steady-state compression against \
         an fp16 cache of the same tokens (fp16 bytes / peak bytes held after compression; the section Memory has \
         the peak and the bytes read), `top-1` the mean agreement with the full cache's answer.\n\n\
         ![score versus measured ratio](score-vs-ratio.png)\n\n| method | ratio | top-1 |",
    );
    for t in TASKS {
        md.push_str(&format!(" {t} |"));
    }
    md.push_str("\n|---|---:|---:|");
    md.push_str(&"---:|".repeat(TASKS.len()));
    md.push('\n');
    for m in &methods {
        let cells: Vec<Option<&&TrialResult>> = TASKS.iter().map(|t| by.get(&(m.as_str(), *t))).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let mean = |f: fn(&TrialResult) -> f64| {
            let xs: Vec<f64> = cells.iter().flatten().map(|t| f(t)).collect();
            xs.iter().sum::<f64>() / xs.len().max(1) as f64
        };
        md.push_str(&format!("| {m} | {:.2}× | {:.2} |", mean(|t| t.measured_ratio), mean(|t| t.top1_agreement)));
        for c in cells {
            match c {
                Some(t) => {
                    // scores live in [0, 1]; results of builds before stats::estimate cut t intervals to it
                    // hold raw bounds, so cut them here too
                    let f = |x: f64| x.clamp(0.0, 1.0) * 100.0;
                    let s = &t.score;
                    let of =
                        t.sequential.filter(|q| q.stopped.is_some()).map_or(String::new(), |q| format!("/{}", q.of));
                    md.push_str(&format!(" {:.0} [{:.0}, {:.0}] n={}{of} |", f(s.mean), f(s.lo), f(s.hi), s.n));
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    if !needle_heatmaps {
        md.push_str("\nNo needle results in this report, so no depth × length heatmaps.\n");
    } else {
        md.push_str(
            "\nNeedle exact-match rate by depth and prompt length, per method (a tier with one length has one column):\n\n\
             ![needle heatmaps](needle-heatmap.png)\n",
        );
    }
    md.push_str(&super::versus::sections(trials, baselines));
    md.push_str(&provenance(trials));
    md
}

/// What a default-tier report is for, and where the model's full-tier numbers are (or how to
/// make them, where its full tier has not run).
fn default_tier_caveat(model: kvbench::model::pinned::Pinned) -> String {
    let n = match kvbench::bench::Tier::Default.samples(model, kvbench::tasks::Task::Needle) {
        1 => "one sample".to_string(),
        n => format!("{n} samples"),
    };
    // the model's full-tier report, from this one's folder (docs/report-default[/<model>])
    let (shown, link) = match model.subdir() {
        None => ("docs/report-full/report.md".to_string(), "../report-full/report.md".to_string()),
        Some(sub) => (format!("docs/report-full/{sub}/report.md"), format!("../../report-full/{sub}/report.md")),
    };
    let full = if crate::project_root().join(&shown).is_file() {
        format!("The study's numbers are the full tier's: [{shown}]({link}).")
    } else {
        format!(
            "The full tier has not run for this model yet (`cargo xtask record --model {} --tier full`, then \
             `cargo xtask bench --tier full -- {}`).",
            model.name(),
            model.trial_prefix()
        )
    };
    format!("**The default tier checks that nothing changed, on {n} per task; it supports no conclusion.** {full}\n\n")
}

/// The modes the trials ran in, named, with what each means.
fn modes(trials: &[TrialResult]) -> String {
    let mut seen: Vec<Mode> = Vec::new();
    for t in trials {
        if !seen.contains(&t.mode) {
            seen.push(t.mode);
        }
    }
    let what = |m: Mode| match m {
        Mode::QueryAware => {
            "the prompt but its last token prefilled, compressed, then the last token and every answer token through what was kept"
        }
        Mode::QueryAgnostic => "the context compressed before the question is fed",
        Mode::QueryAwareUncompressedFirstToken => {
            "legacy: the first answer token taken from the uncompressed prefill, which favours methods acting after prefill"
        }
    };
    let named: Vec<String> = seen.iter().map(|&m| format!("`{}` ({})", m.name(), what(m))).collect();
    if named.is_empty() { "none".into() } else { named.join(", ") }
}

/// Where the results came from, per task: how many trials, their summed wall time, and the test
/// binaries and trace files (sha256 prefixes, as recorded in each result) that produced them.
fn provenance(trials: &[TrialResult]) -> String {
    let mut md = String::from(
        "\n## Provenance\n\n| task | trials | trial-seconds | test binary (sha256, trials) | trace (sha256) |\n\
         |---|---:|---:|---|---|\n",
    );
    for task in TASKS {
        let of_task: Vec<&TrialResult> = trials.iter().filter(|t| t.task == task).collect();
        if of_task.is_empty() {
            continue;
        }
        let seconds: f64 = of_task.iter().map(|t| t.seconds).sum();
        let short =
            |h: &str| if h.is_empty() { "not recorded".to_string() } else { format!("`{}`", &h[..h.len().min(12)]) };
        let count = |key: fn(&Provenance) -> &str| {
            let mut n: BTreeMap<String, usize> = BTreeMap::new();
            for t in &of_task {
                *n.entry(short(key(&t.provenance))).or_default() += 1;
            }
            n
        };
        let builds: Vec<String> = count(|p| &p.build).into_iter().map(|(b, n)| format!("{b} ×{n}")).collect();
        let traces: Vec<String> = count(|p| &p.trace).into_keys().collect();
        md.push_str(&format!(
            "| {task} | {} | {seconds:.0} | {} | {} |\n",
            of_task.len(),
            builds.join(", "),
            traces.join(", ")
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use crate::report::fixture;
    use kvbench::bench::Provenance;

    #[test]
    fn provenance_counts_builds_and_traces_per_task() {
        let trial = |name: &str, build: &str, trace: &str, secs: f64| {
            let mut t = fixture::result(name, 0.5);
            t.seconds = secs;
            t.provenance = Provenance { build: build.into(), trace: trace.into() };
            t
        };
        let trials = [
            trial("full::code", "1111111111111111", "abcdef0123456789", 10.0),
            trial("h2o-2x::code", "2222222222222222", "abcdef0123456789", 5.5),
            trial("h2o-4x::code", "1111111111111111", "abcdef0123456789", 1.0),
            trial("full::needle", "", "", 2.0),
        ];
        let md = super::provenance(&trials);
        assert!(md.contains("| code | 3 | 16 | `111111111111` ×2, `222222222222` ×1 | `abcdef012345` |"), "{md}");
        assert!(md.contains("| needle | 1 | 2 | not recorded ×1 | not recorded |"), "{md}");
        assert!(!md.contains("| synthetic |"), "tasks without results are left out");
    }
}
