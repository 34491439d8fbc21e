//! kvbench: what KV-cache compression gives up, measured on real models and real tasks.
//!
//! Layers, from the bottom: [`assets`] fetches and verifies what is never committed (ONNX
//! Runtime's library, the weights), beside [`codec`]; [`kv`] is the KV-cache operator layer, where
//! attention over a Rust-owned cache and every compression method live; [`model`] turns a GGUF
//! into an ONNX Runtime session with kv's operator and runs generation; [`eval`] measures methods
//! on both (fidelity, compare); [`tasks`] make samples,
//! [`trace`] records and reads them, [`bench`] runs the trials. Data flows down; nothing reaches
//! up (`tests/layers.rs` checks it).
#![warn(missing_docs)]

pub mod assets;
pub mod bench;
pub mod codec;
pub mod eval;
pub mod kv;
pub mod model;
pub mod tasks;
pub mod trace;
