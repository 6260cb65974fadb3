//! Our extension service: the capabilities call every session starts with, what it
//! answers, what a legacy server answers, and what `tls check` makes of it.

use lrpymrpc_proto::v1::CapabilitiesRequest;
use lrpymrpc_proto::v1::extensions_client::ExtensionsClient;
use predicates::prelude::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::env::TestEnv;

/// The capabilities call over the fixture's mutual TLS, as the fixture's user.
fn capabilities(env: &mut TestEnv) -> Result<lrpymrpc_proto::v1::CapabilitiesResponse, tonic::Status> {
    let files = lrpymrpc_certs::layout::client_nested(&env.tls);
    let addr = env.addr;
    env.runtime().block_on(async move {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
            .identity(Identity::from_pem(std::fs::read(&files.cert).unwrap(), std::fs::read(&files.key).unwrap()))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config).unwrap();
        let mut client = ExtensionsClient::new(endpoint.connect().await.unwrap());
        client.capabilities(CapabilitiesRequest { client_protocol: 1 }).await.map(tonic::Response::into_inner)
    })
}

#[test]
fn the_server_says_what_it_can_do_and_who_the_caller_is() {
    let mut env = TestEnv::configured(|config| config.max_jobs = 3);
    let answer = capabilities(&mut env).unwrap();
    assert_eq!(answer.protocol, 1);
    assert!(answer.server.starts_with("lrpymrpc-server "), "{answer:?}");
    let features = answer.features.unwrap();
    assert!(features.exit_status && features.executor == "local", "{features:?}");
    let load = answer.load.unwrap();
    assert_eq!((load.max_jobs, load.free_slots, load.running_jobs, load.draining), (3, 3, 0, false));
    let caller = answer.caller.unwrap();
    assert_eq!((caller.cn.as_str(), caller.allowed), ("e2e-user", true));
    assert!(answer.limits.unwrap().max_message_bytes >= 1 << 20);
}

#[test]
fn a_cn_the_allow_list_refuses_is_told_so_and_tls_check_says_it() {
    let mut env = TestEnv::configured(|config| config.allowed_cns = Some(["someone-else".to_string()].into()));
    let caller = capabilities(&mut env).unwrap().caller.unwrap();
    assert_eq!((caller.cn.as_str(), caller.allowed), ("e2e-user", false));
    assert!(caller.refusal.contains("not allowed"), "{caller:?}");
    env.bare_client()
        .args(["tls", "check", "--server", &format!("127.0.0.1:{}", env.addr.port()), "--dir"])
        .arg(&env.tls)
        .assert()
        .code(102)
        .stdout(predicate::str::contains("does not let CN=e2e-user run jobs"))
        .stdout(predicate::str::contains("usable: yes").not());
}

#[test]
fn a_legacy_server_answers_unimplemented_and_jobs_still_run() {
    let mut env = TestEnv::legacy();
    let status = capabilities(&mut env).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    env.write("source/x", "x");
    env.client().args(["--CMD", "true"]).assert().success();
}
