//! Packs files into a gzip-compressed tar stream written to any `Write`, entry by
//! entry, so that an archive is never built whole in memory or in a temporary file.
//! Which entries, in which order, is the walk's decision (`walk.rs`); this module
//! writes what it finds.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::encoding::{Encoder, Encoding};
use crate::errors::{PackError, read_error};
use crate::walk::{Candidate, Found, PackRoot, WalkOptions, walk};

/// How to pack.
pub struct PackOptions<'a> {
    /// Store what symbolic links point to (the client's uploads) or the links
    /// themselves (the server's results, so a link to `/etc/shadow` ships no bytes).
    pub follow_symlinks: bool,
    /// Decides each entry below the roots (and each root that is not a directory):
    /// `false` leaves it out, and a directory left out takes all it holds with it.
    pub keep: &'a dyn Fn(&Candidate<'_>) -> bool,
    /// Called after each regular file went in, with its size: for progress displays.
    pub on_file: &'a dyn Fn(u64),
    /// Called as file content is read, with the bytes just read: for progress bars
    /// that move within a large file.
    pub on_read: &'a dyn Fn(u64),
    /// gzip level, 0 to 9.
    pub level: u32,
    /// Threads that compress: one for a single gzip member written inline (a server
    /// on this machine needs the other cores), more for members in parallel.
    pub gzip_threads: usize,
}

impl PackOptions<'static> {
    /// Everything, no progress reports.
    pub fn everything(follow_symlinks: bool, level: u32) -> PackOptions<'static> {
        PackOptions {
            follow_symlinks,
            keep: &keep_everything,
            on_file: &ignore_progress,
            on_read: &ignore_progress,
            level,
            gzip_threads: 1,
        }
    }
}

fn keep_everything(_: &Candidate<'_>) -> bool {
    true
}

fn ignore_progress(_: u64) {}

/// What was packed, and what was passed over and why.
#[derive(Debug, Default)]
pub struct PackReport {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    /// Bytes of file content before compression.
    pub content_bytes: u64,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Writes `roots` as one tar.gz stream into `out` and returns what went in.
pub fn pack_tar_gz<W: Write>(
    roots: &[PackRoot],
    options: &PackOptions<'_>,
    out: W,
) -> Result<(PackReport, W), PackError> {
    // gzip on `gzip_threads` cores (members in order: `pargz.rs`), as the Python server
    // reads it.
    let encoder = Encoding::Gzip.encoder_on(out, options.level, options.gzip_threads).map_err(PackError::Write)?;
    let mut packer = Packer { builder: tar::Builder::new(encoder), options, report: PackReport::default() };
    let walk_options = WalkOptions { follow_symlinks: options.follow_symlinks, keep: options.keep };
    let skipped = walk(roots, &walk_options, &mut |found| packer.add(found))?;
    let Packer { builder, mut report, .. } = packer;
    report.skipped.extend(skipped);
    // `into_inner` writes the end-of-archive blocks; `finish` the gzip trailer. Both
    // can fail, and a stream that silently lacks them is a truncated archive.
    let encoder = builder.into_inner().map_err(PackError::Write)?;
    let out = encoder.finish().map_err(PackError::Write)?;
    Ok((report, out))
}

/// Writes what the walk finds as tar entries.
struct Packer<'a, W: Write> {
    builder: tar::Builder<Encoder<W>>,
    options: &'a PackOptions<'a>,
    report: PackReport,
}

impl<W: Write> Packer<'_, W> {
    fn add(&mut self, found: Found<'_>) -> Result<(), PackError> {
        match found {
            Found::Directory { name, .. } if name.as_os_str().is_empty() => Ok(()),
            Found::Directory { name, meta, .. } => {
                let mut header = header_for(EntryType::Directory, meta, 0);
                self.builder.append_data(&mut header, name, io::empty()).map_err(PackError::Write)?;
                self.report.directories += 1;
                Ok(())
            }
            Found::File { disk, name, meta } => self.add_file(disk, name, meta),
            Found::Symlink { disk, name, meta } => self.add_symlink(disk, name, meta),
            Found::DirectoryDone { .. } => Ok(()),
        }
    }

    fn add_file(&mut self, disk: &Path, name: &Path, meta: &Metadata) -> Result<(), PackError> {
        let file = match File::open(disk) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.report.skipped.push((disk.to_path_buf(), "removed while packing".into()));
                return Ok(());
            }
            Err(error) => return Err(read_error(disk, error)),
        };
        let size = meta.len();
        let mut header = header_for(EntryType::Regular, meta, size);
        let reading = ReportingReads { inner: file.take(size), on_read: self.options.on_read };
        let mut content = ExactSize { inner: reading, remaining: size, failed: None };
        match self.builder.append_data(&mut header, name, &mut content) {
            Ok(()) => {}
            // Only the reader knows whether the file or the output failed.
            Err(error) => {
                return Err(match content.failed {
                    Some(ReadFailure::Shrank) => PackError::Changed { path: disk.to_path_buf() },
                    Some(ReadFailure::Io) => read_error(disk, error),
                    None => PackError::Write(error),
                });
            }
        }
        self.report.files += 1;
        self.report.content_bytes += size;
        (self.options.on_file)(size);
        Ok(())
    }

    fn add_symlink(&mut self, disk: &Path, name: &Path, meta: &Metadata) -> Result<(), PackError> {
        let target = fs::read_link(disk).map_err(|e| read_error(disk, e))?;
        let mut header = header_for(EntryType::Symlink, meta, 0);
        self.builder.append_link(&mut header, name, &target).map_err(PackError::Write)?;
        self.report.links += 1;
        Ok(())
    }
}

/// A header carrying only what the peer needs: type, permission bits (never
/// setuid, setgid or sticky), size and modification time. No owner names or ids.
fn header_for(kind: EntryType, meta: &Metadata, size: u64) -> Header {
    bare_header(kind, meta.permissions().mode(), size, meta.mtime())
}

/// The same from the raw parts, for callers that have a `stat` rather than `Metadata`.
pub(crate) fn bare_header(kind: EntryType, mode: u32, size: u64, mtime: i64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o777);
    header.set_size(size);
    header.set_mtime(mtime.max(0) as u64);
    header
}

/// A reader that tells `on_read` how many bytes each read returned.
struct ReportingReads<'a, R> {
    inner: R,
    on_read: &'a dyn Fn(u64),
}

impl<R: Read> Read for ReportingReads<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

/// Reads exactly the size written in the header: a file that shrank while being
/// packed must fail rather than produce an entry shorter than its header says.
/// It also records whether reading failed, so that a failed write of the archive (a
/// closed network stream) is not blamed on the file.
pub(crate) struct ExactSize<R> {
    pub(crate) inner: R,
    pub(crate) remaining: u64,
    pub(crate) failed: Option<ReadFailure>,
}

/// Why an [`ExactSize`] read failed: the file shrank, or reading it failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadFailure {
    Shrank,
    Io,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf).inspect_err(|_| self.failed = Some(ReadFailure::Io))?;
        if n == 0 {
            self.failed = Some(ReadFailure::Shrank);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
