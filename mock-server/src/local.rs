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
        let (merged, progress) = (launch.merged_output, launch.progress_updates);
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
            tokio::spawn(pump_lines(reader, Pipe::Merged, progress, line_tx.clone()));
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump_lines(stdout, Pipe::Stdout, progress, line_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump_lines(stderr, Pipe::Stderr, progress, line_tx.clone()));
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

/// At most this often a rewritten line is reported as progress (tqdm redraws up to ten
/// times a second).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Turns one pipe's bytes into line events. With `progress`, text that ends in a
/// carriage return is a line being rewritten: reported as progress (rate-limited), and
/// the line finally sent is what a terminal would show (its last rewrite). Without,
/// lines end at newlines only and keep their carriage returns (a trailing one goes).
async fn pump_lines<R: AsyncRead + Unpin>(reader: R, pipe: Pipe, progress: bool, lines: mpsc::Sender<JobEvent>) {
    let mut reader = BufReader::new(reader);
    let stops: &[u8] = if progress { b"\r\n" } else { b"\n" };
    let mut segment = Vec::new();
    // The last text that ended in `\r`: a `\n` right after makes it the line (`\r\n`).
    let mut rewritten: Option<String> = None;
    let mut last_progress: Option<tokio::time::Instant> = None;
    loop {
        segment.clear();
        match read_segment_capped(&mut reader, &mut segment, stops).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let event = match segment.last() {
            Some(b'\r') if progress => {
                segment.pop();
                let text = String::from_utf8_lossy(&segment).into_owned();
                rewritten = Some(text.clone());
                let due = last_progress.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
                if !due {
                    continue;
                }
                last_progress = Some(tokio::time::Instant::now());
                JobEvent::Progress { pipe, text }
            }
            Some(b'\n') => {
                segment.pop();
                let text = match (segment.is_empty(), rewritten.take()) {
                    (true, Some(before)) if progress => before,
                    _ => {
                        if segment.last() == Some(&b'\r') {
                            segment.pop();
                        }
                        String::from_utf8_lossy(&segment).into_owned()
                    }
                };
                JobEvent::Line { pipe, text }
            }
            // A piece of a line longer than the cap.
            _ => {
                rewritten = None;
                JobEvent::Line { pipe, text: String::from_utf8_lossy(&segment).into_owned() }
            }
        };
        if lines.send(event).await.is_err() {
            return;
        }
    }
    // Output that ended mid-rewrite: what the terminal would show stays.
    if let Some(text) = rewritten {
        let _ = lines.send(JobEvent::Line { pipe, text }).await;
    }
}

/// Reads up to and including the next byte of `stops`, or [`MAX_LINE_BYTES`],
/// whichever comes first. Returns the number of bytes read; 0 at end of file.
async fn read_segment_capped<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    segment: &mut Vec<u8>,
    stops: &[u8],
) -> io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(segment.len());
        }
        let room = MAX_LINE_BYTES - segment.len();
        let stop = available.iter().position(|b| stops.contains(b));
        let (take, done) = match stop {
            Some(at) if at < room => (at + 1, true),
            _ => (available.len().min(room), available.len() >= room),
        };
        segment.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(segment.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &'static [u8], progress: bool) -> Vec<JobEvent> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let (tx, mut rx) = mpsc::channel(64);
            pump_lines(bytes, Pipe::Stdout, progress, tx).await;
            let mut events = Vec::new();
            while let Some(event) = rx.recv().await {
                events.push(event);
            }
            events
        })
    }

    fn line(text: &str) -> JobEvent {
        JobEvent::Line { pipe: Pipe::Stdout, text: text.into() }
    }

    #[test]
    fn rewritten_lines_become_progress_and_the_line_is_what_a_terminal_shows() {
        let got = events(b"crlf\r\n 10%\r 50%\r100%\nend\rpartial", true);
        // The first rewrite is reported at once; the next ones within 100 ms are not.
        assert_eq!(got[0], JobEvent::Progress { pipe: Pipe::Stdout, text: "crlf".into() });
        let lines: Vec<&JobEvent> = got.iter().filter(|e| matches!(e, JobEvent::Line { .. })).collect();
        assert_eq!(lines, [&line("crlf"), &line("100%"), &line("partial")]);
    }

    #[test]
    fn without_progress_lines_end_at_newlines_and_keep_their_rewrites() {
        let got = events(b"crlf\r\n 10%\r100%\nend", false);
        assert_eq!(got, [line("crlf"), line(" 10%\r100%"), line("end")]);
    }
}
