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

/// Which elements a rotation pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Style {
    /// `(x[2i], x[2i+1])`: llama.cpp's "normal" RoPE on GGUF's permuted llama weights.
    Adjacent,
    /// `(x[i], x[i + d/2])`: GPT-NeoX's and Hugging Face's `rotate_half`, on unpermuted weights
    /// (Gemma 3; llama.cpp's `LLAMA_ROPE_TYPE_NEOX`).
    Halves,
}

/// `(cos, sin)` of pair `i`'s angle, by llama.cpp's fp32 recurrence.
fn angles(head_dim: usize, position: i64, base: f32) -> [(f32, f32); 256] {
    let mut table = [(0.0f32, 0.0f32); 256];
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    let mut theta = position as f32;
    for entry in table.iter_mut().take(head_dim / 2) {
        *entry = (theta.cos(), theta.sin());
        theta *= theta_scale;
    }
    table
}

/// `(cos, sin)` of pair `i`'s angle `position · base^(−2i/d)`, computed in f64 and rounded once:
/// the recurrence drifts by tens of ulps at Gemma's context lengths (0.007 rad at position 32,767),
/// and the reference this style is held to is transformers in float64.
fn exact_angles(head_dim: usize, position: i64, base: f32) -> [(f32, f32); 256] {
    let mut table = [(0.0f32, 0.0f32); 256];
    for (i, entry) in table.iter_mut().take(head_dim / 2).enumerate() {
        let theta = position as f64 * f64::from(base).powf(-2.0 * i as f64 / head_dim as f64);
        *entry = (theta.cos() as f32, theta.sin() as f32);
    }
    table
}

/// Rotate every `head_dim`-wide head of `x` in place, pairing elements by `style`. `Adjacent`
/// keeps llama.cpp's fp32 angle recurrence (kvbench's SmolLM2 numbers rest on it); `Halves` takes
/// each angle in f64 ([`exact_angles`]).
///
/// # Panics
/// If `head_dim` is odd or above 512.
pub fn apply_style(x: &mut [f32], head_dim: usize, position: i64, base: f32, style: Style) {
    assert!(head_dim.is_multiple_of(2) && head_dim <= 512, "head size {head_dim}");
    match style {
        Style::Adjacent => apply(x, head_dim, position, base),
        Style::Halves => {
            let half = head_dim / 2;
            let table = exact_angles(head_dim, position, base);
            for head in x.chunks_exact_mut(head_dim) {
                let (lo, hi) = head.split_at_mut(half);
                for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi).zip(&table[..half]) {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * cos - x1 * sin;
                    *b = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// Rotate every `head_dim`-wide head of `x` (one token, `heads * head_dim` values) in place.
pub fn apply(x: &mut [f32], head_dim: usize, position: i64, base: f32) {
    let pairs = head_dim / 2;
    let table = angles(head_dim, position, base);
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
    use super::{Style, apply, apply_style};

    #[test]
    fn halves_rope_equals_hf_rope_and_adjacent_is_the_old_one() {
        // Gemma 3's head of 256, at its two bases
        let d = 256;
        let hf: Vec<f64> = (0..d).map(|i| ((i * 53 % 17) as f64 - 8.0) / 5.0).collect();
        for base in [10_000.0f32, 1_000_000.0] {
            for position in [0i64, 1, 511, 512, 8191, 32_767] {
                let expected = hf_rope(&hf, position as f64, base as f64);
                let mut x: Vec<f32> = hf.iter().map(|&v| v as f32).collect();
                apply_style(&mut x, d, position, base, Style::Halves);
                for j in 0..d {
                    let err = (x[j] as f64 - expected[j]).abs();
                    assert!(
                        err < 1e-5 * (1.0 + expected[j].abs()),
                        "base {base} pos {position} dim {j}: {} vs {}",
                        x[j],
                        expected[j]
                    );
                }
            }
        }
        let x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.21).cos()).collect();
        let (mut a, mut b) = (x.clone(), x);
        apply(&mut a, 64, 77, 100_000.0);
        apply_style(&mut b, 64, 77, 100_000.0, Style::Adjacent);
        assert_eq!(a, b);
    }

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
