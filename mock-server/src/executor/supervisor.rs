//! The per-run supervisor: a process of its own session, between the server and a local
//! command, that does not need the server to live. It owns the command's output pipes
//! and appends what they carry to the run's output file, waits for the command, ends
//! what the command left in its process group, and writes how the command ended to the
//! run's status file, atomically, last. The server follows those files
//! (`supervised.rs`) and asks for a stop with SIGTERM; a server that died leaves its
//! runs running, and the next one finds them (issue 30: jobs outlive the server).
//!
//! It is the child the server spawns, set up between `fork` and `exec` (the command
//! is its own child, which goes on to exec, and is killed if the supervisor dies:
//! nothing runs that nobody follows): async-signal-safe calls only, nothing
//! allocated. While it lives it holds an exclusive `flock` on the run's `lock` file, so
//! "is it alive" never trusts a PID that may have been reused, nor a zombie.
//!
//! The output file is a sequence of frames: a 16-byte header (pipe, 3 zero bytes, the
//! length as u32 LE, the monotonic time it was read in nanoseconds as u64 LE) and the
//! bytes. The status file is [`STATUS_MAGIC`], the wait status (i32 LE), the errno of a
//! failed output write (i32 LE, 0 when none) and whether the stop was asked (u8).

use std::io;

/// The file a batch run's supervisor writes first thing on its node (`supervise_here`):
/// the node's name.
pub const HOST_FILE: &str = "host";
/// The output frames' header length.
pub const HEADER_BYTES: usize = 16;
/// The first bytes of a status file (its format's version).
pub const STATUS_MAGIC: &[u8; 8] = b"LRSTAT01";
/// A status file's length.
pub const STATUS_BYTES: usize = 8 + 4 + 4 + 1;
/// The pipe byte of a frame.
pub const PIPE_STDOUT: u8 = 1;
pub const PIPE_STDERR: u8 = 2;
pub const PIPE_MERGED: u8 = 3;

/// How long the command's process group gets between SIGTERM and SIGKILL.
const KILL_GRACE_NS: i64 = 2_000_000_000;
/// How long, after the command ended, output of processes it left behind is read.
const AFTER_EXIT_NS: i64 = KILL_GRACE_NS + 1_000_000_000;
/// How much of a pipe one read takes.
const READ_BYTES: usize = 16 * 1024;

/// The descriptors the supervisor is given, opened by the server before the fork.
#[derive(Debug, Clone, Copy)]
pub struct Descriptors {
    /// The run's directory (`lock`, `pid`, `status` are made in it).
    pub dir: i32,
    /// The output file, opened for appending.
    pub output: i32,
    /// A pipe's writing end (non-blocking) the server reads to learn of new output.
    pub notify: i32,
    /// One pipe for stdout and stderr (in the order written), or two.
    pub merged: bool,
    /// Leave the spawner's session (a local run: the server's signals and its end are
    /// not the run's). On a scheduler's node it stays in the job's, so the scheduler's
    /// stop reaches it.
    pub new_session: bool,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn now_ns() -> i64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time);
    }
    time.tv_sec * 1_000_000_000 + time.tv_nsec
}

/// In the spawned child, as a `pre_exec` hook: becomes the supervisor (never returns
/// there) and returns `Ok` in the command's process, whose stdout and stderr are then
/// the pipes the supervisor reads. Hooks registered after this one run in the command's
/// process only.
///
/// # Safety
/// Only between `fork` and `exec` of a `Command` whose stdin is not a pipe of the
/// server's; the descriptors must be open.
pub unsafe fn enter(fds: Descriptors) -> io::Result<()> {
    // SAFETY: async-signal-safe calls on integers and local buffers only.
    unsafe {
        if fds.new_session && libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let lock = libc::openat(fds.dir, c"lock".as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600);
        if lock < 0 || libc::flock(lock, libc::LOCK_EX | libc::LOCK_NB) != 0 {
            return Err(io::Error::last_os_error());
        }
        write_pid(fds.dir);
        // The status's room is taken now: a disk the output fills still takes the
        // status that says so.
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let status = libc::openat(fds.dir, c"status.tmp".as_ptr(), flags, 0o600);
        if status < 0 || libc::write(status, [0u8; STATUS_BYTES].as_ptr().cast(), STATUS_BYTES) != STATUS_BYTES as isize
        {
            return Err(io::Error::last_os_error());
        }
        libc::close(status);
        let mut out = [0; 2];
        let mut err = [-1; 2];
        if libc::pipe2(out.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || (!fds.merged && libc::pipe2(err.as_mut_ptr(), libc::O_CLOEXEC) != 0)
        {
            return Err(io::Error::last_os_error());
        }
        // Blocked before the fork, so the command's end cannot be missed; taken through
        // a signalfd, so none of the server's handlers ever runs here.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let signals = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if signals < 0 {
            return Err(io::Error::last_os_error());
        }
        let supervisor = libc::getpid();
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // The command: its own process group, the pipes as stdout and stderr,
                // the signals as they were.
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                // A supervisor killed takes its command with it: nothing may run that
                // nobody follows (and whose cores the server gave out again).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != supervisor {
                    libc::_exit(127);
                }
                libc::setpgid(0, 0);
                libc::dup2(out[1], 1);
                libc::dup2(if fds.merged { out[1] } else { err[1] }, 2);
                for fd in [out[0], out[1], err[0], err[1], signals, lock] {
                    if fd > 2 {
                        libc::close(fd);
                    }
                }
                Ok(())
            }
            command => {
                libc::setpgid(command, command);
                // Whatever the command leaves behind becomes this process's child when its
                // parent dies, and is reaped here: never a zombie kept for nobody.
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
                for fd in [out[1], err[1]] {
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
                let run = Run { command, lock, fds, pipes: [out[0], err[0]], signals };
                run.supervise()
            }
        }
    }
}

/// On a batch scheduler's node (`lrpymrpc-server supervise`, `batch.rs`): becomes the
/// supervisor of `command` in the run directory `dir` on the shared job root, writing
/// its output and status there for the server to follow; the scheduler's own stop
/// (SIGTERM) stops the command. Returns only when that could not be set up; a command
/// that cannot be executed says why in its output and exits 127.
pub fn supervise_here(dir: &std::path::Path, merged: bool, command: &[std::ffi::OsString]) -> io::Error {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no command to supervise");
    };
    let opened = std::fs::File::open(dir).map(OwnedFd::from).and_then(|dir_fd| {
        let output = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(dir.join("output"))?;
        Ok((dir_fd, OwnedFd::from(output)))
    });
    let (dir_fd, output) = match opened {
        Ok(opened) => opened,
        Err(error) => return io::Error::new(error.kind(), format!("run directory `{}`: {error}", dir.display())),
    };
    // Where it runs, for the server to tell a client that waited (before the pid, which
    // says it started).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let _ = std::fs::write(dir.join(HOST_FILE), host.trim());
    let fds =
        Descriptors { dir: dir_fd.as_raw_fd(), output: output.as_raw_fd(), notify: -1, merged, new_session: false };
    let mut run = std::process::Command::new(program);
    run.args(args);
    // SAFETY: this process has one thread (the subcommand starts no runtime), and
    // `enter` makes only async-signal-safe calls; the descriptors are open.
    unsafe {
        run.pre_exec(move || enter(fds));
    }
    let supervisor = std::process::id();
    let error = run.exec();
    // In the command's process (the supervisor never returns from `enter`): its
    // stderr is the run's output, so the user reads why.
    if std::process::id() != supervisor {
        eprintln!("lrpymrpc-server: cannot run `{}`: {error}", program.to_string_lossy());
        std::process::exit(127);
    }
    error
}

/// `pid`: this process's `/proc/self/stat` line (its pid and start time), for a later
/// server that must stop it.
unsafe fn write_pid(dir: i32) {
    // SAFETY: async-signal-safe calls on a local buffer.
    unsafe {
        let mut stat = [0u8; 1024];
        let source = libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if source < 0 {
            return;
        }
        let n = libc::read(source, stat.as_mut_ptr().cast(), stat.len());
        libc::close(source);
        if n <= 0 {
            return;
        }
        let fd = libc::openat(
            dir,
            c"pid.tmp".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        );
        if fd >= 0 {
            libc::write(fd, stat.as_ptr().cast(), n as usize);
            libc::close(fd);
            libc::renameat(dir, c"pid.tmp".as_ptr(), dir, c"pid".as_ptr());
        }
    }
}

struct Run {
    command: i32,
    /// The `lock` file, held until this process is gone.
    lock: i32,
    fds: Descriptors,
    /// stdout (or both) and stderr (-1 when merged); -1 once closed.
    pipes: [i32; 2],
    signals: i32,
}

impl Run {
    unsafe fn supervise(mut self) -> ! {
        // SAFETY: async-signal-safe calls on integers and local buffers only.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            // The server's descriptors (its listening socket, its clients, other runs'
            // pipes) are not the supervisor's to keep open once the server is gone.
            close_all_except(&mut [
                self.fds.dir,
                self.fds.output,
                self.fds.notify,
                self.pipes[0],
                self.pipes[1],
                self.signals,
                self.lock,
            ]);
            let mut buffer = [0u8; READ_BYTES];
            let mut status: Option<i32> = None;
            let mut ended_at = 0i64;
            let mut kill_at: Option<i64> = None;
            let mut stop_asked = false;
            let mut write_errno = 0;
            loop {
                let open = self.pipes.iter().filter(|fd| **fd >= 0).count();
                let now = now_ns();
                if status.is_some() && (open == 0 || now - ended_at > AFTER_EXIT_NS) {
                    break;
                }
                if let Some(at) = kill_at
                    && now >= at
                {
                    libc::killpg(self.command, libc::SIGKILL);
                    kill_at = None;
                }
                let mut polled = [
                    libc::pollfd { fd: self.pipes[0], events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: self.pipes[1], events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: self.signals, events: libc::POLLIN, revents: 0 },
                ];
                let mut timeout = kill_at.map_or(-1, |at| ((at - now) / 1_000_000 + 1) as i32);
                if status.is_some() {
                    let left = ((ended_at + AFTER_EXIT_NS - now) / 1_000_000 + 1) as i32;
                    timeout = if timeout < 0 { left } else { timeout.min(left) };
                }
                if libc::poll(polled.as_mut_ptr(), 3, timeout) < 0 && errno() != libc::EINTR {
                    // Nothing can be followed any more: the command goes, and no status
                    // is written, so the run is said to be lost.
                    libc::killpg(self.command, libc::SIGKILL);
                    libc::_exit(1);
                }
                for (index, pipe) in [(0, PIPE_STDOUT), (1, PIPE_STDERR)] {
                    if polled[index].fd < 0 || polled[index].revents == 0 {
                        continue;
                    }
                    let n = libc::read(self.pipes[index], buffer.as_mut_ptr().cast(), buffer.len());
                    if n > 0 {
                        let pipe = if self.fds.merged { PIPE_MERGED } else { pipe };
                        if write_errno != 0 {
                            continue;
                        }
                        if let Err(failed) = self.append(pipe, &buffer[..n as usize]) {
                            // The disk is full (or the file gone): the run cannot be
                            // followed, so it is stopped, and said so.
                            write_errno = failed;
                            libc::killpg(self.command, libc::SIGTERM);
                            kill_at.get_or_insert(now + KILL_GRACE_NS);
                        }
                    } else if n == 0 || (errno() != libc::EINTR && errno() != libc::EAGAIN) {
                        libc::close(self.pipes[index]);
                        self.pipes[index] = -1;
                    }
                }
                if polled[2].revents != 0 {
                    let mut info = [0u8; 128];
                    while libc::read(self.signals, info.as_mut_ptr().cast(), info.len()) > 0 {
                        let signal = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
                        if signal != libc::SIGCHLD && !stop_asked {
                            stop_asked = true;
                            libc::killpg(self.command, libc::SIGTERM);
                            kill_at.get_or_insert(now + KILL_GRACE_NS);
                        }
                    }
                    // The command, or an orphan of its (this process is their reaper).
                    let mut wait_status = 0;
                    loop {
                        let reaped = libc::waitpid(-1, &mut wait_status, libc::WNOHANG);
                        if reaped <= 0 {
                            break;
                        }
                        if reaped == self.command && status.is_none() {
                            status = Some(wait_status);
                            ended_at = now_ns();
                            // What it left in its group goes with it.
                            libc::killpg(self.command, libc::SIGTERM);
                            kill_at.get_or_insert(ended_at + KILL_GRACE_NS);
                        }
                    }
                }
            }
            // Its group gone (SIGKILL after the grace), or as long as that may take.
            let deadline = now_ns() + KILL_GRACE_NS + 1_000_000_000;
            // Orphans are reaped as they die: a zombie nobody reaps (a container's pid 1
            // may not) would look like a live process to `killpg(.., 0)` until the end.
            let reap = || {
                let mut ignored = 0;
                while libc::waitpid(-1, &mut ignored, libc::WNOHANG) > 0 {}
            };
            reap();
            while libc::killpg(self.command, 0) == 0 && now_ns() < deadline {
                reap();
                if libc::killpg(self.command, 0) != 0 {
                    break;
                }
                if kill_at.is_some_and(|at| now_ns() >= at) {
                    libc::killpg(self.command, libc::SIGKILL);
                    kill_at = None;
                }
                let pause = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            if let Some(status) = status {
                self.write_status(status, write_errno, stop_asked);
            }
            libc::_exit(0)
        }
    }

    /// One frame appended (in one write, unless the disk takes only part of it); the
    /// server told of it. The errno when it could not be written whole.
    unsafe fn append(&self, pipe: u8, bytes: &[u8]) -> Result<(), i32> {
        let mut header = [0u8; HEADER_BYTES];
        header[0] = pipe;
        header[4..8].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        header[8..16].copy_from_slice(&(now_ns() as u64).to_le_bytes());
        let mut parts = [
            libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() },
            libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() },
        ];
        let mut first = 0;
        // SAFETY: writev of valid buffers, advanced past what was written; write of one byte.
        unsafe {
            while first < parts.len() {
                let written = libc::writev(self.fds.output, parts[first..].as_ptr(), (parts.len() - first) as i32);
                if written < 0 {
                    match errno() {
                        libc::EINTR => continue,
                        error => return Err(error.max(1)),
                    }
                }
                let mut written = written as usize;
                while first < parts.len() && written >= parts[first].iov_len {
                    written -= parts[first].iov_len;
                    first += 1;
                }
                if first < parts.len() {
                    parts[first].iov_base = (parts[first].iov_base as *mut u8).add(written).cast();
                    parts[first].iov_len -= written;
                }
            }
            libc::write(self.fds.notify, [1u8].as_ptr().cast(), 1);
        }
        Ok(())
    }

    /// `status`, written whole under another name and renamed: present means complete.
    unsafe fn write_status(&self, wait_status: i32, write_errno: i32, stop_asked: bool) {
        let mut record = [0u8; STATUS_BYTES];
        record[..8].copy_from_slice(STATUS_MAGIC);
        record[8..12].copy_from_slice(&wait_status.to_le_bytes());
        record[12..16].copy_from_slice(&write_errno.to_le_bytes());
        record[16] = u8::from(stop_asked);
        // SAFETY: async-signal-safe calls on a local buffer.
        unsafe {
            // Written over the room taken at the start: no new block is needed.
            let fd = libc::openat(self.fds.dir, c"status.tmp".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return;
            }
            let written = libc::pwrite(fd, record.as_ptr().cast(), record.len(), 0);
            libc::close(fd);
            if written == record.len() as isize {
                libc::renameat(self.fds.dir, c"status.tmp".as_ptr(), self.fds.dir, c"status".as_ptr());
            }
            libc::write(self.fds.notify, [1u8].as_ptr().cast(), 1);
        }
    }
}

/// Closes every descriptor but those in `keep` (negative entries ignored).
unsafe fn close_all_except(keep: &mut [i32]) {
    keep.sort_unstable();
    let mut from: u32 = 0;
    // SAFETY: closing descriptors this process does not use.
    unsafe {
        for &fd in keep.iter().filter(|fd| **fd >= 0) {
            let fd = fd as u32;
            if fd > from {
                close_range(from, fd - 1);
            }
            from = fd + 1;
        }
        close_range(from, u32::MAX);
    }
}

/// close_range(2), or one close at a time where the kernel has none.
unsafe fn close_range(first: u32, last: u32) {
    // SAFETY: closing descriptors this process does not use.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0u32) != 0 {
            for fd in first..=last.min(4095) {
                libc::close(fd as i32);
            }
        }
    }
}
