//! The `FileService` gRPC service: the four RPCs of the wire contract, each reading
//! and checking its request, handing the step to the rooms below (`jobs/`,
//! `execute/call.rs`, the archive crate), and turning errors into statuses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lrpymrpc_archive::bridge::{CHANNEL_CHUNKS, ChunkReader, ChunkWriter, Fed, feed};
use lrpymrpc_archive::{Encoding, MtimePolicy, UnpackOptions, pack_results_tar, unpack_tar_gz};
use lrpymrpc_proto::file_service_server::FileService;
use lrpymrpc_proto::{
    CHUNK_SIZE, CachePolicy, CheckRequest, CheckResponse, DataChunk, DownloadRequest, Durability, ExecuteRequest,
    ExecuteResponse, UploadResponse,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::error::JobError;
use crate::execute;
use crate::execute::cached::{self, CacheAsk};
use crate::execute::repo_url::parse_repo_url;
use crate::jobs::Done;
use crate::jobs::results::{existing_results, result_bytes, result_names};
use crate::resources::Ask;
use crate::rpc::auth::{Caller, authorize};
use crate::rpc::messages::{ResponseStream, to_message};
use crate::state::State;

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
            self.state.metrics.refused_for(&error);
            let peer = request.remote_addr().map_or_else(|| "?".to_string(), |a| a.to_string());
            warn!(rpc, peer = %peer, reason = error.to_string().as_str(), "refused");
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
            self.state.metrics.refused("draining");
            return Err(JobError::Draining.into());
        }
        let started = Instant::now();
        let (id, dir, job_use) = self.state.jobs.create(caller.cn.as_deref()).map_err(|error| {
            self.state.metrics.refused_for(&error);
            warn!(cn = caller.name(), peer = %caller.address, reason = error.to_string().as_str(), "upload refused");
            Status::from(error)
        })?;
        let stream = request.into_inner();
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let options = UnpackOptions {
            limits: self.state.config.upload_limits,
            mtime: MtimePolicy::FromArchive,
            only: None,
            progress: None,
        };
        let (jobs, unpack_id) = (self.state.jobs.clone(), id.clone());
        // The blocking task owns the cleanup, so a failed upload leaves no directory
        // even when this handler is dropped half-way.
        let unpack = tokio::task::spawn_blocking(move || {
            let result = unpack_tar_gz(ChunkReader::new(chunk_rx), &dir, &options);
            if result.is_err()
                && let Some(dir) = jobs.discard(&unpack_id)
            {
                crate::jobs::remove_job_files(&dir);
            }
            result
        });
        // A client that stalls or trickles holds its slot only up to the idle limit or
        // while it sends at the minimum rate.
        let idle_limit = self.state.config.upload_idle_timeout;
        let metrics = self.state.metrics.clone();
        let chunks = stream.map(move |chunk| {
            let data = chunk.map(|chunk| chunk.data).map_err(|status| status.message().to_string());
            if let Ok(data) = &data {
                metrics.uploaded_bytes.inc_by(data.len() as u64);
            }
            data
        });
        let fed = feed(chunks, chunk_tx, self.state.config.upload_pace()).await;
        let stalled = match fed {
            Fed::Stalled => Some(JobError::UploadStalled(lrpymrpc_units::human_duration(idle_limit))),
            Fed::TooSlow => Some(JobError::UploadTooSlow(self.state.config.upload_min_rate)),
            _ => None,
        };
        let report = unpack.await.map_err(|e| JobError::task("unpacking the upload", e))?;
        drop(job_use);
        if let Some(error) = stalled {
            warn!(job = %id, cn = caller.name(), peer = %caller.address, reason = error.to_string().as_str(), "upload refused");
            return Err(error.into());
        }
        match report {
            Ok(report) => {
                self.state.metrics.step("upload", started.elapsed());
                info!(
                    job = %id, cn = caller.name(), fingerprint = %caller.fingerprint, peer = %caller.address,
                    files = report.files, bytes = report.content_bytes, ms = millis(started),
                    "upload unpacked"
                );
                Ok(Response::new(UploadResponse { unique_id: id }))
            }
            Err(error) => {
                let reason = error.to_string();
                warn!(job = %id, cn = caller.name(), peer = %caller.address, ms = millis(started), reason = reason.as_str(), "upload refused");
                Err(JobError::from(error).into())
            }
        }
    }

    type ExecuteStream = ResponseStream<ExecuteResponse>;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<Self::ExecuteStream>, Status> {
        let caller = self.caller(&request, "execute")?;
        let request = request.into_inner();
        let (dir, job_use) = self.state.jobs.open(&request.unique_id, caller.cn.as_deref())?;
        let id = job_use.id().to_string();
        // Client text goes in as string fields, which both log formats escape (no raw
        // newline or ESC can forge a line); never into the message.
        info!(job = %id, cn = caller.name(), repo_url = request.tool.as_str(), command = request.command_opt.as_str(), "execute");
        let requirements = parse_repo_url(&request.tool)?;
        // What the command needs; what no wait could ever give is refused now.
        let capacity = self.state.resources.capacity();
        let asked = request.resources.as_ref().filter(|_| !self.state.config.legacy_protocol);
        let owner = caller.cn.clone().unwrap_or_default();
        let needs = Ask::from_wire(asked, capacity, &owner).map_err(JobError::Resources)?;
        if let Some(why) = capacity.refusal(&needs) {
            return Err(JobError::Resources(format!("{why}: it could never run here")).into());
        }
        let run = self.state.jobs.start_command(&job_use)?;
        // As the Python server: one ordered stream, unless the client asks for two.
        let merged = !request.separate_streams || self.state.config.legacy_protocol;
        let progress_updates = request.progress_updates && !self.state.config.legacy_protocol;
        let ask = match (CachePolicy::try_from(request.cache), self.state.config.legacy_protocol) {
            (Ok(CachePolicy::Use), false) => Some(CacheAsk { refresh: false, results: request.cache_results.clone() }),
            (Ok(CachePolicy::Refresh), false) => {
                Some(CacheAsk { refresh: true, results: request.cache_results.clone() })
            }
            _ => None,
        };
        // A durable run (lrpymrpc clients) goes on when this call is lost: its output
        // is spooled, and this call is only its first follower (`spool.rs`).
        let durable = match (Durability::try_from(request.durability), self.state.config.legacy_protocol) {
            (Ok(Durability::Reattach), false) => Some(false),
            (Ok(Durability::Detached), false) => Some(true),
            _ => None,
        };
        let started = durable.map(|detached| crate::jobs::spool::Started {
            id: id.clone(),
            owner: caller.cn.clone(),
            command: request.command_opt.clone(),
            attach: request.attach_info.clone(),
            detached,
            needs: Some(needs.to_wire()),
        });
        // On disk too, so a server started after this one takes the job on.
        let header = started.as_ref().map(|started| crate::jobs::spool_file::Header {
            id: started.id.clone(),
            owner: started.owner.clone(),
            command: started.command.clone(),
            attach: started.attach.clone(),
            detached: started.detached,
            needs: started.needs.clone(),
            dir: dir.display().to_string(),
            merged,
            progress: progress_updates,
            executor: self.state.config.executor.name().to_string(),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        });
        let (tx, rx) = mpsc::channel(64);
        let call = execute::call::Call {
            id,
            cn: caller.name().to_string(),
            owner: caller.cn.clone().unwrap_or_default(),
            dir,
            requirements,
            command: request.command_opt,
            merged,
            progress_updates,
            durable: durable.is_some(),
            needs,
            ask,
            run,
            job_use,
        };
        tokio::spawn(execute::call::run(self.state.clone(), call, tx));
        if let Some(started) = started {
            let spool = self.state.spools.start(started, header.as_ref(), rx);
            let records = self.state.spools.follow(spool, 0, false);
            return Ok(Response::new(Box::pin(ReceiverStream::new(records))));
        }
        let legacy = self.state.config.legacy_protocol;
        let messages = ReceiverStream::new(rx).filter_map(move |event| to_message(event, legacy));
        Ok(Response::new(Box::pin(messages)))
    }

    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let caller = self.caller(&request, "check")?;
        let request = request.into_inner();
        let (dir, job_use) = self.open_results(&request.unique_id, caller.cn.as_deref()).await?;
        let names = result_names(&request.result_dir)?;
        let (result_bytes, found) = match self.state.jobs.recorded(job_use.id()) {
            Some(recorded) => {
                let record = recorded_for(&recorded, &request.result_dir)?;
                (record.result_bytes, record.found.iter().map(PathBuf::from).collect())
            }
            None => {
                // Many paths, a slow disk: looked up off the async threads. The command
                // has ended (the job's phase says so), so nothing changes what is measured.
                let found = tokio::task::spawn_blocking(move || {
                    existing_results(&dir, &names).map(|found| (result_bytes(&dir, &found), found))
                })
                .await
                .map_err(|e| JobError::task("looking up the results", e))?;
                found?
            }
        };
        let found: Vec<PathBuf> = found;
        let has_stream = !found.is_empty();
        if !has_stream {
            // Nothing to download: the client is done with this job.
            self.state.jobs.finished(job_use.id(), Done::Fetched);
        }
        Ok(Response::new(CheckResponse { has_stream, result_bytes }))
    }

    type DownloadStream = ResponseStream<DataChunk>;

    async fn download(&self, request: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = self.caller(&request, "download")?;
        let request = request.into_inner();
        let (dir, job_use) = self.open_results(&request.unique_id, caller.cn.as_deref()).await?;
        let names = result_names(&request.result_dir)?;
        // A legacy server speaks gzip only, whatever is asked.
        let encoding = match (self.state.config.legacy_protocol, Encoding::from_name(&request.encoding)) {
            (true, _) => Encoding::Gzip,
            (false, Some(encoding)) => encoding,
            (false, None) => return Err(JobError::Encoding(request.encoding.chars().take(40).collect()).into()),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let state = self.state.clone();
        let cn = caller.name().to_string();
        let recorded = match state.jobs.recorded(job_use.id()) {
            Some(recorded) => Some(recorded_for(&recorded, &request.result_dir)?.results.clone()),
            None => None,
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let sent = match recorded {
                Some(blob) => match state.store.as_ref() {
                    Some(store) => stream_recorded(store.blob_path(&blob.hash), encoding, tx).await,
                    None => None,
                },
                None => stream_results(dir, names, encoding, tx).await,
            };
            if let Some(bytes) = sent {
                state.metrics.downloaded_bytes.inc_by(bytes);
                state.metrics.step("download", started.elapsed());
                state.jobs.finished(job_use.id(), Done::Fetched);
                let encoding = encoding.name();
                info!(job = %job_use.id(), cn = cn.as_str(), bytes, encoding, ms = millis(started), "results sent");
            }
            drop(job_use);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A job's recorded results, when the client asks for the RESULT paths they were
/// recorded for (the record holds no others).
fn recorded_for<'r>(
    recorded: &'r crate::jobs::Recorded,
    result_dir: &str,
) -> Result<&'r crate::store::action_cache::Record, JobError> {
    match cached::normalized(result_dir) == recorded.requested {
        true => Ok(&recorded.record),
        false => Err(JobError::OtherResults { recorded: recorded.requested.clone() }),
    }
}

/// Moves a result stream's chunks to the client; returns the bytes sent and whether
/// all went out. Dropping the receiver (the client went away) stops the writer.
async fn forward_chunks(
    mut chunks: mpsc::Receiver<Vec<u8>>,
    tx: &mpsc::Sender<Result<DataChunk, Status>>,
) -> (u64, bool) {
    let mut sent = 0u64;
    while let Some(data) = chunks.recv().await {
        sent += data.len() as u64;
        if tx.send(Ok(DataChunk { data })).await.is_err() {
            return (sent, false);
        }
    }
    (sent, true)
}

/// A download's chunk size: smaller for the encodings only our client asks for (its
/// memory), the Python client's 1 MiB for gzip.
fn chunk_size(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gzip => CHUNK_SIZE,
        Encoding::Zstd | Encoding::Identity => lrpymrpc_proto::EXTENSION_CHUNK_SIZE,
    }
}

/// Sends a recorded run's results (an uncompressed tar in the store) in `encoding`.
/// Returns the bytes sent when the whole stream went out.
async fn stream_recorded(
    blob: PathBuf,
    encoding: Encoding,
    tx: mpsc::Sender<Result<DataChunk, Status>>,
) -> Option<u64> {
    let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let copy = tokio::task::spawn_blocking(move || {
        let out = ChunkWriter::new(chunk_tx, chunk_size(encoding));
        let mut encoder = encoding.encoder_on(out, RESULT_GZIP_LEVEL, lrpymrpc_archive::encoding::cores())?;
        // Opened once: a blob evicted now stays readable through this handle.
        let mut file = std::fs::File::open(&blob).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => std::io::Error::other(
                "the recorded results were evicted from the content store since the step was served; \
                 run it again with --refresh",
            ),
            _ => error,
        })?;
        std::io::copy(&mut file, &mut encoder)?;
        encoder.finish()?.finish()
    });
    let (sent, complete) = forward_chunks(chunk_rx, &tx).await;
    let status = match copy.await {
        Ok(Ok(_)) if complete => return Some(sent),
        Ok(Ok(_)) => return None,
        Ok(Err(error)) => Status::from(JobError::Io(error)),
        Err(error) => Status::from(JobError::task("sending the recorded results", error)),
    };
    let _ = tx.send(Err(status)).await;
    None
}

/// Packs the results into the response stream, walking relative to directory handles:
/// links are shipped as links, never followed, so neither a link the job made to
/// `/etc/shadow` nor a directory swapped for a link ships the target's bytes.
/// Returns the bytes sent when the whole stream went out.
async fn stream_results(
    dir: PathBuf,
    names: Vec<PathBuf>,
    encoding: Encoding,
    tx: mpsc::Sender<Result<DataChunk, Status>>,
) -> Option<u64> {
    let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pack = tokio::task::spawn_blocking(move || {
        let out = ChunkWriter::new(chunk_tx, chunk_size(encoding));
        let (_, writer) = pack_results_tar(&dir, &names, encoding, RESULT_GZIP_LEVEL, out)?;
        writer.finish().map_err(lrpymrpc_archive::PackError::Write)?;
        Ok::<_, lrpymrpc_archive::PackError>(())
    });
    let (sent, complete) = forward_chunks(chunk_rx, &tx).await;
    let status = match pack.await {
        Ok(Ok(())) if complete => return Some(sent),
        Ok(Ok(())) => return None,
        Ok(Err(error)) => Status::from(JobError::from(error)),
        Err(error) => Status::from(JobError::task("packing the results", error)),
    };
    let _ = tx.send(Err(status)).await;
    None
}

impl Service {
    /// The caller's job `id` whose results Check and Download may read: its command has
    /// ended, or its end is being recorded (its spool holds the exit status).
    async fn open_results(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(std::path::PathBuf, crate::jobs::JobUse), JobError> {
        let ending = || self.state.spools.get(id, owner).is_some_and(|spool| spool.summary().0.is_some());
        self.state.jobs.open_ended_soon(id, owner, ending).await
    }
}
