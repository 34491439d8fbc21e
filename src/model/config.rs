//! The architecture numbers of a llama-family GGUF, read once and validated.

use super::gguf::{GgufError, GgufFile};

/// Shapes and constants the exporter and the attention kernel need.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ModelConfig {
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
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
}

impl ModelConfig {
    /// Read the llama hyper-parameters from GGUF metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufError> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = gguf.get_u32(&key("embedding_length"))? as usize;
        let heads = gguf.get_u32(&key("attention.head_count"))? as usize;
        let embd = gguf.tensor_info("token_embd.weight")?;
        let cfg = Self {
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
        {
            return Err(GgufError::Invalid {
                path: gguf.path().to_path_buf(),
                what: format!(
                    "inconsistent attention shape: {} heads, {} kv heads, hidden {hidden}",
                    heads, cfg.kv_heads
                ),
            });
        }
        Ok(cfg)
    }

    /// Width of the fused q|k|v projection.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Query heads that share one key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Bytes of a full fp16 KV cache per token, all layers (the reference for compression ratios).
    pub fn fp16_kv_bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * 2
    }
}
