//! UploadBlobs on the server: who may send blobs at once (`per_cn::StreamSlots`: 64
//! streams in all, 8 of one certificate), and receiving them
//! without holding a thread while the network is quiet. The async side gathers what
//! has arrived (up to [`BATCH_BYTES`]); a blocking thread writes and hashes that batch
//! and hands the blob in progress back, so 500 streams sending a byte every 10 s hold
//! no thread at all, and other users' calls keep theirs. A stream that goes quiet for
//! the idle limit or trickles below the minimum rate (`Config::upload_pace`) is cut,
//! and one the store refused is answered at once, not when its sender stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lrpymrpc_proto::v1::BlobChunk;
use tonic::Streaming;

use crate::error::JobError;
use crate::state::State;
use crate::store::{BlobError, BlobWriter, ContentStore};

/// The most bytes gathered before a blocking thread writes them.
const BATCH_BYTES: usize = 1 << 20;

/// The blobs of one stream as they come: the one in progress and how many were kept.
struct Receiving {
    cn: String,
    limit: u64,
    current: Option<BlobWriter>,
    stored: u32,
}

impl Receiving {
    /// Writes a batch of chunks: a chunk naming a digest ends the blob before it and
    /// begins its own (a compressed blob's frame may end after its last byte).
    fn take(&mut self, store: &ContentStore, chunks: Vec<BlobChunk>) -> Result<(), BlobError> {
        for chunk in chunks {
            if let Some(digest) = chunk.digest {
                if let Some(done) = self.current.take() {
                    store.finish(done)?;
                    self.stored += 1;
                }
                self.current = Some(store.begin(&self.cn, &digest, &chunk.compression, self.limit)?);
            }
            let Some(writer) = self.current.as_mut() else {
                return Err(BlobError::Unnamed);
            };
            writer.write(&chunk.data)?;
        }
        Ok(())
    }

    /// The stream ended: its last blob is finished.
    fn end(mut self, store: &ContentStore) -> Result<u32, BlobError> {
        if let Some(done) = self.current.take() {
            store.finish(done)?;
            self.stored += 1;
        }
        Ok(self.stored)
    }
}

/// Receives one UploadBlobs stream of `cn` into the store; how many blobs were kept.
/// What came whole before a failure stays kept.
pub async fn receive(state: Arc<State>, cn: String, mut stream: Streaming<BlobChunk>) -> Result<u32, JobError> {
    let _slot = state.blob_streams.take(&cn)?;
    let pace = state.config.upload_pace();
    let limit = state.config.upload_limits.max_bytes;
    let mut receiving = Receiving { cn, limit, current: None, stored: 0 };
    let (started, mut bytes, mut last) = (Instant::now(), 0u64, Instant::now());
    loop {
        if pace.too_slow(started, bytes) {
            return Err(JobError::UploadTooSlow(pace.min_bytes_per_second));
        }
        let wait = pace.wait().unwrap_or(Duration::MAX);
        let first = match tokio::time::timeout(wait, stream.message()).await {
            Err(_) if pace.idle.is_some_and(|idle| last.elapsed() >= idle) => {
                let idle = pace.idle.unwrap_or_default();
                return Err(JobError::UploadStalled(lrpymrpc_units::human_duration(idle)));
            }
            Err(_) => continue,
            // The client went away: what it sent whole is kept, the rest is not.
            Ok(Err(_)) => {
                return Err(JobError::UploadStalled("its connection was lost".into()));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        // What else has arrived already joins the batch (`message` is cancel-safe).
        let mut batch_bytes = first.data.len();
        let mut batch = vec![first];
        let (mut ended, mut lost) = (false, false);
        while batch_bytes < BATCH_BYTES {
            match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                Ok(Ok(Some(chunk))) => {
                    batch_bytes += chunk.data.len();
                    batch.push(chunk);
                }
                Ok(Ok(None)) => {
                    ended = true;
                    break;
                }
                Ok(Err(_)) => {
                    lost = true;
                    break;
                }
                Err(_) => break,
            }
        }
        bytes += batch_bytes as u64;
        last = Instant::now();
        state.metrics.uploaded_bytes.inc_by(batch_bytes as u64);
        let writing = state.clone();
        let (back, written) = tokio::task::spawn_blocking(move || {
            let store = writing.store.as_ref().expect("UploadBlobs is served only with a store");
            let written = receiving.take(store, batch);
            (receiving, written)
        })
        .await
        .map_err(|e| JobError::task("storing blobs", e))?;
        written?;
        receiving = back;
        if lost {
            return Err(JobError::UploadStalled("its connection was lost".into()));
        }
        if ended {
            break;
        }
    }
    let ending = state.clone();
    let stored = tokio::task::spawn_blocking(move || {
        receiving.end(ending.store.as_ref().expect("UploadBlobs is served only with a store"))
    })
    .await
    .map_err(|e| JobError::task("storing blobs", e))??;
    Ok(stored)
}
