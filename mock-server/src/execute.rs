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
use crate::sandbox::Sandbox;

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
    pub sandbox: Option<&'a Sandbox>,
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
        let key = context.env_cache.and_then(|cache| Some((cache, envs::cache_key(requirements, job_dir)?)));
        match key {
            Some((cache, key)) => {
                let build =
                    |path: PathBuf| async move { build_environment(&path, job_dir, requirements, context).await };
                let waiting = || {
                    let sink = context.sink.clone();
                    tokio::spawn(async move {
                        say(&sink, "waiting for another job that is installing the same REPO_URL").await;
                    });
                };
                let Some((lease, origin)) = cache.acquire(&key, waiting, build).await? else {
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
                if !build_environment(&venv, job_dir, requirements, context).await? {
                    return Ok(Ended::Cancelled);
                }
                environment = Some(venv);
            }
        }
    }
    let readable: Vec<&Path> = environment.iter().map(PathBuf::as_path).collect();
    let args = [OsStr::new("-c"), OsStr::new(command_line)];
    let mut command = command_in(context, job_dir, &[], &readable, OsStr::new("sh"), &args);
    // Python tools block-buffer a pipe; the user wants their progress lines now.
    command.env("PYTHONUNBUFFERED", "1");
    if let Some(venv) = &environment {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths).map_err(std::io::Error::other)?);
        command.env("VIRTUAL_ENV", venv);
    }
    match process::run_streaming(command, context.sink, context.limits, context.running).await? {
        Outcome::Exited(status) => {
            let _ = context.sink.send(Ok(exit_message(&status))).await;
            Ok(Ended::Ran(status))
        }
        Outcome::Cancelled => Ok(Ended::Cancelled),
        Outcome::TimedOut(why) => Err(JobError::Stopped(why)),
    }
}

/// Creates a virtual environment at `venv` and pip-installs the requirements into it.
/// `Ok(false)` when the client went away meanwhile.
async fn build_environment(
    venv: &Path,
    job_dir: &Path,
    requirements: &[Requirement],
    context: &Context<'_>,
) -> Result<bool, JobError> {
    let python = python()?.executable;
    std::fs::create_dir_all(venv)?;
    let venv_arg = venv.as_os_str();
    let create = command_in(
        context,
        job_dir,
        &[venv],
        &[],
        python.as_os_str(),
        &[OsStr::new("-m"), OsStr::new("venv"), venv_arg],
    );
    if !setup_step(create, "creating the Python environment", context).await? {
        return Ok(false);
    }
    // argv without a shell: a url is one argument, whatever it contains.
    let mut pip_args: Vec<OsString> =
        ["-m", "pip", "install", "--disable-pip-version-check", "--no-input"].iter().map(OsString::from).collect();
    pip_args.extend(requirements.iter().map(|r| OsString::from(&r.url)));
    let pip_args: Vec<&OsStr> = pip_args.iter().map(OsString::as_os_str).collect();
    let venv_python = venv.join("bin").join("python");
    let mut pip = command_in(context, job_dir, &[venv], &[], venv_python.as_os_str(), &pip_args);
    pip.env("PIP_NO_INPUT", "1");
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

/// `program args` in the job directory, in the sandbox when there is one.
fn command_in(
    context: &Context<'_>,
    job_dir: &Path,
    writable: &[&Path],
    readable: &[&Path],
    program: &OsStr,
    args: &[&OsStr],
) -> Command {
    match context.sandbox {
        Some(sandbox) => sandbox.command(job_dir, writable, readable, program, args),
        None => {
            let mut command = Command::new(program);
            command.args(args).current_dir(job_dir);
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
