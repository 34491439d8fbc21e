//! `cargo xtask golden`: record the two independent references kvbench's numerics are held to,
//! on the prompts in `golden/prompts/`:
//! - `golden/llama_cpp_reference.json`: llama.cpp's token ids, greedy continuation and per-step
//!   top-5 logits (`xtask/py/llama_reference.py`);
//! - `golden/exact_reference.json`: the same model in float64 numpy on gguf-py's weights
//!   (`xtask/py/numpy_reference.py`, several minutes for the long prompt).
//!
//! `tests/reference.rs` holds kvbench to both without either installed.
//!
//! `cargo xtask llama-arith` ([`arith`]) explains their disagreement: llama.cpp's forward pass
//! captured tensor by tensor and recomputed in numpy with its own arithmetic
//! (`xtask/py/llama_arith.py`).

use std::path::Path;
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
    venv::run(
        script("llama_reference.py", &gguf)?
            .arg("--prompts")
            .arg(root.join("golden/prompts"))
            .arg("--out")
            .arg(root.join("golden/llama_cpp_reference.json"))
            .arg("--n-predict")
            .arg(args.n_predict.to_string()),
    )?;
    venv::run(
        script("numpy_reference.py", &gguf)?
            .arg("--prompts")
            .arg(root.join("golden/llama_cpp_reference.json"))
            .arg("--out")
            .arg(root.join("golden/exact_reference.json"))
            .arg("--n-predict")
            .arg(args.n_predict.to_string()),
    )?;
    eprintln!(
        "xtask: wrote golden/llama_cpp_reference.json and golden/exact_reference.json; review the diff and commit"
    );
    Ok(())
}

/// Arguments of `cargo xtask llama-arith`.
#[derive(clap::Args)]
pub struct ArithArgs {
    /// The golden prompt to trace (a name in golden/llama_cpp_reference.json, ≤ 512 tokens).
    #[arg(long, default_value = "01-capital")]
    prompt: String,
}

/// Recompute llama.cpp's forward pass on one golden prompt, op by op and chained, with its own
/// arithmetic emulated; prints where its logits part from an exact computation's.
pub fn arith(args: ArithArgs) -> anyhow::Result<()> {
    let root = project_root();
    let gguf = kvbench::assets::smollm2_gguf()?;
    venv::run(
        script("llama_arith.py", &gguf)?
            .arg("--reference")
            .arg(root.join("golden/llama_cpp_reference.json"))
            .arg("--prompt")
            .arg(&args.prompt),
    )
}

/// `python xtask/py/<name> --gguf <gguf>` in the llama.cpp environment.
fn script(name: &str, gguf: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(venv::llama_python()?);
    cmd.arg(project_root().join("xtask/py").join(name)).arg("--gguf").arg(gguf);
    Ok(cmd)
}
