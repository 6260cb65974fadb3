//! `--sandbox`: each job's pip and command run under bubblewrap (`bwrap`), seeing only
//! what they need rather than the host minus a list. The sandbox's root is empty; into
//! it go, read-only, the system's directories (`/usr`, `/etc`, `/lib*`, `/bin`,
//! `/sbin`, `/sys`), the Python installation, the directories an administrator names
//! (`--sandbox-show`), and what the step reaches (its environment, pinned wheels);
//! `/tmp` is a fresh size-capped tmpfs and the job's own directory the one writable
//! place. Nothing else of the host is there: not the job root (other jobs, the content
//! store, presence files, caches, action records), not home directories, not `/var`,
//! `/opt` or `/srv`. Every secret the server knows of (the TLS directory, the CA key
//! directory beside it, the config file, the job root) is hidden again where it lies
//! inside something shown (`/etc/lrpymrpc/tls`), and so is every entry of `/etc` that
//! other users of the machine cannot read (`/etc/shadow`, host keys): a root server's
//! job, which still owns root's files, sees only what any user could. Every
//! capability is dropped, whoever runs the server: a root server's sandbox cannot
//! unmount its hiding mounts or remount anything writable. The environment is only
//! what the caller passes (an allow-list, see `execute/step.rs`). pip shares the host's
//! network (it may need the index) and sees the resolver's file; the command gets no
//! network unless `--sandbox-network`, and never `/run` (the host's sockets: munge,
//! container runtimes). Every other namespace is new, so a process the command leaves
//! behind dies with it, and the sandbox dies with the server.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::executor::Launch;

/// The size of the sandbox's `/tmp`: room for a tool's scratch files, not for filling
/// the server's memory.
pub const TMP_BYTES: u64 = 1 << 30;

/// The host's directories every sandbox shows read-only (those that exist; a top-level
/// link such as merged-usr's `/bin -> usr/bin` is made as the same link).
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys"];

/// How many entries of `/etc` are looked at for unreadable ones; past it the server
/// refuses to start, since it could not tell what a job would see.
const ETC_SCAN_LIMIT: usize = 200_000;

/// What the server knows that a job must not see, and what the administrator adds.
#[derive(Debug, Clone, Default)]
pub struct SandboxPlan {
    /// The job root: other jobs, the content store, presence, caches, action records.
    pub root: PathBuf,
    /// The serving TLS directory; the CA key directory beside it is hidden too.
    pub tls_dir: Option<PathBuf>,
    /// The config file the server read.
    pub config_file: Option<PathBuf>,
    /// More directories shown read-only (`--sandbox-show`): where a lab's tools live.
    pub show: Vec<PathBuf>,
}

impl SandboxPlan {
    /// The plan for a server with this job root and TLS directory, nothing added.
    pub fn new(root: &Path, tls_dir: Option<&Path>) -> SandboxPlan {
        SandboxPlan { root: root.to_path_buf(), tls_dir: tls_dir.map(Path::to_path_buf), ..Default::default() }
    }
}

/// What one sandboxed process may reach besides its job directory.
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    pub writable: &'a [&'a Path],
    pub readable: &'a [&'a Path],
    /// The host's network (pip), or none (the command, unless `--sandbox-network`).
    pub network: bool,
}

/// One mount of the sandbox's view of the host, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    /// `--symlink TARGET PATH`: a top-level link of the host, made again.
    Link { target: PathBuf, path: PathBuf },
    /// `--ro-bind PATH PATH`.
    Show(PathBuf),
    /// `--tmpfs PATH`: an empty directory over a hidden one.
    HideDir(PathBuf),
    /// `--ro-bind /dev/null PATH`: an empty file over a hidden one.
    HideFile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// The host as every sandbox sees it: what is shown, then what is hidden in it.
    view: Vec<View>,
    /// Where `/etc/resolv.conf` really is when it is a link into `/run`, for steps with
    /// the network.
    resolver: Option<PathBuf>,
}

impl Sandbox {
    /// Finds `bwrap`, works out what a job sees, and checks that bwrap can make a
    /// sandbox here (user namespaces may be disabled); the error says why not.
    pub fn new(plan: &SandboxPlan) -> Result<Sandbox, String> {
        let bwrap = which::which("bwrap")
            .map_err(|_| "`bwrap` is not on PATH; install bubblewrap (Debian: apt install bubblewrap)".to_string())?;
        let view = view_of_host(plan)?;
        let resolver = std::fs::canonicalize("/etc/resolv.conf").ok().filter(|real| real.starts_with("/run"));
        let sandbox = Sandbox { bwrap, view, resolver };
        let reach = Reach { writable: &[], readable: &[], network: false };
        let probe = Launch {
            program: "true".into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: plan.root.clone(),
            merged_output: false,
            progress_updates: false,
            confine: Default::default(),
            adoptable: false,
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
        for view in &self.view {
            match view {
                View::Link { target, path } => push(&[OsStr::new("--symlink"), target.as_os_str(), path.as_os_str()]),
                // `-try`: a Slurm node may lack a directory the server has (`/lib32`).
                View::Show(dir) => push(&[OsStr::new("--ro-bind-try"), dir.as_os_str(), dir.as_os_str()]),
                View::HideDir(dir) => push(&[OsStr::new("--tmpfs"), dir.as_os_str()]),
                View::HideFile(file) => push(&[OsStr::new("--ro-bind"), OsStr::new("/dev/null"), file.as_os_str()]),
            }
        }
        push(&["--dev", "/dev", "--proc", "/proc"].map(OsStr::new));
        let tmp_bytes = TMP_BYTES.to_string();
        push(&["--size", &tmp_bytes, "--tmpfs", "/tmp"].map(OsStr::new));
        if let Some(resolver) = self.resolver.as_deref().filter(|_| reach.network) {
            push(&[OsStr::new("--ro-bind"), resolver.as_os_str(), resolver.as_os_str()]);
        }
        for dir in reach.readable {
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
            confine: launch.confine,
            adoptable: launch.adoptable,
        }
    }
}

/// The mounts that make the host as a job sees it: the system directories, the Python
/// installation and the administrator's, then every secret inside them hidden.
fn view_of_host(plan: &SandboxPlan) -> Result<Vec<View>, String> {
    let mut view = Vec::new();
    let mut shown: Vec<PathBuf> = Vec::new();
    for dir in SYSTEM_DIRS.iter().map(Path::new) {
        let Ok(meta) = std::fs::symlink_metadata(dir) else { continue };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(dir).map_err(|e| format!("cannot read the link `{}`: {e}", dir.display()))?;
            view.push(View::Link { target, path: dir.to_path_buf() });
        } else if meta.is_dir() {
            shown.push(dir.to_path_buf());
        }
    }
    let python =
        crate::execute::python::python().ok().and_then(|python| std::fs::canonicalize(python.base_prefix).ok());
    shown.extend(python);
    for dir in &plan.show {
        let real = std::fs::canonicalize(dir)
            .map_err(|e| format!("--sandbox-show `{}`: {e}", dir.display()))
            .and_then(|real| match real.is_dir() {
                true => Ok(real),
                false => Err(format!("--sandbox-show `{}` is not a directory", dir.display())),
            })?;
        shown.push(real);
    }
    shown.sort_by_key(|p| p.components().count());
    shown.dedup();
    // A directory inside one already shown is shown by it.
    let mut outermost: Vec<PathBuf> = Vec::new();
    for dir in shown {
        if !outermost.iter().any(|outer| dir.starts_with(outer)) {
            outermost.push(dir);
        }
    }
    view.extend(outermost.iter().cloned().map(View::Show));

    let mut secrets: Vec<PathBuf> = vec![plan.root.clone()];
    if let Some(tls) = &plan.tls_dir {
        secrets.push(tls.clone());
        secrets.push(lrpymrpc_certs::layout::ca_private_dir(tls));
    }
    secrets.extend(plan.config_file.iter().cloned());
    secrets.extend(std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/").map(PathBuf::from));
    let mut hidden: Vec<View> = Vec::new();
    for secret in secrets.iter().filter_map(|p| std::fs::canonicalize(p).ok()) {
        if !outermost.iter().any(|shown| secret.starts_with(shown)) {
            continue; // not in the sandbox at all
        }
        // The Python installation stays visible even inside a hidden home (pyenv): a
        // home that holds it is hidden entry by entry around it.
        if outermost.iter().any(|shown| shown != &secret && shown.starts_with(&secret)) {
            hide_around(&secret, &outermost, &mut hidden)?;
            continue;
        }
        hidden.push(if secret.is_dir() { View::HideDir(secret) } else { View::HideFile(secret) });
    }
    for dir in outermost.iter().filter(|dir| dir.starts_with("/etc") || Path::new("/etc").starts_with(dir)) {
        let etc = if dir.starts_with("/etc") { dir.clone() } else { PathBuf::from("/etc") };
        unreadable_by_others(&etc, &mut hidden, &mut 0)?;
    }
    // Parents before children: a tmpfs over a directory must not cover a later mount.
    hidden.sort_by_key(|view| match view {
        View::HideDir(p) | View::HideFile(p) => p.components().count(),
        _ => 0,
    });
    hidden.dedup();
    view.extend(hidden);
    Ok(view)
}

/// Hides every entry of `dir` but the way to the shown directories inside it.
fn hide_around(dir: &Path, shown: &[PathBuf], hidden: &mut Vec<View>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if shown.iter().any(|s| s == &path) {
            continue;
        }
        if shown.iter().any(|s| s.starts_with(&path)) {
            hide_around(&path, shown, hidden)?;
            continue;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => hidden.push(View::HideDir(path)),
            Ok(kind) if kind.is_symlink() => {} // its target is judged where it lies
            Ok(_) => hidden.push(View::HideFile(path)),
            Err(_) => {}
        }
    }
    Ok(())
}

/// Adds every entry below `dir` that other users cannot read (a directory: cannot
/// list or enter) to `hidden`, without looking inside what is hidden.
fn unreadable_by_others(dir: &Path, hidden: &mut Vec<View>, seen: &mut usize) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > ETC_SCAN_LIMIT {
            return Err(format!(
                "`{}` holds more than {ETC_SCAN_LIMIT} entries; cannot tell what a job may see",
                dir.display()
            ));
        }
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.mode();
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            if mode & 0o005 != 0o005 {
                hidden.push(View::HideDir(entry.path()));
            } else {
                unreadable_by_others(&entry.path(), hidden, seen)?;
            }
        } else if mode & 0o004 == 0 {
            hidden.push(View::HideFile(entry.path()));
        }
    }
    Ok(())
}
