//! The benchmark: trials of (method, task) over recorded traces, their statistics, and the
//! comparison with golden snapshots.

pub mod golden;
pub mod paired;
pub mod parity;
pub mod prefill_disk;
pub mod sequential;
pub mod stats;
pub mod tier;
pub mod trial;

pub use prefill_disk::DiskPrefills;
pub use prefill_disk::build_id;
pub use tier::Tier;
pub use trial::{PrefillCache, PrefillCounts, Provenance, TrialResult};

use crate::kv::methods;
use crate::model::pinned::Pinned;
use crate::tasks::Task;

/// Ratios of the budgeted methods in the trial matrix.
pub const RATIOS: [u32; 4] = [2, 4, 6, 8];

/// Every (method, task) of the matrix, method-major.
pub fn matrix() -> Vec<(String, Task)> {
    methods::all_at(&RATIOS).into_iter().flat_map(|m| Task::ALL.map(|t| (m.clone(), t))).collect()
}

/// A trial: the matrix's (method, task) for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialId {
    /// The model.
    pub model: Pinned,
    /// The method configuration's name.
    pub method: String,
    /// The task.
    pub task: Task,
}

impl TrialId {
    /// Its name: `method::task` for the first model, `model/method::task` for the others
    /// ([`Pinned::trial_prefix`]).
    pub fn name(&self) -> String {
        format!("{}{}::{}", self.model.trial_prefix(), self.method, self.task.name())
    }
}

/// Every trial of the benchmark: the matrix for each pinned model, model-major.
pub fn trials() -> Vec<TrialId> {
    Pinned::ALL
        .into_iter()
        .flat_map(|model| matrix().into_iter().map(move |(method, task)| TrialId { model, method, task }))
        .collect()
}
