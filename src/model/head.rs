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
        super::rowwise::by_weight_rows(
            v,
            n,
            ROWS_PER_TASK,
            out,
            || vec![0.0f32; k],
            |w, r, dots| {
                dequantize_row(&codes[r * k..][..k], &scales[r * k / BLOCK..][..k / BLOCK], w);
                for (dot_j, xr) in dots.iter_mut().zip(x.chunks_exact(k)) {
                    *dot_j = dot(w, xr);
                }
            },
        );
        Ok(())
    }
}

fn dequantize_row(codes: &[i8], scales: &[f32], w: &mut [f32]) {
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
