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
//! so). The directory is kept under a size limit: each build's entries sit in a folder of their
//! own; other builds' folders go first (least recently used first, sparing any used within the
//! last hour), and when this build's entries fill the limit, new ones are not admitted (see
//! [`DiskPrefills::store`]). The full tier's prefills take about 42 GB
//! (46 KB per prompt token): raise the limit to share all of them. Entries are valid only for
//! the machine type that made them if a cache folder is shared between machines (kernels are
//! chosen by CPU features at run time); keep one per machine.
//!
//! Location: `$KVBENCH_PREFILL_CACHE`, else `target/kvbench-prefill`; `KVBENCH_PREFILL_CACHE=off`
//! turns it off. Limit: `$KVBENCH_PREFILL_CACHE_GB` gibibytes (default 4).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::assets::{hex, write_atomic_parts};
use crate::model::generate::{GenerateOptions, Mode, Prompt, SharedPrefill};

/// An entry's magic.
pub const MAGIC: &[u8; 8] = b"KVBPFILL";
/// The entry format this build writes and reads (2: the prefill stores carry Expected
/// Attention's query statistics; 3: each layer tagged, a sliding-window layer's window held).
pub const VERSION: u32 = 3;
/// Bytes before an entry's payload: magic, version, the payload's sha256.
pub const PREAMBLE: usize = 8 + 4 + 32;
/// How recently another build's folder must have been used to be spared by [`DiskPrefills::store`].
const IN_USE: std::time::Duration = std::time::Duration::from_secs(3600);

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
    /// From the environment (see the module doc and [`crate::assets::settings`]); `Ok(None)`
    /// when turned off.
    pub fn from_env(tier: super::Tier) -> Result<Option<Self>, String> {
        let Some(dir) = crate::assets::settings::prefill_cache() else { return Ok(None) };
        let limit =
            crate::assets::settings::prefill_cache_bytes(tier.prefill_cache_gib()).map_err(|e| e.to_string())?;
        Ok(Some(Self::new(dir, limit, build_id()?)))
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
        for x in [inputs.ids.len(), inputs.context, inputs.mode.code() as usize, inputs.chunk] {
            h.update((x as u64).to_le_bytes());
        }
        inputs.ids.iter().for_each(|id| h.update(id.to_le_bytes()));
        self.build_dir().join(format!("{}.prefill", hex(&h.finalize())))
    }

    /// This build's entries live in a folder of their own, so that other builds' entries (of no
    /// use to this one) can be dropped whole.
    fn build_dir(&self) -> PathBuf {
        self.dir.join(format!("build-{}", &self.build[..16.min(self.build.len())]))
    }

    /// The stored prefill for `inputs`, if any. A corrupt entry is deleted and reported.
    pub fn load(&self, inputs: &PrefillInputs) -> Option<SharedPrefill> {
        let path = self.path(inputs);
        let bytes = std::fs::read(&path).ok()?;
        match decode_entry(&bytes).filter(|p| p.ids() == inputs.ids && p.mode() == inputs.mode) {
            Some(p) => {
                // a run reading its entries is using them: its folder's time says so (best
                // effort; see `make_room`)
                let _ = std::fs::File::open(self.build_dir()).and_then(|f| f.set_modified(SystemTime::now()));
                Some(p)
            }
            None => {
                eprintln!("kvbench: prefill cache entry {} is corrupt; deleting it and recomputing", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `prefill` for `inputs` if it fits under the limit. When it does not, other builds'
    /// entries not in use are dropped first; if what remains fills the limit, the new one is not
    /// admitted, so that the entries already held keep serving (a trial cycles through its task's
    /// samples in order, which an evict-oldest cache smaller than the cycle would turn into all
    /// misses). Failing to store only costs a recomputation later, so errors are
    /// reported, not returned.
    pub fn store(&self, inputs: &PrefillInputs, prefill: &SharedPrefill) {
        // a snapshot that is not a full-precision prefill is not cached (none is, today)
        let Some(payload) = prefill.encode() else { return };
        let size = (PREAMBLE + payload.len()) as u64;
        if self.make_room(size).is_none() {
            return;
        }
        let (version, digest) = (VERSION.to_le_bytes(), Sha256::digest(&payload));
        if let Err(e) = write_atomic_parts(&self.path(inputs), &[MAGIC, &version, &digest, &payload]) {
            eprintln!("kvbench: cannot store a prefill in {}: {e}", self.dir.display());
        }
    }

    /// `Some` if `size` more bytes fit under the limit, after dropping, if need be, temporary
    /// files left by killed writers (older than an hour) and other builds' folders, least
    /// recently used first and only as many as needed. A folder used within the last
    /// [`IN_USE`] (an entry stored or read) is kept: it may belong to a run still going, such as
    /// a frozen build running the full tier while the code changes, which would otherwise
    /// recompute every prefill it lost.
    fn make_room(&self, size: u64) -> Option<()> {
        let mine = self.build_dir();
        let folders: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        let used = |dir: &Path| -> u64 {
            std::fs::read_dir(dir)
                .map(|r| r.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0)
        };
        let mut total: u64 = folders.iter().map(|d| used(d)).sum();
        if total + size <= self.limit_bytes {
            return Some(());
        }
        let now = SystemTime::now();
        let stale = now - std::time::Duration::from_secs(3600);
        for entry in std::fs::read_dir(&mine).into_iter().flatten().flatten() {
            let tmp = entry.file_name().to_string_lossy().ends_with(".tmp");
            if let Ok(m) = entry.metadata()
                && tmp
                && m.modified().is_ok_and(|t| t < stale)
                && std::fs::remove_file(entry.path()).is_ok()
            {
                total -= m.len();
            }
        }
        let mut others: Vec<(SystemTime, &PathBuf)> = folders
            .iter()
            .filter(|d| **d != mine)
            .filter_map(|d| Some((d.metadata().and_then(|m| m.modified()).ok()?, d)))
            .filter(|(used_at, _)| *used_at < now - IN_USE)
            .collect();
        others.sort();
        for (_, dir) in others {
            if total + size <= self.limit_bytes {
                break;
            }
            let freed = used(dir);
            if std::fs::remove_dir_all(dir).is_ok() {
                total -= freed;
            }
        }
        (total + size <= self.limit_bytes).then_some(())
    }
}

/// The bytes of a disk entry holding `prefill` (what [`DiskPrefills::store`] writes), for tests
/// and the fuzzer's seeds.
pub fn encode_entry(prefill: &SharedPrefill) -> Vec<u8> {
    wrap(VERSION, &prefill.encode().expect("a shared prefill encodes"))
}

/// An entry of format `version` around `payload`: magic, version, the payload's sha256, the
/// payload (the fuzzer also writes other versions).
pub fn wrap(version: u32, payload: &[u8]) -> Vec<u8> {
    [&MAGIC[..], &version.to_le_bytes(), &Sha256::digest(payload), payload].concat()
}

/// The prefill a disk entry's bytes hold; `None` for anything else (the reader of untrusted
/// bytes the fuzzer drives).
pub fn decode_entry(bytes: &[u8]) -> Option<SharedPrefill> {
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let payload = &bytes[PREAMBLE..];
    (Sha256::digest(payload)[..] == bytes[12..PREAMBLE]).then(|| SharedPrefill::decode(payload))?
}

/// sha256 of the running executable: entries made by another build are never used.
pub fn build_id() -> Result<String, String> {
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
            PrefillInputs { mode: Mode::QueryAwareUncompressedFirstToken, ..base },
            PrefillInputs { chunk: 256, ..base },
        ] {
            assert_ne!(c.path(&changed), p);
        }
        assert_ne!(DiskPrefills::new(PathBuf::from("/x"), 1, "other".into()).path(&base), p);
        assert!(p.starts_with(c.build_dir()), "entries live in their build's folder");
    }

    #[test]
    fn bad_files_are_misses() {
        assert!(decode_entry(b"").is_none());
        assert!(decode_entry(b"KVBPFILL\x01\0\0\0").is_none());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(b"junk"));
        bytes.extend_from_slice(b"junk");
        assert!(decode_entry(&bytes).is_none(), "a checksummed payload that is not a prefill");
        // (that a flipped bit in a real entry's floats is caught by the checksum alone is checked
        // in tests/methods.rs, which has a model to make one)
    }

    /// A folder of another build holding `bytes`, last used `hours_ago`.
    fn other_build(dir: &Path, name: &str, bytes: usize, hours_ago: u64) -> PathBuf {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("a.prefill"), vec![0u8; bytes]).unwrap();
        let at = SystemTime::now() - std::time::Duration::from_secs(hours_ago * 3600);
        std::fs::File::open(&folder).unwrap().set_modified(at).unwrap();
        folder
    }

    #[test]
    fn other_builds_go_first_and_a_full_cache_admits_nothing() {
        let dir = std::env::temp_dir().join(format!("kvbench-prefill-room-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = DiskPrefills::new(dir.clone(), 200, "0123456789abcdef-this-build".into());
        let oldest = other_build(&dir, "build-fedcba9876543210", 60, 5);
        let older = other_build(&dir, "build-aaaaaaaaaaaaaaaa", 60, 3);
        let running = other_build(&dir, "build-bbbbbbbbbbbbbbbb", 30, 0);
        std::fs::create_dir_all(cache.build_dir()).unwrap();
        std::fs::write(cache.build_dir().join("b.prefill"), [0u8; 50]).unwrap();
        assert_eq!(cache.make_room(30), Some(()), "200 + 30 > 200: the least recently used build's 60 bytes go");
        assert!(!oldest.exists() && older.exists() && running.exists());
        assert_eq!(cache.make_room(150), None, "140 + 150 > 200; without `older` 80 + 150: `running` is in use");
        assert!(!older.exists() && running.exists(), "`running` is spared");
        assert!(cache.build_dir().join("b.prefill").exists(), "held entries are kept");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
