//! What a run was granted (`Confine`: another scheduler is asked for it, see
//! `slurm.rs`), and how a local run is held to it (`resources/`): the cores it may run
//! on (CPU affinity, which the processes it starts inherit, so `nproc` and OpenMP see
//! them, and a cpuset it cannot widen where there is one) and the memory it reserved
//! (a memory cgroup of its own, v2 or v1, else an address-space rlimit). What this
//! machine offers is found once (`control.rs`) and said at start. A run the kernel
//! killed for its cgroup's memory is reported as over its memory, not as "signal 9".

mod control;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use control::{CpusetControl, MemoryControl, cpuset_control, memory_control};

/// What a launch may hold, given by the step that was granted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confine {
    /// The machine's CPU ids the run may use; empty: any.
    pub cpu_ids: Vec<usize>,
    /// How many cores it was granted (what another scheduler is asked for); 0: none said.
    pub cpus: u32,
    /// The memory it may use; 0: no limit.
    pub memory_bytes: u64,
    /// License pools and counts it holds (what another scheduler is asked for).
    pub licenses: std::collections::BTreeMap<String, u32>,
}

/// A cgroup a run joins as it starts: its directory and its `cgroup.procs`, made
/// ready before the fork (the child may not allocate).
#[derive(Debug)]
struct Group {
    dir: PathBuf,
    procs: CString,
}

impl Group {
    /// Makes the group `parent/name`, with `settings` written in order; none is left
    /// behind when one is refused.
    fn make(parent: &Path, name: &str, settings: &[(&str, String)]) -> io::Result<Group> {
        let dir = parent.join(name);
        if let Err(error) = std::fs::create_dir(&dir) {
            // An empty group of the same name a process that had this pid left: it goes
            // (a group in use is not removed, and the name stays refused).
            if error.kind() != io::ErrorKind::AlreadyExists || std::fs::remove_dir(&dir).is_err() {
                return Err(error);
            }
            std::fs::create_dir(&dir)?;
        }
        let group = Group::at(dir)?;
        for (file, value) in settings {
            std::fs::write(group.dir.join(file), value)?;
        }
        Ok(group)
    }

    /// The group already at `dir`.
    fn at(dir: PathBuf) -> io::Result<Group> {
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other)?;
        Ok(Group { dir, procs })
    }

    /// Whether a process is still in the group (v2 says so in `cgroup.events`, which
    /// counts exiting processes too; v1 lists them in `cgroup.procs`).
    fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(events) => events.lines().any(|line| line == "populated 1"),
            Err(_) => {
                std::fs::read_to_string(self.dir.join("cgroup.procs")).is_ok_and(|procs| !procs.trim().is_empty())
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // An empty group is removed; one still in use (a run that outlives this
        // server) is left for the next server.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One run's confinement, made before it starts and undone after it.
#[derive(Debug)]
pub struct Confinement {
    confine: Confine,
    /// The run's own cgroup: its memory (v1 or v2) and, in v2, its cpuset too.
    group: Option<Group>,
    /// The run's own cgroup v1 cpuset, named as its memory group.
    cpuset: Option<Group>,
}

/// `0,2,5`: a cpuset's CPU list.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

impl Confinement {
    /// Makes what `confine` needs: the run's groups with its limits, where used.
    pub fn new(confine: &Confine) -> io::Result<Confinement> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("run-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (memory, cpuset) = (memory_control(), cpuset_control());
        let mut settings = Vec::new();
        if confine.memory_bytes > 0 {
            let (limit_file, swap_file, swap_limit) = memory.limit_files(confine.memory_bytes);
            settings.push((limit_file, confine.memory_bytes.to_string()));
            // No swapping past the limit either, where the kernel accounts swap.
            if let Some(parent) = memory.runs_dir()
                && parent.join(swap_file).exists()
            {
                settings.push((swap_file, swap_limit));
            }
        }
        let pinned = !confine.cpu_ids.is_empty();
        if pinned && *cpuset == CpusetControl::CgroupV2 {
            settings.push(("cpuset.cpus", cpu_list(&confine.cpu_ids)));
        }
        let group = match (memory.runs_dir(), settings.is_empty()) {
            (Some(parent), false) => Some(Group::make(parent, &name, &settings)?),
            _ => None,
        };
        let cpuset = match cpuset {
            CpusetControl::CgroupV1(parent) if pinned => {
                Some(Group::make(parent, &name, &[("cpuset.cpus", cpu_list(&confine.cpu_ids))])?)
            }
            _ => None,
        };
        Ok(Confinement { confine: confine.clone(), group, cpuset })
    }

    /// Makes the command's process take the confinement as it starts: its cores, its
    /// cgroups (or its rlimit), before anything of the command runs.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        let cpus = self.confine.cpu_ids.clone();
        let joins: Vec<CString> = self.group.iter().chain(&self.cpuset).map(|group| group.procs.clone()).collect();
        let address_space = match (memory_control(), self.confine.memory_bytes) {
            (MemoryControl::AddressSpace, limit @ 1..) => Some(limit),
            _ => None,
        };
        // SAFETY: the closure only makes system calls (sched_setaffinity, open, write,
        // close, setrlimit) on data prepared before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if !cpus.is_empty() {
                    crate::resources::machine::pin_to(&cpus)?;
                }
                for procs in &joins {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    // The write's error, before close may set errno again.
                    let refused = (written != 2).then(io::Error::last_os_error);
                    libc::close(fd);
                    if let Some(error) = refused {
                        return Err(error);
                    }
                }
                if let Some(limit) = address_space {
                    let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// A run's group a server that is gone made (its path written down in the run's
    /// directory), taken on with its v1 cpuset of the same name: what it says of the
    /// run is read here, and it is removed once the run ended. `None` for a path not
    /// of this server's groups.
    pub fn adopt(group: &Path) -> Option<Confinement> {
        let name = group.file_name()?.to_str()?;
        if !name.starts_with("run-") || !group.is_dir() {
            return None;
        }
        let memory_dir = memory_control().runs_dir();
        let cpuset_dir = match cpuset_control() {
            CpusetControl::CgroupV1(dir) => Some(dir.as_path()),
            _ => None,
        };
        let mut confine = Confine::default();
        let (group, cpuset) = if group.parent() == memory_dir {
            let (limit_file, _, _) = memory_control().limit_files(0);
            // A group with no limit of its own ("max"): 0.
            let limit = std::fs::read_to_string(group.join(limit_file)).ok()?;
            confine.memory_bytes = limit.trim().parse().unwrap_or(0);
            let sibling = cpuset_dir.map(|dir| dir.join(name)).filter(|dir| dir.is_dir());
            (Some(Group::at(group.to_path_buf()).ok()?), sibling.and_then(|dir| Group::at(dir).ok()))
        } else if group.parent() == cpuset_dir {
            (None, Some(Group::at(group.to_path_buf()).ok()?))
        } else {
            return None;
        };
        Some(Confinement { confine, group, cpuset })
    }

    /// The group written down for the run, for a server that takes it on: its memory
    /// (or v2) group, else its v1 cpuset.
    pub fn group(&self) -> Option<&Path> {
        self.group.as_ref().or(self.cpuset.as_ref()).map(|group| group.dir.as_path())
    }

    /// The memory limit, in bytes (0: none).
    pub fn memory_bytes(&self) -> u64 {
        self.confine.memory_bytes
    }

    /// Whether the kernel killed a process of the run for its memory limit.
    pub fn over_memory(&self) -> bool {
        let Some(group) = self.group.as_ref().filter(|_| self.confine.memory_bytes > 0) else { return false };
        let counter = |file: &str| {
            let text = std::fs::read_to_string(group.dir.join(file)).unwrap_or_default();
            text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok())
        };
        // v2 counts in memory.events, v1 in memory.oom_control.
        match counter("memory.events").or_else(|| counter("memory.oom_control")) {
            Some(count) => count > 0,
            // v1 kernels without the counter: the limit was hit.
            None => std::fs::read_to_string(group.dir.join("memory.failcnt")).is_ok_and(|n| n.trim() != "0"),
        }
    }

    /// The run ended: kills whatever of it is still in its cgroup v2 group (a process
    /// that left the run's process group with `setsid` where no PID namespace caught
    /// it; the kernel's `cgroup.kill` takes the group as a whole, forks in flight too),
    /// and waits, 2 s at most, until its groups are empty, so they can go. Never called
    /// for a run that outlives the server: the next one takes it on.
    pub fn end_leftovers(&self) {
        if let Some(group) = self.group.as_ref().filter(|group| group.populated()) {
            // v1 has no cgroup.kill: its leftovers are the PID namespace's to end.
            let _ = std::fs::write(group.dir.join("cgroup.kill"), "1");
        }
        let started = Instant::now();
        while self.group.iter().chain(&self.cpuset).any(Group::populated) && started.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
