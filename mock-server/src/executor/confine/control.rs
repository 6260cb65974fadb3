//! What this machine lets the server hold runs to, found once at start: for memory a
//! cgroup v2 subtree with the memory controller, else a cgroup v1 memory hierarchy
//! the server may write, else an address-space rlimit; for cores a cpuset (in the
//! run's v2 group, or a v1 cpuset hierarchy) that a run cannot widen, else CPU
//! affinity alone, which a run could widen itself (`taskset`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    pub fn runs_dir(&self) -> Option<&Path> {
        match self {
            MemoryControl::CgroupV2(dir) | MemoryControl::CgroupV1(dir) => Some(dir),
            MemoryControl::AddressSpace => None,
        }
    }

    /// The file a group's limit is written to, and the swap file with the value that
    /// keeps a run from swapping past its limit (where the kernel accounts swap).
    pub fn limit_files(&self, limit: u64) -> (&'static str, &'static str, String) {
        match self {
            // v2's swap limit is swap on top of the memory: none.
            MemoryControl::CgroupV2(_) => ("memory.max", "memory.swap.max", "0".into()),
            // v1's is memory and swap together: the same limit.
            _ => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", limit.to_string()),
        }
    }
}

/// How a run is kept to its cores beyond its CPU affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpusetControl {
    /// `cpuset.cpus` in the run's own cgroup v2 group (the one its memory is in).
    CgroupV2,
    /// A cgroup v1 cpuset hierarchy the server may make groups in (this directory).
    CgroupV1(PathBuf),
    /// CPU affinity alone.
    AffinityOnly,
}

impl CpusetControl {
    /// How it reads in the start-up log and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            CpusetControl::CgroupV2 => "CPU affinity and a cpuset per job (v2, in its memory cgroup)".into(),
            CpusetControl::CgroupV1(dir) => {
                format!("CPU affinity and a cpuset per job (v1, under `{}`)", dir.display())
            }
            CpusetControl::AffinityOnly => "CPU affinity per job (no cpuset the server may make here: a job could \
                                            widen its own affinity)"
                .into(),
        }
    }
}

/// Where the cgroup v1 memory and cpuset hierarchies are mounted.
const CGROUP_V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const CGROUP_V1_CPUSET: &str = "/sys/fs/cgroup/cpuset";

/// The cgroup v2 leaf the server moves itself into, so that the group it was given
/// holds no process and may hand controllers to the runs' groups (the kernel's rule
/// for v2). A systemd unit names it in `DelegateSubgroup=`, so a server restarted
/// while runs of the last one go on starts in it.
const CGROUP_V2_SERVER: &str = "lrpymrpc-server";

/// The cgroup v2 group beside it that holds one group per run.
const CGROUP_V2_RUNS: &str = "lrpymrpc-runs";

/// What the cgroup v2 hierarchy gives the server: the directory for runs' groups (the
/// memory controller on for them) and whether the cpuset controller is on too.
fn cgroup_v2() -> Option<&'static (PathBuf, bool)> {
    static FOUND: OnceLock<Option<(PathBuf, bool)>> = OnceLock::new();
    FOUND.get_or_init(cgroup_v2::runs_dir).as_ref()
}

/// Found once: a group the server can make, with a limit it can set, or the rlimit.
pub fn memory_control() -> &'static MemoryControl {
    static FOUND: OnceLock<MemoryControl> = OnceLock::new();
    FOUND.get_or_init(|| {
        if let Some((runs, _)) = cgroup_v2() {
            sweep(runs);
            return MemoryControl::CgroupV2(runs.clone());
        }
        let parent = PathBuf::from(CGROUP_V1_MEMORY).join("lrpymrpc");
        let usable = std::fs::create_dir_all(&parent).is_ok() && probe(&parent, "memory.limit_in_bytes", "67108864");
        match usable {
            true => {
                sweep(&parent);
                MemoryControl::CgroupV1(parent)
            }
            false => MemoryControl::AddressSpace,
        }
    })
}

/// Found once: a cpuset the server can give each run, or affinity alone.
pub fn cpuset_control() -> &'static CpusetControl {
    static FOUND: OnceLock<CpusetControl> = OnceLock::new();
    FOUND.get_or_init(|| {
        if let Some((_, true)) = cgroup_v2() {
            return CpusetControl::CgroupV2;
        }
        match cgroup_v1_cpuset() {
            Some(parent) => CpusetControl::CgroupV1(parent),
            None => CpusetControl::AffinityOnly,
        }
    })
}

/// The server's own v1 cpuset group, set up so the groups made in it start with all
/// its CPUs and memory nodes (a v1 cpuset starts with none).
fn cgroup_v1_cpuset() -> Option<PathBuf> {
    let root = Path::new(CGROUP_V1_CPUSET);
    let parent = root.join("lrpymrpc");
    let read =
        |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok().map(|text| text.trim().to_string());
    let (cpus, mems) = (read(root, "cpuset.cpus")?, read(root, "cpuset.mems")?);
    std::fs::create_dir_all(&parent).ok()?;
    for (file, value) in [("cpuset.cpus", &cpus), ("cpuset.mems", &mems)] {
        if read(&parent, file)?.is_empty() {
            std::fs::write(parent.join(file), value).ok()?;
        }
    }
    std::fs::write(parent.join("cgroup.clone_children"), "1").ok()?;
    let first = read(&parent, "cpuset.cpus")?.split([',', '-']).next()?.to_string();
    let usable = probe(&parent, "cpuset.cpus", &first);
    if usable {
        sweep(&parent);
    }
    usable.then_some(parent)
}

/// Removes the empty groups in `parent` that a server no longer running made (its pid
/// is in their name: `run-PID-N`): the groups of runs that ended after their server.
/// A group still in use is not removed (the kernel refuses), nor one of a live process.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let maker = name.to_str().and_then(|name| name.strip_prefix("run-")?.split('-').next()?.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only asks whether the process exists.
        if let Some(pid) = maker.filter(|pid| *pid > 0)
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Whether a group made in `parent` takes `value` in its `file`.
fn probe(parent: &Path, file: &str, value: &str) -> bool {
    let probe = parent.join(format!("probe-{}", std::process::id()));
    let set = std::fs::create_dir(&probe).is_ok() && std::fs::write(probe.join(file), value).is_ok();
    let _ = std::fs::remove_dir(&probe);
    set
}

/// Finding the cgroup v2 subtree the server may use, and making it ready.
mod cgroup_v2 {
    use std::path::{Path, PathBuf};

    /// The directory for runs' groups, with the memory controller on for them (and
    /// whether the cpuset controller is too); `None` where there is no cgroup v2
    /// memory controller the server may hand out.
    pub fn runs_dir() -> Option<(PathBuf, bool)> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mount = mount_point(&mountinfo)?;
        let own = mount.join(own_group(&cgroups)?.trim_start_matches('/'));
        let given = given_group(&own)?;
        let runs = given.join(super::CGROUP_V2_RUNS);
        if std::fs::create_dir_all(&runs).is_err()
            || !hand_down(&runs, "memory")
            || !super::probe(&runs, "memory.max", "67108864")
        {
            return None;
        }
        // A cpuset too where it is offered, if a group of runs takes one of the
        // server's CPUs (the kernel refuses CPUs outside the given group's).
        let first = crate::resources::machine::cpu_ids().first().copied().unwrap_or(0).to_string();
        let cpuset = offers(&given, "cpuset")
            && hand_down(&given, "cpuset")
            && hand_down(&runs, "cpuset")
            && super::probe(&runs, "cpuset.cpus", &first);
        Some((runs, cpuset))
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
            return (offers(given, "memory") && hand_down(given, "memory")).then(|| given.to_path_buf());
        }
        if !offers(own, "memory") {
            return None;
        }
        if hand_down(own, "memory") {
            return Some(own.to_path_buf());
        }
        let leaf = own.join(super::CGROUP_V2_SERVER);
        let pid = std::process::id().to_string();
        if std::fs::create_dir_all(&leaf).is_err() || std::fs::write(leaf.join("cgroup.procs"), &pid).is_err() {
            let _ = std::fs::remove_dir(&leaf);
            return None;
        }
        if hand_down(own, "memory") {
            return Some(own.to_path_buf());
        }
        // Another process shares the group: back where the server was.
        let _ = std::fs::write(own.join("cgroup.procs"), &pid);
        let _ = std::fs::remove_dir(&leaf);
        None
    }

    /// Whether `group`'s children may be given `controller`.
    fn offers(group: &Path, controller: &str) -> bool {
        std::fs::read_to_string(group.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|name| name == controller))
    }

    /// Turns `controller` on for `group`'s children (the kernel refuses while the
    /// group, not being the root, holds a process).
    fn hand_down(group: &Path, controller: &str) -> bool {
        let on = |text: String| text.split_whitespace().any(|name| name == controller);
        let subtree_control = group.join("cgroup.subtree_control");
        std::fs::read_to_string(&subtree_control).is_ok_and(on)
            || (std::fs::write(&subtree_control, format!("+{controller}")).is_ok()
                && std::fs::read_to_string(&subtree_control).is_ok_and(on))
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
