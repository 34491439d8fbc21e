//! Recorded traces: what `cargo xtask record` writes and the benchmark replays.
//!
//! One file per (tier, task), `traces/<tier>/<task>.trace.zst`: the samples' prompts, gold
//! answers and metric, and the full cache's reference answer with per-step top-k log-probs.
//! Replaying needs no dataset: everything a trial scores against is in the trace.

pub mod format;
pub mod record;

pub use format::{Trace, TraceError, TraceHeader, TraceSample};
