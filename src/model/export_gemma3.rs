//! Write a Gemma 3 GGUF as an ONNX graph whose attention is kvbench's `KvAttention` op
//! ([`super::gemma3`] has the architecture and its sources).
//!
//! Graph, for `T` new tokens:
//!
//! ```text
//! input_ids[T] ─kvbench.Q8Gather(token codes)─► · √hidden ─► x
//! per layer l:  h   = RMSNorm(x; attn_norm)
//!               q   = RMSNorm_per_head(h·Wq; attn_q_norm),  k = RMSNorm_per_head(h·Wk; attn_k_norm),  v = h·Wv
//!               a   = kvbench.KvAttention(q|k|v, positions; layer l, its RoPE base, rotate-half)
//!               x  += RMSNorm(a·Wo; post_attention_norm)
//!               g|u = RMSNorm(x; ffn_norm)·Wgate|up
//!               x  += RMSNorm((gelu_tanh(g) ⊙ u)·Wdown; post_ffw_norm)
//! logits[N, vocab] = kvbench.Q8Linear(Gather(RMSNorm(x; output_norm), logit_rows), token codes)
//! ```
//!
//! What a local layer sees is the cache's business ([`crate::kv::sliding`]): its store keeps the
//! window; the graph is the same for every layer but for the RoPE base. Gemma's matrices (Q5_0,
//! Q4_K, Q6_K, Q8_0) are fp32 `MatMul`s of their dequantized values in the prefill graph, and
//! `kvbench.Q8Linear` products over the same values held as 8-bit codes in the decode graph
//! ([`super::export::linear`]), which a decode step reads in 30% of the bytes.

use super::ModelConfig;
use super::embed::Q8_GATHER_OP;
use super::export::{Around, DOMAIN, GraphKind, MS_DOMAIN, linear, rms_norm};
use super::gguf::{GgmlType, GgufError, GgufFile};
use super::head::Q8_LINEAR_OP;
use super::onnx::{AttributeProto, Dim, FLOAT, GraphBuilder, INT8, INT64};
use crate::kv::op::ATTENTION_OP;

/// Bump when this graph changes: cached exports are keyed by it.
pub const VERSION: u32 = 2;

/// Build the ONNX model bytes of a Gemma 3 `gguf` (read into `cfg`).
pub fn export(gguf: &GgufFile, cfg: &ModelConfig, kind: GraphKind) -> Result<Vec<u8>, GgufError> {
    let mut g = GraphBuilder::default();
    let (h, v, d) = (cfg.hidden as i64, cfg.vocab as i64, cfg.head_dim as i64);
    let ids = g.input("input_ids", INT64, &[Dim::Named("T")]);
    let positions = g.input("positions", INT64, &[Dim::Named("T")]);
    let rows = g.input("logit_rows", INT64, &[Dim::Named("N")]);
    g.output("logits", FLOAT, &[Dim::Named("N"), Dim::Fixed(v)]);
    let eps = cfg.rms_eps;

    // the tied Q8_0 embedding, once, for the lookup and the head
    let embd = gguf.tensor_info("token_embd.weight")?;
    if embd.ggml_type != GgmlType::Q8_0 {
        return Err(GgufError::Invalid {
            path: gguf.path().to_path_buf(),
            what: format!("token_embd.weight is {:?}: kvbench's Gemma 3 reads a Q8_0 embedding", embd.ggml_type),
        });
    }
    let raw = gguf.tensor_data("token_embd.weight")?;
    let codes: Vec<u8> = raw.chunks_exact(34).flat_map(|b| b[2..].iter().copied()).collect();
    let scales: Vec<f32> = raw.chunks_exact(34).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    let codes = g.init_bytes("embd_codes", INT8, &[v, h], codes);
    let scales = g.init_f32("embd_scales", &[v, h / 32], &scales);
    g.node_in(DOMAIN, Q8_GATHER_OP, &[&ids, &codes, &scales], &["x_embd"], vec![]);
    let sqrt_h = g.init_f32("sqrt_hidden", &[1], &[(cfg.hidden as f32).sqrt()]);
    let mut x = g.node("Mul", &["x_embd", &sqrt_h], "x0", vec![]);

    let heads_shape = |g: &mut GraphBuilder, name: &str, heads: usize| g.init_i64(name, &[3], &[-1, heads as i64, d]);
    let q_heads = heads_shape(&mut g, "q_heads_shape", cfg.heads);
    let kv_heads = heads_shape(&mut g, "kv_heads_shape", cfg.kv_heads);
    let flat_q = g.init_i64("q_flat_shape", &[2], &[-1, (cfg.heads * cfg.head_dim) as i64]);
    let flat_kv = g.init_i64("kv_flat_shape", &[2], &[-1, (cfg.kv_heads * cfg.head_dim) as i64]);
    let plain = Around::default();
    for l in 0..cfg.layers {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        let n = |s: &str| format!("l{l}_{s}");
        let weight = |g: &mut GraphBuilder, s: &str, len: i64| -> Result<String, GgufError> {
            Ok(g.init_f32(&n(s), &[len], &gguf.dequantize(&t(s))?))
        };
        let attn_norm = weight(&mut g, "attn_norm", h)?;
        let hn = rms_norm(&mut g, &x, &attn_norm, eps, &n("attn_in"));
        let q = linear(&mut g, gguf, &[&t("attn_q")], cfg.hidden, &hn, &n("q"), plain, kind)?;
        let k = linear(&mut g, gguf, &[&t("attn_k")], cfg.hidden, &hn, &n("k"), plain, kind)?;
        let vv = linear(&mut g, gguf, &[&t("attn_v")], cfg.hidden, &hn, &n("v"), plain, kind)?;
        let q_norm = weight(&mut g, "attn_q_norm", d)?;
        let k_norm = weight(&mut g, "attn_k_norm", d)?;
        let per_head = |g: &mut GraphBuilder, x: &str, shape: &str, flat: &str, w: &str, out: &str| {
            let split = g.node("Reshape", &[x, shape], &format!("{out}_heads"), vec![]);
            let normed = rms_norm(g, &split, w, eps, &format!("{out}_normed"));
            g.node("Reshape", &[&normed, flat], out, vec![])
        };
        let qn = per_head(&mut g, &q, &q_heads, &flat_q, &q_norm, &n("qn"));
        let kn = per_head(&mut g, &k, &kv_heads, &flat_kv, &k_norm, &n("kn"));
        let qkv = g.node("Concat", &[&qn, &kn, &vv], &n("qkv"), vec![AttributeProto::int("axis", 1)]);
        let (base, _) = cfg.rope(l);
        let attn = n("attn");
        g.node_in(
            DOMAIN,
            ATTENTION_OP,
            &[&qkv, &positions],
            &[&attn],
            vec![
                AttributeProto::int("layer", l as i64),
                AttributeProto::float("rope_base", base),
                AttributeProto::int("rope_halves", 1),
            ],
        );
        let o = linear(&mut g, gguf, &[&t("attn_output")], cfg.heads * cfg.head_dim, &attn, &n("o"), plain, kind)?;
        let post = weight(&mut g, "post_attention_norm", h)?;
        let o = rms_norm(&mut g, &o, &post, eps, &n("o_normed"));
        let x_attn = g.node("Add", &[&x, &o], &n("x_attn"), vec![]);

        let ffn_norm = weight(&mut g, "ffn_norm", h)?;
        let hn = rms_norm(&mut g, &x_attn, &ffn_norm, eps, &n("ffn_in"));
        let gate_up =
            linear(&mut g, gguf, &[&t("ffn_gate"), &t("ffn_up")], cfg.hidden, &hn, &n("gate_up"), plain, kind)?;
        let act = geglu(&mut g, &gate_up, &n("ffn"));
        let down = linear(&mut g, gguf, &[&t("ffn_down")], cfg.ffn, &act, &n("down"), plain, kind)?;
        let post = weight(&mut g, "post_ffw_norm", h)?;
        let down = rms_norm(&mut g, &down, &post, eps, &n("down_normed"));
        x = g.node("Add", &[&x_attn, &down], &n("x_out"), vec![]);
    }

    let norm = g.init_f32("output_norm", &[h], &gguf.dequantize("output_norm.weight")?);
    let normed = rms_norm(&mut g, &x, &norm, eps, "final_h");
    let picked = g.node("Gather", &[&normed, &rows], "picked", vec![AttributeProto::int("axis", 0)]);
    g.node_in(DOMAIN, Q8_LINEAR_OP, &[&picked, &codes, &scales], &["logits"], vec![]);

    let metadata = [
        ("kvbench.exporter_version", format!("gemma3-v{VERSION}")),
        ("kvbench.layers", cfg.layers.to_string()),
        ("kvbench.architecture", "gemma3".to_string()),
    ];
    Ok(g.into_model_bytes("kvbench-gemma3", &[("", 21), (DOMAIN, 1), (MS_DOMAIN, 1)], &metadata))
}

/// `gelu_tanh(g) ⊙ u` of `x = [g | u]`: `0.5 · g · (1 + tanh(√(2/π) · (g + 0.044715 · g³)))`, the
/// `gelu_pytorch_tanh` of transformers and llama.cpp's `ggml_gelu`, as graph nodes.
fn geglu(g: &mut GraphBuilder, x: &str, out: &str) -> String {
    let (gate, up) = (format!("{out}_gate"), format!("{out}_up"));
    let split = vec![AttributeProto::int("axis", -1), AttributeProto::int("num_outputs", 2)];
    g.node_in("", "Split", &[x], &[&gate, &up], split);
    let c = |g: &mut GraphBuilder, name: &str, v: f32| g.init_f32(&format!("{out}_{name}"), &[1], &[v]);
    let (cube_c, root, half, one) = (
        c(g, "c", 0.044_715),
        c(g, "root", (2.0 / std::f64::consts::PI).sqrt() as f32),
        c(g, "half", 0.5),
        c(g, "one", 1.0),
    );
    let sq = g.node("Mul", &[&gate, &gate], &format!("{out}_sq"), vec![]);
    let cube = g.node("Mul", &[&sq, &gate], &format!("{out}_cube"), vec![]);
    let scaled = g.node("Mul", &[&cube, &cube_c], &format!("{out}_cube_c"), vec![]);
    let inner = g.node("Add", &[&gate, &scaled], &format!("{out}_inner"), vec![]);
    let arg = g.node("Mul", &[&inner, &root], &format!("{out}_arg"), vec![]);
    let th = g.node("Tanh", &[&arg], &format!("{out}_tanh"), vec![]);
    let th1 = g.node("Add", &[&th, &one], &format!("{out}_tanh1"), vec![]);
    let hg = g.node("Mul", &[&gate, &half], &format!("{out}_half_gate"), vec![]);
    let gelu = g.node("Mul", &[&hg, &th1], &format!("{out}_gelu"), vec![]);
    g.node("Mul", &[&gelu, &up], &format!("{out}_act"), vec![])
}
