//! The content store behind content-addressed upload: blobs by SHA-256 under
//! `ROOT/lrpymrpc-cas/`, each verified against its digest before it is kept; which CN
//! has sent which blob (presence is answered per CN, so a client learns nothing about
//! other users' files, while the bytes are stored once); a size bound with
//! least-recently-used eviction that never removes a blob a job is being made from,
//! nor one just sent for a job still to be made (for up to `hold`). The bound may be
//! passed while uploads in progress need more; a job, once made, needs nothing from
//! the store (its files are copies).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use lrpymrpc_cas::{Hasher, is_valid_hash};

use crate::presence::PresenceLog;
use lrpymrpc_proto::v1::Digest;

/// The store's directory below the job root (never swept: it has no job marker).
pub const STORE_DIR: &str = "lrpymrpc-cas";

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a SHA-256 digest (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("blob {hash} is {size} bytes, more than the limit of {limit} (--max-upload-bytes)")]
    TooLarge { hash: String, size: u64, limit: u64 },
    #[error("blob {expected}: its bytes hash to {actual}; nothing was kept")]
    Mismatch { expected: String, actual: String },
    #[error("blob {hash}: more bytes came than its size ({size})")]
    TooLong { hash: String, size: u64 },
    #[error("blob {hash}: the stream ended after {got} of {size} bytes")]
    Truncated { hash: String, got: u64, size: u64 },
    #[error("a chunk came without a blob to belong to (the first chunk of a blob names its digest)")]
    Unnamed,
    #[error("the content store is full of blobs sent for jobs not yet made (--cas-max-bytes); try again later")]
    Full,
    #[error("blob compression `{0}` is not spoken here; send zstd or nothing")]
    Compression(String),
    #[error("the content store: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
pub struct ContentStore {
    dir: PathBuf,
    /// Who sent what, on disk, so a restart keeps it (`presence.rs`).
    presence: PresenceLog,
    max_bytes: u64,
    /// How long a blob just sent is kept for the job it was sent for.
    hold: std::time::Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per CN (empty over plaintext), the blobs it sent.
    present: HashMap<String, HashSet<String>>,
    /// Blobs on disk: size and last use.
    blobs: HashMap<String, (u64, u64)>,
    total: u64,
    clock: u64,
    /// Blobs a job is being made from right now, with how many such jobs.
    pinned: HashMap<String, usize>,
    /// Blobs sent and not yet used by a job, with when they came.
    pending: HashMap<String, std::time::Instant>,
}

impl ContentStore {
    /// Opens (or makes) the store under `root`; blobs an earlier run stored stay, and
    /// count as sent by the CNs that sent them then (`presence.rs`).
    pub fn new(root: &Path, max_bytes: u64, hold: std::time::Duration) -> std::io::Result<ContentStore> {
        let dir = root.join(STORE_DIR);
        let _ = std::fs::remove_dir_all(dir.join("incoming"));
        std::fs::create_dir_all(dir.join("incoming"))?;
        std::fs::create_dir_all(dir.join("blobs"))?;
        let mut inner = Inner::default();
        for shard in std::fs::read_dir(dir.join("blobs"))?.flatten() {
            for blob in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                if let (true, Ok(meta)) = (is_valid_hash(&name), blob.metadata()) {
                    inner.total += meta.len();
                    inner.blobs.insert(name, (meta.len(), 0));
                }
            }
        }
        let (presence, present) = PresenceLog::open(&dir, |hash| inner.blobs.contains_key(hash))?;
        inner.present = present;
        Ok(ContentStore { dir, presence, max_bytes, hold, inner: Mutex::new(inner) })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where a blob's bytes are.
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        self.dir.join("blobs").join(&hash[..2.min(hash.len())]).join(hash)
    }

    /// The digests that `cn` has not sent, or that are no longer stored.
    pub fn missing<'d>(&self, cn: &str, digests: impl Iterator<Item = &'d Digest>) -> Vec<Digest> {
        let inner = self.inner();
        let sent = inner.present.get(cn);
        let mut seen = HashSet::new();
        digests
            .filter(|d| seen.insert(d.hash.clone()))
            .filter(|d| !(sent.is_some_and(|s| s.contains(&d.hash)) && inner.blobs.contains_key(&d.hash)))
            .cloned()
            .collect()
    }

    /// Keeps `hashes` from eviction until [`ContentStore::unpin`], and marks them used.
    pub fn pin(&self, hashes: &[String]) {
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        for hash in hashes {
            *inner.pinned.entry(hash.clone()).or_default() += 1;
            if let Some(entry) = inner.blobs.get_mut(hash) {
                entry.1 = now;
            }
        }
    }

    /// Ends a pin; the blobs were used, so they are no longer held as just sent.
    pub fn unpin(&self, hashes: &[String]) {
        let mut inner = self.inner();
        for hash in hashes {
            inner.pending.remove(hash);
            if let Some(count) = inner.pinned.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    inner.pinned.remove(hash);
                }
            }
        }
        self.evict(&mut inner);
    }

    /// Starts receiving a blob, sent as it is or (`compression` `zstd`) compressed.
    pub fn begin(&self, digest: &Digest, compression: &str, limit: u64) -> Result<BlobWriter, BlobError> {
        if !is_valid_hash(&digest.hash) {
            return Err(BlobError::BadDigest(digest.hash.chars().take(80).collect()));
        }
        if digest.size > limit {
            return Err(BlobError::TooLarge { hash: digest.hash.clone(), size: digest.size, limit });
        }
        // Blobs waiting for their job cannot be evicted: they may not fill the disk.
        // They are stored blobs, so while everything stored fits, so do they (and the
        // sum over every waiting blob is not needed for each blob of an upload).
        let waiting: u64 = {
            let inner = self.inner();
            match inner.total.saturating_add(digest.size) <= self.max_bytes {
                true => 0,
                false => {
                    let held = inner.pending.iter().filter(|(_, came)| came.elapsed() < self.hold);
                    held.filter_map(|(hash, _)| inner.blobs.get(hash)).map(|(size, _)| size).sum()
                }
            }
        };
        if waiting.saturating_add(digest.size) > self.max_bytes.max(digest.size) {
            return Err(BlobError::Full);
        }
        let file = tempfile::NamedTempFile::new_in(self.dir.join("incoming"))?;
        let sink = BlobSink { file, hasher: Hasher::default(), received: 0, size: digest.size, overflow: false };
        let body = match compression {
            "" => Body::Plain(sink),
            "zstd" => Body::Zstd(zstd::stream::write::Decoder::new(sink)?),
            other => return Err(BlobError::Compression(other.chars().take(40).collect())),
        };
        Ok(BlobWriter { digest: digest.clone(), body })
    }

    /// Verifies a received blob and keeps it, as sent by `cn`; then evicts what the
    /// size bound asks for.
    pub fn finish(&self, cn: &str, writer: BlobWriter) -> Result<(), BlobError> {
        let (digest, BlobSink { file, hasher, .. }) = writer.into_sink()?;
        let actual = hasher.finish();
        if actual.size < digest.size {
            return Err(BlobError::Truncated { hash: digest.hash, got: actual.size, size: digest.size });
        }
        if actual.hash != digest.hash {
            return Err(BlobError::Mismatch { expected: digest.hash, actual: actual.hash });
        }
        let mut inner = self.store(file, &digest)?;
        inner.pending.insert(digest.hash.clone(), std::time::Instant::now());
        let new = inner.present.entry(cn.to_string()).or_default().insert(digest.hash.clone());
        self.evict(&mut inner);
        drop(inner);
        if new {
            self.presence.record(cn, &digest.hash);
        }
        Ok(())
    }

    /// The bytes of every blob stored.
    pub fn total_bytes(&self) -> u64 {
        self.inner().total
    }

    /// Whether the blob is stored.
    pub fn holds(&self, hash: &str) -> bool {
        self.inner().blobs.contains_key(hash)
    }

    /// A blob the server writes itself (a recorded run's output or results): bytes go
    /// to a temporary file and through the hash; [`ContentStore::keep`] stores it.
    pub fn local_blob(&self) -> std::io::Result<LocalBlob> {
        let file = tempfile::NamedTempFile::new_in(self.dir.join("incoming"))?;
        Ok(LocalBlob { file, hasher: Hasher::default() })
    }

    /// Stores a blob the server wrote, under the digest of what was written; counted
    /// as sent by nobody (no client learns of it), evictable like any other.
    pub fn keep(&self, blob: LocalBlob) -> Result<Digest, BlobError> {
        let LocalBlob { mut file, hasher } = blob;
        file.flush()?;
        let digest = hasher.finish();
        let mut inner = self.store(file, &digest)?;
        self.evict(&mut inner);
        Ok(digest)
    }

    /// Moves a verified temporary file into the store under `digest` (unless it is
    /// there already) and marks the blob used; returns the lock for what follows.
    fn store(&self, file: tempfile::NamedTempFile, digest: &Digest) -> Result<MutexGuard<'_, Inner>, BlobError> {
        let path = self.blob_path(&digest.hash);
        if !self.inner().blobs.contains_key(&digest.hash) {
            std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
            let file = file.persist(&path).map_err(|e| BlobError::Io(e.error))?;
            // Read-only: a copy made from it is given its own mode.
            let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444));
        }
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(entry) = inner.blobs.get_mut(&digest.hash) {
            entry.1 = now;
        } else {
            inner.blobs.insert(digest.hash.clone(), (digest.size, now));
            inner.total += digest.size;
        }
        Ok(inner)
    }

    /// Removes the least recently used blobs nobody is being made from, until the
    /// store fits its bound.
    fn evict(&self, inner: &mut Inner) {
        if inner.total <= self.max_bytes {
            return;
        }
        let hold = self.hold;
        inner.pending.retain(|_, came| came.elapsed() < hold);
        let mut candidates: Vec<(u64, String, u64)> = inner
            .blobs
            .iter()
            .filter(|(hash, _)| !inner.pinned.contains_key(*hash) && !inner.pending.contains_key(*hash))
            .map(|(hash, (size, used))| (*used, hash.clone(), *size))
            .collect();
        candidates.sort();
        for (_, hash, size) in candidates {
            if inner.total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(self.blob_path(&hash)).is_ok() {
                inner.blobs.remove(&hash);
                inner.total -= size;
                for sent in inner.present.values_mut() {
                    sent.remove(&hash);
                }
            }
        }
    }
}

/// A blob the server is writing (see [`ContentStore::local_blob`]).
pub struct LocalBlob {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
}

impl Write for LocalBlob {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A blob being received: its bytes (decompressed, when they came compressed) go to a
/// temporary file and through the hash; never more of them than its size.
pub struct BlobWriter {
    digest: Digest,
    body: Body,
}

enum Body {
    Plain(BlobSink),
    Zstd(zstd::stream::write::Decoder<'static, BlobSink>),
}

struct BlobSink {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    received: u64,
    size: u64,
    /// More bytes came than the blob's size (a decompression bomb stops here).
    overflow: bool,
}

impl Write for BlobSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.received + bytes.len() as u64 > self.size {
            self.overflow = true;
            return Err(std::io::Error::other("more bytes than the blob's size"));
        }
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        self.received += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let written = match &mut self.body {
            Body::Plain(sink) => sink.write_all(bytes),
            Body::Zstd(decoder) => decoder.write_all(bytes),
        };
        written.map_err(|error| match self.sink().overflow {
            true => BlobError::TooLong { hash: self.digest.hash.clone(), size: self.digest.size },
            false => BlobError::Io(error),
        })
    }

    fn sink(&self) -> &BlobSink {
        match &self.body {
            Body::Plain(sink) => sink,
            Body::Zstd(decoder) => decoder.get_ref(),
        }
    }

    /// The blob's bytes as received: the decoder flushed, the sink handed back.
    fn into_sink(self) -> Result<(Digest, BlobSink), BlobError> {
        let digest = self.digest;
        match self.body {
            Body::Plain(sink) => Ok((digest, sink)),
            Body::Zstd(mut decoder) => {
                let flushed = decoder.flush();
                let sink = decoder.into_inner();
                match (flushed, sink.overflow) {
                    (_, true) => Err(BlobError::TooLong { hash: digest.hash, size: digest.size }),
                    (Err(error), false) => Err(BlobError::Io(error)),
                    (Ok(()), false) => Ok((digest, sink)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lrpymrpc_cas::digest_of;

    use super::*;

    fn send(store: &ContentStore, cn: &str, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest = digest_of(bytes);
        let mut writer = store.begin(&digest, "", u64::MAX)?;
        writer.write(bytes)?;
        store.finish(cn, writer)?;
        Ok(digest)
    }

    #[test]
    fn presence_is_per_cn_and_a_lie_keeps_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::new(root.path(), 1 << 20, Duration::from_secs(60)).unwrap();
        let digest = send(&store, "alice", b"netlist").unwrap();
        assert!(store.missing("alice", [&digest].into_iter()).is_empty());
        assert_eq!(store.missing("bob", [&digest].into_iter()), vec![digest.clone()]);
        let claimed = digest_of(b"real");
        let mut writer = store.begin(&claimed, "", u64::MAX).unwrap();
        writer.write(b"fake").unwrap();
        assert!(matches!(store.finish("bob", writer), Err(BlobError::Mismatch { .. })));
        assert!(!store.blob_path(&claimed.hash).exists());
        assert_eq!(std::fs::read_dir(root.path().join(STORE_DIR).join("incoming")).unwrap().count(), 0);
        let mut long = store.begin(&digest_of(b"ab"), "", u64::MAX).unwrap();
        assert!(matches!(long.write(b"abc"), Err(BlobError::TooLong { .. })));
    }

    #[test]
    fn compressed_blobs_are_stored_as_their_bytes_and_a_bomb_stops_at_the_size() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::new(root.path(), 1 << 30, Duration::from_secs(60)).unwrap();
        let bytes = vec![b'a'; 1 << 20];
        let digest = digest_of(&bytes);
        let frame = zstd::bulk::compress(&bytes, 1).unwrap();
        assert!(frame.len() < 1000);
        let mut writer = store.begin(&digest, "zstd", u64::MAX).unwrap();
        for piece in frame.chunks(100) {
            writer.write(piece).unwrap();
        }
        store.finish("c", writer).unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest.hash)).unwrap(), bytes);
        // The same frame claimed as a 1 KiB blob: decompression stops at the size.
        let small = Digest { hash: digest.hash.clone(), size: 1024 };
        let mut bomb = store.begin(&small, "zstd", u64::MAX).unwrap();
        let refused = frame.chunks(100).try_for_each(|piece| bomb.write(piece)).and_then(|()| store.finish("d", bomb));
        assert!(matches!(refused, Err(BlobError::TooLong { .. })), "{refused:?}");
        assert!(matches!(store.begin(&digest, "br", u64::MAX), Err(BlobError::Compression(_))));
    }

    #[test]
    fn eviction_spares_pinned_and_pending_blobs_and_waiting_blobs_cannot_fill_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::new(root.path(), 10, Duration::ZERO).unwrap();
        let a = send(&store, "c", b"aaaaaaaa").unwrap();
        store.pin(std::slice::from_ref(&a.hash));
        let b = send(&store, "c", b"bbbbbbbb").unwrap();
        assert!(store.blob_path(&a.hash).exists(), "pinned: a job is being made from it");
        assert!(!store.blob_path(&b.hash).exists(), "the least recently used unpinned blob went");
        store.unpin(std::slice::from_ref(&a.hash));
        assert!(store.blob_path(&a.hash).exists(), "within the bound");
        let e = send(&store, "c", b"eeeeeeee").unwrap();
        assert!(!store.blob_path(&a.hash).exists() && store.blob_path(&e.hash).exists(), "least recently used first");
        // Held for their job: no eviction, and no more than the bound may wait.
        let held = ContentStore::new(&root.path().join("held"), 10, Duration::from_secs(60)).unwrap();
        let c = send(&held, "c", b"cccccccc").unwrap();
        assert!(matches!(send(&held, "c", b"dddddddd"), Err(BlobError::Full)));
        assert!(held.blob_path(&c.hash).exists());
    }
}
