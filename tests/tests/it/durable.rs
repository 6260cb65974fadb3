//! Durable jobs (issue 17): a connection cut during Execute loses no line and prints
//! none twice, with the exit status and results intact; a client that stays away past
//! the grace finds its job cancelled and says so; `--detach` then `attach` from another
//! directory gets the same output and results; `jobs` and `cancel` see only the
//! caller's own jobs; the Python client keeps today's behaviour (disconnect = cancel).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use predicates::prelude::*;

use crate::env::{PROCESS_LIMIT, TestEnv, client_dir_for, processes_running, wait_until};
use crate::proxy::{Fault, FaultProxy};
use crate::security::client_as;

/// The server with `change`, its client pointed at a fault proxy in front of it.
fn behind_proxy(change: impl FnOnce(&mut lrpymrpc_mock_server::Config)) -> (TestEnv, FaultProxy) {
    let mut env = TestEnv::configured(change);
    let server = env.addr;
    let proxy = FaultProxy::start(env.runtime(), server, Fault::default());
    env.set_addr(proxy.addr);
    env.write("source/x", "x");
    (env, proxy)
}

/// Starts `command` with `--detach`; the job id it printed.
fn detach(env: &TestEnv, command: &str) -> String {
    let detached = env.client().args(["--detach", "--CMD", command]).output().unwrap();
    assert!(detached.status.success(), "{}", String::from_utf8_lossy(&detached.stderr));
    job_id(&String::from_utf8_lossy(&detached.stdout))
}

/// The id in `detached job=ID`.
fn job_id(stdout: &str) -> String {
    stdout.lines().find_map(|line| line.split("detached job=").nth(1)).expect("the job id").to_string()
}

/// The `line N` lines of `stdout`, as numbers, in the order printed.
fn numbered(stdout: &str) -> Vec<u32> {
    stdout.lines().filter_map(|line| line.rsplit_once("]:line ")?.1.parse().ok()).collect()
}

#[test]
fn three_cuts_during_execute_lose_no_line_and_print_none_twice() {
    let (env, proxy) = behind_proxy(|_| {});
    let command = "for i in $(seq 1 60); do echo line $i; sleep 0.05; done; mkdir build; echo made > build/out; exit 3";
    let mut client = env.client_std();
    let mut client = client.args(["--CMD", command]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = String::new();
    let mut cuts = 0;
    for line in BufReader::new(client.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // Cut after lines 10, 25 and 40 were printed: each time the job goes on meanwhile.
        if ["]:line 10", "]:line 25", "]:line 40"].iter().any(|at| line.ends_with(at)) {
            proxy.cut_connections();
            cuts += 1;
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let output = crate::env::child_output_within(client, PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(cuts, 3);
    assert_eq!(numbered(&stdout), (1..=60).collect::<Vec<_>>(), "{stdout}{stderr}");
    assert_eq!(output.status.code(), Some(3), "the exit status intact: {stderr}");
    assert_eq!(stderr.matches("reconnecting to follow it").count(), 3, "{stderr}");
    assert_eq!(env.read("build/out"), b"made\n", "the results arrive");
}

// A long silent command on a link that keeps dropping: each reconnection that held for
// a while counts as working, however few retries are allowed.
#[test]
fn a_silent_command_is_followed_through_repeated_cuts() {
    let (env, proxy) = behind_proxy(|_| {});
    let args = ["--retries", "1", "--stall-timeout", "1s", "--CMD", "echo started; sleep 5; echo end"];
    let (client, mut stdout) = crate::env::started_client(&env, &args);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1300));
        proxy.cut_connections();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let output = crate::env::child_output_within(client, PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{rest}{stderr}");
    assert!(rest.contains("]:end"), "{rest}");
    assert_eq!(stderr.matches("reconnecting to follow it").count(), 3, "{stderr}");
}

#[test]
fn a_cut_longer_than_the_grace_cancels_the_job_and_the_client_says_so() {
    let (env, proxy) = behind_proxy(|config| config.reattach_grace = Duration::from_secs(1));
    let args = ["--retries", "6", "--stall-timeout", "1s", "--CMD", "echo started; sleep 31.37; echo never"];
    let (client, _stdout) = crate::env::started_client(&env, &args);
    // Away for longer than the grace: the server cancels the job; then back.
    proxy.go_quiet();
    // The client's own command line holds the number too: only the server's processes count.
    let remote = || processes_running("31.37").into_iter().filter(|p| !p.contains("lrpymrpc-e2e-client")).count();
    assert!(remote() >= 1, "the command runs on the server");
    wait_until(Duration::from_secs(10), "the command stopped on the server", || remote() == 0);
    proxy.release();
    let output = crate::env::child_output_within(client, PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("was cancelled: nobody came back for it within the server's --reattach-grace"), "{stderr}");
    let id = env.job_dirs().into_iter().next().unwrap_or_default();
    assert!(id.is_empty() || stderr.contains(&id), "the message names the job: {stderr}");
}

#[test]
fn detach_then_attach_from_elsewhere_gets_the_output_and_the_results() {
    let env = TestEnv::new();
    env.write("source/input", "from the source\n");
    let command = "echo first; sleep 1; echo second >&2; mkdir -p out; cat source/input > out/copy; exit 4";
    let detached =
        env.client().args(["--detach", "--RUN_NAME", "run7", "--RESULT", "out", "--CMD", command]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&detached.stdout), String::from_utf8_lossy(&detached.stderr));
    assert!(detached.status.success(), "{stdout}{stderr}");
    let id = job_id(&stdout);
    assert!(stderr.contains(&format!("attach {id}")), "how to follow it: {stderr}");
    // Each command the hint names carries the server options it needs.
    let port = env.addr.port();
    for command in ["jobs".to_string(), format!("cancel {id}")] {
        let named = format!("--SERVER_PORT {port} --TLS_CONFIG_DIR {} {command}", env.tls.display());
        assert!(stderr.contains(&named), "`{named}` in the hint: {stderr}");
    }
    assert!(!stdout.contains("]:first"), "--detach does not follow: {stdout}");
    assert!(!env.work.join("run7").exists());

    // `jobs` lists it; another certificate sees nothing of it.
    env.client().arg("jobs").assert().success().stdout(predicate::str::contains(&id));
    let mallory = client_dir_for(&env, "mallory");
    let elsewhere = env.root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    client_as(&env, &mallory, &elsewhere).arg("jobs").assert().success().stdout(predicate::str::contains(&id).not());
    client_as(&env, &mallory, &elsewhere)
        .args(["attach", &id])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("lookup failed"))
        .stderr(predicate::str::contains("NOT_FOUND"))
        .stderr(predicate::str::contains("connect failed").not());
    // Connection options go before the subcommand or after it, as people type them.
    let (port, tls) = (env.addr.port().to_string(), env.tls.display().to_string());
    env.bare_client()
        .args(["jobs", "--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &port, "--TLS_CONFIG_DIR", &tls])
        .assert()
        .success()
        .stdout(predicate::str::contains(&id));
    client_as(&env, &mallory, &elsewhere).args(["cancel", &id]).assert().code(103);

    // Attached from another directory: the whole output, the status, the results there.
    let other = env.root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let attached = env.client().current_dir(&other).args(["attach", &id]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&attached.stdout), String::from_utf8_lossy(&attached.stderr));
    assert_eq!(attached.status.code(), Some(4), "{stdout}{stderr}");
    assert!(stdout.contains("]:first") && stderr.contains("]:second"), "{stdout}{stderr}");
    assert_eq!(std::fs::read(other.join("run7/out/copy")).unwrap(), b"from the source\n");
}

#[test]
fn cancel_stops_a_detached_jobs_process_tree() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let id = detach(&env, "sleep 47.21 & sleep 47.22; wait");
    wait_until(Duration::from_secs(20), "the command running", || !processes_running("47.22").is_empty());
    env.client()
        .args(["cancel", &id])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("job {id} cancelled")));
    wait_until(Duration::from_secs(5), "the process tree gone", || {
        processes_running("47.21").is_empty() && processes_running("47.22").is_empty()
    });
    env.client().arg("jobs").assert().success().stdout(predicate::str::contains("cancelled"));
    env.client().args(["cancel", &id]).assert().success().stderr(predicate::str::contains("had already ended"));
}

#[test]
fn ctrl_c_cancels_a_durable_job_at_once() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let mut client = env.client_std();
    let mut client = client.args(["--CMD", "echo started; sleep 58.31"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    crate::env::send_signal(&client, libc::SIGINT);
    wait_until(Duration::from_secs(2), "no remote process left", || processes_running("58.31").is_empty());
    assert_eq!(crate::env::wait_exit(&mut client, PROCESS_LIMIT).code(), Some(130));
}

#[test]
fn a_client_without_the_extension_still_cancels_by_hanging_up() {
    use lrpymrpc_archive::testing::{file, gzip, tar_bytes};
    use lrpymrpc_proto::{DataChunk, ExecuteRequest};
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let archive = DataChunk { data: gzip(&tar_bytes(&[file("x", "x")])) };
        let id = client.upload(tokio_stream::iter([archive])).await.unwrap().into_inner().unique_id;
        // As the Python client asks: no durability.
        let request =
            ExecuteRequest { unique_id: id, command_opt: "echo started; sleep 71.93".into(), ..Default::default() };
        let mut lines = client.execute(request).await.unwrap().into_inner();
        let mut started = false;
        while let Some(line) = lines.message().await.unwrap() {
            if line.message == "started" {
                started = true;
                break;
            }
        }
        assert!(started, "the command printed its first line");
        // The process this test then expects gone is there first.
        wait_until(Duration::from_secs(10), "the command running", || !processes_running("71.93").is_empty());
        drop(lines);
    });
    wait_until(Duration::from_secs(2), "the command stopped when the call went", || {
        processes_running("71.93").is_empty()
    });
}

// A job the restarted server could not take on (its spool gone from disk) is said to
// be gone, never silently lost: `attach` fails naming it.
#[test]
fn a_job_gone_with_a_server_restart_is_said_not_silently_lost() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let id = detach(&env, "sleep 30");
    let spool = env.jobs.join(lrpymrpc_mock_server::SPOOLS_DIR).join(format!("{id}.spool"));
    assert!(spool.is_file(), "the job's spool is on disk");
    let env = env.restarted(move |_| std::fs::remove_file(&spool).unwrap());
    env.client()
        .args(["attach", &id])
        .assert()
        .code(103)
        .stderr(predicate::str::contains(format!("no job {id} of yours there")));
}
