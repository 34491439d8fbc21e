//! `snapkv-Nx`: after prefill, keep the tokens the prompt's last queries attend to.
//!
//! Paper: Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
//! (arXiv 2404.14469). Reference implementations: FasterDecoding/SnapKV (`snapkv_utils.py`) and
//! NVIDIA kvpress (`SnapKVPress`). Settings: observation **window of the last 32 prompt tokens**
//! (the paper's default); a prefix token's score is the attention the window's queries give it,
//! summed over the window and over the query heads of its kv head (GQA: selection per kv head),
//! then **max-pooled with kernel 7** (stride 1, same padding) so that neighbours of a hit are kept
//! with it; the top `budget − 32` prefix tokens per kv head are kept, plus the window itself (a
//! budget under 32 tokens keeps the window's latest `budget`).
//!
//! Against kvpress's `SnapKVPress` on the recorded probes (`cargo xtask kvpress-parity`,
//! docs/METHODS.md): set to these settings, kvpress keeps the same positions up to exact ties of
//! the pooled score (which max-pooling makes by construction). As it ships it differs in three
//! choices, which move a quarter to half of the kept prefix: window 64, average-pooling over 5,
//! and pooling each query head before averaging its kv head's group (here the group's summed
//! score is pooled once).
//! Compression happens once, when prefill ends; decode tokens are then appended without eviction,
//! as in the paper.
//!
//! `snapkv-wide-Nx` (outside the trial matrix, for measuring this one choice) pools with kernel
//! **15** instead: SmolLM2 gives every digit its own token, and a hit on the first digit of a
//! 7-digit number spreads over the next three digits only with kernel 7 (docs/METHODS.md, "Numbers
//! are many tokens").

use serde_json::json;

use crate::kv::attention::{self, Queries};
use crate::kv::evict::top_with_protected;
use crate::kv::method::StoreContext;
use crate::kv::oneshot::Selector;
use crate::kv::prefill::{FullStore, OBSERVATION_WINDOW};

/// Max-pooling kernel over token scores.
pub const POOL_KERNEL: usize = 7;

/// The `snapkv-wide` variant's kernel: a hit on a 7-digit number's first digit reaches its last.
pub const WIDE_POOL_KERNEL: usize = 15;

/// SnapKV's selection (`snapkv-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<SnapKv>`).
#[derive(Debug, Clone, Copy)]
pub struct SnapKv {
    /// The pooling kernel.
    pub pooling: Pooling,
}

/// SnapKV's max-pooling kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// [`POOL_KERNEL`], the reference's (`snapkv-Nx`).
    Reference,
    /// [`WIDE_POOL_KERNEL`] (`snapkv-wide-Nx`).
    Wide,
}

impl Pooling {
    /// The kernel's width in tokens (odd).
    pub fn kernel(self) -> usize {
        match self {
            Self::Reference => POOL_KERNEL,
            Self::Wide => WIDE_POOL_KERNEL,
        }
    }
}

impl Selector for SnapKv {
    fn family(&self) -> &'static str {
        match self.pooling {
            Pooling::Reference => "snapkv",
            Pooling::Wide => "snapkv-wide",
        }
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "window": OBSERVATION_WINDOW, "pooling": "max", "kernel": self.pooling.kernel(),
                "selection": "per-kv-head" })
    }

    fn description(&self) -> &'static str {
        "keeps the tokens the last prompt queries (an observation window) attend to most, max-pooled, per kv head, with the window itself"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        select(prefill, budget, self.pooling.kernel())
    }
}

/// Per kv head, which prefill tokens SnapKV keeps at `budget`, pooling with `kernel`: the top
/// `budget` of [`scores`], so the window first (its latest tokens, if the budget is smaller),
/// then the prefix by pooled attention.
pub fn select(prefill: &FullStore, budget: usize, kernel: usize) -> Vec<Vec<bool>> {
    let shape = prefill.shape();
    let n = prefill.keys(0).len() / shape.head_dim;
    match scores(prefill, kernel) {
        // nothing to drop, or no queries observed to choose by (a prefill always leaves some)
        Some(scores) if n > budget => scores.iter().map(|s| top_with_protected(s, budget, |_| false)).collect(),
        _ => vec![vec![true; n]; shape.kv_heads],
    }
}

/// Per kv head, SnapKV's score of every prefill token, as kvpress's `SnapKVPress.score` hands it
/// to the presses that wrap a scorer (AdaKV, ChunkKV): the pooled attention mass of the prefix,
/// and the observation window above the highest prefix score of any head, so that no selection
/// drops it while the budget allows. `None` when no query was observed (a prefill always leaves some).
pub fn scores(prefill: &FullStore, kernel: usize) -> Option<Vec<Vec<f32>>> {
    let shape = prefill.shape();
    let width = shape.heads * shape.head_dim;
    let n = prefill.keys(0).len() / shape.head_dim;
    let window = (prefill.recent_queries().len() / width).min(n);
    if window == 0 {
        return None;
    }
    let queries = &prefill.recent_queries()[prefill.recent_queries().len() - window * width..];
    let mut mass = vec![vec![0.0f32; n]; shape.kv_heads];
    let mut out = vec![0.0f32; window * width];
    attention::attend_observed(
        shape,
        Queries::new(queries, width, window),
        &prefill.views(),
        &mut out,
        Some(&mut mass),
    );
    let mut scores: Vec<Vec<f32>> = mass.iter().map(|m| max_pool(&m[..n - window], kernel)).collect();
    let top = scores.iter().flatten().copied().fold(0.0f32, f32::max) + 1.0;
    // kvpress gives the whole window `top`; rising by one a token, a budget below the window
    // keeps its latest tokens, as `select` does, where kvpress's top-k chooses among a tie
    scores.iter_mut().for_each(|s| s.extend((0..window).map(|j| top + j as f32)));
    Some(scores)
}

/// Max over a centred window of `kernel` (odd) entries, clipped at the ends.
pub fn max_pool(x: &[f32], kernel: usize) -> Vec<f32> {
    let r = kernel / 2;
    (0..x.len())
        .map(|i| x[i.saturating_sub(r)..(i + r + 1).min(x.len())].iter().copied().fold(f32::MIN, f32::max))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::LayerStore;
    use crate::kv::attention::Heads;

    #[test]
    fn max_pool_spreads_peaks_to_neighbours() {
        let x = [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(max_pool(&x, 7), [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn keeps_the_window_and_what_it_attends_to_per_kv_head() {
        // two kv heads; head 0's window looks at token 10, head 1's at token 50
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: 4 };
        let n = 100;
        let mut keys = vec![0.0f32; n * 8];
        keys[10 * 8..10 * 8 + 4].fill(4.0);
        keys[50 * 8 + 4..50 * 8 + 8].fill(4.0);
        let values = vec![0.0f32; n * 8];
        let mut full = FullStore::new(shape);
        full.append(&keys, &values, n);
        let q = vec![1.0f32; n * 8];
        let mut out = vec![0.0; n * 8];
        full.attend(&q, 8, n, &mut out);
        for kernel in [POOL_KERNEL, WIDE_POOL_KERNEL] {
            let keep = select(&full, 32 + kernel, kernel);
            for (g, hit) in [(0, 10), (1, 50)] {
                let kept: Vec<usize> = (0..n).filter(|&i| keep[g][i]).collect();
                assert_eq!(kept.len(), 32 + kernel);
                let r = kernel / 2;
                let want: Vec<usize> = (hit - r..=hit + r).chain(68..100).collect();
                assert_eq!(kept, want, "kv head {g}, kernel {kernel}");
            }
        }
    }
}
