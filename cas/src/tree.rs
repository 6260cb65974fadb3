//! The client's side: the input tree built from the same selection as a tar upload
//! (the sources' walk, links followed, the filters), every file hashed as it is read.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::digest::{HashBytes, Hasher, directory_digest, hash_bytes, hex};
use crate::stat_cache::StatCache;
use lrpymrpc_archive::walk::{Found, WalkOptions, walk};
use lrpymrpc_archive::{Candidate, PackError, PackRoot};
use lrpymrpc_proto::v1::{Digest, Directory, DirectoryNode, FileNode};

/// An input tree: its root, every directory (by digest), and where each file's bytes
/// are on disk.
#[derive(Debug, Default)]
pub struct InputTree {
    pub root: Digest,
    /// Every distinct directory of the tree, the root included.
    pub directories: Vec<Directory>,
    /// Every file kept, in walk order: where it is on disk, and its hash and size (two
    /// files with the same bytes are both here).
    sources: Vec<(PathBuf, HashBytes, u64)>,
    pub files: u64,
    /// Bytes of all files (each file counted, even when two have the same bytes).
    pub file_bytes: u64,
    /// What was passed over and why (as a tar upload reports it).
    pub skipped: Vec<(PathBuf, String)>,
    /// Files that were read to be hashed (the stat cache knew the others).
    pub hashed_files: u64,
    pub hashed_bytes: u64,
}

impl InputTree {
    /// For each of `wanted` that is a file of the tree, one file on disk with those
    /// bytes; what is not in the tree is left out. Made only when the server lacks
    /// something, so an unchanged tree never builds it.
    pub fn sources_of(&self, wanted: &[Digest]) -> HashMap<String, (PathBuf, Digest)> {
        let mut wanted: HashSet<HashBytes> = wanted.iter().filter_map(|digest| hash_bytes(&digest.hash)).collect();
        let mut found = HashMap::with_capacity(wanted.len());
        for (path, hash, size) in &self.sources {
            // Each digest once: the first file found with those bytes.
            if wanted.remove(hash) {
                let digest = Digest { hash: hex(hash), size: *size };
                found.insert(digest.hash.clone(), (path.clone(), digest));
            }
        }
        found
    }
}

/// Walks `roots` as a tar upload would (links followed, `keep` deciding) and hashes
/// every file the stat cache does not know. `on_read` is told the bytes read, for a
/// progress bar. Setting `stop` ends the build within one read: it then fails with
/// [`std::io::ErrorKind::Interrupted`].
pub fn build_tree(
    roots: &[PackRoot],
    keep: &dyn Fn(&Candidate<'_>) -> bool,
    on_read: &dyn Fn(u64),
    cache: &mut StatCache,
    stop: &AtomicBool,
) -> Result<InputTree, PackError> {
    let mut tree = InputTree::default();
    let mut building = Building::default();
    let mut buffer = Vec::new();
    let keep = |candidate: &Candidate<'_>| !stop.load(Ordering::Relaxed) && keep(candidate);
    let options = WalkOptions { follow_symlinks: true, keep: &keep };
    let mut visit = |found: Found<'_>| -> Result<(), PackError> {
        match found {
            Found::Directory { name, .. } | Found::File { name, .. } if name.to_str().is_none() => {
                return Err(PackError::NotUtf8 { path: name.to_path_buf() });
            }
            Found::Directory { name, .. } => building.enter(name),
            Found::DirectoryDone { .. } => building.leave(),
            Found::File { disk, name, meta } => {
                let (hash, size) = match cache.lookup(meta) {
                    Some(hash) => (hash, meta.len()),
                    None => {
                        let (hash, size, unchanged) = hash_file(disk, meta, &mut buffer, on_read, stop)?;
                        if unchanged {
                            cache.insert(meta, hash, size);
                        }
                        tree.hashed_files += 1;
                        tree.hashed_bytes += size;
                        (hash, size)
                    }
                };
                tree.files += 1;
                tree.file_bytes += size;
                let executable = meta.permissions().mode() & 0o111 != 0;
                building.file(name, Built::File { hash, size, executable });
                tree.sources.push((disk.to_path_buf(), hash, size));
            }
            // Links are followed for uploads; a dangling one is reported as skipped.
            Found::Symlink { .. } => {}
        }
        Ok(())
    };
    tree.skipped = walk(roots, &options, &mut visit)?;
    if stop.load(Ordering::Relaxed) {
        return Err(stopped(roots.first().map_or(Path::new(""), |root| root.disk.as_path())));
    }
    let (root, directories) = building.finish();
    tree.root = root;
    tree.directories = directories;
    Ok(tree)
}

/// The hash and size of the file at `path`, read through `buffer` (one for the whole
/// walk), and whether the file read is the one the walk saw (`seen`: the same inode, size, mtime and ctime after the read): only then
/// may the stat cache remember the hash under that metadata.
fn hash_file(
    path: &Path,
    seen: &std::fs::Metadata,
    buffer: &mut Vec<u8>,
    on_read: &dyn Fn(u64),
    stop: &AtomicBool,
) -> Result<(HashBytes, u64, bool), PackError> {
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| PackError::Read { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Hasher::default();
    buffer.resize(256 * 1024, 0);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped(path));
        }
        let n = file.read(buffer).map_err(read_error)?;
        if n == 0 {
            let (hash, size) = hasher.finish_bytes();
            let after = file.metadata().map_err(read_error)?;
            let same = |m: &std::fs::Metadata| {
                (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
            };
            let unchanged = same(&after) == same(seen) && size == seen.len();
            return Ok((hash, size, unchanged));
        }
        hasher.update(&buffer[..n]);
        on_read(n as u64);
    }
}

/// A build ended by its `stop` flag.
fn stopped(path: &Path) -> PackError {
    let source = std::io::Error::new(std::io::ErrorKind::Interrupted, "the tree was no longer wanted");
    PackError::Read { path: path.to_path_buf(), source }
}

/// The tree as the walk reports it: directories in an arena, each entry under the
/// directory the walk is in (a stack), so no path is looked up or hashed.
#[derive(Debug)]
struct Building {
    /// Index 0 is the root; a directory's index is always above its parent's.
    directories: Vec<Vec<Entry>>,
    /// Directories entered more than once (two roots merging there), the root among
    /// them: only in those can a name come again.
    merging: Vec<bool>,
    /// The directories the walk is in, innermost last.
    open: Vec<usize>,
    /// Entries in the order they came: when two share a name (two roots merging),
    /// the later one replaces the earlier, as in a tar upload.
    serial: u64,
}

#[derive(Debug)]
struct Entry {
    name: String,
    serial: u64,
    built: Built,
}

#[derive(Debug)]
enum Built {
    File { hash: HashBytes, size: u64, executable: bool },
    Directory(usize),
}

impl Default for Building {
    fn default() -> Building {
        Building { directories: vec![Vec::new()], merging: vec![true], open: Vec::new(), serial: 0 }
    }
}

impl Building {
    /// The directory the walk is in (the root before any).
    fn current(&self) -> usize {
        self.open.last().copied().unwrap_or(0)
    }

    /// A directory begins; an empty `name` is a root whose contents go at the top. A
    /// second root with the name of an earlier directory merges into it.
    fn enter(&mut self, name: &Path) {
        let Some(base) = name.file_name().and_then(|n| n.to_str()) else {
            self.open.push(0);
            return;
        };
        let parent = self.current();
        let existing = match self.merging[parent] {
            true => self.directories[parent].iter().rev().find_map(|entry| match entry.built {
                Built::Directory(index) if entry.name == base => Some(index),
                _ => None,
            }),
            false => None,
        };
        let index = match existing {
            Some(index) => {
                self.merging[index] = true;
                index
            }
            None => {
                self.directories.push(Vec::new());
                self.merging.push(false);
                self.directories.len() - 1
            }
        };
        self.push(parent, base, Built::Directory(index));
        self.open.push(index);
    }

    fn leave(&mut self) {
        self.open.pop();
    }

    fn file(&mut self, name: &Path, built: Built) {
        let base = name.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        self.push(self.current(), base, built);
    }

    fn push(&mut self, directory: usize, name: &str, built: Built) {
        self.serial += 1;
        self.directories[directory].push(Entry { name: name.to_string(), serial: self.serial, built });
    }

    /// Sorts every directory, keeps the latest of equal names, and digests the
    /// directories bottom-up; returns the root's digest and every distinct directory
    /// reachable from the root.
    fn finish(mut self) -> (Digest, Vec<Directory>) {
        let count = self.directories.len();
        let mut reachable = vec![false; count];
        reachable[0] = true;
        // Parents come before their children: one pass marks what the root reaches.
        for index in 0..count {
            let entries = &mut self.directories[index];
            entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()).then(a.serial.cmp(&b.serial)));
            entries.dedup_by(|later, earlier| {
                let same = later.name == earlier.name;
                if same {
                    std::mem::swap(later, earlier);
                }
                same
            });
            if reachable[index] {
                for entry in entries.iter() {
                    if let Built::Directory(child) = entry.built {
                        reachable[child] = true;
                    }
                }
            }
        }
        let mut digests: Vec<Option<Digest>> = vec![None; count];
        let mut distinct: HashSet<String> = HashSet::with_capacity(count);
        let mut directories = Vec::with_capacity(count);
        for index in (0..count).rev().filter(|&index| reachable[index]) {
            let mut directory = Directory::default();
            for entry in std::mem::take(&mut self.directories[index]) {
                match entry.built {
                    Built::File { hash, size, executable } => directory.files.push(FileNode {
                        name: entry.name,
                        digest: Some(Digest { hash: hex(&hash), size }),
                        executable,
                    }),
                    Built::Directory(child) => {
                        directory.directories.push(DirectoryNode { name: entry.name, digest: digests[child].clone() });
                    }
                }
            }
            let digest = directory_digest(&directory);
            if distinct.insert(digest.hash.clone()) {
                directories.push(directory);
            }
            digests[index] = Some(digest);
        }
        (digests[0].take().unwrap_or_default(), directories)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_of;

    fn everything(_: &Candidate<'_>) -> bool {
        true
    }

    #[test]
    fn a_file_changed_since_the_walk_saw_it_is_not_remembered_under_what_the_walk_saw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "before").unwrap();
        let seen = std::fs::metadata(&path).unwrap();
        let mut buffer = Vec::new();
        let stop = AtomicBool::new(false);
        let (_, _, unchanged) = hash_file(&path, &seen, &mut buffer, &|_| {}, &stop).unwrap();
        assert!(unchanged, "the file the walk saw");
        // Replaced by another file (a new inode) after the walk looked at it.
        std::fs::write(dir.path().join("g"), "after!").unwrap();
        std::fs::rename(dir.path().join("g"), &path).unwrap();
        let (hash, size, unchanged) = hash_file(&path, &seen, &mut buffer, &|_| {}, &stop).unwrap();
        assert_eq!((hash, size), (hash_bytes(&digest_of(b"after!").hash).unwrap(), 6));
        assert!(!unchanged, "what was read is not what the walk saw: the cache keeps nothing of it");
    }

    #[test]
    fn equal_trees_have_equal_roots_and_a_change_changes_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("cells");
        std::fs::create_dir_all(src.join("sub/empty")).unwrap();
        std::fs::write(src.join("a.sp"), "a").unwrap();
        std::fs::write(src.join("sub/b.sp"), "b").unwrap();
        std::fs::write(src.join("sub/same.sp"), "a").unwrap();
        let roots = [PackRoot { disk: src.clone(), name: "cells".into() }];
        let mut cache = StatCache::default();
        let first = build_tree(&roots, &everything, &|_| {}, &mut cache, &AtomicBool::new(false)).unwrap();
        assert_eq!((first.files, first.file_bytes), (3, 3));
        let a = digest_of(b"a");
        assert_eq!(first.sources_of(std::slice::from_ref(&a)).len(), 1, "two files share bytes: one source");
        // root, cells, sub, empty
        assert_eq!(first.directories.len(), 4);
        let again = build_tree(&roots, &everything, &|_| {}, &mut cache, &AtomicBool::new(false)).unwrap();
        assert_eq!(again.root, first.root);
        std::fs::write(src.join("sub/b.sp"), "B").unwrap();
        assert_ne!(
            build_tree(&roots, &everything, &|_| {}, &mut cache, &AtomicBool::new(false)).unwrap().root,
            first.root
        );
    }

    #[test]
    fn a_stopped_build_ends_with_interrupted_and_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "a").unwrap();
        let roots = [PackRoot { disk: dir.path().to_path_buf(), name: "src".into() }];
        let error = build_tree(&roots, &everything, &|_| {}, &mut StatCache::default(), &AtomicBool::new(true));
        assert!(
            matches!(&error, Err(PackError::Read { source, .. }) if source.kind() == std::io::ErrorKind::Interrupted),
            "{error:?}"
        );
    }
}
