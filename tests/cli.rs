//! The command line as a new user meets it: clear errors on bad input.

use std::process::Command;

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
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, err) = kvbench(&["replay", "--task", "needle", "--methods", "full,nope-2x"]);
    assert!(!ok && err.contains("unknown method \"nope-2x\""), "{err}");
    let (ok, err) = kvbench(&["replay", "--task", "needle", "--tier", "huge", "--methods", "full"]);
    assert!(!ok && err.contains("unknown tier \"huge\""), "{err}");
}

/// `replay` runs what a trial runs: over the default tier's needle trace it gives `q8_0::needle`
/// the per-sample scores of its golden snapshot, and runs a variant outside the trial matrix.
#[test]
fn replay_reproduces_a_trial_and_runs_variants() {
    let out_dir = std::env::temp_dir().join(format!("kvbench-cli-replay-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["replay", "--task", "needle", "--methods", "q8_0,lingua-word-4x", "--threads", "1", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("3 samples of the default tier's needle trace"), "{stdout}");
    assert!(stdout.contains("| q8_0 |") && stdout.contains("| lingua-word-4x |"), "{stdout}");
    assert!(stderr.contains("[2/2] lingua-word-4x: sample 3/3"), "{stderr}");

    let read = |path: std::path::PathBuf| -> serde_json::Value {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // an insta snapshot is a header between `---` lines, then the JSON
        let json = text.rsplit_once("---\n").map_or(text.as_str(), |(_, body)| body);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let replayed = read(out_dir.join("q8_0__needle.json"));
    let golden = read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/trials/default/q8_0__needle.snap"));
    let golden_scores: Vec<(String, f64)> = golden["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_f64().unwrap()))
        .collect();
    let replayed_scores: Vec<(String, f64)> = replayed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(replayed_scores, golden_scores);
    let _ = std::fs::remove_dir_all(&out_dir);
}
