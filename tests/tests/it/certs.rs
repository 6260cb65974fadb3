//! Certificate bootstrap end to end: `lrpymrpc tls init` -> `lrpymrpc-mock-server ca
//! init` / `ca sign` -> a job over mutual TLS with those files; `lrpymrpc tls check`
//! catching each kind of problem with its own message.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;
use lrpymrpc_certs::{Ca, layout, write_pair, write_public};
use lrpymrpc_mock_server::{Config, TlsMaterial};
use predicates::prelude::*;

use crate::env::TestEnv;

const SERVER: &str = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");

fn server_command() -> Command {
    Command::new(SERVER)
}

/// A user's directory made by `tls init` and filled with what `ca sign` returned.
fn bootstrap(env: &TestEnv, admin: &Path, user: &Path) {
    server_command()
        .args(["ca", "init"])
        .arg(admin)
        .args(["--san", "127.0.0.1", "--san", "localhost"])
        .assert()
        .success()
        .stdout(predicate::str::contains("give users:"));
    env.bare_client()
        .args(["tls", "init", "--cn", "alice", "--dir"])
        .arg(user)
        .assert()
        .success()
        .stdout(predicate::str::contains("client.csr"))
        .stdout(predicate::str::contains("ca sign"));
    let key = layout::client_nested(user).key;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let signed = env.root.path().join("alice.crt");
    server_command()
        .args(["ca", "sign"])
        .arg(user.join("client/client.csr"))
        .arg("--ca")
        .arg(admin)
        .args(["--days", "30", "--out"])
        .arg(&signed)
        .assert()
        .success()
        .stdout(predicate::str::contains("CN=alice"))
        .stdout(predicate::str::contains("sha256:"));
    std::fs::copy(&signed, layout::client_nested(user).cert).unwrap();
    std::fs::create_dir_all(user.join("ca")).unwrap();
    std::fs::copy(layout::ca_cert(admin), layout::client_nested(user).ca).unwrap();
}

fn serve_from(env: TestEnv, admin: &Path) -> TestEnv {
    let tls = TlsMaterial::from_dir(admin).unwrap();
    let jobs = env.jobs.clone();
    env.serve(Config::new(jobs, Some(tls)))
}

#[test]
fn tls_init_then_ca_sign_gives_files_a_real_job_runs_with() {
    let env = TestEnv::bare();
    let (admin, user) = (env.root.path().join("admin"), env.root.path().join("user"));
    bootstrap(&env, &admin, &user);
    let env = serve_from(env, &admin);
    env.write("source/x", "x");
    let port = env.addr.port().to_string();
    env.bare_client()
        .args(["--SERVER_PORT", &port, "--CMD", "echo hello alice", "--TLS_CONFIG_DIR"])
        .arg(&user)
        .assert()
        .success()
        .stdout(predicate::str::contains("hello alice"));
    env.bare_client()
        .args(["tls", "check", "--server", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&user)
        .assert()
        .success()
        .stdout(predicate::str::contains("CN=alice"))
        .stdout(predicate::str::contains("accepts this client certificate"))
        .stdout(predicate::str::contains("usable: yes"));
    // A second init would destroy the key the certificate belongs to.
    env.bare_client()
        .args(["tls", "init", "--cn", "alice", "--dir"])
        .arg(&user)
        .assert()
        .code(101)
        .stderr(predicate::str::contains("refusing to replace a private key"))
        .stderr(predicate::str::contains("hint: add --force"));
    // And the administrator's CA is not replaced by accident either.
    server_command().args(["ca", "init"]).arg(&admin).args(["--san", "x"]).assert().failure();
}

#[test]
fn ca_sign_refuses_a_malformed_request() {
    let env = TestEnv::bare();
    let admin = env.root.path().join("admin");
    server_command().args(["ca", "init"]).arg(&admin).args(["--san", "127.0.0.1"]).assert().success();
    let csr = env.root.path().join("bad.csr");
    std::fs::write(&csr, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n").unwrap();
    server_command()
        .args(["ca", "sign"])
        .arg(&csr)
        .arg("--ca")
        .arg(&admin)
        .assert()
        .failure()
        .stderr(predicate::str::contains("bad.csr"))
        .stderr(predicate::str::contains("not a well-formed CSR"));
    assert!(!csr.with_extension("crt").exists());
}

/// `tls check` on the fixture's client directory after `spoil` changed it.
fn check_spoiled(spoil: impl FnOnce(&TestEnv, &Path)) -> assert_cmd::assert::Assert {
    let env = TestEnv::bare();
    let user = env.root.path().join("user");
    std::fs::create_dir_all(&user).unwrap();
    let fixture = layout::client_nested(&env.tls);
    let mine = layout::client_nested(&user);
    std::fs::create_dir_all(mine.key.parent().unwrap()).unwrap();
    std::fs::create_dir_all(mine.ca.parent().unwrap()).unwrap();
    for (from, to) in [(&fixture.key, &mine.key), (&fixture.cert, &mine.cert), (&fixture.ca, &mine.ca)] {
        std::fs::copy(from, to).unwrap();
    }
    spoil(&env, &user);
    env.bare_client().args(["tls", "check", "--local-only", "--dir"]).arg(&user).assert()
}

#[test]
fn tls_check_names_a_key_that_does_not_match() {
    check_spoiled(|_, user| {
        let other = Ca::new("other").unwrap().issue_client("alice").unwrap();
        write_public(&layout::client_nested(user).key, &other.key_pem).unwrap();
    })
    .code(101)
    .stdout(predicate::str::contains("does not belong to the key"));
}

#[test]
fn tls_check_names_a_certificate_from_a_foreign_ca() {
    check_spoiled(|_, user| {
        let foreign = Ca::new("foreign CA").unwrap().issue_client("alice").unwrap();
        let files = layout::client_nested(user);
        write_pair(&foreign, &files.cert, &files.key).unwrap();
    })
    .code(101)
    .stdout(predicate::str::contains("is not signed by the CA in"))
    .stdout(predicate::str::contains("ok: ").and(predicate::str::contains("belongs to")));
}

#[test]
fn tls_check_names_an_expired_certificate() {
    check_spoiled(|env, user| {
        let ca_pair = std::fs::read_to_string(layout::ca_cert(&env.tls)).unwrap();
        let ca_key = std::fs::read_to_string(layout::ca_key(&env.tls)).unwrap();
        let ca = Ca::load(&env.tls).unwrap();
        assert!(ca.pair.cert_pem == ca_pair && ca.pair.key_pem == ca_key);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = ca.issue(params).unwrap();
        let files = layout::client_nested(user);
        write_pair(&expired, &files.cert, &files.key).unwrap();
    })
    .code(101)
    .stdout(predicate::str::contains("expired on 2021-01-01"))
    .stdout(predicate::str::contains("hint: send a new CSR"));
}

#[test]
fn tls_check_and_a_job_name_the_server_certificate_names_when_the_dialled_one_is_missing() {
    let env = TestEnv::bare();
    let ca = Ca::load(&env.tls).unwrap();
    let localhost_only = ca.issue_server(&["localhost".to_string()]).unwrap();
    write_pair(&localhost_only, &layout::server_cert(&env.tls), &layout::server_key(&env.tls)).unwrap();
    let tls = TlsMaterial::from_dir(&env.tls).unwrap();
    let jobs = env.jobs.clone();
    let env = env.serve(Config::new(jobs, Some(tls)));
    let port = env.addr.port();
    env.bare_client()
        .args(["tls", "check", "--server", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&env.tls)
        .assert()
        .code(102)
        .stdout(predicate::str::contains("presented CN=localhost for localhost"))
        .stdout(predicate::str::contains("does not name `127.0.0.1`"))
        .stdout(predicate::str::contains(
            "hint: the server's certificate names `localhost`; connect by one of them, e.g. --SERVER_IP localhost",
        ));
    env.client()
        .assert()
        .code(102)
        .stderr(predicate::str::contains("hint: the server's certificate names `localhost`"));
    env.client().args(["--SERVER_IP", "localhost", "--CMD", "true"]).assert().success();
}

#[test]
fn tls_check_resolves_the_directory_and_the_server_as_a_job_does() {
    let env = TestEnv::new();
    let config = env.root.path().join("lrpymrpc.conf");
    std::fs::write(&config, format!("# the lab\nTLS_CONFIG_DIR = {}\nSERVER_IP = 127.0.0.1\n", env.tls.display()))
        .unwrap();
    env.bare_client()
        .env("LRPYMRPC_CONFIG", &config)
        .env("LRPYMRPC_SERVER_PORT", env.addr.port().to_string())
        .args(["tls", "check"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "TLS directory: {} (from config file `{}` line 2)",
            env.tls.display(),
            config.display()
        )))
        .stdout(predicate::str::contains(format!(
            "server: 127.0.0.1:{} (SERVER_IP from config file `{}` line 3, SERVER_PORT from environment \
             LRPYMRPC_SERVER_PORT)",
            env.addr.port(),
            config.display()
        )))
        .stdout(predicate::str::contains("accepts this client certificate and lets it run jobs"))
        .stdout(predicate::str::contains("usable: yes"));
    // With the server named nowhere, the job's default is checked, as a job would use it.
    let (_socket, closed) = crate::env::closed_port(false);
    env.bare_client()
        .env("LRPYMRPC_CONFIG", &config)
        .env("LRPYMRPC_SERVER_PORT", closed.port().to_string())
        .args(["tls", "check"])
        .assert()
        .code(102)
        .stdout(predicate::str::contains("usable: yes").not());
    env.bare_client()
        .env("LRPYMRPC_CONFIG", &config)
        .env("LRPYMRPC_SERVER_PORT", closed.port().to_string())
        .args(["tls", "check", "--local-only"])
        .assert()
        .success()
        .stdout(predicate::str::contains("server:").not());
}

#[test]
fn tls_check_without_a_tls_directory_points_at_tls_init() {
    let env = TestEnv::bare();
    let home = env.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    env.bare_client()
        .env("HOME", &home)
        .args(["tls", "check"])
        .assert()
        .code(101)
        .stdout(predicate::str::contains(format!(
            "there is no TLS directory at `{}`",
            home.join(".tls/tls_lrpymrpc").display()
        )))
        .stdout(predicate::str::contains("hint: make a key and a certificate request there with `lrpymrpc tls init"));
}

#[test]
fn tls_check_reads_every_certificate_of_a_ca_bundle_and_warns_about_a_readable_key() {
    check_spoiled(|env, user| {
        // A bundle: a stranger's CA first, then the one that signed the certificate.
        let stranger = Ca::new("stranger CA").unwrap();
        let ours = std::fs::read_to_string(layout::ca_cert(&env.tls)).unwrap();
        let files = layout::client_nested(user);
        std::fs::write(&files.ca, format!("{}{ours}", stranger.pair.cert_pem)).unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    })
    .success()
    .stdout(predicate::str::contains("ok: it is signed by certificate 2 of 2 in"))
    .stdout(predicate::str::contains("warning: the private key"))
    .stdout(predicate::str::contains("can be read by other users (mode 644)"))
    .stdout(predicate::str::contains("hint: chmod 600"))
    .stdout(predicate::str::contains("usable: yes"));
    check_spoiled(|_, user| {
        let files = layout::client_nested(user);
        std::fs::write(&files.ca, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    })
    .code(101)
    .stdout(predicate::str::contains("ca.crt`: it is not a well-formed certificate"));
}

#[test]
fn a_job_makes_the_local_checks_first_and_speaks_their_words() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let user = env.root.path().join("user");
    let (fixture, mine) = (layout::client_nested(&env.tls), layout::client_nested(&user));
    std::fs::create_dir_all(mine.key.parent().unwrap()).unwrap();
    std::fs::create_dir_all(mine.ca.parent().unwrap()).unwrap();
    for (from, to) in [(&fixture.key, &mine.key), (&fixture.cert, &mine.cert), (&fixture.ca, &mine.ca)] {
        std::fs::copy(from, to).unwrap();
    }
    let port = env.addr.port().to_string();
    let job = |dir: &Path| {
        let mut command = env.bare_client();
        command.args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &port, "--CMD", "echo ran", "--TLS_CONFIG_DIR"]);
        command.arg(dir);
        command
    };
    std::fs::set_permissions(&mine.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    job(&user)
        .assert()
        .success()
        .stdout(predicate::str::contains("]:ran"))
        .stderr(predicate::str::contains("can be read by other users (mode 640)"))
        .stderr(predicate::str::contains("hint: chmod 600"));
    // A key that no longer belongs to the certificate is named as such, before any connection.
    let other = Ca::new("other").unwrap().issue_client("alice").unwrap();
    write_public(&mine.key, &other.key_pem).unwrap();
    let jobs_before = env.job_dirs();
    job(&user)
        .assert()
        .code(101)
        .stderr(predicate::str::contains("does not belong to the key"))
        .stderr(predicate::str::contains("ca.crt").not())
        .stderr(predicate::str::contains("`lrpymrpc tls check` checks every file"));
    assert_eq!(env.job_dirs(), jobs_before);
}

// `--cn "$USER"` with $USER unset is a usage mistake: exit 2 with the fix, nothing
// written.
#[test]
fn an_empty_cn_is_a_usage_error_and_writes_nothing() {
    let env = TestEnv::bare();
    let dir = env.root.path().join("mine");
    env.bare_client()
        .args(["tls", "init", "--cn", "", "--dir"])
        .arg(&dir)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--cn is empty"))
        .stderr(predicate::str::contains("hint: give your user name"));
    assert!(!dir.exists(), "nothing was written");
}
