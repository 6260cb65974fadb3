//! No silent success (issue 12): what a user asked for either happens or the client
//! says why not, with a non-zero exit; mistakes are refused before anything is sent.

use predicates::prelude::*;

use crate::env::TestEnv;
use crate::hostile::fake_server_sending;
use lrpymrpc_archive::testing::{file, gzip, tar_bytes};

#[test]
fn no_arguments_at_all_print_usage_instead_of_running_the_upstream_default() {
    let env = TestEnv::new();
    env.bare_client().assert().code(2).stderr(predicate::str::contains("no job given"));
    assert!(env.job_dirs().is_empty());
}

#[test]
fn dash_v_among_job_options_is_a_usage_error_pointing_at_verbose() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["-v", "--CMD", "touch ran"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`-v` prints the version and runs nothing"))
        .stderr(predicate::str::contains("--verbose"));
    assert!(env.job_dirs().is_empty(), "nothing ran");
    for flag in ["-v", "-V"] {
        env.bare_client().arg(flag).assert().success().stdout(predicate::str::contains("lrpymrpc "));
    }
}

#[test]
fn the_upstream_defaults_are_named_when_used() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "true"])
        .assert()
        .stderr(predicate::str::contains("lrPymRPC's defaults are used: --SOURCE `source`, --RESULT `build`"));
}

#[test]
fn result_paths_that_climb_out_and_an_unusable_results_dir_are_refused_before_anything_is_sent() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    for result in ["../escape", "/etc/passwd", "a/../../b"] {
        env.client()
            .args(["--CMD", "touch ran", "--RESULT", result])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!("--RESULT `{result}` is refused")));
    }
    env.write("a-file", "not a directory");
    env.client()
        .args(["--CMD", "touch ran", "--results-dir", "a-file"])
        .assert()
        .code(101)
        .stderr(predicate::str::contains("--results-dir"))
        .stderr(predicate::str::contains("is not a directory"));
    env.client()
        .args(["--CMD", "touch ran", "--results-dir", "no/such/parent"])
        .assert()
        .code(101)
        .stderr(predicate::str::contains("neither it nor its parent directory exists"));
    assert!(env.job_dirs().is_empty(), "nothing was sent: {:?}", env.job_dirs());
}

#[test]
fn a_result_path_that_did_not_come_back_is_named_and_fails_with_strict() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let make_one = ["--CMD", "mkdir out && echo a > out/a", "--RESULT", "out", "never-made"];
    env.client()
        .args(make_one)
        .assert()
        .success()
        .stderr(predicate::str::contains("RESULT `never-made` did not come back"))
        .stderr(predicate::str::contains("RESULT `out`").not());
    std::fs::remove_dir_all(env.work.join("out")).unwrap();
    env.client()
        .args(make_one)
        .arg("--strict")
        .assert()
        .code(105)
        .stderr(predicate::str::contains("--strict: RESULT `never-made` did not come back"));
    assert_eq!(env.read("out/a"), b"a\n", "what did come back is in place");
    env.client()
        .args(["--CMD", "true", "--RESULT", "nothing", "--strict"])
        .assert()
        .code(105)
        .stderr(predicate::str::contains("RESULT `nothing` did not come back"));
}

#[test]
fn an_exit_status_marker_that_never_came_back_is_not_a_success() {
    // The fake server runs nothing: no marker line can come back.
    let env = fake_server_sending(gzip(&tar_bytes(&[file("build/out", "result")])));
    env.write("source/x", "x");
    env.client()
        .args(["--exit-status-marker"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("no exit-status marker came back"))
        .stderr(predicate::str::contains("hint: the server may not run CMD with a POSIX shell"));
}

#[test]
fn config_shows_every_setting_with_its_origin_and_errors_name_the_origin() {
    let env = TestEnv::new();
    let file = env.root.path().join("lrpymrpc.conf");
    std::fs::write(&file, "# the lab server\nSERVER_IP = 10.0.0.5\nquiet = true\n").unwrap();
    let output = env
        .bare_client()
        .env("LRPYMRPC_CONFIG", &file)
        .env("LRPYMRPC_SERVER_PORT", "9000")
        .args(["--CMD", "echo hi", "config"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |start: &str| stdout.lines().find(|l| l.starts_with(start)).unwrap_or_default().to_string();
    assert!(line("CMD = echo hi").ends_with("# command line"), "{stdout}");
    assert!(line("SERVER_IP = 10.0.0.5").ends_with(&format!("# config file `{}` line 2", file.display())), "{stdout}");
    assert!(line("SERVER_PORT = 9000").ends_with("# environment LRPYMRPC_SERVER_PORT"), "{stdout}");
    assert!(line("RESULT = build").ends_with("# default"), "{stdout}");
    assert!(env.job_dirs().is_empty(), "config runs nothing");

    env.bare_client()
        .env("LRPYMRPC_CONFIG", &file)
        .env("LRPYMRPC_SERVER_PORT", "abc")
        .args(["--CMD", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--SERVER_PORT `abc` is not a TCP port (from environment LRPYMRPC_SERVER_PORT)",
        ));
    std::fs::write(&file, "SERVER_IP = 10.0.0.5\nRESULT = ../out\n").unwrap();
    env.bare_client()
        .env("LRPYMRPC_CONFIG", &file)
        .args(["--CMD", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("(from config file `{}` line 2)", file.display())));
}

#[test]
fn durations_and_sizes_read_the_usual_forms_in_both_binaries_and_bad_values_are_usage_errors() {
    use crate::env::{pseudo_random, spawn_server_binary, wait_exit};
    let mut env = TestEnv::bare();
    let server_args = ["--max-upload-bytes", "16K", "--job-timeout", "1h30m", "--idle-timeout", "1h 30m"];
    let (mut server, port) = spawn_server_binary(&env, &server_args);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "echo ran", "--timeout", "1h30m", "--stall-timeout", "1m30s", "--max-result-bytes", "64GiB"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:ran"));
    // 16K is 16 KiB on the server: an upload of 64 KiB of incompressible bytes is refused.
    let big = env.write("source/big", pseudo_random(64 * 1024, 7));
    env.client()
        .args(["--CMD", "echo ran"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("16384 bytes"))
        .stdout(predicate::str::contains("]:ran").not());
    std::fs::remove_file(big).unwrap();

    // Bad values are usage errors (2) that name the option and, off the command line,
    // where the value came from.
    let jobs_before = env.job_dirs();
    env.client()
        .args(["--timeout", "5w"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`w` in `5w` is not a unit"));
    env.client()
        .env("LRPYMRPC_STALL_TIMEOUT", "soon")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("(from environment LRPYMRPC_STALL_TIMEOUT)"))
        .stderr(predicate::str::contains("hint: fix or unset LRPYMRPC_STALL_TIMEOUT"));
    let file = env.root.path().join("lrpymrpc.conf");
    std::fs::write(&file, "# sizes\nmax-result-bytes = 64X\n").unwrap();
    env.client()
        .env("LRPYMRPC_CONFIG", &file)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("(from config file `{}` line 2)", file.display())));
    env.client().args(["--SERVER_PORT", "http"]).assert().code(2).stderr(predicate::str::contains("not a TCP port"));
    assert_eq!(env.job_dirs(), jobs_before, "no bad value ran anything");

    let server_binary = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    for bad in [["--job-timeout", "soon"], ["--max-upload-bytes", "lots"]] {
        assert_cmd::Command::new(server_binary).args(bad).assert().code(2).stderr(predicate::str::contains(bad[0]));
    }
    crate::env::send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, std::time::Duration::from_secs(15));
}
