//! Evaluation over the cache and the model, above both: model-free attention fidelity of the
//! methods on recorded queries, keys and values ([`fidelity`]), what token methods keep beside
//! NVIDIA kvpress's presses on the same tensors ([`parity`]), and one prompt through many
//! methods ([`compare`]). The benchmark's trials are in [`crate::bench`].

pub mod compare;
pub mod fidelity;
pub mod parity;
