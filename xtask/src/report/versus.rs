//! The report's comparisons with the full cache: Δ vs full in every cell (paired by sample, Holm's
//! correction across the configurations of each task; `kvbench::bench::paired` has the
//! statistics), what each task can see, fidelity per task, and the three memory figures.

use std::collections::{BTreeMap, HashMap};

use kvbench::bench::TrialResult;
use kvbench::bench::paired::{self, EQUIVALENCE, Paired};
use kvbench::kv::Acts;
use kvbench::trace::baselines::Baselines;

use super::table::{TASKS, methods};

/// Family-wise level of the Holm marks, per task.
const ALPHA: f64 = 0.05;

/// One configuration's comparison with `full` on one task, and its Holm-adjusted p-value.
struct Cell {
    paired: Paired,
    holm: f64,
    /// Samples run, where a sequential design stopped the trial early (of `full`'s n).
    stopped_at: Option<usize>,
    /// Every sample's score is `full`'s.
    same_scores: bool,
    /// Every sample's prediction is `full`'s.
    same_predictions: bool,
}

/// Per (method, task), the comparison with `full` of the same task, where both ran on the same
/// samples (or the configuration on the first of them, up to where its sequential design stopped
/// it). Holm's correction takes each trial's p-value as its design gives it
/// ([`kvbench::bench::sequential::Design::adjusted_p`]; a fixed-n trial's own).
fn cells(trials: &[TrialResult]) -> BTreeMap<(String, &'static str), Cell> {
    let mut out = BTreeMap::new();
    for task in TASKS {
        let Some(full) = trials.iter().find(|t| t.task == task && t.method == "full") else { continue };
        let reference: HashMap<&str, (f64, &str)> =
            full.samples.iter().map(|s| (s.id.as_str(), (s.score, s.prediction.as_str()))).collect();
        let mut found = Vec::new();
        for t in trials.iter().filter(|t| t.task == task && t.method != "full") {
            let pairs: Option<Vec<(f64, f64, bool)>> = t
                .samples
                .iter()
                .map(|s| reference.get(s.id.as_str()).map(|&(f, p)| (s.score, f, s.prediction == p)))
                .collect();
            let stopped = t.sequential.filter(|s| s.of == full.samples.len()).and_then(|s| s.stopped);
            let expected = stopped.map_or(full.samples.len(), |s| s.at);
            let prefix = t.samples.iter().zip(&full.samples).all(|(a, b)| a.id == b.id);
            let Some(pairs) = pairs.filter(|p| p.len() == expected && !p.is_empty() && prefix) else { continue };
            let (method, reference): (Vec<f64>, Vec<f64>) = pairs.iter().map(|p| (p.0, p.1)).unzip();
            let paired = paired::compare(&method, &reference);
            let p = match t.sequential {
                Some(s) => s.design.adjusted_p(&method, &reference, full.samples.len()),
                None => paired.p,
            };
            let same = (method == reference, pairs.iter().all(|p| p.2));
            found.push((t.method.clone(), paired, p, stopped.map(|s| s.at), same));
        }
        let adjusted = paired::holm(&found.iter().map(|f| f.2).collect::<Vec<_>>());
        for ((method, paired, _, stopped_at, (same_scores, same_predictions)), holm) in found.into_iter().zip(adjusted)
        {
            out.insert((method, task), Cell { paired, holm, stopped_at, same_scores, same_predictions });
        }
    }
    out
}

/// Per task, the means of the no-context and trivial baselines over the trace `full` replayed
/// (`kvbench::trace::baselines`), or why there are none.
pub type TaskBaselines = BTreeMap<String, Result<(f64, f64), String>>;

/// The baselines stored beside `tier`'s traces, for the trace each task's `full` replayed.
pub fn baselines(tier: &str, model: kvbench::model::pinned::Pinned, trials: &[TrialResult]) -> TaskBaselines {
    let Ok(tier) = kvbench::bench::Tier::from_name(tier) else { return TaskBaselines::new() };
    let mut out = TaskBaselines::new();
    for full in trials.iter().filter(|t| t.method == "full") {
        let Ok(task) = kvbench::tasks::Task::from_name(&full.task) else { continue };
        let found = match Baselines::read(&tier.trace_path(model, task), &full.provenance.trace) {
            Ok(Some(b)) if b.samples.iter().map(|s| &s.id).eq(full.samples.iter().map(|s| &s.id)) => Ok(b.means()),
            Ok(Some(_)) => Err(format!("{}: the baselines are of other samples than full's", full.task)),
            Ok(None) => Err(format!(
                "{}: no baselines (`cargo xtask baselines --model {} --tier {}`)",
                full.task,
                model.name(),
                tier.name()
            )),
            Err(why) => Err(why),
        };
        out.insert(full.task.clone(), found);
    }
    out
}

/// The sections after the score table.
pub fn sections(trials: &[TrialResult], baselines: &TaskBaselines) -> String {
    let cells = cells(trials);
    let mut md = delta_table(&cells);
    md.push_str(&sensitivity(trials, &cells, baselines));
    md.push_str(&fidelity(trials));
    md.push_str(&memory(trials));
    md.push_str(&super::frontier::section(trials));
    md.push_str(&super::survival::section(trials));
    md
}

fn header(first: &str) -> String {
    let mut md = format!("| {first} |");
    for t in TASKS {
        md.push_str(&format!(" {t} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(TASKS.len()));
    md.push('\n');
    md
}

fn delta_table(cells: &BTreeMap<(String, &'static str), Cell>) -> String {
    let mut md = format!(
        "\n## Δ vs full\n\nEach cell: the mean over samples of (configuration − full), ×100, with its paired 95% interval \
         (Student's t on the per-sample differences). **\\*** the difference survives Holm's correction across the \
         configurations of the task (exact McNemar where every score is 0 or 1, paired t otherwise; {:.0}% \
         family-wise); **≈** indistinguishable from full: the whole interval lies within ±{:.0} points, at an n \
         (59 or more) where samples not seen could not hide a larger difference either; **(k)** a sequential design \
         stopped the trial after its first k samples, its verdict reached (the interval and Δ are of those k, \
         against full on the same k; the correction takes the design's p-value: docs/HARNESS.md, \
         \"Stopping early\").\n\n",
        ALPHA * 100.0,
        EQUIVALENCE * 100.0
    );
    md.push_str(&header("method"));
    for m in methods().iter().filter(|m| *m != "full") {
        let row: Vec<Option<&Cell>> = TASKS.iter().map(|t| cells.get(&(m.clone(), *t))).collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        md.push_str(&format!("| {m} |"));
        for c in row {
            match c {
                Some(c) => {
                    let p = &c.paired;
                    let marks = format!(
                        "{}{}{}",
                        if c.holm < ALPHA { " \\*" } else { "" },
                        if p.indistinguishable() { " ≈" } else { "" },
                        c.stopped_at.map_or(String::new(), |k| format!(" ({k})"))
                    );
                    md.push_str(&format!(
                        " {:+.0} [{:+.0}, {:+.0}]{marks} |",
                        p.delta * 100.0,
                        p.lo * 100.0,
                        p.hi * 100.0
                    ));
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md
}

/// What each task can see at this n: the median paired MDE80 of its configurations, how many
/// differ from full after correction, how many are shown indistinguishable, and how many of the
/// methods acting after prefill answer every sample exactly as full does.
fn sensitivity(
    trials: &[TrialResult],
    cells: &BTreeMap<(String, &'static str), Cell>,
    baselines: &TaskBaselines,
) -> String {
    let mut md = String::from(
        "\n## What each task can see\n\n`MDE80`: the median, over the task's configurations, of the paired minimum \
         detectable effect at 80% power and 5% (`(z₀.₉₇₅ + z₀.₈₀)·sd/√n` of the per-sample differences, n the task's: \
         full's, for trials stopped early too), ×100. \
         `differ`: configurations marked \\* above; `≈`: marked ≈. `after prefill, = full`: of the configurations \
         whose method acts after prefill, those whose every sample scores as full's (then, those whose every \
         prediction is full's): a task where a compressed cache cannot change the score sees nothing. \
         `baseline`: the better of the no-context and trivial baselines' mean on the same samples (`cargo xtask \
         baselines`); `headroom`: full less it. A task **sees** when its headroom is at least 3 × MDE80.\n\n\
         | task | n | full | baseline | headroom | MDE80 | sees? | differ | ≈ | after prefill, = full: scores | \
         predictions |\n\
         |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    let mut missing = Vec::new();
    for task in TASKS {
        let Some(full) = trials.iter().find(|t| t.task == task && t.method == "full") else { continue };
        let of_task: Vec<(&String, &Cell)> =
            cells.iter().filter(|((_, t), _)| *t == task).map(|((m, _), c)| (m, c)).collect();
        // at the task's n, full's: a trial stopped early was stopped because it had seen enough
        let n = full.samples.len();
        let mut mdes: Vec<f64> = of_task.iter().map(|(_, c)| paired::mde80(c.paired.sd, n)).collect();
        mdes.sort_by(f64::total_cmp);
        let median = match mdes.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => mdes[n / 2],
            n => (mdes[n / 2 - 1] + mdes[n / 2]) / 2.0,
        };
        let after: Vec<&&Cell> = of_task
            .iter()
            .filter(|(m, _)| kvbench::kv::methods::by_name(m).is_ok_and(|m| m.acts() == Acts::AfterPrefill))
            .map(|(_, c)| c)
            .collect();
        let (baseline, headroom, sees) = match baselines.get(task) {
            Some(Ok((bare, trivial))) => {
                let (best, which) = if bare >= trivial { (*bare, "no context") } else { (*trivial, "trivial") };
                let headroom = full.score.mean - best;
                let sees = if headroom >= 3.0 * median { "yes" } else { "**cannot see at this n**" };
                (format!("{:.1} ({which})", best * 100.0), format!("{:.1}", headroom * 100.0), sees)
            }
            Some(Err(why)) => {
                missing.push(why.clone());
                ("—".into(), "—".into(), "—")
            }
            None => ("—".into(), "—".into(), "—"),
        };
        md.push_str(&format!(
            "| {task} | {} | {:.1} | {baseline} | {headroom} | {:.1} | {sees} | {} of {} | {} | {} of {} | {} |\n",
            full.samples.len(),
            full.score.mean * 100.0,
            median * 100.0,
            of_task.iter().filter(|(_, c)| c.holm < ALPHA).count(),
            of_task.len(),
            of_task.iter().filter(|(_, c)| c.paired.indistinguishable()).count(),
            after.iter().filter(|c| c.same_scores).count(),
            after.len(),
            after.iter().filter(|c| c.same_predictions).count(),
        ));
    }
    for why in missing {
        md.push_str(&format!("\nNo headroom for {why}.\n"));
    }
    md
}

fn fidelity(trials: &[TrialResult]) -> String {
    let by: BTreeMap<(&str, &str), &TrialResult> =
        trials.iter().map(|t| ((t.method.as_str(), t.task.as_str()), t)).collect();
    let mut md = String::from(
        "\n## Fidelity to the full cache\n\nEach cell: the share of the full cache's answer tokens where the \
         configuration's top-1 token, teacher-forced, is the same (×100), then the mean KL divergence from the full \
         cache's next-token distribution (top-k as recorded, nats). For a small model this is the most sensitive \
         signal: it moves before task scores do.\n\n",
    );
    md.push_str(&header("method"));
    for m in methods() {
        let row: Vec<Option<&&TrialResult>> = TASKS.iter().map(|t| by.get(&(m.as_str(), *t))).collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        md.push_str(&format!("| {m} |"));
        for t in row {
            match t {
                Some(t) => match t.kl {
                    Some(kl) => md.push_str(&format!(" {:.0} · {kl:.3} |", t.top1_agreement * 100.0)),
                    None => md.push_str(&format!(" {:.0} · — |", t.top1_agreement * 100.0)),
                },
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md
}

/// The mean of `f` over every sample of `trials` that has it, `None` if none has.
fn sample_mean(trials: &[&TrialResult], f: fn(&kvbench::bench::trial::SampleOutcome) -> Option<f64>) -> Option<f64> {
    let xs: Vec<f64> = trials.iter().flat_map(|t| t.samples.iter().filter_map(f)).collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn memory(trials: &[TrialResult]) -> String {
    let mut md = String::from(
        "\n## Memory\n\nAll against an fp16 cache of the same tokens (fp16 = 1.00×; higher is smaller), means over every \
         sample of every task. `steady`: bytes held once the method has compressed (its peak after prefill); `peak`: \
         the largest bytes held at any step, prefill included (methods acting after prefill hold the whole fp32 \
         prefill first); `read/step`: bytes attention reads per step after prefill (what retrieval saves: it holds \
         everything and reads a budget). `nominal`: the name's ratio. `full` is the fp32 reference, 0.50× by \
         construction. Per-trial figures are in `results/` (`measured_ratio`, `peak_ratio`, `read_ratio` of each \
         sample).\n\n| method | nominal | steady | peak | read/step |\n|---|---:|---:|---:|---:|\n",
    );
    let shown = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.2}×"));
    for m in methods() {
        let of: Vec<&TrialResult> = trials.iter().filter(|t| t.method == m).collect();
        if of.is_empty() {
            continue;
        }
        let name = if m == "full" { "full (fp32 reference)".to_string() } else { m.clone() };
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            shown(of[0].nominal_ratio),
            shown(sample_mean(&of, |s| Some(s.measured_ratio))),
            shown(sample_mean(&of, |s| s.peak_ratio)),
            shown(sample_mean(&of, |s| s.read_ratio)),
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::with_scores;

    #[test]
    fn cells_pair_samples_and_correct_per_task() {
        let full = with_scores("full::needle", &[1.0; 20]);
        // 10 of 20 lost: McNemar p = 2·(½)^10 ≈ 0.002, two configurations: Holm ×2
        let mut half = [1.0; 20];
        half[..10].fill(0.0);
        let worse = with_scores("h2o-2x::needle", &half);
        let same = with_scores("kivi-4bit::needle", &[1.0; 20]);
        let cells = cells(&[full, worse, same]);
        let w = &cells[&("h2o-2x".to_string(), "needle")];
        assert!((w.paired.delta + 0.5).abs() < 1e-12 && w.holm < ALPHA && !w.paired.indistinguishable());
        assert!((w.holm - 2.0 * 2.0 * 0.5f64.powi(10)).abs() < 1e-9, "{}", w.holm);
        let s = &cells[&("kivi-4bit".to_string(), "needle")];
        assert!(!s.paired.indistinguishable() && s.holm == 1.0 && s.same_scores && s.same_predictions, "n = 20");
        let md = sections(
            &[with_scores("full::needle", &[1.0; 20]), with_scores("h2o-2x::needle", &half)],
            &TaskBaselines::new(),
        );
        assert!(md.contains("| h2o-2x | -50 [-74, -26] \\* |"), "{md}");
        assert!(md.contains("| needle | 20 | 100.0 |"), "{md}");
    }

    #[test]
    fn a_trial_stopped_early_is_paired_on_its_samples_with_its_designs_p() {
        use kvbench::bench::sequential::{Reason, Sequential, Stop, full_tier};
        let full = with_scores("full::needle", &[1.0; 100]);
        let mut lost = [1.0; 20];
        lost[..14].fill(0.0);
        let mut stopped = with_scores("h2o-8x::needle", &lost);
        let stop = Stop { at: 20, reason: Reason::Differs, p: 2.0 * 0.5f64.powi(14) };
        let design = full_tier();
        stopped.sequential = Some(Sequential { design, of: 100, stopped: Some(stop) });
        let found = cells(&[full.clone(), stopped.clone()]);
        let c = &found[&("h2o-8x".to_string(), "needle")];
        assert_eq!((c.paired.n, c.stopped_at), (20, Some(20)));
        assert!((c.holm - stop.p * 0.05 / 0.0005).abs() < 1e-12, "the design's p: {}", c.holm);
        let md = sections(&[full.clone(), stopped.clone()], &TaskBaselines::new());
        assert!(md.contains("| h2o-8x | -70 [-92, -48] \\* (20) |"), "{md}");
        // without a record of its stop, a trial of 20 of 100 samples is of other samples
        stopped.sequential = None;
        assert!(cells(&[full, stopped]).is_empty());
    }

    #[test]
    fn a_task_sees_when_its_headroom_is_three_mdes() {
        // full 80 on 20 needles, a configuration losing 6 of them: sd of the differences
        // √(6·(1 − 0.3)² + 14·0.3²)/19 = 0.470, MDE80 = 2.8016·0.470/√20 = 0.295
        let mut scores = [1.0; 20];
        scores[..4].fill(0.0);
        let full = with_scores("full::needle", &scores);
        let mut lost = scores;
        lost[4..10].fill(0.0);
        let trials = [full, with_scores("h2o-2x::needle", &lost)];
        let row = |bare: f64, trivial: f64| {
            let baselines = TaskBaselines::from([("needle".to_string(), Ok((bare, trivial)))]);
            let md = sections(&trials, &baselines);
            md.lines().find(|l| l.starts_with("| needle | 20 |")).expect("the needle's row").to_string()
        };
        assert!(
            row(0.0, 0.05).starts_with("| needle | 20 | 80.0 | 5.0 (trivial) | 75.0 | 29.5 | **cannot see"),
            "{}",
            row(0.0, 0.05)
        );
        let missing = TaskBaselines::from([("needle".to_string(), Err("needle: no baselines".to_string()))]);
        assert!(sections(&trials, &missing).contains("No headroom for needle: no baselines."));
        // every needle lost: differences all −1, no spread, and the whole score is headroom
        let all = [with_scores("full::needle", &[1.0; 20]), with_scores("h2o-2x::needle", &[0.0; 20])];
        let baselines = TaskBaselines::from([("needle".to_string(), Ok((0.0, 0.0)))]);
        assert!(sections(&all, &baselines).contains("| needle | 20 | 100.0 | 0.0 (no context) | 100.0 | 0.0 | yes |"));
    }

    #[test]
    fn trials_of_other_samples_are_not_compared() {
        let full = with_scores("full::code", &[0.5, 0.25]);
        let mut other = with_scores("h2o-2x::code", &[0.5, 0.25]);
        other.samples[1].id = "elsewhere".into();
        assert!(cells(&[full, other]).is_empty());
    }
}
