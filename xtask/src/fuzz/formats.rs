//! Structure-aware mutations, which get past checksums and length prefixes that random bytes
//! never pass:
//! - a trace payload's JSON header (`u32 length | JSON | sections`) is parsed, mutated as a tree
//!   ([`super::json`]) and written back with its length fixed; or its sections are mutated and
//!   resized under the header;
//! - a trace file is unwrapped, its payload mutated so, and wrapped again with a true length,
//!   checksum and zstd stream (or a preamble that lies about one of them);
//! - a GGUF's metadata and tensor table are parsed, mutated and encoded again
//!   ([`kvbench::model::gguf_write::encode`]);
//! - a prefill entry's payload is mutated field by field (its u64 scalars and length prefixes,
//!   [`prefill_fields`]) and its sha256 recomputed;
//! - a results file is mutated as a JSON tree.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use kvbench::model::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};
use serde_json::Value;

use super::rng::Rng;
use super::{json, mutate};

/// `"KVBTRACE" | version: u32 | payload length: u64 | sha256: 32 bytes`.
pub const TRACE_PREAMBLE: usize = kvbench::trace::format::PREAMBLE;
/// `"KVBPFILL" | version: u32 | sha256: 32 bytes`.
pub const PREFILL_PREAMBLE: usize = kvbench::bench::prefill_disk::PREAMBLE;
/// Most payload bytes unwrapped from a trace file for mutation.
const MAX_UNWRAPPED: u64 = 8 << 20;

/// A trace payload's header (parsed, and as it was) and the sections after it.
pub fn split_payload(payload: &[u8]) -> Option<(Value, &[u8], &[u8])> {
    let n = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let raw = payload.get(4..4usize.checked_add(n)?)?;
    Some((serde_json::from_slice(raw).ok()?, raw, &payload[4 + n..]))
}

/// `u32 length | header | sections`.
pub fn join_payload(header: &[u8], sections: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + header.len() + sections.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(sections);
    out
}

/// A mutation of a trace payload: mostly its header as a JSON tree, otherwise its sections (or
/// its bytes, if it has no header to parse).
pub fn trace_payload(payload: &[u8], rng: &mut Rng, other: &[u8], max_len: usize) -> Vec<u8> {
    let Some((mut header, raw, sections)) = split_payload(payload) else {
        let mut out = payload.to_vec();
        mutate::bytes(&mut out, rng, other, max_len);
        return out;
    };
    let mut sections = sections.to_vec();
    if rng.chance(2, 3) {
        for _ in 0..rng.small_len(3) {
            json::mutate(&mut header, rng);
        }
        if rng.chance(1, 4) {
            resize_sections(&mut sections, rng);
        }
        return join_payload(&json::to_bytes(&header, rng), &sections);
    }
    if rng.chance(1, 2) {
        resize_sections(&mut sections, rng);
    } else {
        let other_sections = split_payload(other).map_or(other, |(_, _, s)| s);
        mutate::bytes(&mut sections, rng, other_sections, max_len);
    }
    join_payload(raw, &sections)
}

/// Insert or remove whole u32s (ids, log-probs), or f16 pairs, at a 4-aligned place.
fn resize_sections(sections: &mut Vec<u8>, rng: &mut Rng) {
    let at = rng.below(sections.len() / 4 + 1) * 4;
    let n = 4 * rng.small_len(16);
    if rng.chance(1, 2) {
        let fill: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        sections.splice(at..at, fill);
    } else {
        sections.drain(at..(at + n).min(sections.len()));
    }
}

/// A trace file's version and payload (decompressed, at most [`MAX_UNWRAPPED`] bytes).
pub fn unwrap_trace(file: &[u8]) -> Option<(u32, Vec<u8>)> {
    if file.len() < TRACE_PREAMBLE || &file[..8] != kvbench::trace::format::MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(file[8..12].try_into().ok()?);
    let mut payload = Vec::new();
    zstd::stream::read::Decoder::new(&file[TRACE_PREAMBLE..])
        .ok()?
        .take(MAX_UNWRAPPED)
        .read_to_end(&mut payload)
        .ok()?;
    Some((version, payload))
}

/// A trace file holding `payload`, its preamble saying `version` and `declared` bytes, with its
/// true checksum.
pub fn wrap_trace(version: u32, declared: u64, payload: &[u8]) -> Vec<u8> {
    kvbench::trace::format::wrap(version, declared, payload, 1)
}

/// A mutation of a whole trace file that keeps its checksum true: its payload mutated
/// ([`trace_payload`]) and wrapped again, or a preamble that lies about the version or length.
pub fn trace_file(file: &[u8], rng: &mut Rng, other: &[u8], max_len: usize) -> Option<Vec<u8>> {
    let (version, payload) = unwrap_trace(file)?;
    Some(match rng.below(8) {
        0 => {
            let version = *rng.pick(&[0, 1, 2, 3, u32::MAX, version]);
            wrap_trace(version, payload.len() as u64, &payload)
        }
        1 => {
            let n = payload.len() as u64;
            let declared = match rng.below(3) {
                0 => n.wrapping_add(rng.small_len(8) as u64),
                1 => n.saturating_sub(rng.small_len(8) as u64),
                _ => mutate::interesting(rng),
            };
            wrap_trace(version, declared, &payload)
        }
        _ => {
            let other = unwrap_trace(other).map(|(_, p)| p).unwrap_or_default();
            let payload = trace_payload(&payload, rng, &other, max_len);
            let version = if rng.chance(1, 8) { 1 } else { version };
            wrap_trace(version, payload.len() as u64, &payload)
        }
    })
}

/// Keys the readers look up (`ModelConfig`, `Tokenizer`, the alignment), for mutations to add.
const GGUF_KEYS: [&str; 16] = [
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
];

const TENSOR_NAMES: [&str; 4] = ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", ""];

/// A mutation of a GGUF file's metadata and tensor table, encoded again; `None` if it does not
/// parse.
pub fn gguf(bytes: &[u8], rng: &mut Rng, max_len: usize) -> Option<Vec<u8>> {
    let file = GgufFile::from_bytes(PathBuf::from("fuzz.gguf"), bytes.to_vec()).ok()?;
    let mut metadata = file.metadata().clone();
    let mut tensors: Vec<(TensorInfo, Vec<u8>)> = file
        .tensors()
        .iter()
        .map(|t| (t.clone(), file.tensor_data(&t.name).map(<[u8]>::to_vec).unwrap_or_default()))
        .collect();
    for _ in 0..rng.small_len(3) {
        gguf_once(&mut metadata, &mut tensors, rng, max_len);
    }
    // the encoder pads each tensor's data to the alignment: a huge one (2^31 is a power of two)
    // with tensors would make gigabytes, not an input; keep it with none
    let alignment = match metadata.get("general.alignment") {
        Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as usize,
        _ => 32,
    };
    if alignment.saturating_mul(tensors.len()) > max_len {
        tensors.clear();
    }
    let refs: Vec<(TensorInfo, &[u8])> = tensors.iter().map(|(t, d)| (t.clone(), &d[..])).collect();
    Some(kvbench::model::gguf_write::encode(&metadata, &refs))
}

fn gguf_once(
    metadata: &mut BTreeMap<String, MetaValue>,
    tensors: &mut Vec<(TensorInfo, Vec<u8>)>,
    rng: &mut Rng,
    max_len: usize,
) {
    match rng.below(12) {
        0..=5 if !metadata.is_empty() => {
            let i = rng.below(metadata.len());
            let value = metadata.values_mut().nth(i).expect("in range");
            meta_value(value, rng, max_len, 0);
        }
        6 if !metadata.is_empty() => {
            let key = metadata.keys().nth(rng.below(metadata.len())).expect("in range").clone();
            let value = metadata.remove(&key).expect("present");
            if rng.chance(1, 2) {
                // renamed rather than dropped
                metadata.insert(json::string(rng, &key), value);
            }
        }
        7 => {
            let key = rng.pick(&GGUF_KEYS).to_string();
            let mut value = metadata.get(&key).cloned().unwrap_or(MetaValue::U32(1));
            meta_value(&mut value, rng, max_len, 0);
            metadata.insert(key, value);
        }
        8 | 9 if !tensors.is_empty() => {
            let i = rng.below(tensors.len());
            let info = &mut tensors[i].0;
            match rng.below(5) {
                0 if !info.dims.is_empty() => {
                    let d = rng.below(info.dims.len());
                    info.dims[d] = mutate::interesting(rng);
                }
                1 if !info.dims.is_empty() => {
                    let d = rng.below(info.dims.len());
                    info.dims[d] = info.dims[d].wrapping_add(rng.small_len(64) as u64) & !31;
                }
                2 => {
                    if info.dims.len() < 5 && rng.chance(1, 2) {
                        info.dims.push(1 + rng.below(4) as u64);
                    } else {
                        info.dims.pop();
                    }
                }
                3 => {
                    info.ggml_type = *rng.pick(&[
                        GgmlType::F32,
                        GgmlType::F16,
                        GgmlType::Q4_0,
                        GgmlType::Q4_1,
                        GgmlType::Q5_0,
                        GgmlType::Q8_0,
                        GgmlType::Q4_K,
                        GgmlType::Q6_K,
                    ])
                }
                _ => info.name = rng.pick(&TENSOR_NAMES).to_string(),
            }
        }
        10 if !tensors.is_empty() => {
            let i = rng.below(tensors.len());
            match rng.below(3) {
                0 => drop(tensors.remove(i)),
                1 => {
                    let mut copy = tensors[i].clone();
                    copy.0.name = json::string(rng, &copy.0.name);
                    tensors.push(copy);
                }
                _ => {
                    let data = &mut tensors[i].1;
                    let n = rng.below(data.len() + 1);
                    if rng.chance(1, 2) { data.truncate(n) } else { data.extend(std::iter::repeat_n(0, n)) }
                }
            }
        }
        _ => {
            let key = json::string(rng, "general.x");
            let mut value = MetaValue::Str(String::new());
            meta_value(&mut value, rng, max_len, 0);
            metadata.insert(key, value);
        }
    }
}

/// A metadata value of a random type.
fn meta_any(rng: &mut Rng) -> MetaValue {
    let x = mutate::interesting(rng);
    match rng.below(13) {
        0 => MetaValue::U8(x as u8),
        1 => MetaValue::I8(x as i8),
        2 => MetaValue::U16(x as u16),
        3 => MetaValue::I16(x as i16),
        4 => MetaValue::U32(x as u32),
        5 => MetaValue::I32(x as i32),
        6 => MetaValue::F32(f32_boundary(rng)),
        7 => MetaValue::Bool(x & 1 == 1),
        8 => MetaValue::Str(json::string(rng, "x")),
        9 => MetaValue::Array(vec![]),
        10 => MetaValue::U64(x),
        11 => MetaValue::I64(x as i64),
        _ => MetaValue::F64(f64::from(f32_boundary(rng))),
    }
}

fn f32_boundary(rng: &mut Rng) -> f32 {
    *rng.pick(&[
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        f32::MAX,
        1e-45,
        0.5,
    ])
}

fn meta_value(value: &mut MetaValue, rng: &mut Rng, max_len: usize, depth: usize) {
    if rng.chance(1, 10) {
        *value = meta_any(rng);
        return;
    }
    let x = mutate::interesting(rng);
    match value {
        MetaValue::U8(v) => *v = x as u8,
        MetaValue::I8(v) => *v = x as i8,
        MetaValue::U16(v) => *v = x as u16,
        MetaValue::I16(v) => *v = x as i16,
        MetaValue::U32(v) => *v = if rng.chance(1, 2) { x as u32 } else { v.wrapping_add(rng.small_len(8) as u32) },
        MetaValue::I32(v) => *v = x as i32,
        MetaValue::U64(v) => *v = x,
        MetaValue::I64(v) => *v = x as i64,
        MetaValue::F32(v) => *v = f32_boundary(rng),
        MetaValue::F64(v) => *v = f64::from(f32_boundary(rng)),
        MetaValue::Bool(v) => *v = !*v,
        MetaValue::Str(s) => *s = json::string(rng, s),
        MetaValue::Array(items) => match rng.below(8) {
            0..=2 if !items.is_empty() && depth < 8 => {
                let i = rng.below(items.len());
                meta_value(&mut items[i], rng, max_len, depth + 1);
            }
            3 if !items.is_empty() => drop(items.remove(rng.below(items.len()))),
            4 => items.truncate(rng.below(items.len() + 1)),
            5 if !items.is_empty() => {
                // grown by copies, the new input kept under the length limit (copies of a big
                // nested array would otherwise take the fuzzer's memory, not the reader's)
                let copy = &items[rng.below(items.len())];
                let n = rng.small_len(256).min(max_len / meta_len(copy).max(1));
                let copy = copy.clone();
                items.extend(std::iter::repeat_n(copy, n));
            }
            6 if rng.chance(1, 16) => {
                // a long array of one-byte elements: the reader holds each as a `MetaValue`
                let n = (1usize << rng.below(21)).min(max_len / 2);
                *items = vec![MetaValue::U8(x as u8); n];
            }
            _ => items.push(meta_any(rng)),
        },
    }
}

/// Bytes `value` takes in a GGUF file (its type id excluded).
fn meta_len(value: &MetaValue) -> usize {
    match value {
        MetaValue::U8(_) | MetaValue::I8(_) | MetaValue::Bool(_) => 1,
        MetaValue::U16(_) | MetaValue::I16(_) => 2,
        MetaValue::U32(_) | MetaValue::I32(_) | MetaValue::F32(_) => 4,
        MetaValue::U64(_) | MetaValue::I64(_) | MetaValue::F64(_) => 8,
        MetaValue::Str(s) => 8 + s.len(),
        MetaValue::Array(items) => 12 + items.iter().map(meta_len).sum::<usize>(),
    }
}

/// A u64 field of a prefill payload: a scalar, or the length prefix of a run of 4-byte values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    /// A scalar at this offset.
    Scalar(usize),
    /// A length prefix at this offset, followed by that many 4-byte values.
    Len(usize),
}

/// The fields of a prefill payload ([`kvbench::model::generate::SharedPrefill::encode`]), as
/// far as they can be walked, and the name of the last part reached.
pub fn prefill_fields(payload: &[u8]) -> (Vec<Field>, &'static str) {
    let mut fields = Vec::new();
    let mut at = 0usize;
    let u64_at = |at: usize| payload.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    macro_rules! scalar {
        ($stage:expr) => {{
            let Some(x) = u64_at(at) else { return (fields, $stage) };
            fields.push(Field::Scalar(at));
            at += 8;
            x
        }};
    }
    macro_rules! run {
        ($stage:expr) => {{
            let Some(n) = u64_at(at) else { return (fields, $stage) };
            fields.push(Field::Len(at));
            let Some(end) =
                usize::try_from(n).ok().and_then(|n| n.checked_mul(4)).and_then(|b| (at + 8).checked_add(b))
            else {
                return (fields, $stage);
            };
            if end > payload.len() {
                return (fields, $stage);
            }
            at = end;
        }};
    }
    scalar!("compressed");
    scalar!("mode");
    scalar!("seconds");
    run!("ids");
    run!("logits");
    let _heads = scalar!("heads");
    let kv_heads = scalar!("kv heads");
    scalar!("head dim");
    let layers = scalar!("layers");
    scalar!("compressed tokens");
    scalar!("prefilled");
    for _ in 0..layers.min(64) {
        scalar!("query limit");
        for _ in 0..kv_heads.min(64) {
            run!("keys");
            run!("values");
            run!("mass");
        }
        run!("queries");
    }
    (fields, if at == payload.len() { "whole" } else { "trailing bytes" })
}

/// `"KVBPFILL" | version | sha256(payload) | payload`.
pub fn wrap_prefill(version: u32, payload: &[u8]) -> Vec<u8> {
    kvbench::bench::prefill_disk::wrap(version, payload)
}

/// A mutation of a prefill entry's payload (a field, or its bytes) under a true checksum;
/// `None` if it is not an entry.
pub fn prefill_entry(entry: &[u8], rng: &mut Rng, other: &[u8], max_len: usize) -> Option<Vec<u8>> {
    if entry.len() < PREFILL_PREAMBLE || &entry[..8] != kvbench::bench::prefill_disk::MAGIC {
        return None;
    }
    let mut version = u32::from_le_bytes(entry[8..12].try_into().ok()?);
    let mut payload = entry[PREFILL_PREAMBLE..].to_vec();
    let (fields, _) = prefill_fields(&payload);
    match rng.below(8) {
        0..=4 if !fields.is_empty() => {
            for _ in 0..rng.small_len(3) {
                prefill_field(&mut payload, *rng.pick(&fields), rng);
            }
        }
        5 => version = *rng.pick(&[0, 2, u32::MAX]),
        _ => {
            let other = other.get(PREFILL_PREAMBLE..).unwrap_or_default();
            mutate::bytes(&mut payload, rng, other, max_len);
        }
    }
    Some(wrap_prefill(version, &payload))
}

fn prefill_field(payload: &mut Vec<u8>, field: Field, rng: &mut Rng) {
    let (Field::Scalar(at) | Field::Len(at)) = field;
    if at + 8 > payload.len() {
        return;
    }
    let old = u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let set = |payload: &mut Vec<u8>, x: u64| payload[at..at + 8].copy_from_slice(&x.to_le_bytes());
    match (field, rng.below(3)) {
        (Field::Len(_), 0) if old < 1 << 20 => {
            // a consistent length change: values added or removed after the prefix
            let grow = rng.chance(1, 2);
            let k = rng.small_len(8) as u64;
            let new = if grow { old + k } else { old.saturating_sub(k) };
            let start = at + 8 + 4 * old.min(new) as usize;
            if grow {
                let fill: Vec<u8> = (0..4 * k).map(|_| rng.next_u64() as u8).collect();
                payload.splice(start.min(payload.len())..start.min(payload.len()), fill);
            } else {
                let end = (start + 4 * (old - new) as usize).min(payload.len());
                payload.drain(start.min(end)..end);
            }
            set(payload, new);
        }
        (_, 1) => set(payload, old.wrapping_add(rng.small_len(4) as u64)),
        (_, 2) if old > 0 => set(payload, old - 1),
        _ => set(payload, mutate::interesting(rng)),
    }
}

/// A mutation of a results file as a JSON tree; `None` if it is not JSON.
pub fn results(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    for _ in 0..rng.small_len(3) {
        json::mutate(&mut v, rng);
    }
    Some(json::to_bytes(&v, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_payload_unwraps_and_reads() {
        let payload = join_payload(b"{\"a\":1}", b"xyz");
        let (v, raw, sections) = split_payload(&payload).unwrap();
        assert_eq!((v["a"].as_u64(), raw, sections), (Some(1), &b"{\"a\":1}"[..], &b"xyz"[..]));
        let file = wrap_trace(2, payload.len() as u64, &payload);
        assert_eq!(unwrap_trace(&file), Some((2, payload)));
        assert_eq!(unwrap_trace(b"KVBTRACE"), None);
    }

    #[test]
    fn prefill_fields_walk_a_payload() {
        let mut p = Vec::new();
        for x in [3u64, 0, 0] {
            p.extend_from_slice(&x.to_le_bytes());
        }
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        let (fields, stage) = prefill_fields(&p);
        assert_eq!(fields, [Field::Scalar(0), Field::Scalar(8), Field::Scalar(16), Field::Len(24)]);
        assert_eq!(stage, "logits");
    }
}
