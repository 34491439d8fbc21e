//! One file per KV-cache method. Each module doc names the paper, the reference implementation
//! and every setting with its default and source.
//!
//! Every name is registered once, in [`registry::REGISTRY`]: fixed methods (`full`, `kivi-2bit`)
//! and families that take a budget suffix, a ratio of the compressed tokens (`-2x`, `-4x`, any
//! number) or a token count (`-512tok`) — e.g. `h2o-4x`, `snapkv-1024tok`. Variants outside the
//! trial matrix each measure one choice of a family (`kvbench replay` runs them over a tier's
//! traces): `infllm-ref` (InfLLM ranking blocks as its reference code does; see
//! [`infllm::Ranking`]), `lingua-word` (whole words, as LLMLingua-2; see [`lingua`]) and
//! `snapkv-wide` (SnapKV pooling over 15 tokens instead of 7; see [`snapkv`]).

pub mod adakv;
pub mod chunkkv;
pub mod compose;
pub mod criticalkv;
pub mod duoattention;
pub mod expected_attention;
pub mod flexgen;
pub mod fp16;
pub mod fp8;
pub mod full;
pub mod h2o;
pub mod infllm;
pub mod keydiff;
pub mod kivi;
pub mod knorm;
pub mod lingua;
pub mod llama_cache;
pub mod pyramidkv;
pub mod quest;
pub mod registry;
pub mod snapkv;
pub mod streamingllm;
pub mod think;
pub mod tova;
pub mod turboquant;

#[cfg(test)]
mod invariants;

pub use crate::kv::budget::Budget;
pub use full::Full;
pub use registry::{Kind, UnknownMethod, all_at, by_name, kind_of};
