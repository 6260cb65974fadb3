//! One Execute call's work once its handler has read the request: the action cache
//! asked (and the run served from it, or recorded), else the step run; then the job's
//! end noted in the job table, the metrics and the log. The handler (`rpc/files.rs`)
//! only reads the request, starts this on a task and returns the stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::execute::cached::{self, CacheAsk, Plan};
use crate::execute::repo_url::Requirement;
use crate::execute::{self, StepEnd};
use crate::executor::{Events, JobEvent, TimeLimits, describe};
use crate::jobs::{CommandEnd, CommandRun, Done, JobUse};
use crate::resources::{Ask, Grant};
use crate::state::State;

/// What one Execute call asked, read and checked by its handler.
pub struct Call {
    pub id: String,
    /// The caller as logs and metrics name it.
    pub cn: String,
    /// The caller's CN (empty without one): whose cached runs it may be served.
    pub owner: String,
    pub dir: PathBuf,
    pub requirements: Vec<Requirement>,
    pub command: String,
    /// One ordered stream (as the Python server sends), or stdout and stderr apart.
    pub merged: bool,
    pub progress_updates: bool,
    /// A durable run (our clients): its command may outlive this server.
    pub durable: bool,
    /// The cores, memory and licenses the command needs (the defaults when the caller
    /// asked for none), checked to fit the server.
    pub needs: Ask,
    /// What the caller asked of the action cache, if anything.
    pub ask: Option<CacheAsk>,
    /// The command's run, ended here whatever happens.
    pub run: CommandRun,
    /// Holds the job in use until the call's work is over.
    pub job_use: JobUse,
}

/// Does the call's work, sending its events to `tx`.
pub async fn run(state: Arc<State>, call: Call, tx: Events) {
    let started = Instant::now();
    // The environment first (pip, when it is not built yet): the cache names the run
    // by the environment as installed, and pip's lines are never part of a record.
    let environment = match execute::environment(&call.dir, &call.requirements, &context(&state, &call, &tx)).await {
        Ok(environment) => environment,
        Err(ended) => return finish(&state, call, &ended, started),
    };
    let plan = match &call.ask {
        Some(ask) => {
            let run = cached::Run {
                job: &call.id,
                cn: &call.owner,
                input_root: call.run.pristine_input_root(),
                environment: environment.identity(),
                command: &call.command,
                merged: call.merged,
            };
            cached::plan(&state, run, ask, &tx).await
        }
        None => Plan::Off,
    };
    match (plan, call.ask.clone()) {
        (Plan::Serve(record, followed), Some(ask)) => {
            let served = cached::serve(&state, &call.id, (&record, followed), &ask, call.merged, &tx).await;
            call.run.ended(match &served {
                Ok(()) => CommandEnd::Exited { code: 0, signal: 0 },
                Err(_) => CommandEnd::Failed,
            });
            report_served(&state, &call.id, &call.cn, served, &tx, started).await;
        }
        (Plan::Gone, _) => {
            call.run.ended(CommandEnd::Cancelled);
            state.jobs.finished(&call.id, Done::Cancelled);
            warn!(job = %call.id, cn = call.cn.as_str(), "client went away while waiting for the same step");
        }
        (Plan::Record(key, flight), Some(ask)) => {
            let Some(grant) = granted(&state, &call.id, &call.needs, &tx).await else {
                return finish(&state, call, &StepEnd::Cancelled, started);
            };
            let (events, recording) =
                cached::recorder(state.clone(), call.id.clone(), call.dir.clone(), (key, flight), ask, tx.clone());
            let ended =
                execute::command(&call.dir, &call.command, &environment, &grant, &context(&state, &call, &events))
                    .await;
            // The recorder forwards what is left, and keeps the record, before the
            // command counts as ended.
            drop(events);
            let _ = recording.await;
            drop(grant);
            finish(&state, call, &ended, started);
        }
        _ => {
            let Some(grant) = granted(&state, &call.id, &call.needs, &tx).await else {
                return finish(&state, call, &StepEnd::Cancelled, started);
            };
            let ended =
                execute::command(&call.dir, &call.command, &environment, &grant, &context(&state, &call, &tx)).await;
            // Held until the command's processes are gone, which they are now.
            drop(grant);
            finish(&state, call, &ended, started);
        }
    }
}

/// Waits in the server's one queue until all the step needs is free, telling the
/// client why it waits each time that changes (and the job table, for `ListJobs`);
/// `None` when the client went away.
async fn granted(state: &State, id: &str, needs: &Ask, tx: &Events) -> Option<Grant> {
    let (said_tx, mut said) = tokio::sync::mpsc::unbounded_channel();
    let acquire = state.resources.acquire(needs, move |why| drop(said_tx.send(why)));
    tokio::pin!(acquire);
    let granted = loop {
        tokio::select! {
            grant = &mut acquire => break Some(grant),
            Some(why) = said.recv() => {
                state.jobs.set_waiting(id, Some(why.clone()));
                let _ = tx.send(Ok(JobEvent::Note(why))).await;
            }
            () = tx.closed() => break None,
        }
    };
    state.jobs.set_waiting(id, None);
    granted
}

/// The step's end in the job table, the metrics and the log; the job is no longer in
/// use after this (the caller drops the environment's lease when it returns).
fn finish(state: &State, call: Call, ended: &StepEnd, started: Instant) {
    call.run.ended(command_end(ended));
    note_end(state, &call.id, &call.cn, ended, started);
    drop(call.job_use);
}

/// What serving the run from the action cache's record came to, in the metrics and
/// the log (and, failed, to the caller).
async fn report_served(
    state: &State,
    id: &str,
    cn: &str,
    served: Result<(), crate::error::JobError>,
    tx: &Events,
    started: Instant,
) {
    state.metrics.finished(cn, if served.is_ok() { "cached" } else { "error" });
    match served {
        Ok(()) => info!(job = %id, cn, ms = millis(started), "served from the action cache"),
        Err(error) => {
            warn!(job = %id, cn, reason = %error, "serving from the action cache failed");
            let _ = tx.send(Err(error)).await;
        }
    }
}

/// What the step needs of the server to run this call: environment, pip, the command
/// through the executor seam, its events going to `events`.
fn context<'a>(state: &'a State, call: &'a Call, events: &'a Events) -> execute::Context<'a> {
    let config = &state.config;
    execute::Context {
        events,
        metrics: &state.metrics,
        limits: TimeLimits { wall: config.job_timeout, idle: config.idle_timeout },
        executor: state.executor(),
        host: &state.host,
        env_cache: state.env_cache.as_ref(),
        env_scope: if config.share_env_cache { "*" } else { &call.cn },
        sandbox: config.sandbox.as_ref(),
        sandbox_network: config.sandbox_network,
        pip: &config.pip,
        merged_output: call.merged,
        durable: call.durable,
        progress_updates: call.progress_updates,
        job_env: &config.job_env,
    }
}

/// How the step ended, as the job table keeps it.
pub(crate) fn command_end(ended: &StepEnd) -> CommandEnd {
    match ended {
        StepEnd::Ran(status) => {
            use std::os::unix::process::ExitStatusExt;
            CommandEnd::Exited { code: status.code().unwrap_or(0), signal: status.signal().unwrap_or(0) }
        }
        StepEnd::Cancelled => CommandEnd::Cancelled,
        StepEnd::Failed(_) => CommandEnd::Failed,
    }
}

/// The run's end, in the metrics and the log (a cancelled one: the job is finished).
pub(crate) fn note_end(state: &State, id: &str, cn: &str, ended: &StepEnd, started: Instant) {
    let ms = millis(started);
    state.metrics.step("command", started.elapsed());
    let outcome = match ended {
        StepEnd::Ran(status) if status.success() => "success",
        StepEnd::Ran(status) if status.code().is_some() => "failure",
        StepEnd::Ran(_) => "signal",
        StepEnd::Cancelled => "cancelled",
        StepEnd::Failed(_) => "error",
    };
    state.metrics.finished(cn, outcome);
    match ended {
        StepEnd::Ran(status) => info!(job = %id, cn, status = %describe(status), ms, "command ended"),
        StepEnd::Cancelled => {
            state.jobs.finished(id, Done::Cancelled);
            warn!(job = %id, cn, ms, "client went away; command stopped");
        }
        StepEnd::Failed(why) => warn!(job = %id, cn, ms, reason = why.as_str(), "execute failed"),
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
