//! The local executor: runs each launch on this machine as the leader of a process
//! group of its own (in a PID namespace of its own when the server can make one, see
//! `contain.rs`), streamed by `process_run.rs`; when the client goes away or a limit
//! runs out, the whole group is killed, not just the shell, so
//! `sh -c 'sleep 1000 & sleep 1000'` leaves nothing behind.

use std::io;
use std::sync::Arc;

use tokio::process::Command;

use crate::executor::process_run::{self, ProcessGroup, Runs, Stop, Streaming};
use crate::executor::{Events, Executor, Launch, ProcessEnd, TimeLimits};

/// Runs launches as local process groups.
#[derive(Debug, Clone, Default)]
pub struct LocalExecutor {
    /// Put each run in a PID namespace of its own (`contain.rs`).
    contain: bool,
    /// The runs in progress, so a shutdown can stop them all.
    runs: Arc<Runs>,
}

impl LocalExecutor {
    pub fn new(contain: bool) -> LocalExecutor {
        LocalExecutor { contain, runs: Arc::default() }
    }

    fn command(&self, launch: Launch) -> Command {
        let mut command = Command::new(launch.program);
        command.args(launch.args).current_dir(launch.dir).env_clear().envs(launch.env);
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
        let command = self.command(launch);
        let stop = |id| Arc::new(ProcessGroup { id }) as Arc<dyn Stop>;
        Ok(process_run::run(command, streaming, events, limits, &self.runs, stop).await?.end)
    }

    /// SIGTERM to every running group now, SIGKILL after the grace.
    fn stop_all(&self) {
        self.runs.stop_all();
    }

    fn running(&self) -> usize {
        self.runs.count()
    }
}
