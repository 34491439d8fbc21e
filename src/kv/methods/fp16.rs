//! `fp16`: every key and value kept, rounded to half precision.
//!
//! llama.cpp's default cache type (`-ctk f16 -ctv f16`) and the precision of the reference study's
//! full cache (Yuan et al., 2024, arXiv 2407.01527, all models in fp16). Its measured ratio is the
//! fp16 reference itself (1.0, less the 4-byte position kept per token and head), and its
//! fidelity to `full` (fp32) is the cost of half precision alone, so that the other methods'
//! half-precision parts are not mistaken for their compression's cost.

use serde_json::json;

use crate::kv::attention::Queries;
use crate::kv::tokens::TokenRows;
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// The half-precision full cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp16;

impl Method for Fp16 {
    fn name(&self) -> String {
        "fp16".into()
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "precision": "fp16" })
    }

    fn description(&self) -> String {
        "every key and value rounded to fp16 (the usual serving cache)".into()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(1.0)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for Fp16 {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(Fp16Store(TokenRows::new(ctx.shape)))
    }
}

/// Every token in f16.
#[derive(Debug, Clone)]
pub struct Fp16Store(pub TokenRows);

impl LayerStore for Fp16Store {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        self.0.append(keys, values, t);
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        self.0.attend(Queries::new(q, q_stride, t), out, None);
    }

    fn bytes(&self) -> usize {
        self.0.bytes()
    }

    fn tokens(&self) -> usize {
        self.0.tokens()
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}
