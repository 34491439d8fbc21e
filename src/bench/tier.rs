//! Tiers: how many samples of what length each task gets, and how long an answer may run. Tiers
//! change sample counts and lengths, never which trials exist.

use std::path::{Path, PathBuf};

use crate::model::pinned::Pinned;
use crate::tasks::Task;
use crate::trace::Trace;
use crate::trace::format::ModelId;

/// The full tier's needle lengths (the longest leaves room for the answer in 8,192 tokens).
pub const NEEDLE_GRID_LENS: [usize; 4] = [1024, 2048, 4096, 8000];

/// Most tokens a default-tier answer runs to. A trial's time is mostly decode steps (a greedy
/// answer, then the reference teacher-forced from where the two part), and 1,162 trials of up to
/// 48-token answers took 34 min of CI's 30 (docs/HARNESS.md); 12 tokens still hold every
/// default-tier needle's number and let decode-time methods (H2O, TOVA, StreamingLLM) evict.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 12;

/// A tier of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// What `cargo test` and CI run: every trial, few short samples.
    Default,
    /// The whole grid: enough samples for 10-point intervals, the tasks' calibrated lengths.
    Full,
}

impl Tier {
    /// From `KVBENCH_TIER` (`default` when unset; [`crate::assets::settings::tier`]).
    pub fn from_env() -> Result<Self, String> {
        Self::from_name(crate::assets::settings::tier().map_err(|e| e.to_string())?)
    }

    /// The tier called `name`.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "default" => Ok(Self::Default),
            "full" => Ok(Self::Full),
            other => Err(format!("unknown tier {other:?}: use `default` or `full`")),
        }
    }

    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Full => "full",
        }
    }

    /// Samples per task of `model`. The default tier gives Gemma one where SmolLM2 has two: a
    /// Gemma trial costs about twice a SmolLM2 one per sample (its prefill multiplies fp32
    /// weights, SmolLM2's 4-bit ones: docs/MODELS.md), and CI runs every trial of both models in
    /// its 30 minutes (SmolLM2 had three until 1,162 trials outgrew them). One sample a task is
    /// still a replay check, bit for bit; two let `tests/batched.rs` decode lanes side by side.
    /// The full tier's are the same for both models.
    pub fn samples(self, model: Pinned, task: Task) -> usize {
        match self {
            Self::Default => match model {
                Pinned::Smollm2 => 2,
                Pinned::Gemma3 => 1,
            },
            Self::Full => match task {
                // binary scores need ~96 samples for a 10-point Wilson half-width at p = 0.5
                Task::Needle | Task::Synthetic | Task::FewShot => 100,
                _ => 60,
            },
        }
    }

    /// Most tokens an answer to `task` may take: the task's own limit, capped on the default tier
    /// at [`DEFAULT_MAX_NEW_TOKENS`] (recorded in each trace sample, which replays read).
    pub fn max_new_tokens(self, task: Task) -> usize {
        match self {
            Self::Default => task.max_new_tokens().min(DEFAULT_MAX_NEW_TOKENS),
            Self::Full => task.max_new_tokens(),
        }
    }

    /// Prompt lengths in tokens; sample `i` is recorded at `lens[i % lens.len()]`. The full
    /// tier's needle spans the depth × length grid up to the model's 8k context (depths come
    /// from the seed).
    pub fn lens(self, task: Task) -> Vec<usize> {
        match (self, task) {
            (Self::Default, _) => vec![256],
            (Self::Full, Task::Needle) => NEEDLE_GRID_LENS.to_vec(),
            (Self::Full, _) => vec![task.default_len()],
        }
    }

    /// Where this tier's traces of `model` live: `traces/<tier>/`, and a folder of its own in it
    /// for every model but the first ([`Pinned::subdir`]).
    pub fn trace_dir(self, model: Pinned) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("traces").join(self.name());
        model.subdir().map_or(dir.clone(), |sub| dir.join(sub))
    }

    /// The trace of `task` for `model`.
    pub fn trace_path(self, model: Pinned, task: Task) -> PathBuf {
        self.trace_dir(model).join(format!("{}.trace.zst", task.name()))
    }

    /// The trace of `task` for `model`, which must have been recorded: an error says how to
    /// record it.
    pub fn recorded_trace(self, model: Pinned, task: Task) -> Result<PathBuf, String> {
        let path = self.trace_path(model, task);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "no trace {}: record it with `cargo xtask record --model {} --tier {} --task {}`",
                path.display(),
                model.name(),
                self.name(),
                task.name()
            ))
        }
    }

    /// The recorded trace of `task` for `model`, read and checked by [`Self::trace_at`] against
    /// `id`, the model loaded.
    pub fn read_trace(self, model: Pinned, task: Task, id: &ModelId) -> Result<Trace, String> {
        self.trace_at(&self.recorded_trace(model, task)?, task, id)
    }

    /// The trace at `path`, read and checked as `task`'s of this tier: recorded with `model`, and
    /// with this task and tier in its header (a file renamed or copied into the wrong place is
    /// refused, not replayed as another task).
    pub fn trace_at(self, path: &Path, task: Task, model: &ModelId) -> Result<Trace, String> {
        let trace = Trace::read(path, Some(model)).map_err(|e| e.to_string())?;
        let header = &trace.header;
        if header.task != task.name() || header.tier != self.name() {
            let pinned = Pinned::ALL.into_iter().find(|m| m.display_name() == model.name).unwrap_or(Pinned::Smollm2);
            return Err(format!(
                "trace {}: its header says task {:?} of tier {:?}, but it is read as task {:?} of tier {:?}; \
                 re-record it with `cargo xtask record --model {} --tier {} --task {}`",
                path.display(),
                header.task,
                header.tier,
                task.name(),
                self.name(),
                pinned.name(),
                self.name(),
                task.name()
            ));
        }
        Ok(trace)
    }

    /// Where this tier's per-trial results of `model` are written: `$KVBENCH_RESULTS`, else
    /// `target/kvbench-results/<tier>` ([`crate::assets::settings::results_dir`]), with the
    /// model's own folder in it for every model but the first.
    pub fn results_dir(self, model: Pinned) -> PathBuf {
        let dir = crate::assets::settings::results_dir(self.name());
        model.subdir().map_or(dir.clone(), |sub| dir.join(sub))
    }

    /// How this tier's runs are held to their snapshots: replayed sample by sample on the default
    /// tier (two samples support no statistical test), tested with a correction for the
    /// matrix's trials on the full tier.
    pub fn gate(self) -> super::golden::Gate {
        match self {
            Tier::Default => super::golden::Gate::Replay,
            // Bonferroni over a model's trials: each model's goldens are a family of their own
            Tier::Full => super::golden::Gate::Statistical { trials: super::matrix().len() },
        }
    }

    /// The sequential design this tier's trials (but `full`'s) run under: the full tier stops a
    /// trial once its verdict against `full` is known ([`super::sequential`]); the default
    /// tier's samples are a replay check, run in full.
    pub fn stopping(self) -> Option<super::sequential::Design> {
        match self {
            Tier::Default => None,
            Tier::Full => Some(super::sequential::full_tier()),
        }
    }

    /// The prefill cache's default size limit in GiB: room for one task's shared prefills (the
    /// full tier's take 4.7 GB for few-shot, 17.5 for the needle), so that a trial of a method
    /// acting after prefill reads them instead of computing them again.
    pub fn prefill_cache_gib(self) -> f64 {
        match self {
            Tier::Default => 4.0,
            Tier::Full => 30.0,
        }
    }

    /// Where this tier's golden snapshots of `model`'s trials live: `golden/trials/<tier>/`, with
    /// the model's own folder in it for every model but the first.
    pub fn golden_dir(self, model: Pinned) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join("trials").join(self.name());
        model.subdir().map_or(dir.clone(), |sub| dir.join(sub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiers_kvbench_tier_accepts_are_the_tiers() {
        let names: Vec<&str> = [Tier::Default, Tier::Full].into_iter().map(Tier::name).collect();
        assert_eq!(names, crate::assets::settings::TIERS);
        for name in crate::assets::settings::TIERS {
            assert_eq!(Tier::from_name(name).map(Tier::name), Ok(name));
        }
    }
}
