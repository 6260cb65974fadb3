//! What a run was granted (`Confine`: another scheduler is asked for it, see
//! `slurm.rs`), and how a local run is held to it (`resources/`): the cores it may run on
//! (CPU affinity, which the processes it starts inherit, so `nproc` and OpenMP see
//! them) and the memory it reserved. Memory is enforced by a memory cgroup of its own
//! (cgroup v2 where the server is given a subtree with the memory controller, else
//! cgroup v1 where it may make one) or else by an address-space rlimit; which one is
//! said once at start. A run the kernel killed for its cgroup's memory is reported as
//! over its memory, not as "signal 9".

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// A cgroup v2 subtree with the memory controller: a group per run in this directory.
    CgroupV2(PathBuf),
    /// A cgroup v1 memory hierarchy the server may make groups in (this directory).
    CgroupV1(PathBuf),
    /// `RLIMIT_AS`: allocations past the limit fail (the program decides what then).
    AddressSpace,
}

impl MemoryControl {
    /// How it reads in the start-up log and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            MemoryControl::CgroupV2(dir) => format!("a memory cgroup per job (v2, under `{}`)", dir.display()),
            MemoryControl::CgroupV1(dir) => format!("a memory cgroup per job (v1, under `{}`)", dir.display()),
            MemoryControl::AddressSpace => "an address-space rlimit per job (no memory cgroup the server may make \
                                            here: a job past it fails to allocate instead of being killed)"
                .into(),
        }
    }

    /// The directory runs' groups are made in, where there are groups.
    fn runs_dir(&self) -> Option<&Path> {
        match self {
            MemoryControl::CgroupV2(dir) | MemoryControl::CgroupV1(dir) => Some(dir),
            MemoryControl::AddressSpace => None,
        }
    }

    /// The file a group's limit is written to, and the swap file with the value that
    /// keeps a run from swapping past its limit (where the kernel accounts swap).
    fn limit_files(&self, limit: u64) -> (&'static str, &'static str, String) {
        match self {
            // v2's swap limit is swap on top of the memory: none.
            MemoryControl::CgroupV2(_) => ("memory.max", "memory.swap.max", "0".into()),
            // v1's is memory and swap together: the same limit.
            _ => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", limit.to_string()),
        }
    }
}

/// Where the memory cgroup v1 hierarchy is mounted.
const CGROUP_V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// The cgroup v2 leaf the server moves itself into, so that the group it was given
/// holds no process and may hand the memory controller to the runs' groups (the
/// kernel's rule for v2). A systemd unit names it in `DelegateSubgroup=`, so a server
/// restarted while runs of the last one go on starts in it.
pub const CGROUP_V2_SERVER: &str = "lrpymrpc-server";

/// The cgroup v2 group beside it that holds one group per run.
const CGROUP_V2_RUNS: &str = "lrpymrpc-runs";

/// Found once: a group the server can make, with a limit it can set, or the rlimit.
pub fn memory_control() -> &'static MemoryControl {
    static FOUND: OnceLock<MemoryControl> = OnceLock::new();
    FOUND.get_or_init(|| {
        if let Some(runs) = cgroup_v2::runs_dir() {
            return MemoryControl::CgroupV2(runs);
        }
        let parent = PathBuf::from(CGROUP_V1_MEMORY).join("lrpymrpc");
        let usable = std::fs::create_dir_all(&parent).is_ok() && probe(&parent, "memory.limit_in_bytes");
        match usable {
            true => MemoryControl::CgroupV1(parent),
            false => MemoryControl::AddressSpace,
        }
    })
}

/// Whether a group made in `parent` takes a limit in its `limit_file`.
fn probe(parent: &Path, limit_file: &str) -> bool {
    let probe = parent.join(format!("probe-{}", std::process::id()));
    let set = std::fs::create_dir(&probe).is_ok() && std::fs::write(probe.join(limit_file), "67108864").is_ok();
    let _ = std::fs::remove_dir(&probe);
    set
}

/// Finding the cgroup v2 subtree the server may use, and making it ready.
mod cgroup_v2 {
    use std::path::{Path, PathBuf};

    /// The directory for runs' groups, with the memory controller on for them; `None`
    /// where there is no cgroup v2 memory controller the server may hand out.
    pub fn runs_dir() -> Option<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mount = mount_point(&mountinfo)?;
        let own = mount.join(own_group(&cgroups)?.trim_start_matches('/'));
        let given = given_group(&own)?;
        let runs = given.join(super::CGROUP_V2_RUNS);
        (std::fs::create_dir_all(&runs).is_ok() && hand_down_memory(&runs) && super::probe(&runs, "memory.max"))
            .then_some(runs)
    }

    /// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
    pub fn mount_point(mountinfo: &str) -> Option<PathBuf> {
        mountinfo.lines().find_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
            let (fields, after) = line.split_once(" - ")?;
            let fs_type = after.split(' ').next()?;
            let mount_point = fields.split(' ').nth(4)?;
            (fs_type == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
    }

    /// mountinfo writes a space, tab, newline and backslash in a path as `\ooo`.
    fn unescape(path: &str) -> String {
        let mut out = String::new();
        let mut rest = path;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            let code = rest.get(at + 1..at + 4).and_then(|digits| u8::from_str_radix(digits, 8).ok());
            match code {
                Some(byte) => {
                    out.push(char::from(byte));
                    rest = &rest[at + 4..];
                }
                None => {
                    out.push('\\');
                    rest = &rest[at + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The process's own cgroup v2 group (`0::/a/b` in `/proc/self/cgroup`); `None`
    /// for one outside the process's cgroup namespace (`/../b`), which is not below
    /// the mount point.
    pub fn own_group(cgroups: &str) -> Option<&str> {
        cgroups
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .filter(|path| path.starts_with('/') && !path.split('/').any(|part| part == ".."))
    }

    /// The group the server was given, with the memory controller on for its children:
    /// the root (which may hold processes), the parent of a leaf named
    /// `CGROUP_V2_SERVER` (an earlier server, or systemd's `DelegateSubgroup=`, put
    /// the server there), or the server's own group once it moved itself into such a
    /// leaf of it. A group shared with other processes is left as it was.
    fn given_group(own: &Path) -> Option<PathBuf> {
        if own.file_name().is_some_and(|name| name == super::CGROUP_V2_SERVER) {
            let given = own.parent()?;
            return (offers_memory(given) && hand_down_memory(given)).then(|| given.to_path_buf());
        }
        if !offers_memory(own) {
            return None;
        }
        if hand_down_memory(own) {
            return Some(own.to_path_buf());
        }
        let leaf = own.join(super::CGROUP_V2_SERVER);
        let pid = std::process::id().to_string();
        if std::fs::create_dir_all(&leaf).is_err() || std::fs::write(leaf.join("cgroup.procs"), &pid).is_err() {
            let _ = std::fs::remove_dir(&leaf);
            return None;
        }
        if hand_down_memory(own) {
            return Some(own.to_path_buf());
        }
        // Another process shares the group: back where the server was.
        let _ = std::fs::write(own.join("cgroup.procs"), &pid);
        let _ = std::fs::remove_dir(&leaf);
        None
    }

    /// Whether `group`'s children may be given the memory controller.
    fn offers_memory(group: &Path) -> bool {
        std::fs::read_to_string(group.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|name| name == "memory"))
    }

    /// Turns the memory controller on for `group`'s children (the kernel refuses while
    /// the group, not being the root, holds a process).
    fn hand_down_memory(group: &Path) -> bool {
        let on = |text: String| text.split_whitespace().any(|name| name == "memory");
        std::fs::read_to_string(group.join("cgroup.subtree_control")).is_ok_and(on)
            || (std::fs::write(group.join("cgroup.subtree_control"), "+memory").is_ok()
                && std::fs::read_to_string(group.join("cgroup.subtree_control")).is_ok_and(on))
    }
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
        let control = memory_control();
        if let (Some(parent), limit @ 1..) = (control.runs_dir(), confine.memory_bytes) {
            let dir = parent.join(format!("run-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            std::fs::create_dir(&dir)?;
            let (limit_file, swap_file, swap_limit) = control.limit_files(limit);
            let set = std::fs::write(dir.join(limit_file), limit.to_string()).and_then(|()| {
                // No swapping past the limit either, where the kernel accounts swap.
                match dir.join(swap_file).exists() {
                    true => std::fs::write(dir.join(swap_file), swap_limit),
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
    pub fn adopt(group: &Path) -> Option<Confinement> {
        let control = memory_control();
        let parent = control.runs_dir()?;
        let name = group.file_name()?.to_str()?;
        if group.parent() != Some(parent) || !name.starts_with("run-") || !group.is_dir() {
            return None;
        }
        let (limit_file, _, _) = control.limit_files(0);
        let limit = std::fs::read_to_string(group.join(limit_file)).ok()?.trim().parse().ok()?;
        let procs = CString::new(group.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        let confine = Confine { memory_bytes: limit, ..Confine::default() };
        Some(Confinement { confine, group: Some((group.to_path_buf(), procs)) })
    }

    /// The run's own memory cgroup, if it has one.
    pub fn group(&self) -> Option<&Path> {
        self.group.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// The memory limit, in bytes (0: none).
    pub fn memory_bytes(&self) -> u64 {
        self.confine.memory_bytes
    }

    /// Whether the kernel killed a process of the run for its memory limit.
    pub fn over_memory(&self) -> bool {
        let Some((dir, _)) = &self.group else { return false };
        let counter = |file: &str| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok())
        };
        // v2 counts in memory.events, v1 in memory.oom_control.
        match counter("memory.events").or_else(|| counter("memory.oom_control")) {
            Some(count) => count > 0,
            // v1 kernels without the counter: the limit was hit.
            None => std::fs::read_to_string(dir.join("memory.failcnt")).is_ok_and(|n| n.trim() != "0"),
        }
    }

    /// The run ended: kills whatever of it is still in its cgroup v2 group, a process
    /// that left the run's process group (`setsid`) and its PID namespace's reach
    /// included, and waits (2 s at most) until the group is empty, so it can go. The
    /// kernel's `cgroup.kill` takes a group as a whole, forks in flight too. Never
    /// called for a run that outlives the server: the next one takes it on.
    pub fn end_leftovers(&self) {
        let Some((dir, _)) = &self.group else { return };
        let populated = || {
            std::fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|events| events.lines().any(|line| line == "populated 1"))
        };
        if !populated() || std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            return;
        }
        let started = Instant::now();
        while populated() && started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        // An empty group is removed; one still in use (a run that outlives this
        // server) is left for the next server.
        if let Some((dir, _)) = self.group.take() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cgroup_v2::{mount_point, own_group};
    use std::path::PathBuf;

    #[test]
    fn the_cgroup_v2_mount_is_found_among_v1_mounts_with_its_path_unescaped() {
        let mountinfo = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
44 35 0:39 / /sys/fs/cgroup/un\\040ified rw,relatime shared:17 master:3 - cgroup2 cgroup2 rw
";
        assert_eq!(mount_point(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/un ified")));
        assert_eq!(mount_point("36 35 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
    }

    #[test]
    fn the_own_cgroup_v2_group_is_the_line_with_hierarchy_0() {
        let cgroups = "4:memory:/process_api/a8ff\n1:cpu:/\n0::/system.slice/lrpymrpc-server.service/lrpymrpc-server\n";
        assert_eq!(own_group(cgroups), Some("/system.slice/lrpymrpc-server.service/lrpymrpc-server"));
        assert_eq!(own_group("4:memory:/x\n"), None);
        // A group outside the process's cgroup namespace is not below the mount.
        assert_eq!(own_group("0::/../elsewhere\n"), None);
    }
}
