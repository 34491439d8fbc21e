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
    pub fn value_norms(&self, shape: Heads, g: usize, values: &[f32]) -> Vec<f32> {
        let (d, hidden) = (self.head_dim, self.hidden);
        let group = shape.heads / shape.kv_heads;
        let mut out = vec![0.0f32; hidden];
        values
            .chunks_exact(d)
            .map(|v| {
                let mut total = 0.0f32;
                for h in g * group..(g + 1) * group {
                    out.fill(0.0);
                    for (k, &x) in v.iter().enumerate() {
                        let row = &self.rows[(h * d + k) * hidden..][..hidden];
                        out.iter_mut().zip(row).for_each(|(o, w)| *o += x * w);
                    }
                    total += out.iter().map(|o| o.abs()).sum::<f32>();
                }
                total / group as f32
            })
            .collect()
    }
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
}
