//! A throwaway one-node Slurm cluster on this machine, for the Slurm executor's tests
//! and benchmark (`cargo xtask bench` W11): `slurmctld` and `slurmd` from Debian's
//! packages in the foreground, every path in one directory, loopback addresses and
//! free ports, no munge (`auth/none`); started in about a second, stopped (with any
//! step still running) when dropped. Needs root, as `slurmd` does.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the node may take to become idle after the daemons start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The node's name in `slurm.conf`.
pub const NODE: &str = "lrnode";

/// A running one-node cluster.
pub struct OneNodeCluster {
    dir: PathBuf,
    conf: PathBuf,
    controller: Option<Child>,
    node: Option<Child>,
}

/// Whether this machine has what the cluster needs (the daemons and `srun`), and is
/// root; the reason when not.
pub fn unavailable() -> Option<String> {
    for tool in ["slurmctld", "slurmd", "srun", "squeue", "scancel", "sinfo"] {
        if which::which(tool).is_err() {
            return Some(format!("`{tool}` is not installed (Debian: slurmctld slurmd slurm-client)"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("slurmd must run as root".into());
    }
    None
}

impl OneNodeCluster {
    /// Writes `dir/slurm.conf` with `cpus` CPUs (most of the memory, one `hspice`
    /// license) and starts both daemons; returns once
    /// the node is idle. `node_prefix`, when given, runs slurmd behind that command
    /// (`unshare ...`: a node that does not see this machine's files).
    pub fn start(dir: &Path, cpus: u32, node_prefix: &[&str]) -> io::Result<OneNodeCluster> {
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::create_dir_all(dir.join("spool"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string();
        let host = host.split('.').next().unwrap_or("localhost").to_string();
        let (controller_port, node_port) = (free_port()?, free_port()?);
        let d = dir.display();
        // Most of this machine's memory (slurmd drains a node that has less than it says),
        // so `--mem` requests fit; one `hspice` license to hold steps back with. Memory
        // is consumable and enforced without cgroups, as a lab's cluster enforces it
        // with them: the accounting poller kills a step over its `--mem` each second
        // (`OverMemoryKill`), and a step that asks for none gets 2 GiB per CPU.
        let memory_mib = (crate::resources::machine::memory_bytes() >> 20) * 9 / 10;
        let conf = format!(
            "ClusterName=lrpymrpc\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={controller_port}\n\
             SlurmdPort={node_port}\n\
             AuthType=auth/none\n\
             CredType=cred/none\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             StateSaveLocation={d}/state\n\
             SlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\n\
             SlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_CPU_Memory\n\
             DefMemPerCPU=2048\n\
             SchedulerType=sched/backfill\n\
             SchedulerParameters=batch_sched_delay=0\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             KillWait=2\n\
             MessageTimeout=3\n\
             JobAcctGatherType=jobacct_gather/linux\n\
             JobAcctGatherFrequency=task=1\n\
             JobAcctGatherParams=OverMemoryKill\n\
             AccountingStorageType=accounting_storage/none\n\
             Licenses=hspice:1\n\
             NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN\n\
             PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n"
        );
        let conf_path = dir.join("slurm.conf");
        std::fs::write(&conf_path, conf)?;
        // A daemon in the foreground, pointed at the configuration, logging beside it.
        let start = |mut command: Command, daemon: &str, args: &[&str]| -> io::Result<Child> {
            let log = |suffix: &str| std::fs::File::create(dir.join(format!("{daemon}.{suffix}")));
            command.args(args).arg("-f").arg(&conf_path).env("SLURM_CONF", &conf_path).stdin(Stdio::null());
            command.stdout(log("out")?).stderr(log("err")?).spawn()
        };
        let controller = start(Command::new("slurmctld"), "slurmctld", &["-D", "-i"])?;
        let node = match node_prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("slurmd");
                command
            }
            None => Command::new("slurmd"),
        };
        let node = start(node, "slurmd", &["-D", "-N", NODE])?;
        let cluster =
            OneNodeCluster { dir: dir.to_path_buf(), conf: conf_path, controller: Some(controller), node: Some(node) };
        let started = Instant::now();
        while cluster.node_state().as_deref() != Some("idle") {
            if started.elapsed() > START_LIMIT {
                return Err(io::Error::other(format!(
                    "the one-node Slurm cluster in `{}` did not become idle within {START_LIMIT:?}: see its logs",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// The `slurm.conf` every Slurm command must be pointed at (`SLURM_CONF`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A Slurm command pointed at this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        command
    }

    /// The node's state as `sinfo` says it (`idle`, `mixed`, `alloc`), if it answers.
    pub fn node_state(&self) -> Option<String> {
        let output = self.command("sinfo").args(["--noheader", "--format=%T"]).output().ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (output.status.success() && !text.is_empty()).then_some(text)
    }

    /// `name|STATE` of every job in the queue; `None` when squeue fails.
    pub fn queue(&self) -> Option<Vec<String>> {
        let output = self.command("squeue").args(["--noheader", "--format=%j|%T"]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
    }

    /// Stops the controller (as an outage would): the node stays.
    pub fn stop_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            stop(&mut controller);
        }
    }

    /// Where the daemons' logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OneNodeCluster {
    fn drop(&mut self) {
        // The node first: it ends the steps it runs.
        for child in [self.node.take(), self.controller.take()].iter_mut().flatten() {
            stop(child);
        }
    }
}

/// SIGTERM, then SIGKILL if it has not ended within two seconds.
fn stop(child: &mut Child) {
    // SAFETY: kill with a child's pid and a signal number has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A port free on loopback now.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
