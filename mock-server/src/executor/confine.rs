//! What a run was granted (`Confine`: another scheduler is asked for it, see
//! `slurm.rs`), and how a local run is held to it (`resources/`): the cores it may run on
//! (CPU affinity, which the processes it starts inherit, so `nproc` and OpenMP see
//! them) and the memory it reserved. Memory is enforced by a memory cgroup (v1) of
//! its own where the server can make one, else by an address-space rlimit; which one
//! is said once at start. A run the kernel killed for its cgroup's memory is reported
//! as over its memory, not as "signal 9".

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// How memory limits are enforced on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryControl {
    /// A cgroup v1 memory hierarchy the server may make groups in (this directory).
    CgroupV1(PathBuf),
    /// `RLIMIT_AS`: allocations past the limit fail (the program decides what then).
    AddressSpace,
}

impl MemoryControl {
    /// How it reads in the start-up log and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            MemoryControl::CgroupV1(dir) => format!("a memory cgroup per job (v1, under `{}`)", dir.display()),
            MemoryControl::AddressSpace => "an address-space rlimit per job (no memory cgroup the server may make \
                                            here: a job past it fails to allocate instead of being killed)"
                .into(),
        }
    }
}

/// Where the memory cgroup v1 hierarchy is mounted.
const CGROUP_V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// Found once: a group the server can make, with a limit it can set, or the rlimit.
pub fn memory_control() -> &'static MemoryControl {
    static FOUND: OnceLock<MemoryControl> = OnceLock::new();
    FOUND.get_or_init(|| {
        let parent = PathBuf::from(CGROUP_V1_MEMORY).join("lrpymrpc");
        let usable = std::fs::create_dir_all(&parent).is_ok() && {
            let probe = parent.join(format!("probe-{}", std::process::id()));
            let set = std::fs::create_dir(&probe).is_ok()
                && std::fs::write(probe.join("memory.limit_in_bytes"), "67108864").is_ok();
            let _ = std::fs::remove_dir(&probe);
            set
        };
        match usable {
            true => MemoryControl::CgroupV1(parent),
            false => MemoryControl::AddressSpace,
        }
    })
}

/// One run's confinement, made before it starts and undone after it.
#[derive(Debug)]
pub struct Confinement {
    confine: Confine,
    /// The run's own memory cgroup, and its `cgroup.procs` for the child to join.
    group: Option<(PathBuf, CString)>,
}

impl Confinement {
    /// Makes what `confine` needs (a memory cgroup with its limit, where used).
    pub fn new(confine: &Confine) -> io::Result<Confinement> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut group = None;
        if let (MemoryControl::CgroupV1(parent), limit @ 1..) = (memory_control(), confine.memory_bytes) {
            let dir = parent.join(format!("run-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            std::fs::create_dir(&dir)?;
            let set = std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).and_then(|()| {
                // No swapping past the limit either, where the kernel accounts swap.
                let swap = dir.join("memory.memsw.limit_in_bytes");
                match swap.exists() {
                    true => std::fs::write(swap, limit.to_string()),
                    false => Ok(()),
                }
            });
            if let Err(error) = set {
                let _ = std::fs::remove_dir(&dir);
                return Err(error);
            }
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other)?;
            group = Some((dir, procs));
        }
        Ok(Confinement { confine: confine.clone(), group })
    }

    /// Makes the command's process take the confinement as it starts: its cores, its
    /// cgroup (or its rlimit), before anything of the command runs.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        let cpus = self.confine.cpu_ids.clone();
        let procs = self.group.as_ref().map(|(_, procs)| procs.clone());
        let address_space = match (&self.group, self.confine.memory_bytes) {
            (None, limit @ 1..) => Some(limit),
            _ => None,
        };
        // SAFETY: the closure only makes system calls (sched_setaffinity, open, write,
        // close, setrlimit) on data prepared before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if !cpus.is_empty() {
                    crate::resources::machine::pin_to(&cpus)?;
                }
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    libc::close(fd);
                    if written != 2 {
                        return Err(io::Error::last_os_error());
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

    /// A run's memory cgroup a server that is gone made (its path written down in the
    /// run's directory), taken on: what it says of the run is read here, and it is
    /// removed once the run ended. `None` for a path not of this server's groups.
    pub fn adopt(group: &std::path::Path) -> Option<Confinement> {
        let MemoryControl::CgroupV1(parent) = memory_control() else { return None };
        let name = group.file_name()?.to_str()?;
        if group.parent() != Some(parent.as_path()) || !name.starts_with("run-") || !group.is_dir() {
            return None;
        }
        let limit = std::fs::read_to_string(group.join("memory.limit_in_bytes")).ok()?.trim().parse().ok()?;
        let procs = CString::new(group.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        let confine = Confine { memory_bytes: limit, ..Confine::default() };
        Some(Confinement { confine, group: Some((group.to_path_buf(), procs)) })
    }

    /// The run's own memory cgroup, if it has one.
    pub fn group(&self) -> Option<&std::path::Path> {
        self.group.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// The memory limit, in bytes (0: none).
    pub fn memory_bytes(&self) -> u64 {
        self.confine.memory_bytes
    }

    /// Whether the kernel killed a process of the run for its memory limit.
    pub fn over_memory(&self) -> bool {
        let Some((dir, _)) = &self.group else { return false };
        let control = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
        let killed =
            control.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok());
        match killed {
            Some(count) => count > 0,
            // Kernels without the counter: the limit was hit.
            None => std::fs::read_to_string(dir.join("memory.failcnt")).is_ok_and(|n| n.trim() != "0"),
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        // The run's processes are gone by now; an empty group is removed.
        if let Some((dir, _)) = self.group.take() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
