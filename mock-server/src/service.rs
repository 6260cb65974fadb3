//! The `FileService` gRPC service: the four RPCs of the wire contract, each a thin
//! layer that validates the request, does the step, and turns errors into statuses.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

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

use crate::config::Config;
use crate::error::JobError;
use crate::{execute, jobs};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// gzip level for results: the server has cores to spare, the link may be slow.
const RESULT_GZIP_LEVEL: u32 = 1;

pub struct Service {
    config: Arc<Config>,
}

impl Service {
    pub fn new(config: Config) -> Service {
        Service { config: Arc::new(config) }
    }
}

fn log(message: std::fmt::Arguments<'_>) {
    eprintln!("lrpymrpc-mock-server: {message}");
}

#[tonic::async_trait]
impl FileService for Service {
    async fn upload(&self, request: Request<Streaming<DataChunk>>) -> Result<Response<UploadResponse>, Status> {
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        let (id, dir) = jobs::create(&self.config.root)?;
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let options = UnpackOptions { limits: self.config.upload_limits, mtime: MtimePolicy::FromArchive };
        let unpack_dir = dir.clone();
        // The blocking task owns the cleanup, so a failed upload leaves no directory
        // even when this handler is dropped half-way.
        let unpack = tokio::task::spawn_blocking(move || {
            let result = unpack_tar_gz(ChunkReader::new(chunk_rx), &unpack_dir, &options);
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&unpack_dir);
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
        match report {
            Ok(report) => {
                log(format_args!(
                    "job {id}: upload from {} unpacked ({} files, {} bytes)",
                    peer.map_or("?".into(), |p| p.to_string()),
                    report.files,
                    report.content_bytes
                ));
                Ok(Response::new(UploadResponse { unique_id: id }))
            }
            Err(error) => {
                log(format_args!("upload refused: {error}"));
                Err(JobError::from(error).into())
            }
        }
    }

    type ExecuteStream = ResponseStream<ExecuteResponse>;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<Self::ExecuteStream>, Status> {
        let request = request.into_inner();
        let dir = jobs::find(&self.config.root, &request.unique_id)?;
        let requirements = execute::parse_tool(&request.tool)?;
        log(format_args!("job {}: execute `{}`", request.unique_id, request.command_opt));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(execute::execute(dir, requirements, request.command_opt, tx));
        let lines = ReceiverStream::new(rx);
        if self.config.legacy_protocol {
            return Ok(Response::new(Box::pin(lines.filter_map(legacy_message))));
        }
        Ok(Response::new(Box::pin(lines)))
    }

    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let dir = jobs::find(&self.config.root, &request.unique_id)?;
        let has_stream = !existing_results(&dir, &request.result_dir)?.is_empty();
        Ok(Response::new(CheckResponse { has_stream }))
    }

    type DownloadStream = ResponseStream<DataChunk>;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        let dir = jobs::find(&self.config.root, &request.unique_id)?;
        let roots = existing_results(&dir, &request.result_dir)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(stream_results(roots, tx));
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
async fn stream_results(roots: Vec<PackRoot>, tx: mpsc::Sender<Result<DataChunk, Status>>) {
    let (chunk_tx, mut chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pack = tokio::task::spawn_blocking(move || {
        let options = PackOptions::everything(false, RESULT_GZIP_LEVEL);
        let (_, writer) = pack_tar_gz(&roots, &options, ChunkWriter::new(chunk_tx, CHUNK_SIZE))?;
        writer.finish().map_err(lrpymrpc_archive::PackError::Write)?;
        Ok::<_, lrpymrpc_archive::PackError>(())
    });
    while let Some(data) = chunk_rx.recv().await {
        if tx.send(Ok(DataChunk { data })).await.is_err() {
            // The client went away; dropping the receiver stops the packer.
            break;
        }
    }
    drop(chunk_rx);
    let status = match pack.await {
        Ok(Ok(())) => return,
        Ok(Err(error)) => Status::from(JobError::from(error)),
        Err(error) => Status::internal(format!("result packing task failed: {error}")),
    };
    let _ = tx.send(Err(status)).await;
}
