//! The server's Grid Engine executor (issue 31) against a real one-node Grid Engine
//! cluster from Debian's packages (`lrpymrpc_mock_server::executor::gridengine_cluster`),
//! the real server binary with `--executor gridengine` and the real client over mutual
//! TLS: a host without the job root or the server binary refused at start, results and
//! output as with the local executor, stdout and stderr apart, exact
//! exit statuses and signals, every word of a command as it was, Ctrl-C leaving
//! nothing in `qstat`, jobs queueing for a license (and the client saying so), a job
//! Grid Engine will never start (`Eqw`) and the qmaster down answered `UNAVAILABLE`,
//! the job timeout and a shutdown deleting the job, pip on the server with the
//! sandboxed command on the node, the Python-style client through it, and a server
//! restarted mid-job losing no line. One cluster at a time: the tests take a lock
//! (shared with the Slurm tests: both count on this machine's cores).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lrpymrpc_mock_server::executor::gridengine_cluster::{OneNodeGridEngine, unavailable};

use crate::env::build_wheel;
use crate::env::{PROCESS_LIMIT, TestEnv, send_signal, spawn_server_binary_with, wait_exit, wait_until};
use predicates::prelude::*;

/// A test's cluster and a server that runs its commands there. The cluster is dropped
/// before the environment whose directory holds its files.
struct Fixture {
    cluster: OneNodeGridEngine,
    env: TestEnv,
    server: std::process::Child,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// How long a job that ended may stay listed in `qstat` (Grid Engine clears it when the
/// execution daemon's report reaches the qmaster: seconds on a loaded machine). A job
/// stopped by Ctrl-C or a limit is held to the 2 s instead.
const SETTLE: Duration = Duration::from_secs(30);

/// The arguments every test's server gets.
const ARGS: [&str; 4] = ["--executor", "gridengine", "--sge-poll-interval", "200ms"];

/// A one-node cluster and a server that runs jobs on it (the test fails where Grid
/// Engine cannot run).
fn fixture(extra: &[&str]) -> Fixture {
    require_grid_engine();
    let lock = crate::slurm::ONE_CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut env = TestEnv::bare();
    let cluster = OneNodeGridEngine::start(&env.root.path().join("sge"), 2, &[]).unwrap();
    let mut args = ARGS.to_vec();
    args.extend_from_slice(extra);
    let server = start_server(&env, &cluster, "127.0.0.1:0", &args);
    env.set_addr(format!("127.0.0.1:{}", server.1).parse().unwrap());
    env.write("source/input.txt", "some input\n");
    // The probe job is gone before a test counts jobs.
    wait_until_no_job_is_left(&cluster, &env, "the probe job gone from qstat");
    Fixture { cluster, env, server: server.0, _lock: lock }
}

fn start_server(env: &TestEnv, cluster: &OneNodeGridEngine, listen: &str, args: &[&str]) -> (std::process::Child, u16) {
    let vars: Vec<(&str, &std::ffi::OsStr)> =
        cluster.env().iter().map(|(name, value)| (name.as_str(), std::ffi::OsStr::new(value.as_str()))).collect();
    match listen {
        "127.0.0.1:0" => spawn_server_binary_with(env, args, None, &vars),
        _ => crate::env::spawn_server_binary_listening(env, listen, args, None, &vars),
    }
}

/// Grid Engine can run here, or the test fails (the suite runs as root where its
/// packages are installed, as `.ci/run` does).
fn require_grid_engine() {
    if let Some(why) = unavailable() {
        crate::env::needed(
            &format!("a one-node Grid Engine cluster ({why})"),
            "run the suite as root with gridengine-master, gridengine-exec and gridengine-client installed",
        )
    }
}

/// Our jobs in the cluster's queue now.
fn our_jobs(cluster: &OneNodeGridEngine) -> Vec<(String, String, String)> {
    cluster.jobs().unwrap_or_default().into_iter().filter(|(_, name, _)| name.starts_with("lrpymrpc-")).collect()
}

/// Returns once no job of ours is in `qstat`; else fails after [`SETTLE`] with what
/// stayed: each job's state and what Grid Engine says of it, the node's processes and
/// the server's log.
fn wait_until_no_job_is_left(cluster: &OneNodeGridEngine, env: &TestEnv, what: &str) {
    let start = Instant::now();
    while start.elapsed() < SETTLE {
        if our_jobs(cluster).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let left: Vec<String> = our_jobs(cluster)
        .into_iter()
        .map(|(id, name, state)| format!("job {id} `{name}` in state {state}:\n{}", cluster.describe(&id)))
        .collect();
    let processes = std::process::Command::new("ps")
        .args(["-eo", "pid,ppid,pgid,stat,etime,args"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    panic!(
        "{what} within {SETTLE:?}, but these stayed:\n{}\nprocesses:\n{processes}\nserver log:\n{}",
        left.join("\n"),
        server_log(env)
    );
}

fn server_log(env: &TestEnv) -> String {
    std::fs::read_to_string(env.root.path().join("server.log")).unwrap_or_default()
}

// The execution host runs in a mount namespace of its own where a directory is an empty
// tmpfs: the job root (a host that does not mount the server's filesystem), then the
// server binary's directory (a host without the binary): the server refuses to start
// and says which, never listening.
#[test]
fn a_host_without_the_job_root_or_the_server_binary_is_refused_at_start() {
    require_grid_engine();
    crate::env::tool("unshare", "util-linux");
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server"));
    let env = TestEnv::bare();
    let jobs = env.jobs.display().to_string();
    let binaries = binary.parent().unwrap().display().to_string();
    for (hidden, said) in [
        (&jobs, format!("the job root `{jobs}` is not the same on the host that ran the probe job")),
        (&binaries, format!("the server binary `{}` does not run on the host", binary.display())),
    ] {
        let _lock = crate::slurm::ONE_CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hide = format!("mount -t tmpfs lrpymrpc-hidden '{hidden}' && exec \"$@\"");
        let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &hide, "sh"];
        let sge = env.root.path().join(format!("sge-{}", said.len()));
        let cluster = OneNodeGridEngine::start(&sge, 2, &prefix).unwrap();
        let mut command = std::process::Command::new(&binary);
        command.args(["--listen", "127.0.0.1:0", "--executor", "gridengine", "--root"]).arg(&env.jobs);
        command.arg("--tls-dir").arg(&env.tls).envs(cluster.env().iter().map(|(k, v)| (k, v)));
        let output = crate::env::output_within(&mut command, PROCESS_LIMIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "it never listened");
        assert!(stderr.contains(&said) && stderr.contains("hint: "), "{stderr}");
    }
}

#[test]
fn a_job_runs_as_a_grid_engine_job_with_its_results_output_and_stderr_apart() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    let command = "echo \"on $JOB_NAME\"; echo to-stderr >&2; mkdir -p build; \
                   cp source/input.txt build/copy.txt; head -c 100000 /dev/urandom > build/random.bin";
    let output = env.client().args(["--SOURCE", "source", "--RESULT", "build", "--CMD", command]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}\n{}", server_log(env));
    assert!(stdout.contains("]:on lrpymrpc-"), "the job name carries the job id: {stdout}");
    assert!(stderr.contains("]:to-stderr") && !stdout.contains("]:to-stderr"), "stderr apart: {stdout} / {stderr}");
    assert_eq!(env.read("build/copy.txt"), b"some input\n");
    assert_eq!(env.read("build/random.bin").len(), 100_000);
    wait_until_no_job_is_left(&fixture.cluster, &fixture.env, "nothing left in qstat");
}

#[test]
fn exit_statuses_signals_and_every_word_come_back_as_with_the_local_executor() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    env.client().args(["--CMD", "exit 3"]).assert().code(3);
    env.client()
        .args(["--CMD", "kill -KILL $$"])
        .assert()
        .code(137)
        .stderr(predicate::str::contains("killed by signal 9"));
    env.client().args(["--CMD", "exit 143"]).assert().code(143).stderr(predicate::str::contains("signal").not());
    // qsub and qrsh would parse the command again through a shell: nothing here does.
    let output = env.client().args(["--CMD", "printf '%s|' \"$0\" 'it'\\''s' '$HOME' 'a  b'"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("]:sh|it's|$HOME|a  b|"), "{output:?}");
}

#[test]
fn ctrl_c_leaves_nothing_in_qstat_within_two_seconds() {
    let fixture = fixture(&[]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    let mut client = env.client_std();
    let mut client = client.args(["--CMD", "echo started; sleep 60"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    assert_eq!(our_jobs(cluster).len(), 1, "the job runs in Grid Engine");
    send_signal(&client, libc::SIGINT);
    let interrupted = Instant::now();
    wait_until(Duration::from_secs(2), "the job gone from qstat", || our_jobs(cluster).is_empty());
    eprintln!("gone from qstat {:?} after Ctrl-C", interrupted.elapsed());
    assert_eq!(wait_exit(&mut client, PROCESS_LIMIT).code(), Some(130));
}

// The cluster has two `spectre` licenses (a per-job consumable): a job holding both
// makes the next one wait in Grid Engine's queue (qw), said to its user and then where
// it started; the cores, memory and licenses become qsub's options; what the cluster
// could never give is refused before the upload.
#[test]
fn a_job_waiting_for_a_license_says_so_and_requests_reach_grid_engine() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    for (args, said) in [
        (&["--cpus", "3"][..], "--cpus 3: the server has 2 cores for commands"),
        (&["--license", "spectre:3"][..], "--license spectre:3: the server has 2 of it"),
    ] {
        let output = env.client().args(args).args(["--CMD", "echo ran"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(said), "{stderr}");
        assert!(our_jobs(&fixture.cluster).is_empty());
    }
    let release = env.root.path().join("release");
    let held = format!(
        "echo slots=$NSLOTS pe=$PE omp=$OMP_NUM_THREADS vmem=$(ulimit -v); touch {0}.started; \
         until [ -e {0} ]; do sleep 0.1; done",
        release.display()
    );
    let mut holder = env.client_std();
    let holder = holder
        .args(["--license", "spectre:2", "--cpus", "2", "--mem", "512M", "--CMD", &held])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = release.with_extension("started");
    wait_until(PROCESS_LIMIT, "the license holder runs", || started.exists());
    let next = crate::env::Running::start(env, &["--license", "spectre", "--CMD", "echo next-ran"]);
    // Released once its client has said it waits.
    next.wait_for("queued by Grid Engine (qw)");
    assert!(our_jobs(&fixture.cluster).iter().any(|(_, _, state)| state == "qw"), "it waits in Grid Engine's queue");
    std::fs::write(&release, "").unwrap();
    let holder = crate::env::child_output_within(holder, PROCESS_LIMIT);
    let holder_out = String::from_utf8_lossy(&holder.stdout);
    let (next_status, next_out) = next.end();
    // 512 MiB over two slots: asked as h_vmem=256M a slot, which Grid Engine multiplies
    // by the job's slots for its address-space limit (ulimit -v says KiB).
    assert!(holder.status.success() && holder_out.contains("]:slots=2 pe=smp omp=2 vmem=524288"), "{holder_out}");
    assert!(next_status.success() && next_out.contains("]:next-ran"), "{next_out}");
    // Where it started: from the queue (`all.q@HOST`) when a poll saw it run, else
    // from its supervisor's word (this quick job may start and end between two polls).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        next_out.contains("Grid Engine started the command on all.q@")
            || next_out.contains(&format!("Grid Engine started the command on {}", host.trim())),
        "{next_out}\n{}",
        server_log(env)
    );
}

// A job Grid Engine puts in its error state (Eqw: here, its working directory gone
// from the node while it waited, as when a node misses the shared mount) would wait in
// the queue for ever: it is deleted, and its client told why in Grid Engine's words,
// never as the command's failure.
#[test]
fn a_job_grid_engine_will_never_start_fails_as_unavailable_with_its_reason() {
    let fixture = fixture(&[]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    cluster.qmod(&["-d", "all.q"]).unwrap();
    let mut client = env.client_std();
    let client = client.args(["--CMD", "touch ran"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(PROCESS_LIMIT, "the job waits in the disabled queue", || {
        our_jobs(cluster).iter().any(|(_, _, state)| state == "qw")
    });
    let job_dirs: Vec<String> = env.job_dirs().into_iter().filter(|name| env.jobs.join(name).is_dir()).collect();
    assert_eq!(job_dirs.len(), 1, "{job_dirs:?}");
    std::fs::remove_dir_all(env.jobs.join(&job_dirs[0])).unwrap();
    cluster.qmod(&["-e", "all.q"]).unwrap();
    let output = crate::env::child_output_within(client, PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(103), "{stderr}");
    assert!(stderr.contains("UNAVAILABLE") && stderr.contains("Grid Engine did not start the command"), "{stderr}");
    assert!(stderr.contains("(Eqw)") && stderr.contains(&job_dirs[0]), "Grid Engine's reason: {stderr}");
    wait_until(SETTLE, "the refused job gone from qstat", || our_jobs(cluster).is_empty());
}

// `qdel` by someone else (an administrator, a user's script) kills the job's processes,
// its supervisor among them, before it could write the command's status: the job is
// lost, said so by name, never passed off as a success (what `qsub -sync y` says is 0).
#[test]
fn a_job_deleted_behind_the_servers_back_is_lost_never_a_success() {
    let fixture = fixture(&[]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    let running = crate::env::Running::start(env, &["--CMD", "echo started; sleep 60; echo after"]);
    running.wait_for("]:started\n");
    let jobs = our_jobs(cluster);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    cluster.qdel(&jobs[0].0).unwrap();
    let (status, said) = running.end();
    assert!(!status.success() && !said.contains("]:after"), "{said}");
    assert!(said.contains("ABORTED") && said.contains("the job left the scheduler without its supervisor"), "{said}");
    wait_until(SETTLE, "the job gone from qstat", || our_jobs(cluster).is_empty());
}

#[test]
fn with_the_qmaster_down_the_client_gets_unavailable_and_nothing_runs() {
    let fixture = fixture(&[]);
    fixture.cluster.stop_qmaster().unwrap();
    let env = &fixture.env;
    env.client()
        .args(["--CMD", "touch ran"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("UNAVAILABLE"))
        .stderr(predicate::str::contains("Grid Engine did not start the command"))
        .stderr(predicate::str::contains("qmaster"));
    assert!(!env.work.join("ran").exists());
}

#[test]
fn the_job_timeout_and_a_server_shutdown_delete_the_grid_engine_job() {
    let mut fixture = fixture(&["--job-timeout", "4s", "--shutdown-grace", "1s"]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    env.client()
        .args(["--CMD", "sleep 60"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("DEADLINE_EXCEEDED"))
        .stderr(predicate::str::contains("it ran longer than 4.0 s"));
    wait_until(Duration::from_secs(2), "the timed-out job gone from qstat", || our_jobs(cluster).is_empty());

    let mut client = env.client_std();
    let mut client =
        client.args(["--CMD", "echo started; sleep 3.5; sleep 60"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    send_signal(&fixture.server, libc::SIGTERM);
    wait_until(Duration::from_secs(3), "the job gone from qstat after the shutdown", || our_jobs(cluster).is_empty());
    assert!(wait_exit(&mut fixture.server, PROCESS_LIMIT).success(), "{}", server_log(env));
    assert_ne!(wait_exit(&mut client, PROCESS_LIMIT).code(), Some(0));
}

#[test]
fn pip_runs_on_the_server_and_the_sandboxed_command_on_the_node() {
    let probe = TestEnv::bare();
    if crate::env::sandbox_for(&probe.jobs, &probe.tls).is_none() {
        return;
    }
    let fixture = fixture(&["--sandbox"]);
    let env = &fixture.env;
    let package = env.root.path().join("pkgsrc/greeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def greet(who):\n    return f'hello {who} from greeter'\n").unwrap();
    build_wheel(&package, "greeter", &env.work.join("dist"));
    let key = lrpymrpc_certs::layout::server_key(&env.tls).display().to_string();
    let command = format!(
        "mkdir out && python -c \"import greeter; print(greeter.greet('grid engine'))\" | tee out/greeting; \
         cat '{key}' >/dev/null 2>&1 && echo READ-THE-KEY || echo key-hidden"
    );
    let output = env
        .client()
        .args(["--REPO_URL", "greeter=./dist/greeter-0.1.0-py3-none-any.whl,", "--SOURCE", "dist", "--RESULT", "out"])
        .args(["--CMD", &command])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}\n{}", String::from_utf8_lossy(&output.stderr), server_log(env));
    assert!(stdout.contains("]:hello grid engine from greeter"), "{stdout}");
    assert!(stdout.contains("]:key-hidden"), "the sandbox applies on the node: {stdout}");
    assert_eq!(env.read("out/greeting"), b"hello grid engine from greeter\n");
}

#[test]
fn the_python_client_runs_a_whole_job_through_grid_engine_unaware_of_it() {
    let python = crate::compat::grpcio_python();
    let fixture = fixture(&[]);
    let env = &fixture.env;
    env.write("cells/nand2.sp", "* nand2\n");
    let server = format!("127.0.0.1:{}", env.addr.port());
    let mut command = std::process::Command::new(&python);
    command
        .current_dir(&env.work)
        .arg(crate::compat::repo_file("tests/python/grpcio_client.py"))
        .arg("--proto")
        .arg(crate::compat::repo_file("proto/file_service.proto"))
        .args(["--server", &server, "--tls-dir"])
        .arg(&env.tls)
        .args(["--source", "cells", "--result", "lib"])
        .args(["--cmd", "echo \"start $JOB_NAME\"; mkdir lib; cp cells/nand2.sp lib/nand2.lib; echo end"]);
    let output = crate::env::output_within(&mut command, PROCESS_LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("\nstart lrpymrpc-") && stdout.contains("\nend\n"), "{stdout}");
    assert_eq!(std::fs::read_to_string(env.work.join("lib/nand2.lib")).unwrap(), "* nand2\n");
}

// A server restarted mid-job loses no line of a Grid Engine job: its supervisor is the
// job's (a child of Grid Engine's shepherd), so the job outlives the server (killed
// outright here), and the next server on the same root and port takes it on by the
// job id it wrote down; the client prints lines 1 to 40 exactly once, the exit status,
// and gets the results.
#[test]
fn a_server_restarted_mid_job_loses_no_line_of_a_grid_engine_job() {
    use crate::outlive::{FORTY_LINES, lines_up_to, numbered_lines};
    let mut fixture = fixture(&[]);
    let running = crate::env::Running::start(&fixture.env, &["--CMD", FORTY_LINES, "--retries", "8"]);
    running.wait_for("]:line 10\n");
    let parent = crate::slurm::supervisors_parent(&fixture.env).unwrap_or_default();
    assert!(parent.starts_with("sge_shepherd"), "the supervisor is the job's, not the server's: {parent}");
    fixture.server.kill().unwrap();
    let _ = fixture.server.wait();
    assert_eq!(our_jobs(&fixture.cluster).len(), 1, "the job outlived its server");
    let listen = format!("127.0.0.1:{}", fixture.env.addr.port());
    fixture.server = start_server(&fixture.env, &fixture.cluster, &listen, &ARGS).0;
    let (status, said) = running.end();
    assert_eq!(status.code(), Some(3), "{said}");
    assert_eq!(numbered_lines(&said), lines_up_to(40), "{said}");
    assert_eq!(std::fs::read_to_string(fixture.env.work.join("build/out")).unwrap(), "done\n");
    wait_until_no_job_is_left(&fixture.cluster, &fixture.env, "the job gone from qstat");
}
