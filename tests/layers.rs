//! The layer picture of the README holds: data flows down and nothing reaches up. Every `crate::`
//! path in the library's code (tests inside a file, after its `#[cfg(test)]`, are exempt) names a
//! module of its own layer or one below; and inside `kv`, the seam (everything outside
//! `kv/methods/`) depends on no method, so that methods plug into it and not the reverse.

use std::path::{Path, PathBuf};

/// The library's top modules, bottom first; a module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[&["codec", "assets"], &["kv"], &["model"], &["eval"], &["tasks"], &["trace"], &["bench"]];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top module a file of `src/` belongs to (`src/kv/op.rs` → `kv`); `None` for the crate root
/// and the binary's files (`main.rs`, `cli/`), which sit above every layer.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main" && name != "cli").then_some(name)
}

/// Each `(line number, line)` of `text` before its tests, comments dropped.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
}

/// The modules `line` names as `crate::NAME`.
fn crate_paths(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(at, _)| !line[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, m)| line[at + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .collect()
}

/// Every violation in the library under `src`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in &files {
        let Some(module) = module_of(src, file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(src.parent().unwrap()).unwrap().display().to_string();
        if layer(&module).is_none() {
            found.push(format!("{rel}: module `{module}` has no layer: give it one in tests/layers.rs's LAYERS"));
            continue;
        }
        let seam = module == "kv" && !file.starts_with(src.join("kv/methods"));
        for (n, line) in code_lines(&text) {
            for used in crate_paths(line) {
                if let Some(l) = layer(&used)
                    && l > layer(&module).unwrap()
                {
                    found.push(format!("{rel}:{n}: `{module}` reaches up to `{used}`: {}", line.trim()));
                }
            }
            if seam && (line.contains("crate::kv::methods") || line.contains("super::methods")) {
                found.push(format!("{rel}:{n}: the kv seam depends on a method: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn no_module_reaches_up_and_the_kv_seam_depends_on_no_method() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports against the layer picture (README, \"Layers\": {LAYERS:?}, bottom first):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("kvbench-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src/kv/methods")).unwrap();
    std::fs::write(dir.join("src/kv/op.rs"), "use crate::model::export::DOMAIN; // up\nuse crate::kv::Heads;\n")
        .unwrap();
    std::fs::write(dir.join("src/kv/store.rs"), "use super::methods::Full;\n#[cfg(test)]\nuse crate::bench::Tier;\n")
        .unwrap();
    std::fs::write(dir.join("src/kv/methods/full.rs"), "use crate::kv::prefill::FullStore;\n").unwrap();
    std::fs::write(dir.join("src/bench.rs"), "use crate::model::ModelConfig;\n").unwrap();
    std::fs::write(dir.join("src/main.rs"), "use kvbench::bench::Tier;\n").unwrap();
    std::fs::write(dir.join("src/newthing.rs"), "\n").unwrap();
    let found = violations(&dir.join("src"));
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("src/kv/op.rs:1: `kv` reaches up to `model`"), "{found:#?}");
    assert!(found[1].contains("src/kv/store.rs:1: the kv seam depends on a method"), "{found:#?}");
    assert!(found[2].contains("src/newthing.rs: module `newthing` has no layer"), "{found:#?}");
    std::fs::remove_dir_all(dir).unwrap();
}
