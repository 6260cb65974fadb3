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

// A port another program holds and a job root that is not there: each said with the
// fix, and the server does not start.
#[test]
fn a_busy_port_and_a_missing_root_are_said_with_the_fix() {
    let env = TestEnv::bare();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let output = output_within(
        Command::new(SERVER).args(["--listen", &format!("127.0.0.1:{port}"), "--root"]).arg(&env.jobs),
        PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on `127.0.0.1:{port}`: Address already in use")), "{stderr}");
    assert!(stderr.contains("hint: another program (another server?) listens there"), "{stderr}");
    assert!(stderr.contains(&format!("sport = :{port}")), "{stderr}");

    let missing = env.root.path().join("no-jobs-here");
    let output =
        output_within(Command::new(SERVER).args(["--listen", "127.0.0.1:0", "--root"]).arg(&missing), PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("--root `{}` does not exist", missing.display())), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hint: make it for the user the server runs as (`install -d -m 0700 {}`)",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}

/// The server binary as user `nobody`, as a unit's `User=` would start it.
fn server_as_nobody(args: &[&std::ffi::OsStr]) -> Command {
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        crate::env::needed("root (the test starts the server as user `nobody`)", "run the suite as root, as CI does");
    }
    let mut command = Command::new(SERVER);
    command.args(args).uid(NOBODY).gid(NOBODY);
    command
}

const NOBODY: u32 = 65534;

// A server key the service's user cannot read (made by `ca init` as root, mode 0600):
// the server names the key's owner and the user it runs as, and the fix it gives,
// `ca init --owner`, makes a directory that user's server starts from.
#[test]
fn a_key_the_service_user_cannot_read_is_said_with_both_users_and_ca_init_owner_fixes_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::bare();
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let jobs = env.root.path().join("nobodys-jobs");
    std::fs::create_dir(&jobs).unwrap();
    std::os::unix::fs::chown(&jobs, Some(NOBODY), Some(NOBODY)).unwrap();
    let init = |dir: &Path, owner: Option<&str>| {
        let mut command = Command::new(SERVER);
        command.args(["ca", "init"]).arg(dir).args(["--san", "127.0.0.1"]);
        if let Some(owner) = owner {
            command.args(["--owner", owner]);
        }
        let out = output_within(&mut command, PROCESS_LIMIT);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let serve = |dir: &Path| {
        let listen = std::ffi::OsStr::new("--listen");
        let mut command = server_as_nobody(&[
            listen,
            "127.0.0.1:0".as_ref(),
            "--root".as_ref(),
            jobs.as_os_str(),
            "--tls-dir".as_ref(),
            dir.as_os_str(),
        ]);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };

    let root_owned = env.root.path().join("tls-as-root");
    init(&root_owned, None);
    let out = crate::env::child_output_within(serve(&root_owned), PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let key = root_owned.join("server/server.key");
    assert!(
        stderr.contains(&format!(
            "the server cannot read `{}`: it is owned by `root` with mode 0600, and the server runs as `nobody`",
            key.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: give it to that user (`chown nobody"), "{stderr}");
    assert!(stderr.contains("ca init DIR --san NAME --owner nobody`"), "{stderr}");

    let given = env.root.path().join("tls-for-nobody");
    assert!(init(&given, Some("nobody")).contains("the server key belongs to `nobody`"));
    let mut server = serve(&given);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut first).unwrap();
    server.kill().unwrap();
    let rest = crate::env::child_output_within(server, PROCESS_LIMIT);
    assert!(first.starts_with("listening on 127.0.0.1:"), "{first:?} {}", String::from_utf8_lossy(&rest.stderr));
    // The CA key stays with whoever made the CA.
    let ca_key = std::fs::metadata(lrpymrpc_certs::layout::ca_key(&given)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&ca_key), 0);

    // An owner that does not exist is refused before anything is written.
    let nowhere = env.root.path().join("tls-for-nobody-known");
    let out = output_within(
        Command::new(SERVER).args(["ca", "init"]).arg(&nowhere).args([
            "--san",
            "127.0.0.1",
            "--owner",
            "no-such-user-x",
        ]),
        PROCESS_LIMIT,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--owner no-such-user-x: there is no user `no-such-user-x`"));
    assert!(!nowhere.exists() && !lrpymrpc_certs::layout::ca_private_dir(&nowhere).exists());
}

// Two servers on one root would take each other's jobs for left behind: the second is
// refused before it listens, naming the first; once the first is gone, a server starts.
#[test]
fn a_second_server_on_the_same_root_is_refused_naming_the_first() {
    let env = TestEnv::bare();
    let (mut first, _) = spawn_server_binary(&env, &[]);
    let output = output_within(
        Command::new(SERVER).args(["--listen", "127.0.0.1:0", "--root"]).arg(&env.jobs).arg("--tls-dir").arg(&env.tls),
        PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !String::from_utf8_lossy(&output.stdout).contains("listening on"), "{stderr}");
    assert!(stderr.contains(&format!("is in use by another lrpymrpc-server (pid {})", first.id())), "{stderr}");
    assert!(stderr.contains("hint: give each server a --root of its own"), "{stderr}");
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut second, _) = spawn_server_binary(&env, &[]);
    second.kill().unwrap();
    second.wait().unwrap();
}
