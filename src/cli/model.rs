//! `--model NAME` / `--gguf PATH`: which model a command runs, shared by every command that loads
//! one.

use std::path::PathBuf;

use kvbench::model::pinned::Pinned;

/// The model arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model, by name.
    #[arg(long, value_enum, default_value_t = Pinned::Smollm2)]
    pub model: Pinned,
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
        Ok(self.model.gguf()?)
    }
}
