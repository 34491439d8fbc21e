//! `kvbench.Q8Gather`: embedding rows looked up in a Q8_0 table kept as 8-bit codes.
//!
//! Gemma 3's vocabulary is 262,144 tokens of 640: 671 MB as fp32, 168 MB as the codes and
//! scales the tied output head ([`super::head`]) already holds. This operator reads the same two
//! initializers, so the table is stored once, and dequantizes only the rows asked for, exactly as
//! [`dequantize_q8_0`](super::gguf::dequantize_q8_0) does (`d · q`).
//!
//! Inputs: `ids [T]` int64, `codes [V, K]` int8, `scales [V, K/32]` f32. Output: `[T, K]` f32.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::head::dequantize_row;

/// Name of the operator in the `kvbench` domain.
pub const Q8_GATHER_OP: &str = "Q8Gather";
const BLOCK: usize = 32;

/// The operator descriptor.
pub struct Q8GatherOp;

impl Operator for Q8GatherOp {
    type Kernel<'attr> = Q8GatherKernel;

    fn name(&self) -> &str {
        Q8_GATHER_OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Int64),
            OperatorInput::required(TensorElementType::Int8),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Q8GatherKernel)
    }
}

/// The kernel (stateless).
pub struct Q8GatherKernel;

impl Kernel for Q8GatherKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = |what: &str| ort::Error::new(format!("Q8Gather: missing input {what}"));
        let ids = ctx.input(0)?.ok_or_else(|| missing("ids"))?;
        let codes = ctx.input(1)?.ok_or_else(|| missing("codes"))?;
        let scales = ctx.input(2)?.ok_or_else(|| missing("scales"))?;
        let (_, ids) = ids.try_extract_tensor::<i64>()?;
        let (c_shape, codes) = codes.try_extract_tensor::<i8>()?;
        let (_, scales) = scales.try_extract_tensor::<f32>()?;
        let (v, k) = (c_shape[0] as usize, c_shape[1] as usize);
        if k % BLOCK != 0 || scales.len() != v * k / BLOCK {
            return Err(ort::Error::new(format!("Q8Gather: codes {c_shape:?}, {} scales", scales.len())));
        }
        let mut out =
            ctx.output(0, [ids.len() as i64, k as i64])?.ok_or_else(|| ort::Error::new("Q8Gather: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(k)) {
            let r = usize::try_from(id)
                .ok()
                .filter(|&r| r < v)
                .ok_or_else(|| ort::Error::new(format!("Q8Gather: token id {id} outside the vocabulary of {v}")))?;
            dequantize_row(&codes[r * k..][..k], &scales[r * k / BLOCK..][..k / BLOCK], row);
        }
        Ok(())
    }
}
