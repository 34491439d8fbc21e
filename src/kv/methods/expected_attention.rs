//! `expected-attention-Nx`: kvpress's Expected Attention, which scores each key by the attention
//! that future queries are expected to pay it, with no question and no attention weights.
//!
//! Reference: NVIDIA kvpress `ExpectedAttentionPress` (0.5.5; Devoto et al., "Expected Attention:
//! KV-cache compression by estimating attention from future queries distribution", 2025), at its
//! defaults, followed step for step:
//! 1. the prompt's queries before RoPE, all but the first `n_sink = 4`, give per query head a mean
//!    `μ` and a (population) covariance `Σ` ([`crate::kv::prefill::QueryStats`], accumulated as
//!    prefill runs: kvpress recomputes the queries from the hidden states);
//! 2. the RoPE rotation is averaged over the next `n_future_positions = 512` positions after the
//!    prompt, `R̄ = mean_p R(p)`, and applied: `μ' = R̄ μ`, `Σ' = R̄ Σ R̄ᵀ`;
//! 3. a key `k` (post-RoPE) scores `μ'·k / √d + kᵀ Σ' k / 2d`, the log of `E[exp(q·k / √d)]` for
//!    `q ~ N(μ', Σ')`; softmax over the prompt's non-sink keys per query head, averaged over the kv
//!    head's query heads;
//! 4. times the value's norm `‖v‖` (`use_vnorm`, `epsilon = 0`);
//! 5. the 4 sinks score above every other token, and the budget's best are kept per kv head.
//!
//! `R̄` pairs channels as the model's RoPE does (adjacent for SmolLM2's GGUF weights, halves for
//! Gemma 3; kvpress's `rotate_half` is the latter on Hugging Face's layout: the same rotation).
//! Question-free by construction: query-aware runs see the question's queries among the prompt's,
//! as kvpress does.

use serde_json::{Value, json};

use crate::kv::method::StoreContext;
use crate::kv::oneshot::{Selector, top_per_head};
use crate::kv::prefill::{FullStore, QUERY_STATS_SKIP};
use crate::kv::rope::Style;

/// kvpress's `n_future_positions`.
pub const FUTURE: usize = 512;

/// Expected Attention's selection.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAttention;

impl Selector for ExpectedAttention {
    fn family(&self) -> &'static str {
        "expected-attention"
    }

    fn settings(&self) -> Value {
        json!({ "n_future_positions": FUTURE, "n_sink": QUERY_STATS_SKIP, "use_covariance": true, "use_vnorm": true,
                "epsilon": 0.0, "scope": "per-kv-head" })
    }

    fn description(&self) -> &'static str {
        "keeps the keys future queries are expected to attend to most, from a Gaussian fit of the prompt's queries \
         rotated to the next 512 positions, times the value's norm, per kv head"
    }

    fn keep(&self, prefill: &FullStore, budget: usize, _ctx: &StoreContext) -> Vec<Vec<bool>> {
        let scores = scores(prefill);
        top_per_head(prefill, budget, |g| scores[g].clone())
    }
}

/// Per kv head and prompt token, kvpress's expected-attention score (step 5's sinks included).
pub fn scores(prefill: &FullStore) -> Vec<Vec<f32>> {
    let shape = prefill.shape();
    let (heads, kv_heads, d) = (shape.heads, shape.kv_heads, shape.head_dim);
    let group = heads / kv_heads;
    let stats = prefill
        .query_stats()
        .expect("Expected Attention needs a prefill store made for a layer (FullStore::for_layer)");
    let n = prefill.keys(0).len() / d;
    let (base, style) = stats.rope();
    let rotation = mean_rotation(d, n, base, style);
    (0..kv_heads)
        .map(|g| {
            let (keys, values) = (prefill.keys(g), prefill.values(g));
            let mut total = vec![0.0f64; n.saturating_sub(QUERY_STATS_SKIP)];
            for h in g * group..(g + 1) * group {
                let (mean, cov) = stats.moments(h, d);
                let (mean, cov) = rotation.apply(&mean, &cov);
                let logits: Vec<f64> = (QUERY_STATS_SKIP..n)
                    .map(|i| {
                        let k: Vec<f64> = keys[i * d..][..d].iter().map(|&x| x as f64).collect();
                        let linear: f64 = mean.iter().zip(&k).map(|(m, x)| m * x).sum::<f64>() / (d as f64).sqrt();
                        let quadratic: f64 =
                            (0..d).map(|a| k[a] * (0..d).map(|b| cov[a * d + b] * k[b]).sum::<f64>()).sum::<f64>();
                        linear + quadratic / d as f64 / 2.0
                    })
                    .collect();
                let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let sum: f64 = logits.iter().map(|x| (x - max).exp()).sum();
                total.iter_mut().zip(&logits).for_each(|(t, x)| *t += (x - max).exp() / sum);
            }
            let mut score: Vec<f32> = total
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let i = j + QUERY_STATS_SKIP;
                    let norm = values[i * d..][..d].iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                    (t / group as f64 * norm) as f32
                })
                .collect();
            let top = score.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sinks = vec![top + 1.0; n.min(QUERY_STATS_SKIP)];
            score.splice(0..0, sinks);
            score
        })
        .collect()
}

/// `R̄`, the mean over positions `n .. n + FUTURE` of RoPE's rotation: per channel pair `(a, b)`,
/// `[[c̄, −s̄], [s̄, c̄]]` with `c̄`, `s̄` the mean cosine and sine of the pair's angle.
struct MeanRotation {
    d: usize,
    /// Per pair: its channels and `(c̄, s̄)`.
    pairs: Vec<(usize, usize, f64, f64)>,
}

fn mean_rotation(d: usize, n: usize, base: f32, style: Style) -> MeanRotation {
    let pairs = (0..d / 2)
        .map(|i| {
            let theta = (base as f64).powf(-2.0 * i as f64 / d as f64);
            let (c, s) = (n..n + FUTURE).fold((0.0, 0.0), |(c, s), p| {
                let a = p as f64 * theta;
                (c + a.cos(), s + a.sin())
            });
            let (x, y) = match style {
                Style::Adjacent => (2 * i, 2 * i + 1),
                Style::Halves => (i, i + d / 2),
            };
            (x, y, c / FUTURE as f64, s / FUTURE as f64)
        })
        .collect();
    MeanRotation { d, pairs }
}

impl MeanRotation {
    /// `R̄ x` for one vector.
    fn rotate(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.d];
        for &(a, b, c, s) in &self.pairs {
            out[a] = c * x[a] - s * x[b];
            out[b] = s * x[a] + c * x[b];
        }
        out
    }

    /// `(R̄ μ, R̄ Σ R̄ᵀ)`.
    fn apply(&self, mean: &[f64], cov: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        // R̄ Σ: rotate each column; then (R̄ Σ) R̄ᵀ: rotate each row
        let mut left = vec![0.0; d * d];
        for col in 0..d {
            let column: Vec<f64> = (0..d).map(|r| cov[r * d + col]).collect();
            for (r, v) in self.rotate(&column).into_iter().enumerate() {
                left[r * d + col] = v;
            }
        }
        let both = left.chunks_exact(d).flat_map(|row| self.rotate(row)).collect();
        (self.rotate(mean), both)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::rope;

    /// `R̄ x` is the mean of RoPE applied to `x` at each of the next 512 positions, in both
    /// pairings (held to kvbench's own RoPE, which the model's correctness tests hold).
    #[test]
    fn the_mean_rotation_is_ropes_mean_over_the_future_positions() {
        let (d, n) = (16, 300);
        let x: Vec<f32> = (0..d).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.5).collect();
        for style in [Style::Adjacent, Style::Halves] {
            let mut mean = vec![0.0f64; d];
            for p in n..n + FUTURE {
                let mut y = x.clone();
                rope::apply_style(&mut y, d, p as i64, 10_000.0, style);
                mean.iter_mut().zip(&y).for_each(|(m, v)| *m += *v as f64 / FUTURE as f64);
            }
            let got = mean_rotation(d, n, 10_000.0, style).rotate(&x.iter().map(|&v| v as f64).collect::<Vec<_>>());
            for (a, b) in got.iter().zip(&mean) {
                assert!((a - b).abs() < 1e-4, "{style:?}: {got:?} against {mean:?}");
            }
        }
    }
}
