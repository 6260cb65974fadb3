//! Load: many concurrent jobs against one server are each either served or refused
//! with RESOURCE_EXHAUSTED, none lost or corrupted, and the server's open files and
//! memory go back to their idle level. Slow: runs when `LRPYMRPC_SLOW_TESTS` is set
//! (`.ci/run` sets it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::env::{TestEnv, spawn_server_binary};

fn slow_tests_enabled(name: &str) -> bool {
    let enabled = std::env::var_os("LRPYMRPC_SLOW_TESTS").is_some_and(|v| !v.is_empty() && v != "0");
    if !enabled {
        println!("SKIPPED {name}: set LRPYMRPC_SLOW_TESTS=1 to run it");
    }
    enabled
}

/// How one job of the load ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Served,
    Refused,
    Other(String),
}

/// A bounded load driver: `total` jobs, at most `concurrency` at a time.
fn drive(concurrency: usize, total: usize, job: impl Fn(usize) -> Outcome + Sync) -> Vec<Outcome> {
    let next = Mutex::new(0usize);
    let outcomes = Mutex::new(vec![None; total]);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.min(total) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut next = next.lock().unwrap();
                        if *next == total {
                            return;
                        }
                        *next += 1;
                        *next - 1
                    };
                    let outcome = job(index);
                    outcomes.lock().unwrap()[index] = Some(outcome);
                }
            });
        }
    });
    outcomes.into_inner().unwrap().into_iter().map(|o| o.expect("every job ran")).collect()
}

struct Usage {
    open_files: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap();
    Usage { open_files, rss_kib }
}

#[test]
fn sixty_four_concurrent_jobs_are_served_or_refused_and_nothing_leaks() {
    if !slow_tests_enabled("sixty_four_concurrent_jobs_are_served_or_refused_and_nothing_leaks") {
        return;
    }
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &["--max-jobs", "8", "--finished-grace", "100ms"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let job = |index: usize| {
        let output = env
            .client()
            .args(["--RUN_NAME", &format!("run{index}"), "--retries", "0"])
            .args(["--CMD", &format!("mkdir build; echo job {index} > build/out")])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => match std::fs::read_to_string(env.work.join(format!("run{index}/build/out"))) {
                Ok(text) if text == format!("job {index}\n") => Outcome::Served,
                other => Outcome::Other(format!("job {index}: wrong result {other:?}")),
            },
            Some(103) if stderr.contains("RESOURCE_EXHAUSTED") => Outcome::Refused,
            code => Outcome::Other(format!("job {index}: exit {code:?}: {stderr}")),
        }
    };
    // Warm up, then take the idle level.
    assert_eq!(job(1000), Outcome::Served);
    std::thread::sleep(Duration::from_millis(500));
    let idle = usage(server.id());

    let outcomes = drive(64, 64, job);
    let others: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Other(_))).collect();
    assert!(others.is_empty(), "jobs neither served nor refused: {others:?}");
    let served = outcomes.iter().filter(|o| **o == Outcome::Served).count();
    println!("served {served} of 64, refused {}", 64 - served);
    assert!(served >= 8, "at least one round of --max-jobs 8 was served");

    // Open files come back to the idle count; memory to near the idle level (the
    // allocator may keep a little).
    let start = Instant::now();
    loop {
        let now = usage(server.id());
        let settled = now.open_files <= idle.open_files && now.rss_kib <= idle.rss_kib + idle.rss_kib / 2 + 16 * 1024;
        if settled {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server usage did not return to idle: files {} -> {}, RSS {} -> {} KiB",
            idle.open_files,
            now.open_files,
            idle.rss_kib,
            now.rss_kib
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    while !env.job_dirs().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "job directories left: {:?}", env.job_dirs());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill().unwrap();
    crate::env::wait_exit(&mut server, crate::env::PROCESS_LIMIT);
}
