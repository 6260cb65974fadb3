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
    /// commands run and the files are read; call it off the async threads).
    pub fn fingerprint(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let fresh = |taken: &Option<(Instant, String)>| match taken {
            Some((at, print)) if at.elapsed() < self.refresh => Some(print.clone()),
            _ => None,
        };
        if let Some(print) = fresh(&self.taken.lock().unwrap_or_else(|p| p.into_inner())) {
            return print;
        }
        let print = self.take();
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, before)) = taken.as_ref()
            && *before != print
        {
            tracing::warn!(before = %before, now = %print, "the action cache's tools changed: records made with the old ones no longer answer");
        }
        *taken = Some((Instant::now(), print.clone()));
        print
    }

    /// Runs every command and reads every path: one digest of what they said and hold.
    fn take(&self) -> String {
        let mut hasher = Hasher::default();
        let mut part = |name: &str, bytes: &[u8]| {
            hasher.update(format!("{name} {}\n", bytes.len()).as_bytes());
            hasher.update(bytes);
        };
        for command in &self.commands {
            part("command", command.as_bytes());
            part("said", &run(command));
        }
        for path in &self.paths {
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
        hasher.finish().hash
    }
}

/// What `command` (through `sh -c`) printed on stdout and stderr, and how it ended.
fn run(command: &str) -> Vec<u8> {
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => return format!("cannot start: {error}").into_bytes(),
    };
    let (done, waited) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(TOOL_LIMIT) {
        Ok(Ok(output)) => {
            let mut said = format!("{}\n", output.status).into_bytes();
            said.extend(output.stdout);
            said.extend(output.stderr);
            said
        }
        Ok(Err(error)) => format!("failed: {error}").into_bytes(),
        Err(_) => {
            // SAFETY: kill with the child's own pid and a signal number.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            b"did not finish in time".to_vec()
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
    }
}
