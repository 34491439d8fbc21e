//! Per-sample baselines of a recorded trace: what a task's score is worth without the context.
//!
//! A score means something only above what needs no context: the model answering the question
//! alone (**no context**) and the task's trivial rule (**trivial**: always one few-shot class,
//! repeating code's last line, the question's first words…; `tasks::Sample::trivial_answer`).
//! `cargo xtask baselines --tier T` scores both on every sample of a trace, rebuilt from its seed
//! and checked against the recorded prompt, and writes them beside it
//! (`traces/<tier>/<task>.baselines.json`), keyed by the trace's sha256, so that the trace itself
//! and every result computed from it stay as they are. The report reads them to give each task's
//! headroom (`full` less the better baseline) beside its paired MDE80, and marks a task whose
//! headroom is under three times the MDE80 as one that cannot see.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One sample's baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleBaselines {
    /// Sample id (the trace's).
    pub id: String,
    /// Score of the full-cache model's greedy answer to the question alone.
    pub no_context: f64,
    /// That answer.
    pub no_context_answer: String,
    /// Score of the task's trivial answer.
    pub trivial: f64,
}

/// A trace's baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Task name.
    pub task: String,
    /// sha256 of the trace file they were computed for.
    pub trace_sha256: String,
    /// sha256 of the GGUF whose answers the no-context scores are.
    pub model_sha256: String,
    /// In the trace's order.
    pub samples: Vec<SampleBaselines>,
}

impl Baselines {
    /// Where the baselines of the trace at `trace` live: beside it, `<task>.baselines.json`.
    pub fn path_of(trace: &Path) -> PathBuf {
        let name = trace.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.strip_suffix(".trace.zst").unwrap_or(&name);
        trace.with_file_name(format!("{stem}.baselines.json"))
    }

    /// The baselines stored for the trace at `trace` whose sha256 is `sha256`: `Ok(None)` if
    /// there are none, an error if they are of another trace or unreadable.
    pub fn read(trace: &Path, sha256: &str) -> Result<Option<Self>, String> {
        let path = Self::path_of(trace);
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            read => read.map_err(|e| format!("{}: {e}", path.display()))?,
        };
        let found: Self = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if found.trace_sha256 != sha256 {
            return Err(format!(
                "{} are of another trace (sha256 {}, the trace's is {sha256}): run `cargo xtask baselines` again",
                path.display(),
                found.trace_sha256
            ));
        }
        Ok(Some(found))
    }

    /// Mean of the no-context scores and of the trivial ones.
    pub fn means(&self) -> (f64, f64) {
        let n = self.samples.len().max(1) as f64;
        let sum = |f: fn(&SampleBaselines) -> f64| self.samples.iter().map(f).sum::<f64>() / n;
        (sum(|s| s.no_context), sum(|s| s.trivial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_live_beside_their_trace_and_only_match_it() {
        let dir = std::env::temp_dir().join(format!("kvbench-baselines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trace = dir.join("code.trace.zst");
        assert_eq!(Baselines::path_of(&trace), dir.join("code.baselines.json"));
        assert_eq!(Baselines::read(&trace, "abc").unwrap(), None, "none yet");
        let b = Baselines {
            task: "code".into(),
            trace_sha256: "abc".into(),
            model_sha256: "m".into(),
            samples: vec![
                SampleBaselines { id: "a".into(), no_context: 0.5, no_context_answer: "x".into(), trivial: 0.25 },
                SampleBaselines { id: "b".into(), no_context: 0.0, no_context_answer: "y".into(), trivial: 0.75 },
            ],
        };
        std::fs::write(Baselines::path_of(&trace), serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(Baselines::read(&trace, "abc").unwrap(), Some(b.clone()));
        assert_eq!(b.means(), (0.25, 0.5));
        assert!(Baselines::read(&trace, "other").unwrap_err().contains("another trace"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
