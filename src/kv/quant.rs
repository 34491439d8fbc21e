//! Block quantizers of the quantized caches, on `f32` slices: llama.cpp's blocks of 32 (the
//! symmetric `q8_0`, `q4_0` and `q5_0` with one f16 scale, the asymmetric `q4_1` and `q5_1` with
//! an f16 scale and minimum), and the asymmetric min–max codes of KIVI and FlexGen (2 or 4 bits
//! packed low bits first, an f16 scale and an f16 minimum per group).
//!
//! The rounding and the byte layouts follow the references: ggml's `quantize_row_<type>_ref`
//! (scale and minimum computed in f32 and stored as f16, codes from the f32 ones; `q5_*` keep
//! each code's fifth bit in a 32-bit `qh` word, bit `j` for value `j`), held bit for bit to
//! gguf-py's quantizers, which reproduce ggml's (`tests/data/kv_quant_reference.json`; like
//! gguf-py, `x · id + c` is rounded twice, where a C compiler may fuse it into one FMA: the two
//! can part only for a value within an ulp of a code boundary); and
//! KIVI's `(x - min) / scale` rounded to nearest with `scale = (max - min) / (2^bits - 1)`.

use half::f16;

/// Values per llama.cpp block, and per group of the min–max codes.
pub const QK: usize = 32;

/// Bytes of one `q8_0` block: an f16 scale and 32 signed bytes (8.5 bits per value).
pub const Q8_0_BYTES: usize = 2 + QK;
/// Bytes of one `q4_0` block: an f16 scale and 32 nibbles (4.5 bits per value).
pub const Q4_0_BYTES: usize = 2 + QK / 2;

/// Bytes of one `q4_1` block: f16 scale and minimum, 32 nibbles (5 bits per value).
pub const Q4_1_BYTES: usize = 4 + QK / 2;
/// Bytes of one `q5_0` block: an f16 scale, the fifth bits, 32 nibbles (5.5 bits per value).
pub const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
/// Bytes of one `q5_1` block: f16 scale and minimum, the fifth bits, 32 nibbles (6 bits per value).
pub const Q5_1_BYTES: usize = 4 + 4 + QK / 2;

/// Bytes of one `iq4_nl` block: an f16 scale and 32 nibbles indexing a non-linear table (4.5 bits
/// per value).
pub const IQ4_NL_BYTES: usize = 2 + QK / 2;

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
    signed_block(x, 8, false, out);
}

/// Inverse of [`q4_0_encode`] for one block: `(q − 8) · d`.
pub fn q4_0_decode(block: &[u8], out: &mut [f32]) {
    signed_block_decode(block, 8, false, out);
}

/// ggml's symmetric blocks of `2 · half` levels (`q4_0`: 8, `q5_0`: 16): the value of largest
/// magnitude (the first of equal ones) maps to `−half`, `d = max / −half`,
/// `q = min(2·half − 1, trunc(x / d + half + 0.5))`; the fifth bits first with `high`.
fn signed_block(x: &[f32], half: u8, high: bool, out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK);
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -f32::from(half);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    let (offset, top) = (f32::from(half) + 0.5, (2 * half - 1) as i8);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v * id + offset) as i8).min(top) as u8;
    }
    pack_nibbles(&codes, high, out);
}

fn signed_block_decode(block: &[u8], half: u8, high: bool, out: &mut [f32]) {
    let d = read_f16(block);
    for (o, q) in out.iter_mut().zip(unpack_nibbles(&block[2..], high)) {
        *o = (f32::from(q) - f32::from(half)) * d;
    }
}

/// The block's minimum and maximum.
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Packs 32 codes of up to 5 bits as ggml does: the low nibbles of values `j` and `j + 16` in
/// byte `j`; with `high`, first the 32-bit little-endian word of fifth bits (bit `j`: value `j`).
fn pack_nibbles(codes: &[u8; QK], high: bool, out: &mut Vec<u8>) {
    if high {
        let qh = codes.iter().enumerate().fold(0u32, |h, (j, &q)| h | (u32::from(q >> 4) << j));
        out.extend_from_slice(&qh.to_le_bytes());
    }
    out.extend((0..QK / 2).map(|j| (codes[j] & 0x0f) | ((codes[j + QK / 2] & 0x0f) << 4)));
}

/// Inverse of [`pack_nibbles`]: the 32 codes of `bytes` (the `qh` word first with `high`).
fn unpack_nibbles(bytes: &[u8], high: bool) -> [u8; QK] {
    let (qh, qs) =
        if high { (u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), &bytes[4..]) } else { (0, bytes) };
    let mut codes = [0u8; QK];
    for (j, &b) in qs[..QK / 2].iter().enumerate() {
        codes[j] = (b & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + QK / 2] = (b >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    codes
}

/// llama.cpp `q4_1`: `d = (max − min) / 15`, `q = min(15, trunc((x − min) / d + 0.5))`; appends
/// a [`Q4_1_BYTES`] block (f16 `d`, f16 `min`, nibbles).
pub fn q4_1_encode(x: &[f32], out: &mut Vec<u8>) {
    minmax_block(x, 15, false, out);
}

/// Inverse of [`q4_1_encode`]: `q · d + min`.
pub fn q4_1_decode(block: &[u8], out: &mut [f32]) {
    minmax_block_decode(block, false, out);
}

/// llama.cpp `q5_1`: as `q4_1` with 31 levels (`q = trunc((x − min) / d + 0.5)`, at most 31);
/// appends a [`Q5_1_BYTES`] block (f16 `d`, f16 `min`, `qh`, nibbles).
pub fn q5_1_encode(x: &[f32], out: &mut Vec<u8>) {
    minmax_block(x, 31, true, out);
}

/// Inverse of [`q5_1_encode`]: `q · d + min`.
pub fn q5_1_decode(block: &[u8], out: &mut [f32]) {
    minmax_block_decode(block, true, out);
}

fn minmax_block(x: &[f32], levels: u8, high: bool, out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK);
    let (lo, hi) = min_max(x);
    let d = (hi - lo) / f32::from(levels);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    push_f16(out, lo);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (((v - lo) * id + 0.5) as u8).min(levels);
    }
    pack_nibbles(&codes, high, out);
}

fn minmax_block_decode(block: &[u8], high: bool, out: &mut [f32]) {
    let (d, m) = (read_f16(block), read_f16(&block[2..]));
    for (o, q) in out.iter_mut().zip(unpack_nibbles(&block[4..], high)) {
        *o = f32::from(q) * d + m;
    }
}

/// llama.cpp `q5_0`: the value of largest magnitude maps to −16, `d = max / −16`,
/// `q = min(31, trunc(x / d + 16.5))`; appends a [`Q5_0_BYTES`] block (f16 `d`, `qh`, nibbles).
pub fn q5_0_encode(x: &[f32], out: &mut Vec<u8>) {
    signed_block(x, 16, true, out);
}

/// Inverse of [`q5_0_encode`]: `(q − 16) · d`.
pub fn q5_0_decode(block: &[u8], out: &mut [f32]) {
    signed_block_decode(block, 16, true, out);
}

/// ggml's `kvalues_iq4nl`: the 16 levels of `iq4_nl`, denser near zero.
pub const IQ4_NL_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// ggml's `best_index_int8`: the level nearest `x` (a tie to the upper one).
fn iq4_nl_index(x: f32) -> u8 {
    let level = |i: usize| IQ4_NL_LEVELS[i] as f32;
    if x <= level(0) {
        return 0;
    }
    if x >= level(15) {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < level(mid) { hi = mid } else { lo = mid }
    }
    if x - level(hi - 1) < level(hi) - x { (hi - 1) as u8 } else { hi as u8 }
}

/// llama.cpp `iq4_nl`, as its cache writes it (`quantize_row_iq4_nl_ref`, no scale search): the
/// value of largest magnitude (the first of equal ones) maps to −127, `d = max / −127`, each value
/// to the nearest level of `x / d`, then `d` is refit by weighted least squares,
/// `d = Σ wqx / Σ wq²` with `w = x²`, and stored as f16 (the codes are not refit to it). Value
/// `j` in the low nibble of byte `j`, value `j + 16` in its high nibble; appends an
/// [`IQ4_NL_BYTES`] block. (A block of zeros stores `d = 0`; ggml leaves its nibbles as the
/// previous block's, here they index the level nearest zero.)
pub fn iq4_nl_encode(x: &[f32], out: &mut Vec<u8>) {
    assert_eq!(x.len(), QK);
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            (amax, max) = (v.abs(), v);
        }
    }
    let mut codes = [iq4_nl_index(0.0); QK];
    let d = if amax < 1e-15 {
        0.0
    } else {
        let id = 1.0 / (max / -127.0);
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = iq4_nl_index(id * v);
            let (q, w) = (IQ4_NL_LEVELS[*c as usize] as f32, v * v);
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 }
    };
    push_f16(out, d);
    out.extend((0..QK / 2).map(|j| codes[j] | (codes[j + QK / 2] << 4)));
}

/// Inverse of [`iq4_nl_encode`] for one block: `d · level(q)`.
pub fn iq4_nl_decode(block: &[u8], out: &mut [f32]) {
    let d = read_f16(block);
    for (j, &b) in block[2..IQ4_NL_BYTES].iter().enumerate() {
        out[j] = d * IQ4_NL_LEVELS[(b & 15) as usize] as f32;
        out[j + QK / 2] = d * IQ4_NL_LEVELS[(b >> 4) as usize] as f32;
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

    /// Every codec's bytes are gguf-py's (ggml's reference quantizers) on the reference's blocks,
    /// and decoding them gives ggml's dequantized values (`cargo xtask kv-quant-reference`).
    #[test]
    fn blocks_are_ggmls_byte_for_byte() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kv_quant_reference.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let blocks: Vec<Vec<f32>> = serde_json::from_value(doc["blocks"].clone()).unwrap();
        type Codec = (&'static str, fn(&[f32], &mut Vec<u8>), fn(&[u8], &mut [f32]), usize);
        let codecs: [Codec; 5] = [
            ("q8_0", q8_0_encode, q8_0_decode, Q8_0_BYTES),
            ("q4_0", q4_0_encode, q4_0_decode, Q4_0_BYTES),
            ("q4_1", q4_1_encode, q4_1_decode, Q4_1_BYTES),
            ("q5_0", q5_0_encode, q5_0_decode, Q5_0_BYTES),
            ("q5_1", q5_1_encode, q5_1_decode, Q5_1_BYTES),
        ];
        for (name, encode, decode, bytes) in codecs {
            let expected: Vec<String> = serde_json::from_value(doc[name].clone()).unwrap();
            let values: Vec<Vec<f32>> = serde_json::from_value(doc[format!("{name}_values")].clone()).unwrap();
            assert_eq!(expected.len(), blocks.len());
            for (i, (x, hex)) in blocks.iter().zip(&expected).enumerate() {
                let mut ours = Vec::new();
                encode(x, &mut ours);
                let ours_hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(ours.len(), bytes, "{name}");
                assert_eq!(&ours_hex, hex, "{name}, block {i}");
                let mut y = vec![0.0f32; QK];
                decode(&ours, &mut y);
                assert_eq!(y, values[i], "{name}, block {i}: decoded values");
            }
        }
    }

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

    #[derive(serde::Deserialize)]
    struct Iq4NlReference {
        blocks: Vec<Vec<f32>>,
        iq4_nl: Vec<String>,
        iq4_nl_values: Vec<Vec<f32>>,
        any_nibbles: Vec<usize>,
    }

    /// ggml's iq4_nl cache blocks (`cargo xtask iq4-nl-reference`), decoded by gguf-py: the same
    /// bytes (an all-zero block's nibbles are ggml's leftovers: its scale alone), the same values.
    #[test]
    fn iq4_nl_blocks_are_ggmls_byte_for_byte() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/iq4_nl_reference.json");
        let r: Iq4NlReference =
            serde_json::from_slice(&std::fs::read(path).expect("run `cargo xtask iq4-nl-reference`")).unwrap();
        assert!(r.blocks.len() > 300 && !r.any_nibbles.is_empty());
        for (i, ((block, hex), values)) in r.blocks.iter().zip(&r.iq4_nl).zip(&r.iq4_nl_values).enumerate() {
            let mut got = Vec::new();
            iq4_nl_encode(block, &mut got);
            let want: Vec<u8> =
                (0..hex.len() / 2).map(|j| u8::from_str_radix(&hex[2 * j..][..2], 16).unwrap()).collect();
            let compared = if r.any_nibbles.contains(&i) { 2 } else { IQ4_NL_BYTES };
            assert_eq!(got[..compared], want[..compared], "block {i}: {block:?}");
            let mut decoded = [0.0f32; QK];
            iq4_nl_decode(&got, &mut decoded);
            assert_eq!(&decoded[..], &values[..], "block {i}'s values");
        }
    }

    #[test]
    fn iq4_nl_errs_less_than_q4_0_on_gaussian_blocks_at_the_same_bytes() {
        let mut rng = StdRng::seed_from_u64(12);
        // Box–Muller
        let mut normal = || {
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let (mut iq, mut q4, mut norm) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..2000 {
            let x: Vec<f32> = (0..QK).map(|_| normal()).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            iq4_nl_encode(&x, &mut a);
            q4_0_encode(&x, &mut b);
            assert_eq!((a.len(), b.len()), (IQ4_NL_BYTES, Q4_0_BYTES));
            let (mut da, mut db) = ([0.0f32; QK], [0.0f32; QK]);
            iq4_nl_decode(&a, &mut da);
            q4_0_decode(&b, &mut db);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for j in 0..QK {
                // half the widest gap between levels is 11.5 of 127, and the refit scale moves the
                // levels by a few percent more: within a sixth of amax
                assert!((x[j] - da[j]).abs() <= amax / 6.0, "{} for {}", da[j], x[j]);
                iq += ((x[j] - da[j]) as f64).powi(2);
                q4 += ((x[j] - db[j]) as f64).powi(2);
                norm += (x[j] as f64).powi(2);
            }
        }
        let (iq, q4) = ((iq / norm).sqrt(), (q4 / norm).sqrt());
        // 0.079 against 0.086 at this seed
        assert!(iq < 0.95 * q4, "iq4_nl {iq:.4} against q4_0 {q4:.4}");
    }
}
