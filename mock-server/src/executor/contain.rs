//! Keeps every process a job starts inside the job: the command runs as the first
//! process below the init of a PID namespace of its own, so when the command ends (or
//! is stopped) the init exits and the kernel kills everything left in the namespace.
//! A `setsid` daemon, a double fork or a process that left the job's process group
//! cannot outlive the job, which a process-group kill alone cannot promise.
//!
//! Three processes, set up between `fork` and `exec` with async-signal-safe calls only:
//! - the *watcher*, the child the server spawned and waits for: it makes the namespace
//!   (with a user namespace mapping its own ids when the server is not root), forks the
//!   init, and ends exactly as the command ended (same code, or the same signal);
//! - the *init*, PID 1 of the namespace: forks the command, reaps orphans, and reports
//!   the command's wait status to the watcher through a pipe; it dies with the watcher
//!   (`PR_SET_PDEATHSIG`), so a SIGTERM to the job's process group ends everything;
//! - the *command*, which goes on to `exec`.
//!
//! The watcher and the init close every inherited descriptor, so the command's output
//! pipes reach end of file exactly when the command and what it left behind are gone,
//! and the spawn's own exec-error pipe does not wait for them.

use std::io;
use std::sync::OnceLock;

/// Whether this server can put jobs in PID namespaces of their own (checked once by
/// running `true` so); where it cannot, jobs run in a process group only.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let mut probe = std::process::Command::new("true");
        probe.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        probe.stderr(std::process::Stdio::null());
        contain_std(&mut probe);
        probe.status().is_ok_and(|status| status.success())
    })
}

/// Makes `command` run in a PID namespace of its own (see the module docs).
pub fn contain(command: &mut tokio::process::Command) {
    contain_std(command.as_std_mut());
}

fn contain_std(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid, getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Formatted here, before the fork: the child may not allocate.
    let maps = (uid != 0).then(|| IdMaps {
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
    });
    // SAFETY: `enter` makes only async-signal-safe calls and allocates nothing.
    unsafe {
        command.pre_exec(move || enter(maps.as_ref()));
    }
}

/// `uid_map` and `gid_map` lines mapping the server's own ids, for a server that is
/// not root (it needs a user namespace to make a PID namespace).
struct IdMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// In the spawned child: returns `Ok` only in the command's process.
fn enter(maps: Option<&IdMaps>) -> io::Result<()> {
    // The server's signal handlers (tokio's, for SIGCHLD, SIGTERM, SIGINT) survive a
    // fork and would run in the watcher and the init, which never exec: a SIGTERM to the
    // job's group would not end the watcher, and a handler could meet state another
    // thread was changing at the fork. Back to the defaults, before any child exists.
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: resetting a disposition to its default is async-signal-safe.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
    let flags = match maps {
        Some(_) => libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUSER,
        None => libc::CLONE_NEWPID | libc::CLONE_NEWNS,
    };
    // SAFETY: unshare with namespace flags has no memory effects.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(maps) = maps {
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", &maps.uid_map)?;
        write_file(c"/proc/self/gid_map", &maps.gid_map)?;
    }
    // The job gets a /proc of its own PID namespace (mounted by its init), so `/proc/$$`
    // and tools that read `/proc/<own pid>` (psutil) see the job's processes. Only in a
    // mount namespace whose mounts do not propagate back to the host's; where `/` cannot
    // be made private, the host's /proc stays.
    // SAFETY: mount with null source, type and data changes only this namespace's propagation.
    let private = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    } == 0;
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    // SAFETY: fork in a single-threaded child; both sides only make async-signal-safe calls.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => init(read_end, write_end, private),
        init_pid => watch(init_pid, read_end, write_end),
    }
}

fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a valid C string path; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != data.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

/// PID 1 of the namespace: forks the command (which returns `Ok` to go on to exec),
/// reaps everything, reports the command's status, and exits, which kills the rest.
fn init(read_end: i32, write_end: i32, private_mounts: bool) -> io::Result<()> {
    // SAFETY: plain system calls on integers and static C strings; `_exit` never returns.
    unsafe {
        libc::close(read_end);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if private_mounts {
            // Mounted by PID 1 of the namespace, so it shows the namespace's processes.
            // Failing leaves the host's /proc: the job still runs.
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null());
        }
        let command = libc::fork();
        match command {
            -1 => libc::_exit(127),
            0 => {
                libc::close(write_end);
                return Ok(());
            }
            _ => {}
        }
        close_all_but(write_end);
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == command {
                let bytes = status.to_ne_bytes();
                libc::write(write_end, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
            if pid == -1 && errno() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}

/// The process the server waits for: ends as the command ended.
fn watch(init_pid: i32, read_end: i32, write_end: i32) -> io::Result<()> {
    // SAFETY: plain system calls on integers and a local buffer; `_exit` never returns.
    unsafe {
        libc::close(write_end);
        close_all_but(read_end);
        let mut bytes = [0u8; 4];
        let mut got = 0;
        while got < bytes.len() {
            let n = libc::read(read_end, bytes.as_mut_ptr().add(got).cast(), bytes.len() - got);
            match n {
                n if n > 0 => got += n as usize,
                -1 if errno() == libc::EINTR => {}
                _ => break,
            }
        }
        let mut ignored = 0;
        while libc::waitpid(init_pid, &mut ignored, 0) == -1 && errno() == libc::EINTR {}
        if got < bytes.len() {
            // The init was killed before the command ended: so was the job.
            die_of(libc::SIGKILL);
        }
        let status = i32::from_ne_bytes(bytes);
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        die_of(if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { libc::SIGKILL });
    }
}

/// Ends this process by `signal`, as the command ended, without a core file.
unsafe fn die_of(signal: i32) -> ! {
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal)
    }
}

/// Closes every descriptor but `keep` (standard streams included).
unsafe fn close_all_but(keep: i32) {
    // SAFETY: closing descriptors this process does not use any more.
    unsafe {
        let keep = keep as libc::c_uint;
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, keep - 1, 0 as libc::c_uint);
        }
        if libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0 as libc::c_uint) != 0 {
            for fd in keep + 1..4096 {
                libc::close(fd as i32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_and_a_killing_signal_come_through() {
        if !available() {
            println!("SKIPPED: no PID namespaces here");
            return;
        }
        use std::os::unix::process::ExitStatusExt;
        let run = |script: &str| {
            let mut command = std::process::Command::new("sh");
            command.args(["-c", script]);
            contain_std(&mut command);
            command.output().unwrap()
        };
        assert_eq!(run("exit 3").status.code(), Some(3));
        assert_eq!(run("kill -9 $$").status.signal(), Some(9));
        let output = run("echo out; echo err >&2");
        assert_eq!((output.stdout.as_slice(), output.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn the_job_sees_its_own_processes_in_proc_and_the_host_keeps_its_own() {
        if !available() {
            println!("SKIPPED: no PID namespaces here");
            return;
        }
        let host_init = std::fs::read("/proc/1/cmdline").unwrap();
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "tr '\\0' ' ' < /proc/$$/cmdline"]);
        contain_std(&mut command);
        let output = command.output().unwrap();
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("sh -c"), "{output:?}");
        assert_eq!(std::fs::read("/proc/1/cmdline").unwrap(), host_init, "the host's /proc is untouched");
    }

    #[test]
    fn daemons_die_with_the_command() {
        if !available() {
            println!("SKIPPED: no PID namespaces here");
            return;
        }
        let marker = format!("30.{}", std::process::id());
        let mut command = std::process::Command::new("sh");
        let daemons = format!("setsid sleep {marker} >/dev/null 2>&1 & (sleep {marker} >/dev/null 2>&1 &) &");
        command.args(["-c", &format!("{daemons} echo started")]);
        contain_std(&mut command);
        assert_eq!(command.output().unwrap().stdout, b"started\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !processes_running(&format!("sleep\0{marker}")).is_empty() {
            assert!(std::time::Instant::now() < deadline, "daemons outlived the command");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Processes whose command line contains `needle` (arguments separated by NUL).
    fn processes_running(needle: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .map(|line| String::from_utf8_lossy(&line).into_owned())
            .filter(|line| line.contains(needle))
            .collect()
    }
}
