//! Recorded traces: what `cargo xtask record` writes and the benchmark replays.
//!
//! One file per (tier, task), `traces/<tier>/<task>.trace.zst`: the samples' prompts, gold
//! answers and metric, and the full cache's reference answer with per-step top-k log-probs.
//! Replaying needs no dataset: everything a trial scores against is in the trace. The first
//! samples may also carry attention probes ([`probe`]) for model-free replay of one layer.

pub mod baselines;
pub mod format;
pub mod probe;
pub mod record;

pub use format::{Trace, TraceError, TraceHeader, TraceSample};
pub use probe::{Probe, ProbeSpec};
