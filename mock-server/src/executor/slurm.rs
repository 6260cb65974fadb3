//! The Slurm executor (`--executor slurm`): each command runs as a Slurm batch job on
//! whichever node is free, under its supervisor there (`batch.rs`), its output followed
//! from the run's files on the shared root by the same loop as the local executor's
//! (`process_run.rs`); only starting, stopping and asking about the job differ.
//! Set-up steps (venv, pip) stay on this machine, where the environment cache lives:
//! the job root must be on a filesystem every node sees, and the server binary at the
//! same path on every node, which [`SlurmExecutor::probe`] checks at start.
//!
//! - Start: `sbatch --parsable --job-name=lrpymrpc-<job id> --chdir=<job dir>
//!   --output=<run dir>/node.log --ntasks=1 --nodes=1 --time=<limit> [what the step
//!   was granted] [--partition] [--account] [--slurm-arg...] <run dir>/job.sh`; the
//!   job id sbatch prints is kept in the run's directory. The launch may already be
//!   wrapped in bwrap (`--sandbox`): the sandbox then applies on the node.
//! - Stop: `scancel --name=<job name>`: Slurm signals the supervisor, which stops the
//!   command and writes its status; nothing is left in `squeue`.
//! - Wait: the supervisor's status file: the command's exact exit status or signal.
//!   A job that left the queue without one never started (`UNAVAILABLE` with what
//!   Slurm wrote on the node), went over its memory (Slurm's report in `node.log`), or
//!   is lost (said by name, never a success). sbatch refusing the job is the
//!   scheduler refusing: `UNAVAILABLE` with sbatch's own words.
//! - Survives: a server restarted, even on another machine, finds the job by the run
//!   directory its spool names (`execute/adopt.rs`) and follows it on.
//! - Queued: one batched `squeue` for every job at a modest rate
//!   (`--slurm-poll-interval`): a pending job's reason is told to its client as a note,
//!   and when it starts; a job missing from it twice has left. A query that fails
//!   means "unknown": nothing is said or concluded.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::process::Command;

use lrpymrpc_units::human_duration;

use crate::executor::batch;
use crate::executor::batch::QueueState;
use crate::executor::confine::Confine;
use crate::executor::process_run::{self, Runs, Stop, Streaming};
use crate::executor::supervised::{self, Adopted, Supervised};
use crate::executor::{Events, Executor, JobEvent, Launch, Limit, ProcessEnd, TimeLimits};
use crate::resources::Capacity;

/// Every Slurm job this server starts is named with this prefix and the job's id.
pub const JOB_NAME_PREFIX: &str = "lrpymrpc-";

/// The longest a `squeue` or `scancel` call may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// The name a batch run's scheduler is written down as (`batch.rs`).
const SCHEDULER: &str = "slurm";

/// What the administrator chose for Slurm.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// `--slurm-partition`.
    pub partition: Option<String>,
    /// `--slurm-account`.
    pub account: Option<String>,
    /// `--slurm-arg`, each passed to sbatch or srun as it is (`--cpus-per-task=4`).
    pub args: Vec<String>,
    /// `--slurm-submit sbatch` (the default): batch jobs, which outlive the server and
    /// its machine; else job steps through an srun under a local supervisor.
    pub batch: bool,
    /// How often waiting steps are looked up in Slurm's queue, all in one query.
    pub poll_interval: Duration,
    /// How long the start-up probe step may wait for a node.
    pub probe_timeout: Duration,
}

impl Default for SlurmOptions {
    fn default() -> SlurmOptions {
        SlurmOptions {
            partition: None,
            account: None,
            args: Vec::new(),
            batch: true,
            poll_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(120),
        }
    }
}

/// Why the Slurm executor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("--executor slurm: `{0}` is not on PATH")]
    Missing(&'static str, #[source] which::Error),
    #[error("--executor slurm: the probe step failed: {0}")]
    Probe(String),
    #[error(
        "--executor slurm: the server binary `{binary}` does not run on the node that ran the probe step ({seen}); \
         hint: install lrpymrpc-server at the same path on every node, or start it from the shared filesystem"
    )]
    NoBinary { binary: PathBuf, seen: String },
    #[error(
        "--executor slurm: the job root `{root}` is not the same on the node that ran the probe step ({seen}); \
         hint: put --root on a filesystem every node mounts at the same path (NFS, Lustre, GPFS)"
    )]
    NotShared { root: PathBuf, seen: String },
    #[error("--executor slurm: asking `scontrol {0}` failed: {1}")]
    Query(&'static str, String),
    #[error("--executor slurm: {0}")]
    Io(#[from] io::Error),
}

/// Runs commands as Slurm job steps.
#[derive(Debug, Clone)]
pub struct SlurmExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    srun: PathBuf,
    sbatch: PathBuf,
    options: SlurmOptions,
    /// `--time`, from `--job-timeout` (a minute more: our own limit speaks first).
    time_limit_minutes: u64,
    /// Where steps leave their "started" markers: on the shared job root.
    markers: PathBuf,
    /// The job root: the batch runs' directories go under it (`batch.rs`).
    root: PathBuf,
    /// The server binary the job scripts run as the supervisor on the node.
    binary: PathBuf,
    /// The server's `SLURM_*` variables (`SLURM_CONF`): srun needs them to find the
    /// cluster, whatever the job's own environment.
    slurm_env: Vec<(OsString, OsString)>,
    runs: Runs,
    /// squeue and scancel.
    queue: Arc<SlurmQueue>,
    /// The jobs submitted and not yet ended, looked up in the queue.
    watch: Arc<batch::Watch<SlurmQueue>>,
}

/// Slurm's queue, as `squeue` lists it and `scancel` empties it.
#[derive(Debug)]
struct SlurmQueue {
    scancel: PathBuf,
    squeue: PathBuf,
    /// The server's `SLURM_*` variables.
    slurm_env: Vec<(OsString, OsString)>,
}

impl SlurmExecutor {
    /// Finds srun, scancel and squeue; markers go under `root`.
    pub fn new(options: SlurmOptions, root: &Path, job_timeout: Duration) -> Result<SlurmExecutor, SlurmError> {
        let find = |name: &'static str| which::which(name).map_err(|e| SlurmError::Missing(name, e));
        let markers = root.join("lrpymrpc-slurm");
        std::fs::create_dir_all(&markers)?;
        let slurm_env: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("SLURM_")).collect();
        let queue =
            Arc::new(SlurmQueue { scancel: find("scancel")?, squeue: find("squeue")?, slurm_env: slurm_env.clone() });
        let watch = batch::Watch::new(queue.clone(), options.poll_interval);
        Ok(SlurmExecutor {
            inner: Arc::new(Inner {
                srun: find("srun")?,
                sbatch: find("sbatch")?,
                options,
                time_limit_minutes: job_timeout.as_secs().div_ceil(60) + 1,
                markers,
                root: root.to_path_buf(),
                binary: batch::this_binary()?,
                slurm_env,
                runs: Runs::default(),
                queue,
                watch,
            }),
        })
    }

    /// Runs a short step that reads a file just written under the job root (the step's
    /// node must see the root at the same path) and runs the server binary there (the
    /// supervisor of every job). Waits at most the probe timeout.
    pub async fn probe(&self, root: &Path) -> Result<(), SlurmError> {
        let inner = &self.inner;
        let token = format!("lrpymrpc probe {} {:?}", std::process::id(), std::time::SystemTime::now());
        let name = format!("{JOB_NAME_PREFIX}probe-{}", std::process::id());
        let file = inner.markers.join(&name);
        let (path, text) = (file.clone(), token.clone());
        off_runtime(move || std::fs::write(path, text)).await??;
        let mut command = inner.srun_command(&name, root, &Confine::default(), None);
        command
            .args(["/bin/sh", "-c", "cat \"$0\" && \"$1\" --version >/dev/null"])
            .arg(&file)
            .arg(&inner.binary)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let outcome = tokio::time::timeout(inner.options.probe_timeout, command.output()).await;
        let path = file.clone();
        let _ = off_runtime(move || std::fs::remove_file(path)).await;
        let output = match outcome {
            Ok(output) => output?,
            Err(_) => {
                inner.queue.cancel_named(&name).await;
                return Err(SlurmError::Probe(format!(
                    "it did not run within {} (no free node?); hint: --slurm-probe-timeout, or check `sinfo`",
                    lrpymrpc_units::human_duration(inner.options.probe_timeout)
                )));
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let read_back = String::from_utf8_lossy(&output.stdout) == token;
        let not_found = stderr.contains(&file.display().to_string());
        let no_binary = stderr.contains(&inner.binary.display().to_string());
        match (output.status.success(), read_back) {
            (true, true) => Ok(()),
            (false, true) if no_binary => Err(SlurmError::NoBinary { binary: inner.binary.clone(), seen: stderr }),
            (true, false) => {
                Err(SlurmError::NotShared { root: root.to_path_buf(), seen: "it read other bytes".into() })
            }
            (false, _) if not_found => Err(SlurmError::NotShared { root: root.to_path_buf(), seen: stderr }),
            (false, _) => Err(SlurmError::Probe(stderr_or(stderr, &format!("srun ended with {}", output.status)))),
        }
    }

    /// Cancels the Slurm jobs of `job_ids` (jobs an earlier run of the server left
    /// behind, found by their names), with one `squeue` and one `scancel` per batch.
    pub async fn cancel_left_behind(&self, job_ids: &[String]) {
        let names: Vec<String> = job_ids.iter().map(|id| format!("{JOB_NAME_PREFIX}{id}")).collect();
        for batch in names.chunks(batch::NAMES_PER_QUERY) {
            let Some(found) = self.inner.queue.query(batch).await else { continue };
            let ids: Vec<String> = found.into_iter().map(|job| job.id).collect();
            if ids.is_empty() {
                continue;
            }
            let mut scancel = Command::new(&self.inner.queue.scancel);
            scancel.arg("--quiet").args(&ids).envs(self.inner.slurm_env.iter().cloned()).kill_on_drop(true);
            match tokio::time::timeout(QUERY_TIMEOUT, scancel.status()).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(jobs = ids.len(), "cancelled Slurm jobs an earlier run of the server left behind");
                }
                outcome => tracing::warn!(?outcome, "could not cancel Slurm jobs an earlier run left behind"),
            }
        }
    }
}

fn stderr_or(stderr: String, otherwise: &str) -> String {
    if stderr.is_empty() { otherwise.to_string() } else { stderr }
}

impl Inner {
    /// `srun` (the probe) or `sbatch` (a job) with the administrator's options, a job
    /// name and a directory, and what the step was granted (`--cpus-per-task`, `--mem`,
    /// `--licenses`, and `--time` from its wall limit, a minute more: our own limit
    /// speaks first); the program or script follows.
    fn srun_command(&self, name: &str, dir: &Path, confine: &Confine, wall: Option<Duration>) -> Command {
        self.slurm_command(&self.srun, "--quiet", name, dir, confine, wall)
    }

    fn slurm_command(
        &self,
        program: &Path,
        first: &str,
        name: &str,
        dir: &Path,
        confine: &Confine,
        wall: Option<Duration>,
    ) -> Command {
        let mut command = Command::new(program);
        let minutes = wall.map_or(self.time_limit_minutes, |wall| wall.as_secs().div_ceil(60) + 1);
        command
            .arg(first)
            .arg(format!("--job-name={name}"))
            .arg(format!("--chdir={}", dir.display()))
            .args(["--ntasks=1", "--nodes=1"])
            .arg(format!("--time={minutes}"));
        command.args(request_args(confine));
        if let Some(partition) = &self.options.partition {
            command.arg(format!("--partition={partition}"));
        }
        if let Some(account) = &self.options.account {
            command.arg(format!("--account={account}"));
        }
        command.args(&self.options.args);
        command
    }
}

/// srun's options for what a step was granted: cores per task, memory (whole MiB,
/// rounded up), licenses; nothing for what was not asked.
fn request_args(confine: &Confine) -> Vec<String> {
    let mut args = Vec::new();
    if confine.cpus > 0 {
        args.push(format!("--cpus-per-task={}", confine.cpus));
    }
    if confine.memory_bytes > 0 {
        args.push(format!("--mem={}M", confine.memory_bytes.div_ceil(1 << 20)));
    }
    if !confine.licenses.is_empty() {
        let pools: Vec<String> = confine.licenses.iter().map(|(name, count)| format!("{name}:{count}")).collect();
        args.push(format!("--licenses={}", pools.join(",")));
    }
    args
}

impl SlurmExecutor {
    /// What the cluster could ever give one step: the most CPUs and memory one node
    /// has, and each license pool of `slurm.conf` (`scontrol show node`, `scontrol show
    /// licenses`), with `default_cpus` for steps that ask for none. A request beyond it
    /// would wait in Slurm's queue for ever: it is refused at once instead.
    pub async fn capacity(&self, default_cpus: u32) -> Result<Capacity, SlurmError> {
        let nodes = self.scontrol("show node", &["show", "node", "--oneliner"]).await?;
        let licenses = self.scontrol("show licenses", &["show", "licenses", "--oneliner"]).await?;
        Ok(parse_capacity(&nodes, &licenses, default_cpus))
    }

    async fn scontrol(&self, what: &'static str, args: &[&str]) -> Result<String, SlurmError> {
        let scontrol = which::which("scontrol").map_err(|e| SlurmError::Missing("scontrol", e))?;
        let mut command = Command::new(scontrol);
        command.args(args).envs(self.inner.slurm_env.iter().cloned()).stdin(std::process::Stdio::null());
        command.kill_on_drop(true);
        match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
            Ok(Ok(output)) if output.status.success() => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            Ok(Ok(output)) => Err(SlurmError::Query(what, String::from_utf8_lossy(&output.stderr).trim().to_string())),
            Ok(Err(error)) => Err(SlurmError::Query(what, error.to_string())),
            Err(_) => Err(SlurmError::Query(what, format!("no answer within {}", human_duration(QUERY_TIMEOUT)))),
        }
    }
}

/// The value of `Key=` on a `scontrol --oneliner` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn parse_capacity(nodes: &str, licenses: &str, default_cpus: u32) -> Capacity {
    let lines = || nodes.lines().filter(|line| line.contains("NodeName="));
    let cpus = lines().filter_map(|line| field(line, "CPUTot")?.parse::<u32>().ok()).max().unwrap_or(1);
    let memory_mib = lines().filter_map(|line| field(line, "RealMemory")?.parse::<u64>().ok()).max().unwrap_or(0);
    let licenses = licenses
        .lines()
        .filter_map(|line| Some((field(line, "LicenseName")?.to_string(), field(line, "Total")?.parse::<u32>().ok()?)))
        .collect();
    Capacity {
        cpus,
        memory_bytes: memory_mib << 20,
        licenses,
        default_cpus: default_cpus.min(cpus),
        per_cn: Default::default(),
    }
}

/// Stops one job: scancel by its name, and its supervisor (a batch run's is the job's:
/// nothing more; a run taken on from a server of an earlier release is an srun under a
/// local supervisor).
struct SlurmStop {
    inner: Weak<Inner>,
    name: String,
    supervisor: Arc<dyn Stop>,
}

#[tonic::async_trait]
impl Stop for SlurmStop {
    /// scancel first: an srun killed before it told the controller leaves the job
    /// "completing" in `squeue` for a while.
    async fn stop(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.queue.cancel_named(&self.name).await;
        }
        self.supervisor.stop().await;
    }

    fn outlives_server(&self) -> bool {
        self.supervisor.outlives_server()
    }

    /// The step ended and srun with it: nothing is left.
    fn reap(&self) {}
}

/// Whether a line on srun's stderr is Slurm's own report of how the task ended
/// (`srun: error: NODE: task 0: Exited with exit code 3`, `slurmstepd-NODE: error: ***
/// STEP 3.0 ON NODE CANCELLED AT ... ***`): the exit status says that already, so it is
/// not the command's output.
fn is_srun_report(line: &str) -> bool {
    if line.starts_with("slurmstepd") && line.contains(": error: *** ") && line.ends_with(" ***") {
        return true;
    }
    if is_memory_report(line) {
        return true;
    }
    line.strip_prefix("srun: ").is_some_and(|rest| {
        let rest = rest.strip_prefix("error: ").unwrap_or(rest);
        rest.contains(": task ")
            || rest.contains(": tasks ")
            || rest.starts_with("Force Terminated")
            || rest.starts_with("Unable to allocate")
            || rest.starts_with("error: ")
            || rest.starts_with("Job step aborted")
            || rest.starts_with("forcing job termination")
            || rest.starts_with("***")
    })
}

/// Whether a line is Slurm's report that a step went over its memory: the accounting
/// poller's (`slurmstepd-NODE: error: StepId=3.0 exceeded memory limit (328286208 >
/// 67108864), being killed`, then `srun: Exceeded job memory limit`) or the memory
/// cgroup's (`slurmstepd: error: Detected 1 oom_kill event in StepId=3.0. Some of the
/// step tasks have been OOM Killed.`, then `srun: error: NODE: task 0: Out Of Memory`).
fn is_memory_report(line: &str) -> bool {
    let from_slurmstepd = line.starts_with("slurmstepd")
        && line.contains(": error: ")
        && (line.contains(" exceeded memory limit (")
            || line.contains("oom_kill event")
            || line.contains("OOM Killed"));
    from_slurmstepd
        || line == "srun: Exceeded job memory limit"
        || (line.starts_with("srun: error: ") && line.ends_with(": Out Of Memory"))
}

/// The memory limit a step went over, when Slurm's reports say it did: the limit they
/// name (the poller's `(USED > LIMIT)`), else the one it was granted (0: the cluster's
/// default, not known here).
fn over_memory(reports: &[String], granted: u64) -> Option<Limit> {
    let said = reports.iter().filter(|line| is_memory_report(line)).find_map(|line| {
        let (_, numbers) = line.split_once(" exceeded memory limit (")?;
        numbers.split_once(" > ")?.1.split_once(')')?.0.parse::<u64>().ok()
    });
    reports.iter().any(|line| is_memory_report(line)).then(|| Limit::Memory(said.unwrap_or(granted)))
}

/// srun exits 128+N when the command was killed by signal N, and says so in its
/// report (`task 0: Killed`, not `Exited with exit code 137`): the status then says the
/// signal, as the local executor's does. A command that itself exits 137 stays 137.
fn signalled(status: std::process::ExitStatus, reports: &[String]) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let by_signal = reports.iter().any(|line| line.contains(": task ") && !line.contains("Exited with exit code"));
    match status.code() {
        Some(code @ 129..=192) if by_signal => std::process::ExitStatus::from_raw(code - 128),
        _ => status,
    }
}

/// File work on the job root (often NFS, where a stat can take a while), on a
/// blocking thread rather than the runtime's.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)
}

impl SlurmExecutor {
    /// Follows a job to its end: a batch run from its files, or (taken on from a server
    /// of an earlier release) an srun under a local supervisor, srun's own reports kept
    /// out of the output. Slurm's words (srun's reports, the node's log) are read for
    /// the end: not started, a signal, over its memory.
    async fn follow_step(
        &self,
        name: &str,
        (mut run, chunks): (Supervised, tokio::sync::mpsc::Receiver<process_run::Chunk>),
        streaming: Streaming,
        granted_memory: u64,
        events: &Events,
        limits: TimeLimits,
    ) -> io::Result<ProcessEnd> {
        let inner = &self.inner;
        let batch = run.batch_job().is_some();
        let stop: Arc<dyn Stop> = match batch {
            true => run.stop(),
            false => Arc::new(SlurmStop {
                inner: Arc::downgrade(&self.inner),
                name: name.to_string(),
                supervisor: run.stop(),
            }),
        };
        let ran = process_run::follow(&mut run, chunks, streaming, events, limits, &inner.runs, stop).await;
        let mut said = run.node_log();
        let started = match batch {
            true => run.started(),
            // An srun step leaves its marker on the node first thing.
            false => {
                let marker = inner.markers.join(name);
                off_runtime(move || {
                    let started = marker.exists();
                    let _ = std::fs::remove_file(&marker);
                    started
                })
                .await
                .unwrap_or(false)
            }
        };
        inner.watch.retire(name, run.hand_over_dir());
        let ended = match ran {
            Ok(mut ended) => {
                said.append(&mut ended.own_lines);
                ended.end
            }
            Err(error) => {
                for line in &said {
                    tracing::info!(job = %name, "{line}");
                }
                if let Some(limit) = over_memory(&said, granted_memory) {
                    return Ok(ProcessEnd::LimitReached(limit));
                }
                if let Some(why) = supervised::not_started(&error) {
                    return Ok(ProcessEnd::NotStarted(format!("Slurm did not start the command: {why}")));
                }
                return match supervised::lost(&error) {
                    Some(why) => Ok(ProcessEnd::Lost(why)),
                    None => Err(error),
                };
            }
        };
        for line in &said {
            tracing::info!(job = %name, "{line}");
        }
        match ended {
            ProcessEnd::Exited(status) if !status.success() && !started => {
                let said: Vec<&str> = said.iter().map(String::as_str).filter(|l| !l.contains(": task ")).collect();
                let why = match said.is_empty() {
                    true => format!("it ended with {}", crate::executor::describe(&status)),
                    false => said.join("; "),
                };
                Ok(ProcessEnd::NotStarted(format!("Slurm did not start the command: {why}")))
            }
            ProcessEnd::Exited(status) if !status.success() => Ok(match over_memory(&said, granted_memory) {
                Some(limit) => ProcessEnd::LimitReached(limit),
                None if batch => ProcessEnd::Exited(status),
                None => ProcessEnd::Exited(signalled(status, &said)),
            }),
            end => Ok(end),
        }
    }
}

impl SlurmExecutor {
    /// `--slurm-submit srun`: the command as a job step of an srun under a local
    /// supervisor (`supervised.rs`): started at once, and a server that dies leaves
    /// srun, and so the step, running for the next one (but not a machine that dies).
    async fn run_step(
        &self,
        name: &str,
        launch: Launch,
        events: &Events,
        limits: TimeLimits,
    ) -> io::Result<ProcessEnd> {
        let inner = &self.inner;
        let marker = inner.markers.join(name);
        let path = marker.clone();
        let _ = off_runtime(move || std::fs::remove_file(path)).await;
        let streaming = Streaming {
            merged: launch.merged_output,
            progress: launch.progress_updates,
            own_line: Some(is_srun_report),
        };
        let granted_memory = launch.confine.memory_bytes;
        let mut command = inner.srun_command(name, &launch.dir, &launch.confine, Some(limits.wall));
        let prepared = supervised::prepare(&inner.root, launch.merged_output)?;
        prepared.supervise(&mut command);
        // On the node: leave the marker (the step started), then become the launch.
        command
            .args(["/bin/sh", "-c", ": > \"$0\" 2>/dev/null; exec \"$@\""])
            .arg(&marker)
            .arg(&launch.program)
            .args(&launch.args)
            .current_dir(&launch.dir)
            .env_clear()
            .envs(launch.env)
            .envs(inner.slurm_env.iter().cloned());
        let (mut run, chunks) = prepared.spawn(command)?;
        if launch.adoptable {
            run.set_adoptable();
            let _ = events.send(Ok(JobEvent::RunStarted { run: run.name() })).await;
        }
        inner.watch.track(name, Some(events), None);
        self.follow_step(name, (run, chunks), streaming, granted_memory, events, limits).await
    }
}

#[tonic::async_trait]
impl Executor for SlurmExecutor {
    /// The command runs as a batch job under its supervisor on the node (`batch.rs`):
    /// a server that dies, or whose machine does, leaves the job running for the next.
    async fn run(&self, launch: Launch, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let inner = &self.inner;
        let id = launch.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{JOB_NAME_PREFIX}{id}");
        if !inner.options.batch {
            return self.run_step(&name, launch, events, limits).await;
        }
        let streaming = Streaming { merged: launch.merged_output, progress: launch.progress_updates, own_line: None };
        let granted_memory = launch.confine.memory_bytes;
        let (root, binary, job_launch) = (inner.root.clone(), inner.binary.clone(), launch.clone());
        let prepared = off_runtime(move || batch::prepare(&root, &binary, &job_launch)).await??;
        let mut command =
            inner.slurm_command(&inner.sbatch, "--parsable", &name, &launch.dir, &launch.confine, Some(limits.wall));
        command
            .arg(format!("--output={}", prepared.node_log().display()))
            .arg(prepared.script())
            .current_dir(&launch.dir)
            .env_clear()
            .envs(launch.env)
            .envs(inner.slurm_env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let submitted = match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
            Ok(Ok(output)) if output.status.success() => {
                let printed = String::from_utf8_lossy(&output.stdout);
                // `JOBID` or `JOBID;CLUSTER`.
                let job_id = printed.trim().split(';').next().unwrap_or_default().to_string();
                match job_id.chars().all(|c| c.is_ascii_digit()) && !job_id.is_empty() {
                    true => Ok(job_id),
                    false => Err(format!("sbatch printed `{}`, not a job id", printed.trim())),
                }
            }
            Ok(Ok(output)) => Err(stderr_or(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
                &format!("sbatch ended with {}", crate::executor::describe(&output.status)),
            )),
            Ok(Err(error)) => Err(format!("sbatch could not run: {error}")),
            Err(_) => Err(format!("sbatch did not answer within {}", human_duration(QUERY_TIMEOUT))),
        };
        let job_id = match submitted {
            Ok(job_id) => job_id,
            Err(why) => {
                // A submit that timed out may still have reached the controller.
                inner.queue.cancel_named(&name).await;
                prepared.refused();
                return Ok(ProcessEnd::NotStarted(format!("Slurm did not start the command: {why}")));
            }
        };
        tracing::debug!(job = %name, slurm_job = %job_id, "submitted");
        let job = inner.watch.track(&name, Some(events), Some(&prepared.dir));
        let batch::Submitted { mut run, chunks } = prepared.submitted(SCHEDULER, &job_id, job)?;
        if launch.adoptable {
            run.set_adoptable();
            let _ = events.send(Ok(JobEvent::RunStarted { run: run.name() })).await;
        }
        self.follow_step(&name, (run, chunks), streaming, granted_memory, events, limits).await
    }

    async fn follow_adopted(&self, adopted: Adopted, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let name = format!("{JOB_NAME_PREFIX}{}", adopted.job);
        let mut run = adopted.run;
        let own_line = match run.batch_job() {
            Some((scheduler, _)) if scheduler == SCHEDULER => {
                // The queue is watched again (its state is not news: nothing is said).
                run.watch_batch(self.inner.watch.track(&name, None, None));
                None
            }
            _ => Some(is_srun_report as fn(&str) -> bool),
        };
        let streaming = Streaming { merged: adopted.merged, progress: adopted.progress, own_line };
        self.follow_step(&name, (run, adopted.chunks), streaming, 0, events, limits).await
    }

    fn stop_all(&self) {
        self.inner.runs.stop_all();
    }

    async fn stop_those_not_outliving(&self) {
        self.inner.runs.stop_those_not_outliving().await;
    }

    fn running(&self) -> usize {
        self.inner.runs.count()
    }
}

/// One job as `squeue` lists it.
#[derive(Debug, PartialEq, Eq)]
struct QueuedJob {
    id: String,
    name: String,
    state: QueueState,
}

impl SlurmQueue {
    /// Cancels every job named `name` (one: the name holds the job id), waiting for
    /// scancel at most [`QUERY_TIMEOUT`].
    async fn cancel_named(&self, name: &str) {
        let mut scancel = Command::new(&self.scancel);
        scancel.arg("--quiet").arg(format!("--name={name}")).envs(self.slurm_env.iter().cloned());
        scancel.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(QUERY_TIMEOUT, scancel.status()).await {
            Ok(Ok(status)) if status.success() => {}
            outcome => tracing::warn!(job = name, ?outcome, "scancel did not confirm the cancel"),
        }
    }

    /// One `squeue` for `names`; `None` when it failed (the state is unknown, not failed).
    async fn query(&self, names: &[String]) -> Option<Vec<QueuedJob>> {
        let mut squeue = Command::new(&self.squeue);
        squeue
            .args(["--noheader", "--format=%i|%j|%T|%r|%N"])
            .arg(format!("--name={}", names.join(",")))
            .envs(self.slurm_env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(QUERY_TIMEOUT, squeue.output()).await {
            Ok(Ok(output)) if output.status.success() => output,
            outcome => {
                tracing::debug!(?outcome, "squeue failed: the queue state is unknown");
                return None;
            }
        };
        Some(parse_queue(&String::from_utf8_lossy(&output.stdout)))
    }
}

#[tonic::async_trait]
impl batch::Scheduler for SlurmQueue {
    fn title(&self) -> &'static str {
        "Slurm"
    }

    async fn list(&self, names: &[String]) -> Option<Vec<batch::Listed>> {
        let jobs = self.query(names).await?;
        Some(jobs.into_iter().map(|job| batch::Listed { name: job.name, state: job.state }).collect())
    }

    async fn cancel(&self, name: &str) {
        self.cancel_named(name).await;
    }
}

/// `id|name|STATE|reason|nodes` lines into jobs.
fn parse_queue(text: &str) -> Vec<QueuedJob> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(5, '|');
            let (id, name, state, reason, nodes) =
                (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            let state = match state {
                // `None`: Slurm's scheduler has not looked at it yet; nothing to say.
                "PENDING" if reason == "None" => QueueState::Other,
                "PENDING" => QueueState::Pending(reason.to_string()),
                "RUNNING" | "COMPLETING" => QueueState::Running(nodes.to_string()),
                _ => QueueState::Other,
            };
            Some(QueuedJob { id: id.to_string(), name: name.to_string(), state })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clusters_capacity_is_read_from_scontrol_and_a_grant_becomes_srun_options() {
        let nodes = "NodeName=n1 Arch=x86_64 CPUAlloc=0 CPUTot=2 RealMemory=20000 AllocMem=0 State=IDLE\n\
                     NodeName=n2 CPUTot=8 RealMemory=1000 State=IDLE\n";
        let licenses = "LicenseName=hspice Total=1 Used=0 Free=1 Reserved=0 Remote=no\n";
        let capacity = parse_capacity(nodes, licenses, 1);
        assert_eq!((capacity.cpus, capacity.memory_bytes, capacity.licenses["hspice"]), (8, 20000 << 20, 1));
        assert!(parse_capacity(nodes, "No licenses configured in Slurm.\n", 1).licenses.is_empty());
        let confine = Confine {
            cpus: 2,
            memory_bytes: (1 << 30) + 1,
            licenses: [("hspice".to_string(), 1), ("spectre".to_string(), 2)].into(),
            ..Confine::default()
        };
        assert_eq!(request_args(&confine), ["--cpus-per-task=2", "--mem=1025M", "--licenses=hspice:1,spectre:2"]);
        assert!(request_args(&Confine::default()).is_empty());
    }

    #[test]
    fn srun_reports_are_told_apart_from_the_commands_lines() {
        assert!(is_srun_report("srun: error: node1: task 0: Exited with exit code 3"));
        assert!(is_srun_report("srun: error: node1: tasks 0-3: Killed"));
        assert!(is_srun_report("srun: error: Unable to allocate resources: Invalid partition name specified"));
        assert!(is_srun_report("slurmstepd-node1: error: *** STEP 3.0 ON node1 CANCELLED AT 2026-11-26T07:39:27 ***"));
        assert!(!is_srun_report("error: task 0 of my tool failed"));
        assert!(!is_srun_report("srun is a Slurm command"));
    }

    #[test]
    fn slurms_memory_reports_become_the_memory_limit() {
        // As srun printed them on the tests' cluster (OverMemoryKill) and as the
        // cgroup plugin says them.
        let poller: Vec<String> = [
            "slurmstepd-lrnode: error: StepId=1.0 exceeded memory limit (328286208 > 67108864), being killed",
            "srun: Job step aborted: Waiting up to 4 seconds for job step to finish.",
            "srun: Exceeded job memory limit",
            "srun: error: lrnode: task 0: Killed",
        ]
        .map(String::from)
        .into();
        assert!(poller.iter().all(|line| is_srun_report(line)));
        assert_eq!(over_memory(&poller, 0), Some(Limit::Memory(67108864)));
        let cgroup: Vec<String> = [
            "slurmstepd: error: Detected 1 oom_kill event in StepId=7.0. Some of the step tasks have been OOM Killed.",
            "srun: error: n1: task 0: Out Of Memory",
        ]
        .map(String::from)
        .into();
        assert!(cgroup.iter().all(|line| is_srun_report(line)));
        assert_eq!(over_memory(&cgroup, 1 << 30), Some(Limit::Memory(1 << 30)));
        assert_eq!(over_memory(&["srun: error: n1: task 0: Killed".into()], 1 << 30), None);
        assert!(!is_srun_report("my tool: error: exceeded memory limit (1 > 0)"));
        assert_eq!(Limit::Memory(0).to_string(), "it used more memory than it was granted (ask for more with --mem)");
    }

    #[test]
    fn a_signal_srun_reports_becomes_the_status() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        let killed = signalled(exited(137), &["srun: error: n1: task 0: Killed".into()]);
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
        let own = signalled(exited(137), &["srun: error: n1: task 0: Exited with exit code 137".into()]);
        assert_eq!(own.code(), Some(137));
        assert_eq!(signalled(exited(143), &[]).code(), Some(143));
    }

    #[test]
    fn queue_lines_parse_into_states() {
        let jobs = parse_queue("12|lrpymrpc-a|PENDING|Resources|\n13|lrpymrpc-b|RUNNING|None|node7\nbad line\n");
        let job = |id: &str, name: &str, state| QueuedJob { id: id.into(), name: name.into(), state };
        assert_eq!(
            jobs,
            [
                job("12", "lrpymrpc-a", QueueState::Pending("Resources".into())),
                job("13", "lrpymrpc-b", QueueState::Running("node7".into())),
            ]
        );
    }
}
