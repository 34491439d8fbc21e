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
    /// Tokens go [`NORM_BLOCK`] at a time, `W_o`'s rows read once for the block rather than once
    /// per token, and with AVX two tokens by 32 outputs at a time in registers. Every output still
    /// sums its products over `k` in order from zero, every norm adds its outputs' magnitudes in
    /// order, and the heads' norms add in order: the result is bit for bit the one token at a time
    /// (the test below holds it to that).
    pub fn value_norms(&self, shape: Heads, g: usize, values: &[f32]) -> Vec<f32> {
        let (d, hidden) = (self.head_dim, self.hidden);
        let group = shape.heads / shape.kv_heads;
        let n = values.len() / d;
        let mut norms = Vec::with_capacity(n);
        // the block's values, zero past its last token (a tile's idle row)
        let mut block = vec![0.0f32; NORM_BLOCK * d];
        let mut out = Vec::new();
        for part in values[..n * d].chunks(NORM_BLOCK * d) {
            let tokens = part.len() / d;
            block[..part.len()].copy_from_slice(part);
            block[part.len()..].fill(0.0);
            let mut totals = [0.0f32; NORM_BLOCK];
            for h in g * group..(g + 1) * group {
                let w = &self.rows[h * d * hidden..][..d * hidden];
                let mut l1 = [0.0f32; NORM_BLOCK];
                let done = l1_tiles(w, d, hidden, &block[..tokens.next_multiple_of(2) * d], &mut l1);
                // the outputs the tiles left (all of them without AVX), a row of W_o at a time
                let rest = hidden - done;
                out.clear();
                out.resize(tokens * rest, 0.0f32);
                if rest > 0 {
                    for k in 0..d {
                        let row = &w[k * hidden + done..][..rest];
                        for (v, out) in block.chunks_exact(d).zip(out.chunks_exact_mut(rest)) {
                            let x = v[k];
                            out.iter_mut().zip(row).for_each(|(o, w)| *o += x * w);
                        }
                    }
                }
                for (l1, out) in l1.iter_mut().zip(out.chunks_exact(rest.max(1))) {
                    out.iter().for_each(|o| *l1 += o.abs());
                }
                totals.iter_mut().zip(&l1).for_each(|(total, l1)| *total += l1);
            }
            norms.extend(totals[..tokens].iter().map(|total| total / group as f32));
        }
        norms
    }
}

/// Tokens per pass over `W_o` in [`OutProjection::value_norms`] (even: its tiles are pairs).
const NORM_BLOCK: usize = 32;

/// Outputs per tile of [`l1_tiles`].
const TILE: usize = 32;

/// For `block`'s tokens (`[tokens, d]`, an even count) and one head's `w` (`[d, hidden]`), add to
/// `l1[t]` the magnitudes of the first outputs of `v_t · w`, in order, in whole tiles of
/// [`TILE`]; return how many outputs that was (none without AVX).
fn l1_tiles(w: &[f32], d: usize, hidden: usize, block: &[f32], l1: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        return unsafe { l1_tiles_avx(w, d, hidden, block, l1) };
    }
    let _ = (w, d, hidden, block, l1);
    0
}

/// [`l1_tiles`] with AVX: two tokens by [`TILE`] outputs in eight registers, each output a chain
/// of separate products and sums over `k` in order (no fused multiply-add), as the scalar loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn l1_tiles_avx(w: &[f32], d: usize, hidden: usize, block: &[f32], l1: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let tiles = hidden / TILE;
    assert!(w.len() == d * hidden && block.len().is_multiple_of(2 * d) && block.len() / d <= l1.len());
    for tile in 0..tiles {
        for (pair, l1) in block.chunks_exact(2 * d).zip(l1.chunks_exact_mut(2)) {
            let (v0, v1) = pair.split_at(d);
            let mut acc = [_mm256_setzero_ps(); 8];
            for k in 0..d {
                // SAFETY: row `k`'s tile `tile` is 32 floats inside `w` (length asserted above).
                let row: [__m256; 4] = std::array::from_fn(|i| unsafe {
                    _mm256_loadu_ps(w.as_ptr().add(k * hidden + tile * TILE + 8 * i))
                });
                let (x0, x1) = (_mm256_set1_ps(v0[k]), _mm256_set1_ps(v1[k]));
                for i in 0..4 {
                    acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(x0, row[i]));
                    acc[4 + i] = _mm256_add_ps(acc[4 + i], _mm256_mul_ps(x1, row[i]));
                }
            }
            let mut outs = [0.0f32; 2 * TILE];
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: `outs` holds 64 floats, eight from 8 · i.
                unsafe { _mm256_storeu_ps(outs.as_mut_ptr().add(8 * i), *acc) };
            }
            let (o0, o1) = outs.split_at(TILE);
            for (a, b) in o0.iter().zip(o1) {
                l1[0] += a.abs();
                l1[1] += b.abs();
            }
        }
    }
    tiles * TILE
}

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
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // (heads, kv heads, head_dim, hidden): tiles and a remainder of outputs, no whole tile
        // (the path without AVX), SmolLM2's and Gemma 3's shapes
        for (heads, kv_heads, head_dim, hidden) in [(6, 2, 24, 40), (4, 1, 8, 24), (9, 3, 64, 576), (4, 1, 256, 640)] {
            let shape = Heads { heads, kv_heads, head_dim };
            let weight: Vec<f32> = (0..hidden * heads * head_dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let proj = OutProjection::from_linear(&weight, hidden, heads, head_dim).unwrap();
            // whole blocks and a partial last one of an odd count, one short block, a lone token, none
            let counts = if hidden > 100 {
                vec![NORM_BLOCK + 7]
            } else {
                vec![3 * NORM_BLOCK + 5, 2 * NORM_BLOCK, NORM_BLOCK - 1, 1, 0]
            };
            for n in counts {
                let values: Vec<f32> = (0..n * head_dim).map(|_| rng.random_range(-4.0..4.0)).collect();
                for g in 0..kv_heads {
                    let bits = |norms: Vec<f32>| norms.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                    let blocked = bits(proj.value_norms(shape, g, &values));
                    assert_eq!(blocked.len(), n);
                    let reference = bits(value_norms_per_token(&proj, shape, g, &values));
                    assert_eq!(blocked, reference, "hidden {hidden}: {n} tokens, kv head {g}");
                }
            }
        }
    }
}
