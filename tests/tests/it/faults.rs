//! Faults on the way: connections cut during upload, execute and download (through
//! the fault proxy), and the server killed mid-job. Each ends with a non-zero exit and
//! a message naming the step, earlier results untouched, no temporary files left.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use predicates::prelude::*;

use crate::env::{TestEnv, names_in, pseudo_random, spawn_server_binary};
use crate::proxy::{Fault, FaultProxy};

/// The fixture with its client pointed at a fault proxy in front of the server.
fn behind_proxy(fault: Fault) -> (TestEnv, FaultProxy) {
    let mut env = TestEnv::new();
    let server = env.addr;
    let proxy = FaultProxy::start(env.runtime(), server, fault);
    env.set_addr(proxy.addr);
    (env, proxy)
}

fn assert_no_temporary_files(env: &TestEnv) {
    let leftovers: Vec<_> = names_in(&env.work).into_iter().filter(|n| n.starts_with(".lrpymrpc")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_cut_upload_is_retried_and_then_fails_naming_the_step() {
    // Every connection dies after 1 MiB from the client; the upload is 4 MiB of noise.
    let (env, proxy) = behind_proxy(Fault { cut_up_after: Some(1 << 20), ..Fault::default() });
    env.write("source/noise", pseudo_random(4 << 20, 7));
    env.write("build/earlier", "earlier result");
    env.client()
        .args(["--CMD", "mkdir build; echo new > build/earlier"])
        .assert()
        .code(104)
        .stderr(predicate::str::contains("retrying upload"))
        .stderr(predicate::str::contains("lrpymrpc: error: upload failed: lost the connection"));
    assert!(proxy.connections() >= 4, "the first try and three retries");
    assert_eq!(env.read("build/earlier"), b"earlier result");
    assert_no_temporary_files(&env);
}

#[test]
fn a_cut_download_fails_naming_the_step_and_keeps_earlier_results() {
    // Every connection dies after 1 MiB from the server; the results are 4 MiB of noise.
    let (env, _proxy) = behind_proxy(Fault { cut_down_after: Some(1 << 20), ..Fault::default() });
    env.write("source/noise", pseudo_random(4 << 20, 9));
    env.write("build/earlier", "earlier result");
    env.client()
        .args(["--CMD", "mkdir build; cp source/noise build/noise; echo new > build/earlier"])
        .assert()
        .code(104)
        .stderr(predicate::str::contains("retrying download"))
        .stderr(predicate::str::contains("lrpymrpc: error: download failed"));
    assert_eq!(env.read("build/earlier"), b"earlier result", "nothing moved into place");
    assert!(!env.work.join("build/noise").exists());
    assert_no_temporary_files(&env);
}

#[test]
fn a_connection_cut_during_execute_is_not_retried() {
    let (env, proxy) = behind_proxy(Fault::default());
    env.write("source/x", "x");
    let mut client = env.client_std();
    let mut client = client
        .args(["--CMD", "echo started; sleep 30; mkdir build; touch build/late"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map(Result::unwrap).any(|line| line.ends_with("]:started")));
    proxy.cut_everything();
    let output = crate::env::child_output_within(client, crate::env::PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(104), "{stderr}");
    assert!(stderr.contains("execute failed: lost the connection"), "{stderr}");
    assert!(!stderr.contains("retrying execute"), "a command is never run twice: {stderr}");
    assert!(!env.work.join("build").exists());
    assert_no_temporary_files(&env);
}

#[test]
fn a_server_killed_mid_job_fails_the_client_and_the_next_server_takes_the_job_on() {
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let release = env.root.path().join("release");
    let mut client = env.client_std();
    let command = format!("echo started; until [ -e {} ]; do sleep 0.05; done; echo after", release.display());
    let mut client = client
        .args(["--CMD", &command, "--retries", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = None;
    for line in BufReader::new(client.stdout.take().unwrap()).lines().map(Result::unwrap) {
        if let Some(found) = line.split("unique id=").nth(1) {
            id = Some(found.to_string());
        }
        if line.ends_with("]:started") {
            break;
        }
    }
    let id = id.expect("the job's id");
    server.kill().unwrap();
    crate::env::wait_exit(&mut server, crate::env::PROCESS_LIMIT);
    let output = crate::env::child_output_within(client, crate::env::PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(104), "{stderr}");
    assert!(stderr.contains("execute failed: lost the connection"), "{stderr}");
    assert!(stderr.contains(&format!("lrpymrpc attach {id}")), "how to follow it: {stderr}");
    assert!(!env.job_dirs().is_empty(), "the killed server left its job behind");

    // The next server takes the job on: `attach` gets the rest and the status.
    let (mut restarted, port) = spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    std::fs::write(&release, "").unwrap();
    let attached = env.client().args(["attach", &id]).output().unwrap();
    let stdout = String::from_utf8_lossy(&attached.stdout);
    assert!(attached.status.success() && stdout.contains("]:after"), "{stdout}");
    restarted.kill().unwrap();
    crate::env::wait_exit(&mut restarted, crate::env::PROCESS_LIMIT);
}
