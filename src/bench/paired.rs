//! A configuration against the full cache, sample by sample: the report's Δ vs full.
//!
//! Every trial of a task replays the same samples, so a configuration and `full` are compared
//! pairwise, which is far more sensitive than comparing their two intervals:
//!
//! - **Δ** is the mean over samples of (configuration − full), with a paired 95% Student's t
//!   interval of the differences (zero wide when every sample scored the same).
//! - **p**: where every score of both is 0 or 1, the exact McNemar test (a two-sided binomial
//!   test on the discordant samples, p = 1 without any); otherwise the paired t test
//!   ([`super::stats::paired_p`]).
//! - **Holm's correction** ([`holm`]) across the configurations of one task: the report marks a
//!   difference that survives it at 5% over the whole task column.
//! - **Indistinguishable from full** ([`Paired::indistinguishable`]): the whole interval lies
//!   within ±[`EQUIVALENCE`], a bound the data must show, not a failure to reject. Samples that all
//!   scored as full's give a zero-wide interval, which shows nothing at small n: the share of
//!   samples that differ could still be up to `1 − 0.05^(1/n)` (95%, none seen; the "rule of
//!   three", about 3/n), so that bound must be within ±[`EQUIVALENCE`] too, which takes n ≥ 59.
//! - **MDE80** ([`mde80`]): the smallest difference a paired test at 5% finds with 80% power at
//!   this n and this spread of differences, `(z₀.₉₇₅ + z₀.₈₀) · sd / √n`: what a task can see.

use serde::Serialize;
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

use super::stats::{LEVEL, paired_p};

/// Half-width (in score units, [0, 1]) of the band a difference must lie within, interval and
/// all, to count as indistinguishable from full: the gate's materiality.
pub const EQUIVALENCE: f64 = super::golden::MATERIALITY;

/// Which test gave [`Paired::p`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairedTest {
    /// Exact McNemar (binary scores).
    McNemar,
    /// Paired Student's t.
    T,
}

/// One configuration against the full cache on one task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    /// Samples.
    pub n: usize,
    /// Mean of configuration − full.
    pub delta: f64,
    /// Lower bound of its 95% interval.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// Standard deviation of the differences.
    pub sd: f64,
    /// Two-sided p-value of "no difference".
    pub p: f64,
    /// The test.
    pub test: PairedTest,
}

impl Paired {
    /// The interval lies within ±[`EQUIVALENCE`], and n is large enough for a difference on
    /// samples not seen to be bounded within it too.
    pub fn indistinguishable(&self) -> bool {
        let unseen = 1.0 - (1.0 - LEVEL).powf(1.0 / self.n.max(1) as f64);
        self.lo >= -EQUIVALENCE && self.hi <= EQUIVALENCE && unseen <= EQUIVALENCE
    }
}

/// `method` against `full`, sample by sample (same samples, same order).
pub fn compare(method: &[f64], full: &[f64]) -> Paired {
    assert_eq!(method.len(), full.len(), "paired samples");
    let n = method.len();
    let d: Vec<f64> = method.iter().zip(full).map(|(a, b)| a - b).collect();
    let delta = d.iter().sum::<f64>() / n.max(1) as f64;
    let sd = if n < 2 { 0.0 } else { (d.iter().map(|x| (x - delta).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
    let half = if n < 2 {
        f64::INFINITY
    } else {
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2").inverse_cdf(1.0 - (1.0 - LEVEL) / 2.0);
        t * sd / (n as f64).sqrt()
    };
    let binary = |xs: &[f64]| xs.iter().all(|&x| x == 0.0 || x == 1.0);
    let (p, test) = if binary(method) && binary(full) {
        let better = d.iter().filter(|&&x| x > 0.0).count() as u64;
        let worse = d.iter().filter(|&&x| x < 0.0).count() as u64;
        (mcnemar(better, worse), PairedTest::McNemar)
    } else {
        (paired_p(method, full), PairedTest::T)
    };
    let (lo, hi) = if half.is_finite() { (delta - half, delta + half) } else { (-1.0, 1.0) };
    Paired { n, delta, lo, hi, sd, p, test }
}

/// The exact McNemar p-value of `b` and `c` discordant pairs: `min(1, 2·P(X ≤ min(b, c)))`,
/// `X ~ Binomial(b + c, ½)`.
pub fn mcnemar(b: u64, c: u64) -> f64 {
    if b + c == 0 {
        return 1.0;
    }
    let tail = Binomial::new(0.5, b + c).expect("p = ½").cdf(b.min(c));
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjusted p-values of `p`, in its order: a hypothesis is rejected at level α
/// over the family when its adjusted value is below α.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// The paired minimum detectable effect at 80% power and two-sided 5%: `(z₀.₉₇₅ + z₀.₈₀)·sd/√n`.
pub fn mde80(sd: f64, n: usize) -> f64 {
    let normal = Normal::standard();
    (normal.inverse_cdf(0.975) + normal.inverse_cdf(0.80)) * sd / (n.max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_a_hand_worked_case() {
        // 1 better, 9 worse: 2·P(X ≤ 1 | 10, ½) = 2·(1 + 10)/1024 = 0.021484375
        assert!((mcnemar(1, 9) - 0.021484375).abs() < 1e-12);
        assert!((mcnemar(9, 1) - 0.021484375).abs() < 1e-12, "two-sided");
        assert_eq!(mcnemar(0, 0), 1.0);
        assert_eq!(mcnemar(3, 3), 1.0);
    }

    #[test]
    fn holm_matches_a_hand_worked_case() {
        // sorted 0.01·4 = 0.04, 0.03·3 = 0.09, 0.04·2 = 0.08 → 0.09 (monotone), 0.5·1 = 0.5
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.5]);
        let want = [0.04, 0.09, 0.09, 0.5];
        assert!(adjusted.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{adjusted:?}");
        // 0.8·2 = 1.6, cut to 1; 0.9·1 = 0.9, raised to 1 (monotone)
        assert_eq!(holm(&[0.9, 0.8]), [1.0, 1.0]);
    }

    #[test]
    fn mde80_matches_a_hand_worked_case() {
        // (1.959964 + 0.841621) · 0.5 / 10 = 0.140079
        assert!((mde80(0.5, 100) - 0.140079).abs() < 1e-6);
    }

    #[test]
    fn binary_scores_use_mcnemar_and_continuous_ones_t() {
        let full = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let worse = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let p = compare(&worse, &full);
        assert_eq!(p.test, PairedTest::McNemar);
        assert!((p.p - 0.25).abs() < 1e-9, "3 discordant, all one way: 2·(1/8), got {}", p.p);
        assert!((p.delta + 0.5).abs() < 1e-12 && p.lo < p.delta && p.hi > p.delta);
        let same = compare(&full, &full);
        assert_eq!((same.delta, same.lo, same.hi, same.p), (0.0, 0.0, 0.0, 1.0));
        assert!(!same.indistinguishable(), "six samples alike show little");
        // 1 − 0.05^(1/59) = 0.0495, 1 − 0.05^(1/58) = 0.0503
        assert!(compare(&[1.0; 59], &[1.0; 59]).indistinguishable());
        assert!(!compare(&[1.0; 58], &[1.0; 58]).indistinguishable());
        let cont = compare(&[0.5, 0.25, 0.75], &[0.5, 0.5, 0.5]);
        assert_eq!(cont.test, PairedTest::T);
        assert!(!cont.indistinguishable(), "three samples cannot show equivalence");
    }
}
