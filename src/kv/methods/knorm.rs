//! `knorm-Nx`: keep the keys of smallest L2 norm.
//!
//! Paper: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", EMNLP 2024 (arXiv 2406.11430). Reference implementation: NVIDIA kvpress
//! (`KnormPress`, score = −‖k‖). Settings: budget = prompt tokens / ratio, applied once when
//! prefill ends, per kv head (keys are per kv head, so the selection is too); decode tokens are
//! appended without eviction, as kvpress does. Query-agnostic by construction: it never looks at
//! a query.

use serde_json::json;

use crate::kv::method::StoreContext;
use crate::kv::oneshot::{Selector, top_per_head};
use crate::kv::prefill::FullStore;

/// Knorm's selection: per kv head, the keys of smallest L2 norm (`knorm-Nx` is
/// [`OneShot`](crate::kv::oneshot::OneShot)`<Knorm>`).
#[derive(Debug, Clone, Copy)]
pub struct Knorm;

impl Selector for Knorm {
    fn family(&self) -> &'static str {
        "knorm"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "score": "neg-key-norm" })
    }

    fn description(&self) -> &'static str {
        "keeps the keys of smallest L2 norm (post-RoPE), per kv head"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        let d = prefill.shape().head_dim;
        top_per_head(prefill, budget, |g| {
            prefill.keys(g).chunks_exact(d).map(|k| -k.iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::attention::Heads;
    use crate::kv::methods::Budget;
    use crate::kv::oneshot::OneShot;
    use crate::kv::{LayerStore, Method, StoreContext};

    #[test]
    fn keeps_the_smallest_keys_per_kv_head() {
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: 2 };
        // head 0 norms grow with the token, head 1 norms shrink
        let keys: Vec<f32> = (0..6).flat_map(|i| [i as f32, 0.0, (6 - i) as f32, 0.0]).collect();
        let mut full = FullStore::new(shape);
        full.append(&keys, &keys, 6);
        let ctx = StoreContext::for_tests(shape, 6);
        let store = (&OneShot { budget: Budget::Ratio(2.0), selector: Knorm } as &dyn Method)
            .after_prefill(&ctx, &full)
            .unwrap();
        let dbg = format!("{store:?}");
        assert!(dbg.contains("positions: [0, 1, 2]") && dbg.contains("positions: [3, 4, 5]"), "{dbg}");
    }
}
