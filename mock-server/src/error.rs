//! Every way a job step fails, and the one place where each becomes a gRPC status.

use lrpymrpc_archive::{PackError, UnpackError};
use lrpymrpc_cas::TreeError;

use crate::store::BlobError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("`{0}` is not a job id (a UUID is expected)")]
    BadJobId(String),
    #[error("no job `{0}` on this server (it may have expired)")]
    UnknownJob(String),
    #[error("upload refused: {0}")]
    Unpack(#[from] UnpackError),
    #[error("the client sent nothing for {0}; upload abandoned")]
    UploadStalled(String),
    #[error(
        "the upload sent less than {} a second (--upload-min-rate); it was stopped and its slot freed",
        lrpymrpc_units::human_bytes(*.0)
    )]
    UploadTooSlow(u64),
    #[error("{limit} blob uploads at once {whose} (UploadBlobs streams); try again when one has ended")]
    TooManyBlobStreams { limit: usize, whose: &'static str },
    #[error("the job is busy: {why}")]
    InUse { why: &'static str },
    #[error("result path `{path}` refused: {reason}")]
    BadResultPath { path: String, reason: String },
    #[error("REPO_URL item `{item}` refused: {reason}")]
    BadRepoUrl { item: String, reason: String },
    /// A step asking for what this server could never give, or asking wrongly.
    #[error("{0}")]
    Resources(String),
    #[error("no Python interpreter (`python3` or `python`) on the server's PATH")]
    NoPython,
    #[error("{step} failed with {status}")]
    SetupFailed { step: String, status: String },
    #[error("cannot pack the results: {0}")]
    Pack(#[from] PackError),
    #[error("this server runs at most {max_jobs} jobs at once (--max-jobs) and all are taken; try again later")]
    Busy { max_jobs: usize },
    #[error(
        "this server runs at most {max_jobs_per_cn} jobs at once per certificate (--max-jobs-per-cn) and yours are \
         all taken; try again later"
    )]
    BusyForCn { max_jobs_per_cn: usize },
    #[error("client certificate CN=`{cn}` is not allowed to run jobs on this server (--allow-cn)")]
    NotAllowed { cn: String },
    #[error("no usable client certificate: {0}")]
    NoIdentity(String),
    #[error("the command was stopped: {}{limit}", step.as_ref().map(|s| format!("{s}: ")).unwrap_or_default())]
    Stopped { step: Option<String>, limit: crate::executor::limits::Limit },
    #[error("the server is shutting down and takes no new jobs; try again later")]
    Draining,
    /// The executor could not start the command (Slurm down or refusing the step).
    #[error("{0}")]
    NotStarted(String),
    /// A job's run lost across a server restart: how it ended is not known.
    #[error("{0}")]
    Lost(String),
    #[error("{what} failed on the server: {why}")]
    TaskFailed { what: &'static str, why: String },
    #[error("server-side I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob refused: {0}")]
    Blob(#[from] crate::store::BlobError),
    #[error("input tree refused: {0}")]
    Tree(#[from] lrpymrpc_cas::TreeError),
    #[error("digest function `{0}` is not spoken here; use sha256")]
    DigestFunction(String),
    #[error("result encoding `{0}` is not spoken here; use gzip, zstd or identity")]
    Encoding(String),
    #[error("content-addressed upload is off on this server (--no-cas)")]
    NoStore,
    #[error("this job's results come from the action cache, recorded for RESULT `{recorded}` only; ask for those")]
    OtherResults { recorded: String },
}

impl JobError {
    /// A blocking task that panicked or was cancelled.
    pub fn task(what: &'static str, error: tokio::task::JoinError) -> JobError {
        JobError::TaskFailed { what, why: error.to_string() }
    }
}

impl From<JobError> for Status {
    fn from(error: JobError) -> Status {
        let message = error.to_string();
        match &error {
            JobError::BadJobId(_)
            | JobError::BadResultPath { .. }
            | JobError::BadRepoUrl { .. }
            | JobError::Resources(_) => Status::invalid_argument(message),
            JobError::UnknownJob(_) => Status::not_found(message),
            JobError::Unpack(unpack) if unpack.is_out_of_space() => Status::resource_exhausted(message),
            JobError::Unpack(UnpackError::TooLarge { .. } | UnpackError::TooManyEntries { .. }) => {
                Status::resource_exhausted(message)
            }
            JobError::Unpack(UnpackError::Write { .. }) => Status::internal(message),
            JobError::Unpack(_) => Status::invalid_argument(message),
            JobError::UploadStalled(_) => Status::deadline_exceeded(message),
            JobError::UploadTooSlow(_) | JobError::TooManyBlobStreams { .. } => Status::resource_exhausted(message),
            JobError::InUse { .. } => Status::failed_precondition(message),
            JobError::NoPython | JobError::SetupFailed { .. } => Status::failed_precondition(message),
            JobError::Busy { .. } | JobError::BusyForCn { .. } => Status::resource_exhausted(message),
            JobError::NotAllowed { .. } => Status::permission_denied(message),
            JobError::NoIdentity(_) => Status::unauthenticated(message),
            JobError::Stopped { limit: crate::executor::limits::Limit::Memory(_), .. } => {
                Status::resource_exhausted(message)
            }
            JobError::Stopped { limit: crate::executor::limits::Limit::Shutdown, .. } => Status::unavailable(message),
            JobError::Stopped { .. } => Status::deadline_exceeded(message),
            JobError::Io(io) if is_out_of_space(io) => Status::resource_exhausted(message),
            JobError::Draining | JobError::NotStarted(_) => Status::unavailable(message),
            JobError::Lost(_) => Status::aborted(message),
            JobError::Pack(_) | JobError::Io(_) | JobError::TaskFailed { .. } => Status::internal(message),
            JobError::Blob(BlobError::Io(io)) if is_out_of_space(io) => Status::resource_exhausted(message),
            JobError::Blob(BlobError::Io(_)) => Status::internal(message),
            JobError::Blob(BlobError::TooLarge { .. } | BlobError::Full | BlobError::FullForCn) => {
                Status::resource_exhausted(message)
            }
            JobError::Blob(_) | JobError::DigestFunction(_) | JobError::Encoding(_) => {
                Status::invalid_argument(message)
            }
            JobError::Tree(TreeError::TooLarge(_) | TreeError::TooManyEntries(_)) => {
                Status::resource_exhausted(message)
            }
            JobError::Tree(TreeError::Write { .. }) => Status::internal(message),
            JobError::Tree(_) => Status::invalid_argument(message),
            JobError::NoStore => Status::unimplemented(message),
            JobError::OtherResults { .. } => Status::failed_precondition(message),
        }
    }
}

fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}
