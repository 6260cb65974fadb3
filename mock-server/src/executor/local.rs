//! The local executor: runs each launch on this machine as the leader of a process
//! group of its own (in a PID namespace of its own when the server can make one, see
//! `contain.rs`), streamed by `process_run.rs`; when the client goes away or a limit
//! runs out, the whole group is killed, not just the shell, so
//! `sh -c 'sleep 1000 & sleep 1000'` leaves nothing behind.

use std::io;
use std::sync::Arc;

use tokio::process::Command;

use crate::executor::confine::Confinement;
use crate::executor::process_run::{self, Runs, Streaming};
use crate::executor::supervised::{self, Adopted, Prepared, Supervised};
use crate::executor::{Events, Executor, JobEvent, Launch, Limit, ProcessEnd, TimeLimits};

/// Runs launches as local process groups, each under its supervisor.
#[derive(Debug, Clone, Default)]
pub struct LocalExecutor {
    /// Put each run in a PID namespace of its own (`contain.rs`).
    contain: bool,
    /// The job root: each run's directory is made under it (`supervised.rs`).
    root: std::path::PathBuf,
    /// The runs in progress, so a shutdown can stop them all.
    runs: Arc<Runs>,
}

impl LocalExecutor {
    pub fn new(contain: bool, root: &std::path::Path) -> LocalExecutor {
        LocalExecutor { contain, root: root.to_path_buf(), runs: Arc::default() }
    }

    fn command(&self, launch: Launch, confinement: &Confinement, supervised: &Prepared) -> Command {
        let mut command = Command::new(launch.program);
        command.args(launch.args).current_dir(launch.dir).env_clear().envs(launch.env);
        // First: the hooks after it run in the command's process only.
        supervised.supervise(&mut command);
        // Before the namespace's processes are forked, so all of them inherit it.
        confinement.apply(&mut command);
        if self.contain {
            crate::executor::contain::contain(&mut command);
        }
        command
    }
}

#[tonic::async_trait]
impl Executor for LocalExecutor {
    async fn run(&self, launch: Launch, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let streaming = Streaming { merged: launch.merged_output, progress: launch.progress_updates, own_line: None };
        let confinement = Confinement::new(&launch.confine)?;
        let prepared = supervised::prepare(&self.root, launch.merged_output)?;
        if let Some(group) = confinement.group() {
            prepared.record_group(group)?;
        }
        let adoptable = launch.adoptable;
        let command = self.command(launch, &confinement, &prepared);
        let (mut run, chunks) = prepared.spawn(command)?;
        if adoptable {
            // Before any of its output: a spool marks where the command's output begins.
            run.set_adoptable();
            let _ = events.send(Ok(JobEvent::RunStarted { run: run.name() })).await;
        }
        let end = follow(&mut run, chunks, streaming, events, limits, &self.runs).await?;
        let end = said_as_memory(end, Some(&confinement));
        ended(confinement).await;
        Ok(end)
    }

    async fn follow_adopted(&self, adopted: Adopted, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let streaming = Streaming { merged: adopted.merged, progress: adopted.progress, own_line: None };
        let mut run = adopted.run;
        let confinement = run.recorded_group().and_then(|group| Confinement::adopt(&group));
        let end = follow(&mut run, adopted.chunks, streaming, events, limits, &self.runs).await?;
        let end = said_as_memory(end, confinement.as_ref());
        if let Some(confinement) = confinement {
            ended(confinement).await;
        }
        Ok(end)
    }

    async fn stop_those_not_outliving(&self) {
        self.runs.stop_those_not_outliving().await;
    }

    /// SIGTERM to every running group now, SIGKILL after the grace.
    fn stop_all(&self) {
        self.runs.stop_all();
    }

    fn running(&self) -> usize {
        self.runs.count()
    }
}

/// Follows a supervised run to its end; a run whose supervisor is gone without a
/// status ends as lost.
async fn follow(
    run: &mut Supervised,
    chunks: tokio::sync::mpsc::Receiver<process_run::Chunk>,
    streaming: Streaming,
    events: &Events,
    limits: TimeLimits,
    runs: &Runs,
) -> io::Result<ProcessEnd> {
    let stop = run.stop();
    match process_run::follow(run, chunks, streaming, events, limits, runs, stop).await {
        Ok(ended) => Ok(ended.end),
        Err(error) => match supervised::lost(&error) {
            Some(why) => Ok(ProcessEnd::Lost(why)),
            None => Err(error),
        },
    }
}

/// The run ended: what is left of it in its cgroup is killed and the group removed
/// (off the runtime's threads: it may wait for the kernel, 2 s at most).
async fn ended(confinement: Confinement) {
    let _ = tokio::task::spawn_blocking(move || confinement.end_leftovers()).await;
}

/// A process of the run killed by the kernel for its memory cgroup, and the run
/// failing: said as the limit it was.
fn said_as_memory(end: ProcessEnd, confinement: Option<&Confinement>) -> ProcessEnd {
    match (end, confinement) {
        (ProcessEnd::Exited(status), Some(confinement)) if !status.success() && confinement.over_memory() => {
            ProcessEnd::LimitReached(Limit::Memory(confinement.memory_bytes()))
        }
        (end, _) => end,
    }
}
