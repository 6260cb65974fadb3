//! A throwaway one-node Grid Engine cluster on this machine, for the Grid Engine
//! executor's tests and benchmark: Debian's `sge_qmaster` and `sge_execd` (8.1.9) with
//! every path in one directory (`SGE_ROOT` linking the packaged binaries, classic
//! spooling initialised as Debian's `init_cluster` does), `admin_user none`, `min_uid
//! 0`, free ports, a scheduler pass every second, one queue `all.q` with a slot per
//! core, a parallel environment `smp`, `h_vmem` consumable per host (2 GiB a slot when
//! a job asks for none) and a `spectre` license (a per-job consumable, two of them). Started in a few seconds, stopped
//! (with any job) when dropped. Needs root, as `sge_execd` does.
//!
//! Containment: the daemons listen on every address (Grid Engine has no setting to
//! bind loopback). The cluster names this machine only, by the name its loopback
//! address resolves to (`host_aliases`), and Grid Engine refuses any client whose
//! address resolves to another host ("access denied (client IP resolved to host name
//! ...)"), so a peer elsewhere cannot submit or administer; the ports are free ones
//! picked at start, and the test machine's network is closed anyway.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the execution host may take to report after the daemons start.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Where Debian installs the daemons and utilities.
const BINARIES: &str = "/usr/lib/gridengine";

/// A running one-node cluster.
pub struct OneNodeGridEngine {
    dir: PathBuf,
    env: Vec<(String, String)>,
    host: String,
}

/// Whether this machine has what the cluster needs, and is root; the reason when not.
pub fn unavailable() -> Option<String> {
    for tool in ["qsub", "qstat", "qdel", "qconf", "qhost"] {
        if which::which(tool).is_err() {
            return Some(format!("`{tool}` is not installed (Debian: gridengine-client)"));
        }
    }
    for daemon in ["sge_qmaster", "sge_execd", "spoolinit", "spooldefaults"] {
        if !Path::new(BINARIES).join(daemon).exists() {
            return Some(format!("`{BINARIES}/{daemon}` is not installed (Debian: gridengine-master gridengine-exec)"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("sge_execd must run as root".into());
    }
    None
}

impl OneNodeGridEngine {
    /// Makes the cluster in `dir` with `slots` slots and starts it; returns once the
    /// execution host reports. `node_prefix`, when given, runs the execution daemon
    /// behind that command (`unshare ...`: a host that does not see this machine's
    /// files).
    pub fn start(dir: &Path, slots: u32, node_prefix: &[&str]) -> io::Result<OneNodeGridEngine> {
        let root = dir.join("root");
        let common = root.join("default/common");
        let (qmaster_spool, execd_spool) = (dir.join("spool/qmaster"), dir.join("spool/execd"));
        for made in [&common, &qmaster_spool, &execd_spool] {
            std::fs::create_dir_all(made)?;
        }
        for linked in ["bin", "lib", "utilbin"] {
            std::os::unix::fs::symlink(Path::new("/var/lib/gridengine").join(linked), root.join(linked))?;
        }
        std::os::unix::fs::symlink("/usr/share/gridengine/util", root.join("util"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string();
        let host = host.split('.').next().unwrap_or("localhost").to_string();
        // Every name this machine's loopback goes by is this one host to Grid Engine.
        std::fs::write(common.join("host_aliases"), format!("{host} {}\n", loopback_names(&host).join(" ")))?;
        std::fs::write(common.join("act_qmaster"), format!("{host}\n"))?;
        let spooling = format!("{};{}", common.display(), qmaster_spool.display());
        std::fs::write(
            common.join("bootstrap"),
            format!(
                "admin_user none\ndefault_domain none\nignore_fqdn true\nspooling_method classic\n\
                 spooling_lib libspoolc\nspooling_params {spooling}\nbinary_path {BINARIES}\n\
                 qmaster_spool_dir {}\nsecurity_mode none\nlistener_threads 2\nworker_threads 2\n\
                 scheduler_threads 1\n",
                qmaster_spool.display()
            ),
        )?;
        let defaults = std::fs::read_to_string("/usr/share/gridengine/default-configuration")?;
        let configuration: String = defaults
            .lines()
            .map(|line| {
                let key = line.split_whitespace().next().unwrap_or_default();
                match key {
                    "execd_spool_dir" => format!("execd_spool_dir {}", execd_spool.display()),
                    "min_uid" => "min_uid 0".into(),
                    "min_gid" => "min_gid 0".into(),
                    "mailer" => "mailer /bin/true".into(),
                    "load_report_time" => "load_report_time 00:00:02".into(),
                    "finished_jobs" => "finished_jobs 0".into(),
                    _ => line.to_string(),
                }
            })
            .map(|line| line + "\n")
            .collect();
        write(dir, "configuration", &configuration)?;
        let env = vec![
            ("SGE_ROOT".to_string(), root.display().to_string()),
            ("SGE_CELL".to_string(), "default".to_string()),
            ("SGE_QMASTER_PORT".to_string(), free_port()?.to_string()),
            ("SGE_EXECD_PORT".to_string(), free_port()?.to_string()),
        ];
        let cluster = OneNodeGridEngine { dir: dir.to_path_buf(), env, host: host.clone() };
        let spooldefaults = format!("{BINARIES}/spooldefaults");
        cluster.run(&format!("{BINARIES}/spoolinit"), &["classic", "libspoolc", &spooling, "init"])?;
        let resources = "/usr/share/gridengine/util/resources";
        cluster.run(&spooldefaults, &["configuration", &dir.join("configuration").display().to_string()])?;
        cluster.run(&spooldefaults, &["complexes", &format!("{resources}/centry")])?;
        cluster.run(&spooldefaults, &["usersets", &format!("{resources}/usersets")])?;
        cluster.run(&spooldefaults, &["managers", "root"])?;
        // The daemons put themselves in the background.
        cluster.run(&format!("{BINARIES}/sge_qmaster"), &[])?;
        cluster.wait_for("the qmaster to answer", || cluster.qconf(&["-sh"]).is_ok())?;
        write(dir, "sched", SCHEDULER)?;
        cluster.qconf_file("-Msconf", "sched")?;
        cluster.qconf(&["-as", &host])?;
        write(dir, "pe", PARALLEL_ENVIRONMENT)?;
        cluster.qconf_file("-Ap", "pe")?;
        let complexes = cluster.qconf(&["-sc"])?;
        let mut complexes: String = complexes
            .lines()
            // A job asking for no memory gets 2 GiB (with a default of 0, Grid Engine
            // would give it an address space of 0 bytes: every program crashes).
            .map(|line| match line.starts_with("h_vmem ") {
                true => "h_vmem h_vmem MEMORY <= YES YES 2G 0".to_string(),
                false => line.to_string(),
            })
            .map(|line| line + "\n")
            .collect();
        complexes.push_str("spectre spectre INT <= YES JOB 0 0\n");
        write(dir, "complexes", &complexes)?;
        cluster.qconf_file("-Mc", "complexes")?;
        let memory_mib = (crate::resources::machine::memory_bytes() >> 20) * 9 / 10;
        write(dir, "host", &host_file(&host, &format!("h_vmem={memory_mib}M")))?;
        cluster.qconf_file("-Ae", "host")?;
        write(dir, "global", &host_file("global", "spectre=2"))?;
        cluster.qconf_file("-Me", "global")?;
        write(dir, "queue", &QUEUE.replace("HOST", &host).replace("SLOTS", &slots.to_string()))?;
        cluster.qconf_file("-Aq", "queue")?;
        let execd = format!("{BINARIES}/sge_execd");
        match node_prefix.split_first() {
            Some((program, args)) => {
                let mut args = args.to_vec();
                args.push(&execd);
                cluster.run(program, &args)?;
            }
            None => cluster.run(&execd, &[])?,
        }
        cluster.wait_for("the execution host to report", || cluster.node_reports())?;
        Ok(cluster)
    }

    /// The variables Grid Engine's commands need (`SGE_ROOT`, `SGE_CELL`, the ports).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The jobs in the cluster now, as `qstat` lists them (job id, name, state).
    pub fn jobs(&self) -> io::Result<Vec<(String, String, String)>> {
        let text = self.output("qstat", &["-u", "*", "-xml"])?;
        Ok(text
            .split("<job_list")
            .skip(1)
            .filter_map(|job| Some((tag(job, "JB_job_number")?, tag(job, "JB_name")?, tag(job, "state")?)))
            .collect())
    }

    /// What Grid Engine says of job `id` (`qstat -j`), for a test that failed to tell
    /// why a job stayed.
    pub fn describe(&self, id: &str) -> String {
        self.output("qstat", &["-j", id]).unwrap_or_else(|error| error.to_string())
    }

    /// Stops the qmaster (the scheduler down) and returns once it no longer answers;
    /// the execution daemon stays.
    pub fn stop_qmaster(&self) -> io::Result<()> {
        self.qconf(&["-km"])?;
        self.wait_for("the qmaster to stop answering", || self.qconf(&["-sh"]).is_err())
    }

    /// Deletes job `id` as an administrator would (`qdel`): Grid Engine kills its
    /// processes, the supervisor among them.
    pub fn qdel(&self, id: &str) -> io::Result<()> {
        self.run("qdel", &[id])
    }

    /// Runs `qmod` (`-d all.q` to disable the queue: jobs wait; `-e all.q` to enable it).
    pub fn qmod(&self, args: &[&str]) -> io::Result<()> {
        self.run("qmod", args)
    }

    /// The execution host has sent a load report, so jobs can be scheduled to it.
    fn node_reports(&self) -> bool {
        self.output("qhost", &["-h", &self.host])
            .is_ok_and(|text| text.lines().any(|line| line.starts_with(&self.host) && !line.contains(" - ")))
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) -> io::Result<()> {
        let started = Instant::now();
        while !ready() {
            if started.elapsed() > START_LIMIT {
                return Err(io::Error::other(format!(
                    "the one-node Grid Engine cluster in `{}`: waited {START_LIMIT:?} for {what}; see \
                     spool/qmaster/messages",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn qconf(&self, args: &[&str]) -> io::Result<String> {
        self.output("qconf", args)
    }

    fn qconf_file(&self, option: &str, file: &str) -> io::Result<String> {
        self.qconf(&[option, &self.dir.join(file).display().to_string()])
    }

    /// `program` bounded in time (a client of a qmaster that is gone may retry long).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("timeout");
        command.args(["20", program]);
        command.envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> io::Result<()> {
        self.output(program, args).map(drop)
    }

    fn output(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let output = self.command(program).args(args).output()?;
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(io::Error::other(format!(
                "`{program} {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
        }
    }
}

impl Drop for OneNodeGridEngine {
    fn drop(&mut self) {
        // The execution daemon with its jobs, then the qmaster; whatever is still there
        // a moment later is killed by the pid its spool directory holds.
        let _ = self.output("qdel", &["-f", "-u", "*"]);
        let _ = self.qconf(&["-kej", &self.host]);
        let _ = self.qconf(&["-km"]);
        std::thread::sleep(Duration::from_millis(300));
        let pids = [
            self.dir.join("spool/qmaster/qmaster.pid"),
            self.dir.join(format!("spool/execd/{}/execd.pid", self.host)),
            self.dir.join("spool/execd/localhost/execd.pid"),
        ];
        for pid in pids.iter().filter_map(|file| std::fs::read_to_string(file).ok()) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill with a pid read from the daemon's own pid file.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// The names other than `host` that this machine's loopback addresses have in
/// `/etc/hosts` (`localhost` at least).
fn loopback_names(host: &str) -> Vec<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut names = vec!["localhost".to_string()];
    for line in hosts.lines().map(|line| line.split('#').next().unwrap_or_default()) {
        let mut words = line.split_whitespace();
        if words.next().is_some_and(|address| address.starts_with("127.")) {
            for name in words.map(|name| name.split('.').next().unwrap_or(name)) {
                if name != host && !names.iter().any(|known| known == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// The text of the first `<name>` element in `xml`.
fn tag(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    std::fs::write(dir.join(name), text)
}

fn host_file(name: &str, complex_values: &str) -> String {
    format!(
        "hostname {name}\nload_scaling NONE\ncomplex_values {complex_values}\nuser_lists NONE\nxuser_lists NONE\n\
         projects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n"
    )
}

/// A free TCP port on this machine (bound, then released).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The scheduler: a pass every second, no load adjustments, reasons kept for `qstat -j`.
const SCHEDULER: &str = "algorithm default\nschedule_interval 0:0:1\nmaxujobs 0\nqueue_sort_method load\n\
job_load_adjustments NONE\nload_adjustment_decay_time 0:0:0\nload_formula slots\nschedd_job_info true\n\
flush_submit_sec 1\nflush_finish_sec 1\nparams none\nreprioritize_interval 0:0:0\nhalftime 168\n\
usage_weight_list cpu=1.000000,mem=0.000000,io=0.000000\ncompensation_factor 5.000000\nweight_user 0.250000\n\
weight_project 0.250000\nweight_department 0.250000\nweight_job 0.250000\nweight_tickets_functional 0\n\
weight_tickets_share 0\nshare_override_tickets TRUE\nshare_functional_shares TRUE\n\
max_functional_jobs_to_schedule 200\nreport_pjob_tickets TRUE\nmax_pending_tasks_per_job 50\n\
halflife_decay_list none\npolicy_hierarchy OFS\nweight_ticket 0.010000\nweight_waiting_time 0.000000\n\
weight_deadline 3600000.000000\nweight_urgency 0.100000\nweight_priority 1.000000\nmax_reservation 0\n\
default_duration INFINITY\n";

/// `-pe smp N`: N slots on one host.
const PARALLEL_ENVIRONMENT: &str = "pe_name smp\nslots 999\nuser_lists NONE\nxuser_lists NONE\n\
start_proc_args /bin/true\nstop_proc_args /bin/true\nallocation_rule $pe_slots\ncontrol_slaves FALSE\n\
job_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n";

/// The one queue: a batch queue of SLOTS slots on HOST.
const QUEUE: &str = "qname all.q\nhostlist HOST\nseq_no 0\nload_thresholds NONE\nsuspend_thresholds NONE\n\
nsuspend 1\nsuspend_interval 00:05:00\npriority 0\nmin_cpu_interval 00:05:00\nprocessors UNDEFINED\n\
qtype BATCH INTERACTIVE\nckpt_list NONE\npe_list smp\nrerun FALSE\nslots SLOTS\ntmpdir /tmp\nshell /bin/sh\n\
prolog NONE\nepilog NONE\nshell_start_mode posix_compliant\nstarter_method NONE\nsuspend_method NONE\n\
resume_method NONE\nterminate_method NONE\nnotify 00:00:60\nowner_list NONE\nuser_lists NONE\n\
xuser_lists NONE\nsubordinate_list NONE\ncomplex_values NONE\nprojects NONE\nxprojects NONE\n\
calendar NONE\ninitial_state default\ns_rt INFINITY\nh_rt INFINITY\ns_cpu INFINITY\nh_cpu INFINITY\n\
s_fsize INFINITY\nh_fsize INFINITY\ns_data INFINITY\nh_data INFINITY\ns_stack INFINITY\nh_stack INFINITY\n\
s_core INFINITY\nh_core INFINITY\ns_rss INFINITY\nh_rss INFINITY\ns_vmem INFINITY\nh_vmem INFINITY\n";
