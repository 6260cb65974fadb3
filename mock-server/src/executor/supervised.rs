//! Local runs under their supervisor (`supervisor.rs`), from the server's side: each
//! run gets a directory under `ROOT/lrpymrpc-runs/` (mode 0700), the supervisor is
//! spawned into it, and the run is followed from its files: output frames as they are
//! appended (woken by the supervisor's notify pipe, or every [`POLL`] when that is
//! gone), its status once written. A stop is a SIGTERM to the supervisor (through a
//! pidfd, so never to a process that took its number since), which stops the command's
//! group. A run a server that is gone left is either taken on ([`Supervised::adopt`])
//! or, found at start by [`stop_left_behind`], stopped (the supervisor still holding
//! its `lock`) and waited for, then its directory removed.

use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::io::Read;
use tokio::sync::mpsc;

use crate::executor::Pipe;
use crate::executor::process_run::{Chunk, Process, Stop};
use crate::executor::supervisor::{
    self, Descriptors, HEADER_BYTES, PIPE_MERGED, PIPE_STDERR, PIPE_STDOUT, STATUS_BYTES, STATUS_MAGIC,
};

/// The directory under the job root that holds one directory per supervised run.
pub const RUNS_DIR: &str = "lrpymrpc-runs";
/// A run's output frames, in its directory.
pub const OUTPUT: &str = "output";
/// The file in a batch run's directory that names its scheduler and job id
/// (`batch.rs`).
pub const BATCH_RECORD: &str = "batch";
/// The file the scheduler writes a batch job's own stdout and stderr to (not the
/// command's: its supervisor keeps those).
pub const NODE_LOG: &str = "node.log";
/// How often a run's files are looked at when no notification comes.
const POLL: Duration = Duration::from_millis(50);
/// The longest one frame may say it is (the supervisor reads 16 KiB at a time): a
/// longer one is a damaged file, not a reason to allocate.
const MAX_FRAME: usize = 1 << 20;
/// How long a supervisor asked to stop may take to write its status: the command's
/// grace, then what its leftovers get, and some slack.
const STOP_LIMIT: Duration = Duration::from_secs(8);

/// Names each run's directory uniquely within this server process.
static NEXT_RUN: AtomicU64 = AtomicU64::new(0);

/// A run's directory, made and opened before its supervisor is spawned.
pub struct Prepared {
    dir: PathBuf,
    dir_fd: OwnedFd,
    output: OwnedFd,
    notify_write: OwnedFd,
    notify_read: OwnedFd,
    merged: bool,
}

/// Makes a fresh run directory under `ROOT/lrpymrpc-runs/` (0700). A name an earlier
/// server left (one with this process's pid: a container's server is often pid 1,
/// and its runs may have been taken on) is skipped, never reused.
pub fn make_run_dir(root: &Path) -> io::Result<PathBuf> {
    let runs = root.join(RUNS_DIR);
    DirBuilder::new().recursive(true).mode(0o700).create(&runs)?;
    loop {
        let name = format!("run-{}-{}", std::process::id(), NEXT_RUN.fetch_add(1, Ordering::Relaxed));
        let dir = runs.join(name);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Makes a fresh run directory under `root` with its output file and notify pipe.
pub fn prepare(root: &Path, merged: bool) -> io::Result<Prepared> {
    let dir = make_run_dir(root)?;
    let dir_fd = OwnedFd::from(std::fs::File::open(&dir)?);
    let output = std::fs::OpenOptions::new().append(true).create_new(true).mode(0o600).open(dir.join("output"))?;
    let (notify_read, notify_write) = io::pipe()?;
    let notify_write = OwnedFd::from(notify_write);
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(notify_write.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(notify_write.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(Prepared { dir, dir_fd, output: output.into(), notify_write, notify_read: notify_read.into(), merged })
}

impl Prepared {
    /// Writes down the run's memory cgroup, for a server that takes the run on (it
    /// reads the group's verdict and removes it) or stops it.
    pub fn record_group(&self, group: &Path) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup"), group.as_os_str().as_encoded_bytes())
    }

    /// Makes `command` start as the run's supervisor, the command its child. Hooks
    /// registered on `command` after this run in the command's process only.
    pub fn supervise(&self, command: &mut tokio::process::Command) {
        use std::os::unix::process::CommandExt;
        let fds = Descriptors {
            dir: self.dir_fd.as_raw_fd(),
            output: self.output.as_raw_fd(),
            notify: self.notify_write.as_raw_fd(),
            merged: self.merged,
            new_session: true,
        };
        command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        command.stderr(std::process::Stdio::null());
        // SAFETY: `enter` makes only async-signal-safe calls and allocates nothing; the
        // descriptors stay open until the spawn returned (they are this value's).
        unsafe {
            command.as_std_mut().pre_exec(move || supervisor::enter(fds));
        }
    }

    /// Spawns `command` (made with [`Prepared::supervise`]): the run, and its output as
    /// chunks that end when the run's status is written.
    pub fn spawn(self, mut command: tokio::process::Command) -> io::Result<(Supervised, mpsc::Receiver<Chunk>)> {
        let spawned = command.spawn();
        drop(command);
        let Prepared { dir, dir_fd, output, notify_write, notify_read, merged } = self;
        // The supervisor holds the only writing end now: its end is the notify pipe's.
        drop((dir_fd, output, notify_write));
        let supervisor = match spawned {
            Ok(supervisor) => supervisor,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        // Opened before the child can be reaped: it names this process, whatever pid
        // numbers are reused later.
        let pid = supervisor.id().and_then(|id| i32::try_from(id).ok()).map(Handle::open);
        let notify = tokio::net::unix::pipe::Receiver::from_owned_fd(notify_read)?;
        let (chunk_tx, chunks) = mpsc::channel(64);
        tokio::spawn(pump_frames(dir.clone(), 0, Some(notify), merged, chunk_tx));
        let pid = pid.map(Arc::new);
        Ok((
            Supervised {
                dir,
                supervisor: Some(supervisor),
                pid,
                batch: None,
                status: None,
                ended: false,
                adoptable: false,
            },
            chunks,
        ))
    }
}

/// A run taken on after a restart, for its executor to follow (`Executor::follow_adopted`).
pub struct Adopted {
    /// The job's id.
    pub job: String,
    pub run: Supervised,
    pub chunks: mpsc::Receiver<Chunk>,
    pub merged: bool,
    pub progress: bool,
}

/// A run whose end cannot be known (its supervisor gone without a status), as the
/// error following it ends with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunLost(pub String);

/// Why a run was lost, when `error` (from following it) says it was.
pub fn lost(error: &io::Error) -> Option<String> {
    error.get_ref()?.downcast_ref::<RunLost>().map(|lost| lost.0.clone())
}

/// A batch job that left its scheduler before its supervisor started (cancelled
/// while queued, or the node could not run it), as the error following it ends with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunNotStarted(pub String);

/// Why a batch run never started, when `error` (from following it) says so.
pub fn not_started(error: &io::Error) -> Option<String> {
    error.get_ref()?.downcast_ref::<RunNotStarted>().map(|never| never.0.clone())
}

/// A batch scheduler's view of the job a run was submitted as (`batch.rs`): whether
/// it still holds the job, and how to stop it.
#[tonic::async_trait]
pub trait BatchJob: Send + Sync {
    /// The scheduler still has the job (queued or running): `Some(false)` once it has
    /// been seen gone, `None` while that is not known (a query failed).
    fn present(&self) -> Option<bool>;
    /// Why the scheduler will never start it, if it said so (it is then cancelled).
    fn refused(&self) -> Option<String> {
        None
    }
    /// Asks the scheduler to stop the job; its supervisor stops the command.
    async fn cancel(&self);
}

/// How long a batch run's status may take to appear on this machine after its job
/// left the scheduler: a shared filesystem shows another node's new files late.
const STATUS_LAG: Duration = Duration::from_secs(5);
/// The most of a node's log (`node.log`: the scheduler's own words about the job)
/// read back.
const NODE_LOG_BYTES: u64 = 64 * 1024;

/// A supervised run in progress.
pub struct Supervised {
    dir: PathBuf,
    /// The supervisor, while it is this server's child.
    supervisor: Option<tokio::process::Child>,
    pid: Option<Arc<Handle>>,
    /// The batch job it runs as on a scheduler's node (its supervisor is there).
    batch: Option<Arc<dyn BatchJob>>,
    status: Option<ExitStatus>,
    /// Its supervisor is gone (its status read, or found missing).
    ended: bool,
    /// A durable job's command, which the next server can take on.
    adoptable: bool,
}

impl Supervised {
    /// The run's directory name under `ROOT/lrpymrpc-runs/`.
    pub fn name(&self) -> String {
        self.dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// A run a server that is gone started, still running or ended since: followed
    /// from the start of its output (polled), its supervisor known by the pid it wrote
    /// and checked by its start time and its lock. `None` when there is no such run
    /// (its supervisor gone without a status).
    /// Its output is read from `start`, a checkpoint (what is before it was numbered).
    pub fn adopt(root: &Path, name: &str, start: u64, merged: bool) -> Option<(Supervised, mpsc::Receiver<Chunk>)> {
        if name.contains('/') || name.starts_with('.') {
            return None;
        }
        let dir = root.join(RUNS_DIR).join(name);
        let pid = running_supervisor(&dir).map(Arc::new);
        // A batch run's supervisor is on a node: whether it runs is the scheduler's to
        // say, once its executor attaches the job (`Supervised::watch_batch`).
        if pid.is_none() && !dir.join("status").exists() && batch_record(&dir).is_none() {
            return None;
        }
        Some(Supervised::following(dir, start, merged, pid, None, true))
    }

    /// A run whose supervisor this server did not spawn here, followed from its files
    /// from `start` (polled).
    pub(super) fn following(
        dir: PathBuf,
        start: u64,
        merged: bool,
        pid: Option<Arc<Handle>>,
        batch: Option<Arc<dyn BatchJob>>,
        adoptable: bool,
    ) -> (Supervised, mpsc::Receiver<Chunk>) {
        let (chunk_tx, chunks) = mpsc::channel(64);
        tokio::spawn(pump_frames(dir.clone(), start, None, merged, chunk_tx));
        (Supervised { dir, supervisor: None, pid, batch, status: None, ended: false, adoptable }, chunks)
    }

    /// The scheduler and job id a batch run was submitted as (its `batch` file).
    pub fn batch_job(&self) -> Option<(String, String)> {
        batch_record(&self.dir)
    }

    /// The directory of a run that ended, no longer removed when this run is dropped:
    /// a batch job's scheduler may still write into it (a parallel environment's stop
    /// script's output goes to `node.log`), so it goes once the job has left the queue
    /// ([`crate::executor::batch::Watch::retire`]). `None` for a run that did not end
    /// (its files stay for whoever looks into it).
    pub fn hand_over_dir(&mut self) -> Option<PathBuf> {
        std::mem::take(&mut self.ended).then(|| self.dir.clone())
    }

    /// Follows a batch run taken on after a restart through its scheduler's job.
    pub fn watch_batch(&mut self, job: Arc<dyn BatchJob>) {
        self.batch = Some(job);
    }

    /// The supervisor started (wrote its pid): the command ran, or was about to.
    pub fn started(&self) -> bool {
        self.dir.join("pid").exists()
    }

    /// The lines the scheduler wrote about a batch run on its node (`node.log`: a
    /// memory or time limit, a node that could not start the supervisor), the last
    /// [`NODE_LOG_BYTES`] of them.
    pub fn node_log(&self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(self.dir.join(NODE_LOG)) else {
            return Vec::new();
        };
        let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let _ = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(length.saturating_sub(NODE_LOG_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.take(NODE_LOG_BYTES).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).lines().map(str::trim_end).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// Marks it as a durable job's command, which the next server can take on: a
    /// server leaving its jobs to the next does not stop it.
    pub fn set_adoptable(&mut self) {
        self.adoptable = true;
    }

    /// The memory cgroup written down for it, if any (checked by whoever uses it).
    pub fn recorded_group(&self) -> Option<PathBuf> {
        recorded_group(&self.dir)
    }

    /// How to stop it: a SIGTERM to its supervisor (a batch run's: through its
    /// scheduler).
    pub fn stop(&self) -> Arc<dyn Stop> {
        Arc::new(SupervisorStop { pid: self.pid.clone(), batch: self.batch.clone(), adoptable: self.adoptable })
    }

    /// How the command ended, from the status file its supervisor wrote.
    fn read_status(&self) -> io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let record = match std::fs::read(self.dir.join("status")) {
            Ok(record) => record,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::other(RunLost(format!(
                    "the run's supervisor ended without saying how the command ended (was it killed?): the \
                     command's end is not known (run directory `{}`)",
                    self.dir.display()
                ))));
            }
            Err(error) => return Err(error),
        };
        let (status, write_errno) = parse_status(&record).ok_or_else(|| {
            io::Error::other(format!("the run's status file in `{}` is damaged; not trusted", self.dir.display()))
        })?;
        if write_errno != 0 {
            let why = io::Error::from_raw_os_error(write_errno);
            return Err(io::Error::new(
                why.kind(),
                format!(
                    "the command's output could not be written to `{}/output` ({why}); it was stopped",
                    self.dir.display()
                ),
            ));
        }
        Ok(ExitStatus::from_raw(status))
    }
}

impl Supervised {
    /// Waits until a batch run's status is written, or its job has left the scheduler
    /// for longer than a status takes to show: then it never started (no pid), or its
    /// supervisor was killed (a node lost, a limit of the scheduler's).
    async fn wait_for_batch(&self, batch: &dyn BatchJob) -> io::Result<()> {
        let mut gone_since: Option<Instant> = None;
        loop {
            if self.dir.join("status").exists() {
                return Ok(());
            }
            match batch.present() {
                Some(false) => {
                    // A job the scheduler refused never had a supervisor to wait for.
                    if gone_since.get_or_insert_with(Instant::now).elapsed() >= STATUS_LAG || batch.refused().is_some()
                    {
                        break;
                    }
                }
                _ => gone_since = None,
            }
            tokio::time::sleep(POLL).await;
        }
        let said = self.node_log();
        let said = match said.is_empty() {
            true => String::new(),
            false => format!(" (its log on the node: {})", said.join("; ")),
        };
        match (self.started(), batch.refused()) {
            (false, Some(why)) => Err(io::Error::other(RunNotStarted(format!("{why}{said}")))),
            (false, None) => Err(io::Error::other(RunNotStarted(format!(
                "the job left the scheduler before its command started{said}"
            )))),
            (true, _) => Err(io::Error::other(RunLost(format!(
                "the job left the scheduler without its supervisor saying how the command ended{said}: the \
                 command's end is not known (run directory `{}`)",
                self.dir.display()
            )))),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Once its supervisor is gone, the run's files have done their work.
        if self.ended {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[tonic::async_trait]
impl Process for Supervised {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match (self.supervisor.as_mut(), self.batch.clone()) {
            (Some(supervisor), _) => drop(supervisor.wait().await?),
            // On a node: its status appears, or its job leaves the scheduler without one.
            (None, Some(batch)) => self.wait_for_batch(batch.as_ref()).await?,
            // Not this server's child: its status appears, or its lock goes without one.
            (None, None) => {
                while !self.dir.join("status").exists() && lock_held(&self.dir) {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        self.ended = true;
        let status = self.read_status()?;
        self.status = Some(status);
        Ok(status)
    }

    async fn gone(&mut self) {
        if !self.ended {
            let _ = tokio::time::timeout(STOP_LIMIT, self.wait()).await;
        }
    }
}

/// SIGTERM to a supervisor: it stops its command's group (SIGKILL after the grace). A
/// batch run's is asked of its scheduler.
struct SupervisorStop {
    pid: Option<Arc<Handle>>,
    batch: Option<Arc<dyn BatchJob>>,
    /// The next server can take the run on.
    adoptable: bool,
}

#[tonic::async_trait]
impl Stop for SupervisorStop {
    async fn stop(&self) {
        if let Some(batch) = &self.batch {
            batch.cancel().await;
        } else if let Some(pid) = &self.pid {
            pid.signal(libc::SIGTERM);
        }
    }

    /// The supervisor ends what the command left behind itself.
    fn reap(&self) {}

    fn outlives_server(&self) -> bool {
        self.adoptable
    }
}

/// A status record: (wait status, errno of a failed output write).
fn parse_status(record: &[u8]) -> Option<(i32, i32)> {
    if record.len() != STATUS_BYTES || &record[..8] != STATUS_MAGIC {
        return None;
    }
    let status = i32::from_le_bytes(record[8..12].try_into().ok()?);
    let write_errno = i32::from_le_bytes(record[12..16].try_into().ok()?);
    Some((status, write_errno))
}

/// The pipe a frame's first byte names.
fn pipe_of(byte: u8) -> Option<Pipe> {
    match byte {
        PIPE_STDOUT => Some(Pipe::Stdout),
        PIPE_STDERR => Some(Pipe::Stderr),
        PIPE_MERGED => Some(Pipe::Merged),
        _ => None,
    }
}

/// The `Instant` of a frame's monotonic time (the clock `Instant` reads on Linux).
fn instant_of(ns: u64) -> Instant {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time);
    }
    let now_ns = (time.tv_sec as u64) * 1_000_000_000 + time.tv_nsec as u64;
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns))).unwrap_or(now)
}

/// Sends the run's output frames as chunks, as they are appended, until its status is
/// written and every frame before it sent; then the end of each pipe. A damaged frame
/// ends the output there (said in the log).
async fn pump_frames(
    dir: PathBuf,
    start: u64,
    mut notify: Option<tokio::net::unix::pipe::Receiver>,
    merged: bool,
    chunks: mpsc::Sender<Chunk>,
) {
    let pipes: &[Pipe] = if merged { &[Pipe::Merged] } else { &[Pipe::Stdout, Pipe::Stderr] };
    let end = async |chunks: mpsc::Sender<Chunk>| {
        for &pipe in pipes {
            let _ = chunks.send(Chunk { pipe, bytes: None, at: Instant::now(), end: None }).await;
        }
    };
    // Read with plain reads: the file is this machine's, and what they return was
    // just written (the page cache).
    let opened = std::fs::File::open(dir.join("output")).and_then(|mut file| {
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
        Ok(file)
    });
    let mut file = match opened {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), "cannot read a run's output: {error}");
            return end(chunks).await;
        }
    };
    // Where `pending` starts in the file.
    let mut consumed = start;
    let mut pending: Vec<u8> = Vec::new();
    let mut read = vec![0u8; 64 * 1024];
    let mut status_seen = false;
    // The notify pipe's writing end closed: the supervisor is gone.
    let mut writer_gone = false;
    loop {
        let n = match file.read(&mut read) {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), "cannot read a run's output: {error}");
                break;
            }
        };
        if n > 0 {
            pending.extend_from_slice(&read[..n]);
            let mut used = 0;
            while pending.len() - used >= HEADER_BYTES {
                let header = &pending[used..used + HEADER_BYTES];
                let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
                let Some(pipe) = pipe_of(header[0]).filter(|_| length <= MAX_FRAME) else {
                    tracing::warn!(dir = %dir.display(), "a run's output file is damaged; its output ends here");
                    return end(chunks).await;
                };
                if pending.len() - used < HEADER_BYTES + length {
                    break;
                }
                let ns = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
                let bytes = pending[used + HEADER_BYTES..used + HEADER_BYTES + length].to_vec();
                used += HEADER_BYTES + length;
                let chunk = Chunk { pipe, bytes: Some(bytes), at: instant_of(ns), end: Some(consumed + used as u64) };
                if chunks.send(chunk).await.is_err() {
                    return;
                }
            }
            pending.drain(..used);
            consumed += used as u64;
            continue;
        }
        // At the end of what was written: the status comes after the last frame; a
        // supervisor gone without one writes nothing more either.
        if status_seen || chunks.is_closed() {
            break;
        }
        if dir.join("status").exists() || writer_gone {
            status_seen = true;
            // Opened again: a shared filesystem shows what another node appended to a
            // file at its next open (close-to-open), not to a reader that kept it open.
            if let Ok(mut again) = std::fs::File::open(dir.join("output"))
                && std::io::Seek::seek(&mut again, std::io::SeekFrom::Start(consumed + pending.len() as u64)).is_ok()
            {
                file = again;
            }
            continue;
        }
        match notify.as_mut() {
            Some(receiver) => {
                tokio::select! {
                    readable = receiver.readable() => {
                        let mut drained = [0u8; 256];
                        match readable.and_then(|()| receiver.try_read(&mut drained)) {
                            Ok(0) => (notify, writer_gone) = (None, true),
                            Ok(_) => {}
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => notify = None,
                        }
                    }
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
    end(chunks).await
}

/// Stops every run a server that ended without stopping them left under `root`, but
/// those `adopted` names (its supervisor still holds the run's lock: SIGTERM, then
/// waited for), and removes their directories; returns how many were still running.
pub fn stop_left_behind(root: &Path, adopted: impl Fn(&str) -> bool) -> usize {
    let runs = root.join(RUNS_DIR);
    let Ok(entries) = std::fs::read_dir(&runs) else { return 0 };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        // Only directories of ours (never a link someone put there).
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) || adopted(&entry.file_name().to_string_lossy()) {
            continue;
        }
        if let Some(supervisor) = running_supervisor(&dir) {
            stopped += 1;
            tracing::warn!(pid = supervisor.pid, dir = %dir.display(), "a run an earlier server left running is stopped");
            supervisor.signal(libc::SIGTERM);
            let started = Instant::now();
            while lock_held(&dir) && started.elapsed() < STOP_LIMIT {
                std::thread::sleep(Duration::from_millis(20));
            }
            if lock_held(&dir) {
                supervisor.signal(libc::SIGKILL);
            }
        }
        // Its memory cgroup goes too, with anything of the run still in it.
        if let Some(group) = recorded_group(&dir).and_then(|group| crate::executor::confine::Confinement::adopt(&group))
        {
            group.end_leftovers();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    stopped
}

/// The memory cgroup written down in a run's directory.
fn recorded_group(dir: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(dir.join("cgroup")).ok()?;
    Some(PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes)))
}

/// A small file of a run's directory (a pid, a job id, a host name), at most 4 KiB of
/// it: what a run's files say is read within bounds, whoever wrote them.
pub fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(4096).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The scheduler and job id in a batch run's `batch` file (`batch.rs`).
fn batch_record(dir: &Path) -> Option<(String, String)> {
    let text = read_small(&dir.join(BATCH_RECORD))?;
    let mut words = text.split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

/// The supervisor of the run in `dir`, when it is alive here: it holds the run's lock,
/// and the pid it wrote names a process started when it said, checked after the
/// handle was opened (so the handle is that process, never one that took its number
/// since). A batch run's supervisor is a node's process: never one of this machine.
fn running_supervisor(dir: &Path) -> Option<Handle> {
    if batch_record(dir).is_some() {
        return None;
    }
    let stat = read_small(&dir.join("pid"))?;
    let pid: i32 = stat.split_whitespace().next()?.parse().ok()?;
    let handle = Handle::open(pid);
    let now = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (start_time(&stat)? == start_time(&now)? && lock_held(dir)).then_some(handle)
}

/// A process to signal: by a pidfd, which names one process for good, where the kernel
/// has them (5.3 on); else by its pid.
#[derive(Debug)]
pub(super) struct Handle {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Handle {
    fn open(pid: i32) -> Handle {
        // SAFETY: pidfd_open with a pid and no flags; a descriptor it returns is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: a fresh descriptor nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }
        });
        Handle { pid, pidfd }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain system calls on integers; a process gone yields ESRCH.
        unsafe {
            match &self.pidfd {
                Some(pidfd) => {
                    libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0);
                }
                None => {
                    libc::kill(self.pid, signal);
                }
            }
        }
    }
}

/// Field 22 of a `/proc/PID/stat` line: when the process started.
fn start_time(stat: &str) -> Option<&str> {
    // The command name (field 2) may hold spaces; the fields after it do not.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)
}

/// Whether some process holds the run's lock (its supervisor, alive).
fn lock_held(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(dir.join("lock")) else { return false };
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Frees the disk the first `offset` bytes of run `name`'s output take (a checkpoint
/// the job's spool wrote down: a replay starts there), keeping every later offset.
/// Where the filesystem cannot punch holes, nothing is freed.
pub fn forget_output_before(root: &Path, name: &str, offset: u64) {
    if name.contains('/') || name.starts_with('.') {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(root.join(RUNS_DIR).join(name).join("output")) else {
        return;
    };
    let Ok(length) = libc::off_t::try_from(offset) else { return };
    // SAFETY: fallocate on a descriptor this function owns; it changes no memory.
    unsafe {
        libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_are_checked_and_start_times_found() {
        let mut record = STATUS_MAGIC.to_vec();
        record.extend_from_slice(&(3i32 << 8).to_le_bytes());
        record.extend_from_slice(&0i32.to_le_bytes());
        record.push(0);
        assert_eq!(parse_status(&record), Some((3 << 8, 0)));
        assert_eq!(parse_status(&record[..10]), None);
        let mut edited = record.clone();
        edited[0] = b'X';
        assert_eq!(parse_status(&edited), None);
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(start_time(stat), Some("987654"));
    }
}
