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

use crate::executor::Launch;

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
        let shown = crate::python::python()
            .ok()
            .and_then(|python| std::fs::canonicalize(python.base_prefix).ok())
            .filter(|prefix| hidden.iter().any(|h| prefix.starts_with(h)))
            .into_iter()
            .collect();
        let sandbox = Sandbox { bwrap, hidden, shown };
        let reach = Reach { writable: &[], readable: &[], network: false };
        let probe = Launch {
            program: "true".into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: root.to_path_buf(),
            merged_output: false,
            progress_updates: false,
        };
        let probe = sandbox.wrap(probe, reach);
        let output = std::process::Command::new(&probe.program)
            .args(&probe.args)
            .current_dir(&probe.dir)
            .output()
            .map_err(|e| format!("cannot run bwrap: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "bwrap cannot make a sandbox on this machine: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(sandbox)
    }

    /// `launch` wrapped to run in a sandbox, with exactly its environment, starting in
    /// its directory, where that directory and `reach.writable` can be written and
    /// `reach.readable` read. Any executor can run the result.
    pub fn wrap(&self, launch: Launch, reach: Reach<'_>) -> Launch {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|item| item.to_os_string()));
        push(&["--die-with-parent", "--unshare-all", "--cap-drop", "ALL", "--clearenv"].map(OsStr::new));
        if reach.network {
            push(&[OsStr::new("--share-net")]);
        }
        push(&["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"].map(OsStr::new));
        let tmp_bytes = TMP_BYTES.to_string();
        push(&["--size", &tmp_bytes, "--tmpfs", "/tmp"].map(OsStr::new));
        if !reach.network && Path::new("/run").is_dir() {
            push(&["--tmpfs", "/run"].map(OsStr::new));
        }
        for dir in self.hidden.iter().filter(|dir| dir.as_path() != Path::new("/tmp")) {
            push(&[OsStr::new("--tmpfs"), dir.as_os_str()]);
        }
        for dir in self.shown.iter().map(PathBuf::as_path).chain(reach.readable.iter().copied()) {
            push(&[OsStr::new("--ro-bind"), dir.as_os_str(), dir.as_os_str()]);
        }
        for dir in reach.writable.iter().copied().chain(std::iter::once(launch.dir.as_path())) {
            push(&[OsStr::new("--bind"), dir.as_os_str(), dir.as_os_str()]);
        }
        for (name, value) in &launch.env {
            push(&[OsStr::new("--setenv"), name, value]);
        }
        push(&[OsStr::new("--chdir"), launch.dir.as_os_str(), OsStr::new("--"), &launch.program]);
        args.extend(launch.args);
        // bwrap itself needs no environment: the sandboxed process gets `--setenv`'s.
        Launch {
            program: self.bwrap.clone().into_os_string(),
            args,
            env: Vec::new(),
            dir: launch.dir,
            merged_output: launch.merged_output,
            progress_updates: launch.progress_updates,
        }
    }
}
