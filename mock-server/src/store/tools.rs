//! What a cached run depends on beyond its inputs, command and Python environment: the
//! server's own tools and data (a simulator, model files), as the administrator names
//! them (`--action-cache-tool 'ngspice --version'`, `--action-cache-path DIR`). Their
//! fingerprint is part of every action-cache key, taken again when older than
//! `--action-cache-tools-refresh`, so after a tool upgrade no record made by the old
//! tools answers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lrpymrpc_cas::Hasher;

/// How long one tool command may take.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// What the administrator named, and its fingerprint as last taken.
#[derive(Debug)]
pub struct Tools {
    commands: Vec<String>,
    paths: Vec<PathBuf>,
    refresh: Duration,
    taken: Mutex<Option<(Instant, String)>>,
}

impl Tools {
    pub fn new(commands: Vec<String>, paths: Vec<PathBuf>, refresh: Duration) -> Tools {
        Tools { commands, paths, refresh, taken: Mutex::new(None) }
    }

    /// Whether anything was named (no fingerprint otherwise: `none`).
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.paths.is_empty()
    }

    /// The fingerprint now: the last one while fresh, else taken again (blocking: the
    /// commands run and the files are read; call it off the async threads). Taken
    /// once for all the callers that find it stale together: they wait for it.
    pub fn fingerprint(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, print)) = taken.as_ref()
            && at.elapsed() < self.refresh
        {
            return print.clone();
        }
        let print = self.take().0;
        if let Some((_, before)) = taken.as_ref()
            && *before != print
        {
            tracing::warn!(before = %before, now = %print, "the action cache's tools changed: records made with the old ones no longer answer");
        }
        *taken = Some((Instant::now(), print.clone()));
        print
    }

    /// At start (and in `check-config`): every command runs and succeeds, every path
    /// is there. A tool that cannot run would fingerprint its own error message and
    /// hide every later upgrade.
    pub fn check(&self) -> Result<(), String> {
        match self.take().1 {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Runs every command and reads every path: one digest of what they said and hold,
    /// and the first one that failed, in words.
    fn take(&self) -> (String, Option<String>) {
        let mut failed = None;
        let mut hasher = Hasher::default();
        let mut part = |name: &str, bytes: &[u8]| {
            hasher.update(format!("{name} {}\n", bytes.len()).as_bytes());
            hasher.update(bytes);
        };
        for command in &self.commands {
            part("command", command.as_bytes());
            let (said, ok) = run(command);
            if !ok {
                let said = String::from_utf8_lossy(&said);
                failed.get_or_insert_with(|| format!("--action-cache-tool `{command}` failed: {}", said.trim()));
            }
            part("said", &said);
        }
        for path in &self.paths {
            if std::fs::metadata(path).is_err() {
                failed.get_or_insert_with(|| format!("--action-cache-path `{}` does not exist", path.display()));
            }
            part("path", path.as_os_str().as_encoded_bytes());
            // The path itself may be a link (`/opt/pdk/current`): what it names counts.
            let mut files = Vec::new();
            list(&std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()), &mut files);
            files.sort();
            for file in files {
                part("file", file.as_os_str().as_encoded_bytes());
                part("holds", &std::fs::read(&file).unwrap_or_else(|e| format!("unreadable: {e}").into_bytes()));
            }
        }
        (hasher.finish().hash, failed)
    }
}

/// What `command` (through `sh -c`, in a process group of its own) printed on stdout
/// and stderr and how it ended, and whether it succeeded within [`TOOL_LIMIT`] (else
/// its whole group is killed).
fn run(command: &str) -> (Vec<u8>, bool) {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", command])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => return (format!("cannot start: {error}").into_bytes(), false),
    };
    let (done, waited) = std::sync::mpsc::channel();
    let group = child.id() as i32;
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(TOOL_LIMIT) {
        Ok(Ok(output)) => {
            let mut said = format!("{}\n", output.status).into_bytes();
            said.extend(output.stdout);
            said.extend(output.stderr);
            (said, output.status.success())
        }
        Ok(Err(error)) => (format!("failed: {error}").into_bytes(), false),
        Err(_) => {
            // SAFETY: kill with the negated id of the group this function made.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            (format!("did not finish within {}", lrpymrpc_units::human_duration(TOOL_LIMIT)).into_bytes(), false)
        }
    }
}

/// The regular files at or below `path`, without following links.
fn list(path: &Path, files: &mut Vec<PathBuf>) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                list(&entry.path(), files);
            }
        }
        Ok(meta) if meta.is_file() => files.push(path.to_path_buf()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_what_the_tools_say_and_the_files_hold() {
        let dir = tempfile::tempdir().unwrap();
        let version = dir.path().join("version");
        std::fs::write(&version, "ngspice-39\n").unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("sub")).unwrap();
        std::fs::write(models.join("sub/nmos.lib"), "* nmos\n").unwrap();
        let command = format!("cat '{}'", version.display());
        let tools = Tools::new(vec![command], vec![models.clone()], Duration::ZERO);
        let first = tools.fingerprint();
        assert_eq!(first, tools.fingerprint(), "the same tools, the same fingerprint");
        std::fs::write(&version, "ngspice-42\n").unwrap();
        let upgraded = tools.fingerprint();
        assert_ne!(first, upgraded, "a tool that says something else");
        std::fs::write(models.join("sub/nmos.lib"), "* nmos, new corner\n").unwrap();
        assert_ne!(upgraded, tools.fingerprint(), "a model file that holds something else");
        assert_eq!(Tools::new(Vec::new(), Vec::new(), Duration::ZERO).fingerprint(), "none");
        assert!(tools.check().is_ok());
        let typo = Tools::new(vec!["ngspce --version".into()], vec![dir.path().join("gone")], Duration::ZERO);
        let why = typo.check().unwrap_err();
        assert!(why.contains("--action-cache-tool `ngspce --version` failed") && why.contains("not found"), "{why}");
    }
}
