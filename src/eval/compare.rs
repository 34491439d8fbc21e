//! Run one prompt through many methods and tabulate what each kept, read and answered: the
//! through-the-model check of the methods (`kvbench compare`).
//!
//! Methods that act after prefill share one full-precision prefill ([`shared_prefill`]); the
//! others prefill again. Each row reports the nominal ratio, the measured ratio (fp16 full-cache
//! bytes over the peak bytes held after compression), the ratio of bytes read per decode step,
//! the answer, and whether it contains the expected text.

use serde::Serialize;

use crate::kv::{Acts, methods};
use crate::model::generate::{GenerateOptions, Prompt, SharedPrefill, generate_shared, shared_prefill};
use crate::model::session::{ModelError, Runtime};

/// One method's run.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRun {
    /// Method name.
    pub method: String,
    /// Nominal ratio, where the method has one.
    pub nominal_ratio: Option<f64>,
    /// fp16 full-cache bytes over the peak bytes held after compression.
    pub measured_ratio: f64,
    /// fp16 full-cache bytes per decode step over the bytes attention read per step.
    pub read_ratio: f64,
    /// Peak bytes held after compression.
    pub bytes_after_prefill: usize,
    /// Mean bytes read per decode step.
    pub bytes_read_per_step: f64,
    /// Prompt tokens prefilled (fewer than the prompt's for prompt compression).
    pub prefilled_tokens: usize,
    /// The answer, stop tokens removed.
    pub text: String,
    /// Whether `text` contains the expected answer, if one was given.
    pub found: Option<bool>,
    /// Whether the full-precision prefill was shared rather than recomputed.
    pub shared_prefill: bool,
    /// Seconds of the shared prefill this run restored (computed once, before the first shared
    /// run, and not in `seconds`); `None` when the method prefilled itself.
    pub shared_prefill_seconds: Option<f64>,
    /// Seconds of prefill (zero-ish when shared) and of decode.
    pub seconds: (f64, f64),
}

/// Run `names` on `prompt`; call `progress` after each.
pub fn compare(
    rt: &mut Runtime,
    prompt: &Prompt,
    names: &[String],
    options: GenerateOptions,
    expect: Option<&str>,
    mut progress: impl FnMut(&MethodRun),
) -> Result<Vec<MethodRun>, ModelError> {
    let mut shared: Option<SharedPrefill> = None;
    let mut runs = Vec::new();
    for name in names {
        let method = methods::by_name(name).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let share = method.acts() == Acts::AfterPrefill;
        if share && shared.is_none() {
            shared = Some(shared_prefill(rt, prompt, options)?);
        }
        rt.reset(method.clone())?;
        let g = generate_shared(rt, prompt, options, if share { shared.as_ref() } else { None })?;
        let shown: Vec<u32> = g.output_ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
        let text = rt.tokenizer().decode(&shown)?;
        // an fp16 cache's bytes over the decode steps, on average (linear in the tokens for a
        // model without local layers; exact there)
        let fp16 = |tokens: usize| rt.config().fp16_kv_bytes(tokens) as f64;
        let fp16_mean = (fp16(prompt.ids.len()) + fp16(prompt.ids.len() + g.decode_steps)) / 2.0;
        let run = MethodRun {
            method: method.name(),
            nominal_ratio: method.nominal_ratio(),
            measured_ratio: g.measured_ratio(),
            read_ratio: if g.bytes_read_per_step() > 0.0 { fp16_mean / g.bytes_read_per_step() } else { 0.0 },
            bytes_after_prefill: g.cache.peak_bytes_after_prefill,
            bytes_read_per_step: g.bytes_read_per_step(),
            prefilled_tokens: g.prefilled_ids.len(),
            found: expect.map(|e| text.contains(e)),
            text,
            shared_prefill: share,
            shared_prefill_seconds: if share { shared.as_ref().map(|s| s.seconds) } else { None },
            seconds: (g.prefill_seconds, g.decode_seconds),
        };
        progress(&run);
        runs.push(run);
    }
    Ok(runs)
}

/// The markdown table of `runs`.
pub fn markdown(runs: &[MethodRun]) -> String {
    let mut out = String::from(
        "| method | nominal | measured (held) | read per step | answer | found |\n|---|---:|---:|---:|---|:-:|\n",
    );
    for r in runs {
        let nominal = r.nominal_ratio.map_or("—".to_string(), |n| format!("{n:.2}×"));
        let found = match r.found {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        let answer = r.text.trim().replace('|', "\\|").replace('\n', " ");
        out.push_str(&format!(
            "| {} | {nominal} | {:.2}× | {:.2}× | {} | {found} |\n",
            r.method,
            r.measured_ratio,
            r.read_ratio,
            answer.chars().take(40).collect::<String>()
        ));
    }
    out
}
