//! The KV-cache operator layer: where kvbench's methods live.
//!
//! The exported graph computes everything but attention. Each layer's attention is one
//! `kvbench.KvAttention` node ([`op`]) whose Rust kernel rotates the chunk's queries and keys
//! ([`rope`]), hands keys and values to the running sequence's cache ([`store`]), and returns
//! attention ([`attention`]) over what the cache's [`Method`] keeps. The cache is owned by the
//! generation loop and shared with the kernels through a [`CacheHandle`] captured when the
//! operator is registered.

pub mod attention;
pub mod budget;
pub mod evict;
pub mod fp8;
pub mod hadamard;
pub mod method;
pub mod methods;
pub mod oneshot;
pub mod op;
pub mod out_proj;
#[cfg(feature = "perturb")]
mod perturb;
pub mod prefill;
pub mod quant;
pub mod rope;
pub mod rowcode;
pub mod rowquant;
pub mod sliding;
pub mod store;
pub mod tokens;
pub mod turboquant;

pub use attention::Heads;
pub use method::{
    Acts, Compressed, Granularity, HeadScores, LayerStore, Method, Phase, PrefillCompressor, PromptBudget,
    PromptCompressor, PromptScorer, ScorerError, StoreContext, StoreFactory,
};
pub use store::{CacheHandle, CacheSnapshot, CacheStats, KvCache};
