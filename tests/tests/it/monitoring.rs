//! Observability end to end (issue 19): the metrics endpoint counts what a job did and
//! leaks nothing of it (no CMD, no job id), answers nothing but `GET /metrics`; the
//! gRPC health service says SERVING, then NOT_SERVING while the server drains, and
//! answers a client without a certificate only with `--health-without-auth`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lrpymrpc_certs::layout;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::env::{PROCESS_LIMIT, TestEnv, wait_until};

/// A free loopback address for the metrics endpoint.
pub(crate) fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One HTTP request; the whole response. The server binds the endpoint as it starts,
/// so the first connection may have to wait for it.
fn http(address: SocketAddr, request: &str) -> String {
    let mut connected = None;
    wait_until(Duration::from_secs(10), "the metrics endpoint to listen", || {
        connected = TcpStream::connect(address).ok();
        connected.is_some()
    });
    let mut stream = connected.unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

pub(crate) fn scrape(address: SocketAddr) -> String {
    http(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// The value of the series `name` (with its labels, as exposed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_job_moves_the_counters_and_the_endpoint_leaks_no_cmd_or_job_id() {
    let metrics = free_address();
    let env = TestEnv::configured(|config| config.metrics_listen = Some(metrics));
    let before = scrape(metrics);
    assert!(before.starts_with("HTTP/1.1 200 OK\r\n"), "{before}");
    assert_eq!(value(&before, "lrpymrpc_jobs_finished_total{outcome=\"success\"}"), 0.0);
    env.write("source/input.txt", "input\n");
    let output = env
        .client()
        .args(["--RESULT", "build", "--CMD", "echo secret-command-text; mkdir build; cp source/input.txt build/"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let id = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.split_once("unique id=").map(|(_, id)| id.to_string()))
        .unwrap();
    env.client().args(["--CMD", "exit 4"]).assert().code(4);
    // A connection that is no TLS client: a refused handshake.
    let mut garbage = TcpStream::connect(env.addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    drop(garbage);
    let mut text = String::new();
    wait_until(PROCESS_LIMIT, "the refused handshake counted", || {
        text = scrape(metrics);
        value(&text, "lrpymrpc_refusals_total{reason=\"handshake\"}") >= 1.0
    });
    assert_eq!(value(&text, "lrpymrpc_jobs_finished_total{outcome=\"success\"}"), 1.0, "{text}");
    assert_eq!(value(&text, "lrpymrpc_jobs_finished_total{outcome=\"failure\"}"), 1.0, "{text}");
    assert!(value(&text, "lrpymrpc_uploaded_bytes_total") > 0.0, "{text}");
    assert!(value(&text, "lrpymrpc_downloaded_bytes_total") > 0.0, "{text}");
    for step in ["upload", "command", "download"] {
        let count = value(&text, &format!("lrpymrpc_step_duration_seconds_count{{step=\"{step}\"}}"));
        assert!(count >= 1.0, "{step}: {text}");
    }
    assert!(value(&text, "lrpymrpc_store_files_total{event=\"missing\"}") >= 1.0, "{text}");
    assert!(value(&text, "lrpymrpc_store_bytes") > 0.0, "{text}");
    assert_eq!(value(&text, "lrpymrpc_jobs_running"), 0.0);
    assert!(!text.contains("secret-command-text") && !text.contains(&id), "{text}");
    assert!(!text.contains("e2e-user"), "no CN without --metrics-per-cn: {text}");
    // Nothing but GET /metrics; an endless request head is cut off (431).
    assert!(http(metrics, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(metrics, "DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let flood = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 * 1024));
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(flood.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431") && !answer.contains("lrpymrpc_"),
        "an oversized request is refused as such, with no metrics: {answer}"
    );
}

#[test]
fn finished_jobs_are_counted_per_cn_only_when_asked() {
    let metrics = free_address();
    let env = TestEnv::configured(|config| {
        config.metrics_listen = Some(metrics);
        config.metrics_per_cn = true;
    });
    env.client().args(["--CMD", "true"]).assert().success();
    let text = scrape(metrics);
    assert_eq!(value(&text, "lrpymrpc_jobs_finished_by_cn_total{cn=\"e2e-user\",outcome=\"success\"}"), 1.0, "{text}");
}

/// A health client over mutual TLS (or with no client certificate at all).
async fn health(env_addr: SocketAddr, tls: &std::path::Path, with_identity: bool) -> Result<ServingStatus, String> {
    let files = layout::client_nested(tls);
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
        .domain_name("localhost");
    if with_identity {
        config = config.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{env_addr}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|status| format!("{status:?}"))?;
    Ok(answer.into_inner().status())
}

#[test]
fn health_says_serving_then_not_serving_while_the_server_drains() {
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    assert_eq!(env.runtime().block_on(health(addr, &tls, true)), Ok(ServingStatus::Serving));
    // Without --health-without-auth, no certificate, no answer (the handshake fails).
    assert!(env.runtime().block_on(health(addr, &tls, false)).is_err());
    // A job that runs a while keeps the draining server up.
    let (job, job_out) = crate::env::started_client(&env, &["--CMD", "echo started; sleep 4"]);
    env.begin_shutdown();
    let mut status = Ok(ServingStatus::Serving);
    wait_until(Duration::from_secs(3), "NOT_SERVING while draining", || {
        status = env.runtime().block_on(health(addr, &tls, true));
        status == Ok(ServingStatus::NotServing)
    });
    drop(job_out);
    let output = crate::env::child_output_within(job, PROCESS_LIMIT);
    assert!(output.status.success(), "the running job finishes");
}

#[test]
fn health_without_auth_answers_a_client_without_a_certificate_and_nothing_else_does() {
    let mut env = TestEnv::configured(|config| config.health_without_auth = true);
    let (addr, tls) = (env.addr, env.tls.clone());
    assert_eq!(env.runtime().block_on(health(addr, &tls, false)), Ok(ServingStatus::Serving));
    // The same connection without a certificate gets nothing else.
    let files = layout::client_nested(&tls);
    let refused = env.runtime().block_on(async move {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut extensions = lrpymrpc_proto::v1::extensions_client::ExtensionsClient::new(channel.clone());
        let capabilities = extensions.capabilities(lrpymrpc_proto::v1::CapabilitiesRequest::default()).await;
        let mut client = lrpymrpc_proto::file_service_client::FileServiceClient::new(channel);
        let check = lrpymrpc_proto::CheckRequest { unique_id: uuid_zero(), result_dir: "x".into() };
        (client.check(check).await.unwrap_err(), capabilities.unwrap_err())
    });
    let (refused, capabilities) = refused;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(capabilities.code(), tonic::Code::Unauthenticated, "no limits or load without a certificate");
    // And a job with a certificate still runs.
    env.client().args(["--CMD", "true"]).assert().success();
}

fn uuid_zero() -> String {
    "00000000-0000-0000-0000-000000000000".into()
}

// Jobs whose pip failed end without their clients coming back for results: a draining
// server does not wait its whole grace for them (it waited 30 s with `active=2` and
// nothing running).
#[test]
fn a_draining_server_does_not_wait_for_jobs_whose_clients_are_gone() {
    let mut env = TestEnv::bare();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &["--shutdown-grace", "120s"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    for _ in 0..2 {
        env.client()
            .args(["--REPO_URL", "missing=./no-such-wheel-1.0-py3-none-any.whl", "--CMD", "true"])
            .assert()
            .failure()
            .stderr(predicates::str::contains("pip"));
    }
    crate::env::send_signal(&server, libc::SIGTERM);
    let status = crate::env::wait_exit(&mut server, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    assert!(log.contains("shutting down: no new jobs"), "{log}");
    assert!(!log.contains("shutdown grace over"), "it did not wait out its grace: {log}");
}
