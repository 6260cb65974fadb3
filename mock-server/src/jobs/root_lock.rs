//! One server per job root: a second server on the same `--root` would sweep the
//! first one's jobs as left behind. The first holds an exclusive lock on
//! `ROOT/lrpymrpc-server.lock` (with its pid inside, for the message) for as long as it
//! runs; the kernel lets go of it when the process ends, however it ends.
//!
//! A lock can also be held a moment past its server: a process forked just then (a
//! run's supervisor between its `fork` and closing the descriptors it does not own, or
//! any child before its `exec`) shares the lock's open file until it closes it. So a
//! busy lock is asked again for [`TAKE_GRACE`] before the root is refused.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name in the job root.
pub const LOCK_FILE: &str = "lrpymrpc-server.lock";

/// How long a busy lock is asked again before the root is refused: far longer than a
/// forked child keeps a copy, far shorter than a person waits to be told.
pub const TAKE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The held lock; released on drop.
#[derive(Debug)]
pub struct RootLock {
    _file: std::fs::File,
}

impl RootLock {
    /// Takes the root, or says which server has it (after [`TAKE_GRACE`]).
    pub fn take(root: &Path) -> std::io::Result<RootLock> {
        Self::take_within(root, TAKE_GRACE)
    }

    /// [`RootLock::take`], asking a busy lock again for `grace`.
    fn take_within(root: &Path, grace: std::time::Duration) -> std::io::Result<RootLock> {
        let path = root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let give_up = std::time::Instant::now() + grace;
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(error);
            }
            if std::time::Instant::now() >= give_up {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(in_use(root, &path, holder.trim()));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
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
    use std::time::Duration;

    #[test]
    fn a_second_server_on_one_root_is_refused_until_the_first_lets_go() {
        let root = tempfile::tempdir().unwrap();
        let first = super::RootLock::take(root.path()).unwrap();
        let refused = super::RootLock::take_within(root.path(), Duration::from_millis(50)).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("in use by another lrpymrpc-server (pid {})", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("hint: give each server a --root of its own"), "{refused}");
        drop(first);
        super::RootLock::take(root.path()).unwrap();
    }

    #[test]
    fn a_lock_a_forked_child_still_shares_for_a_moment_is_waited_for() {
        let root = tempfile::tempdir().unwrap();
        let first = super::RootLock::take(root.path()).unwrap();
        // What a child forked just before the server ended does: it holds a copy of the
        // lock's open file until it closes it.
        let copy = first._file.try_clone().unwrap();
        drop(first);
        let (took, taken) = std::sync::mpsc::channel();
        let waiter = {
            let root = root.path().to_path_buf();
            std::thread::spawn(move || {
                let outcome = super::RootLock::take_within(&root, Duration::from_secs(30));
                let _ = took.send(());
                outcome
            })
        };
        assert!(taken.recv_timeout(Duration::from_millis(200)).is_err(), "not taken while the copy is open");
        drop(copy);
        waiter.join().unwrap().expect("taken once the copy is closed");
    }
}
