//! One file per KV-cache method. Each module doc names the paper, the reference implementation
//! and every setting with its default and source.

pub mod full;

pub use full::Full;

use std::sync::Arc;

use super::Method;

/// Resolve a method by its command-line name.
pub fn by_name(name: &str) -> Result<Arc<dyn Method>, UnknownMethod> {
    match name {
        "full" => Ok(Arc::new(Full)),
        _ => Err(UnknownMethod { name: name.to_string(), known: NAMES.join(", ") }),
    }
}

/// Every method name [`by_name`] accepts.
pub const NAMES: &[&str] = &["full"];

/// A method name that is not known.
#[derive(Debug, thiserror::Error)]
#[error("unknown method {name:?}; known methods: {known}")]
pub struct UnknownMethod {
    name: String,
    known: String,
}
