//! Jobs that outlive their server (issue 30): every local command runs under a
//! supervisor of its own session that writes its output and its end to files, and a
//! durable job's messages are numbered once, on disk; a server that dies or is
//! upgraded (`--keep-jobs-on-exit`) does not take its jobs along, and the next server
//! on the same root takes them on, so a client that reconnects resumes after its last
//! line. What cannot be taken on is stopped before anything it held is given out.

use std::time::Duration;

use crate::env::{PROCESS_LIMIT, Running, TestEnv, processes_running, send_signal, wait_exit, wait_until};

/// The real server binary on a job root of its own with `extra`, a source file for
/// jobs; the fixture, the server and its port.
fn serving(extra: &[&str]) -> (TestEnv, std::process::Child, u16) {
    let mut env = TestEnv::bare();
    env.write("source/x", "x");
    let (server, port) = crate::env::spawn_server_binary(&env, extra);
    env.set_addr(([127, 0, 0, 1], port).into());
    (env, server, port)
}

/// A test's last server, stopped.
fn stop(mut server: std::process::Child) {
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, PROCESS_LIMIT);
}

/// A marker no other test's processes carry.
fn marker(tag: u32) -> String {
    format!("{tag}.{}", std::process::id())
}

// A server killed with SIGKILL while a step holds the one `hspice` license: the step's
// command goes on without it (its supervisor is not the server's to take along); the
// next server on the same root and port takes the job on and holds the license for it
// again, so the next step asking for it waits, says why, and runs once the first
// ended: a license is never given out twice across a restart.
#[test]
fn a_job_a_killed_server_left_holds_its_license_again_under_the_next() {
    let (env, mut server, port) = serving(&["--license", "hspice=1"]);
    let marker = marker(951);
    let (started, release) = (env.root.path().join("started"), env.root.path().join("release"));
    let command = format!(
        "touch {}; until [ -e {} ]; do sleep 0.05; done; echo holder-ran {marker}",
        started.display(),
        release.display()
    );
    let holder = Running::start(&env, &["--license", "hspice", "--CMD", &command, "--retries", "8"]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || started.exists());
    send_signal(&server, libc::SIGKILL);
    wait_exit(&mut server, PROCESS_LIMIT);
    // The run outlived the server that started it.
    assert_eq!(processes_running(&format!("-c\0touch {}", started.display())).len(), 1, "the command runs on");
    let server = restart(&env, port, &["--license", "hspice=1"]);
    holder.wait_for("reconnected: following job");
    let next = Running::start(&env, &["--license", "hspice", "--CMD", "echo next-ran"]);
    next.wait_for("waiting: license hspice 1/1 in use");
    assert!(!next.said().contains("]:next-ran"));
    std::fs::write(&release, "").unwrap();
    let (status, said) = holder.end();
    assert!(status.success() && said.contains(&format!("]:holder-ran {marker}")), "{said}");
    let (status, said) = next.end();
    assert!(status.success() && said.contains("]:next-ran"), "{said}");
    stop(server);
}

// A supervisor killed with SIGKILL: its command goes with it, and the run is reported
// lost, by name, never as a success; nothing of it is left in the runs' directory.
#[test]
fn a_killed_supervisor_is_a_lost_run_never_a_success() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let marker = marker(952);
    let started = env.root.path().join("started");
    let command = format!("touch {}; echo before; sleep {marker}; echo after", started.display());
    let running = Running::start(&env, &["--CMD", &command]);
    wait_until(PROCESS_LIMIT, "the command runs", || started.exists());
    running.wait_for("]:before");
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    let run = crate::env::names_in(&runs).pop().expect("the run's directory");
    let stat = std::fs::read_to_string(runs.join(run).join("pid")).unwrap();
    let pid: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill with a pid this test read and a signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (status, said) = running.end();
    assert!(!status.success() && !said.contains("]:after"), "{said}");
    assert!(said.contains("the run's supervisor ended without saying how the command ended"), "{said}");
    assert!(said.contains("ABORTED"), "{said}");
    wait_until(Duration::from_secs(5), "the command is gone with its supervisor", || {
        processes_running(&format!("sleep\0{marker}")).is_empty()
    });
    wait_until(Duration::from_secs(5), "the run's directory is removed", || crate::env::names_in(&runs).is_empty());
}

/// A small tmpfs mounted over a directory for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::env::needed(
                "root (to mount a small tmpfs as a full disk)",
                "run the suite as root, as `.ci/run` does",
            );
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "lrpymrpc-full"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs over {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// The disk filling while a run's output is written: the run is stopped and its user
// told why, by name (RESOURCE_EXHAUSTED), never a success; the space its output took
// is given back, and the server goes on with the next job.
#[test]
fn output_that_fills_the_disk_stops_the_run_with_a_clear_reason() {
    let mut env = TestEnv::bare();
    env.write("source/x", "x");
    let _disk = SmallDisk::mount(&env.jobs, "2m");
    let (server, port) = crate::env::spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    let command = "echo first; yes 'a line of output' | head -c 8000000; echo never";
    let output = env.client().args(["--CMD", command]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("]:first"), "the command ran: {stderr}");
    assert!(!output.status.success() && !stdout.contains("]:never"), "{stderr}");
    assert!(stderr.contains("the command's output could not be written"), "{stderr}");
    assert!(stderr.contains("No space left on device") && stderr.contains("RESOURCE_EXHAUSTED"), "{stderr}");
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    assert!(crate::env::names_in(&runs).is_empty(), "{:?}", crate::env::names_in(&runs));
    let output = env.client().args(["--CMD", "echo again"]).output().unwrap();
    assert!(output.status.success() && String::from_utf8_lossy(&output.stdout).contains("]:again"));
    stop(server);
}

/// The numbered lines `line N` a client printed, in the order printed.
pub fn numbered_lines(said: &str) -> Vec<String> {
    said.lines()
        .filter_map(|line| line.split_once("]:").map(|(_, text)| text.to_string()))
        .filter(|text| text.starts_with("line "))
        .collect()
}

pub fn lines_up_to(last: u32) -> Vec<String> {
    (1..=last).map(|n| format!("line {n}")).collect()
}

/// A command printing `line 1` to `line 40`, a tenth of a second apart, then a result
/// and exit 3.
pub const FORTY_LINES: &str =
    "for i in $(seq 1 40); do echo line $i; sleep 0.1; done; mkdir -p build; echo done > build/out; exit 3";

/// The server restarted on the same root and port, with `extra`. (Clients that follow
/// a job across it are given `--retries 8`, so a loaded machine's slower restart is
/// still within their reconnect attempts.)
fn restart(env: &TestEnv, port: u16, extra: &[&str]) -> std::process::Child {
    crate::env::spawn_server_binary_listening(env, &format!("127.0.0.1:{port}"), extra, None, &[]).0
}

// The case, shortened: a job printing a line every tenth of a second; after
// line 10 the server is stopped with --keep-jobs-on-exit and a new one started on the
// same root and port; the client, never restarted, prints lines 1 to 40 exactly once
// and in order, the exit status the command gave, and downloads the results. The same
// when the server is killed with SIGKILL instead.
#[test]
fn a_server_restarted_mid_run_loses_no_line_of_a_running_job() {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
        let running = Running::start(&env, &["--CMD", FORTY_LINES, "--retries", "8"]);
        running.wait_for("]:line 10\n");
        send_signal(&server, signal);
        let stopped = wait_exit(&mut server, PROCESS_LIMIT);
        assert!(signal == libc::SIGKILL || stopped.success(), "{stopped:?}");
        let mut server = restart(&env, port, &["--keep-jobs-on-exit"]);
        let (status, said) = running.end();
        assert_eq!(status.code(), Some(3), "signal {signal}: {said}");
        assert_eq!(numbered_lines(&said), lines_up_to(40), "signal {signal}: {said}");
        assert!(said.contains("reconnected: following job"), "{said}");
        assert_eq!(std::fs::read_to_string(env.work.join("build/out")).unwrap(), "done\n");
        let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
        assert!(log.contains("took on a running job an earlier server left"), "{log}");
        send_signal(&server, libc::SIGTERM);
        wait_exit(&mut server, PROCESS_LIMIT);
    }
}

// The case as it stands: a job printing a line a second for 60 s, its client
// behind the fault proxy; at line 20 the network goes quiet (every connection cut, new
// ones held), the server is stopped (`--keep-jobs-on-exit`) and a new server process
// started on the same root and port, then the network comes back; the client, never
// restarted, prints exactly lines 1 to 60 in order, the exit status the command gave,
// and downloads the results.
#[test]
fn sixty_lines_a_second_apart_survive_a_restart_at_line_twenty_behind_the_fault_proxy() {
    use crate::proxy::{Fault, FaultProxy};
    let (mut env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let proxy = FaultProxy::start(env.runtime(), ([127, 0, 0, 1], port).into(), Fault::default());
    env.set_addr(proxy.addr);
    let sixty = "for i in $(seq 1 60); do echo line $i; sleep 1; done; mkdir -p build; echo done > build/out; exit 3";
    let running = Running::start(&env, &["--CMD", sixty, "--retries", "8"]);
    running.wait_for("]:line 20\n");
    proxy.go_quiet();
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let server = restart(&env, port, &["--keep-jobs-on-exit"]);
    proxy.release();
    let (status, said) = running.end();
    assert_eq!(status.code(), Some(3), "{said}");
    assert_eq!(numbered_lines(&said), lines_up_to(60), "{said}");
    assert_eq!(std::fs::read_to_string(env.work.join("build/out")).unwrap(), "done\n");
    assert!(proxy.connections() >= 2, "the client came back through the proxy");
    stop(server);
}

// `--detach`, the server restarted while the job runs, then `attach`: the whole output,
// the status and the results, from the new server.
#[test]
fn a_detached_job_is_attached_after_a_server_restart() {
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let started = env.root.path().join("started");
    let command = format!("touch {}; {FORTY_LINES}", started.display());
    let detached = env.client().args(["--detach", "--CMD", &command]).output().unwrap();
    let stdout = String::from_utf8_lossy(&detached.stdout);
    assert!(detached.status.success(), "{stdout}");
    let id = stdout.lines().find_map(|line| line.split("detached job=").nth(1)).expect("the job id").to_string();
    wait_until(PROCESS_LIMIT, "the command runs", || started.exists());
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let server = restart(&env, port, &[]);
    // Taken on, the job is still its owner's alone: another certificate is told no such
    // job exists, as before the restart.
    let mallory = crate::env::client_dir_for(&env, "mallory");
    let elsewhere = env.root.path().join("elsewhere");
    let refused = crate::security::client_as(&env, &mallory, &elsewhere).args(["attach", &id]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("NOT_FOUND"), "{stderr}");
    let attached = env.client().args(["attach", &id]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&attached.stdout), String::from_utf8_lossy(&attached.stderr));
    assert_eq!(attached.status.code(), Some(3), "{stdout}{stderr}");
    assert_eq!(numbered_lines(&stdout), lines_up_to(40), "{stdout}");
    assert_eq!(std::fs::read_to_string(env.work.join("build/out")).unwrap(), "done\n");
    stop(server);
}

// A spool edited on disk while the server is down is not trusted: the job is not taken
// on (its run is stopped, its directory swept), and its client is told it is gone,
// never given output nobody can vouch for.
#[test]
fn an_edited_spool_is_refused_and_its_job_not_taken_on() {
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let marker = marker(953);
    let command = format!("echo line 1; sleep {marker}");
    let running = Running::start(&env, &["--CMD", &command, "--retries", "5"]);
    running.wait_for("]:line 1\n");
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let spools = env.jobs.join(lrpymrpc_mock_server::SPOOLS_DIR);
    let spool = crate::env::names_in(&spools).into_iter().find(|name| name.ends_with(".spool")).expect("a spool");
    let mut bytes = std::fs::read(spools.join(&spool)).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x20;
    std::fs::write(spools.join(&spool), bytes).unwrap();
    let server = restart(&env, port, &[]);
    let (status, said) = running.end();
    assert!(!status.success(), "{said}");
    assert!(said.contains("NOT_FOUND") || said.contains("no job"), "{said}");
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    assert!(log.contains("the job's spool is refused") && log.contains("not trusted"), "{log}");
    assert!(processes_running(&format!("sleep\0{marker}")).is_empty(), "its run was stopped");
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
    stop(server);
}

// A pid file naming another process (a reused pid, or one planted there) is never
// signalled: a supervisor is known by the run's lock, which only it holds. Here the
// supervisor is killed (its command with it) and its pid file made to name a decoy
// with the decoy's own start time; the next server signals nobody and says the run
// is gone, never a success.
#[test]
fn a_pid_file_naming_another_process_never_gets_it_signalled() {
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let running = Running::start(&env, &["--CMD", "echo line 1; sleep 600", "--retries", "8"]);
    running.wait_for("]:line 1\n");
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    let run = runs.join(crate::env::names_in(&runs).pop().expect("the run's directory"));
    let stat = std::fs::read_to_string(run.join("pid")).unwrap();
    let supervisor: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
    let mut decoy = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    // SAFETY: kill with a pid this test read and a signal number.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    wait_until(PROCESS_LIMIT, "the supervisor is gone", || {
        !std::fs::read_to_string(format!("/proc/{supervisor}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
    });
    let decoy_stat = std::fs::read_to_string(format!("/proc/{}/stat", decoy.id())).unwrap();
    std::fs::write(run.join("pid"), decoy_stat).unwrap();
    let server = restart(&env, port, &[]);
    let (status, said) = running.end();
    assert!(!status.success() && said.contains("ABORTED") && said.contains("how it ended is not known"), "{said}");
    assert!(decoy.try_wait().unwrap().is_none(), "the decoy was not signalled");
    decoy.kill().unwrap();
    let _ = decoy.wait();
    stop(server);
}

// With --keep-jobs-on-exit, a run the next server could not take on (a legacy client's:
// it cannot come back for it) is stopped at the exit, not left running for nobody.
#[test]
fn a_legacy_clients_run_is_stopped_at_a_keep_jobs_exit() {
    let python = crate::compat::grpcio_python();
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let marker = marker(954);
    let started = env.root.path().join("started");
    let mut client = std::process::Command::new(&python)
        .current_dir(&env.work)
        .arg(crate::compat::repo_file("tests/python/grpcio_client.py"))
        .arg("--proto")
        .arg(crate::compat::repo_file("proto/file_service.proto"))
        .args(["--server", &format!("127.0.0.1:{port}"), "--tls-dir"])
        .arg(&env.tls)
        .args(["--source", "source", "--result", "build"])
        .args(["--cmd", &format!("touch {}; sleep {marker}", started.display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PROCESS_LIMIT, "the legacy client's command runs", || started.exists());
    assert_eq!(processes_running(&format!("sleep\0{marker}")).len(), 1, "it runs");
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    wait_until(Duration::from_secs(5), "its command stopped at the exit", || {
        processes_running(&format!("sleep\0{marker}")).is_empty()
    });
    let _ = client.kill();
    let _ = client.wait();
}

// A run with more output than a checkpoint's worth (1 MiB): the server writes down
// where a replay may start and frees the disk the run's output file took before it;
// restarted there, the next server replays from the checkpoint, and the client still
// prints every line exactly once.
#[test]
fn a_long_output_is_replayed_from_its_checkpoint_and_its_head_is_freed() {
    use std::os::unix::fs::MetadataExt;
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let (started, release) = (env.root.path().join("started"), env.root.path().join("release"));
    let command = format!(
        "seq -f 'line %g' 1 200000; touch {}; until [ -e {} ]; do sleep 0.05; done; seq -f 'line %g' 200001 200040; \
         exit 3",
        started.display(),
        release.display()
    );
    let running = Running::start(&env, &["--CMD", &command, "--retries", "8"]);
    running.wait_for("]:line 200000\n");
    wait_until(PROCESS_LIMIT, "the first part printed", || started.exists());
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    let output = runs.join(crate::env::names_in(&runs).pop().expect("the run's directory")).join("output");
    let meta = std::fs::metadata(&output).unwrap();
    assert!(meta.len() > 2 << 20, "{} bytes of output", meta.len());
    assert!(
        meta.blocks() * 512 < meta.len() - (1 << 20),
        "{} of {} bytes still on disk",
        meta.blocks() * 512,
        meta.len()
    );
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let server = restart(&env, port, &[]);
    std::fs::write(&release, "").unwrap();
    let (status, said) = running.end();
    assert_eq!(status.code(), Some(3), "{}", &said[said.len().saturating_sub(2000)..]);
    let lines = numbered_lines(&said);
    assert_eq!(lines.len(), 200040, "{:?}", lines.last());
    assert!(lines == lines_up_to(200040), "every line once, in order");
    stop(server);
}

// A step over its --mem after a restart is still stopped and said to be: the next
// server takes its memory cgroup on with the run (reads the kernel's verdict, removes
// the group after). Where the server makes no memory cgroup, the address-space rlimit
// the run started with still makes the allocation fail.
#[test]
fn a_run_taken_on_is_still_held_to_its_memory_and_told_so() {
    use lrpymrpc_mock_server::executor::confine::{MemoryControl, memory_control};
    let (env, mut server, port) = serving(&["--keep-jobs-on-exit"]);
    let (started, release) = (env.root.path().join("started"), env.root.path().join("release"));
    let command = format!(
        "touch {}; until [ -e {} ]; do sleep 0.05; done; echo allocating; \
         python3 -c 'x = bytearray(400 * 1024 * 1024); print(\"survived\", len(x))'",
        started.display(),
        release.display()
    );
    let running = Running::start(&env, &["--mem", "64M", "--CMD", &command, "--retries", "8"]);
    wait_until(PROCESS_LIMIT, "the step runs", || started.exists());
    // The run's group is named by the server that made it.
    let made_by = format!("run-{}-", server.id());
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, PROCESS_LIMIT).success());
    let server = restart(&env, port, &[]);
    running.wait_for("reconnected: following job");
    std::fs::write(&release, "").unwrap();
    let (status, said) = running.end();
    assert!(said.contains("]:allocating") && !status.success() && !said.contains("]:survived"), "{said}");
    match memory_control() {
        MemoryControl::CgroupV1(parent) | MemoryControl::CgroupV2(parent) => {
            assert!(said.contains("it used more than the 64.0 MiB of memory it was granted"), "{said}");
            let left: Vec<_> = crate::env::names_in(parent).into_iter().filter(|n| n.starts_with(&made_by)).collect();
            assert!(left.is_empty(), "{left:?}");
        }
        MemoryControl::AddressSpace => assert!(said.contains("MemoryError"), "{said}"),
    }
    stop(server);
}
