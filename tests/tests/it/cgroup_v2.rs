//! Memory limits under cgroup v2 (#29), on a real kernel with the v2 memory
//! controller. This project's machines give that controller to cgroup v1, and taking
//! it away would change the machine under every other test; so this test boots
//! Debian's User-mode Linux kernel (`linux.uml`, a kernel that runs as a process)
//! over the machine's own files and runs the real server and client inside it, over
//! mutual TLS on the guest's loopback. The guest's PID 1 is a shell script the test
//! writes; what it saw comes back as files in the test's directory.

use std::path::Path;
use std::process::Stdio;

use crate::env::{CLIENT, PROCESS_LIMIT, TestEnv, tool, wait_exit};

/// A word quoted for `sh`.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The guest's PID 1: mounts what a system has, starts the server in a cgroup of its
/// own (as systemd starts a unit with `Delegate=yes`), runs the test's steps, powers off.
fn init_script(env: &TestEnv, out: &Path) -> String {
    let server = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    let home = env.root.path();
    let client = [
        "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LRPYMRPC_CONFIG=".to_string(),
        format!("HOME={}", quoted(&home.join("home").to_string_lossy())),
        format!("XDG_CACHE_HOME={}", quoted(&home.join("cache").to_string_lossy())),
        format!("XDG_STATE_HOME={}", quoted(&home.join("state").to_string_lossy())),
        quoted(CLIENT),
        "--SERVER_IP 127.0.0.1 --SERVER_PORT 7000 --TLS_CONFIG_DIR".into(),
        quoted(&env.tls.to_string_lossy()),
    ]
    .join(" ");
    let hungry = "echo allocating; dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null && echo survived";
    let o = |name: &str| quoted(&out.join(name).to_string_lossy());
    let held = format!("echo up > {}; until [ -e {} ]; do sleep 0.05; done; {hungry}", o("started"), o("release"));
    let daemon = o("daemon.pid");
    let leaves = format!(
        "setsid sh -c 'echo $$ > {daemon}; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
         until [ -s {daemon} ]; do sleep 0.05; done; echo left"
    );
    format!(
        r#"#!/bin/sh
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs jobs {jobs}
ip link set lo up
cd {work}
# FILE [TEXT]: waits until FILE has something (or TEXT), 120 s at most.
wait_for() {{
    n=0
    while [ $n -lt 1200 ]; do
        if [ -z "${{2-}}" ]; then [ -s "$1" ] && return 0; else grep -q -- "$2" "$1" 2>/dev/null && return 0; fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "timed out waiting for $1 ${{2-}}" >> {failures}
    return 1
}}
# GROUP NAME: the server, started in cgroup GROUP; its pid in $server.
start_server() {{
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$1" {server} --listen 127.0.0.1:7000 --root {jobs} \
        --tls-dir {tls} --keep-jobs-on-exit > {out}/$2.out 2> {out}/$2.log &
    server=$!
    wait_for {out}/$2.out
    wait_for {out}/$2.log "resources for commands"
    cat /proc/$server/cgroup > {out}/$2.cgroup
}}
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/service
start_server /sys/fs/cgroup/service first
{client} --mem 32M --CMD {hungry_q} > {out}/over.out 2> {out}/over.err
echo $? > {out}/over.status
{client} --mem 256M --CMD {hungry_q} > {out}/within.out 2> {out}/within.err
echo $? > {out}/within.status
# A restart mid-step: the next server starts where systemd's DelegateSubgroup= puts it.
{client} --mem 32M --retries 8 --CMD {held_q} > {out}/restart.out 2>&1 &
client=$!
wait_for {out}/started
find /sys/fs/cgroup/service/lrpymrpc-runs -mindepth 1 -type d > {out}/groups.during
kill -TERM $server
wait $server
start_server /sys/fs/cgroup/service/lrpymrpc-server second
wait_for {out}/restart.out "reconnected: following job"
touch {out}/release
wait $client
echo $? > {out}/restart.status
kill -TERM $server
wait $server
# Without PID namespaces (a container may refuse them), a process a step left outside
# its process group is still in the step's group: killed as the step ends.
echo 0 > /proc/sys/user/max_pid_namespaces
start_server /sys/fs/cgroup/service/lrpymrpc-server third
{client} --mem 256M --CMD {leaves_q} > {out}/leaves.out 2> {out}/leaves.err
echo $? > {out}/leaves.status
grep '^State:' /proc/"$(cat {out}/daemon.pid)"/status > {out}/daemon.after 2>/dev/null
find /sys/fs/cgroup/service/lrpymrpc-runs -mindepth 1 -type d > {out}/groups.after
kill -TERM $server
wait $server
echo done > {out}/done
poweroff -f
"#,
        jobs = quoted(&env.jobs.to_string_lossy()),
        work = quoted(&env.work.to_string_lossy()),
        tls = quoted(&env.tls.to_string_lossy()),
        server = quoted(server),
        out = quoted(&out.to_string_lossy()),
        failures = o("failures"),
        hungry_q = quoted(hungry),
        held_q = quoted(&held),
        leaves_q = quoted(&leaves),
    )
}

/// A file the guest wrote, or "" when it wrote none.
fn said(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_default()
}

/// The exit status the guest wrote down for a client.
fn status(out: &Path, name: &str) -> i32 {
    let text = said(out, name);
    text.trim().parse().unwrap_or_else(|_| panic!("no exit status in `{name}`: {text:?}"))
}

// A step over its `--mem` under cgroup v2 is killed by the kernel and its user told it
// was the memory limit; within its memory the same step runs; a server restarted mid-
// step takes the run's group on and still says so; a daemon a step leaves behind dies
// with the step even where no PID namespace catches it. The server, started in a group
// of its own, moves itself into a leaf of it, gives each run a group beside that leaf,
// and leaves no group behind.
#[test]
fn a_step_over_its_memory_is_killed_under_cgroup_v2_and_told_so() {
    let kernel = tool("linux.uml", "user-mode-linux");
    // The guest brings its loopback up with it.
    tool("ip", "iproute2");
    let env = TestEnv::bare();
    env.write("source/x", "x");
    let out = env.root.path().join("guest");
    std::fs::create_dir(&out).unwrap();
    let init = env.root.path().join("init");
    std::fs::write(&init, init_script(&env, &out)).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let console = std::fs::File::create(env.root.path().join("console")).unwrap();
    let mut guest = std::process::Command::new(kernel)
        .args(["mem=1G", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", "con=null", "con0=null,fd:2"])
        .arg(format!("init={}", init.display()))
        // The guest's memory is a file it makes (and unlinks) here.
        .env("TMPDIR", env.root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(console)
        .spawn()
        .unwrap();
    wait_exit(&mut guest, PROCESS_LIMIT);
    let report = || {
        ["failures", "first.log", "second.log", "third.log", "over.err", "within.err", "restart.out", "leaves.err"]
            .map(|name| format!("--- {name}:\n{}", said(&out, name)))
            .join("\n")
            + "\n--- console:\n"
            + &said(env.root.path(), "console")
    };
    assert_eq!(said(&out, "done"), "done\n", "the guest ran the steps to the end\n{}", report());
    assert_eq!(said(&out, "failures"), "", "{}", report());
    // The server found cgroup v2 and moved itself out of the group it was given.
    assert!(said(&out, "first.log").contains("v2, under `/sys/fs/cgroup/service/lrpymrpc-runs`"), "{}", report());
    assert_eq!(said(&out, "first.cgroup"), "0::/service/lrpymrpc-server\n");
    // Over its memory: killed, and said so.
    let (over, over_err) = (said(&out, "over.out"), said(&out, "over.err"));
    assert!(over.contains("]:allocating") && !over.contains("]:survived"), "{over}{over_err}");
    assert_ne!(status(&out, "over.status"), 0);
    assert!(over_err.contains("it used more than the 32.0 MiB of memory it was granted"), "{}", report());
    // Within it: runs.
    assert!(said(&out, "within.out").contains("]:survived"), "{}", report());
    assert_eq!(status(&out, "within.status"), 0, "{}", report());
    // Across a restart: the run had its group; the next server, started in the leaf,
    // took it on, read the kernel's verdict and removed it.
    assert!(said(&out, "groups.during").contains("run-"), "{}", said(&out, "groups.during"));
    assert!(said(&out, "second.log").contains("v2, under `/sys/fs/cgroup/service/lrpymrpc-runs`"), "{}", report());
    assert_eq!(said(&out, "second.cgroup"), "0::/service/lrpymrpc-server\n");
    let restart = said(&out, "restart.out");
    assert!(restart.contains("reconnected: following job") && restart.contains("]:allocating"), "{}", report());
    assert!(restart.contains("it used more than the 32.0 MiB of memory it was granted"), "{}", report());
    assert!(!restart.contains("]:survived"));
    assert_ne!(status(&out, "restart.status"), 0);
    // A daemon the step left (it ran: its pid was written) is gone with the step.
    assert!(said(&out, "leaves.out").contains("]:left"), "{}", report());
    assert_eq!(status(&out, "leaves.status"), 0, "{}", report());
    assert!(said(&out, "third.log").contains("v2, under"), "{}", report());
    assert!(said(&out, "daemon.pid").trim().parse::<u32>().is_ok());
    let daemon = said(&out, "daemon.after");
    assert!(daemon.is_empty() || daemon.contains("zombie"), "the step's daemon lives on: {daemon}");
    assert_eq!(said(&out, "groups.after"), "", "no run's group is left");
}
