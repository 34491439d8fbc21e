//! Golden snapshots of trials and the gate that compares a run with them.
//!
//! A snapshot (`golden/trials/<tier>/<method>__<task>.snap`, written by insta) records the
//! trial's identity (the method's typed settings, never its description, and the mode), rounded
//! aggregates, and per sample its score, top-1 agreement, KL and prediction. How a run is held
//! to it depends on the tier ([`Gate`]):
//!
//! - **Replay** (the default tier, two samples a task, which support no statistical
//!   conclusion): the run must reproduce every sample: the same prediction, score and (within
//!   [`KL_TOLERANCE`]) KL. A prediction may differ only where the golden answer passed through a
//!   near tie (two logits within [`NEAR_TIE`]), which float noise between machines can flip.
//! - **Statistical** (the full tier): the per-sample scores (and top-1 agreements) must not
//!   differ from the golden ones in a paired test at a Bonferroni-corrected level (`ALPHA` over
//!   the trials of the matrix) **and** by at least [`MATERIALITY`]; better counts as changed too,
//!   since an improvement needs review as much as a regression.
//!
//! The measured error rates of both, and the commands, are in `docs/HARNESS.md`, "The gate".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stats;
use super::trial::TrialResult;

/// Smallest change of a mean (score or top-1 agreement, in [0, 1]) that counts.
pub const MATERIALITY: f64 = 0.05;

/// A lead of the greedy token over the runner-up (in logits) below which float noise may flip
/// it: a replayed prediction may differ from a golden one whose margin was smaller.
pub const NEAR_TIE: f64 = 0.01;

/// How far a replayed sample's KL may move: this much, plus [`KL_RELATIVE`] of the golden KL.
/// KL over the recorded top-k is noisy at the scale of a quantizer's error (it can even be
/// slightly negative); measured under a one-ULP perturbation (docs/HARNESS.md, "The gate").
pub const KL_TOLERANCE: f64 = 0.01;

/// The relative part of the KL tolerance.
pub const KL_RELATIVE: f64 = 0.1;

/// How a tier's runs are held to their snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every sample reproduced (the default tier).
    Replay,
    /// A paired test per trial, corrected for the `trials` of the run (the full tier).
    Statistical {
        /// Trials the level is divided among.
        trials: usize,
    },
}

/// One sample of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenSample {
    /// Sample id.
    pub id: String,
    /// Score, rounded.
    pub score: f64,
    /// Top-1 agreement with the full cache, rounded.
    pub top1: f64,
    /// KL to the full cache, rounded (`null`: not measured).
    pub kl: Option<f64>,
    /// The greedy answer.
    pub prediction: String,
    /// Its smallest lead over the runner-up, rounded (`null`: not recorded).
    pub margin: Option<f64>,
}

/// What a golden snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenTrial {
    /// `method::task`.
    pub trial: String,
    /// The method's settings.
    pub settings: serde_json::Value,
    /// Tier.
    pub tier: String,
    /// Mode.
    pub mode: String,
    /// Samples.
    pub n: usize,
    /// Mean score, rounded.
    pub score: f64,
    /// Its 95% interval, rounded.
    pub score_ci: (f64, f64),
    /// Mean top-1 agreement with the full cache.
    pub top1_agreement: f64,
    /// Mean KL to the full cache (`null`: not measured).
    pub kl: Option<f64>,
    /// Nominal ratio.
    pub nominal_ratio: Option<f64>,
    /// Mean measured ratio.
    pub measured_ratio: f64,
    /// Per sample.
    pub samples: Vec<GoldenSample>,
}

/// `x` rounded to `digits` decimals, as snapshots hold numbers.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl GoldenTrial {
    /// The snapshot of `result` in `tier`.
    pub fn of(result: &TrialResult, tier: &str) -> Self {
        Self {
            trial: result.trial.clone(),
            settings: result.settings.clone(),
            tier: tier.to_string(),
            mode: result.mode.name().to_string(),
            n: result.samples.len(),
            score: round(result.score.mean, 3),
            score_ci: (round(result.score.lo, 3), round(result.score.hi, 3)),
            top1_agreement: round(result.top1_agreement, 3),
            kl: result.kl.map(|kl| round(kl, 3)),
            nominal_ratio: result.nominal_ratio.map(|r| round(r, 3)),
            measured_ratio: round(result.measured_ratio, 2),
            samples: result
                .samples
                .iter()
                .map(|s| GoldenSample {
                    id: s.id.clone(),
                    score: round(s.score, 4),
                    top1: round(s.top1_agreement, 4),
                    kl: s.kl.map(|kl| round(kl, 4)),
                    prediction: s.prediction.clone(),
                    margin: s.margin.map(|m| round(m, 4)),
                })
                .collect(),
        }
    }
}

/// The snapshot file name of a trial.
pub fn file_name(trial: &str) -> String {
    trial.replace("::", "__")
}

/// Path of a trial's snapshot in `dir`.
pub fn path(dir: &Path, trial: &str) -> PathBuf {
    dir.join(format!("{}.snap", file_name(trial)))
}

/// Read a snapshot written by insta (front matter, then JSON); `None` if there is none.
pub fn read(path: &Path) -> Result<Option<GoldenTrial>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_str(snapshot_body(&text))
        .map(Some)
        .map_err(|e| format!("{}: not a golden trial snapshot: {e}", path.display()))
}

/// The JSON of an insta snapshot file: what follows its front matter (`---` … `---`), if any.
pub fn snapshot_body(text: &str) -> &str {
    text.strip_prefix("---\n").and_then(|rest| rest.split_once("\n---\n")).map_or(text, |(_, body)| body)
}

/// How a run compares with its snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within noise.
    Same,
    /// A real change (or a different configuration); the reason.
    Changed(String),
}

/// Gate `current` against `golden` as `gate` says.
pub fn check(current: &GoldenTrial, golden: &GoldenTrial, gate: Gate) -> Verdict {
    if current.settings != golden.settings || current.mode != golden.mode {
        return Verdict::Changed("the method's configuration or mode changed".into());
    }
    let ids = |g: &GoldenTrial| g.samples.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let (now, then) = (ids(current), ids(golden));
    match gate {
        Gate::Replay if now != then => Verdict::Changed("the samples changed (new traces?)".into()),
        Gate::Replay => replay(current, golden),
        Gate::Statistical { trials } => {
            // a sequential design may stop a trial at another look than its snapshot's: the two
            // are compared on the samples both ran, the first of the same trace
            let common = now.len().min(then.len());
            if common == 0 || now[..common] != then[..common] {
                return Verdict::Changed("the samples changed (new traces?)".into());
            }
            let first = |g: &GoldenTrial| GoldenTrial { samples: g.samples[..common].to_vec(), ..g.clone() };
            statistical(&first(current), &first(golden), stats::ALPHA / trials.max(1) as f64)
        }
    }
}

fn replay(current: &GoldenTrial, golden: &GoldenTrial) -> Verdict {
    for (now, then) in current.samples.iter().zip(&golden.samples) {
        let near_tie = then.margin.is_some_and(|m| m < NEAR_TIE);
        let why = if now.prediction != then.prediction && !near_tie {
            format!("its prediction changed from {:?} to {:?}", then.prediction, now.prediction)
        } else if now.prediction == then.prediction && (now.score - then.score).abs() > 1e-9 {
            format!("the same prediction now scores {} (was {})", now.score, then.score)
        } else if let (Some(a), Some(b)) = (now.kl, then.kl)
            && (a - b).abs() > KL_TOLERANCE + KL_RELATIVE * b.abs()
        {
            format!("its KL moved from {b} to {a}")
        } else if now.kl.is_some() != then.kl.is_some() {
            "its KL is measured in one run only".to_string()
        } else {
            continue;
        };
        return Verdict::Changed(format!("sample {}: {why}", now.id));
    }
    Verdict::Same
}

fn statistical(current: &GoldenTrial, golden: &GoldenTrial, alpha: f64) -> Verdict {
    let column = |g: &GoldenTrial, f: fn(&GoldenSample) -> f64| g.samples.iter().map(f).collect::<Vec<_>>();
    for (what, f) in [("score", (|s: &GoldenSample| s.score) as fn(&_) -> f64), ("top-1 agreement", |s| s.top1)] {
        let gate = stats::gate(&column(current, f), &column(golden, f), MATERIALITY, alpha);
        if gate.changed {
            return Verdict::Changed(format!(
                "{what} moved by {:+.3} (paired t test p = {:.2e} < {alpha:.2e}, materiality {MATERIALITY})",
                gate.difference, gate.p
            ));
        }
    }
    Verdict::Same
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(scores: &[f64]) -> GoldenTrial {
        GoldenTrial {
            trial: "q8_0::needle".into(),
            settings: serde_json::json!({ "bits": 8 }),
            tier: "default".into(),
            mode: "query-aware".into(),
            n: scores.len(),
            score: 0.0,
            score_ci: (0.0, 0.0),
            top1_agreement: 0.0,
            kl: Some(0.0),
            nominal_ratio: None,
            measured_ratio: 1.0,
            samples: scores
                .iter()
                .enumerate()
                .map(|(i, &s)| GoldenSample {
                    id: format!("s{i}"),
                    score: s,
                    top1: 1.0,
                    kl: Some(0.25),
                    prediction: format!("answer {s}"),
                    margin: Some(1.5),
                })
                .collect(),
        }
    }

    const FULL: Gate = Gate::Statistical { trials: 1 };

    #[test]
    fn noise_passes_and_real_changes_fail_the_statistical_gate() {
        let base = golden(&[1.0, 0.0, 1.0, 1.0, 0.5, 0.25, 0.75, 1.0]);
        assert_eq!(check(&base, &base, FULL), Verdict::Same);
        let noisy = golden(&[1.0, 0.0, 1.0, 1.0, 0.5001, 0.2499, 0.75, 1.0]);
        assert_eq!(check(&noisy, &base, FULL), Verdict::Same);
        let worse = golden(&[0.5, 0.0, 0.5, 0.6, 0.1, 0.0, 0.3, 0.4]);
        assert!(matches!(check(&worse, &base, FULL), Verdict::Changed(_)));
        // the same change among 1,000 trials is held to a level 1,000 times smaller
        let many = Gate::Statistical { trials: 1000 };
        let slightly = golden(&[0.9, 0.0, 0.9, 0.9, 0.4, 0.15, 0.65, 0.9]);
        assert!(matches!(check(&slightly, &base, FULL), Verdict::Changed(_)));
        assert_eq!(check(&slightly, &base, many), Verdict::Same);
        let mut reconfigured = base.clone();
        reconfigured.settings = serde_json::json!({ "bits": 4 });
        assert!(matches!(check(&reconfigured, &base, FULL), Verdict::Changed(_)));
    }

    #[test]
    fn a_trial_stopped_at_another_look_is_compared_on_the_samples_both_ran() {
        let base = golden(&[1.0, 0.0, 1.0, 1.0, 0.5, 0.25, 0.75, 1.0]);
        let first = |g: &GoldenTrial, n: usize| GoldenTrial { samples: g.samples[..n].to_vec(), n, ..g.clone() };
        assert_eq!(check(&first(&base, 5), &base, FULL), Verdict::Same);
        assert_eq!(check(&base, &first(&base, 5), FULL), Verdict::Same);
        let worse = golden(&[0.5, 0.0, 0.5, 0.6, 0.1, 0.0, 0.3, 0.4]);
        assert!(matches!(check(&first(&worse, 6), &base, FULL), Verdict::Changed(_)));
        let mut elsewhere = first(&base, 5);
        elsewhere.samples[0].id = "other".into();
        assert!(matches!(check(&elsewhere, &base, FULL), Verdict::Changed(w) if w.contains("samples changed")));
        assert!(
            matches!(check(&first(&base, 5), &base, Gate::Replay), Verdict::Changed(_)),
            "replay needs every sample"
        );
    }

    #[test]
    fn replay_needs_every_prediction_but_near_ties() {
        let base = golden(&[1.0, 0.0, 0.5]);
        assert_eq!(check(&base, &base, Gate::Replay), Verdict::Same);
        let mut other = base.clone();
        other.samples[1].prediction = "something else".into();
        let Verdict::Changed(why) = check(&other, &base, Gate::Replay) else { panic!("a new prediction passed") };
        assert!(why.contains("sample s1") && why.contains("something else"), "{why}");
        // the statistical gate cannot see one changed prediction of three; replay can
        assert_eq!(check(&other, &base, FULL), Verdict::Same);
        let mut tied = base.clone();
        tied.samples[1].margin = Some(NEAR_TIE / 2.0);
        assert_eq!(check(&other, &tied, Gate::Replay), Verdict::Same, "a near tie may flip");
        let mut rescored = base.clone();
        rescored.samples[2].score = 0.75;
        assert!(matches!(check(&rescored, &base, Gate::Replay), Verdict::Changed(_)), "a new metric");
        let mut drifted = base.clone();
        drifted.samples[0].kl = Some(0.2506);
        assert_eq!(check(&drifted, &base, Gate::Replay), Verdict::Same, "float noise in KL");
        drifted.samples[0].kl = Some(0.30);
        assert!(matches!(check(&drifted, &base, Gate::Replay), Verdict::Changed(_)), "a method that moved KL");
    }

    #[test]
    fn reads_insta_files() {
        let dir = std::env::temp_dir().join(format!("kvbench-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = golden(&[1.0]);
        let p = path(&dir, &g.trial);
        assert!(p.ends_with("q8_0__needle.snap"));
        assert_eq!(read(&p).unwrap(), None);
        std::fs::write(
            &p,
            format!("---\nsource: tests/bench.rs\n---\n{}\n", serde_json::to_string_pretty(&g).unwrap()),
        )
        .unwrap();
        assert_eq!(read(&p).unwrap(), Some(g));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
