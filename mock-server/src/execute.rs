//! The Execute step: install the REPO_URL packages with pip into a Python
//! environment (the job's own, or a cached one shared by jobs with the same
//! REPO_URL), then run the command in the job directory, optionally in a sandbox.
//!
//! The command goes through `sh -c`, so both `python x.py` and `bash -c '...'` work,
//! and redirection does too; the Python server's choice is not public (PROTOCOL.md).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use lrpymrpc_proto::{ExecuteResponse, ExitStatus, OutputStream};
use tokio::process::Command;

use crate::envs::{self, EnvCache, Origin};
use crate::error::JobError;
use crate::jobs;
use crate::process::{self, Outcome, Running, Sink, TimeLimits};
use crate::sandbox::{Reach, Sandbox};

/// One `name=url` item of the REPO_URL mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub url: String,
}

/// Parses `name=url,name=url,` (empty items and a trailing comma allowed; an item
/// without `=` is a bare url). A url starting with `-` would be read by pip as an
/// option (`--index-url ...`), so it is refused.
pub fn parse_tool(tool: &str) -> Result<Vec<Requirement>, JobError> {
    let mut requirements = Vec::new();
    for item in tool.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (name, url) = match item.split_once('=') {
            Some((name, url)) => (name.trim(), url.trim()),
            None => (item, item),
        };
        let refuse = |reason: &str| JobError::BadTool { item: item.to_string(), reason: reason.to_string() };
        if url.is_empty() {
            return Err(refuse("the url is empty"));
        }
        if url.starts_with('-') {
            return Err(refuse("a url may not start with `-` (pip would take it as an option)"));
        }
        requirements.push(Requirement { name: name.to_string(), url: url.to_string() });
    }
    Ok(requirements)
}

/// Everything one Execute needs besides the request.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub sink: &'a Sink,
    pub limits: TimeLimits,
    pub running: &'a Running,
    pub env_cache: Option<&'a EnvCache>,
    /// Whose cached environments this job may use: its CN, or everyone's when the
    /// administrator shares them (`--share-env-cache`).
    pub env_scope: &'a str,
    pub sandbox: Option<&'a Sandbox>,
    /// The command may use the network inside the sandbox (`--sandbox-network`).
    pub sandbox_network: bool,
    /// Run job processes in PID namespaces of their own ([`crate::contain`]).
    pub contain: bool,
}

/// How an Execute ended, for the job's lifecycle and the log.
#[derive(Debug)]
pub enum Ended {
    /// The command ran to its end (whatever its status).
    Ran(std::process::ExitStatus),
    /// The client went away.
    Cancelled,
    /// pip failed, a limit stopped it, or the server could not run it; the client
    /// got this error as the stream's status.
    Failed(String),
}

/// Runs the whole Execute step, streaming every line to the context's sink.
pub async fn execute(job_dir: &Path, requirements: &[Requirement], command_line: &str, context: &Context<'_>) -> Ended {
    match execute_steps(job_dir, requirements, command_line, context).await {
        Ok(ended) => ended,
        Err(error) => {
            let message = error.to_string();
            let _ = context.sink.send(Err(error.into())).await;
            Ended::Failed(message)
        }
    }
}

/// A note from the server itself among the command's lines.
async fn say(sink: &Sink, text: &str) {
    let message = ExecuteResponse { message: format!("[lrpymrpc-mock-server] {text}"), ..Default::default() };
    let _ = sink.send(Ok(message)).await;
}

async fn execute_steps(
    job_dir: &Path,
    requirements: &[Requirement],
    command_line: &str,
    context: &Context<'_>,
) -> Result<Ended, JobError> {
    // The environment: none, the job's own, or a cached one (leased while the command runs).
    let mut _lease = None;
    let mut environment = None;
    if !requirements.is_empty() {
        let pinned = match context.env_cache {
            Some(cache) => {
                let (requirements, dir, incoming) =
                    (requirements.to_vec(), job_dir.to_path_buf(), cache.incoming_dir());
                let scope = context.env_scope.to_string();
                // Reads files the job made: off the async threads, never a FIFO or device.
                tokio::task::spawn_blocking(move || envs::pin(&requirements, &dir, &incoming, &scope))
                    .await
                    .map_err(|e| JobError::Io(std::io::Error::other(e)))??
                    .map(|pinned| (cache, pinned))
            }
            None => None,
        };
        if context.env_cache.is_some() && pinned.is_none() {
            say(
                context.sink,
                "REPO_URL names local files that cannot be pinned: building an environment for this job only",
            )
            .await;
        }
        match pinned {
            Some((cache, pinned)) => {
                let copies: Vec<&Path> = pinned.copies.iter().map(PathBuf::as_path).collect();
                let (pinned_requirements, copies) = (&pinned.requirements, &copies);
                let build = |path: PathBuf| async move {
                    build_environment(&path, job_dir, pinned_requirements, copies, context).await
                };
                let waiting = || {
                    let sink = context.sink.clone();
                    tokio::spawn(async move {
                        say(&sink, "waiting for another job that is installing the same REPO_URL").await;
                    });
                };
                let Some((lease, origin)) = cache.acquire(&pinned.key, waiting, build).await? else {
                    return Ok(Ended::Cancelled);
                };
                if origin == Origin::Reused {
                    say(context.sink, "REPO_URL already installed: reusing the cached Python environment").await;
                }
                environment = Some(lease.path().to_path_buf());
                _lease = Some(lease);
            }
            None => {
                let venv = jobs::venv_dir(job_dir);
                if !build_environment(&venv, job_dir, requirements, &[], context).await? {
                    return Ok(Ended::Cancelled);
                }
                environment = Some(venv);
            }
        }
    }
    let readable: Vec<&Path> = environment.iter().map(PathBuf::as_path).collect();
    let args = [OsStr::new("-c"), OsStr::new(command_line)];
    // Python tools block-buffer a pipe; the user wants their progress lines now.
    let mut env = vec![(OsString::from("PYTHONUNBUFFERED"), OsString::from("1"))];
    if let Some(venv) = &environment {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        env.push(("PATH".into(), std::env::join_paths(paths).map_err(std::io::Error::other)?));
        env.push(("VIRTUAL_ENV".into(), venv.into()));
    }
    let reach = Reach { writable: &[], readable: &readable, network: context.sandbox_network };
    let command = command_in(context, job_dir, reach, Step::Command, &env, OsStr::new("sh"), &args);
    match process::run_streaming(command, context.sink, context.limits, context.running).await? {
        Outcome::Exited(status) => {
            let _ = context.sink.send(Ok(exit_message(&status))).await;
            Ok(Ended::Ran(status))
        }
        Outcome::Cancelled => Ok(Ended::Cancelled),
        Outcome::TimedOut(why) => Err(JobError::Stopped(why)),
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
    std::fs::create_dir_all(venv)?;
    let venv_arg = venv.as_os_str();
    let reach = Reach { writable: &[venv], readable: &[], network: true };
    let venv_args = [OsStr::new("-m"), OsStr::new("venv"), venv_arg];
    let create = command_in(context, job_dir, reach, Step::Setup, &[], python.as_os_str(), &venv_args);
    if !setup_step(create, "creating the Python environment", context).await? {
        return Ok(false);
    }
    // argv without a shell: a url is one argument, whatever it contains.
    let mut pip_args: Vec<OsString> =
        ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].iter().map(OsString::from).collect();
    pip_args.extend(requirements.iter().map(|r| OsString::from(&r.url)));
    let pip_args: Vec<&OsStr> = pip_args.iter().map(OsString::as_os_str).collect();
    let venv_python = venv.join("bin").join("python");
    let reach = Reach { writable: &[venv], readable: artifacts, network: true };
    let env = [(OsString::from("PIP_NO_INPUT"), OsString::from("1"))];
    let pip = command_in(context, job_dir, reach, Step::Setup, &env, venv_python.as_os_str(), &pip_args);
    let names: Vec<_> = requirements.iter().map(|r| r.url.as_str()).collect();
    setup_step(pip, &format!("pip install {}", names.join(" ")), context).await
}

/// The Python that makes environments, resolved once: through shims (pyenv) to the
/// real interpreter, so it also runs where the shim's directory is not visible.
#[derive(Debug, Clone)]
pub struct Python {
    pub executable: PathBuf,
    /// Where its standard library lives (`sys.base_prefix`).
    pub base_prefix: PathBuf,
}

/// Finds `python3` (or `python`) on PATH and asks it where it really lives.
pub fn python() -> Result<Python, JobError> {
    static FOUND: std::sync::OnceLock<Option<Python>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let on_path = which::which("python3").or_else(|_| which::which("python")).ok()?;
            let output = std::process::Command::new(on_path)
                .args(["-c", "import sys; print(sys.executable); print(sys.base_prefix)"])
                .output()
                .ok()?;
            let text = String::from_utf8(output.stdout).ok()?;
            let mut lines = text.lines();
            let executable = PathBuf::from(lines.next()?);
            let base_prefix = PathBuf::from(lines.next()?);
            Some(Python { executable, base_prefix })
        })
        .clone()
        .ok_or(JobError::NoPython)
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

/// `program args` in the job directory with the allowed environment plus `env`, in
/// the sandbox when there is one, else in a PID namespace of its own when the server
/// can make one (so nothing it starts outlives it).
fn command_in(
    context: &Context<'_>,
    job_dir: &Path,
    reach: Reach<'_>,
    step: Step,
    env: &[(OsString, OsString)],
    program: &OsStr,
    args: &[&OsStr],
) -> Command {
    let mut full_env = passed_env(step);
    full_env.retain(|(name, _)| !env.iter().any(|(set, _)| set == name));
    full_env.extend_from_slice(env);
    match context.sandbox {
        Some(sandbox) => sandbox.command(job_dir, reach, &full_env, program, args),
        None => {
            let mut command = Command::new(program);
            command.args(args).current_dir(job_dir).env_clear().envs(full_env);
            if context.contain {
                crate::contain::contain(&mut command);
            }
            command
        }
    }
}

/// The last message of a run: the status as a field for lrpymrpc clients, and in
/// words for clients that only print `message`.
fn exit_message(status: &std::process::ExitStatus) -> ExecuteResponse {
    use std::os::unix::process::ExitStatusExt;
    ExecuteResponse {
        message: format!("[lrpymrpc-mock-server] command ended with {}", process::describe(status)),
        stream: OutputStream::Unspecified as i32,
        exit_status: Some(ExitStatus { code: status.code().unwrap_or(0), signal: status.signal().unwrap_or(0) }),
    }
}

/// Runs a setup step; `Ok(false)` when the client went away meanwhile.
async fn setup_step(command: Command, step: &str, context: &Context<'_>) -> Result<bool, JobError> {
    match process::run_streaming(command, context.sink, context.limits, context.running).await? {
        Outcome::Cancelled => Ok(false),
        Outcome::Exited(status) if status.success() => Ok(true),
        Outcome::Exited(status) => {
            Err(JobError::SetupFailed { step: step.to_string(), status: process::describe(&status) })
        }
        Outcome::TimedOut(why) => Err(JobError::Stopped(format!("{step}: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mapping_with_empty_items_and_bare_urls() {
        let parsed = parse_tool("numpy=numpy,, charao=git+https://x/y@v1 ,bare,").unwrap();
        let urls: Vec<_> = parsed.iter().map(|r| (r.name.as_str(), r.url.as_str())).collect();
        assert_eq!(urls, [("numpy", "numpy"), ("charao", "git+https://x/y@v1"), ("bare", "bare")]);
        assert!(parse_tool("").unwrap().is_empty());
    }

    #[test]
    fn refuses_pip_option_injection() {
        let error = parse_tool("x=--index-url=http://evil").unwrap_err();
        assert!(error.to_string().contains("may not start with `-`"), "{error}");
        assert!(parse_tool("x=").is_err());
    }
}
