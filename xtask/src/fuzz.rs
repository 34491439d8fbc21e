//! `cargo xtask fuzz`: seed the trace reader's fuzz targets with the committed traces and run
//! one with `cargo +nightly fuzz` (install it with `cargo install cargo-fuzz`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use kvbench::trace::Trace;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// `trace_file` (whole files) or `trace_payload` (past the checksum).
    #[arg(long, default_value = "trace_payload")]
    target: String,
    /// How long to fuzz.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !matches!(args.target.as_str(), "trace_file" | "trace_payload") {
        bail!("unknown fuzz target {:?}: use trace_file or trace_payload", args.target);
    }
    let root = crate::project_root();
    let corpus = root.join("fuzz/corpus").join(&args.target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut seeds = 0;
    for tier in ["default", "full"] {
        let Ok(entries) = std::fs::read_dir(root.join("traces").join(tier)) else { continue };
        for entry in entries {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(".trace.zst") {
                continue;
            }
            let name = format!("{tier}-{}", path.file_name().expect("file").to_string_lossy());
            let bytes = std::fs::read(&path)?;
            let seed = if args.target == "trace_file" {
                bytes
            } else {
                Trace::from_bytes(&bytes, Path::new(&path)).map_err(anyhow::Error::from)?.to_payload()
            };
            std::fs::write(corpus.join(name), seed)?;
            seeds += 1;
        }
    }
    eprintln!("{seeds} seeds from traces/ in {}", corpus.display());
    let status = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", &args.target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .status()
        .context("running `cargo +nightly fuzz` (install it with `cargo install cargo-fuzz`)")?;
    if !status.success() {
        bail!(
            "cargo fuzz stopped with {status}: if libFuzzer found a crash, its input is under fuzz/artifacts/{} \
             (otherwise see the error above: nightly toolchain? cargo-fuzz installed?)",
            args.target
        );
    }
    Ok(())
}
