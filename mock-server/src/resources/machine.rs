//! What this machine has, for the defaults of `--cpus` and `--mem`: the CPUs the
//! server may run on (its affinity, which a container or a cpuset narrows) and its
//! memory (`MemTotal`).

/// The CPU ids this process may run on, in order.
pub fn cpu_ids() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a set of the size passed.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let ids: Vec<usize> = match got {
        // SAFETY: CPU_ISSET reads the set within its bounds.
        0 => (0..libc::CPU_SETSIZE as usize).filter(|id| unsafe { libc::CPU_ISSET(*id, &set) }).collect(),
        _ => Vec::new(),
    };
    match ids.is_empty() {
        true => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
        false => ids,
    }
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`); 0 when unknown.
pub fn memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Pins the calling process (and what it starts) to `cpus`. For a command's
/// `pre_exec`: only a system call, no allocation.
pub fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.iter().filter(|cpu| **cpu < libc::CPU_SETSIZE as usize) {
        // SAFETY: the id is within the set's bounds.
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    // SAFETY: a valid pointer to a set of the size passed.
    match unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_cpus_and_memory() {
        assert!(!super::cpu_ids().is_empty());
        assert!(super::memory_bytes() > 64 << 20);
    }
}
