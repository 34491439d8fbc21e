//! `keydiff-Nx`: keep the keys least like the average key.
//!
//! Paper: Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM
//! Inference in Resource-Constrained Environments" (arXiv 2504.15364). Reference implementation:
//! NVIDIA kvpress (`KeyDiffPress`: the anchor is the mean of the L2-normalised keys, a token's
//! score is minus the cosine similarity of its key to the anchor, the highest scores are kept).
//! Settings: budget = prompt tokens / ratio, applied once when prefill ends, per kv head (keys
//! are per kv head, so the anchor and the selection are too); decode tokens are appended without
//! eviction, as kvpress does. The paper's block-wise iterative eviction (kvpress's `BlockPress`
//! around it) is not this: here the whole prefill is scored at once, as `KeyDiffPress` alone
//! does. Query-agnostic by construction: it never looks at a query.

use serde_json::json;

use crate::kv::method::StoreContext;
use crate::kv::oneshot::{Selector, top_per_head};
use crate::kv::prefill::FullStore;

/// KeyDiff's selection (`keydiff-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<KeyDiff>`).
#[derive(Debug, Clone, Copy)]
pub struct KeyDiff;

impl Selector for KeyDiff {
    fn family(&self) -> &'static str {
        "keydiff"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "score": "neg-cosine-to-mean-key" })
    }

    fn description(&self) -> &'static str {
        "keeps the keys least similar to the mean: score is minus the cosine similarity of the post-RoPE key to the mean normalised key, per kv head"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        let d = prefill.shape().head_dim;
        top_per_head(prefill, budget, |g| {
            let unit = |k: &[f32]| -> Vec<f32> {
                let norm = k.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
                k.iter().map(|x| x / norm).collect()
            };
            let keys = prefill.keys(g);
            let n = (keys.len() / d).max(1) as f32;
            let mut anchor = vec![0.0f32; d];
            for k in keys.chunks_exact(d) {
                anchor.iter_mut().zip(unit(k)).for_each(|(a, x)| *a += x / n);
            }
            let anchor_norm = anchor.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            keys.chunks_exact(d)
                .map(|k| -unit(k).iter().zip(&anchor).map(|(x, a)| x * a).sum::<f32>() / anchor_norm)
                .collect()
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
    fn keeps_the_keys_least_like_the_mean_per_kv_head() {
        // head 0: four keys along x and two along y, so the y keys stand out; head 1 the reverse.
        // The scale of a key does not matter (cosine), only its direction.
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: 2 };
        let rows: [[f32; 4]; 6] = [
            [1.0, 0.0, 0.0, 3.0],
            [0.0, 2.0, 0.0, 1.0],
            [3.0, 0.0, 1.0, 0.0],
            [2.0, 0.0, 0.0, 2.0],
            [0.0, 1.0, 0.0, 1.0],
            [1.0, 0.0, 2.0, 0.0],
        ];
        let keys: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut full = FullStore::new(shape);
        full.append(&keys, &keys, 6);
        let ctx = StoreContext::for_tests(shape, 6);
        let method = OneShot { budget: Budget::Ratio(3.0), selector: KeyDiff };
        assert_eq!(method.name(), "keydiff-3x");
        let store = (&method as &dyn Method).after_prefill(&ctx, &full).unwrap();
        let dbg = format!("{store:?}");
        // head 0's y keys are tokens 1 and 4; head 1's x keys are tokens 2 and 5
        assert!(dbg.contains("positions: [1, 4]") && dbg.contains("positions: [2, 5]"), "{dbg}");
        assert_eq!(store.tokens(), 2);
    }
}
