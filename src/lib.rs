//! kvbench: what KV-cache compression gives up, measured on real models and real tasks.
//!
//! Layers, from the bottom: [`assets`] fetches and verifies what is never committed (ONNX
//! Runtime's library, the weights); [`model`] turns a GGUF into an ONNX Runtime session and runs
//! generation; [`kv`] is the KV-cache operator layer, where attention over a Rust-owned cache and
//! every compression method live. Data flows down; nothing reaches up.
#![warn(missing_docs)]

pub mod assets;
pub mod bench;
pub mod codec;
pub mod kv;
pub mod model;
pub mod tasks;
pub mod trace;
