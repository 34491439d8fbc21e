//! `pyramidkv-Nx`: SnapKV's selection with budgets that shrink from lower to upper layers.
//!
//! Paper: Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
//! Funneling" (arXiv 2406.02069). Reference implementation: Zefan-Cai/KVCache-Factory
//! (`pyramidkv_utils.py`, `PyramidKVCluster`). Settings: the scoring of `snapkv` (window 32,
//! max-pool 7, per kv head); per-layer budgets of the prefix part decrease linearly with depth
//! from `2·b − b/β` at layer 0 to `b/β` at the last layer (β = 20, the reference's default), where
//! `b` is the average prefix budget `budget − 32`, so the total over layers equals SnapKV's at the
//! same ratio; when the largest budget would exceed the prefix it is clipped and the smallest
//! raised to keep the total, as the reference does.

use serde_json::json;

use super::snapkv;
use crate::kv::method::StoreContext;
use crate::kv::oneshot::Selector;
use crate::kv::prefill::{FullStore, OBSERVATION_WINDOW};

/// Ratio of the average budget to the smallest (PyramidKV's `beta`).
pub const BETA: f64 = 20.0;

/// PyramidKV's selection (`pyramidkv-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<PyramidKv>`).
#[derive(Debug, Clone, Copy)]
pub struct PyramidKv;

/// Budget of `layer` of `layers` when the average is `budget` tokens of a `prompt`-token prompt.
pub fn layer_budget(budget: usize, prompt: usize, layer: usize, layers: usize) -> usize {
    let w = OBSERVATION_WINDOW.min(budget);
    let avg = (budget - w) as f64;
    let mut min = avg / BETA;
    let mut max = 2.0 * avg - min;
    let prefix = prompt.saturating_sub(w) as f64;
    if max > prefix {
        max = prefix;
        min = 2.0 * avg - max;
    }
    if layers < 2 {
        return budget;
    }
    let step = (max - min) / (layers - 1) as f64;
    w + (max - step * layer as f64).round().max(0.0) as usize
}

impl Selector for PyramidKv {
    fn family(&self) -> &'static str {
        "pyramidkv"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "window": OBSERVATION_WINDOW, "pooling": "max", "kernel": snapkv::POOL_KERNEL, "beta": BETA,
                "layer_budgets": "linear-decreasing" })
    }

    fn description(&self) -> &'static str {
        "SnapKV's selection with layer budgets decreasing linearly with depth (a pyramid), the same total"
    }

    fn layer_budget(&self, budget: usize, ctx: &StoreContext) -> usize {
        layer_budget(budget, ctx.compressed_tokens, ctx.layer, ctx.layers)
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        snapkv::select(prefill, budget, snapkv::POOL_KERNEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_decrease_with_depth_and_sum_to_snapkv_total() {
        for (budget, prompt) in [(500, 4000), (2000, 4000), (100, 800)] {
            let per: Vec<usize> = (0..30).map(|l| layer_budget(budget, prompt, l, 30)).collect();
            assert!(per.windows(2).all(|w| w[0] >= w[1]), "{per:?}");
            assert!(per[0] > per[29]);
            let total: usize = per.iter().sum();
            let want = 30 * budget;
            assert!(total.abs_diff(want) <= 30, "total {total}, SnapKV {want}: {per:?}");
            assert!(per.iter().all(|&b| b <= prompt));
        }
    }
}
