//! Stopping a trial once its verdict against the full cache is known: a group-sequential design.
//!
//! A configuration's trial on the full tier exists to answer one question: does it score
//! differently from `full` on this task? When it loses the needle on 18 of its first 20 samples
//! the answer is in, and the other 80 samples (the most expensive part of the matrix: ~8k-token
//! prefills) cannot change it. The design:
//!
//! - **Looks.** After [`Design::floor`] samples, and every [`Design::every`] samples after that,
//!   while fewer than the trial's `n_max` have run, the paired test of [`super::paired::compare`]
//!   (exact McNemar on 0/1 scores, paired t otherwise) is run on the samples so far against the
//!   full cache's recorded score of the same samples (the trace's `reference_score`, which `full`
//!   reproduces).
//! - **Levels.** Each look spends [`Design::alpha_look`] of the level and the last analysis (all
//!   `n_max` samples) gets what is left, [`Design::final_alpha`]: by the union bound the design
//!   rejects "no difference" falsely with probability at most [`Design::alpha`], however the
//!   looks are correlated (Bonferroni over the looks; `xtask sequential` checks the rate by
//!   simulation on the committed results). Its p-value ([`Design::adjusted_p`]) goes into the
//!   report's Holm correction across the task's [`Design::family`] configurations.
//! - **Stop for a difference** when a look's p-value is below `alpha_look / family`: then the
//!   design's p-value is below `alpha / family`, which Holm's correction rejects whatever the
//!   other configurations show, so the report's mark cannot change with more samples. (A look
//!   at `alpha_look` alone stopped trials whose difference, at 20 samples, then failed Holm's
//!   correction across 47 configurations: 19 of synthetic's 39 stops on 2026-12-01.)
//! - **Stop when the last analysis cannot reject** (deterministic curtailment): if no outcome of
//!   the samples still to run could bring the final p-value under [`Design::final_alpha`], they
//!   are not run. This costs no error at all: the verdict is the one the full run would give.
//! - **Never** for `full` itself, nor below the floor: the report keeps `full`'s denominators,
//!   and every configuration is measured on at least the first [`Design::floor`] samples.
//!
//! [`Design::adjusted_p`] is the design's p-value for the report's Holm correction: the smallest
//! level at which the design, its per-look levels scaled alike, would have rejected.
//!
//! There is no stop for "indistinguishable": the report's ±5-point equivalence needs n ≥ 59 even
//! at a fixed n, and an anytime-valid version needs more than the full tier's 60 to 100
//! samples, so configurations that match `full` run to the end.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::paired::{self, mcnemar};
use crate::tasks::rng::Rng;

/// A group-sequential design (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Design {
    /// Samples every configuration runs before the first look.
    pub floor: usize,
    /// Samples between looks.
    pub every: usize,
    /// The level each interim look spends.
    pub alpha_look: f64,
    /// The design's level over all its analyses.
    pub alpha: f64,
    /// The configurations whose p-values the report corrects together (a task's, but `full`).
    /// Results of the design's first version, which stopped at `alpha_look` alone, have none:
    /// they read as a family of one.
    #[serde(default = "one")]
    pub family: usize,
}

fn one() -> usize {
    1
}

/// The full tier's design: looks at 20, 30, …, each spending 0.05%, stopping below 0.05% over
/// the matrix's configurations; a 100-sample trial's last analysis runs at 4.6%, a 60-sample
/// one's at 4.8%.
pub fn full_tier() -> Design {
    let family = crate::kv::methods::all_at(&super::RATIOS).len() - 1;
    Design { floor: 20, every: 10, alpha_look: 0.0005, alpha: super::stats::ALPHA, family }
}

/// Why a trial stopped before its last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A look rejected "no difference from full".
    Differs,
    /// No outcome of the samples left could make the last analysis reject.
    CannotReject,
}

/// A trial's stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// Samples run.
    pub at: usize,
    /// Why.
    pub reason: Reason,
    /// The look's p-value.
    pub p: f64,
}

/// What a sequential trial records: its design, its `n_max`, and where it stopped (`None`: it
/// ran every sample).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sequential {
    /// The design.
    pub design: Design,
    /// The trace's samples.
    pub of: usize,
    /// Where it stopped.
    pub stopped: Option<Stop>,
}

/// The design a trial of `method` runs under in a run with `stopping`: none for `full`, whose
/// every sample the others are compared with.
pub fn for_method(stopping: Option<Design>, method: &str) -> Option<Design> {
    stopping.filter(|_| method != "full")
}

impl Design {
    /// The interim looks of a trial of `n_max` samples: `floor`, `floor + every`, … below `n_max`.
    pub fn looks(&self, n_max: usize) -> impl Iterator<Item = usize> + '_ {
        (self.floor..n_max).step_by(self.every.max(1))
    }

    /// The level left for the analysis of all `n_max` samples.
    pub fn final_alpha(&self, n_max: usize) -> f64 {
        (self.alpha - self.alpha_look * self.looks(n_max).count() as f64).max(0.0)
    }

    /// After the first `method.len()` samples (scores of the configuration and of `full`, in
    /// the trace's order) of `n_max`: whether to stop, and why. Only looks decide.
    pub fn decide(&self, method: &[f64], full: &[f64], n_max: usize) -> Option<Stop> {
        let n = method.len();
        if n >= n_max || !self.looks(n_max).any(|look| look == n) {
            return None;
        }
        let p = paired::compare(method, full).p;
        if p < self.alpha_look / self.family.max(1) as f64 {
            return Some(Stop { at: n, reason: Reason::Differs, p });
        }
        (!can_reject(method, full, n_max, self.final_alpha(n_max))).then_some(Stop {
            at: n,
            reason: Reason::CannotReject,
            p,
        })
    }

    /// The design's p-value from the samples a trial ran (the first `method.len()` of
    /// `n_max`): the minimum over the analyses it made of their p-value scaled by
    /// `alpha / level`, so that it is below `alpha` exactly when the design rejected.
    pub fn adjusted_p(&self, method: &[f64], full: &[f64], n_max: usize) -> f64 {
        let n = method.len();
        let mut analyses: Vec<(usize, f64)> =
            self.looks(n_max).filter(|&look| look <= n).map(|look| (look, self.alpha_look)).collect();
        if n >= n_max {
            analyses.push((n_max, self.final_alpha(n_max)));
        }
        analyses
            .into_iter()
            .map(|(k, level)| paired::compare(&method[..k], &full[..k]).p * self.alpha / level)
            .fold(1.0, f64::min)
            .min(1.0)
    }
}

/// What the design concludes on one trial's complete scores (configuration and `full`, in the
/// trace's order), run look by look: whether it rejects "no difference" at its level (its
/// p-value over the analyses it made below `alpha`), after how many samples.
pub fn run(design: &Design, method: &[f64], full: &[f64]) -> (bool, usize) {
    let n_max = method.len();
    let used = design
        .looks(n_max)
        .find(|&look| design.decide(&method[..look], &full[..look], n_max).is_some())
        .unwrap_or(n_max);
    (design.adjusted_p(&method[..used], &full[..used], n_max) < design.alpha, used)
}

/// Error rates and cost of the design by simulation on one trial's scores, against the fixed-n
/// test at [`Design::alpha`]: `replicates` draws of each of two worlds.
///
/// - **Null**: each pair's two scores swapped with probability ½ (the configuration and `full`
///   exchangeable, so "no difference" holds, with this trial's own kinds of disagreement).
/// - **As observed**: the pairs resampled with replacement (the trial's own difference, whatever
///   it is, is the truth).
pub fn simulate(design: &Design, method: &[f64], full: &[f64], replicates: usize, rng: &mut Rng) -> Simulated {
    let n = method.len();
    let mut out = Simulated { replicates, ..Simulated::default() };
    let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..replicates {
        for i in 0..n {
            let swap = rng.next_u64() >> 63 == 1;
            (a[i], b[i]) = if swap { (full[i], method[i]) } else { (method[i], full[i]) };
        }
        let (rejected, used) = run(design, &a, &b);
        out.null_sequential += usize::from(rejected);
        out.null_fixed += usize::from(paired::compare(&a, &b).p < design.alpha);
        out.null_samples += used;
        for i in 0..n {
            let j = rng.below(n);
            (a[i], b[i]) = (method[j], full[j]);
        }
        let (rejected, used) = run(design, &a, &b);
        out.observed_sequential += usize::from(rejected);
        out.observed_fixed += usize::from(paired::compare(&a, &b).p < design.alpha);
        out.observed_samples += used;
    }
    out
}

/// Counts from [`simulate`] (sums over its replicates, and over trials with `+=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Simulated {
    /// Replicates of each world.
    pub replicates: usize,
    /// Null draws the design rejected (false rejections).
    pub null_sequential: usize,
    /// Null draws the fixed-n test rejected.
    pub null_fixed: usize,
    /// Samples the design ran over the null draws.
    pub null_samples: usize,
    /// Resampled draws the design rejected.
    pub observed_sequential: usize,
    /// Resampled draws the fixed-n test rejected.
    pub observed_fixed: usize,
    /// Samples the design ran over the resampled draws.
    pub observed_samples: usize,
}

impl std::ops::AddAssign for Simulated {
    fn add_assign(&mut self, other: Self) {
        self.replicates += other.replicates;
        self.null_sequential += other.null_sequential;
        self.null_fixed += other.null_fixed;
        self.null_samples += other.null_samples;
        self.observed_sequential += other.observed_sequential;
        self.observed_fixed += other.observed_fixed;
        self.observed_samples += other.observed_samples;
    }
}

/// Whether some outcome of the `n_max − n` samples not yet run could make the paired test of
/// all `n_max` reject at `level`. Binary scores: the remaining samples all discordant one way
/// (the McNemar p-value only falls as discordance one way grows). Any scores in [0, 1]: a bound
/// on |t| over every completion, from |mean| ≤ (|Σd| + r)/N and a spread about the overall
/// mean no smaller than the first samples' about their own. Either test passing keeps the
/// trial going.
fn can_reject(method: &[f64], full: &[f64], n_max: usize, level: f64) -> bool {
    let n = method.len();
    let r = (n_max - n) as u64;
    let binary = |xs: &[f64]| xs.iter().all(|&x| x == 0.0 || x == 1.0);
    let d: Vec<f64> = method.iter().zip(full).map(|(a, b)| a - b).collect();
    if binary(method) && binary(full) {
        let better = d.iter().filter(|&&x| x > 0.0).count() as u64;
        let worse = d.iter().filter(|&&x| x < 0.0).count() as u64;
        if mcnemar(better + r, worse) < level || mcnemar(better, worse + r) < level {
            return true;
        }
        // (and, should a later score not be 0 or 1, the t test below)
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let ss = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    if ss == 0.0 || n_max < 2 {
        return true;
    }
    let big_n = n_max as f64;
    let mean_bound = (d.iter().sum::<f64>().abs() + r as f64) / big_n;
    let se_floor = (ss / (big_n - 1.0) / big_n).sqrt();
    let t_bound = mean_bound / se_floor;
    let critical = StudentsT::new(0.0, 1.0, big_n - 1.0).expect("n ≥ 2").inverse_cdf(1.0 - level / 2.0);
    t_bound >= critical
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full tier's design, for one configuration alone.
    const FULL_TIER: Design = Design { floor: 20, every: 10, alpha_look: 0.0005, alpha: 0.05, family: 1 };

    #[test]
    fn looks_and_levels_follow_the_design() {
        let looks: Vec<usize> = FULL_TIER.looks(100).collect();
        assert_eq!(looks, [20, 30, 40, 50, 60, 70, 80, 90]);
        assert_eq!(FULL_TIER.looks(60).collect::<Vec<_>>(), [20, 30, 40, 50]);
        assert!((FULL_TIER.final_alpha(100) - 0.046).abs() < 1e-12);
        assert!((FULL_TIER.final_alpha(60) - 0.048).abs() < 1e-12);
        assert_eq!(FULL_TIER.looks(20).count(), 0, "a trace at the floor has no interim look");
        assert!((FULL_TIER.final_alpha(3) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_clear_loss_stops_at_the_first_look_and_only_there() {
        // 14 of 20 needles lost, none gained: p = 2·2⁻¹⁴ = 1.2e-4 < 5e-4
        let full = [1.0; 20];
        let mut method = [1.0; 20];
        method[..14].fill(0.0);
        let stop = FULL_TIER.decide(&method, &full, 100).expect("stops");
        assert_eq!((stop.at, stop.reason), (20, Reason::Differs));
        assert!((stop.p - 2.0 * 0.5f64.powi(14)).abs() < 1e-12);
        assert_eq!(FULL_TIER.decide(&method[..19], &full[..19], 100), None, "19 is not a look");
        // 10 lost: p = 2·2⁻¹⁰ = 0.00195, not below 5e-4: go on
        let mut some = [1.0; 20];
        some[..10].fill(0.0);
        assert_eq!(FULL_TIER.decide(&some, &full, 100), None);
    }

    #[test]
    fn a_stop_is_one_the_correction_across_the_family_keeps() {
        // the matrix's configurations but full (F): a look stops below 0.0005/F. 14 of 20 lost
        // (p = 1.2e-4) goes on; 19 of 20 (p = 2·2⁻¹⁹ = 3.8e-6) stops while F ≤ 131, and its design
        // p (3.8e-4) is then below 0.05/F, Holm's strictest step
        let design = full_tier();
        assert_eq!(design.family, crate::kv::methods::all_at(&crate::bench::RATIOS).len() - 1);
        assert!(design.family <= 131, "the example's 19 of 20 would no longer stop");
        let full = [1.0; 20];
        let mut method = [1.0; 20];
        method[..14].fill(0.0);
        assert_eq!(design.decide(&method, &full, 100), None);
        method[..19].fill(0.0);
        let stop = design.decide(&method, &full, 100).expect("stops");
        assert_eq!((stop.at, stop.reason), (20, Reason::Differs));
        assert!(design.adjusted_p(&method, &full, 100) < design.alpha / design.family as f64);
    }

    #[test]
    fn a_design_recorded_before_families_reads_as_a_family_of_one() {
        let old: Design = serde_json::from_str(r#"{"floor":20,"every":10,"alpha_look":0.0005,"alpha":0.05}"#).unwrap();
        assert_eq!(old, FULL_TIER);
    }

    #[test]
    fn the_adjusted_p_scales_each_analysis_by_its_level() {
        let full = [1.0; 20];
        let mut method = [1.0; 20];
        method[..14].fill(0.0);
        let p = FULL_TIER.adjusted_p(&method, &full, 100);
        assert!((p - 2.0 * 0.5f64.powi(14) * 100.0).abs() < 1e-12, "{p}");
        // ran to the end with 8 of 100 lost, none gained at any look before 90 … the last
        // analysis decides: p_final·0.05/0.046
        let full = [1.0; 100];
        let mut method = [1.0; 100];
        method[92..].fill(0.0);
        let p_final = mcnemar(0, 8);
        let p = FULL_TIER.adjusted_p(&method, &full, 100);
        assert!((p - p_final * 0.05 / 0.046).abs() < 1e-12, "{p} vs {p_final}");
    }

    #[test]
    fn curtailment_only_when_no_completion_could_reject() {
        // 60 samples, 50 run, 1 better and 1 worse: 10 left all worse gives McNemar(1, 11)
        // = 2·13/4096 = 0.0063 < 0.048: can still reject
        let full = [0.0; 50];
        let mut method = [0.0; 50];
        method[0] = 1.0;
        let mut full_b = full;
        full_b[1] = 1.0;
        assert!(can_reject(&method, &full_b, 60, 0.048));
        // 20 of 100 run with 5 better and 5 worse, 80 left: can reject (all 80 one way)
        let mut m = [0.0; 20];
        let mut f = [0.0; 20];
        m[..5].fill(1.0);
        f[5..10].fill(1.0);
        assert!(can_reject(&m, &f, 100, 0.046));
        // 90 of 100 run, 20 better and 20 worse: McNemar(20, 30) = 0.203 > 0.046: cannot
        let mut m = [0.0; 90];
        let mut f = [0.0; 90];
        m[..20].fill(1.0);
        f[20..40].fill(1.0);
        assert!(!can_reject(&m, &f, 100, 0.046));
        assert_eq!(FULL_TIER.decide(&m, &f, 100).map(|s| s.reason), Some(Reason::CannotReject));
    }

    #[test]
    fn the_design_holds_its_level_under_the_null_by_simulation() {
        // binary scores, 30 of 100 samples discordant; continuous ones, differences spread
        // over the unit interval: swaps make the null; the false rejections must stay under the
        // level (5%) but for Monte Carlo error (3 standard errors of 4,000 draws: 1.0 point)
        let mut rng = Rng::from_state(7);
        let full: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i % 2 == 0))).collect();
        let method: Vec<f64> = full.iter().enumerate().map(|(i, &f)| if i < 30 { 1.0 - f } else { f }).collect();
        let cont_full: Vec<f64> = (0..60).map(|i| (i as f64 * 0.37).fract()).collect();
        let cont: Vec<f64> = (0..60).map(|i| (i as f64 * 0.61).fract()).collect();
        for (m, f) in [(&method, &full), (&cont, &cont_full)] {
            let sim = simulate(&FULL_TIER, m, f, 4000, &mut rng);
            let rate = sim.null_sequential as f64 / 4000.0;
            assert!(rate <= 0.05 + 3.0 * (0.05f64 * 0.95 / 4000.0).sqrt(), "false rejections {rate}");
            assert!(sim.null_samples < 4000 * m.len(), "curtailment or a stop saves something");
        }
        // a real loss (20 of 100 needles) is found as often as the fixed test finds it, sooner:
        // each look needs 12 losses all one way (2·2⁻¹² < 0.0005), on average after ~64 samples
        let lost: Vec<f64> = (0..100).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let sim = simulate(&FULL_TIER, &lost, &[1.0; 100], 1000, &mut rng);
        assert!(sim.observed_sequential >= 990 && sim.observed_fixed >= 990, "{sim:?}");
        assert!(sim.observed_samples < 1000 * 75, "{sim:?}");
    }

    #[test]
    fn the_continuous_bound_is_never_below_a_real_completion() {
        // every completion tried (all −1, all +1, all 0, alternating) has |t| within the bound
        let method = [0.2, 0.5, 0.1, 0.9, 0.4, 0.3];
        let full = [0.3, 0.4, 0.4, 0.6, 0.5, 0.3];
        let n_max = 10;
        for fill in [[-1.0; 4], [1.0; 4], [0.0; 4], [1.0, -1.0, 1.0, -1.0], [0.5; 4]] {
            let mut d: Vec<f64> = method.iter().zip(&full).map(|(a, b)| a - b).collect();
            d.extend(fill);
            let (m, z): (Vec<f64>, Vec<f64>) = d.iter().map(|&x| (x, 0.0)).unzip();
            let p = paired::compare(&m, &z).p;
            if p < 0.05 {
                assert!(can_reject(&method, &full, n_max, 0.05), "a completion with p = {p} was ruled out");
            }
        }
    }
}
