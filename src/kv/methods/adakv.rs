//! `adakv-Nx`: SnapKV's scores with head-adaptive budgets: the layer's budget is shared by its kv
//! heads, so a head whose attention is concentrated gives tokens to one whose attention is spread.
//!
//! Paper: Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
//! Efficient LLM Inference" (arXiv 2407.11550). Reference implementation: NVIDIA kvpress
//! (`AdaKVPress`, wrapping a `ScorerPress`), which this follows: every kv head first keeps its
//! top `⌊0.2·b⌋` tokens (at least one; kvpress's `alpha_safeguard = 0.2`), then the layer keeps
//! the `kv_heads · b` highest-scoring (head, token) pairs of all, where `b` is the per-head
//! budget. The scorer is kvbench's SnapKV ([`snapkv::scores`]: window 32, max-pool 7, the window
//! always kept), so `adakv-Nx` against `snapkv-Nx` measures the head-adaptive allocation alone.
//!
//! Differences from kvpress, on purpose: kvpress masks the pruned pairs of a full cache (its
//! `masked_key_indices`), so its memory is unchanged; here each kv head's kept rows are really
//! all it stores ([`KeptStore`](crate::kv::evict::KeptStore)), so heads hold different counts
//! and the bytes are the sum of what each holds. kvpress's scorer in its examples is its own
//! SnapKV (window 64, average-pool 5); the parity fixture aligns it to kvbench's scorer
//! (`cargo xtask kvpress-parity`, docs/METHODS.md). Ties (rare: equal f32 scores) go to the
//! earlier token, then the lower head.

use serde_json::json;

use super::snapkv;
use crate::kv::method::StoreContext;
use crate::kv::oneshot::Selector;
use crate::kv::prefill::{FullStore, OBSERVATION_WINDOW};

/// Share of the per-head budget every head keeps before the layer-wide selection
/// (kvpress's `alpha_safeguard`).
pub const SAFEGUARD: f64 = 0.2;

/// AdaKV's selection (`adakv-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<AdaKv>`).
#[derive(Debug, Clone, Copy)]
pub struct AdaKv;

impl Selector for AdaKv {
    fn family(&self) -> &'static str {
        "adakv"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "scorer": "snapkv", "window": OBSERVATION_WINDOW, "pooling": "max", "kernel": snapkv::POOL_KERNEL,
                "safeguard": SAFEGUARD, "selection": "layer-wide-across-kv-heads" })
    }

    fn description(&self) -> &'static str {
        "SnapKV's scores, with the layer's budget shared by its kv heads (each keeps at least a fifth of its share), so heads hold different counts"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        let kv_heads = prefill.shape().kv_heads;
        let n = prefill.keys(0).len() / prefill.shape().head_dim;
        let Some(mut scores) = snapkv::scores(prefill, snapkv::POOL_KERNEL).filter(|_| n > budget) else {
            return vec![vec![true; n]; kv_heads];
        };
        select(&mut scores, budget)
    }
}

/// Per head, which tokens AdaKV keeps from `scores` (`[kv_heads][n]`, overwritten) at a per-head
/// `budget`.
pub fn select(scores: &mut [Vec<f32>], budget: usize) -> Vec<Vec<bool>> {
    let n = scores.first().map_or(0, Vec::len);
    let safe = if budget == 0 { 0 } else { ((budget as f64 * SAFEGUARD) as usize).max(1) };
    for head in scores.iter_mut() {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| head[b].total_cmp(&head[a]).then(a.cmp(&b)));
        order.into_iter().take(safe).for_each(|i| head[i] = f32::MAX);
    }
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..scores.len()).map(move |g| (g, i))).collect();
    pairs.sort_by(|&(ga, a), &(gb, b)| scores[gb][b].total_cmp(&scores[ga][a]).then(a.cmp(&b)).then(ga.cmp(&gb)));
    let mut keep = vec![vec![false; n]; scores.len()];
    pairs.into_iter().take(budget * scores.len()).for_each(|(g, i)| keep[g][i] = true);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_share_the_layer_budget_but_each_keeps_its_safeguard() {
        // head 0's scores are all high, head 1's all low: without the safeguard head 1 would
        // keep nothing; with it, it keeps ⌊0.2 · 10⌋ = 2, its best two
        let mut scores = vec![(0..20).map(|i| 10.0 + i as f32).collect::<Vec<f32>>(), vec![0.0; 20]];
        scores[1][7] = 5.0;
        scores[1][3] = 4.0;
        let keep = select(&mut scores, 10);
        let counts: Vec<usize> = keep.iter().map(|k| k.iter().filter(|&&x| x).count()).collect();
        assert_eq!(counts, [18, 2]);
        assert!(keep[1][7] && keep[1][3]);
        // head 0 keeps its top 18 (tokens 2..20)
        assert!(!keep[0][0] && !keep[0][1] && keep[0][2..].iter().all(|&x| x));
    }
}
