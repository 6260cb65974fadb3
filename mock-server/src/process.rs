//! Runs one job process in a process group of its own and streams its merged output
//! line by line; when the client goes away, the whole group is killed, not just the
//! shell, so `sh -c 'sleep 1000 & sleep 1000'` leaves nothing behind.

use std::collections::HashSet;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lrpymrpc_proto::{ExecuteResponse, OutputStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tonic::Status;

/// The stream of Execute messages going back to the client.
pub type Sink = mpsc::Sender<Result<ExecuteResponse, Status>>;

/// A line longer than this is sent in pieces, so one endless line cannot exhaust memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    /// The client stopped listening; the process group was killed.
    Cancelled,
    /// A time limit ran out (the message says which); the process group was killed.
    TimedOut(String),
}

/// Time limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimits {
    /// The longest it may run.
    pub wall: Duration,
    /// The longest it may print nothing.
    pub idle: Duration,
}

/// The process groups running now, so a shutdown can stop them all.
#[derive(Debug, Clone, Default)]
pub struct Running {
    groups: Arc<Mutex<HashSet<i32>>>,
}

impl Running {
    fn add(&self, id: i32) {
        if let Ok(mut groups) = self.groups.lock() {
            groups.insert(id);
        }
    }

    fn remove(&self, id: i32) {
        if let Ok(mut groups) = self.groups.lock() {
            groups.remove(&id);
        }
    }

    /// SIGTERM to every running group now, SIGKILL after the grace.
    pub fn stop_all(&self) {
        let groups: Vec<i32> = self.groups.lock().map(|g| g.iter().copied().collect()).unwrap_or_default();
        for id in groups {
            ProcessGroup { id: Some(id) }.kill();
        }
    }

    pub fn count(&self) -> usize {
        self.groups.lock().map_or(0, |g| g.len())
    }
}

/// Spawns `command` as the leader of a new process group with stdout and stderr
/// piped, sends every output line to `sink`, and waits for it. Processes it left
/// behind in its group are terminated once it exits, so their open pipes cannot
/// hold the job open.
pub async fn run_streaming(
    mut command: Command,
    sink: &Sink,
    limits: TimeLimits,
    running: &Running,
) -> io::Result<Outcome> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = command.spawn()?;
    let group = ProcessGroup { id: child.id().and_then(|id| i32::try_from(id).ok()) };
    let _registered = group.id.map(|id| Registered::new(running, id));
    let wall_deadline = tokio::time::Instant::now() + limits.wall;
    let mut idle_deadline = tokio::time::Instant::now() + limits.idle;
    let (line_tx, mut lines) = mpsc::channel::<ExecuteResponse>(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump_lines(stdout, OutputStream::Stdout, line_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump_lines(stderr, OutputStream::Stderr, line_tx));
    }
    let mut exit = None;
    loop {
        tokio::select! {
            () = sink.closed() => {
                group.kill();
                return Ok(Outcome::Cancelled);
            }
            status = child.wait(), if exit.is_none() => {
                exit = Some(status?);
                group.kill();
            }
            () = tokio::time::sleep_until(wall_deadline), if exit.is_none() => {
                group.kill();
                return Ok(Outcome::TimedOut(format!("it ran longer than {}", human(limits.wall))));
            }
            () = tokio::time::sleep_until(idle_deadline), if exit.is_none() => {
                group.kill();
                return Ok(Outcome::TimedOut(format!("it printed nothing for {}", human(limits.idle))));
            }
            line = lines.recv() => match line {
                Some(line) => {
                    idle_deadline = tokio::time::Instant::now() + limits.idle;
                    if sink.send(Ok(line)).await.is_err() {
                        group.kill();
                        return Ok(Outcome::Cancelled);
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
    Ok(Outcome::Exited(status))
}

/// Keeps a group in [`Running`] while it runs.
struct Registered<'a> {
    running: &'a Running,
    id: i32,
}

impl<'a> Registered<'a> {
    fn new(running: &'a Running, id: i32) -> Registered<'a> {
        running.add(id);
        Registered { running, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.running.remove(self.id);
    }
}

/// "90 s", "15 min", "4 h".
pub fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..120 => format!("{:.1} s", duration.as_secs_f64()),
        120..7200 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
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

async fn pump_lines<R: AsyncRead + Unpin>(reader: R, stream: OutputStream, lines: mpsc::Sender<ExecuteResponse>) {
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
        let message = String::from_utf8_lossy(&line).into_owned();
        if lines.send(ExecuteResponse { message, stream: stream as i32, exit_status: None }).await.is_err() {
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

/// "exit status 3" or "signal 9", for messages.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown status".into(),
    }
}
