//! The trace container: versioned, checksummed, zstd-compressed; a JSON header and binary
//! sections.
//!
//! ```text
//! file    = "KVBTRACE" | version: u32 | payload length: u64 | sha256(payload): 32 bytes | zstd(payload)
//! payload = header length: u32 | header (JSON, [`TraceHeader`]) | sections
//! sections, per sample in header order:
//!           prompt ids (u32 × prompt_len) | reference ids (u32 × reference_len)
//!           | top-k (reference_len × top_k × (id: u32, log-prob: f32))
//! ```
//! All integers little-endian. Reading checks the magic, the version, the declared length against
//! [`MAX_PAYLOAD`] before decompressing (and caps the decompressor at the declared length), the
//! checksum, and that the sections are exactly as long as the header says. Every failure is a
//! [`TraceError`] naming the file. Writes go to a temporary file renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 8] = b"KVBTRACE";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Largest payload accepted (decompressed), so a hostile file cannot exhaust memory.
pub const MAX_PAYLOAD: u64 = 256 << 20;

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
    /// I/O.
    #[error("trace {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
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
        let mut out = Vec::with_capacity(payload.len() / 3);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&payload));
        out.extend_from_slice(&zstd::encode_all(&payload[..], 19).expect("in-memory zstd"));
        out
    }

    /// The payload [`Self::to_bytes`] compresses (seeds for the payload fuzz target).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.samples = self.samples.iter().map(|s| s.meta.clone()).collect();
        let json = serde_json::to_vec(&header).expect("headers serialize");
        let mut payload = Vec::new();
        payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
        payload.extend_from_slice(&json);
        for s in &self.samples {
            s.prompt_ids.iter().chain(&s.reference_ids).for_each(|x| payload.extend_from_slice(&x.to_le_bytes()));
            for step in &s.reference_topk {
                for &(id, lp) in step {
                    payload.extend_from_slice(&id.to_le_bytes());
                    payload.extend_from_slice(&lp.to_le_bytes());
                }
            }
        }
        payload
    }

    /// Decode bytes read from `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TraceError> {
        let bad = |what: String| TraceError::Invalid { path: path.to_path_buf(), what };
        let fixed = MAGIC.len() + 4 + 8 + 32;
        if bytes.len() < fixed || &bytes[..8] != MAGIC {
            return Err(bad("not a kvbench trace (bad magic or shorter than its preamble)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this kvbench reads version {VERSION}; re-record with `cargo xtask record`"
            )));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        if len > MAX_PAYLOAD {
            return Err(bad(format!("declares {len} bytes of payload, more than the {MAX_PAYLOAD}-byte limit")));
        }
        let mut payload = Vec::with_capacity(len as usize);
        let decoder = zstd::Decoder::new(&bytes[fixed..]).map_err(|e| bad(format!("zstd: {e}")))?;
        decoder
            .take(len + 1)
            .read_to_end(&mut payload)
            .map_err(|e| bad(format!("truncated or corrupt zstd stream: {e}")))?;
        if payload.len() as u64 != len {
            return Err(bad(format!("payload is {} bytes, the preamble says {len}", payload.len())));
        }
        if Sha256::digest(&payload)[..] != bytes[20..52] {
            return Err(bad("checksum mismatch: the file is corrupt".into()));
        }
        Self::from_payload(&payload, path)
    }

    /// Decode a decompressed, checksummed payload read from `path` (named in errors). Public so
    /// that the fuzz target can reach the section parser past the checksum.
    pub fn from_payload(payload: &[u8], path: &Path) -> Result<Self, TraceError> {
        let bad = |what: String| TraceError::Invalid { path: path.to_path_buf(), what };
        let mut cur = Cursor { data: payload, at: 0 };
        let json_len = cur.u32().ok_or_else(|| bad("payload ends before the header".into()))? as usize;
        let json = cur.take(json_len).ok_or_else(|| bad("payload ends inside the header".into()))?;
        let header: TraceHeader = serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
        let mut samples = Vec::with_capacity(header.samples.len());
        for meta in &header.samples {
            let short = || bad(format!("sample {} runs past the end of the payload", meta.id));
            if meta.context_len > meta.prompt_len || meta.reference_len > meta.max_new_tokens {
                return Err(bad(format!("sample {}: inconsistent lengths", meta.id)));
            }
            let prompt_ids = cur.u32s(meta.prompt_len).ok_or_else(short)?;
            let reference_ids = cur.u32s(meta.reference_len).ok_or_else(short)?;
            let mut reference_topk = Vec::with_capacity(meta.reference_len);
            for _ in 0..meta.reference_len {
                let step = (0..header.top_k)
                    .map(|_| Some((cur.u32()?, f32::from_bits(cur.u32()?))))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(short)?;
                reference_topk.push(step);
            }
            samples.push(TraceSample { meta: meta.clone(), prompt_ids, reference_ids, reference_topk });
        }
        if cur.at != payload.len() {
            return Err(bad(format!("{} bytes after the last sample", payload.len() - cur.at)));
        }
        Ok(Trace { header, samples })
    }

    /// Read and validate `path`; with `model`, the trace must have been recorded with that GGUF.
    pub fn read(path: &Path, model: Option<&ModelId>) -> Result<Self, TraceError> {
        let bytes = std::fs::read(path).map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
        let trace = Self::from_bytes(&bytes, path)?;
        if let Some(m) = model
            && m.gguf_sha256 != trace.header.model.gguf_sha256
        {
            return Err(TraceError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "recorded with model {} ({}), not the one loaded ({}); re-record with `cargo xtask record`",
                    trace.header.model.name,
                    &trace.header.model.gguf_sha256[..16.min(trace.header.model.gguf_sha256.len())],
                    &m.gguf_sha256[..16.min(m.gguf_sha256.len())]
                ),
            });
        }
        Ok(trace)
    }

    /// Write atomically.
    pub fn write(&self, path: &Path) -> Result<(), TraceError> {
        crate::assets::write_atomic(path, &self.to_bytes())
            .map_err(|e| TraceError::Invalid { path: path.to_path_buf(), what: e.to_string() })
    }

    /// sha256 of the encoded trace (keys caches derived from it).
    pub fn hash(&self) -> String {
        crate::assets::hex(&Sha256::digest(self.to_bytes()))
    }
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
            reference_len,
            reference_text: " 4827163".into(),
            reference_score: 1.0,
            info: Default::default(),
        };
        let sample = |m: SampleMeta| TraceSample {
            prompt_ids: (0..m.prompt_len as u32).collect(),
            reference_ids: (100..100 + m.reference_len as u32).collect(),
            reference_topk: (0..m.reference_len).map(|i| vec![(i as u32, -0.5), (9, -2.25)]).collect(),
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
