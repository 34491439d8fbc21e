//! The benchmark: trials of (method, task), their statistics and golden comparison.

pub mod stats;
