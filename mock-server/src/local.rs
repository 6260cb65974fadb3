//! The local executor: runs each launch on this machine as the leader of a process
//! group of its own (in a PID namespace of its own when the server can make one, see
//! `contain.rs`) and streams its output line by line; when the client goes away or a
//! limit runs out, the whole group is killed, not just the shell, so
//! `sh -c 'sleep 1000 & sleep 1000'` leaves nothing behind.

use std::collections::HashSet;
use std::io;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::executor::{Events, Executor, JobEvent, Launch, Limit, Pipe, ProcessEnd, TimeLimits};

/// A line longer than this is sent in pieces, so one endless line cannot exhaust
/// memory; shorter lines stay whole. Well below gRPC's default 4 MiB message limit,
/// which the Python client keeps (`docs/protocol.md`).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs launches as local process groups.
#[derive(Debug, Clone, Default)]
pub struct LocalExecutor {
    /// Put each run in a PID namespace of its own (`contain.rs`).
    contain: bool,
    /// The process groups running now, so a shutdown can stop them all.
    groups: Arc<Mutex<HashSet<i32>>>,
}

impl LocalExecutor {
    pub fn new(contain: bool) -> LocalExecutor {
        LocalExecutor { contain, groups: Arc::default() }
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn command(&self, launch: Launch) -> Command {
        let mut command = Command::new(launch.program);
        command.args(launch.args).current_dir(launch.dir).env_clear().envs(launch.env);
        if self.contain {
            crate::contain::contain(&mut command);
        }
        command
    }
}

#[tonic::async_trait]
impl Executor for LocalExecutor {
    /// Spawns the launch as the leader of a new process group with stdout and stderr
    /// piped, sends every output line to `events`, and waits for it. Processes it left
    /// behind in its group are terminated once it exits, so their open pipes cannot
    /// hold the job open.
    async fn run(&self, launch: Launch, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let merged = launch.merged_output;
        let mut command = self.command(launch);
        command.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        // Merged: both descriptors are one pipe's writing end, so lines keep the order
        // the command wrote them in, as in a terminal.
        let merged_reader = match merged {
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
        let group = ProcessGroup { id: child.id().and_then(|id| i32::try_from(id).ok()) };
        let _registered = group.id.map(|id| Registered::new(self, id));
        let wall_deadline = tokio::time::Instant::now() + limits.wall;
        let mut idle_deadline = tokio::time::Instant::now() + limits.idle;
        let (line_tx, mut lines) = mpsc::channel::<JobEvent>(256);
        if let Some(reader) = merged_reader {
            let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
            tokio::spawn(pump_lines(reader, Pipe::Merged, line_tx.clone()));
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump_lines(stdout, Pipe::Stdout, line_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump_lines(stderr, Pipe::Stderr, line_tx.clone()));
        }
        // The pumps hold the only senders: the loop below ends when every pipe closed.
        drop(line_tx);
        let mut exit = None;
        loop {
            tokio::select! {
                () = events.closed() => {
                    group.kill();
                    return Ok(ProcessEnd::Cancelled);
                }
                status = child.wait(), if exit.is_none() => {
                    exit = Some(status?);
                    group.kill();
                }
                () = tokio::time::sleep_until(wall_deadline), if exit.is_none() => {
                    group.kill();
                    return Ok(ProcessEnd::LimitReached(Limit::Wall(limits.wall)));
                }
                () = tokio::time::sleep_until(idle_deadline), if exit.is_none() => {
                    group.kill();
                    return Ok(ProcessEnd::LimitReached(Limit::Idle(limits.idle)));
                }
                line = lines.recv() => match line {
                    Some(line) => {
                        idle_deadline = tokio::time::Instant::now() + limits.idle;
                        if events.send(Ok(line)).await.is_err() {
                            group.kill();
                            return Ok(ProcessEnd::Cancelled);
                        }
                    }
                    None => break,
                },
            }
        }
        let status = match exit {
            Some(status) => status,
            None => child.wait().await?,
        };
        Ok(ProcessEnd::Exited(status))
    }

    /// SIGTERM to every running group now, SIGKILL after the grace.
    fn stop_all(&self) {
        let groups: Vec<i32> = self.groups().iter().copied().collect();
        for id in groups {
            ProcessGroup { id: Some(id) }.kill();
        }
    }

    fn running(&self) -> usize {
        self.groups().len()
    }
}

/// Keeps a group in the executor's set while it runs.
struct Registered<'a> {
    executor: &'a LocalExecutor,
    id: i32,
}

impl<'a> Registered<'a> {
    fn new(executor: &'a LocalExecutor, id: i32) -> Registered<'a> {
        executor.groups().insert(id);
        Registered { executor, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.executor.groups().remove(&self.id);
    }
}

/// A process group to signal: SIGTERM at once, SIGKILL after [`KILL_GRACE`].
struct ProcessGroup {
    id: Option<i32>,
}

impl ProcessGroup {
    fn kill(&self) {
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

async fn pump_lines<R: AsyncRead + Unpin>(reader: R, pipe: Pipe, lines: mpsc::Sender<JobEvent>) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if lines.send(JobEvent::Line { pipe, text }).await.is_err() {
            return;
        }
    }
}

/// Reads up to and including the next newline, or [`MAX_LINE_BYTES`], whichever
/// comes first. Returns the number of bytes read; 0 at end of file.
async fn read_line_capped<R: AsyncBufReadExt + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(line.len());
        }
        let room = MAX_LINE_BYTES - line.len();
        let newline = available.iter().position(|&b| b == b'\n');
        let (take, done) = match newline {
            Some(at) if at < room => (at + 1, true),
            _ => (available.len().min(room), available.len() >= room),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(line.len());
        }
    }
}
