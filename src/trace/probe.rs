//! Attention probes: a few layers' post-RoPE queries, keys and values of a sample's full-cache
//! run, kept in its trace for model-free replay through any method's cache
//! ([`crate::eval::fidelity`]).
//!
//! A probe holds every token the reference run attended with: the prompt and the reference
//! answer's tokens that were fed back. With it, a method's [`LayerStore`](crate::kv::LayerStore)
//! can be driven exactly as the model drives it at that layer (prefill chunks, then one decode
//! step at a time) with no model, no ONNX Runtime and no download. That is what
//! `tests/probes.rs` gates, and what `kvbench fidelity --trace` prints.
//!
//! Probes are what keeps a trace from being small, so `cargo xtask record` keeps them to one
//! layer (the middle one), in fp16, for the first sample of each task of the default tier, and
//! records none at the full tier unless asked (`--probe-samples`, `--probe-layers`): about
//! 450 KB per task at the default tier's 256 tokens. Because their inputs are already fp16, the
//! `fp16` cache replays them without error.

use half::f16;
use serde::{Deserialize, Serialize};

use crate::eval::fidelity::Recorded;
use crate::kv::LayerStore;
use crate::kv::attention::Heads;
use crate::kv::prefill::FullStore;

/// Most values per token in one layer's queries that a probe may declare (SmolLM2 has 576).
pub const MAX_QUERY_WIDTH: usize = 1 << 16;
/// Most model layers a probe may declare.
pub const MAX_LAYERS: usize = 1024;

/// Which probes a trace holds and their shape (the trace header's `probe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Model layers probed, ascending.
    pub layers: Vec<usize>,
    /// Layers of the model (a method's per-layer budget depends on where the layer sits).
    pub model_layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// The model's RoPE base (keys arrive rotated; methods that re-position them need it).
    pub rope_base: f32,
    /// The first `samples` samples of the trace carry a probe.
    pub samples: usize,
}

impl ProbeSpec {
    /// The attention shape.
    pub fn shape(&self) -> Heads {
        Heads { heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }

    /// Values per token of queries and of keys (or values) in one layer; for a spec that passed
    /// [`Self::problem`], each is at least 2 and at most [`MAX_QUERY_WIDTH`].
    pub fn widths(&self) -> (usize, usize) {
        (self.heads * self.head_dim, self.kv_heads * self.head_dim)
    }

    /// Why this spec cannot describe a trace of `samples` samples, if it cannot. A spec that
    /// passes makes every probed token cost payload bytes, so what a reader allocates stays in
    /// proportion to the (capped) payload.
    pub(super) fn problem(&self, samples: usize) -> Option<String> {
        let Self { layers, model_layers, heads, kv_heads, head_dim, samples: probed, .. } = self;
        let width = heads.checked_mul(*head_dim).filter(|w| *w <= MAX_QUERY_WIDTH);
        if *kv_heads == 0
            || heads < kv_heads
            || heads % kv_heads != 0
            || *head_dim == 0
            || head_dim % 2 != 0
            || width.is_none()
        {
            return Some(format!("probe shape {heads}/{kv_heads} heads of {head_dim} is not an attention shape"));
        }
        let ascending = layers.is_sorted_by(|a, b| a < b);
        if layers.is_empty() || *model_layers > MAX_LAYERS || !ascending || layers.iter().any(|l| l >= model_layers) {
            return Some(format!("probe layers {layers:?} are not ascending layers of a {model_layers}-layer model"));
        }
        if *probed == 0 || *probed > samples {
            return Some(format!("probes for {probed} samples, but the trace has {samples}"));
        }
        None
    }
}

/// One layer's recording: token-major rows, fp16.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeLayer {
    /// `[tokens, heads · head_dim]`.
    pub queries: Vec<f16>,
    /// `[tokens, kv_heads · head_dim]`.
    pub keys: Vec<f16>,
    /// `[tokens, kv_heads · head_dim]`.
    pub values: Vec<f16>,
}

/// One sample's probe: [`ProbeSpec::layers`]' recordings over `tokens` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Tokens recorded: the prompt, then the reference tokens fed back.
    pub tokens: usize,
    /// One per probed layer, in the spec's order.
    pub layers: Vec<ProbeLayer>,
}

impl Probe {
    /// Capture from the recording stores (`FullStore::recording`) of the probed layers, after a run.
    pub fn capture(stores: &[&FullStore]) -> Result<Self, String> {
        let first = stores.first().ok_or("no layer to probe")?;
        let (shape, tokens) = (first.shape(), first.tokens());
        let width = shape.heads * shape.head_dim;
        let mut layers = Vec::with_capacity(stores.len());
        for store in stores {
            if store.recent_queries().len() != tokens * width || store.tokens() != tokens {
                return Err(format!(
                    "a probed layer holds {} queries for {} tokens: record with a recording store",
                    store.recent_queries().len() / width,
                    store.tokens()
                ));
            }
            let half = |xs: &[f32]| xs.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
            let (keys, values) = store.rows(0..tokens);
            layers.push(ProbeLayer { queries: half(store.recent_queries()), keys: half(&keys), values: half(&values) });
        }
        Ok(Self { tokens, layers })
    }

    /// The probe as a recording to replay: the first `prompt` tokens are prefilled, the rest decoded.
    pub fn recorded(&self, spec: &ProbeSpec, prompt: usize) -> Recorded {
        let widen = |xs: &[f16]| xs.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        let layers = self
            .layers
            .iter()
            .map(|l| FullStore::recorded(spec.shape(), &widen(&l.keys), &widen(&l.values), widen(&l.queries)))
            .collect();
        Recorded {
            layers,
            layer_ids: spec.layers.clone(),
            model_layers: spec.model_layers,
            prompt,
            rope_base: spec.rope_base,
            out_proj: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_token_major_rows_and_replays_them() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 2 };
        let mut store = FullStore::recording(shape);
        let keys: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let values: Vec<f32> = (0..12).map(|i| -0.25 * i as f32).collect();
        let q: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        store.append(&keys, &values, 3);
        store.attend(&q, 8, 3, &mut [0.0; 24]);
        let probe = Probe::capture(&[&store]).unwrap();
        assert_eq!(probe.tokens, 3);
        // keys and values come back token-major, as the model hands them to the cache
        let wide = |xs: &[f16]| xs.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        assert_eq!((wide(&probe.layers[0].keys), wide(&probe.layers[0].values)), (keys.clone(), values.clone()));
        assert_eq!(wide(&probe.layers[0].queries), q);
        let spec = ProbeSpec {
            layers: vec![7],
            model_layers: 30,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            rope_base: 1e4,
            samples: 1,
        };
        let rec = probe.recorded(&spec, 2);
        assert_eq!((rec.layer_ids.clone(), rec.model_layers, rec.prompt), (vec![7], 30, 2));
        assert_eq!((rec.layers[0].keys(1), rec.layers[0].values(1)), (store.keys(1), store.values(1)));
        assert_eq!(rec.layers[0].recent_queries(), store.recent_queries());
        // a store that forgot its queries cannot be a probe
        let mut plain = FullStore::new(shape);
        plain.append(&keys, &values, 3);
        assert!(Probe::capture(&[&plain]).is_err());
    }

    #[test]
    fn specs_that_cannot_be_are_refused() {
        let good = ProbeSpec {
            layers: vec![3, 15],
            model_layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            rope_base: 1e5,
            samples: 1,
        };
        assert_eq!(good.problem(3), None);
        assert!(good.problem(0).unwrap().contains("trace has 0"));
        assert!(ProbeSpec { layers: vec![30], ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { layers: vec![15, 3], ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { kv_heads: 2, ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { kv_heads: 0, ..good.clone() }.problem(3).is_some());
        // shapes that would let a probe cost no payload bytes, or overflow its widths
        assert!(ProbeSpec { heads: 0, ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { heads: usize::MAX / 3 * 3, ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { model_layers: MAX_LAYERS + 1, ..good.clone() }.problem(3).is_some());
        assert!(ProbeSpec { samples: 0, ..good }.problem(3).unwrap().contains("probes for 0 samples"));
    }
}
