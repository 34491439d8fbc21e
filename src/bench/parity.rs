//! The kvpress parity fixture checked against kvbench's methods on the default tier's recorded
//! probes ([`crate::eval::parity`] holds the fixture's types and the comparison; reading the
//! traces is this layer's).

use std::sync::{Arc, OnceLock};

use crate::eval::fidelity::Recorded;
use crate::eval::parity::{self, Fixture, Outcome};
use crate::kv::out_proj::OutProjection;

/// A task's default-tier trace and its first sample's probe recording (what the parity fixtures
/// are made from and checked on), with SmolLM2's output projections attached (CriticalKV's).
pub fn default_probe(task: crate::tasks::Task) -> Result<(crate::trace::Trace, Recorded), String> {
    let path = crate::bench::Tier::Default.trace_path(crate::model::pinned::Pinned::Smollm2, task);
    let trace = crate::trace::Trace::read(&path, None).map_err(|e| e.to_string())?;
    let recorded = trace
        .probe_recordings()
        .and_then(|r| r.into_iter().next())
        .ok_or_else(|| format!("{}: no probe (record the default tier: `cargo xtask record`)", path.display()))?;
    Ok((trace, recorded.with_out_proj(&smollm2_out_projections()?)))
}

/// SmolLM2's attention output projections (the probes are SmolLM2's), read once.
pub fn smollm2_out_projections() -> Result<Vec<Option<Arc<OutProjection>>>, String> {
    static PROJECTIONS: OnceLock<Result<Vec<Option<Arc<OutProjection>>>, String>> = OnceLock::new();
    PROJECTIONS
        .get_or_init(|| {
            let gguf = crate::assets::smollm2_gguf().map_err(|e| e.to_string())?;
            crate::model::session::out_projections_of(&gguf).map_err(|e| e.to_string())
        })
        .clone()
}

/// A task's DuoAttention head scores: (task, kvpress's, kvbench's), one per kv head.
pub type Reach = (String, Vec<f32>, Vec<f32>);

/// Per task of `fixture` that has them, kvpress's DuoAttention head scores and kvbench's
/// ([`duoattention::reach`](crate::kv::methods::duoattention::reach)) on the same probe.
pub fn duo_reach(fixture: &Fixture) -> Result<Vec<Reach>, String> {
    let mut out = Vec::new();
    for cases in fixture.tasks.iter().filter(|c| !c.duo_reach.is_empty()) {
        let task = crate::tasks::Task::from_name(&cases.task).map_err(|e| e.to_string())?;
        let (trace, recorded) = default_probe(task)?;
        let layer = recorded.layer_ids.iter().position(|&l| l == cases.layer).ok_or("the layer is not probed")?;
        let prefills = recorded.full_prefills(trace.header.chunk);
        let ours = crate::kv::methods::duoattention::reach(&prefills[layer]);
        out.push((cases.task.clone(), cases.duo_reach.clone(), ours));
    }
    Ok(out)
}

/// Every case of `fixture` compared with kvbench's methods replayed on the default tier's probes
/// (the traces the fixture was made from).
pub fn check(fixture: &Fixture) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::new();
    for cases in &fixture.tasks {
        let task = crate::tasks::Task::from_name(&cases.task).map_err(|e| e.to_string())?;
        let path = crate::bench::Tier::Default.trace_path(crate::model::pinned::Pinned::Smollm2, task);
        let (trace, recorded) = default_probe(task)?;
        let layer = recorded.layer_ids.iter().position(|&l| l == cases.layer).ok_or_else(|| {
            format!("{}: layer {} not probed (re-run `cargo xtask kvpress-parity`)", path.display(), cases.layer)
        })?;
        if recorded.prompt != cases.prompt {
            return Err(format!(
                "{}: a {}-token prompt, the fixture's is {}: the trace changed since `cargo xtask kvpress-parity`",
                path.display(),
                recorded.prompt,
                cases.prompt
            ));
        }
        let prefills = recorded.full_prefills(trace.header.chunk);
        for case in &cases.cases {
            let method = crate::kv::methods::by_name(&case.method).map_err(|e| e.to_string())?;
            let held = recorded.held_after_prefill(method.as_ref(), &prefills, trace.header.chunk, case.of);
            outcomes.push(parity::compare(&cases.task, case, &held[layer]));
        }
    }
    Ok(outcomes)
}
