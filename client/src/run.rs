//! One job, step by step: connect, Upload (packing while sending), Execute (printing
//! lines as they arrive), Check, Download (unpacking while receiving into a staging
//! directory, then moving the results into place).

use std::io;
use std::path::{Path, PathBuf};

use lrpymrpc_archive::bridge::{CHANNEL_CHUNKS, ChunkReader, ChunkWriter};
use lrpymrpc_archive::{
    Limits, MtimePolicy, PackError, PackOptions, PackReport, PackRoot, UnpackOptions, UnpackReport, merge_tree,
    pack_tar_gz, unpack_tar_gz,
};
use lrpymrpc_proto::file_service_client::FileServiceClient;
use lrpymrpc_proto::{CHUNK_SIZE, CheckRequest, DataChunk, DownloadRequest, ExecuteRequest, ExitStatus, OutputStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::connect::{classify, connect};
use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::source::{self, SourceFilter};

type Client = FileServiceClient<Channel>;

/// gzip level for uploads: level 1 compresses source text well at several times the
/// speed of the default level, which matters more than ratio on a LAN.
const UPLOAD_GZIP_LEVEL: u32 = 1;

/// The largest message accepted from the server; generous, since the Python
/// server's chunk size is not public.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub async fn run(job: &Job) -> Result<(), ClientError> {
    let out = Output::new(&job.host, &job.port_text);
    let channel = connect(job).await?;
    let mut client = FileServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);

    out.line(&format!("Compress source={}", job.sources.join(" ")));
    let (roots, warnings) = source::select(&job.sources, &job.workdir);
    for warning in &warnings {
        out.warn(warning);
    }
    out.line("Upload");
    let (unique_id, report) = upload(&mut client, job, roots).await?;
    for (path, why) in &report.skipped {
        out.warn(&format!("`{}` not uploaded: {why}", path.display()));
    }
    out.line(&format!("unique id={unique_id}"));

    out.line(&format!("pip install   ={}", job.repo_url));
    out.line(&format!("Execute target={}", job.command));
    let exit_status = execute(&mut client, job, &unique_id, &out).await?;

    out.line("Check result.");
    let result_dir = job.results.join(" ");
    let request = CheckRequest { unique_id: unique_id.clone(), result_dir: result_dir.clone() };
    let has_stream = client.check(request).await.map_err(|s| classify(Step::Check, job, s))?.into_inner().has_stream;
    if has_stream {
        out.line("Download data is exist.");
        download(&mut client, job, DownloadRequest { unique_id, result_dir }).await?;
        out.line("Extract result.");
    } else {
        out.line("Download data is not exist.");
    }
    out.line("Finish.");
    match exit_status {
        None => {
            out.warn("the server does not report the command's exit status; exiting 0 since the transfers succeeded");
            Ok(())
        }
        Some(ExitStatus { signal, .. }) if signal != 0 => Err(ClientError::RemoteSignal { signal }),
        Some(ExitStatus { code: 0, .. }) => Ok(()),
        Some(ExitStatus { code, .. }) => Err(ClientError::RemoteExit { code }),
    }
}

/// Packs the sources on a blocking thread while the chunks stream to the server.
async fn upload(client: &mut Client, job: &Job, roots: Vec<PackRoot>) -> Result<(String, PackReport), ClientError> {
    let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let filter: SourceFilter = job.filter.clone();
    let pack = tokio::task::spawn_blocking(move || {
        let keep = |name: &Path| filter.keeps(name);
        let options = PackOptions { follow_symlinks: true, keep_file: &keep, level: UPLOAD_GZIP_LEVEL };
        let (report, writer) = pack_tar_gz(&roots, &options, ChunkWriter::new(chunk_tx, CHUNK_SIZE))?;
        writer.finish().map_err(PackError::Write)?;
        Ok::<_, PackError>(report)
    });
    let chunks = ReceiverStream::new(chunk_rx).map(|data| DataChunk { data });
    let (uploaded, packed) = tokio::join!(client.upload(chunks), pack);
    let packed = packed.map_err(|e| ClientError::local(format!("packing task failed: {e}")))?;
    match (uploaded, packed) {
        (Ok(response), Ok(report)) => Ok((response.into_inner().unique_id, report)),
        // The packer only sees a closed stream; the RPC knows why it closed.
        (Err(status), Err(PackError::Write(_))) | (Err(status), Ok(_)) => Err(classify(Step::Upload, job, status)),
        (_, Err(error)) => Err(ClientError::Local { message: format!("cannot pack the sources: {error}"), hint: None }),
    }
}

/// Prints the command's output as it arrives; returns its exit status when the server
/// reports one (servers predating that extension do not).
async fn execute(
    client: &mut Client,
    job: &Job,
    unique_id: &str,
    out: &Output,
) -> Result<Option<ExitStatus>, ClientError> {
    let request = ExecuteRequest {
        unique_id: unique_id.to_string(),
        tool: job.repo_url.clone(),
        command_opt: job.command.clone(),
    };
    let failed = |status| classify(Step::Execute, job, status);
    let mut lines = client.execute(request).await.map_err(failed)?.into_inner();
    let mut exit_status = None;
    while let Some(response) = lines.message().await.map_err(failed)? {
        if let Some(status) = response.exit_status {
            exit_status = Some(status);
            continue;
        }
        match response.stream() {
            OutputStream::Stderr => out.line_stderr(&response.message),
            OutputStream::Stdout | OutputStream::Unspecified => out.line(&response.message),
        }
    }
    Ok(exit_status)
}

/// Unpacks the result stream into a staging directory inside the destination, then
/// moves it into place: a failed or refused download leaves earlier results as they were.
async fn download(client: &mut Client, job: &Job, request: DownloadRequest) -> Result<UnpackReport, ClientError> {
    let dest = job.result_dir.clone();
    let local = |what: &str, path: &Path, error: io::Error| ClientError::Results {
        message: format!("cannot {what} `{}`: {error}", path.display()),
    };
    std::fs::create_dir_all(&dest).map_err(|e| local("create", &dest, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".lrpymrpc-staging-")
        .tempdir_in(&dest)
        .map_err(|e| local("create a staging directory in", &dest, e))?;
    let failed = |status| classify(Step::Download, job, status);
    let mut stream = client.download(request).await.map_err(failed)?.into_inner();

    let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let staging_path: PathBuf = staging.path().to_path_buf();
    let unpack = tokio::task::spawn_blocking(move || {
        let options = UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::Now };
        let report = unpack_tar_gz(ChunkReader::new(chunk_rx), &staging_path, &options)?;
        Ok::<_, lrpymrpc_archive::UnpackError>(report)
    });
    let mut network_error = None;
    loop {
        let item = match stream.message().await {
            Ok(Some(chunk)) => Ok(chunk.data),
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
    let report = unpacked.map_err(|e| ClientError::Results { message: e.to_string() })?;
    let staged = staging.path().to_path_buf();
    tokio::task::spawn_blocking(move || merge_tree(&staged, &dest))
        .await
        .map_err(|e| ClientError::local(format!("moving results task failed: {e}")))?
        .map_err(|e| ClientError::Results { message: e.to_string() })?;
    drop(staging);
    Ok(report)
}
