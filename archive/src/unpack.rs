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
//! This module reads the tar stream and decides per entry type; where each entry may
//! go (real directories, no link followed, links last) is `place.rs`'s decision.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::encoding::Encoding;
use tar::EntryType;

use crate::errors::UnpackError;
use crate::options::{MtimePolicy, ReadProgress, UnpackOptions};
use crate::paths::{NameError, depth, sanitize_relative};
use crate::place::{Allowed, Placer};

#[derive(Debug, Default)]
pub struct UnpackReport {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    pub content_bytes: u64,
}

/// Unpacks the tar.gz read from `input` into `dest`, which must be an existing
/// directory, normally a fresh empty one (a job directory, a staging directory).
/// On error, what was already written stays: the caller removes `dest`.
pub fn unpack_tar_gz<R: Read>(input: R, dest: &Path, options: &UnpackOptions) -> Result<UnpackReport, UnpackError> {
    unpack_tar(input, Encoding::Gzip, dest, options)
}

/// [`unpack_tar_gz`] for a tar stream in any [`Encoding`].
pub fn unpack_tar<R: Read>(
    input: R,
    encoding: Encoding,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let decoder = encoding.decoder(input).map_err(|e| malformed(e, options))?;
    let capped =
        CappedReader { inner: decoder, remaining: options.limits.max_bytes, progress: options.progress.clone() };
    let mut archive = tar::Archive::new(capped);
    let mut unpacker =
        Unpacker { placer: Placer::new(dest, options), options, report: UnpackReport::default(), entries: 0 };
    let entries = archive.entries().map_err(|e| malformed(e, options))?;
    for entry in entries {
        let entry = entry.map_err(|e| malformed(e, options))?;
        unpacker.entry(entry)?;
    }
    let mut report = unpacker.report;
    report.links += unpacker.placer.create_links()?;
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

/// Turns tar entries into placements; what may go where is the placer's decision.
struct Unpacker<'a> {
    placer: Placer<'a>,
    options: &'a UnpackOptions,
    report: UnpackReport,
    entries: u64,
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
        match self.placer.allowed(&rel) {
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
                let path = self.placer.slot_for_non_directory(&rel).map_err(&refuse)?;
                let written = self.placer.write_file(&path, &mut entry, mode, mtime)?;
                self.report.files += 1;
                self.report.content_bytes += written;
            }
            EntryType::Directory => {
                self.placer.real_dir(&rel, mode).map_err(&refuse)?;
                self.report.directories += 1;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("symbolic link without a target".into()))?;
                // Judged now against what came before, and again at the end against
                // the final tree, when it is created.
                self.placer.check_symlink_target(&rel, &target).map_err(&refuse)?;
                self.placer.slot_for_non_directory(&rel).map_err(&refuse)?;
                self.placer.defer_link(rel, target.into_owned(), shown.clone());
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| refuse("hard link without a target".into()))?;
                let target_rel = sanitize_relative(&target)
                    .map_err(|e| refuse(format!("hard link target `{}`: {e}", String::from_utf8_lossy(&target))))?;
                let target_path = self.placer.existing_regular_file(&target_rel).map_err(&refuse)?;
                if target_rel == rel {
                    return Err(refuse("hard link to itself".into()));
                }
                let path = self.placer.slot_for_non_directory(&rel).map_err(&refuse)?;
                fs::hard_link(&target_path, &path).map_err(|source| self.placer.write_error(&path, source))?;
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
}

/// Counts decompressed bytes and fails with `FileTooLarge` past the limit, so a
/// gzip bomb is cut at the decoder's output, not at the compressed size.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    progress: Option<ReadProgress>,
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
        if let Some(ReadProgress(progress)) = &self.progress {
            progress(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "unpack_props.rs"]
mod props;
