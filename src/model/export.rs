//! Write a llama-family GGUF as an ONNX graph whose attention is kvbench's `KvAttention` op.
//!
//! Graph, for `T` new tokens (batch 1, so every activation is 2-D `[T, width]`):
//!
//! ```text
//! input_ids[T] ─Gather(token_embd)─► x
//! per layer l:  h  = RMSNorm(x)                (SimplifiedLayerNormalization)
//!               a  = kvbench.KvAttention(h·Wqkv, positions; layer = l)   ← RoPE + cache + attention in Rust
//!               x += a·Wo
//!               g|u = RMSNorm(x)·Wgate|up      (one MatMul, then Split)
//!               x += (silu(g) ⊙ u)·Wdown
//! logits[N, vocab] = Gemm(Gather(RMSNorm(x), logit_rows), token_embd, transB)  (tied head)
//! ```
//!
//! Design decisions:
//! - **RoPE lives in the kernel**, not in the graph: the kernel must see post-RoPE keys anyway,
//!   and applying llama.cpp's adjacent-pair rotation there works directly on GGUF's permuted Q/K
//!   weights (no un-permuting), in fp32 with a table we control and unit-test.
//! - **q, k and v come fused** from one `[hidden, (heads + 2·kv_heads)·head_dim]` MatMul, and the
//!   gate and up projections from one `[hidden, 2·ffn]` MatMul: fewer, larger products.
//! - **`logit_rows` selects which positions get logits**: `[T-1]` during generation (a
//!   `[1, vocab]` product instead of `[T, vocab]`), all rows for teacher forcing.
//! - **Two graphs, one function**: chunks of many tokens run a graph whose Q4_1 products are
//!   ONNX Runtime's blocked `MatMulNBits`; decode steps run one whose products are kvbench's
//!   streaming `Q4Linear` ([`super::qlinear`]) over the same codes. In the decode graph each
//!   `Q4Linear` also does the RMSNorm or SwiGLU before it and the residual `Add` after it, in
//!   the arithmetic of the ONNX Runtime nodes it replaces (bit for bit, tested; see
//!   [`super::fused`]): 5 nodes per layer instead of 13, since every node costs a dispatch and
//!   an output buffer.
//! - **Q4_1 matrices stay 4-bit** as `MatMulNBits` plus an exact block-sum correction
//!   ([`super::quant`]): decode is bound by the bytes of weights read per token, and fp32 weights
//!   decoded at a third of llama.cpp's speed (docs/PERF.md). Other types (F32, Q8_0, ...) are
//!   dequantized to fp32. The tied embedding is fp32, stored once, read by the Gather and the
//!   output Gemm.

use super::ModelConfig;
use super::gguf::{GgmlType, GgufError, GgufFile};
use super::head::Q8_LINEAR_OP;
use super::kquants::Q8Blocks;
use super::onnx::{AttributeProto, Dim, FLOAT, GraphBuilder, INT8, INT64, UINT8, UINT16};
use super::qlinear::Q4_LINEAR_OP;
use super::quant::{BLOCK, NBits};
use crate::kv::op::ATTENTION_OP;

/// Bump when the graph changes: cached exports are keyed by it. (8: a llama file's Q8_0, Q5_0,
/// Q4_K and Q6_K products are `Q8Linear` in its decode graph; SmolLM2's, all Q4_1, are as in 7.)
pub const EXPORTER_VERSION: u32 = 8;
/// Domain of kvbench's custom operators.
pub const DOMAIN: &str = "kvbench";
/// Which of the two graphs: they compute the same function with different kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    /// Many rows per run: Q4_1 products through ONNX Runtime's blocked `MatMulNBits`.
    Prefill,
    /// A few rows per run: Q4_1 products through kvbench's streaming `Q4Linear`.
    Decode,
}

impl GraphKind {
    /// Name used in cached file names.
    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Prefill => "prefill",
            GraphKind::Decode => "decode",
        }
    }
}

/// Build the ONNX model bytes for `gguf`.
pub fn export(gguf: &GgufFile, cfg: &ModelConfig, kind: GraphKind) -> Result<Vec<u8>, GgufError> {
    let mut g = GraphBuilder::default();
    let (h, v) = (cfg.hidden as i64, cfg.vocab as i64);
    let ids = g.input("input_ids", INT64, &[Dim::Named("T")]);
    let positions = g.input("positions", INT64, &[Dim::Named("T")]);
    let rows = g.input("logit_rows", INT64, &[Dim::Named("N")]);
    g.output("logits", FLOAT, &[Dim::Named("N"), Dim::Fixed(v)]);

    let embd = g.init_f32("token_embd", &[v, h], &gguf.dequantize("token_embd.weight")?);
    let mut x = g.node("Gather", &[&embd, &ids], "x_embd", vec![AttributeProto::int("axis", 0)]);
    let eps = cfg.rms_eps;

    for l in 0..cfg.layers {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        let n = |s: &str| format!("l{l}_{s}");
        let norm = g.init_f32(&n("attn_norm"), &[h], &gguf.dequantize(&t("attn_norm"))?);
        let before = Around { norm: Some((&norm, eps)), ..Around::default() };
        let qkv =
            linear(&mut g, gguf, &[&t("attn_q"), &t("attn_k"), &t("attn_v")], cfg.hidden, &x, &n("qkv"), before, kind)?;
        let attn = n("attn");
        g.node_in(DOMAIN, ATTENTION_OP, &[&qkv, &positions], &[&attn], vec![AttributeProto::int("layer", l as i64)]);
        let after = Around { residual: Some(&x), ..Around::default() };
        let x_attn = linear(&mut g, gguf, &[&t("attn_output")], cfg.hidden, &attn, &n("x_attn"), after, kind)?;

        let norm = g.init_f32(&n("ffn_norm"), &[h], &gguf.dequantize(&t("ffn_norm"))?);
        let before = Around { norm: Some((&norm, eps)), ..Around::default() };
        let gate_up =
            linear(&mut g, gguf, &[&t("ffn_gate"), &t("ffn_up")], cfg.hidden, &x_attn, &n("gate_up"), before, kind)?;
        let around = Around { swiglu: true, residual: Some(&x_attn), ..Around::default() };
        x = linear(&mut g, gguf, &[&t("ffn_down")], cfg.ffn, &gate_up, &n("x_out"), around, kind)?;
    }

    let norm = g.init_f32("output_norm", &[h], &gguf.dequantize("output_norm.weight")?);
    let normed = rms_norm(&mut g, &x, &norm, eps, "final_h");
    let picked = g.node("Gather", &[&normed, &rows], "picked", vec![AttributeProto::int("axis", 0)]);
    let head_name = if gguf.tensor_info("output.weight").is_ok() { "output.weight" } else { "token_embd.weight" };
    if gguf.tensor_info(head_name)?.ggml_type == GgmlType::Q8_0 && cfg.hidden.is_multiple_of(BLOCK) {
        // 8-bit codes and f16 scales, read by kvbench's Q8Linear (see `super::head`).
        let raw = gguf.tensor_data(head_name)?;
        let codes: Vec<u8> = raw.chunks_exact(34).flat_map(|b| b[2..].iter().copied()).collect();
        let scales: Vec<f32> = raw.chunks_exact(34).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        let codes = g.init_bytes("head_codes", INT8, &[v, h], codes);
        let scales = g.init_f32("head_scales", &[v, h / BLOCK as i64], &scales);
        g.node_in(DOMAIN, Q8_LINEAR_OP, &[&picked, &codes, &scales], &["logits"], vec![]);
    } else {
        let head = if head_name == "token_embd.weight" {
            embd
        } else {
            g.init_f32("output", &[v, h], &gguf.dequantize(head_name)?)
        };
        g.node("Gemm", &[&picked, &head], "logits", vec![AttributeProto::int("transB", 1)]);
    }

    let metadata =
        [("kvbench.exporter_version", EXPORTER_VERSION.to_string()), ("kvbench.layers", cfg.layers.to_string())];
    Ok(g.into_model_bytes("kvbench-llama", &[("", 21), (DOMAIN, 1), (MS_DOMAIN, 1)], &metadata))
}

/// ONNX Runtime's contrib-operator domain (`MatMulNBits`).
pub(super) const MS_DOMAIN: &str = "com.microsoft";

/// What is done around a product `x · W`: before it, an RMSNorm of `x` (weight, epsilon) or
/// SwiGLU's `silu(g) ⊙ u` of `x = [g | u]`; after it, a residual added. The decode graph's
/// `Q4Linear` does them inside the kernel; otherwise they are graph nodes.
#[derive(Default, Clone, Copy)]
pub(super) struct Around<'a> {
    pub(super) norm: Option<(&'a str, f32)>,
    pub(super) swiglu: bool,
    pub(super) residual: Option<&'a str>,
}

/// `x[T, input] · [W_1 | W_2 | …]` for GGUF matrices `names` (each `[out_i, input]`), as one
/// product named `out`, with what is `around` it. Q4_1 stays 4-bit ([`super::quant`]); in a
/// decode graph Q8_0, Q5_0, Q4_K and Q6_K are 8-bit codes ([`q8_linear`]); anything else, and
/// those in a prefill graph (where ONNX Runtime's fp32 GEMM is the faster over many rows), is
/// dequantized to fp32.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    g: &mut GraphBuilder,
    gguf: &GgufFile,
    names: &[&str],
    input: usize,
    x: &str,
    out: &str,
    around: Around<'_>,
    kind: GraphKind,
) -> Result<String, GgufError> {
    let all_q4_1 = names
        .iter()
        .map(|n| gguf.tensor_info(n))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .all(|i| i.ggml_type == GgmlType::Q4_1);
    let q4 = all_q4_1 && input.is_multiple_of(BLOCK);
    // the kernel's RMSNorm takes rows of whole 8-lane groups (see `super::fused::rms_norm`)
    let fused = q4 && kind == GraphKind::Decode;
    let fuse_norm = fused && input.is_multiple_of(8);
    let x = match around.norm {
        Some((weight, eps)) if !fuse_norm => rms_norm(g, x, weight, eps, &format!("{out}_normed")),
        _ => x.to_string(),
    };
    let x = if around.swiglu && !fused { swiglu(g, &x, out) } else { x };
    if fused {
        // GGUF's own nibbles and f16 d and m, as they are in the file (see `super::qlinear`)
        let raw: Vec<&[u8]> = names.iter().map(|n| gguf.tensor_data(n)).collect::<Result<_, _>>()?;
        let blocks: Vec<&[u8]> = raw.iter().flat_map(|r| r.chunks_exact(20)).collect();
        let rows = (blocks.len() / (input / BLOCK)) as i64;
        let codes: Vec<u8> = blocks.iter().flat_map(|b| b[4..20].iter().copied()).collect();
        let d: Vec<u8> = blocks.iter().flat_map(|b| [b[0], b[1]]).collect();
        let m: Vec<u8> = blocks.iter().flat_map(|b| [b[2], b[3]]).collect();
        let per_row = (input / BLOCK) as i64;
        let codes = g.init_bytes(&format!("{out}_codes"), UINT8, &[rows, input as i64 / 2], codes);
        let d = g.init_bytes(&format!("{out}_d"), UINT16, &[rows, per_row], d);
        let m = g.init_bytes(&format!("{out}_m"), UINT16, &[rows, per_row], m);
        let norm = around.norm.filter(|_| fuse_norm);
        let mut inputs = vec![x.as_str(), &codes, &d, &m, norm.map_or("", |(w, _)| w), around.residual.unwrap_or("")];
        while inputs.last() == Some(&"") {
            inputs.pop();
        }
        let mut attrs = Vec::new();
        if let Some((_, eps)) = norm {
            attrs.push(AttributeProto::float("epsilon", eps));
        }
        if around.swiglu {
            attrs.push(AttributeProto::int("swiglu", 1));
        }
        g.node_in(DOMAIN, Q4_LINEAR_OP, &inputs, &[out], attrs);
        return Ok(out.to_string());
    }
    // the product's own name, unless a residual follows it
    let product = if around.residual.is_some() { format!("{out}_product") } else { out.to_string() };
    let q8 = if kind == GraphKind::Decode && !q4 { q8_blocks(gguf, names)? } else { None };
    let product = if q4 {
        let raw: Vec<&[u8]> = names.iter().map(|n| gguf.tensor_data(n)).collect::<Result<_, _>>()?;
        matmul_nbits(g, &raw, input, &x, &product)
    } else if let Some(w) = q8.filter(|w| input.is_multiple_of(w.block)) {
        q8_linear(g, w, input, &x, &product)
    } else {
        let w = fused_transpose(gguf, names, input)?;
        let w = g.init_f32(&format!("{out}_w"), &[input as i64, (w.len() / input) as i64], &w);
        g.node("MatMul", &[&x, &w], &product, vec![])
    };
    Ok(match around.residual {
        Some(residual) => g.node("Add", &[residual, &product], out, vec![]),
        None => product,
    })
}

/// The matrices `names` stacked as 8-bit codes, if every one is of a type that
/// [`Q8Blocks`] holds exactly (Q8_0, Q5_0, Q4_K, Q6_K).
fn q8_blocks(gguf: &GgufFile, names: &[&str]) -> Result<Option<Q8Blocks>, GgufError> {
    let mut parts = Vec::new();
    for name in names {
        let ggml_type = gguf.tensor_info(name)?.ggml_type;
        match Q8Blocks::decode(ggml_type, gguf.tensor_data(name)?) {
            Some(part) => parts.push(part),
            None => return Ok(None),
        }
    }
    Ok(Some(Q8Blocks::stack(parts)))
}

/// `x · Wᵀ` for `w` (rows of `input`) through `kvbench.Q8Linear`: a decode step reads a byte and
/// a fraction per weight where the fp32 `MatMul` read four, for the same values ([`super::head`]).
fn q8_linear(g: &mut GraphBuilder, w: Q8Blocks, input: usize, x: &str, out: &str) -> String {
    let rows = (w.codes.len() / input) as i64;
    let per_row = (input / w.block) as i64;
    let codes = w.codes.iter().map(|&c| c as u8).collect();
    let codes = g.init_bytes(&format!("{out}_codes"), INT8, &[rows, input as i64], codes);
    let scales = g.init_f32(&format!("{out}_scales"), &[rows, per_row], &w.scales);
    let mut inputs = vec![x.to_string(), codes, scales];
    if let Some(mins) = &w.mins {
        inputs.push(g.init_f32(&format!("{out}_mins"), &[rows, per_row], mins));
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    g.node_in(DOMAIN, Q8_LINEAR_OP, &inputs, &[out], vec![AttributeProto::int("block", w.block as i64)]);
    out.to_string()
}

/// `silu(g) ⊙ u` of `x = [g | u]` as graph nodes (ONNX Runtime fuses the first two into its
/// `QuickGelu`).
fn swiglu(g: &mut GraphBuilder, x: &str, out: &str) -> String {
    let (gate, up) = (format!("{out}_gate"), format!("{out}_up"));
    let split = vec![AttributeProto::int("axis", -1), AttributeProto::int("num_outputs", 2)];
    g.node_in("", "Split", &[x], &[&gate, &up], split);
    let sig = g.node("Sigmoid", &[&gate], &format!("{out}_gate_sigmoid"), vec![]);
    let silu = g.node("Mul", &[&gate, &sig], &format!("{out}_gate_silu"), vec![]);
    g.node("Mul", &[&silu, &up], &format!("{out}_act"), vec![])
}

/// `x · Wᵀ` for Q4_1 matrices through ONNX Runtime's `MatMulNBits` and an exact block-sum
/// correction for the `m` offsets ([`super::quant`]).
fn matmul_nbits(g: &mut GraphBuilder, raw: &[&[u8]], input: usize, x: &str, out: &str) -> String {
    let nb = NBits::from_q4_1(raw, input);
    let (n, k, blocks) = (nb.n as i64, nb.k as i64, (nb.k / BLOCK) as i64);
    let codes = g.init_bytes(&format!("{out}_codes"), UINT8, &[n, blocks, (BLOCK / 2) as i64], nb.codes);
    let scales = g.init_f32(&format!("{out}_scales"), &[n * blocks], &nb.scales);
    let main = format!("{out}_main");
    g.node_in(
        MS_DOMAIN,
        "MatMulNBits",
        &[x, &codes, &scales],
        &[&main],
        vec![
            AttributeProto::int("K", k),
            AttributeProto::int("N", n),
            AttributeProto::int("bits", 4),
            AttributeProto::int("block_size", BLOCK as i64),
            // 0 keeps activations fp32. 4 (int8 activation blocks, like llama.cpp's Q8_1) decoded
            // 1.5x faster but parted from both references within a few tokens: see docs/PERF.md.
            AttributeProto::int("accuracy_level", 0),
        ],
    );
    // correction: block sums of x times (m + 8d)
    let shape = g.init_i64(&format!("{out}_blocks_shape"), &[3], &[-1, blocks, BLOCK as i64]);
    let axes = g.init_i64(&format!("{out}_axes"), &[1], &[-1]);
    let offsets = g.init_f32(&format!("{out}_offsets"), &[blocks, n], &nb.offsets_t);
    let blocked = g.node("Reshape", &[x, &shape], &format!("{out}_xblocks"), vec![]);
    let sums =
        g.node("ReduceSum", &[&blocked, &axes], &format!("{out}_xsums"), vec![AttributeProto::int("keepdims", 0)]);
    let corr = g.node("MatMul", &[&sums, &offsets], &format!("{out}_corr"), vec![]);
    g.node("Add", &[&main, &corr], out, vec![])
}

/// RMSNorm through ONNX Runtime's fused `SimplifiedLayerNormalization` kernel.
pub(super) fn rms_norm(g: &mut GraphBuilder, x: &str, weight: &str, eps: f32, out: &str) -> String {
    g.node(
        "SimplifiedLayerNormalization",
        &[x, weight],
        out,
        vec![AttributeProto::int("axis", -1), AttributeProto::float("epsilon", eps)],
    )
}

/// Dequantize GGUF matrices stored `[out, in]` (rows = outputs) and lay them side by side as one
/// `[in, Σ out]` row-major matrix, ready for `MatMul(x[T, in], W)`.
fn fused_transpose(gguf: &GgufFile, names: &[&str], input: usize) -> Result<Vec<f32>, GgufError> {
    let parts: Vec<Vec<f32>> = names.iter().map(|n| gguf.dequantize(n)).collect::<Result<_, _>>()?;
    for (name, p) in names.iter().zip(&parts) {
        if p.len() % input != 0 {
            return Err(GgufError::Invalid {
                path: gguf.path().to_path_buf(),
                what: format!("tensor {name} has {} values, not a multiple of its input width {input}", p.len()),
            });
        }
    }
    let parts: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
    Ok(transpose_concat(&parts, input))
}

/// `[out_i, input]` row-major parts → one `[input, Σ out_i]` row-major matrix.
fn transpose_concat(parts: &[&[f32]], input: usize) -> Vec<f32> {
    let width: usize = parts.iter().map(|p| p.len() / input).sum();
    let mut w = vec![0.0f32; input * width];
    let mut col0 = 0;
    for p in parts {
        for (r, row) in p.chunks_exact(input).enumerate() {
            for (i, &val) in row.iter().enumerate() {
                w[i * width + col0 + r] = val;
            }
        }
        col0 += p.len() / input;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::transpose_concat;

    #[test]
    fn transpose_concat_lays_matrices_side_by_side() {
        // A = [[1, 2]] (one output), B = [[3, 4], [5, 6]] (two outputs), input width 2.
        // Fused [2, 3]: row 0 = [1, 3, 5], row 1 = [2, 4, 6].
        let w = transpose_concat(&[&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0]], 2);
        assert_eq!(w, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    }
}
