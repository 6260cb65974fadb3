//! The Grid Engine executor (`--executor gridengine`): each command runs as a Grid
//! Engine batch job (`qsub`) on whichever host has a free slot, under its supervisor
//! there (`batch.rs`), its output followed from the run's files on the shared root by
//! the same loop as every executor's (`process_run.rs`). Set-up steps (venv, pip) stay
//! on this machine: the job root must be on a filesystem every host sees, and the
//! server binary at the same path on each, which [`GridEngineExecutor::probe`] checks.
//!
//! Why batch jobs and our own supervisor rather than `qsub -sync y`, `qrsh` or DRMAA:
//! `qsub -sync y` exits 0 for a job deleted with `qdel`, `qrsh` exits 0 when it is
//! itself signalled and fails at once when the slots are busy (`-now y`), both parse the
//! command again through a shell, and DRMAA's session does not survive a restart. The
//! supervisor's status file is the command's exact exit status or signal; the job id
//! `qsub -terse` prints is written down, so a restarted server finds the job.
//!
//! - Start: `qsub -terse -N lrpymrpc-<job id> -wd <job dir> -o <run dir>/node.log -j y
//!   -S /bin/sh -V -r n [-q] [-P] [-pe smp N] [-l h_vmem=<per slot>,h_rt=<limit>,
//!   <license>=N] [--sge-arg...] <run dir>/job.sh`; the script holds every word quoted.
//! - Stop: `qdel <id>`: Grid Engine kills the job's processes (the supervisor and the
//!   command, by the job's group id); nothing is left in `qstat`.
//! - Queued: one `qstat -u '*'` for every job each `--sge-poll-interval`: a waiting job's
//!   client hears `queued by Grid Engine (qw)`, then where it started; a job in the
//!   error state (`Eqw`: it will never start) is deleted and fails as `UNAVAILABLE`
//!   with Grid Engine's reason (`qstat -j`); a job gone from `qstat` without a status
//!   never started or is lost, never a success.
//! - Resources: cores as `-pe <--sge-pe> N`, memory as `h_vmem` per slot (the request
//!   divided by the slots), each license as a consumable complex of its name (declare
//!   them `JOB` consumables, or they count once per slot); what the cluster could ever
//!   give is read from `qhost` and the global host's `complex_values`.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use lrpymrpc_units::human_duration;

use crate::executor::batch::{self, Listed, QueueState, Scheduler};
use crate::executor::confine::Confine;
use crate::executor::process_run::{Runs, Streaming};
use crate::executor::supervised::{self, Adopted, Supervised};
use crate::executor::{Events, Executor, JobEvent, Launch, ProcessEnd, TimeLimits};
use crate::resources::Capacity;

/// Every job this server submits is named with this prefix and the job's id.
pub const JOB_NAME_PREFIX: &str = "lrpymrpc-";
/// The longest a `qsub`, `qstat` or `qdel` may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// The name a batch run's scheduler is written down as (`batch.rs`).
const SCHEDULER: &str = "gridengine";

/// What the administrator chose for Grid Engine.
#[derive(Debug, Clone)]
pub struct GridEngineOptions {
    /// `--sge-queue`.
    pub queue: Option<String>,
    /// `--sge-project`.
    pub project: Option<String>,
    /// `--sge-arg`, each passed to qsub as it is.
    pub args: Vec<String>,
    /// `--sge-pe`: the parallel environment cores are asked in.
    pub parallel_environment: String,
    /// How often jobs are looked up in the queue, all in one `qstat`.
    pub poll_interval: Duration,
    /// How long the start-up probe job may wait for a slot.
    pub probe_timeout: Duration,
}

impl Default for GridEngineOptions {
    fn default() -> GridEngineOptions {
        GridEngineOptions {
            queue: None,
            project: None,
            args: Vec::new(),
            parallel_environment: "smp".into(),
            poll_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(120),
        }
    }
}

/// Why the Grid Engine executor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GridEngineError {
    #[error("--executor gridengine: `{0}` is not on PATH")]
    Missing(&'static str, #[source] which::Error),
    #[error("--executor gridengine: the probe job failed: {0}")]
    Probe(String),
    #[error(
        "--executor gridengine: the job root `{root}` is not the same on the host that ran the probe job \
         ({seen}); hint: put --root on a filesystem every execution host mounts at the same path"
    )]
    NotShared { root: PathBuf, seen: String },
    #[error(
        "--executor gridengine: the server binary `{binary}` does not run on the host that ran the probe job \
         ({seen}); hint: install lrpymrpc-server at the same path on every execution host"
    )]
    NoBinary { binary: PathBuf, seen: String },
    #[error("--executor gridengine: asking `{0}` failed: {1}")]
    Query(&'static str, String),
    #[error("--executor gridengine: {0}")]
    Io(#[from] io::Error),
}

/// Runs commands as Grid Engine batch jobs.
#[derive(Debug, Clone)]
pub struct GridEngineExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    qsub: PathBuf,
    options: GridEngineOptions,
    /// `h_rt` for jobs without a limit of their own, from `--job-timeout` (a minute
    /// more: our own limit speaks first).
    job_timeout: Duration,
    root: PathBuf,
    binary: PathBuf,
    /// The server's `SGE_*` variables (`SGE_ROOT`, `SGE_CELL`, the ports).
    sge_env: Vec<(OsString, OsString)>,
    runs: Runs,
    queue: Arc<GridEngineQueue>,
    watch: Arc<batch::Watch<GridEngineQueue>>,
}

/// Grid Engine's queue, as `qstat` lists it and `qdel` empties it; jobs are known by
/// their Grid Engine job ids.
#[derive(Debug)]
struct GridEngineQueue {
    qstat: PathBuf,
    qdel: PathBuf,
    sge_env: Vec<(OsString, OsString)>,
}

impl GridEngineExecutor {
    /// Finds qsub, qstat and qdel.
    pub fn new(
        options: GridEngineOptions,
        root: &Path,
        job_timeout: Duration,
    ) -> Result<GridEngineExecutor, GridEngineError> {
        let find = |name: &'static str| which::which(name).map_err(|e| GridEngineError::Missing(name, e));
        let sge_env: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("SGE_")).collect();
        let queue = Arc::new(GridEngineQueue { qstat: find("qstat")?, qdel: find("qdel")?, sge_env: sge_env.clone() });
        let watch = batch::Watch::new(queue.clone(), options.poll_interval);
        Ok(GridEngineExecutor {
            inner: Arc::new(Inner {
                qsub: find("qsub")?,
                options,
                job_timeout,
                root: root.to_path_buf(),
                binary: batch::this_binary()?,
                sge_env,
                runs: Runs::default(),
                queue,
                watch,
            }),
        })
    }

    /// Submits a job that reads a file just written under the job root and runs the
    /// server binary, and waits (at most the probe timeout) for what it wrote back.
    pub async fn probe(&self, root: &Path) -> Result<(), GridEngineError> {
        let inner = &self.inner;
        let dir = root.join("lrpymrpc-gridengine");
        let stamp = format!("{}-{}", std::process::id(), unix_ms());
        let (token, answer) = (dir.join(format!("probe-{stamp}")), dir.join(format!("probe-{stamp}.answer")));
        let text = format!("lrpymrpc probe {stamp}");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&token, &text)?;
        let script = dir.join(format!("probe-{stamp}.sh"));
        let quote = |path: &Path| format!("'{}'", path.display().to_string().replace('\'', "'\\''"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{{ cat {token} && {binary} --version >/dev/null; }} > {answer}.tmp 2>&1; \
                 echo \"status $?\" >> {answer}.tmp; mv {answer}.tmp {answer}\n",
                token = quote(&token),
                binary = quote(&inner.binary),
                answer = quote(&answer),
            ),
        )?;
        let log = dir.join(format!("probe-{stamp}.log"));
        let mut command =
            inner.qsub_command(&format!("{JOB_NAME_PREFIX}probe-{stamp}"), &dir, &Confine::default(), None);
        command.arg("-o").arg(&log).arg(&script);
        let cleanup = || {
            for file in [&token, &answer, &script, &log] {
                let _ = std::fs::remove_file(file);
            }
        };
        let job = match submit(command).await {
            Ok(job) => job,
            Err(why) => {
                cleanup();
                return Err(GridEngineError::Probe(why));
            }
        };
        let started = std::time::Instant::now();
        let (mut looked, mut absent) = (std::time::Instant::now(), 0);
        let said = loop {
            if let Ok(said) = std::fs::read_to_string(&answer) {
                break said;
            }
            // Every second: a job Grid Engine will never start, or one gone without an
            // answer, fails the probe now, not at its timeout.
            let mut failed = None;
            if looked.elapsed() >= Duration::from_secs(1) {
                looked = std::time::Instant::now();
                match inner.queue.list(std::slice::from_ref(&job)).await.map(|listed| listed.into_iter().next()) {
                    Some(Some(Listed { state: QueueState::Refused(why), .. })) => failed = Some(why),
                    Some(None) if absent >= 1 && std::fs::read_to_string(&answer).is_err() => {
                        let log = std::fs::read_to_string(&log).unwrap_or_default();
                        failed = Some(format!("it ended without an answer ({})", log.trim().replace('\n', "; ")));
                    }
                    Some(None) => absent += 1,
                    _ => {}
                }
            }
            if failed.is_some() || started.elapsed() > inner.options.probe_timeout {
                inner.queue.delete(&job).await;
                cleanup();
                // The host could not even enter the probe's directory on the root.
                if let Some(why) = failed.as_ref().filter(|why| why.contains(&dir.display().to_string())) {
                    return Err(GridEngineError::NotShared { root: root.to_path_buf(), seen: why.clone() });
                }
                return Err(GridEngineError::Probe(failed.unwrap_or_else(|| {
                    format!(
                        "it did not run within {} (no free slot?); hint: --sge-probe-timeout, or check `qstat -f`",
                        human_duration(inner.options.probe_timeout)
                    )
                })));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        cleanup();
        let (printed, status) = said.rsplit_once("status ").unwrap_or((&said, ""));
        match (status.trim() == "0", printed.starts_with(&text)) {
            (true, true) => Ok(()),
            (_, false) => Err(GridEngineError::NotShared { root: root.to_path_buf(), seen: printed.trim().into() }),
            (false, true) => Err(GridEngineError::NoBinary {
                binary: inner.binary.clone(),
                seen: printed[text.len()..].trim().to_string(),
            }),
        }
    }

    /// What the cluster could ever give one job: the most CPUs and memory one host has
    /// (`qhost`), and each consumable of the global host (`qconf -se global`) as a
    /// license pool, with `default_cpus` for jobs that ask for none.
    pub async fn capacity(&self, default_cpus: u32) -> Result<Capacity, GridEngineError> {
        let hosts = self.output("qhost", "qhost", &[]).await?;
        let global = self.output("qconf -se global", "qconf", &["-se", "global"]).await?;
        Ok(parse_capacity(&hosts, &global, default_cpus))
    }

    async fn output(&self, what: &'static str, program: &str, args: &[&str]) -> Result<String, GridEngineError> {
        let path = which::which(program).map_err(|e| GridEngineError::Query(what, e.to_string()))?;
        let mut command = Command::new(path);
        command.args(args).envs(self.inner.sge_env.iter().cloned()).stdin(std::process::Stdio::null());
        command.kill_on_drop(true);
        match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
            Ok(Ok(output)) if output.status.success() => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            Ok(Ok(output)) => {
                Err(GridEngineError::Query(what, String::from_utf8_lossy(&output.stderr).trim().to_string()))
            }
            Ok(Err(error)) => Err(GridEngineError::Query(what, error.to_string())),
            Err(_) => Err(GridEngineError::Query(what, format!("no answer within {}", human_duration(QUERY_TIMEOUT)))),
        }
    }

    /// Deletes the jobs of `job_ids` (jobs an earlier run of the server left behind),
    /// by their names.
    pub async fn cancel_left_behind(&self, job_ids: &[String]) {
        for batch in job_ids.chunks(batch::NAMES_PER_QUERY) {
            let names: Vec<String> = batch.iter().map(|id| format!("{JOB_NAME_PREFIX}{id}")).collect();
            let mut qdel = Command::new(&self.inner.queue.qdel);
            qdel.args(&names).envs(self.inner.sge_env.iter().cloned()).stdin(std::process::Stdio::null());
            qdel.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
            // qdel fails for names it does not know: most were not running.
            let _ = tokio::time::timeout(QUERY_TIMEOUT, qdel.status()).await;
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis())
}

/// Runs `qsub -terse ...`: the job id it printed, or why it refused.
async fn submit(mut command: Command) -> Result<String, String> {
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
        Ok(Ok(output)) if output.status.success() => {
            let printed = String::from_utf8_lossy(&output.stdout);
            // `ID`, or `ID.FIRST-LAST:STEP` for an array (never ours).
            let id = printed.trim().split('.').next().unwrap_or_default().to_string();
            match !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) {
                true => Ok(id),
                false => Err(format!("qsub printed `{}`, not a job id", printed.trim())),
            }
        }
        Ok(Ok(output)) => {
            let said = String::from_utf8_lossy(&output.stderr).trim().replace('\n', "; ");
            Err(match said.is_empty() {
                true => format!("qsub ended with {}", crate::executor::describe(&output.status)),
                false => said,
            })
        }
        Ok(Err(error)) => Err(format!("qsub could not run: {error}")),
        Err(_) => Err(format!("qsub did not answer within {}", human_duration(QUERY_TIMEOUT))),
    }
}

impl Inner {
    /// `qsub` with the administrator's options, a job name and a working directory,
    /// and what the job was granted; the script follows.
    fn qsub_command(&self, name: &str, dir: &Path, confine: &Confine, wall: Option<Duration>) -> Command {
        let mut command = Command::new(&self.qsub);
        command
            .args(["-terse", "-N", name, "-wd"])
            .arg(dir)
            .args(["-j", "y", "-S", "/bin/sh", "-V", "-r", "n"])
            .envs(self.sge_env.iter().cloned());
        if let Some(queue) = &self.options.queue {
            command.args(["-q", queue]);
        }
        if let Some(project) = &self.options.project {
            command.args(["-P", project]);
        }
        let wall = wall.unwrap_or(self.job_timeout);
        command.args(request_args(confine, &self.options.parallel_environment, wall));
        command.args(&self.options.args);
        command
    }
}

/// qsub's options for what a job was granted: `-pe PE N` for cores, one `-l` with
/// `h_vmem` per slot (whole MiB, rounded up), each license, and `h_rt` (the wall limit
/// and a minute: our own limit speaks first).
fn request_args(confine: &Confine, parallel_environment: &str, wall: Duration) -> Vec<String> {
    let mut args = Vec::new();
    if confine.cpus > 0 {
        args.extend(["-pe".to_string(), parallel_environment.to_string(), confine.cpus.to_string()]);
    }
    let mut resources = vec![format!("h_rt={}", wall.as_secs() + 60)];
    if confine.memory_bytes > 0 {
        let per_slot = confine.memory_bytes.div_ceil(u64::from(confine.cpus.max(1)));
        resources.push(format!("h_vmem={}M", per_slot.div_ceil(1 << 20)));
    }
    resources.extend(confine.licenses.iter().map(|(name, count)| format!("{name}={count}")));
    args.extend(["-l".to_string(), resources.join(",")]);
    args
}

/// `qhost` lines (`HOST ARCH NCPU NSOC NCOR NTHR LOAD MEMTOT ...`) and the global
/// host's `complex_values` into what one job could ever get.
fn parse_capacity(hosts: &str, global: &str, default_cpus: u32) -> Capacity {
    let rows: Vec<Vec<&str>> = hosts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.len() >= 8 && words[0] != "HOSTNAME" && words[0] != "global")
        .collect();
    let cpus = rows.iter().filter_map(|words| words[2].parse::<u32>().ok()).max().unwrap_or(1);
    let memory_bytes = rows.iter().filter_map(|words| qhost_size(words[7])).max().unwrap_or(0);
    let values = global.lines().find_map(|line| line.strip_prefix("complex_values")).map(str::trim).unwrap_or("NONE");
    let licenses = values
        .split(',')
        .filter_map(|pair| {
            let (name, count) = pair.split_once('=')?;
            Some((name.trim().to_string(), count.trim().parse::<u32>().ok()?))
        })
        .collect();
    Capacity { cpus, memory_bytes, licenses, default_cpus: default_cpus.min(cpus), per_cn: Default::default() }
}

/// `23.5G`, `512.0M`, `1.2T` (qhost's memory) in bytes.
fn qhost_size(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let number: f64 = text[..text.len() - 1].parse().ok()?;
    let scale = match unit {
        'K' => 1u64 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
}

impl GridEngineQueue {
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.envs(self.sge_env.iter().cloned()).stdin(std::process::Stdio::null()).kill_on_drop(true);
        command
    }

    /// `qdel ID`, waited for at most [`QUERY_TIMEOUT`].
    async fn delete(&self, job: &str) {
        let mut qdel = self.command(&self.qdel);
        qdel.arg(job).stdout(std::process::Stdio::null());
        match tokio::time::timeout(QUERY_TIMEOUT, qdel.output()).await {
            Ok(Ok(output)) if output.status.success() => {}
            outcome => tracing::warn!(grid_engine_job = job, ?outcome, "qdel did not confirm the delete"),
        }
    }

    /// Grid Engine's reason a job in the error state will never start (`qstat -j`).
    async fn error_reason(&self, job: &str) -> String {
        let mut qstat = self.command(&self.qstat);
        qstat.args(["-j", job]);
        let said = match tokio::time::timeout(QUERY_TIMEOUT, qstat.output()).await {
            Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout).into_owned(),
            _ => String::new(),
        };
        let reasons: Vec<&str> = said
            .lines()
            .filter_map(|line| line.strip_prefix("error reason"))
            .map(|rest| rest.split_once(':').map_or(rest, |(_, reason)| reason).trim())
            .collect();
        match reasons.is_empty() {
            true => "Grid Engine put the job in its error state (Eqw)".into(),
            false => format!("Grid Engine will not start the job (Eqw): {}", reasons.join("; ")),
        }
    }
}

#[tonic::async_trait]
impl batch::Scheduler for GridEngineQueue {
    fn title(&self) -> &'static str {
        "Grid Engine"
    }

    /// One `qstat -u '*'` (every user's pending and running jobs); `names` are job ids.
    async fn list(&self, names: &[String]) -> Option<Vec<Listed>> {
        let mut qstat = self.command(&self.qstat);
        qstat.args(["-u", "*"]);
        let output = match tokio::time::timeout(QUERY_TIMEOUT, qstat.output()).await {
            Ok(Ok(output)) if output.status.success() => output,
            outcome => {
                tracing::debug!(?outcome, "qstat failed: the queue state is unknown");
                return None;
            }
        };
        let mut listed = parse_qstat(&String::from_utf8_lossy(&output.stdout));
        listed.retain(|job| names.contains(&job.name));
        for job in &mut listed {
            if let QueueState::Refused(_) = job.state {
                job.state = QueueState::Refused(self.error_reason(&job.name).await);
            }
        }
        Some(listed)
    }

    async fn cancel(&self, name: &str) {
        self.delete(name).await;
    }
}

/// `qstat` lines (`job-ID prior name user state date time [queue] slots ...`) into
/// jobs by id: `qw`/`hqw` pending, `r`/`t`/`Rr` running (on `queue@host`), any `E`
/// refused, the rest (`dr`, suspended) other.
fn parse_qstat(text: &str) -> Vec<Listed> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let id = *words.first()?;
            if words.len() < 7 || !id.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let code = words[4];
            let state = if code.contains('E') {
                QueueState::Refused(String::new())
            } else if code.contains('d') {
                QueueState::Other
            } else if code.ends_with("qw") {
                QueueState::Pending(code.to_string())
            } else if code.contains('r') || code.contains('t') {
                QueueState::Running(words.get(7).filter(|queue| queue.contains('@')).unwrap_or(&"a host").to_string())
            } else {
                QueueState::Other
            };
            Some(Listed { name: id.to_string(), state })
        })
        .collect()
}

/// File work on the job root (often NFS), on a blocking thread.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)
}

impl GridEngineExecutor {
    /// Follows a job to its end from its files; the node's log is read for the end
    /// (a job that never started says why).
    async fn follow(
        &self,
        job_id: &str,
        (mut run, chunks): (Supervised, tokio::sync::mpsc::Receiver<crate::executor::process_run::Chunk>),
        streaming: Streaming,
        events: &Events,
        limits: TimeLimits,
    ) -> io::Result<ProcessEnd> {
        let inner = &self.inner;
        let stop = run.stop();
        let ran =
            crate::executor::process_run::follow(&mut run, chunks, streaming, events, limits, &inner.runs, stop).await;
        for line in run.node_log() {
            tracing::info!(grid_engine_job = job_id, "{line}");
        }
        inner.watch.retire(job_id, run.hand_over_dir());
        match ran {
            Ok(ended) => Ok(ended.end),
            Err(error) => {
                if let Some(why) = supervised::not_started(&error) {
                    return Ok(ProcessEnd::NotStarted(format!("Grid Engine did not start the command: {why}")));
                }
                match supervised::lost(&error) {
                    Some(why) => Ok(ProcessEnd::Lost(why)),
                    None => Err(error),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Executor for GridEngineExecutor {
    async fn run(&self, launch: Launch, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let inner = &self.inner;
        let id = launch.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{JOB_NAME_PREFIX}{id}");
        let streaming = Streaming { merged: launch.merged_output, progress: launch.progress_updates, own_line: None };
        let (root, binary, job_launch) = (inner.root.clone(), inner.binary.clone(), launch.clone());
        let prepared = off_runtime(move || batch::prepare(&root, &binary, &job_launch)).await??;
        let mut command = inner.qsub_command(&name, &launch.dir, &launch.confine, Some(limits.wall));
        command
            .arg("-o")
            .arg(prepared.node_log())
            .arg(prepared.script())
            .current_dir(&launch.dir)
            .env_clear()
            .envs(launch.env)
            .envs(inner.sge_env.iter().cloned());
        let job_id = match submit(command).await {
            Ok(job_id) => job_id,
            Err(why) => {
                prepared.refused();
                return Ok(ProcessEnd::NotStarted(format!("Grid Engine did not start the command: {why}")));
            }
        };
        tracing::debug!(job = %name, grid_engine_job = %job_id, "submitted");
        let job = inner.watch.track(&job_id, Some(events), Some(&prepared.dir));
        let batch::Submitted { mut run, chunks } = prepared.submitted(SCHEDULER, &job_id, job)?;
        if launch.adoptable {
            run.set_adoptable();
            let _ = events.send(Ok(JobEvent::RunStarted { run: run.name() })).await;
        }
        self.follow(&job_id, (run, chunks), streaming, events, limits).await
    }

    async fn follow_adopted(&self, adopted: Adopted, events: &Events, limits: TimeLimits) -> io::Result<ProcessEnd> {
        let mut run = adopted.run;
        let Some((SCHEDULER, job_id)) = run.batch_job().as_ref().map(|(s, id)| (s.as_str(), id.clone())) else {
            return Ok(ProcessEnd::Lost("the run taken on is not a Grid Engine job".into()));
        };
        run.watch_batch(self.inner.watch.track(&job_id, None, None));
        let streaming = Streaming { merged: adopted.merged, progress: adopted.progress, own_line: None };
        self.follow(&job_id, (run, adopted.chunks), streaming, events, limits).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qstat_lines_parse_into_states_by_job_id() {
        let text = "job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID\n\
                    -----------------------------------------------------------------------------------------------------------------\n\
                    \x20     7 0.55500 lrpymrpc-a root         r     12/06/2026 01:28:16 all.q@vm                           1\n\
                    \x20     8 0.00000 lrpymrpc-b root         qw    12/06/2026 01:28:15                                    2\n\
                    \x20     9 0.00000 lrpymrpc-c root         Eqw   12/06/2026 01:28:15                                    1\n\
                    \x20    10 0.55500 lrpymrpc-d root         dr    12/06/2026 01:28:16 all.q@vm                           1\n";
        let listed = parse_qstat(text);
        let state = |id: &str| listed.iter().find(|job| job.name == id).map(|job| job.state.clone());
        assert_eq!(state("7"), Some(QueueState::Running("all.q@vm".into())));
        assert_eq!(state("8"), Some(QueueState::Pending("qw".into())));
        assert_eq!(state("9"), Some(QueueState::Refused(String::new())));
        assert_eq!(state("10"), Some(QueueState::Other));
        assert_eq!(listed.len(), 4);
    }

    #[test]
    fn a_grant_becomes_qsub_options_with_memory_per_slot() {
        let confine = Confine {
            cpus: 2,
            memory_bytes: 3 << 30,
            licenses: [("spectre".to_string(), 1)].into(),
            ..Confine::default()
        };
        assert_eq!(
            request_args(&confine, "smp", Duration::from_secs(600)),
            ["-pe", "smp", "2", "-l", "h_rt=660,h_vmem=1536M,spectre=1"]
        );
        assert_eq!(request_args(&Confine::default(), "smp", Duration::from_secs(1)), ["-l", "h_rt=61"]);
    }

    #[test]
    fn the_clusters_capacity_is_read_from_qhost_and_the_global_host() {
        let hosts = "HOSTNAME                ARCH         NCPU NSOC NCOR NTHR  LOAD  MEMTOT  MEMUSE  SWAPTO  SWAPUS\n\
                     ----------------------------------------------------------------------------------------------\n\
                     global                  -               -    -    -    -     -       -       -       -       -\n\
                     vm                      lx-amd64        2    1    2    2  0.29   23.5G  347.5M     0.0     0.0\n\
                     big                     lx-amd64       16    2    8   16  0.01  128.0G    1.0G     0.0     0.0\n";
        let global =
            "hostname              global\nload_scaling          NONE\ncomplex_values        spectre=2,hspice=1\n";
        let capacity = parse_capacity(hosts, global, 1);
        assert_eq!((capacity.cpus, capacity.memory_bytes), (16, 128 << 30));
        assert_eq!((capacity.licenses["spectre"], capacity.licenses["hspice"]), (2, 1));
        assert!(parse_capacity(hosts, "complex_values NONE\n", 1).licenses.is_empty());
    }
}
