//! Content-addressed upload, for servers that announce it: the sources become a tree
//! of digests (the same selection as a tar upload), the server is asked to make the
//! job from it, and only the blobs it lacks for this CN travel, each read again and
//! hashed as it is sent. An unchanged tree costs one call. A child of `session`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lrpymrpc_archive::{PackError, PackRoot};
use lrpymrpc_cas::{DIGEST_FUNCTION, Hasher, InputTree};
use lrpymrpc_proto::v1::{BlobChunk, CreateJobResponse, Digest, TreePart};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::made_trees::MadeTrees;
use super::{QUEUED_CHUNKS, Session, UPLOAD_CHUNK_BYTES, unless_stalled};
use crate::cli::BlobCompression;
use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::sources::tree_build::{EarlyTree, TreeBuild};

/// How many times the client sends what the server says it lacks before it gives up
/// (a store evicting faster than the client sends).
const ROUNDS: usize = 3;

/// The slowest copy rate a server's disk is expected to have, for CreateJob's limit.
const COPY_BYTES_PER_SECOND: u64 = 20 << 20;

/// The bytes of directories one CreateJob message carries at most.
const TREE_PART_BYTES: usize = 1024 * 1024;

/// What a content-addressed upload did.
#[derive(Debug, Default)]
pub struct TreeUpload {
    pub unique_id: String,
    /// Files in the tree and their bytes.
    pub files: u64,
    pub file_bytes: u64,
    /// Blobs sent, and their bytes (the rest the server had).
    pub sent_blobs: u64,
    pub sent_bytes: u64,
    /// What those bytes took on the wire (less when compressed).
    pub wire_bytes: u64,
    pub skipped: Vec<(PathBuf, String)>,
}

impl Session {
    /// Whether the server takes content-addressed uploads.
    pub fn takes_trees(&self) -> bool {
        self.capabilities().and_then(|c| c.features.as_ref()).is_some_and(|f| f.content_addressed_upload)
    }

    /// Whether the server remembers the trees it made jobs from (`TreePart.root_only`).
    fn knows_trees(&self) -> bool {
        self.capabilities().and_then(|c| c.features.as_ref()).is_some_and(|f| f.known_trees)
    }

    /// How long a CreateJob may take: the stall limit, plus the time the server may need
    /// to copy the tree into the job directory before it answers (at a slow disk's
    /// [`COPY_BYTES_PER_SECOND`]), so a large tree is not taken for a silent server.
    fn create_job_limit(&self, tree: &InputTree) -> std::time::Duration {
        self.stall + std::time::Duration::from_secs(tree.file_bytes / COPY_BYTES_PER_SECOND)
    }

    /// Whether blobs travel compressed: when the server takes zstd and `wanted` is
    /// `zstd`, or `auto` and the server is not on this machine (on loopback compressing
    /// only costs time).
    fn compress_blobs(&self, wanted: BlobCompression) -> bool {
        let offered = self
            .capabilities()
            .and_then(|c| c.features.as_ref())
            .is_some_and(|f| f.blob_compressions.iter().any(|c| c == "zstd"));
        match wanted {
            BlobCompression::Auto => offered && !self.peer_is_loopback(),
            BlobCompression::Zstd => offered,
            BlobCompression::None => false,
        }
    }

    /// Uploads the sources as a tree, the early build's (`sources/tree_build.rs`) when it is
    /// fresh; returns the job id and what travelled, or `None` when the sources cannot
    /// be one (a name that is not UTF-8: a tar.gz takes it).
    pub async fn upload_tree(
        &self,
        job: &Job,
        roots: Vec<PackRoot>,
        early: &EarlyTree,
        out: &Output,
    ) -> Result<Option<TreeUpload>, ClientError> {
        let progress = out.progress("hash");
        let fresh_build = || TreeBuild::start(job.rules.clone(), roots.clone(), Arc::default());
        let took_early = early.take();
        let was_early = took_early.is_some();
        let mut built = took_early.unwrap_or_else(fresh_build).finish(&progress).await?;
        if was_early && built.is_stale() {
            out.verbose("the tree was built a while ago: building it again");
            built = fresh_build().finish(&progress).await?;
        }
        out.clear_progress();
        let (tree, cache) = match built.result {
            Ok(built) => built,
            Err(error @ PackError::NotUtf8 { .. }) => {
                out.note(&format!("{error}: the sources go as a tar.gz, not content-addressed"));
                return Ok(None);
            }
            Err(error) => {
                return Err(ClientError::Local { message: format!("cannot read the sources: {error}"), hint: None });
            }
        };
        out.verbose(&format!(
            "hashed {} ({}) in {}{}; the stat cache knew the other {} of {}",
            lrpymrpc_units::count_of(tree.hashed_files, "file"),
            lrpymrpc_units::human_bytes(tree.hashed_bytes),
            lrpymrpc_units::human_duration(built.took),
            if was_early { ", begun while connecting" } else { "" },
            lrpymrpc_units::human_count(tree.files - tree.hashed_files),
            lrpymrpc_units::count_of(tree.files, "file"),
        ));
        let saved = tokio::task::spawn_blocking(move || {
            cache.save().map_err(|error| (cache.path().map(PathBuf::from).unwrap_or_default(), error))
        })
        .await;
        if let Ok(Err((path, error))) = saved {
            out.note(&format!(
                "cannot save the stat cache `{}`: {error}; files are hashed again next time",
                path.display()
            ));
        }
        let tree = Arc::new(tree);
        let mut upload = TreeUpload {
            files: tree.files,
            file_bytes: tree.file_bytes,
            skipped: tree.skipped.clone(),
            ..TreeUpload::default()
        };
        // A tree this server made a job from is named by its root alone.
        let server = self.peer.to_string();
        // The file is read and written on a blocking thread, not the runtime's.
        let load = || crate::cli::dirs::cache_file("made-trees").map(|path| MadeTrees::load(&path));
        let mut made = tokio::task::spawn_blocking(load).await.ok().flatten().unwrap_or_default();
        let mut root_only = self.knows_trees() && made.contains(&server, &tree.root.hash);
        for _ in 0..ROUNDS {
            let mut answer = self.create_job(&tree, root_only).await?;
            if answer.send_tree && root_only {
                out.verbose("the server no longer knows this tree: sending it whole");
                root_only = false;
                answer = self.create_job(&tree, false).await?;
            }
            if !answer.unique_id.is_empty() {
                let (name, root) = (server.clone(), tree.root.hash.clone());
                let recorded = tokio::task::spawn_blocking(move || made.record(&name, &root)).await;
                if let Ok(Err(error)) = recorded {
                    out.verbose(&format!("cannot note the tree as made on {server}: {error}"));
                }
                upload.unique_id = answer.unique_id;
                return Ok(Some(upload));
            }
            let compress = self.compress_blobs(job.blob_compression);
            let (blobs, bytes, wire) = match self.send_blobs(&tree, answer.missing, compress, out).await {
                Ok(sent) => sent,
                // A full store (other users' uploads, or smaller than this tree) is no
                // reason to fail the job: the tar.gz upload needs no store.
                Err(ClientError::Server { code: tonic::Code::ResourceExhausted, message, .. }) => {
                    out.note(&format!("{message}: the sources go as a tar.gz, not content-addressed"));
                    return Ok(None);
                }
                Err(error) => return Err(error),
            };
            upload.sent_blobs += blobs;
            upload.sent_bytes += bytes;
            upload.wire_bytes += wire;
        }
        out.note(&format!(
            "the server still lacked blobs after {ROUNDS} rounds of sending them (its content store may be smaller \
             than this tree: --cas-max-bytes): the sources go as a tar.gz, not content-addressed"
        ));
        Ok(None)
    }

    /// Sends the tree, or with `root_only` its root alone; the server answers a job
    /// id, the blobs it lacks, or (to a root alone) that it needs the tree.
    async fn create_job(&self, tree: &InputTree, root_only: bool) -> Result<CreateJobResponse, ClientError> {
        let mut parts = Vec::new();
        let mut part = TreePart {
            digest_function: DIGEST_FUNCTION.into(),
            root: Some(tree.root.clone()),
            directories: Vec::new(),
            root_only,
        };
        let mut bytes = 0;
        let directories = if root_only { &[][..] } else { &tree.directories[..] };
        for directory in directories {
            let size = directory.encoded_len();
            if bytes + size > TREE_PART_BYTES && !part.directories.is_empty() {
                parts.push(std::mem::take(&mut part));
                bytes = 0;
            }
            part.directories.push(directory.clone());
            bytes += size;
        }
        parts.push(part);
        let mut client = self.extensions.clone();
        let call = client.create_job(tokio_stream::iter(parts));
        let answer = tokio::time::timeout(self.create_job_limit(tree), call)
            .await
            .map_err(|_| self.stalled(Step::Upload))?
            .map_err(|status| self.failed(Step::Upload, status))?;
        Ok(answer.into_inner())
    }

    /// Streams the missing blobs, each read and hashed as it goes, on up to
    /// [`BLOB_STREAMS`] calls at once; a file that changed since it was hashed stops
    /// the upload, so no wrong bytes are ever stored.
    async fn send_blobs(
        &self,
        tree: &Arc<InputTree>,
        missing: Vec<Digest>,
        compress: bool,
        out: &Output,
    ) -> Result<(u64, u64, u64), ClientError> {
        // The server may only ask for what the tree holds: anything else is passed over,
        // and what it asks for is sized by the tree, never by the server's claim.
        let sources = Arc::new(tree.sources_of(&missing));
        let mut listed = std::collections::HashSet::new();
        let missing: Vec<Digest> = missing
            .iter()
            .filter(|wanted| listed.insert(wanted.hash.as_str()))
            .filter_map(|wanted| sources.get(&wanted.hash).map(|(_, own)| own.clone()))
            .collect();
        let total: u64 = missing.iter().fold(0, |sum, d| sum.saturating_add(d.size));
        let progress = out.progress("upload");
        progress.set_total(total);
        let moved = Arc::new(AtomicU64::new(0));
        let wire = Arc::new(AtomicU64::new(0));
        let streams = split_missing(missing, stream_count(total, compress, self.peer_is_loopback()));
        let mut calls = tokio::task::JoinSet::new();
        for share in streams {
            let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
            let sources = sources.clone();
            let counted = progress.clone();
            let reading = tokio::task::spawn_blocking(move || {
                read_blobs(&sources, &share, compress, &tx, &|n| counted.add_bytes(n))
            });
            let (counting, on_wire) = (moved.clone(), wire.clone());
            let chunks = ReceiverStream::new(rx).map(move |chunk: BlobChunk| {
                counting.fetch_add(chunk.data.len() as u64 + 1, Ordering::Relaxed);
                on_wire.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                chunk
            });
            let mut client = self.extensions.clone();
            calls.spawn(async move {
                let (sent, read) = tokio::join!(client.upload_blobs(chunks), reading);
                // A reading task that panicked: its stream closed early.
                (sent, read.unwrap_or(Err(BlobReadError::Closed)))
            });
        }
        // The first failure ends them all (the set aborts the rest when dropped).
        let all = async {
            let (mut blobs, mut bytes) = (0, 0);
            while let Some(joined) = calls.join_next().await {
                let (sent, read) =
                    joined.map_err(|e| ClientError::local(format!("a blob stream's task failed: {e}")))?;
                let (count, size) = self.blobs_sent(sent, read)?;
                blobs += count;
                bytes += size;
            }
            Ok::<_, ClientError>((blobs, bytes))
        };
        let outcome = unless_stalled(all, &moved, self.stall).await.ok_or_else(|| self.stalled(Step::Upload));
        out.clear_progress();
        let (blobs, bytes) = outcome??;
        Ok((blobs, bytes, wire.load(Ordering::Relaxed)))
    }

    /// What one blob stream's call and its reading thread came to.
    fn blobs_sent(
        &self,
        sent: Result<tonic::Response<lrpymrpc_proto::v1::UploadBlobsResponse>, tonic::Status>,
        read: Result<(u64, u64), BlobReadError>,
    ) -> Result<(u64, u64), ClientError> {
        match (sent, read) {
            (_, Err(BlobReadError::Read(error))) => {
                Err(ClientError::Local { message: format!("cannot read the sources: {error}"), hint: None })
            }
            (_, Err(BlobReadError::Changed(path))) => Err(ClientError::Local {
                message: format!("`{}` changed while it was being uploaded", path.display()),
                hint: Some("run the step again once nothing writes to its sources".into()),
            }),
            (Err(status), _) => Err(self.failed(Step::Upload, status)),
            (Ok(_), Err(BlobReadError::Closed)) => Err(ClientError::local("the blob stream closed early")),
            (Ok(_), Ok(done)) => Ok(done),
        }
    }
}

/// The most blob streams in flight at once: each has its own thread reading (and
/// compressing) files, so compression uses the cores and sources on a cold disk or a
/// network filesystem are read two files at a time, while what is queued stays
/// [`QUEUED_CHUNKS`] chunks per stream.
const BLOB_STREAMS: usize = 4;

/// Fewer bytes than this go on one stream: more would only add calls.
const SPLIT_FROM_BYTES: u64 = 8 << 20;

/// How many streams `total` bytes get: one when small, or when the server is on this
/// machine (it needs the cores, and more streams only cost memory: 1.3 MB each,
/// measured); else one per core when compressing, or two.
fn stream_count(total: u64, compress: bool, loopback: bool) -> usize {
    match (total < SPLIT_FROM_BYTES || loopback, compress) {
        (true, _) => 1,
        (false, true) => lrpymrpc_archive::encoding::cores().clamp(1, BLOB_STREAMS),
        (false, false) => 2,
    }
}

/// Shares the blobs out between `streams` streams with about the same bytes each
/// (largest first, each to the lightest share).
fn split_missing(mut missing: Vec<Digest>, streams: usize) -> Vec<Vec<Digest>> {
    let streams = streams.clamp(1, missing.len().max(1));
    missing.sort_by_key(|digest| std::cmp::Reverse(digest.size));
    let mut shares: Vec<(u64, Vec<Digest>)> = vec![(0, Vec::new()); streams];
    for digest in missing {
        let lightest = shares.iter_mut().min_by_key(|(bytes, _)| *bytes).expect("at least one share");
        lightest.0 = lightest.0.saturating_add(digest.size);
        lightest.1.push(digest);
    }
    shares.into_iter().map(|(_, share)| share).filter(|share| !share.is_empty()).collect()
}

enum BlobReadError {
    Read(PackError),
    Changed(PathBuf),
    /// The stream was dropped (the call failed): its status says why.
    Closed,
}

/// Blobs smaller than this go as they are: compressing them saves nothing worth a frame.
const COMPRESS_FROM: u64 = 1024;

/// A blob is sent compressed when its first bytes compress to less than this share.
const WORTH_COMPRESSING: f64 = 0.9;

/// Reads each missing blob from its file, in chunks, hashing as it goes; with
/// `compress`, a blob whose first 64 KiB shrink by a tenth or more travels as one zstd
/// frame.
fn read_blobs(
    blobs: &HashMap<String, (PathBuf, Digest)>,
    missing: &[Digest],
    compress: bool,
    tx: &mpsc::Sender<BlobChunk>,
    on_read: &(dyn Fn(u64) + Sync),
) -> Result<(u64, u64), BlobReadError> {
    let (mut count, mut bytes) = (0, 0);
    for wanted in missing {
        let Some((path, digest)) = blobs.get(&wanted.hash) else { continue };
        send_blob(path, digest, compress, tx, on_read)?;
        count += 1;
        bytes += digest.size;
    }
    Ok((count, bytes))
}

fn send_blob(
    path: &PathBuf,
    digest: &Digest,
    compress: bool,
    tx: &mpsc::Sender<BlobChunk>,
    on_read: &(dyn Fn(u64) + Sync),
) -> Result<(), BlobReadError> {
    let read_error = |source| BlobReadError::Read(PackError::Read { path: path.clone(), source });
    let file = std::fs::File::open(path).map_err(read_error)?;
    // One byte more than expected is read, so a file that grew is seen.
    let mut reader = HashingReader { inner: file.take(digest.size + 1), hasher: Hasher::default(), on_read };
    let mut sample = vec![0; digest.size.min(64 * 1024) as usize];
    reader.read_exact(&mut sample).map_err(|_| BlobReadError::Changed(path.clone()))?;
    let compressed = compress
        && digest.size >= COMPRESS_FROM
        && zstd::bulk::compress(&sample, 1).is_ok_and(|c| (c.len() as f64) < sample.len() as f64 * WORTH_COMPRESSING);
    let mut first = Some(BlobChunk {
        digest: Some(digest.clone()),
        data: Vec::new(),
        compression: if compressed { "zstd".into() } else { String::new() },
    });
    let send = |first: &mut Option<BlobChunk>, data: Vec<u8>| -> Result<(), BlobReadError> {
        let chunk = match first.take() {
            Some(first) => BlobChunk { data, ..first },
            None => BlobChunk { data, ..BlobChunk::default() },
        };
        tx.blocking_send(chunk).map_err(|_| BlobReadError::Closed)
    };
    let body = std::io::Cursor::new(sample).chain(&mut reader);
    let mut source: Box<dyn Read> = match compressed {
        true => Box::new(zstd::stream::read::Encoder::new(body, 1).map_err(read_error)?),
        false => Box::new(body),
    };
    loop {
        let mut buffer = vec![0; UPLOAD_CHUNK_BYTES];
        let mut filled = 0;
        while filled < buffer.len() {
            match source.read(&mut buffer[filled..]).map_err(read_error)? {
                0 => break,
                n => filled += n,
            }
        }
        buffer.truncate(filled);
        let done = filled == 0;
        // An empty blob still sends its first chunk, which names it.
        if !done || first.is_some() {
            send(&mut first, buffer)?;
        }
        if done {
            break;
        }
    }
    drop(source);
    let read = std::mem::take(&mut reader.hasher).finish();
    if read.size != digest.size || read.hash != digest.hash {
        return Err(BlobReadError::Changed(path.clone()));
    }
    Ok(())
}

/// Hashes and counts what is read through it.
struct HashingReader<'a, R> {
    inner: R,
    hasher: Hasher,
    on_read: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        (self.on_read)(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_shared_out_by_bytes_and_small_uploads_use_one_stream() {
        let digest = |n: u64| Digest { hash: format!("{n:064}"), size: n };
        let shares = split_missing([9, 1, 5, 4, 3, 2].map(digest).to_vec(), 2);
        let bytes: Vec<u64> = shares.iter().map(|share| share.iter().map(|d| d.size).sum()).collect();
        assert_eq!(bytes, [12, 12], "{shares:?}");
        assert_eq!(split_missing(vec![digest(7)], 4).len(), 1, "no empty streams");
        assert!(split_missing(Vec::new(), 4).is_empty());
        assert_eq!(stream_count(1 << 20, false, false), 1);
        assert_eq!(stream_count(1 << 30, false, true), 1, "loopback");
        assert_eq!(stream_count(1 << 30, false, false), 2);
        assert!((1..=BLOB_STREAMS).contains(&stream_count(1 << 30, true, false)));
    }
}
