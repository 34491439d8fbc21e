//! Golden snapshots of trials and the gate that compares a run with them.
//!
//! A snapshot (`golden/trials/<tier>/<method>__<task>.snap`, written by insta) records the
//! trial's method configuration, rounded aggregates and per-sample scores. A run passes unless
//! its per-sample scores differ from the golden ones in a paired test (p < 0.05) **and** by at
//! least a material amount ([`MATERIALITY`] on the mean score, or on the mean top-1 agreement
//! with the full cache); better counts as changed too, since an improvement needs review as much
//! as a regression. Float noise between machines moves scores by far less than that.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stats;
use super::trial::TrialResult;

/// Smallest change of a mean (score or top-1 agreement, in [0, 1]) that counts.
pub const MATERIALITY: f64 = 0.05;

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
    /// Per sample: id, score, top-1 agreement.
    pub samples: Vec<(String, f64, f64)>,
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
            mode: serde_json::to_value(result.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
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
                .map(|s| (s.id.clone(), round(s.score, 4), round(s.top1_agreement, 4)))
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

/// Gate `current` against `golden`.
pub fn check(current: &GoldenTrial, golden: &GoldenTrial) -> Verdict {
    if current.settings != golden.settings || current.mode != golden.mode {
        return Verdict::Changed("the method's configuration or mode changed".into());
    }
    let ids = |g: &GoldenTrial| g.samples.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
    if ids(current) != ids(golden) {
        return Verdict::Changed("the samples changed (new traces?)".into());
    }
    let column = |g: &GoldenTrial, f: fn(&(String, f64, f64)) -> f64| g.samples.iter().map(f).collect::<Vec<_>>();
    for (what, f) in [("score", (|s: &(String, f64, f64)| s.1) as fn(&_) -> f64), ("top-1 agreement", |s| s.2)] {
        let gate = stats::gate(&column(current, f), &column(golden, f), MATERIALITY);
        if gate.changed {
            return Verdict::Changed(format!(
                "{what} moved by {:+.3} (paired t test p = {:.4}, materiality {MATERIALITY})",
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
            samples: scores.iter().enumerate().map(|(i, &s)| (format!("s{i}"), s, 1.0)).collect(),
        }
    }

    #[test]
    fn noise_passes_and_real_changes_fail() {
        let base = golden(&[1.0, 0.0, 1.0, 1.0, 0.5, 0.25, 0.75, 1.0]);
        assert_eq!(check(&base, &base), Verdict::Same);
        let noisy = golden(&[1.0, 0.0, 1.0, 1.0, 0.5001, 0.2499, 0.75, 1.0]);
        assert_eq!(check(&noisy, &base), Verdict::Same);
        let worse = golden(&[0.5, 0.0, 0.5, 0.6, 0.1, 0.0, 0.3, 0.4]);
        assert!(matches!(check(&worse, &base), Verdict::Changed(_)));
        let mut reconfigured = base.clone();
        reconfigured.settings = serde_json::json!({ "bits": 4 });
        assert!(matches!(check(&reconfigured, &base), Verdict::Changed(_)));
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
