//! `cargo xtask golden`: record llama.cpp's tokenization and greedy continuation of the prompts
//! in `golden/prompts/` as `golden/llama_cpp_reference.json`.
//!
//! The test `tests/llama_reference.rs` holds kvbench to this file without llama.cpp installed.

use std::process::Command;

use crate::{project_root, venv};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Greedy tokens to record per prompt.
    #[arg(long, default_value_t = 16)]
    n_predict: usize,
}

/// Run the reference script on the pinned GGUF.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    let gguf = kvbench::assets::smollm2_gguf()?;
    let python = venv::llama_python()?;
    venv::run(
        Command::new(python)
            .arg(root.join("xtask/py/llama_reference.py"))
            .arg("--gguf")
            .arg(&gguf)
            .arg("--prompts")
            .arg(root.join("golden/prompts"))
            .arg("--out")
            .arg(root.join("golden/llama_cpp_reference.json"))
            .arg("--n-predict")
            .arg(args.n_predict.to_string()),
    )?;
    eprintln!("xtask: wrote golden/llama_cpp_reference.json; review the diff and commit it");
    Ok(())
}
