//! A private Python environment with llama-cpp-python, built from source by pip.
//!
//! llama.cpp is kvbench's independent reference for numerics and speed. pip compiles it for this
//! machine (a few minutes on two cores, once); the environment lives under `target/` and is reused.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::project_root;

/// The llama-cpp-python version the golden data was made with.
pub const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// Path of a Python interpreter that can `import llama_cpp`, building the environment if needed.
/// `KVBENCH_LLAMA_PYTHON` may point at an existing interpreter instead.
pub fn llama_python() -> anyhow::Result<PathBuf> {
    if let Some(python) = kvbench::assets::settings::llama_python() {
        return Ok(python);
    }
    let dir = project_root().join("target").join("xtask-venv");
    let python = dir.join("bin").join("python");
    if python.is_file() && imports_llama(&python) {
        return Ok(python);
    }
    eprintln!(
        "xtask: building llama-cpp-python=={LLAMA_CPP_PYTHON} from source into {} (once, several minutes)",
        dir.display()
    );
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--no-binary", "llama-cpp-python"])
        .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON}"))
        .args(["numpy", "gguf"]))?;
    if !imports_llama(&python) {
        bail!("{} still cannot import llama_cpp after installing it", python.display());
    }
    Ok(python)
}

/// The gguf-py version the dequantization reference was made with.
pub const GGUF_PY: &str = "0.19.0";

/// Path of a Python interpreter with gguf-py (GGML's own reader and dequantizer) and numpy, in a
/// small environment of its own under `target/` (no compiler needed), built on first use.
pub fn gguf_python() -> anyhow::Result<PathBuf> {
    let dir = project_root().join("target").join("xtask-gguf-venv");
    let python = dir.join("bin").join("python");
    let has = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", &format!("import gguf, importlib.metadata as m; assert m.version('gguf') == '{GGUF_PY}'")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.is_file() && has(&python) {
        return Ok(python);
    }
    eprintln!("xtask: installing gguf=={GGUF_PY} and numpy into {}", dir.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q"]).arg(format!("gguf=={GGUF_PY}")).arg("numpy"))?;
    if !has(&python) {
        bail!("{} still cannot import gguf {GGUF_PY} after installing it", python.display());
    }
    Ok(python)
}

/// The Hugging Face stack the transformers and kvpress references run on (torch pulls its CUDA
/// libraries from the registry: the environment is about 5 GB; on this CPU it runs without them).
pub const HF_STACK: [&str; 4] = ["kvpress==0.5.5", "transformers==5.2.0", "torch==2.15.0", "gguf==0.19.0"];

/// Path of a Python interpreter with [`HF_STACK`], in `target/xtask-hf-venv`, built on first use.
pub fn hf_python() -> anyhow::Result<PathBuf> {
    let dir = project_root().join("target").join("xtask-hf-venv");
    let python = dir.join("bin").join("python");
    let check = "import importlib.metadata as m, sys; \
                 sys.exit(any(m.version(p.split('==')[0]) != p.split('==')[1] for p in sys.argv[1:]))";
    let has = |python: &PathBuf| {
        Command::new(python).args(["-c", check]).args(HF_STACK).output().is_ok_and(|o| o.status.success())
    };
    if python.is_file() && has(&python) {
        return Ok(python);
    }
    eprintln!("xtask: installing {} into {} (once; about 5 GB, many minutes)", HF_STACK.join(" "), dir.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q"]).args(HF_STACK).arg("numpy"))?;
    if !has(&python) {
        bail!("{} still lacks {} after installing them", python.display(), HF_STACK.join(" "));
    }
    Ok(python)
}

fn imports_llama(python: &PathBuf) -> bool {
    Command::new(python).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success())
}

/// Run a command, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
