//! `kvbench.Q8Linear`: a product with a Q8_0 matrix kept as 8-bit codes.
//!
//! The tied output head (49,152 × 576, Q8_0 in the GGUF) is the largest single read of a decode
//! step: 113 MB as fp32, 31.5 MB as codes and scales. ONNX Runtime's 8-bit `MatMulNBits`, which
//! could hold it exactly, measured eight times slower than the fp32 Gemm on this CPU, so the head
//! is this Rust operator instead: per output row, dequantize the codes (`d · q`, exactly as
//! [`dequantize_q8_0`](super::gguf::dequantize_q8_0) does) and take 8-lane fused dot products,
//! output rows split across rayon's threads.
//!
//! Inputs: `x [N, K]` f32, `codes [V, K]` int8, `scales [V, K/32]` f32. Output: `[N, V]`.

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
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Q8LinearKernel)
    }
}

/// The kernel (stateless).
pub struct Q8LinearKernel;

impl Kernel for Q8LinearKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = |what: &str| ort::Error::new(format!("Q8Linear: missing input {what}"));
        let x = ctx.input(0)?.ok_or_else(|| missing("x"))?;
        let codes = ctx.input(1)?.ok_or_else(|| missing("codes"))?;
        let scales = ctx.input(2)?.ok_or_else(|| missing("scales"))?;
        let (x_shape, x) = x.try_extract_tensor::<f32>()?;
        let (c_shape, codes) = codes.try_extract_tensor::<i8>()?;
        let (_, scales) = scales.try_extract_tensor::<f32>()?;
        let (n, k, v) = (x_shape[0] as usize, x_shape[1] as usize, c_shape[0] as usize);
        if c_shape[1] as usize != k || k % BLOCK != 0 || scales.len() != v * k / BLOCK {
            return Err(ort::Error::new(format!(
                "Q8Linear: x {x_shape:?}, codes {c_shape:?}, {} scales",
                scales.len()
            )));
        }
        let mut out = ctx.output(0, [n as i64, v as i64])?.ok_or_else(|| ort::Error::new("Q8Linear: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        q8_matmul(x, k, codes, scales, out);
        Ok(())
    }
}

/// `out[M, V] = x[M, K] · Wᵀ` for the Q8_0 matrix `W` given as `codes [V, K]` and `scales
/// [V, K/32]` (shapes checked by the caller), weight rows split across rayon's pool.
///
/// One input row (a decode step) streams four weight rows at a time through [`dot4`]; more input
/// rows dequantize a block of [`W_BLOCK`] weight rows once and dot it with all of them, two
/// weight rows by four input rows at a time. Both paths round the same products in the same
/// order, so they agree bit for bit.
pub fn q8_matmul(x: &[f32], k: usize, codes: &[i8], scales: &[f32], out: &mut [f32]) {
    let (n, v) = (x.len() / k, codes.len() / k);
    if n == 1 {
        super::rowwise::by_weight_row_blocks(v, 1, ROWS_PER_TASK, out, |rows, tile| {
            let (codes, scales) =
                (&codes[rows.start * k..rows.end * k], &scales[rows.start * k / BLOCK..][..tile.len() * k / BLOCK]);
            let (quads, rest) = tile.split_at_mut(tile.len() / 4 * 4);
            for (i, dots) in quads.chunks_exact_mut(4).enumerate() {
                let rows = |j: usize| (&codes[(4 * i + j) * k..][..k], &scales[(4 * i + j) * k / BLOCK..][..k / BLOCK]);
                dots.copy_from_slice(&dot4([rows(0), rows(1), rows(2), rows(3)], x));
            }
            let mut w = vec![0.0f32; k];
            for (j, dot_r) in rest.iter_mut().enumerate() {
                let r = quads.len() + j;
                dequantize_row(&codes[r * k..][..k], &scales[r * k / BLOCK..][..k / BLOCK], &mut w);
                *dot_r = dot(&w, x);
            }
        });
        return;
    }
    super::rowwise::by_weight_row_blocks(v, n, ROWS_PER_TASK, out, |rows, tile| {
        let mut w = vec![0.0f32; W_BLOCK * k];
        let whole = n / 4 * 4;
        for (b, dots) in tile.chunks_mut(W_BLOCK * n).enumerate() {
            let first = rows.start + b * W_BLOCK;
            let count = dots.len() / n;
            let w = &mut w[..count * k];
            for (i, wi) in w.chunks_exact_mut(k).enumerate() {
                let r = first + i;
                dequantize_row(&codes[r * k..][..k], &scales[r * k / BLOCK..][..k / BLOCK], wi);
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

/// Four weight rows (`(codes, scales)`) dotted with `x`: `dot(dequantize_row(row), x)` for each,
/// fused so that no row is written out and the four accumulation chains run side by side.
fn dot4(rows: [(&[i8], &[f32]); 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot4_avx2(rows, x) };
    }
    let mut w = vec![0.0f32; x.len()];
    rows.map(|(codes, scales)| {
        dequantize_row(codes, scales, &mut w);
        dot(&w, x)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot4_avx2(rows: [(&[i8], &[f32]); 4], x: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = x.len();
    assert!(rows.iter().all(|(c, s)| c.len() == k && s.len() * BLOCK == k));
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        for (r, (codes, scales)) in rows.iter().enumerate() {
            let d = _mm256_set1_ps(scales[b]);
            let cb = &codes[b * BLOCK..][..BLOCK];
            for (c, xc) in cb.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
                // SAFETY: `c` holds 8 bytes and `xc` 8 floats (chunks_exact).
                let (q, xv) = unsafe {
                    (
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(c.as_ptr().cast()))),
                        _mm256_loadu_ps(xc.as_ptr()),
                    )
                };
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, q), xv, acc[r]);
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

pub(crate) fn dequantize_row(codes: &[i8], scales: &[f32], w: &mut [f32]) {
    for ((wb, cb), &d) in w.chunks_exact_mut(BLOCK).zip(codes.chunks_exact(BLOCK)).zip(scales) {
        for (wi, &c) in wb.iter_mut().zip(cb) {
            *wi = d * c as f32;
        }
    }
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
        let row = |r: usize| (&codes[r * k..][..k], &scales[r * k / BLOCK..][..k / BLOCK]);
        let fused = dot4([row(0), row(1), row(2), row(3)], &x);
        let mut w = vec![0.0; k];
        for (r, got) in fused.iter().enumerate() {
            dequantize_row(row(r).0, row(r).1, &mut w);
            assert_eq!(got.to_bits(), dot(&w, &x).to_bits(), "row {r}");
        }
        // through the public entry (four fused rows and a remainder row), one input row gives
        // what the dequantizing path for several input rows gives
        let mut out = vec![0.0; 5];
        q8_matmul(&x, k, &codes, &scales, &mut out);
        let xs: Vec<Vec<f32>> = (0..7).map(|j| x.iter().map(|v| v * (1.0 - 0.3 * j as f32)).collect()).collect();
        let alone: Vec<Vec<f32>> = xs
            .iter()
            .map(|xj| {
                let mut o = vec![0.0; 5];
                q8_matmul(xj, k, &codes, &scales, &mut o);
                o
            })
            .collect();
        for m in [2usize, 4, 7] {
            let mut many = vec![0.0; 5 * m];
            q8_matmul(&xs[..m].concat(), k, &codes, &scales, &mut many);
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
            q8_matmul(&x, k, &codes, &scales, &mut many);
            for (j, xj) in x.chunks_exact(k).enumerate() {
                let mut alone = vec![0.0; v];
                q8_matmul(xj, k, &codes, &scales, &mut alone);
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
}
