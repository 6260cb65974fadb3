//! One job, step by step: connect, Upload (packing while sending), Execute (printing
//! lines as they arrive), Check, Download (unpacking while receiving into a staging
//! directory, then moving the results into place).

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use lrpymrpc_archive::bridge::{ChunkReader, ChunkWriter};
use lrpymrpc_archive::{
    Candidate, MtimePolicy, PackError, PackOptions, PackReport, PackRoot, UnpackOptions, UnpackReport, merge_tree,
    pack_tar_gz, sanitize_relative, unpack_tar_gz,
};
use lrpymrpc_proto::file_service_client::FileServiceClient;
use lrpymrpc_proto::{CheckRequest, DataChunk, DownloadRequest, ExecuteRequest, ExitStatus, OutputStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::connect::{classify, connect};
use crate::exit::{ClientError, ResultsError, Step};
use crate::job::Job;
use crate::output::{Output, Progress};
use crate::source;

type Client = FileServiceClient<Channel>;

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

/// The wait before the first retry; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

pub async fn run(job: &Job, out: &Output) -> Result<(), ClientError> {
    // Sources are chosen before connecting, so `--strict` refuses before anything is sent.
    let (roots, warnings) = source::select(&job.sources, &job.workdir);
    if let (true, Some(first)) = (job.strict, warnings.first()) {
        return Err(ClientError::Local {
            message: format!("--strict: {first}"),
            hint: Some("fix the --SOURCE list, or leave out --strict to skip such paths with a warning".into()),
        });
    }
    out.begin(Step::Connect);
    let channel = retrying(job, out, Step::Connect, || connect(&job.peer)).await?;
    out.end("");
    let client = FileServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);

    out.status(&format!("Compress source={}", job.sources.join(" ")));
    for warning in &warnings {
        out.warn(warning);
    }
    out.status("Upload");
    out.begin(Step::Upload);
    let (unique_id, report) =
        retrying(job, out, Step::Upload, || upload(client.clone(), job, roots.clone(), out)).await?;
    out.end(&format!("{} files, {}", report.files, bytes(report.content_bytes)));
    for (path, why) in &report.skipped {
        out.warn(&format!("`{}` not uploaded: {why}", path.display()));
    }
    let left_out = job.rules.left_out_vcs();
    if !left_out.is_empty() {
        let list: Vec<_> = left_out.iter().map(|p| p.display().to_string()).collect();
        out.note(&format!("left out version-control directories: {} (--include-vcs sends them)", list.join(", ")));
    }
    out.status(&format!("unique id={unique_id}"));

    out.status(&format!("pip install   ={}", job.repo_url));
    out.status(&format!("Execute target={}", job.command));
    out.begin(Step::Execute);
    let reported = execute(&mut client.clone(), job, &unique_id, out).await?;
    out.end("");
    let remote_outcome = reported.outcome();

    if job.no_results_on_failure && matches!(remote_outcome, Some(Err(_))) {
        out.note(
            "the remote command failed: results not fetched (--no-results-on-failure); earlier ones are as they were",
        );
        // A Check for no paths tells the server nothing will be fetched, so it can
        // remove the job now; a server that takes it otherwise changes nothing.
        let done = CheckRequest { unique_id: unique_id.clone(), result_dir: String::new() };
        let _ = client.clone().check(done).await;
        out.status("Finish.");
        return remote_outcome.unwrap_or(Ok(()));
    }
    out.status("Check result.");
    out.begin(Step::Check);
    let result_dir = job.results.join(" ");
    let request = CheckRequest { unique_id: unique_id.clone(), result_dir: result_dir.clone() };
    let has_stream = retrying(job, out, Step::Check, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            Ok(client.check(request).await.map_err(|s| classify(Step::Check, &job.peer, s))?.into_inner().has_stream)
        }
    })
    .await?;
    out.end("");
    if has_stream {
        out.status("Download data is exist.");
        out.begin(Step::Download);
        let request = DownloadRequest { unique_id, result_dir };
        let report = retrying(job, out, Step::Download, || download(client.clone(), job, request.clone(), out)).await?;
        out.end(&format!("{} files, {}", report.files, bytes(report.content_bytes)));
        out.status("Extract result.");
    } else {
        out.status("Download data is not exist.");
    }
    out.status("Finish.");
    match remote_outcome {
        Some(outcome) => outcome,
        None if job.exit_marker.is_some() => {
            out.warn(
                "no exit-status marker came back: the server may not run CMD with a POSIX shell; \
                 exiting 0 since the transfers succeeded",
            );
            Ok(())
        }
        None => {
            out.warn(
                "the server does not report the command's exit status; exiting 0 since the transfers succeeded \
                 (--exit-status-marker recovers it from a server that runs CMD with a shell)",
            );
            Ok(())
        }
    }
}

/// Runs a step that is safe to repeat, again after a transient failure (the server
/// unreachable, the connection lost), waiting longer each time.
async fn retrying<T, F, Fut>(job: &Job, out: &Output, step: Step, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut delay = FIRST_RETRY_DELAY;
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && tries < job.retries => {
                tries += 1;
                out.warn(&format!(
                    "{error}; retrying {step} in {} ({tries} of {} retries)",
                    crate::output::seconds(delay),
                    job.retries
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            outcome => return outcome,
        }
    }
}

/// "1.2 MiB", for timings.
fn bytes(count: u64) -> String {
    match count {
        0..1024 => format!("{count} B"),
        1024..1_048_576 => format!("{:.1} KiB", count as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", count as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", count as f64 / 1_073_741_824.0),
    }
}

/// Packs the sources on a blocking thread while the chunks stream to the server.
async fn upload(
    mut client: Client,
    job: &Job,
    roots: Vec<PackRoot>,
    out: &Output,
) -> Result<(String, PackReport), ClientError> {
    let (chunk_tx, chunk_rx) = mpsc::channel(QUEUED_CHUNKS);
    let rules = job.rules.clone();
    let level = job.gzip_level;
    // Bytes are counted as they go on the wire; files as they go into the archive.
    let progress = out.progress("upload");
    let sent = progress.clone();
    let pack = tokio::task::spawn_blocking(move || {
        let keep = |candidate: &Candidate<'_>| rules.keeps(candidate);
        let files = std::cell::Cell::new(0);
        let on_file = |_size: u64| {
            files.set(files.get() + 1);
            progress.set_files(files.get());
        };
        let options = PackOptions { follow_symlinks: true, keep: &keep, on_file: &on_file, level };
        let (report, writer) = pack_tar_gz(&roots, &options, ChunkWriter::new(chunk_tx, UPLOAD_CHUNK_BYTES))?;
        writer.finish().map_err(PackError::Write)?;
        Ok::<_, PackError>(report)
    });
    let chunks = ReceiverStream::new(chunk_rx).map(move |data: Vec<u8>| {
        sent.add_bytes(data.len() as u64);
        DataChunk { data }
    });
    let (uploaded, packed) = tokio::join!(client.upload(chunks), pack);
    let packed = packed.map_err(|e| ClientError::local(format!("packing task failed: {e}")))?;
    match (uploaded, packed) {
        (Ok(response), Ok(report)) => Ok((response.into_inner().unique_id, report)),
        // The packer only sees a closed stream; the RPC knows why it closed.
        (Err(status), Err(PackError::Write(_))) | (Err(status), Ok(_)) => {
            Err(classify(Step::Upload, &job.peer, status))
        }
        (_, Err(error)) => Err(ClientError::Local { message: format!("cannot pack the sources: {error}"), hint: None }),
    }
}

/// How the command's end was reported.
#[derive(Debug, Default)]
struct Reported {
    /// The server's `exit_status` field (with the marker: the wrapper's status).
    field: Option<ExitStatus>,
    /// The `--exit-status-marker` line: the command's own status.
    marker: Option<i32>,
}

impl Reported {
    /// The command's end as an outcome: a signal first (the marker cannot tell it),
    /// then the marker, then the field; `None` when nothing was reported.
    fn outcome(&self) -> Option<Result<(), ClientError>> {
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

/// Prints the command's output as it arrives and returns how its end was reported.
/// Never repeated: the command may not be safe to run twice.
async fn execute(client: &mut Client, job: &Job, unique_id: &str, out: &Output) -> Result<Reported, ClientError> {
    let command_opt = match &job.exit_marker {
        Some(marker) => marker.wrap(&job.command),
        None => job.command.clone(),
    };
    let request = ExecuteRequest { unique_id: unique_id.to_string(), tool: job.repo_url.clone(), command_opt };
    let failed = |status| classify(Step::Execute, &job.peer, status);
    let mut lines = client.execute(request).await.map_err(failed)?.into_inner();
    let mut reported = Reported::default();
    while let Some(response) = lines.message().await.map_err(failed)? {
        if let Some(status) = response.exit_status {
            reported.field = Some(status);
            continue;
        }
        let mut text = response.message.as_str();
        if let Some((before, status)) = job.exit_marker.as_ref().and_then(|m| m.strip(text)) {
            reported.marker = Some(status);
            if before.is_empty() {
                continue;
            }
            text = before;
        }
        match response.stream() {
            OutputStream::Stderr => out.remote_stderr(text),
            OutputStream::Stdout | OutputStream::Unspecified => out.remote(text),
        }
    }
    Ok(reported)
}

/// Unpacks the result stream into a staging directory inside the destination, then
/// moves it into place: a failed, refused or cancelled download leaves earlier results
/// as they were and no staging directory behind.
async fn download(
    mut client: Client,
    job: &Job,
    request: DownloadRequest,
    out: &Output,
) -> Result<UnpackReport, ClientError> {
    let dest = job.result_dir.clone();
    let limits = job.result_limits;
    let local = |what: &'static str, path: &Path, source: io::Error| {
        ClientError::Results(ResultsError::Local { what, path: path.to_path_buf(), source })
    };
    std::fs::create_dir_all(&dest).map_err(|e| local("create", &dest, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".lrpymrpc-staging-")
        .tempdir_in(&dest)
        .map_err(|e| local("create a staging directory in", &dest, e))?;
    let failed = |status| classify(Step::Download, &job.peer, status);
    let mut stream = client.download(request).await.map_err(failed)?.into_inner();

    let (chunk_tx, chunk_rx) = mpsc::channel(QUEUED_CHUNKS);
    // The unpacking thread owns the staging directory and the move into place, so a
    // cancelled job (Ctrl-C drops this future) still removes it when the thread ends.
    // Only what was asked for may land: a hostile server's `Makefile` or
    // `.git/hooks/pre-commit` beside the results is refused.
    let only = job.results.iter().filter_map(|name| sanitize_relative(name.as_bytes()).ok()).collect();
    let unpack = tokio::task::spawn_blocking(move || {
        let options = UnpackOptions { limits, mtime: MtimePolicy::Now, only: Some(only) };
        let report = unpack_tar_gz(ChunkReader::new(chunk_rx), staging.path(), &options)
            .map_err(ResultsError::from)?;
        merge_tree(staging.path(), &dest).map_err(ResultsError::from)?;
        Ok::<_, ClientError>(report)
    });
    let progress: Progress = out.progress("download");
    let mut network_error = None;
    loop {
        let item = match stream.message().await {
            Ok(Some(chunk)) => {
                progress.add_bytes(chunk.data.len() as u64);
                Ok(chunk.data)
            }
            Ok(None) => break,
            Err(status) => {
                let error = io::Error::other(status.message().to_string());
                network_error = Some(status);
                Err(error)
            }
        };
        let stop = item.is_err();
        if chunk_tx.send(item).await.is_err() || stop {
            break;
        }
    }
    drop(chunk_tx);
    drop(stream);
    let unpacked = unpack.await.map_err(|e| ClientError::local(format!("unpacking task failed: {e}")))?;
    if let Some(status) = network_error {
        return Err(failed(status));
    }
    unpacked
}
