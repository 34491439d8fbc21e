//! The per-sequence cache: one [`LayerStore`] per layer, made by the sequence's [`Method`].
//!
//! The generation loop owns it behind a [`CacheHandle`]; the `KvAttention` kernels lock it for
//! their layer. ONNX Runtime runs the graph's nodes one after another, so the lock is never
//! contended; it is there so that sharing is safe, not for concurrency.
//!
//! Prefill once, replay many: [`KvCache::snapshot`] after a full-precision prefill and
//! [`KvCache::restore`] before each method's decode.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Heads, LayerStore, Method};

/// Shared handle to the running sequence's cache.
pub type CacheHandle = Arc<Mutex<KvCache>>;

/// The running sequence's cache, all layers.
#[derive(Debug)]
pub struct KvCache {
    method: Arc<dyn Method>,
    shape: Heads,
    layers: Vec<Box<dyn LayerStore>>,
    peak_bytes: usize,
}

/// A deep copy of every layer's store.
#[derive(Debug, Clone)]
pub struct CacheSnapshot {
    method: String,
    layers: Vec<Box<dyn LayerStore>>,
}

impl KvCache {
    /// An empty cache of `layers` layers for `method`.
    pub fn new(method: Arc<dyn Method>, shape: Heads, layers: usize) -> Self {
        let layers = (0..layers).map(|l| method.layer_store(l, shape)).collect();
        Self { method, shape, layers, peak_bytes: 0 }
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
        *self = Self::new(method, self.shape, self.layers.len());
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

    /// Bytes held now, all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|s| s.bytes()).sum()
    }

    /// Largest [`Self::bytes`] seen at a [`Self::note_peak`] since the sequence started.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.max(self.bytes())
    }

    /// Record the current size towards the peak (called after every forward step).
    pub fn note_peak(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.bytes());
    }

    /// Tokens held by layer 0 (methods may keep different counts per layer).
    pub fn tokens(&self) -> usize {
        self.layers.first().map_or(0, |s| s.tokens())
    }

    /// Tell every layer the prompt is complete.
    pub fn end_prefill(&mut self) {
        self.layers.iter_mut().for_each(|s| s.end_prefill());
        self.note_peak();
    }

    /// Deep copy of the current state.
    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot { method: self.method.name(), layers: self.layers.clone() }
    }

    /// Return to a snapshot taken from a cache of the same method and shape.
    pub fn restore(&mut self, snapshot: &CacheSnapshot) -> Result<(), SnapshotMismatch> {
        if snapshot.method != self.method.name() || snapshot.layers.len() != self.layers.len() {
            return Err(SnapshotMismatch { snapshot: snapshot.method.clone(), cache: self.method.name() });
        }
        self.layers = snapshot.layers.clone();
        self.peak_bytes = self.bytes();
        Ok(())
    }
}

impl CacheSnapshot {
    /// Bytes the snapshot holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|s| s.bytes()).sum()
    }
}

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
        let mut cache = KvCache::new(Arc::new(Full), shape, 3);
        let row = [0.5f32; 4];
        for l in 0..3 {
            cache.layer_mut(l).unwrap().append(&row, &row, 1);
        }
        assert_eq!(cache.bytes(), 3 * 2 * 4 * 4);
        let snap = cache.snapshot();
        for l in 0..3 {
            cache.layer_mut(l).unwrap().append(&row, &row, 1);
        }
        cache.note_peak();
        assert_eq!(cache.tokens(), 2);
        cache.restore(&snap).unwrap();
        assert_eq!(cache.tokens(), 1);
        assert_eq!(cache.bytes(), snap.bytes());
    }
}
