//! Unpacks a gzip-compressed tar stream from an untrusted peer into a directory,
//! entry by entry, under one policy: nothing is created, modified or chmod-ed outside
//! the destination, whatever the archive says.
//!
//! The policy, modelled on Python's PEP 706 `data` filter but stricter:
//! - names must be relative, without `..` (see [`crate::paths`]);
//! - no entry is written through a symbolic link: every parent directory on the way
//!   to an entry must be a real directory;
//! - symbolic links are created last, once every other entry is in place, and each is
//!   judged against that final tree: its target must be relative and, followed one
//!   component at a time from the link's directory, stay strictly inside the
//!   destination (inside the allowed paths, when [`UnpackOptions::only`] names them)
//!   without passing through any link, one of the archive's own included, whatever
//!   order the archive put them in (`x -> d/../../y` before `d -> ..` is refused);
//! - with [`UnpackOptions::only`], entries outside the paths asked for are refused
//!   (their parent directories may appear as directory entries);
//! - a hard link must point at a regular file already unpacked inside the destination;
//! - only files, directories and links are accepted (no devices, FIFOs, sparse files);
//! - setuid, setgid and sticky bits and ownership are dropped;
//! - the decompressed size, the entry count and the depth are capped.
//!
//! tar-rs's own `unpack` is not used: its checks are best-effort by its own account.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use tar::EntryType;

use crate::paths::{NameError, depth, sanitize_relative};

/// Caps that stop an archive from exhausting the disk or the inode table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decompressed bytes of the whole tar stream (headers included).
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_depth: usize,
}

impl Limits {
    /// Large enough for real cell libraries, small enough to stop a gzip bomb.
    pub const DEFAULT: Limits = Limits { max_bytes: 64 * 1024 * 1024 * 1024, max_entries: 1_000_000, max_depth: 64 };
}

/// Which modification time unpacked files get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtimePolicy {
    /// The time recorded in the archive (uploads: remote tools may compare them).
    FromArchive,
    /// The time of unpacking (results: `make` must see them as newer than inputs).
    Now,
}

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub limits: Limits,
    pub mtime: MtimePolicy,
    /// When set, the only paths (sanitized, relative) an entry may be at or below:
    /// the RESULT paths a client asked for. `None` accepts any path (uploads).
    pub only: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default)]
pub struct UnpackReport {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    pub content_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry `{entry}` refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("archive is larger than the limit of {max_bytes} bytes once decompressed")]
    TooLarge { max_bytes: u64 },
    #[error("archive has more than the limit of {max_entries} entries")]
    TooManyEntries { max_entries: u64 },
    #[error("malformed archive: {0}")]
    Malformed(io::Error),
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl UnpackError {
    /// True when the local disk, not the archive, is to blame (disk full, quota).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            UnpackError::Write { source, .. } => {
                matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

/// Unpacks the tar.gz read from `input` into `dest`, which must be an existing
/// directory, normally a fresh empty one (a job directory, a staging directory).
/// On error, what was already written stays: the caller removes `dest`.
pub fn unpack_tar_gz<R: Read>(input: R, dest: &Path, options: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    let capped = CappedReader { inner: GzDecoder::new(input), remaining: options.limits.max_bytes };
    let mut archive = tar::Archive::new(capped);
    let mut unpacker = Unpacker {
        dest,
        options,
        report: UnpackReport::default(),
        real_dirs: HashSet::new(),
        entries: 0,
        links: BTreeMap::new(),
    };
    let entries = archive.entries().map_err(|e| malformed(e, options))?;
    for entry in entries {
        let entry = entry.map_err(|e| malformed(e, options))?;
        unpacker.entry(entry)?;
    }
    unpacker.create_links()?;
    let report = unpacker.report;
    // Read to the end, so that a truncated gzip stream or a bad checksum is caught
    // and trailing data after the end-of-archive blocks is refused.
    let mut rest = archive.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].iter().all(|&b| b == 0) => {}
            Ok(_) => {
                let error = io::Error::new(io::ErrorKind::InvalidData, "data after the end of the archive");
                return Err(UnpackError::Malformed(error));
            }
            Err(error) => return Err(malformed(error, options)),
        }
    }
    Ok(report)
}

fn malformed(error: io::Error, options: &UnpackOptions) -> UnpackError {
    if error.kind() == io::ErrorKind::FileTooLarge {
        return UnpackError::TooLarge { max_bytes: options.limits.max_bytes };
    }
    UnpackError::Malformed(error)
}

struct Unpacker<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
    report: UnpackReport,
    /// Directories below `dest` already known to be real directories, not links.
    real_dirs: HashSet<PathBuf>,
    entries: u64,
    /// Symbolic links to create once everything else is in place: path -> (target,
    /// the entry's name as shown in errors).
    links: BTreeMap<PathBuf, (Vec<u8>, String)>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.options.limits.max_entries {
            return Err(UnpackError::TooManyEntries { max_entries: self.options.limits.max_entries });
        }
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let refuse = |reason: String| UnpackError::Refused { entry: shown.clone(), reason };
        let kind = entry.header().entry_type();
        // Extension headers carry metadata for the next entry; tar-rs applies them.
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let rel = sanitize_relative(&raw_name).map_err(|e| refuse(e.to_string()))?;
        let max_depth = self.options.limits.max_depth;
        if depth(&rel) > max_depth {
            return Err(refuse(NameError::TooDeep { depth: depth(&rel), max: max_depth }.to_string()));
        }
        if rel.as_os_str().is_empty() {
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(refuse("the name means the destination itself".into())),
            };
        }
        match self.allowed(&rel) {
            Allowed::Yes => {}
            Allowed::AsParentDirectory if kind == EntryType::Directory => return Ok(()),
            Allowed::AsParentDirectory | Allowed::No => {
                return Err(refuse("it is not below any of the paths asked for".into()));
            }
        }
        let mode = entry.header().mode().map_err(UnpackError::Malformed)? & 0o777;
        let mtime = match self.options.mtime {
            MtimePolicy::FromArchive => entry.header().mtime().ok(),
            MtimePolicy::Now => None,
        };
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let path = self.slot_for_non_directory(&rel).map_err(&refuse)?;
                let written = self.write_file(&path, &mut entry, mode, mtime)?;
                self.report.files += 1;
                self.report.content_bytes += written;
            }
            EntryType::Directory => {
                self.real_dir(&rel, mode).map_err(&refuse)?;
                self.report.directories += 1;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("symbolic link without a target".into()))?;
                // Judged now against what came before, and again at the end against
                // the final tree, when it is created.
                self.check_symlink_target(&rel, &target).map_err(&refuse)?;
                self.slot_for_non_directory(&rel).map_err(&refuse)?;
                self.links.insert(rel, (target.into_owned(), shown.clone()));
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("hard link without a target".into()))?;
                let target_rel = sanitize_relative(&target)
                    .map_err(|e| refuse(format!("hard link target `{}`: {e}", String::from_utf8_lossy(&target))))?;
                let target_path = self.existing_regular_file(&target_rel).map_err(&refuse)?;
                if target_rel == rel {
                    return Err(refuse("hard link to itself".into()));
                }
                let path = self.slot_for_non_directory(&rel).map_err(&refuse)?;
                fs::hard_link(&target_path, &path).map_err(|source| self.write_error(&path, source))?;
                self.report.links += 1;
            }
            EntryType::Char => return Err(refuse("character devices are not unpacked".into())),
            EntryType::Block => return Err(refuse("block devices are not unpacked".into())),
            EntryType::Fifo => return Err(refuse("FIFOs are not unpacked".into())),
            EntryType::GNUSparse => return Err(refuse("sparse files are not unpacked".into())),
            other => return Err(refuse(format!("entry type {:?} is not unpacked", other.as_byte() as char))),
        }
        Ok(())
    }

    /// The full path where a file or link `rel` goes: every directory above it made a
    /// real directory below `dest` (created when missing), and an earlier file or link
    /// of the same name (a duplicate entry) removed, so nothing is written through it.
    /// A directory in the way is an error.
    fn slot_for_non_directory(&mut self, rel: &Path) -> Result<PathBuf, String> {
        let parent = match rel.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => self.real_dir(parent, 0o755)?,
            _ => self.dest.to_path_buf(),
        };
        let path = parent.join(rel.file_name().ok_or("the name has no last component")?);
        // A later entry of the same name replaces a link not yet created.
        self.links.remove(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Err("a directory of the same name is in the way".into()),
            Ok(_) => {
                fs::remove_file(&path).map(|()| path).map_err(|e| format!("cannot replace the earlier entry: {e}"))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(error) => Err(format!("cannot inspect the destination: {error}")),
        }
    }

    /// Makes `rel` and its parents real directories below `dest`. Existing directories
    /// keep their permissions: only directories this unpack creates get `mode`.
    fn real_dir(&mut self, rel: &Path, mode: u32) -> Result<PathBuf, String> {
        let mut path = self.dest.to_path_buf();
        let mut so_far = PathBuf::new();
        let last = rel.components().count();
        for (index, component) in rel.components().enumerate() {
            path.push(component);
            so_far.push(component);
            if self.links.contains_key(&so_far) {
                return Err(format!("`{}` is a symbolic link; nothing is written through links", so_far.display()));
            }
            if self.real_dirs.contains(&path) {
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(format!("`{}` is a symbolic link; nothing is written through links", so_far.display()));
                }
                Ok(_) => return Err(format!("`{}` is a file, not a directory", so_far.display())),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // The owner must keep the right to write into and remove it.
                    let mode = if index + 1 == last { mode | 0o700 } else { 0o755 };
                    DirBuilder::new()
                        .mode(mode)
                        .create(&path)
                        .map_err(|e| format!("cannot create `{}`: {e}", so_far.display()))?;
                }
                Err(error) => return Err(format!("cannot inspect `{}`: {error}", so_far.display())),
            }
            self.real_dirs.insert(path.clone());
        }
        Ok(path)
    }

    fn write_file<R: Read>(
        &self,
        path: &Path,
        content: &mut R,
        mode: u32,
        mtime: Option<u64>,
    ) -> Result<u64, UnpackError> {
        let write_error = |source| self.write_error(path, source);
        // `create_new` (O_EXCL) never follows a link that might have appeared meanwhile.
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(path).map_err(write_error)?;
        let written = io::copy(content, &mut file).map_err(|e| match e.kind() {
            io::ErrorKind::FileTooLarge => UnpackError::TooLarge { max_bytes: self.options.limits.max_bytes },
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                UnpackError::Malformed(e)
            }
            _ => write_error(e),
        })?;
        if let Some(seconds) = mtime {
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            file.set_modified(when).map_err(write_error)?;
        }
        Ok(written)
    }

    /// Follows a link target one component at a time from the link's directory:
    /// it must stay strictly inside `dest` and never pass through another link.
    fn check_symlink_target(&self, link: &Path, target: &[u8]) -> Result<(), String> {
        let shown = String::from_utf8_lossy(target);
        if target.is_empty() {
            return Err("symbolic link with an empty target".into());
        }
        if target.contains(&0) {
            return Err("symbolic link target contains a NUL byte".into());
        }
        let target = Path::new(std::ffi::OsStr::from_bytes(target));
        if target.is_absolute() || matches!(sanitize_relative(target.as_os_str().as_bytes()), Err(NameError::Absolute))
        {
            return Err(format!("symbolic link to the absolute path `{shown}`"));
        }
        let mut resolved: Vec<Component<'_>> = link.parent().map(|p| p.components().collect()).unwrap_or_default();
        for component in target.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    if resolved.pop().is_none() {
                        return Err(format!("symbolic link target `{shown}` points outside the destination"));
                    }
                }
                Component::Normal(_) => {
                    resolved.push(component);
                    let so_far: PathBuf = resolved.iter().collect();
                    let on_disk = self.dest.join(&so_far);
                    if self.links.contains_key(&so_far)
                        || fs::symlink_metadata(&on_disk).is_ok_and(|m| m.file_type().is_symlink())
                    {
                        return Err(format!("symbolic link target `{shown}` passes through another link"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("symbolic link to the absolute path `{shown}`"));
                }
            }
        }
        if resolved.is_empty() {
            return Err(format!("symbolic link target `{shown}` is the destination itself"));
        }
        if self.allowed(&resolved.iter().collect::<PathBuf>()) != Allowed::Yes {
            return Err(format!("symbolic link target `{shown}` is not below any of the paths asked for"));
        }
        Ok(())
    }

    /// Creates the links held back, each judged again against the final tree (every
    /// other entry in place, every other link known).
    fn create_links(&mut self) -> Result<(), UnpackError> {
        let links = std::mem::take(&mut self.links);
        // Judged with all of them pending, so none may pass through another.
        self.links =
            links.iter().map(|(rel, (target, shown))| (rel.clone(), (target.clone(), shown.clone()))).collect();
        for (rel, (target, shown)) in &links {
            let refuse = |reason: String| UnpackError::Refused { entry: shown.clone(), reason };
            self.check_symlink_target(rel, target).map_err(refuse)?;
        }
        self.links.clear();
        for (rel, (target, _)) in links {
            let path = self.dest.join(&rel);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                .map_err(|source| self.write_error(&path, source))?;
            self.report.links += 1;
        }
        Ok(())
    }

    /// Whether `rel` may be unpacked under [`UnpackOptions::only`].
    fn allowed(&self, rel: &Path) -> Allowed {
        let Some(only) = &self.options.only else { return Allowed::Yes };
        if only.iter().any(|root| rel.starts_with(root)) {
            Allowed::Yes
        } else if only.iter().any(|root| root.starts_with(rel)) {
            Allowed::AsParentDirectory
        } else {
            Allowed::No
        }
    }

    /// A write error naming the path relative to the destination, never the absolute
    /// path (a server's error must not reveal where its jobs live).
    fn write_error(&self, path: &Path, source: io::Error) -> UnpackError {
        let path = path.strip_prefix(self.dest).unwrap_or(path).to_path_buf();
        UnpackError::Write { path, source }
    }

    /// The full path of `rel` if it is a regular file already inside `dest`, reached
    /// through real directories only.
    fn existing_regular_file(&self, rel: &Path) -> Result<PathBuf, String> {
        let mut path = self.dest.to_path_buf();
        let count = rel.components().count();
        for (index, component) in rel.components().enumerate() {
            path.push(component);
            let meta = fs::symlink_metadata(&path)
                .map_err(|_| format!("hard link target `{}` is not in the archive before it", rel.display()))?;
            let wanted = if index + 1 == count { meta.is_file() } else { meta.is_dir() };
            if !wanted {
                return Err(format!(
                    "hard link target `{}` is not a regular file inside the destination",
                    rel.display()
                ));
            }
        }
        Ok(path)
    }
}

/// Where an entry stands against [`UnpackOptions::only`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Yes,
    /// A directory above a path asked for: created, nothing else.
    AsParentDirectory,
    No,
}

/// Counts decompressed bytes and fails with `FileTooLarge` past the limit, so a
/// gzip bomb is cut at the decoder's output, not at the compressed size.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed, so that reaching the limit exactly is fine
        // and going past it is seen.
        let room = usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "decompressed size limit reached"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "unpack_props.rs"]
mod props;
