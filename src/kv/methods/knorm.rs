//! `knorm-Nx`: keep the keys of smallest L2 norm.
//!
//! Paper: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", EMNLP 2024 (arXiv 2406.11430). Reference implementation: NVIDIA kvpress
//! (`KnormPress`, score = −‖k‖). Settings: budget = prompt tokens / ratio, applied once when
//! prefill ends, per kv head (keys are per kv head, so the selection is too); decode tokens are
//! appended without eviction, as kvpress does. Query-agnostic by construction: it never looks at
//! a query.

use serde_json::json;

use super::Budget;
use crate::kv::evict::{Eviction, KeptStore, top_with_protected};
use crate::kv::method::{Acts, StoreContext};
use crate::kv::methods::full::FullStore;
use crate::kv::tokens::TokenRows;
use crate::kv::{LayerStore, Method};

/// Knorm.
#[derive(Debug, Clone, Copy)]
pub struct Knorm {
    /// Token budget.
    pub budget: Budget,
}

impl Method for Knorm {
    fn name(&self) -> String {
        format!("knorm-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "budget": self.budget.settings(), "score": "-L2 norm of the post-RoPE key, per kv head" })
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn acts(&self) -> Acts {
        Acts::AfterPrefill
    }

    fn after_prefill(&self, ctx: &StoreContext, prefill: &FullStore) -> Option<Box<dyn LayerStore>> {
        let budget = self.budget.tokens(ctx.compressed_tokens);
        let d = ctx.shape.head_dim;
        let mut rows = TokenRows::from_full(prefill);
        for (g, head) in rows.heads.iter_mut().enumerate() {
            let scores: Vec<f32> =
                prefill.keys(g).chunks_exact(d).map(|k| -k.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
            head.retain(&top_with_protected(&scores, budget, |_| false));
        }
        Some(Box::new(KeptStore::new(rows, None, Eviction::Never)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::attention::Heads;

    #[test]
    fn keeps_the_smallest_keys_per_kv_head() {
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: 2 };
        // head 0 norms grow with the token, head 1 norms shrink
        let keys: Vec<f32> = (0..6).flat_map(|i| [i as f32, 0.0, (6 - i) as f32, 0.0]).collect();
        let mut full = FullStore::new(shape);
        full.append(&keys, &keys, 6);
        let ctx = StoreContext { layer: 0, layers: 1, shape, compressed_tokens: 6, rope_base: 10_000.0 };
        let store = Knorm { budget: Budget::Ratio(2.0) }.after_prefill(&ctx, &full).unwrap();
        let dbg = format!("{store:?}");
        assert!(dbg.contains("positions: [0, 1, 2]") && dbg.contains("positions: [3, 4, 5]"), "{dbg}");
    }
}
