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
