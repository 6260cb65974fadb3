//! Packs a job's results into a tar.gz stream by walking relative to directory
//! handles, never following a symbolic link, so a command that swaps a directory for
//! a link between Check and Download (`renameat2(RENAME_EXCHANGE)`) cannot make the
//! server ship a file outside the job directory or a listing of the job root.
//!
//! Every step is `openat` below an already opened directory with `O_NOFOLLOW`:
//! a link met on the way to a RESULT path refuses it, a link inside a result travels
//! as a link (its target's bytes never do), and what is opened is checked with
//! `fstat` to be what `statat` saw (a swap in between fails the download). FIFOs and
//! devices are passed over, never opened for reading; `O_NONBLOCK` keeps a FIFO swapped
//! in at the last moment from blocking the packer.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::encoding::{Encoder, Encoding};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use tar::EntryType;

use crate::errors::{PackError, read_error};
use crate::pack::{ExactSize, PackReport, ReadFailure, bare_header};

/// Directory levels below a RESULT path that are packed; deeper is refused (each level
/// holds a directory handle open, and the walk must not exhaust them or the stack).
pub const MAX_RESULT_DEPTH: usize = 256;

/// Writes the RESULT paths `names` (sanitized, relative to `dir`) that exist as one
/// tar.gz stream into `out`; a name that does not exist is passed over.
pub fn pack_results_tar_gz<W: Write>(
    dir: &Path,
    names: &[PathBuf],
    level: u32,
    out: W,
) -> Result<(PackReport, W), PackError> {
    pack_results_tar(dir, names, Encoding::Gzip, level, out)
}

/// [`pack_results_tar_gz`] in any [`Encoding`] (`level`: gzip's).
pub fn pack_results_tar<W: Write>(
    dir: &Path,
    names: &[PathBuf],
    encoding: Encoding,
    level: u32,
    out: W,
) -> Result<(PackReport, W), PackError> {
    let root = open_dir(rustix::fs::CWD, dir.as_os_str()).map_err(|e| read_error(Path::new("."), e))?;
    let encoder = encoding.encoder(out, level).map_err(PackError::Write)?;
    let mut walker = Walker { builder: tar::Builder::new(encoder), report: PackReport::default() };
    for name in names {
        let Some(leaf) = name.file_name() else { continue };
        let parent = match open_parents(&root, name)? {
            Some(parent) => parent,
            None => continue,
        };
        walker.add(parent.as_fd(), leaf, name, 0)?;
    }
    let encoder = walker.builder.into_inner().map_err(PackError::Write)?;
    let out = encoder.finish().map_err(PackError::Write)?;
    Ok((walker.report, out))
}

/// The directory holding `name`'s last component, reached from `root` through real
/// directories only; `None` when a component does not exist.
fn open_parents(root: &OwnedFd, name: &Path) -> Result<Option<OwnedFd>, PackError> {
    let mut current = root.try_clone().map_err(|e| read_error(Path::new("."), e))?;
    let mut so_far = PathBuf::new();
    let parents: Vec<&OsStr> = name.parent().map(|p| p.iter().collect()).unwrap_or_default();
    for component in parents {
        so_far.push(component);
        current = match open_dir(current.as_fd(), component) {
            Ok(fd) => fd,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) if is_link_or_file(&error) => {
                let why = io::Error::new(io::ErrorKind::InvalidInput, "a symbolic link or a file, not a directory");
                return Err(read_error(&so_far, why));
            }
            Err(error) => return Err(read_error(&so_far, error)),
        };
    }
    Ok(Some(current))
}

/// `openat` with `O_NOFOLLOW | O_DIRECTORY` met a link (`ELOOP`) or a file (`ENOTDIR`).
fn is_link_or_file(error: &io::Error) -> bool {
    let code = error.raw_os_error();
    code == Some(rustix::io::Errno::LOOP.raw_os_error()) || code == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

struct Walker<W: Write> {
    builder: tar::Builder<Encoder<W>>,
    report: PackReport,
}

impl<W: Write> Walker<W> {
    /// Adds `leaf` of the directory `parent` as `name`, and what it holds.
    fn add(&mut self, parent: BorrowedFd<'_>, leaf: &OsStr, name: &Path, depth: usize) -> Result<(), PackError> {
        let stat = match rustix::fs::statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => {
                self.report.skipped.push((name.to_path_buf(), "removed while packing".into()));
                return Ok(());
            }
            Err(error) => return Err(read_error(name, error.into())),
        };
        let (mode, mtime) = (stat.st_mode, stat.st_mtime);
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(parent, leaf, Vec::new()).map_err(|e| read_error(name, e.into()))?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                let mut header = bare_header(EntryType::Symlink, mode, 0, mtime);
                self.builder.append_link(&mut header, name, target).map_err(PackError::Write)?;
                self.report.links += 1;
            }
            FileType::Directory => {
                if depth > MAX_RESULT_DEPTH {
                    let why = io::Error::new(io::ErrorKind::InvalidInput, "nested deeper than the packer follows");
                    return Err(read_error(name, why));
                }
                let fd = open_dir(parent, leaf).map_err(|e| read_error(name, e))?;
                same_object(&fd, stat.st_ino, true, name)?;
                let mut header = bare_header(EntryType::Directory, mode, 0, mtime);
                self.builder.append_data(&mut header, name, io::empty()).map_err(PackError::Write)?;
                self.report.directories += 1;
                for child in sorted_children(&fd, name)? {
                    self.add(fd.as_fd(), &child, &name.join(&child), depth + 1)?;
                }
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
                let fd =
                    rustix::fs::openat(parent, leaf, flags, Mode::empty()).map_err(|e| read_error(name, e.into()))?;
                let size = same_object(&fd, stat.st_ino, false, name)?;
                let mut header = bare_header(EntryType::Regular, mode, size, mtime);
                let file = File::from(fd);
                let mut content = ExactSize { inner: file.take(size), remaining: size, failed: None };
                if let Err(error) = self.builder.append_data(&mut header, name, &mut content) {
                    return Err(match content.failed {
                        Some(ReadFailure::Shrank) => PackError::Changed { path: name.to_path_buf() },
                        Some(ReadFailure::Io) => read_error(name, error),
                        None => PackError::Write(error),
                    });
                }
                self.report.files += 1;
                self.report.content_bytes += size;
            }
            _ => self.report.skipped.push((name.to_path_buf(), "not a regular file, directory or link".into())),
        }
        Ok(())
    }
}

/// Checks that `fd` is the object `statat` saw (same inode, the expected kind), so a
/// swap between the two calls fails instead of packing something else. Returns its size.
fn same_object(fd: &OwnedFd, inode: u64, directory: bool, name: &Path) -> Result<u64, PackError> {
    let meta =
        File::from(fd.try_clone().map_err(|e| read_error(name, e))?).metadata().map_err(|e| read_error(name, e))?;
    let kind_matches = if directory { meta.is_dir() } else { meta.is_file() };
    if meta.ino() != inode || !kind_matches {
        return Err(PackError::Changed { path: name.to_path_buf() });
    }
    Ok(meta.len())
}

/// The names in an open directory, sorted, without `.` and `..`.
fn sorted_children(fd: &OwnedFd, name: &Path) -> Result<Vec<OsString>, PackError> {
    let mut dir = Dir::read_from(fd).map_err(|e| read_error(name, e.into()))?;
    let mut children = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| read_error(name, e.into()))?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push(OsStr::from_bytes(child).to_os_string());
        }
    }
    children.sort();
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in_archive(bytes: &[u8]) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect()
    }

    #[test]
    fn links_travel_as_links_and_a_link_on_the_way_is_refused() {
        let job = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "key material").unwrap();
        std::fs::create_dir_all(job.path().join("out/sub")).unwrap();
        std::fs::write(job.path().join("out/sub/f"), "result").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), job.path().join("out/secret")).unwrap();
        std::os::unix::fs::symlink(outside.path(), job.path().join("swapped")).unwrap();
        let names = [PathBuf::from("out"), PathBuf::from("missing")];
        let (report, bytes) = pack_results_tar_gz(job.path(), &names, 1, Vec::new()).unwrap();
        assert_eq!((report.files, report.links, report.directories), (1, 1, 2));
        let listed = names_in_archive(&bytes);
        assert!(listed.contains(&("out/secret".into(), EntryType::Symlink)), "{listed:?}");
        assert!(!String::from_utf8_lossy(&bytes).contains("key material"));
        // A RESULT path whose parent is a link: refused, nothing read through it.
        let error = pack_results_tar_gz(job.path(), &[PathBuf::from("swapped/secret")], 1, Vec::new()).unwrap_err();
        assert!(error.to_string().contains("`swapped`"), "{error}");
        // A RESULT path that is itself a link travels as the link.
        let (_, bytes) = pack_results_tar_gz(job.path(), &[PathBuf::from("swapped")], 1, Vec::new()).unwrap();
        assert_eq!(names_in_archive(&bytes), [("swapped".to_string(), EntryType::Symlink)]);
    }

    #[test]
    fn fifos_are_passed_over_without_blocking() {
        let job = tempfile::tempdir().unwrap();
        std::fs::create_dir(job.path().join("out")).unwrap();
        let fifo = job.path().join("out/fifo");
        let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, path.as_c_str(), Mode::from_raw_mode(0o600)).unwrap();
        let (report, _) = pack_results_tar_gz(job.path(), &[PathBuf::from("out")], 1, Vec::new()).unwrap();
        assert_eq!(report.skipped.len(), 1);
    }
}
