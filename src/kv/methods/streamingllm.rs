//! `streamingllm-Nx`: attention sinks plus a recent window.
//!
//! Paper: Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024
//! (arXiv 2309.17453). Reference implementation: mit-han-lab/streaming-llm (`kv_cache.py`,
//! `StartRecentKVCache`). Settings, as the reference study ran it (Yuan et al. 2024,
//! longctx_bench): budget = prompt tokens / ratio; **sinks = 2.1% of the budget, at least 4**
//! (the paper's 4 sink tokens); the rest of the budget is the most recent window. The rule holds
//! from the first prefill chunk on (chunked prefill, 512 tokens a chunk by default): each chunk
//! attends to the sinks, the window and itself, then the cache is cut back to the budget.
//! Positions: kept tokens keep their own (the cache is post-RoPE), where the reference re-rotates
//! keys by their slot in the cache; see docs/METHODS.md, "Positions".

use serde_json::json;

use super::Budget;
use crate::kv::evict::{Eviction, KeptStore};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// Share of the budget given to sinks.
pub const SINK_SHARE: f64 = 0.021;
/// Fewest sinks.
pub const MIN_SINKS: usize = 4;

/// StreamingLLM.
#[derive(Debug, Clone, Copy)]
pub struct StreamingLlm {
    /// Token budget.
    pub budget: Budget,
}

/// Sinks for a budget of `budget` tokens.
pub fn sinks(budget: usize) -> usize {
    ((budget as f64 * SINK_SHARE).round() as usize).max(MIN_SINKS).min(budget)
}

impl Method for StreamingLlm {
    fn name(&self) -> String {
        format!("streamingllm-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "budget": self.budget.settings(), "sink_share": SINK_SHARE, "min_sinks": MIN_SINKS,
                "window": "rest-of-budget", "applies_to_prefill": true })
    }

    fn description(&self) -> String {
        "attention sinks (the first tokens) plus a sliding window of the most recent ones, from the first prefill chunk on".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for StreamingLlm {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        let budget = self.budget.tokens(ctx.compressed_tokens);
        Box::new(KeptStore::empty(ctx.shape, Eviction::Window { sinks: sinks(budget), budget }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::attention::Heads;

    #[test]
    fn keeps_sinks_and_window_and_never_exceeds_the_budget() {
        let shape = Heads { heads: 3, kv_heads: 3, head_dim: 8 };
        let ctx = StoreContext::for_tests(shape, 400);
        let method = StreamingLlm { budget: Budget::Ratio(4.0) };
        let mut store = method.layer_store(&ctx);
        let budget = 100;
        let row = [0.1f32; 24];
        let q = vec![0.3f32; 24 * 64];
        let mut out = vec![0.0; 24 * 64];
        let mut appended = 0;
        for chunk in [64, 64, 64, 1, 1, 64, 1] {
            store.append(&row.repeat(chunk), &row.repeat(chunk), chunk);
            store.attend(&q, 24, chunk, &mut out[..24 * chunk]);
            appended += chunk;
            assert!(store.tokens() <= budget, "{} tokens after {appended}", store.tokens());
        }
        let kept = store.clone_box();
        let dbg = format!("{kept:?}");
        assert!(dbg.contains("positions: [0, 1, 2, 3, "), "sinks kept: {dbg:.200}");
        // the window: the newest budget − sinks positions
        let last = appended as u32 - 1;
        assert!(dbg.contains(&format!("{}, {last}]", last - 1)));
        assert_eq!(store.tokens(), budget);
        assert_eq!(super::sinks(1000), 21);
        assert_eq!(super::sinks(100), 4);
    }
}
