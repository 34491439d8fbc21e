//! `tova-Nx`: evict the token the current query attends to least.
//!
//! Paper: Oren et al., "Transformers are Multi-State RNNs" (TOVA, Token Omission Via Attention),
//! EMNLP 2024 (arXiv 2401.06104). Reference implementation: schwartz-lab-NLP/TOVA and NVIDIA
//! kvpress (`TOVAPress`). Settings: budget = prompt tokens / ratio, fixed when prefill ends;
//! a token's score is the attention the **current** query gives it (no accumulation), summed over
//! the query heads of its kv head, each kv head choosing its own tokens. The authors' code and
//! kvpress average over all heads of the layer and keep one set of positions for every kv head
//! (which frees as much memory): that is the variant `tova-pooled-Nx`. When prefill ends the last
//! prompt token's attention picks the first `budget` tokens; each decode step then attends and
//! drops the lowest-scoring tokens beyond the budget. (docs/METHODS.md, "TOVA against its
//! references": why the needle's later digits are lost, as specified.)

use serde_json::json;

use super::Budget;
use crate::kv::attention::{self, Queries};
use crate::kv::evict::{Eviction, KeptStore};
use crate::kv::prefill::FullStore;
use crate::kv::tokens::TokenRows;
use crate::kv::{Compressed, Method, Phase, PrefillCompressor, StoreContext};

/// TOVA.
#[derive(Debug, Clone, Copy)]
pub struct Tova {
    /// Token budget.
    pub budget: Budget,
    /// One choice per layer by the attention summed over every head, as the paper's code and
    /// kvpress's `TOVAPress` choose (`tova-pooled-Nx`, a variant), instead of one per kv head.
    pub pooled: bool,
}

impl Method for Tova {
    fn name(&self) -> String {
        let family = if self.pooled { "tova-pooled" } else { "tova" };
        format!("{family}-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        let mut settings = json!({ "budget": self.budget.settings(), "score": "current-query-attention" });
        if self.pooled {
            settings["selection"] = json!("pooled-over-heads");
        }
        settings
    }

    fn description(&self) -> String {
        let per = if self.pooled { "summed over every head of the layer, one choice for all" } else { "per kv head" };
        format!("evicts, at every step, the token the current query attends to least, {per}")
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl PrefillCompressor for Tova {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let budget = self.budget.tokens(ctx.compressed_tokens);
        let shape = prefill.shape();
        let width = shape.heads * shape.head_dim;
        let n = prefill.keys(0).len() / shape.head_dim;
        let mut mass = vec![vec![0.0f32; n]; shape.kv_heads];
        let recent = prefill.recent_queries();
        if recent.len() >= width {
            let last = &recent[recent.len() - width..];
            let mut out = vec![0.0f32; width];
            attention::attend_observed(
                shape,
                Queries::new(last, width, 1),
                &prefill.views(),
                &mut out,
                Some(&mut mass),
            );
        }
        let eviction = Eviction::Current { budget, pooled: self.pooled };
        Compressed::Into(Box::new(KeptStore::new(TokenRows::from_full(prefill), Some(mass), eviction)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::LayerStore;
    use crate::kv::attention::Heads;

    #[test]
    fn each_step_drops_the_least_attended_token() {
        let shape = Heads { heads: 1, kv_heads: 1, head_dim: 4 };
        // token i's key is i/10 on every channel; an all-ones query prefers later tokens
        let n = 10;
        let keys: Vec<f32> = (0..n * 4).map(|i| (i / 4) as f32 / 10.0).collect();
        let mut full = FullStore::new(shape);
        full.append(&keys, &keys, n);
        let mut out = vec![0.0; n * 4];
        full.attend(&[1.0; 40], 4, n, &mut out);
        let ctx = StoreContext::for_tests(shape, n);
        let tova = Tova { budget: Budget::Tokens(5), pooled: false };
        let mut store = (&tova as &dyn Method).after_prefill(&ctx, &full).unwrap();
        assert!(format!("{store:?}").contains("positions: [5, 6, 7, 8, 9]"));
        // a new token with a low key, then a query that prefers low keys: 5 (lowest kept) survives,
        // the highest (9) goes
        store.append(&[-1.0; 4], &[0.0; 4], 1);
        store.attend(&[-1.0; 4], 4, 1, &mut out[..4]);
        assert_eq!(store.tokens(), 5);
        assert!(format!("{store:?}").contains("positions: [5, 6, 7, 8, 10]"), "{store:?}");
    }
}
