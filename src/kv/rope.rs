//! Rotary position embedding, as llama.cpp applies it to GGUF llama weights.
//!
//! GGUF stores llama's Q and K projections permuted so that the rotation acts on *adjacent*
//! pairs `(x[2i], x[2i+1])` (llama.cpp's "normal" RoPE), where Hugging Face rotates the halves
//! `(x[i], x[i + d/2])`. Rotating adjacent pairs of the GGUF-layout vectors is therefore the
//! same model; the unit tests check it against the half-rotation on un-permuted vectors.
//!
//! The angles follow llama.cpp's fp32 recurrence (`theta *= base^(-2/d)` per pair) rather than
//! a fresh `powf` per pair, so that our rotated keys match the reference engine's bit for bit
//! as far as fp32 allows.

/// Rotate every `head_dim`-wide head of `x` (one token, `heads * head_dim` values) in place.
pub fn apply(x: &mut [f32], head_dim: usize, position: i64, base: f32) {
    let pairs = head_dim / 2;
    let mut table = [(0.0f32, 0.0f32); 256];
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    let mut theta = position as f32;
    for entry in table.iter_mut().take(pairs) {
        *entry = (theta.cos(), theta.sin());
        theta *= theta_scale;
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(&table[..pairs]) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * cos - x1 * sin;
            pair[1] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply;

    /// Hugging Face's `rotate_half` RoPE in f64 on the un-permuted layout.
    fn hf_rope(x: &[f64], position: f64, base: f64) -> Vec<f64> {
        let d = x.len();
        let mut out = vec![0.0; d];
        for i in 0..d / 2 {
            let theta = position * base.powf(-2.0 * i as f64 / d as f64);
            let (c, s) = (theta.cos(), theta.sin());
            out[i] = x[i] * c - x[i + d / 2] * s;
            out[i + d / 2] = x[i + d / 2] * c + x[i] * s;
        }
        out
    }

    /// llama.cpp's convert permutation: HF index of the value GGUF stores at `j`.
    fn gguf_from_hf(j: usize, d: usize) -> usize {
        // GGUF row j = (pair i = j / 2, member r = j % 2) holds HF row r * d/2 + i.
        (j % 2) * (d / 2) + j / 2
    }

    #[test]
    fn adjacent_pair_rope_on_gguf_layout_equals_hf_rope() {
        let d = 64;
        let hf: Vec<f64> = (0..d).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
        for position in [0i64, 1, 7, 100, 4095, 8191] {
            let expected = hf_rope(&hf, position as f64, 100_000.0);
            let mut gguf: Vec<f32> = (0..d).map(|j| hf[gguf_from_hf(j, d)] as f32).collect();
            apply(&mut gguf, d, position, 100_000.0);
            for j in 0..d {
                let want = expected[gguf_from_hf(j, d)];
                let err = (gguf[j] as f64 - want).abs();
                // The fp32 angle recurrence drifts by a few ulps of theta at large positions.
                assert!(err < 2e-3 * (1.0 + want.abs()), "pos {position} dim {j}: {} vs {want}", gguf[j]);
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = x.clone();
        apply(&mut y, 64, 0, 100_000.0);
        assert_eq!(x, y);
        apply(&mut y, 64, 1234, 100_000.0);
        for (a, b) in x.chunks(2).zip(y.chunks(2)) {
            let (na, nb) = (a[0] * a[0] + a[1] * a[1], b[0] * b[0] + b[1] * b[1]);
            assert!((na - nb).abs() < 1e-5 * (1.0 + na));
        }
    }
}
