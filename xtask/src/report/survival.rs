//! The report's answer survival: for the methods that hold or read a subset of the prompt, the
//! share of the answer's tokens still held (for retrieval, read) when the answer was done, beside
//! the score, on the tasks whose answer is a span of the context (the needle, the synthetic
//! task). It separates "the answer was evicted" from "kept but not used".

use kvbench::bench::TrialResult;

use super::table::methods;

/// Tasks whose answer is a span of the context.
const TASKS: [&str; 2] = ["needle", "synthetic"];

/// The mean of the samples' survival, and over how many, if any sample has one.
fn survival(t: &TrialResult) -> Option<(f64, usize)> {
    let kept: Vec<f64> = t.samples.iter().filter_map(|s| s.answer_kept).collect();
    (!kept.is_empty()).then(|| (kept.iter().sum::<f64>() / kept.len() as f64, kept.len()))
}

/// The section, or nothing when no trial recorded survival (results older than it).
pub fn section(trials: &[TrialResult]) -> String {
    let cell = |m: &str, task: &str| -> Option<String> {
        let t = trials.iter().find(|t| t.method == m && t.task == task)?;
        let (kept, n) = survival(t)?;
        Some(format!("{:.0}% | {:.1} (n={n})", 100.0 * kept, 100.0 * t.score.mean))
    };
    let rows: Vec<String> = methods()
        .iter()
        .filter_map(|m| {
            let cells: Vec<Option<String>> = TASKS.iter().map(|task| cell(m, task)).collect();
            cells.iter().any(Option::is_some).then(|| {
                let shown: Vec<String> = cells.into_iter().map(|c| c.unwrap_or_else(|| "— | —".into())).collect();
                format!("| {m} | {} |\n", shown.join(" | "))
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Answer survival\n\nFor each method that holds or reads a subset of the prompt: the share of the \
         answer's tokens in the context (the needle's number; the synthetic task's value) that the cache still held \
         when the answer was done (retrieval: read at its last step), averaged over layers, kv heads and samples, \
         beside the score ×100. Low survival with a low score: the answer was evicted; high survival with a low \
         score: kept but not used. Quantizers hold every token and are not listed.\n\n\
         | method | needle: answer kept | needle: score | synthetic: answer kept | synthetic: score |\n\
         |---|---:|---:|---:|---:|\n",
    );
    rows.iter().for_each(|r| md.push_str(r));
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::with_scores;

    #[test]
    fn survival_sits_beside_the_score_and_old_results_show_nothing() {
        let mut t = with_scores("snapkv-2x::needle", &[1.0, 0.0]);
        t.samples[0].answer_kept = Some(0.5);
        t.samples[1].answer_kept = Some(0.25);
        let md = section(&[t.clone()]);
        assert!(md.contains("| snapkv-2x | 38% | 50.0 (n=2) | — | — |"), "{md}");
        t.samples.iter_mut().for_each(|s| s.answer_kept = None);
        assert_eq!(section(&[t]), "");
    }
}
