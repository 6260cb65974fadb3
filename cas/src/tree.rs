//! The client's side: the input tree built from the same selection as a tar upload
//! (the sources' walk, links followed, the filters), every file hashed as it is read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lrpymrpc_archive::walk::{Found, WalkOptions, walk};
use lrpymrpc_archive::{Candidate, PackError, PackRoot};
use lrpymrpc_proto::v1::{Digest, Directory, DirectoryNode, FileNode};

use crate::digest::{Hasher, directory_digest};
use crate::stat_cache::StatCache;

/// An input tree: its root, every directory (by digest), and where each blob's bytes
/// are on disk.
#[derive(Debug, Default)]
pub struct InputTree {
    pub root: Digest,
    /// Every distinct directory of the tree, the root included.
    pub directories: Vec<Directory>,
    /// For each file digest (hash), one file on disk with those bytes, and its digest.
    pub blobs: HashMap<String, (PathBuf, Digest)>,
    pub files: u64,
    /// Bytes of all files (each file counted, even when two have the same bytes).
    pub file_bytes: u64,
    /// What was passed over and why (as a tar upload reports it).
    pub skipped: Vec<(PathBuf, String)>,
    /// Files that were read to be hashed (the stat cache knew the others).
    pub hashed_files: u64,
    pub hashed_bytes: u64,
}

/// One entry below the root, by its path in the tree.
enum Node {
    Directory,
    File { digest: Digest, executable: bool },
}

/// Walks `roots` as a tar upload would (links followed, `keep` deciding) and hashes
/// every file the stat cache does not know. `on_read` is told the bytes read, for a
/// progress bar.
pub fn build_tree(
    roots: &[PackRoot],
    keep: &dyn Fn(&Candidate<'_>) -> bool,
    on_read: &dyn Fn(u64),
    cache: &mut StatCache,
) -> Result<InputTree, PackError> {
    // By path: a later root with the same name merges into the earlier one, as a tar
    // upload's later entries replace earlier ones.
    let mut nodes: HashMap<PathBuf, Node> = HashMap::new();
    let mut tree = InputTree::default();
    let options = WalkOptions { follow_symlinks: true, keep };
    let mut visit = |found: Found<'_>| -> Result<(), PackError> {
        match found {
            Found::Directory { name, .. } | Found::File { name, .. } if name.to_str().is_none() => {
                return Err(PackError::NotUtf8 { path: name.to_path_buf() });
            }
            Found::Directory { name, .. } => {
                if !name.as_os_str().is_empty() {
                    nodes.insert(name.to_path_buf(), Node::Directory);
                }
            }
            Found::File { disk, name, meta } => {
                let digest = match cache.lookup(meta) {
                    Some(digest) => digest,
                    None => {
                        let digest = hash_file(disk, on_read)?;
                        cache.insert(meta, &digest);
                        tree.hashed_files += 1;
                        tree.hashed_bytes += digest.size;
                        digest
                    }
                };
                tree.files += 1;
                tree.file_bytes += digest.size;
                if !tree.blobs.contains_key(&digest.hash) {
                    tree.blobs.insert(digest.hash.clone(), (disk.to_path_buf(), digest.clone()));
                }
                let executable = meta.permissions().mode() & 0o111 != 0;
                nodes.insert(name.to_path_buf(), Node::File { digest, executable });
            }
            // Links are followed for uploads; a dangling one is reported as skipped.
            Found::Symlink { .. } => {}
        }
        Ok(())
    };
    tree.skipped = walk(roots, &options, &mut visit)?;
    let (root, directories) = assemble(&nodes);
    tree.root = root;
    tree.directories = directories;
    Ok(tree)
}

/// Hashes a file's bytes.
fn hash_file(path: &Path, on_read: &dyn Fn(u64)) -> Result<Digest, PackError> {
    let read_error = |source| PackError::Read { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Hasher::default();
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(read_error)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..n]);
        on_read(n as u64);
    }
}

/// Builds the directories bottom-up; returns the root's digest and every distinct
/// directory.
fn assemble(nodes: &HashMap<PathBuf, Node>) -> (Digest, Vec<Directory>) {
    let mut children: HashMap<&Path, Vec<(&str, &Node, &Path)>> = HashMap::with_capacity(nodes.len() / 4 + 1);
    children.entry(Path::new("")).or_default();
    // Every name is UTF-8: `build_tree` refuses others.
    for (path, node) in nodes {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            continue;
        };
        children.entry(parent).or_default().push((name, node, path.as_path()));
        if let Node::Directory = node {
            children.entry(path.as_path()).or_default();
        }
    }
    // Deepest first, so every child directory's digest is known before its parent's.
    let mut order: Vec<(usize, &Path)> = children.keys().map(|path| (path.components().count(), *path)).collect();
    order.sort_unstable_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    let mut digests: HashMap<&Path, Digest> = HashMap::with_capacity(order.len());
    let mut directories: HashMap<String, Directory> = HashMap::with_capacity(order.len());
    for (_, path) in order {
        let mut directory = Directory::default();
        let mut entries = std::mem::take(children.get_mut(path).expect("every key is in the map"));
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, node, child_path) in entries {
            match node {
                Node::File { digest, executable } => directory.files.push(FileNode {
                    name: name.to_string(),
                    digest: Some(digest.clone()),
                    executable: *executable,
                }),
                Node::Directory => directory
                    .directories
                    .push(DirectoryNode { name: name.to_string(), digest: digests.get(child_path).cloned() }),
            }
        }
        let digest = directory_digest(&directory);
        directories.entry(digest.hash.clone()).or_insert(directory);
        digests.insert(path, digest);
    }
    let root = digests.remove(Path::new("")).unwrap_or_default();
    (root, directories.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything(_: &Candidate<'_>) -> bool {
        true
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
        let first = build_tree(&roots, &everything, &|_| {}, &mut cache).unwrap();
        assert_eq!((first.files, first.file_bytes, first.blobs.len()), (3, 3, 2), "two files share bytes");
        // root, cells, sub, empty
        assert_eq!(first.directories.len(), 4);
        let again = build_tree(&roots, &everything, &|_| {}, &mut cache).unwrap();
        assert_eq!(again.root, first.root);
        std::fs::write(src.join("sub/b.sp"), "B").unwrap();
        assert_ne!(build_tree(&roots, &everything, &|_| {}, &mut cache).unwrap().root, first.root);
    }
}
