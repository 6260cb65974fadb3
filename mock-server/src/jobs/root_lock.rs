//! One server per job root: a second server on the same `--root` would sweep the
//! first one's jobs as left behind. The first holds an exclusive lock on
//! `ROOT/lrpymrpc-server.lock` (with its pid inside, for the message) for as long as it
//! runs; the kernel lets go of it when the process ends, however it ends.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name in the job root.
pub const LOCK_FILE: &str = "lrpymrpc-server.lock";

/// The held lock; released on drop.
#[derive(Debug)]
pub struct RootLock {
    _file: std::fs::File,
}

impl RootLock {
    /// Takes the root, or says which server has it.
    pub fn take(root: &Path) -> std::io::Result<RootLock> {
        let path = root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(error);
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(in_use(root, &path, holder.trim()));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(RootLock { _file: file })
    }
}

fn in_use(root: &Path, path: &Path, holder: &str) -> std::io::Error {
    let who = match holder.parse::<u32>() {
        Ok(pid) => format!("another lrpymrpc-server (pid {pid})"),
        Err(_) => "another lrpymrpc-server".to_string(),
    };
    std::io::Error::other(format!(
        "--root `{}` is in use by {who}, which holds `{}`: two servers on one root would take each other's jobs \
         for left behind\nhint: give each server a --root of its own, or stop the other one first",
        root.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_server_on_one_root_is_refused_until_the_first_lets_go() {
        let root = tempfile::tempdir().unwrap();
        let first = super::RootLock::take(root.path()).unwrap();
        let refused = super::RootLock::take(root.path()).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("in use by another lrpymrpc-server (pid {})", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("hint: give each server a --root of its own"), "{refused}");
        drop(first);
        super::RootLock::take(root.path()).unwrap();
    }
}
