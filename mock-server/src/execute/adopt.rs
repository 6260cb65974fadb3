//! Adoption (issue 30): the durable jobs a server that is gone (killed, crashed, or
//! upgraded with `--keep-jobs-on-exit`) left, taken on by the next server on the same
//! root. At start each spool on disk is read and checked (`jobs/left_behind.rs`); a job
//! whose spool is trusted and whose directory is there is entered in the job table
//! again and its spool served from where it was, so its client, reconnecting, resumes
//! after the last line it printed. Its command still running is followed from its
//! supervisor's files (`executor/supervised.rs`), the output messages already numbered
//! skipped, and holds again what it asked of the server's queue; a run that ended
//! meanwhile is followed to its status; one whose run is gone ends with a message that
//! says so, never as a success.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::JobError;
use crate::execute::StepEnd;
use crate::executor::supervised::{Adopted, Supervised};
use crate::executor::{Executor, JobEvent, ProcessEnd, TimeLimits};
use crate::jobs::CommandEnd;
use crate::jobs::left_behind::{Found, command_end_of, is_end};
use crate::jobs::spool_file::{self, Entry};
use crate::resources::Ask;
use crate::state::State;

/// How long adoption waits for what a run asked of the queue before following it
/// without (a server restarted with less capacity than its runs hold).
const GRANT_WAIT: Duration = Duration::from_secs(1);

/// Takes on every job found, each on a task of its own.
pub fn adopt_all(state: &Arc<State>, found: Vec<Found>) {
    for found in found {
        tokio::spawn(adopt(state.clone(), found));
    }
}

async fn adopt(state: Arc<State>, found: Found) {
    let (start, numbered_before) = found.replay_from();
    let Found { header, entries, run, complete } = found;
    let id = header.id.clone();
    let owner = header.owner.clone();
    let cn = owner.clone().unwrap_or_else(|| "-".into());
    let (_dir, job_use, command_run) = match state.jobs.adopt(&id, owner.as_deref()) {
        Ok(adopted) => adopted,
        Err(error) => {
            warn!(job = %id, "the job cannot be taken on: {error}");
            spool_file::remove(&state.config.root, &id);
            return;
        }
    };
    let already = entries
        .iter()
        .rev()
        .find_map(|entry| match entry {
            Entry::Numbered { output_count, .. } => Some(*output_count),
            _ => None,
        })
        .unwrap_or(0)
        .saturating_sub(numbered_before);
    let last_end = entries.last().and_then(|entry| match entry {
        Entry::Numbered { record, .. } if is_end(record) => Some(command_end_of(record)),
        _ => None,
    });
    let (tx, rx) = mpsc::channel(64);
    let spool = state.spools.adopt(&header, entries, rx);
    // Its client has its --reattach-grace to come back, as after a lost connection.
    state.spools.await_follower(&spool);
    if complete {
        info!(job = %id, cn = cn.as_str(), "took on a job an earlier server left; its command had ended");
        command_run.ended(last_end.unwrap_or(CommandEnd::Failed));
        return;
    }
    let started = std::time::Instant::now();
    let supervised = run.as_deref().and_then(|run| Supervised::adopt(&state.config.root, run, start, header.merged));
    // (`left_behind::find` takes on only a job that ended or whose run started.)
    let Some((supervised, chunks)) = supervised else {
        let why = "the server restarted and the job's command was not running any more (its supervisor was \
                   killed): how it ended is not known; run it again";
        warn!(job = %id, cn = cn.as_str(), "{why}");
        let _ = tx.send(Err(JobError::Lost(why.to_string()))).await;
        command_run.ended(CommandEnd::Failed);
        return;
    };
    info!(job = %id, cn = cn.as_str(), skipped = already, "took on a running job an earlier server left");
    let capacity = state.resources.capacity().clone();
    let needs = Ask::from_wire(header.needs.as_ref(), &capacity, owner.as_deref().unwrap_or_default())
        .unwrap_or_else(|_| Ask { cpus: capacity.default_cpus, ..Ask::default() });
    let grant = tokio::time::timeout(GRANT_WAIT, state.resources.acquire(&needs, |_| {})).await.ok();
    if grant.is_none() {
        warn!(job = %id, "what the adopted job holds is not free here (less capacity than before?): it runs on");
    }
    // The command's output messages already numbered are skipped; the rest goes on.
    let (events, mut replayed) = mpsc::channel::<Result<JobEvent, JobError>>(64);
    let forward = tokio::spawn(async move {
        let mut skip = already;
        loop {
            tokio::select! {
                event = replayed.recv() => {
                    let Some(event) = event else { break };
                    if skip > 0 && matches!(event, Ok(JobEvent::Line { .. } | JobEvent::Progress { .. })) {
                        skip -= 1;
                        continue;
                    }
                    // A checkpoint among what was numbered before would be written down
                    // with the count of now: only those after it are.
                    if skip > 0 && matches!(event, Ok(JobEvent::Checkpoint { .. })) {
                        continue;
                    }
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
                // The spool was cancelled (Cancel, or nobody came back): the run stops.
                () = tx.closed() => break,
            }
        }
    });
    let ran_for = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(header.started_unix_ms))
        .unwrap_or_default();
    let limits = TimeLimits {
        wall: state.config.job_timeout.saturating_sub(ran_for).max(Duration::from_secs(1)),
        idle: state.config.idle_timeout,
    };
    // Followed by the executor that started it (a server now configured otherwise
    // follows a Slurm step's srun as a local run).
    let executor: &dyn Executor = match &state.farm {
        Some(farm) if farm.started(&header.executor) => farm.executor(),
        _ => &state.host,
    };
    let adopted =
        Adopted { job: id.clone(), run: supervised, chunks, merged: header.merged, progress: header.progress };
    let end = executor
        .follow_adopted(adopted, &events, limits)
        .await
        .unwrap_or_else(|error| ProcessEnd::Lost(format!("the run taken on could not be followed: {error}")));
    let ended = crate::execute::step::command_ended(end, &events).await;
    let step_end = match ended {
        Ok(step_end) => step_end,
        Err(error) => {
            let message = error.to_string();
            let _ = events.send(Err(error)).await;
            StepEnd::Failed(message)
        }
    };
    drop(events);
    let _ = forward.await;
    drop(grant);
    command_run.ended(crate::execute::call::command_end(&step_end));
    crate::execute::call::note_end(&state, &id, &cn, &step_end, started);
    drop(job_use);
}
