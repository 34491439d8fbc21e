//! `kvbench.Q8Linear`: a product with a Q8_0 matrix kept as 8-bit codes.
//!
//! The tied output head (49,152 × 576, Q8_0 in the GGUF) is the largest single read of a decode
//! step: 113 MB as fp32, 31.5 MB as codes and scales. ONNX Runtime's 8-bit `MatMulNBits`, which
//! could hold it exactly, measured eight times slower than the fp32 Gemm on this CPU, so the head
//! is this Rust operator instead: per output row, dequantize the codes (`d · q`, exactly as
//! [`dequantize_q8_0`](super::gguf::dequantize_q8_0) does) and take 8-lane fused dot products,
//! output rows split across rayon's threads.
//!
//! The same operator multiplies Gemma 3's decode steps by its Q5_0, Q4_K, Q6_K and Q8_0
//! matrices, each held exactly as 8-bit codes ([`super::kquants::Q8Blocks`]): attribute `block`
//! (default 32; Q6_K's 16) is the elements per scale, and an optional `mins` input the per-block
//! minimum Q4_K subtracts. Each weight is then `d · q − m` in f32, ggml's dequantized value bit for
//! bit, where the fp32 `MatMul` it replaces held the same values at four bytes each.
//!
//! Inputs: `x [N, K]` f32, `codes [V, K]` int8, `scales [V, K/block]` f32, optional `mins [V,
//! K/block]` f32. Output: `[N, V]`.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

/// Name of the operator in the `kvbench` domain.
pub const Q8_LINEAR_OP: &str = "Q8Linear";
const BLOCK: usize = 32;
const LANES: usize = 8;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 512;
/// Weight rows dequantized together when there are several input rows: 8 rows of 576 are
/// 18 KB, which stay in L1 beside a quad of input rows while every input row passes them.
/// (Streaming all 512 rows of a prompt chunk, 1.2 MB, past each weight row in turn went to L3
/// for every one of them.)
const W_BLOCK: usize = 8;

/// The operator descriptor.
pub struct Q8LinearOp;

impl Operator for Q8LinearOp {
    type Kernel<'attr> = Q8LinearKernel;

    fn name(&self) -> &str {
        Q8_LINEAR_OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int8),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let block = ctx.get::<i64>("block").unwrap_or(BLOCK as i64);
        if block <= 0 || block % LANES as i64 != 0 {
            return Err(ort::Error::new(format!("Q8Linear: block {block} is not a positive multiple of {LANES}")));
        }
        Ok(Q8LinearKernel { block: block as usize })
    }
}

/// The kernel: elements per scale.
pub struct Q8LinearKernel {
    block: usize,
}

impl Kernel for Q8LinearKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = |what: &str| ort::Error::new(format!("Q8Linear: missing input {what}"));
        let x = ctx.input(0)?.ok_or_else(|| missing("x"))?;
        let codes = ctx.input(1)?.ok_or_else(|| missing("codes"))?;
        let scales = ctx.input(2)?.ok_or_else(|| missing("scales"))?;
        let (x_shape, x) = x.try_extract_tensor::<f32>()?;
        let (c_shape, codes) = codes.try_extract_tensor::<i8>()?;
        let (_, scales) = scales.try_extract_tensor::<f32>()?;
        let mins = ctx.input(3)?;
        let mins = mins.as_ref().map(|m| m.try_extract_tensor::<f32>()).transpose()?.map(|(_, m)| m);
        let (n, k, v) = (x_shape[0] as usize, x_shape[1] as usize, c_shape[0] as usize);
        let per_block = v * k / self.block;
        if c_shape[1] as usize != k
            || !k.is_multiple_of(self.block)
            || scales.len() != per_block
            || mins.is_some_and(|m| m.len() != per_block)
        {
            return Err(ort::Error::new(format!(
                "Q8Linear: x {x_shape:?}, codes {c_shape:?}, {} scales, {:?} minima, block {}",
                scales.len(),
                mins.map(<[f32]>::len),
                self.block
            )));
        }
        let mut out = ctx.output(0, [n as i64, v as i64])?.ok_or_else(|| ort::Error::new("Q8Linear: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        q8_matmul(x, k, Q8Matrix { codes, scales, mins, block: self.block }, out);
        Ok(())
    }
}

/// A matrix `[V, K]` of 8-bit codes in blocks along its rows (the form of
/// [`super::kquants::Q8Blocks`]): element `i` of a row is `scales[b] · codes[i] − mins[b]` for its
/// block `b = i / block` (without minima, `scales[b] · codes[i]`).
#[derive(Debug, Clone, Copy)]
pub struct Q8Matrix<'a> {
    /// `[V, K]`, row-major.
    pub codes: &'a [i8],
    /// One per block, `[V, K/block]`.
    pub scales: &'a [f32],
    /// One per block where the format has them.
    pub mins: Option<&'a [f32]>,
    /// Elements per scale, a multiple of 8 dividing `K`.
    pub block: usize,
}

impl<'a> Q8Matrix<'a> {
    /// A Q8_0 matrix: blocks of 32, no minima.
    pub fn q8_0(codes: &'a [i8], scales: &'a [f32]) -> Self {
        Self { codes, scales, mins: None, block: BLOCK }
    }

    /// Row `r` of a matrix of rows of `k`.
    fn row(&self, r: usize, k: usize) -> Q8Row<'a> {
        let per = k / self.block;
        Q8Row {
            codes: &self.codes[r * k..][..k],
            scales: &self.scales[r * per..][..per],
            mins: self.mins.map(|m| &m[r * per..][..per]),
            block: self.block,
        }
    }
}

/// One row of a [`Q8Matrix`].
#[derive(Debug, Clone, Copy)]
struct Q8Row<'a> {
    codes: &'a [i8],
    scales: &'a [f32],
    mins: Option<&'a [f32]>,
    block: usize,
}

impl Q8Row<'_> {
    /// `d · q − m` for every element, in f32 (ggml's dequantization).
    fn dequantize(&self, w: &mut [f32]) {
        let blocks = w.chunks_exact_mut(self.block).zip(self.codes.chunks_exact(self.block));
        for (b, (wb, cb)) in blocks.enumerate() {
            let d = self.scales[b];
            match self.mins {
                Some(m) => wb.iter_mut().zip(cb).for_each(|(wi, &c)| *wi = d * c as f32 - m[b]),
                None => wb.iter_mut().zip(cb).for_each(|(wi, &c)| *wi = d * c as f32),
            }
        }
    }
}

/// `out[M, V] = x[M, K] · Wᵀ` for the matrix `w` (`[V, K]`; shapes checked by the caller),
/// weight rows split across rayon's pool.
///
/// One input row (a decode step) streams four weight rows at a time through [`dot4`]; more input
/// rows dequantize a block of [`W_BLOCK`] weight rows once and dot it with all of them, two
/// weight rows by four input rows at a time. Both paths round the same products in the same
/// order, so they agree bit for bit.
pub fn q8_matmul(x: &[f32], k: usize, w: Q8Matrix<'_>, out: &mut [f32]) {
    let (n, v) = (x.len() / k, w.codes.len() / k);
    if n == 1 {
        super::rowwise::by_weight_row_blocks(v, 1, ROWS_PER_TASK, out, |rows, tile| {
            let (quads, rest) = tile.split_at_mut(tile.len() / 4 * 4);
            for (i, dots) in quads.chunks_exact_mut(4).enumerate() {
                let row = |j: usize| w.row(rows.start + 4 * i + j, k);
                dots.copy_from_slice(&dot4([row(0), row(1), row(2), row(3)], x));
            }
            let mut wr = vec![0.0f32; k];
            for (j, dot_r) in rest.iter_mut().enumerate() {
                w.row(rows.start + quads.len() + j, k).dequantize(&mut wr);
                *dot_r = dot(&wr, x);
            }
        });
        return;
    }
    super::rowwise::by_weight_row_blocks(v, n, ROWS_PER_TASK, out, |rows, tile| {
        let matrix = w;
        let mut w = vec![0.0f32; W_BLOCK * k];
        let whole = n / 4 * 4;
        for (b, dots) in tile.chunks_mut(W_BLOCK * n).enumerate() {
            let first = rows.start + b * W_BLOCK;
            let count = dots.len() / n;
            let w = &mut w[..count * k];
            for (i, wi) in w.chunks_exact_mut(k).enumerate() {
                matrix.row(first + i, k).dequantize(wi);
            }
            // each quad of input rows meets every weight row of the block while it is in L1,
            // two weight rows at a time
            let (pairs, odd) = w.split_at(count / 2 * 2 * k);
            for (q, xs) in x.chunks_exact(4 * k).enumerate() {
                for (p, wp) in pairs.chunks_exact(2 * k).enumerate() {
                    let (a, b) = dot_2x4(wp, xs);
                    dots[2 * p * n + 4 * q..][..4].copy_from_slice(&a);
                    dots[(2 * p + 1) * n + 4 * q..][..4].copy_from_slice(&b);
                }
                if !odd.is_empty() {
                    dots[(count - 1) * n + 4 * q..][..4].copy_from_slice(&dot_x4(odd, xs));
                }
            }
            for (wi, dots_i) in w.chunks_exact(k).zip(dots.chunks_exact_mut(n)) {
                for (dot_j, xr) in dots_i[whole..].iter_mut().zip(x[whole * k..].chunks_exact(k)) {
                    *dot_j = dot(wi, xr);
                }
            }
        }
    });
}

/// Two weight rows (`w`, `[2, K]`) dotted with four consecutive rows of `xs`: [`dot_x4`] of each,
/// bit for bit, with the eight accumulation chains side by side (six loads feed eight FMAs).
fn dot_2x4(w: &[f32], xs: &[f32]) -> ([f32; 4], [f32; 4]) {
    let k = w.len() / 2;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_2x4_avx2(w, xs) };
    }
    (dot_x4(&w[..k], xs), dot_x4(&w[k..], xs))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_2x4_avx2(w: &[f32], xs: &[f32]) -> ([f32; 4], [f32; 4]) {
    use std::arch::x86_64::*;
    let k = w.len() / 2;
    assert!(w.len() == 2 * k && xs.len() == 4 * k && k.is_multiple_of(LANES));
    let (mut acc_a, mut acc_b) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    for c in (0..k).step_by(LANES) {
        // SAFETY: `c + 8 <= k`, so lane run `c` of both weight rows and of the four rows of
        // `xs` is in bounds (asserted).
        let (wa, wb) = unsafe { (_mm256_loadu_ps(w.as_ptr().add(c)), _mm256_loadu_ps(w.as_ptr().add(k + c))) };
        for (j, (a, b)) in acc_a.iter_mut().zip(&mut acc_b).enumerate() {
            let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(j * k + c)) };
            *a = _mm256_fmadd_ps(wa, xv, *a);
            *b = _mm256_fmadd_ps(wb, xv, *b);
        }
    }
    let sum = |a: __m256| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        lanes.iter().sum::<f32>()
    };
    (acc_a.map(sum), acc_b.map(sum))
}

/// `w` dotted with four consecutive rows of `xs`: [`dot`] of each, bit for bit, the four
/// accumulation chains side by side (teacher forcing and prompt scoring ask for many rows).
fn dot_x4(w: &[f32], xs: &[f32]) -> [f32; 4] {
    let k = w.len();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_x4_avx2(w, xs) };
    }
    std::array::from_fn(|j| dot(w, &xs[j * k..][..k]))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_x4_avx2(w: &[f32], xs: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = w.len();
    assert!(xs.len() == 4 * k && k.is_multiple_of(LANES));
    let mut acc = [_mm256_setzero_ps(); 4];
    for (c, wc) in w.chunks_exact(LANES).enumerate() {
        // SAFETY: chunk `c` of `w` and of each of the four rows of `xs` is in bounds (asserted).
        let wv = unsafe { _mm256_loadu_ps(wc.as_ptr()) };
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(xs.as_ptr().add(j * k + c * LANES)) }, *a);
        }
    }
    acc.map(|a| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        lanes.iter().sum()
    })
}

/// Four weight rows dotted with `x`: `dot(row.dequantize(), x)` for each, fused so that no row is
/// written out and the four accumulation chains run side by side.
fn dot4(rows: [Q8Row<'_>; 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot4_avx2(rows, x) };
    }
    let mut w = vec![0.0f32; x.len()];
    rows.map(|row| {
        row.dequantize(&mut w);
        dot(&w, x)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot4_avx2(rows: [Q8Row<'_>; 4], x: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let (k, block) = (x.len(), rows[0].block);
    assert!(rows.iter().all(|r| r.codes.len() == k && r.scales.len() * block == k && r.block == block));
    assert!(rows.iter().all(|r| r.mins.is_none_or(|m| m.len() == r.scales.len())));
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xb) in x.chunks_exact(block).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let d = _mm256_set1_ps(row.scales[b]);
            let m = row.mins.map(|m| _mm256_set1_ps(m[b]));
            let cb = &row.codes[b * block..][..block];
            // the rows two calls ahead (a matrix's rows are contiguous): the hardware prefetcher
            // alone left one thread at half the head's speed from memory (docs/PERF.md, "Kernels");
            // a prefetch past the end never faults
            _mm_prefetch::<_MM_HINT_T0>(cb.as_ptr().wrapping_add(8 * k).cast());
            for (c, xc) in cb.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
                // SAFETY: `c` holds 8 bytes and `xc` 8 floats (chunks_exact).
                let (q, xv) = unsafe {
                    (
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(c.as_ptr().cast()))),
                        _mm256_loadu_ps(xc.as_ptr()),
                    )
                };
                let w = _mm256_mul_ps(d, q);
                let w = match m {
                    Some(m) => _mm256_sub_ps(w, m),
                    None => w,
                };
                acc[r] = _mm256_fmadd_ps(w, xv, acc[r]);
            }
        }
    }
    acc.map(|a| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        lanes.iter().sum()
    })
}

/// One Q8_0 row (`codes`, with a scale per 32) dequantized into `w`.
pub(crate) fn dequantize_row(codes: &[i8], scales: &[f32], w: &mut [f32]) {
    Q8Row { codes, scales, mins: None, block: BLOCK }.dequantize(w);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (ac, bc) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = ac[l].mul_add(bc[l], acc[l]);
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_four_row_dot_is_bit_identical_to_dequantize_then_dot() {
        let k = 576;
        let codes: Vec<i8> = (0..5 * k).map(|i| ((i * 37 + i / 7) % 255) as i8).collect();
        let scales: Vec<f32> = (0..5 * k / BLOCK).map(|i| 0.003 * (i as f32 * 0.7).cos()).collect();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.3).sin() * 3.0).collect();
        let matrix = Q8Matrix::q8_0(&codes, &scales);
        let row = |r: usize| matrix.row(r, k);
        let fused = dot4([row(0), row(1), row(2), row(3)], &x);
        let mut w = vec![0.0; k];
        for (r, got) in fused.iter().enumerate() {
            row(r).dequantize(&mut w);
            assert_eq!(got.to_bits(), dot(&w, &x).to_bits(), "row {r}");
        }
        // through the public entry (four fused rows and a remainder row), one input row gives
        // what the dequantizing path for several input rows gives
        let mut out = vec![0.0; 5];
        q8_matmul(&x, k, Q8Matrix::q8_0(&codes, &scales), &mut out);
        let xs: Vec<Vec<f32>> = (0..7).map(|j| x.iter().map(|v| v * (1.0 - 0.3 * j as f32)).collect()).collect();
        let alone: Vec<Vec<f32>> = xs
            .iter()
            .map(|xj| {
                let mut o = vec![0.0; 5];
                q8_matmul(xj, k, Q8Matrix::q8_0(&codes, &scales), &mut o);
                o
            })
            .collect();
        for m in [2usize, 4, 7] {
            let mut many = vec![0.0; 5 * m];
            q8_matmul(&xs[..m].concat(), k, Q8Matrix::q8_0(&codes, &scales), &mut many);
            for (j, alone) in alone.iter().take(m).enumerate() {
                assert_eq!(alone[..], many[j * 5..][..5], "input row {j} of {m} agrees with it alone");
            }
        }
        assert_eq!(out[..4], fused);
    }

    #[test]
    fn blocked_many_row_product_is_bit_identical_to_one_row_at_a_time() {
        // 37 weight rows: four blocks of 8 and a short one of 5 (pairs and an odd row), over
        // input-row counts with and without a remainder after the quads
        let (k, v) = (96, 37);
        let codes: Vec<i8> = (0..v * k).map(|i| ((i * 53 + i / 5) % 251) as i8).collect();
        let scales: Vec<f32> = (0..v * k / BLOCK).map(|i| 0.002 * (i as f32 * 0.9).sin() + 0.001).collect();
        for m in [2usize, 3, 4, 5, 8, 11] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.17).cos() * 2.0).collect();
            let mut many = vec![0.0; m * v];
            q8_matmul(&x, k, Q8Matrix::q8_0(&codes, &scales), &mut many);
            for (j, xj) in x.chunks_exact(k).enumerate() {
                let mut alone = vec![0.0; v];
                q8_matmul(xj, k, Q8Matrix::q8_0(&codes, &scales), &mut alone);
                let bits = |o: &[f32]| o.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&many[j * v..][..v]), bits(&alone), "input row {j} of {m}");
            }
        }
    }

    #[test]
    fn dequantized_dot_matches_f64_reference() {
        let k = 64;
        let codes: Vec<i8> = (0..k).map(|i| ((i * 37) % 255) as i8).collect();
        let scales = [0.01f32, -0.5];
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut w = vec![0.0; k];
        dequantize_row(&codes, &scales, &mut w);
        let want: f64 = (0..k).map(|i| scales[i / 32] as f64 * codes[i] as f64 * x[i] as f64).sum();
        let got = dot(&w, &x) as f64;
        assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
    }

    #[test]
    fn blocks_of_16_with_minima_agree_with_their_dequantized_rows() {
        // Q4_K's form (minima) in Q6_K's block of 16: both paths, bit for bit, and near the f64 value
        let (k, v) = (640, 9);
        let codes: Vec<i8> = (0..v * k).map(|i| ((i * 41 + i / 3) % 64) as i8 - 32).collect();
        let scales: Vec<f32> = (0..v * k / 16).map(|i| 0.01 * (i as f32 * 0.37).sin() + 0.002).collect();
        let mins: Vec<f32> = (0..v * k / 16).map(|i| 0.05 * (i as f32 * 0.11).cos()).collect();
        let w = Q8Matrix { codes: &codes, scales: &scales, mins: Some(&mins), block: 16 };
        let x: Vec<f32> = (0..3 * k).map(|i| (i as f32 * 0.29).sin()).collect();
        let mut one = vec![0.0; v];
        q8_matmul(&x[..k], k, w, &mut one);
        let mut many = vec![0.0; 3 * v];
        q8_matmul(&x, k, w, &mut many);
        let mut row = vec![0.0; k];
        for r in 0..v {
            w.row(r, k).dequantize(&mut row);
            assert_eq!(one[r].to_bits(), dot(&row, &x[..k]).to_bits(), "row {r}, one input row");
            assert_eq!(many[r].to_bits(), one[r].to_bits(), "row {r}, first of three input rows");
            let want: f64 = (0..k)
                .map(|i| {
                    (scales[(r * k + i) / 16] as f64 * codes[r * k + i] as f64 - mins[(r * k + i) / 16] as f64)
                        * x[i] as f64
                })
                .sum();
            assert!((one[r] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "row {r}: {} vs {want}", one[r]);
        }
    }
}
