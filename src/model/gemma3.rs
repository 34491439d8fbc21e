//! Gemma 3's architecture, as a GGUF of `general.architecture = "gemma3"` states it, read and
//! checked: the numbers, the local/global layer pattern, the two RoPE bases, and the tensor
//! table, so that a file kvbench would misread is refused with the reason.
//!
//! What Gemma 3 is beyond llama (transformers' `modeling_gemma3.py`, llama.cpp's gemma3 graph):
//! - **Local and global layers.** Five of every six layers attend over a sliding window of the
//!   last `sliding_window` tokens; every sixth (`(l + 1) % 6 == 0`) over the whole context. So the
//!   cache grows with the context in a sixth of the layers only. This is local/global attention,
//!   not RecurrentGemma's recurrence.
//! - **Two RoPE bases**: the GGUF's `rope.freq_base` (1,000,000) on global layers, 10,000 on local
//!   ones (transformers' `rope_local_base_freq`; newer converters write it as `rope.freq_base_swa`,
//!   which llama.cpp reads with 10,000 as the default, and this file has no such key). No RoPE
//!   scaling on the 270M model. Rotation by halves (GPT-NeoX style, over all 256 dimensions), on
//!   unpermuted weights (the converter permutes Q/K for llama only).
//! - **The window**: a local layer's query at position p sees keys p − 511 … p (transformers:
//!   `kv_idx > q_idx - sliding_window`; llama.cpp masks `p1 - p0 >= n_swa`).
//! - **Norms around both blocks**: `attn_norm` before and `post_attention_norm` after attention,
//!   `ffn_norm` before and `post_ffw_norm` after the MLP, all RMSNorm; and RMSNorm over each
//!   head's queries and keys (`attn_q_norm`, `attn_k_norm`) before RoPE. The GGUF stores each
//!   norm's multiplier as is: the converter adds Gemma's `1 +` to every `norm.weight` in f32.
//! - **The rest**: embeddings scaled by √hidden (in f32, as llama.cpp; transformers in bf16 rounds
//!   it to 25.25); GeGLU (`gelu_tanh(gate) · up`); attention scale `1/√head_dim` (the 270M model's
//!   `query_pre_attn_scalar` is its head size, 256); the output head tied to the embedding; no
//!   logit soft-capping (Gemma 3 passes none to attention, and the 270M model sets no final one).

use super::gguf::{GgufError, GgufFile};

/// `general.architecture` of the files this module reads.
pub const ARCHITECTURE: &str = "gemma3";
/// One layer in this many is global (`(l + 1) % 6 == 0`); the others slide.
pub const GLOBAL_EVERY: usize = 6;
/// RoPE base of the sliding-window layers where the GGUF has no `rope.freq_base_swa` (older
/// converters, this file's, wrote none; llama.cpp's default, transformers' `rope_local_base_freq`).
pub const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// A Gemma 3 model's numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Gemma3Config {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension (`attention.key_length`; not hidden / heads).
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Training context length.
    pub context: usize,
    /// RoPE base of the global layers.
    pub rope_base_global: f32,
    /// RoPE base of the local layers.
    pub rope_base_local: f32,
    /// Tokens a local layer's query sees, itself included.
    pub sliding_window: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
}

impl Gemma3Config {
    /// Read and check a Gemma 3 GGUF's numbers and tensor table.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufError> {
        let invalid = |what: String| GgufError::Invalid { path: gguf.path().to_path_buf(), what };
        let arch = gguf.get_str("general.architecture")?;
        if arch != ARCHITECTURE {
            return Err(invalid(format!("architecture {arch:?} read as {ARCHITECTURE:?}")));
        }
        let key = |k: &str| format!("{ARCHITECTURE}.{k}");
        let int = |k: &str| gguf.get_u32(&key(k)).map(|v| v as usize);
        let head_dim = int("attention.key_length")?;
        let value_length = int("attention.value_length")?;
        let cfg = Self {
            layers: int("block_count")?,
            hidden: int("embedding_length")?,
            ffn: int("feed_forward_length")?,
            heads: int("attention.head_count")?,
            kv_heads: int("attention.head_count_kv")?,
            head_dim,
            vocab: gguf.tensor_info("token_embd.weight")?.dims.get(1).copied().unwrap_or(0) as usize,
            context: int("context_length")?,
            rope_base_global: gguf.get_f32(&key("rope.freq_base"))?,
            rope_base_local: gguf.get_f32(&key("rope.freq_base_swa")).unwrap_or(LOCAL_ROPE_BASE),
            sliding_window: int("attention.sliding_window")?,
            rms_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        };
        if value_length != head_dim {
            return Err(invalid(format!(
                "{} {value_length} differs from the key length {head_dim}",
                key("value_length")
            )));
        }
        for (name, value) in [
            ("block_count", cfg.layers),
            ("embedding_length", cfg.hidden),
            ("feed_forward_length", cfg.ffn),
            ("attention.head_count", cfg.heads),
            ("attention.head_count_kv", cfg.kv_heads),
            ("attention.key_length", cfg.head_dim),
            ("context_length", cfg.context),
            ("attention.sliding_window", cfg.sliding_window),
        ] {
            if value == 0 {
                return Err(invalid(format!("{} is 0: not a model kvbench can run", key(name))));
            }
        }
        if !cfg.head_dim.is_multiple_of(2) || cfg.head_dim > 512 {
            return Err(invalid(format!(
                "head size {} (key_length): RoPE needs an even size of at most 512",
                cfg.head_dim
            )));
        }
        if !cfg.heads.is_multiple_of(cfg.kv_heads) {
            return Err(invalid(format!("{} query heads do not share {} kv heads evenly", cfg.heads, cfg.kv_heads)));
        }
        for (name, x) in [
            ("rope.freq_base", cfg.rope_base_global),
            ("rope.freq_base_swa", cfg.rope_base_local),
            ("attention.layer_norm_rms_epsilon", cfg.rms_eps),
        ] {
            if !(x.is_finite() && x > 0.0) {
                return Err(invalid(format!("{} is {x}, not a positive number", key(name))));
            }
        }
        // llama.cpp (`llama-model.cpp`, LLM_ARCH_GEMMA3) takes a 62-layer file for the 27B model and
        // scales its attention by 1/√(hidden/heads), as Gemma's own config does for that size
        // (`query_pre_attn_scalar` = hidden/heads); every other size by 1/√key_length, which is
        // what kvbench's graph does
        if cfg.layers == 62 {
            return Err(invalid(format!(
                "a 62-layer Gemma 3 (the 27B model) scales attention by 1/√(hidden/heads) = 1/√{}, \
                 not 1/√key_length: kvbench runs the other sizes only",
                cfg.hidden / cfg.heads
            )));
        }
        // keys a Gemma 3 file may carry that would change the arithmetic kvbench does
        for unsupported in
            ["rope.scaling.type", "rope.scaling.factor", "attn_logit_softcapping", "final_logit_softcapping"]
        {
            if gguf.has(&key(unsupported)) {
                return Err(invalid(format!(
                    "{} is set: kvbench's Gemma 3 has no {unsupported} (the 270M model uses none)",
                    key(unsupported)
                )));
            }
        }
        super::config::check_tensor_table(gguf, ARCHITECTURE, cfg.layers, 13, || cfg.expected_tensors())?;
        Ok(cfg)
    }

    /// The adapter's common description of this model.
    pub fn model_config(&self) -> super::ModelConfig {
        super::ModelConfig {
            arch: super::config::Architecture::Gemma3,
            layers: self.layers,
            hidden: self.hidden,
            ffn: self.ffn,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            vocab: self.vocab,
            context: self.context,
            rope_base: self.rope_base_global,
            rms_eps: self.rms_eps,
            local: Some(super::config::LocalLayers {
                window: self.sliding_window,
                rope_base: self.rope_base_local,
                global_every: GLOBAL_EVERY,
            }),
        }
    }

    /// Whether layer `l` attends over the whole context.
    pub fn is_global(&self, l: usize) -> bool {
        (l + 1).is_multiple_of(GLOBAL_EVERY)
    }

    /// RoPE base of layer `l`.
    pub fn rope_base(&self, l: usize) -> f32 {
        if self.is_global(l) { self.rope_base_global } else { self.rope_base_local }
    }

    /// Every tensor a Gemma 3 graph reads, with its GGUF dimensions (row length first).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv, d) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim);
        let mut out =
            vec![("token_embd.weight".to_string(), vec![h, self.vocab]), ("output_norm.weight".into(), vec![h])];
        for l in 0..self.layers {
            let t = |s: &str| format!("blk.{l}.{s}.weight");
            out.extend([
                (t("attn_norm"), vec![h]),
                (t("attn_q"), vec![h, q]),
                (t("attn_k"), vec![h, kv]),
                (t("attn_v"), vec![h, kv]),
                (t("attn_q_norm"), vec![d]),
                (t("attn_k_norm"), vec![d]),
                (t("attn_output"), vec![q, h]),
                (t("post_attention_norm"), vec![h]),
                (t("ffn_norm"), vec![h]),
                (t("ffn_gate"), vec![h, self.ffn]),
                (t("ffn_up"), vec![h, self.ffn]),
                (t("ffn_down"), vec![self.ffn, h]),
                (t("post_ffw_norm"), vec![h]),
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::tests::{Kv, build, put_str};

    fn text(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        put_str(&mut v, s);
        v
    }

    /// A Gemma 3 header with `layers` layers (270M's numbers otherwise) and one small tensor.
    fn header(layers: u32) -> GgufFile {
        let u32v = |x: u32| x.to_le_bytes().to_vec();
        let f32v = |x: f32| x.to_le_bytes().to_vec();
        let kvs: Vec<Kv> = vec![
            ("general.architecture", 8, text("gemma3")),
            ("gemma3.block_count", 4, u32v(layers)),
            ("gemma3.embedding_length", 4, u32v(640)),
            ("gemma3.feed_forward_length", 4, u32v(2048)),
            ("gemma3.attention.head_count", 4, u32v(4)),
            ("gemma3.attention.head_count_kv", 4, u32v(1)),
            ("gemma3.attention.key_length", 4, u32v(256)),
            ("gemma3.attention.value_length", 4, u32v(256)),
            ("gemma3.context_length", 4, u32v(32_768)),
            ("gemma3.attention.sliding_window", 4, u32v(512)),
            ("gemma3.rope.freq_base", 6, f32v(1e6)),
            ("gemma3.attention.layer_norm_rms_epsilon", 6, f32v(1e-6)),
        ];
        let tensors = [("token_embd.weight", vec![640u64, 2], 0u32, 0u64)];
        let bytes = build(&kvs, &tensors, &vec![0u8; 640 * 2 * 4]);
        GgufFile::from_bytes("gemma3-test.gguf".into(), bytes).unwrap()
    }

    #[test]
    fn a_27b_shaped_file_is_refused_for_its_attention_scale() {
        let err = Gemma3Config::from_gguf(&header(62)).unwrap_err().to_string();
        assert!(err.contains("62-layer") && err.contains("1/√160"), "{err}");
        // the 270M's 18 layers pass these checks and reach the tensor table, which this file lacks
        let err = Gemma3Config::from_gguf(&header(18)).unwrap_err().to_string();
        assert!(err.contains("tensor"), "{err}");
    }
}
