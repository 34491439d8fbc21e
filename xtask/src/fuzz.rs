//! `cargo xtask fuzz`: seed the trace reader's fuzz targets with the committed traces and run
//! one with `cargo +nightly fuzz` (install it with `cargo install cargo-fuzz`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use kvbench::trace::{ProbeSpec, Trace, TraceHeader};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// `trace_file` (whole files) or `trace_payload` (past the checksum).
    #[arg(long, default_value = "trace_payload")]
    target: String,
    /// How long to fuzz.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// libFuzzer's input length limit (`-max_len`); by default the largest seed's. A probed
    /// trace's payload is 0.4–1 MB, so a limit of tens of KB keeps to the small seeds and runs
    /// far more inputs a second (longer seeds are cut to it).
    #[arg(long)]
    max_len: Option<usize>,
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
            let file = path.file_name().expect("file").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path)?;
            let trace = Trace::from_bytes(&bytes, Path::new(&path)).map_err(anyhow::Error::from)?;
            let encode = |t: &Trace| if args.target == "trace_file" { t.to_bytes() } else { t.to_payload() };
            std::fs::write(corpus.join(format!("{tier}-{file}")), encode(&trace))?;
            seeds += 1;
            if let Some(small) = small_probed(&trace) {
                std::fs::write(corpus.join(format!("{tier}-small-{file}")), encode(&small))?;
                seeds += 1;
            }
        }
    }
    eprintln!("{seeds} seeds from traces/ in {}", corpus.display());
    let status = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", &args.target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .args(args.max_len.map(|n| format!("-max_len={n}")))
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

/// A small copy of `trace` that keeps a probe: its first sample cut to 8 prompt tokens, and its
/// probe to the same 8, so that libFuzzer mutates probe sections without half-megabyte inputs.
fn small_probed(trace: &Trace) -> Option<Trace> {
    let spec = trace.header.probe.clone()?;
    let mut sample = trace.samples.first()?.clone();
    let keep = 8.min(sample.meta.prompt_len);
    let (q, kv) = spec.widths();
    let probe = sample.probe.as_mut()?;
    probe.tokens = keep;
    for layer in &mut probe.layers {
        layer.queries.truncate(keep * q);
        layer.keys.truncate(keep * kv);
        layer.values.truncate(keep * kv);
    }
    sample.prompt_ids.truncate(keep);
    sample.meta.prompt_len = keep;
    sample.meta.context_len = sample.meta.context_len.min(keep);
    let header = TraceHeader { probe: Some(ProbeSpec { samples: 1, ..spec }), ..trace.header.clone() };
    Some(Trace { header, samples: vec![sample] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_seed_is_a_valid_probed_trace() {
        let path = crate::project_root().join("traces/default/needle.trace.zst");
        let trace = Trace::read(&path, None).unwrap();
        let small = small_probed(&trace).expect("the default tier's traces carry probes");
        let back = Trace::from_bytes(&small.to_bytes(), Path::new("small")).unwrap();
        assert_eq!(back.samples[0].probe.as_ref().map(|p| p.tokens), Some(8));
        assert!(small.to_payload().len() < 20_000);
    }
}
