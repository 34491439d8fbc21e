//! `--model NAME` / `--gguf PATH`: which model a command runs, shared by every command that loads
//! one.

use std::path::PathBuf;

use kvbench::assets;

/// The models kvbench pins (fetched, sha256-checked and cached on first use; docs/MODELS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelName {
    /// SmolLM2-135M-Instruct, Q4_1 (llama architecture, ChatML prompts).
    #[value(name = "smollm2-135m")]
    Smollm2,
    /// Gemma-3-270M base, Q4_K_M (local/global attention, plain-completion prompts).
    #[value(name = "gemma3-270m")]
    Gemma3,
}

/// The model arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model, by name.
    #[arg(long, value_enum, default_value_t = ModelName::Smollm2)]
    pub model: ModelName,
    /// Use this GGUF instead of a pinned model (not hash-checked; a llama or a gemma3 file).
    #[arg(long, conflicts_with = "model")]
    pub gguf: Option<PathBuf>,
}

impl ModelArgs {
    /// The GGUF to load: `--gguf` as given (which must exist), else the named model's pinned file.
    pub fn path(&self) -> Result<PathBuf, Box<dyn std::error::Error>> {
        if let Some(gguf) = &self.gguf {
            if !gguf.is_file() {
                return Err(format!("GGUF file {} does not exist", gguf.display()).into());
            }
            return Ok(gguf.clone());
        }
        Ok(match self.model {
            ModelName::Smollm2 => assets::smollm2_gguf()?,
            ModelName::Gemma3 => assets::gemma3_gguf()?,
        })
    }
}
