//! One process on this machine with its output streamed: what every executor shares.
//! An executor says how to start a launch (a `Command`) and how to stop it (a
//! [`Stop`]); this module spawns it as the leader of a process group of its own,
//! streams its lines as events, enforces the wall-clock and idle limits, stops it when
//! the client goes away, waits for it, and keeps the set of runs a shutdown stops.

use std::collections::HashMap;
use std::io;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::executor::lines::Lines;
use crate::executor::{Events, JobEvent, Limit, Pipe, ProcessEnd, TimeLimits};

/// How long a process group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How an executor stops one of its runs (and everything the run started).
#[tonic::async_trait]
pub trait Stop: Send + Sync {
    /// Stops the run now (the client left, a limit ran out, shutdown); returns once
    /// the stop is under way, before the run's local process is killed.
    async fn stop(&self);
    /// The run's process exited: ends what it left behind.
    fn reap(&self);
    /// The next server can take the run on (a durable job's supervised command): a
    /// server leaving its jobs to the next (`--keep-jobs-on-exit`) leaves it running.
    fn outlives_server(&self) -> bool {
        false
    }
}

/// The runs in progress, so a shutdown can stop them all.
#[derive(Default)]
pub struct Runs {
    next: AtomicU64,
    running: Mutex<HashMap<u64, Arc<dyn Stop>>>,
    /// Set by [`Runs::stop_all`]: a run that fails from now on was stopped by it.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runs({})", self.count())
    }
}

impl Runs {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<dyn Stop>>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops every run now.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_those(|_| true);
    }

    /// Stops every run the next server cannot take on (`--keep-jobs-on-exit`), and
    /// returns once each stop is under way (the server exits right after: a stop left
    /// on a task might never run).
    pub async fn stop_those_not_outliving(&self) {
        let stops: Vec<Arc<dyn Stop>> =
            self.running().values().filter(|stop| !stop.outlives_server()).cloned().collect();
        for stop in stops {
            stop.stop().await;
        }
    }

    fn stop_those(&self, which: impl Fn(&dyn Stop) -> bool) {
        let stops: Vec<Arc<dyn Stop>> = self.running().values().filter(|stop| which(stop.as_ref())).cloned().collect();
        for stop in stops {
            tokio::spawn(async move { stop.stop().await });
        }
    }

    pub fn count(&self) -> usize {
        self.running().len()
    }
}

/// Keeps a run in [`Runs`] while it runs.
struct Registered<'a> {
    runs: &'a Runs,
    id: u64,
}

impl<'a> Registered<'a> {
    fn new(runs: &'a Runs, stop: Arc<dyn Stop>) -> Registered<'a> {
        let id = runs.next.fetch_add(1, Ordering::Relaxed);
        runs.running().insert(id, stop);
        Registered { runs, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.runs.running().remove(&self.id);
    }
}

/// How one run's output is read and which of its lines are the executor's own.
pub struct Streaming {
    /// stdout and stderr as one pipe, in the order written.
    pub merged: bool,
    /// Rewritten lines reported as progress.
    pub progress: bool,
    /// Lines the executor's own tools printed (srun's reports), kept out of the
    /// output and handed back at the end.
    pub own_line: Option<fn(&str) -> bool>,
}

/// How a run ended, with the lines `own_line` kept out of its output.
pub struct Ended {
    pub end: ProcessEnd,
    pub own_lines: Vec<String>,
}

/// One read of a run's output: what a pipe delivered and when, or `None` at its end.
pub struct Chunk {
    pub pipe: Pipe,
    pub bytes: Option<Vec<u8>>,
    /// When it was read (the line rules of [`Lines`] depend on it).
    pub at: std::time::Instant,
    /// Where it ends in the run's output file (a supervised run's), for checkpoints.
    pub end: Option<u64>,
}

/// How much output of a supervised run passes between two checkpoints at least.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A started run's process, as [`follow`] waits for it.
#[tonic::async_trait]
pub trait Process: Send {
    /// Waits for it to end; its status.
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus>;
    /// It was stopped, or it ended: waits until its processes are gone (bounded).
    async fn gone(&mut self);
}

/// A process this server spawned with its output piped.
struct Piped {
    child: tokio::process::Child,
    group: Option<i32>,
    exited: bool,
}

#[tonic::async_trait]
impl Process for Piped {
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.exited = true;
        status
    }

    async fn gone(&mut self) {
        // A stopped run is waited for (a little past the SIGKILL) before its process is
        // dropped: srun killed before it told the controller leaves its job in `squeue`.
        if !self.exited {
            let _ = tokio::time::timeout(KILL_GRACE + Duration::from_secs(1), self.child.wait()).await;
        }
        group_gone(self.group).await;
    }
}

/// Spawns `command` as the leader of a new process group with stdout and stderr
/// piped, sends every output line to `events`, and waits for it; `stop` (made from
/// the group's id) stops it when the client leaves, a limit runs out or the server
/// shuts down. Processes it left behind in its group are terminated once it exits, so
/// their open pipes cannot hold the job open.
pub async fn run(
    mut command: Command,
    streaming: Streaming,
    events: &Events,
    limits: TimeLimits,
    runs: &Runs,
    stop: impl FnOnce(Option<i32>) -> Arc<dyn Stop>,
) -> io::Result<Ended> {
    command.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    // Merged: both descriptors are one pipe's writing end, so lines keep the order
    // the command wrote them in, as in a terminal.
    let merged_reader = match streaming.merged {
        true => {
            let (reader, writer) = io::pipe()?;
            command.stdout(writer.try_clone()?).stderr(writer);
            Some(reader)
        }
        false => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
    };
    let mut child = command.spawn()?;
    // The parent's copies of the writing end go, so the reader sees the end.
    drop(command);
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let stop = stop(group);
    let (chunk_tx, chunks) = mpsc::channel::<Chunk>(64);
    if let Some(reader) = merged_reader {
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
        tokio::spawn(pump_chunks(reader, Pipe::Merged, chunk_tx.clone()));
    }
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump_chunks(stdout, Pipe::Stdout, chunk_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump_chunks(stderr, Pipe::Stderr, chunk_tx.clone()));
    }
    // The pumps hold the only senders: following ends when every pipe closed.
    drop(chunk_tx);
    let mut process = Piped { child, group, exited: false };
    follow(&mut process, chunks, streaming, events, limits, runs, stop).await
}

/// Follows a started run to its end: sends its lines (from `chunks`, which end when
/// its output does) to `events`, enforces the wall-clock and idle limits, stops it
/// when the client goes away, and waits for it.
pub async fn follow(
    process: &mut dyn Process,
    mut chunks: mpsc::Receiver<Chunk>,
    streaming: Streaming,
    events: &Events,
    limits: TimeLimits,
    runs: &Runs,
    stop: Arc<dyn Stop>,
) -> io::Result<Ended> {
    let _registered = Registered::new(runs, stop.clone());
    let wall_deadline = tokio::time::Instant::now() + limits.wall;
    let mut idle_deadline = tokio::time::Instant::now() + limits.idle;
    let mut lines = Lines::new(streaming.progress);
    let mut ready = Vec::new();
    let mut own_lines = Vec::new();
    let mut exit = None;
    let mut checkpoint = 0;
    let stopped = async |end, process: &mut dyn Process| {
        process.gone().await;
        Ok(Ended { end, own_lines: Vec::new() })
    };
    loop {
        tokio::select! {
            () = events.closed() => {
                stop.stop().await;
                return stopped(ProcessEnd::Cancelled, process).await;
            }
            status = process.wait(), if exit.is_none() => {
                exit = Some(status?);
                stop.reap();
            }
            () = tokio::time::sleep_until(wall_deadline), if exit.is_none() => {
                stop.stop().await;
                return stopped(ProcessEnd::LimitReached(Limit::Wall(limits.wall)), process).await;
            }
            () = tokio::time::sleep_until(idle_deadline), if exit.is_none() => {
                stop.stop().await;
                return stopped(ProcessEnd::LimitReached(Limit::Idle(limits.idle)), process).await;
            }
            chunk = chunks.recv() => {
                match chunk {
                    Some(Chunk { pipe, bytes: Some(bytes), at, end }) => {
                        // Any output is a sign of life, a line not finished yet too.
                        idle_deadline = tokio::time::Instant::now() + limits.idle;
                        lines.feed(pipe, &bytes, at, &mut ready);
                        // Where a replay of the run's output file may start, now and then.
                        if let Some(end) = end
                            && end >= checkpoint + CHECKPOINT_BYTES
                            && lines.at_rest(at)
                        {
                            checkpoint = end;
                            ready.push(JobEvent::Checkpoint { offset: end });
                        }
                    }
                    Some(Chunk { pipe, bytes: None, .. }) => lines.end(pipe, &mut ready),
                    None => break,
                }
                for line in ready.drain(..) {
                    match line {
                        JobEvent::Line { pipe: Pipe::Stderr | Pipe::Merged, text }
                            if streaming.own_line.is_some_and(|own| own(&text)) =>
                        {
                            own_lines.push(text);
                        }
                        line => {
                            if events.send(Ok(line)).await.is_err() {
                                stop.stop().await;
                                return stopped(ProcessEnd::Cancelled, process).await;
                            }
                        }
                    }
                }
            }
        }
    }
    let status = match exit {
        Some(status) => status,
        None => process.wait().await?,
    };
    process.gone().await;
    // Stopped by the server's shutdown, said as that, not as the signal it took.
    if !status.success() && runs.stopping.load(Ordering::SeqCst) {
        return Ok(Ended { end: ProcessEnd::LimitReached(Limit::Shutdown), own_lines });
    }
    Ok(Ended { end: ProcessEnd::Exited(status), own_lines })
}

/// Waits until no process of the run's group is left (they were sent SIGTERM, and
/// SIGKILL follows after [`KILL_GRACE`]), for a little longer than that at most: what
/// the run held (its cores, its licenses) is given back only once its processes are gone.
async fn group_gone(group: Option<i32>) {
    let Some(group) = group else { return };
    let deadline = tokio::time::Instant::now() + KILL_GRACE + Duration::from_secs(1);
    // SAFETY: killpg with signal 0 only checks that the group exists.
    while unsafe { libc::killpg(group, 0) } == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local process group to stop: SIGTERM at once, SIGKILL after [`KILL_GRACE`].
pub struct ProcessGroup {
    pub id: Option<i32>,
}

#[tonic::async_trait]
impl Stop for ProcessGroup {
    async fn stop(&self) {
        self.reap();
    }

    fn reap(&self) {
        let Some(id) = self.id else { return };
        signal_group(id, libc::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(KILL_GRACE).await;
            signal_group(id, libc::SIGKILL);
        });
    }
}

fn signal_group(id: i32, signal: i32) {
    // SAFETY: killpg takes plain integers and has no memory effects; a group that
    // is already gone yields ESRCH, which is what we want to ignore.
    unsafe {
        libc::killpg(id, signal);
    }
}

/// How much of a pipe one read takes (a chunk for [`Lines`]).
const READ_BYTES: usize = 16 * 1024;

/// Sends what one pipe delivers, as it is read, then `None` at its end: one task per
/// pipe, one [`Lines`] for all of them, so lines keep the order they were read in.
async fn pump_chunks<R: AsyncRead + Unpin>(mut reader: R, pipe: Pipe, chunks: mpsc::Sender<Chunk>) {
    loop {
        let mut chunk = Vec::with_capacity(READ_BYTES);
        match reader.read_buf(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let at = std::time::Instant::now();
                if chunks.send(Chunk { pipe, bytes: Some(chunk), at, end: None }).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = chunks.send(Chunk { pipe, bytes: None, at: std::time::Instant::now(), end: None }).await;
}
