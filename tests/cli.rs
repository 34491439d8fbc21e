//! The command line as a new user meets it: clear errors on bad input.

use std::path::Path;
use std::process::Command;

use kvbench::bench::golden::{self, GoldenTrial, Verdict};
use kvbench::bench::{Tier, TrialResult};
use kvbench::model::pinned::Pinned;

fn kvbench(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn prompt_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kvbench-cli-prompt-{}.txt", std::process::id()));
    std::fs::write(&path, "Hello").unwrap();
    path
}

#[test]
fn missing_gguf_is_a_clear_error() {
    let prompt = prompt_file();
    let (ok, err) =
        kvbench(&["generate", "--prompt-file", prompt.to_str().unwrap(), "--gguf", "/nonexistent/model.gguf"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("does not exist"), "{err}");
}

#[test]
fn corrupt_gguf_is_a_clear_error() {
    let prompt = prompt_file();
    let bad = std::env::temp_dir().join(format!("kvbench-cli-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00truncated").unwrap();
    let (ok, err) = kvbench(&["generate", "--prompt-file", prompt.to_str().unwrap(), "--gguf", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains(bad.to_str().unwrap()) && err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_prompt_file_and_unknown_method_are_clear_errors() {
    let (ok, err) = kvbench(&["generate", "--prompt-file", "/nonexistent/prompt.txt"]);
    assert!(!ok && err.contains("cannot read prompt file /nonexistent/prompt.txt"), "{err}");
    let prompt = prompt_file();
    let (ok, err) = kvbench(&["generate", "--prompt-file", prompt.to_str().unwrap(), "--method", "nope"]);
    assert!(!ok && err.contains("unknown method \"nope\""), "{err}");
}

#[test]
fn replay_rejects_bad_input_clearly() {
    let (ok, err) = kvbench(&["replay", "--task", "nope", "--methods", "full"]);
    assert!(!ok && err.contains("unknown task \"nope\""), "{err}");
    let (ok, err) = kvbench(&["replay", "--task", "needle", "--methods", "full,nope-2x"]);
    assert!(!ok && err.contains("unknown method \"nope-2x\""), "{err}");
    let (ok, err) = kvbench(&["replay", "--task", "needle", "--tier", "huge", "--methods", "full"]);
    assert!(!ok && err.contains("unknown tier \"huge\""), "{err}");
}

/// Run `kvbench replay` with `args`, which must succeed; its stdout and stderr.
fn replay(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench")).arg("replay").args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

fn replayed(dir: &Path, trial: &str) -> TrialResult {
    let path = dir.join(format!("{}.json", golden::file_name(trial)));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `replay` runs what a trial runs: over the default tier's needle trace it gives `q8_0::needle`
/// and `quest-2x::needle` (whose scores are mixed) their golden snapshots' settings and
/// per-sample scores, passing the gate; it runs a variant outside the trial matrix; and
/// `--samples` takes an evenly spaced subset.
#[test]
fn replay_reproduces_trials_and_runs_variants() {
    let dir = std::env::temp_dir().join(format!("kvbench-cli-replay-{}", std::process::id()));
    let (stdout, stderr) =
        replay(&["--task", "needle", "--methods", "q8_0,quest-2x,lingua-word-4x", "--out", dir.to_str().unwrap()]);
    assert!(stdout.contains("2 samples of the default tier's needle trace"), "{stdout}");
    assert!(stdout.contains("| q8_0 |") && stdout.contains("| lingua-word-4x |"), "{stdout}");
    assert!(stderr.contains("[3/3] lingua-word-4x: sample 2/2"), "{stderr}");
    let golden_dir = Tier::Default.golden_dir(Pinned::Smollm2);
    for trial in ["q8_0::needle", "quest-2x::needle"] {
        let result = replayed(&dir, trial);
        let golden = golden::read(&golden::path(&golden_dir, trial)).unwrap().expect("a golden snapshot");
        assert_eq!(
            golden::check(&GoldenTrial::of(&result, "default"), &golden, Tier::Default.gate()),
            Verdict::Same,
            "{trial}"
        );
        let got: Vec<(&str, f64)> = result.samples.iter().map(|s| (s.id.as_str(), s.score)).collect();
        let want: Vec<(&str, f64)> = golden.samples.iter().map(|s| (s.id.as_str(), s.score)).collect();
        assert_eq!(got, want, "{trial}");
        assert!(!result.provenance.build.is_empty() && !result.provenance.trace.is_empty(), "{trial}");
        // the bytes behind the ratio: an fp16 cache's bytes for the tokens held (K and V, 30
        // layers, 3 kv heads of 64) over the peak bytes, a whole number of tokens from the prompt on
        const FP16_PER_TOKEN: f64 = (2 * 30 * 3 * 64 * 2) as f64;
        let peaks: Vec<f64> = result.samples.iter().map(|s| s.peak_bytes.expect("peak bytes kept") as f64).collect();
        for (s, peak) in result.samples.iter().zip(&peaks) {
            let tokens = s.measured_ratio * peak / FP16_PER_TOKEN;
            assert!(
                (tokens - tokens.round()).abs() < 1e-6 && tokens >= s.prompt_len as f64,
                "{trial}: {tokens} tokens"
            );
        }
        assert_eq!(result.mean_peak_bytes, Some(peaks.iter().sum::<f64>() / peaks.len() as f64), "{trial}");
    }
    let word = replayed(&dir, "lingua-word-4x::needle");
    assert!(word.settings["granularity"].as_str().is_some_and(|g| g.starts_with("word")), "{}", word.settings);

    let (stdout, _) =
        replay(&["--task", "needle", "--methods", "quest-2x", "--samples", "2", "--out", dir.to_str().unwrap()]);
    assert!(stdout.contains("2 samples of the default tier's needle trace"), "{stdout}");
    let subset = replayed(&dir, "quest-2x::needle");
    let ids: Vec<&str> = subset.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["needle/s0/n256/pg-essays/d0", "needle/s1/n256/pg-essays/d10"]);
    assert_eq!(subset.samples.iter().map(|s| s.score).collect::<Vec<_>>(), [0.0, 1.0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fidelity_replays_a_traces_probes_without_the_model() {
    let trace = concat!(env!("CARGO_MANIFEST_DIR"), "/traces/default/needle.trace.zst");
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["fidelity", "--trace", trace, "--methods", "full,q8_0,snapkv-2x", "--json"])
        // no model may be needed: point the model at nothing
        .env("KVBENCH_GGUF", "/nonexistent/model.gguf")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert_eq!(rows.len(), 3, "{stderr}");
    assert_eq!((field(0, "relative_error"), field(0, "mass_kept")), (0.0, 1.0));
    assert!(field(1, "relative_error") > 0.0 && field(1, "relative_error") < 0.05 && field(1, "mass_kept") == 1.0);
    assert!(field(2, "mass_kept") < 1.0);

    // the full tier's traces hold no probes: say so, and how to get them
    let full = concat!(env!("CARGO_MANIFEST_DIR"), "/traces/full/needle.trace.zst");
    let (ok, err) = kvbench(&["fidelity", "--trace", full]);
    assert!(!ok && err.contains("holds no attention probes") && err.contains("--probe-samples"), "{err}");
}
