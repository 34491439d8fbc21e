//! The store of the token-dropping methods: fp16 [`TokenRows`] of the kept tokens, per kv head,
//! plus what the method scores them by, and the rule that evicts after each attention step.
//!
//! Selection is **per kv head** (each of the 3 kv heads keeps its own tokens; the scores of the
//! query heads that share a kv head are summed), the granularity at which GQA lets a cache really
//! free memory; every head keeps the same number of tokens. Eviction happens after attending, so
//! a step's new token is always attended to before it can be dropped; between steps the budget
//! holds exactly.

use super::attention::{Heads, Queries};
use super::rowcode::RowCode;
use super::tokens::TokenRows;
use crate::kv::LayerStore;

/// What happens after each attention step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eviction {
    /// Keep growing (SnapKV, PyramidKV, Knorm compress once, after prefill).
    Never,
    /// Keep the first `sinks` and the most recent `budget − sinks` tokens (StreamingLLM).
    Window {
        /// Attention sinks.
        sinks: usize,
        /// Total tokens kept.
        budget: usize,
    },
    /// Accumulate attention into the scores; keep the `recent` newest and the highest-scoring of
    /// the rest up to `budget` (H2O).
    HeavyHitters {
        /// Total tokens kept.
        budget: usize,
        /// Newest tokens always kept.
        recent: usize,
    },
    /// Scores are the current step's attention; keep the `budget` highest (TOVA).
    Current {
        /// Total tokens kept.
        budget: usize,
        /// One choice for every kv head of the layer, by the scores summed over them (the
        /// original TOVA and kvpress, which average over all query heads), instead of a choice
        /// per kv head. The heads then hold the same positions throughout.
        pooled: bool,
    },
}

impl Eviction {
    fn needs_scores(self) -> bool {
        matches!(self, Self::HeavyHitters { .. } | Self::Current { .. })
    }
}

/// Kept tokens, their scores, and the eviction rule.
#[derive(Debug, Clone)]
pub struct KeptStore {
    rows: TokenRows,
    scores: Vec<Vec<f32>>,
    eviction: Eviction,
    /// Positions the last attention read, per head (for measurement, not part of the cache).
    last_read: Vec<Vec<u32>>,
}

impl KeptStore {
    /// A store over `rows`; `scores` (one per kept row and head) only where the rule uses them.
    pub fn new(rows: TokenRows, scores: Option<Vec<Vec<f32>>>, eviction: Eviction) -> Self {
        let scores = scores.unwrap_or_else(|| rows.heads.iter().map(|h| vec![0.0; h.len()]).collect());
        let mut store = Self { rows, scores, eviction, last_read: Vec::new() };
        store.evict();
        store
    }

    /// Empty storage.
    pub fn empty(shape: Heads, eviction: Eviction) -> Self {
        Self::new(TokenRows::new(shape), None, eviction)
    }

    /// The kept rows.
    pub fn rows(&self) -> &TokenRows {
        &self.rows
    }

    fn evict(&mut self) {
        if let Eviction::Current { pooled: true, .. } = self.eviction {
            // every head holds the same positions (all started from the prefill's and were cut
            // alike), so the sum at an index is the layer's score of one token
            let n = self.scores.first().map_or(0, Vec::len);
            let total: Vec<f32> = (0..n).map(|i| self.scores.iter().map(|s| s[i]).sum()).collect();
            self.scores.iter_mut().for_each(|s| s.clone_from(&total));
        }
        for (head, scores) in self.rows.heads.iter_mut().zip(&mut self.scores) {
            let n = head.len();
            let keep = match self.eviction {
                Eviction::Never => continue,
                Eviction::Window { sinks, budget } => {
                    if n <= budget {
                        continue;
                    }
                    (0..n).map(|i| i < sinks || i >= n - (budget - sinks)).collect()
                }
                Eviction::HeavyHitters { budget, recent } => {
                    if n <= budget {
                        continue;
                    }
                    top_with_protected(scores, budget, |i| i >= n - recent)
                }
                Eviction::Current { budget, .. } => {
                    if n <= budget {
                        continue;
                    }
                    top_with_protected(scores, budget, |_| false)
                }
            };
            head.retain(&keep);
            let mut w = 0;
            for (i, k) in keep.iter().enumerate() {
                if *k {
                    scores[w] = scores[i];
                    w += 1;
                }
            }
            scores.truncate(w);
        }
    }
}

/// Flags keeping every protected index and the highest-scoring others, `k` in all (ties to the
/// older token).
pub fn top_with_protected(scores: &[f32], k: usize, protected: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut keep: Vec<bool> = (0..scores.len()).map(&protected).collect();
    let left = k.saturating_sub(keep.iter().filter(|&&p| p).count());
    let mut others: Vec<usize> = (0..scores.len()).filter(|&i| !keep[i]).collect();
    others.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    others.into_iter().take(left).for_each(|i| keep[i] = true);
    keep
}

impl LayerStore for KeptStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        self.rows.append(keys, values, t);
        self.scores.iter_mut().for_each(|s| s.resize(s.len() + t, 0.0));
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        self.last_read = self.rows.heads.iter().map(|h| h.positions().to_vec()).collect();
        if self.eviction.needs_scores() {
            let mut mass: Vec<Vec<f32>> = self.rows.heads.iter().map(|h| vec![0.0; h.len()]).collect();
            self.rows.attend(Queries::new(q, q_stride, t), out, Some(&mut mass));
            for (s, m) in self.scores.iter_mut().zip(mass) {
                if matches!(self.eviction, Eviction::Current { .. }) {
                    *s = m;
                } else {
                    s.iter_mut().zip(m).for_each(|(s, m)| *s += m);
                }
            }
        } else {
            self.rows.attend(Queries::new(q, q_stride, t), out, None);
        }
        self.evict();
    }

    fn bytes(&self) -> usize {
        let scores = if self.eviction.needs_scores() { self.scores.iter().map(|s| s.len() * 4).sum() } else { 0 };
        self.rows.bytes() + scores
    }

    fn tokens(&self) -> usize {
        self.rows.tokens()
    }

    fn visible(&self, g: usize) -> Option<Vec<u32>> {
        self.last_read.get(g).cloned()
    }

    fn held(&self, g: usize) -> Option<Vec<u32>> {
        let mut positions = self.rows.heads.get(g)?.positions().to_vec();
        positions.sort_unstable();
        Some(positions)
    }

    fn recode(&mut self, code: RowCode) -> bool {
        self.rows.recode(code);
        true
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_with_protected_keeps_protected_then_the_best() {
        let scores = [5.0, 1.0, 3.0, 3.0, 0.0, 9.0];
        let keep = top_with_protected(&scores, 4, |i| i == 4);
        assert_eq!(keep, [true, false, true, false, true, true]);
    }
}
