//! One remote session: the channel to one server, the peer, what the server said it
//! can do (its capabilities; `None` for a legacy server), and the calls of a job, each
//! turning failures into structured errors that name the step and the peer. A job's
//! steps (`steps/`) go through it; a server list (`steps/place.rs`) holds several.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lrpymrpc_archive::bridge::{ChunkReader, ChunkWriter, Fed, Pace, feed};
use lrpymrpc_archive::{
    Candidate, Encoding, MtimePolicy, PackError, PackOptions, PackReport, PackRoot, ReadProgress, UnpackOptions,
    UnpackReport, merge_tree, pack_tar_gz, sanitize_relative, unpack_tar,
};
use lrpymrpc_proto::file_service_client::FileServiceClient;
use lrpymrpc_proto::v1::extensions_client::ExtensionsClient;
use lrpymrpc_proto::{
    AttachInfo, CachePolicy, CheckRequest, CheckResponse, DataChunk, DownloadRequest, Durability, ExecuteRequest,
    ExecuteResponse, ExitStatus, OutputStream,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::cli::ResultEncoding;
use crate::exit::{ClientError, ResultsError, Step};
use crate::job::Job;
use crate::output::{Output, Progress};
use crate::remote::connect::{Capabilities, classify, connect};
use crate::remote::fault::TransportFault;
use crate::remote::peer::Peer;

/// The largest message accepted from the server; generous, since the Python
/// server's chunk size is not public.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Upload chunks: small enough that the few in flight (the one being filled, the
/// queue, the one being encoded) keep the client's memory near 1 MiB, large enough
/// that per-message costs do not show. Any size is valid on the wire.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Chunks queued between the network and the packing or unpacking thread, each way.
/// Results arrive in the server's chunk size (1 MiB from ours).
const QUEUED_CHUNKS: usize = 2;

mod cas_upload;

mod made_trees;

mod durable;
pub use durable::Followed;

/// A connection to one server, proven by its capabilities call.
#[derive(Debug, Clone)]
pub struct Session {
    peer: Peer,
    files: FileServiceClient<Channel>,
    extensions: ExtensionsClient<Channel>,
    capabilities: Capabilities,
    /// A step whose server says nothing for this long fails (`--stall-timeout`).
    stall: Duration,
}

impl Session {
    /// Connects to `peer` and asks what it can do, all within `stall`: a server that
    /// accepts the connection and then says nothing (stopped, wedged) fails the step.
    pub async fn open(peer: &Peer, stall: Duration) -> Result<Session, ClientError> {
        let (channel, capabilities) = match tokio::time::timeout(peer.connect_timeout, connect(peer)).await {
            Ok(connected) => connected?,
            Err(_) => return Err(stalled_connect(peer)),
        };
        let files = FileServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let extensions = ExtensionsClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Session { peer: peer.clone(), files, extensions, capabilities, stall })
    }

    /// A step that got no answer within the stall limit: a lost connection, worth a retry.
    fn stalled(&self, step: Step) -> ClientError {
        let reason = format!("no answer for {} (--stall-timeout)", crate::output::seconds(self.stall));
        ClientError::Lost { step, peer: self.peer.to_string(), reason }
    }

    /// The encoding results come in: what `wanted` asks, when the server speaks it;
    /// `auto` takes none on loopback (compressing only costs time there), else zstd,
    /// else gzip, the contract.
    pub fn result_encoding(&self, wanted: ResultEncoding, out: &Output) -> Encoding {
        let offered = |name: &str| {
            self.capabilities()
                .and_then(|c| c.features.as_ref())
                .is_some_and(|f| f.result_encodings.iter().any(|e| e == name))
        };
        let loopback = self.peer_is_loopback();
        let asked = match wanted {
            ResultEncoding::Auto if loopback && offered("identity") => return Encoding::Identity,
            ResultEncoding::Auto if offered("zstd") => return Encoding::Zstd,
            ResultEncoding::Auto | ResultEncoding::Gzip => return Encoding::Gzip,
            ResultEncoding::Zstd => Encoding::Zstd,
            ResultEncoding::Identity => Encoding::Identity,
        };
        if offered(asked.name()) {
            return asked;
        }
        out.note(&format!("the server does not send results in {}; they come in gzip", asked.name()));
        Encoding::Gzip
    }

    /// Whether the server is on this machine: compressing for it only costs time.
    pub fn peer_is_loopback(&self) -> bool {
        self.peer.is_loopback()
    }

    /// The server this session talks to.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the server keeps an action cache (`--cache`).
    pub fn has_action_cache(&self) -> bool {
        self.capabilities().and_then(|c| c.features.as_ref()).is_some_and(|f| f.action_cache)
    }

    /// What the server said it can do; `None` for a legacy server.
    pub fn capabilities(&self) -> Option<&lrpymrpc_proto::v1::CapabilitiesResponse> {
        self.capabilities.as_ref()
    }

    /// How busy the server is now (asked again; `capabilities` holds what it said at
    /// connect time); `None` for a legacy server or one that did not answer in time.
    pub async fn load(&self) -> Option<lrpymrpc_proto::v1::Load> {
        self.capabilities.as_ref()?;
        let mut extensions = self.extensions.clone();
        let request = lrpymrpc_proto::v1::CapabilitiesRequest { client_protocol: lrpymrpc_proto::v1::PROTOCOL };
        let answered = tokio::time::timeout(self.stall, extensions.capabilities(request)).await;
        answered.ok()?.ok()?.into_inner().load
    }

    /// A failed call as an error naming the step and this session's peer.
    fn failed(&self, step: Step, status: Status) -> ClientError {
        classify(step, &self.peer, status)
    }

    /// Whether any of the RESULT paths (joined by spaces) exist in the job.
    /// Whether there is something to download, and its size when the server says it.
    pub async fn check(&self, unique_id: &str, result_dir: &str) -> Result<CheckResponse, ClientError> {
        let request = CheckRequest { unique_id: unique_id.to_string(), result_dir: result_dir.to_string() };
        let mut files = self.files.clone();
        let response = tokio::time::timeout(self.stall, files.check(request))
            .await
            .map_err(|_| self.stalled(Step::Check))?
            .map_err(|s| self.failed(Step::Check, s))?;
        Ok(response.into_inner())
    }

    /// Tells the server nothing will be fetched (a Check for no paths), so it can
    /// remove the job now; a server that takes it otherwise changes nothing.
    pub async fn release(&self, unique_id: &str) {
        let done = CheckRequest { unique_id: unique_id.to_string(), result_dir: String::new() };
        // Best effort, but bounded: a silent server must not hang a finished job.
        let _ = tokio::time::timeout(self.stall, self.files.clone().check(done)).await;
    }

    /// Packs the sources on a blocking thread while the chunks stream to the server.
    pub async fn upload(
        &self,
        job: &Job,
        roots: Vec<PackRoot>,
        out: &Output,
    ) -> Result<(String, PackReport), ClientError> {
        let mut client = self.files.clone();
        let (chunk_tx, chunk_rx) = mpsc::channel(QUEUED_CHUNKS);
        let rules = job.rules.clone();
        let level = job.gzip_level;
        // Parallel gzip pays when the server has cores of its own; on this machine it
        // competes with the server for them.
        let gzip_threads = if self.peer_is_loopback() { 1 } else { lrpymrpc_archive::encoding::cores() };
        // On a terminal, what will be sent is counted first, for a bar with a total;
        // files and their bytes are counted as they go into the archive.
        let progress = out.progress("upload");
        let pack = tokio::task::spawn_blocking(move || {
            let keep = |candidate: &Candidate<'_>| rules.keeps(candidate);
            let total_files =
                progress.is_shown().then(|| count_sources(&roots, &keep)).flatten().map(|(files, bytes)| {
                    progress.set_total(bytes);
                    files
                });
            let files = std::cell::Cell::new(0);
            let on_file = |_size: u64| {
                files.set(files.get() + 1);
                progress.set_files(files.get(), total_files);
            };
            let on_read = |bytes: u64| progress.add_bytes(bytes);
            let options = PackOptions {
                follow_symlinks: true,
                keep: &keep,
                on_file: &on_file,
                on_read: &on_read,
                level,
                gzip_threads,
            };
            let (report, writer) = pack_tar_gz(&roots, &options, ChunkWriter::new(chunk_tx, UPLOAD_CHUNK_BYTES))?;
            writer.finish().map_err(PackError::Write)?;
            Ok::<_, PackError>(report)
        });
        // What went on the wire so far: a server that stops taking it fails the step.
        let moved = Arc::new(AtomicU64::new(0));
        let counted = moved.clone();
        let chunks = ReceiverStream::new(chunk_rx).map(move |data: Vec<u8>| {
            counted.fetch_add(data.len() as u64, Ordering::Relaxed);
            DataChunk { data }
        });
        let both = async { tokio::join!(client.upload(chunks), pack) };
        let (uploaded, packed) =
            unless_stalled(both, &moved, self.stall).await.ok_or_else(|| self.stalled(Step::Upload))?;
        let packed = packed.map_err(|e| ClientError::local(format!("packing task failed: {e}")))?;
        match (uploaded, packed) {
            (Ok(response), Ok(report)) => Ok((response.into_inner().unique_id, report)),
            // The packer only sees a closed stream; the RPC knows why it closed.
            (Err(status), Err(PackError::Write(_))) | (Err(status), Ok(_)) => Err(self.failed(Step::Upload, status)),
            (_, Err(error)) => {
                Err(ClientError::Local { message: format!("cannot pack the sources: {error}"), hint: None })
            }
        }
    }

    /// Prints the command's output as it arrives and returns how its end was reported.
    /// Never repeated: the command may not be safe to run twice. With `durability`
    /// (a server with durable jobs), a lost call does not stop the command: the
    /// caller follows it again from `followed.last_seq` (`durable.rs`).
    pub async fn execute(
        &self,
        job: &Job,
        unique_id: &str,
        cache: CachePolicy,
        durability: Durability,
        out: &Output,
        followed: &mut Followed,
    ) -> Result<(), ClientError> {
        let mut client = self.files.clone();
        let command_opt = match &job.exit_marker {
            Some(marker) => marker.wrap(&job.command),
            None => job.command.clone(),
        };
        let attach_info = (durability != Durability::Unspecified).then(|| AttachInfo {
            result_dir: job.results.join(" "),
            run_name: job.run_name.clone(),
            results_dir: job.results_dir.clone().unwrap_or_default(),
            server: self.peer.to_string(),
        });
        if let Some(typed) = &attach_info
            && let Err(error) = crate::remote::detached::remember(unique_id, typed)
        {
            out.warn(&format!("cannot keep job {unique_id}'s RESULT for `lrpymrpc attach`: {error}"));
        }
        let request = ExecuteRequest {
            unique_id: unique_id.to_string(),
            tool: job.repo_url.clone(),
            command_opt,
            separate_streams: true,
            progress_updates: true,
            cache: cache as i32,
            cache_results: match cache {
                CachePolicy::Unspecified => String::new(),
                _ => job.results.join(" "),
            },
            durability: durability as i32,
            attach_info,
            resources: job.resources.clone(),
        };
        let lines = client.execute(request).await.map_err(|status| self.failed(Step::Execute, status))?.into_inner();
        if job.detach {
            return Ok(());
        }
        self.show_output(lines, job, out, followed).await
    }

    /// Prints a run's messages as they come (each once: a number at or below the last
    /// one shown is a repeat) and notes how its end was reported.
    async fn show_output(
        &self,
        mut lines: tonic::Streaming<ExecuteResponse>,
        job: &Job,
        out: &Output,
        followed: &mut Followed,
    ) -> Result<(), ClientError> {
        let failed = |status| self.failed(Step::Execute, status);
        // On a terminal, a line below the output says the command still runs.
        let _running = out.running();
        while let Some(response) = lines.message().await.map_err(failed)? {
            if response.seq != 0 {
                if response.seq <= followed.last_seq {
                    continue;
                }
                followed.last_seq = response.seq;
            }
            if let Some(hit) = response.cache_hit {
                out.note(&served_from_cache(&hit));
                continue;
            }
            if let Some(status) = response.exit_status {
                followed.reported.field = Some(status);
                continue;
            }
            let mut text = response.message.as_str();
            if let Some((before, status)) = job.exit_marker.as_ref().and_then(|m| m.strip(text)) {
                followed.reported.marker = Some(status);
                if before.is_empty() {
                    continue;
                }
                text = before;
            }
            let on_stderr = response.stream() == OutputStream::Stderr;
            match (response.progress, on_stderr) {
                (true, _) => out.remote_progress(text, on_stderr),
                (false, true) => out.remote_stderr(text),
                (false, false) => out.remote(text),
            }
        }
        out.clear_progress();
        Ok(())
    }

    /// Unpacks the result stream into a staging directory inside the destination, then
    /// moves it into place: a failed, refused or cancelled download leaves earlier results
    /// as they were and no staging directory behind.
    /// `total`: the result's size when the server said it (Check), for a bar with an ETA.
    pub async fn download(
        &self,
        job: &Job,
        request: DownloadRequest,
        total: Option<u64>,
        out: &Output,
    ) -> Result<Fetched, ClientError> {
        let mut client = self.files.clone();
        let dest = job.results_dest.clone();
        let limits = job.result_limits;
        let encoding = Encoding::from_name(&request.encoding).unwrap_or_default();
        let local = |what: &'static str, path: &Path, source: io::Error| {
            ClientError::Results(ResultsError::Local { what, path: path.to_path_buf(), source })
        };
        std::fs::create_dir_all(&dest).map_err(|e| local("create", &dest, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".lrpymrpc-staging-")
            .tempdir_in(&dest)
            .map_err(|e| local("create a staging directory in", &dest, e))?;
        let failed = |status| self.failed(Step::Download, status);
        // A server that never answers the call is a stall like one that stops sending.
        let stream = tokio::time::timeout(self.stall, client.download(request))
            .await
            .map_err(|_| self.stalled(Step::Download))?
            .map_err(failed)?
            .into_inner();

        let (chunk_tx, chunk_rx) = mpsc::channel(QUEUED_CHUNKS);
        // The unpacking thread owns the staging directory and the move into place, so a
        // cancelled job (Ctrl-C drops this future) still removes it when the thread ends.
        // Only what was asked for may land: a hostile server's `Makefile` or
        // `.git/hooks/pre-commit` beside the results is refused.
        let asked: Vec<(String, PathBuf)> = job
            .results
            .iter()
            .filter_map(|name| sanitize_relative(name.as_bytes()).ok().map(|rel| (name.clone(), rel)))
            .collect();
        let only = asked.iter().map(|(_, rel)| rel.clone()).collect();
        // With a total, the bar follows the unpacked bytes; without, the bytes received.
        let progress: Progress = out.progress("download");
        let unpacked = match total {
            Some(total) if progress.is_shown() => {
                progress.set_total(total);
                let bar = progress.clone();
                Some(ReadProgress(Arc::new(move |bytes| bar.add_bytes(bytes))))
            }
            _ => None,
        };
        let count_received = unpacked.is_none();
        let unpack = tokio::task::spawn_blocking(move || {
            let options = UnpackOptions { limits, mtime: MtimePolicy::Now, only: Some(only), progress: unpacked };
            let report = unpack_tar(ChunkReader::new(chunk_rx), encoding, staging.path(), &options)
                .map_err(ResultsError::of_unpack)?;
            let missing = asked
                .into_iter()
                .filter(|(_, rel)| staging.path().join(rel).symlink_metadata().is_err())
                .map(|(name, _)| name)
                .collect();
            merge_tree(staging.path(), &dest).map_err(ResultsError::from)?;
            Ok::<_, ClientError>(Fetched { report, missing })
        });
        let chunks = stream.map(|chunk| {
            chunk.map(|chunk| {
                if count_received {
                    progress.add_bytes(chunk.data.len() as u64);
                }
                chunk.data
            })
        });
        let fed = feed(chunks, chunk_tx, Pace::idle(self.stall)).await;
        let unpacked = unpack.await.map_err(|e| ClientError::local(format!("unpacking task failed: {e}")))?;
        match fed {
            Fed::Failed(status) => return Err(failed(status)),
            Fed::Stalled | Fed::TooSlow => return Err(self.stalled(Step::Download)),
            Fed::Complete | Fed::ReaderStopped => {}
        }
        unpacked
    }
}

/// The files and bytes an upload of `roots` will send, for the progress bar's total;
/// `None` when the walk fails (packing then says why).
fn count_sources(roots: &[PackRoot], keep: &dyn Fn(&Candidate<'_>) -> bool) -> Option<(u64, u64)> {
    let options = lrpymrpc_archive::walk::WalkOptions { follow_symlinks: true, keep };
    lrpymrpc_archive::walk::count_files(roots, &options).ok()
}

/// `work`'s output, or `None` when `progress` stops moving for `limit` first.
async fn unless_stalled<T>(work: impl Future<Output = T>, progress: &AtomicU64, limit: Duration) -> Option<T> {
    let every = (limit / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::pin!(work);
    let (mut last, mut since) = (progress.load(Ordering::Relaxed), Instant::now());
    loop {
        tokio::select! {
            output = &mut work => return Some(output),
            () = tokio::time::sleep(every) => {
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= limit {
                    return None;
                }
            }
        }
    }
}

/// A server that accepted the connection but did not finish the handshake and the
/// first call in time.
/// A server that took the connection and said nothing within `--connect-timeout`: a
/// wedged server, not one starting up, so it is not tried again (a list moves on).
fn stalled_connect(peer: &Peer) -> ClientError {
    ClientError::Connect {
        peer: peer.to_string(),
        reason: format!(
            "no answer to connecting (TCP, the TLS handshake and the first call) within {} (--connect-timeout)",
            crate::output::seconds(peer.connect_timeout)
        ),
        hint: Some(
            "the server may be stopped, wedged or overloaded: check it; on a slow link give more --connect-timeout"
                .into(),
        ),
        transient: false,
        fault: TransportFault::TimedOut,
    }
}

/// What a download brought.
#[derive(Debug)]
pub struct Fetched {
    pub report: UnpackReport,
    /// RESULT paths (as given) that did not come back.
    pub missing: Vec<String>,
}

/// How the command's end was reported.
#[derive(Debug, Default)]
pub struct Reported {
    /// The server's `exit_status` field (with the marker: the wrapper's status).
    field: Option<ExitStatus>,
    /// The `--exit-status-marker` line: the command's own status.
    marker: Option<i32>,
}

impl Reported {
    /// The command's end as an outcome: a signal first (the marker cannot tell it),
    /// then the marker, then the field; `None` when nothing was reported.
    pub fn outcome(&self) -> Option<Result<(), ClientError>> {
        let code = match (self.field, self.marker) {
            (Some(ExitStatus { signal, .. }), _) if signal != 0 => {
                return Some(Err(ClientError::RemoteSignal { signal }));
            }
            (_, Some(code)) | (Some(ExitStatus { code, .. }), None) => code,
            (None, None) => return None,
        };
        Some(if code == 0 { Ok(()) } else { Err(ClientError::RemoteExit { code }) })
    }
}

/// "served from cache: ran 12m03s on 2026-11-20".
fn served_from_cache(hit: &lrpymrpc_proto::CacheHit) -> String {
    let took = lrpymrpc_units::clock_duration(Duration::from_millis(hit.ran_for_ms));
    match time::OffsetDateTime::from_unix_timestamp(hit.ran_at_unix_seconds) {
        Ok(when) => format!("served from cache: ran {took} on {}", when.date()),
        Err(_) => format!("served from cache: ran {took}"),
    }
}
