//! Safe placement below a destination directory, apart from any archive format:
//! every parent a real directory (created when missing), nothing written through a
//! link (on disk, or one still to be made), an earlier entry of the same name
//! replaced, files created with `O_EXCL`, symbolic links held back and created last,
//! each judged against the final tree, and (with [`UnpackOptions::only`]) nothing
//! outside the paths asked for. The tar unpacker places its entries through it; a
//! materialiser of content-addressed trees can too.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::errors::UnpackError;
use crate::options::UnpackOptions;
use crate::paths::{NameError, sanitize_relative};

/// Where an entry stands against [`UnpackOptions::only`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Yes,
    /// A directory above a path asked for: created, nothing else.
    AsParentDirectory,
    No,
}

/// Places entries below one destination under the policy of the module docs.
pub struct Placer<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
    /// Directories below `dest` already known to be real directories, not links.
    real_dirs: HashSet<PathBuf>,
    /// Symbolic links to create once everything else is in place: path -> (target,
    /// the entry's name as shown in errors).
    links: BTreeMap<PathBuf, (Vec<u8>, String)>,
}

impl<'a> Placer<'a> {
    pub fn new(dest: &'a Path, options: &'a UnpackOptions) -> Placer<'a> {
        Placer { dest, options, real_dirs: HashSet::new(), links: BTreeMap::new() }
    }

    /// Holds a link back until [`Placer::create_links`]; `shown` names it in errors.
    pub fn defer_link(&mut self, rel: PathBuf, target: Vec<u8>, shown: String) {
        self.links.insert(rel, (target, shown));
    }

    /// The full path where a file or link `rel` goes: every directory above it made a
    /// real directory below `dest` (created when missing), and an earlier file or link
    /// of the same name (a duplicate entry) removed, so nothing is written through it.
    /// A directory in the way is an error.
    pub fn slot_for_non_directory(&mut self, rel: &Path) -> Result<PathBuf, String> {
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
    pub fn real_dir(&mut self, rel: &Path, mode: u32) -> Result<PathBuf, String> {
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

    /// Writes `content` into a new file at `path` (a slot from
    /// [`Placer::slot_for_non_directory`]), never through a link, with `mode` and,
    /// when given, the modification time `mtime` in seconds since the epoch.
    pub fn write_file<R: Read>(
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
    pub fn check_symlink_target(&self, link: &Path, target: &[u8]) -> Result<(), String> {
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
    pub fn create_links(&mut self) -> Result<u64, UnpackError> {
        let links = std::mem::take(&mut self.links);
        // Judged with all of them pending, so none may pass through another.
        self.links =
            links.iter().map(|(rel, (target, shown))| (rel.clone(), (target.clone(), shown.clone()))).collect();
        for (rel, (target, shown)) in &links {
            let refuse = |reason: String| UnpackError::Refused { entry: shown.clone(), reason };
            self.check_symlink_target(rel, target).map_err(refuse)?;
        }
        self.links.clear();
        let mut created = 0;
        for (rel, (target, _)) in links {
            let path = self.dest.join(&rel);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                .map_err(|source| self.write_error(&path, source))?;
            created += 1;
        }
        Ok(created)
    }

    /// Whether `rel` may be unpacked under [`UnpackOptions::only`].
    pub fn allowed(&self, rel: &Path) -> Allowed {
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
    pub fn write_error(&self, path: &Path, source: io::Error) -> UnpackError {
        let path = path.strip_prefix(self.dest).unwrap_or(path).to_path_buf();
        UnpackError::Write { path, source }
    }

    /// The full path of `rel` if it is a regular file already inside `dest`, reached
    /// through real directories only.
    pub fn existing_regular_file(&self, rel: &Path) -> Result<PathBuf, String> {
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
