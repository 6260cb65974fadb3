//! Whole jobs through the real client binary and the reference server.

use predicates::prelude::*;

use crate::env::{CLIENT, TestEnv, build_wheel, pseudo_random};

#[test]
fn runs_a_whole_job_and_brings_back_byte_identical_results() {
    let env = TestEnv::new();
    let data = pseudo_random(3 << 20, 7);
    env.write("src/data.bin", &data);
    env.write("src/deep/er/notes.txt", "notes\n");
    std::fs::create_dir_all(env.work.join("src/empty")).unwrap();
    let prefix = env.prefix();
    env.client()
        .args(["--SOURCE", "src", "--RESULT", "build", "--CMD"])
        .arg("mkdir -p build && cp -r src build/copy && echo remote-says-hello")
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}remote-says-hello\n")))
        .stdout(predicate::str::contains(format!("{prefix}Finish: done.\n")));
    assert_eq!(env.read("build/copy/data.bin"), data);
    assert_eq!(env.read("build/copy/deep/er/notes.txt"), b"notes\n");
    assert!(env.work.join("build/copy/empty").is_dir(), "empty directories travel");
    let leftovers: Vec<_> = crate::env::names_in(&env.work).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn uploads_under_base_names_applies_filters_and_dereferences_links() {
    let env = TestEnv::new();
    env.write("a/b/cells/inv.sp", "inv");
    env.write("a/b/cells/gf180/nand.sp", "nand");
    env.write("a/b/cells/gf180/nand.lib", "lib");
    env.write("a/b/cells/gf180/skip.sp.bak", "bak");
    env.write("real.txt", "through the link");
    std::os::unix::fs::symlink(env.work.join("real.txt"), env.work.join("a/b/cells/gf180/link.sp")).unwrap();
    env.client()
        .args(["--SOURCE", "a/b/cells", "missing-dir", "--SOURCE_INCLUDE", ".sp", "--SOURCE_MATCH", "gf180"])
        .args([
            "--RESULT",
            "out",
            "--CMD",
            "mkdir out && find cells | sort > out/list && cat cells/gf180/link.sp > out/link",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("SOURCE `missing-dir` skipped: it does not exist"));
    assert_eq!(
        String::from_utf8(env.read("out/list")).unwrap(),
        "cells\ncells/gf180\ncells/gf180/link.sp\ncells/gf180/nand.sp\n"
    );
    assert_eq!(env.read("out/link"), b"through the link");
}

#[test]
fn installs_a_locally_built_wheel_and_imports_it_remotely() {
    let env = TestEnv::new();
    let package = env.root.path().join("pkgsrc/greeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def greet(who):\n    return f'hello {who} from greeter'\n").unwrap();
    build_wheel(&package, "greeter", &env.work.join("dist"));
    let prefix = env.prefix();
    env.client()
        .args(["--REPO_URL", "greeter=./dist/greeter-0.1.0-py3-none-any.whl,", "--SOURCE", "dist", "--RESULT", "out"])
        .args(["--CMD", "mkdir out && python -c \"import greeter; print(greeter.greet('make'))\" | tee out/greeting"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}Successfully installed greeter-0.1.0")))
        .stdout(predicate::str::contains(format!("{prefix}hello make from greeter\n")));
    assert_eq!(env.read("out/greeting"), b"hello make from greeter\n");
}

#[test]
fn a_failing_pip_install_stops_the_job_with_the_step_named() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--REPO_URL", "nothing=./no-such-wheel-0.1-py3-none-any.whl", "--CMD", "touch build"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("execute failed"))
        .stderr(predicate::str::contains("FAILED_PRECONDITION"))
        .stderr(predicate::str::contains("pip install ./no-such-wheel-0.1-py3-none-any.whl failed"));
    assert!(!env.work.join("build").exists());
}

#[test]
fn concurrent_runs_with_different_run_names_do_not_collide() {
    let env = TestEnv::new();
    env.write("source/input.txt", "shared input\n");
    let children: Vec<_> = ["red", "blue"]
        .iter()
        .map(|name| {
            let mut command = std::process::Command::new(CLIENT);
            command
                .current_dir(&env.work)
                .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &env.addr.port().to_string()])
                .arg("--TLS_CONFIG_DIR")
                .arg(&env.tls)
                .args(["--RUN_NAME", name, "--CMD"])
                .arg(format!("mkdir build && sleep 1 && echo {name} > build/who && cat source/input.txt >> build/who"))
                .stdout(std::process::Stdio::null());
            command.spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(crate::env::wait_exit(&mut child, crate::env::PROCESS_LIMIT).success());
    }
    assert_eq!(env.read("red/build/who"), b"red\nshared input\n");
    assert_eq!(env.read("blue/build/who"), b"blue\nshared input\n");
    assert!(!env.work.join("build").exists(), "results went under RUN_NAME only");
}

#[test]
fn results_replace_files_of_the_same_name_and_keep_the_others() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.write("build/old.txt", "stale");
    env.write("build/mine.txt", "kept");
    env.client().args(["--CMD", "mkdir build && echo fresh > build/old.txt"]).assert().success();
    assert_eq!(env.read("build/old.txt"), b"fresh\n");
    assert_eq!(env.read("build/mine.txt"), b"kept");
}

#[test]
fn no_results_is_reported_and_not_an_error() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let prefix = env.prefix();
    env.client()
        .args(["--CMD", "true", "--RESULT", "nothing here"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}Check: Download data is not exist.")));
}

#[test]
fn refuses_a_run_name_that_is_not_one_directory_name() {
    let env = TestEnv::new();
    for bad in ["../up", "a/b", ".."] {
        env.client()
            .args(["--RUN_NAME", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!("--RUN_NAME `{bad}` refused")))
            .stderr(predicate::str::contains("hint:"));
    }
}

#[test]
fn unknown_job_ids_are_not_found() {
    let mut env = TestEnv::new();
    let addr = env.addr;
    let tls = env.tls.clone();
    let status = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let request = lrpymrpc_proto::CheckRequest {
            unique_id: "00000000-0000-4000-8000-000000000000".into(),
            result_dir: "build".into(),
        };
        client.check(request).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[test]
fn the_remote_exit_status_reaches_the_caller_and_results_still_arrive() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "mkdir build && echo 'half done' > build/log && exit 3"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("lrpymrpc: error: the remote command failed with exit status 3"));
    assert_eq!(env.read("build/log"), b"half done\n", "results of a failed run help debugging");
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_the_signal() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "kill -9 $$"])
        .assert()
        .code(137)
        .stderr(predicate::str::contains("killed by signal 9"));
}

#[test]
fn remote_stderr_lines_go_to_stderr_and_stdout_lines_to_stdout() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let prefix = env.prefix();
    env.client()
        .args(["--CMD", "echo on-stdout; echo on-stderr >&2"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}on-stdout\n")))
        .stdout(predicate::str::contains(format!("{prefix}on-stderr")).not())
        .stderr(predicate::str::contains(format!("{prefix}on-stderr\n")))
        .stderr(predicate::str::contains("does not report").not());
}

// Without --CMD the Python client runs its placeholder `charao -h` on the server, which
// fails with 127 after the upload: ours says what is missing before anything is sent.
#[test]
fn a_job_without_cmd_is_refused_before_anything_is_uploaded() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .env_remove("LRPYMRPC_CMD")
        .args(["--RESULT", "build"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--CMD is missing"))
        .stderr(predicate::str::contains("hint: give the command"));
    assert!(env.job_dirs().is_empty(), "nothing was uploaded: {:?}", env.job_dirs());
    // Given in the environment, it runs.
    env.client().env("LRPYMRPC_CMD", "echo from-the-environment").assert().success();
}

// Python environments built for a REPO_URL outlive a restart of the server: the first
// job after it reuses the environment instead of installing again; what a build cut
// short left (no record of a finished build) is not kept.
#[test]
fn python_environments_outlive_a_server_restart() {
    let mut env = TestEnv::bare();
    let package = env.root.path().join("pkgsrc/restartgreeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def greet():\n    return 'hello again'\n").unwrap();
    let wheelhouse = env.root.path().join("wheelhouse");
    build_wheel(&package, "restartgreeter", &wheelhouse);
    let wheelhouse = wheelhouse.display().to_string();
    let args = ["--pip-find-links", wheelhouse.as_str(), "--pip-no-index"];
    env.write("source/x", "x");
    let job = |env: &TestEnv| {
        let output = env
            .client()
            .args(["--REPO_URL", "restartgreeter=restartgreeter"])
            .args(["--CMD", "python -c \"import restartgreeter; print(restartgreeter.greet())\""])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success() && out.contains("]:hello again"),
            "{out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    };
    let stop = |mut server: std::process::Child| {
        crate::env::send_signal(&server, libc::SIGTERM);
        assert!(crate::env::wait_exit(&mut server, crate::env::PROCESS_LIMIT).success());
    };
    let (server, port) = crate::env::spawn_server_binary(&env, &args);
    env.set_addr(([127, 0, 0, 1], port).into());
    assert!(job(&env).contains("Successfully installed restartgreeter"));
    stop(server);
    // A build the server was killed in the middle of.
    let cut_short = env.jobs.join("lrpymrpc-env-cache").join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(cut_short.join("lib")).unwrap();

    let (server, port) = crate::env::spawn_server_binary(&env, &args);
    env.set_addr(([127, 0, 0, 1], port).into());
    let out = job(&env);
    assert!(out.contains("reusing the cached Python environment"), "{out}");
    assert!(!out.contains("Successfully installed"), "pip ran again after the restart: {out}");
    assert!(!cut_short.exists(), "a build cut short was kept");
    stop(server);
}

// A compute server without the internet: the administrator gives pip a wheelhouse and
// no index; a REPO_URL naming a package (not a path) installs from the wheelhouse.
#[test]
fn an_offline_server_installs_from_its_wheelhouse() {
    let env = TestEnv::bare();
    let package = env.root.path().join("pkgsrc/offlinegreeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def greet():\n    return 'hello from the wheelhouse'\n").unwrap();
    let wheelhouse = env.root.path().join("wheelhouse");
    build_wheel(&package, "offlinegreeter", &wheelhouse);
    let sources =
        lrpymrpc_mock_server::config::PipSources { find_links: vec![wheelhouse], index_url: None, no_index: true };
    let env = env.serve_configured(|config| config.pip = sources);
    env.write("source/x", "x");
    let prefix = env.prefix();
    env.client()
        .args(["--REPO_URL", "offlinegreeter=offlinegreeter"])
        .args(["--CMD", "python -c \"import offlinegreeter; print(offlinegreeter.greet())\""])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}Successfully installed offlinegreeter-0.1.0")))
        .stdout(predicate::str::contains(format!("{prefix}hello from the wheelhouse\n")));
}
