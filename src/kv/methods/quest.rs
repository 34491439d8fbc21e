//! `quest-Nx`: query-aware page selection over a cache that keeps everything.
//!
//! Paper: Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference",
//! ICML 2024 (arXiv 2406.10774). Reference implementation: mit-han-lab/Quest. Settings (the
//! paper's): **pages of 16 tokens**, each with the channel-wise minimum and maximum of its keys
//! (f16, counted in the bytes); for a query `q`, a page's upper bound on `q·k` is
//! `Σ_c max(q_c·min_c, q_c·max_c)`; the pages of highest bound are read up to the token budget
//! (prompt tokens / ratio), the page holding the newest tokens always; **the first 2 layers stay
//! dense** (the paper skips them). Quest acts on decode only: prefill is dense. With GQA the
//! bound is summed over the query heads of a kv head, so the kv head reads one set of pages; a
//! chunk of several queries (the question, query-agnostic) uses their sum.
//!
//! Nothing is freed: bytes held are the full fp16 cache plus the page bounds; what Quest saves
//! is bytes **read** per decode step, reported beside.

use half::f16;
use serde_json::json;

use super::Budget;
use crate::kv::attention::{Heads, Queries};
use crate::kv::prefill::FullStore;
use crate::kv::tokens::TokenRows;
use crate::kv::{Compressed, LayerStore, Method, Phase, PrefillCompressor, StoreContext};

/// Tokens per page.
pub const PAGE: usize = 16;
/// Leading layers left dense.
pub const DENSE_LAYERS: usize = 2;

/// Quest.
#[derive(Debug, Clone, Copy)]
pub struct Quest {
    /// Tokens read per step.
    pub budget: Budget,
}

impl Method for Quest {
    fn name(&self) -> String {
        format!("quest-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "budget": self.budget.settings(), "page": PAGE, "page_bounds": "f16-min-max-per-channel",
                "dense_layers": DENSE_LAYERS, "prefill": "dense" })
    }

    fn description(&self) -> String {
        format!(
            "keeps everything, reads only the pages of {PAGE} tokens whose per-channel f16 bounds promise the largest scores for the current query; the first {DENSE_LAYERS} layers dense"
        )
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl PrefillCompressor for Quest {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let budget = self.budget.tokens(ctx.compressed_tokens);
        let dense = ctx.layer < DENSE_LAYERS;
        let mut store = QuestStore {
            rows: TokenRows::from_full(prefill),
            bounds: Vec::new(),
            budget,
            dense,
            read: 0,
            last_read: Vec::new(),
        };
        store.bounds = vec![Vec::new(); ctx.shape.kv_heads];
        store.update_bounds();
        Compressed::Into(Box::new(store))
    }
}

/// The full cache in f16 with per-page key bounds.
#[derive(Debug, Clone)]
pub struct QuestStore {
    rows: TokenRows,
    /// Per kv head, per page: `[min; d]` then `[max; d]`.
    bounds: Vec<Vec<f16>>,
    budget: usize,
    dense: bool,
    read: usize,
    /// Rows the last attention read, per head (for measurement, not part of the cache).
    last_read: Vec<Vec<usize>>,
}

impl QuestStore {
    fn update_bounds(&mut self) {
        let d = self.rows.shape.head_dim;
        for (head, bounds) in self.rows.heads.iter().zip(&mut self.bounds) {
            let pages = head.len().div_ceil(PAGE);
            // the last page may have grown: recompute it and any new ones
            let first = (bounds.len() / (2 * d)).saturating_sub(1);
            bounds.truncate(first * 2 * d);
            for p in first..pages {
                let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
                for i in p * PAGE..((p + 1) * PAGE).min(head.len()) {
                    for (c, x) in head.key(i).into_iter().enumerate() {
                        lo[c] = lo[c].min(x);
                        hi[c] = hi[c].max(x);
                    }
                }
                bounds.extend(lo.iter().chain(&hi).map(|&x| f16::from_f32(x)));
            }
        }
    }

    /// Per kv head, the rows to read for the chunk's `t` queries.
    fn select(&self, q: &[f32], q_stride: usize, t: usize) -> Vec<Vec<usize>> {
        let Heads { heads, kv_heads, head_dim: d } = self.rows.shape;
        let group = heads / kv_heads;
        let n = self.rows.heads[0].len();
        let pages = n.div_ceil(PAGE);
        let forced_from = (n - t) / PAGE; // pages holding the chunk's own tokens
        (0..kv_heads)
            .map(|g| {
                let bounds = &self.bounds[g];
                let score = |p: usize| -> f32 {
                    let (lo, hi) = (&bounds[p * 2 * d..][..d], &bounds[p * 2 * d + d..][..d]);
                    let mut s = 0.0;
                    for j in 0..t {
                        for h in g * group..(g + 1) * group {
                            let qh = &q[j * q_stride + h * d..][..d];
                            s += (0..d).map(|c| (qh[c] * lo[c].to_f32()).max(qh[c] * hi[c].to_f32())).sum::<f32>();
                        }
                    }
                    s
                };
                let mut chosen: Vec<bool> = (0..pages).map(|p| p >= forced_from).collect();
                let mut tokens: usize = (forced_from * PAGE..n).len();
                let mut order: Vec<(f32, usize)> = (0..forced_from).map(|p| (score(p), p)).collect();
                order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for (_, p) in order {
                    if tokens + PAGE > self.budget {
                        break;
                    }
                    chosen[p] = true;
                    tokens += PAGE;
                }
                (0..n).filter(|&i| chosen[i / PAGE]).collect()
            })
            .collect()
    }
}

impl LayerStore for QuestStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        self.rows.append(keys, values, t);
        self.update_bounds();
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        if self.dense {
            self.rows.attend(Queries::new(q, q_stride, t), out, None);
            self.read = self.rows.heads.iter().map(|h| h.row_bytes(h.len())).sum();
            self.last_read = self.rows.heads.iter().map(|h| (0..h.len()).collect()).collect();
            return;
        }
        let select = self.select(q, q_stride, t);
        self.rows.attend_selected(Some(&select), Queries::new(q, q_stride, t), out, None);
        let bounds: usize = self.bounds.iter().map(|b| b.len() * 2).sum();
        self.read = bounds + self.rows.heads.iter().zip(&select).map(|(h, s)| h.row_bytes(s.len())).sum::<usize>();
        self.last_read = select;
    }

    fn bytes(&self) -> usize {
        self.rows.bytes() + self.bounds.iter().map(|b| b.len() * size_of::<f16>()).sum::<usize>()
    }

    fn bytes_read(&self) -> usize {
        self.read
    }

    fn tokens(&self) -> usize {
        self.rows.tokens()
    }

    fn visible(&self, g: usize) -> Option<Vec<u32>> {
        self.last_read.get(g).map(|rows| rows.iter().map(|&i| self.rows.heads[g].positions()[i]).collect())
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_page_with_the_matching_key_within_budget() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let n = 160; // 10 pages
        let mut keys = vec![0.01f32; n * 4];
        keys[37 * 4..38 * 4].fill(3.0); // page 2
        let mut full = FullStore::new(shape);
        full.append(&keys, &keys, n);
        let ctx = StoreContext { layer: 5, layers: 30, ..StoreContext::for_tests(shape, n) };
        let mut store = (&Quest { budget: Budget::Tokens(48) } as &dyn Method).after_prefill(&ctx, &full).unwrap();
        store.append(&[0.0; 4], &[0.0; 4], 1);
        let mut out = vec![0.0; 8];
        store.attend(&[1.0; 8], 8, 1, &mut out);
        // pages: the newest (160, alone on page 10) is forced, then the best 2 that fit: page 2
        // first; bytes read = 3 pages' rows at most plus the bounds
        let read = store.bytes_read();
        let bounds = 11 * 2 * 4 * 2;
        assert!(read <= bounds + 48 * 2 * 4 * 2, "{read}");
        assert!(read >= bounds + 17 * 2 * 4 * 2);
        // the output is pulled towards token 37's value (3.0)
        assert!(out[0] > 1.0, "{out:?}");
        let dense = (&Quest { budget: Budget::Tokens(48) } as &dyn Method)
            .after_prefill(&StoreContext { layer: 0, ..ctx }, &full)
            .unwrap();
        // one token fewer (f16 key and value, u32 position) and one page fewer (f16 min and max)
        assert_eq!(dense.bytes(), store.bytes() - (2 * 4 * 2 + 4) - 2 * 4 * 2);
    }
}
