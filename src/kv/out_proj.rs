//! A layer's attention output projection `W_o`, as the methods that weigh a value by what it adds
//! to the residual stream read it (CriticalKV, [`crate::kv::methods::criticalkv`]).
//!
//! The model's runtime hands every global layer's projection to the cache
//! ([`crate::kv::KvCache::with_out_proj`]), dequantized from the GGUF once at load; a replay of
//! recorded probes has none unless its caller attaches them
//! ([`crate::eval::fidelity::Recorded::with_out_proj`]).

use super::Heads;

/// `W_o` of one layer, stored per query head as `[head_dim, hidden]` blocks (the transpose of the
/// GGUF's `[hidden, heads · head_dim]` rows), so a value row times head `h`'s block is one pass
/// over contiguous rows.
#[derive(Debug, Clone)]
pub struct OutProjection {
    heads: usize,
    head_dim: usize,
    hidden: usize,
    /// `[heads · head_dim, hidden]`, row-major.
    rows: Vec<f32>,
}

impl OutProjection {
    /// From the GGUF's weight, `[hidden, heads · head_dim]` row-major (an `nn.Linear` weight);
    /// `None` if its size is not that.
    pub fn from_linear(weight: &[f32], hidden: usize, heads: usize, head_dim: usize) -> Option<Self> {
        let inner = heads * head_dim;
        if weight.len() != hidden * inner || hidden == 0 || inner == 0 {
            return None;
        }
        let mut rows = vec![0.0f32; weight.len()];
        for (o, row) in weight.chunks_exact(inner).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                rows[i * hidden + o] = w;
            }
        }
        Some(Self { heads, head_dim, hidden, rows })
    }

    /// Whether it projects the heads of `shape`.
    pub fn fits(&self, shape: Heads) -> bool {
        self.heads == shape.heads && self.head_dim == shape.head_dim
    }

    /// Per token of kv head `g`'s value rows (`[n, head_dim]`), the L1 norm of `v · W_o[h]` (what
    /// the token's value adds to the residual stream through query head `h`), averaged over the
    /// query heads of `g`'s group in `shape`: CriticalKV's projected value norm.
    ///
    /// Tokens go [`NORM_BLOCK`] at a time, each row of `W_o` read once for the block rather than
    /// once per token; every token's products still accumulate over `k` in order and its heads'
    /// norms add in order, so the result is bit for bit the one token at a time.
    pub fn value_norms(&self, shape: Heads, g: usize, values: &[f32]) -> Vec<f32> {
        let (d, hidden) = (self.head_dim, self.hidden);
        let group = shape.heads / shape.kv_heads;
        let mut norms = Vec::with_capacity(values.len() / d.max(1));
        let mut out = vec![0.0f32; NORM_BLOCK * hidden];
        for block in values.chunks(NORM_BLOCK * d) {
            let tokens = block.len() / d;
            let out = &mut out[..tokens * hidden];
            let mut totals = [0.0f32; NORM_BLOCK];
            for h in g * group..(g + 1) * group {
                out.fill(0.0);
                for k in 0..d {
                    let row = &self.rows[(h * d + k) * hidden..][..hidden];
                    for (v, out) in block.chunks_exact(d).zip(out.chunks_exact_mut(hidden)) {
                        let x = v[k];
                        out.iter_mut().zip(row).for_each(|(o, w)| *o += x * w);
                    }
                }
                for (total, out) in totals.iter_mut().zip(out.chunks_exact(hidden)) {
                    *total += out.iter().map(|o| o.abs()).sum::<f32>();
                }
            }
            norms.extend(totals[..tokens].iter().map(|total| total / group as f32));
        }
        norms
    }
}

/// Tokens per pass over `W_o` in [`OutProjection::value_norms`]: the block's outputs
/// (`NORM_BLOCK · hidden` floats, 36 KiB for SmolLM2's 576) stay in cache while the rows stream.
const NORM_BLOCK: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_norms_are_the_group_mean_of_the_projected_l1_norms() {
        // 2 query heads, 1 kv head, head_dim 2, hidden 3: W_o is [3, 4]
        let weight = [1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, -1.0, 1.0, 1.0, 0.0, 0.0];
        let proj = OutProjection::from_linear(&weight, 3, 2, 2).unwrap();
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 2 };
        // v = [1, 2]: head 0 sees W_o[:, 0..2] = [[1,0],[0,1],[1,1]] → [1, 2, 3], L1 6;
        // head 1 sees W_o[:, 2..4] = [[2,0],[0,-1],[0,0]] → [2, -2, 0], L1 4; mean 5
        assert_eq!(proj.value_norms(shape, 0, &[1.0, 2.0]), [5.0]);
        assert!(OutProjection::from_linear(&weight, 4, 2, 2).is_none());
        assert!(proj.fits(shape) && !proj.fits(Heads { head_dim: 4, ..shape }));
    }

    /// The norms one token at a time, as before tokens went in blocks.
    fn value_norms_per_token(proj: &OutProjection, shape: Heads, g: usize, values: &[f32]) -> Vec<f32> {
        let (d, hidden) = (proj.head_dim, proj.hidden);
        let group = shape.heads / shape.kv_heads;
        let mut out = vec![0.0f32; hidden];
        values
            .chunks_exact(d)
            .map(|v| {
                let mut total = 0.0f32;
                for h in g * group..(g + 1) * group {
                    out.fill(0.0);
                    for (k, &x) in v.iter().enumerate() {
                        let row = &proj.rows[(h * d + k) * hidden..][..hidden];
                        out.iter_mut().zip(row).for_each(|(o, w)| *o += x * w);
                    }
                    total += out.iter().map(|o| o.abs()).sum::<f32>();
                }
                total / group as f32
            })
            .collect()
    }

    #[test]
    fn blocked_value_norms_are_bit_for_bit_the_per_token_ones() {
        use rand::{Rng, SeedableRng};
        // SmolLM2's group of 3 query heads per kv head, a smaller head and hidden size
        let (heads, kv_heads, head_dim, hidden) = (6, 2, 24, 40);
        let shape = Heads { heads, kv_heads, head_dim };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let weight: Vec<f32> = (0..hidden * heads * head_dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let proj = OutProjection::from_linear(&weight, hidden, heads, head_dim).unwrap();
        // whole blocks, a partial last block, a lone token, none
        for n in [3 * NORM_BLOCK + 5, 2 * NORM_BLOCK, NORM_BLOCK - 1, 1, 0] {
            let values: Vec<f32> = (0..n * head_dim).map(|_| rng.random_range(-4.0..4.0)).collect();
            for g in 0..kv_heads {
                let bits = |norms: Vec<f32>| norms.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                let blocked = bits(proj.value_norms(shape, g, &values));
                assert_eq!(blocked.len(), n);
                assert_eq!(blocked, bits(value_norms_per_token(&proj, shape, g, &values)), "{n} tokens, kv head {g}");
            }
        }
    }
}
