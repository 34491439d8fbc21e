//! `kvbench.Q4Linear`: `x · Wᵀ` from Q4_1 codes, for the few rows of a decode step.
//!
//! A decode step reads every weight once, so its cost is the bytes read and the work per byte.
//! ONNX Runtime's `MatMulNBits` with fp32 activations is built for many rows; on one row it took
//! about as long as llama.cpp's whole step (docs/PERF.md). This kernel streams the GGUF's own
//! nibbles (16 bytes per block of 32, element `i` low and `i + 16` high) with per-block `d` and
//! `m` widened to f32 at export, and uses `Σ (d·q_i + m)·x_i = d·Σ q_i·x_i + m·Σ x_i`, the block
//! sums of `x` computed once per call. Nibbles are widened to f32 in 8-lane groups with two
//! independent fused multiply-add chains, compiled for AVX2+FMA when the CPU has them; weight
//! rows are split across rayon's threads.
//!
//! Inputs: `x [M, K]` f32, `codes [N, K/2]` uint8, `d [N, K/32]` f32, `m [N, K/32]` f32.
//! Output: `[M, N]`. The prefill graph keeps `MatMulNBits`, whose blocked kernels win for many
//! rows.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

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
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Q4LinearKernel)
    }
}

/// The kernel (stateless).
pub struct Q4LinearKernel;

impl Kernel for Q4LinearKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = |i: usize, what: &str| {
            ctx.input(i)?.ok_or_else(|| ort::Error::new(format!("Q4Linear: missing input {what}")))
        };
        let (x, codes, d, m) = (input(0, "x")?, input(1, "codes")?, input(2, "d")?, input(3, "m")?);
        let (x_shape, x) = x.try_extract_tensor::<f32>()?;
        let (c_shape, codes) = codes.try_extract_tensor::<u8>()?;
        let (_, d) = d.try_extract_tensor::<f32>()?;
        let (_, m) = m.try_extract_tensor::<f32>()?;
        let (rows_x, k, n) = (x_shape[0] as usize, x_shape[1] as usize, c_shape[0] as usize);
        let blocks = k / BLOCK;
        if !k.is_multiple_of(BLOCK) || c_shape[1] as usize != k / 2 || d.len() != n * blocks || m.len() != n * blocks {
            return Err(ort::Error::new(format!("Q4Linear: x {x_shape:?} does not fit codes {c_shape:?}")));
        }
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let mut out =
            ctx.output(0, [rows_x as i64, n as i64])?.ok_or_else(|| ort::Error::new("Q4Linear: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        super::rowwise::by_weight_rows(
            n,
            rows_x,
            ROWS_PER_TASK,
            out,
            || (),
            |_, r, dots| {
                let (c, dr, mr) =
                    (&codes[r * k / 2..][..k / 2], &d[r * blocks..][..blocks], &m[r * blocks..][..blocks]);
                for ((dot_j, xr), sr) in dots.iter_mut().zip(x.chunks_exact(k)).zip(sums.chunks_exact(blocks)) {
                    *dot_j = row_dot(c, dr, mr, xr, sr);
                }
            },
        );
        Ok(())
    }
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(codes: &[u8], d: &[f32], m: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    row_dot_generic(codes, d, m, x, sums)
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
        let got = row_dot(&codes, &ds, &ms, &x, &sums) as f64;
        assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
    }
}
