//! The server's Slurm executor (issue 16) against a real one-node Slurm cluster from
//! Debian's packages (`lrpymrpc_mock_server::executor::slurm_cluster`), the real server binary
//! with `--executor slurm` and the real client over mutual TLS: results and output as
//! with the local executor, exit statuses and signals, stderr apart, Ctrl-C leaving
//! nothing in `squeue`, jobs queueing in Slurm (and the client saying so), Slurm down
//! answered `UNAVAILABLE`, a job root the node cannot see refused at start, and
//! resource requests (cores, memory, licenses) passed to srun or refused at once.
//! One cluster at a time (of either scheduler): the tests take a lock, each starts its own.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lrpymrpc_mock_server::executor::slurm_cluster::{OneNodeCluster, unavailable};

use crate::env::build_wheel;
use predicates::prelude::*;

use crate::env::{PROCESS_LIMIT, TestEnv, send_signal, spawn_server_binary_with, wait_exit, wait_until};

/// One cluster at a time on this machine: the queueing test counts on the node's CPUs.
pub(crate) static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// A test's cluster and a server that runs its commands there.
struct Fixture {
    env: TestEnv,
    cluster: OneNodeCluster,
    server: std::process::Child,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A one-node cluster and a server that runs jobs on it (the test fails where Slurm
/// cannot run).
fn fixture(extra: &[&str]) -> Fixture {
    require_slurm();
    let lock = ONE_CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut env = TestEnv::bare();
    let cluster = OneNodeCluster::start(&env.root.path().join("slurm"), 2, &[]).unwrap();
    let mut args = vec!["--executor", "slurm", "--slurm-poll-interval", "200ms"];
    args.extend_from_slice(extra);
    let (server, port) = spawn_server_binary_with(&env, &args, None, &[("SLURM_CONF", cluster.conf().as_os_str())]);
    env.set_addr(format!("127.0.0.1:{port}").parse().unwrap());
    env.write("source/input.txt", "some input\n");
    Fixture { env, cluster, server, _lock: lock }
}

/// Slurm can run here, or the test fails (the suite runs as root where Slurm is
/// installed, as `.ci/run` does).
fn require_slurm() {
    match unavailable() {
        None => {}
        Some(why) => crate::env::needed(
            &format!("a one-node Slurm cluster ({why})"),
            "run the suite as root with slurmctld, slurmd and slurm-client installed",
        ),
    }
}

/// Our jobs in the cluster's queue now.
fn our_jobs(cluster: &OneNodeCluster) -> Vec<String> {
    cluster.queue().unwrap_or_default().into_iter().filter(|line| line.starts_with("lrpymrpc-")).collect()
}

fn server_log(env: &TestEnv) -> String {
    std::fs::read_to_string(env.root.path().join("server.log")).unwrap_or_default()
}

#[test]
fn a_job_runs_as_a_slurm_step_with_its_results_output_and_stderr_apart() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    let command = "echo \"on $SLURM_JOB_NAME\"; echo to-stderr >&2; mkdir -p build; \
                   cp source/input.txt build/copy.txt; head -c 100000 /dev/urandom > build/random.bin";
    let output = env.client().args(["--SOURCE", "source", "--RESULT", "build", "--CMD", command]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}\n{}", server_log(env));
    // The job name carries the job id; srun's own reports are not the command's output.
    assert!(stdout.contains("]:on lrpymrpc-"), "{stdout}");
    assert!(stderr.contains("]:to-stderr") && !stdout.contains("]:to-stderr"), "stderr apart: {stdout} / {stderr}");
    assert!(!stdout.contains("srun") && !stderr.contains("srun:"), "{stdout}{stderr}");
    assert_eq!(env.read("build/copy.txt"), b"some input\n");
    assert_eq!(env.read("build/random.bin").len(), 100_000);
    // The answer comes as the command's status is read; Slurm lists the job as it
    // completes a moment longer.
    wait_until(Duration::from_secs(2), "nothing left in squeue", || our_jobs(&fixture.cluster).is_empty());
}

#[test]
fn exit_statuses_and_signals_come_back_as_with_the_local_executor() {
    // As a batch job (the default) and as an srun step, whose reports are read for it.
    for submit in ["sbatch", "srun"] {
        let fixture = fixture(&["--slurm-submit", submit]);
        let env = &fixture.env;
        env.client().args(["--CMD", "exit 3"]).assert().code(3);
        env.client()
            .args(["--CMD", "kill -KILL $$"])
            .assert()
            .code(137)
            .stderr(predicate::str::contains("killed by signal 9"));
        // A command that exits 143 itself is not a signal.
        env.client().args(["--CMD", "exit 143"]).assert().code(143).stderr(predicate::str::contains("signal").not());
        // Every word as it was, none expanded again on the node.
        let output = env.client().args(["--CMD", "printf '%s|' \"$0\" 'it'\\''s' '$HOME' 'a  b'"]).output().unwrap();
        assert!(String::from_utf8_lossy(&output.stdout).contains("]:sh|it's|$HOME|a  b|"), "{output:?}");
    }
}

#[test]
fn ctrl_c_leaves_nothing_in_squeue_within_two_seconds() {
    let fixture = fixture(&[]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    let mut client = env.client_std();
    let mut client = client.args(["--CMD", "echo started; sleep 60"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().ends_with("]:started") {
            break;
        }
    }
    assert_eq!(our_jobs(cluster).len(), 1, "the step runs in Slurm");
    send_signal(&client, libc::SIGINT);
    let interrupted = Instant::now();
    wait_until(Duration::from_secs(2), "the Slurm job gone from squeue", || our_jobs(cluster).is_empty());
    eprintln!("gone from squeue {:?} after Ctrl-C", interrupted.elapsed());
    assert_eq!(wait_exit(&mut client, PROCESS_LIMIT).code(), Some(130));
}

#[test]
fn four_jobs_on_a_two_cpu_node_all_finish_two_after_queueing_in_slurm() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let mut client = env.client_std();
            client
                .args(["--RUN_NAME", &format!("run{n}"), "--CMD", "sleep 1; mkdir -p build; echo done > build/done"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            client.spawn().unwrap()
        })
        .collect();
    let outputs: Vec<_> = clients.into_iter().map(|c| crate::env::child_output_within(c, PROCESS_LIMIT)).collect();
    let mut queued = 0;
    for (n, output) in outputs.iter().enumerate() {
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{stdout}{stderr}");
        assert_eq!(env.read(&format!("run{n}/build/done")), b"done\n");
        if stdout.contains("queued by Slurm (") {
            assert!(stdout.contains("Slurm started the command on"), "{stdout}");
            queued += 1;
        }
    }
    assert!(queued >= 2, "two of the four waited in Slurm's queue and their clients said so ({queued})");
}

#[test]
fn with_slurm_down_the_client_gets_unavailable_and_nothing_runs() {
    let mut fixture = fixture(&[]);
    fixture.cluster.stop_controller();
    let env = &fixture.env;
    env.client()
        .args(["--CMD", "touch ran"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("UNAVAILABLE"))
        .stderr(predicate::str::contains("Slurm did not start the command"))
        .stderr(predicate::str::contains("slurm controller"));
    assert!(!env.work.join("ran").exists());
}

#[test]
fn a_job_root_or_a_server_binary_the_nodes_cannot_see_is_refused_at_start() {
    require_slurm();
    crate::env::tool("unshare", "util-linux");
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server"));
    let env = TestEnv::bare();
    let jobs = env.jobs.display().to_string();
    let binaries = binary.parent().unwrap().display().to_string();
    // The node runs in a mount namespace of its own where a directory is an empty tmpfs:
    // the job root (a node that does not mount the server's filesystem), then the server
    // binary's directory (a node without the binary the batch jobs run).
    for (hidden, said, hint) in [
        (
            &jobs,
            format!("the job root `{jobs}` is not the same on the node"),
            "hint: put --root on a filesystem every node mounts",
        ),
        (
            &binaries,
            format!("the server binary `{}` does not run on the node", binary.display()),
            "hint: install lrpymrpc-server at the same path",
        ),
    ] {
        let _lock = ONE_CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hide = format!("mount -t tmpfs lrpymrpc-hidden '{hidden}' && exec \"$@\"");
        let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &hide, "sh"];
        let cluster =
            OneNodeCluster::start(&env.root.path().join(format!("slurm-{}", said.len())), 2, &prefix).unwrap();
        let output = std::process::Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--executor", "slurm", "--root"])
            .arg(&env.jobs)
            .arg("--tls-dir")
            .arg(&env.tls)
            .env("SLURM_CONF", cluster.conf())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "it never listened");
        assert!(stderr.contains(&said) && stderr.contains(hint), "{stderr}");
    }
}

#[test]
fn slurm_options_without_the_slurm_executor_are_refused() {
    let env = TestEnv::bare();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server"))
        .args(["--listen", "127.0.0.1:0", "--slurm-partition", "big", "--root"])
        .arg(&env.jobs)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--slurm-partition is for `--executor slurm`"));
}

#[test]
fn the_job_timeout_and_a_server_shutdown_remove_the_slurm_job() {
    // The limit counts from the submit: a batch job starts about a second late.
    let mut fixture = fixture(&["--job-timeout", "4s", "--shutdown-grace", "1s"]);
    let (env, cluster) = (&fixture.env, &fixture.cluster);
    env.client()
        .args(["--CMD", "sleep 60"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("DEADLINE_EXCEEDED"))
        .stderr(predicate::str::contains("it ran longer than 4.0 s"));
    wait_until(Duration::from_secs(2), "the timed-out job gone from squeue", || our_jobs(cluster).is_empty());

    let mut client = env.client_std();
    let mut client =
        client.args(["--CMD", "echo started; sleep 3.5; sleep 60"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    send_signal(&fixture.server, libc::SIGTERM);
    // The grace (1 s) for the job to finish, then it is stopped: gone within 2 s more.
    wait_until(Duration::from_secs(3), "the job gone from squeue after the shutdown", || our_jobs(cluster).is_empty());
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
        "mkdir out && python -c \"import greeter; print(greeter.greet('slurm'))\" | tee out/greeting; \
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
    assert!(stdout.contains("]:hello slurm from greeter"), "{stdout}");
    assert!(stdout.contains("]:key-hidden"), "the sandbox applies on the node: {stdout}");
    assert_eq!(env.read("out/greeting"), b"hello slurm from greeter\n");
    // The probe was job 1; the command (in bwrap, without Slurm's variables) job 2.
    let controller = std::fs::read_to_string(fixture.cluster.dir().join("slurmctld.log")).unwrap();
    assert!(controller.contains("_job_complete: JobId=2 WEXITSTATUS 0"), "{controller}");
}

// A Slurm step of a job the next server cannot take on (its spool gone from disk) is
// cancelled at restart, not left running for nobody.
#[test]
fn a_job_an_earlier_killed_server_left_in_slurm_is_cancelled_at_restart() {
    let mut fixture = fixture(&[]);
    let mut client = fixture.env.client_std();
    let mut client = client.args(["--CMD", "echo started; sleep 600"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    // Killed outright: no shutdown, no scancel; its silent step would run for ten minutes.
    fixture.server.kill().unwrap();
    let _ = fixture.server.wait();
    assert_eq!(wait_exit(&mut client, PROCESS_LIMIT).code(), Some(104));
    assert_eq!(our_jobs(&fixture.cluster).len(), 1, "the step outlived its server");
    let spools = fixture.env.jobs.join(lrpymrpc_mock_server::SPOOLS_DIR);
    for spool in crate::env::names_in(&spools).into_iter().filter(|name| name.ends_with(".spool")) {
        std::fs::remove_file(spools.join(spool)).unwrap();
    }
    let conf = fixture.cluster.conf().as_os_str().to_owned();
    let (restarted, _) =
        spawn_server_binary_with(&fixture.env, &["--executor", "slurm"], None, &[("SLURM_CONF", &conf)]);
    fixture.server = restarted;
    wait_until(Duration::from_secs(5), "the left-behind job cancelled", || our_jobs(&fixture.cluster).is_empty());
    assert!(server_log(&fixture.env).contains("cancelled Slurm jobs an earlier run of the server left behind"));
}

#[test]
fn the_python_client_runs_a_whole_job_through_slurm_unaware_of_it() {
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
        .args(["--cmd", "echo \"start $SLURM_JOB_NAME\"; mkdir lib; cp cells/nand2.sp lib/nand2.lib; echo end"]);
    let output = crate::env::output_within(&mut command, PROCESS_LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("\nstart lrpymrpc-") && stdout.contains("\nend\n"), "{stdout}");
    assert_eq!(std::fs::read_to_string(env.work.join("lib/nand2.lib")).unwrap(), "* nand2\n");
}

// Requests through Slurm: the cores, memory and licenses a step asks for become srun's
// options, so a step holding the cluster's one `hspice` license makes the next one
// wait in Slurm's queue (Reason=Licenses), said to its user, while a step without it
// runs; what the cluster could never give is refused before the upload.
#[test]
fn resource_requests_reach_slurm_and_what_the_cluster_never_has_is_refused() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    for (args, said) in [
        (&["--cpus", "3"][..], "--cpus 3: the server has 2 cores for commands"),
        (&["--license", "hspice:2"][..], "--license hspice:2: the server has 1 of it"),
    ] {
        let output = env.client().args(args).args(["--CMD", "echo ran"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(said), "{stderr}");
        assert!(our_jobs(&fixture.cluster).is_empty());
    }
    let release = env.root.path().join("release");
    let held = format!(
        "echo cpus=$(nproc) omp=$OMP_NUM_THREADS; touch {0}.started; until [ -e {0} ]; do sleep 0.1; done",
        release.display()
    );
    let mut holder = env.client_std();
    let holder = holder
        .args(["--license", "hspice", "--cpus", "2", "--mem", "64M", "--CMD", &held])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = release.with_extension("started");
    wait_until(PROCESS_LIMIT, "the license holder runs", || started.exists());
    let next = crate::env::Running::start(env, &["--license", "hspice", "--CMD", "echo next-ran"]);
    // Released once its client has said why it waits (Slurm's reason, not its `None`).
    next.wait_for("queued by Slurm (Licenses)");
    std::fs::write(&release, "").unwrap();
    let holder = crate::env::child_output_within(holder, PROCESS_LIMIT);
    let holder_out = String::from_utf8_lossy(&holder.stdout);
    let (next_status, next_out) = next.end();
    assert!(holder.status.success() && holder_out.contains("]:cpus=2 omp=2"), "{holder_out}");
    assert!(next_status.success() && next_out.contains("]:next-ran"), "{next_out}");
    assert!(!next_out.contains("(None)"), "{next_out}");
}

// A step over its `--mem` on the cluster is killed by Slurm (the tests' cluster enforces
// memory with its accounting poller, `OverMemoryKill`, as a lab's does with cgroups)
// and its user is told it was the memory limit, as with the local executor; within
// its memory, the same step runs.
#[test]
fn a_step_over_its_memory_on_slurm_is_killed_and_told_so() {
    let fixture = fixture(&[]);
    let env = &fixture.env;
    // Every page written, so the memory is really used; long enough for the poller.
    let hungry = "echo allocating; python3 -c 'import time; x = bytearray(300 << 20); x[::4096] = b\"x\" * len(x[::4096]); \
                  time.sleep(4); print(\"survived\", len(x))'";
    let output = env.client().args(["--mem", "64M", "--CMD", hungry]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("]:allocating"), "the command ran: {stdout}{stderr}");
    assert!(!output.status.success() && !stdout.contains("]:survived"), "{stdout}{stderr}");
    assert!(stderr.contains("it used more than the 64.0 MiB of memory it was granted"), "{stdout}{stderr}");
    // Slurm's own report is the server's to log, not the command's output.
    assert!(!stdout.contains("exceeded memory limit") && !stderr.contains("Exceeded job memory"), "{stdout}{stderr}");
    assert!(server_log(env).contains("exceeded memory limit"), "{}", server_log(env));
    let output = env.client().args(["--mem", "1G", "--CMD", hungry]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("]:survived 314572800"), "{stdout}");
}

// A server restarted mid-job loses no line of a Slurm job: the command runs under its
// supervisor in a batch job on the node (`--slurm-submit sbatch`, the default: the
// supervisor is slurmstepd's, nothing of the server's machine), or in an srun step
// under a supervisor on the server's machine (`--slurm-submit srun`); either outlives
// the server (killed outright here), and the next server on the same root and port
// takes it on; the client prints lines 1 to 40 exactly once, the exit status, and gets
// the results.
#[test]
fn a_server_restarted_mid_job_loses_no_line_of_a_slurm_batch_job() {
    restarted_mid_job_loses_no_line("sbatch");
}

#[test]
fn a_server_restarted_mid_step_loses_no_line_of_a_slurm_srun_step() {
    restarted_mid_job_loses_no_line("srun");
}

fn restarted_mid_job_loses_no_line(submit: &str) {
    use crate::outlive::{FORTY_LINES, lines_up_to, numbered_lines};
    let mut fixture = fixture(&["--slurm-submit", submit]);
    let running = crate::env::Running::start(&fixture.env, &["--CMD", FORTY_LINES, "--retries", "8"]);
    running.wait_for("]:line 10\n");
    let supervisors_parent = supervisors_parent(&fixture.env);
    match submit {
        "sbatch" => assert_eq!(supervisors_parent.as_deref(), Some("slurmstepd"), "a batch job's supervisor"),
        _ => assert_ne!(supervisors_parent.as_deref(), Some("slurmstepd"), "srun's supervisor is the server's"),
    }
    fixture.server.kill().unwrap();
    let _ = fixture.server.wait();
    assert_eq!(our_jobs(&fixture.cluster).len(), 1, "the job outlived its server");
    let conf = fixture.cluster.conf().as_os_str().to_owned();
    let listen = format!("127.0.0.1:{}", fixture.env.addr.port());
    let args = ["--executor", "slurm", "--slurm-poll-interval", "200ms", "--slurm-submit", submit];
    let (restarted, _) =
        crate::env::spawn_server_binary_listening(&fixture.env, &listen, &args, None, &[("SLURM_CONF", &conf)]);
    fixture.server = restarted;
    let (status, said) = running.end();
    assert_eq!(status.code(), Some(3), "{said}");
    assert_eq!(numbered_lines(&said), lines_up_to(40), "{said}");
    assert_eq!(std::fs::read_to_string(fixture.env.work.join("build/out")).unwrap(), "done\n");
    assert!(!said.contains("srun:"), "srun's reports stay the server's: {said}");
    wait_until(Duration::from_secs(5), "the job gone from squeue", || our_jobs(&fixture.cluster).is_empty());
}

/// The name of the process whose child the one running supervisor is (from the `pid`
/// file it wrote in its run directory).
pub(crate) fn supervisors_parent(env: &TestEnv) -> Option<String> {
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    let run = crate::env::names_in(&runs).into_iter().next()?;
    let stat = std::fs::read_to_string(runs.join(run).join("pid")).ok()?;
    let field = |stat: &str, n: usize| stat.rsplit_once(')')?.1.split_whitespace().nth(n).map(str::to_string);
    let parent = field(&stat, 1)?;
    Some(std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?.trim().to_string())
}

// On the one-node cluster as on the local executor, `lrpymrpc status` and the status
// page say what waits and why: a step Slurm holds for the `hspice` license another
// step has shows as waiting with Slurm's reason, the holder as running; once the
// license is given back, both end and nothing waits.
#[test]
fn status_and_the_status_page_say_what_slurm_holds_and_why() {
    let page = crate::monitoring::free_address();
    let fixture = fixture(&["--status-listen", &page.to_string()]);
    let env = &fixture.env;
    let release = env.root.path().join("release");
    let held = format!("touch {0}.started; until [ -e {0} ]; do sleep 0.1; done", release.display());
    let holder = crate::env::Running::start(env, &["--license", "hspice", "--CMD", &held]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || release.with_extension("started").exists());
    let next = crate::env::Running::start(env, &["--license", "hspice", "--CMD", "echo next-ran"]);
    next.wait_for("queued by Slurm (Licenses)");

    let output = env.client().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("executor slurm"), "{text}");
    let waiting = text.lines().find(|line| line.contains("WAITING #1")).unwrap_or_default();
    assert!(waiting.contains("queued by Slurm (Licenses)") && waiting.contains("hspice:1"), "{text}");
    assert!(text.lines().any(|line| line.contains("RUNNING") && line.contains("hspice:1")), "{text}");
    let (status, _, body) = crate::status_page::get(env, page, "/");
    assert!(status.contains("200") && body.contains("Waiting (1)"), "{body}");
    assert!(body.contains("queued by Slurm (Licenses)") && body.contains("Running (1)"), "{body}");

    std::fs::write(&release, "").unwrap();
    let (status, said) = holder.end();
    assert!(status.success(), "{said}");
    let (status, said) = next.end();
    assert!(status.success() && said.contains("]:next-ran"), "{said}");
    let (_, _, body) = crate::status_page::get(env, page, "/");
    assert!(body.contains("Nothing waits.") && body.contains("Nothing runs."), "{body}");
}
