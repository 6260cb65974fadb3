//! The action cache end to end (issue 14): a step run again with the same inputs,
//! command, RESULT paths, environment and salt is served from the record, with the
//! same output, exit status and results, byte for byte; anything changed runs; a
//! failed run is never served; `--refresh` runs again; another CN gets nothing of it
//! unless the administrator shares the cache.

use predicates::prelude::*;

use crate::env::{PROCESS_LIMIT, TestEnv, client_dir_for, wait_until};

/// A step that counts its runs in `runs` (outside the job, where the test sees it),
/// prints to both streams and makes a result that differs on every run.
fn step(env: &TestEnv) -> String {
    let runs = env.root.path().join("runs");
    format!(
        "echo ran >> {}; cat source/input.txt; echo to-stderr >&2; mkdir -p build/sub; \
         date +%s%N > build/stamp; cp source/input.txt build/sub/copy; echo \"made $(cat build/stamp)\"",
        runs.display()
    )
}

fn runs(env: &TestEnv) -> usize {
    std::fs::read_to_string(env.root.path().join("runs")).unwrap_or_default().lines().count()
}

fn cached() -> TestEnv {
    let env = TestEnv::configured(|config| config.action_cache = true);
    env.write("source/input.txt", "v1\n");
    env
}

fn run(env: &TestEnv, command: &str, extra: &[&str]) -> std::process::Output {
    env.client().args(["--cache", "--RESULT", "build", "--CMD", command]).args(extra).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines the command printed, without the client's status lines.
fn command_lines(output: &std::process::Output) -> Vec<String> {
    text(&output.stdout)
        .lines()
        .map(|line| line.split_once("]:").map_or(line, |(_, rest)| rest).to_string())
        .filter(|line| !line.contains('=') && !line.starts_with("[lrpymrpc-server]"))
        .filter(|line| !line.starts_with("Check: ") && !["Upload", "Finish: done."].contains(&line.as_str()))
        .collect()
}

#[test]
fn a_hit_serves_the_same_output_exit_status_and_results_without_running() {
    let env = cached();
    let command = step(&env);
    let first = run(&env, &command, &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(!text(&first.stderr).contains("served from cache"));
    let stamp = env.read("build/stamp");
    assert_eq!(runs(&env), 1);
    std::fs::remove_dir_all(env.work.join("build")).unwrap();
    let second = run(&env, &command, &[]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(runs(&env), 1, "nothing ran");
    let said = text(&second.stderr);
    assert!(said.contains("lrpymrpc: note: served from cache: ran ") && said.contains(" on 20"), "{said}");
    assert!(said.contains("to-stderr"), "stderr lines replayed on stderr: {said}");
    assert_eq!(command_lines(&second), command_lines(&first));
    assert!(command_lines(&first).iter().any(|line| line.starts_with("made ")), "{:?}", command_lines(&first));
    assert_eq!(env.read("build/stamp"), stamp, "the recorded results, byte for byte");
    assert_eq!(env.read("build/sub/copy"), b"v1\n");
    // Without --cache, the step runs.
    env.client().args(["--RESULT", "build", "--CMD", &command]).assert().success();
    assert_eq!(runs(&env), 2);
}

#[test]
fn a_changed_input_command_or_result_list_runs_and_so_does_a_new_salt() {
    let env = cached();
    let command = step(&env);
    assert!(run(&env, &command, &[]).status.success());
    env.write("source/input.txt", "v2\n");
    assert!(run(&env, &command, &[]).status.success());
    assert_eq!(runs(&env), 2, "a changed input runs");
    assert_eq!(env.read("build/sub/copy"), b"v2\n");
    assert!(run(&env, &format!("{command}; true"), &[]).status.success());
    assert_eq!(runs(&env), 3, "a changed command runs");
    let other_results =
        env.client().args(["--cache", "--RESULT", "build nothing", "--CMD", &command]).output().unwrap();
    assert!(other_results.status.success());
    assert_eq!(runs(&env), 4, "another RESULT list runs");
    assert!(run(&env, &command, &[]).status.success());
    assert_eq!(runs(&env), 4, "and the first is still served");
    let env = env.restarted(|config| {
        config.action_cache = true;
        config.action_cache_salt = "after the tool update".into();
    });
    assert!(run(&env, &command, &[]).status.success());
    assert_eq!(runs(&env), 5, "a new salt runs");
    let env = env.restarted(|config| {
        config.action_cache = true;
        config.action_cache_salt = "after the tool update".into();
    });
    let again = run(&env, &command, &[]);
    assert!(text(&again.stderr).contains("served from cache"), "records outlive a restart: {}", text(&again.stderr));
    assert_eq!(runs(&env), 5);
}

#[test]
fn a_failed_run_is_never_served_and_refresh_runs_again() {
    let env = cached();
    let failing = format!("{}; exit 3", step(&env));
    for expected_runs in 1..=2 {
        env.client()
            .args(["--cache", "--RESULT", "build", "--CMD", &failing])
            .assert()
            .code(3)
            .stderr(predicate::str::contains("served from cache").not());
        assert_eq!(runs(&env), expected_runs);
    }
    let command = step(&env);
    assert!(run(&env, &command, &[]).status.success());
    let refreshed = run(&env, &command, &["--refresh"]);
    assert!(refreshed.status.success() && !text(&refreshed.stderr).contains("served from cache"));
    assert_eq!(runs(&env), 4, "--refresh runs");
    let stamp = env.read("build/stamp");
    assert!(run(&env, &command, &[]).status.success());
    assert_eq!((runs(&env), env.read("build/stamp")), (4, stamp), "the refreshed run is the record now");
}

#[test]
fn another_cn_gets_nothing_unless_the_cache_is_shared() {
    for shared in [false, true] {
        let env = TestEnv::configured(|config| {
            config.action_cache = true;
            config.share_action_cache = shared;
        });
        env.write("source/input.txt", "v1\n");
        let command = step(&env);
        assert!(run(&env, &command, &[]).status.success());
        let mallory = client_dir_for(&env, "mallory");
        let work = env.root.path().join("mallory-work");
        std::fs::create_dir_all(work.join("source")).unwrap();
        std::fs::write(work.join("source/input.txt"), "v1\n").unwrap();
        let output = crate::security::client_as(&env, &mallory, &work)
            .args(["--cache", "--RESULT", "build", "--CMD", &command])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(text(&output.stderr).contains("served from cache"), shared, "{}", text(&output.stderr));
        assert_eq!(runs(&env), if shared { 1 } else { 2 });
    }
}

#[test]
fn without_a_cache_or_a_tree_the_step_runs_and_says_why() {
    let env = TestEnv::new();
    env.write("source/input.txt", "v1\n");
    let command = step(&env);
    for _ in 0..2 {
        env.client()
            .args(["--cache", "--RESULT", "build", "--CMD", &command])
            .assert()
            .success()
            .stderr(predicate::str::contains("this server keeps no action cache (--cache): the step runs"));
    }
    assert_eq!(runs(&env), 2);
    let env = cached();
    let command = step(&env);
    for _ in 0..2 {
        env.client()
            .args(["--cache", "--no-cas", "--RESULT", "build", "--CMD", &command])
            .assert()
            .success()
            .stderr(predicate::str::contains("the sources went as a tar.gz, which the action cache cannot name"));
    }
    assert_eq!(runs(&env), 2);
}

/// `command` with `--cache`, its results under `run_name/`, running in the background.
fn spawn_cached(env: &TestEnv, command: &str, run_name: &str) -> std::process::Child {
    let mut client = env.client_std();
    client
        .args(["--cache", "--RESULT", "build", "--RUN_NAME", run_name, "--CMD", command])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    client.spawn().unwrap()
}

#[test]
fn two_identical_steps_started_together_run_once_and_the_second_follows_the_first_live() {
    use std::io::BufRead;
    let env = cached();
    // The step prints at once, then takes a while.
    let command = format!("{}; sleep 3", step(&env));
    let start = |run_name: &str| spawn_cached(&env, &command, run_name);
    let mut first = start("a");
    wait_until(PROCESS_LIMIT, "the first step to start", || runs(&env) == 1);
    let mut second = start("b");
    // The second shows the first's line while the first still runs.
    let mut followed = String::new();
    let mut lines = std::io::BufReader::new(second.stdout.take().unwrap());
    while !followed.contains("]:v1") {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the second ended without the line: {followed}");
        followed.push_str(&line);
    }
    assert!(first.try_wait().unwrap().is_none(), "the line came while the first still ran");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    followed.push_str(&rest);
    let second = crate::env::child_output_within(second, PROCESS_LIMIT);
    let first = crate::env::child_output_within(first, PROCESS_LIMIT);
    assert!(first.status.success() && second.status.success(), "{}{}", text(&first.stderr), text(&second.stderr));
    assert_eq!(runs(&env), 1, "one run for both");
    assert!(followed.contains("following it instead of running it"), "{followed}");
    assert!(text(&second.stderr).contains("served from cache"), "{}", text(&second.stderr));
    let second_lines = std::process::Output { stdout: followed.into_bytes(), ..second };
    assert_eq!(command_lines(&first), command_lines(&second_lines), "each line once, in order");
    assert_eq!(env.read("a/build/stamp"), env.read("b/build/stamp"), "the same results");
}

#[test]
fn a_follower_of_a_run_that_fails_runs_the_step_itself() {
    let env = cached();
    let command = format!("{}; sleep 2; exit 3", step(&env));
    let start = |run_name: &str| spawn_cached(&env, &command, run_name);
    let first = start("a");
    wait_until(PROCESS_LIMIT, "the first step to start", || runs(&env) == 1);
    let second = start("b");
    let first = crate::env::child_output_within(first, PROCESS_LIMIT);
    let second = crate::env::child_output_within(second, PROCESS_LIMIT);
    assert_eq!((first.status.code(), second.status.code()), (Some(3), Some(3)));
    assert_eq!(runs(&env), 2, "the follower ran the step itself");
    let said = text(&second.stdout);
    assert!(said.contains("following it") && said.contains("running the step for this job"), "{said}");
}

#[test]
fn another_repo_url_runs_and_the_same_one_is_served() {
    let env = cached();
    let mut wheels = Vec::new();
    for (version, text) in [("v1", "one"), ("v2", "two")] {
        let package = env.root.path().join(format!("pkg-{version}/greeter"));
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(package.join("__init__.py"), format!("def hello():\n    return '{text}'\n")).unwrap();
        let wheel = crate::env::build_wheel(&package, "greeter", &env.work.join("dist").join(version));
        wheels.push(format!("greeter=./dist/{version}/{}", wheel.file_name().unwrap().to_string_lossy()));
    }
    // Both wheels are always uploaded: only REPO_URL differs between the runs.
    let command = format!(
        "echo ran >> {}; python -c 'import greeter; print(\"hello\", greeter.hello())'",
        env.root.path().join("runs").display()
    );
    let step = |repo_url: &str| {
        let output = env
            .client()
            .args(["--cache", "--SOURCE", "dist", "--RESULT", "build", "--REPO_URL", repo_url, "--CMD", &command])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        (text(&output.stdout), text(&output.stderr))
    };
    let (out, _) = step(&wheels[0]);
    assert!(out.contains("]:hello one"), "{out}");
    let (out, said) = step(&wheels[1]);
    assert!(out.contains("]:hello two") && !said.contains("served from cache"), "another REPO_URL runs: {out}{said}");
    let (out, said) = step(&wheels[0]);
    assert!(out.contains("]:hello one") && said.contains("served from cache"), "{out}{said}");
    assert_eq!(runs(&env), 2);
}

// The server's own tools count: after `ngspice` (here a file its version command reads)
// is upgraded, no record made by the old one answers; back at the old version, the
// old records answer again.
#[test]
fn a_tool_upgrade_on_the_server_is_never_served_from_the_old_tools_records() {
    let version = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(version.path(), "ngspice-39\n").unwrap();
    let tool = format!("cat '{}'", version.path().display());
    let env = TestEnv::configured(|config| {
        config.action_cache = true;
        config.action_cache_tools = vec![tool];
        config.action_cache_tools_refresh = std::time::Duration::ZERO;
    });
    env.write("source/input.txt", "v1\n");
    let served = |output: &std::process::Output| {
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stderr).contains("served from cache")
    };
    assert!(!served(&run(&env, &step(&env), &[])));
    assert!(served(&run(&env, &step(&env), &[])), "the same tools: served");
    std::fs::write(version.path(), "ngspice-42\n").unwrap();
    assert!(!served(&run(&env, &step(&env), &[])), "an upgraded tool: the step runs");
    assert_eq!(runs(&env), 2);
    std::fs::write(version.path(), "ngspice-39\n").unwrap();
    assert!(served(&run(&env, &step(&env), &[])), "the old tools' record answers the old tools");
}

/// A wheelhouse holding a one-module package `name` whose `hello()` says `text`
/// (replacing what was there).
fn wheel_into(env: &TestEnv, wheelhouse: &std::path::Path, name: &str, text: &str) {
    let package = env.root.path().join(format!("pkgsrc-{text}/{name}"));
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), format!("def hello():\n    return '{text}'\n")).unwrap();
    for old in std::fs::read_dir(wheelhouse).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with(&format!("{name}-")) {
            std::fs::remove_file(old.path()).unwrap();
        }
    }
    crate::env::build_wheel(&package, name, wheelhouse);
}

// The key covers the environment as installed, not the REPO_URL as spelled: after the
// environment is built again from an upgraded wheelhouse, the old record does not
// answer; and a replay never prints pip's lines as if pip ran now.
#[test]
fn an_environment_installed_anew_is_never_served_the_old_record_nor_pips_lines() {
    let env = TestEnv::bare();
    let wheelhouse = env.root.path().join("wheelhouse");
    wheel_into(&env, &wheelhouse, "greeter", "one");
    wheel_into(&env, &wheelhouse, "helper", "help");
    let sources = lrpymrpc_mock_server::config::PipSources {
        find_links: vec![wheelhouse.clone()],
        index_url: None,
        no_index: true,
    };
    // One environment at a time: building another removes the one not in use.
    let env = env.serve_configured(|config| {
        config.action_cache = true;
        config.pip = sources;
        config.env_cache_max_bytes = 1;
    });
    env.write("source/input.txt", "v1\n");
    let command = |module: &str| {
        format!(
            "echo ran >> {}; python -c 'import {module}; print(\"says\", {module}.hello())'",
            env.root.path().join("runs").display()
        )
    };
    let step = |module: &str| {
        let output = env
            .client()
            .args(["--cache", "--RESULT", "build", "--REPO_URL", &format!("{module}={module}")])
            .args(["--CMD", &command(module)])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        (text(&output.stdout), text(&output.stderr))
    };
    let (out, said) = step("greeter");
    assert!(out.contains("]:says one") && out.contains("Successfully installed greeter"), "{out}{said}");
    let (out, said) = step("greeter");
    assert!(said.contains("served from cache") && out.contains("]:says one"), "{out}{said}");
    assert!(!out.contains("Successfully installed") && !out.contains("Processing "), "pip's lines replayed: {out}");
    assert_eq!(runs(&env), 1);

    // Another environment takes greeter's place; the wheelhouse is upgraded.
    let (out, _) = step("helper");
    assert!(out.contains("]:says help"), "{out}");
    wheel_into(&env, &wheelhouse, "greeter", "two");
    let (out, said) = step("greeter");
    assert!(out.contains("Successfully installed greeter"), "the environment is built again: {out}");
    assert!(!said.contains("served from cache") && out.contains("]:says two"), "{out}{said}");
    assert_eq!(runs(&env), 3);
    let (out, said) = step("greeter");
    assert!(said.contains("served from cache") && out.contains("]:says two"), "{out}{said}");
}
