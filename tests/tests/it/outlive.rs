//! Runs and their supervisors (issue 30: jobs outlive the server): every local command
//! runs under a supervisor of its own session that writes its output and its end to
//! files, so a server that dies does not take the run with it; the next server finds
//! what it left. Until runs are adopted, it stops them, and gives out again what they
//! held only once they are gone.

use std::time::Duration;

use crate::env::{PROCESS_LIMIT, Running, TestEnv, processes_running, send_signal, wait_exit, wait_until};

/// A marker no other test's processes carry.
fn marker(tag: u32) -> String {
    format!("{tag}.{}", std::process::id())
}

// A server killed with SIGKILL while a step holds the one `hspice` license: the step's
// command goes on without it (its supervisor is not the server's to take along); the
// next server on the same root stops it before it serves, says so, and the next
// step gets the license at once, without waiting for a run nobody follows.
#[test]
fn a_run_a_killed_server_left_is_stopped_by_the_next_and_what_it_held_given_again() {
    let mut env = TestEnv::bare();
    env.write("source/x", "x");
    let marker = marker(951);
    let started = env.root.path().join("started");
    let (mut server, port) = crate::env::spawn_server_binary(&env, &["--license", "hspice=1"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    let command = format!("touch {}; exec sleep {marker}", started.display());
    let holder = Running::start(&env, &["--license", "hspice", "--CMD", &command]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || started.exists());
    send_signal(&server, libc::SIGKILL);
    wait_exit(&mut server, PROCESS_LIMIT);
    // The run outlived the server that started it.
    assert_eq!(processes_running(&format!("sleep\0{marker}")).len(), 1, "the command runs on");
    let (mut server, port) = crate::env::spawn_server_binary(&env, &["--license", "hspice=1"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    // Stopped before the server serves: it says so once the run is gone.
    let log = || std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    wait_until(PROCESS_LIMIT, "the server says it stopped the run", || {
        log().contains("stopped the runs an earlier server left running")
    });
    assert!(log().contains("a run an earlier server left running is stopped"), "{}", log());
    assert!(processes_running(&format!("sleep\0{marker}")).is_empty(), "the left-behind run was stopped");
    let runs = env.jobs.join(lrpymrpc_mock_server::executor::supervised::RUNS_DIR);
    assert!(crate::env::names_in(&runs).is_empty(), "{:?}", crate::env::names_in(&runs));
    let output = env.client().args(["--license", "hspice", "--CMD", "echo next-ran"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("]:next-ran"), "{stdout}{stderr}");
    assert!(!stdout.contains("waiting") && !stderr.contains("waiting"), "{stdout}{stderr}");
    // The holder's client never says its step succeeded.
    let (status, said) = holder.end();
    assert!(!status.success(), "{said}");
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, PROCESS_LIMIT);
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
    let (mut server, port) = crate::env::spawn_server_binary(&env, &[]);
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
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, PROCESS_LIMIT);
}
