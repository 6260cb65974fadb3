//! What an unpack may do: its caps, which modification times it sets, and the paths
//! it may write (the RESULT paths a client asked for). Shared by the tar unpacker and
//! the placement seam ([`crate::place`]).

use std::path::PathBuf;

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
    /// Told the decompressed bytes as they are read: for a progress bar.
    pub progress: Option<ReadProgress>,
}

/// A callback told how many decompressed bytes were just read.
#[derive(Clone)]
pub struct ReadProgress(pub std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for ReadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadProgress")
    }
}
