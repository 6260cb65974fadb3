//! What an administrator deploys (issue 18): the server's config file (every key an
//! option, the command line wins, mistakes named by file and key), `check-config`, and
//! the example systemd unit as `systemd-analyze verify` sees it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{PROCESS_LIMIT, TestEnv, output_within, spawn_server_binary};

const SERVER: &str = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The example config file with this test's paths, the sandbox off (it has tests of its
/// own) and no allow-list.
pub(crate) fn example_config(env: &TestEnv) -> String {
    std::fs::read_to_string(repo_file("examples/server/lrpymrpc-server.toml"))
        .unwrap()
        .replace("/var/lib/lrpymrpc/jobs", &env.jobs.display().to_string())
        .replace("/etc/lrpymrpc/tls", &env.tls.display().to_string())
        .replace("sandbox = true", "sandbox = false")
        .replace("allow-cn = [\"alice\", \"bob\"]", "")
}

fn check_config(path: &Path) -> std::process::Output {
    output_within(Command::new(SERVER).arg("check-config").arg(path), PROCESS_LIMIT)
}

#[test]
fn check_config_passes_the_example_and_names_what_is_wrong() {
    let env = TestEnv::bare();
    let good = env.root.path().join("server.toml");
    std::fs::write(&good, example_config(&env)).unwrap();
    let checked = check_config(&good);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(stdout.contains("is valid") && stdout.contains("action cache: on"), "{stdout}");
    // An offline server's pip sources are shown; a wheelhouse that is not there is named.
    let wheelhouse = env.root.path().join("wheelhouse");
    std::fs::create_dir_all(&wheelhouse).unwrap();
    let offline = env.root.path().join("offline.toml");
    let pip = format!("pip-find-links = [\"{}\"]\npip-no-index = true\n", wheelhouse.display());
    std::fs::write(&offline, format!("{}{pip}", example_config(&env))).unwrap();
    let checked = check_config(&offline);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}{}", String::from_utf8_lossy(&checked.stderr));
    let shown = format!("pip:     index none (offline); wheelhouses: {}", wheelhouse.display());
    assert!(stdout.contains(&shown), "{stdout}");
    std::fs::write(&offline, format!("{}{}", example_config(&env), pip.replace("wheelhouse", "no-wheelhouse")))
        .unwrap();
    let checked = check_config(&offline);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !checked.status.success() && stderr.contains("--pip-find-links") && stderr.contains("no-wheelhouse"),
        "{stderr}"
    );
    // An action-cache tool that cannot run would fingerprint its own error: refused.
    let typo = env.root.path().join("typo.toml");
    std::fs::write(&typo, format!("{}action-cache-tool = [\"ngspce-lrpymrpc --version\"]\n", example_config(&env)))
        .unwrap();
    let checked = check_config(&typo);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !checked.status.success() && stderr.contains("--action-cache-tool `ngspce-lrpymrpc --version` failed"),
        "{stderr}"
    );
    std::fs::write(&typo, format!("{}action-cache-tool = [\"echo ngspice-39\"]\n", example_config(&env))).unwrap();
    let checked = check_config(&typo);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && stdout.contains("action cache tools: ") && stdout.contains("(1 command, 0 paths)"),
        "{stdout}"
    );
    let cases = [
        ("max-job = 4\n", "`max-job` is not an option"),
        ("max-jobs = \"many\"\n", "many"),
        ("[limits]\nmax-jobs = 4\n", "`limits`"),
        ("tls-dir = \"/nonexistent/tls\"\n", "tls-dir"),
        (&format!("root = \"{}\"\n", env.root.path().join("missing").display()), "missing"),
    ];
    for (text, named) in cases {
        let bad = env.root.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let checked = check_config(&bad);
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert!(!checked.status.success(), "{text}: accepted");
        assert!(stderr.contains("bad.toml") && stderr.contains(named), "{text}: {stderr}");
    }
}

/// A trivial job against the server on `port`.
fn job_on(env: &TestEnv, port: u16) -> std::process::Output {
    let mut client = Command::new(crate::env::CLIENT);
    client
        .current_dir(&env.work)
        .env("LRPYMRPC_CONFIG", "")
        .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &port.to_string(), "--CMD", "true"])
        .arg("--TLS_CONFIG_DIR")
        .arg(&env.tls);
    output_within(&mut client, PROCESS_LIMIT)
}

#[test]
fn the_server_reads_its_config_file_and_the_command_line_wins() {
    let env = TestEnv::bare();
    let config = env.root.path().join("server.toml");
    std::fs::write(&config, "allow-cn = [\"somebody-else\"]\nmax-jobs = 4\n").unwrap();
    let (mut server, port) = spawn_server_binary(&env, &["--config", config.to_str().unwrap()]);
    let refused = job_on(&env, port);
    assert!(!refused.status.success(), "the file's allow-list applies");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("e2e-user"), "{refused:?}");
    let _ = server.kill();
    let _ = server.wait();
    let (mut server, port) =
        spawn_server_binary(&env, &["--config", config.to_str().unwrap(), "--allow-cn", "e2e-user"]);
    let allowed = job_on(&env, port);
    assert!(
        allowed.status.success(),
        "the command line's allow-list wins: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let analyze = crate::env::tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    // verify insists the program exists: the one this test suite built stands in.
    let unit = std::fs::read_to_string(repo_file("examples/server/lrpymrpc-server.service"))
        .unwrap()
        .replace("/usr/local/bin/lrpymrpc-server", SERVER);
    let path = dir.path().join("lrpymrpc-server.service");
    std::fs::write(&path, unit).unwrap();
    let verified = output_within(Command::new(analyze).args(["verify", "--man=no"]).arg(&path), PROCESS_LIMIT);
    let said = format!("{}{}", String::from_utf8_lossy(&verified.stdout), String::from_utf8_lossy(&verified.stderr));
    assert!(verified.status.success() && said.trim().is_empty(), "{said}");
}

// A TLS directory without the server's files: the OS error said once, and where the
// files come from.
#[test]
fn a_tls_dir_without_the_servers_files_is_said_once_with_the_fix() {
    let env = TestEnv::bare();
    let wrong = env.tls.join("server");
    let output = output_within(
        Command::new(SERVER).args(["--listen", "127.0.0.1:0", "--root"]).arg(&env.jobs).arg("--tls-dir").arg(&wrong),
        PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(stderr.contains("hint: name the directory `lrpymrpc-server ca init DIR` wrote"), "{stderr}");
}
