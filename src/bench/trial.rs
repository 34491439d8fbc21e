//! One trial: a method over a task's recorded samples, scored, with its fidelity to the full
//! cache's recorded answer and the bytes it held.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::prefill_disk::{DiskPrefills, PrefillInputs};
use super::sequential::{Design, Sequential};
use super::stats::{self, Estimate};
use crate::kv::{Acts, KvCache, Method};
use crate::model::generate::{
    GenerateOptions, Mode, Prompt, SharedPrefill, answer_ended, argmax, check_prompt, log_softmax, shared_prefill,
    start,
};
use crate::model::session::{ModelError, Runtime};
use crate::tasks::Metric;
use crate::trace::{Trace, TraceSample};

/// One sample's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutcome {
    /// Sample id.
    pub id: String,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Needle depth in [0, 1] (needle samples only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    /// Task score in [0, 1].
    pub score: f64,
    /// The answer.
    pub prediction: String,
    /// Share of the reference answer's steps where the method's top-1 (teacher-forced) agrees.
    pub top1_agreement: f64,
    /// Mean over reference steps of KL(reference top-k ‖ method), in nats; `None` (`null`): not
    /// measured, the trace keeps no log-probs (`top_k` 0).
    pub kl: Option<f64>,
    /// fp16 full-cache bytes over the peak bytes held after compression (the steady state).
    pub measured_ratio: f64,
    /// Those peak bytes, as the cache's stores counted them (absent in results written before
    /// they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_bytes: Option<u64>,
    /// fp16 full-cache bytes over the peak bytes held at any step, prefill included: methods
    /// acting after prefill hold the whole fp32 prefill first (absent in older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ratio: Option<f64>,
    /// Bytes an fp16 full cache would read per step after prefill over the bytes attention
    /// read, summed over the steps: what retrieval (InfLLM, Quest) saves, which keeps every
    /// token but reads a budget (`None`: no such step, or an older result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ratio: Option<f64>,
    /// The smallest gap between the two largest logits over the answer's greedy steps: below
    /// [`super::golden::NEAR_TIE`], float noise alone may change the prediction (absent in
    /// older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Answer survival: the share of the answer's tokens in the context (the needle's number, a
    /// gold span found verbatim) that the cache still held when the answer was done (for
    /// retrieval, read at its last step), averaged over layers and kv heads. Absent where the
    /// answer is not a span of the context, and for methods that hold and read every token
    /// (quantizers, the full cache) or rewrite the prompt (prompt compression). It separates "the
    /// answer was evicted" from "kept but not used".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_kept: Option<f64>,
    /// Wall seconds of this sample in this run: its prefill, and its share of the decode steps
    /// it ran in a group with other samples (each step's time split evenly among the samples in
    /// it). Work shared between trials (a reused prefill, LLMLingua's scoring of a prompt its
    /// other ratios already scored) counts in the trial that did it, so this is the harness's
    /// cost, not the method's.
    pub seconds: f64,
}

impl SampleOutcome {
    /// This outcome without its wall time, the one field two runs of the same trial may differ in.
    pub fn timeless(&self) -> Self {
        Self { seconds: 0.0, ..self.clone() }
    }
}

/// A trial's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// `method::task`.
    pub trial: String,
    /// Method name.
    pub method: String,
    /// Its settings (its identity, [`Method::settings`]).
    pub settings: serde_json::Value,
    /// What it does, in words (empty in older results).
    #[serde(default)]
    pub description: String,
    /// Task name.
    pub task: String,
    /// Compression mode.
    pub mode: Mode,
    /// Task score with its 95% interval.
    pub score: Estimate,
    /// Mean top-1 agreement with the full cache.
    pub top1_agreement: f64,
    /// Mean KL to the full cache (`None`: not measured, see [`SampleOutcome::kl`]).
    pub kl: Option<f64>,
    /// Nominal ratio.
    pub nominal_ratio: Option<f64>,
    /// Mean measured ratio.
    pub measured_ratio: f64,
    /// Mean over samples of their peak bytes held after compression (absent if a sample's are,
    /// or there are no samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_peak_bytes: Option<f64>,
    /// Per sample: all of the trace's, or the first of them up to where a sequential design
    /// stopped the trial (see `sequential`).
    pub samples: Vec<SampleOutcome>,
    /// The sequential design the trial ran under, and where it stopped (`None`: it ran every
    /// sample with none, as `full` always does and every trial of the default tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<Sequential>,
    /// Seconds.
    pub seconds: f64,
    /// What it was computed from (set by the harness; empty in results written before it).
    #[serde(default)]
    pub provenance: Provenance,
}

impl TrialResult {
    /// The result of `trial` stored at `path` if it was computed from `provenance` in `mode`:
    /// `Ok(None)` when nothing is stored there, `Err(why)` when what is stored is not that.
    pub fn stored(path: &Path, trial: &str, provenance: &Provenance, mode: Mode) -> Result<Option<Self>, String> {
        let bytes = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            read => read.map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        };
        let result: Self = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let differs = if result.trial != trial {
            format!("it holds {}", result.trial)
        } else if result.provenance.build != provenance.build {
            "another build computed it".to_string()
        } else if result.provenance.trace != provenance.trace {
            "it replayed another trace".to_string()
        } else if result.mode != mode {
            format!("it ran in mode {:?}", result.mode)
        } else {
            return Ok(Some(result));
        };
        Err(format!("the stored result in {} is not this one: {differs}", path.display()))
    }
}

impl TrialResult {
    /// This result, if its trial ran under the design a run with `stopping` gives it
    /// ([`super::sequential::for_method`]): a result of another design holds other samples.
    pub fn under(self, stopping: Option<Design>) -> Result<Self, String> {
        let (ran, wanted) = (self.sequential.map(|s| s.design), super::sequential::for_method(stopping, &self.method));
        Err(match (ran, wanted) {
            _ if ran == wanted => return Ok(self),
            (None, _) => "it ran every sample, without this run's sequential design".into(),
            (Some(_), None) => "it ran under a sequential design, and this run stops no trial early".into(),
            (Some(d), Some(_)) => format!("it ran under another sequential design ({d:?})"),
        })
    }
}

/// What a trial result was computed from: the trial binary (sha256 of the executable) and the
/// trace (its [`Trace::hash`]). A resumed run reuses a stored result only when both match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// sha256 of the executable that ran the trial.
    pub build: String,
    /// sha256 of the trace it replayed.
    pub trace: String,
}

/// Full-precision prefills shared by the trials of methods acting after prefill: in memory
/// (up to [`MEMORY_LIMIT`] bytes) and, when given one, on disk ([`DiskPrefills`]). A miss only
/// costs a recomputation.
#[derive(Debug, Default)]
pub struct PrefillCache {
    entries: Mutex<Entries>,
    disk: Option<DiskPrefills>,
    counts: [AtomicUsize; 3],
}

/// The prefills by key, and the bytes they hold.
type Entries = (HashMap<PrefillKey, Arc<SharedPrefill>>, usize);

/// The model's GGUF sha256, prompt ids, context length, mode and chunk: what a prefill depends
/// on (one cache serves the trials of every model in the process).
type PrefillKey = (String, Vec<u32>, usize, Mode, usize);

/// Bytes of shared prefills kept in memory (about 40 prefills of 1,024 tokens). Once full, new
/// prefills are used but not kept: a trial cycles through its task's samples in order, which an
/// evict-oldest cache smaller than the cycle would turn into all misses.
const MEMORY_LIMIT: usize = 2 << 30;

/// How the prefills a [`PrefillCache`] handed out were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrefillCounts {
    /// Computed here.
    pub computed: usize,
    /// Found in memory.
    pub memory: usize,
    /// Read from disk.
    pub disk: usize,
}

impl PrefillCache {
    /// A cache in memory and in `disk`.
    pub fn with_disk(disk: DiskPrefills) -> Self {
        Self { disk: Some(disk), ..Self::default() }
    }

    /// How the prefills handed out so far were obtained.
    pub fn counts(&self) -> PrefillCounts {
        let [computed, memory, disk] = self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        PrefillCounts { computed, memory, disk }
    }

    fn get(
        &self,
        rt: &mut Runtime,
        prompt: &Prompt,
        options: GenerateOptions,
    ) -> Result<Arc<SharedPrefill>, ModelError> {
        let model = rt.gguf_sha256().to_string();
        let key = (model.clone(), prompt.ids.clone(), prompt.context, options.mode, options.chunk);
        if let Some(hit) = self.entries.lock().expect("prefill cache").0.get(&key) {
            self.counts[1].fetch_add(1, Ordering::Relaxed);
            return Ok(hit.clone());
        }
        let inputs = PrefillInputs::of(&model, prompt, &options);
        let made = match self.disk.as_ref().and_then(|d| d.load(&inputs)) {
            Some(found) => {
                self.counts[2].fetch_add(1, Ordering::Relaxed);
                Arc::new(found)
            }
            None => {
                let made = Arc::new(shared_prefill(rt, prompt, options)?);
                self.counts[0].fetch_add(1, Ordering::Relaxed);
                if let Some(disk) = &self.disk {
                    disk.store(&inputs, &made);
                }
                made
            }
        };
        let mut guard = self.entries.lock().expect("prefill cache");
        let (map, held) = &mut *guard;
        if *held + made.bytes() <= MEMORY_LIMIT && map.insert(key, made.clone()).is_none() {
            *held += made.bytes();
        }
        Ok(made)
    }
}

/// Run `method` over every sample of `trace`.
pub fn run(
    rt: &mut Runtime,
    method: &Arc<dyn Method>,
    trace: &Trace,
    mode: Mode,
    prefills: &PrefillCache,
) -> Result<TrialResult, ModelError> {
    run_with(rt, method, trace, prefills, TrialOptions::new(mode), |_| {})
}

/// How a trial runs, beyond its method and trace.
#[derive(Debug, Clone, Copy)]
pub struct TrialOptions {
    /// Compression mode.
    pub mode: Mode,
    /// The sequential design to stop under (see [`super::sequential`]; never applied to `full`,
    /// whose every sample the others are compared with).
    pub stopping: Option<Design>,
    /// Samples decoded together at most ([`BATCH`]; 1 decodes each alone, what batching must
    /// reproduce bit for bit, `tests/batched.rs`, and its speed's baseline, `cargo xtask
    /// trial-seconds`).
    pub batch: usize,
}

impl TrialOptions {
    /// In `mode`, every sample, in groups of [`BATCH`].
    pub fn new(mode: Mode) -> Self {
        Self { mode, stopping: None, batch: BATCH }
    }
}

/// [`run`] with `options`, handing each sample's outcome to `done` as it finishes (for progress).
pub fn run_with(
    rt: &mut Runtime,
    method: &Arc<dyn Method>,
    trace: &Trace,
    prefills: &PrefillCache,
    options: TrialOptions,
    mut done: impl FnMut(&SampleOutcome),
) -> Result<TrialResult, ModelError> {
    let TrialOptions { mode, stopping, batch } = options;
    let clock = Instant::now();
    // every sample is checked against the model before any is run, so that a bad one fails the
    // trial at once, not after the prefills of those before it (or its own)
    for sample in &trace.samples {
        check_sample(rt, sample, trace.header.chunk, mode)?;
    }
    let n_max = trace.samples.len();
    let design = super::sequential::for_method(stopping, &method.name());
    let mut sequential = design.map(|design| Sequential { design, of: n_max, stopped: None });
    // the full cache's score of each sample, as recorded: what `full` reproduces
    let full: Vec<f64> = trace.samples.iter().map(|s| s.meta.reference_score).collect();
    let mut samples = Vec::with_capacity(n_max);
    let mut scores = Vec::with_capacity(n_max);
    'groups: while samples.len() < n_max {
        let end = group_end(&trace.samples, samples.len(), batch);
        let group = &trace.samples[samples.len()..end];
        for outcome in run_group(rt, method, group, trace.header.chunk, mode, prefills)? {
            done(&outcome);
            scores.push(outcome.score);
            samples.push(outcome);
            if let Some(seq) = sequential.as_mut() {
                seq.stopped = seq.design.decide(&scores, &full[..scores.len()], n_max);
                if seq.stopped.is_some() {
                    break 'groups;
                }
            }
        }
    }
    let mean = |f: fn(&SampleOutcome) -> f64| samples.iter().map(f).sum::<f64>() / samples.len().max(1) as f64;
    Ok(TrialResult {
        trial: format!("{}::{}", method.name(), trace.header.task),
        method: method.name(),
        settings: method.settings(),
        description: method.description(),
        task: trace.header.task.clone(),
        mode,
        score: stats::estimate(&scores),
        top1_agreement: mean(|s| s.top1_agreement),
        kl: samples.iter().map(|s| s.kl).sum::<Option<f64>>().map(|total| total / samples.len().max(1) as f64),
        nominal_ratio: method.nominal_ratio(),
        measured_ratio: mean(|s| s.measured_ratio),
        mean_peak_bytes: samples
            .iter()
            .map(|s| s.peak_bytes.map(|b| b as f64))
            .sum::<Option<f64>>()
            .filter(|_| !samples.is_empty())
            .map(|total| total / samples.len() as f64),
        samples,
        sequential,
        seconds: clock.elapsed().as_secs_f64(),
        provenance: Provenance::default(),
    })
}

/// `sample`'s prompt and options, or an error naming it if they do not fit the model.
fn check_sample(rt: &Runtime, sample: &TraceSample, chunk: usize, mode: Mode) -> Result<(), ModelError> {
    let (prompt, options) = prompt_and_options(sample, chunk, mode)?;
    check_prompt(rt, &prompt, options).map_err(|e| ModelError::Invalid(format!("sample {}: {e}", sample.meta.id)))?;
    let vocab = rt.config().vocab;
    let outside = sample.reference_ids.iter().chain(sample.reference_topk.iter().flatten().map(|(id, _)| id));
    if let Some(id) = outside.copied().find(|&id| id as usize >= vocab) {
        return Err(ModelError::Invalid(format!(
            "sample {}: reference token {id} is outside the vocabulary of {vocab}",
            sample.meta.id
        )));
    }
    Ok(())
}

/// The prompt (context, then question) and generation options of `sample`.
fn prompt_and_options(sample: &TraceSample, chunk: usize, mode: Mode) -> Result<(Prompt, GenerateOptions), ModelError> {
    let meta = &sample.meta;
    if meta.context_len > sample.prompt_ids.len() {
        return Err(ModelError::Invalid(format!("sample {}: its context is longer than its prompt", meta.id)));
    }
    let prompt = Prompt::split(&sample.prompt_ids[..meta.context_len], &sample.prompt_ids[meta.context_len..]);
    let ended = meta.answer_end.rule();
    let options =
        GenerateOptions { max_new_tokens: meta.max_new_tokens, chunk, mode, ended, ..GenerateOptions::default() };
    Ok((prompt, options))
}

/// Samples decoded together at most: one graph run per step serves all of them, reading the
/// weights once. Groups never straddle a multiple of it, so that a sequential design's looks
/// (every 10 samples) fall between groups.
pub const BATCH: usize = 10;

/// Prompt tokens a group holds at most, summed over its samples: each lane keeps its own cache
/// (and, from its first disagreement with the reference, a snapshot of it), so eight-thousand-
/// token needles go two at a time.
const BATCH_TOKENS: usize = 20_000;

/// The end of the group of at most `batch` samples that starts at `from`.
fn group_end(samples: &[TraceSample], from: usize, batch: usize) -> usize {
    let limit = (from / batch.max(1) + 1) * batch.max(1);
    let mut tokens = 0;
    let mut end = from;
    while end < samples.len().min(limit) && (end == from || tokens + samples[end].prompt_ids.len() <= BATCH_TOKENS) {
        tokens += samples[end].prompt_ids.len();
        end += 1;
    }
    end
}

/// `samples` (a group, see [`group_end`]), each prefilled alone, then decoded together: every
/// step runs the decode graph once over the next token of each sample still decoding (see
/// [`Runtime::forward_lanes`]), which gives each the bits it would get alone.
fn run_group(
    rt: &mut Runtime,
    method: &Arc<dyn Method>,
    samples: &[TraceSample],
    chunk: usize,
    mode: Mode,
    prefills: &PrefillCache,
) -> Result<Vec<SampleOutcome>, ModelError> {
    let mut lanes = Vec::with_capacity(samples.len());
    for sample in samples {
        lanes.push(Lane::start(rt, method, sample, chunk, mode, prefills).map_err(|e| named(sample, e))?);
    }
    loop {
        let clock = Instant::now();
        let mut wanted = Vec::new();
        for (j, lane) in lanes.iter_mut().enumerate() {
            if let Some(step) = lane.advance(rt).map_err(|e| named(lane.sample, e))? {
                wanted.push((j, step));
            }
        }
        if wanted.is_empty() {
            break;
        }
        let mut caches: Vec<KvCache> =
            wanted.iter().map(|&(j, _)| lanes[j].cache.take().expect("a lane decoding holds its cache")).collect();
        let (ids, positions): (Vec<u32>, Vec<i64>) = wanted.iter().map(|&(_, step)| step).unzip();
        let stepped = rt.forward_lanes(&mut caches, &ids, &positions);
        let vocab = rt.config().vocab;
        let share = clock.elapsed().as_secs_f64() / wanted.len() as f64;
        for ((j, _), cache) in wanted.iter().zip(caches) {
            lanes[*j].cache = Some(cache);
        }
        let logits = stepped?;
        for (&(j, _), row) in wanted.iter().zip(logits.chunks_exact(vocab)) {
            lanes[j].logits = row.to_vec();
            lanes[j].seconds += share;
        }
    }
    lanes.into_iter().map(|lane| lane.outcome(rt)).collect()
}

/// `e`, naming the sample it happened on.
fn named(sample: &TraceSample, e: ModelError) -> ModelError {
    ModelError::Invalid(format!("sample {}: {e}", sample.meta.id))
}

/// One sample decoding in a group: greedy decoding, scored by the task; along the way, the
/// method's log-probs at the reference's steps while the two agree. At the first disagreement
/// the cache is snapshotted, so that after the greedy answer the reference can be
/// teacher-forced from there on.
struct Lane<'t> {
    sample: &'t TraceSample,
    metric: Metric,
    /// The sample's cache, between the group's steps.
    cache: Option<KvCache>,
    /// Prompt tokens as given, and as prefilled (after prompt compression).
    prompt_len: usize,
    prefilled_len: usize,
    after_compression: usize,
    max_new_tokens: usize,
    /// Where the answer ends besides stop tokens and the limit.
    ended: Option<fn(&str) -> bool>,
    /// The logits the next step of the lane reads.
    logits: Vec<f32>,
    output: Vec<u32>,
    forced_rows: Vec<Vec<f32>>,
    fork: Option<(usize, crate::kv::CacheSnapshot, Vec<f32>)>,
    margin: f64,
    /// Prompt positions of the answer's tokens in the context (empty where it is not a span of
    /// it, or the method rewrites the prompt).
    answer_positions: Vec<u32>,
    /// After the greedy answer: its outcome, KL and agreement to come.
    answered: Option<SampleOutcome>,
    /// Teacher-forcing the reference, at this step of it.
    forcing: Option<usize>,
    done: bool,
    seconds: f64,
}

impl<'t> Lane<'t> {
    fn start(
        rt: &mut Runtime,
        method: &Arc<dyn Method>,
        sample: &'t TraceSample,
        chunk: usize,
        mode: Mode,
        prefills: &PrefillCache,
    ) -> Result<Self, ModelError> {
        let clock = Instant::now();
        let metric: Metric = serde_json::from_value(sample.meta.metric.clone())
            .map_err(|e| ModelError::Invalid(format!("unknown metric: {e}")))?;
        let (prompt, options) = prompt_and_options(sample, chunk, mode)?;
        let shared = if method.acts() == Acts::AfterPrefill { Some(prefills.get(rt, &prompt, options)?) } else { None };
        rt.reset(method.clone())?;
        let prefilled = start(rt, &prompt, options, shared.as_deref())?;
        let answer_positions =
            if method.acts() == Acts::BeforePrefill { Vec::new() } else { answer_positions(rt, sample)? };
        Ok(Self {
            sample,
            metric,
            cache: Some(rt.take_cache()?),
            prompt_len: prompt.ids.len(),
            prefilled_len: prefilled.ids.len(),
            after_compression: prefilled.after_compression,
            max_new_tokens: options.max_new_tokens,
            ended: options.ended,
            logits: prefilled.logits,
            output: Vec::new(),
            forced_rows: Vec::new(),
            fork: None,
            margin: f64::INFINITY,
            answer_positions,
            answered: None,
            forcing: None,
            done: false,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }

    /// Go on from the logits last computed until a token must go through the model: that
    /// token and its position, or `None` when the lane is done.
    fn advance(&mut self, rt: &Runtime) -> Result<Option<(u32, i64)>, ModelError> {
        let reference = &self.sample.reference_ids;
        let n = self.prefilled_len;
        while !self.done {
            if let Some(i) = self.forcing {
                self.forced_rows.push(log_softmax(&self.logits));
                if i + 1 < reference.len() {
                    self.forcing = Some(i + 1);
                    return Ok(Some((reference[i], (n + i) as i64)));
                }
                self.done = true;
                break;
            }
            let (next, gap) = top_two_gap(&self.logits);
            self.margin = self.margin.min(gap);
            let i = self.output.len();
            if self.fork.is_none() && i < reference.len() {
                if next == reference[i] {
                    self.forced_rows.push(log_softmax(&self.logits));
                } else {
                    let snapshot = self.cache.as_ref().expect("a decoding lane holds its cache").snapshot();
                    self.fork = Some((i, snapshot, self.logits.clone()));
                }
            }
            self.output.push(next);
            let ended = self.ended.is_some_and(|ended| answer_ended(rt, &self.output, ended));
            if self.output.len() < self.max_new_tokens && !rt.tokenizer().is_stop(next) && !ended {
                return Ok(Some((next, (n + i) as i64)));
            }
            self.answered = Some(self.answer(rt)?);
            match self.fork.take() {
                Some((from, snapshot, logits)) => {
                    let cache = self.cache.as_mut().expect("a decoding lane holds its cache");
                    cache.restore(&snapshot).map_err(|e| ModelError::Invalid(e.to_string()))?;
                    self.logits = logits;
                    self.forcing = Some(from);
                }
                None => self.done = true,
            }
        }
        Ok(None)
    }

    /// The greedy answer's outcome, but for agreement and KL (see [`Self::outcome`]).
    fn answer(&self, rt: &Runtime) -> Result<SampleOutcome, ModelError> {
        let meta = &self.sample.meta;
        let stats = self.cache.as_ref().expect("a decoding lane holds its cache").stats();
        let fp16 = |tokens: usize| rt.config().fp16_kv_bytes(tokens);
        let fp16_full = fp16(self.prompt_len + self.output.len() - 1);
        let measured_ratio = fp16_full as f64 / stats.peak_bytes_after_prefill.max(1) as f64;
        // the one-token steps after compression, as the cache counts its reads: the held-back
        // prompt token (which sees the whole prefilled prompt and itself), then each decode step
        let n = self.prefilled_len;
        let seen =
            (self.after_compression == 1).then_some(n).into_iter().chain((0..self.output.len() - 1).map(|i| n + i + 1));
        let fp16_read: usize = seen.map(fp16).sum();
        let read_ratio = (stats.bytes_read > 0).then(|| fp16_read as f64 / stats.bytes_read as f64);
        let shown: Vec<u32> = self.output.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
        let prediction = rt.tokenizer().decode(&shown)?;
        Ok(SampleOutcome {
            id: meta.id.clone(),
            prompt_len: meta.prompt_len,
            depth: meta.info.get("depth").and_then(serde_json::Value::as_f64),
            score: self.metric.score(&prediction, &meta.answers),
            prediction,
            top1_agreement: 1.0,
            kl: None,
            measured_ratio,
            peak_bytes: Some(stats.peak_bytes_after_prefill as u64),
            peak_ratio: Some(fp16_full as f64 / stats.peak_bytes.max(1) as f64),
            read_ratio,
            margin: self.margin.is_finite().then_some(self.margin),
            answer_kept: answer_kept(
                self.cache.as_ref().expect("a decoding lane holds its cache"),
                &self.answer_positions,
            ),
            seconds: 0.0,
        })
    }

    /// The finished lane's outcome, with agreement and KL over the reference's steps.
    fn outcome(self, rt: &Runtime) -> Result<SampleOutcome, ModelError> {
        let answered = match self.answered {
            Some(a) => a,
            None => self.answer(rt)?,
        };
        let (mut agree, mut kl) = (0.0, 0.0);
        let sample = self.sample;
        for ((row, &id), topk) in self.forced_rows.iter().zip(&sample.reference_ids).zip(&sample.reference_topk) {
            agree += f64::from(u8::from(argmax(row) == id));
            // ids were checked against the vocabulary in `check_sample`
            kl += topk.iter().map(|&(t, lp)| (lp as f64).exp() * (lp as f64 - row[t as usize] as f64)).sum::<f64>();
        }
        let measured_kl = sample.reference_topk.iter().any(|step| !step.is_empty());
        let steps = self.forced_rows.len().max(1) as f64;
        Ok(SampleOutcome {
            top1_agreement: if self.forced_rows.is_empty() { 1.0 } else { agree / steps },
            kl: measured_kl.then_some(kl / steps),
            seconds: self.seconds,
            ..answered
        })
    }
}

/// Where the first of the sample's answers that is a span of its context sits in the prompt
/// (its tokens as the tokenizer writes it alone or after a space); empty if none is.
fn answer_positions(rt: &Runtime, sample: &TraceSample) -> Result<Vec<u32>, ModelError> {
    let context = &sample.prompt_ids[..sample.meta.context_len.min(sample.prompt_ids.len())];
    for answer in sample.meta.answers.iter().filter(|a| !a.trim().is_empty()) {
        for text in [answer.clone(), format!(" {}", answer.trim_start())] {
            let ids = rt.tokenizer().encode_more(&text).map_err(|e| ModelError::Invalid(e.to_string()))?;
            if ids.is_empty() || ids.len() > context.len() {
                continue;
            }
            if let Some(at) = context.windows(ids.len()).position(|w| w == ids.as_slice()) {
                return Ok((at as u32..(at + ids.len()) as u32).collect());
            }
        }
    }
    Ok(Vec::new())
}

/// The share of `positions` the cache's layers hold (or last read), averaged over layers and kv
/// heads; `None` without positions, or where no layer says which tokens it holds or reads.
fn answer_kept(cache: &KvCache, positions: &[u32]) -> Option<f64> {
    if positions.is_empty() {
        return None;
    }
    let (mut kept, mut heads) = (0.0, 0usize);
    for l in 0..cache.layers() {
        let store = cache.layer(l)?;
        for g in 0.. {
            let Some(held) = store.held(g).or_else(|| store.visible(g)) else { break };
            let held: std::collections::HashSet<u32> = held.into_iter().collect();
            kept += positions.iter().filter(|p| held.contains(p)).count() as f64 / positions.len() as f64;
            heads += 1;
        }
    }
    (heads > 0).then(|| kept / heads as f64)
}

/// The greedy choice (as [`argmax`]: the first of equal maxima) and its lead over the runner-up,
/// in logits, in one pass over the vocabulary (it runs at every decode step).
fn top_two_gap(logits: &[f32]) -> (u32, f64) {
    let (mut best, mut second) = (0, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate().skip(1) {
        if x > logits[best] {
            second = logits[best];
            best = i;
        } else if x > second {
            second = x;
        }
    }
    (best as u32, f64::from(logits[best]) - f64::from(second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_the_lead_over_the_runner_up() {
        assert_eq!(top_two_gap(&[0.5, 2.0, 1.25, -3.0]), (1, 0.75));
        assert_eq!(top_two_gap(&[1.0, 1.0]), (0, 0.0), "a tie has no margin");
        assert_eq!(top_two_gap(&[3.0, 1.0, 2.0]), (0, 1.0));
        for logits in [[0.5f32, 2.0, 1.25, -3.0], [-1.0, -1.0, 4.0, 4.0]] {
            assert_eq!(top_two_gap(&logits).0, argmax(&logits), "the same choice as argmax");
        }
    }

    #[test]
    fn a_stored_result_is_reused_only_for_its_own_trial_build_trace_and_mode() {
        let dir = std::env::temp_dir().join(format!("kvbench-stored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("full__code.json");
        let provenance = Provenance { build: "b".repeat(64), trace: "t".repeat(64) };
        let result = TrialResult {
            trial: "full::code".into(),
            method: "full".into(),
            settings: serde_json::json!({}),
            description: "the full cache".into(),
            task: "code".into(),
            mode: Mode::QueryAware,
            score: stats::estimate(&[0.4, 0.5, 0.6]),
            top1_agreement: 0.1 + 0.2,
            kl: Some(1.0 / 3.0),
            nominal_ratio: None,
            measured_ratio: 1.0,
            mean_peak_bytes: None,
            samples: Vec::new(),
            sequential: None,
            seconds: 1.5,
            provenance: provenance.clone(),
        };
        // a result is reused only under the design it ran under; `full` never has one
        let design = super::super::sequential::full_tier();
        let ran = TrialResult { sequential: Some(Sequential { design, of: 3, stopped: None }), ..result.clone() };
        let code = TrialResult { trial: "h2o-2x::code".into(), method: "h2o-2x".into(), ..ran.clone() };
        assert!(code.clone().under(Some(design)).is_ok());
        assert!(code.under(None).unwrap_err().contains("stops no trial early"));
        assert!(result.clone().under(Some(design)).is_ok(), "full runs every sample under any design");
        let h2o = TrialResult { method: "h2o-2x".into(), ..result.clone() };
        assert!(h2o.under(Some(design)).unwrap_err().contains("every sample"));
        let stored = |trial: &str, p: &Provenance, mode: Mode| TrialResult::stored(&path, trial, p, mode);
        assert!(matches!(stored("full::code", &provenance, Mode::QueryAware), Ok(None)), "nothing stored yet");
        std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
        let back = stored("full::code", &provenance, Mode::QueryAware).unwrap().expect("same everything");
        // every float comes back with its bits
        let bits =
            |r: &TrialResult| [r.score.mean, r.score.lo, r.score.hi, r.top1_agreement, r.kl.unwrap()].map(f64::to_bits);
        assert_eq!((back.trial.as_str(), bits(&back), back.seconds), ("full::code", bits(&result), 1.5));
        let other_build = Provenance { build: "c".repeat(64), ..provenance.clone() };
        let other_trace = Provenance { trace: "u".repeat(64), ..provenance.clone() };
        let why = |r: Result<Option<TrialResult>, String>| r.expect_err("not reusable");
        assert!(why(stored("full::needle", &provenance, Mode::QueryAware)).contains("holds full::code"));
        assert!(why(stored("full::code", &other_build, Mode::QueryAware)).contains("another build"));
        assert!(why(stored("full::code", &other_trace, Mode::QueryAware)).contains("another trace"));
        assert!(why(stored("full::code", &provenance, Mode::QueryAgnostic)).contains("mode"));
        // a result written before provenance was recorded, or a truncated file, is never reused
        let mut old = serde_json::to_value(&result).unwrap();
        old.as_object_mut().unwrap().remove("provenance");
        std::fs::write(&path, old.to_string()).unwrap();
        assert!(why(stored("full::code", &provenance, Mode::QueryAware)).contains("another build"));
        let json = serde_json::to_vec(&result).unwrap();
        std::fs::write(&path, &json[..json.len() / 2]).unwrap();
        assert!(why(stored("full::code", &provenance, Mode::QueryAware)).contains("full__code.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
