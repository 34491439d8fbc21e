//! `full`: the uncompressed cache, every key and value of every token in fp32.
//!
//! The baseline of every comparison (the study's "full cache"). Stored as fp32, the precision the
//! runtime computes in, so the reference answer is the model's own; its measured ratio against
//! an fp16 cache is therefore 0.5, and is reported as such rather than rounded to 1 (`fp16` is
//! the same cache rounded to half precision, llama.cpp's default cache type).
//!
//! It keeps the full-precision prefill store ([`FullStore`], `kv/prefill.rs`) as it is.

use crate::kv::prefill::{FullStore, PREFILL_METHOD};
use crate::kv::{Compressed, LayerStore, Method, Phase, PrefillCompressor, StoreContext, StoreFactory};

/// The full-precision cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Full;

impl Method for Full {
    fn name(&self) -> String {
        PREFILL_METHOD.into()
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "precision": "fp32" })
    }

    fn description(&self) -> String {
        "the reference: every key and value kept in fp32".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(1.0)
    }

    /// Its prefill is the shared full-precision prefill itself ([`Self::after_prefill`] keeps the
    /// prefilled store as it is), so its trials reuse it instead of computing it again: the same
    /// bits (`tests/methods.rs` holds a shared prefill to a recomputed one).
    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl PrefillCompressor for Full {
    fn compress(&self, _ctx: &StoreContext, _prefill: &FullStore) -> Compressed {
        Compressed::Keep
    }
}

/// The full cache, keeping every query as well: records the post-RoPE queries, keys and values
/// of a real run for model-free replay ([`crate::eval::fidelity`]). Not a benchmark method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recording;

impl Method for Recording {
    fn name(&self) -> String {
        "full-recording".into()
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "precision": "fp32", "records": "every-query" })
    }

    fn description(&self) -> String {
        "the full cache, also recording every post-RoPE query, key and value for model-free replay".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(1.0)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for Recording {
    fn layer_store(&self, ctx: &crate::kv::StoreContext) -> Box<dyn LayerStore> {
        Box::new(FullStore::recording(ctx.shape))
    }
}
