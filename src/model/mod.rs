//! The model layer: GGUF weights in, an ONNX Runtime session out, and the generation loop.
//!
//! `gguf` reads and dequantizes the weights; `tokenizer` rebuilds the model's byte-level BPE from
//! the GGUF metadata; `export` writes the ONNX graph from Rust, with one custom `KvAttention` node
//! per layer; `session` loads it into ONNX Runtime with the kv layer's operator registered;
//! `generate` is the one prefill/decode loop that the CLI and the benchmark share.

pub mod config;
pub mod embed;
pub mod export;
pub mod export_gemma3;
pub mod fused;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
pub mod head;
pub mod kquants;
pub mod onnx;
pub mod pinned;
pub mod qlinear;
pub mod quant;
pub mod rowwise;
pub mod session;
pub mod spm;
pub mod tokenizer;

pub use config::ModelConfig;
