//! `q8_0`: llama.cpp's 8-bit cache type (`-ctk q8_0 -ctv q8_0`).
//!
//! Reference: ggml's `block_q8_0` (ggml-quants.c, `quantize_row_q8_0_ref`): per token and kv
//! head, blocks of 32 channels, one f16 scale `d = amax / 127` and 32 signed bytes
//! `round(x / d)`; 34 bytes per 32 values = 8.5 bits, a nominal ratio of 16 / 8.5 = 1.88 against
//! fp16. Every key and value is quantized as it is written, prefill included, and attention reads
//! the dequantized cache (as llama.cpp does). Unrotated: llama.cpp now rotates quantized caches by
//! default (see `q4_0-rot`); at 8 bits the rotation changes little, so the plain type is kept
//! as the cleaner reference point.

use serde_json::json;

use crate::kv::rowquant::{RowCodec, RowQuantStore};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// llama.cpp's `q8_0` cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Q8_0;

impl Method for Q8_0 {
    fn name(&self) -> String {
        "q8_0".into()
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "block": 32, "scale": "f16", "scale_rule": "amax/127", "bits_per_value": 8.5, "keys": true, "values": true,
                "rotation": "none" })
    }

    fn description(&self) -> String {
        "llama.cpp's q8_0 cache type: blocks of 32 values, 8-bit codes and an f16 scale of amax/127".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / 8.5)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for Q8_0 {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(RowQuantStore::new(ctx.shape, RowCodec::Q8_0, false))
    }
}
