//! The Execute step: install the REPO_URL packages with pip into the job's own
//! virtual environment, then run the command in the job directory.
//!
//! The command goes through `sh -c`, so both `python x.py` and `bash -c '...'` work,
//! and redirection does too; the Python server's choice is not public (PROTOCOL.md).

use std::path::{Path, PathBuf};

use lrpymrpc_proto::{ExecuteResponse, ExitStatus, OutputStream};
use tokio::process::Command;

use crate::error::JobError;
use crate::jobs;
use crate::process::{self, Outcome, Sink};

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

/// Runs the whole Execute step, streaming every line to `sink`.
pub async fn execute(job_dir: PathBuf, requirements: Vec<Requirement>, command_line: String, sink: Sink) {
    if let Err(error) = execute_steps(&job_dir, &requirements, &command_line, &sink).await {
        let _ = sink.send(Err(error.into())).await;
    }
}

async fn execute_steps(
    job_dir: &Path,
    requirements: &[Requirement],
    command_line: &str,
    sink: &Sink,
) -> Result<(), JobError> {
    let venv = jobs::venv_dir(job_dir);
    let has_venv = !requirements.is_empty();
    if has_venv {
        let python = which::which("python3").or_else(|_| which::which("python")).map_err(|_| JobError::NoPython)?;
        let mut create = Command::new(python);
        create.arg("-m").arg("venv").arg(&venv).current_dir(job_dir);
        if !setup_step(create, "creating the Python environment", sink).await? {
            return Ok(());
        }
        // argv without a shell: a url is one argument, whatever it contains.
        let mut pip = Command::new(venv.join("bin").join("python"));
        pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
            .args(requirements.iter().map(|r| r.url.as_str()))
            .current_dir(job_dir)
            .env("PIP_NO_INPUT", "1");
        let names: Vec<_> = requirements.iter().map(|r| r.url.as_str()).collect();
        if !setup_step(pip, &format!("pip install {}", names.join(" ")), sink).await? {
            return Ok(());
        }
    }
    let mut command = Command::new("sh");
    command.arg("-c").arg(command_line).current_dir(job_dir);
    // Python tools block-buffer a pipe; the user wants their progress lines now.
    command.env("PYTHONUNBUFFERED", "1");
    if has_venv {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths).map_err(std::io::Error::other)?);
        command.env("VIRTUAL_ENV", &venv);
    }
    if let Outcome::Exited(status) = process::run_streaming(command, sink).await? {
        let _ = sink.send(Ok(exit_message(&status))).await;
    }
    Ok(())
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
async fn setup_step(command: Command, step: &str, sink: &Sink) -> Result<bool, JobError> {
    match process::run_streaming(command, sink).await? {
        Outcome::Cancelled => Ok(false),
        Outcome::Exited(status) if status.success() => Ok(true),
        Outcome::Exited(status) => {
            Err(JobError::SetupFailed { step: step.to_string(), status: process::describe(&status) })
        }
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
