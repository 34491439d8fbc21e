//! `think-Nx`: ThinK's key-channel pruning, with the bytes really saved. `N` is the reduction of
//! the prompt's key channels (`think-2x` keeps half of each kv head's 64, `think-4x` a quarter);
//! every token is kept, and values are untouched.
//!
//! Paper: Xu et al., "ThinK: Thinner Key Cache by Query-Driven Pruning", ICLR 2025 (arXiv
//! 2407.21018). Reference: NVIDIA kvpress `ThinKPress` (0.5.5), reviewed by the paper's first
//! author, followed here: once the prompt is prefilled, each key channel `c` of kv head `g` is
//! scored by `mean over the last 32 queries and the group's query heads of q_c²` times `mean over
//! the prompt's keys of k_c²` (both post-RoPE), and the `int(d · (1 − 1/N))` lowest channels are
//! pruned from every prompt key, as kvpress rounds ([`kept_channels`]; `think-32tok` keeps 32
//! channels). Tokens decoded after are kept whole, as kvpress (whose press acts on prefill only).
//!
//! Where this differs from kvpress: kvpress zeroes the pruned channels and keeps the keys' shape,
//! so it saves nothing; here a prompt key holds only its kept channels (f16), beside the layer's
//! list of kept channels per kv head (a byte each), and attention reads them against the same
//! channels of the query (a pruned channel is a zero: the same scores as kvpress's, at `1/√d`).
//! Keys shrink by `N`, values not at all, so the cache shrinks by `2N / (N + 1)`: 1.33× at `2x`.
//! In query-agnostic runs the 32 queries are the context's last, as SnapKV's window.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde_json::json;

use crate::kv::attention::Heads;
use crate::kv::budget::Budget;
use crate::kv::prefill::FullStore;
use crate::kv::{Compressed, LayerStore, Method, Phase, PrefillCompressor, StoreContext};

/// The queries ThinK scores channels by: the prompt's last 32, as kvpress's `window_size`.
pub const WINDOW: usize = 32;

/// ThinK at a key-channel reduction.
#[derive(Debug, Clone, Copy)]
pub struct Think {
    /// Kept channels ([`kept_channels`]).
    pub budget: Budget,
}

impl Method for Think {
    fn name(&self) -> String {
        format!("think-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "channels": self.budget.settings(), "window": WINDOW, "score": "mean-q2-times-mean-k2",
                "decode_keys": "whole", "storage": "kept-channels-f16" })
    }

    fn description(&self) -> String {
        "once after prefill, prunes each kv head's key channels of least query-weighted energy from every prompt key \
         (held packed, saving their bytes); values and decoded keys whole"
            .into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        // keys at 1/N of their bytes, values whole
        self.budget.nominal().map(|n| 2.0 * n / (n + 1.0))
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

/// Channels kept of `d` at `budget`: kvpress prunes `int(d · (1 − 1/N))` at `-Nx`, so keeps
/// `round(d / N)` at 2×, 4×, 6×, 8× (for `d = 64`) and one more where `d / N`'s fraction is below
/// ½ (`think-3x`: 22 of 64); `-Ntok` keeps `N` channels.
pub fn kept_channels(budget: Budget, d: usize) -> usize {
    match budget {
        Budget::Ratio(r) => d - ((d as f64) * (1.0 - 1.0 / r)) as usize,
        Budget::Tokens(n) => n.clamp(1, d),
    }
}

/// Per kv head of `prefill`, the ascending channels ThinK keeps, `kept` of them.
pub fn channels(prefill: &FullStore, kept: usize) -> Vec<Vec<usize>> {
    let Heads { heads, kv_heads, head_dim: d } = prefill.shape();
    let group = heads / kv_heads;
    let queries = prefill.recent_queries();
    let rows = queries.len() / (heads * d);
    let window = &queries[rows.saturating_sub(WINDOW) * heads * d..];
    let w = (window.len() / (heads * d)).max(1) as f32;
    (0..kv_heads)
        .map(|g| {
            let keys = prefill.keys(g);
            let n = (keys.len() / d).max(1) as f32;
            let score: Vec<f32> = (0..d)
                .map(|c| {
                    let q2: f32 = window
                        .chunks_exact(heads * d)
                        .map(|row| (0..group).map(|i| row[(g * group + i) * d + c].powi(2)).sum::<f32>())
                        .sum::<f32>()
                        / (w * group as f32);
                    let k2: f32 = keys.chunks_exact(d).map(|k| k[c] * k[c]).sum::<f32>() / n;
                    q2 * k2
                })
                .collect();
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
            let mut keep = order[..kept.min(d)].to_vec();
            keep.sort_unstable();
            keep
        })
        .collect()
}

impl PrefillCompressor for Think {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let d = ctx.shape.head_dim;
        let kept = channels(prefill, kept_channels(self.budget, d));
        Compressed::Into(Box::new(ThinkStore::new(prefill, kept)))
    }
}

/// Every token: the prompt's keys on their kept channels, later keys whole, every value.
#[derive(Debug, Clone)]
pub struct ThinkStore {
    shape: Heads,
    /// Per kv head, the ascending kept channels of the prompt's keys.
    kept: Vec<Vec<usize>>,
    /// Prompt tokens.
    prompt: usize,
    /// Per kv head: the prompt's keys `[prompt, kept]`, later keys `[tokens − prompt, d]`, and
    /// every value `[tokens, d]`, in f16.
    pruned: Vec<Vec<f16>>,
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
}

impl ThinkStore {
    fn new(prefill: &FullStore, kept: Vec<Vec<usize>>) -> Self {
        let shape = prefill.shape();
        let d = shape.head_dim;
        let half = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        let pruned = (0..shape.kv_heads)
            .map(|g| {
                let keep = &kept[g];
                prefill.keys(g).chunks_exact(d).flat_map(|k| keep.iter().map(|&c| f16::from_f32(k[c]))).collect()
            })
            .collect();
        let values = (0..shape.kv_heads).map(|g| half(prefill.values(g))).collect();
        let prompt = prefill.keys(0).len() / d;
        Self { shape, kept, prompt, pruned, keys: vec![Vec::new(); shape.kv_heads], values }
    }

    /// The ascending key channels kv head `g` keeps of the prompt's keys.
    pub fn kept_channels(&self, g: usize) -> &[usize] {
        &self.kept[g]
    }
}

/// One kv head widened: the prompt's pruned keys, later keys, values, and one row of logits.
#[derive(Default)]
struct Wide {
    pruned: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    logits: Vec<f32>,
}

thread_local! {
    /// Reused across calls and layers.
    static WIDE: RefCell<Wide> = RefCell::default();
}

impl LayerStore for ThinkStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let d = self.shape.head_dim;
        for j in 0..t {
            for g in 0..self.shape.kv_heads {
                let at = (j * self.shape.kv_heads + g) * d;
                self.keys[g].extend(keys[at..][..d].iter().map(|&v| f16::from_f32(v)));
                self.values[g].extend(values[at..][..d].iter().map(|&v| f16::from_f32(v)));
            }
        }
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let Heads { heads, kv_heads, head_dim: d } = self.shape;
        let group = heads / kv_heads;
        let n = self.tokens();
        let scale = 1.0 / (d as f32).sqrt();
        WIDE.with_borrow_mut(|Wide { pruned, keys, values, logits }| {
            for g in 0..kv_heads {
                let kept = &self.kept[g];
                let k = kept.len();
                pruned.resize(self.pruned[g].len(), 0.0);
                self.pruned[g].convert_to_f32_slice(pruned);
                keys.resize(self.keys[g].len(), 0.0);
                self.keys[g].convert_to_f32_slice(keys);
                values.resize(self.values[g].len(), 0.0);
                self.values[g].convert_to_f32_slice(values);
                for j in 0..t {
                    // causal: query row j is token n − t + j
                    let visible = n - t + j + 1;
                    for h in g * group..(g + 1) * group {
                        let qh = &q[j * q_stride + h * d..][..d];
                        let q_kept: Vec<f32> = kept.iter().map(|&c| qh[c]).collect();
                        logits.clear();
                        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
                        for i in 0..visible {
                            let s = if i < self.prompt {
                                dot(&q_kept, &pruned[i * k..][..k])
                            } else {
                                dot(qh, &keys[(i - self.prompt) * d..][..d])
                            };
                            logits.push(s * scale);
                        }
                        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                        let mut total = 0.0f32;
                        logits.iter_mut().for_each(|x| {
                            *x = (*x - max).exp();
                            total += *x;
                        });
                        let o = &mut out[j * heads * d + h * d..][..d];
                        o.fill(0.0);
                        for (i, p) in logits.iter().enumerate() {
                            let p = p / total;
                            o.iter_mut().zip(&values[i * d..][..d]).for_each(|(o, v)| *o += p * v);
                        }
                    }
                }
            }
        });
    }

    fn bytes(&self) -> usize {
        let rows: usize = self.pruned.iter().chain(&self.keys).chain(&self.values).map(Vec::len).sum();
        rows * size_of::<f16>() + self.kept.iter().map(Vec::len).sum::<usize>()
    }

    fn tokens(&self) -> usize {
        self.values[0].len() / self.shape.head_dim
    }

    fn key_channels(&self, g: usize) -> Option<Vec<u32>> {
        Some(self.kept[g].iter().map(|&c| c as u32).collect())
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::kv::attention::{Queries, attend};

    /// Against attention over the full-precision keys with the pruned channels zeroed (kvpress's
    /// ThinK), in f16: the same output, at a quarter of the keys' bytes for `think-4x`.
    #[test]
    fn attends_as_zeroed_channels_do_and_holds_the_kept_ones_only() {
        let shape = Heads { heads: 6, kv_heads: 2, head_dim: 64 };
        let (n, w) = (80, 2 * 64);
        let mut rng = StdRng::seed_from_u64(6);
        let mut sample = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let (k, v, q) = (sample(n * w), sample(n * w), sample(n * 6 * 64));
        let mut full = FullStore::recording(shape);
        full.append(&k, &v, n);
        let mut sink = vec![0.0; n * 6 * 64];
        full.attend(&q, 6 * 64, n, &mut sink);
        let think = Think { budget: Budget::Ratio(4.0) };
        let ctx = StoreContext::for_tests(shape, n);
        let Compressed::Into(mut store) = think.compress(&ctx, &full) else { panic!("ThinK compresses") };
        // keys at 16 of 64 channels, values whole, 16 channel bytes per kv head
        assert_eq!(store.bytes(), 2 * (n * 16 * 2 + n * 64 * 2 + 16));
        // a decode step: the new token's key whole
        let (k1, v1, q1) = (sample(w), sample(w), sample(6 * 64));
        store.append(&k1, &v1, 1);
        let mut got = vec![0.0; 6 * 64];
        store.attend(&q1, 6 * 64, 1, &mut got);
        // the reference: f16-rounded keys with the pruned channels zeroed, then the new key whole
        let round = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
        let (mut zk, mut zv) = (round(&k), round(&v));
        for i in 0..n {
            for g in 0..2 {
                let kept = store.key_channels(g).unwrap();
                assert_eq!(kept.len(), 16);
                for c in 0..64 {
                    if !kept.contains(&(c as u32)) {
                        zk[(i * 2 + g) * 64 + c] = 0.0;
                    }
                }
            }
        }
        zk.extend(round(&k1));
        zv.extend(round(&v1));
        let mut reference = FullStore::new(shape);
        reference.append(&zk, &zv, n + 1);
        let mut want = vec![0.0; 6 * 64];
        attend(shape, Queries::new(&q1, 6 * 64, 1), &reference.views(), &mut want);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} against {b}");
        }
    }

    #[test]
    fn channels_kept_round_as_kvpress() {
        let kept = |r: f64, d| kept_channels(Budget::Ratio(r), d);
        assert_eq!([kept(2.0, 64), kept(4.0, 64), kept(6.0, 64), kept(8.0, 64)], [32, 16, 11, 8]);
        // int(64 · 2/3) = 42 pruned, int(256 · 4/5) = 204
        assert_eq!((kept(3.0, 64), kept(5.0, 256)), (22, 52));
        assert_eq!((kept_channels(Budget::Tokens(32), 64), kept_channels(Budget::Tokens(999), 64)), (32, 64));
    }
}
