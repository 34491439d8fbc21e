//! Grouped-query attention of a chunk of new queries over what a cache holds.
//!
//! Per query head, two blocked matrix products (`matrixmultiply`'s AVX2/FMA sgemm) around a
//! masked softmax: `S = scale · Q_h Kᵀ`, `O_h = softmax(S) V`. Query heads run in parallel on
//! rayon's pool. Query head `h` reads key/value head `h / group`, as llama.cpp and Hugging Face
//! do for GQA.
//!
//! Causality: the chunk's `t` queries are the last `t` tokens of the view, so query `j` sees the
//! first `n - t + j + 1` entries. A method that keeps fewer tokens passes a shorter view; the
//! newest `t` entries must still be the chunk's own keys, in order.

use rayon::prelude::*;

/// Shape of the attention problem.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
}

/// One key/value head's contents: `n` rows of `head_dim` keys and values, row-major.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    /// Keys, `[n, head_dim]`.
    pub keys: &'a [f32],
    /// Values, `[n, head_dim]`.
    pub values: &'a [f32],
}

/// Attend `t` query rows to the views.
///
/// `q` holds `t` rows of stride `q_stride`, each starting with `heads * head_dim` post-RoPE query
/// values. `kv` has one view per key/value head, all of equal length `n ≥ t`. Writes `t` rows of
/// `heads * head_dim` values to `out`.
pub fn attend(shape: Heads, q: &[f32], q_stride: usize, t: usize, kv: &[KvView<'_>], out: &mut [f32]) {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    assert_eq!(kv.len(), kv_heads, "one view per kv head");
    let n = kv[0].keys.len() / d;
    assert!(n >= t, "the view must contain the chunk's own keys");
    assert!(q.len() >= (t - 1) * q_stride + heads * d && out.len() == t * heads * d);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();

    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let view = kv[h / group];
            let mut scores = vec![0.0f32; t * n];
            // S[t, n] = scale · Q_h[t, d] · K[n, d]ᵀ
            unsafe {
                matrixmultiply::sgemm(
                    t,
                    d,
                    n,
                    scale,
                    q.as_ptr().add(h * d),
                    q_stride as isize,
                    1,
                    view.keys.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    scores.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            for (j, row) in scores.chunks_exact_mut(n).enumerate() {
                softmax_prefix(row, n - t + j + 1);
            }
            let mut o = vec![0.0f32; t * d];
            // O_h[t, d] = P[t, n] · V[n, d]
            unsafe {
                matrixmultiply::sgemm(
                    t,
                    n,
                    d,
                    1.0,
                    scores.as_ptr(),
                    n as isize,
                    1,
                    view.values.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    o.as_mut_ptr(),
                    d as isize,
                    1,
                );
            }
            o
        })
        .collect();

    for (h, o) in per_head.iter().enumerate() {
        for j in 0..t {
            out[j * heads * d + h * d..][..d].copy_from_slice(&o[j * d..][..d]);
        }
    }
}

/// Softmax over `row[..visible]`, zeros after it.
fn softmax_prefix(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in live.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

/// Straightforward f64 attention, the reference the kernel is tested against.
#[cfg(test)]
pub(crate) fn naive(shape: Heads, q: &[f32], t: usize, kv: &[KvView<'_>]) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let n = kv[0].keys.len() / d;
    let mut out = vec![0.0f32; t * heads * d];
    for j in 0..t {
        for h in 0..heads {
            let view = kv[h / (heads / kv_heads)];
            let qv = &q[j * heads * d + h * d..][..d];
            let visible = n - t + j + 1;
            let scores: Vec<f64> = (0..visible)
                .map(|i| {
                    let k = &view.keys[i * d..][..d];
                    qv.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = w.iter().sum();
            for c in 0..d {
                let acc: f64 = (0..visible).map(|i| w[i] * view.values[i * d + c] as f64).sum();
                out[j * heads * d + h * d + c] = (acc / z) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
    }

    fn relative_error(got: &[f32], want: &[f32]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn matches_naive_reference_on_random_inputs() {
        let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(7);
        // prefill chunk (t = n), chunk after a prefix, single decode step
        for (t, n) in [(17, 17), (40, 300), (1, 513)] {
            let q = random(&mut rng, t * 9 * 64, 2.0);
            let keys: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n * 64, 2.0)).collect();
            let values: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n * 64, 1.0)).collect();
            let kv: Vec<KvView> = keys.iter().zip(&values).map(|(k, v)| KvView { keys: k, values: v }).collect();
            let mut out = vec![0.0; t * 9 * 64];
            attend(shape, &q, 9 * 64, t, &kv, &mut out);
            let err = relative_error(&out, &naive(shape, &q, t, &kv));
            assert!(err <= 1e-5, "t={t} n={n}: relative error {err}");
        }
    }

    #[test]
    fn first_query_of_a_prompt_returns_its_own_value() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let q = vec![1.0; 2 * 8];
        let keys = vec![0.5; 2 * 4];
        let values = vec![1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0];
        let mut out = vec![0.0; 2 * 8];
        attend(shape, &q, 8, 2, &[KvView { keys: &keys, values: &values }], &mut out);
        assert_eq!(&out[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&out[4..8], &[1.0, 2.0, 3.0, 4.0]);
        // second query sees both tokens with equal scores: the mean
        assert_eq!(&out[8..12], &[5.0, 5.5, 6.0, 6.5]);
    }
}
