//! Cores, memory and licenses end to end (issue 29, and the cores a step sees, issue
//! 34): a step asks with `--cpus`, `--mem`, `--license`; the server runs it only when
//! all of it is free, first come first served, says why a step waits, holds a step to
//! its cores and memory, and refuses before the upload what it could never give.

use std::collections::BTreeMap;

use lrpymrpc_mock_server::resources::Capacity;

use crate::env::{PROCESS_LIMIT, Running, TestEnv, wait_until};

fn capacity(cpus: u32, licenses: &[(&str, u32)]) -> Capacity {
    Capacity {
        cpus,
        memory_bytes: 4 << 30,
        licenses: licenses.iter().map(|(name, count)| (name.to_string(), *count)).collect::<BTreeMap<_, _>>(),
        default_cpus: 1,
        per_cn: Default::default(),
    }
}

/// A command that says it started (a file in the test's root), then waits for `release`.
fn held_until_released(env: &TestEnv, name: &str) -> String {
    let root = env.root.path().display();
    format!("touch {root}/{name}-started; until [ -e {root}/release ]; do sleep 0.02; done; echo {name}-ran")
}

// Two 2-core steps on a 3-core server: the second waits, says for what, and runs once
// the first has ended; a third asking for one core waits its turn behind it though a
// core is free (first come, first served).
#[test]
fn two_two_core_steps_on_a_three_core_server_run_one_after_the_other_and_say_why() {
    let env = TestEnv::configured(|config| config.capacity = capacity(3, &[]));
    env.write("source/x", "x");
    let first = Running::start(&env, &["--cpus", "2", "--CMD", &held_until_released(&env, "first")]);
    wait_until(PROCESS_LIMIT, "the first step runs", || env.root.path().join("first-started").exists());
    let second = Running::start(&env, &["--cpus", "2", "--CMD", "echo second-ran"]);
    second.wait_for("waiting for 2 cores (1 free)");
    let third = Running::start(&env, &["--cpus", "1", "--CMD", "echo third-ran"]);
    third.wait_for("waiting: 1 ahead of you");
    assert!(!second.said().contains("]:second-ran") && !third.said().contains("]:third-ran"));
    std::fs::write(env.root.path().join("release"), "").unwrap();
    for (running, ran) in [(first, "first-ran"), (second, "second-ran"), (third, "third-ran")] {
        let (status, said) = running.end();
        assert!(status.success() && said.contains(&format!("]:{ran}")), "{said}");
    }
}

// One `hspice` license: a step holding it makes the next one wait while cores are free.
#[test]
fn a_held_license_makes_the_next_step_wait_while_cores_are_free() {
    let metrics = crate::monitoring::free_address();
    let env = TestEnv::configured(|config| {
        config.capacity = capacity(3, &[("hspice", 1)]);
        config.metrics_listen = Some(metrics);
    });
    env.write("source/x", "x");
    let holder = Running::start(&env, &["--license", "hspice", "--CMD", &held_until_released(&env, "holder")]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || env.root.path().join("holder-started").exists());
    let next = Running::start(&env, &["--license", "hspice:1", "--CMD", "echo next-ran"]);
    next.wait_for("waiting: license hspice 1/1 in use");
    // The metrics say what is held and that one step waits.
    let scraped = crate::monitoring::scrape(metrics);
    for series in [
        "lrpymrpc_licenses_in_use{license=\"hspice\"} 1",
        "lrpymrpc_cores_in_use 1",
        "lrpymrpc_steps_waiting_for_resources 1",
    ] {
        assert!(scraped.lines().any(|line| line == series), "{series}: {scraped}");
    }
    // `lrpymrpc jobs` shows what each asked for, which one waits, and why.
    let listed = env.client().arg("jobs").output().unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.lines().next().is_some_and(|header| header.contains("  NEEDS  ")), "{table}");
    assert!(table.lines().any(|line| line.contains("  waiting  ") && line.contains("1 cpu hspice")), "{table}");
    assert!(table.lines().any(|line| line.contains("running") && line.contains("1 cpu hspice")), "{table}");
    assert!(table.contains("\n    waiting: license hspice 1/1 in use"), "{table}");
    let free_cores = Running::start(&env, &["--CMD", "echo no-license-ran"]);
    let (status, said) = free_cores.end();
    assert!(status.success() && said.contains("]:no-license-ran"), "a step without the license runs: {said}");
    assert!(!next.said().contains("]:next-ran"));
    std::fs::write(env.root.path().join("release"), "").unwrap();
    for (running, ran) in [(holder, "holder-ran"), (next, "next-ran")] {
        let (status, said) = running.end();
        assert!(status.success() && said.contains(&format!("]:{ran}")), "{said}");
    }
}

// What the server could never give is refused before anything is uploaded, naming the
// option and what the server has.
#[test]
fn a_request_the_server_could_never_give_is_refused_before_the_upload() {
    let env = TestEnv::configured(|config| config.capacity = capacity(3, &[("spectre", 2)]));
    env.write("source/x", "x");
    for (args, said) in [
        (&["--cpus", "8"][..], "--cpus 8: the server has 3 cores for commands"),
        (&["--license", "spectre:3"][..], "--license spectre:3: the server has 2 of it"),
        (&["--license", "hspice"][..], "--license hspice: the server has no such pool (spectre=2)"),
        (&["--mem", "64G"][..], "--mem 64.00 GiB: the server has 4.00 GiB for commands"),
    ] {
        let output = env.client().args(args).args(["--CMD", "echo ran"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(said) && stderr.contains("nothing was uploaded"), "{stderr}");
        assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
    }
    // A bad request is a usage error.
    let output = env.client().args(["--license", "two words", "--CMD", "true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
}

// The cores a step is granted are the cores it sees: `nproc` and OMP_NUM_THREADS say
// one for a step that asked for nothing; the administrator's job environment reaches
// the command, and the command's own setting wins.
#[test]
fn a_step_sees_the_cores_it_was_granted_and_the_administrators_job_environment() {
    let env = TestEnv::configured(|config| {
        config.job_env = vec![("OMP_WAIT_POLICY".into(), "passive".into()), ("LAB".into(), "ihp".into())];
    });
    env.write("source/x", "x");
    let command = "echo cpus=$(nproc) omp=$OMP_NUM_THREADS granted=$LRPYMRPC_CPUS wait=$OMP_WAIT_POLICY lab=$LAB; \
                   export LAB=mine; python3 -c 'import os; print(\"own=\" + os.environ[\"LAB\"])'";
    let output = env.client().args(["--CMD", command]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("]:cpus=1 omp=1 granted=1 wait=passive lab=ihp"), "{stdout}");
    assert!(stdout.contains("]:own=mine"), "{stdout}");
    if lrpymrpc_mock_server::resources::machine::cpu_ids().len() >= 2 {
        let output = env.client().args(["--cpus", "2", "--CMD", command]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("]:cpus=2 omp=2 granted=2"), "{stdout}");
    }
}

// A step over its `--mem` is stopped. With a memory cgroup (cgroup v1 the server may
// write, as on this project's machines; v2 is tested in `cgroup_v2.rs`) the kernel kills it and the user is told it was
// the memory limit; where there is none, the server said at start that it falls back
// to an address-space rlimit, under which the allocation itself fails.
#[test]
fn a_step_over_its_memory_is_stopped_and_told_so() {
    use lrpymrpc_mock_server::executor::confine::{MemoryControl, memory_control};
    let env = TestEnv::new();
    env.write("source/x", "x");
    let hungry = "echo allocating; python3 -c 'x = bytearray(400 * 1024 * 1024); print(\"survived\", len(x))'";
    let output = env.client().args(["--mem", "64M", "--CMD", hungry]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("]:allocating"), "the command ran: {stdout}{stderr}");
    assert!(!output.status.success() && !stdout.contains("]:survived"), "{stdout}{stderr}");
    match memory_control() {
        MemoryControl::CgroupV1(parent) | MemoryControl::CgroupV2(parent) => {
            assert!(stderr.contains("it used more than the 64.0 MiB of memory it was granted"), "{stderr}");
            // The run's own group is gone with it.
            let ours = format!("run-{}-", std::process::id());
            let left: Vec<_> = crate::env::names_in(parent).into_iter().filter(|n| n.starts_with(&ours)).collect();
            assert!(left.is_empty(), "{left:?}");
        }
        MemoryControl::AddressSpace => {
            eprintln!("no memory cgroup the server may make here: the address-space rlimit was tested");
            assert!(stderr.contains("MemoryError"), "{stdout}{stderr}");
        }
    }
    // Within its memory, the same step runs.
    let output = env.client().args(["--mem", "1G", "--CMD", hungry]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("]:survived 419430400"));
}

// A step cannot take more cores than it was granted by widening its own affinity: its
// `taskset` over every core of the machine succeeds, yet it and what it starts stay on
// its one core, held there by the cpuset the server gave it (cgroup v1 here; v2 where
// that is what the machine offers). Where the server has no cpuset, it said so at
// start, and the test shows what that means: the step does widen.
#[test]
fn a_step_cannot_widen_its_cores_past_its_cpuset() {
    use lrpymrpc_mock_server::executor::confine::{CpusetControl, cpuset_control};
    let all = lrpymrpc_mock_server::resources::machine::cpu_ids();
    if all.len() < 2 {
        crate::env::needed("two cores", "run the suite on a machine with two or more, as CI does");
    }
    let env = TestEnv::new();
    env.write("source/x", "x");
    let every = all.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let widen = format!("taskset -pc {every} $$ >/dev/null && echo widened; grep Cpus_allowed_list /proc/self/status");
    let output = env.client().args(["--cpus", "1", "--CMD", &widen]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("]:widened"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let allowed = stdout.lines().find_map(|line| line.split_once("Cpus_allowed_list:")).map(|(_, cpus)| cpus.trim());
    match cpuset_control() {
        CpusetControl::CgroupV1(_) | CpusetControl::CgroupV2 => {
            let one = allowed.and_then(|cpus| cpus.parse::<usize>().ok());
            assert!(one.is_some_and(|cpu| all.contains(&cpu)), "still on one core: {stdout}");
        }
        CpusetControl::AffinityOnly => {
            eprintln!("no cpuset the server may make here: the affinity fallback was tested");
            assert_ne!(allowed, all.first().map(usize::to_string).as_deref(), "{stdout}");
        }
    }
}

// The cgroups of runs that ended after their server (killed, or gone before they
// ended) do not pile up: a server removes at start the empty groups whose maker is no
// longer running, and leaves those of a live process alone.
#[test]
fn a_starting_server_removes_the_empty_groups_of_servers_that_are_gone() {
    use lrpymrpc_mock_server::executor::confine::{CpusetControl, cpuset_control, memory_control};
    let mut dirs: Vec<std::path::PathBuf> =
        memory_control().runs_dir().map(std::path::Path::to_path_buf).into_iter().collect();
    if let CpusetControl::CgroupV1(dir) = cpuset_control() {
        dirs.push(dir.clone());
    }
    if dirs.is_empty() {
        crate::env::needed("a cgroup the server may make groups in", "run the suite as root, as CI does");
    }
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let mut made = Vec::new();
    for dir in &dirs {
        let stale = dir.join(format!("run-{gone_pid}-7"));
        let live = dir.join(format!("run-{}-999999", std::process::id()));
        std::fs::create_dir(&stale).unwrap();
        std::fs::create_dir(&live).unwrap();
        made.push((stale, live));
    }
    let env = TestEnv::bare();
    let (mut server, _) = crate::env::spawn_server_binary(&env, &[]);
    let log = env.root.path().join("server.log");
    wait_until(PROCESS_LIMIT, "the server says what it holds runs to", || {
        std::fs::read_to_string(&log).is_ok_and(|log| log.contains("resources for commands"))
    });
    crate::env::send_signal(&server, libc::SIGTERM);
    crate::env::wait_exit(&mut server, PROCESS_LIMIT);
    for (stale, live) in made {
        let (stale_left, live_left) = (stale.exists(), live.exists());
        let _ = std::fs::remove_dir(&live);
        let _ = std::fs::remove_dir(&stale);
        assert!(!stale_left, "{} is left", stale.display());
        assert!(live_left, "{} of a live process was removed", live.display());
    }
}

// First come, first served across certificates: with one core, steps of two CNs that
// arrive alternately run in the order they arrived, not grouped by whoever asks more.
#[test]
fn steps_of_two_cns_arriving_alternately_run_in_the_order_they_arrived() {
    let env = TestEnv::configured(|config| config.capacity = capacity(1, &[]));
    env.write("source/x", "x");
    let bob = crate::env::client_dir_for(&env, "bob");
    let order = env.root.path().join("order");
    let holder = Running::start(&env, &["--CMD", &held_until_released(&env, "holder")]);
    wait_until(PROCESS_LIMIT, "the first step runs", || env.root.path().join("holder-started").exists());
    let mut waiting = Vec::new();
    for (n, tls) in [None, Some(bob.as_path()), None, Some(bob.as_path())].into_iter().enumerate() {
        let name = format!("{}{n}", if tls.is_some() { "bob" } else { "alice" });
        let command = format!("echo {name} >> {}", order.display());
        let running = Running::start_as(&env, tls, &["--CMD", &command]);
        // Each has taken its place in the queue before the next arrives.
        running.wait_for("waiting");
        waiting.push(running);
    }
    std::fs::write(env.root.path().join("release"), "").unwrap();
    for running in std::iter::once(holder).chain(waiting) {
        let (status, said) = running.end();
        assert!(status.success(), "{said}");
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "alice0\nbob1\nalice2\nbob3\n");
}

// `make -j$(lrpymrpc slots)`: how many steps like this one the server can start now.
#[test]
fn slots_says_how_many_steps_the_server_can_start_now() {
    let env = TestEnv::configured(|config| config.capacity = capacity(3, &[("hspice", 1)]));
    env.write("source/x", "x");
    let slots = |args: &[&str]| {
        let output = env.client().args(args).arg("slots").output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(slots(&[]), "3");
    assert_eq!(slots(&["--cpus", "2"]), "1");
    assert_eq!(slots(&["--license", "hspice"]), "1");
    let holder = Running::start(&env, &["--cpus", "2", "--CMD", &held_until_released(&env, "holder")]);
    wait_until(PROCESS_LIMIT, "the holder runs", || env.root.path().join("holder-started").exists());
    assert_eq!(slots(&[]), "1");
    // None free now: still one, for make's sake, and --verbose says why.
    let output = env.client().args(["--cpus", "2", "--verbose", "slots"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    assert!(String::from_utf8_lossy(&output.stderr).contains("0 (limited by 1 free cores, 2 a step)"));
    std::fs::write(env.root.path().join("release"), "").unwrap();
    assert!(holder.end().0.success());
}

// One user cannot take every license for ever: with `--license-per-cn spectre=1`, a
// certificate's second spectre step waits and says why, while another user's runs.
#[test]
fn a_certificate_at_its_license_cap_waits_and_holds_nobody_else_up() {
    let env = TestEnv::configured(|config| {
        config.capacity = capacity(3, &[("spectre", 2)]).with_per_cn(None, &["spectre=1".into()]).unwrap();
    });
    env.write("source/x", "x");
    let mallory = crate::env::client_dir_for(&env, "mallory");
    let held =
        Running::start_as(&env, Some(&mallory), &["--license", "spectre", "--CMD", &held_until_released(&env, "held")]);
    wait_until(PROCESS_LIMIT, "mallory's first step runs", || env.root.path().join("held-started").exists());
    let second = Running::start_as(&env, Some(&mallory), &["--license", "spectre", "--CMD", "echo second-ran"]);
    second.wait_for("waiting: your certificate holds 1 of the 1 spectre licenses one may hold");
    let (status, said) = Running::start(&env, &["--license", "spectre", "--CMD", "echo alice-ran"]).end();
    assert!(status.success() && said.contains("]:alice-ran"), "{said}");
    assert!(!second.said().contains("]:second-ran"));
    std::fs::write(env.root.path().join("release"), "").unwrap();
    for (running, ran) in [(held, "held-ran"), (second, "second-ran")] {
        let (status, said) = running.end();
        assert!(status.success() && said.contains(&format!("]:{ran}")), "{said}");
    }
}

// A waiting step cancelled (`lrpymrpc cancel ID`) leaves the queue at once: nothing it
// asked for stays set aside, and the step behind it runs when the cores are free.
#[test]
fn a_cancelled_waiting_step_leaves_the_queue() {
    let env = TestEnv::configured(|config| config.capacity = capacity(1, &[]));
    env.write("source/x", "x");
    let holder = Running::start(&env, &["--CMD", &held_until_released(&env, "holder")]);
    wait_until(PROCESS_LIMIT, "the holder runs", || env.root.path().join("holder-started").exists());
    let waiting = Running::start(&env, &["--CMD", "echo never-ran"]);
    waiting.wait_for("waiting for 1 core (0 free)");
    let said = waiting.said();
    let id = said.split("unique id=").nth(1).and_then(|rest| rest.lines().next()).unwrap().trim().to_string();
    env.client().args(["cancel", &id]).assert().success();
    let (status, said) = waiting.end();
    assert!(!status.success() && !said.contains("]:never-ran"), "{said}");
    let listed = env.client().arg("jobs").output().unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.lines().any(|line| line.starts_with(&id) && line.contains("cancelled")), "{table}");
    std::fs::write(env.root.path().join("release"), "").unwrap();
    assert!(holder.end().0.success());
    let (status, said) = Running::start(&env, &["--CMD", "echo next-ran"]).end();
    assert!(status.success() && said.contains("]:next-ran") && !said.contains("ahead of you"), "{said}");
}
