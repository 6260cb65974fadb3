//! `--sandbox`: each job's pip and command run under bubblewrap (`bwrap`). The system
//! is read-only; `/tmp`, the job root, the server's TLS directory and its home are
//! empty tmpfs mounts, so other jobs' directories and the server's key are not there;
//! only the job's directory (and the environment it builds) is writable. The network
//! stays shared (pip may need it); every other namespace is new, and the sandbox
//! dies with the server. The Python installation stays visible even when it lives in
//! a hidden directory (pyenv).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use tokio::process::Command;

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
        let probe = sandbox.command(root, &[], &[], OsStr::new("true"), &[]);
        let output = probe.into_std().output().map_err(|e| format!("cannot run bwrap: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "bwrap cannot make a sandbox on this machine: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(sandbox)
    }

    /// `program args` in a sandbox where `job_dir` and `writable` can be written and
    /// `readable` read, starting in `job_dir`.
    pub fn command(
        &self,
        job_dir: &Path,
        writable: &[&Path],
        readable: &[&Path],
        program: &OsStr,
        args: &[&OsStr],
    ) -> Command {
        let mut command = Command::new(&self.bwrap);
        command.args(["--die-with-parent", "--unshare-all", "--share-net", "--ro-bind", "/", "/"]);
        command.args(["--dev", "/dev", "--proc", "/proc"]);
        for dir in &self.hidden {
            command.arg("--tmpfs").arg(dir);
        }
        for dir in self.shown.iter().map(PathBuf::as_path).chain(readable.iter().copied()) {
            command.arg("--ro-bind").arg(dir).arg(dir);
        }
        for dir in writable.iter().chain(std::iter::once(&job_dir)) {
            command.arg("--bind").arg(dir).arg(dir);
        }
        command.arg("--chdir").arg(job_dir).arg("--").arg(program).args(args);
        command
    }
}
