//! Block quantizers of the quantized caches, on `f32` slices: llama.cpp's symmetric `q8_0` and
//! `q4_0` blocks of 32 with one f16 scale, and the asymmetric min–max codes of KIVI and FlexGen
//! (2 or 4 bits packed low bits first, an f16 scale and an f16 minimum per group).
//!
//! The rounding follows the references: llama.cpp's `quantize_row_q8_0_ref` and
//! `quantize_row_q4_0_ref` (scale computed in f32, stored as f16, codes from the f32 scale), and
//! KIVI's `(x - min) / scale` rounded to nearest with `scale = (max - min) / (2^bits - 1)`.

use half::f16;

/// Values per llama.cpp block, and per group of the min–max codes.
pub const QK: usize = 32;

/// Bytes of one `q8_0` block: an f16 scale and 32 signed bytes (8.5 bits per value).
pub const Q8_0_BYTES: usize = 2 + QK;
/// Bytes of one `q4_0` block: an f16 scale and 32 nibbles (4.5 bits per value).
pub const Q4_0_BYTES: usize = 2 + QK / 2;

/// Bytes of one min–max group of `n` values at `bits`: f16 scale, f16 minimum, packed codes.
pub const fn minmax_bytes(n: usize, bits: u32) -> usize {
    4 + n * bits as usize / 8
}

fn push_f16(out: &mut Vec<u8>, x: f32) -> f32 {
    let h = f16::from_f32(x);
    out.extend_from_slice(&h.to_le_bytes());
    h.to_f32()
}

fn read_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// llama.cpp `q8_0`: `d = amax / 127`, `q = round(x / d)`; appends a [`Q8_0_BYTES`] block.
pub fn q8_0_encode(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Inverse of [`q8_0_encode`] for one block.
pub fn q8_0_decode(block: &[u8], out: &mut [f32]) {
    let d = read_f16(block);
    out.iter_mut().zip(&block[2..Q8_0_BYTES]).for_each(|(o, &q)| *o = q as i8 as f32 * d);
}

/// llama.cpp `q4_0`: the value of largest magnitude maps to −8, `d = max / −8`,
/// `q = min(15, trunc(x / d + 8.5))`; appends a [`Q4_0_BYTES`] block (value `j` in the low nibble
/// of byte `j`, value `j + 16` in its high nibble).
pub fn q4_0_encode(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK);
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..QK / 2).map(|j| code(x[j]) | (code(x[j + QK / 2]) << 4)));
}

/// Inverse of [`q4_0_encode`] for one block: `(q − 8) · d`.
pub fn q4_0_decode(block: &[u8], out: &mut [f32]) {
    let d = read_f16(block);
    for (j, &b) in block[2..Q4_0_BYTES].iter().enumerate() {
        out[j] = ((b & 0x0f) as f32 - 8.0) * d;
        out[j + QK / 2] = ((b >> 4) as f32 - 8.0) * d;
    }
}

/// Asymmetric min–max quantization of one group at `bits` (2 or 4), as KIVI and FlexGen do:
/// `scale = (max − min) / (2^bits − 1)`, `q = round((x − min) / scale)`; appends a
/// [`minmax_bytes`] group. Codes are computed against the stored (f16) scale and minimum.
pub fn minmax_encode(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    assert!(bits == 2 || bits == 4, "bits must be 2 or 4");
    let per_byte = 8 / bits as usize;
    assert_eq!(x.len() % per_byte, 0);
    let levels = ((1u32 << bits) - 1) as f32;
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let s = push_f16(out, (hi - lo) / levels);
    let m = push_f16(out, lo);
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for chunk in x.chunks_exact(per_byte) {
        let mut byte = 0u8;
        for (i, &v) in chunk.iter().enumerate() {
            let q = ((v - m) * inv).round().clamp(0.0, levels) as u8;
            byte |= q << (i as u32 * bits);
        }
        out.push(byte);
    }
}

/// Inverse of [`minmax_encode`]: `out[i] = min + q_i · scale` for `out.len()` values.
pub fn minmax_decode(group: &[u8], bits: u32, out: &mut [f32]) {
    let per_byte = 8 / bits as usize;
    let mask = (1u8 << bits) - 1;
    let (s, m) = (read_f16(group), read_f16(&group[2..]));
    for (chunk, &byte) in out.chunks_exact_mut(per_byte).zip(&group[4..]) {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = m + ((byte >> (i as u32 * bits)) & mask) as f32 * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random_block(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect()
    }

    #[test]
    fn q8_0_error_is_within_half_a_step() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let x = random_block(&mut rng, QK);
            let (mut c, mut y) = (Vec::new(), vec![0.0; QK]);
            q8_0_encode(&x, &mut c);
            assert_eq!(c.len(), Q8_0_BYTES);
            q8_0_decode(&c, &mut y);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // half a step of amax/127, plus the f16 rounding of the scale (relative 2^-11) at |q| ≤ 127
            let bound = amax / 127.0 * 0.5 + amax * 2f32.powi(-11) + 1e-6;
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= bound, "{a} -> {b}, bound {bound}");
            }
        }
    }

    #[test]
    fn q4_0_error_is_within_half_a_step_and_keeps_the_extreme() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..200 {
            let x = random_block(&mut rng, QK);
            let (mut c, mut y) = (Vec::new(), vec![0.0; QK]);
            q4_0_encode(&x, &mut c);
            assert_eq!(c.len(), Q4_0_BYTES);
            q4_0_decode(&c, &mut y);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let step = amax / 8.0;
            // the positive end clips at code 15 = +7 steps: up to one step away for values near +amax
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= step * 1.0 + amax * 2f32.powi(-10), "{a} -> {b}, step {step}");
            }
            let i = x.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
            assert!((x[i] - y[i]).abs() <= amax * 2f32.powi(-10));
        }
    }

    #[test]
    fn minmax_error_is_within_half_a_step_and_exact_on_constant_groups() {
        let mut rng = StdRng::seed_from_u64(3);
        for bits in [2, 4] {
            for _ in 0..200 {
                let x = random_block(&mut rng, 32);
                let mut codes = Vec::new();
                minmax_encode(&x, bits, &mut codes);
                assert_eq!(codes.len(), minmax_bytes(32, bits));
                let mut y = vec![0.0; 32];
                minmax_decode(&codes, bits, &mut y);
                let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let step = (hi - lo) / ((1 << bits) - 1) as f32;
                // half a step, plus the f16 rounding of min and scale (the scale's error times the code)
                let bound = step * 0.5 + 2f32.powi(-11) * (lo.abs() + hi.abs() + step * 15.0) + 1e-5;
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= bound, "{bits} bits: {a} -> {b}, bound {bound}");
                }
            }
            for c in [0.0f32, 1.5, -0.25] {
                let x = vec![c; 32];
                let mut codes = Vec::new();
                minmax_encode(&x, bits, &mut codes);
                let mut y = vec![9.0; 32];
                minmax_decode(&codes, bits, &mut y);
                assert_eq!(y, x, "constant group at {bits} bits");
            }
        }
    }

    #[test]
    fn constant_groups_are_exact_for_llama_cpp_blocks_when_representable() {
        let x = vec![0.5f32; QK];
        let (mut c, mut y) = (Vec::new(), vec![0.0; QK]);
        q8_0_encode(&x, &mut c);
        q8_0_decode(&c, &mut y);
        assert!(y.iter().all(|&v| (v - 0.5).abs() < 1e-3));
        let mut c = Vec::new();
        q4_0_encode(&[-0.5; QK], &mut c);
        q4_0_decode(&c, &mut y);
        assert_eq!(y, vec![-0.5; QK]);
    }
}
