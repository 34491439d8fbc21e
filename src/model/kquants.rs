//! Dequantization of the GGML block types Gemma 3's Q4_K_M file mixes in: Q5_0 (the projections
//! whose rows, 640 wide, are no multiple of 256), and the 256-element "k-quant" super-blocks Q4_K
//! and Q6_K.
//!
//! Layouts and arithmetic follow ggml (`ggml-quants.c`, `dequantize_row_*`) and gguf-py
//! (`gguf/quants.py`), which agree: every product is taken in f32 in the same order, so the
//! values are bit for bit theirs (`tests/data/dequant_reference.json`, made by gguf-py from the
//! Gemma file's own blocks, holds us to it).
//!
//! - **Q5_0**, 32 elements in 22 bytes: f16 `d`, 32 high bits `qh` (little-endian u32), 16 bytes
//!   of low nibbles (elements `j` and `j + 16` in byte `j`, low and high); `x = d · (q − 16)`.
//! - **Q4_K**, 256 elements in 144 bytes: f16 `d`, f16 `dmin`, 12 bytes packing eight 6-bit scales
//!   and eight 6-bit minima, 128 bytes of nibbles. Sub-block `s` (32 elements) is
//!   `x = (d · sc_s) · q − dmin · m_s`; each 32 bytes of nibbles hold sub-blocks `2i` (low nibbles)
//!   and `2i + 1` (high).
//! - **Q6_K**, 256 elements in 210 bytes: 128 bytes of low nibbles `ql`, 64 bytes of 2-bit high
//!   parts `qh`, sixteen i8 scales, f16 `d`; `x = (d · sc) · (q − 32)` with one scale per 16
//!   elements.

use half::f16;

/// Elements of a k-quant super-block.
pub const SUPER_BLOCK: usize = 256;
/// Bytes of a Q5_0 block (32 elements).
pub const Q5_0_BYTES: usize = 22;
/// Bytes of a Q4_K super-block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of a Q6_K super-block.
pub const Q6_K_BYTES: usize = 210;

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `blocks` holds whole blocks of `block_bytes` and `out` `block_len` values for each.
fn check(blocks: &[u8], out: &[f32], block_bytes: usize, block_len: usize, what: &str) {
    assert!(
        blocks.len().is_multiple_of(block_bytes) && out.len() == blocks.len() / block_bytes * block_len,
        "dequantize {what}: {} bytes do not hold whole {block_bytes}-byte blocks for {} outputs",
        blocks.len(),
        out.len()
    );
}

/// Dequantizes Q5_0 blocks into `out` (32 values a block).
///
/// # Panics
/// If `blocks` is not whole blocks or `out` has not 32 values for each (a caller bug:
/// [`super::gguf::GgufFile::dequantize`] validates sizes when it parses).
pub fn dequantize_q5_0(blocks: &[u8], out: &mut [f32]) {
    check(blocks, out, Q5_0_BYTES, 32, "Q5_0");
    for (block, out) in blocks.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(block, 0);
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        let (lo, hi) = out.split_at_mut(16);
        for (j, &q) in block[6..].iter().enumerate() {
            let low = i32::from(q & 0x0f) | (((qh >> j) & 1) << 4) as i32;
            let high = i32::from(q >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
            lo[j] = d * (low - 16) as f32;
            hi[j] = d * (high - 16) as f32;
        }
    }
}

/// Scale and minimum of sub-block `j` (0..8) from Q4_K's (and Q5_K's) 12 packed bytes: the first
/// four sub-blocks keep theirs in the low 6 bits of bytes `j` and `j + 4`; the last four put their
/// low 4 bits in byte `j + 4`'s nibbles and their top 2 in the spare bits of bytes `j − 4` and `j`.
fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        ((packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
    }
}

/// Dequantizes Q4_K super-blocks into `out` (256 values each).
///
/// # Panics
/// As [`dequantize_q5_0`], for 144-byte blocks of 256.
pub fn dequantize_q4_k(blocks: &[u8], out: &mut [f32]) {
    check(blocks, out, Q4_K_BYTES, SUPER_BLOCK, "Q4_K");
    for (block, out) in blocks.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(SUPER_BLOCK)) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let (packed, nibbles) = (&block[4..16], &block[16..]);
        for (i, (codes, out)) in nibbles.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (out_lo, out_hi) = out.split_at_mut(32);
            for (half, out) in [(0, out_lo), (1, out_hi)] {
                let (sc, m) = scale_min_k4(2 * i + half, packed);
                let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
                for (o, &q) in out.iter_mut().zip(codes) {
                    *o = scale * f32::from((q >> (4 * half)) & 0x0f) - min;
                }
            }
        }
    }
}

/// Dequantizes Q6_K super-blocks into `out` (256 values each).
///
/// # Panics
/// As [`dequantize_q5_0`], for 210-byte blocks of 256.
pub fn dequantize_q6_k(blocks: &[u8], out: &mut [f32]) {
    check(blocks, out, Q6_K_BYTES, SUPER_BLOCK, "Q6_K");
    for (block, out) in blocks.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(SUPER_BLOCK)) {
        let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
        let d = f16_at(block, 208);
        // two halves of 128 elements, each from 64 bytes of `ql`, 32 of `qh` and 8 scales
        for half in 0..2 {
            let (ql, qh, sc) = (&ql[64 * half..][..64], &qh[32 * half..][..32], &scales[8 * half..][..8]);
            let out = &mut out[128 * half..][..128];
            for l in 0..32 {
                let q = [
                    (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (quarter, &q) in q.iter().enumerate() {
                    let scale = d * f32::from(sc[l / 16 + 2 * quarter] as i8);
                    out[32 * quarter + l] = scale * f32::from(i16::from(q) - 32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case of `tests/data/dequant_reference.json`: a tensor's first blocks and gguf-py's values.
    #[derive(serde::Deserialize)]
    struct Case {
        ggml_type: String,
        tensor: String,
        hex: String,
        /// f32 bit patterns, so that the comparison is exact.
        bits: Vec<u32>,
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn blocks_of_the_gemma_file_dequantize_to_gguf_pys_bits() {
        let reference: Reference =
            serde_json::from_str(include_str!("../../tests/data/dequant_reference.json")).expect("reference parses");
        let mut seen = std::collections::BTreeSet::new();
        for case in &reference.cases {
            let bytes = unhex(&case.hex);
            let mut out = vec![0.0f32; case.bits.len()];
            match case.ggml_type.as_str() {
                "Q5_0" => dequantize_q5_0(&bytes, &mut out),
                "Q4_K" => dequantize_q4_k(&bytes, &mut out),
                "Q6_K" => dequantize_q6_k(&bytes, &mut out),
                other => panic!("no dequantizer for {other}"),
            }
            seen.insert(case.ggml_type.as_str());
            for (i, (got, &want)) in out.iter().zip(&case.bits).enumerate() {
                assert_eq!(
                    got.to_bits(),
                    want,
                    "{} {} element {i}: {got} against gguf-py's {}",
                    case.ggml_type,
                    case.tensor,
                    f32::from_bits(want)
                );
            }
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["Q4_K", "Q5_0", "Q6_K"]);
    }

    #[test]
    fn hand_worked_blocks() {
        // Q5_0: d = 0.5, element 0 has low nibble 3 and high bit 1 → q = 19 → 0.5 · 3 = 1.5;
        // element 16 has high nibble 0 and no high bit → q = 0 → −8
        let mut block = vec![0u8; Q5_0_BYTES];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 1; // bit 0 of qh
        block[6] = 0x03;
        let mut out = [0.0f32; 32];
        dequantize_q5_0(&block, &mut out);
        assert_eq!((out[0], out[16], out[1]), (1.5, -8.0, -8.0));

        // Q4_K: d = 1, dmin = 0.5; sub-block 0 scale 2, min 4; sub-block 5 scale 0b01_0011 = 19
        // (low nibble 3 in byte 9, top bits 01 in byte 1), min 0b10_0001 = 33 (high nibble 1 in
        // byte 9, top bits 10 in byte 5)
        let mut block = vec![0u8; Q4_K_BYTES];
        block[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let packed = &mut block[4..16];
        packed[0] = 2;
        packed[4] = 4;
        packed[9] = 0x13;
        packed[1] = 0b01 << 6;
        packed[5] = 0b10 << 6;
        assert_eq!(scale_min_k4(5, packed), (19, 33));
        block[16] = 0x07; // element 0 (sub-block 0, low nibble) = 7
        block[16 + 64] = 0x50; // element 160 (sub-block 5: bytes 64..96, high nibble) = 5
        let mut out = vec![0.0f32; SUPER_BLOCK];
        dequantize_q4_k(&block, &mut out);
        assert_eq!(out[0], 2.0 * 7.0 - 0.5 * 4.0);
        assert_eq!(out[160], 19.0 * 5.0 - 0.5 * 33.0);
        assert_eq!(out[1], -2.0);

        // Q6_K: d = 0.25, scale 0 = −2; element 0: ql low nibble 5, qh bits 0-1 = 2 → q = 37 − 32 = 5
        // → 0.25 · −2 · 5 = −2.5; element 224 (second half, quarter 3): scale 14 = 3, ql byte
        // 64 + 32 high nibble 1, qh byte 32 bits 6-7 = 3 → q = 49 − 32 = 17 → 0.25 · 3 · 17
        let mut block = vec![0u8; Q6_K_BYTES];
        block[0] = 0x05;
        block[128] = 0x02;
        block[192] = (-2i8) as u8;
        block[192 + 14] = 3;
        block[96] = 0x10;
        block[128 + 32] = 0b11 << 6;
        block[208..].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let mut out = vec![0.0f32; SUPER_BLOCK];
        dequantize_q6_k(&block, &mut out);
        assert_eq!(out[0], -2.5);
        assert_eq!(out[224], 0.25 * 3.0 * 17.0);
    }
}
