//! `duoattention-Nx`: retrieval heads keep every token, streaming heads keep attention sinks and a
//! recent window; which heads stream is decided model-wide, from how far back each head reaches.
//!
//! Paper: Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
//! Streaming Heads", ICLR 2025 (arXiv 2410.10819). Reference implementation: NVIDIA kvpress
//! (`DuoAttentionPress` with `on_the_fly_scoring=True`; the paper's trained head patterns exist
//! for six 7–8B models, none of them SmolLM2 or Gemma 3), which this follows:
//!
//! - **A head's reach** (kvpress's `duo_attention_on_the_fly`): the layer's mean query (per query
//!   head) and mean key (per kv head), both before RoPE, are each repeated at positions
//!   `0..500` and rotated there; the last query's attention over the 500 keys is summed
//!   cumulatively, and the mean of that curve is the score (the area under the cumulative
//!   attention: near 1 when the head looks at the far past, near 0 when only at the recent
//!   tokens), averaged over the kv head's query heads. The lowest-scoring heads of all compressed
//!   layers together stream; kvpress ranks them model-wide, as here.
//! - **Streaming heads** keep the first `sinks` and the last `recent` prompt tokens; every other
//!   head keeps the whole prompt. kvpress fixes 128 sinks and 256 recent tokens and takes the
//!   share of streaming heads as its setting (`head_compression_ratio`).
//!
//! kvbench's names give the ratio of tokens kept instead, so the two settings follow from the
//! per-head budget `b = n/N` of an `n`-token prompt ([`Plan::new`]): the window is
//! `s = min(384, ⌊b/2⌋)` (kvpress's 128 + 256 once `b ≥ 768`; below, shrunk so that some heads
//! can keep everything), the streaming heads are `⌈H·(n − b)/(n − s)⌉` of the `H` kv heads
//! ranked, and their window then widens to spend what the rounding left of the `H·b` tokens
//! (so the kept tokens average `b` per head, as every token method's do), a third of it sinks
//! (kvpress's 128 of 384).
//!
//! Differences from kvpress, on purpose:
//! - its scores come from 50 BookSum chapters, once per model; kvbench's from the prompt's own
//!   prefill (the mean query of [`QueryStats`], which leaves out the first 4 positions, and the
//!   mean of the prompt's keys, un-rotated): on the fly for each prompt, with no calibration
//!   data to fetch. The parity fixture feeds kvpress's scoring the same tensors.
//! - kvpress masks the streaming heads' dropped tokens in a full cache, so it saves no memory;
//!   here each head stores only what it keeps ([`KeptStore`](crate::kv::evict::KeptStore)).
//! - decode tokens are appended to every head, as in kvpress (which compresses once, at
//!   prefill); the paper's streaming heads slide their window through decode too.
//! - kvpress refuses Gemma 3; on it kvbench ranks the kv heads of the global layers only (three,
//!   of one kv head each, the sliding-window layers being the architecture's), so the choice is
//!   coarse: at `-4x` and beyond every head streams.

use serde_json::json;

use crate::kv::method::StoreContext;
use crate::kv::oneshot::Selector;
use crate::kv::prefill::FullStore;
use crate::kv::rope;

/// Positions the mean query and key are repeated at (kvpress's `q_len`).
pub const REACH_POSITIONS: usize = 500;

/// The widest streaming window: kvpress's 128 sinks plus 256 recent tokens.
pub const MAX_WINDOW: usize = 384;

/// DuoAttention's selection (`duoattention-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<DuoAttention>`).
#[derive(Debug, Clone, Copy)]
pub struct DuoAttention;

/// How many heads stream, and what each keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Kv heads that stream, of all those ranked.
    pub streaming: usize,
    /// First tokens a streaming head keeps.
    pub sinks: usize,
    /// Last tokens a streaming head keeps.
    pub recent: usize,
}

impl Plan {
    /// The plan for `heads` kv heads of `n` tokens each at a per-head budget of `budget`, when
    /// `budget < n`.
    pub fn new(n: usize, budget: usize, heads: usize) -> Self {
        let window = MAX_WINDOW.min(budget / 2);
        let streaming = (heads * (n - budget)).div_ceil(n - window).min(heads);
        let spare = heads * budget - (heads - streaming) * n;
        let window = spare.checked_div(streaming).unwrap_or(window).min(n);
        let sinks = window / 3;
        Self { streaming, sinks, recent: window - sinks }
    }
}

impl Selector for DuoAttention {
    fn family(&self) -> &'static str {
        "duoattention"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "scoring": "on-the-fly-per-prompt", "reach_positions": REACH_POSITIONS, "max_window": MAX_WINDOW,
                "sink_share": "1/3", "roles": "model-wide", "streaming_heads": "ceil(H(n-b)/(n-window))" })
    }

    fn description(&self) -> &'static str {
        "ranks every kv head of the model by how far back it attends; the lowest stream (attention sinks plus a recent window), the others keep every token"
    }

    fn head_scores(&self, prefill: &FullStore, _ctx: &StoreContext) -> Option<Vec<f32>> {
        Some(reach(prefill))
    }

    fn keep(&self, prefill: &FullStore, budget: usize, ctx: &StoreContext) -> Vec<Vec<bool>> {
        let shape = prefill.shape();
        let n = prefill.keys(0).len() / shape.head_dim;
        if n <= budget {
            return vec![vec![true; n]; shape.kv_heads];
        }
        let scores = ctx.head_scores.unwrap_or_else(|| {
            panic!("duoattention ranks kv heads model-wide, but layer {} was compressed without them", ctx.layer)
        });
        let mut heads: Vec<(usize, usize, f32)> = scores.all().collect();
        let plan = Plan::new(n, budget, heads.len());
        heads.sort_by(|a, b| a.2.total_cmp(&b.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        let streams = |g: usize| heads[..plan.streaming].iter().any(|&(l, h, _)| (l, h) == (ctx.layer, g));
        (0..shape.kv_heads)
            .map(|g| {
                let all = !streams(g);
                (0..n).map(|i| all || i < plan.sinks || i >= n - plan.recent).collect()
            })
            .collect()
    }
}

/// Per kv head of `prefill`'s layer, its reach (the module doc's score).
///
/// # Panics
/// If the prefill does not count its queries ([`FullStore::for_layer`] makes those that do).
pub fn reach(prefill: &FullStore) -> Vec<f32> {
    let shape = prefill.shape();
    let d = shape.head_dim;
    let stats =
        prefill.query_stats().expect("duoattention reads the prompt's mean query: prefill with FullStore::for_layer");
    let (base, style) = stats.rope();
    let group = shape.heads / shape.kv_heads;
    let mut last_query = vec![0.0f32; d];
    // the kv head's mean key at every position, rotated there
    let keys_at = |g: usize| -> Vec<Vec<f32>> {
        let mean = mean_key(prefill.keys(g), d, base, style);
        (0..REACH_POSITIONS)
            .map(|j| {
                let mut k = mean.clone();
                rope::apply_style(&mut k, d, j as i64, base, style);
                k
            })
            .collect()
    };
    (0..shape.kv_heads)
        .map(|g| {
            let keys = keys_at(g);
            let total: f64 = (0..group)
                .map(|i| {
                    let h = g * group + i;
                    last_query.iter_mut().zip(stats.mean(h, d)).for_each(|(q, m)| *q = m as f32);
                    rope::apply_style(&mut last_query, d, REACH_POSITIONS as i64 - 1, base, style);
                    area_under_cumulative(&last_query, &keys)
                })
                .sum();
            (total / group as f64) as f32
        })
        .collect()
}

/// The mean of `keys` (`[n, d]`, key `i` rotated to position `i`) before RoPE.
fn mean_key(keys: &[f32], d: usize, base: f32, style: rope::Style) -> Vec<f32> {
    let n = keys.len() / d;
    let mut sum = vec![0.0f64; d];
    let mut row = vec![0.0f32; d];
    for (i, key) in keys.chunks_exact(d).enumerate() {
        row.copy_from_slice(key);
        rope::apply_style(&mut row, d, -(i as i64), base, style);
        sum.iter_mut().zip(&row).for_each(|(s, &x)| *s += f64::from(x));
    }
    sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect()
}

/// `q`'s softmax attention over `keys` (scaled by `1/√d`), summed cumulatively in key order; the
/// mean of that curve.
fn area_under_cumulative(q: &[f32], keys: &[Vec<f32>]) -> f64 {
    let scale = 1.0 / (q.len() as f64).sqrt();
    let logits: Vec<f64> =
        keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f64 = weights.iter().sum();
    let n = keys.len() as f64;
    // Σ_j Σ_{i≤j} p_i / n = Σ_i p_i (n − i) / n
    weights.iter().enumerate().map(|(i, w)| w / z * (n - i as f64) / n).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_holds_the_budget_on_average_and_kvpress_window_when_it_fits() {
        // 90 kv heads (SmolLM2's 30 layers of 3), a 1,024-token prompt at 2x: 60 stream a
        // 256-token window, 30 keep all: (60·256 + 30·1024)/90 = 512
        assert_eq!(Plan::new(1024, 512, 90), Plan { streaming: 60, sinks: 85, recent: 171 });
        // at 8,192 tokens and 2x the window starts at kvpress's 384 (48 heads stream) and widens
        // to spend the budget the rounding left
        assert_eq!(Plan::new(8192, 4096, 90), Plan { streaming: 48, sinks: 170, recent: 342 });
        for (n, b, h) in [(1024, 256, 90), (1024, 128, 90), (2048, 512, 3), (1024, 256, 3), (300, 299, 7)] {
            let plan = Plan::new(n, b, h);
            let held = plan.streaming * (plan.sinks + plan.recent) + (h - plan.streaming) * n;
            assert!(held <= h * b, "{n} {b} {h}: {plan:?} holds {held}");
            assert!(held + plan.streaming > h * b, "{n} {b} {h}: {plan:?} leaves budget unspent");
        }
        // Gemma's three global heads at 4x: all stream, at the whole budget
        assert_eq!(Plan::new(1024, 256, 3), Plan { streaming: 3, sinks: 85, recent: 171 });
    }

    #[test]
    fn the_lowest_heads_of_the_whole_model_stream() {
        use crate::kv::LayerStore;
        use crate::kv::attention::Heads;
        use crate::kv::method::HeadScores;
        let shape = Heads { heads: 3, kv_heads: 3, head_dim: 4 };
        let (n, budget) = (60, 30);
        let mut prefill = FullStore::new(shape);
        prefill.append(&vec![0.5; n * 12], &vec![0.5; n * 12], n);
        // layer 0 looks near in every head, layer 1 far: of the 6 heads, ⌈6·30/45⌉ = 4 stream,
        // layer 0's three and layer 1's nearest (head 2)
        let scores = HeadScores(vec![(0, vec![0.1, 0.2, 0.3]), (1, vec![0.9, 0.8, 0.4])]);
        let plan = Plan::new(n, budget, 6);
        assert_eq!(plan, Plan { streaming: 4, sinks: 5, recent: 10 });
        let held = |layer: usize| -> Vec<usize> {
            let ctx =
                StoreContext { layer, layers: 2, head_scores: Some(&scores), ..StoreContext::for_tests(shape, n) };
            DuoAttention.keep(&prefill, budget, &ctx).iter().map(|k| k.iter().filter(|&&x| x).count()).collect()
        };
        assert_eq!(held(0), [15, 15, 15]);
        assert_eq!(held(1), [60, 60, 15]);
        let ctx = StoreContext { head_scores: Some(&scores), ..StoreContext::for_tests(shape, n) };
        let keep = DuoAttention.keep(&prefill, budget, &ctx);
        assert!(keep[0][..5].iter().all(|&x| x) && !keep[0][5] && !keep[0][49] && keep[0][50..].iter().all(|&x| x));
    }

    #[test]
    fn the_area_is_near_one_for_a_head_that_looks_back_and_near_zero_for_one_that_looks_near() {
        let keys: Vec<Vec<f32>> = (0..100).map(|i| vec![i as f32 / 10.0, 0.0]).collect();
        // q · k_i rises with i: attention on the last keys, the area small
        let near = area_under_cumulative(&[40.0, 0.0], &keys);
        let far = area_under_cumulative(&[-40.0, 0.0], &keys);
        let even = area_under_cumulative(&[0.0, 0.0], &keys);
        assert!(near < 0.02 && far > 0.98, "{near} {far}");
        // uniform attention: Σ (n − i)/n² = (n + 1)/(2n)
        assert!((even - 101.0 / 200.0).abs() < 1e-12, "{even}");
    }
}
