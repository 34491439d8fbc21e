//! `kvbench.KvAttention`: the custom ONNX Runtime operator that puts the cache in Rust's hands.
//!
//! Inputs: `qkv [T, (heads + 2·kv_heads)·head_dim]` (the fused, pre-RoPE projections of the
//! chunk's `T` new tokens) and `positions [T]` (int64). Attribute: `layer` (int). Output:
//! `[T, heads·head_dim]`, attention of each new token over what the layer's store keeps,
//! causal within the chunk.
//!
//! The kernel rotates q and k ([`rope`]), splits k and v into token-major rows, appends them to
//! the layer's [`LayerStore`](super::LayerStore) and lets the store attend.

use ort::operator::{Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::{CacheHandle, Heads, KvCache, rope};

/// The operator's name in the exported graph (its domain is the exporter's, `kvbench`).
pub const ATTENTION_OP: &str = "KvAttention";

/// The operator descriptor, registered once per session.
pub struct KvAttentionOp {
    /// The running sequence's cache.
    pub cache: CacheHandle,
    /// Attention shape.
    pub shape: Heads,
    /// RoPE base.
    pub rope_base: f32,
}

impl Operator for KvAttentionOp {
    type Kernel<'attr> = KvAttentionKernel;

    fn name(&self) -> &str {
        ATTENTION_OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32), OperatorInput::required(TensorElementType::Int64)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let layer =
            ctx.get::<i64>("layer").ok_or_else(|| ort::Error::new("KvAttention needs an int attribute `layer`"))?;
        let layer = usize::try_from(layer).map_err(|_| ort::Error::new(format!("KvAttention layer {layer} < 0")))?;
        let rope_base = ctx.get::<f32>("rope_base").unwrap_or(self.rope_base);
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(ort::Error::new(format!("KvAttention layer {layer}: rope_base {rope_base}")));
        }
        let rope_style =
            if ctx.get::<i64>("rope_halves") == Some(1) { rope::Style::Halves } else { rope::Style::Adjacent };
        Ok(KvAttentionKernel { layer, cache: self.cache.clone(), shape: self.shape, rope_base, rope_style })
    }
}

/// One layer's kernel instance.
pub struct KvAttentionKernel {
    layer: usize,
    cache: CacheHandle,
    shape: Heads,
    rope_base: f32,
    rope_style: rope::Style,
}

impl Kernel for KvAttentionKernel {
    fn compute(&mut self, ctx: &ort::operator::ComputeContext) -> ort::Result<()> {
        let Heads { heads, kv_heads, head_dim: d } = self.shape;
        let (q_w, kv_w) = (heads * d, kv_heads * d);
        let width = q_w + 2 * kv_w;
        let qkv = ctx.input(0)?.ok_or_else(|| ort::Error::new("KvAttention: missing input qkv"))?;
        let pos = ctx.input(1)?.ok_or_else(|| ort::Error::new("KvAttention: missing input positions"))?;
        let (shape, qkv) = qkv.try_extract_tensor::<f32>()?;
        let (_, pos) = pos.try_extract_tensor::<i64>()?;
        let t = pos.len();
        if shape.len() != 2 || shape[1] as usize != width || shape[0] as usize != t {
            return Err(ort::Error::new(format!("KvAttention: qkv shape {shape:?}, expected [{t}, {width}]")));
        }

        // Rotate into owned buffers: q stays strided, k and v become token-major rows.
        let mut q = vec![0.0f32; t * q_w];
        let mut k = vec![0.0f32; t * kv_w];
        let mut v = vec![0.0f32; t * kv_w];
        for (j, row) in qkv.chunks_exact(width).enumerate() {
            let (qr, kr, vr) = (&mut q[j * q_w..][..q_w], &mut k[j * kv_w..][..kv_w], &mut v[j * kv_w..][..kv_w]);
            qr.copy_from_slice(&row[..q_w]);
            kr.copy_from_slice(&row[q_w..q_w + kv_w]);
            vr.copy_from_slice(&row[q_w + kv_w..]);
            rope::apply_style(qr, d, pos[j], self.rope_base, self.rope_style);
            rope::apply_style(kr, d, pos[j], self.rope_base, self.rope_style);
        }

        let mut out =
            ctx.output(0, [t as i64, q_w as i64])?.ok_or_else(|| ort::Error::new("KvAttention: no output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        let mut cache = KvCache::lock(&self.cache).map_err(|e| ort::Error::new(e.to_string()))?;
        let no_layer = || ort::Error::new(format!("KvAttention: no layer {} in the cache", self.layer));
        let lanes = cache.lanes_mut();
        if lanes.is_empty() {
            // one sequence: the chunk's rows are its next tokens, causal among themselves
            let store = cache.layer_mut(self.layer).ok_or_else(no_layer)?;
            store.append(&k, &v, t);
            store.attend(&q, q_w, t, out);
        } else {
            // a batched step: row j is the next token of lane j's sequence
            if lanes.len() != t {
                return Err(ort::Error::new(format!("KvAttention: {t} rows for {} lanes", lanes.len())));
            }
            for (j, lane) in lanes.iter_mut().enumerate() {
                let store = lane.layer_mut(self.layer).ok_or_else(no_layer)?;
                store.append(&k[j * kv_w..][..kv_w], &v[j * kv_w..][..kv_w], 1);
                store.attend(&q[j * q_w..][..q_w], q_w, 1, &mut out[j * q_w..][..q_w]);
            }
        }
        #[cfg(feature = "perturb")]
        super::perturb::apply(out, self.layer, pos);
        Ok(())
    }
}
