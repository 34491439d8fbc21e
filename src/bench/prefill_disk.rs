//! Shared prefills on disk, so that trials in separate processes (`cargo nextest`, one process
//! per trial; shards) and later runs reuse a sample's full-precision prefill instead of
//! recomputing it.
//!
//! An entry is content-addressed: the sha256 of this build of the benchmark (the executable's
//! bytes, so that a change to any kernel invalidates it), the model's GGUF hash, the prompt ids,
//! the compressed length, the mode and the prefill chunk: everything the prefill depends on.
//!
//! ```text
//! file = "KVBPFILL" | version: u32 | sha256(payload): 32 bytes | payload ([`SharedPrefill::encode`])
//! ```
//! Entries are written to a temporary file and renamed into place, so concurrent writers of one
//! entry are harmless. A file that fails its checksum is deleted and recomputed (a warning says
//! so). The directory is kept under a size limit by deleting the least recently used entries.
//!
//! Location: `$KVBENCH_PREFILL_CACHE`, else `target/kvbench-prefill`; `KVBENCH_PREFILL_CACHE=off`
//! turns it off. Limit: `$KVBENCH_PREFILL_CACHE_GB` gibibytes (default 4).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::assets::{hex, write_atomic};
use crate::model::generate::{GenerateOptions, Mode, Prompt, SharedPrefill};

const MAGIC: &[u8; 8] = b"KVBPFILL";
const VERSION: u32 = 1;
const PREAMBLE: usize = 8 + 4 + 32;

/// The prefill cache directory.
#[derive(Debug, Clone)]
pub struct DiskPrefills {
    dir: PathBuf,
    limit_bytes: u64,
    build: String,
}

/// What a prefill depends on.
#[derive(Debug, Clone, Copy)]
pub struct PrefillInputs<'a> {
    /// The model's GGUF sha256.
    pub model: &'a str,
    /// The whole prompt.
    pub ids: &'a [u32],
    /// Context tokens in the prompt.
    pub context: usize,
    /// Compression mode (decides how much is prefilled).
    pub mode: Mode,
    /// Prefill chunk.
    pub chunk: usize,
}

impl<'a> PrefillInputs<'a> {
    /// What prefilling `prompt` with `options` on the model of GGUF hash `model` depends on.
    pub fn of(model: &'a str, prompt: &'a Prompt, options: &GenerateOptions) -> Self {
        Self { model, ids: &prompt.ids, context: prompt.context, mode: options.mode, chunk: options.chunk }
    }
}

impl DiskPrefills {
    /// From the environment (see the module doc); `Ok(None)` when turned off.
    pub fn from_env() -> Result<Option<Self>, String> {
        let dir = match std::env::var("KVBENCH_PREFILL_CACHE").as_deref() {
            Ok("off") => return Ok(None),
            Ok(d) if !d.is_empty() => PathBuf::from(d),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("kvbench-prefill"),
        };
        let gib = match std::env::var("KVBENCH_PREFILL_CACHE_GB").as_deref() {
            Err(_) | Ok("") => 4.0,
            Ok(v) => v
                .parse::<f64>()
                .ok()
                .filter(|g| *g >= 0.0)
                .ok_or_else(|| format!("KVBENCH_PREFILL_CACHE_GB={v:?}: give a number of gibibytes"))?,
        };
        Ok(Some(Self::new(dir, (gib * (1u64 << 30) as f64) as u64, build_id()?)))
    }

    /// A cache in `dir` of at most `limit_bytes`, for entries made by `build`.
    pub fn new(dir: PathBuf, limit_bytes: u64, build: String) -> Self {
        Self { dir, limit_bytes, build }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, inputs: &PrefillInputs) -> PathBuf {
        let mut h = Sha256::new();
        h.update(VERSION.to_le_bytes());
        for part in [self.build.as_bytes(), inputs.model.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for x in [inputs.ids.len(), inputs.context, usize::from(inputs.mode == Mode::QueryAgnostic), inputs.chunk] {
            h.update((x as u64).to_le_bytes());
        }
        inputs.ids.iter().for_each(|id| h.update(id.to_le_bytes()));
        self.dir.join(format!("{}.prefill", hex(&h.finalize())))
    }

    /// The stored prefill for `inputs`, if any. A corrupt entry is deleted and reported.
    pub fn load(&self, inputs: &PrefillInputs) -> Option<SharedPrefill> {
        let path = self.path(inputs);
        let bytes = std::fs::read(&path).ok()?;
        match decode(&bytes).filter(|p| p.ids() == inputs.ids) {
            Some(p) => {
                // mark it recently used (eviction goes by modification time)
                let _ =
                    std::fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Some(p)
            }
            None => {
                eprintln!("kvbench: prefill cache entry {} is corrupt; deleting it and recomputing", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `prefill` for `inputs`, then keep the directory under its limit. Failing to store
    /// only costs a recomputation later, so errors are reported, not returned.
    pub fn store(&self, inputs: &PrefillInputs, prefill: &SharedPrefill) {
        let payload = prefill.encode();
        if payload.len() as u64 > self.limit_bytes {
            return;
        }
        let mut bytes = Vec::with_capacity(PREAMBLE + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);
        if let Err(e) = write_atomic(&self.path(inputs), &bytes) {
            eprintln!("kvbench: cannot store a prefill in {}: {e}", self.dir.display());
            return;
        }
        self.evict();
    }

    /// Delete least recently used entries until the directory is under its limit.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "prefill"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.limit_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Option<SharedPrefill> {
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let payload = &bytes[PREAMBLE..];
    (Sha256::digest(payload)[..] == bytes[12..PREAMBLE]).then(|| SharedPrefill::decode(payload))?
}

/// sha256 of the running executable: entries made by another build are never used.
fn build_id() -> Result<String, String> {
    static ID: OnceLock<Result<String, String>> = OnceLock::new();
    ID.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
        let bytes = std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
        Ok(hex(&Sha256::digest(&bytes)))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_everything_a_prefill_depends_on() {
        let c = DiskPrefills::new(PathBuf::from("/x"), 1, "build".into());
        let ids = [1, 2, 3];
        let base = PrefillInputs { model: "m", ids: &ids, context: 2, mode: Mode::QueryAware, chunk: 512 };
        let p = c.path(&base);
        let other_ids = [1, 2, 4];
        for changed in [
            PrefillInputs { model: "n", ..base },
            PrefillInputs { ids: &other_ids, ..base },
            PrefillInputs { context: 1, ..base },
            PrefillInputs { mode: Mode::QueryAgnostic, ..base },
            PrefillInputs { chunk: 256, ..base },
        ] {
            assert_ne!(c.path(&changed), p);
        }
        assert_ne!(DiskPrefills::new(PathBuf::from("/x"), 1, "other".into()).path(&base), p);
        assert_eq!(c.path(&base), p);
    }

    #[test]
    fn bad_files_are_misses() {
        assert!(decode(b"").is_none());
        assert!(decode(b"KVBPFILL\x01\0\0\0").is_none());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(b"junk"));
        bytes.extend_from_slice(b"junk");
        assert!(decode(&bytes).is_none(), "a checksummed payload that is not a prefill");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(decode(&bytes).is_none(), "checksum mismatch");
    }
}
