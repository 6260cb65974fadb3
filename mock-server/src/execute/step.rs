//! The Execute step: install the REPO_URL packages with pip into a Python
//! environment (the job's own, or a cached one shared by one certificate's jobs with
//! the same pinned REPO_URL), then run the command in the job directory, through the
//! executor seam (`executor/mod.rs`), optionally in a sandbox.
//!
//! The command goes through `sh -c`, so both `python x.py` and `bash -c '...'` work,
//! and redirection does too; the Python server's choice is not public
//! (`../shared/PROTOCOL.md`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::error::JobError;
use crate::execute::envs::{self, EnvCache, Origin};
use crate::execute::python::python;
use crate::execute::repo_url::Requirement;
use crate::executor::confine::Confine;
use crate::executor::sandbox::{Reach, Sandbox};
use crate::executor::{Events, Executor, JobEvent, Launch, ProcessEnd, TimeLimits, describe};
use crate::jobs;
use crate::resources::Grant;

/// Everything one Execute needs besides the request.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub events: &'a Events,
    /// Where pip's time and the environment cache's hits are counted.
    pub metrics: &'a crate::net::metrics::Metrics,
    pub limits: TimeLimits,
    /// Where the command runs (this machine, or a Slurm node).
    pub executor: &'a dyn Executor,
    /// Where set-up steps (venv, pip) run: this machine, beside the environment cache.
    pub host: &'a dyn Executor,
    pub env_cache: Option<&'a EnvCache>,
    /// Whose cached environments this job may use: its CN, or everyone's when the
    /// administrator shares them (`--share-env-cache`).
    pub env_scope: &'a str,
    pub sandbox: Option<&'a Sandbox>,
    /// The command may use the network inside the sandbox (`--sandbox-network`).
    pub sandbox_network: bool,
    /// Where pip finds packages (wheelhouses, an index).
    pub pip: &'a crate::config::PipSources,
    /// Send stdout and stderr as one stream, in the order written (the client did not
    /// ask for separate streams).
    pub merged_output: bool,
    /// Report rewritten lines as progress (the client asked for it).
    pub progress_updates: bool,
    /// A durable run: its command may outlive the server, for the next to take on.
    pub durable: bool,
    /// The administrator's variables for every command (`--job-env`).
    pub job_env: &'a [(String, String)],
}

/// How an Execute step ended, for the job's lifecycle and the log.
#[derive(Debug)]
pub enum StepEnd {
    /// The command ran to its end (whatever its status).
    Ran(ExitStatus),
    /// The client went away.
    Cancelled,
    /// pip failed, a limit stopped it, or the server could not run it; the client
    /// got this error as the stream's status.
    Failed(String),
}

/// The first half of the step: the Python environment, built or found (pip's lines
/// go to the client as they come). The action cache names a run by what this found.
pub async fn environment(
    job_dir: &Path,
    requirements: &[Requirement],
    context: &Context<'_>,
) -> Result<Environment, StepEnd> {
    match prepare_environment(job_dir, requirements, context).await {
        Ok(Some(environment)) => Ok(environment),
        Ok(None) => Err(StepEnd::Cancelled),
        Err(error) => Err(failed(error, context).await),
    }
}

/// The second half: the command, in `environment`, held to what `grant` gives it.
pub async fn command(
    job_dir: &Path,
    command_line: &str,
    environment: &Environment,
    grant: &Grant,
    context: &Context<'_>,
) -> StepEnd {
    match run_command(job_dir, command_line, environment.path(), grant, context).await {
        Ok(ended) => ended,
        Err(error) => failed(error, context).await,
    }
}

/// An error ends the step: the client gets it as the stream's status.
async fn failed(error: JobError, context: &Context<'_>) -> StepEnd {
    let message = error.to_string();
    let _ = context.events.send(Err(error)).await;
    StepEnd::Failed(message)
}

/// A note from the server itself among the command's lines.
async fn say(events: &Events, text: &str) {
    let _ = events.send(Ok(JobEvent::Note(text.to_string()))).await;
}

/// The Python environment a command runs in: none (no REPO_URL), the job's own, or a
/// cached one, leased while the command runs.
#[derive(Debug)]
pub enum Environment {
    None,
    /// Built for this job alone, and why it is not shared.
    Own(PathBuf, &'static str),
    Cached(envs::Lease),
}

impl Environment {
    fn path(&self) -> Option<&Path> {
        match self {
            Environment::None => None,
            Environment::Own(path, _) => Some(path),
            Environment::Cached(lease) => Some(lease.path()),
        }
    }

    /// The environment as installed, for the action cache's key: `none`, or the
    /// pinned REPO_URL and the fingerprint of what pip installed; the reason when it
    /// cannot be named (built for this job alone).
    pub fn identity(&self) -> Result<String, &'static str> {
        match self {
            Environment::None => Ok("none".into()),
            Environment::Own(_, why) => Err(why),
            Environment::Cached(lease) => Ok(lease.identity()),
        }
    }
}

/// Builds or finds the environment for `requirements`; `None` when the client went
/// away meanwhile. Shared only when the REPO_URL could be pinned (`envs::pin`).
async fn prepare_environment(
    job_dir: &Path,
    requirements: &[Requirement],
    context: &Context<'_>,
) -> Result<Option<Environment>, JobError> {
    if requirements.is_empty() {
        return Ok(Some(Environment::None));
    }
    let pinned = match context.env_cache {
        Some(cache) => {
            let (requirements, dir, incoming) = (requirements.to_vec(), job_dir.to_path_buf(), cache.incoming_dir());
            let scope = context.env_scope.to_string();
            // Reads files the job made: off the async threads, never a FIFO or device.
            tokio::task::spawn_blocking(move || envs::pin(&requirements, &dir, &incoming, &scope))
                .await
                .map_err(|e| JobError::task("pinning REPO_URL", e))??
                .map(|pinned| (cache, pinned))
        }
        None => None,
    };
    let Some((cache, pinned)) = pinned else {
        let why = match context.env_cache {
            Some(_) => {
                say(
                    context.events,
                    "REPO_URL names local files that cannot be pinned: building an environment for \
                    this job only",
                )
                .await;
                "REPO_URL names local files that cannot be pinned"
            }
            None => "this server builds a Python environment for every job (--no-env-cache)",
        };
        let venv = jobs::venv_dir(job_dir);
        crate::net::metrics::Metrics::count(&context.metrics.env_cache, "unshared", 1);
        let built = build_environment(&venv, job_dir, requirements, &[], context).await?;
        return Ok(built.then_some(Environment::Own(venv, why)));
    };
    let copies: Vec<&Path> = pinned.copies.iter().map(PathBuf::as_path).collect();
    let (pinned_requirements, copies) = (&pinned.requirements, &copies);
    let build =
        |path: PathBuf| async move { build_environment(&path, job_dir, pinned_requirements, copies, context).await };
    let waiting = || {
        let events = context.events.clone();
        tokio::spawn(async move {
            say(&events, "waiting for another job that is installing the same REPO_URL").await;
        });
    };
    let Some((lease, origin)) = cache.acquire(&pinned.key, waiting, build).await? else {
        return Ok(None);
    };
    let event = if origin == Origin::Reused { "hit" } else { "build" };
    crate::net::metrics::Metrics::count(&context.metrics.env_cache, event, 1);
    if origin == Origin::Reused {
        say(context.events, "REPO_URL already installed: reusing the cached Python environment").await;
    }
    Ok(Some(Environment::Cached(lease)))
}

/// Runs `sh -c CMD` in the job directory with the environment's `bin` first on PATH.
async fn run_command(
    job_dir: &Path,
    command_line: &str,
    venv: Option<&Path>,
    grant: &Grant,
    context: &Context<'_>,
) -> Result<StepEnd, JobError> {
    let readable: Vec<&Path> = venv.into_iter().collect();
    let args = [OsStr::new("-c"), OsStr::new(command_line)];
    // Python tools block-buffer a pipe; the user wants their progress lines now.
    let mut env = vec![(OsString::from("PYTHONUNBUFFERED"), OsString::from("1"))];
    // The cores granted are the threads a numerical library starts, unless the
    // administrator's job environment says otherwise (the command's own setting wins
    // over both: it is set inside the command).
    let cpus = OsString::from(grant.cpus().to_string());
    for name in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LRPYMRPC_CPUS"] {
        env.push((name.into(), cpus.clone()));
    }
    env.retain(|(name, _)| !context.job_env.iter().any(|(set, _)| OsStr::new(set) == name));
    env.extend(context.job_env.iter().map(|(name, value)| (OsString::from(name), OsString::from(value))));
    if let Some(venv) = venv {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        env.push(("PATH".into(), std::env::join_paths(paths).map_err(std::io::Error::other)?));
        env.push(("VIRTUAL_ENV".into(), venv.into()));
    }
    let reach = Reach { writable: &[], readable: &readable, network: context.sandbox_network };
    let mut launch = launch_in(context, job_dir, reach, Step::Command, &env, OsStr::new("sh"), &args);
    launch.confine = Confine {
        cpu_ids: grant.cpu_ids(),
        cpus: grant.cpus(),
        memory_bytes: grant.memory_bytes(),
        licenses: grant.licenses().clone(),
    };
    let wall = grant.walltime().map_or(context.limits.wall, |walltime| walltime.min(context.limits.wall));
    let end = context.executor.run(launch, context.events, TimeLimits { wall, ..context.limits }).await?;
    command_ended(end, context.events).await
}

/// How the command's run ended, as the step's end: the exit status told to `events`
/// (the last message), or the error that ends the step.
pub async fn command_ended(end: ProcessEnd, events: &Events) -> Result<StepEnd, JobError> {
    match end {
        ProcessEnd::Exited(status) => {
            use std::os::unix::process::ExitStatusExt;
            let exited = JobEvent::Exited { code: status.code().unwrap_or(0), signal: status.signal().unwrap_or(0) };
            let _ = events.send(Ok(exited)).await;
            Ok(StepEnd::Ran(status))
        }
        ProcessEnd::Cancelled => Ok(StepEnd::Cancelled),
        ProcessEnd::LimitReached(limit) => Err(JobError::Stopped { step: None, limit }),
        ProcessEnd::NotStarted(why) => Err(JobError::NotStarted(why)),
        ProcessEnd::Lost(why) => Err(JobError::Lost(why)),
    }
}

/// Creates a virtual environment at `venv` and pip-installs the requirements into it
/// (`artifacts`: where pinned copies of local files are, for the sandbox to show).
/// `Ok(false)` when the client went away meanwhile.
async fn build_environment(
    venv: &Path,
    job_dir: &Path,
    requirements: &[Requirement],
    artifacts: &[&Path],
    context: &Context<'_>,
) -> Result<bool, JobError> {
    let python = python()?.executable;
    let started = std::time::Instant::now();
    std::fs::create_dir_all(venv)?;
    let venv_arg = venv.as_os_str();
    let reach = Reach { writable: &[venv], readable: &[], network: true };
    let venv_args = [OsStr::new("-m"), OsStr::new("venv"), venv_arg];
    let create = launch_in(context, job_dir, reach, Step::Setup, &[], python.as_os_str(), &venv_args);
    if !setup_step(create, "creating the Python environment", context).await? {
        return Ok(false);
    }
    // argv without a shell: a url is one argument, whatever it contains.
    let mut pip_args: Vec<OsString> =
        ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].iter().map(OsString::from).collect();
    pip_args.extend(context.pip.args());
    pip_args.extend(requirements.iter().map(|r| OsString::from(&r.url)));
    let pip_args: Vec<&OsStr> = pip_args.iter().map(OsString::as_os_str).collect();
    let venv_python = venv.join("bin").join("python");
    // The wheelhouses are read-only to pip, in the sandbox too.
    let wheelhouses: Vec<&Path> = context.pip.find_links.iter().map(PathBuf::as_path).collect();
    let readable: Vec<&Path> = artifacts.iter().copied().chain(wheelhouses).collect();
    let reach = Reach { writable: &[venv], readable: &readable, network: true };
    let env = [(OsString::from("PIP_NO_INPUT"), OsString::from("1"))];
    let pip = launch_in(context, job_dir, reach, Step::Setup, &env, venv_python.as_os_str(), &pip_args);
    let names: Vec<_> = requirements.iter().map(|r| r.url.as_str()).collect();
    let installed = setup_step(pip, &format!("pip install {}", names.join(" ")), context).await;
    context.metrics.step("pip", started.elapsed());
    installed
}

/// Which kind of job process: setup (venv, pip) may see pip's settings and proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Setup,
    Command,
}

/// What a job process sees of the server's environment: an allow-list (search path,
/// locale, time zone, terminal; for pip also its settings and proxies), never the
/// server's whole environment, which may hold its secrets.
fn passed_env(step: Step) -> Vec<(OsString, OsString)> {
    const ALWAYS: &[&str] =
        &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM"];
    const SETUP: &[&str] = &[
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    ];
    std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            ALWAYS.contains(&name.as_ref())
                || (step == Step::Setup && (SETUP.contains(&name.as_ref()) || name.starts_with("PIP_")))
        })
        .collect()
}

/// `program args` in the job directory with the allowed environment plus `env`,
/// wrapped in the sandbox when there is one.
fn launch_in(
    context: &Context<'_>,
    job_dir: &Path,
    reach: Reach<'_>,
    step: Step,
    env: &[(OsString, OsString)],
    program: &OsStr,
    args: &[&OsStr],
) -> Launch {
    let mut full_env = passed_env(step);
    full_env.retain(|(name, _)| !env.iter().any(|(set, _)| set == name));
    full_env.extend_from_slice(env);
    let launch = Launch {
        program: program.to_os_string(),
        args: args.iter().map(|arg| arg.to_os_string()).collect(),
        env: full_env,
        dir: job_dir.to_path_buf(),
        merged_output: context.merged_output,
        progress_updates: context.progress_updates,
        confine: Default::default(),
        adoptable: step == Step::Command && context.durable,
    };
    match context.sandbox {
        Some(sandbox) => sandbox.wrap(launch, reach),
        None => launch,
    }
}

/// Runs a setup step; `Ok(false)` when the client went away meanwhile.
async fn setup_step(launch: Launch, step: &str, context: &Context<'_>) -> Result<bool, JobError> {
    match context.host.run(launch, context.events, context.limits).await? {
        ProcessEnd::Cancelled => Ok(false),
        ProcessEnd::Exited(status) if status.success() => Ok(true),
        ProcessEnd::Exited(status) => Err(JobError::SetupFailed { step: step.to_string(), status: describe(&status) }),
        ProcessEnd::LimitReached(limit) => Err(JobError::Stopped { step: Some(step.to_string()), limit }),
        ProcessEnd::NotStarted(why) => Err(JobError::NotStarted(why)),
        ProcessEnd::Lost(why) => Err(JobError::Lost(why)),
    }
}
