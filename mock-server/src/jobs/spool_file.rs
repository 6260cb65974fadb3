//! A durable run's spool on disk (issue 30): every numbered message, written once as it
//! is spooled, so a server started after this one died or was upgraded serves a
//! reconnecting client from the number it last printed. One file per job under
//! `ROOT/lrpymrpc-spools/` (mode 0700), named by the job id.
//!
//! The file is a header record (what the job was started with), then records: a
//! message or an ending status with its number, and the marker a run leaves when its
//! command starts (the supervised run to adopt). Each record carries the count of the
//! command's output messages so far, so an adopted run, replayed from its output file,
//! skips exactly those already numbered. Records are framed (length, kind) and written
//! in batches, one a write (a burst of output); each batch is sealed with an
//! HMAC-SHA-256 over the job id, the batch's place in the file and its bytes, keyed by
//! `ROOT/lrpymrpc-spools/key` (0600, made once): a batch cut short, edited, moved, or
//! taken from another job's file is refused, and so is the spool.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lrpymrpc_proto::{AttachInfo, ExecuteResponse, Resources};
use prost::Message;
use ring::hmac;
use tonic::Status;

/// The directory under the job root that holds the spools.
pub const SPOOLS_DIR: &str = "lrpymrpc-spools";
/// The key file in it.
const KEY_FILE: &str = "key";
/// How much of the MAC a batch keeps.
const MAC_BYTES: usize = 16;
/// A batch is sealed once it holds this much (a burst of long lines makes several).
const BATCH_BYTES: usize = 4 << 20;
/// The longest batch read back: a full batch and one record (a line of at most 1 MiB
/// and its fields) more.
const MAX_BATCH: usize = BATCH_BYTES + (2 << 20) + MAC_BYTES;
/// A record's frame before its payload: length, kind, number, output count.
const RECORD_HEAD: usize = 4 + 1 + 8 + 8;

const KIND_HEADER: u8 = 1;
const KIND_MESSAGE: u8 = 2;
const KIND_STATUS: u8 = 3;
const KIND_RUN_STARTED: u8 = 4;
const KIND_CHECKPOINT: u8 = 5;

/// What a durable job was started with, as its spool keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, optional, tag = "2")]
    pub owner: Option<String>,
    #[prost(string, tag = "3")]
    pub command: String,
    #[prost(message, optional, tag = "4")]
    pub attach: Option<AttachInfo>,
    #[prost(bool, tag = "5")]
    pub detached: bool,
    #[prost(message, optional, tag = "6")]
    pub needs: Option<Resources>,
    /// The job's directory.
    #[prost(string, tag = "7")]
    pub dir: String,
    #[prost(bool, tag = "8")]
    pub merged: bool,
    #[prost(bool, tag = "9")]
    pub progress: bool,
    /// When the Execute call came, in milliseconds since the epoch.
    #[prost(uint64, tag = "10")]
    pub started_unix_ms: u64,
    /// Where its command runs: `local` or `slurm`.
    #[prost(string, tag = "11")]
    pub executor: String,
}

/// A record read back.
#[derive(Debug)]
pub enum Entry {
    /// A message or an ending status, with its number and the command's output
    /// messages numbered so far (this one included).
    Numbered { seq: u64, output_count: u64, record: Result<ExecuteResponse, Status> },
    /// The command's supervised run started, in this run directory.
    RunStarted(String),
    /// Its output file up to `offset` made the command's first `output_count` output
    /// messages, and a replay may start there.
    Checkpoint { offset: u64, output_count: u64 },
}

/// The key every spool of this root is sealed with.
#[derive(Clone)]
pub struct SpoolKey(Arc<hmac::Key>);

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(..)")
    }
}

impl SpoolKey {
    /// The root's key, made (32 random bytes, 0600) when there is none.
    pub fn of_root(root: &Path) -> io::Result<SpoolKey> {
        let dir = root.join(SPOOLS_DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            _ => {
                let mut bytes = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| io::Error::other("no random bytes for the spools' key"))?;
                let temporary = dir.join(format!("{KEY_FILE}.tmp"));
                let mut file =
                    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
                file.write_all(&bytes)?;
                std::fs::rename(&temporary, &path)?;
                bytes
            }
        };
        Ok(SpoolKey(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes))))
    }

    /// A key of its own for another purpose, made from this one (HMAC of `purpose`):
    /// the root's one random secret serves several uses without one's tags being
    /// another's.
    pub fn derive(&self, purpose: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&self.0, purpose).as_ref())
    }

    fn seal(&self, id: &str, offset: u64, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&(id.len() as u32).to_le_bytes());
        context.update(id.as_bytes());
        context.update(&offset.to_le_bytes());
        context.update(body);
        let tag = context.sign();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        mac
    }
}

/// The spool file of job `id` under `root`.
pub fn path_of(root: &Path, id: &str) -> PathBuf {
    root.join(SPOOLS_DIR).join(format!("{id}.spool"))
}

/// A spool being written.
#[derive(Debug)]
pub struct SpoolWriter {
    id: String,
    /// The file, and the header it starts with (written again when it is compacted).
    path: PathBuf,
    header: Header,
    file: File,
    key: SpoolKey,
    /// Where the file ends once what is pending is written (the next batch's place,
    /// in its seal).
    length: u64,
    /// Records since the last sealed batch.
    records: Vec<u8>,
    /// Sealed batches not written yet (one write per burst).
    pending: Vec<u8>,
}

impl SpoolWriter {
    /// Creates the spool of a job that starts now, with its header.
    pub fn create(root: &Path, key: &SpoolKey, header: &Header) -> io::Result<SpoolWriter> {
        let path = path_of(root, &header.id);
        let file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(&path)?;
        let mut writer = SpoolWriter {
            id: header.id.clone(),
            path,
            header: header.clone(),
            file,
            key: key.clone(),
            length: 0,
            records: Vec::new(),
            pending: Vec::new(),
        };
        writer.frame(KIND_HEADER, 0, 0, &header.encode_to_vec());
        writer.flush()?;
        Ok(writer)
    }

    /// Goes on writing the spool an earlier server left (its records read and trusted).
    pub fn reopen(root: &Path, key: &SpoolKey, header: &Header) -> io::Result<SpoolWriter> {
        let path = path_of(root, &header.id);
        let file = OpenOptions::new().append(true).open(&path)?;
        let length = file.metadata()?.len();
        Ok(SpoolWriter {
            id: header.id.clone(),
            path,
            header: header.clone(),
            file,
            key: key.clone(),
            length,
            records: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// How long the file is (what is pending included).
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Writes the file anew with only `kept` (the records a spool still holds, oldest
    /// first) after its header and the run's marker, and goes on writing that: what a
    /// spool dropped from memory goes from disk too. The new file replaces the old by a
    /// rename, so a server killed meanwhile leaves one or the other whole.
    pub fn compact<'a>(
        &mut self,
        kept: impl Iterator<Item = (u64, &'a Result<ExecuteResponse, Status>)>,
        run: Option<&str>,
        checkpoint: Option<(u64, u64)>,
        output_count: u64,
    ) -> io::Result<()> {
        let temporary = self.path.with_extension("spool.tmp");
        let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        let mut fresh = SpoolWriter {
            id: self.id.clone(),
            path: self.path.clone(),
            header: self.header.clone(),
            file,
            key: self.key.clone(),
            length: 0,
            records: Vec::new(),
            pending: Vec::new(),
        };
        fresh.frame(KIND_HEADER, 0, 0, &self.header.encode_to_vec());
        if let Some(run) = run {
            fresh.run_started(run, 0);
        }
        if let Some((offset, count)) = checkpoint {
            fresh.checkpoint(offset, count);
        }
        for (seq, record) in kept {
            fresh.numbered(seq, output_count, record);
        }
        fresh.flush()?;
        std::fs::rename(&temporary, &self.path)?;
        fresh.file = OpenOptions::new().append(true).open(&self.path)?;
        *self = fresh;
        Ok(())
    }

    /// A numbered record.
    pub fn numbered(&mut self, seq: u64, output_count: u64, record: &Result<ExecuteResponse, Status>) {
        match record {
            Ok(message) => self.frame(KIND_MESSAGE, seq, output_count, &message.encode_to_vec()),
            Err(status) => {
                let mut body = (status.code() as i32).to_le_bytes().to_vec();
                body.extend_from_slice(status.message().as_bytes());
                self.frame(KIND_STATUS, seq, output_count, &body);
            }
        }
    }

    /// The marker of the command's supervised run.
    pub fn run_started(&mut self, run: &str, output_count: u64) {
        self.frame(KIND_RUN_STARTED, 0, output_count, run.as_bytes());
    }

    /// A checkpoint of the run's output: `offset` made the first `output_count`.
    pub fn checkpoint(&mut self, offset: u64, output_count: u64) {
        self.frame(KIND_CHECKPOINT, 0, output_count, &offset.to_le_bytes());
    }

    /// Writes what was recorded since the last flush, sealed, in one write.
    pub fn flush(&mut self) -> io::Result<()> {
        self.seal_batch();
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.pending);
        self.pending.clear();
        written
    }

    fn frame(&mut self, kind: u8, seq: u64, output_count: u64, payload: &[u8]) {
        let length = (RECORD_HEAD - 4 + payload.len()) as u32;
        self.records.extend_from_slice(&length.to_le_bytes());
        self.records.push(kind);
        self.records.extend_from_slice(&seq.to_le_bytes());
        self.records.extend_from_slice(&output_count.to_le_bytes());
        self.records.extend_from_slice(payload);
        if self.records.len() >= BATCH_BYTES {
            self.seal_batch();
        }
    }

    /// The records so far as one sealed batch: its length, them, their seal.
    fn seal_batch(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let mac = self.key.seal(&self.id, self.length, &self.records);
        let length = self.records.len() + MAC_BYTES;
        self.pending.extend_from_slice(&(length as u32).to_le_bytes());
        self.pending.append(&mut self.records);
        self.pending.extend_from_slice(&mac);
        self.length += 4 + length as u64;
    }
}

/// Why a spool was not trusted.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("`{path}` is damaged at byte {at}: {why}; it is not trusted")]
    Damaged { path: PathBuf, at: usize, why: &'static str },
}

/// Reads job `id`'s spool back, every record checked; the header and the records.
pub fn read(root: &Path, key: &SpoolKey, id: &str) -> Result<(Header, Vec<Entry>), SpoolError> {
    let path = path_of(root, id);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|source| SpoolError::Read { path: path.clone(), source })?;
    let damaged = |at: usize, why: &'static str| SpoolError::Damaged { path: path.clone(), at, why };
    let mut header = None;
    let mut entries = Vec::new();
    let mut last_seq = 0;
    let mut at = 0;
    while at < bytes.len() {
        let length = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| damaged(at, "a batch is cut short"))?;
        if !(RECORD_HEAD + MAC_BYTES..=MAX_BATCH).contains(&length) {
            return Err(damaged(at, "a batch's length is impossible"));
        }
        let body = bytes.get(at + 4..at + 4 + length).ok_or_else(|| damaged(at, "a batch is cut short"))?;
        let (records, mac) = body.split_at(length - MAC_BYTES);
        if key.seal(id, at as u64, records) != mac {
            return Err(damaged(at, "a batch's seal does not match (edited, moved, or not this job's)"));
        }
        let mut inner = 0;
        while inner < records.len() {
            let at = at + 4 + inner;
            let record_length = records
                .get(inner..inner + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|length| *length >= RECORD_HEAD - 4)
                .ok_or_else(|| damaged(at, "a record is cut short"))?;
            let record = records
                .get(inner + 4..inner + 4 + record_length)
                .ok_or_else(|| damaged(at, "a record is cut short"))?;
            inner += 4 + record_length;
            let kind = record[0];
            let seq = u64::from_le_bytes(record[1..9].try_into().unwrap_or_default());
            let output_count = u64::from_le_bytes(record[9..17].try_into().unwrap_or_default());
            let payload = &record[17..];
            if matches!(kind, KIND_MESSAGE | KIND_STATUS) {
                if seq <= last_seq {
                    return Err(damaged(at, "a record's number does not follow the one before"));
                }
                last_seq = seq;
            }
            match (kind, &header) {
                (KIND_HEADER, None) => {
                    let read = Header::decode(payload).map_err(|_| damaged(at, "the header does not decode"))?;
                    if read.id != id {
                        return Err(damaged(at, "the header names another job"));
                    }
                    header = Some(read);
                }
                (_, None) | (KIND_HEADER, Some(_)) => return Err(damaged(at, "the header is not the first record")),
                (KIND_MESSAGE, Some(_)) => {
                    let message =
                        ExecuteResponse::decode(payload).map_err(|_| damaged(at, "a message does not decode"))?;
                    entries.push(Entry::Numbered { seq, output_count, record: Ok(message) });
                }
                (KIND_STATUS, Some(_)) => {
                    let (code, text) =
                        payload.split_at_checked(4).ok_or_else(|| damaged(at, "a status is cut short"))?;
                    let code = i32::from_le_bytes(code.try_into().unwrap_or_default());
                    let status = Status::new(tonic::Code::from_i32(code), String::from_utf8_lossy(text).into_owned());
                    entries.push(Entry::Numbered { seq, output_count, record: Err(status) });
                }
                (KIND_CHECKPOINT, Some(_)) => {
                    let offset = payload.try_into().map_err(|_| damaged(at, "a checkpoint is cut short"))?;
                    entries.push(Entry::Checkpoint { offset: u64::from_le_bytes(offset), output_count });
                }
                (KIND_RUN_STARTED, Some(_)) => {
                    let run = std::str::from_utf8(payload).map_err(|_| damaged(at, "a run's name is not text"))?;
                    entries.push(Entry::RunStarted(run.to_string()));
                }
                _ => return Err(damaged(at, "a record of an unknown kind")),
            }
        }
        at += 4 + length;
    }
    let header = header.ok_or_else(|| damaged(0, "the spool is empty"))?;
    Ok((header, entries))
}

/// The job ids whose spools are under `root`.
pub fn spooled_ids(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join(SPOOLS_DIR)) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".spool").map(str::to_string))
        .collect()
}

/// Removes job `id`'s spool.
pub fn remove(root: &Path, id: &str) {
    let _ = std::fs::remove_file(path_of(root, id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: &str) -> Header {
        Header { id: id.into(), command: "echo hi".into(), dir: "/tmp/x".into(), merged: true, ..Header::default() }
    }

    #[test]
    fn records_read_back_as_written_and_any_change_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let key = SpoolKey::of_root(root.path()).unwrap();
        let mut writer = SpoolWriter::create(root.path(), &key, &header("job1")).unwrap();
        writer.numbered(1, 0, &Ok(ExecuteResponse { message: "pip line".into(), seq: 1, ..Default::default() }));
        writer.run_started("run-1-0", 0);
        writer.numbered(2, 1, &Ok(ExecuteResponse { message: "out".into(), seq: 2, ..Default::default() }));
        writer.numbered(3, 1, &Err(Status::cancelled("job job1 was cancelled")));
        writer.flush().unwrap();
        let (read_header, entries) = read(root.path(), &key, "job1").unwrap();
        assert_eq!(read_header, header("job1"));
        assert_eq!(entries.len(), 4);
        assert!(matches!(&entries[1], Entry::RunStarted(run) if run == "run-1-0"));
        assert!(
            matches!(&entries[2], Entry::Numbered { seq: 2, output_count: 1, record: Ok(m) } if m.message == "out")
        );
        assert!(matches!(&entries[3], Entry::Numbered { record: Err(s), .. } if s.code() == tonic::Code::Cancelled));
        // The same key again (read from its file); a later server writes on after it.
        let key = SpoolKey::of_root(root.path()).unwrap();
        let mut reopened = SpoolWriter::reopen(root.path(), &key, &header("job1")).unwrap();
        reopened.numbered(4, 2, &Ok(ExecuteResponse { message: "on".into(), seq: 4, ..Default::default() }));
        reopened.flush().unwrap();
        let (_, entries) = read(root.path(), &key, "job1").unwrap();
        assert!(matches!(&entries[4], Entry::Numbered { seq: 4, output_count: 2, .. }), "{entries:?}");

        let path = path_of(root.path(), "job1");
        let pristine = std::fs::read(&path).unwrap();
        let mut edited = pristine.clone();
        let at = edited.len() - 30;
        edited[at] ^= 1;
        // One byte changed, the file cut short, its batches twice (moved).
        let twice = [pristine.clone(), pristine.clone()].concat();
        for (bytes, why) in
            [(edited, "seal does not match"), (pristine[..pristine.len() - 5].to_vec(), "cut short"), (twice, "seal")]
        {
            std::fs::write(&path, bytes).unwrap();
            let error = read(root.path(), &key, "job1").unwrap_err().to_string();
            assert!(error.contains(why) && error.contains("not trusted"), "{error}");
        }
        // Another job's file under this name.
        std::fs::write(path_of(root.path(), "job2"), &pristine).unwrap();
        let error = read(root.path(), &key, "job2").unwrap_err().to_string();
        assert!(error.contains("seal does not match"), "{error}");
        assert_eq!(
            {
                let mut ids = spooled_ids(root.path());
                ids.sort();
                ids
            },
            ["job1", "job2"]
        );
    }
}
