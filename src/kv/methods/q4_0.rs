//! `q4_0` and `q4_0-rot`: llama.cpp's 4-bit cache type (`-ctk q4_0 -ctv q4_0`), without and with
//! the Hadamard rotation llama.cpp applies to quantized caches.
//!
//! Reference: ggml's `block_q4_0` (ggml-quants.c, `quantize_row_q4_0_ref`): per token and kv
//! head, blocks of 32 channels; the value of largest magnitude maps to −8, `d = max / −8` stored
//! as f16, codes `min(15, trunc(x / d + 8.5))`; 18 bytes per 32 values = 4.5 bits, a nominal
//! ratio of 16 / 4.5 = 3.56. Quantized as written, prefill included.
//!
//! Rotation (`q4_0-rot`): llama.cpp's KV cache enables an attention rotation when the cache type
//! is quantized: q and k are multiplied by a normalized Hadamard matrix before k is stored, v is
//! rotated before it is stored and the attention output is rotated back. Here the transform is
//! the 64-point Walsh–Hadamard of each head ([`crate::kv::hadamard`]); it costs no bytes.

use serde_json::json;

use crate::kv::rowquant::{RowCodec, RowQuantStore};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// llama.cpp's `q4_0` cache, optionally rotated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Q4_0 {
    /// Hadamard-rotate keys, values and queries per head.
    pub rotate: bool,
}

impl Method for Q4_0 {
    fn name(&self) -> String {
        if self.rotate { "q4_0-rot".into() } else { "q4_0".into() }
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "block": 32, "scale": "f16", "scale_rule": "max/-8", "bits_per_value": 4.5, "keys": true, "values": true,
                "rotation": if self.rotate { "walsh-hadamard-per-head" } else { "none" } })
    }

    fn description(&self) -> String {
        let rotation = if self.rotate { ", after a Walsh-Hadamard rotation of each head (64)" } else { "" };
        format!("llama.cpp's q4_0 cache type: blocks of 32 values, 4-bit codes and an f16 scale of max/-8{rotation}")
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / 4.5)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for Q4_0 {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(RowQuantStore::new(ctx.shape, RowCodec::Q4_0, self.rotate))
    }
}
