//! `chunkkv-Nx`: keep whole chunks of contiguous tokens, chosen by their mean score, the same
//! chunks for every kv head of a layer.
//!
//! Paper: Liu et al., "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient
//! Long-Context LLM Inference" (arXiv 2502.00299). Reference implementation: NVIDIA kvpress
//! (`ChunkKVPress`, wrapping a `ScorerPress`), which this follows: the prompt is cut into chunks of
//! **20** tokens (kvpress 0.5.5's `chunk_length` default; the tail is one shorter chunk); a
//! chunk's score is its tokens' scores summed over the kv heads and averaged over the chunk; the
//! top `max(1, ⌊chunks · b / n⌋)` chunks are kept (kvpress: `⌊chunks · (1 − compression_ratio)⌋`,
//! the same at `b = n / N`). The scorer is kvbench's SnapKV ([`snapkv::scores`]: window 32,
//! max-pool 7, the window scored above every other token, so the chunks holding it are kept), so
//! `chunkkv-Nx` against `snapkv-Nx` measures keeping chunks instead of tokens. A prompt shorter
//! than one chunk falls back to SnapKV's token selection, as kvpress does.
//!
//! Because whole chunks are kept, a layer holds up to a chunk fewer tokens than `b`; the bytes
//! column measures what it holds.

use serde_json::json;

use super::snapkv;
use crate::kv::method::StoreContext;
use crate::kv::oneshot::Selector;
use crate::kv::prefill::{FullStore, OBSERVATION_WINDOW};

/// Tokens per chunk (kvpress's `chunk_length`).
pub const CHUNK: usize = 20;

/// ChunkKV's selection (`chunkkv-Nx` is [`OneShot`](crate::kv::oneshot::OneShot)`<ChunkKv>`).
#[derive(Debug, Clone, Copy)]
pub struct ChunkKv;

impl Selector for ChunkKv {
    fn family(&self) -> &'static str {
        "chunkkv"
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "scorer": "snapkv", "window": OBSERVATION_WINDOW, "pooling": "max", "kernel": snapkv::POOL_KERNEL,
                "chunk": CHUNK, "selection": "layer-wide-chunks" })
    }

    fn description(&self) -> &'static str {
        "keeps whole 20-token chunks of the prompt, ranked by their mean SnapKV score over the layer's kv heads"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        let kv_heads = prefill.shape().kv_heads;
        let n = prefill.keys(0).len() / prefill.shape().head_dim;
        if n <= budget {
            return vec![vec![true; n]; kv_heads];
        }
        if n < CHUNK {
            return snapkv::select(prefill, budget, snapkv::POOL_KERNEL);
        }
        let Some(scores) = snapkv::scores(prefill, snapkv::POOL_KERNEL) else {
            return vec![vec![true; n]; kv_heads];
        };
        let keep = select(&scores, budget);
        vec![keep; kv_heads]
    }
}

/// Which tokens the chunks of highest mean layer score cover, at a budget of `budget` of the
/// `scores`' (`[kv_heads][n]`) `n` tokens.
pub fn select(scores: &[Vec<f32>], budget: usize) -> Vec<bool> {
    let n = scores.first().map_or(0, Vec::len);
    let chunks: Vec<std::ops::Range<usize>> = (0..n).step_by(CHUNK).map(|s| s..(s + CHUNK).min(n)).collect();
    let mean: Vec<f32> = chunks
        .iter()
        .map(|c| c.clone().map(|i| scores.iter().map(|h| h[i]).sum::<f32>()).sum::<f32>() / c.len() as f32)
        .collect();
    let kept = (chunks.len() * budget / n.max(1)).max(1);
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
    let mut keep = vec![false; n];
    for c in order.into_iter().take(kept) {
        keep[chunks[c].clone()].fill(true);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_whole_chunks_for_every_head() {
        // 50 tokens: chunks 0..20, 20..40 and the tail 40..50. Head 0 likes token 25, head 1
        // the tail; summed over heads the tail's mean is highest, then the middle chunk.
        let mut scores = vec![vec![0.0f32; 50]; 2];
        scores[0][25] = 10.0;
        scores[1][40..50].fill(1.5);
        // budget 20 of 50: ⌊3 · 20 / 50⌋ = 1 chunk
        assert_eq!(select(&scores, 20), (0..50).map(|i| i >= 40).collect::<Vec<_>>());
        // budget 40: 2 chunks
        assert_eq!(select(&scores, 40), (0..50).map(|i| i >= 20).collect::<Vec<_>>());
    }
}
