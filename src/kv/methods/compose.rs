//! `EVICTOR+QUANTIZER` (`snapkv-4x+q4_0-rot`, `streamingllm-2x+q4_0`): a token method that
//! chooses which rows each kv head keeps, composed with a quantizer that chooses how each kept
//! row is stored. The bytes multiply out: a quarter of the tokens at 4.5 bits is about 14× fewer
//! bytes than the fp16 cache (each kept row also carries its position, a `u32`, which the
//! measured ratio counts).
//!
//! What composes: an **evicting** or **one-shot** method (the token methods whose store is
//! [`crate::kv::evict::KeptStore`]: StreamingLLM, H2O, TOVA, SnapKV, PyramidKV, AdaKV, ChunkKV,
//! Knorm, KeyDiff) with a quantizer whose code of a row depends on that row alone and on
//! per-layer scales ([`crate::kv::rowcode`]: llama.cpp's block types with or without rotation,
//! `flexgen-4bit`, FP8, TurboQuant). The evictor acts as it does alone, at the same time: a one-shot
//! selection or H2O scores the full-precision prefill, then its kept rows are quantized; from
//! then on every appended row is quantized as it is written, and scoring (H2O's accumulated
//! attention, TOVA's current attention) reads attention over the decoded rows. StreamingLLM acts
//! from the first prefill chunk, so its rows are quantized from the first chunk on, as llama.cpp
//! writes a chunk to its cache before attending. FP8's per-layer scales are set from the first
//! rows quantized: the kept prefill (vLLM's first forward pass) or StreamingLLM's first chunk.
//!
//! What does not: KIVI (keys quantized per channel over groups of 32 tokens: evicting one token
//! would re-quantize its group), `fp16` (what the token methods already store), retrieval methods
//! (they hold every token; composing them reads fewer bytes but is not built), prompt
//! compression (its cache is a plain store: run the quantizer alone on the compressed prompt).
//! Each is refused by name with the reason.

use std::sync::Arc;

use serde_json::json;

use super::registry::Kind;
use crate::kv::prefill::FullStore;
use crate::kv::rowcode::RowCode;
use crate::kv::{Compressed, LayerStore, Method, Phase, PrefillCompressor, StoreContext, StoreFactory};

/// A token method's kept rows, stored by a quantizer.
#[derive(Debug, Clone)]
pub struct Composed {
    evictor: Arc<dyn Method>,
    quantizer: Arc<dyn Method>,
    code: RowCode,
}

impl Composed {
    /// `evictor` (of kind `evictor_kind`) composed with `quantizer` (of kind `quantizer_kind`), or
    /// why they do not compose.
    pub fn new(
        evictor: Arc<dyn Method>,
        evictor_kind: Kind,
        quantizer: Arc<dyn Method>,
        quantizer_kind: Kind,
    ) -> Result<Self, String> {
        if !matches!(evictor_kind, Kind::Evicting | Kind::OneShot) {
            return Err(format!(
                "{} is not an evicting or one-shot token method (the left of `+` chooses which tokens are kept)",
                evictor.name()
            ));
        }
        if quantizer_kind != Kind::Quantizer {
            return Err(format!("{} is not a quantizer (the right of `+` stores the kept rows)", quantizer.name()));
        }
        let code = quantizer.row_code().ok_or_else(|| {
            format!(
                "{} does not code one token's row on its own (KIVI quantizes keys over groups of tokens; fp16 is \
                 what token methods already store)",
                quantizer.name()
            )
        })?;
        Ok(Self { evictor, quantizer, code })
    }

    /// `store`, its rows in the quantizer's codes where the quantizer codes this layer (TurboQuant
    /// leaves the first and last two layers in f16, composed or not).
    fn recoded(&self, ctx: &StoreContext, mut store: Box<dyn LayerStore>) -> Box<dyn LayerStore> {
        if self.code.codes_layer(ctx.layer, ctx.layers) {
            assert!(
                store.recode(self.code),
                "{}'s store cannot hold its rows in a quantizer's codes",
                self.evictor.name()
            );
        }
        store
    }
}

impl Method for Composed {
    fn name(&self) -> String {
        format!("{}+{}", self.evictor.name(), self.quantizer.name())
    }

    fn settings(&self) -> serde_json::Value {
        json!({
            "evictor": { "name": self.evictor.name(), "settings": self.evictor.settings() },
            "quantizer": { "name": self.quantizer.name(), "settings": self.quantizer.settings() },
        })
    }

    fn description(&self) -> String {
        format!("{}; each kept row stored as {}", self.evictor.description(), self.quantizer.description())
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(self.evictor.nominal_ratio()? * self.quantizer.nominal_ratio()?)
    }

    fn supports(&self, shape: crate::kv::Heads) -> Result<(), String> {
        self.evictor.supports(shape)?;
        self.code.supports(shape.head_dim)
    }

    /// The quantizer's: a sliding-window layer's window is held in it too (`kv::sliding`).
    fn row_code(&self) -> Option<RowCode> {
        Some(self.code)
    }

    fn phase(&self) -> Phase<'_> {
        match self.evictor.phase() {
            Phase::AfterPrefill(_) => Phase::AfterPrefill(self),
            Phase::DuringPrefill(_) => Phase::DuringPrefill(self),
            Phase::BeforePrefill(_) => unreachable!("a prompt compressor is refused by Composed::new"),
        }
    }
}

impl PrefillCompressor for Composed {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let Phase::AfterPrefill(evictor) = self.evictor.phase() else { unreachable!("phase() follows the evictor's") };
        match evictor.compress(ctx, prefill) {
            Compressed::Into(store) => Compressed::Into(self.recoded(ctx, store)),
            Compressed::Keep => {
                panic!("{} kept the full-precision prefill, which holds no quantized rows", self.name())
            }
        }
    }

    fn head_scores(&self, ctx: &StoreContext, prefill: &FullStore) -> Option<Vec<f32>> {
        let Phase::AfterPrefill(evictor) = self.evictor.phase() else { unreachable!("phase() follows the evictor's") };
        evictor.head_scores(ctx, prefill)
    }
}

impl StoreFactory for Composed {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        let Phase::DuringPrefill(evictor) = self.evictor.phase() else { unreachable!("phase() follows the evictor's") };
        self.recoded(ctx, evictor.layer_store(ctx))
    }
}
