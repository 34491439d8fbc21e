//! The report's markdown: methods × task categories, as in the reference study's main table.

use std::collections::BTreeMap;

use serde_json::Value;

/// Task categories, in the report's column order.
pub const TASKS: [&str; 7] =
    ["needle", "synthetic", "single-doc-qa", "multi-doc-qa", "summarization", "few-shot", "code"];

/// Every method of the trial matrix, in its order.
pub fn methods() -> Vec<String> {
    kvbench::kv::methods::all_at(&kvbench::bench::RATIOS)
}

/// The report of `trials`.
pub fn markdown(tier: &str, trials: &[Value]) -> String {
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
         (Wilson for exact-match scores, t otherwise), n samples per cell; `ratio` is the mean measured ratio (fp16 \
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
                    // scores live in [0, 1]: show t intervals clipped to it
                    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN).clamp(0.0, 1.0) * 100.0;
                    md.push_str(&format!(" {:.0} [{:.0}, {:.0}] n={} |", f("mean"), f("lo"), f("hi"), s["n"]));
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    if super::plots::needle_cells(trials).is_empty() {
        md.push_str("\nNo needle results in this report, so no depth × length heatmaps.\n");
    } else {
        md.push_str(
            "\nNeedle exact-match rate by depth and prompt length, per method (a tier with one length has one column):\n\n\
             ![needle heatmaps](needle-heatmap.png)\n",
        );
    }
    md
}
