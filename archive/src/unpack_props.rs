//! Property tests of the unpack policy: random archives built from a small alphabet of
//! names (`..`, `.`, empty, absolute), links to anywhere and every entry type must
//! never change anything outside the destination, whether they are refused or not.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use tar::EntryType;

use super::*;
use crate::options::Limits;
use crate::testing::{Raw, gzip, tar_bytes};

fn segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "l", "d", "..", "..", ".", "", "canary", "keep"])
}

/// Names and link targets: 1 to 4 segments, sometimes absolute.
fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(segment(), 1..5)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute { format!("/{joined}") } else { joined }
    })
}

fn kind() -> impl Strategy<Value = EntryType> {
    prop::sample::select(vec![
        EntryType::Regular,
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Fifo,
    ])
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: EntryType,
    target: String,
}

fn entry() -> impl Strategy<Value = Entry> {
    (path(), kind(), path()).prop_map(|(name, kind, target)| Entry { name, kind, target })
}

/// The gzip'd archive of `entries`; absolute names and targets point into `canary`,
/// where an escape would land.
fn archive_of(entries: &[Entry], canary: &Path) -> Vec<u8> {
    let rooted = |p: &str| match p.strip_prefix('/') {
        Some(rest) => format!("{}/{rest}", canary.display()),
        None => p.to_string(),
    };
    let names: Vec<String> = entries.iter().map(|e| rooted(&e.name)).collect();
    let targets: Vec<String> = entries.iter().map(|e| rooted(&e.target)).collect();
    let raws: Vec<Raw<'_>> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| names[*i].len() <= 100 && targets[*i].len() <= 100)
        .map(|(i, e)| Raw {
            name: names[i].as_bytes(),
            kind: e.kind,
            link: if matches!(e.kind, EntryType::Symlink | EntryType::Link) { targets[i].as_bytes() } else { b"" },
            data: if e.kind == EntryType::Regular { b"evil" } else { b"" },
            mode: 0o777,
        })
        .collect();
    gzip(&tar_bytes(&raws))
}

/// Everything below `dir`, with contents and modes, not following links.
fn snapshot(dir: &Path) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let meta = fs::symlink_metadata(&current).unwrap();
        let mode = meta.permissions().mode();
        let content = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&current).unwrap().display())
        } else if meta.is_file() {
            fs::read_to_string(&current).unwrap_or_default()
        } else {
            for child in fs::read_dir(&current).unwrap() {
                stack.push(child.unwrap().path());
            }
            String::new()
        };
        out.push((current.display().to_string(), content, mode));
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nothing_outside_the_destination_changes(entries in prop::collection::vec(entry(), 1..8)) {
        let scene = super::tests::Scene::new();
        let (dest, canary) = (&scene.dest, &scene.canary);
        let root = dest.parent().unwrap();
        let before = snapshot(root);

        let archive = archive_of(&entries, canary);
        let options = UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::FromArchive, only: None, progress: None };
        let _ = unpack_tar_gz(&archive[..], dest, &options);

        let after: Vec<_> = snapshot(root).into_iter().filter(|(p, _, _)| !Path::new(p).starts_with(dest)).collect();
        let before: Vec<_> = before.into_iter().filter(|(p, _, _)| !Path::new(p).starts_with(dest)).collect();
        let dest_meta = fs::symlink_metadata(dest).unwrap();
        prop_assert!(dest_meta.is_dir(), "the destination itself was replaced");
        prop_assert_eq!(after, before);
    }

    /// Two downloads into one directory, each unpacked into a staging directory and
    /// merged: nothing outside changes, and every link left resolves inside.
    #[test]
    fn two_downloads_merged_into_one_directory_stay_inside(
        first in prop::collection::vec(entry(), 1..8),
        second in prop::collection::vec(entry(), 1..8),
    ) {
        let scene = super::tests::Scene::new();
        let (dest, canary) = (&scene.dest, &scene.canary);
        let root = dest.parent().unwrap();
        let before: Vec<_> = snapshot(root).into_iter().filter(|(p, _, _)| !Path::new(p).starts_with(dest)).collect();
        for entries in [&first, &second] {
            let archive = archive_of(entries, canary);
            let staging = dest.join(".staging");
            fs::create_dir(&staging).unwrap();
            let options = UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::Now, only: None, progress: None };
            if unpack_tar_gz(&archive[..], &staging, &options).is_ok() {
                let _ = crate::merge_tree(&staging, dest);
            }
            fs::remove_dir_all(&staging).unwrap();
        }
        let after: Vec<_> = snapshot(root).into_iter().filter(|(p, _, _)| !Path::new(p).starts_with(dest)).collect();
        prop_assert_eq!(after, before);
        let inside = fs::canonicalize(dest).unwrap();
        for (path, content, _) in snapshot(dest) {
            if let (true, Ok(resolved)) = (content.starts_with("-> "), fs::canonicalize(&path)) {
                prop_assert!(resolved.starts_with(&inside), "{} resolves to {}", path, resolved.display());
            }
        }
    }
}
