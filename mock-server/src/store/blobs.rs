//! The content store behind content-addressed upload: blobs by SHA-256 under
//! `ROOT/lrpymrpc-cas/`, each verified against its digest before it is kept; which CN
//! has sent which blob (presence is answered per CN, so a client learns nothing about
//! other users' files, while the bytes are stored once); a size bound with
//! least-recently-used eviction that never removes a blob a job is being made from,
//! nor one just sent for a job still to be made (for up to `hold`). A blob costs the
//! disk whole blocks and at least one ([`charge`]), so tiny blobs cannot fill it while
//! counted as a few bytes. What cannot be evicted (blobs waiting for their job, and
//! blobs still arriving, reserved when they begin) never exceeds the bound, and one
//! CN's never exceeds half of it, so one CN cannot lock the others out. A job, once
//! made, needs nothing from the store (its files are copies).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lrpymrpc_cas::{Hasher, is_valid_hash};

use crate::store::presence::PresenceLog;
use lrpymrpc_proto::v1::Digest;

/// The store's directory below the job root (never swept: it has no job marker).
pub const STORE_DIR: &str = "lrpymrpc-cas";

/// The unit of what a blob costs: a file system block.
pub const BLOCK: u64 = 4096;

/// What a blob of `size` bytes costs the disk: whole blocks, and at least one (its
/// inode and directory entry). 30,000 blobs of 8 bytes count as the 117 MiB they take.
pub fn charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

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
    #[error(
        "this certificate's blobs waiting for their jobs already take half the content store (--cas-max-bytes); \
         make the jobs they were sent for first, or send the tree as a tar.gz"
    )]
    FullForCn,
    #[error("blob compression `{0}` is not spoken here; send zstd or nothing")]
    Compression(String),
    #[error("the content store: {0}")]
    Io(#[from] std::io::Error),
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug)]
pub struct ContentStore {
    dir: PathBuf,
    /// Who sent what, on disk, so a restart keeps it (`presence.rs`).
    presence: PresenceLog,
    max_bytes: u64,
    /// How long a blob just sent is kept for the job it was sent for.
    hold: std::time::Duration,
    /// Shared with the reservations of blobs arriving, which outlive a borrow.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per CN (empty over plaintext), the blobs it sent.
    present: HashMap<String, HashSet<String>>,
    /// Blobs on disk: size and last use.
    blobs: HashMap<String, (u64, u64)>,
    /// What the blobs on disk cost ([`charge`]).
    total: u64,
    clock: u64,
    /// Blobs a job is being made from right now, with how many such jobs.
    pinned: HashMap<String, usize>,
    /// Blobs sent and not yet used by a job, with when they came and who sent them.
    pending: HashMap<String, (std::time::Instant, String)>,
    /// What the pending blobs cost, in all and per CN.
    pending_cost: u64,
    pending_by_cn: HashMap<String, u64>,
    /// What blobs still arriving will cost, in all and per CN.
    reserved: u64,
    reserved_by_cn: HashMap<String, u64>,
}

impl Inner {
    fn add_pending(&mut self, hash: &str, cn: &str) {
        self.remove_pending(hash);
        let cost = self.blobs.get(hash).map_or(0, |(size, _)| charge(*size));
        self.pending.insert(hash.to_string(), (std::time::Instant::now(), cn.to_string()));
        self.pending_cost += cost;
        *self.pending_by_cn.entry(cn.to_string()).or_default() += cost;
    }

    fn remove_pending(&mut self, hash: &str) {
        if let Some((_, cn)) = self.pending.remove(hash) {
            let cost = self.blobs.get(hash).map_or(0, |(size, _)| charge(*size));
            self.pending_cost = self.pending_cost.saturating_sub(cost);
            if let Some(by_cn) = self.pending_by_cn.get_mut(&cn) {
                *by_cn = by_cn.saturating_sub(cost);
                if *by_cn == 0 {
                    self.pending_by_cn.remove(&cn);
                }
            }
        }
    }

    /// Blobs held longer than `hold` no longer wait for their job.
    fn expire_pending(&mut self, hold: std::time::Duration) {
        let expired: Vec<String> =
            self.pending.iter().filter(|(_, (came, _))| came.elapsed() >= hold).map(|(hash, _)| hash.clone()).collect();
        for hash in expired {
            self.remove_pending(&hash);
        }
    }

    /// What cannot be evicted: blobs waiting for their job and blobs arriving, of
    /// everyone and of `cn`.
    fn waiting(&self, cn: &str) -> (u64, u64) {
        let of_cn =
            self.pending_by_cn.get(cn).copied().unwrap_or(0) + self.reserved_by_cn.get(cn).copied().unwrap_or(0);
        (self.pending_cost + self.reserved, of_cn)
    }

    fn unreserve(&mut self, cn: &str, cost: u64) {
        self.reserved = self.reserved.saturating_sub(cost);
        if let Some(by_cn) = self.reserved_by_cn.get_mut(cn) {
            *by_cn = by_cn.saturating_sub(cost);
            if *by_cn == 0 {
                self.reserved_by_cn.remove(cn);
            }
        }
    }
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
                    inner.total += charge(meta.len());
                    inner.blobs.insert(name, (meta.len(), 0));
                }
            }
        }
        let (presence, present) = PresenceLog::open(&dir, |hash| inner.blobs.contains_key(hash))?;
        inner.present = present;
        Ok(ContentStore { dir, presence, max_bytes, hold, inner: Arc::new(Mutex::new(inner)) })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
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

    /// The first of `digests` (all stored) whose claimed size is not the stored blob's,
    /// with the stored size: a tree's sizes must be true, or its limits count nothing.
    pub fn wrong_size<'d>(&self, digests: impl Iterator<Item = &'d Digest>) -> Option<(Digest, u64)> {
        let inner = self.inner();
        digests.into_iter().find_map(|d| match inner.blobs.get(&d.hash) {
            Some((size, _)) if *size != d.size => Some((d.clone(), *size)),
            _ => None,
        })
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
            inner.remove_pending(hash);
            if let Some(count) = inner.pinned.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    inner.pinned.remove(hash);
                }
            }
        }
        let evicted = self.evict(&mut inner);
        drop(inner);
        delete(evicted);
    }

    /// Starts receiving a blob from `cn`, sent as it is or (`compression` `zstd`)
    /// compressed; what it will cost is reserved until it is kept or refused.
    pub fn begin(&self, cn: &str, digest: &Digest, compression: &str, limit: u64) -> Result<BlobWriter, BlobError> {
        if !is_valid_hash(&digest.hash) {
            return Err(BlobError::BadDigest(digest.hash.chars().take(80).collect()));
        }
        if digest.size > limit {
            return Err(BlobError::TooLarge { hash: digest.hash.clone(), size: digest.size, limit });
        }
        let cost = charge(digest.size);
        {
            // Blobs waiting for their job and blobs arriving cannot be evicted: they
            // may not fill the disk, and one CN's may not take more than half of it.
            let mut inner = self.inner();
            let fits = |inner: &Inner| {
                let (all, of_cn) = inner.waiting(cn);
                match (all + cost <= self.max_bytes.max(cost), of_cn + cost <= (self.max_bytes / 2).max(cost)) {
                    (true, true) => Ok(()),
                    (false, _) => Err(BlobError::Full),
                    (true, false) => Err(BlobError::FullForCn),
                }
            };
            if fits(&inner).is_err() {
                inner.expire_pending(self.hold);
                fits(&inner)?;
            }
            inner.reserved += cost;
            *inner.reserved_by_cn.entry(cn.to_string()).or_default() += cost;
        }
        let reservation = Reservation { inner: self.inner.clone(), cn: cn.to_string(), cost, open: true };
        let file = tempfile::NamedTempFile::new_in(self.dir.join("incoming"))?;
        let sink = BlobSink { file, hasher: Hasher::default(), received: 0, size: digest.size, overflow: false };
        let body = match compression {
            "" => Body::Plain(sink),
            "zstd" => Body::Zstd(zstd::stream::write::Decoder::new(sink)?),
            other => return Err(BlobError::Compression(other.chars().take(40).collect())),
        };
        Ok(BlobWriter { digest: digest.clone(), body, reservation })
    }

    /// Verifies a received blob and keeps it, as sent by `cn`; then evicts what the
    /// size bound asks for.
    pub fn finish(&self, writer: BlobWriter) -> Result<(), BlobError> {
        let (digest, BlobSink { file, hasher, .. }, mut reservation) = writer.into_sink()?;
        let cn = reservation.cn.clone();
        let cn = cn.as_str();
        let actual = hasher.finish();
        if actual.size < digest.size {
            return Err(BlobError::Truncated { hash: digest.hash, got: actual.size, size: digest.size });
        }
        if actual.hash != digest.hash {
            return Err(BlobError::Mismatch { expected: digest.hash, actual: actual.hash });
        }
        let mut inner = self.store(file, &digest)?;
        reservation.settle(&mut inner);
        inner.add_pending(&digest.hash, cn);
        let new = inner.present.entry(cn.to_string()).or_default().insert(digest.hash.clone());
        let evicted = self.evict(&mut inner);
        drop(inner);
        delete(evicted);
        if new {
            self.presence.record(cn, &digest.hash);
        }
        Ok(())
    }

    /// What every blob stored costs the disk ([`charge`]).
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
        let evicted = self.evict(&mut inner);
        drop(inner);
        delete(evicted);
        Ok(digest)
    }

    /// Moves a verified temporary file into the store under `digest` (unless it is
    /// there already) and marks the blob used; returns the lock for what follows. The
    /// file is moved in under the lock (a rename), as eviction moves blobs out under it:
    /// a blob the map holds is always on disk.
    fn store(&self, file: tempfile::NamedTempFile, digest: &Digest) -> Result<MutexGuard<'_, Inner>, BlobError> {
        let path = self.blob_path(&digest.hash);
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(entry) = inner.blobs.get_mut(&digest.hash) {
            entry.1 = now;
            return Ok(inner);
        }
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        let file = file.persist(&path).map_err(|e| BlobError::Io(e.error))?;
        // Read-only: a copy made from it is given its own mode.
        let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444));
        inner.blobs.insert(digest.hash.clone(), (digest.size, now));
        inner.total += charge(digest.size);
        Ok(inner)
    }

    /// Takes out the least recently used blobs nobody is being made from, until the
    /// store fits its bound: each is moved aside under the lock (a rename) and returned,
    /// for [`delete`] to unlink once the lock is released (a large file takes a while).
    #[must_use]
    fn evict(&self, inner: &mut Inner) -> Vec<PathBuf> {
        let mut evicted = Vec::new();
        if inner.total <= self.max_bytes {
            return evicted;
        }
        inner.expire_pending(self.hold);
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
            let aside = self.dir.join("incoming").join(format!("evicted-{hash}"));
            if std::fs::rename(self.blob_path(&hash), &aside).is_ok() {
                evicted.push(aside);
                inner.blobs.remove(&hash);
                inner.total -= charge(size);
                for sent in inner.present.values_mut() {
                    sent.remove(&hash);
                }
            }
        }
        evicted
    }
}

/// Unlinks the blobs [`ContentStore::evict`] moved aside, outside the store's lock.
fn delete(evicted: Vec<PathBuf>) {
    for path in evicted {
        let _ = std::fs::remove_file(path);
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
    reservation: Reservation,
}

/// What an arriving blob will cost, held against the bound until the blob is kept
/// (`settle`) or refused (dropped).
struct Reservation {
    inner: Arc<Mutex<Inner>>,
    cn: String,
    cost: u64,
    open: bool,
}

impl Reservation {
    fn settle(&mut self, inner: &mut Inner) {
        if std::mem::take(&mut self.open) {
            inner.unreserve(&self.cn, self.cost);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            let shared = self.inner.clone();
            self.settle(&mut lock(&shared));
        }
    }
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
    fn into_sink(self) -> Result<(Digest, BlobSink, Reservation), BlobError> {
        let BlobWriter { digest, body, reservation } = self;
        match body {
            Body::Plain(sink) => Ok((digest, sink, reservation)),
            Body::Zstd(mut decoder) => {
                let flushed = decoder.flush();
                let sink = decoder.into_inner();
                match (flushed, sink.overflow) {
                    (_, true) => Err(BlobError::TooLong { hash: digest.hash, size: digest.size }),
                    (Err(error), false) => Err(BlobError::Io(error)),
                    (Ok(()), false) => Ok((digest, sink, reservation)),
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
        let mut writer = store.begin(cn, &digest, "", u64::MAX)?;
        writer.write(bytes)?;
        store.finish(writer)?;
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
        let mut writer = store.begin("bob", &claimed, "", u64::MAX).unwrap();
        writer.write(b"fake").unwrap();
        assert!(matches!(store.finish(writer), Err(BlobError::Mismatch { .. })));
        assert!(!store.blob_path(&claimed.hash).exists());
        assert_eq!(std::fs::read_dir(root.path().join(STORE_DIR).join("incoming")).unwrap().count(), 0);
        let mut long = store.begin("bob", &digest_of(b"ab"), "", u64::MAX).unwrap();
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
        let mut writer = store.begin("c", &digest, "zstd", u64::MAX).unwrap();
        for piece in frame.chunks(100) {
            writer.write(piece).unwrap();
        }
        store.finish(writer).unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest.hash)).unwrap(), bytes);
        // The same frame claimed as a 1 KiB blob: decompression stops at the size.
        let small = Digest { hash: digest.hash.clone(), size: 1024 };
        let mut bomb = store.begin("d", &small, "zstd", u64::MAX).unwrap();
        let refused = frame.chunks(100).try_for_each(|piece| bomb.write(piece)).and_then(|()| store.finish(bomb));
        assert!(matches!(refused, Err(BlobError::TooLong { .. })), "{refused:?}");
        assert!(matches!(store.begin("d", &digest, "br", u64::MAX), Err(BlobError::Compression(_))));
    }

    #[test]
    fn eviction_spares_pinned_and_pending_blobs_and_waiting_blobs_cannot_fill_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::new(root.path(), BLOCK + 1, Duration::ZERO).unwrap();
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
        let held = ContentStore::new(&root.path().join("held"), 2 * BLOCK + 1, Duration::from_secs(60)).unwrap();
        let c = send(&held, "c", b"cccccccc").unwrap();
        assert!(matches!(send(&held, "c", b"dddddddd"), Err(BlobError::FullForCn)), "half of it is c's");
        let d = send(&held, "d", b"dddddddd").unwrap();
        assert!(matches!(send(&held, "e", b"eeeeeeee"), Err(BlobError::Full)));
        assert!(held.blob_path(&c.hash).exists() && held.blob_path(&d.hash).exists());
    }

    #[test]
    fn tiny_blobs_cost_whole_blocks_and_arriving_blobs_count_before_they_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = ContentStore::new(root.path(), 4 * BLOCK, Duration::from_secs(60)).unwrap();
        assert_eq!((charge(0), charge(8), charge(BLOCK), charge(BLOCK + 1)), (BLOCK, BLOCK, BLOCK, 2 * BLOCK));
        // Two arriving blobs of one CN take its half; a third cannot begin, another CN's can.
        let (a, b) = (digest_of(b"a"), digest_of(b"b"));
        let first = store.begin("c", &a, "", u64::MAX).unwrap();
        let _second = store.begin("c", &b, "", u64::MAX).unwrap();
        assert!(matches!(store.begin("c", &digest_of(b"x"), "", u64::MAX), Err(BlobError::FullForCn)));
        send(&store, "d", b"y").unwrap();
        // A refused blob gives its reservation back.
        drop(first);
        send(&store, "c", b"z").unwrap();
        assert_eq!(store.total_bytes(), 2 * BLOCK);
    }
}
