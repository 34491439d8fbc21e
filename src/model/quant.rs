//! GGUF Q4_1 matrices as ONNX Runtime's 4-bit `MatMulNBits`, exactly.
//!
//! Decode reads every weight once per token, so its speed is the weights' size over memory
//! bandwidth: fp32 weights (4 bytes each) ran at a third of llama.cpp's decode speed, 4-bit codes
//! (half a byte) do not. `MatMulNBits` computes `scale · (q − 8)` per block of 32 (no zero-point
//! input: the default is 8), while Q4_1 stores `d · q + m`. The two agree after one exact
//! rewrite, `d · q + m = d · (q − 8) + (m + 8d)`, so a row's product is
//!
//! ```text
//! Σ_k x_k w_k = MatMulNBits(x; q, d)  +  Σ_b (Σ_{k ∈ block b} x_k) · (m_b + 8 d_b)
//! ```
//!
//! The second term is a `[T, K/32] × [K/32, N]` product of block sums, 1/32 of the main one.
//! Activations stay fp32 (`accuracy_level` 0): unlike llama.cpp, which rounds them to 8 bits,
//! this keeps kvbench within 0.005 logits of the float64 reference.
//!
//! Nibble order: a Q4_1 block stores element `i` in the low and `i + 16` in the high nibble of
//! byte `i`; `MatMulNBits` stores elements `2j` (low) and `2j + 1` (high) in byte `j`.

use half::f16;

/// Q4_1 block: f16 d, f16 m, 16 bytes of codes.
const Q4_1_BYTES: usize = 20;
/// Elements per block.
pub const BLOCK: usize = 32;

/// One or more Q4_1 matrices (stacked along the output dimension) in `MatMulNBits` form.
#[derive(Debug, Default)]
pub struct NBits {
    /// Codes, `[N, K/32, 16]`.
    pub codes: Vec<u8>,
    /// Scales `d`, `[N, K/32]`.
    pub scales: Vec<f32>,
    /// Block-sum correction `m + 8d`, transposed to `[K/32, N]`.
    pub offsets_t: Vec<f32>,
    /// Output size N.
    pub n: usize,
    /// Input size K.
    pub k: usize,
}

impl NBits {
    /// Repack row-major Q4_1 matrices of input width `k`; each part holds whole rows.
    pub fn from_q4_1(parts: &[&[u8]], k: usize) -> Self {
        assert!(k.is_multiple_of(BLOCK), "input width {k} is not a multiple of {BLOCK}");
        let blocks_per_row = k / BLOCK;
        let row_bytes = blocks_per_row * Q4_1_BYTES;
        let n: usize = parts.iter().map(|p| p.len() / row_bytes).sum();
        let mut out = NBits { n, k, ..Default::default() };
        out.codes.reserve(n * blocks_per_row * 16);
        out.scales.reserve(n * blocks_per_row);
        let mut offsets = Vec::with_capacity(n * blocks_per_row);
        for block in parts.iter().flat_map(|p| p.chunks_exact(Q4_1_BYTES)) {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
            let qs = &block[4..];
            let code = |e: usize| if e < 16 { qs[e] & 0x0f } else { qs[e - 16] >> 4 };
            out.codes.extend((0..16).map(|j| code(2 * j) | (code(2 * j + 1) << 4)));
            out.scales.push(d);
            offsets.push(m + 8.0 * d);
        }
        out.offsets_t = vec![0.0; n * blocks_per_row];
        for (r, row) in offsets.chunks_exact(blocks_per_row).enumerate() {
            for (b, &o) in row.iter().enumerate() {
                out.offsets_t[b * n + r] = o;
            }
        }
        out
    }

    /// Dequantize row `r` the way `MatMulNBits` plus the correction term reads it (for tests).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let bpr = self.k / BLOCK;
        let mut out = Vec::with_capacity(self.k);
        for b in 0..bpr {
            let codes = &self.codes[(r * bpr + b) * 16..][..16];
            let (d, off) = (self.scales[r * bpr + b], self.offsets_t[b * self.n + r]);
            for e in 0..BLOCK {
                let q = (codes[e / 2] >> (4 * (e % 2))) & 0x0f;
                out.push(d * (q as f32 - 8.0) + off);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::dequantize_q4_1;

    fn block(d: f32, m: f32, codes: [u8; 32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(f16::from_f32(d).to_le_bytes());
        b.extend(f16::from_f32(m).to_le_bytes());
        b.extend((0..16).map(|i| codes[i] | (codes[i + 16] << 4)));
        b
    }

    #[test]
    fn repacked_rows_equal_q4_1_dequantization() {
        // two rows of two blocks each, split over two parts (as q and k would be)
        let codes: [u8; 32] = std::array::from_fn(|i| (i * 7 % 16) as u8);
        let rev: [u8; 32] = std::array::from_fn(|i| 15 - codes[i]);
        let row0 = [block(0.5, -3.0, codes), block(0.125, 1.0, rev)].concat();
        let row1 = [block(2.0, 0.0, rev), block(0.0, 0.75, codes)].concat();
        let packed = NBits::from_q4_1(&[&row0, &row1], 64);
        assert_eq!((packed.n, packed.k), (2, 64));
        for (r, raw) in [&row0, &row1].into_iter().enumerate() {
            let mut want = vec![0.0; 64];
            dequantize_q4_1(raw, &mut want);
            let got = packed.row(r);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "row {r}: {got:?} vs {want:?}");
            }
        }
        // element 0 of row 0: code 0 → 0.5·0 − 3 = −3; element 1: code 7 → 0.5·7 − 3 = 0.5
        assert_eq!(&packed.row(0)[..2], &[-3.0, 0.5]);
    }
}
