//! Model-free attention fidelity: replay recorded queries, keys and values through a method and
//! compare its attention with the full cache's.
//!
//! A recording ([`Recording`](crate::kv::methods::full::Recording)) holds, per layer, the post-RoPE
//! queries, keys and values of a real run: a prompt of `prompt` tokens and the tokens then decoded.
//! For each layer the method sees exactly what it would in the model: the prompt in prefill
//! chunks (each chunk appended, then attended by its recorded queries), the end of prefill, then
//! the decoded tokens one at a time. Methods acting after prefill start from the full prefill,
//! computed once per layer and shared. At each decode step the method's attention output `o` is
//! compared with the full cache's `o*`:
//! - **relative error** `√(Σ‖o − o*‖² / Σ‖o*‖²)`, summed over steps, heads and layers;
//! - **attention mass kept**: the full cache's attention probability on the tokens the method
//!   read at that step (per kv head, for each of its query heads), averaged; 1 for methods that
//!   read every token (quantizers: their loss is in the values, not in which tokens).
//!
//! Because inputs are the full cache's recording, errors do not compound across layers or steps
//! as they do in the model: this isolates what each method does to one attention call.

use std::sync::Arc;

use serde::Serialize;

use crate::kv::out_proj::OutProjection;
use crate::kv::prefill::FullStore;
use crate::kv::{Acts, Heads, LayerStore, Method, StoreContext};

/// One method's fidelity over a recording.
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    /// Method name.
    pub method: String,
    /// Nominal ratio.
    pub nominal_ratio: Option<f64>,
    /// Relative error of the attention output against the full cache.
    pub relative_error: f64,
    /// Mean share of the full cache's attention mass on the tokens read.
    pub mass_kept: f64,
    /// fp16 bytes of every token over the bytes the method held at the end.
    pub measured_ratio: f64,
    /// fp16 bytes of every token over the mean bytes read per decode step.
    pub read_ratio: f64,
}

/// A recorded run: per recorded layer, a recording [`FullStore`] of every token, and the prompt
/// length.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// One store per recorded layer, holding every query.
    pub layers: Vec<FullStore>,
    /// The model layer each store is of (every layer, or a trace's probed ones).
    pub layer_ids: Vec<usize>,
    /// Layers of the model.
    pub model_layers: usize,
    /// Prompt tokens (the rest were decoded).
    pub prompt: usize,
    /// The model's RoPE base.
    pub rope_base: f32,
    /// Per recorded layer, its attention output projection, where attached
    /// ([`Self::with_out_proj`]): CriticalKV cannot run without it.
    pub out_proj: Vec<Option<Arc<OutProjection>>>,
}

impl Recorded {
    /// This recording with the model's output projections, one per model layer (a runtime's
    /// [`crate::model::session::Runtime::out_projections`]), for its recorded layers.
    pub fn with_out_proj(mut self, model: &[Option<Arc<OutProjection>>]) -> Self {
        self.out_proj = self.layer_ids.iter().map(|&l| model.get(l).cloned().flatten()).collect();
        self
    }

    fn shape(&self) -> Heads {
        self.layers[0].shape()
    }

    fn tokens(&self) -> usize {
        self.layers[0].keys(0).len() / self.shape().head_dim
    }

    /// Token-major key and value rows of tokens `range` of layer `l`.
    fn rows(&self, l: usize, range: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
        self.layers[l].rows(range)
    }

    /// Query rows of tokens `range` of layer `l`.
    fn queries(&self, l: usize, range: std::ops::Range<usize>) -> &[f32] {
        let w = self.shape().heads * self.shape().head_dim;
        &self.layers[l].recent_queries()[range.start * w..range.end * w]
    }

    /// Feed the prompt of layer `l` to `store` as prefill would.
    fn prefill(&self, l: usize, store: &mut dyn LayerStore, chunk: usize) {
        assert!(chunk > 0, "a prefill chunk of at least one token (callers check theirs)");
        let w = self.shape().heads * self.shape().head_dim;
        // a chunk longer than the prompt is the prompt: never allocate for more
        let mut out = vec![0.0f32; chunk.min(self.prompt) * w];
        for start in (0..self.prompt).step_by(chunk) {
            let end = (start + chunk).min(self.prompt);
            let (k, v) = self.rows(l, start..end);
            store.append(&k, &v, end - start);
            store.attend(self.queries(l, start..end), w, end - start, &mut out[..(end - start) * w]);
        }
    }

    /// The context a method's store gets at recorded layer `l`.
    pub fn context(&self, l: usize) -> StoreContext<'_> {
        StoreContext {
            layer: self.layer_ids[l],
            layers: self.model_layers,
            shape: self.shape(),
            compressed_tokens: self.prompt,
            rope_base: self.rope_base,
            // probes are recorded on SmolLM2 (llama's adjacent pairs) only
            rope_style: crate::kv::rope::Style::Adjacent,
            out_proj: self.out_proj.get(l).and_then(Option::as_deref),
            head_scores: None,
        }
    }

    /// Per recorded layer and kv head, the ascending prompt positions `method` holds once prefill
    /// ends (every position for a method that holds all it was given), or with
    /// [`Kept::KeyChannels`](crate::eval::parity::Kept) the key channels it keeps; `prefills` from
    /// [`Self::full_prefills`] with the same chunk.
    pub fn held_after_prefill(
        &self,
        method: &dyn Method,
        prefills: &[FullStore],
        chunk: usize,
        of: crate::eval::parity::Kept,
    ) -> Vec<Vec<Vec<u32>>> {
        use crate::eval::parity::Kept;
        let scores = method.head_scores(prefills.iter().enumerate().map(|(l, p)| (self.context(l), p)));
        prefills
            .iter()
            .enumerate()
            .map(|(l, prefilled)| {
                let ctx = StoreContext { head_scores: scores.as_ref(), ..self.context(l) };
                let store = match method.acts() {
                    Acts::AfterPrefill => method.after_prefill(&ctx, prefilled),
                    _ => {
                        let mut s = method.layer_store(&ctx);
                        self.prefill(l, s.as_mut(), chunk);
                        Some(s)
                    }
                };
                let read = |s: &dyn LayerStore, g| match of {
                    Kept::Positions => s.held(g),
                    Kept::KeyChannels => s.key_channels(g),
                };
                let all = if of == Kept::Positions { self.prompt } else { ctx.shape.head_dim };
                let every = || (0..all as u32).collect();
                (0..ctx.shape.kv_heads)
                    .map(|g| store.as_deref().and_then(|s| read(s, g)).unwrap_or_else(every))
                    .collect()
            })
            .collect()
    }

    /// The full cache after each layer's prefill, shared by the methods acting after prefill.
    pub fn full_prefills(&self, chunk: usize) -> Vec<FullStore> {
        (0..self.layers.len())
            .map(|l| {
                let mut full = FullStore::for_layer(&self.context(l));
                self.prefill(l, &mut full, chunk);
                full.end_prefill();
                full
            })
            .collect()
    }
}

/// Evaluate `method` on `recordings` (pooled); `prefills[r]` from [`Recorded::full_prefills`] of
/// recording `r` with the same chunk.
pub fn evaluate(method: &dyn Method, recordings: &[Recorded], prefills: &[Vec<FullStore>], chunk: usize) -> Fidelity {
    let (mut err, mut reference, mut mass, mut mass_n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut held, mut fp16_held, mut read, mut fp16_read) = (0usize, 0usize, 0usize, 0usize);
    for (recorded, prefills) in recordings.iter().zip(prefills) {
        assert_eq!(recorded.layers.len(), recorded.layer_ids.len(), "one model layer id per recorded layer");
        let shape = recorded.shape();
        let Heads { heads, kv_heads, head_dim: d } = shape;
        let group = heads / kv_heads;
        let w = heads * d;
        let n = recorded.tokens();
        let fp16_per_token = 2 * kv_heads * d * 2;
        let scores = method.head_scores(prefills.iter().enumerate().map(|(l, p)| (recorded.context(l), p)));
        for (l, prefilled) in prefills.iter().enumerate() {
            let ctx = StoreContext { head_scores: scores.as_ref(), ..recorded.context(l) };
            let mut full: Box<dyn LayerStore> = Box::new(prefilled.clone());
            let mut store: Box<dyn LayerStore> = match method.acts() {
                Acts::AfterPrefill => method.after_prefill(&ctx, prefilled).unwrap_or_else(|| full.clone()),
                _ => {
                    let mut s = method.layer_store(&ctx);
                    recorded.prefill(l, s.as_mut(), chunk);
                    s
                }
            };
            let (mut o, mut o_ref) = (vec![0.0f32; w], vec![0.0f32; w]);
            for i in recorded.prompt..n {
                let (k, v) = recorded.rows(l, i..i + 1);
                let q = recorded.queries(l, i..i + 1);
                full.append(&k, &v, 1);
                full.attend(q, w, 1, &mut o_ref);
                store.append(&k, &v, 1);
                store.attend(q, w, 1, &mut o);
                err += o.iter().zip(&o_ref).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
                reference += o_ref.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
                read += store.bytes_read();
                fp16_read += fp16_per_token * (i + 1);
                for g in 0..kv_heads {
                    let visible = store.visible(g);
                    let keys = &recorded.layers[l].keys(g)[..(i + 1) * d];
                    for h in g * group..(g + 1) * group {
                        mass += visible.as_ref().map_or(1.0, |vis| kept_mass(&q[h * d..][..d], keys, vis));
                        mass_n += 1;
                    }
                }
            }
            held += store.bytes();
            fp16_held += fp16_per_token * n;
        }
    }
    Fidelity {
        method: method.name(),
        nominal_ratio: method.nominal_ratio(),
        relative_error: (err / reference.max(f64::MIN_POSITIVE)).sqrt(),
        mass_kept: mass / mass_n.max(1) as f64,
        measured_ratio: fp16_held as f64 / held.max(1) as f64,
        read_ratio: fp16_read as f64 / read.max(1) as f64,
    }
}

/// The full cache's softmax probability of query `q` over `keys` (`[n, d]`) on `visible` positions.
fn kept_mass(q: &[f32], keys: &[f32], visible: &[u32]) -> f64 {
    let d = q.len();
    let scale = 1.0 / (d as f64).sqrt();
    let scores: Vec<f64> = keys
        .chunks_exact(d)
        .map(|k| k.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    visible.iter().filter_map(|&p| scores.get(p as usize)).map(|s| (s - max).exp()).sum::<f64>() / z
}

/// The markdown table of `rows`.
pub fn markdown(rows: &[Fidelity]) -> String {
    let mut out = String::from(
        "| method | nominal | measured (held) | read per step | attention rel. error | attention mass kept |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let nominal = r.nominal_ratio.map_or("—".to_string(), |x| format!("{x:.2}×"));
        out.push_str(&format!(
            "| {} | {nominal} | {:.2}× | {:.2}× | {:.4} | {:.3} |\n",
            r.method, r.measured_ratio, r.read_ratio, r.relative_error, r.mass_kept
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::methods;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A synthetic recording: random keys and values, queries that look for one early token.
    fn recording() -> Recorded {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 32 };
        let mut rng = StdRng::seed_from_u64(11);
        let (n, prompt) = (300, 290);
        let mut store = FullStore::recording(shape);
        let mut out = vec![0.0; 128];
        for i in 0..n {
            let k: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let v: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut q: Vec<f32> = (0..128).map(|_| rng.random_range(-0.2f32..0.2)).collect();
            if i >= 250 {
                // late queries point at token 40's key, head by head
                let (k40h0, k40h1) =
                    (store.keys(0)[40 * 32..41 * 32].to_vec(), store.keys(1)[40 * 32..41 * 32].to_vec());
                for (j, x) in k40h0.iter().chain(&k40h0).chain(&k40h1).chain(&k40h1).enumerate() {
                    q[j] += 3.0 * x;
                }
            }
            store.append(&k, &v, 1);
            store.attend(&q, 128, 1, &mut out);
        }
        Recorded {
            layers: vec![store],
            layer_ids: vec![0],
            model_layers: 1,
            prompt,
            rope_base: 10_000.0,
            out_proj: Vec::new(),
        }
    }

    #[test]
    fn full_is_exact_quantizers_order_by_bits_and_selection_beats_recency() {
        let rec = recording();
        let prefills = rec.full_prefills(64);
        let (recs, prefills) = ([rec], [prefills]);
        let eval = |name: &str| evaluate(&*methods::by_name(name).unwrap(), &recs, &prefills, 64);
        let full = eval("full");
        assert!(full.relative_error < 1e-6 && (full.mass_kept - 1.0).abs() < 1e-9, "{full:?}");
        let (q8, k4, k2) = (eval("q8_0"), eval("kivi-4bit"), eval("kivi-2bit"));
        assert!(q8.relative_error < k4.relative_error && k4.relative_error < k2.relative_error);
        let (snap, stream) = (eval("snapkv-4x"), eval("streamingllm-4x"));
        assert!(snap.mass_kept > stream.mass_kept, "{snap:?} {stream:?}");
        assert!(snap.relative_error < stream.relative_error);
    }
}
