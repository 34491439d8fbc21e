//! The report's view at equal bytes: per task, the score-versus-bytes frontier of the
//! configurations that ran, since a user choosing a method has a memory budget, not a family.
//!
//! A configuration is on the frontier when no other holds as few bytes or fewer (a steady ratio
//! against fp16 at least as high) with at least as high a mean score, one of the two strictly.
//! Listed by bytes, most first. The frontier is of means: where two intervals overlap, which is
//! better is not established (the section "Δ vs full" has the paired tests against `full`).

use std::collections::BTreeMap;

use kvbench::bench::TrialResult;

use super::table::TASKS;

/// Whether `(ratio, score)` of `p` is beaten by `q`'s.
fn dominated(p: (f64, f64), q: (f64, f64)) -> bool {
    q.0 >= p.0 && q.1 >= p.1 && (q.0 > p.0 || q.1 > p.1)
}

/// Per task, the frontier's trials, most bytes first.
pub fn frontiers(trials: &[TrialResult]) -> BTreeMap<&str, Vec<&TrialResult>> {
    let mut out = BTreeMap::new();
    for task in TASKS {
        let of: Vec<&TrialResult> = trials.iter().filter(|t| t.task == task).collect();
        let point = |t: &TrialResult| (t.measured_ratio, t.score.mean);
        let mut front: Vec<&TrialResult> =
            of.iter().copied().filter(|p| !of.iter().any(|q| dominated(point(p), point(q)))).collect();
        front.sort_by(|a, b| a.measured_ratio.total_cmp(&b.measured_ratio).then(a.method.cmp(&b.method)));
        if !front.is_empty() {
            out.insert(task, front);
        }
    }
    out
}

/// The section.
pub fn section(trials: &[TrialResult]) -> String {
    let mut md = String::from(
        "\n## At equal bytes: the score-versus-bytes frontier\n\nPer task, the configurations that no other beats \
         at as few bytes or fewer: none holds fewer bytes (a higher steady ratio against fp16, as in Memory) with \
         as high a mean score. Listed by bytes, most first; every configuration off the list is beaten by one on it. \
         The frontier is of means: where intervals overlap, which is better is not established.\n\n\
         | task | steady ratio | configuration | kind | score ×100 [95% interval] | configurations it beats |\n\
         |---|---:|---|---|---|---:|\n",
    );
    for (task, front) in frontiers(trials) {
        let of: Vec<&TrialResult> = trials.iter().filter(|t| t.task == task).collect();
        for t in front {
            let beats = of
                .iter()
                .filter(|q| dominated((q.measured_ratio, q.score.mean), (t.measured_ratio, t.score.mean)))
                .count();
            let kind = kvbench::kv::methods::kind_of(&t.method)
                .and_then(|k| serde_json::to_value(k).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            md.push_str(&format!(
                "| {task} | {:.2}× | {} | {kind} | {:.1} [{:.1}, {:.1}] | {beats} |\n",
                t.measured_ratio,
                t.method,
                100.0 * t.score.mean,
                100.0 * t.score.lo,
                100.0 * t.score.hi
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::result;

    #[test]
    fn the_frontier_keeps_what_nothing_beats_at_fewer_bytes() {
        let at = |name: &str, ratio: f64, score: f64| TrialResult { measured_ratio: ratio, ..result(name, score) };
        let trials = vec![
            at("fp16::code", 1.0, 0.8),
            at("q8_0::code", 1.9, 0.8),      // beats fp16: same score, fewer bytes
            at("q4_0::code", 3.6, 0.6),      // on it: fewer bytes than q8_0
            at("kivi-4bit::code", 3.2, 0.5), // beaten by q4_0: more bytes, lower score
            at("h2o-8x::code", 8.0, 0.1),
            at("full::needle", 0.5, 1.0),
        ];
        let f = frontiers(&trials);
        let names: Vec<&str> = f["code"].iter().map(|t| t.method.as_str()).collect();
        assert_eq!(names, ["q8_0", "q4_0", "h2o-8x"]);
        assert_eq!(f["needle"].len(), 1);
        let md = section(&trials);
        assert!(md.contains("| code | 3.60× | q4_0 | quantizer | 60.0 ["), "{md}");
        // q8_0 beats fp16 alone; q4_0 beats kivi-4bit
        assert!(md.contains("| code | 1.90× | q8_0 | quantizer | 80.0 [") && md.contains("| 1 |\n"), "{md}");
    }
}
