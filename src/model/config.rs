//! The architecture numbers of a GGUF, read once and validated: the model adapter's output.
//!
//! `general.architecture` chooses the reader: `llama` (SmolLM2, Llama) here, `gemma3` in
//! [`super::gemma3`]; any other is an error naming it. The result carries what the exporter, the
//! attention kernel and the cache need to know of the architecture: its shape, its RoPE (base and
//! pairing, per layer) and which layers slide over a window.

use super::gguf::{GgufError, GgufFile};
use crate::kv::rope;

/// The llama architecture's name in `general.architecture`.
pub const ARCHITECTURE: &str = "llama";

/// The architectures kvbench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// llama: SmolLM2-135M-Instruct, the first model.
    Llama,
    /// Gemma 3: local/global attention ([`super::gemma3`]).
    Gemma3,
}

/// Layers that attend over a sliding window, and what differs on them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LocalLayers {
    /// Tokens a local layer's query sees, itself included.
    pub window: usize,
    /// RoPE base on local layers.
    pub rope_base: f32,
    /// Layer `l` is global when `(l + 1)` is a multiple of this; the others are local.
    pub global_every: usize,
}

/// Shapes and constants the exporter and the attention kernel need.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Which architecture.
    pub arch: Architecture,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Training context length.
    pub context: usize,
    /// RoPE frequency base (of the global layers, where some are local).
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The sliding-window layers, if the architecture has any.
    pub local: Option<LocalLayers>,
}

impl ModelConfig {
    /// Read the llama hyper-parameters from GGUF metadata, and check that the file is a llama
    /// model of that shape: the architecture kvbench exports, every tensor it reads present with
    /// the shape the numbers imply, and no tensor it would silently ignore (a bias, say).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufError> {
        let invalid = |what: String| GgufError::Invalid { path: gguf.path().to_path_buf(), what };
        let arch = gguf.get_str("general.architecture")?.to_string();
        if arch == super::gemma3::ARCHITECTURE {
            return super::gemma3::Gemma3Config::from_gguf(gguf).map(|g| g.model_config());
        }
        if arch != ARCHITECTURE {
            return Err(invalid(format!(
                "architecture {arch:?}: kvbench runs {ARCHITECTURE:?} (SmolLM2, Llama) and {:?} (Gemma 3) models and \
                 would misread this one",
                super::gemma3::ARCHITECTURE
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = gguf.get_u32(&key("embedding_length"))? as usize;
        let heads = gguf.get_u32(&key("attention.head_count"))? as usize;
        let embd = gguf.tensor_info("token_embd.weight")?;
        let cfg = Self {
            arch: Architecture::Llama,
            local: None,
            layers: gguf.get_u32(&key("block_count"))? as usize,
            hidden,
            ffn: gguf.get_u32(&key("feed_forward_length"))? as usize,
            heads,
            kv_heads: gguf.get_u32(&key("attention.head_count_kv"))? as usize,
            head_dim: hidden / heads.max(1),
            vocab: embd.dims.get(1).copied().unwrap_or(0) as usize,
            context: gguf.get_u32(&key("context_length"))? as usize,
            rope_base: gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        };
        if cfg.heads == 0
            || cfg.kv_heads == 0
            || !cfg.heads.is_multiple_of(cfg.kv_heads)
            || cfg.head_dim * cfg.heads != hidden
            || !cfg.head_dim.is_multiple_of(2)
            || cfg.head_dim > 512
        {
            return Err(invalid(format!(
                "inconsistent attention shape: {} heads, {} kv heads, hidden {hidden}",
                heads, cfg.kv_heads
            )));
        }
        for (name, value) in
            [("block_count", cfg.layers), ("feed_forward_length", cfg.ffn), ("context_length", cfg.context)]
        {
            if value == 0 {
                return Err(invalid(format!("{} is 0: not a model kvbench can run", key(name))));
            }
        }
        if let Ok(key_length) = gguf.get_u32(&key("attention.key_length"))
            && key_length as usize != cfg.head_dim
        {
            return Err(invalid(format!(
                "{} is {key_length}, but hidden {hidden} over {heads} heads is {}",
                key("attention.key_length"),
                cfg.head_dim
            )));
        }
        for (name, x) in [("rope.freq_base", cfg.rope_base), ("attention.layer_norm_rms_epsilon", cfg.rms_eps)] {
            if !(x.is_finite() && x > 0.0) {
                return Err(invalid(format!("{} is {x}, not a positive number", key(name))));
            }
        }
        cfg.check_tensors(gguf)?;
        Ok(cfg)
    }

    /// Every tensor the exporter reads, with its GGUF dimensions (`ne0`, the row length, first).
    fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut out =
            vec![("token_embd.weight".to_string(), vec![h, self.vocab]), ("output_norm.weight".into(), vec![h])];
        for l in 0..self.layers {
            let t = |s: &str| format!("blk.{l}.{s}.weight");
            out.extend([
                (t("attn_norm"), vec![h]),
                (t("attn_q"), vec![h, q]),
                (t("attn_k"), vec![h, kv]),
                (t("attn_v"), vec![h, kv]),
                (t("attn_output"), vec![q, h]),
                (t("ffn_norm"), vec![h]),
                (t("ffn_gate"), vec![h, self.ffn]),
                (t("ffn_up"), vec![h, self.ffn]),
                (t("ffn_down"), vec![self.ffn, h]),
            ]);
        }
        out
    }

    /// The file's tensors are exactly [`Self::expected_tensors`] (plus an untied `output.weight`
    /// of the embedding's shape), each of its expected shape.
    fn check_tensors(&self, gguf: &GgufFile) -> Result<(), GgufError> {
        check_tensor_table(gguf, ARCHITECTURE, self.layers, 9, || {
            let mut expected = self.expected_tensors();
            if gguf.tensor_info("output.weight").is_ok() {
                expected.push(("output.weight".into(), vec![self.hidden, self.vocab]));
            }
            expected
        })
    }

    /// The window of layer `l`'s queries, if it is a sliding-window layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.local.filter(|local| !(l + 1).is_multiple_of(local.global_every)).map(|local| local.window)
    }

    /// Layer `l`'s RoPE: base and pairing.
    pub fn rope(&self, l: usize) -> (f32, rope::Style) {
        match (self.arch, self.local) {
            (Architecture::Llama, _) => (self.rope_base, rope::Style::Adjacent),
            (Architecture::Gemma3, Some(local)) if self.window(l).is_some() => (local.rope_base, rope::Style::Halves),
            (Architecture::Gemma3, _) => (self.rope_base, rope::Style::Halves),
        }
    }

    /// Width of the fused q|k|v projection.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// The attention shape the cache and its kernels work in.
    pub fn attention_shape(&self) -> crate::kv::Heads {
        crate::kv::Heads { heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }

    /// Query heads that share one key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Bytes of a full fp16 KV cache per token, all layers (the reference for compression ratios).
    pub fn fp16_kv_bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * 2
    }

    /// Bytes of an fp16 KV cache of `tokens` tokens as the model holds it: every token in a global
    /// layer, at most the window in a local one (Gemma 3's sliding-window layers; an fp16 Gemma
    /// cache in llama.cpp holds no more). For a model without local layers, exactly
    /// `tokens × fp16_kv_bytes_per_token()`. The reference of every compression ratio.
    pub fn fp16_kv_bytes(&self, tokens: usize) -> usize {
        let per_layer = 2 * self.kv_heads * self.head_dim * 2;
        (0..self.layers).map(|l| per_layer * self.window(l).map_or(tokens, |w| tokens.min(w))).sum()
    }
}

/// A file's tensors are exactly `expected()` (names and GGUF dimensions, row length first), for a
/// model of `arch` with `layers` layers of `per_layer` tensors each: a tensor missing or of another
/// shape, or one the model would not read (a bias, another architecture's weight, a layer beyond
/// `block_count`), is an error naming it. A `block_count` the file cannot hold is refused before
/// `expected` is called (a hostile count of 2^32 would ask for billions of entries).
pub(crate) fn check_tensor_table(
    gguf: &GgufFile,
    arch: &str,
    layers: usize,
    per_layer: usize,
    expected: impl FnOnce() -> Vec<(String, Vec<usize>)>,
) -> Result<(), GgufError> {
    let bad = |tensor: &str, reason: String| GgufError::BadTensor {
        path: gguf.path().to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    };
    let held = gguf.tensors().len();
    if layers.saturating_mul(per_layer).saturating_add(2) > held {
        return Err(GgufError::Invalid {
            path: gguf.path().to_path_buf(),
            what: format!(
                "{arch}.block_count is {layers}, but the file holds {held} tensors, fewer than {layers} layers need"
            ),
        });
    }
    let expected = expected();
    for (name, dims) in &expected {
        let info = gguf.tensor_info(name)?;
        if info.dims.iter().map(|&d| d as usize).ne(dims.iter().copied()) {
            return Err(bad(name, format!("shape {:?}, but the file's metadata imply {dims:?}", info.dims)));
        }
    }
    if held != expected.len() {
        let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let extra = gguf.tensors().iter().find(|t| !known.contains(t.name.as_str())).expect("a tensor not expected");
        return Err(bad(
            &extra.name,
            format!(
                "not part of a {arch} model of {layers} layers: kvbench would ignore it (a bias, another \
                 architecture's weight, a layer beyond block_count), so it refuses the file"
            ),
        ));
    }
    Ok(())
}
