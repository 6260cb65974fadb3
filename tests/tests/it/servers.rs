//! Several servers behind one client (issue 15): the job goes to the server with the
//! most free slots, a server that cannot be reached is skipped (and remembered), the
//! prefix names the server that ran the step, and a server that refuses the CN is said,
//! not skipped.

use std::net::SocketAddr;

use lrpymrpc_mock_server::{Config, TlsMaterial};
use predicates::prelude::*;

use crate::env::{PROCESS_LIMIT, TestEnv, closed_port, wait_until};

/// Another reference server with the fixture's certificates, on the fixture's runtime,
/// its jobs under `ROOT/<name>-jobs`.
fn another_server(env: &mut TestEnv, name: &str, change: impl FnOnce(&mut Config)) -> SocketAddr {
    let jobs = env.root.path().join(format!("{name}-jobs"));
    std::fs::create_dir_all(&jobs).unwrap();
    let mut config = Config::new(jobs, Some(TlsMaterial::from_dir(&env.tls).unwrap()));
    change(&mut config);
    let runtime = env.runtime();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(lrpymrpc_mock_server::run(listener, config, std::future::pending()));
    addr
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
    let busy = another_server(&mut env, "busy", |config| config.max_jobs = 1);
    let free = another_server(&mut env, "free", |_| {});
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
    let strict = another_server(&mut env, "strict", |config| {
        config.allowed_cns = Some(["somebody-else".to_string()].into_iter().collect());
    });
    let open = another_server(&mut env, "open", |_| {});
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
