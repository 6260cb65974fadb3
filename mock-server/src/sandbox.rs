//! `--sandbox`: each job's pip and command run under bubblewrap (`bwrap`). The system
//! is read-only; `/tmp` (size-capped), the job root, the server's TLS directory and its
//! home are empty tmpfs mounts, so other jobs' directories and the server's key are not
//! there; only the job's directory (and the environment it builds) is writable. Every
//! capability is dropped, whoever runs the server: a root server's sandbox cannot
//! unmount its hiding mounts or remount `/` writable. The environment is only what the
//! caller passes (an allow-list, see `execute.rs`). pip shares the host's network (it
//! may need the index); the command gets none unless `--sandbox-network`, and `/run`
//! (the host's sockets) is hidden from it. Every other namespace is new, so a process
//! the command leaves behind dies with it, and the sandbox dies with the server. The
//! Python installation stays visible even when it lives in a hidden directory (pyenv).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The size of the sandbox's `/tmp`: room for a tool's scratch files, not for filling
/// the server's memory.
pub const TMP_BYTES: u64 = 1 << 30;

/// What one sandboxed process may reach besides its job directory.
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    pub writable: &'a [&'a Path],
    pub readable: &'a [&'a Path],
    /// The host's network (pip), or none (the command, unless `--sandbox-network`).
    pub network: bool,
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// Directories replaced by empty tmpfs mounts, parents first.
    hidden: Vec<PathBuf>,
    /// Directories shown again read-only inside hidden ones: the Python installation
    /// (pyenv keeps it in the home directory).
    shown: Vec<PathBuf>,
}

impl Sandbox {
    /// Finds `bwrap` and checks that it can make a sandbox here (user namespaces may
    /// be disabled); the error says why not.
    pub fn new(root: &Path, tls_dir: Option<&Path>) -> Result<Sandbox, String> {
        let bwrap = which::which("bwrap")
            .map_err(|_| "`bwrap` is not on PATH; install bubblewrap (Debian: apt install bubblewrap)".to_string())?;
        let mut hidden: Vec<PathBuf> = vec![PathBuf::from("/tmp"), root.to_path_buf()];
        hidden.extend(tls_dir.map(Path::to_path_buf));
        hidden.extend(std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/").map(PathBuf::from));
        let mut hidden: Vec<PathBuf> = hidden.into_iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
        hidden.sort_by_key(|p| p.components().count());
        hidden.dedup();
        let shown = crate::execute::python()
            .ok()
            .and_then(|python| std::fs::canonicalize(python.base_prefix).ok())
            .filter(|prefix| hidden.iter().any(|h| prefix.starts_with(h)))
            .into_iter()
            .collect();
        let sandbox = Sandbox { bwrap, hidden, shown };
        let reach = Reach { writable: &[], readable: &[], network: false };
        let probe = sandbox.command(root, reach, &[], OsStr::new("true"), &[]);
        let output = probe.into_std().output().map_err(|e| format!("cannot run bwrap: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "bwrap cannot make a sandbox on this machine: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(sandbox)
    }

    /// `program args` in a sandbox with exactly the environment `env`, starting in
    /// `job_dir`, where `job_dir` and `reach.writable` can be written and
    /// `reach.readable` read.
    pub fn command(
        &self,
        job_dir: &Path,
        reach: Reach<'_>,
        env: &[(OsString, OsString)],
        program: &OsStr,
        args: &[&OsStr],
    ) -> Command {
        let mut command = Command::new(&self.bwrap);
        command.args(["--die-with-parent", "--unshare-all", "--cap-drop", "ALL", "--clearenv"]);
        if reach.network {
            command.arg("--share-net");
        }
        command.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        command.args(["--size", &TMP_BYTES.to_string(), "--tmpfs", "/tmp"]);
        if !reach.network && Path::new("/run").is_dir() {
            command.args(["--tmpfs", "/run"]);
        }
        for dir in self.hidden.iter().filter(|dir| dir.as_path() != Path::new("/tmp")) {
            command.arg("--tmpfs").arg(dir);
        }
        for dir in self.shown.iter().map(PathBuf::as_path).chain(reach.readable.iter().copied()) {
            command.arg("--ro-bind").arg(dir).arg(dir);
        }
        for dir in reach.writable.iter().chain(std::iter::once(&job_dir)) {
            command.arg("--bind").arg(dir).arg(dir);
        }
        for (name, value) in env {
            command.arg("--setenv").arg(name).arg(value);
        }
        command.arg("--chdir").arg(job_dir).arg("--").arg(program).args(args);
        command
    }
}
