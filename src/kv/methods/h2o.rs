//! `h2o-Nx`: heavy hitters (accumulated attention) plus a recent window.
//!
//! Paper: Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
//! Language Models", NeurIPS 2023 (arXiv 2306.14048). Reference implementation: FMInference/H2O
//! (`h2o_hf/utils_real_drop`). Settings, as the reference study ran it (Yuan et al. 2024,
//! longctx_bench): heavy-hitter and recent shares of **half the budget each** (0.25 / 0.125 /
//! 0.083 / 0.0625 of the prompt for 2× / 4× / 6× / 8×); the budget is fixed when prefill ends.
//! A token's score is the attention probability it has received, summed over every query so far
//! (prefill queries included) and over the query heads of its kv head. When prefill ends the
//! cache keeps the recent half and the top-scoring half of the rest; each decode step adds the
//! new query's attention to the scores and evicts the lowest-scoring token outside the recent
//! window. Scores are held as f32 per kept token and head, and counted in the bytes. (The study
//! simulated H2O with masks on an fp16 cache and saved no memory; here evicted tokens are freed.)
//!
//! kvpress's nearest press, `ObservedAttentionPress`, is another method: no recent half, and a
//! token's attention averaged over the queries that could see it, not summed; on the recorded
//! probes it shares 36–69% of the positions this keeps (`cargo xtask kvpress-parity`,
//! docs/METHODS.md).

use serde_json::json;

use super::Budget;
use crate::kv::evict::{Eviction, KeptStore};
use crate::kv::prefill::FullStore;
use crate::kv::tokens::TokenRows;
use crate::kv::{Compressed, Method, Phase, PrefillCompressor, StoreContext};

/// H2O.
#[derive(Debug, Clone, Copy)]
pub struct H2o {
    /// Token budget.
    pub budget: Budget,
}

impl Method for H2o {
    fn name(&self) -> String {
        format!("h2o-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "budget": self.budget.settings(), "heavy_share": 0.5, "recent_share": 0.5,
                "score": "accumulated-attention" })
    }

    fn description(&self) -> String {
        "heavy hitters plus a recent window; a token's score is the attention it accumulated from prefill and decode queries, summed over the kv head's query heads".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl PrefillCompressor for H2o {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let budget = self.budget.tokens(ctx.compressed_tokens);
        let scores = (0..ctx.shape.kv_heads).map(|g| prefill.mass(g).to_vec()).collect();
        let eviction = Eviction::HeavyHitters { budget, recent: budget / 2 };
        Compressed::Into(Box::new(KeptStore::new(TokenRows::from_full(prefill), Some(scores), eviction)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::LayerStore;
    use crate::kv::attention::Heads;

    #[test]
    fn keeps_the_top_accumulated_scores_and_the_recent_window() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 8 };
        let n = 12;
        // keys: token 2 and token 5 align with every query, the rest are orthogonal-ish
        let mut keys = vec![0.0f32; n * 8];
        for i in 0..n {
            keys[i * 8 + (i % 8)] = 0.1;
        }
        keys[2 * 8..3 * 8].fill(3.0);
        keys[5 * 8..6 * 8].copy_from_slice(&[2.9; 8]);
        let values = vec![1.0f32; n * 8];
        let mut full = FullStore::new(shape);
        full.append(&keys, &values, n);
        let q = vec![1.0f32; n * 16];
        let mut out = vec![0.0; n * 16];
        full.attend(&q, 16, n, &mut out);
        let ctx = StoreContext::for_tests(shape, n);
        let store = (&H2o { budget: Budget::Tokens(6) } as &dyn Method).after_prefill(&ctx, &full).unwrap();
        // recent 3 (9, 10, 11) plus the 3 heaviest of the rest: 2 and 5 dominate, then 0 (seen by
        // every query, alone for the first)
        let dbg = format!("{store:?}");
        assert!(dbg.contains("positions: [0, 2, 5, 9, 10, 11]"), "{dbg:.300}");
        let mut scores: Vec<(f32, usize)> = full.mass(0)[..9].iter().copied().zip(0..).collect();
        scores.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut top: Vec<usize> = scores[..3].iter().map(|s| s.1).collect();
        top.sort();
        assert_eq!(top, [0, 2, 5]);
        assert_eq!(store.tokens(), 6);
    }
}
