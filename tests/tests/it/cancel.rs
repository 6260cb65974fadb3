//! Stopping a job: Ctrl-C, SIGTERM and `--timeout` end the client with 130, 143 and
//! 124, and the whole remote process tree is gone within 2 seconds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::env::{TestEnv, send_signal, wait_exit};

/// A remote command that leaves a background process too; `marker` tells its sleeps
/// apart from every other test's.
fn two_sleeps(marker: &str) -> String {
    format!("echo started; sleep {marker} & sleep {marker}")
}

/// The process group, as the host sees it, of the processes whose command line holds
/// `needle` (the job sees only its own PID namespace, so it cannot say it itself).
pub fn host_group_of(needle: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let rest = stat.rfind(')').map(|at| &stat[at + 1..])?;
        return rest.split_whitespace().nth(2)?.parse().ok();
    }
    None
}

/// Starts the client on [`two_sleeps`] and returns it with the remote process group,
/// once the remote command has started.
fn start_two_sleeps(env: &TestEnv, extra: &[&str]) -> (Child, i32) {
    // Unique per call: tests run in parallel in one process, and finding another
    // test's sleeps (already stopped by its signal) would make this test flaky.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let marker = format!("{}.{}", 2000 + call, std::process::id());
    let mut command = env.client_std();
    command.args(["--CMD", &two_sleeps(&marker)]).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().ends_with("]:started") {
            // Give `sleep &` a moment to exist, so the test is not trivially true.
            let mut pgid = None;
            crate::env::wait_until(Duration::from_secs(5), "the sleeps run", || {
                pgid = host_group_of(&format!("sleep\0{marker}\0"));
                pgid.is_some()
            });
            let pgid = pgid.unwrap();
            assert!(live_members(pgid).len() >= 2, "the remote command is running");
            return (child, pgid);
        }
    }
    let output = crate::env::child_output_within(child, crate::env::PROCESS_LIMIT);
    panic!("the remote command never started: {}", String::from_utf8_lossy(&output.stderr));
}

/// Processes of a process group that are still running (zombies wait only for their
/// parent to read their status and hold nothing).
fn live_members(pgid: i32) -> Vec<String> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 3 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            live.push(stat.split(')').next().unwrap_or_default().to_string());
        }
    }
    live
}

/// Waits until the group is empty; fails after `limit`.
fn assert_group_gone_within(pgid: i32, since: Instant, limit: Duration) {
    loop {
        let live = live_members(pgid);
        if live.is_empty() {
            return;
        }
        assert!(since.elapsed() < limit, "remote processes still running after {limit:?}: {live:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: Child) -> String {
    let output = crate::env::child_output_within(child, crate::env::PROCESS_LIMIT);
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn signal_stops_the_job(signal: i32, expected_code: i32, name: &str) {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let (mut child, pgid) = start_two_sleeps(&env, &[]);
    let sent = Instant::now();
    send_signal(&child, signal);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(expected_code), "exit status after {name}");
    assert_group_gone_within(pgid, sent, Duration::from_secs(2));
    let stderr = stderr_of(child);
    assert!(stderr.contains(&format!("stopped by {name} during execute")), "{stderr}");
}

#[test]
fn ctrl_c_stops_the_remote_process_tree_and_exits_130() {
    signal_stops_the_job(libc::SIGINT, 130, "Ctrl-C (SIGINT)");
}

#[test]
fn sigterm_stops_the_remote_process_tree_and_exits_143() {
    signal_stops_the_job(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn the_timeout_stops_the_remote_process_tree_and_exits_124() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let (mut child, pgid) = start_two_sleeps(&env, &["--timeout", "2s"]);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let stopped = Instant::now();
    assert_eq!(status.code(), Some(124));
    assert_group_gone_within(pgid, stopped, Duration::from_secs(2));
    let stderr = stderr_of(child);
    assert!(stderr.contains("the job took longer than --timeout 2.00 s; stopped it during execute"), "{stderr}");
}
