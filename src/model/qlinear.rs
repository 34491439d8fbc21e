//! `kvbench.Q4Linear`: `x · Wᵀ` from Q4_1 codes, for the few rows of a decode step.
//!
//! A decode step reads every weight once, so its cost is the bytes read and the work per byte.
//! ONNX Runtime's `MatMulNBits` with fp32 activations is built for many rows; on one row it took
//! about as long as llama.cpp's whole step (docs/PERF.md). This kernel streams the GGUF's own
//! nibbles (16 bytes per block of 32, element `i` low and `i + 16` high) and per-block `d` and
//! `m` in half precision (as in the file: 20 bytes per 32 weights, like llama.cpp), and uses
//! `Σ (d·q_i + m)·x_i = d·Σ q_i·x_i + m·Σ x_i`, the block sums of `x` computed once per call.
//! Nibbles are widened to f32 in 8-lane groups with two independent fused multiply-add chains,
//! four weight rows at a time, compiled for AVX2+FMA when the CPU has them; weight rows are split
//! across rayon's threads.
//!
//! Inputs: `x [M, K]` f32 (`[M, 2K]` with `swiglu`), `codes [N, K/2]` uint8, `d [N, K/32]` and
//! `m [N, K/32]` f16 bits (uint16); optional `norm [K]` f32 and `residual [M, N]` f32.
//! Output: `y [M, N]`. The prefill graph keeps `MatMulNBits`, whose blocked kernels win for many
//! rows.
//!
//! **What it absorbs of the graph around it** (decode steps only), each in the arithmetic of the
//! ONNX Runtime nodes it replaces ([`super::fused`]), so that the fused graph's logits are the
//! unfused graph's bit for bit (tested): with `norm` (attribute `epsilon`; `K` a multiple of 8)
//! the RMSNorm of `x` before the product; with attribute `swiglu = 1` the `silu(g) ⊙ u` of
//! `x = [g | u]`; with `residual` the `Add` after it. A decode step then runs 5 graph nodes per
//! layer instead of 13, and each node costs an ONNX Runtime dispatch and an output buffer.

use half::f16;
use half::slice::HalfBitsSliceExt;
use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::fused;

/// Name of the operator in the `kvbench` domain.
pub const Q4_LINEAR_OP: &str = "Q4Linear";
const BLOCK: usize = 32;
const LANES: usize = 8;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The operator descriptor.
pub struct Q4LinearOp;

impl Operator for Q4LinearOp {
    type Kernel<'attr> = Q4LinearKernel;

    fn name(&self) -> &str {
        Q4_LINEAR_OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Uint16),
            OperatorInput::required(TensorElementType::Uint16),
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        // ONNX Runtime's `SimplifiedLayerNormalization` default, for a norm given without one
        let epsilon = ctx.get::<f32>("epsilon").unwrap_or(1e-5);
        let swiglu = ctx.get::<i64>("swiglu").unwrap_or(0) != 0;
        Ok(Q4LinearKernel { epsilon, swiglu, input: Vec::new() })
    }
}

/// The kernel: its attributes, and the product's input buffer, reused from call to call.
pub struct Q4LinearKernel {
    epsilon: f32,
    swiglu: bool,
    input: Vec<f32>,
}

impl Kernel for Q4LinearKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| ort::Error::new(format!("Q4Linear: {what}"));
        let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| fail(format!("missing input {what}")));
        let optional = |i: usize| if ctx.num_inputs()? > i { ctx.input(i) } else { Ok(None) };
        let (x, codes, d, m) = (input(0, "x")?, input(1, "codes")?, input(2, "d")?, input(3, "m")?);
        let (x_shape, x) = x.try_extract_tensor::<f32>()?;
        let (c_shape, codes) = codes.try_extract_tensor::<u8>()?;
        let (_, d) = d.try_extract_tensor::<u16>()?;
        let (_, m) = m.try_extract_tensor::<u16>()?;
        let (d, m) = (d.reinterpret_cast(), m.reinterpret_cast());
        if x_shape.len() != 2 || c_shape.len() != 2 {
            return Err(fail(format!("x {x_shape:?} and codes {c_shape:?} must be matrices")));
        }
        let (rows_x, k, n) = (x_shape[0] as usize, 2 * c_shape[1] as usize, c_shape[0] as usize);
        let width = if self.swiglu { 2 * k } else { k };
        let blocks = k / BLOCK;
        let fits = k > 0 && k.is_multiple_of(BLOCK) && x_shape[1] as usize == width && x.len() == rows_x * width;
        if !fits || codes.len() != n * k / 2 || d.len() != n * blocks || m.len() != n * blocks {
            return Err(fail(format!("x {x_shape:?} does not fit codes {c_shape:?}")));
        }
        let (norm, residual) = (optional(4)?, optional(5)?);
        if let Some(residual) = &residual
            && residual.shape().to_vec() != [rows_x as i64, n as i64]
        {
            return Err(fail(format!("the residual is {:?}, not [{rows_x}, {n}]", residual.shape())));
        }
        let x = match (&norm, self.swiglu) {
            (Some(_), true) => return Err(fail("a norm and swiglu at once".into())),
            (Some(norm), false) => {
                let (_, weight) = norm.try_extract_tensor::<f32>()?;
                if weight.len() != k || !k.is_multiple_of(8) {
                    return Err(fail(format!("a norm of {} for rows of {k}", weight.len())));
                }
                self.input.resize(x.len(), 0.0);
                for (row, out) in x.chunks_exact(k).zip(self.input.chunks_exact_mut(k)) {
                    fused::rms_norm(row, weight, self.epsilon, out);
                }
                &self.input[..]
            }
            (None, true) => {
                self.input.resize(rows_x * k, 0.0);
                for (row, out) in x.chunks_exact(2 * k).zip(self.input.chunks_exact_mut(k)) {
                    fused::swiglu(&row[..k], &row[k..], out);
                }
                &self.input[..]
            }
            (None, false) => x,
        };
        let mut y = ctx.output(0, [rows_x as i64, n as i64])?.ok_or_else(|| fail("no output".into()))?;
        let (_, y) = y.try_extract_tensor_mut::<f32>()?;
        q4_matmul(x, k, codes, d, m, y);
        if let Some(residual) = &residual {
            let (_, residual) = residual.try_extract_tensor::<f32>()?;
            if residual.len() != y.len() {
                return Err(fail(format!("the residual does not have {rows_x} rows of {n}")));
            }
            // `Add(residual, product)`: one rounding, the same either way round
            y.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
        }
        Ok(())
    }
}

/// `out[M, N] = x[M, K] · Wᵀ` for the Q4_1 matrix `W` given as `codes [N, K/2]`, `d [N, K/32]`
/// and `m [N, K/32]` (half precision, as GGUF stores them; shapes checked by the caller), weight
/// rows split across rayon's pool. Each task widens its rows' `d` and `m` to f32 first (exact).
pub fn q4_matmul(x: &[f32], k: usize, codes: &[u8], d: &[f16], m: &[f16], out: &mut [f32]) {
    let (rows_x, blocks) = (x.len() / k, k / BLOCK);
    let n = d.len() / blocks;
    let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
    super::rowwise::by_weight_row_blocks(n, rows_x, ROWS_PER_TASK, out, |rows, tile| {
        let (first, count) = (rows.start, rows.len());
        let c = &codes[first * k / 2..][..count * k / 2];
        WIDE_DM.with_borrow_mut(|wide| {
            wide.resize(2 * count * blocks, 0.0);
            let (dr, mr) = wide.split_at_mut(count * blocks);
            widen_halves(&d[first * blocks..][..count * blocks], dr);
            widen_halves(&m[first * blocks..][..count * blocks], mr);
            rows_tile(c, dr, mr, x, k, &sums, tile);
        });
    });
}

thread_local! {
    /// A task's `d` and `m` widened to f32, reused from task to task (no allocation per task).
    static WIDE_DM: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task's weight rows (`c`, and `dr`, `mr` widened) dotted with every row of `x`, into
/// `tile` (`[weight rows, rows of x]`); `sums` are the block sums of `x`.
fn rows_tile(c: &[u8], dr: &[f32], mr: &[f32], x: &[f32], k: usize, sums: &[f32], tile: &mut [f32]) {
    let (rows_x, blocks) = (x.len() / k, k / BLOCK);
    let count = dr.len() / blocks;
    let quads = count / 4;
    for (j, (xr, sr)) in x.chunks_exact(k).zip(sums.chunks_exact(blocks)).enumerate() {
        for i in 0..quads {
            let (c4, d4, m4) =
                (&c[i * 2 * k..][..2 * k], &dr[i * 4 * blocks..][..4 * blocks], &mr[i * 4 * blocks..][..4 * blocks]);
            for (r, dot) in rows_dot4(c4, d4, m4, xr, sr).into_iter().enumerate() {
                tile[(4 * i + r) * rows_x + j] = dot;
            }
        }
        for r in 4 * quads..count {
            let (cr, drr, mrr) = (&c[r * k / 2..][..k / 2], &dr[r * blocks..][..blocks], &mr[r * blocks..][..blocks]);
            tile[r * rows_x + j] = row_dot(cr, drr, mrr, xr, sr);
        }
    }
}

/// `out[i] = f32(h[i])` (exact), eight at a time with F16C where the CPU has it.
fn widen_halves(h: &[f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        return unsafe { widen_halves_f16c(h, out) };
    }
    out.iter_mut().zip(h).for_each(|(o, h)| *o = h.to_f32());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
fn widen_halves_f16c(h: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (mut hs, mut os) = (h.chunks_exact(8), out.chunks_exact_mut(8));
    for (h8, o8) in (&mut hs).zip(&mut os) {
        // SAFETY: both chunks hold eight values (chunks_exact); f16 is 16 bits (repr transparent).
        unsafe { _mm256_storeu_ps(o8.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(h8.as_ptr().cast()))) };
    }
    os.into_remainder().iter_mut().zip(hs.remainder()).for_each(|(o, h)| *o = h.to_f32());
}

/// Four consecutive weight rows (`codes`, `d`, `m` each holding four rows) dotted with `x`:
/// [`row_dot`] of each, bit for bit, with the four rows' chains interleaved and `x` read once.
fn rows_dot4(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> [f32; 4] {
    let (half, blocks) = (codes.len() / 4, d.len() / 4);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { rows_dot4_avx2(codes, d, m, x, sums) };
    }
    std::array::from_fn(|r| {
        row_dot_generic(&codes[r * half..][..half], &d[r * blocks..][..blocks], &m[r * blocks..][..blocks], x, sums)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_dot4_avx2(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let blocks = sums.len();
    assert!(codes.len() == 4 * blocks * 16 && d.len() == 4 * blocks && m.len() == 4 * blocks);
    assert!(x.len() == blocks * BLOCK);
    let low = _mm256_set1_epi32(0x0f);
    let zero = _mm256_setzero_ps();
    let mut total = [zero; 4];
    let mut offset = [0.0f32; 4];
    for (b, (xb, &sb)) in x.chunks_exact(BLOCK).zip(sums).enumerate() {
        // SAFETY: `xb` holds 32 floats (chunks_exact).
        let [x0, x1, x2, x3] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) });
        for r in 0..4 {
            let at = r * blocks + b;
            // Bytes 0–7 and 8–15 of the block widened to 32-bit lanes straight from memory; a
            // byte's low nibble is element i, its high nibble element i + 16.
            // SAFETY: block `b` of row `r` is 16 bytes inside `codes` (length asserted above).
            let (q0, q1) = unsafe {
                let p = codes.as_ptr().add(at * 16);
                (
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast())),
                )
            };
            let f = _mm256_cvtepi32_ps;
            let lo_sum = _mm256_fmadd_ps(
                f(_mm256_and_si256(q1, low)),
                x1,
                _mm256_fmadd_ps(f(_mm256_and_si256(q0, low)), x0, zero),
            );
            let hi_sum = _mm256_fmadd_ps(
                f(_mm256_srli_epi32(q1, 4)),
                x3,
                _mm256_fmadd_ps(f(_mm256_srli_epi32(q0, 4)), x2, zero),
            );
            total[r] = _mm256_fmadd_ps(_mm256_set1_ps(d[at]), _mm256_add_ps(lo_sum, hi_sum), total[r]);
            offset[r] = m[at].mul_add(sb, offset[r]);
        }
    }
    std::array::from_fn(|r| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total[r]) };
        lanes.iter().sum::<f32>() + offset[r]
    })
}

/// One weight row dotted with `x`, whose block sums are `sums`.
fn row_dot(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { row_dot_avx2(codes, d, m, x, sums) };
    }
    row_dot_generic(codes, d, m, x, sums)
}

/// [`row_dot_generic`] written out in AVX2: the same products rounded in the same order (so
/// the result is bit-identical), without the bounds checks and lane shuffles the compiler left
/// in the generic loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_dot_avx2(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = d.len();
    assert!(codes.len() == blocks * 16 && m.len() == blocks && x.len() == blocks * BLOCK && sums.len() == blocks);
    let low = _mm_set1_epi8(0x0f);
    let zero = _mm256_setzero_ps();
    let mut total = zero;
    let mut offset = 0.0f32;
    for (((qs, xb), &db), (&mb, &sb)) in
        codes.chunks_exact(16).zip(x.chunks_exact(BLOCK)).zip(d).zip(m.iter().zip(sums))
    {
        // SAFETY: `qs` holds 16 bytes and `xb` 32 floats (chunks_exact).
        let (q, x0, x1, x2, x3) = unsafe {
            let p = xb.as_ptr();
            (
                _mm_loadu_si128(qs.as_ptr().cast()),
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        let widen = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        let lo_sum = _mm256_fmadd_ps(widen(_mm_srli_si128(lo, 8)), x1, _mm256_fmadd_ps(widen(lo), x0, zero));
        let hi_sum = _mm256_fmadd_ps(widen(_mm_srli_si128(hi, 8)), x3, _mm256_fmadd_ps(widen(hi), x2, zero));
        total = _mm256_fmadd_ps(_mm256_set1_ps(db), _mm256_add_ps(lo_sum, hi_sum), total);
        offset = mb.mul_add(sb, offset);
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum::<f32>() + offset
}

#[inline(always)]
fn row_dot_generic(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    let mut total = [0.0f32; LANES];
    let mut offset = 0.0f32;
    for b in 0..d.len() {
        let qs = &codes[b * 16..][..16];
        let xb = &x[b * BLOCK..][..BLOCK];
        let mut lo = [0.0f32; LANES];
        let mut hi = [0.0f32; LANES];
        for h in 0..2 {
            let q = &qs[h * LANES..][..LANES];
            let xl = &xb[h * LANES..][..LANES];
            let xh = &xb[16 + h * LANES..][..LANES];
            for l in 0..LANES {
                lo[l] = f32::from(q[l] & 0x0f).mul_add(xl[l], lo[l]);
                hi[l] = f32::from(q[l] >> 4).mul_add(xh[l], hi[l]);
            }
        }
        for l in 0..LANES {
            total[l] = d[b].mul_add(lo[l] + hi[l], total[l]);
        }
        offset = m[b].mul_add(sums[b], offset);
    }
    total.iter().sum::<f32>() + offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::dequantize_q4_1;
    use half::f16;

    /// The fused decode graph's `Q4Linear` (norm before, SwiGLU before, residual after) against
    /// the ONNX Runtime nodes it replaces, run side by side in one ONNX Runtime session, and
    /// [`fused::swiglu`] against its nodes over a wide range of gates: the same bits.
    #[test]
    fn fused_kernels_match_the_onnx_runtime_nodes() {
        use crate::model::export::DOMAIN;
        use crate::model::onnx::{AttributeProto, Dim, FLOAT, GraphBuilder, UINT8, UINT16};
        use ort::value::Tensor;

        let (rows, k, eps, wide) = (3usize, 128usize, 1e-5f32, 8192usize);
        let noise = |seed: usize, len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|i| ((i as f32 * 0.618 + seed as f32 * 1.7).sin() * 43_758.547).fract() * scale).collect()
        };
        let halves = |v: Vec<f32>| -> Vec<u8> { v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect() };
        let mut g = GraphBuilder::default();
        let dims = |r: usize, c: usize| [Dim::Fixed(r as i64), Dim::Fixed(c as i64)];
        let x = g.input("x", FLOAT, &dims(rows, k));
        let res = g.input("res", FLOAT, &dims(rows, k));
        let (gate, up) = (g.input("g", FLOAT, &dims(1, wide)), g.input("u", FLOAT, &dims(1, wide)));
        let weight = g.init_f32("w", &[k as i64], &noise(1, k, 2.0));
        let matrix = |g: &mut GraphBuilder, name: &str, n: usize, seed: usize| -> [String; 3] {
            let codes: Vec<u8> = (0..n * k / 2).map(|i| (i * 151 + i / 5 + seed) as u8).collect();
            let (n, per_row) = (n as i64, (k / BLOCK) as i64);
            let (d, m) = (noise(seed, n as usize * k / BLOCK, 0.05), noise(seed + 1, n as usize * k / BLOCK, 0.3));
            [
                g.init_bytes(&format!("{name}_codes"), UINT8, &[n, k as i64 / 2], codes),
                g.init_bytes(&format!("{name}_d"), UINT16, &[n, per_row], halves(d)),
                g.init_bytes(&format!("{name}_m"), UINT16, &[n, per_row], halves(m)),
            ]
        };
        let [c1, d1, m1] = matrix(&mut g, "a", k, 3);
        let [c2, d2, m2] = matrix(&mut g, "b", 2 * k, 5);
        let [c3, d3, m3] = matrix(&mut g, "c", k, 9);
        let norm_attrs = vec![AttributeProto::int("axis", -1), AttributeProto::float("epsilon", eps)];
        let silu = |g: &mut GraphBuilder, gate: &str, up: &str, out: &str| {
            let sig = g.node("Sigmoid", &[gate], &format!("{out}_sig"), vec![]);
            let silu = g.node("Mul", &[gate, &sig], &format!("{out}_silu"), vec![]);
            g.node("Mul", &[&silu, up], out, vec![]);
        };
        // as ONNX Runtime nodes
        let h = g.node("SimplifiedLayerNormalization", &[&x, &weight], "h", norm_attrs);
        g.node_in(DOMAIN, Q4_LINEAR_OP, &[&h, &c1, &d1, &m1], &["p"], vec![]);
        g.node("Add", &[&res, "p"], "y_nodes", vec![]);
        g.node_in(DOMAIN, Q4_LINEAR_OP, &[&h, &c2, &d2, &m2], &["gu_nodes"], vec![]);
        let split = vec![AttributeProto::int("axis", -1), AttributeProto::int("num_outputs", 2)];
        g.node_in("", "Split", &["gu_nodes"], &["gn", "un"], split);
        silu(&mut g, "gn", "un", "act");
        g.node_in(DOMAIN, Q4_LINEAR_OP, &["act", &c3, &d3, &m3], &["z"], vec![]);
        g.node("Add", &[&res, "z"], "z_nodes", vec![]);
        silu(&mut g, &gate, &up, "swiglu_nodes");
        // fused
        let eps_attr = || vec![AttributeProto::float("epsilon", eps)];
        g.node_in(DOMAIN, Q4_LINEAR_OP, &[&x, &c1, &d1, &m1, &weight, &res], &["y_fused"], eps_attr());
        g.node_in(DOMAIN, Q4_LINEAR_OP, &[&x, &c2, &d2, &m2, &weight], &["gu_fused"], eps_attr());
        let swiglu = vec![AttributeProto::int("swiglu", 1)];
        g.node_in(DOMAIN, Q4_LINEAR_OP, &["gu_fused", &c3, &d3, &m3, "", &res], &["z_fused"], swiglu);
        for (name, cols) in [("y_nodes", k), ("y_fused", k), ("gu_nodes", 2 * k), ("gu_fused", 2 * k)] {
            g.output(name, FLOAT, &dims(rows, cols));
        }
        for name in ["z_nodes", "z_fused"] {
            g.output(name, FLOAT, &dims(rows, k));
        }
        g.output("swiglu_nodes", FLOAT, &dims(1, wide));
        let bytes = g.into_model_bytes("fused", &[("", 21), (DOMAIN, 1)], &[]);

        let env = crate::model::session::environment().expect("ONNX Runtime (fetched on first use)");
        let domain = ort::operator::OperatorDomain::new(DOMAIN).unwrap().add(Q4LinearOp).unwrap();
        let mut builder = ort::session::Session::builder(env)
            .unwrap()
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            .unwrap()
            .with_operators(domain)
            .unwrap();
        let mut session = crate::model::session::one_at_a_time(|| builder.commit_from_memory(&bytes)).unwrap();
        // gates over the whole range of the logistic kernel and past its clamps at ±18
        let gates: Vec<f32> =
            (0..wide).map(|i| (i as f32 - wide as f32 / 2.0) * 0.006 + 0.0001 * (i % 7) as f32).collect();
        let ups = noise(4, wide, 3.0);
        let outputs = session
            .run(ort::inputs![
                "x" => Tensor::from_array(([rows, k], noise(7, rows * k, 3.0))).unwrap(),
                "res" => Tensor::from_array(([rows, k], noise(8, rows * k, 1.0))).unwrap(),
                "g" => Tensor::from_array(([1, wide], gates.clone())).unwrap(),
                "u" => Tensor::from_array(([1, wide], ups.clone())).unwrap(),
            ])
            .unwrap();
        let values = |name: &str| outputs[name].try_extract_tensor::<f32>().unwrap().1.to_vec();
        let mut direct = vec![0.0f32; wide];
        fused::swiglu(&gates, &ups, &mut direct);
        #[cfg(target_arch = "x86_64")]
        let exact = !std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let exact = false;
        let pairs = [
            ("y_nodes", values("y_fused")),
            ("gu_nodes", values("gu_fused")),
            ("z_nodes", values("z_fused")),
            ("swiglu_nodes", direct),
        ];
        for (name, fused) in pairs {
            let nodes = values(name);
            if exact {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&nodes), bits(&fused), "{name} vs fused");
            } else {
                // ONNX Runtime picks other kernels there: close, maybe not the same bits
                let close = nodes.iter().zip(&fused).all(|(a, b)| (a - b).abs() <= 1e-5 * a.abs().max(1.0));
                assert!(close, "{name} vs fused");
            }
        }
    }

    /// Malformed inputs reach the kernel (symbolic shapes, so ONNX Runtime's own checks pass
    /// them on): each is an error returned from `run` that names the problem, not a panic inside
    /// ONNX Runtime's compute (which would abort the process).
    #[test]
    fn malformed_inputs_are_errors_from_run() {
        use crate::model::export::DOMAIN;
        use crate::model::onnx::{AttributeProto, Dim, FLOAT, GraphBuilder, UINT8, UINT16};
        use ort::value::Tensor;

        let (n, k) = (4usize, 64usize);
        // one Q4Linear node over `x`, with the residual `res` added, or with a norm and SwiGLU
        let session = |norm_and_swiglu: bool| {
            let mut g = GraphBuilder::default();
            let x = g.input("x", FLOAT, &[Dim::Named("rows"), Dim::Named("cols")]);
            let res = g.input("res", FLOAT, &[Dim::Named("r_rows"), Dim::Named("r_cols")]);
            let codes = g.init_bytes("codes", UINT8, &[n as i64, k as i64 / 2], vec![0x21; n * k / 2]);
            let ones = [0u8, 0x3c].repeat(n * k / BLOCK);
            let d = g.init_bytes("d", UINT16, &[n as i64, (k / BLOCK) as i64], ones.clone());
            let m = g.init_bytes("m", UINT16, &[n as i64, (k / BLOCK) as i64], ones);
            if norm_and_swiglu {
                let weight = g.init_f32("w", &[k as i64], &vec![1.0; k]);
                let swiglu = vec![AttributeProto::int("swiglu", 1)];
                g.node_in(DOMAIN, Q4_LINEAR_OP, &[&x, &codes, &d, &m, &weight, &res], &["y"], swiglu);
            } else {
                g.node_in(DOMAIN, Q4_LINEAR_OP, &[&x, &codes, &d, &m, "", &res], &["y"], vec![]);
            }
            g.output("y", FLOAT, &[Dim::Named("rows"), Dim::Fixed(n as i64)]);
            let bytes = g.into_model_bytes("malformed", &[("", 21), (DOMAIN, 1)], &[]);
            let env = crate::model::session::environment().expect("ONNX Runtime (fetched on first use)");
            let domain = ort::operator::OperatorDomain::new(DOMAIN).unwrap().add(Q4LinearOp).unwrap();
            let mut builder = ort::session::Session::builder(env).unwrap().with_operators(domain).unwrap();
            crate::model::session::one_at_a_time(|| builder.commit_from_memory(&bytes)).unwrap()
        };
        let run = |session: &mut ort::session::Session, x: [usize; 2], res: [usize; 2]| {
            let outputs = session
                .run(ort::inputs![
                    "x" => Tensor::from_array((x, vec![1.0f32; x[0] * x[1]])).unwrap(),
                    "res" => Tensor::from_array((res, vec![0.5f32; res[0] * res[1]])).unwrap(),
                ])
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(outputs["y"].try_extract_tensor::<f32>().unwrap().1.to_vec())
        };
        let (mut plain, mut both) = (session(false), session(true));
        // well formed: the byte 0x21 holds codes 1 and 2, so with d = m = 1 the weights are 2 and
        // 3, and a row of ones gives 32 · (2 + 3) = 160, plus the residual
        assert_eq!(run(&mut plain, [2, k], [2, n]), Ok(vec![160.5; 2 * n]));
        for (fused, x, res, says) in [
            (false, [2, k + 32], [2, n], "does not fit codes"),
            (false, [2, k], [3, n], "the residual is"),
            (true, [2, 2 * k], [2, n], "a norm and swiglu at once"),
        ] {
            let err = run(if fused { &mut both } else { &mut plain }, x, res).expect_err(says);
            assert!(err.contains("Q4Linear") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn four_row_kernel_and_public_entry_are_bit_identical_to_the_generic_row() {
        let (k, n) = (576, 7);
        let blocks = k / BLOCK;
        let codes: Vec<u8> = (0..n * k / 2).map(|i| (i * 151 + i / 5) as u8).collect();
        let d16: Vec<f16> = (0..n * blocks).map(|i| f16::from_f32(0.01 * (i as f32 * 0.9).sin())).collect();
        let m16: Vec<f16> = (0..n * blocks).map(|i| f16::from_f32(-0.08 * (i as f32 * 0.4).cos())).collect();
        let (d, m): (Vec<f32>, Vec<f32>) =
            (d16.iter().map(|h| h.to_f32()).collect(), m16.iter().map(|h| h.to_f32()).collect());
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let generic: Vec<f32> = (0..n)
            .map(|r| {
                row_dot_generic(
                    &codes[r * k / 2..][..k / 2],
                    &d[r * blocks..][..blocks],
                    &m[r * blocks..][..blocks],
                    &x,
                    &sums,
                )
            })
            .collect();
        let four = rows_dot4(&codes[..2 * k], &d[..4 * blocks], &m[..4 * blocks], &x, &sums);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&four), bits(&generic[..4]));
        // seven rows: one group of four and three single rows; two input rows
        let mut out = vec![0.0; 2 * n];
        q4_matmul(&[x.clone(), x.clone()].concat(), k, &codes, &d16, &m16, &mut out);
        assert_eq!(bits(&out), bits(&[generic.clone(), generic].concat()));
    }

    #[test]
    fn widening_halves_is_exact() {
        let h: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| !h.is_nan()).collect();
        let mut out = vec![0.0f32; h.len()];
        widen_halves(&h, &mut out);
        assert!(h.iter().zip(&out).all(|(h, f)| h.to_f32().to_bits() == f.to_bits()));
    }

    #[test]
    fn fused_dot_matches_dequantize_then_dot() {
        let mut raw = Vec::new();
        let (mut codes, mut ds, mut ms) = (Vec::new(), Vec::new(), Vec::new());
        for (b, (d, m)) in [(0.5f32, -3.0f32), (0.125, 1.0), (-0.25, 0.75)].into_iter().enumerate() {
            let qs: Vec<u8> = (0..16).map(|i| ((i * 7 + b) % 16) as u8 | ((((i * 3 + b) % 16) as u8) << 4)).collect();
            raw.extend(f16::from_f32(d).to_le_bytes());
            raw.extend(f16::from_f32(m).to_le_bytes());
            raw.extend(&qs);
            codes.extend(&qs);
            ds.push(f16::from_f32(d).to_f32());
            ms.push(f16::from_f32(m).to_f32());
        }
        let x: Vec<f32> = (0..96).map(|i| (i as f32 * 0.37).sin()).collect();
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let mut deq = vec![0.0f32; 96];
        dequantize_q4_1(&raw, &mut deq);
        let want: f64 = deq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let got = row_dot(&codes, &ds, &ms, &x, &sums);
        assert!((got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
        assert_eq!(got.to_bits(), row_dot_generic(&codes, &ds, &ms, &x, &sums).to_bits(), "SIMD and generic agree");
    }
}
