//! The targets' seeds, small on purpose (a big input kills the rate):
//! - traces: the committed `traces/{default,full}/*.trace.zst` cut to 1–2 samples of a few
//!   prompt and answer tokens, with their probe cut to match, or reshaped to 2 heads of 4 (so
//!   that replaying it is cheap), or dropped;
//! - GGUFs: synthetic ones (a tiny vocabulary, one layer, tensors of a few hundred bytes of each
//!   type the model uses) and, when the model is at hand, its own metadata shrunk the same way;
//! - prefill entries: made from a full cache's snapshot without the model;
//! - results: the committed reports' results, a trial or two each, arrays and strings cut short.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use half::f16;
use kvbench::codec;
use kvbench::kv::methods::Full;
use kvbench::kv::{Heads, KvCache};
use kvbench::model::generate::SharedPrefill;
use kvbench::model::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};
use kvbench::model::gguf_write;
use kvbench::trace::format::VERSION;
use kvbench::trace::probe::ProbeLayer;
use kvbench::trace::{Probe, ProbeSpec, Trace, TraceSample};
use serde_json::Value;

use super::formats;

/// Where seeds come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The workspace root (`traces/`, `docs/report-*/results/`).
    pub root: PathBuf,
    /// Trace files read per tier, in name order (all: `usize::MAX`).
    pub traces_per_tier: usize,
    /// The real model's GGUF, whose metadata seeds a shrunk copy (`None`: synthetic ones only).
    pub model: Option<PathBuf>,
}

/// The seeds of target `name`.
pub fn of(name: &str, sources: &Sources) -> anyhow::Result<Vec<Vec<u8>>> {
    let seeds = match name {
        "trace_file" => small_traces(sources)?
            .iter()
            .map(|t| {
                let payload = t.to_payload();
                formats::wrap_trace(VERSION, payload.len() as u64, &payload)
            })
            .collect(),
        "trace_payload" => small_traces(sources)?.iter().map(Trace::to_payload).collect(),
        "gguf" => gguf_seeds(sources.model.as_deref())?,
        "prefill_entry" => prefill_seeds(),
        "results" => results_seeds(&sources.root)?,
        _ => Vec::new(),
    };
    let mut unique: Vec<Vec<u8>> = Vec::new();
    for s in seeds {
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    Ok(unique)
}

/// Small copies of the committed traces (see the module doc).
pub fn small_traces(sources: &Sources) -> anyhow::Result<Vec<Trace>> {
    let mut out = Vec::new();
    for tier in ["default", "full"] {
        let dir = sources.root.join("traces").join(tier);
        let Ok(listing) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.retain(|p| p.to_string_lossy().ends_with(".trace.zst"));
        paths.sort();
        for path in paths.into_iter().take(sources.traces_per_tier) {
            let trace = Trace::read(&path, None).with_context(|| format!("reading the seed {}", path.display()))?;
            out.push(cut(&trace, 2, 12, 3, Probes::Drop));
            out.push(cut(&trace, 1, 8, 2, Probes::Tiny));
            if trace.header.probe.is_some() {
                out.push(cut(&trace, 1, 4, 1, Probes::Keep));
            }
        }
    }
    Ok(out)
}

/// What a cut trace keeps of its probes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probes {
    /// None.
    Drop,
    /// Its first sample's, over the cut tokens (all of the probe's shape).
    Keep,
    /// A probe of 2 query heads of 4 on its first sample: the first channels of its own, or
    /// made up if it has none.
    Tiny,
}

/// `trace` cut to `samples` samples of at most `prompt` prompt and `answer` answer tokens, short
/// strings, and `probes`.
fn cut(trace: &Trace, samples: usize, prompt: usize, answer: usize, probes: Probes) -> Trace {
    let short = |s: &str| s.chars().take(24).collect::<String>();
    let spec = trace.header.probe.clone();
    let mut out = Vec::new();
    for (i, s) in trace.samples.iter().take(samples).enumerate() {
        let keep = prompt.min(s.meta.prompt_len).max(1).min(s.prompt_ids.len());
        let answer = answer.min(s.meta.reference_len);
        let mut meta = s.meta.clone();
        meta.prompt_len = keep;
        meta.context_len = meta.context_len.min(keep);
        meta.reference_len = answer;
        meta.reference_text = short(&meta.reference_text);
        meta.answers = meta.answers.iter().take(2).map(|a| short(a)).collect();
        for v in meta.info.values_mut() {
            if let Value::String(s) = v {
                *s = short(s);
            }
        }
        // the probe covers the prompt and one answer token fed back, where there is one
        let tokens = keep + answer.min(1);
        let probe = match (probes, &spec, &s.probe) {
            (Probes::Keep, Some(spec), Some(p)) if i == 0 => {
                // the probe holds at least the whole prompt, so at least `keep` tokens
                let tokens = tokens.min(p.tokens);
                let (q, kv) = spec.widths();
                let layers = p
                    .layers
                    .iter()
                    .map(|l| ProbeLayer {
                        queries: l.queries[..tokens * q].to_vec(),
                        keys: l.keys[..tokens * kv].to_vec(),
                        values: l.values[..tokens * kv].to_vec(),
                    })
                    .collect();
                Some(Probe { tokens, layers })
            }
            (Probes::Tiny, _, _) if i == 0 => Some(tiny_probe(spec.as_ref().zip(s.probe.as_ref()), tokens)),
            _ => None,
        };
        out.push(TraceSample {
            meta,
            prompt_ids: s.prompt_ids[..keep].to_vec(),
            reference_ids: s.reference_ids[..answer].to_vec(),
            reference_topk: s.reference_topk[..answer].to_vec(),
            probe,
        });
    }
    let spec = match (probes, spec) {
        (Probes::Drop, _) => None,
        (Probes::Keep, spec) => {
            spec.filter(|_| out.first().is_some_and(|s| s.probe.is_some())).map(|s| ProbeSpec { samples: 1, ..s })
        }
        (Probes::Tiny, spec) => Some(ProbeSpec {
            layers: spec.as_ref().map_or(vec![0], |s| vec![s.layers[0]]),
            model_layers: spec.as_ref().map_or(1, |s| s.model_layers),
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            rope_base: spec.as_ref().map_or(1e4, |s| s.rope_base),
            samples: 1,
        }),
    };
    let mut header = trace.header.clone();
    header.probe = spec;
    header.samples = Vec::new();
    Trace { header, samples: out }
}

/// A probe of one layer, 2 query heads and 1 kv head of 4 channels, over `tokens` tokens: the
/// first channels of `from`'s first layer where it has them, a ramp otherwise.
fn tiny_probe(from: Option<(&ProbeSpec, &Probe)>, tokens: usize) -> Probe {
    let row = |values: Option<(&[f16], usize)>, t: usize, n: usize| -> Vec<f16> {
        match values {
            Some((v, width)) if (t + 1) * width <= v.len() && n <= width => v[t * width..][..n].to_vec(),
            _ => (0..n).map(|j| f16::from_f32(((t * n + j) as f32 * 0.37).sin())).collect(),
        }
    };
    let (mut queries, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let source = from.and_then(|(spec, p)| Some((spec.widths(), p.layers.first()?)));
    for t in 0..tokens {
        queries.extend(row(source.map(|((q, _), l)| (&l.queries[..], q)), t, 8));
        keys.extend(row(source.map(|((_, kv), l)| (&l.keys[..], kv)), t, 4));
        values.extend(row(source.map(|((_, kv), l)| (&l.values[..], kv)), t, 4));
    }
    Probe { tokens, layers: vec![ProbeLayer { queries, keys, values }] }
}

/// GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 character")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("a Latin Extended character")
            }
        })
        .collect()
}

/// The tensors of a one-layer llama of hidden size 32 (2 query heads, 1 kv head, of 16), MLP 64,
/// and a vocabulary of `vocab`: names, dims and types, as the model has them.
fn tiny_tensors(vocab: u64) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (hidden, kv, ffn) = (32, 16, 64);
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![hidden, vocab], GgmlType::Q8_0),
        ("output_norm.weight".to_string(), vec![hidden], GgmlType::F32),
    ];
    for (name, dims, t) in [
        ("attn_norm", vec![hidden], GgmlType::F32),
        ("attn_q", vec![hidden, hidden], GgmlType::Q4_1),
        ("attn_k", vec![hidden, kv], GgmlType::Q4_1),
        ("attn_v", vec![hidden, kv], GgmlType::Q4_1),
        ("attn_output", vec![hidden, hidden], GgmlType::Q4_1),
        ("ffn_gate", vec![hidden, ffn], GgmlType::Q4_1),
        ("ffn_up", vec![hidden, ffn], GgmlType::Q4_1),
        ("ffn_down", vec![ffn, hidden], GgmlType::Q4_1),
        ("ffn_norm", vec![hidden], GgmlType::F32),
    ] {
        out.push((format!("blk.0.{name}.weight"), dims, t));
    }
    out
}

/// Data of a tensor of `n` elements of type `t`: small values, f16 scales that are numbers.
fn tensor_data(t: GgmlType, n: u64, salt: u64) -> Vec<u8> {
    let value = |i: u64| (((i + salt) * 2654435761) % 997) as f32 / 997.0 - 0.5;
    let scale = f16::from_f32(0.01).to_le_bytes();
    let mut out = Vec::new();
    match t {
        GgmlType::F32 => (0..n).for_each(|i| out.extend(value(i).to_le_bytes())),
        GgmlType::F16 => (0..n).for_each(|i| out.extend(f16::from_f32(value(i)).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in 0..n / 32 {
                out.extend(scale);
                out.extend((0..32).map(|j| (value(b * 32 + j) * 200.0) as i8 as u8));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            for b in 0..n / 32 {
                out.extend(scale);
                if t == GgmlType::Q4_1 {
                    out.extend(f16::from_f32(-0.08).to_le_bytes());
                }
                out.extend((0..16).map(|j| ((value(b * 32 + j) + 0.5) * 255.0) as u8));
            }
        }
        // the seeds are llama models, which hold none of these: any bytes of the right length
        GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q6_K => {
            let len = n / t.block_len() as u64 * t.block_bytes() as u64;
            out.extend((0..len).map(|i| (value(i) * 255.0) as i8 as u8));
        }
    }
    out
}

/// The metadata of a one-layer llama matching [`tiny_tensors`] (without a tokenizer).
fn llama_metadata(vocab: usize) -> BTreeMap<String, MetaValue> {
    let mut m = BTreeMap::new();
    let s = |v: &str| MetaValue::Str(v.into());
    m.insert("general.architecture".into(), s("llama"));
    m.insert("general.name".into(), s("fuzz seed"));
    for (k, v) in [
        ("block_count", 1),
        ("context_length", 64),
        ("embedding_length", 32),
        ("feed_forward_length", 64),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("vocab_size", vocab as u32),
        ("rope.dimension_count", 16),
    ] {
        m.insert(format!("llama.{k}"), MetaValue::U32(v));
    }
    m.insert("llama.rope.freq_base".into(), MetaValue::F32(1e5));
    m.insert("llama.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(1e-5));
    m
}

/// A tokenizer's metadata: `tokens` (the first `specials` of them control tokens) and `merges`.
fn tokenizer_metadata(m: &mut BTreeMap<String, MetaValue>, tokens: &[String], specials: usize, merges: &[String]) {
    let strs = |xs: &[String]| MetaValue::Array(xs.iter().map(|x| MetaValue::Str(x.clone())).collect());
    m.insert("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into()));
    m.insert("tokenizer.ggml.pre".into(), MetaValue::Str("smollm".into()));
    m.insert("tokenizer.ggml.tokens".into(), strs(tokens));
    let types = (0..tokens.len()).map(|i| MetaValue::I32(if i < specials { 3 } else { 1 })).collect();
    m.insert("tokenizer.ggml.token_type".into(), MetaValue::Array(types));
    m.insert("tokenizer.ggml.merges".into(), strs(merges));
    m.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(2));
    m.insert("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(false));
}

fn encode_with_tensors(metadata: &BTreeMap<String, MetaValue>, tensors: &[(String, Vec<u64>, GgmlType)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> =
        tensors.iter().enumerate().map(|(i, (_, dims, t))| tensor_data(*t, dims.iter().product(), i as u64)).collect();
    let tensors: Vec<(TensorInfo, &[u8])> = tensors
        .iter()
        .zip(&data)
        .map(|((name, dims, t), d)| {
            (TensorInfo { name: name.clone(), dims: dims.clone(), ggml_type: *t, offset: 0 }, &d[..])
        })
        .collect();
    gguf_write::encode(metadata, &tensors)
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The GGUF seeds: two synthetic ones (8 tokens; the byte alphabet and a few merges) and, with
/// `model`, the model's metadata shrunk.
pub fn gguf_seeds(model: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let specials: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    // tiny: a handful of tokens and two merges
    let tokens: Vec<String> =
        specials.iter().cloned().chain(["h", "e", "l", "o", "he", "ll"].map(String::from)).collect();
    let mut m = llama_metadata(tokens.len());
    tokenizer_metadata(&mut m, &tokens, 3, &["h e".into(), "l l".into()]);
    out.push(encode_with_tensors(&m, &tiny_tensors(tokens.len() as u64)));
    // the byte alphabet and merges of common pairs
    let mut tokens = specials.clone();
    tokens.extend(byte_chars().into_iter().map(String::from));
    let pairs = [("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("o", "n"), ("Ġt", "he"), ("e", "r")];
    let merges: Vec<String> = pairs.iter().map(|(a, b)| format!("{a} {b}")).collect();
    tokens.extend(pairs.iter().map(|(a, b)| format!("{a}{b}")));
    let mut m = llama_metadata(tokens.len());
    tokenizer_metadata(&mut m, &tokens, 3, &merges);
    out.push(encode_with_tensors(&m, &tiny_tensors(tokens.len() as u64)));
    if let Some(path) = model {
        out.push(shrunk_model(path)?);
    }
    Ok(out)
}

/// Tokens of the real model kept in its shrunk copy (its 17 specials, the 256 bytes, and the
/// first merged tokens).
const MODEL_TOKENS: usize = 320;

/// The real model's metadata and tensor table, shrunk: [`MODEL_TOKENS`] tokens and the merges
/// among them, one layer, hidden size 32, tensors of its own types with consistent dims.
fn shrunk_model(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = GgufFile::open(path)?;
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let kept: std::collections::HashSet<&str> = tokens.iter().take(MODEL_TOKENS).copied().collect();
    let types: BTreeMap<&str, GgmlType> = file.tensors().iter().map(|t| (t.name.as_str(), t.ggml_type)).collect();
    let type_of = |name: &str, default: GgmlType| types.get(name).copied().unwrap_or(default);
    // the model's own types for the tensors of one layer, with this seed's small dims
    let tensors: Vec<(String, Vec<u64>, GgmlType)> = tiny_tensors(MODEL_TOKENS as u64)
        .into_iter()
        .map(|(name, dims, t)| {
            let t = type_of(&name, t);
            (name, dims, t)
        })
        .collect();
    let data: Vec<Vec<u8>> =
        tensors.iter().enumerate().map(|(i, (_, dims, t))| tensor_data(*t, dims.iter().product(), i as u64)).collect();
    let added: Vec<(&str, &[u8])> = tensors.iter().zip(&data).map(|((name, ..), d)| (name.as_str(), &d[..])).collect();
    let bytes = gguf_write::rewrite(
        &file,
        |m, infos| {
            let small = llama_metadata(MODEL_TOKENS);
            for (k, v) in small {
                if k.starts_with("llama.") {
                    m.insert(k, v);
                }
            }
            let cut = |v: &mut MetaValue, n: usize| {
                if let MetaValue::Array(items) = v {
                    items.truncate(n);
                }
            };
            if let Some(v) = m.get_mut("tokenizer.ggml.tokens") {
                cut(v, MODEL_TOKENS);
            }
            if let Some(v) = m.get_mut("tokenizer.ggml.token_type") {
                cut(v, MODEL_TOKENS);
            }
            if let Some(MetaValue::Array(merges)) = m.get_mut("tokenizer.ggml.merges") {
                merges.retain(|mv| match mv {
                    MetaValue::Str(s) => s.split_once(' ').is_some_and(|(a, b)| {
                        kept.contains(a) && kept.contains(b) && kept.contains(&*format!("{a}{b}"))
                    }),
                    _ => false,
                });
            }
            *infos = tensors
                .iter()
                .map(|(name, dims, t)| TensorInfo { name: name.clone(), dims: dims.clone(), ggml_type: *t, offset: 0 })
                .collect();
        },
        &added,
    );
    Ok(bytes)
}

/// The payload of a shared prefill of `tokens` tokens of a `shape` cache of `layers` layers,
/// made without the model: a full cache's snapshot after appending ramps to every layer (and,
/// with `attend`, attending them, so that its observations are not zero), `ids` prompt ids, and
/// made-up logits, in [`SharedPrefill::encode`]'s layout.
pub fn prefill_payload(
    shape: Heads,
    layers: usize,
    tokens: usize,
    ids: usize,
    agnostic: bool,
    attend: bool,
) -> Vec<u8> {
    let mut cache = KvCache::new(Arc::new(Full), shape, layers, 1e4);
    cache.begin(tokens);
    let ramp = |n: usize, salt: usize| (0..n).map(|i| ((i * 7 + salt) as f32 * 0.13).sin()).collect::<Vec<f32>>();
    let (q, kv) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    for l in 0..layers {
        let store = cache.layer_mut(l).expect("a layer of the cache");
        store.append(&ramp(tokens * kv, l), &ramp(tokens * kv, l + 100), tokens);
        if attend {
            let mut out = vec![0.0; tokens * q];
            store.attend(&ramp(tokens * q, l + 200), q, tokens, &mut out);
        }
    }
    let snapshot = cache.snapshot();
    let mut out = Vec::new();
    codec::put_u64(&mut out, tokens as u64);
    codec::put_u64(&mut out, u64::from(agnostic));
    codec::put_u64(&mut out, 0.125f64.to_bits());
    codec::put_u32s(&mut out, &(0..ids as u32).collect::<Vec<_>>());
    codec::put_f32s(&mut out, &ramp(8, 300));
    snapshot.encode_prefill(&mut out).expect("a full cache's snapshot encodes");
    out
}

/// Prefill entries of a few shapes ([`prefill_payload`]).
pub fn prefill_seeds() -> Vec<Vec<u8>> {
    let shapes = [
        (Heads { heads: 2, kv_heads: 1, head_dim: 4 }, 1, 3, 3, false, false),
        (Heads { heads: 4, kv_heads: 2, head_dim: 8 }, 2, 5, 7, true, true),
        (Heads { heads: 1, kv_heads: 1, head_dim: 2 }, 1, 1, 1, false, true),
    ];
    shapes
        .into_iter()
        .map(|(shape, layers, tokens, ids, agnostic, attend)| {
            let payload = prefill_payload(shape, layers, tokens, ids, agnostic, attend);
            let prefill = SharedPrefill::decode(&payload).expect("a prefill payload made here decodes");
            kvbench::bench::prefill_disk::encode_entry(&prefill)
        })
        .collect()
}

/// `v` with arrays cut to 2 elements and strings to 48 characters.
fn shrink(v: &mut Value) {
    match v {
        Value::Array(a) => {
            a.truncate(2);
            a.iter_mut().for_each(shrink);
        }
        Value::Object(o) => o.values_mut().for_each(shrink),
        Value::String(s) if s.chars().count() > 48 => *s = s.chars().take(48).collect(),
        _ => {}
    }
}

/// Each committed results file cut to two trials (a merged file), and its first trial alone (a
/// per-trial file), shrunk.
pub fn results_seeds(root: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for report in ["report-default", "report-full"] {
        let dir = root.join("docs").join(report).join("results");
        let Ok(listing) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).with_context(|| format!("reading the seed {}", path.display()))?;
            let mut v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?;
            shrink(&mut v);
            if let Value::Array(trials) = &v
                && let Some(first) = trials.first()
            {
                out.push(serde_json::to_vec(first)?);
            }
            out.push(serde_json::to_vec(&v)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_seed_round_trips() {
        let payload = prefill_payload(Heads { heads: 4, kv_heads: 2, head_dim: 8 }, 2, 5, 7, true, true);
        let prefill = SharedPrefill::decode(&payload).expect("decodes");
        assert_eq!(prefill.encode(), Some(payload.clone()), "bit for bit");
        assert_eq!((prefill.ids().len(), prefill.mode()), (7, kvbench::model::generate::Mode::QueryAgnostic));
        let entry = kvbench::bench::prefill_disk::encode_entry(&prefill);
        let back = kvbench::bench::prefill_disk::decode_entry(&entry).expect("the entry decodes");
        assert_eq!(back.encode(), Some(payload));
        assert_eq!(prefill_seeds().len(), 3);
    }

    #[test]
    fn synthetic_gguf_seeds_make_a_config_and_a_tokenizer() {
        for seed in gguf_seeds(None).unwrap() {
            assert!(seed.len() < 24 << 10, "{} bytes", seed.len());
            let file = GgufFile::from_bytes(PathBuf::from("seed.gguf"), seed).unwrap();
            let config = kvbench::model::ModelConfig::from_gguf(&file).unwrap();
            assert_eq!((config.layers, config.hidden, config.head_dim), (1, 32, 16));
            let tok = kvbench::model::tokenizer::Tokenizer::from_gguf(&file).unwrap();
            assert_eq!(tok.encode("<|im_start|>").unwrap(), [1]);
            for t in file.tensors() {
                assert_eq!(file.dequantize(&t.name).unwrap().len() as u64, t.n_elements());
            }
        }
    }

    /// The model's shrunk copy, when the model is at hand (it is fetched on first use by the
    /// tests that need it, not here).
    #[test]
    fn the_models_shrunk_metadata_makes_a_config_and_a_tokenizer() {
        let cached = kvbench::assets::cache_dir().join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
        let path = std::env::var_os("KVBENCH_GGUF").map(PathBuf::from).unwrap_or(cached);
        if !path.is_file() {
            return eprintln!("no model at {}: skipped", path.display());
        }
        let seed = shrunk_model(&path).unwrap();
        assert!(seed.len() < 32 << 10, "{} bytes", seed.len());
        let file = GgufFile::from_bytes(PathBuf::from("seed.gguf"), seed).unwrap();
        let config = kvbench::model::ModelConfig::from_gguf(&file).unwrap();
        assert_eq!((config.layers, config.vocab), (1, MODEL_TOKENS));
        let tok = kvbench::model::tokenizer::Tokenizer::from_gguf(&file).unwrap();
        assert_eq!((tok.vocab_size(), tok.encode("<|im_start|>").unwrap()), (MODEL_TOKENS, vec![1]));
    }

    #[test]
    fn trace_seeds_are_small_and_valid() {
        let sources = Sources { root: crate::project_root(), traces_per_tier: 1, model: None };
        let traces = small_traces(&sources).unwrap();
        assert!(traces.len() >= 4, "{}", traces.len());
        for t in &traces {
            let payload = t.to_payload();
            assert!(payload.len() < 16 << 10, "{} bytes", payload.len());
            let back = Trace::from_payload(&payload, Path::new("seed")).unwrap();
            assert_eq!(back.samples.len(), t.samples.len());
        }
        // the tiny probes replay cheaply; the kept ones are of the model's shape
        let shapes: Vec<(usize, usize)> =
            traces.iter().filter_map(|t| t.header.probe.as_ref().map(|p| (p.heads, p.head_dim))).collect();
        assert!(shapes.contains(&(2, 4)) && shapes.iter().any(|s| s.0 > 2), "{shapes:?}");
    }

    #[test]
    fn results_seeds_are_small_json() {
        let seeds = results_seeds(&crate::project_root()).unwrap();
        assert!(seeds.len() >= 14, "{}", seeds.len());
        for s in seeds {
            assert!(s.len() < 8 << 10, "{} bytes", s.len());
            serde_json::from_slice::<Value>(&s).unwrap();
        }
    }
}
