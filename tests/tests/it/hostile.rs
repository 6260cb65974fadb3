//! Hostile archives in both directions: a fake server that sends crafted results, and
//! crafted uploads to the reference server. Nothing may land outside its destination.

use std::pin::Pin;

use lrpymrpc_archive::testing::{Expect, file, gzip, hostile_cases, symlink, tar_bytes};
use lrpymrpc_proto::file_service_server::{FileService, FileServiceServer};
use lrpymrpc_proto::{
    CheckRequest, CheckResponse, DataChunk, DownloadRequest, ExecuteRequest, ExecuteResponse, UploadResponse,
};
use predicates::prelude::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::env::{TestEnv, names_in};

/// A server that runs nothing and answers every Download with `archive`.
struct CraftedResults {
    archive: Vec<u8>,
}

type Chunks = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;
type Lines = Pin<Box<dyn Stream<Item = Result<ExecuteResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FileService for CraftedResults {
    async fn upload(&self, request: Request<Streaming<DataChunk>>) -> Result<Response<UploadResponse>, Status> {
        let mut stream = request.into_inner();
        while stream.message().await?.is_some() {}
        Ok(Response::new(UploadResponse { unique_id: "00000000-0000-4000-8000-000000000001".into() }))
    }

    type ExecuteStream = Lines;
    async fn execute(&self, _: Request<ExecuteRequest>) -> Result<Response<Lines>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse { has_stream: true, ..Default::default() }))
    }

    type DownloadStream = Chunks;
    async fn download(&self, _: Request<DownloadRequest>) -> Result<Response<Chunks>, Status> {
        let chunks: Vec<_> = self.archive.chunks(1000).map(|c| Ok(DataChunk { data: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// A fixture whose server is [`CraftedResults`] with mutual TLS.
pub fn fake_server_sending(archive: Vec<u8>) -> TestEnv {
    fake_server_for(|_| archive)
}

/// The same, with an archive made knowing the fixture's paths.
fn fake_server_for(make: impl FnOnce(&TestEnv) -> Vec<u8>) -> TestEnv {
    let mut env = TestEnv::bare();
    let archive = make(&env);
    serve_fake(&mut env, CraftedResults { archive });
    env
}

/// Serves `service` for the fixture with its mutual TLS, and points the client at it.
pub fn serve_fake<S>(env: &mut TestEnv, service: S)
where
    S: FileService,
{
    let tls = lrpymrpc_mock_server::TlsMaterial::from_dir(&env.tls).unwrap();
    let listener = env.runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    env.runtime().spawn(async move {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(tonic::transport::Certificate::from_pem(tls.client_ca_pem));
        tonic::transport::Server::builder()
            .tls_config(config)
            .unwrap()
            .add_service(FileServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    env.set_addr(addr);
}

/// The canary beside the working directory, to check nothing was written outside.
pub fn plant_canary(env: &TestEnv) -> std::path::PathBuf {
    let canary = env.root.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("keep"), "untouched").unwrap();
    canary
}

pub fn assert_canary_untouched(canary: &std::path::Path) {
    assert_eq!(names_in(canary), ["keep"]);
    assert_eq!(std::fs::read_to_string(canary.join("keep")).unwrap(), "untouched");
}

#[test]
fn refuses_result_entries_that_climb_out_and_writes_nothing() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("../canary/evil", gzip(&tar_bytes(&[file("build/ok", "fine"), file("../canary/evil", "evil")]))),
        ("/tmp/evil-absolute", gzip(&tar_bytes(&[file("/tmp/evil-absolute", "evil")]))),
        ("build/l", gzip(&tar_bytes(&[symlink("build/l", "../../canary"), file("build/l/evil", "evil")]))),
    ];
    for (entry, archive) in cases {
        let env = fake_server_sending(archive);
        let canary = plant_canary(&env);
        env.write("source/x", "x");
        env.write("build/previous", "earlier result");
        env.client().assert().code(105).stderr(predicate::str::contains(format!("archive entry `{entry}` refused")));
        assert_canary_untouched(&canary);
        assert_eq!(names_in(&env.work), ["build", "source"], "staging or partial results left");
        assert_eq!(names_in(&env.work.join("build")), ["previous"], "a refused download changed the results");
        assert!(!std::path::Path::new("/tmp/evil-absolute").exists());
    }
}

#[test]
fn a_server_that_reports_no_exit_status_still_completes_the_job() {
    // CraftedResults knows nothing of the exit-status extension, like the Python server.
    let env = fake_server_sending(gzip(&tar_bytes(&[file("build/out", "result")])));
    env.write("source/x", "x");
    env.client()
        .assert()
        .success()
        .stderr(predicate::str::contains("the server does not report the command's exit status").count(1));
    assert_eq!(env.read("build/out"), b"result");
}

#[test]
fn refuses_a_truncated_result_archive_and_keeps_earlier_results() {
    let whole = gzip(&tar_bytes(&[file("build/big", &"y".repeat(50_000))]));
    let env = fake_server_sending(whole[..whole.len() / 2].to_vec());
    env.write("source/x", "x");
    env.write("build/big", "earlier");
    env.client().assert().code(105).stderr(predicate::str::contains("malformed archive"));
    assert_eq!(env.read("build/big"), b"earlier");
    assert_eq!(names_in(&env.work), ["build", "source"]);
}

#[test]
fn a_result_link_to_a_server_secret_ships_no_bytes() {
    let env = TestEnv::new();
    let secret = env.root.path().join("server-secret");
    std::fs::write(&secret, "TOP-SECRET-KEY").unwrap();
    env.write("source/x", "x");
    env.client()
        .args(["--RESULT", "build", "--CMD"])
        .arg(format!("mkdir build && ln -s {} build/leak", secret.display()))
        .assert()
        .code(105)
        .stdout(predicate::str::contains("TOP-SECRET-KEY").not())
        .stderr(predicate::str::contains("archive entry `build/leak` refused"))
        .stderr(predicate::str::contains("absolute path"));
    assert!(!env.work.join("build").exists());
}

#[test]
fn the_server_refuses_hostile_uploads_and_leaves_no_job_directory() {
    let archives = [
        gzip(&tar_bytes(&[file("../escape", "evil")])),
        gzip(&tar_bytes(&[symlink("l", "/etc"), file("l/passwd", "evil")])),
        b"definitely not gzip".to_vec(),
    ];
    for archive in archives {
        let mut env = TestEnv::new();
        let canary = plant_canary(&env);
        let (addr, tls) = (env.addr, env.tls.clone());
        let status = env.runtime().block_on(async move {
            let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
            let chunks: Vec<_> = archive.chunks(100).map(|c| DataChunk { data: c.to_vec() }).collect();
            client.upload(tokio_stream::iter(chunks)).await.unwrap_err()
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(env.job_dirs().is_empty(), "job directory left: {:?}", env.job_dirs());
        assert_canary_untouched(&canary);
        assert!(!env.root.path().join("escape").exists());
    }
}

/// Every archive case of SECURITY.md, from a fake server to the real client: refused
/// (exit 105) or contained, the canary untouched, earlier results kept, nothing left.
#[test]
fn every_hostile_archive_case_against_the_client() {
    let count = hostile_cases("/nowhere").len();
    for index in 0..count {
        let mut name = String::new();
        let mut expect = Expect::Refused;
        let env = fake_server_for(|env| {
            let canary = env.root.path().join("canary");
            let case = hostile_cases(canary.to_str().unwrap()).swap_remove(index);
            (name, expect) = (case.name, case.expect);
            case.archive
        });
        let canary = plant_canary(&env);
        env.write("source/x", "x");
        env.write("earlier/result", "earlier result");
        let small_limits = ["--max-result-bytes", "1048576", "--max-result-entries", "1000"];
        // Every top-level name the cases use is asked for, so each case meets the rule
        // it was written for, not only "not asked for".
        let asked = "x a h l q sub d self tty disk pipe odd tool sized innocent bomb many";
        let output = env.client().args(["--RESULT", asked]).args(small_limits).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match expect {
            Expect::Contained => assert!(output.status.success(), "{name}: {stderr}"),
            Expect::Refused | Expect::RefusedPastLimit => {
                assert_eq!(output.status.code(), Some(105), "{name}: {stderr}");
                assert!(stderr.contains("results not unpacked"), "{name}: {stderr}");
                if expect == Expect::RefusedPastLimit {
                    assert!(stderr.contains("the results are more than --max-result-"), "{name}: {stderr}");
                    assert!(stderr.contains("hint: raise the limit"), "{name}: {stderr}");
                }
                let left: Vec<_> =
                    names_in(&env.work).into_iter().filter(|n| n != "earlier" && n != "source").collect();
                assert!(left.is_empty(), "{name}: partial results or staging left: {left:?}");
            }
        }
        assert_canary_untouched(&canary);
        assert_eq!(env.read("earlier/result"), b"earlier result", "{name}");
        assert_eq!(
            names_in(env.root.path()),
            ["canary", "jobs", "tls", "tls.ca-private", "work"],
            "{name}: something beside the fixture"
        );
        assert!(!names_in(&env.work).iter().any(|n| n.starts_with(".lrpymrpc")), "{name}: staging left");
    }
}

/// Every archive case of SECURITY.md as a real Upload to the reference server (with
/// small limits, so the exhaustion cases bite): refused with a status or contained,
/// the canary untouched, no job directory left by a refusal.
#[test]
fn every_hostile_archive_case_against_the_server() {
    let mut env = TestEnv::configured(|config| {
        config.upload_limits = lrpymrpc_archive::Limits { max_bytes: 1 << 20, max_entries: 1000, max_depth: 64 };
    });
    let canary = plant_canary(&env);
    let (addr, tls) = (env.addr, env.tls.clone());
    for case in hostile_cases(canary.to_str().unwrap()) {
        let before = env.job_dirs();
        let archive = case.archive.clone();
        let tls = tls.clone();
        let result = env.runtime().block_on(async move {
            let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
            let chunks: Vec<_> = archive.chunks(64 * 1024).map(|c| DataChunk { data: c.to_vec() }).collect();
            client.upload(tokio_stream::iter(chunks)).await
        });
        let name = &case.name;
        match (case.expect, result) {
            (Expect::Refused | Expect::RefusedPastLimit, Err(status)) => {
                let code = status.code();
                assert!(
                    matches!(code, tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted),
                    "{name}: {status:?}"
                );
                assert!(!status.message().is_empty(), "{name}: a refusal says why");
                assert_eq!(env.job_dirs(), before, "{name}: a refused upload left a job directory");
            }
            (Expect::Contained, Ok(response)) => {
                assert!(env.job_dirs().contains(&response.into_inner().unique_id), "{name}");
            }
            (expect, outcome) => panic!("{name}: expected {expect:?}, got {outcome:?}"),
        }
        assert_canary_untouched(&canary);
        let beside = ["canary", "jobs", "tls", "tls.ca-private", "work"];
        assert_eq!(names_in(env.root.path()), beside, "{name}: something beside the jobs");
    }
}
