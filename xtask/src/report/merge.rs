//! Merging shards: each shard (`cargo nextest run --partition hash:K/N`, on this machine or
//! another) writes one JSON per trial; copying those folders together is a merge, checked here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kvbench::bench::TrialResult;
use serde_json::Value;

/// The trial results of every source in `sources`, by trial name. A source is a folder of
/// per-trial JSONs and merged files (a report's `results/` folder is one, with a file per task),
/// or a merged file itself, so a report can grow by runs on different days or machines. A trial
/// found twice must be identical both times (shards are disjoint; the same shard copied twice is
/// harmless); every trial must have run in the same mode.
pub fn merge(sources: &[PathBuf]) -> anyhow::Result<Vec<TrialResult>> {
    let mut seen: BTreeMap<String, (String, TrialResult)> = BTreeMap::new();
    for source in sources {
        for (origin, t) in trials_of(source)? {
            let name = t.trial.clone();
            if let Some((first, prev)) = seen.values().next()
                && prev.mode != t.mode
            {
                bail!(
                    "{first} ran in mode {} but {origin} in mode {}: merge shards of one mode",
                    prev.mode.name(),
                    t.mode.name()
                );
            }
            match seen.get(&name) {
                Some((first, prev)) if *prev != t => bail!(
                    "trial {name} is in {first} and in {origin} with different results: shards must be disjoint \
                     (run each `--partition hash:K/N` once)"
                ),
                Some(_) => {}
                None => {
                    seen.insert(name, (origin, t));
                }
            }
        }
    }
    Ok(seen.into_values().map(|(_, t)| t).collect())
}

/// The trials of one source, each with where it came from (for errors): a folder's files in
/// name order, or the entries of a merged results file.
fn trials_of(source: &Path) -> anyhow::Result<Vec<(String, TrialResult)>> {
    if source.is_file() {
        let Value::Array(trials) = read_json(source)? else {
            bail!("{} is not a merged results file (a JSON array of trial results)", source.display());
        };
        return entries(source, trials);
    }
    folder_trials(source)
}

/// Whether `dir` holds any trial's result (a folder [`folder_trials`] would read something from).
pub fn has_trials(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|listing| {
        listing.flatten().any(|e| {
            let p = e.path();
            p.extension().is_some_and(|x| x == "json") && p.file_name().is_some_and(|n| n != "results.json")
        })
    })
}

/// The trial results of a results folder, in file-name order, each with where it came from:
/// every `*.json` is one trial (an object) or a merged file (an array of them). A merged
/// `results.json` is skipped: older reports wrote one beside the per-trial files it repeats.
pub(super) fn folder_trials(dir: &Path) -> anyhow::Result<Vec<(String, TrialResult)>> {
    let listing = std::fs::read_dir(dir).with_context(|| format!("reading results {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = listing.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    let is_result =
        |p: &PathBuf| p.extension().is_some_and(|e| e == "json") && p.file_name().is_some_and(|n| n != "results.json");
    let mut trials = Vec::new();
    for path in paths.into_iter().filter(is_result) {
        match read_json(&path)? {
            Value::Array(merged) => trials.extend(entries(&path, merged)?),
            trial => {
                let origin = path.display().to_string();
                trials.push((origin.clone(), typed(&origin, trial)?));
            }
        }
    }
    Ok(trials)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("{}", path.display()))
}

/// A merged file's trials, each named `path[i]`.
fn entries(path: &Path, trials: Vec<Value>) -> anyhow::Result<Vec<(String, TrialResult)>> {
    let named = trials.into_iter().enumerate().map(|(i, t)| (format!("{}[{i}]", path.display()), t));
    named.map(|(origin, t)| Ok((origin.clone(), typed(&origin, t)?))).collect()
}

/// The trial result `value` holds, or an error naming `origin` and what is wrong.
fn typed(origin: &str, value: Value) -> anyhow::Result<TrialResult> {
    serde_json::from_value(value).with_context(|| format!("{origin} is not a trial result"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvbench-merge-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(d: &Path, trial: &str, score: f64) {
        let file = d.join(format!("{}.json", kvbench::bench::golden::file_name(trial)));
        std::fs::write(file, serde_json::to_string(&crate::report::fixture::result(trial, score)).unwrap()).unwrap();
    }

    #[test]
    fn disjoint_shards_merge_into_their_union() {
        let (a, b) = (dir("a"), dir("b"));
        put(&a, "full::needle", 1.0);
        put(&a, "h2o-4x::code", 0.2);
        put(&b, "kivi-2bit::needle", 0.5);
        // a trial copied twice unchanged is fine; a merged results.json (stale or not) is skipped
        put(&b, "tova-2x::few-shot", 0.1);
        put(&b, "full::needle", 1.0);
        std::fs::write(
            b.join("results.json"),
            serde_json::to_string(&[crate::report::fixture::result("full::needle", 0.0)]).unwrap(),
        )
        .unwrap();
        let merged = merge(&[a.clone(), b.clone()]).unwrap();
        let names: Vec<&str> = merged.iter().map(|t| t.trial.as_str()).collect();
        assert_eq!(names, ["full::needle", "h2o-4x::code", "kivi-2bit::needle", "tova-2x::few-shot"]);
        for d in [a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_committed_results_file_merges_with_new_shards() {
        let (a, b) = (dir("e"), dir("f"));
        put(&a, "full::needle", 1.0);
        put(&a, "h2o-4x::code", 0.2);
        let report = merge(std::slice::from_ref(&a)).unwrap();
        std::fs::write(b.join("results.json"), serde_json::to_string(&report).unwrap()).unwrap();
        let c = dir("g");
        put(&c, "kivi-2bit::needle", 0.5);
        put(&c, "full::needle", 1.0);
        let merged = merge(&[b.join("results.json"), c.clone()]).unwrap();
        let names: Vec<&str> = merged.iter().map(|t| t.trial.as_str()).collect();
        assert_eq!(names, ["full::needle", "h2o-4x::code", "kivi-2bit::needle"]);
        // a re-run that differs from the committed result is named, with both places
        put(&c, "h2o-4x::code", 0.3);
        let e = merge(&[b.join("results.json"), c.clone()]).unwrap_err().to_string();
        assert!(e.contains("h2o-4x::code") && e.contains("results.json[1]"), "{e}");
        std::fs::write(
            b.join("one.json"),
            serde_json::to_string(&crate::report::fixture::result("full::needle", 1.0)).unwrap(),
        )
        .unwrap();
        let e = merge(&[b.join("one.json")]).unwrap_err().to_string();
        assert!(e.contains("not a merged results file"), "{e}");
        std::fs::write(b.join("partial.json"), json!([{ "trial": "full::needle" }]).to_string()).unwrap();
        let e = format!("{:#}", merge(&[b.join("partial.json")]).unwrap_err());
        assert!(e.contains("partial.json[0] is not a trial result") && e.contains("missing field"), "{e}");
        for d in [a, b, c] {
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
        std::fs::remove_file(b.join("junk.json")).unwrap();
        let mut other_mode = crate::report::fixture::result("h2o-2x::code", 0.0);
        other_mode.mode = kvbench::model::generate::Mode::QueryAgnostic;
        std::fs::write(b.join("h2o-2x__code.json"), serde_json::to_string(&other_mode).unwrap()).unwrap();
        let e = merge(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(e.contains("mode"), "{e}");
        for d in [a, b] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
