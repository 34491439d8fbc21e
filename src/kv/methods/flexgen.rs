//! `flexgen-4bit`: FlexGen's group-wise asymmetric 4-bit cache.
//!
//! Paper: Sheng et al., "FlexGen: High-Throughput Generative Inference of Large Language Models
//! with a Single GPU", ICML 2023 (arXiv 2303.06865), §5 (4-bit group-wise quantization of weights
//! and KV cache, groups of 64 there). Reference implementation: FMInference/FlexGen
//! `compression.py`; settings as the reference study ran it (longctx_bench, Yuan et al. 2024):
//! asymmetric min–max, **per-token groups of 32** channels, 4 bits, no full-precision residual,
//! applied to every key and value including those written during prefill, so prefill attention
//! already sees quantized values. Each group holds 16 bytes of codes plus an f16 scale and an f16
//! minimum: 5 bits per value, a nominal ratio of 16 / 5 = 3.2. (The study simulated FlexGen on an
//! fp16 cache and saved no memory; here the packed codes are what is held.)

use serde_json::json;

use crate::kv::rowcode::RowCode;
use crate::kv::rowquant::{RowCodec, RowQuantStore};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// FlexGen 4-bit.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlexGen;

impl Method for FlexGen {
    fn name(&self) -> String {
        "flexgen-4bit".into()
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "bits": 4, "group": 32, "group_axis": "channels", "symmetric": false,
                "residual": 0, "scale_and_min": "f16", "applies_to_prefill": true })
    }

    fn description(&self) -> String {
        "4-bit asymmetric quantization of keys and values in groups of 32 channels of one token, f16 scale and minimum, from the first prefill chunk on".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / 5.0)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }

    fn row_code(&self) -> Option<RowCode> {
        Some(RowCode::Blocks { codec: RowCodec::MinMax(4), rotate: false })
    }
}

impl StoreFactory for FlexGen {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(RowQuantStore::new(ctx.shape, RowCodec::MinMax(4), false))
    }
}
