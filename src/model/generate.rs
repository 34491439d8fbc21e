//! Chunked prefill and greedy decoding: the one generation path the CLI and the benchmark use.
//!
//! The prompt is fed in chunks of [`GenerateOptions::chunk`] tokens (logits only for the last
//! row), the cache is told that prefill ended, and tokens are then decoded one at a time by
//! argmax until `max_new_tokens` or a stop token. Times are measured around the graph runs, so
//! the tokens/s figures are the engine's, not the tokenizer's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::session::{ModelError, Runtime};
use crate::codec;
use crate::kv::methods::Full;
use crate::kv::{Acts, CacheSnapshot, CacheStats, Phase, PromptCompressor, PromptScorer, ScorerError};

/// What a method sees before it compresses, and what then goes through the compressed cache.
///
/// In every mode but the legacy one, every answer token, the first included, comes from
/// attention over what the method kept: the prompt's last token is never part of the prefill a
/// method compresses, but is fed through the compressed cache after it (with the question, when
/// query-agnostic). Methods that act after prefill and those that act during it are then
/// measured the same way (docs/METHODS.md, "Where the first answer token comes from").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The whole prompt, question included, but its last token is prefilled before the method
    /// compresses (the reference study's setting); the last token is then fed through the
    /// compressed cache.
    #[default]
    QueryAware,
    /// The context is compressed before the question is appended, as when a cached context is
    /// reused for questions not yet known.
    QueryAgnostic,
    /// Query-aware, but the whole prompt is prefilled and the first answer token taken from the
    /// uncompressed prefill's logits; only the later tokens see the compressed cache. kvbench's
    /// behaviour before 2026-12 (and that of `docs/report-full-legacy`), kept to
    /// measure what the difference does: it favours methods that act after prefill, since those
    /// acting during prefill get no such uncompressed first token.
    QueryAwareUncompressedFirstToken,
}

impl Mode {
    /// Every mode, the default first.
    pub const ALL: [Mode; 3] = [Mode::QueryAware, Mode::QueryAgnostic, Mode::QueryAwareUncompressedFirstToken];

    /// The name on the command line, in results and in `KVBENCH_MODE` (`query-aware`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::QueryAware => "query-aware",
            Mode::QueryAgnostic => "query-agnostic",
            Mode::QueryAwareUncompressedFirstToken => "query-aware-uncompressed-first-token",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Mode> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// A small integer for binary encodings (the prefill cache's keys and files).
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The mode of [`Self::code`].
    pub fn from_code(code: u64) -> Option<Mode> {
        Self::ALL.into_iter().find(|m| m.code() == code)
    }
}

/// A prompt: `ids` is the context followed by the question; `context` tokens are context.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// All prompt ids.
    pub ids: Vec<u32>,
    /// Length of the context prefix of `ids`.
    pub context: usize,
}

impl Prompt {
    /// A prompt with no separate question: all of it is context.
    pub fn whole(ids: &[u32]) -> Self {
        Self { ids: ids.to_vec(), context: ids.len() }
    }

    /// Context then question.
    pub fn split(context: &[u32], question: &[u32]) -> Self {
        Self { ids: [context, question].concat(), context: context.len() }
    }
}

/// Generation settings.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Prefill chunk size in tokens.
    pub chunk: usize,
    /// Keep decoding past stop tokens (to time a fixed number of steps).
    pub ignore_eos: bool,
    /// Query-aware or query-agnostic compression.
    pub mode: Mode,
    /// Log-probs to keep per generated token (0: none).
    pub top_k: usize,
    /// Whether the answer has ended, given its text so far (stop tokens left out), besides stop
    /// tokens and the limit: a base model's, which never ends its turn (`tasks::AnswerEnd`).
    pub ended: Option<fn(&str) -> bool>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 16, chunk: 512, ignore_eos: false, mode: Mode::QueryAware, top_k: 0, ended: None }
    }
}

/// What one generation produced, and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The prompt's token ids, as given.
    pub prompt_ids: Vec<u32>,
    /// The ids prefilled: the prompt after prompt compression (the prompt otherwise).
    pub prefilled_ids: Vec<u32>,
    /// Generated ids, including a final stop token if one was produced.
    pub output_ids: Vec<u32>,
    /// Per generated token, the top-k `(id, log-prob)` (with [`GenerateOptions::top_k`]).
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Seconds spent in prefill (prompt compression's scoring included).
    pub prefill_seconds: f64,
    /// Whether the prefill was a [`SharedPrefill`]'s, restored instead of computed.
    pub reused_prefill: bool,
    /// Seconds spent in decode steps (every token after the first).
    pub decode_seconds: f64,
    /// Decode steps run.
    pub decode_steps: usize,
    /// Peak bytes the cache held.
    pub peak_cache_bytes: usize,
    /// The cache's statistics.
    pub cache: CacheStats,
    /// Bytes an fp16 full cache would have held at the end (the prompt as given, every token).
    pub fp16_full_bytes: usize,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill_seconds.max(f64::MIN_POSITIVE)
    }

    /// Decode steps per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_steps == 0 { 0.0 } else { self.decode_steps as f64 / self.decode_seconds }
    }

    /// Full fp16 bytes over the peak bytes held once the method had compressed.
    pub fn measured_ratio(&self) -> f64 {
        self.fp16_full_bytes as f64 / self.cache.peak_bytes_after_prefill.max(1) as f64
    }

    /// Mean bytes attention read per decode step, all layers.
    pub fn bytes_read_per_step(&self) -> f64 {
        if self.cache.decode_steps == 0 { 0.0 } else { self.cache.bytes_read as f64 / self.cache.decode_steps as f64 }
    }
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Feed `ids` at positions from `start` in chunks; return the last row's logits.
pub fn feed(rt: &mut Runtime, ids: &[u32], start: usize, chunk: usize) -> Result<Vec<f32>, ModelError> {
    let chunk = chunk.max(1);
    let mut logits = Vec::new();
    for (c, part) in ids.chunks(chunk).enumerate() {
        let positions: Vec<i64> = (0..part.len()).map(|j| (start + c * chunk + j) as i64).collect();
        logits = rt.forward(part, &positions, &[part.len() as i64 - 1])?;
    }
    Ok(logits)
}

/// Prefill `prompt_ids` into a fresh sequence of the runtime's method and end prefill; return the
/// last row's logits.
pub fn prefill(rt: &mut Runtime, prompt_ids: &[u32], chunk: usize) -> Result<Vec<f32>, ModelError> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Invalid("the prompt is empty".into()));
    }
    rt.lock_cache()?.begin(prompt_ids.len());
    let logits = feed(rt, prompt_ids, 0, chunk)?;
    rt.lock_cache()?.end_prefill();
    Ok(logits)
}

/// Greedy generation of a whole prompt, query-aware (the caller picks the method with
/// [`Runtime::reset`]).
pub fn generate(rt: &mut Runtime, prompt_ids: &[u32], options: GenerateOptions) -> Result<Generation, ModelError> {
    generate_prompt(rt, &Prompt::whole(prompt_ids), options)
}

/// Whether the answer `ids` (stop tokens left out of its text) has ended by `ended`.
pub fn answer_ended(rt: &Runtime, ids: &[u32], ended: fn(&str) -> bool) -> bool {
    let shown: Vec<u32> = ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
    rt.tokenizer().decode(&shown).is_ok_and(|text| ended(&text))
}

/// The full cache's greedy answer to `ids` (at most `max_new_tokens`, ending where `ended` says
/// if given, chunks of 512), as text without stop tokens: how task calibration and the traces'
/// baselines answer.
pub fn full_cache_answer(
    rt: &mut Runtime,
    ids: &[u32],
    max_new_tokens: usize,
    ended: Option<fn(&str) -> bool>,
) -> Result<String, ModelError> {
    rt.reset(Arc::new(Full))?;
    let options = GenerateOptions { max_new_tokens, chunk: 512, ended, ..GenerateOptions::default() };
    let generation = generate(rt, ids, options)?;
    let shown: Vec<u32> = generation.output_ids.into_iter().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
    Ok(rt.tokenizer().decode(&shown)?)
}

/// A full-precision prefill of a prompt's compressed part, kept to serve every method that acts
/// after prefill ("prefill once, replay many").
#[derive(Debug, Clone)]
pub struct SharedPrefill {
    snapshot: CacheSnapshot,
    logits: Vec<f32>,
    ids: Vec<u32>,
    compressed: usize,
    mode: Mode,
    /// Seconds the prefill took.
    pub seconds: f64,
}

/// Prefill `prompt`'s compressed part (all of it query-aware, the context query-agnostic) with the
/// full cache and keep it. The runtime's method is left at `full`.
pub fn shared_prefill(
    rt: &mut Runtime,
    prompt: &Prompt,
    options: GenerateOptions,
) -> Result<SharedPrefill, ModelError> {
    check_prompt(rt, prompt, options)?;
    let start = Instant::now();
    rt.reset(Arc::new(Full))?;
    let compressed = compressed_len(prompt, options.mode);
    rt.lock_cache()?.begin(compressed);
    let logits = feed(rt, &prompt.ids[..compressed], 0, options.chunk)?;
    let snapshot = rt.lock_cache()?.snapshot();
    Ok(SharedPrefill {
        snapshot,
        logits,
        ids: prompt.ids.clone(),
        compressed,
        mode: options.mode,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl SharedPrefill {
    /// Encode bit-exactly (for the prefill cache on disk, [`crate::bench::prefill_disk`]); `None`
    /// if its snapshot is not a full-precision prefill.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.snapshot.bytes() * 11 / 10 + 4 * self.logits.len());
        codec::put_u64(&mut out, self.compressed as u64);
        codec::put_u64(&mut out, self.mode.code());
        codec::put_u64(&mut out, self.seconds.to_bits());
        codec::put_u32s(&mut out, &self.ids);
        codec::put_f32s(&mut out, &self.logits);
        self.snapshot.encode_prefill(&mut out)?;
        Some(out)
    }

    /// What [`Self::encode`] wrote; `None` if the bytes do not hold it.
    pub fn decode(mut input: &[u8]) -> Option<Self> {
        let compressed = codec::take_usize(&mut input)?;
        let mode = Mode::from_code(codec::take_u64(&mut input)?)?;
        let seconds = f64::from_bits(codec::take_u64(&mut input)?);
        let ids = codec::take_u32s(&mut input)?;
        let logits = codec::take_f32s(&mut input)?;
        let snapshot = CacheSnapshot::decode_prefill(&mut input)?;
        let consistent = input.is_empty()
            && compressed <= ids.len()
            && !logits.is_empty()
            && snapshot.is_shared_prefill_of(compressed);
        consistent.then_some(Self { snapshot, logits, ids, compressed, mode, seconds })
    }

    /// The prompt ids it was made for.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The mode it was made for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes it holds (keys, values and logits).
    pub fn bytes(&self) -> usize {
        self.snapshot.bytes() + 4 * self.logits.len()
    }
}

/// How many of `prompt`'s tokens are prefilled before the method compresses: the context when
/// query-agnostic (if a question follows it), all but the last token otherwise (all of a
/// one-token prompt), all of them in the legacy mode. The rest is fed through the compressed
/// cache.
fn compressed_len(prompt: &Prompt, mode: Mode) -> usize {
    let n = prompt.ids.len();
    match mode {
        Mode::QueryAgnostic if prompt.context < n => prompt.context,
        Mode::QueryAwareUncompressedFirstToken => n,
        Mode::QueryAware | Mode::QueryAgnostic => n.saturating_sub(1).max(1),
    }
}

/// Greedy generation of a context-and-question prompt in the options' [`Mode`].
pub fn generate_prompt(rt: &mut Runtime, prompt: &Prompt, options: GenerateOptions) -> Result<Generation, ModelError> {
    generate_shared(rt, prompt, options, None)
}

/// [`generate_prompt`], starting from `shared` instead of prefilling when the runtime's method
/// acts after prefill and `shared` was made for the same prompt and mode (otherwise `shared` is
/// ignored). The generation's prefill time is then zero.
pub fn generate_shared(
    rt: &mut Runtime,
    prompt: &Prompt,
    options: GenerateOptions,
    shared: Option<&SharedPrefill>,
) -> Result<Generation, ModelError> {
    let prefilled = start(rt, prompt, options, shared)?;
    decode(rt, &prefilled, options)
}

/// A prompt prefilled into the runtime's cache (compressed as its method does), ready to decode.
#[derive(Debug, Clone)]
pub struct Prefilled {
    /// The prompt as given.
    pub prompt: Prompt,
    /// The ids prefilled (after prompt compression).
    pub ids: Vec<u32>,
    /// Logits of the last prompt position.
    pub logits: Vec<f32>,
    /// Prompt tokens fed through the compressed cache, after the method compressed (the last
    /// token, or the question when query-agnostic; none in the legacy mode).
    pub after_compression: usize,
    /// Whether the prefill was a [`SharedPrefill`]'s, restored instead of computed.
    pub reused: bool,
    /// Seconds it took.
    pub seconds: f64,
}

/// An error unless `prompt` and `options` fit the runtime's model: a prompt that is not empty,
/// whose context is a prefix of it, of known tokens, that with `max_new_tokens` more fits the
/// context window, and a prefill chunk of at least one token. Checked before any work is done.
pub fn check_prompt(rt: &Runtime, prompt: &Prompt, options: GenerateOptions) -> Result<(), ModelError> {
    let config = rt.config();
    if prompt.ids.is_empty() || prompt.context > prompt.ids.len() {
        return Err(ModelError::Invalid("the prompt is empty or its context longer than itself".into()));
    }
    if let Some(&bad) = prompt.ids.iter().find(|&&id| id as usize >= config.vocab) {
        return Err(ModelError::Invalid(format!("token id {bad} is outside the vocabulary of {}", config.vocab)));
    }
    if prompt.ids.len().checked_add(options.max_new_tokens).is_none_or(|total| total > config.context) {
        return Err(ModelError::Invalid(format!(
            "prompt of {} tokens plus {} new tokens exceeds the model's context of {}",
            prompt.ids.len(),
            options.max_new_tokens,
            config.context
        )));
    }
    if options.chunk == 0 {
        return Err(ModelError::Invalid("the prefill chunk must be at least one token".into()));
    }
    Ok(())
}

/// Prefill `prompt` with the runtime's method (reusing `shared` where it applies, see
/// [`generate_shared`]) and end prefill.
pub fn start(
    rt: &mut Runtime,
    prompt: &Prompt,
    options: GenerateOptions,
    shared: Option<&SharedPrefill>,
) -> Result<Prefilled, ModelError> {
    check_prompt(rt, prompt, options)?;
    let method = rt.lock_cache()?.method().clone();
    let clock = Instant::now();
    let prefilled = match method.phase() {
        Phase::BeforePrefill(compressor) => {
            let kept = compress_prompt(rt, compressor, prompt, options)?;
            rt.reset(method.clone())?;
            kept
        }
        _ => prompt.clone(),
    };
    let compressed = compressed_len(&prefilled, options.mode);
    let reuse = shared.filter(|s| {
        method.acts() == Acts::AfterPrefill
            && s.ids == prefilled.ids
            && s.compressed == compressed
            && s.mode == options.mode
    });
    let reused = reuse.is_some();
    let mut logits = match reuse {
        Some(s) => {
            rt.lock_cache()?.restore(&s.snapshot).map_err(|e| ModelError::Invalid(e.to_string()))?;
            s.logits.clone()
        }
        None => {
            rt.lock_cache()?.begin(compressed);
            feed(rt, &prefilled.ids[..compressed], 0, options.chunk)?
        }
    };
    rt.lock_cache()?.end_prefill();
    if compressed < prefilled.ids.len() {
        logits = feed(rt, &prefilled.ids[compressed..], compressed, options.chunk)?;
    }
    Ok(Prefilled {
        prompt: prompt.clone(),
        after_compression: prefilled.ids.len() - compressed,
        reused,
        ids: prefilled.ids,
        logits,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

/// Greedy decoding after [`start`].
pub fn decode(rt: &mut Runtime, prefilled: &Prefilled, options: GenerateOptions) -> Result<Generation, ModelError> {
    let mut output_ids = Vec::with_capacity(options.max_new_tokens.min(rt.config().context));
    let mut top_logprobs = Vec::new();
    let mut decode_steps = 0;
    let clock = Instant::now();
    if options.max_new_tokens > 0 {
        let mut logits = prefilled.logits.clone();
        loop {
            let next = argmax(&logits);
            if options.top_k > 0 {
                top_logprobs.push(top_log_probs(&logits, options.top_k));
            }
            output_ids.push(next);
            if output_ids.len() >= options.max_new_tokens
                || (!options.ignore_eos && rt.tokenizer().is_stop(next))
                || options.ended.is_some_and(|ended| answer_ended(rt, &output_ids, ended))
            {
                break;
            }
            let position = (prefilled.ids.len() + output_ids.len() - 1) as i64;
            logits = rt.forward(&[next], &[position], &[0])?;
            decode_steps += 1;
        }
    }
    let decode_seconds = clock.elapsed().as_secs_f64();
    let cache = rt.lock_cache()?.stats();
    let full_tokens = prefilled.prompt.ids.len() + decode_steps;
    Ok(Generation {
        prompt_ids: prefilled.prompt.ids.clone(),
        prefilled_ids: prefilled.ids.clone(),
        output_ids,
        top_logprobs,
        prefill_seconds: prefilled.seconds,
        reused_prefill: prefilled.reused,
        decode_seconds,
        decode_steps,
        peak_cache_bytes: cache.peak_bytes,
        cache,
        fp16_full_bytes: rt.config().fp16_kv_bytes(full_tokens),
    })
}

/// Feed `reference` after [`start`], one token at a time; return the log-softmax of each step's
/// logits (row `i` predicts `reference[i]`; row 0 is the prefill's).
pub fn teacher_force(rt: &mut Runtime, prefilled: &Prefilled, reference: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut rows = Vec::with_capacity(reference.len());
    let mut logits = prefilled.logits.clone();
    for (i, &id) in reference.iter().enumerate() {
        rows.push(log_softmax(&logits));
        if i + 1 < reference.len() {
            logits = rt.forward(&[id], &[(prefilled.ids.len() + i) as i64], &[0])?;
        }
    }
    Ok(rows)
}

/// `log softmax(logits)`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let log_z = log_sum_exp(logits);
    logits.iter().map(|&x| x - log_z).collect()
}

/// `log Σ exp(logits)`, shifted by the maximum: `log_softmax(logits)[i] == logits[i] − this`, bit
/// for bit.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// The `k` most likely `(id, log-prob)`, best first (ties to the lower id).
pub fn top_log_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let lp = log_softmax(logits);
    let mut ids: Vec<u32> = (0..lp.len() as u32).collect();
    let k = k.min(ids.len());
    ids.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
    ids.truncate(k);
    ids.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
    ids.into_iter().map(|i| (i, lp[i as usize])).collect()
}

/// Prompt compression of the context by `compressor`, which scores it through the runtime
/// ([`ModelScorer`]): after the question when query-aware, alone when query-agnostic.
fn compress_prompt(
    rt: &mut Runtime,
    compressor: &dyn PromptCompressor,
    prompt: &Prompt,
    options: GenerateOptions,
) -> Result<Prompt, ModelError> {
    let (context, question) = prompt.ids.split_at(prompt.context);
    let budget = compressor.prompt_budget(context.len());
    if context.len() < 2 || budget.tokens >= context.len() {
        return Ok(prompt.clone());
    }
    let conditioning: &[u32] = if options.mode == Mode::QueryAware { question } else { &[] };
    let mut scorer = ModelScorer { rt, chunk: options.chunk.max(1), failure: None };
    let keep = compressor.keep(context, conditioning, budget, &mut scorer);
    if let Some(failure) = scorer.failure {
        return Err(failure);
    }
    let keep = keep.map_err(|e| ModelError::Invalid(e.to_string()))?;
    let kept: Vec<u32> = keep.iter().filter_map(|&i| context.get(i).copied()).collect();
    Ok(Prompt::split(&kept, question))
}

/// The model's side of prompt compression ([`PromptScorer`]): scores from the runtime, the
/// model's own error kept to be returned as it is.
struct ModelScorer<'a> {
    rt: &'a mut Runtime,
    chunk: usize,
    failure: Option<ModelError>,
}

impl PromptScorer for ModelScorer<'_> {
    fn self_information(&mut self, tokens: &[u32]) -> Result<Arc<Vec<f32>>, ScorerError> {
        self_information(self.rt, tokens, self.chunk).map_err(|e| {
            let message = ScorerError(e.to_string());
            self.failure = Some(e);
            message
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.rt.tokenizer().decode(&[id]).unwrap_or_default()
    }
}

/// `information[i] = −log p(scored[i] | scored[..i])` under the full model (infinite for the
/// first token, which has no prediction), scored in chunks of `chunk`.
///
/// Remembered per model, thread count, chunk size and token sequence for the process: the scores do not depend
/// on the budget, so the benchmark's four `lingua` ratios of a sample score it once instead of
/// four times (each scoring pass computes full-vocabulary logits for every prompt token).
fn self_information(rt: &mut Runtime, scored: &[u32], chunk: usize) -> Result<Arc<Vec<f32>>, ModelError> {
    /// Model, threads, chunk size and the scored tokens.
    type Key = (String, usize, usize, Vec<u32>);
    /// The scores by key, and how many tokens their keys hold together.
    #[derive(Default)]
    struct Memo {
        scores: HashMap<Key, Arc<Vec<f32>>>,
        tokens: usize,
    }
    /// Scored tokens kept before the memo starts over: 8 bytes each (key and score), so 32 MiB
    /// and some 200 bytes per prompt. It must hold every prompt a run scores before the next
    /// ratio asks for it again: a trial walks its task's samples in order, and a whole-tier run
    /// goes method first (`lingua-2x` over every task, then `lingua-4x`), about 0.9M tokens at
    /// the full tier. A cap of 64 prompts, under a full-tier task's 100, had dropped every entry
    /// before it was asked for again.
    const MEMO_TOKENS: usize = 1 << 22;
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    let key = (rt.gguf_sha256().to_string(), rt.threads(), chunk, scored.to_vec());
    // the memo holds finished entries only, so a lock poisoned by a panic elsewhere is still sound
    let lock = || memo.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(hit) = lock().scores.get(&key).cloned() {
        return Ok(hit);
    }
    rt.reset(Arc::new(Full))?;
    rt.lock_cache()?.begin(scored.len());
    let vocab = rt.config().vocab;
    let mut information = vec![f32::INFINITY; scored.len()];
    for (c, part) in scored.chunks(chunk).enumerate() {
        let at = c * chunk;
        let positions: Vec<i64> = (0..part.len()).map(|j| (at + j) as i64).collect();
        let rows: Vec<i64> = (0..part.len() as i64).collect();
        let logits = rt.forward(part, &positions, &rows)?;
        for (j, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&next) = scored.get(at + j + 1) {
                information[at + j + 1] = -(row[next as usize] - log_sum_exp(row));
            }
        }
    }
    let information = Arc::new(information);
    let mut m = lock();
    if m.tokens + scored.len() > MEMO_TOKENS {
        *m = Memo::default();
    }
    if m.scores.insert(key, information.clone()).is_none() {
        m.tokens += scored.len();
    }
    Ok(information)
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn top_log_probs_are_sorted_and_normalised() {
        let top = super::top_log_probs(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        // log-sum-exp of [0, 2, 1, 2] = 2 + ln(e^-2 + 1 + e^-1 + 1) = 2 + ln 2.503214 = 2.917576
        assert!((top[0].1 - (2.0 - 2.917576)).abs() < 1e-5, "{top:?}");
    }

    #[test]
    fn modes_are_named_alike_everywhere() {
        use super::Mode;
        use clap::ValueEnum;
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, crate::assets::settings::MODES, "KVBENCH_MODE accepts exactly the modes");
        for m in Mode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name(), "results name it as the CLI does");
            assert_eq!(m.to_possible_value().unwrap().get_name(), m.name());
            assert_eq!((Mode::from_name(m.name()), Mode::from_code(m.code())), (Some(m), Some(m)));
        }
        assert_eq!(Mode::ALL[0], Mode::default());
    }

    #[test]
    fn the_last_prompt_token_goes_through_the_compressed_cache() {
        use super::{Mode, Prompt, compressed_len};
        let p = Prompt::split(&[1, 2, 3], &[4, 5]);
        assert_eq!(compressed_len(&p, Mode::QueryAware), 4);
        assert_eq!(compressed_len(&p, Mode::QueryAgnostic), 3);
        assert_eq!(compressed_len(&p, Mode::QueryAwareUncompressedFirstToken), 5);
        let whole = Prompt::whole(&[1, 2, 3]);
        assert_eq!(compressed_len(&whole, Mode::QueryAgnostic), 2, "no question: the last token is held back");
        assert_eq!(compressed_len(&Prompt::whole(&[7]), Mode::QueryAware), 1, "a one-token prompt is all prefill");
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.0, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
    }
}
