//! Durable jobs, the session's side (a child of `remote/session/`): following a run again
//! after the last message shown (`Follow`), cancelling it on purpose (`Cancel`, since
//! a lost call no longer does), and listing the caller's jobs (`ListJobs`). The
//! reconnecting is the steps' (`steps/follow.rs`); `attach`, `jobs` and `cancel` are
//! subcommands (`commands/durable_jobs.rs`).

use lrpymrpc_proto::v1::{CancelRequest, FollowRequest, JobSummary, ListJobsRequest, StatusRequest, StatusResponse};

use super::{Reported, Session};
use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;

/// How far a run's output got: the number of the last message shown (0: none yet)
/// and how the command's end was reported.
#[derive(Debug, Default)]
pub struct Followed {
    pub last_seq: u64,
    pub reported: Reported,
}

impl Session {
    /// Whether the server keeps a run going when its call is lost (`Features.durable_jobs`).
    pub fn has_durable_jobs(&self) -> bool {
        self.capabilities().and_then(|c| c.features.as_ref()).is_some_and(|f| f.durable_jobs)
    }

    /// Follows job `unique_id` after `followed.last_seq` (or from now, `from_end`),
    /// printing as `execute` does, until its end. A job that is gone is said so.
    pub async fn follow(
        &self,
        job: &Job,
        unique_id: &str,
        from_end: bool,
        out: &Output,
        followed: &mut Followed,
    ) -> Result<(), ClientError> {
        let request = FollowRequest { unique_id: unique_id.to_string(), after_seq: followed.last_seq, from_end };
        let mut extensions = self.extensions.clone();
        let lines = tokio::time::timeout(self.stall, extensions.follow(request))
            .await
            .map_err(|_| self.stalled(Step::Execute))?
            .map_err(|status| self.job_gone(unique_id, status))?
            .into_inner();
        self.show_output(lines, job, out, followed).await
    }

    /// Stops the command of the caller's job now; `false` when it had already ended.
    pub async fn cancel(&self, unique_id: &str) -> Result<bool, ClientError> {
        let request = CancelRequest { unique_id: unique_id.to_string() };
        let mut extensions = self.extensions.clone();
        let answer = tokio::time::timeout(self.stall, extensions.cancel(request))
            .await
            .map_err(|_| self.stalled(Step::Execute))?
            .map_err(|status| self.job_gone(unique_id, status))?;
        Ok(answer.into_inner().was_running)
    }

    /// The caller's durable jobs on this server, oldest first.
    pub async fn list_jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        Ok(self.list_jobs_with_page().await?.0)
    }

    /// [`Session::list_jobs`], and the server's status page port (0: none).
    pub async fn list_jobs_with_page(&self) -> Result<(Vec<JobSummary>, u32), ClientError> {
        let mut extensions = self.extensions.clone();
        let answer = tokio::time::timeout(self.stall, extensions.list_jobs(ListJobsRequest {}))
            .await
            .map_err(|_| self.stalled(Step::Connect))?
            .map_err(|status| self.failed(Step::Connect, status))?
            .into_inner();
        Ok((answer.jobs, answer.page_port))
    }

    /// Whether the server answers `Status` (`Features.status`).
    pub fn has_status(&self) -> bool {
        self.capabilities().and_then(|c| c.features.as_ref()).is_some_and(|f| f.status)
    }

    /// What the server's compute is doing now (`Status`).
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        let mut extensions = self.extensions.clone();
        let answer = tokio::time::timeout(self.stall, extensions.status(StatusRequest {}))
            .await
            .map_err(|_| self.stalled(Step::Connect))?
            .map_err(|status| self.failed(Step::Connect, status))?;
        Ok(answer.into_inner())
    }

    /// NOT_FOUND for a job the caller followed: said as what it means.
    fn job_gone(&self, unique_id: &str, status: tonic::Status) -> ClientError {
        match status.code() {
            tonic::Code::NotFound => ClientError::Server {
                step: Step::Execute,
                peer: self.peer().to_string(),
                code: tonic::Code::NotFound,
                message: format!("job {unique_id} is gone: {}", status.message()),
            },
            _ => self.failed(Step::Execute, status),
        }
    }
}
