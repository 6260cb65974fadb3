//! The server's side: a tree a client sent is checked against the same policy as a
//! tar upload (one-component names, depth, entry count, total size) before anything
//! is written, then copied out of the store into a fresh job directory. Copies, never
//! hard links: a command that edits its inputs must not change the store or another
//! job (`std::fs::copy` shares extents where the filesystem can, at no risk). `patch`
//! turns a copy of one tree into a copy of another at the cost of what differs.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lrpymrpc_archive::Limits;
use lrpymrpc_proto::v1::{Digest, Directory};

/// What a checked tree makes: directories (parents first) and files.
#[derive(Debug, Default)]
pub struct Plan {
    /// The hash of the root directory the plan was checked from: equal roots, equal plans.
    pub root: String,
    pub directories: Vec<PathBuf>,
    /// Path, blob digest, executable.
    pub files: Vec<(PathBuf, Digest, bool)>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("the tree names directory {0}, which was not sent")]
    MissingDirectory(String),
    #[error("`{path}` is refused: {why}")]
    BadName { path: String, why: &'static str },
    #[error("an entry has no digest")]
    NoDigest,
    #[error("`{0}` is not a SHA-256 digest (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("the tree is deeper than the limit of {0}")]
    TooDeep(usize),
    #[error("the tree has more entries than the limit of {0}")]
    TooManyEntries(u64),
    #[error("the tree's files hold more than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("cannot write `{path}`: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("blob {0} is no longer in the store")]
    BlobGone(String),
    #[error("`{}` claims {claimed} bytes, but its blob holds {size}", path.display())]
    WrongSize { path: PathBuf, claimed: u64, size: u64 },
}

/// Checks the tree under `root` (directories by their digest's hash) and lists what it
/// makes. Shared directories are expanded where they are used; the limits count every
/// use, so a small tree that names one directory many times cannot grow unbounded.
pub fn plan(root: &Digest, directories: &HashMap<String, Directory>, limits: &Limits) -> Result<Plan, TreeError> {
    check_expanded_size(root, directories, limits)?;
    let mut plan = Plan { root: root.hash.clone(), ..Plan::default() };
    let mut entries = 0u64;
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(PathBuf::new(), root.hash.clone(), 0)];
    while let Some((path, hash, depth)) = stack.pop() {
        if depth > limits.max_depth {
            return Err(TreeError::TooDeep(limits.max_depth));
        }
        let directory = directories.get(&hash).ok_or_else(|| TreeError::MissingDirectory(hash.clone()))?;
        let mut names: Vec<&str> = Vec::new();
        for file in &directory.files {
            let child = checked_child(&path, &file.name)?;
            let digest = checked_digest(file.digest.as_ref())?.clone();
            plan.bytes = plan.bytes.saturating_add(digest.size);
            if plan.bytes > limits.max_bytes {
                return Err(TreeError::TooLarge(limits.max_bytes));
            }
            names.push(&file.name);
            plan.files.push((child, digest, file.executable));
        }
        for sub in &directory.directories {
            let child = checked_child(&path, &sub.name)?;
            let digest = checked_digest(sub.digest.as_ref())?;
            names.push(&sub.name);
            plan.directories.push(child.clone());
            stack.push((child, digest.hash.clone(), depth + 1));
        }
        names.sort_unstable();
        if names.windows(2).any(|pair| pair[0] == pair[1]) {
            let name = names.windows(2).find(|pair| pair[0] == pair[1]).map(|pair| pair[0]).unwrap_or_default();
            return Err(TreeError::BadName { path: path.join(name).display().to_string(), why: "it appears twice" });
        }
        entries += names.len() as u64;
        if entries > limits.max_entries {
            return Err(TreeError::TooManyEntries(limits.max_entries));
        }
    }
    // Parents before children: a path sorts after its parent.
    plan.directories.sort();
    Ok(plan)
}

/// What a directory expands to: its entries (every use of a shared directory counted),
/// its files' bytes and its height.
#[derive(Debug, Clone, Copy)]
struct Expanded {
    entries: u64,
    bytes: u64,
    height: usize,
}

/// Refuses a tree whose expansion passes a limit before expanding it: each distinct
/// directory's expanded size is worked out once, children first, so a 4 KB tree of
/// directories naming each other twenty levels deep (a million entries) costs twenty
/// steps, not a million.
fn check_expanded_size(
    root: &Digest,
    directories: &HashMap<String, Directory>,
    limits: &Limits,
) -> Result<(), TreeError> {
    let mut sizes: HashMap<&str, Expanded> = HashMap::new();
    let mut visiting: HashSet<&str> = HashSet::new();
    let mut stack: Vec<(&str, bool)> = vec![(root.hash.as_str(), false)];
    while let Some((hash, children_done)) = stack.pop() {
        if sizes.contains_key(hash) {
            continue;
        }
        let directory = directories.get(hash).ok_or_else(|| TreeError::MissingDirectory(hash.to_string()))?;
        if !children_done {
            // Digests cannot name each other in a ring; a crafted one is refused all the same.
            if !visiting.insert(hash) {
                return Err(TreeError::TooDeep(limits.max_depth));
            }
            stack.push((hash, true));
            for sub in &directory.directories {
                let digest = checked_digest(sub.digest.as_ref())?;
                if !sizes.contains_key(digest.hash.as_str()) {
                    stack.push((digest.hash.as_str(), false));
                }
            }
            continue;
        }
        visiting.remove(hash);
        let mut size = Expanded {
            entries: (directory.files.len() + directory.directories.len()) as u64,
            bytes: directory
                .files
                .iter()
                .filter_map(|f| f.digest.as_ref())
                .fold(0u64, |sum, d| sum.saturating_add(d.size)),
            height: 0,
        };
        for sub in &directory.directories {
            let below = sub.digest.as_ref().and_then(|d| sizes.get(d.hash.as_str())).copied();
            let below = below.ok_or_else(|| TreeError::MissingDirectory(hash.to_string()))?;
            size.entries = size.entries.saturating_add(below.entries);
            size.bytes = size.bytes.saturating_add(below.bytes);
            size.height = size.height.max(below.height + 1);
        }
        if size.entries > limits.max_entries {
            return Err(TreeError::TooManyEntries(limits.max_entries));
        }
        if size.bytes > limits.max_bytes {
            return Err(TreeError::TooLarge(limits.max_bytes));
        }
        if size.height > limits.max_depth {
            return Err(TreeError::TooDeep(limits.max_depth));
        }
        sizes.insert(hash, size);
    }
    Ok(())
}

/// A digest whose hash can name a file in the store: nothing else is ever looked up.
fn checked_digest(digest: Option<&Digest>) -> Result<&Digest, TreeError> {
    let digest = digest.ok_or(TreeError::NoDigest)?;
    match crate::digest::is_valid_hash(&digest.hash) {
        true => Ok(digest),
        false => Err(TreeError::BadDigest(digest.hash.chars().take(80).collect())),
    }
}

/// `name` must be one path component: not empty, `.` or `..`, no `/`, no NUL.
fn checked_child(parent: &Path, name: &str) -> Result<PathBuf, TreeError> {
    let why = if name.is_empty() {
        Some("an empty name")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if name.contains('/') {
        Some("a name with `/` in it")
    } else if name.contains('\0') {
        Some("a name with a NUL byte in it")
    } else {
        None
    };
    match why {
        None => Ok(parent.join(name)),
        Some(why) => {
            Err(TreeError::BadName { path: parent.join(name.escape_default().to_string()).display().to_string(), why })
        }
    }
}

/// Makes the plan's directories and files below `dest` (a fresh, empty directory
/// nobody else writes to), each file a copy of its blob at `blob_path(hash)`.
pub fn materialise(plan: &Plan, blob_path: &(dyn Fn(&str) -> PathBuf + Sync), dest: &Path) -> Result<(), TreeError> {
    for directory in &plan.directories {
        std::fs::create_dir(dest.join(directory)).map_err(|e| write_error(directory, e))?;
    }
    let files: Vec<&(PathBuf, Digest, bool)> = plan.files.iter().collect();
    copy_all(&files, blob_path, dest)
}

/// What [`patch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Patched {
    /// Files already right, left as they were.
    pub kept: usize,
    /// Files copied out of the store.
    pub copied: usize,
    /// Files and directories removed (a directory counts once, whatever it held).
    pub removed: usize,
}

/// Turns `dest`, which holds exactly what `materialise(old)` made (nobody has written
/// to it since), into what `materialise(new)` would make: a file both plans hold at the
/// same path with the same digest stays; the rest is removed, made or copied. What it
/// costs follows what changed, not the size of the tree.
pub fn patch(
    old: &Plan,
    new: &Plan,
    blob_path: &(dyn Fn(&str) -> PathBuf + Sync),
    dest: &Path,
) -> Result<Patched, TreeError> {
    // The same root digest is the same tree, to the last byte and mode bit.
    if !old.root.is_empty() && old.root == new.root {
        return Ok(Patched { kept: new.files.len(), ..Patched::default() });
    }
    let mut done = Patched::default();
    let new_files: HashMap<&Path, (&str, bool)> = new
        .files
        .iter()
        .map(|(path, digest, executable)| (path.as_path(), (digest.hash.as_str(), *executable)))
        .collect();
    let mut kept: HashSet<&Path> = HashSet::new();
    for (path, digest, executable) in &old.files {
        match new_files.get(path.as_path()) {
            Some(&(hash, wanted)) if hash == digest.hash => {
                if wanted != *executable {
                    set_mode(&dest.join(path), path, wanted)?;
                }
                kept.insert(path);
            }
            _ => {
                std::fs::remove_file(dest.join(path)).map_err(|e| write_error(path, e))?;
                done.removed += 1;
            }
        }
    }
    let new_directories: HashSet<&Path> = new.directories.iter().map(PathBuf::as_path).collect();
    let old_directories: HashSet<&Path> = old.directories.iter().map(PathBuf::as_path).collect();
    // Parents sort first: a directory whose parent went already is gone with it.
    for directory in old.directories.iter().filter(|d| !new_directories.contains(d.as_path())) {
        match std::fs::remove_dir_all(dest.join(directory)) {
            Ok(()) => done.removed += 1,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(write_error(directory, error)),
        }
    }
    for directory in new.directories.iter().filter(|d| !old_directories.contains(d.as_path())) {
        std::fs::create_dir(dest.join(directory)).map_err(|e| write_error(directory, e))?;
    }
    let copies: Vec<&(PathBuf, Digest, bool)> =
        new.files.iter().filter(|(path, ..)| !kept.contains(path.as_path())).collect();
    copy_all(&copies, blob_path, dest)?;
    done.kept = kept.len();
    done.copied = copies.len();
    Ok(done)
}

/// Copies files out of the store on up to four threads (many small files are bound by
/// system calls, not by bytes).
fn copy_all(
    files: &[&(PathBuf, Digest, bool)],
    blob_path: &(dyn Fn(&str) -> PathBuf + Sync),
    dest: &Path,
) -> Result<(), TreeError> {
    if files.len() < 2 {
        return files.iter().try_for_each(|file| copy_one(file, blob_path, dest));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let share = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(share)
            .map(|files| scope.spawn(move || files.iter().try_for_each(|file| copy_one(file, blob_path, dest))))
            .collect();
        workers.into_iter().try_for_each(|worker| {
            let panicked = || Err(write_error(dest, std::io::Error::other("a copying thread panicked")));
            worker.join().unwrap_or_else(|_| panicked())
        })
    })
}

fn write_error(path: &Path, source: std::io::Error) -> TreeError {
    TreeError::Write { path: path.display().to_string(), source }
}

fn copy_one(
    (path, digest, executable): &(PathBuf, Digest, bool),
    blob_path: &(dyn Fn(&str) -> PathBuf + Sync),
    dest: &Path,
) -> Result<(), TreeError> {
    let target = dest.join(path);
    match std::fs::copy(blob_path(&digest.hash), &target) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(TreeError::BlobGone(digest.hash.clone()));
        }
        Err(error) => return Err(write_error(path, error)),
    }
    set_mode(&target, path, *executable)
}

fn set_mode(target: &Path, path: &Path, executable: bool) -> Result<(), TreeError> {
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode)).map_err(|e| write_error(path, e))
}

#[cfg(test)]
mod tests {
    use lrpymrpc_proto::v1::{DirectoryNode, FileNode};

    use super::*;
    use crate::digest::{digest_of, directory_digest};

    fn tree(directories: Vec<Directory>) -> HashMap<String, Directory> {
        directories.into_iter().map(|d| (directory_digest(&d).hash, d)).collect()
    }

    fn file(name: &str, bytes: &[u8]) -> FileNode {
        FileNode { name: name.into(), digest: Some(digest_of(bytes)), executable: false }
    }

    /// A file's bytes and executable bit; `None` for a directory.
    type Content = Option<(Vec<u8>, bool)>;

    /// Every file below `dir` with its bytes and executable bit, and every directory.
    fn snapshot(dir: &Path) -> Vec<(String, Content)> {
        let mut seen = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    seen.push((name, None));
                    stack.push(path);
                } else {
                    seen.push((name, Some((std::fs::read(&path).unwrap(), meta.permissions().mode() & 0o111 != 0))));
                }
            }
        }
        seen.sort();
        seen
    }

    #[test]
    fn a_patched_copy_is_what_a_fresh_copy_would_be() {
        let store = tempfile::tempdir().unwrap();
        let blob = |bytes: &[u8]| {
            let digest = digest_of(bytes);
            std::fs::write(store.path().join(&digest.hash), bytes).unwrap();
            digest
        };
        let node = |name: &str, bytes: &[u8], executable: bool| FileNode {
            name: name.into(),
            digest: Some(blob(bytes)),
            executable,
        };
        let dir = |name: &str, d: &Directory| DirectoryNode { name: name.into(), digest: Some(directory_digest(d)) };
        // Old: a/{x, y}, b/{z}, c (a file), run.sh, same/{k}.
        let same = Directory { files: vec![node("k", b"kept", false)], directories: vec![] };
        let a_old = Directory { files: vec![node("x", b"x1", false), node("y", b"y", false)], directories: vec![] };
        let b_old = Directory { files: vec![node("z", b"z", false)], directories: vec![] };
        let old_root = Directory {
            files: vec![node("c", b"c-file", false), node("run.sh", b"#!", false)],
            directories: vec![dir("a", &a_old), dir("b", &b_old), dir("same", &same)],
        };
        // New: a/{x changed, w new}, b is now a file, c is now a directory, run.sh executable.
        let a_new = Directory { files: vec![node("w", b"w", false), node("x", b"x2", false)], directories: vec![] };
        let c_new = Directory {
            files: vec![node("inner", b"in", true)],
            directories: vec![Directory::default()].into_iter().map(|d| dir("empty", &d)).collect(),
        };
        let new_root = Directory {
            files: vec![node("b", b"b-file", false), node("run.sh", b"#!", true)],
            directories: vec![dir("a", &a_new), dir("c", &c_new), dir("same", &same)],
        };
        let all = vec![same, a_old, b_old, a_new, c_new, Directory::default(), old_root.clone(), new_root.clone()];
        let directories = tree(all);
        let old = plan(&directory_digest(&old_root), &directories, &Limits::DEFAULT).unwrap();
        let new = plan(&directory_digest(&new_root), &directories, &Limits::DEFAULT).unwrap();
        let blob_path = |hash: &str| store.path().join(hash);
        let (patched, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        materialise(&old, &blob_path, patched.path()).unwrap();
        let done = patch(&old, &new, &blob_path, patched.path()).unwrap();
        materialise(&new, &blob_path, fresh.path()).unwrap();
        assert_eq!(snapshot(patched.path()), snapshot(fresh.path()));
        // Kept: same/k, and run.sh (its mode changed in place). Copied: a/w, a/x, b,
        // c/inner. Removed: a/x, a/y, b/z, the file c, then the directory b.
        assert_eq!(done, Patched { kept: 2, copied: 4, removed: 5 }, "{done:?}");
        // Patching a tree to itself touches nothing.
        let again = patch(&new, &new, &blob_path, patched.path()).unwrap();
        assert_eq!(again, Patched { kept: new.files.len(), copied: 0, removed: 0 });
    }

    #[test]
    fn hostile_names_and_bombs_are_refused_before_anything_is_written() {
        for name in ["", ".", "..", "a/b", "nul\0"] {
            let root = Directory { files: vec![file(name, b"x")], directories: vec![] };
            let error = plan(&directory_digest(&root), &tree(vec![root]), &Limits::DEFAULT).unwrap_err();
            assert!(matches!(error, TreeError::BadName { .. }), "{name:?}: {error}");
        }
        let twice = Directory { files: vec![file("a", b"x"), file("a", b"y")], directories: vec![] };
        assert!(plan(&directory_digest(&twice), &tree(vec![twice]), &Limits::DEFAULT).is_err());
        // A chain of directories, each naming the next twice: 2^40 entries from 40 messages.
        let mut directories = vec![Directory::default()];
        for _ in 0..40 {
            let below = directory_digest(directories.last().unwrap());
            let node = |name: &str| DirectoryNode { name: name.into(), digest: Some(below.clone()) };
            directories.push(Directory { files: vec![], directories: vec![node("a"), node("b")] });
        }
        let root = directory_digest(directories.last().unwrap());
        let limits = Limits { max_depth: 64, ..Limits::DEFAULT };
        assert!(matches!(plan(&root, &tree(directories), &limits), Err(TreeError::TooManyEntries(_))));
        let big = Directory {
            files: vec![FileNode { digest: Some(Digest { hash: "0".repeat(64), size: u64::MAX }), ..file("big", b"") }],
            directories: vec![],
        };
        assert!(matches!(
            plan(&directory_digest(&big), &tree(vec![big]), &Limits::DEFAULT),
            Err(TreeError::TooLarge(_))
        ));
        let climbing = Digest { hash: "../../etc/passwd".into(), size: 1 };
        let sneaky =
            Directory { files: vec![FileNode { digest: Some(climbing), ..file("x", b"") }], directories: vec![] };
        let refused = plan(&directory_digest(&sneaky), &tree(vec![sneaky]), &Limits::DEFAULT);
        assert!(matches!(refused, Err(TreeError::BadDigest(_))), "{refused:?}");
        let missing = Directory {
            files: vec![],
            directories: vec![DirectoryNode { name: "d".into(), digest: Some(digest_of(b"?")) }],
        };
        assert!(matches!(
            plan(&directory_digest(&missing), &tree(vec![missing]), &Limits::DEFAULT),
            Err(TreeError::MissingDirectory(_))
        ));
    }
}
