//! The client's stat cache: (device, inode) -> (size, mtime, ctime, digest), kept in a
//! file under the user's cache directory, so an unchanged file is not read again to
//! be hashed. Git's racy rule applies: a file modified within [`RACY_NS`] of the
//! moment the cache was written may have changed within the clock's granularity, so
//! it is hashed again. The bytes sent are always hashed as they are read (the upload
//! checks them), so a stale entry can fail a job but never store wrong bytes.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lrpymrpc_proto::v1::Digest;

use crate::digest::is_valid_hash;

/// The most entries kept: about 10 MB of memory and 12 MB of file at most.
pub const MAX_ENTRIES: usize = 100_000;

/// Modification this close to (or after) the cache's own write time is not trusted:
/// wider than the coarsest timestamps of common filesystems (2 s on FAT).
pub const RACY_NS: i128 = 2_000_000_000;

const HEADER: &str = "lrpymrpc-stat-cache 1";

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    hash: String,
    /// Looked up or stored by this run: kept first when the cache is cut to size.
    used: bool,
}

#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    written_ns: i128,
    entries: HashMap<(u64, u64), Entry>,
    changed: bool,
}

fn times(meta: &Metadata) -> (i128, i128) {
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    (ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()))
}

impl StatCache {
    /// Reads the cache at `path`; a missing or unreadable file is an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache { path: Some(path.to_path_buf()), ..StatCache::default() };
        // Read whole (at most about 12 MB) and parsed in place: no allocation per line.
        let Ok(text) = std::fs::read_to_string(path) else { return cache };
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let Some(written) = header.strip_prefix(HEADER).and_then(|rest| rest.trim().parse().ok()) else {
            return cache;
        };
        cache.written_ns = written;
        cache.entries.reserve(text.len() / 120);
        for line in lines.take(MAX_ENTRIES) {
            let mut fields = line.split(' ');
            let mut next = || fields.next().unwrap_or_default();
            let [dev, ino, size, mtime, ctime, hash] = [next(), next(), next(), next(), next(), next()];
            if fields.next().is_some() {
                continue;
            }
            let parsed = (dev.parse(), ino.parse(), size.parse(), mtime.parse(), ctime.parse());
            if let (Ok(dev), Ok(ino), Ok(size), Ok(mtime_ns), Ok(ctime_ns)) = parsed
                && is_valid_hash(hash)
            {
                let entry = Entry { size, mtime_ns, ctime_ns, hash: hash.to_string(), used: false };
                cache.entries.insert((dev, ino), entry);
            }
        }
        cache
    }

    /// The digest of the file `meta` describes, when the cache knows it for sure.
    pub fn lookup(&mut self, meta: &Metadata) -> Option<Digest> {
        let (mtime_ns, ctime_ns) = times(meta);
        let written = self.written_ns;
        let entry = self.entries.get_mut(&(meta.dev(), meta.ino()))?;
        let same = entry.size == meta.len() && entry.mtime_ns == mtime_ns && entry.ctime_ns == ctime_ns;
        let racy = mtime_ns.max(ctime_ns) >= written - RACY_NS;
        if !same || racy {
            return None;
        }
        entry.used = true;
        Some(Digest { hash: entry.hash.clone(), size: entry.size })
    }

    /// Records what a file hashed to.
    pub fn insert(&mut self, meta: &Metadata, digest: &Digest) {
        let (mtime_ns, ctime_ns) = times(meta);
        let entry = Entry { size: digest.size, mtime_ns, ctime_ns, hash: digest.hash.clone(), used: true };
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
                writeln!(out, "{dev} {ino} {} {} {} {}", e.size, e.mtime_ns, e.ctime_ns, e.hash)?;
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
        let mut cache = StatCache::load(&cache_path);
        cache.insert(&std::fs::metadata(&file).unwrap(), &digest);
        cache.save().unwrap();
        // Just written: the file's mtime is within the racy window, so not trusted.
        let mut cache = StatCache::load(&cache_path);
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None);
        // A cache written long after the file's last change is trusted.
        cache.written_ns += 10 * RACY_NS;
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), Some(digest.clone()));
        std::fs::write(&file, "two").unwrap();
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None, "size and times changed");
        std::fs::write(&cache_path, "garbage\n1 2 3").unwrap();
        assert_eq!(StatCache::load(&cache_path).entries.len(), 0);
    }
}
