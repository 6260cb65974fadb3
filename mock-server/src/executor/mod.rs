//! The executor seam: where and how a job's processes run. The Execute step says what
//! to run ([`Launch`]: a program, its arguments and environment, in a job directory);
//! an [`Executor`] runs it, streams its output as domain events ([`JobEvent`], never
//! wire messages), stops it when the client goes away or a limit runs out, and says
//! how it ended ([`ProcessEnd`]). The sandbox wraps a launch for any executor
//! (`sandbox.rs`); the local executor (`local.rs`) runs it on this machine under a
//! supervisor (`supervised.rs`), the Slurm (`slurm.rs`) and Grid Engine
//! (`gridengine.rs`) executors as batch jobs whose supervisor runs on a node
//! (`batch.rs`), which one a server uses decided in `farm.rs`; all stream through
//! `process_run.rs`.

pub mod batch;
pub mod confine;
pub mod contain;
pub mod farm;
pub mod gridengine;
/// A throwaway one-node Grid Engine cluster, for tests and benchmarks only.
#[cfg(feature = "testing")]
pub mod gridengine_cluster;
pub mod limits;
pub mod lines;
pub mod local;
pub mod process_run;
pub mod sandbox;
pub mod slurm;
/// A throwaway one-node Slurm cluster, for tests and benchmarks only.
#[cfg(feature = "testing")]
pub mod slurm_cluster;
pub mod supervised;
pub mod supervisor;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use tokio::sync::mpsc;

use crate::error::JobError;
pub use crate::executor::limits::{Limit, TimeLimits};

/// What to run: `program args` in `dir` with exactly `env`.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub dir: PathBuf,
    /// stdout and stderr as one pipe, in the order they were written (for clients
    /// that do not ask for separate streams), or as two.
    pub merged_output: bool,
    /// Report text rewritten after a carriage return as [`JobEvent::Progress`], and
    /// send of each line only what a terminal would show (clients that ask for it).
    pub progress_updates: bool,
    /// The cores and memory the run was granted (`confine.rs`); none for set-up steps.
    pub confine: confine::Confine,
    /// A durable job's command (not a set-up step, not a legacy client's): an executor
    /// whose runs outlive the server says where it runs ([`JobEvent::RunStarted`]), for
    /// the next server to take it on, and leaves it running at a `--keep-jobs-on-exit`.
    pub adoptable: bool,
}

/// Which output pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
    /// stdout and stderr as one pipe ([`Launch::merged_output`]).
    Merged,
}

/// What an Execute step reports as it goes; `rpc/messages.rs` turns each into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// One line a process printed (without its line break).
    Line { pipe: Pipe, text: String },
    /// The text of a line a process is rewriting in place (after a carriage return),
    /// as it is now; the next event replaces it.
    Progress { pipe: Pipe, text: String },
    /// A note from the server itself (a cached environment reused, a wait).
    Note(String),
    /// A farm's scheduler holds the command in its queue: a note saying so and why
    /// (the scheduler's words), which `Status` and the status page show as the
    /// job's reason to wait until [`JobEvent::Dispatched`] or its first output.
    Queued(String),
    /// The farm's scheduler started the command (a note saying where).
    Dispatched(String),
    /// The command ended with this status: the last event of a run.
    Exited { code: i32, signal: i32 },
    /// Nothing runs: the action cache answers from the run recorded then, which took
    /// this long (`execute/cached.rs`); the first event of such an answer.
    Served { ran_at_unix_seconds: i64, ran_for_ms: u64 },
    /// The command's supervised run started, in this run directory (under
    /// `ROOT/lrpymrpc-runs/`): a spool marks it, so a restarted server can adopt the
    /// run. No message for clients.
    RunStarted { run: String },
    /// The run's output up to this byte of its output file makes no difference to what
    /// follows (`Lines::at_rest`): a replay after a restart may start there, and what
    /// is before it need not be kept. No message for clients.
    Checkpoint { offset: u64 },
}

/// Where the events of one Execute go; an error ends the step. The receiver going
/// away means the client left: the executor stops the run.
pub type Events = mpsc::Sender<Result<JobEvent, JobError>>;

/// How a run ended.
#[derive(Debug)]
pub enum ProcessEnd {
    Exited(ExitStatus),
    /// The client stopped listening; the run was stopped.
    Cancelled,
    /// A time limit ran out; the run was stopped.
    LimitReached(Limit),
    /// The executor could not start it (the scheduler refused or is down): not the
    /// command's failure. The words say why.
    NotStarted(String),
    /// How it ended cannot be known (its supervisor was killed). The words say why.
    Lost(String),
}

/// Runs launches somewhere and can stop them all.
#[tonic::async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// Runs `launch` to its end, each output line sent to `events` as it comes; stops
    /// it (and everything it started) when `events` closes or a limit runs out.
    async fn run(&self, launch: Launch, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd>;

    /// Follows a run a server that is gone started through this executor (taken on
    /// after a restart, `execute/adopt.rs`) to its end, as `run` would have.
    async fn follow_adopted(
        &self,
        adopted: supervised::Adopted,
        events: &Events,
        limits: TimeLimits,
    ) -> io::Result<ProcessEnd>;

    /// Stops every run now (shutdown).
    fn stop_all(&self);

    /// Stops every run the next server cannot take on (a server leaving its jobs to the
    /// next, `--keep-jobs-on-exit`); returns once the stops are under way.
    async fn stop_those_not_outliving(&self);

    /// Runs in progress.
    fn running(&self) -> usize;
}

/// "exit status 3" or "signal 9", for messages.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown status".into(),
    }
}
