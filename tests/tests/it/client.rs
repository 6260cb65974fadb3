//! The client's behaviour beyond the job itself: legacy servers and the exit-status
//! marker, `make` stopping on a remote failure, configuration precedence, source
//! selection, output modes and retries.

use predicates::prelude::*;

use crate::env::TestEnv;

#[test]
fn a_legacy_server_completes_the_job_and_the_client_says_once_that_it_gets_no_status() {
    let env = TestEnv::legacy();
    env.write("source/x", "x");
    let prefix = env.prefix();
    env.client()
        .args(["--CMD", "mkdir build && echo made > build/out && echo on-stderr >&2 && exit 3"])
        .assert()
        .success()
        // No stream labels: every line is printed on stdout, as the Python client does.
        .stdout(predicate::str::contains(format!("{prefix}on-stderr\n")))
        .stdout(predicate::str::contains("command ended").not())
        .stderr(predicate::str::contains("does not report the command's exit status").count(1))
        .stderr(predicate::str::contains("--exit-status-marker"));
    assert_eq!(env.read("build/out"), b"made\n");
}

#[test]
fn the_exit_status_marker_recovers_the_status_from_a_legacy_server_and_is_not_printed() {
    let env = TestEnv::legacy();
    env.write("source/x", "x");
    let prefix = env.prefix();
    let output = env
        .client()
        .args(["--exit-status-marker", "--CMD", "echo before; printf no-newline; exit 3"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains(format!("{prefix}before\n")))
        .stdout(predicate::str::contains(format!("{prefix}no-newline\n")))
        .stdout(predicate::str::contains(format!(
            "{prefix}Upload: Execute target=echo before; printf no-newline; exit 3\n"
        )))
        .stderr(predicate::str::contains("does not report").not())
        .get_output()
        .clone();
    let all = [output.stdout, output.stderr].concat();
    assert!(!String::from_utf8_lossy(&all).contains("__LRPYMRPC_EXIT_"), "the marker line is stripped");

    env.client().args(["--exit-status-marker", "--CMD", "true"]).assert().success();
}

#[test]
fn the_exit_status_marker_does_no_harm_with_a_server_that_reports_the_status() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--exit-status-marker", "--CMD", "echo hi; exit 4"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("__LRPYMRPC_EXIT_").not());
}

#[test]
fn make_stops_when_the_remote_command_fails() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let client = env.client_std();
    let mut line = format!("\"{}\"", client.get_program().to_string_lossy());
    for arg in client.get_args() {
        line.push_str(&format!(" '{}'", arg.to_string_lossy()));
    }
    let makefile = format!(
        "all: second\nfirst:\n\t{line} --CMD 'echo remote-ran; exit 3'\n\ttouch first\nsecond: first\n\ttouch second\n"
    );
    env.write("Makefile", makefile);
    let output = crate::env::output_within(
        std::process::Command::new(crate::env::tool("make", "make")).current_dir(&env.work),
        crate::env::PROCESS_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "make must fail: {stdout}");
    assert!(stdout.contains("remote-ran"), "{stdout}");
    assert!(!env.work.join("first").exists() && !env.work.join("second").exists(), "make stopped at the failure");
}

#[test]
fn options_come_from_the_command_line_then_the_environment_then_the_config_file() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let config = env.root.path().join("lrpymrpc.conf");
    let port = env.addr.port().to_string();
    std::fs::write(
        &config,
        format!(
            "# a lab's settings\nserver-port = {port}\nTLS_CONFIG_DIR = {}\nRUN_NAME = from-file\n\
             CMD = mkdir build && echo $PWD > build/where\nquiet = true\n",
            env.tls.display()
        ),
    )
    .unwrap();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut client = env.bare_client();
        client.env("LRPYMRPC_CONFIG", &config).envs(envs.iter().copied()).args(args);
        client.assert().success()
    };
    // The file alone: its port, TLS directory, run name and command.
    let quiet = run(&[], &[]).get_output().stdout.clone();
    assert!(env.work.join("from-file/build/where").is_file());
    assert!(!String::from_utf8_lossy(&quiet).contains("Upload"), "quiet = true came from the file");
    // The environment wins over the file; the command line over both.
    run(&[("LRPYMRPC_RUN_NAME", "from-env")], &[]);
    assert!(env.work.join("from-env/build/where").is_file());
    run(&[("LRPYMRPC_RUN_NAME", "from-env")], &["--run-name", "from-cli"]);
    assert!(env.work.join("from-cli/build/where").is_file());
    // A flag in the environment: false-like values switch it off.
    let loud = run(&[("LRPYMRPC_QUIET", "false")], &["--RUN_NAME", "loud"]).get_output().stdout.clone();
    assert!(String::from_utf8_lossy(&loud).contains("Upload"));

    std::fs::write(&config, "SERVR_PORT = 1\n").unwrap();
    env.bare_client()
        .env("LRPYMRPC_CONFIG", &config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "config file `{}` line 1: `SERVR_PORT` is not an option",
            config.display()
        )))
        .stderr(predicate::str::contains("hint:"));
    env.bare_client()
        .env("LRPYMRPC_CONFIG", env.root.path().join("missing.conf"))
        .assert()
        .code(101)
        .stderr(predicate::str::contains("cannot read the config file"));
}

#[test]
fn version_control_directories_stay_home_and_exclude_patterns_apply() {
    let env = TestEnv::new();
    env.write("source/.git/HEAD", "ref: refs/heads/main");
    env.write("source/cell.sp", "* cell");
    env.write("source/cell.o", "object");
    env.write("source/scratch/tmp.txt", "scratch");
    env.write("source/run.log", "log");
    env.write(".gitignore", "*.log\n");
    let listing = "find source | sort";
    let prefix = env.prefix();
    env.client()
        .args(["--CMD", listing, "--exclude", "*.o", "--exclude=scratch/"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}source/cell.sp\n")))
        .stdout(predicate::str::contains(format!("{prefix}source/run.log\n")))
        .stdout(predicate::str::contains(".git").not())
        .stdout(predicate::str::contains("cell.o").not())
        .stdout(predicate::str::contains("scratch").not())
        .stderr(predicate::str::contains(
            "left out version-control directories: source/.git (--include-vcs sends them)",
        ));
    env.client()
        .args(["--CMD", listing, "--include-vcs", "--gitignore"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}source/.git/HEAD\n")))
        .stdout(predicate::str::contains(format!("{prefix}source/cell.o\n")))
        .stdout(predicate::str::contains("run.log").not())
        .stderr(predicate::str::contains("left out").not());
}

#[test]
fn strict_refuses_a_missing_source_before_anything_is_sent() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--SOURCE", "source missing-dir", "--strict"])
        .assert()
        .code(101)
        .stderr(predicate::str::contains("--strict: SOURCE `missing-dir` skipped: it does not exist"))
        .stderr(predicate::str::contains("hint:"))
        .stdout(predicate::str::contains("Upload").not());
    assert!(env.job_dirs().is_empty(), "nothing reached the server");
}

#[test]
fn piped_output_has_no_escape_sequences_even_from_the_remote_command() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let prefix = env.prefix();
    let output = env
        .client()
        .args([
            "--CMD",
            "printf '\\033[31mred\\033[0m\\n\\033]0;title\\007x\\n 10%%\\r100%%\\n'; echo oops >&2; exit 2",
        ])
        .assert()
        .code(2)
        .stdout(predicate::str::contains(format!("{prefix}red\n{prefix}x\n{prefix}100%\n")))
        .get_output()
        .clone();
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{name} holds control characters: {text:?}");
    }
}

#[test]
fn quiet_shows_only_remote_output_and_verbose_adds_timings() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let prefix = env.prefix();
    env.client()
        .args(["--quiet", "--CMD", "echo only-this"])
        .assert()
        .success()
        .stdout(format!("{prefix}only-this\n"))
        .stderr("");
    env.client()
        .args(["-q", "--no-prefix", "--CMD", "echo bare; exit 5"])
        .assert()
        .code(5)
        .stdout("bare\n")
        .stderr(predicate::str::contains("exit status 5"));
    // Each transfer leaves one summary line; --verbose adds the other steps' timings.
    env.write("source/y", "yy");
    env.client()
        .args(["--no-cas", "--CMD", "mkdir build; echo r > build/r"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: uploaded 2 files, 3 B in "))
        .stderr(predicate::str::contains("lrpymrpc: downloaded 1 file, 2 B in "))
        .stderr(predicate::str::contains(" took ").not());
    env.client()
        .args(["--verbose", "--no-cas", "--CMD", "mkdir build; echo r > build/r"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: uploaded 2 files, 3 B in "))
        .stderr(predicate::str::contains("lrpymrpc: execute took"))
        .stderr(predicate::str::contains("lrpymrpc: check took"));
}

/// Runs the client on a pseudo-terminal (util-linux `script`) and returns what the
/// terminal got.
fn on_a_terminal(env: &TestEnv, args: &[&str]) -> String {
    let script = crate::env::tool("script", "bsdutils");
    let client = env!("CARGO_BIN_EXE_lrpymrpc-e2e-client");
    let mut line = format!(
        "'{client}' --SERVER_IP 127.0.0.1 --SERVER_PORT {} --TLS_CONFIG_DIR '{}'",
        env.addr.port(),
        env.tls.display()
    );
    for arg in args {
        line.push_str(&format!(" '{}'", arg.replace('\'', "'\\''")));
    }
    let typescript = env.root.path().join("typescript");
    let mut command = std::process::Command::new(script);
    command
        .current_dir(&env.work)
        .env("LRPYMRPC_CONFIG", "")
        .env("COLUMNS", "80")
        .arg("-qfec")
        .arg(&line)
        .arg(&typescript);
    let output = crate::env::output_within(&mut command, crate::env::PROCESS_LIMIT);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&std::fs::read(typescript).unwrap()).into_owned()
}

#[test]
fn a_remote_progress_meter_shows_live_on_a_terminal_and_only_its_last_state_into_a_pipe() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let meter = "for i in 1 2 3 4 5 6; do printf '\\rstep %d/6' $i >&2; sleep 0.3; done; echo >&2; echo done";
    let prefix = env.prefix();
    // Into a pipe: the finished line only, as a terminal would show it.
    env.client()
        .args(["--CMD", meter])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("{prefix}step 6/6\n")))
        .stderr(predicate::str::contains("step 3/6").not())
        .stdout(predicate::str::contains(format!("{prefix}done\n")));
    let screen = on_a_terminal(&env, &["--CMD", meter]);
    // On a terminal: the meter's states show on the status line as they come.
    assert!(screen.contains("step 3/6") && screen.contains("step 4/6"), "{screen}");
    assert!(screen.contains(&format!("{prefix}step 6/6")), "{screen}");
}

// A meter on stderr left at its last state (`\r` after it), then `finished` on stdout,
// then the meter's closing newline: the meter's last state comes before `finished`,
// in one log of both streams and on a terminal alike, and the newline adds no line.
#[test]
fn lines_from_both_pipes_keep_the_order_they_were_written_in() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let tool = "printf ' 50%%\r100%%\r' >&2; sleep 0.5; echo finished; sleep 0.5; printf '\n' >&2; \
                printf 'wrote lib/a.lib'; sleep 0.5; echo characterizing b >&2; sleep 0.5; echo";
    let prefix = env.prefix();
    let log = env.root.path().join("both.log");
    let file = std::fs::File::create(&log).unwrap();
    let status =
        env.client_std().args(["--CMD", tool]).stdout(file.try_clone().unwrap()).stderr(file).status().unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    let order = [
        format!("{prefix}100%\n"),
        format!("{prefix}finished\n"),
        format!("{prefix}wrote lib/a.lib\n"),
        format!("{prefix}characterizing b\n"),
    ];
    let at: Vec<usize> =
        order.iter().map(|line| log.find(line.as_str()).unwrap_or_else(|| panic!("{line:?}: {log}"))).collect();
    assert!(at.windows(2).all(|pair| pair[0] < pair[1]), "{at:?}: {log}");
    // The closing newlines end nothing more: no empty remote line.
    assert!(!log.contains(&format!("{prefix}\n")), "{log}");
    let screen = on_a_terminal(&env, &["--CMD", tool]);
    let meter = screen.find(&format!("{prefix}100%")).unwrap_or_else(|| panic!("{screen}"));
    let finished = screen.find(&format!("{prefix}finished")).unwrap_or_else(|| panic!("{screen}"));
    assert!(meter < finished, "{screen}");
}

#[test]
fn on_a_terminal_transfers_show_bars_with_total_and_eta_and_a_quiet_command_shows_it_runs() {
    let env = TestEnv::new();
    env.write("source/big", crate::env::pseudo_random(32 << 20, 3));
    let command = "mkdir build; head -c 33554432 /dev/urandom > build/big; sleep 1.5; echo done";
    let screen = on_a_terminal(&env, &["--CMD", command]);
    // The bar knows the total from the start: a percentage, the total and an ETA.
    assert!(screen.contains("upload [") && screen.contains("/32.00 MiB") && screen.contains("% "), "{screen}");
    assert!(screen.contains(" ETA "), "{screen}");
    assert!(screen.contains(" 1s running on the server"), "{screen}");
    assert!(screen.contains("lrpymrpc: uploaded 1 file, 32.0 MiB in "), "{screen}");
    // The server says the result's size at Check: the download has a total too.
    let download = screen.find("download [").map(|at| &screen[at..]).unwrap_or_default();
    assert!(download.contains("/32.00 MiB") && download.contains(" ETA "), "{screen}");
    assert!(screen.contains("lrpymrpc: downloaded 1 file, 32.0 MiB in "), "{screen}");
    assert_eq!(std::fs::metadata(env.work.join("build/big")).unwrap().len(), 32 << 20);
    assert!(screen.contains("]:done"), "{screen}");
}

#[test]
fn the_client_retries_connecting_while_the_server_starts() {
    let mut env = TestEnv::bare();
    // Held until the server takes it: no other test takes the port.
    let (held, addr) = crate::env::closed_port(true);
    env.set_addr(addr);
    env.write("source/x", "x");
    let mut client = env.client_std();
    let child = client
        .args(["--CMD", "echo late-but-fine"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tls = lrpymrpc_mock_server::TlsMaterial::from_dir(&env.tls).unwrap();
    let config = lrpymrpc_mock_server::Config::new(env.jobs.clone(), Some(tls));
    let runtime = env.runtime();
    // The client's first try is taken and closed before any TLS, as by a server still
    // starting; then the server starts on the same socket.
    let listener = runtime.block_on(async move { held.listen(16) }).unwrap();
    let (first, _) = runtime.block_on(listener.accept()).unwrap();
    drop(first);
    runtime.spawn(lrpymrpc_mock_server::run(listener, config, std::future::pending()));
    let output = crate::env::child_output_within(child, crate::env::PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("late-but-fine"));
    // Each failed try while the server starts is said with the wait before the next,
    // and a note at the end says how long it took.
    assert!(stderr.contains("retrying connect in 0.500 s (1 of "), "{stderr}");
    assert!(stderr.contains("connected after 2 tries in") || stderr.contains("connected after 3 tries in"), "{stderr}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let env = TestEnv::bare();
    for shell in ["bash", "zsh", "fish"] {
        env.bare_client()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("server-ip"))
            .stdout(predicate::str::contains("SERVER_IP"));
    }
    env.bare_client().args(["completions", "tcsh"]).assert().code(2);
}

#[test]
fn the_upload_gzip_level_can_be_chosen_and_is_checked() {
    let env = TestEnv::new();
    env.write("source/data", "x".repeat(100_000));
    for level in ["0", "9"] {
        env.client()
            .args(["--gzip-level", level, "--CMD", "mkdir build; wc -c < source/data > build/size"])
            .assert()
            .success();
        assert_eq!(env.read("build/size"), b"100000\n");
    }
    env.client().args(["--gzip-level", "10"]).assert().code(2).stderr(predicate::str::contains("--gzip-level"));
}

#[test]
fn the_prefix_is_a_template_and_a_bad_one_is_a_usage_error() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let port = env.addr.port();
    env.client()
        .args(["--prefix", "{server} cell-a| ", "--CMD", "echo out; echo err >&2"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("127.0.0.1:{port} cell-a| out\n")))
        .stdout(predicate::str::contains(format!("127.0.0.1:{port} cell-a| Upload")))
        .stderr(predicate::str::contains(format!("127.0.0.1:{port} cell-a| err\n")));
    env.client()
        .env("LRPYMRPC_PREFIX", "{hots}:")
        .args(["--CMD", "echo out"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`{hots}` in `{hots}:` is not a placeholder"))
        .stderr(predicate::str::contains("(from environment LRPYMRPC_PREFIX)"));
}

// Two clients writing to one pipe (`make -j2 ... | tee log`), a thousand lines each on
// both streams: not one line spliced or split, since each leaves in one write.
#[test]
fn two_clients_sharing_one_pipe_never_splice_a_line() {
    use std::io::Read;
    let env = TestEnv::new();
    env.write("source/x", "x");
    let padding = "p".repeat(180);
    let (mut reader, writer) = std::io::pipe().unwrap();
    let children: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            let command = format!(
                "i=0; while [ $i -lt 1000 ]; do echo {name}-out-$i-{padding}; echo {name}-err-$i-{padding} >&2; \
                 i=$((i+1)); done"
            );
            env.client_std()
                .args(["--CMD", &command])
                .stdout(writer.try_clone().unwrap())
                .stderr(writer.try_clone().unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    drop(writer);
    let mut all = String::new();
    reader.read_to_string(&mut all).unwrap();
    for mut child in children {
        assert!(crate::env::wait_exit(&mut child, crate::env::PROCESS_LIMIT).success());
    }
    let prefix = env.prefix();
    let mut counts = std::collections::HashMap::new();
    for line in all.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            assert!(line.starts_with("lrpymrpc: "), "a spliced or split line: {line:?}");
            continue;
        };
        if rest.starts_with("one-") || rest.starts_with("two-") {
            let (kind, tail) = rest.split_at(8);
            let number = tail.strip_suffix(&format!("-{padding}"));
            assert!(number.is_some_and(|n| n.parse::<u32>().is_ok()), "a spliced or split line: {line:?}");
            *counts.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    for kind in ["one-out", "one-err", "two-out", "two-err"] {
        assert_eq!(counts.get(&format!("{kind}-")).copied(), Some(1000), "{kind}: {counts:?}");
    }
}
