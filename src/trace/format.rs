//! The trace container: versioned, checksummed, zstd-compressed; a JSON header and binary
//! sections.
//!
//! ```text
//! file    = "KVBTRACE" | version: u32 | payload length: u64 | sha256(payload): 32 bytes | zstd(payload)
//! payload = header length: u32 | header (JSON, [`TraceHeader`]) | sections
//! sections, per sample in header order:
//!           prompt ids (u32 × prompt_len) | reference ids (u32 × reference_len)
//!           | top-k (reference_len × top_k × (id: u32, log-prob: f32))
//!           | probe, for the first `probe.samples` samples (version 2):
//!             tokens: u32 | per probed layer: queries, keys, values (f16, token-major)
//! ```
//! Version 2 added the optional attention probes ([`super::probe`]); version 1 files (no
//! probes) are still read. All integers little-endian.
//!
//! Reading checks the magic, the version, the declared length against [`MAX_PAYLOAD`] before
//! decompressing (and caps the decompressor at the declared length), the checksum, that the
//! sections are exactly as long as the header says, and, for probes, that their shape is an
//! attention shape of bounded width, that their layers are the model's, and that each covers
//! the prompt and at most the answer. Every failure is a [`TraceError`] naming the file. Writes
//! go to a temporary file renamed into place, and refuse a payload readers would refuse as too
//! large.

use std::io::Read;
use std::path::{Path, PathBuf};

use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::probe::{Probe, ProbeLayer, ProbeSpec};
use crate::eval::fidelity::Recorded;

/// File magic.
pub const MAGIC: &[u8; 8] = b"KVBTRACE";
/// Format version this build writes.
pub const VERSION: u32 = 2;
/// Oldest format version this build reads (version 1: no probes).
pub const OLDEST_VERSION: u32 = 1;
/// The first version that can hold attention probes.
pub const PROBES_SINCE: u32 = 2;
/// Largest payload accepted (decompressed), so a hostile file cannot exhaust memory.
pub const MAX_PAYLOAD: u64 = 256 << 20;
/// Largest compressed stream read: zstd's worst case for [`MAX_PAYLOAD`] bytes, and some.
const MAX_COMPRESSED: u64 = MAX_PAYLOAD + MAX_PAYLOAD / 128 + (1 << 20);
/// Bytes before the compressed stream: magic, version, payload length, sha256 of the payload.
pub const PREAMBLE: usize = MAGIC.len() + 4 + 8 + 32;
/// Largest prefill chunk a header may name (a chunk is at most a prompt; 2^16 tokens).
pub const MAX_CHUNK: usize = 1 << 16;
/// Most log-probs per reference step a header may keep.
pub const MAX_TOP_K: usize = 1 << 12;
/// Most tokens a sample may ask to generate (the models' contexts are far below).
pub const MAX_NEW_TOKENS: usize = 1 << 20;

/// The model a trace was recorded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    /// Human name.
    pub name: String,
    /// sha256 of the GGUF file.
    pub gguf_sha256: String,
}

/// One sample's metadata; its arrays are in the binary sections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// Sample id (`task/seed/len/...`).
    pub id: String,
    /// Seed it was built from.
    pub seed: u64,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Of which context (the rest is the question).
    pub context_len: usize,
    /// Gold answers.
    pub answers: Vec<String>,
    /// The metric, as the tasks serialize it.
    pub metric: serde_json::Value,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Where an answer ends besides stop tokens and the limit (absent: where the model ends it).
    #[serde(default, skip_serializing_if = "crate::tasks::AnswerEnd::is_turn")]
    pub answer_end: crate::tasks::AnswerEnd,
    /// Reference answer length in tokens.
    pub reference_len: usize,
    /// The reference answer's text.
    pub reference_text: String,
    /// The reference answer's score.
    pub reference_score: f64,
    /// Facts about the sample (depth, positions, ...).
    #[serde(default)]
    pub info: serde_json::Map<String, serde_json::Value>,
}

/// The JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// The model.
    pub model: ModelId,
    /// Task name.
    pub task: String,
    /// Tier (`default`, `full`).
    pub tier: String,
    /// Requested prompt length in tokens.
    pub target_len: usize,
    /// Prefill chunk of the reference run.
    pub chunk: usize,
    /// Log-probs kept per reference step.
    pub top_k: usize,
    /// kvbench version that recorded it.
    pub recorded_by: String,
    /// The attention probes the first samples carry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
    /// The samples.
    pub samples: Vec<SampleMeta>,
}

/// One sample with its arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSample {
    /// Metadata.
    pub meta: SampleMeta,
    /// Prompt ids (context then question).
    pub prompt_ids: Vec<u32>,
    /// The full cache's greedy answer.
    pub reference_ids: Vec<u32>,
    /// Per reference step, the top-k `(id, log-prob)` of the full cache, best first.
    pub reference_topk: Vec<Vec<(u32, f32)>>,
    /// The sample's attention probe (the header's `probe` says which samples have one).
    pub probe: Option<Probe>,
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Header fields other than the samples (its `samples` is rebuilt on write).
    pub header: TraceHeader,
    /// The samples.
    pub samples: Vec<TraceSample>,
}

/// A trace that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// I/O. The cause is in the message, not chained as a source, so that it is printed once.
    #[error("trace {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Anything wrong with the contents.
    #[error("trace {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        what: String,
    },
}

impl Trace {
    /// Encode to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = self.to_payload();
        wrap(VERSION, payload.len() as u64, &payload, 19)
    }

    /// The payload [`Self::to_bytes`] compresses (seeds for the payload fuzz target).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.samples = self.samples.iter().map(|s| s.meta.clone()).collect();
        let json = serde_json::to_vec(&header).expect("headers serialize");
        let mut payload = Vec::new();
        payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
        payload.extend_from_slice(&json);
        let probed = self.header.probe.as_ref().map_or(0, |p| p.samples);
        for (i, s) in self.samples.iter().enumerate() {
            s.prompt_ids.iter().chain(&s.reference_ids).for_each(|x| payload.extend_from_slice(&x.to_le_bytes()));
            for step in &s.reference_topk {
                for &(id, lp) in step {
                    payload.extend_from_slice(&id.to_le_bytes());
                    payload.extend_from_slice(&lp.to_le_bytes());
                }
            }
            assert_eq!(s.probe.is_some(), i < probed, "sample {i}: a probe exactly where the header's `probe` says");
            if let (Some(probe), Some(spec)) = (&s.probe, &self.header.probe) {
                let (q, kv) = spec.widths();
                let fits = |l: &ProbeLayer| {
                    l.queries.len() == probe.tokens * q
                        && l.keys.len() == probe.tokens * kv
                        && l.values.len() == probe.tokens * kv
                };
                assert!(
                    probe.layers.len() == spec.layers.len() && probe.layers.iter().all(fits),
                    "sample {i}: a probe of the header's shape"
                );
                payload.extend_from_slice(&(probe.tokens as u32).to_le_bytes());
                for layer in &probe.layers {
                    for x in layer.queries.iter().chain(&layer.keys).chain(&layer.values) {
                        payload.extend_from_slice(&x.to_bits().to_le_bytes());
                    }
                }
            }
        }
        payload
    }

    /// Decode bytes read from `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TraceError> {
        Self::from_reader(bytes, path)
    }

    /// Decode a trace streamed from `input` (read from `path`, named in errors): the preamble is
    /// checked before anything else is read, and no more than the preamble allows is read or
    /// held, so a huge or endless input (`/dev/zero`) costs nothing.
    fn from_reader(mut input: impl Read, path: &Path) -> Result<Self, TraceError> {
        let bad = |what: String| TraceError::Invalid { path: path.to_path_buf(), what };
        let mut preamble = Vec::with_capacity(PREAMBLE);
        (&mut input)
            .take(PREAMBLE as u64)
            .read_to_end(&mut preamble)
            .map_err(|cause| TraceError::Io { path: path.to_path_buf(), cause })?;
        if preamble.len() < PREAMBLE || &preamble[..8] != MAGIC {
            return Err(bad("not a kvbench trace (bad magic or shorter than its preamble)".into()));
        }
        let version = u32::from_le_bytes(preamble[8..12].try_into().expect("4 bytes"));
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(bad(format!(
                "format version {version}, this kvbench reads versions {OLDEST_VERSION} to {VERSION}; \
                 re-record with `cargo xtask record`"
            )));
        }
        let len = u64::from_le_bytes(preamble[12..20].try_into().expect("8 bytes"));
        if len > MAX_PAYLOAD {
            return Err(bad(format!("declares {len} bytes of payload, more than the {MAX_PAYLOAD}-byte limit")));
        }
        // grown as the stream delivers, so a preamble's claim reserves nothing by itself
        let mut payload = Vec::with_capacity((len as usize).min(1 << 20));
        let decoder = zstd::Decoder::new(input.take(MAX_COMPRESSED)).map_err(|e| bad(format!("zstd: {e}")))?;
        decoder
            .take(len + 1)
            .read_to_end(&mut payload)
            .map_err(|e| bad(format!("truncated or corrupt zstd stream: {e}")))?;
        if payload.len() as u64 != len {
            return Err(bad(format!("payload is {} bytes, the preamble says {len}", payload.len())));
        }
        if Sha256::digest(&payload)[..] != preamble[20..52] {
            return Err(bad("checksum mismatch: the file is corrupt".into()));
        }
        let trace = Self::from_payload(&payload, path)?;
        if version < PROBES_SINCE && trace.header.probe.is_some() {
            return Err(bad(format!("format version {version} cannot hold probes, yet the header has some")));
        }
        Ok(trace)
    }

    /// Decode a decompressed, checksummed payload read from `path` (named in errors). Public so
    /// that the fuzz target can reach the section parser past the checksum.
    pub fn from_payload(payload: &[u8], path: &Path) -> Result<Self, TraceError> {
        let bad = |what: String| TraceError::Invalid { path: path.to_path_buf(), what };
        let mut cur = Cursor { data: payload, at: 0 };
        let json_len = cur.u32().ok_or_else(|| bad("payload ends before the header".into()))? as usize;
        let json = cur.take(json_len).ok_or_else(|| bad("payload ends inside the header".into()))?;
        let header: TraceHeader = serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
        if let Some(problem) = header_problem(&header) {
            return Err(bad(problem));
        }
        if let Some(problem) = header.probe.as_ref().and_then(|p| p.problem(header.samples.len())) {
            return Err(bad(problem));
        }
        let mut samples = Vec::with_capacity(header.samples.len());
        for (i, meta) in header.samples.iter().enumerate() {
            let short = || bad(format!("sample {} runs past the end of the payload", meta.id));
            if meta.context_len > meta.prompt_len || meta.reference_len > meta.max_new_tokens {
                return Err(bad(format!("sample {}: inconsistent lengths", meta.id)));
            }
            if meta.max_new_tokens > MAX_NEW_TOKENS {
                return Err(bad(format!(
                    "sample {}: max_new_tokens {} is over the {MAX_NEW_TOKENS} a trace may ask for",
                    meta.id, meta.max_new_tokens
                )));
            }
            // the lengths are checked against the bytes left before anything is allocated by them
            let step = 4 + 8 * header.top_k;
            let needed = (meta.reference_len.checked_mul(step))
                .and_then(|r| r.checked_add(meta.prompt_len.checked_mul(4)?))
                .ok_or_else(short)?;
            if needed > payload.len() - cur.at {
                return Err(short());
            }
            let prompt_ids = cur.u32s(meta.prompt_len).ok_or_else(short)?;
            let reference_ids = cur.u32s(meta.reference_len).ok_or_else(short)?;
            let mut reference_topk = Vec::with_capacity(meta.reference_len);
            for s in 0..meta.reference_len {
                let step = (0..header.top_k)
                    .map(|_| Some((cur.u32()?, f32::from_bits(cur.u32()?))))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(short)?;
                if let Some(&(id, lp)) = step.iter().find(|(_, lp)| lp.is_nan() || *lp > 0.0) {
                    return Err(bad(format!(
                        "sample {}: reference step {s} gives token {id} the log-prob {lp}, not a number ≤ 0",
                        meta.id
                    )));
                }
                reference_topk.push(step);
            }
            let probe = match &header.probe {
                Some(spec) if i < spec.samples => Some(read_probe(&mut cur, spec, meta).map_err(bad)?),
                _ => None,
            };
            samples.push(TraceSample { meta: meta.clone(), prompt_ids, reference_ids, reference_topk, probe });
        }
        if cur.at != payload.len() {
            return Err(bad(format!("{} bytes after the last sample", payload.len() - cur.at)));
        }
        Ok(Trace { header, samples })
    }

    /// Read and validate `path`; with `model`, the trace must have been recorded with that GGUF.
    pub fn read(path: &Path, model: Option<&ModelId>) -> Result<Self, TraceError> {
        let io = |cause| TraceError::Io { path: path.to_path_buf(), cause };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory, not a trace file")));
        }
        let trace = Self::from_reader(std::io::BufReader::new(file), path)?;
        if let Some(m) = model {
            trace.check_model(m, path)?;
        }
        Ok(trace)
    }

    /// An error naming `path` unless this trace was recorded with `model`'s GGUF.
    pub fn check_model(&self, model: &ModelId, path: &Path) -> Result<(), TraceError> {
        if model.gguf_sha256 == self.header.model.gguf_sha256 {
            return Ok(());
        }
        Err(TraceError::Invalid {
            path: path.to_path_buf(),
            what: format!(
                "recorded with model {} ({}), not the one loaded ({}); re-record with `cargo xtask record`",
                self.header.model.name,
                short_hash(&self.header.model.gguf_sha256),
                short_hash(&model.gguf_sha256)
            ),
        })
    }

    /// The recordings of this trace's attention probes, one per probed sample, for model-free
    /// replay ([`crate::eval::fidelity`]); `None` if the trace holds none.
    pub fn probe_recordings(&self) -> Option<Vec<Recorded>> {
        let spec = self.header.probe.as_ref()?;
        Some(self.samples.iter().filter_map(|s| Some(s.probe.as_ref()?.recorded(spec, s.meta.prompt_len))).collect())
    }

    /// Write atomically; a payload over [`MAX_PAYLOAD`], which no reader would accept, is an error.
    pub fn write(&self, path: &Path) -> Result<(), TraceError> {
        let bad = |what: String| TraceError::Invalid { path: path.to_path_buf(), what };
        let bytes = self.to_bytes();
        let payload = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        if payload > MAX_PAYLOAD {
            return Err(bad(format!(
                "{payload} bytes of payload, over the {MAX_PAYLOAD}-byte limit readers accept: record fewer samples or probes"
            )));
        }
        crate::assets::write_atomic(path, &bytes).map_err(|e| bad(e.to_string()))
    }
}

/// The container around `payload`: the preamble (magic, `version`, `declared` payload length,
/// the payload's sha256), then the payload compressed at zstd `level`. [`Trace::to_bytes`]
/// writes the truth; the fuzzer also writes preambles that lie.
pub fn wrap(version: u32, declared: u64, payload: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREAMBLE + payload.len() / 3);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&declared.to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(&zstd::encode_all(payload, level).expect("in-memory zstd"));
    out
}

/// What is wrong with a header's own fields, if anything.
fn header_problem(header: &TraceHeader) -> Option<String> {
    let hash = &header.model.gguf_sha256;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(format!("the model's sha256 {:?} is not 64 hex digits", short_hash(hash)));
    }
    if header.chunk == 0 || header.chunk > MAX_CHUNK {
        return Some(format!("prefill chunk {} is not between 1 and {MAX_CHUNK} tokens", header.chunk));
    }
    if header.top_k > MAX_TOP_K {
        return Some(format!("keeps {} log-probs per step, more than {MAX_TOP_K}", header.top_k));
    }
    None
}

/// The first 16 characters of a hash, for messages (whatever characters a hostile file put there).
fn short_hash(hash: &str) -> String {
    hash.chars().take(16).collect()
}

/// A probe's section for sample `meta`: its token count, then each layer's rows.
fn read_probe(cur: &mut Cursor, spec: &ProbeSpec, meta: &SampleMeta) -> Result<Probe, String> {
    let short = || format!("sample {}: its probe runs past the end of the payload", meta.id);
    let tokens = cur.u32().ok_or_else(short)? as usize;
    // the prompt, then the reference tokens fed back (the last one never is)
    if tokens == 0 || tokens < meta.prompt_len || tokens > meta.prompt_len + meta.reference_len {
        return Err(format!(
            "sample {}: a probe of {tokens} tokens, not the prompt's {} plus at most {} answer tokens",
            meta.id, meta.prompt_len, meta.reference_len
        ));
    }
    let (q_width, kv_width) = spec.widths();
    let mut rows = |width: usize| cur.f16s(tokens.checked_mul(width)?);
    let layers = spec
        .layers
        .iter()
        .map(|_| Some(ProbeLayer { queries: rows(q_width)?, keys: rows(kv_width)?, values: rows(kv_width)? }))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(short)?;
    Ok(Probe { tokens, layers })
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.data.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn f16s(&mut self, n: usize) -> Option<Vec<f16>> {
        let bytes = self.take(n.checked_mul(2)?)?;
        Some(bytes.chunks_exact(2).map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect())
    }

    fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
        let bytes = self.take(n.checked_mul(4)?)?;
        Some(bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> Trace {
        let meta = |id: &str, prompt_len, reference_len| SampleMeta {
            id: id.into(),
            seed: 7,
            prompt_len,
            context_len: prompt_len - 2,
            answers: vec!["4827163".into()],
            metric: serde_json::json!({ "name": "needle-exact" }),
            max_new_tokens: 8,
            answer_end: crate::tasks::AnswerEnd::Turn,
            reference_len,
            reference_text: " 4827163".into(),
            reference_score: 1.0,
            info: Default::default(),
        };
        let sample = |m: SampleMeta| TraceSample {
            prompt_ids: (0..m.prompt_len as u32).collect(),
            reference_ids: (100..100 + m.reference_len as u32).collect(),
            reference_topk: (0..m.reference_len).map(|i| vec![(i as u32, -0.5), (9, -2.25)]).collect(),
            probe: None,
            meta: m,
        };
        Trace {
            header: TraceHeader {
                model: ModelId { name: "SmolLM2-135M-Instruct Q4_1".into(), gguf_sha256: "ab".repeat(32) },
                task: "needle".into(),
                tier: "default".into(),
                target_len: 64,
                chunk: 512,
                top_k: 2,
                recorded_by: "test".into(),
                probe: None,
                samples: vec![],
            },
            samples: vec![sample(meta("a", 10, 3)), sample(meta("b", 20, 0))],
        }
    }

    fn err(bytes: &[u8]) -> String {
        Trace::from_bytes(bytes, Path::new("t.trace.zst")).unwrap_err().to_string()
    }

    #[test]
    fn round_trips() {
        let t = example();
        let back = Trace::from_bytes(&t.to_bytes(), Path::new("x")).unwrap();
        assert_eq!(back.samples, t.samples);
        assert_eq!(back.header.samples.len(), 2);
    }

    #[test]
    fn every_bad_file_is_an_error_naming_it() {
        let good = example().to_bytes();
        for cut in [0, 7, 30, 52, good.len() / 2, good.len() - 1] {
            let e = err(&good[..cut]);
            assert!(e.starts_with("trace t.trace.zst: "), "{e}");
        }
        let mut v = good.clone();
        v[8] = 9;
        assert!(err(&v).contains("format version 9"));
        let mut big = good.clone();
        big[12..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(err(&big).contains("limit"));
        let mut sum = good.clone();
        sum[25] ^= 1;
        assert!(err(&sum).contains("checksum"));
        let mut lie = good.clone();
        lie[12..20].copy_from_slice(&10u64.to_le_bytes());
        assert!(err(&lie).contains("preamble says 10"));
        assert!(err(b"not a trace at all, clearly not one of ours!!!!!!!!!!!!!!").contains("bad magic"));
    }

    /// `example()` with a probe of one layer on its first sample.
    fn probed() -> Trace {
        let mut t = example();
        t.header.probe = Some(ProbeSpec {
            layers: vec![1],
            model_layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            rope_base: 1e4,
            samples: 1,
        });
        let rows = |n: usize| (0..n).map(|i| f16::from_f32(i as f32 * 0.25 - 1.0)).collect::<Vec<_>>();
        let tokens = 12; // 10 prompt tokens and 2 of the 3 answer tokens fed back
        t.samples[0].probe = Some(Probe {
            tokens,
            layers: vec![ProbeLayer { queries: rows(4 * tokens), keys: rows(2 * tokens), values: rows(2 * tokens) }],
        });
        t
    }

    #[test]
    fn probes_round_trip_and_version_1_still_reads() {
        let t = probed();
        let back = Trace::from_bytes(&t.to_bytes(), Path::new("x")).unwrap();
        assert_eq!((back.samples, back.header.probe), (t.samples, t.header.probe));
        // a version 1 file (no probes) reads; a version 1 file claiming probes does not
        let mut v1 = example().to_bytes();
        v1[8] = 1;
        assert!(Trace::from_bytes(&v1, Path::new("x")).is_ok());
        let mut v1 = probed().to_bytes();
        v1[8] = 1;
        assert!(err(&v1).contains("cannot hold probes"));
    }

    #[test]
    fn bad_probes_are_errors() {
        let rewrite = |t: &Trace, payload: Vec<u8>| {
            let mut bytes = t.to_bytes()[..20].to_vec();
            bytes[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&Sha256::digest(&payload));
            bytes.extend_from_slice(&zstd::encode_all(&payload[..], 1).unwrap());
            err(&bytes)
        };
        let t = probed();
        let payload = t.to_payload();
        // cut inside the probe's rows (sample "b", 20 prompt ids and no answer, comes after it)
        let cut = payload.len() - 20 * 4 - 3;
        assert!(rewrite(&t, payload[..cut].to_vec()).contains("a: its probe runs past the end"));
        // more tokens than the prompt and answer hold, or fewer than the prompt
        for tokens in [14, 9] {
            let mut t = probed();
            let ones = |n: usize| vec![f16::ONE; n];
            let layer = ProbeLayer { queries: ones(4 * tokens), keys: ones(2 * tokens), values: ones(2 * tokens) };
            t.samples[0].probe = Some(Probe { tokens, layers: vec![layer] });
            assert!(err(&t.to_bytes()).contains(&format!("a probe of {tokens} tokens")));
        }
        // probes promised for more samples than the trace has (same length, so only the JSON changes)
        let mut promised = payload.clone();
        let at = promised.windows(12).position(|w| w == b"\"samples\":1}").expect("the probe spec's sample count");
        promised[at + 10] = b'3';
        assert!(rewrite(&t, promised).contains("probes for 3 samples, but the trace has 2"));
        // a spec naming a layer the model does not have
        let mut layer = probed();
        layer.header.probe.as_mut().unwrap().layers = vec![2];
        assert!(err(&layer.to_bytes()).contains("not ascending layers"));
    }

    /// The error reading `t`, whose header `edit` changed.
    fn header_err(edit: impl FnOnce(&mut Trace)) -> String {
        let mut t = example();
        edit(&mut t);
        err(&t.to_bytes())
    }

    #[test]
    fn bad_header_fields_are_errors() {
        assert!(header_err(|t| t.header.chunk = 0).contains("prefill chunk 0 is not between 1 and 65536"));
        assert!(header_err(|t| t.header.chunk = 1 << 61).contains("is not between 1 and"));
        assert!(header_err(|t| t.header.top_k = MAX_TOP_K + 1).contains("log-probs per step, more than 4096"));
        // a hash that is not hex, with a multi-byte character across byte 16, is named, not sliced
        let e = header_err(|t| t.header.model.gguf_sha256 = format!("x{}x", "é".repeat(31)));
        assert!(e.contains("is not 64 hex digits") && e.contains("xééé"), "{e}");
        let e = header_err(|t| t.samples[0].meta.max_new_tokens = usize::MAX);
        assert!(e.contains("sample a: max_new_tokens 18446744073709551615 is over"), "{e}");
    }

    #[test]
    fn log_probs_must_be_numbers_at_most_zero() {
        let e = header_err(|t| t.samples[0].reference_topk[1][0].1 = f32::NAN);
        assert!(e.contains("sample a: reference step 1 gives token 1 the log-prob NaN"), "{e}");
        assert!(header_err(|t| t.samples[0].reference_topk[0][1].1 = 0.5).contains("log-prob 0.5, not a number ≤ 0"));
    }

    #[test]
    fn lengths_are_checked_against_the_payload_before_allocating() {
        // one answer step claims 2^40 tokens: refused as running past the payload, at once
        let mut t = example();
        t.samples[1].meta.reference_len = 1 << 40;
        t.samples[1].meta.max_new_tokens = 1 << 40;
        assert!(err(&t.to_bytes()).contains("max_new_tokens"));
        let mut t = example();
        t.samples[1].meta.prompt_len = 1 << 40;
        t.samples[1].meta.context_len = 0;
        assert!(err(&t.to_bytes()).contains("sample b runs past the end of the payload"));
    }

    #[test]
    fn a_directory_or_endless_input_is_refused_by_its_preamble() {
        let dir = std::env::temp_dir();
        let e = Trace::read(&dir, None).unwrap_err().to_string();
        assert_eq!(e.matches("directory").count(), 1, "{e}");
        assert!(std::error::Error::source(&Trace::read(&dir, None).unwrap_err()).is_none(), "said once");
        let e = Trace::read(Path::new("/dev/zero"), None).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
    }

    #[test]
    fn a_hash_is_shortened_by_characters_not_bytes() {
        let hash = format!("x{}x", "é".repeat(31));
        assert_eq!(short_hash(&hash), format!("x{}", "é".repeat(15)));
        let other = ModelId { name: "other".into(), gguf_sha256: hash };
        let e = example().check_model(&other, Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("not the one loaded (xééé"), "{e}");
    }

    #[test]
    fn wrong_model_is_refused() {
        let dir = std::env::temp_dir().join(format!("kvbench-trace-{}", std::process::id()));
        let path = dir.join("needle.trace.zst");
        example().write(&path).unwrap();
        let other = ModelId { name: "other".into(), gguf_sha256: "cd".repeat(32) };
        let e = Trace::read(&path, Some(&other)).unwrap_err().to_string();
        assert!(e.contains("not the one loaded") && e.contains("needle.trace.zst"), "{e}");
        assert!(Trace::read(&path, Some(&example().header.model)).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
