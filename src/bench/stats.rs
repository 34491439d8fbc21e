//! The statistics of a trial: confidence intervals of a task score and the paired test that
//! gates a trial against its golden snapshot.
//!
//! - Scores that are all 0 or 1: Wilson's score interval, which stays inside [0, 1] and behaves
//!   at 0 and n successes where the normal approximation does not. Exact-match metrics always
//!   score so; a continuous metric's cell does when every answer missed (or hit) entirely, and
//!   there Wilson's interval says how little n samples of one value show, where t's would have
//!   zero width. The choice is by the scores, not by the metric.
//! - Continuous scores (F1, ROUGE-L, edit similarity): Student's t interval of the mean, cut to
//!   [0, 1] where every task score lies (so is the mean; cutting keeps the interval's coverage,
//!   and at three samples the raw interval often reaches below 0).
//! - The gate: a paired two-sided t test on per-sample scores, current against golden, plus a
//!   materiality threshold on the mean difference; a trial fails only if the difference is both
//!   significant and material. Identical scores give p = 1.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// A mean with a two-sided 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// Samples.
    pub n: usize,
    /// How the interval was computed.
    pub method: Interval,
}

/// How an [`Estimate`]'s interval was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// Wilson score interval (binary scores).
    Wilson,
    /// Student's t interval (continuous scores).
    T,
}

impl Estimate {
    /// Half the interval's width.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }
}

/// Confidence level of every interval.
pub const LEVEL: f64 = 0.95;

fn z() -> f64 {
    Normal::standard().inverse_cdf(1.0 - (1.0 - LEVEL) / 2.0)
}

/// Wilson's interval for `successes` of `n`.
pub fn wilson(successes: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate { mean: f64::NAN, lo: 0.0, hi: 1.0, n, method: Interval::Wilson };
    }
    let (z, nf) = (z(), n as f64);
    let p = successes as f64 / nf;
    let denom = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    // at 0 or n successes the bound is exactly 0 or 1 (centre = half in exact arithmetic)
    let lo = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if successes == n { 1.0 } else { (centre + half).min(1.0) };
    Estimate { mean: p, lo, hi, n, method: Interval::Wilson }
}

/// Student's t interval of the mean of `xs`.
pub fn t_interval(xs: &[f64]) -> Estimate {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Estimate { mean, lo: f64::NEG_INFINITY, hi: f64::INFINITY, n, method: Interval::T };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2").inverse_cdf(1.0 - (1.0 - LEVEL) / 2.0);
    let half = t * (var / n as f64).sqrt();
    Estimate { mean, lo: mean - half, hi: mean + half, n, method: Interval::T }
}

/// The interval of a task score's mean (every task score lies in [0, 1]): Wilson for scores
/// that are all 0 or 1, t otherwise, cut to [0, 1].
pub fn estimate(scores: &[f64]) -> Estimate {
    debug_assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "task scores lie in [0, 1]: {scores:?}");
    if scores.iter().all(|&s| s == 0.0 || s == 1.0) {
        wilson(scores.iter().filter(|&&s| s == 1.0).count(), scores.len())
    } else {
        let e = t_interval(scores);
        Estimate { lo: e.lo.max(0.0), hi: e.hi.min(1.0), ..e }
    }
}

/// Two-sided p-value of a paired t test of `a` against `b` (same samples, same order).
pub fn paired_p(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "paired samples");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    if n < 2 {
        // one pair has no spread to weigh its difference against: no evidence either way (a
        // model's default tier of one sample, `kvbench replay --samples 1`)
        return 1.0;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var == 0.0 {
        // every sample moved by the same amount: no noise to weigh it against
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = mean / (var / n as f64).sqrt();
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2");
    2.0 * (1.0 - dist.cdf(t.abs()))
}

/// The verdict of the golden gate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gate {
    /// Mean of current minus golden.
    pub difference: f64,
    /// Paired two-sided p-value.
    pub p: f64,
    /// Whether the change is both significant (`p < alpha`) and material (`|difference| ≥ materiality`).
    pub changed: bool,
}

/// Significance level of the gate, over a whole run (`golden::Gate::Statistical` divides it among
/// the run's trials).
pub const ALPHA: f64 = 0.05;

/// Compare per-sample scores with golden ones at level `alpha`.
pub fn gate(current: &[f64], golden: &[f64], materiality: f64, alpha: f64) -> Gate {
    let difference = (current.iter().sum::<f64>() - golden.iter().sum::<f64>()) / current.len().max(1) as f64;
    let p = paired_p(current, golden);
    Gate { difference, p, changed: p < alpha && difference.abs() >= materiality }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_a_hand_worked_case() {
        // 8 of 10, z² = 3.841459: centre = (0.8 + 3.841459/20) / (1 + 3.841459/10) = 0.992073/1.384146
        // = 0.716740; half = 1.959964·√(0.016 + 3.841459/400) / 1.384146 = 1.959964·0.160011/1.384146
        // = 0.226578: [0.490162, 0.943318]
        let e = wilson(8, 10);
        assert!((e.lo - 0.490162).abs() < 1e-5 && (e.hi - 0.943318).abs() < 1e-5, "{e:?}");
        assert_eq!(wilson(0, 5).lo, 0.0);
        assert_eq!(wilson(5, 5).hi, 1.0);
    }

    #[test]
    fn t_interval_matches_a_hand_worked_case() {
        // mean 2.5, s² = 5/3, se = √(5/12) = 0.645497, t(3, 0.975) = 3.182446: half = 2.054260
        let e = t_interval(&[1.0, 2.0, 3.0, 4.0]);
        assert!((e.lo - 0.445740).abs() < 1e-5 && (e.hi - 4.554260).abs() < 1e-5, "{e:?}");
    }

    #[test]
    fn score_intervals_stay_in_the_unit_interval() {
        // mean 0.0896, s = 0.0563: the raw t interval is [−0.050, 0.229]
        let scores = [0.0851, 0.0357, 0.1481];
        let raw = t_interval(&scores);
        assert!(raw.lo < -0.04, "{raw:?}");
        let e = estimate(&scores);
        assert_eq!((e.lo, e.hi, e.mean, e.method), (0.0, raw.hi, raw.mean, Interval::T));
        let high = estimate(&[0.9, 1.0, 0.95, 0.5]);
        assert_eq!(high.hi, 1.0);
        assert!(high.lo > 0.0 && high.lo < high.mean);
        // one sample: t has no interval, the unit interval is what is known
        let one = estimate(&[0.3]);
        assert_eq!((one.lo, one.hi), (0.0, 1.0));
    }

    #[test]
    fn paired_test_and_gate() {
        let golden = [0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.6];
        assert_eq!(paired_p(&golden, &golden), 1.0);
        // a single pair is no evidence, whatever its difference
        assert_eq!(paired_p(&[1.0], &[0.0]), 1.0);
        assert!(!gate(&golden, &golden, 0.02, ALPHA).changed);
        // float noise: tiny, random-signed differences pass
        let noisy: Vec<f64> =
            golden.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { 1e-4 } else { -1e-4 }).collect();
        assert!(!gate(&noisy, &golden, 0.02, ALPHA).changed);
        // a real drop is caught, and so is a real gain
        let worse: Vec<f64> = golden.iter().enumerate().map(|(i, x)| x - 0.2 - 0.01 * i as f64).collect();
        assert!(gate(&worse, &golden, 0.02, ALPHA).changed);
        let better: Vec<f64> = golden.iter().enumerate().map(|(i, x)| x + 0.1 + 0.01 * (i % 3) as f64).collect();
        assert!(gate(&better, &golden, 0.02, ALPHA).changed);
        // d = [1, 2, 3, 4] − 0: mean 2.5, se 0.645497, t = 3.872983 with 3 df: p = 0.030466
        assert!((paired_p(&[1.0, 2.0, 3.0, 4.0], &[0.0; 4]) - 0.030466).abs() < 1e-5);
    }
}
