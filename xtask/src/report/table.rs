//! The report's markdown: methods × task categories, as in the reference study's main table.

use std::collections::BTreeMap;

use serde_json::Value;

/// Task categories, in the report's column order: the benchmark's own list.
pub const TASKS: [&str; kvbench::tasks::Task::ALL.len()] = {
    let mut names = [""; kvbench::tasks::Task::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = kvbench::tasks::Task::ALL[i].name();
        i += 1;
    }
    names
};

/// Every method of the trial matrix, in its order.
pub fn methods() -> Vec<String> {
    kvbench::kv::methods::all_at(&kvbench::bench::RATIOS)
}

/// The report of `trials`; `needle_heatmaps`: whether the needle heatmaps are drawn (the tier
/// has needle results), so that the table links them.
pub fn markdown(tier: &str, trials: &[Value], needle_heatmaps: bool) -> String {
    let methods = methods();
    let mut by: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for t in trials {
        by.insert((t["method"].as_str().unwrap_or("").into(), t["task"].as_str().unwrap_or("").into()), t);
    }
    let expected = methods.len() * TASKS.len();
    let missing: Vec<String> = methods
        .iter()
        .flat_map(|m| TASKS.iter().map(move |t| (m.clone(), t.to_string())))
        .filter(|k| !by.contains_key(k))
        .map(|(m, t)| format!("{m}::{t}"))
        .collect();
    let mut md = format!(
        "# kvbench report: {tier} tier\n\n{} of the {expected} trials{}.\n\nTask scores ×100 with 95% intervals \
         (Wilson where every score is 0 or 1, as exact-match scores are; t cut to [0, 1] otherwise), n samples per cell; `ratio` is the mean measured ratio (fp16 \
         full-cache bytes / peak bytes held after compression), `top-1` the mean agreement with the full cache's \
         answer.\n\n![score versus measured ratio](score-vs-ratio.png)\n\n| method | ratio | top-1 |",
        expected - missing.len(),
        match missing.len() {
            0 => String::new(),
            n if n <= 10 => format!(" (missing: {})", missing.join(", ")),
            n => format!(" ({n} missing: run them, or merge the shards that ran them)"),
        }
    );
    for t in TASKS {
        md.push_str(&format!(" {t} |"));
    }
    md.push_str("\n|---|---:|---:|");
    md.push_str(&"---:|".repeat(TASKS.len()));
    md.push('\n');
    for m in &methods {
        let cells: Vec<Option<&&Value>> = TASKS.iter().map(|t| by.get(&(m.clone(), t.to_string()))).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let mean = |key: &str| {
            let xs: Vec<f64> = cells.iter().flatten().filter_map(|v| v[key].as_f64()).collect();
            xs.iter().sum::<f64>() / xs.len().max(1) as f64
        };
        md.push_str(&format!("| {m} | {:.2}× | {:.2} |", mean("measured_ratio"), mean("top1_agreement")));
        for c in cells {
            match c {
                Some(v) => {
                    let s = &v["score"];
                    // scores live in [0, 1]; results of builds before stats::estimate cut t intervals to it
                    // hold raw bounds, so cut them here too
                    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN).clamp(0.0, 1.0) * 100.0;
                    md.push_str(&format!(" {:.0} [{:.0}, {:.0}] n={} |", f("mean"), f("lo"), f("hi"), s["n"]));
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    if !needle_heatmaps {
        md.push_str("\nNo needle results in this report, so no depth × length heatmaps.\n");
    } else {
        md.push_str(
            "\nNeedle exact-match rate by depth and prompt length, per method (a tier with one length has one column):\n\n\
             ![needle heatmaps](needle-heatmap.png)\n",
        );
    }
    md.push_str(&provenance(trials));
    md
}

/// Where the results came from, per task: how many trials, their summed wall time, and the test
/// binaries and trace files (sha256 prefixes, as recorded in each result) that produced them.
fn provenance(trials: &[Value]) -> String {
    let mut md = String::from(
        "\n## Provenance\n\n| task | trials | trial-seconds | test binary (sha256, trials) | trace (sha256) |\n\
         |---|---:|---:|---|---|\n",
    );
    for task in TASKS {
        let of_task: Vec<&Value> = trials.iter().filter(|t| t["task"] == task).collect();
        if of_task.is_empty() {
            continue;
        }
        let seconds: f64 = of_task.iter().filter_map(|t| t["seconds"].as_f64()).sum();
        let short = |v: &Value| v.as_str().map(|h| format!("`{}`", &h[..h.len().min(12)]));
        let count = |key: &str| {
            let mut n: BTreeMap<String, usize> = BTreeMap::new();
            for t in &of_task {
                *n.entry(short(&t["provenance"][key]).unwrap_or_else(|| "not recorded".into())).or_default() += 1;
            }
            n
        };
        let builds: Vec<String> = count("build").into_iter().map(|(b, n)| format!("{b} ×{n}")).collect();
        let traces: Vec<String> = count("trace").into_keys().collect();
        md.push_str(&format!(
            "| {task} | {} | {seconds:.0} | {} | {} |\n",
            of_task.len(),
            builds.join(", "),
            traces.join(", ")
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn provenance_counts_builds_and_traces_per_task() {
        let trial = |task: &str, build: &str, secs: f64| json!({ "task": task, "seconds": secs, "provenance": { "build": build, "trace": "abcdef0123456789" } });
        let trials = vec![
            trial("code", "1111111111111111", 10.0),
            trial("code", "2222222222222222", 5.5),
            trial("code", "1111111111111111", 1.0),
            json!({ "task": "needle", "seconds": 2.0 }),
        ];
        let md = super::provenance(&trials);
        assert!(md.contains("| code | 3 | 16 | `111111111111` ×2, `222222222222` ×1 | `abcdef012345` |"), "{md}");
        assert!(md.contains("| needle | 1 | 2 | not recorded ×1 | not recorded |"), "{md}");
        assert!(!md.contains("| synthetic |"), "tasks without results are left out");
    }
}
