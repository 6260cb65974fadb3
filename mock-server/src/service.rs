//! The `FileService` gRPC service: the four RPCs of the wire contract, each a thin
//! layer that validates the request, does the step, and turns errors into statuses.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use lrpymrpc_archive::bridge::{CHANNEL_CHUNKS, ChunkReader, ChunkWriter};
use lrpymrpc_archive::{
    MtimePolicy, PackOptions, PackRoot, UnpackOptions, find_below, pack_tar_gz, sanitize_relative, unpack_tar_gz,
};
use lrpymrpc_proto::file_service_server::FileService;
use lrpymrpc_proto::{
    CHUNK_SIZE, CheckRequest, CheckResponse, DataChunk, DownloadRequest, ExecuteRequest, ExecuteResponse,
    UploadResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{Caller, authorize};
use crate::error::JobError;
use crate::execute::{self, Ended};
use crate::process::TimeLimits;
use crate::state::State;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// gzip level for results: the server has cores to spare, the link may be slow.
const RESULT_GZIP_LEVEL: u32 = 1;

pub struct Service {
    state: Arc<State>,
}

impl Service {
    pub fn new(state: Arc<State>) -> Service {
        Service { state }
    }

    /// Who is calling; refused (and logged) when the allow-list says no.
    fn caller<T>(&self, request: &Request<T>, rpc: &str) -> Result<Caller, Status> {
        let config = &self.state.config;
        authorize(request, config.tls.is_some(), config.allowed_cns.as_ref()).map_err(|error| {
            let peer = request.remote_addr().map_or_else(|| "?".to_string(), |a| a.to_string());
            warn!(rpc, peer = %peer, "refused: {error}");
            Status::from(error)
        })
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl FileService for Service {
    async fn upload(&self, request: Request<Streaming<DataChunk>>) -> Result<Response<UploadResponse>, Status> {
        // Who, then a slot: a refused client's bytes never reach the disk.
        let caller = self.caller(&request, "upload")?;
        if self.state.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("the server is shutting down and takes no new jobs; try again later"));
        }
        let started = Instant::now();
        let (id, dir, job_use) = self.state.jobs.create(caller.cn.as_deref()).map_err(|error| {
            warn!(cn = caller.name(), peer = %caller.address, "upload refused: {error}");
            Status::from(error)
        })?;
        let mut stream = request.into_inner();
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let options = UnpackOptions { limits: self.state.config.upload_limits, mtime: MtimePolicy::FromArchive };
        let (jobs, unpack_id) = (self.state.jobs.clone(), id.clone());
        // The blocking task owns the cleanup, so a failed upload leaves no directory
        // even when this handler is dropped half-way.
        let unpack = tokio::task::spawn_blocking(move || {
            let result = unpack_tar_gz(ChunkReader::new(chunk_rx), &dir, &options);
            if result.is_err() {
                jobs.discard(&unpack_id);
            }
            result
        });
        loop {
            let item = match stream.message().await {
                Ok(Some(chunk)) => Ok(chunk.data),
                Ok(None) => break,
                Err(status) => Err(io::Error::other(format!("the client stopped sending: {}", status.message()))),
            };
            let failed = item.is_err();
            // A send error means the unpacker already gave up; its error says why.
            if chunk_tx.send(item).await.is_err() || failed {
                break;
            }
        }
        drop(chunk_tx);
        let report = unpack.await.map_err(|e| Status::internal(format!("upload task failed: {e}")))?;
        drop(job_use);
        match report {
            Ok(report) => {
                info!(
                    job = %id, cn = caller.name(), fingerprint = %caller.fingerprint, peer = %caller.address,
                    files = report.files, bytes = report.content_bytes, ms = millis(started),
                    "upload unpacked"
                );
                Ok(Response::new(UploadResponse { unique_id: id }))
            }
            Err(error) => {
                warn!(job = %id, cn = caller.name(), peer = %caller.address, ms = millis(started), "upload refused: {error}");
                Err(JobError::from(error).into())
            }
        }
    }

    type ExecuteStream = ResponseStream<ExecuteResponse>;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<Self::ExecuteStream>, Status> {
        let caller = self.caller(&request, "execute")?;
        let request = request.into_inner();
        let (dir, job_use) = self.state.jobs.open(&request.unique_id, caller.cn.as_deref())?;
        let requirements = execute::parse_tool(&request.tool)?;
        let id = job_use.id().to_string();
        info!(job = %id, cn = caller.name(), repo_url = %request.tool, command = %request.command_opt, "execute");
        self.state.jobs.command_started(&id);
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        let cn = caller.name().to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let config = &state.config;
            let context = execute::Context {
                sink: &tx,
                limits: TimeLimits { wall: config.job_timeout, idle: config.idle_timeout },
                running: &state.running,
                env_cache: state.env_cache.as_ref(),
                sandbox: config.sandbox.as_ref(),
            };
            let ended = execute::execute(&dir, &requirements, &request.command_opt, &context).await;
            state.jobs.command_ended(&id);
            let ms = millis(started);
            match &ended {
                Ended::Ran(status) => {
                    info!(job = %id, cn = %cn, status = %crate::process::describe(status), ms, "command ended")
                }
                Ended::Cancelled => {
                    state.jobs.finished(&id);
                    warn!(job = %id, cn = %cn, ms, "client went away; command stopped");
                }
                Ended::Failed(why) => warn!(job = %id, cn = %cn, ms, "execute failed: {why}"),
            }
            drop(job_use);
        });
        let lines = ReceiverStream::new(rx);
        if self.state.config.legacy_protocol {
            return Ok(Response::new(Box::pin(lines.filter_map(legacy_message))));
        }
        Ok(Response::new(Box::pin(lines)))
    }

    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let caller = self.caller(&request, "check")?;
        let request = request.into_inner();
        let (dir, job_use) = self.state.jobs.open(&request.unique_id, caller.cn.as_deref())?;
        let has_stream = !existing_results(&dir, &request.result_dir)?.is_empty();
        if !has_stream {
            // Nothing to download: the client is done with this job.
            self.state.jobs.finished(job_use.id());
        }
        Ok(Response::new(CheckResponse { has_stream }))
    }

    type DownloadStream = ResponseStream<DataChunk>;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = self.caller(&request, "download")?;
        let request = request.into_inner();
        let (dir, job_use) = self.state.jobs.open(&request.unique_id, caller.cn.as_deref())?;
        let roots = existing_results(&dir, &request.result_dir)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let state = self.state.clone();
        let cn = caller.name().to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let sent = stream_results(roots, tx).await;
            if let Some(bytes) = sent {
                state.jobs.finished(job_use.id());
                info!(job = %job_use.id(), cn = %cn, bytes, ms = millis(started), "results sent");
            }
            drop(job_use);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A message as a server without the extension sends it: the line only; the final
/// status message is not sent at all.
fn legacy_message(item: Result<ExecuteResponse, Status>) -> Option<Result<ExecuteResponse, Status>> {
    match item {
        Ok(ExecuteResponse { exit_status: Some(_), .. }) => None,
        Ok(ExecuteResponse { message, .. }) => Some(Ok(ExecuteResponse { message, ..Default::default() })),
        Err(status) => Some(Err(status)),
    }
}

/// The RESULT paths (space-separated, relative to the job directory) that exist,
/// found without following any link on the way.
fn existing_results(job_dir: &Path, result_dir: &str) -> Result<Vec<PackRoot>, JobError> {
    let mut roots = Vec::new();
    for name in result_dir.split_whitespace() {
        let refuse = |reason: String| JobError::BadResultPath { path: name.to_string(), reason };
        let rel = sanitize_relative(name.as_bytes()).map_err(|e| refuse(e.to_string()))?;
        if rel.as_os_str().is_empty() {
            return Err(refuse("the job directory itself cannot be a result".into()));
        }
        if let Some(disk) = find_below(job_dir, &rel).map_err(|e| refuse(e.to_string()))? {
            roots.push(PackRoot { disk, name: rel });
        }
    }
    Ok(roots)
}

/// Packs the results into the response stream. Links are shipped as links, never
/// followed, so a link the job made to `/etc/shadow` or the server key ships no bytes.
/// Returns the bytes sent when the whole stream went out.
async fn stream_results(roots: Vec<PackRoot>, tx: mpsc::Sender<Result<DataChunk, Status>>) -> Option<u64> {
    let (chunk_tx, mut chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pack = tokio::task::spawn_blocking(move || {
        let options = PackOptions::everything(false, RESULT_GZIP_LEVEL);
        let (_, writer) = pack_tar_gz(&roots, &options, ChunkWriter::new(chunk_tx, CHUNK_SIZE))?;
        writer.finish().map_err(lrpymrpc_archive::PackError::Write)?;
        Ok::<_, lrpymrpc_archive::PackError>(())
    });
    let mut sent = 0u64;
    let mut complete = true;
    while let Some(data) = chunk_rx.recv().await {
        sent += data.len() as u64;
        if tx.send(Ok(DataChunk { data })).await.is_err() {
            // The client went away; dropping the receiver stops the packer.
            complete = false;
            break;
        }
    }
    drop(chunk_rx);
    let status = match pack.await {
        Ok(Ok(())) if complete => return Some(sent),
        Ok(Ok(())) => return None,
        Ok(Err(error)) => Status::from(JobError::from(error)),
        Err(error) => Status::internal(format!("result packing task failed: {error}")),
    };
    let _ = tx.send(Err(status)).await;
    None
}
