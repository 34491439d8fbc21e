//! The fuzz targets: every reader of untrusted bytes. Each takes any input to an outcome (`Ok`
//! with a short description, or the reader's error) and must never panic, abort, hang or make a
//! big allocation; the engine's oracles ([`super::guard`]) catch those. Targets also assert what
//! must hold of what a reader accepted (a parsed payload re-encodes to one that parses the same).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvbench::bench::prefill_disk;
use kvbench::model::ModelConfig;
use kvbench::model::generate::SharedPrefill;
use kvbench::model::gguf::GgufFile;
use kvbench::model::tokenizer::Tokenizer;
use kvbench::trace::format::ModelId;
use kvbench::trace::{Trace, TraceSample};

use super::formats;
use super::rng::Rng;

/// `Ok`: what the reader made of the input; `Err`: its error.
pub type Outcome = Result<String, String>;

/// A structure-aware mutation: the input, the generator, another corpus entry and the length
/// limit to a new input (`None`: the input is not of the structure; a byte-level one is used).
pub type Mutator = fn(&[u8], &mut Rng, &[u8], usize) -> Option<Vec<u8>>;

/// A fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name (`--target`).
    pub name: &'static str,
    /// What it reads.
    pub about: &'static str,
    /// One execution.
    pub run: fn(&[u8]) -> Outcome,
    /// Its structure-aware mutation, if any.
    pub mutate: Option<Mutator>,
}

/// Every target, in the order `--target all` runs them.
pub const ALL: [Target; 5] = [
    Target {
        name: "trace_file",
        about: "whole trace files: preamble, version, size cap, zstd, checksum, then the payload",
        run: trace_file,
        mutate: Some(formats::trace_file),
    },
    Target {
        name: "trace_payload",
        about: "trace payloads past the checksum: the JSON header, the sections, the probes",
        run: trace_payload,
        mutate: Some(|b, r, o, m| Some(formats::trace_payload(b, r, o, m))),
    },
    Target {
        name: "gguf",
        about: "GGUF files, then the model config and the tokenizer built from them",
        run: gguf,
        mutate: Some(|b, r, _, m| formats::gguf(b, r, m)),
    },
    Target {
        name: "prefill_entry",
        about: "prefill cache entries on disk, and their payloads past the checksum",
        run: prefill_entry,
        mutate: Some(formats::prefill_entry),
    },
    Target {
        name: "results",
        about: "the trial results `cargo xtask report --merge` reads (a trial, or a merged array)",
        run: results,
        mutate: Some(|b, r, _, _| formats::results(b, r)),
    },
];

/// The target called `name`.
pub fn by_name(name: &str) -> Option<Target> {
    ALL.iter().find(|t| t.name == name).copied()
}

/// `n` as its power-of-two bucket, so that outcomes do not differ by counts alone.
fn bucket(n: usize) -> String {
    if n < 3 { n.to_string() } else { format!("<={}", n.next_power_of_two()) }
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

const TRACE: &str = "fuzz.trace.zst";

fn trace_file(bytes: &[u8]) -> Outcome {
    let path = Path::new(TRACE);
    let trace = Trace::from_bytes(bytes, path).map_err(|e| chain(&e))?;
    let own = trace.header.model.clone();
    assert!(trace.check_model(&own, path).is_ok(), "a trace is refused for the model it names");
    for hash in ["0123456789abcdef".repeat(4), "é".repeat(40), String::new()] {
        let other = ModelId { name: "other".into(), gguf_sha256: hash };
        let refused = trace.check_model(&other, path);
        assert_eq!(refused.is_err(), other.gguf_sha256 != own.gguf_sha256, "check_model compares the hashes");
    }
    let recordings = trace.probe_recordings();
    Ok(format!(
        "{} samples, probes {:?}, {} recordings",
        bucket(trace.samples.len()),
        trace.header.probe.as_ref().map(|p| p.samples.min(3)),
        recordings.map_or(0, |r| r.len())
    ))
}

/// Most attention work (tokens² × heads × head dim × layers, all probed samples) for which
/// `trace_payload` replays a trace's probes through [`kvbench::eval::fidelity::Recorded::full_prefills`].
const TINY_WORK: usize = 1 << 22;

fn trace_payload(bytes: &[u8]) -> Outcome {
    let trace = Trace::from_payload(bytes, Path::new(TRACE)).map_err(|e| chain(&e))?;
    let recordings = trace.probe_recordings();
    let work: usize = match &trace.header.probe {
        Some(spec) => trace
            .samples
            .iter()
            .filter_map(|s| s.probe.as_ref())
            .map(|p| p.tokens.saturating_mul(p.tokens).saturating_mul(spec.heads * spec.head_dim * spec.layers.len()))
            .fold(0, usize::saturating_add),
        None => 0,
    };
    let mut prefilled = 0;
    if let Some(recordings) = &recordings
        && work <= TINY_WORK
    {
        for r in recordings {
            prefilled += r.full_prefills(trace.header.chunk).len();
        }
    }
    let again = Trace::from_payload(&trace.to_payload(), Path::new("fuzz.roundtrip"))
        .unwrap_or_else(|e| panic!("a payload that parsed re-encodes to one that does not: {e}"));
    assert!(again.header == trace.header, "a payload's header changes on the round trip");
    assert!(again.samples.len() == trace.samples.len(), "samples change on the round trip");
    for (a, b) in again.samples.iter().zip(&trace.samples) {
        assert!(same_bits(a, b), "sample {:?} changes on the round trip", a.meta.id);
    }
    Ok(format!(
        "{} samples, probes {:?}, {} recordings, {} layers prefilled",
        bucket(trace.samples.len()),
        trace.header.probe.as_ref().map(|p| p.samples.min(3)),
        recordings.map_or(0, |r| r.len()),
        bucket(prefilled)
    ))
}

/// Whether two samples are the same, floats bit for bit (NaN is a legal value in a trace).
fn same_bits(a: &TraceSample, b: &TraceSample) -> bool {
    let topk = |s: &TraceSample| -> Vec<(u32, u32)> {
        s.reference_topk.iter().flatten().map(|&(id, lp)| (id, lp.to_bits())).collect()
    };
    let probe = |s: &TraceSample| {
        s.probe.as_ref().map(|p| {
            let bits: Vec<u16> = p
                .layers
                .iter()
                .flat_map(|l| l.queries.iter().chain(&l.keys).chain(&l.values))
                .map(|x| x.to_bits())
                .collect();
            (p.tokens, p.layers.len(), bits)
        })
    };
    a.meta == b.meta
        && a.prompt_ids == b.prompt_ids
        && a.reference_ids == b.reference_ids
        && a.reference_topk.iter().map(Vec::len).eq(b.reference_topk.iter().map(Vec::len))
        && topk(a) == topk(b)
        && probe(a) == probe(b)
}

/// Text the tokenizers built from fuzzed GGUFs encode: specials, digits, non-ASCII.
const TEXT: &str = "<|im_start|>user\nHello, wörld 2024!<|im_end|>\n";
/// Largest tensor the `gguf` target dequantizes.
const TINY_TENSOR: u64 = 1 << 16;

fn gguf(bytes: &[u8]) -> Outcome {
    let file = GgufFile::from_bytes(PathBuf::from("fuzz.gguf"), bytes.to_vec()).map_err(|e| chain(&e))?;
    let config = match ModelConfig::from_gguf(&file) {
        Ok(c) => format!("{} layers", bucket(c.layers)),
        Err(e) => chain(&e),
    };
    let tokenizer = match Tokenizer::from_gguf(&file) {
        Ok(t) => {
            let ids = t.encode(TEXT).map_err(|e| chain(&e));
            let text = ids.as_ref().map(|ids| t.decode(ids).map_err(|e| chain(&e)));
            format!("{} tokens, encode {:?}", bucket(t.vocab_size()), text.map(|t| t.map(|t| t.is_empty())))
        }
        Err(e) => chain(&e),
    };
    let mut dequantized = 0;
    for info in file.tensors().iter().filter(|t| t.n_elements() <= TINY_TENSOR) {
        let values = file.dequantize(&info.name).map_err(|e| chain(&e))?;
        assert_eq!(values.len() as u64, info.n_elements(), "tensor {:?} dequantizes to its size", info.name);
        dequantized += 1;
    }
    Ok(format!("config: {config}; tokenizer: {tokenizer}; {} tensors dequantized", bucket(dequantized)))
}

fn prefill_entry(bytes: &[u8]) -> Outcome {
    let entry = prefill_disk::decode_entry(bytes);
    let payload = bytes.get(formats::PREFILL_PREAMBLE..).unwrap_or(bytes);
    let decoded = SharedPrefill::decode(payload);
    if let Some(p) = &decoded {
        assert!(p.encode().as_deref() == Some(payload), "a decoded prefill encodes to other bytes");
    }
    if let Some(p) = &entry {
        assert!(p.bytes() >= 4, "a decoded prefill holds its logits");
    }
    // what the payload's scalars say (shape, layers, prefilled), bucketed: guidance past the walk
    let (fields, stage) = formats::prefill_fields(payload);
    let scalars: Vec<String> = fields
        .iter()
        .filter_map(|f| match f {
            formats::Field::Scalar(at) => payload.get(*at..*at + 8),
            formats::Field::Len(_) => None,
        })
        .skip(3)
        .take(6)
        .map(|b| bucket(u64::from_le_bytes(b.try_into().expect("8 bytes")).min(1 << 20) as usize))
        .collect();
    Ok(format!(
        "entry {}, payload {}, walked to {stage}, shape {}",
        entry.is_some(),
        decoded.is_some(),
        scalars.join("/")
    ))
}

/// The folder the `results` target writes its input into (`report --merge` reads files).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("kvbench-fuzz-results-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("shard"));
        dir
    })
}

/// Remove what the targets left on disk.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn results(bytes: &[u8]) -> Outcome {
    let dir = scratch();
    let shard = dir.join("shard");
    let file = shard.join("trial.json");
    if std::fs::write(&file, bytes).is_err() {
        // the folder went (a cleanup, or a tidy /dev/shm): once more, making it first
        let _ = std::fs::create_dir_all(&shard);
        std::fs::write(&file, bytes).map_err(|e| format!("writing the input to {}: {e}", file.display()))?;
    }
    let prefix = dir.display().to_string();
    let class = |r: anyhow::Result<Vec<kvbench::bench::TrialResult>>| match r {
        Ok(trials) => format!("{} trials", bucket(trials.len())),
        // serde's "at line L column C" would make every position a class of its own
        Err(e) => {
            let e = format!("{e:#}").replace(&prefix, "<dir>");
            e.split(" at line ").next().unwrap_or_default().to_string()
        }
    };
    let folder = class(crate::report::merge(std::slice::from_ref(&shard)));
    let merged = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let both = if merged { class(crate::report::merge(&[file.clone(), shard.clone()])) } else { "-".into() };
    Ok(format!("folder: {folder}; file and folder: {both}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_refuse_junk_with_errors() {
        let _oracles = crate::fuzz::guard::exclusive();
        for t in ALL {
            for input in [&b""[..], b"\0", b"KVBTRACE\x02\0\0\0", b"GGUF\x03\0\0\0", b"[{\"trial\": 1}]"] {
                let _ = (t.run)(input);
            }
        }
        assert!(trace_file(b"junk").unwrap_err().contains("bad magic"));
        let one = serde_json::to_vec(&[crate::report::fixture::result("full::code", 0.5)]).unwrap();
        assert!(results(&one).unwrap().contains("folder: 1 trials"));
        let partial = results(b"[{\"trial\": \"a::b\"}]").unwrap();
        assert!(
            partial.contains("is not a trial result: missing field") && !partial.contains(" at line "),
            "{partial}"
        );
        cleanup();
    }
}
