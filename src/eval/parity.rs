//! Parity with NVIDIA kvpress: which prompt positions each token method keeps (which key channels,
//! for ThinK), beside what kvpress's own press keeps on the same tensors.
//!
//! The tensors are the default tier's recorded attention probes (one layer's post-RoPE queries,
//! keys and values of one sample a task, `src/trace/probe.rs`). `cargo xtask kvpress-parity`
//! exports them, runs each press's own `compress` on them (`xtask/py/kvpress_parity.py`; the
//! attention weights a press reads are computed from the recorded queries, so no press needs the
//! model) and commits what each keeps per kv head as a [`Fixture`]
//! (`tests/data/kvpress_parity.json`). `bench::parity::check` replays kvbench's methods on the
//! same probes (the traces are the bench layer's) and [`compare`]s, with no Python:
//! `tests/kvpress_parity.rs` fails when a case must match and does not.
//!
//! A case says how kvpress was configured ([`Expect`]):
//! - [`Expect::Same`]: kvpress set to kvbench's documented settings (window, kernel, pooling,
//!   sinks, the budget's rounding), so the positions must be identical per kv head;
//! - [`Expect::Nested`]: kvpress's scores with kvbench's, but its own budget rule (PyramidKV's
//!   layer budgets): the smaller kept set must lie inside the larger, per kv head;
//! - [`Expect::Overlap`]: kvpress as it ships (its defaults), to show how far kvbench's documented
//!   choices move the selection; reported, not asserted (the method's module doc says why).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The committed fixture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fixture {
    /// The kvpress version the cases were made with.
    pub kvpress: String,
    /// Per task's probe.
    pub tasks: Vec<TaskCases>,
}

/// One task's probe and its cases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskCases {
    /// The task.
    pub task: String,
    /// The probed sample's id.
    pub sample: String,
    /// The model layer probed.
    pub layer: usize,
    /// Prompt tokens.
    pub prompt: usize,
    /// Each press run.
    pub cases: Vec<Case>,
    /// kvpress's DuoAttention score of each of the layer's kv heads (its on-the-fly scoring, on
    /// the probe's queries and keys): what kvbench's `duoattention::reach` must reproduce.
    #[serde(default)]
    pub duo_reach: Vec<f32>,
}

/// One press on one probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// The kvbench method it is compared with (`snapkv-4x`).
    pub method: String,
    /// How kvpress was configured, in words (`SnapKVPress(window_size=32, kernel_size=7), max-pool`).
    pub press: String,
    /// What the comparison must show.
    pub expect: Expect,
    /// Per kv head, the ascending positions kvpress kept.
    pub kept: Vec<Vec<u32>>,
    /// Per kv head, the positions kvpress scored as its lowest kept one, to a relative 1e-5 (kept
    /// or not): where any top-k may choose either way (max-pooling makes exact ties by
    /// construction; kvbench sums the same float32 terms in another order).
    #[serde(default)]
    pub ties: Vec<Vec<u32>>,
    /// Whether the press ranks (head, position) pairs across the layer (AdaKV, ChunkKV): then a
    /// tie may be split between heads differently, and only its total must match.
    #[serde(default)]
    pub layer_wide: bool,
    /// Positions a press keeps together (ChunkKV's chunk; 1 otherwise): a tie is counted in
    /// these units, since a chunk of the tie may be shorter than another.
    #[serde(default = "one")]
    pub unit: u32,
    /// What `kept` lists: prompt positions, or the key channels ThinK keeps.
    #[serde(default)]
    pub of: Kept,
}

fn one() -> u32 {
    1
}

/// What a [`Case`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kept {
    /// Prompt positions ([`crate::kv::LayerStore::held`]).
    #[default]
    Positions,
    /// Key channels ([`crate::kv::LayerStore::key_channels`]).
    KeyChannels,
}

/// What a [`Case`] must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Identical positions per kv head.
    Same,
    /// One kept set inside the other, per kv head.
    Nested,
    /// Reported only.
    Overlap,
}

/// A case compared.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The task.
    pub task: String,
    /// The kvbench method.
    pub method: String,
    /// The press, in words.
    pub press: String,
    /// What it had to show.
    pub expect: Expect,
    /// Positions kvpress kept, summed over kv heads.
    pub theirs: usize,
    /// Positions kvbench kept, summed over kv heads.
    pub ours: usize,
    /// Kept by both, summed over kv heads.
    pub shared: usize,
    /// Whether the expectation holds.
    pub holds: bool,
}

impl Outcome {
    /// Shared positions over the union's (Jaccard), summed over kv heads.
    pub fn jaccard(&self) -> f64 {
        self.shared as f64 / (self.theirs + self.ours - self.shared).max(1) as f64
    }
}

/// Compare `case` with `ours`, kvbench's kept positions per kv head for the same probe.
pub fn compare(task: &str, case: &Case, ours: &[Vec<u32>]) -> Outcome {
    let sets = |v: &[Vec<u32>]| v.iter().map(|h| h.iter().copied().collect::<BTreeSet<u32>>()).collect::<Vec<_>>();
    let (theirs_sets, ours_sets) = (sets(&case.kept), sets(ours));
    let mut ties = sets(&case.ties);
    ties.resize(theirs_sets.len(), BTreeSet::new());
    let heads_match = theirs_sets.len() == ours_sets.len();
    let shared = theirs_sets.iter().zip(&ours_sets).map(|(a, b)| a.intersection(b).count()).sum();
    let untied = |s: &BTreeSet<u32>, t: &BTreeSet<u32>| s.difference(t).copied().collect::<BTreeSet<u32>>();
    let unit = case.unit.max(1);
    let from_tie = |s: &[BTreeSet<u32>]| {
        let units = |s: &BTreeSet<u32>, t: &BTreeSet<u32>| s.intersection(t).map(|p| p / unit).collect::<BTreeSet<_>>();
        s.iter().zip(&ties).map(|(s, t)| units(s, t).len()).collect::<Vec<_>>()
    };
    let (theirs_tie, ours_tie) = (from_tie(&theirs_sets), from_tie(&ours_sets));
    let tie_taken = if case.layer_wide {
        theirs_tie.iter().sum::<usize>() == ours_tie.iter().sum::<usize>()
    } else {
        theirs_tie == ours_tie
    };
    let holds = heads_match
        && theirs_sets.iter().zip(&ours_sets).zip(&ties).all(|((a, b), t)| match case.expect {
            // the same outside the tie, and as many from it
            Expect::Same => untied(a, t) == untied(b, t) && tie_taken,
            // the smaller inside the larger, up to the tie
            Expect::Nested => {
                let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
                untied(small, t).is_subset(large)
            }
            Expect::Overlap => true,
        });
    Outcome {
        task: task.to_string(),
        method: case.method.clone(),
        press: case.press.clone(),
        expect: case.expect,
        theirs: theirs_sets.iter().map(BTreeSet::len).sum(),
        ours: ours_sets.iter().map(BTreeSet::len).sum(),
        shared,
        holds,
    }
}

/// The markdown table of `outcomes`, one row per (method, press), pooled over tasks.
pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for o in outcomes {
        if !keys.contains(&(o.method.as_str(), o.press.as_str())) {
            keys.push((&o.method, &o.press));
        }
    }
    let mut s = String::from(
        "| kvbench | kvpress press | must | tasks identical | kept: kvpress / kvbench | shared (Jaccard) | holds |\n\
         |---|---|---|---:|---:|---:|---|\n",
    );
    for (method, press) in keys {
        let rows: Vec<&Outcome> = outcomes.iter().filter(|o| o.method == method && o.press == press).collect();
        let identical = rows.iter().filter(|o| o.shared == o.theirs && o.shared == o.ours).count();
        let (theirs, ours, shared) = rows.iter().fold((0, 0, 0), |a, o| (a.0 + o.theirs, a.1 + o.ours, a.2 + o.shared));
        let jaccard = shared as f64 / (theirs + ours - shared).max(1) as f64;
        let must = match rows[0].expect {
            Expect::Same => "same",
            Expect::Nested => "nested",
            Expect::Overlap => "(report)",
        };
        let holds = if rows.iter().all(|o| o.holds) { "yes" } else { "**no**" };
        s.push_str(&format!(
            "| `{method}` | {press} | {must} | {identical}/{} | {theirs} / {ours} | {jaccard:.3} | {holds} |\n",
            rows.len()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: Expect, kept: Vec<Vec<u32>>) -> Case {
        Case {
            method: "m-2x".into(),
            press: "P".into(),
            expect,
            kept,
            ties: Vec::new(),
            layer_wide: false,
            unit: 1,
            of: Kept::Positions,
        }
    }

    #[test]
    fn each_expectation_can_fail() {
        let ours = vec![vec![0, 1, 2], vec![3, 4]];
        assert!(compare("t", &case(Expect::Same, vec![vec![0, 1, 2], vec![3, 4]]), &ours).holds);
        assert!(!compare("t", &case(Expect::Same, vec![vec![0, 1, 2], vec![3, 5]]), &ours).holds);
        assert!(compare("t", &case(Expect::Nested, vec![vec![0, 1], vec![2, 3, 4]]), &ours).holds);
        assert!(!compare("t", &case(Expect::Nested, vec![vec![0, 5], vec![3, 4]]), &ours).holds);
        // within a tie kvbench may choose other positions, as many
        let tied = Case { ties: vec![vec![2, 5], vec![]], ..case(Expect::Same, vec![vec![0, 1, 5], vec![3, 4]]) };
        assert!(compare("t", &tied, &ours).holds);
        let short =
            Case { ties: vec![vec![1, 2, 5], vec![]], ..case(Expect::Same, vec![vec![0, 1, 2, 5], vec![3, 4]]) };
        assert!(!compare("t", &short, &ours).holds);
        // a different number of kv heads never holds
        assert!(!compare("t", &case(Expect::Overlap, vec![vec![0, 1, 2]]), &ours).holds);
        let o = compare("t", &case(Expect::Overlap, vec![vec![0, 1], vec![3, 9]]), &ours);
        assert_eq!((o.theirs, o.ours, o.shared), (4, 5, 3));
        assert!((o.jaccard() - 0.5).abs() < 1e-12);
    }
}
