//! The per-sequence cache: one [`LayerStore`] per layer, made by the sequence's [`Method`].
//!
//! The generation loop owns it behind a [`CacheHandle`]; the `KvAttention` kernels lock it for
//! their layer. ONNX Runtime runs the graph's nodes one after another, so the lock is never
//! contended; it is there so that sharing is safe, not for concurrency.
//!
//! Prefill once, replay many: [`KvCache::snapshot`] after a full-precision prefill and
//! [`KvCache::restore`] before each method's decode.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::method::{Acts, StoreContext};
use super::out_proj::OutProjection;
use super::prefill::{FullStore, PREFILL_METHOD};
use super::sliding::SlidingStore;
use super::{Heads, LayerStore, Method};
use crate::codec;

/// Shared handle to the running sequence's cache.
pub type CacheHandle = Arc<Mutex<KvCache>>;

/// The running sequence's cache, all layers.
#[derive(Debug)]
pub struct KvCache {
    method: Arc<dyn Method>,
    shape: Heads,
    n_layers: usize,
    rope_base: f32,
    rope_style: crate::kv::rope::Style,
    layers: Vec<Box<dyn LayerStore>>,
    /// Per layer, the window of a sliding-window layer (Gemma 3's local layers), whose store is
    /// the architecture's [`SlidingStore`] whatever the method; empty: no such layers.
    windows: Vec<Option<usize>>,
    /// Per layer, its attention output projection where the runtime gave it (CriticalKV reads
    /// it); empty: none.
    out_proj: Vec<Option<Arc<OutProjection>>>,
    compressed_tokens: usize,
    prefilled: bool,
    stats: CacheStats,
    /// During a batched step ([`crate::model::session::Runtime::forward_lanes`]): one cache per
    /// row of the step, each another sequence's, which the kernels use instead of this one.
    lanes: Vec<KvCache>,
}

/// What the cache held and read over one sequence.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheStats {
    /// Largest bytes held at the end of any step, prefill included.
    pub peak_bytes: usize,
    /// Largest bytes held at the end of any step after prefill ended (the method's steady state;
    /// for methods acting after prefill, prefill itself runs on the full cache).
    pub peak_bytes_after_prefill: usize,
    /// Most tokens any layer held at once (the fp16 reference of the measured ratio).
    pub peak_tokens: usize,
    /// Bytes read by attention, summed over the decode steps counted in `decode_steps`.
    pub bytes_read: usize,
    /// Steps (forward calls) after prefill.
    pub decode_steps: usize,
}

/// A deep copy of every layer's store.
#[derive(Debug, Clone)]
pub struct CacheSnapshot {
    method: String,
    layers: Vec<Box<dyn LayerStore>>,
    compressed_tokens: usize,
    prefilled: bool,
}

impl KvCache {
    /// An empty cache of `layers` layers for `method`, for a model with RoPE base `rope_base`.
    ///
    /// # Panics
    /// If the method cannot run on heads of `shape` ([`Method::supports`]: a block quantizer on a
    /// head that is not whole blocks of 32), before any work is done.
    pub fn new(method: Arc<dyn Method>, shape: Heads, n_layers: usize, rope_base: f32) -> Self {
        if let Err(why) = method.supports(shape) {
            panic!("{} cannot run on this model's heads: {why}", method.name());
        }
        let mut cache = Self {
            method,
            shape,
            n_layers,
            rope_base,
            rope_style: crate::kv::rope::Style::Adjacent,
            layers: Vec::new(),
            windows: Vec::new(),
            out_proj: Vec::new(),
            compressed_tokens: 0,
            prefilled: false,
            stats: CacheStats::default(),
            lanes: Vec::new(),
        };
        cache.layers = cache.fresh_layers();
        cache
    }

    /// This cache for a model whose RoPE pairs channels so (adjacent pairs unless set): the
    /// methods that re-rotate keys (InfLLM) need it.
    pub fn with_rope_style(mut self, style: crate::kv::rope::Style) -> Self {
        self.rope_style = style;
        self.layers = self.fresh_layers();
        self
    }

    /// This cache with layer `l` a sliding-window layer of `windows[l]` where that is set.
    pub fn with_windows(mut self, windows: Vec<Option<usize>>) -> Self {
        self.windows = windows;
        self.layers = self.fresh_layers();
        self
    }

    /// This cache with layer `l`'s attention output projection `out_proj[l]` where that is set.
    pub fn with_out_proj(mut self, out_proj: Vec<Option<Arc<OutProjection>>>) -> Self {
        self.out_proj = out_proj;
        self.layers = self.fresh_layers();
        self
    }

    /// Empty stores: the architecture's where a layer slides (its rows in the method's row code
    /// from the start if the method codes rows while it prefills), the method's elsewhere.
    fn fresh_layers(&self) -> Vec<Box<dyn LayerStore>> {
        (0..self.n_layers)
            .map(|l| match self.window(l) {
                Some(w) => {
                    let code = self.sliding_code(l).filter(|_| self.method.acts() != Acts::AfterPrefill);
                    Box::new(SlidingStore::new(self.shape, w).coded(code)) as Box<dyn LayerStore>
                }
                None => self.method.layer_store(&self.context(l)),
            })
            .collect()
    }

    /// The row code sliding-window layer `l` holds its window in: the method's, if it codes rows
    /// on their own and codes this layer ([`RowCode::codes_layer`]).
    fn sliding_code(&self, l: usize) -> Option<super::rowcode::RowCode> {
        self.method.row_code().filter(|code| code.codes_layer(l, self.n_layers))
    }

    /// Layer `l`'s window, if it slides.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.windows.get(l).copied().flatten()
    }

    fn context(&self, layer: usize) -> StoreContext<'_> {
        StoreContext {
            layer,
            layers: self.n_layers,
            shape: self.shape,
            compressed_tokens: self.compressed_tokens,
            rope_base: self.rope_base,
            rope_style: self.rope_style,
            out_proj: self.out_proj.get(layer).and_then(Option::as_deref),
            head_scores: None,
        }
    }

    /// Wrap into a shareable handle.
    pub fn into_handle(self) -> CacheHandle {
        Arc::new(Mutex::new(self))
    }

    /// Lock a handle; a kernel that panicked mid-update leaves the cache poisoned, which we
    /// surface rather than silently reuse.
    pub fn lock(handle: &CacheHandle) -> Result<MutexGuard<'_, KvCache>, PoisonedCache> {
        handle.lock().map_err(|_| PoisonedCache)
    }

    /// Start a new sequence, possibly with another method.
    pub fn reset(&mut self, method: Arc<dyn Method>) {
        let (windows, out_proj) = (std::mem::take(&mut self.windows), std::mem::take(&mut self.out_proj));
        *self = Self::new(method, self.shape, self.n_layers, self.rope_base)
            .with_rope_style(self.rope_style)
            .with_windows(windows)
            .with_out_proj(out_proj);
    }

    /// Start the sequence: empty stores sized for a method budget relative to `compressed_tokens`
    /// (the prompt, or the context alone when the question comes after compression).
    pub fn begin(&mut self, compressed_tokens: usize) {
        self.compressed_tokens = compressed_tokens;
        self.prefilled = false;
        self.stats = CacheStats::default();
        self.layers = self.fresh_layers();
    }

    /// Swap `lanes` (one sequence's cache per row of the next step) with those the kernels
    /// use in place of this cache: hand them over before a batched step, take them back after.
    pub fn swap_lanes(&mut self, lanes: &mut Vec<KvCache>) {
        std::mem::swap(&mut self.lanes, lanes);
    }

    /// The caches of a batched step's rows (empty outside one).
    pub fn lanes_mut(&mut self) -> &mut [KvCache] {
        &mut self.lanes
    }

    /// The method in use.
    pub fn method(&self) -> &Arc<dyn Method> {
        &self.method
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l`'s store.
    pub fn layer_mut(&mut self, l: usize) -> Option<&mut Box<dyn LayerStore>> {
        self.layers.get_mut(l)
    }

    /// Layer `l`'s store.
    pub fn layer(&self, l: usize) -> Option<&dyn LayerStore> {
        self.layers.get(l).map(|s| &**s)
    }

    /// Bytes held now, all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|s| s.bytes()).sum()
    }

    /// Largest [`Self::bytes`] seen at a [`Self::note_step`] since the sequence started.
    pub fn peak_bytes(&self) -> usize {
        self.stats.peak_bytes.max(self.bytes())
    }

    /// The sequence's statistics so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Record a finished forward step of `rows` tokens: sizes towards the peaks and, for decode
    /// steps (one token, after prefill), the bytes attention read.
    pub fn note_step(&mut self, rows: usize) {
        let bytes = self.bytes();
        let s = &mut self.stats;
        s.peak_bytes = s.peak_bytes.max(bytes);
        s.peak_tokens = s.peak_tokens.max(self.layers.iter().map(|l| l.tokens()).max().unwrap_or(0));
        if self.prefilled {
            s.peak_bytes_after_prefill = s.peak_bytes_after_prefill.max(bytes);
            if rows == 1 {
                s.bytes_read += self.layers.iter().map(|l| l.bytes_read()).sum::<usize>();
                s.decode_steps += 1;
            }
        }
    }

    /// Most tokens held by any layer (methods may keep different counts per layer).
    pub fn tokens(&self) -> usize {
        self.layers.iter().map(|s| s.tokens()).max().unwrap_or(0)
    }

    /// The prompt (or context) is complete: methods that act after prefill compress now.
    pub fn end_prefill(&mut self) {
        if self.method.acts() == Acts::AfterPrefill {
            // a composition's quantizer codes the sliding windows too, from here on
            for l in 0..self.layers.len() {
                if let Some(code) = self.sliding_code(l).filter(|_| self.window(l).is_some()) {
                    self.layers[l].recode(code);
                }
            }
            let global: Vec<usize> = (0..self.layers.len()).filter(|&l| self.window(l).is_none()).collect();
            let scores = self.method.head_scores(global.iter().map(|&l| (self.context(l), prefill(&*self.layers[l]))));
            for l in global {
                let ctx = StoreContext { head_scores: scores.as_ref(), ..self.context(l) };
                match self.method.after_prefill(&ctx, prefill(&*self.layers[l])) {
                    Some(store) => self.layers[l] = store,
                    None => self.layers[l].as_prefill_mut().expect("checked above").end_prefill(),
                }
            }
        }
        self.prefilled = true;
        let bytes = self.bytes();
        self.stats.peak_bytes = self.stats.peak_bytes.max(bytes);
        self.stats.peak_bytes_after_prefill = bytes;
    }

    /// Whether [`Self::end_prefill`] ran for this sequence.
    pub fn prefilled(&self) -> bool {
        self.prefilled
    }

    /// Deep copy of the current state.
    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            method: self.method.name(),
            layers: self.layers.clone(),
            compressed_tokens: self.compressed_tokens,
            prefilled: self.prefilled,
        }
    }

    /// Return to a snapshot taken from a cache of the same method and shape. A snapshot of a
    /// full-precision prefill taken before [`Self::end_prefill`] also restores into the cache of
    /// any method that acts after prefill: all of them prefill the same way.
    pub fn restore(&mut self, snapshot: &CacheSnapshot) -> Result<(), SnapshotMismatch> {
        // a sliding-window layer is the architecture's in both, or in neither
        let same_layers = snapshot.layers.len() == self.layers.len()
            && snapshot.layers.iter().enumerate().all(|(l, s)| s.window() == self.window(l));
        let shared_prefill = !snapshot.prefilled
            && self.method.acts() == Acts::AfterPrefill
            && snapshot.layers.iter().all(|l| l.as_prefill().is_some() || l.window().is_some());
        if !(snapshot.method == self.method.name() || shared_prefill) || !same_layers {
            return Err(SnapshotMismatch { snapshot: snapshot.method.clone(), cache: self.method.name() });
        }
        self.layers = snapshot.layers.clone();
        self.compressed_tokens = snapshot.compressed_tokens;
        self.prefilled = snapshot.prefilled;
        self.stats = CacheStats::default();
        self.note_step_sizes();
        Ok(())
    }

    fn note_step_sizes(&mut self) {
        let bytes = self.bytes();
        self.stats.peak_bytes = bytes;
        self.stats.peak_tokens = self.tokens();
        if self.prefilled {
            self.stats.peak_bytes_after_prefill = bytes;
        }
    }
}

/// A layer's store before a method acting after prefill compresses it.
fn prefill(store: &dyn LayerStore) -> &FullStore {
    store.as_prefill().expect("methods acting after prefill prefill into a FullStore")
}

impl CacheSnapshot {
    /// Bytes the snapshot holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|s| s.bytes()).sum()
    }

    /// Encode a snapshot of a full-precision prefill (every layer a [`FullStore`], or the
    /// full-precision window of a sliding-window layer), bit-exact; `None` for any other snapshot.
    pub fn encode_prefill(&self, out: &mut Vec<u8>) -> Option<()> {
        let first = self.layers.first()?;
        let shape = first.as_prefill().map(FullStore::shape).or_else(|| first.as_sliding().map(SlidingStore::shape))?;
        for x in [shape.heads, shape.kv_heads, shape.head_dim, self.layers.len(), self.compressed_tokens] {
            codec::put_u64(out, x as u64);
        }
        codec::put_u64(out, u64::from(self.prefilled));
        for layer in &self.layers {
            match (layer.as_prefill(), layer.as_sliding()) {
                (Some(full), _) if full.shape() == shape => {
                    codec::put_u64(out, LAYER_FULL);
                    full.encode(out);
                }
                (None, Some(sliding)) if sliding.shape() == shape => {
                    codec::put_u64(out, LAYER_SLIDING);
                    sliding.encode(out)?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    /// Whether this is a full-precision prefill of `tokens` tokens not yet ended (what a shared
    /// prefill snapshots): every layer a [`FullStore`] of that many tokens, or a sliding-window
    /// layer holding what its window keeps of them.
    pub fn is_shared_prefill_of(&self, tokens: usize) -> bool {
        let holds = |l: &dyn LayerStore| match (l.as_prefill(), l.window()) {
            (Some(full), _) => full.tokens() == tokens,
            (None, Some(window)) => l.tokens() == tokens.min(window - 1),
            (None, None) => false,
        };
        !self.prefilled
            && self.compressed_tokens == tokens
            && !self.layers.is_empty()
            && self.layers.iter().all(|l| holds(l.as_ref()))
    }

    /// A snapshot [`Self::encode_prefill`] wrote; `None` if the bytes do not hold one.
    pub fn decode_prefill(input: &mut &[u8]) -> Option<Self> {
        let mut next = || codec::take_usize(input);
        let shape = Heads { heads: next()?, kv_heads: next()?, head_dim: next()? };
        let (n_layers, compressed_tokens, prefilled) = (next()?, next()?, next()?);
        if shape.kv_heads == 0 || shape.head_dim == 0 || !shape.heads.is_multiple_of(shape.kv_heads) || prefilled > 1 {
            return None;
        }
        let mut layers: Vec<Box<dyn LayerStore>> = Vec::with_capacity(n_layers.min(1024));
        for _ in 0..n_layers {
            layers.push(match codec::take_u64(input)? {
                LAYER_FULL => Box::new(FullStore::decode(shape, input)?),
                LAYER_SLIDING => Box::new(SlidingStore::decode(shape, input)?),
                _ => return None,
            });
        }
        Some(Self { method: PREFILL_METHOD.into(), layers, compressed_tokens, prefilled: prefilled == 1 })
    }
}

/// The tags of a prefill snapshot's layers on disk ([`CacheSnapshot::encode_prefill`]).
const LAYER_FULL: u64 = 0;
const LAYER_SLIDING: u64 = 1;

/// A kernel panicked while holding the cache.
#[derive(Debug, thiserror::Error)]
#[error("the kv cache was poisoned by a panic in an attention kernel")]
pub struct PoisonedCache;

/// Restoring a snapshot into a cache of another method or shape.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore a snapshot of method {snapshot:?} into a cache of method {cache:?}")]
pub struct SnapshotMismatch {
    snapshot: String,
    cache: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::methods::Full;

    #[test]
    fn snapshot_restore_round_trips_and_bytes_follow() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let mut cache = KvCache::new(Arc::new(Full), shape, 3, 10_000.0);
        let row = [0.5f32; 4];
        for l in 0..3 {
            cache.layer_mut(l).unwrap().append(&row, &row, 1);
        }
        assert_eq!(cache.bytes(), 3 * 2 * 4 * 4);
        let snap = cache.snapshot();
        for l in 0..3 {
            cache.layer_mut(l).unwrap().append(&row, &row, 1);
        }
        cache.note_step(1);
        assert_eq!(cache.tokens(), 2);
        cache.restore(&snap).unwrap();
        assert_eq!(cache.tokens(), 1);
        assert_eq!(cache.bytes(), snap.bytes());
    }

    #[test]
    fn a_shared_prefill_with_sliding_layers_restores_into_a_method_of_the_same_layers_only() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let windows = vec![Some(4), None, Some(4)];
        let mut cache = KvCache::new(Arc::new(Full), shape, 3, 10_000.0).with_windows(windows.clone());
        let row = [0.5f32; 4];
        for l in 0..3 {
            cache.layer_mut(l).unwrap().append(&row, &row, 1);
        }
        let snap = cache.snapshot();
        let snapkv = crate::kv::methods::by_name("snapkv-2x").unwrap();
        let mut other = KvCache::new(snapkv.clone(), shape, 3, 10_000.0).with_windows(windows);
        other.restore(&snap).unwrap();
        assert_eq!(other.layer(0).and_then(|l| l.window()), Some(4));
        assert!(other.layer(1).and_then(|l| l.as_prefill()).is_some());
        // a cache whose layers all attend globally is another model: refused
        let mut global = KvCache::new(snapkv, shape, 3, 10_000.0);
        assert!(global.restore(&snap).is_err());
    }

    #[test]
    fn a_prefill_with_sliding_layers_round_trips_through_its_encoding() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let windows = vec![Some(3), None, Some(3)];
        let mut cache = KvCache::new(Arc::new(Full), shape, 3, 10_000.0).with_windows(windows.clone());
        cache.begin(5);
        let rows: Vec<f32> = (0..5 * 4).map(|i| i as f32 * 0.25 - 2.0).collect();
        let q = vec![0.1f32; 5 * 8];
        let mut out = vec![0.0f32; 5 * 8];
        for l in 0..3 {
            let layer = cache.layer_mut(l).unwrap();
            layer.append(&rows, &rows, 5);
            layer.attend(&q, 8, 5, &mut out);
        }
        let snap = cache.snapshot();
        // the global layer holds all five tokens, the local ones the last window − 1
        assert!(snap.is_shared_prefill_of(5));
        assert!(!snap.is_shared_prefill_of(4));
        let mut bytes = Vec::new();
        snap.encode_prefill(&mut bytes).expect("a prefill with sliding layers encodes");
        let back = CacheSnapshot::decode_prefill(&mut &bytes[..]).expect("and decodes");
        assert!(back.is_shared_prefill_of(5));
        let mut again = Vec::new();
        back.encode_prefill(&mut again).unwrap();
        assert_eq!(bytes, again, "bit-exact");
        // it restores into a method of the same layers, and attends as the original does
        let snapkv = crate::kv::methods::by_name("snapkv-2x").unwrap();
        let step = [0.3f32; 4];
        let mut outputs = Vec::new();
        for s in [&snap, &back] {
            let mut c = KvCache::new(snapkv.clone(), shape, 3, 10_000.0).with_windows(windows.clone());
            c.restore(s).unwrap();
            let layer = c.layer_mut(0).unwrap();
            layer.append(&step, &step, 1);
            let mut o = vec![0.0f32; 8];
            layer.attend(&q[..8], 8, 1, &mut o);
            outputs.push(o);
        }
        assert_eq!(outputs[0], outputs[1]);
        // truncated or retagged bytes are not a prefill
        assert!(CacheSnapshot::decode_prefill(&mut &bytes[..bytes.len() - 1]).is_none());
        let mut retagged = bytes.clone();
        retagged[48] = 7;
        assert!(CacheSnapshot::decode_prefill(&mut &retagged[..]).is_none());
    }
}
