//! The action cache (`--action-cache`): a run whose command exited 0 is recorded under
//! a key naming everything that can change what it made (the input tree's digest, the
//! command, the RESULT paths, the Python environment's key, the executor, the
//! server's salt, and the CN unless `--share-action-cache`); its output lines and its
//! packed results are kept as blobs in the content store. A later Execute asking for
//! the cache with the same key is answered from the record: nothing runs.
//!
//! Only the server writes records, from runs it made itself; a client never sends
//! results into the cache. Records are bounded (`--action-cache-max-bytes`, least
//! recently used go first) and a record whose blobs the store has evicted is a miss.
//! Records live as small files under `ROOT/lrpymrpc-cas/actions/`, so they outlive a
//! restart along with the blobs.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use lrpymrpc_cas::{Hasher, is_valid_hash};
use lrpymrpc_proto::v1::Digest;

use crate::store::{ContentStore, LocalBlob};

/// Longer than any line a run's output is cut into.
const MAX_RECORDED_LINE: usize = 4 << 20;

/// The most output one recorded run may have; a run printing more is not recorded.
pub const MAX_RECORDED_OUTPUT: u64 = 256 << 20;

const RECORD_HEADER: &str = "lrpymrpc-action-record 1";

/// What a recorded run left: enough to answer Execute, Check and Download again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ran_at_unix_seconds: i64,
    pub ran_for_ms: u64,
    /// The output lines, framed (see [`OutputLog`]).
    pub output: Digest,
    /// The RESULT paths that existed, packed as an uncompressed tar.
    pub results: Digest,
    /// Those paths (each a single word: RESULT paths are split at spaces).
    pub found: Vec<String>,
    /// The bytes of the result files' content, for Check.
    pub result_bytes: u64,
}

impl Record {
    fn bytes(&self) -> u64 {
        self.output.size.saturating_add(self.results.size)
    }

    fn to_text(&self) -> String {
        format!(
            "{RECORD_HEADER}\nran_at {}\nran_for_ms {}\noutput {} {}\nresults {} {}\nresult_bytes {}\nfound {}\n",
            self.ran_at_unix_seconds,
            self.ran_for_ms,
            self.output.hash,
            self.output.size,
            self.results.hash,
            self.results.size,
            self.result_bytes,
            self.found.join(" ")
        )
    }

    fn from_text(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_HEADER {
            return None;
        }
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in lines {
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            fields.insert(name, value);
        }
        let digest = |name: &str| -> Option<Digest> {
            let (hash, size) = fields.get(name)?.split_once(' ')?;
            is_valid_hash(hash).then(|| Some(Digest { hash: hash.to_string(), size: size.parse().ok()? }))?
        };
        Some(Record {
            ran_at_unix_seconds: fields.get("ran_at")?.parse().ok()?,
            ran_for_ms: fields.get("ran_for_ms")?.parse().ok()?,
            output: digest("output")?,
            results: digest("results")?,
            found: fields.get("found")?.split_whitespace().map(str::to_string).collect(),
            result_bytes: fields.get("result_bytes")?.parse().ok()?,
        })
    }
}

/// Everything that names a run.
#[derive(Debug)]
pub struct ActionParts<'a> {
    pub cn: &'a str,
    /// The input tree's root digest (hash).
    pub input_root: &'a str,
    pub command: &'a str,
    /// The RESULT paths, as the client asked for them.
    pub results: &'a str,
    /// The Python environment's key, or `none` without REPO_URL.
    pub environment: &'a str,
    /// Where and how commands run here (`local`, `local+sandbox`, ...).
    pub executor: &'a str,
    /// The fingerprint of the server's tools and data runs depend on (`none`).
    pub tools: &'a str,
}

#[derive(Debug)]
pub struct ActionCache {
    dir: PathBuf,
    max_bytes: u64,
    salt: String,
    shared: bool,
    inner: Mutex<Inner>,
    /// Runs in progress by key: an identical step arriving meanwhile follows the one
    /// running (its lines as they come) instead of running too.
    flights: Mutex<HashMap<String, Followed>>,
}

/// The most bytes of a run's lines kept for its followers; past it they get the rest
/// from the record once the run is done.
pub const MAX_FOLLOWED_BYTES: usize = 16 << 20;

/// What followers of a run share: its lines so far, and how many there are (the
/// sender's end closes when the run is done).
#[derive(Debug, Default)]
pub struct FlightLog {
    lines: Mutex<Vec<(u8, String)>>,
    bytes: std::sync::atomic::AtomicUsize,
}

impl FlightLog {
    /// The lines from `from` on.
    pub fn since(&self, from: usize) -> Vec<(u8, String)> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }
}

type Followed = (std::sync::Arc<FlightLog>, tokio::sync::watch::Receiver<usize>);

/// Whether this Execute runs the step (and others with the same key follow it), or
/// follows the run already in progress.
#[derive(Debug)]
pub enum Flight {
    /// This run leads; when the guard drops (its record kept, or not), followers go on.
    Lead(FlightGuard),
    /// Another run with the same key is in progress: its lines, and their count, which
    /// ends (an error on `changed`) when the run is done.
    Follow(std::sync::Arc<FlightLog>, tokio::sync::watch::Receiver<usize>),
}

/// Held by the run that leads a flight; dropping it ends the flight.
#[derive(Debug)]
pub struct FlightGuard {
    cache: std::sync::Arc<ActionCache>,
    key: String,
    log: std::sync::Arc<FlightLog>,
    count: tokio::sync::watch::Sender<usize>,
}

impl FlightGuard {
    /// A line of the leading run, for its followers (up to [`MAX_FOLLOWED_BYTES`]).
    pub fn push(&self, pipe: u8, text: &str) {
        use std::sync::atomic::Ordering;
        let size = text.len() + 1;
        if self.log.bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_FOLLOWED_BYTES {
            return;
        }
        let count = {
            let mut lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.push((pipe, text.to_string()));
            lines.len()
        };
        self.count.send_replace(count);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.cache.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Key -> record and last use.
    records: HashMap<String, (Record, u64)>,
    total: u64,
    clock: u64,
}

impl ActionCache {
    /// Opens (or makes) the records under `store_dir/actions`; records an earlier run
    /// kept are read back.
    pub fn new(store_dir: &Path, max_bytes: u64, salt: &str, shared: bool) -> std::io::Result<ActionCache> {
        let dir = store_dir.join("actions");
        std::fs::create_dir_all(&dir)?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let key = entry.file_name().to_string_lossy().into_owned();
            let record = std::fs::read_to_string(entry.path()).ok().as_deref().and_then(Record::from_text);
            match (is_valid_hash(&key), record) {
                (true, Some(record)) => {
                    inner.total += record.bytes();
                    inner.records.insert(key, (record, 0));
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(ActionCache {
            dir,
            max_bytes,
            salt: salt.to_string(),
            shared,
            inner: Mutex::new(inner),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Leads the run of `key`, or follows the one in progress.
    pub fn fly(self: &std::sync::Arc<Self>, key: &str) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((log, count)) = flights.get(key) {
            return Flight::Follow(log.clone(), count.clone());
        }
        let log = std::sync::Arc::new(FlightLog::default());
        let (count, following) = tokio::sync::watch::channel(0);
        flights.insert(key.to_string(), (log.clone(), following));
        Flight::Lead(FlightGuard { cache: self.clone(), key: key.to_string(), log, count })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key of a run: a digest of its parts, each written out unambiguously (a
    /// length before every free text), with the salt, and the CN unless shared.
    pub fn key(&self, parts: &ActionParts<'_>) -> String {
        let scope = if self.shared { "*" } else { parts.cn };
        let results: Vec<&str> = parts.results.split_whitespace().collect();
        let mut hasher = Hasher::default();
        for (name, value) in [
            ("salt", self.salt.as_str()),
            ("scope", scope),
            ("input", parts.input_root),
            ("command", parts.command),
            ("results", &results.join(" ")),
            ("environment", parts.environment),
            ("executor", parts.executor),
            ("tools", parts.tools),
        ] {
            hasher.update(format!("{name} {}\n", value.len()).as_bytes());
            hasher.update(value.as_bytes());
            hasher.update(b"\n");
        }
        hasher.finish().hash
    }

    /// The record for `key`, if there is one whose blobs are still stored; marked used.
    /// A record whose blobs are gone is dropped, its file unlinked after the lock.
    pub fn lookup(&self, key: &str, store: &ContentStore) -> Option<Record> {
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        let (record, used) = inner.records.get_mut(key)?;
        if store.holds(&record.output.hash) && store.holds(&record.results.hash) {
            *used = now;
            return Some(record.clone());
        }
        let gone = record.bytes();
        inner.records.remove(key);
        inner.total -= gone;
        drop(inner);
        let _ = std::fs::remove_file(self.dir.join(key));
        None
    }

    /// Keeps `record` under `key` (replacing an older one), then drops the least
    /// recently used records beyond the bound; their blobs become the store's to evict.
    pub fn insert(&self, key: &str, record: Record) -> std::io::Result<()> {
        let path = self.dir.join(key);
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(record.to_text().as_bytes())?;
        file.persist(&path).map_err(|e| e.error)?;
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        inner.total += record.bytes();
        if let Some((old, _)) = inner.records.insert(key.to_string(), (record, now)) {
            inner.total -= old.bytes();
        }
        let mut dropped = Vec::new();
        while inner.total > self.max_bytes {
            let Some(oldest) = inner.records.iter().min_by_key(|(_, (_, used))| *used).map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((gone, _)) = inner.records.remove(&oldest) {
                inner.total -= gone.bytes();
                dropped.push(oldest);
            }
        }
        drop(inner);
        // Unlinked after the lock: a record written again meanwhile may lose its file,
        // which costs a run after a restart, never a wrong answer.
        for key in dropped {
            let _ = std::fs::remove_file(self.dir.join(key));
        }
        Ok(())
    }
}

/// A run's output lines as one blob: per line, its pipe (0 merged, 1 stdout, 2 stderr),
/// its length (4 bytes, little-endian) and its bytes.
pub struct OutputLog {
    blob: BufWriter<LocalBlob>,
    bytes: u64,
    too_large: bool,
}

impl OutputLog {
    pub fn new(store: &ContentStore) -> std::io::Result<OutputLog> {
        Ok(OutputLog { blob: BufWriter::new(store.local_blob()?), bytes: 0, too_large: false })
    }

    /// Appends a line; past [`MAX_RECORDED_OUTPUT`] nothing more is kept and the run is
    /// not recorded.
    pub fn push(&mut self, pipe: u8, text: &str) -> std::io::Result<()> {
        self.bytes = self.bytes.saturating_add(5 + text.len() as u64);
        if self.bytes > MAX_RECORDED_OUTPUT {
            self.too_large = true;
            return Ok(());
        }
        let length = u32::try_from(text.len()).map_err(std::io::Error::other)?;
        self.blob.write_all(&[pipe])?;
        self.blob.write_all(&length.to_le_bytes())?;
        self.blob.write_all(text.as_bytes())
    }

    /// The log as a blob to keep; `None` when the output was too large to record.
    pub fn finish(self) -> std::io::Result<Option<LocalBlob>> {
        if self.too_large {
            return Ok(None);
        }
        Ok(Some(self.blob.into_inner().map_err(|e| e.into_error())?))
    }
}

/// Reads back an [`OutputLog`]: each line with its pipe, in order.
pub fn read_output(mut reader: impl Read, mut line: impl FnMut(u8, String)) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 5];
        match reader.read_exact(&mut head[..1]) {
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        reader.read_exact(&mut head[1..])?;
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        // No line the server records is longer (lines are cut at 1 MiB): a longer one
        // means a damaged blob, not a reason to allocate gigabytes.
        if length > MAX_RECORDED_LINE {
            return Err(std::io::Error::other("a recorded output log is damaged (a line longer than any recorded)"));
        }
        let mut text = vec![0; length];
        reader.read_exact(&mut text)?;
        line(head[0], String::from_utf8_lossy(&text).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(cn: &'a str, command: &'a str) -> ActionParts<'a> {
        ActionParts {
            cn,
            input_root: "a".repeat(64).leak(),
            command,
            results: "build  out",
            environment: "none",
            executor: "local",
            tools: "none",
        }
    }

    #[test]
    fn keys_name_every_part_the_salt_and_the_cn_unless_shared() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ActionCache::new(dir.path(), 1 << 20, "", false).unwrap();
        let base = cache.key(&parts("alice", "make"));
        assert_eq!(base, cache.key(&ActionParts { results: "build out", ..parts("alice", "make") }));
        assert_ne!(base, cache.key(&parts("bob", "make")), "per CN");
        assert_ne!(base, cache.key(&parts("alice", "make all")));
        assert_ne!(base, cache.key(&ActionParts { results: "build", ..parts("alice", "make") }));
        assert_ne!(base, cache.key(&ActionParts { environment: "e1", ..parts("alice", "make") }));
        assert_ne!(base, cache.key(&ActionParts { executor: "local+sandbox", ..parts("alice", "make") }));
        assert_ne!(base, cache.key(&ActionParts { tools: "ngspice-42", ..parts("alice", "make") }));
        // No part can pass for another: lengths come first.
        let shifted = ActionParts { command: "make\n", results: "build out", ..parts("alice", "make") };
        assert_ne!(base, cache.key(&shifted));
        let salted = ActionCache::new(dir.path(), 1 << 20, "2026-11", false).unwrap();
        assert_ne!(base, salted.key(&parts("alice", "make")));
        let shared = ActionCache::new(dir.path(), 1 << 20, "", true).unwrap();
        assert_eq!(shared.key(&parts("alice", "make")), shared.key(&parts("bob", "make")));
    }

    #[test]
    fn records_survive_a_restart_and_the_bound_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let record = |n: u8| Record {
            ran_at_unix_seconds: 1_764_000_000,
            ran_for_ms: 1234,
            output: Digest { hash: format!("{n:064x}"), size: 100 },
            results: Digest { hash: format!("{:064x}", n + 100), size: 300 },
            found: vec!["build".into(), "out/x".into()],
            result_bytes: 290,
        };
        let cache = ActionCache::new(dir.path(), 900, "", false).unwrap();
        cache.insert(&"1".repeat(64), record(1)).unwrap();
        cache.insert(&"2".repeat(64), record(2)).unwrap();
        cache.insert(&"3".repeat(64), record(3)).unwrap();
        let reopened = ActionCache::new(dir.path(), 900, "", false).unwrap();
        let keys: Vec<String> = reopened.inner().records.keys().cloned().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(!keys.contains(&"1".repeat(64)), "the oldest went");
        assert_eq!(reopened.inner().records[&"3".repeat(64)].0, record(3));
    }

    #[test]
    fn an_output_log_reads_back_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new(dir.path(), 1 << 20, std::time::Duration::from_secs(60)).unwrap();
        let mut log = OutputLog::new(&store).unwrap();
        log.push(1, "out").unwrap();
        log.push(2, "").unwrap();
        log.push(0, "ünïcode").unwrap();
        let digest = store.keep(log.finish().unwrap().unwrap()).unwrap();
        let mut lines = Vec::new();
        read_output(std::fs::File::open(store.blob_path(&digest.hash)).unwrap(), |pipe, text| lines.push((pipe, text)))
            .unwrap();
        assert_eq!(lines, [(1, "out".to_string()), (2, String::new()), (0, "ünïcode".to_string())]);
        // A damaged log claiming a 4 GiB line is refused, not allocated.
        let damaged = [1u8, 0xff, 0xff, 0xff, 0xff];
        assert!(read_output(&damaged[..], |_, _| {}).is_err());
    }
}
