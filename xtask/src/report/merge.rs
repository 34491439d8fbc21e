//! Merging shards: each shard (`cargo nextest run --partition hash:K/N`, on this machine or
//! another) writes one JSON per trial; copying those folders together is a merge, checked here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

/// The trial results of every folder in `sources`, by trial name. A trial found twice must be
/// identical both times (shards are disjoint; the same shard copied twice is harmless); a
/// `results.json` (a shard's merged array) counts as its trials.
pub fn merge(sources: &[PathBuf]) -> anyhow::Result<Vec<Value>> {
    let mut seen: BTreeMap<String, (PathBuf, Value)> = BTreeMap::new();
    for dir in sources {
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading shard results {}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let v: Value =
                serde_json::from_slice(&std::fs::read(&path)?).with_context(|| format!("{}", path.display()))?;
            let trials = match v {
                Value::Array(items) => items,
                one => vec![one],
            };
            for t in trials {
                let Some(name) = t["trial"].as_str().map(str::to_string) else {
                    bail!("{} holds something that is not a trial result (no \"trial\" field)", path.display());
                };
                match seen.get(&name) {
                    Some((first, prev)) if *prev != t => bail!(
                        "trial {name} is in {} and in {} with different results: shards must be disjoint \
                         (run each `--partition hash:K/N` once)",
                        first.display(),
                        path.display()
                    ),
                    Some(_) => {}
                    None => {
                        seen.insert(name, (path.clone(), t));
                    }
                }
            }
        }
    }
    Ok(seen.into_values().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvbench-merge-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(d: &Path, trial: &str, score: f64) {
        let file = d.join(format!("{}.json", kvbench::bench::golden::file_name(trial)));
        std::fs::write(file, json!({ "trial": trial, "score": { "mean": score } }).to_string()).unwrap();
    }

    #[test]
    fn disjoint_shards_merge_into_their_union() {
        let (a, b) = (dir("a"), dir("b"));
        put(&a, "full::needle", 1.0);
        put(&a, "h2o-4x::code", 0.2);
        put(&b, "kivi-2bit::needle", 0.5);
        // a shard's merged array counts too, and a trial copied twice unchanged is fine
        let arr = json!([{ "trial": "tova-2x::few-shot", "score": { "mean": 0.1 } }, { "trial": "full::needle", "score": { "mean": 1.0 } }]);
        std::fs::write(b.join("results.json"), arr.to_string()).unwrap();
        let merged = merge(&[a.clone(), b.clone()]).unwrap();
        let names: Vec<&str> = merged.iter().map(|t| t["trial"].as_str().unwrap()).collect();
        assert_eq!(names, ["full::needle", "h2o-4x::code", "kivi-2bit::needle", "tova-2x::few-shot"]);
        for d in [a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_trial_in_two_shards_with_different_results_is_an_error() {
        let (a, b) = (dir("c"), dir("d"));
        put(&a, "full::needle", 1.0);
        put(&b, "full::needle", 0.0);
        let e = merge(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(e.contains("full::needle") && e.contains("different results"), "{e}");
        std::fs::write(b.join("junk.json"), "{\"x\": 1}").unwrap();
        std::fs::remove_file(b.join(format!("{}.json", kvbench::bench::golden::file_name("full::needle")))).unwrap();
        let e = merge(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(e.contains("junk.json"), "{e}");
        for d in [a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
