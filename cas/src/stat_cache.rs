//! The client's stat cache: (device, inode) -> (size, mtime, ctime, digest), kept in a
//! file under the user's cache directory, so an unchanged file is not read again to
//! be hashed. Git's racy rule applies: a file modified within [`RACY_NS`] of the
//! moment the cache was written may have changed within the clock's granularity, so
//! it is hashed again. The bytes sent are always hashed as they are read (the upload
//! checks them), so a stale entry can fail a job but never store wrong bytes.

use std::collections::HashMap;
use std::fs::Metadata;
use std::hash::BuildHasherDefault;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::digest::HashBytes;

/// The most entries kept: about 8 MB of memory and 7 MB of file at most.
pub const MAX_ENTRIES: usize = 100_000;

/// Modification this close to (or after) the cache's own write time is not trusted:
/// wider than the coarsest timestamps of common filesystems (2 s on FAT).
pub const RACY_NS: i128 = 2_000_000_000;

/// The file: this header and the write time in nanoseconds on one line, then one
/// [`RECORD`]-byte record an entry (device, inode, size, mtime and ctime in
/// nanoseconds, all little-endian, then the SHA-256): read without parsing a number.
/// A file in another format (an older client's) is an empty cache.
const HEADER: &str = "lrpymrpc-stat-cache 2";

/// Bytes of one entry in the file.
const RECORD: usize = 5 * 8 + 32;

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    hash: HashBytes,
    /// Looked up or stored by this run: kept first when the cache is cut to size.
    used: bool,
}

#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    written_ns: i128,
    entries: HashMap<(u64, u64), Entry, BuildHasherDefault<InodeHasher>>,
    changed: bool,
}

/// Hashes (device, inode) keys. They come from the user's own file systems, never
/// from a peer, so a multiplicative hash (FxHash's) is safe here, and a warm walk
/// looks up every file: SipHash was a visible part of it.
#[derive(Debug, Default)]
struct InodeHasher(u64);

impl std::hash::Hasher for InodeHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|byte| self.write_u64(u64::from(*byte)));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn times(meta: &Metadata) -> (i128, i128) {
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    (ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()))
}

impl StatCache {
    /// Reads the cache at `path`; a missing or unreadable file is an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache { path: Some(path.to_path_buf()), ..StatCache::default() };
        let Ok(bytes) = std::fs::read(path) else { return cache };
        let Some(newline) = bytes.iter().position(|b| *b == b'\n') else { return cache };
        let header = std::str::from_utf8(&bytes[..newline]).unwrap_or_default();
        let Some(written) = header.strip_prefix(HEADER).and_then(|rest| rest.trim().parse().ok()) else {
            return cache;
        };
        cache.written_ns = written;
        let records = bytes[newline + 1..].chunks_exact(RECORD).take(MAX_ENTRIES);
        cache.entries.reserve(records.len());
        for record in records {
            let word = |n: usize| u64::from_le_bytes(record[n * 8..n * 8 + 8].try_into().expect("eight bytes"));
            let signed = |n: usize| i128::from(word(n) as i64);
            let hash: HashBytes = record[40..].try_into().expect("32 bytes");
            let entry = Entry { size: word(2), mtime_ns: signed(3), ctime_ns: signed(4), hash, used: false };
            cache.entries.insert((word(0), word(1)), entry);
        }
        cache
    }

    /// Where the cache is kept, when it is.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The hash of the file `meta` describes, when the cache knows it for sure.
    pub fn lookup(&mut self, meta: &Metadata) -> Option<HashBytes> {
        let (mtime_ns, ctime_ns) = times(meta);
        let written = self.written_ns;
        let entry = self.entries.get_mut(&(meta.dev(), meta.ino()))?;
        let same = entry.size == meta.len() && entry.mtime_ns == mtime_ns && entry.ctime_ns == ctime_ns;
        let racy = mtime_ns.max(ctime_ns) >= written - RACY_NS;
        if !same || racy {
            return None;
        }
        entry.used = true;
        Some(entry.hash)
    }

    /// Records what a file of `size` bytes hashed to.
    pub fn insert(&mut self, meta: &Metadata, hash: HashBytes, size: u64) {
        let (mtime_ns, ctime_ns) = times(meta);
        let entry = Entry { size, mtime_ns, ctime_ns, hash, used: true };
        self.entries.insert((meta.dev(), meta.ino()), entry);
        // Saved even when the entry was already there (a racy one): the new write time
        // lets the next run trust it.
        self.changed = true;
    }

    /// Writes the cache back (atomically: a temporary file renamed over it), entries
    /// this run used first, cut to [`MAX_ENTRIES`]. Nothing is written when nothing
    /// changed and the racy window has not moved anything.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.changed && self.written_ns != 0 {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
        {
            let mut out = BufWriter::new(&mut file);
            writeln!(out, "{HEADER} {now}")?;
            let mut entries: Vec<(&(u64, u64), &Entry)> = self.entries.iter().collect();
            entries.sort_by_key(|(_, entry)| !entry.used);
            for ((dev, ino), e) in entries.into_iter().take(MAX_ENTRIES) {
                // Times beyond i64 nanoseconds (before 1678, after 2261) are not kept.
                let (Ok(mtime), Ok(ctime)) = (i64::try_from(e.mtime_ns), i64::try_from(e.ctime_ns)) else {
                    continue;
                };
                let mut record = [0u8; RECORD];
                for (n, word) in [*dev, *ino, e.size, mtime as u64, ctime as u64].into_iter().enumerate() {
                    record[n * 8..n * 8 + 8].copy_from_slice(&word.to_le_bytes());
                }
                record[40..].copy_from_slice(&e.hash);
                out.write_all(&record)?;
            }
            out.flush()?;
        }
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_of;

    #[test]
    fn a_file_is_known_until_it_changes_and_a_racy_one_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (file, cache_path) = (dir.path().join("f"), dir.path().join("cache"));
        std::fs::write(&file, "one").unwrap();
        let digest = digest_of(b"one");
        let hash = crate::digest::hash_bytes(&digest.hash).unwrap();
        let mut cache = StatCache::load(&cache_path);
        cache.insert(&std::fs::metadata(&file).unwrap(), hash, digest.size);
        cache.save().unwrap();
        // Just written: the file's mtime is within the racy window, so not trusted.
        let mut cache = StatCache::load(&cache_path);
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None);
        // A cache written long after the file's last change is trusted.
        cache.written_ns += 10 * RACY_NS;
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), Some(hash));
        std::fs::write(&file, "two").unwrap();
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None, "size and times changed");
        // Saved and read back whole.
        cache.insert(&std::fs::metadata(&file).unwrap(), hash, 3);
        cache.save().unwrap();
        let saved = StatCache::load(&cache_path);
        assert_eq!(saved.entries.len(), 1);
        let entry = saved.entries.values().next().unwrap();
        assert_eq!((entry.hash, entry.size), (hash, 3));
        assert_eq!((entry.mtime_ns, entry.ctime_ns), times(&std::fs::metadata(&file).unwrap()));
        std::fs::write(&cache_path, "garbage\n1 2 3").unwrap();
        assert_eq!(StatCache::load(&cache_path).entries.len(), 0);
        std::fs::write(&cache_path, "lrpymrpc-stat-cache 1 5\n1 2 3 4 5 abc\n").unwrap();
        assert_eq!(StatCache::load(&cache_path).entries.len(), 0, "an older format is an empty cache");
    }
}
