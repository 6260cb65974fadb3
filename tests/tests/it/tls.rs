//! Mutual TLS: who is refused, and that a broken TLS directory fails before any
//! connection is attempted.

use std::net::SocketAddr;
use std::path::Path;

use lrpymrpc_certs::{Throwaway, layout, loopback_names};
use lrpymrpc_proto::file_service_client::FileServiceClient;
use predicates::prelude::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::env::TestEnv;

/// A gRPC client made by hand, with or without the client certificate of `tls_dir`.
pub async fn raw_client(
    addr: SocketAddr,
    tls_dir: &Path,
    with_certificate: bool,
) -> Result<FileServiceClient<Channel>, tonic::transport::Error> {
    let files = layout::client_nested(tls_dir);
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
        .domain_name("localhost");
    if with_certificate {
        config = config
            .identity(Identity::from_pem(std::fs::read(&files.cert).unwrap(), std::fs::read(&files.key).unwrap()));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config)?.connect().await?;
    Ok(FileServiceClient::new(channel))
}

#[test]
fn refuses_a_client_without_a_certificate_before_anything_reaches_disk() {
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    let refused = env.runtime().block_on(async move {
        let mut client = match raw_client(addr, &tls, false).await {
            Ok(client) => client,
            Err(_) => return true,
        };
        let chunk = lrpymrpc_proto::DataChunk { data: b"not even an archive".to_vec() };
        client.upload(tokio_stream::iter(vec![chunk])).await.is_err()
    });
    assert!(refused, "a client without a certificate was served");
    assert!(env.job_dirs().is_empty(), "a job directory was made: {:?}", env.job_dirs());
}

#[test]
fn refuses_a_client_certificate_from_another_ca() {
    let env = TestEnv::new();
    let foreign = env.root.path().join("foreign");
    Throwaway::new("mallory", &loopback_names()).unwrap().write(&foreign).unwrap();
    // The right CA for the server, the wrong CA behind the client certificate.
    std::fs::copy(layout::ca_cert(&env.tls), layout::ca_cert(&foreign)).unwrap();
    env.write("source/x", "x");
    env.client()
        .arg("--TLS_CONFIG_DIR")
        .arg(&foreign)
        .assert()
        .code(102)
        .stderr(predicate::str::contains(format!("cannot connect to 127.0.0.1:{}", env.addr.port())));
    assert!(env.job_dirs().is_empty());
}

#[test]
fn refuses_a_server_whose_certificate_lacks_the_dialled_name() {
    let env = TestEnv::bare();
    let other = env.root.path().join("other");
    let throwaway = Throwaway::new("e2e-user", &["build-server.example".to_string()]).unwrap();
    throwaway.write(&other).unwrap();
    let tls = lrpymrpc_mock_server::TlsMaterial::from_dir(&other).unwrap();
    let jobs = env.jobs.clone();
    let env = env.serve(lrpymrpc_mock_server::Config::new(jobs, Some(tls)));
    env.client()
        .arg("--TLS_CONFIG_DIR")
        .arg(&other)
        .assert()
        .code(102)
        .stderr(predicate::str::contains("127.0.0.1"))
        .stderr(predicate::str::contains(
            "hint: the server's certificate names `build-server.example`; connect by one of them",
        ));
}

#[test]
fn a_missing_tls_file_is_refused_before_any_connection() {
    let mut env = TestEnv::bare();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    env.set_addr(listener.local_addr().unwrap());
    std::fs::remove_file(layout::client_nested(&env.tls).key).unwrap();
    env.client()
        .assert()
        .code(101)
        .stderr(predicate::str::contains("cannot read TLS file"))
        .stderr(predicate::str::contains("client/client.key"));
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client connected anyway: {accepted:?}"
    );
}

#[test]
fn reads_the_flat_tls_layout_and_expands_tilde() {
    let env = TestEnv::new();
    let home = env.root.path().join("home");
    let flat = home.join(".tls/tls_lrpymrpc");
    std::fs::create_dir_all(&flat).unwrap();
    let nested = layout::client_nested(&env.tls);
    let wanted = layout::client_flat(&flat);
    std::fs::copy(&nested.key, &wanted.key).unwrap();
    std::fs::copy(&nested.cert, &wanted.cert).unwrap();
    std::fs::copy(&nested.ca, &wanted.ca).unwrap();
    env.write("source/x", "x");
    env.client()
        .env("HOME", &home)
        .args(["--TLS_CONFIG_DIR", "~/.tls/tls_lrpymrpc", "--CMD", "true"])
        .assert()
        .success();
}

#[test]
fn an_unreachable_server_fails_with_a_hint() {
    let mut env = TestEnv::bare();
    let (_held, addr) = crate::env::closed_port(false);
    env.set_addr(addr);
    let port = env.addr.port();
    env.client()
        .args(["--retries", "0"])
        .assert()
        .code(102)
        .stderr(predicate::str::contains(format!("cannot connect to 127.0.0.1:{port}")))
        .stderr(predicate::str::contains("hint: is the server running"));
    // Every retry refused: each said as it is decided, and the end says how often.
    // The port may also be given inside --SERVER_IP, as people write addresses.
    env.bare_client()
        .args(["--retries", "2", "--CMD", "true", "--SERVER_IP", &format!("127.0.0.1:{port}"), "--TLS_CONFIG_DIR"])
        .arg(&env.tls)
        .assert()
        .code(102)
        .stderr(predicate::str::contains(format!("cannot connect to 127.0.0.1:{port}")))
        .stderr(predicate::str::contains("(tried 3 times in "))
        // Each retry is said as it happens, with the wait before it.
        .stderr(predicate::str::contains("retrying connect in 0.500 s (1 of 2 retries)"))
        .stderr(predicate::str::contains("retrying connect in 1.00 s (2 of 2 retries)"));
    env.bare_client()
        .args(["--CMD", "true", "--SERVER_IP", &format!("127.0.0.1:{port}"), "--SERVER_PORT", "9"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("names port {port}, but --SERVER_PORT says 9")));
    // A name that does not resolve is said so, once, without the resolver's wording.
    env.bare_client()
        .args(["--CMD", "true", "--SERVER_IP", "no-such-host.invalid", "--TLS_CONFIG_DIR"])
        .arg(&env.tls)
        .assert()
        .code(102)
        .stderr(predicate::str::contains("the host name `no-such-host.invalid` does not resolve to an address"))
        .stderr(predicate::str::contains("hint: check the spelling of --SERVER_IP"))
        .stderr(predicate::str::contains("dns error").not())
        .stderr(predicate::str::contains("tried").not());
    // (Spaces and commas separate a list of servers.)
    env.bare_client()
        .args(["--CMD", "true", "--SERVER_IP", "build;server"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`;` cannot be in a host name"));
}

#[test]
fn plaintext_against_tls_and_tls_against_plaintext_each_get_one_message_with_a_hint() {
    // A TLS client at a plaintext server.
    let env = TestEnv::bare();
    let jobs = env.jobs.clone();
    let env = env.serve(lrpymrpc_mock_server::Config::new(jobs, None));
    env.write("source/x", "x");
    for _ in 0..2 {
        env.client()
            .args(["--retries", "0", "--CMD", "true"])
            .assert()
            .code(102)
            .stderr(predicate::str::contains("the server did not answer in TLS"))
            .stderr(predicate::str::contains("hint: the server may speak plaintext"));
    }
    // A plaintext client at a mutual-TLS server.
    let env = TestEnv::new();
    env.write("source/x", "x");
    for _ in 0..2 {
        env.bare_client()
            .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &env.addr.port().to_string()])
            .args(["--retries", "0", "--CMD", "true"])
            .assert()
            .code(102)
            .stderr(predicate::str::contains("hint: the server may require mutual TLS: give --TLS_CONFIG_DIR"));
    }
}

// A client without --TLS_CONFIG_DIR speaks plaintext to a server that wants TLS: both
// sides say so in words (not `frame with invalid size`), and the client does not try
// again what cannot work.
#[test]
fn a_plaintext_client_and_a_tls_server_each_say_what_is_wrong() {
    let mut env = TestEnv::bare();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let output = env
        .bare_client()
        .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &port.to_string(), "--CMD", "true"])
        .output()
        .unwrap();
    crate::env::send_signal(&server, libc::SIGKILL);
    crate::env::wait_exit(&mut server, std::time::Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(102), "{stderr}");
    assert!(
        stderr.contains("it speaks TLS")
            && stderr.contains("hint: the server may require mutual TLS: give --TLS_CONFIG_DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("frame with invalid size") && !stderr.contains("tried "), "{stderr}");
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    assert!(log.contains("the client spoke plaintext, not TLS"), "{log}");
}

// `tls init` and `tls check` default to ~/.tls/tls_lrpymrpc; a job given no
// TLS_CONFIG_DIR uses that directory when it exists (the one default for all), while
// `--TLS_CONFIG_DIR ""` still means plaintext, and a directory `tls init` made but no
// administrator has signed yet says what it waits for.
#[test]
fn a_job_uses_the_default_tls_directory_when_it_exists() {
    let env = TestEnv::new();
    let port = env.addr.port().to_string();
    let server = ["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", port.as_str()];
    env.write("source/x", "x");
    let home = env.root.path().join("home");
    let default_dir = home.join(".tls/tls_lrpymrpc");
    // Without the directory, a job speaks plaintext and the server refuses it.
    env.bare_client()
        .args(server)
        .args(["--retries", "0", "--CMD", "true"])
        .assert()
        .code(102)
        .stderr(predicate::str::contains("hint: the server may require mutual TLS"));
    // `tls init` made it, but nobody has signed the request yet.
    env.bare_client().args(["tls", "init", "--cn", "alice"]).assert().success();
    env.bare_client()
        .args(server)
        .args(["--retries", "0", "--CMD", "true"])
        .assert()
        .code(101)
        .stderr(predicate::str::contains("client.crt"))
        .stderr(predicate::str::contains("(from the default TLS directory, which exists)"))
        .stderr(predicate::str::contains("is waiting to be signed: send it to the server's administrator"));
    // Signed (the test's own certificate and CA stand in for the administrator's).
    let nested = layout::client_nested(&env.tls);
    let wanted = layout::client_nested(&default_dir);
    std::fs::create_dir_all(wanted.ca.parent().unwrap()).unwrap();
    for (from, to) in [(&nested.key, &wanted.key), (&nested.cert, &wanted.cert), (&nested.ca, &wanted.ca)] {
        std::fs::copy(from, to).unwrap();
    }
    env.bare_client().arg("config").assert().success().stdout(predicate::function(|out: &str| {
        out.lines().any(|line| {
            line.starts_with("TLS_CONFIG_DIR = ~/.tls/tls_lrpymrpc ")
                && line.ends_with("# the default TLS directory, which exists")
        })
    }));
    env.bare_client()
        .args(server)
        .args(["--CMD", "echo spoke-mutual-tls"])
        .assert()
        .success()
        .stdout(predicate::str::contains("spoke-mutual-tls"));
    env.bare_client()
        .args(server)
        .args(["tls", "check"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("TLS directory: {}", default_dir.display())));
    // Given as empty, it is plaintext, as upstream's empty default always was.
    env.bare_client()
        .args(server)
        .args(["--TLS_CONFIG_DIR", "", "--retries", "0", "--CMD", "true"])
        .assert()
        .code(102)
        .stderr(predicate::str::contains("hint: the server may require mutual TLS"));
}

/// A CA named as `ca init --san 127.0.0.1` named every CA before names were unique:
/// its certificate, and a leaf certificate it signs (server or client) as (cert, key).
fn namesake_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "lrpymrpc CA 127.0.0.1");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

fn leaf_of(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, server: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = if server { vec!["127.0.0.1".to_string()] } else { Vec::new() };
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, if server { "127.0.0.1" } else { "namesake-user" });
    params.extended_key_usages = vec![match server {
        true => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        false => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    }];
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

// Two CAs made by `ca init --san 127.0.0.1` get different names, so the wrong ca.crt
// reads "not signed by the CA in ca.crt"; between two CAs of one name (made before),
// both sides say "another CA of the same name" instead of "malformed or its signature
// does not verify".
#[test]
fn two_cas_for_one_host_have_different_names_and_namesakes_are_said_as_such() {
    let env = TestEnv::bare();
    let server_binary = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    let subjects: Vec<String> = ["first", "second"]
        .iter()
        .map(|name| {
            let dir = env.root.path().join(name);
            let init = crate::env::output_within(
                std::process::Command::new(server_binary).args(["ca", "init"]).arg(&dir).args(["--san", "127.0.0.1"]),
                crate::env::PROCESS_LIMIT,
            );
            assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
            let pem = std::fs::read_to_string(layout::ca_cert(&dir)).unwrap();
            lrpymrpc_certs::inspect::Summary::from_pem(&pem).unwrap().cn.unwrap()
        })
        .collect();
    assert!(subjects[0].contains("lrpymrpc CA 127.0.0.1"), "{subjects:?}");
    assert_ne!(subjects[0], subjects[1]);

    // The server's CA and the client's ca.crt share a name, not a key.
    let (server_ca, server_ca_pem) = namesake_ca();
    let (client_ca, client_ca_pem) = namesake_ca();
    let (server_cert, server_key) = leaf_of(&server_ca, true);
    std::fs::write(layout::ca_cert(&env.tls), &server_ca_pem).unwrap();
    std::fs::write(layout::server_cert(&env.tls), server_cert).unwrap();
    std::fs::write(layout::server_key(&env.tls), server_key).unwrap();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &[]);
    let client_dir = |name: &str, ca_pem: &str| {
        let dir = env.root.path().join(name);
        let files = layout::client_nested(&dir);
        let (cert, key) = leaf_of(&client_ca, false);
        std::fs::create_dir_all(files.ca.parent().unwrap()).unwrap();
        std::fs::create_dir_all(files.cert.parent().unwrap()).unwrap();
        std::fs::write(&files.ca, ca_pem).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        lrpymrpc_certs::write_private(&files.key, &key).unwrap();
        dir
    };
    env.write("source/x", "x");
    let run = |dir: &Path| {
        env.bare_client()
            .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &port.to_string(), "--retries", "0", "--CMD", "true"])
            .arg("--TLS_CONFIG_DIR")
            .arg(dir)
            .assert()
    };
    // The client trusts its own namesake: the server's certificate is refused by name.
    run(&client_dir("trusts-the-namesake", &client_ca_pem))
        .code(102)
        .stderr(predicate::str::contains("signed by another CA of the same name"))
        .stderr(predicate::str::contains("hint: the CA was probably made again"))
        .stderr(predicate::str::contains("malformed").not());
    // The client trusts the server, but its own certificate comes from the namesake:
    // the server's log says so.
    run(&client_dir("signed-by-the-namesake", &server_ca_pem)).code(102);
    let log_path = env.root.path().join("server.log");
    crate::env::wait_until(crate::env::PROCESS_LIMIT, "the server logs the refused handshake", || {
        std::fs::read_to_string(&log_path).unwrap_or_default().contains("TLS handshake refused")
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("signed by another CA of the same name as this server's"), "{log}");
    server.kill().unwrap();
    server.wait().unwrap();
}
