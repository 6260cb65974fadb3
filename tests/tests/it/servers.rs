//! Several servers behind one client (issue 15): the job goes to the server with the
//! most free slots, a server that cannot be reached is skipped (and remembered), the
//! prefix names the server that ran the step, and a server that refuses the CN is said,
//! not skipped.

use std::net::SocketAddr;

use lrpymrpc_mock_server::{Config, TlsMaterial};
use predicates::prelude::*;

use crate::env::{CLIENT, PROCESS_LIMIT, TestEnv, closed_port, wait_until};

/// Another reference server with the fixture's certificates, on the fixture's runtime,
/// its jobs under `ROOT/<name>-jobs`; it drains (as on SIGTERM) when the returned
/// sender is used or dropped.
fn another_server(
    env: &mut TestEnv,
    name: &str,
    change: impl FnOnce(&mut Config),
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    server_at(env, name, any, change)
}

/// [`another_server`] listening at `addr`.
fn server_at(
    env: &mut TestEnv,
    name: &str,
    addr: SocketAddr,
    change: impl FnOnce(&mut Config),
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let jobs = env.root.path().join(format!("{name}-jobs"));
    std::fs::create_dir_all(&jobs).unwrap();
    let mut config = Config::new(jobs, Some(TlsMaterial::from_dir(&env.tls).unwrap()));
    change(&mut config);
    let runtime = env.runtime();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(lrpymrpc_mock_server::run(listener, config, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn jobs_on(env: &TestEnv, name: &str) -> usize {
    let dir = env.root.path().join(format!("{name}-jobs"));
    // Job directories are named by their UUID; the store and the caches beside them are not.
    let is_job = |name: &str| name.len() == 36 && name.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.flatten().filter(|e| e.path().is_dir() && is_job(&e.file_name().to_string_lossy())).count()
    })
}

#[test]
fn the_job_goes_to_the_freest_server_past_one_that_is_down_which_is_remembered() {
    let mut env = TestEnv::bare();
    let (busy, _busy) = another_server(&mut env, "busy", |config| config.max_jobs = 1);
    let (free, _free) = another_server(&mut env, "free", |_| {});
    let (_refusing, down) = closed_port(false);
    // The busy server's one slot is taken by a job that runs a while.
    let list = |servers: &[SocketAddr]| servers.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(" ");
    let mut long = env.client_std();
    long.args(["--SERVER_IP", &busy.to_string(), "--SERVER_PORT", "8766", "--CMD", "sleep 4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let long = long.spawn().unwrap();
    wait_until(std::time::Duration::from_secs(30), "the long job on the busy server", || jobs_on(&env, "busy") == 1);
    let servers = list(&[down, busy, free]);
    env.client()
        .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--verbose", "--CMD", "echo placed"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("[{free}]:placed")))
        .stderr(predicate::str::contains(format!("skipping {down}")));
    assert_eq!((jobs_on(&env, "busy"), jobs_on(&env, "free")), (1, 1), "the freest server ran it");
    // The server that was down is remembered: the next step does not try it.
    env.client()
        .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--verbose", "--CMD", "true"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("skipping {down}")).not());
    let backoff = std::fs::read_to_string(env.root.path().join("state/lrpymrpc/backoff")).unwrap();
    assert!(backoff.contains(&down.to_string()), "{backoff}");
    let output = crate::env::child_output_within(long, PROCESS_LIMIT);
    assert!(output.status.success());
}

#[test]
fn a_server_that_refuses_the_cn_is_said_not_skipped() {
    let mut env = TestEnv::bare();
    let (strict, _strict) = another_server(&mut env, "strict", |config| {
        config.allowed_cns = Some(["somebody-else".to_string()].into_iter().collect());
    });
    let (open, _open) = another_server(&mut env, "open", |_| {});
    env.client()
        .args(["--SERVER_IP", &format!("{strict},{open}"), "--SERVER_PORT", "8766", "--CMD", "true"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(strict.to_string()))
        .stderr(predicate::str::contains("e2e-user"));
    assert_eq!(jobs_on(&env, "open"), 0, "nothing ran elsewhere to hide it");
}

#[test]
fn a_bad_slot_count_is_a_usage_error() {
    let env = TestEnv::bare();
    env.client()
        .args(["--SERVER_IP", "127.0.0.1:1/many 127.0.0.1:2", "--SERVER_PORT", "8766", "--CMD", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`many` is not a number of slots"));
}

/// A Makefile of `steps` targets, each running the client in its own directory
/// (`sN/`, with a source file) against `servers`, and checking its result.
fn parallel_steps(env: &TestEnv, steps: usize, servers: &str, command: &str) -> std::path::PathBuf {
    let dir = env.root.path().join("parallel");
    let mut makefile = format!("all:{}\n", (1..=steps).map(|n| format!(" s{n}/out/s{n}.txt")).collect::<String>());
    for n in 1..=steps {
        std::fs::create_dir_all(dir.join(format!("s{n}/source"))).unwrap();
        std::fs::write(dir.join(format!("s{n}/source/input")), format!("input {n}\n")).unwrap();
        makefile.push_str(&format!(
            "s{n}/out/s{n}.txt:\n\tcd s{n} && '{CLIENT}' --SERVER_IP '{servers}' --SERVER_PORT 8766 --TLS_CONFIG_DIR '{tls}' \\\n\t  --verbose --SOURCE source --RESULT out --CMD '{command}; mkdir out; cat source/input > out/s{n}.txt'\n",
            tls = env.tls.display(),
        ));
    }
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    dir
}

/// `make -jN` in `dir`, shielded from the developer's settings; success and all output.
fn make_parallel(env: &TestEnv, dir: &std::path::Path, jobs: usize, extra: &[&str]) -> (bool, String) {
    let mut make = std::process::Command::new(crate::env::tool("make", "make"));
    make.current_dir(dir).arg(format!("-j{jobs}")).args(extra).env_remove("MAKEFLAGS").env("LRPYMRPC_CONFIG", "");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LRPYMRPC_") {
            make.env_remove(name);
        }
    }
    make.env("XDG_CACHE_HOME", env.root.path().join("cache")).env("XDG_STATE_HOME", env.root.path().join("state"));
    let output = crate::env::output_within(&mut make, PROCESS_LIMIT);
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), log)
}

/// Whether the reference server behind `client` says it is draining (asked on one
/// connection made before the drain: a draining server keeps serving it).
fn says_draining(
    env: &mut TestEnv,
    client: &lrpymrpc_proto::v1::extensions_client::ExtensionsClient<tonic::transport::Channel>,
) -> bool {
    let mut client = client.clone();
    env.runtime().block_on(async move {
        let request = lrpymrpc_proto::v1::CapabilitiesRequest { client_protocol: lrpymrpc_proto::v1::PROTOCOL };
        client.capabilities(request).await.is_ok_and(|r| r.into_inner().load.is_some_and(|load| load.draining))
    })
}

/// Starts a job of `seconds` on the server `name` at `addr` (its `jobs` directories
/// counting `before` already), then drains that server through `stop` and waits
/// until it says so; returns the job's client, to check it finished.
fn drain_with_a_job(
    env: &mut TestEnv,
    (name, addr, before): (&str, SocketAddr, usize),
    seconds: u32,
    stop: tokio::sync::oneshot::Sender<()>,
) -> std::process::Child {
    let mut long = env.client_std();
    long.args(["--SERVER_IP", &addr.to_string(), "--SERVER_PORT", "8766", "--CMD", &format!("sleep {seconds}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let long = long.spawn().unwrap();
    wait_until(std::time::Duration::from_secs(30), "the job on the server to drain", || {
        jobs_on(env, name) == before + 1
    });
    let tls = env.tls.clone();
    let watcher = env.runtime().block_on(crate::cas::raw_extensions(addr, &tls));
    stop.send(()).unwrap();
    wait_until(std::time::Duration::from_secs(10), "the server to drain", || says_draining(env, &watcher));
    long
}

// The issue's own scenario: five servers, one stopped, one draining, one with a single
// slot and two healthy; `make -j6` of six remote steps all succeed, spread over the
// servers that take jobs, the stopped one remembered after its first failure.
#[test]
fn make_j6_spreads_over_the_servers_that_take_jobs() {
    let mut env = TestEnv::bare();
    let (_refusing, stopped) = closed_port(false);
    let (draining, stop_draining) = another_server(&mut env, "draining", |_| {});
    let (single, _single) = another_server(&mut env, "single", |config| config.max_jobs = 1);
    let (first, _first) = another_server(&mut env, "first", |config| config.max_jobs = 2);
    let (second, _second) = another_server(&mut env, "second", |config| config.max_jobs = 2);
    // The draining server finishes the job it runs and takes no other.
    let long = drain_with_a_job(&mut env, ("draining", draining, 0), 10, stop_draining);

    let servers = [stopped, draining, single, first, second].map(|a| a.to_string()).join(" ");
    let dir = parallel_steps(&env, 6, &servers, "sleep 2");
    let (ok, log) = make_parallel(&env, &dir, 6, &[]);
    assert!(ok, "{log}");
    for n in 1..=6 {
        let result = std::fs::read_to_string(dir.join(format!("s{n}/out/s{n}.txt"))).unwrap();
        assert_eq!(result, format!("input {n}\n"));
    }
    let placed = [jobs_on(&env, "single"), jobs_on(&env, "first"), jobs_on(&env, "second")];
    assert_eq!(placed.iter().sum::<usize>(), 6, "{placed:?}: {log}");
    assert!(placed[1] >= 2 && placed[2] >= 2 && placed[0] >= 1, "spread over all three: {placed:?}: {log}");
    assert_eq!(jobs_on(&env, "draining"), 1, "the draining server got no new job: {log}");
    // The prefix names the server that ran each step.
    assert!(log.contains(&format!("[{first}]:")) && log.contains(&format!("[{second}]:")), "{log}");
    // The stopped server is remembered: the next build does not even try it.
    let (ok, log) = make_parallel(&env, &dir, 6, &["-B"]);
    assert!(ok, "{log}");
    assert!(!log.contains(&format!("skipping {stopped}")), "{log}");
    let output = crate::env::child_output_within(long, PROCESS_LIMIT);
    assert!(output.status.success(), "the draining server finished its job");
}

// Once Execute started, the job belongs to its server: killed there, the step fails
// (never run again elsewhere) and says which server it lost; the other step finishes.
#[test]
fn a_server_killed_mid_execute_fails_its_step_only() {
    use std::io::{BufRead, BufReader};
    let mut env = TestEnv::bare();
    let (mut doomed, port) = crate::env::spawn_server_binary(&env, &["--max-jobs", "1"]);
    let doomed_addr = format!("127.0.0.1:{port}");
    let (healthy, _healthy) = another_server(&mut env, "healthy", |config| config.max_jobs = 1);
    let servers = format!("{doomed_addr},{healthy}");
    let step = |env: &TestEnv| {
        let mut step = env.client_std();
        step.args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--CMD", "echo started; sleep 4; echo finished"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = step.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        while !first.ends_with("]:started\n") {
            first.clear();
            assert!(stdout.read_line(&mut first).unwrap() > 0, "the step ended before its command started");
        }
        (child, stdout, first)
    };
    let (a, a_out, a_first) = step(&env);
    let (b, b_out, b_first) = step(&env);
    let ((lost, lost_out), (kept, kept_out)) = match a_first.contains(&doomed_addr) {
        true => ((a, a_out), (b, b_out)),
        false => ((b, b_out), (a, a_out)),
    };
    assert!(
        a_first.contains(&doomed_addr) != b_first.contains(&doomed_addr),
        "one step on each server: {a_first} {b_first}"
    );
    doomed.kill().unwrap();
    let _ = doomed.wait();
    let read_rest = |mut stdout: BufReader<std::process::ChildStdout>| {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        rest
    };
    let (lost_rest, kept_rest) = (read_rest(lost_out), read_rest(kept_out));
    let lost = crate::env::child_output_within(lost, PROCESS_LIMIT);
    let kept = crate::env::child_output_within(kept, PROCESS_LIMIT);
    let lost_stderr = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(104), "{lost_stderr}");
    assert!(
        lost_stderr
            .contains(&format!("execute failed: lost the connection to {doomed_addr}: the connection closed mid-call")),
        "{lost_stderr}"
    );
    assert!(!lost_rest.contains("finished") && !lost_stderr.contains("next server"), "{lost_rest} {lost_stderr}");
    assert!(kept.status.success() && kept_rest.contains("]:finished"), "{kept_rest}");
    assert_eq!(jobs_on(&env, "healthy"), 1, "the lost step did not run again on the healthy server");
}

// Every server full: the step waits for a slot (`--queue-timeout`) instead of failing.
#[test]
fn when_every_server_is_full_the_step_waits_for_a_slot() {
    let mut env = TestEnv::bare();
    let (one, _one) = another_server(&mut env, "one", |config| config.max_jobs = 1);
    let (two, _two) = another_server(&mut env, "two", |config| config.max_jobs = 1);
    let servers = format!("{one} {two}");
    let dir = parallel_steps(&env, 4, &servers, "sleep 1");
    let (ok, log) = make_parallel(&env, &dir, 4, &[]);
    assert!(ok, "{log}");
    assert!(log.contains("every slot is taken; waiting for one"), "{log}");
    assert_eq!(jobs_on(&env, "one") + jobs_on(&env, "two"), 4, "{log}");
    // With no wait wanted, a full list is refused at once, naming the servers.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = env.client_std();
        holder
            .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--CMD", "sleep 3"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        holders.push(holder.spawn().unwrap());
        let expected = holders.len() + 4;
        wait_until(std::time::Duration::from_secs(30), "a holding job", || {
            jobs_on(&env, "one") + jobs_on(&env, "two") == expected
        });
    }
    env.client()
        .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--queue-timeout", "0", "--CMD", "true"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("RESOURCE_EXHAUSTED"));
    for holder in holders {
        assert!(crate::env::child_output_within(holder, PROCESS_LIMIT).status.success());
    }
}

// A server in back-off is skipped only while another can take the job: when the rest
// of the list is shutting down, it gets another try (it may be back), and takes it.
#[test]
fn a_server_in_back_off_gets_another_try_when_the_others_cannot_take_the_job() {
    let mut env = TestEnv::bare();
    let (socket, late) = closed_port(false);
    let (other, stop_other) = another_server(&mut env, "other", |_| {});
    let servers = format!("{late} {other}");
    // The late server fails once: remembered for a minute.
    env.client().args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--CMD", "true"]).assert().success();
    assert_eq!(jobs_on(&env, "other"), 1);
    // Now it is up, and the other one drains (a job of its own keeps it serving).
    drop(socket);
    let (_, _late_server) = server_at(&mut env, "late", late, |_| {});
    let long = drain_with_a_job(&mut env, ("other", other, 1), 4, stop_other);
    env.client()
        .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--CMD", "echo on the late one"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("[{late}]:on the late one")));
    assert_eq!(jobs_on(&env, "late"), 1);
    assert!(crate::env::child_output_within(long, PROCESS_LIMIT).status.success());
}

// Our server full, a legacy one full too: the step offers its tar.gz to the legacy one,
// which stops the tree the client began building while it connected; when our server
// frees up, the tree is built anew and the job made from it there.
#[test]
fn a_tree_stopped_for_a_legacy_server_is_built_anew_for_ours() {
    let mut env = TestEnv::bare();
    let (ours, _ours) = another_server(&mut env, "ours", |config| config.max_jobs = 1);
    let (legacy, _legacy) = another_server(&mut env, "legacy", |config| {
        config.max_jobs = 1;
        config.legacy_protocol = true;
    });
    // Each server is held full until the test opens its gate (events, not the clock):
    // ours once the client is waiting for it, the legacy one once the client is done.
    let gate = |name: &str| env.root.path().join(format!("gate-{name}"));
    let mut holders = Vec::new();
    for (server, name) in [(ours, "ours"), (legacy, "legacy")] {
        let mut holder = env.client_std();
        let wait = format!("echo holding; while [ ! -e {} ]; do sleep 0.05; done", gate(name).display());
        holder
            .args(["--SERVER_IP", &server.to_string(), "--SERVER_PORT", "8766"])
            .args(["--CMD", &wait])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut holder = holder.spawn().unwrap();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
        for line in lines {
            if line.unwrap().ends_with("]:holding") {
                break;
            }
        }
        holders.push(holder);
    }
    env.write("source/input", "sent as a tree\n");
    // Big enough that hashing it is still going on when the legacy server is offered
    // the job (the stat cache is cold).
    env.write("source/big.bin", crate::env::pseudo_random(48 << 20, 3));
    let servers = format!("{ours} {legacy}");
    let mut client = env
        .client_std()
        .args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--verbose", "--CMD", "cat source/input"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    let stderr = client.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = said.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    loop {
        let line = heard.recv_timeout(PROCESS_LIMIT).expect("the client says it waits for a slot");
        if line.contains("every slot is taken; waiting for one") {
            break;
        }
    }
    std::fs::write(gate("ours"), "").unwrap();
    let output = crate::env::child_output_within(client, PROCESS_LIMIT);
    let stderr = reader.join().unwrap();
    std::fs::write(gate("legacy"), "").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("]:sent as a tree"), "{stdout}");
    assert!(stderr.contains("RESOURCE_EXHAUSTED"), "the legacy server was offered the job first: {stderr}");
    assert_eq!(jobs_on(&env, "ours"), 2, "{stderr}");
    for holder in holders {
        assert!(crate::env::child_output_within(holder, PROCESS_LIMIT).status.success());
    }
}
