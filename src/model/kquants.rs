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
//!
//! Every one of them (and Q8_0) is a code of at most 8 bits times a per-block scale, less a
//! per-block minimum for Q4_K: [`Q8Blocks`] holds a matrix in that form, from which both the
//! dequantized fp32 weights and the 8-bit decode-step products of `kvbench.Q8Linear` are taken.

use half::f16;

use super::gguf::GgmlType;

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

/// A block-quantized matrix as 8-bit codes: element `i` is `scales[b] · codes[i] − mins[b]`
/// for its block `b = i / block` (no minimum: `scales[b] · codes[i]`). Q8_0, Q5_0, Q4_K and Q6_K
/// are all of this form, each code fitting a byte, so [`Self::decode`] is exact: what
/// [`Self::dequantize`] gives is ggml's dequantization bit for bit (the same two f32 operations
/// on the same operands). `kvbench.Q8Linear` ([`super::head`]) multiplies by such a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Blocks {
    /// Elements per scale (16 or 32).
    pub block: usize,
    /// One per element, row-major as in the file.
    pub codes: Vec<i8>,
    /// One per block.
    pub scales: Vec<f32>,
    /// One per block where the format has them (Q4_K).
    pub mins: Option<Vec<f32>>,
}

impl Q8Blocks {
    /// The codes, scales and minima of `blocks` of `ggml_type`; `None` for a type not of this
    /// form (the float types, Q4_0 and Q4_1, which have their own paths).
    ///
    /// # Panics
    /// If `blocks` is not whole blocks of the type (a caller bug: the GGUF reader validates sizes).
    pub fn decode(ggml_type: GgmlType, blocks: &[u8]) -> Option<Self> {
        let bytes = ggml_type.block_bytes();
        assert!(
            blocks.len().is_multiple_of(bytes),
            "{ggml_type:?}: {} bytes do not hold whole {bytes}-byte blocks",
            blocks.len()
        );
        let n = blocks.len() / bytes * ggml_type.block_len();
        let mut out = Self { block: 32, codes: vec![0; n], scales: Vec::with_capacity(n / 16), mins: None };
        match ggml_type {
            GgmlType::Q8_0 => {
                for (block, codes) in blocks.chunks_exact(bytes).zip(out.codes.chunks_exact_mut(32)) {
                    out.scales.push(f16_at(block, 0));
                    for (c, &q) in codes.iter_mut().zip(&block[2..]) {
                        *c = q as i8;
                    }
                }
            }
            GgmlType::Q5_0 => {
                for (block, codes) in blocks.chunks_exact(bytes).zip(out.codes.chunks_exact_mut(32)) {
                    out.scales.push(f16_at(block, 0));
                    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                    let (lo, hi) = codes.split_at_mut(16);
                    for (j, &q) in block[6..].iter().enumerate() {
                        lo[j] = ((q & 0x0f) | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16;
                        hi[j] = ((q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i8 - 16;
                    }
                }
            }
            GgmlType::Q4_K => {
                let mut mins = Vec::with_capacity(n / 32);
                for (block, codes) in blocks.chunks_exact(bytes).zip(out.codes.chunks_exact_mut(SUPER_BLOCK)) {
                    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                    let (packed, nibbles) = (&block[4..16], &block[16..]);
                    for (i, (nib, codes)) in nibbles.chunks_exact(32).zip(codes.chunks_exact_mut(64)).enumerate() {
                        let (lo, hi) = codes.split_at_mut(32);
                        for (half, codes) in [(0, lo), (1, hi)] {
                            let (sc, m) = scale_min_k4(2 * i + half, packed);
                            out.scales.push(d * f32::from(sc));
                            mins.push(dmin * f32::from(m));
                            for (c, &q) in codes.iter_mut().zip(nib) {
                                *c = ((q >> (4 * half)) & 0x0f) as i8;
                            }
                        }
                    }
                }
                out.mins = Some(mins);
            }
            GgmlType::Q6_K => {
                out.block = 16;
                for (block, codes) in blocks.chunks_exact(bytes).zip(out.codes.chunks_exact_mut(SUPER_BLOCK)) {
                    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
                    let d = f16_at(block, 208);
                    // element `e` of the super-block has scale `e / 16`
                    out.scales.extend(scales.iter().map(|&sc| d * f32::from(sc as i8)));
                    // two halves of 128 elements, each from 64 bytes of `ql` and 32 of `qh`
                    for half in 0..2 {
                        let (ql, qh) = (&ql[64 * half..][..64], &qh[32 * half..][..32]);
                        let codes = &mut codes[128 * half..][..128];
                        for l in 0..32 {
                            let q = [
                                (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                                (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                            ];
                            for (quarter, &q) in q.iter().enumerate() {
                                codes[32 * quarter + l] = q as i8 - 32;
                            }
                        }
                    }
                }
            }
            _ => return None,
        }
        Some(out)
    }

    /// `scales[b] · codes[i] − mins[b]` into `out` (one value per code).
    pub fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.codes.len(), "dequantize: {} outputs for {} codes", out.len(), self.codes.len());
        let blocks = out.chunks_exact_mut(self.block).zip(self.codes.chunks_exact(self.block));
        for (b, (out, codes)) in blocks.enumerate() {
            let s = self.scales[b];
            match &self.mins {
                Some(mins) => out.iter_mut().zip(codes).for_each(|(o, &c)| *o = s * f32::from(c) - mins[b]),
                None => out.iter_mut().zip(codes).for_each(|(o, &c)| *o = s * f32::from(c)),
            }
        }
    }

    /// The same values with a scale (and minimum) every `block` elements, `block` dividing
    /// this one's: each scale repeated, so the values are unchanged.
    pub fn reblocked(mut self, block: usize) -> Self {
        assert!(self.block.is_multiple_of(block), "reblock {} into {block}", self.block);
        let times = self.block / block;
        let repeat = |v: &[f32]| -> Vec<f32> { v.iter().flat_map(|&x| std::iter::repeat_n(x, times)).collect() };
        self.mins = self.mins.as_deref().map(repeat);
        self.scales = repeat(&self.scales);
        self.block = block;
        self
    }

    /// The rows of `parts` stacked (their matrices' rows one after another), in the finest block of
    /// any of them and with minima (zero where a part has none) if any has them: the values of
    /// each part are unchanged (`s · c − 0` is `s · c`).
    pub fn stack(parts: Vec<Self>) -> Self {
        let block = parts.iter().map(|p| p.block).min().expect("at least one part");
        let any_mins = parts.iter().any(|p| p.mins.is_some());
        let mut out = Self { block, codes: Vec::new(), scales: Vec::new(), mins: any_mins.then(Vec::new) };
        for part in parts {
            let part = part.reblocked(block);
            if let Some(mins) = &mut out.mins {
                mins.extend(part.mins.unwrap_or_else(|| vec![0.0; part.scales.len()]));
            }
            out.codes.extend(part.codes);
            out.scales.extend(part.scales);
        }
        out
    }
}

/// Dequantizes `blocks` of a [`Q8Blocks`] type (Q8_0, Q5_0, Q4_K, Q6_K) into `out`.
///
/// # Panics
/// If `blocks` is not whole blocks or `out` has not a value for each element (a caller bug:
/// [`super::gguf::GgufFile::dequantize`] validates sizes when it parses), or the type is none of
/// those four.
pub fn dequantize(ggml_type: GgmlType, blocks: &[u8], out: &mut [f32]) {
    Q8Blocks::decode(ggml_type, blocks)
        .unwrap_or_else(|| panic!("{ggml_type:?} is not an 8-bit-code block type"))
        .dequantize(out);
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
                "Q5_0" => dequantize(GgmlType::Q5_0, &bytes, &mut out),
                "Q4_K" => dequantize(GgmlType::Q4_K, &bytes, &mut out),
                "Q6_K" => dequantize(GgmlType::Q6_K, &bytes, &mut out),
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
        dequantize(GgmlType::Q5_0, &block, &mut out);
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
        dequantize(GgmlType::Q4_K, &block, &mut out);
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
        dequantize(GgmlType::Q6_K, &block, &mut out);
        assert_eq!(out[0], -2.5);
        assert_eq!(out[224], 0.25 * 3.0 * 17.0);
    }

    #[test]
    fn q8_0_codes_stacks_and_reblocks_keep_every_value() {
        // two Q8_0 blocks and a Q4_K super-block with nonzero minima, stacked in blocks of 16
        let mut q8 = Vec::new();
        for (d, base) in [(0.25f32, 3i32), (-0.125, -100)] {
            q8.extend(half::f16::from_f32(d).to_le_bytes());
            q8.extend((0..32).map(|i| (base + 7 * i) as i8 as u8));
        }
        let mut q4k = vec![0u8; Q4_K_BYTES];
        q4k[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        q4k[2..4].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        for (i, b) in q4k[4..].iter_mut().enumerate() {
            *b = (i * 29 + 11) as u8;
        }
        let mut want_q8 = vec![0.0f32; 64];
        super::super::gguf::dequantize_q8_0(&q8, &mut want_q8);
        let mut want_q4k = vec![0.0f32; SUPER_BLOCK];
        dequantize(GgmlType::Q4_K, &q4k, &mut want_q4k);

        let a = Q8Blocks::decode(GgmlType::Q8_0, &q8).expect("Q8_0 is 8-bit codes");
        let mut got = vec![0.0f32; 64];
        a.dequantize(&mut got);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want_q8));

        let b = Q8Blocks::decode(GgmlType::Q4_K, &q4k).expect("Q4_K is 8-bit codes");
        assert!(b.mins.as_ref().is_some_and(|m| m.iter().any(|&m| m != 0.0)), "the case exercises minima");
        let stacked = Q8Blocks::stack(vec![a.reblocked(16), b]);
        assert_eq!((stacked.block, stacked.scales.len()), (16, 4 + 16));
        let mut got = vec![0.0f32; 64 + SUPER_BLOCK];
        stacked.dequantize(&mut got);
        assert_eq!(bits(&got), bits(&[want_q8, want_q4k].concat()));
        assert_eq!(Q8Blocks::decode(GgmlType::Q4_1, &[0; 20]), None);
    }
}
