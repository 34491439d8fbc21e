//! The models kvbench pins: fetched by name, sha256-checked and cached on first use
//! (docs/MODELS.md). Each has its own traces, goldens and results; SmolLM2's, the first model's,
//! keep the places and trial names they had before a second model came (`traces/<tier>/`,
//! `full::needle`), every other model's carry its name (`traces/<tier>/gemma3-270m/`,
//! `gemma3-270m/full::needle`), so that a filter selects one model's trials.

use std::path::PathBuf;

use crate::assets::{self, AssetError};

/// A pinned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
pub enum Pinned {
    /// SmolLM2-135M-Instruct, Q4_1 (llama architecture, ChatML prompts): the first model.
    #[value(name = "smollm2-135m")]
    #[serde(rename = "smollm2-135m")]
    Smollm2,
    /// Gemma-3-270M base, Q4_K_M (local/global attention, plain-completion prompts).
    #[value(name = "gemma3-270m")]
    #[serde(rename = "gemma3-270m")]
    Gemma3,
}

impl Pinned {
    /// Every pinned model, the first model first.
    pub const ALL: [Pinned; 2] = [Pinned::Smollm2, Pinned::Gemma3];

    /// Its name on the command line and in trial names.
    pub fn name(self) -> &'static str {
        match self {
            Pinned::Smollm2 => "smollm2-135m",
            Pinned::Gemma3 => "gemma3-270m",
        }
    }

    /// The model called `name`.
    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            format!("unknown model {name:?}: use one of {}", names.join(", "))
        })
    }

    /// The name its traces record ([`crate::trace::format::ModelId::name`]).
    pub fn display_name(self) -> &'static str {
        match self {
            Pinned::Smollm2 => "SmolLM2-135M-Instruct Q4_1",
            Pinned::Gemma3 => "Gemma-3-270M Q4_K_M",
        }
    }

    /// Its GGUF, fetched and verified on first use.
    pub fn gguf(self) -> Result<PathBuf, AssetError> {
        match self {
            Pinned::Smollm2 => assets::smollm2_gguf(),
            Pinned::Gemma3 => assets::gemma3_gguf(),
        }
    }

    /// The folder its traces, goldens and results take under a tier's (none: the first model's
    /// are the tier's own).
    pub fn subdir(self) -> Option<&'static str> {
        match self {
            Pinned::Smollm2 => None,
            Pinned::Gemma3 => Some(self.name()),
        }
    }

    /// Its own folder in `dir` (a run's results, a shard's) where `dir` has one, else `dir`: a
    /// run writes each model's results but the first's into a folder of its own, and a
    /// report's merged `results/` folder holds one model's.
    pub fn within(self, dir: &std::path::Path) -> PathBuf {
        match self.subdir() {
            Some(sub) if dir.join(sub).is_dir() => dir.join(sub),
            _ => dir.to_path_buf(),
        }
    }

    /// What its trial names start with: `""` for the first model, `"gemma3-270m/"` for Gemma.
    pub fn trial_prefix(self) -> String {
        self.subdir().map(|s| format!("{s}/")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_later_models_prefix_their_trials() {
        for m in Pinned::ALL {
            assert_eq!(Pinned::from_name(m.name()), Ok(m));
        }
        assert!(Pinned::from_name("gemma").unwrap_err().contains("gemma3-270m"));
        assert_eq!(Pinned::Smollm2.trial_prefix(), "");
        assert_eq!(Pinned::Gemma3.trial_prefix(), "gemma3-270m/");
    }
}
