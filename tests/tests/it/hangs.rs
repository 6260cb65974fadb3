//! Never hang: a server that accepts and then says nothing fails connecting after
//! `--connect-timeout`, and Check, Upload and Download after `--stall-timeout`, naming
//! the limit, and the user is told after about two seconds what the client waits for.

use std::pin::Pin;
use std::time::{Duration, Instant};

use lrpymrpc_proto::file_service_server::FileService;
use lrpymrpc_proto::{
    CheckRequest, CheckResponse, DataChunk, DownloadRequest, ExecuteRequest, ExecuteResponse, UploadResponse,
};
use predicates::prelude::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::env::{TestEnv, pseudo_random, send_signal, spawn_server_binary, wait_exit};

// A server that takes the connection (the kernel does, for a stopped process) and then
// says nothing fails connecting after --connect-timeout, once: it is wedged, not
// starting, so it is not tried again as a refused connection would be.
#[test]
fn a_stopped_server_fails_the_connect_step_after_the_connect_limit_without_retries() {
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    send_signal(&server, libc::SIGSTOP);
    let assert = env.client().args(["--connect-timeout", "3s", "--retries", "3", "--CMD", "true"]).assert();
    send_signal(&server, libc::SIGCONT);
    send_signal(&server, libc::SIGKILL);
    wait_exit(&mut server, Duration::from_secs(10));
    let assert = assert
        .code(102)
        .stderr(predicate::str::contains(format!(
            "waiting for 127.0.0.1:{port} to answer (connecting; giving up after --connect-timeout 3.00 s)"
        )))
        .stderr(predicate::str::contains("the first call) within 3.00 s (--connect-timeout)"))
        .stderr(predicate::str::contains("hint: the server may be stopped"));
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(!stderr.contains("tried ") && !stderr.contains("retrying"), "not retried: {stderr}");
}

// With a server list, a server that says nothing is passed over and the job runs on
// the next one.
#[test]
fn a_stopped_server_of_a_list_is_passed_over() {
    let env = TestEnv::new();
    let silent = TestEnv::bare();
    let (mut stopped, port) = spawn_server_binary(&silent, &[]);
    send_signal(&stopped, libc::SIGSTOP);
    env.write("source/x", "x");
    let servers = format!("127.0.0.1:{port} 127.0.0.1:{}", env.addr.port());
    let assert = env
        .client()
        .args([
            "--SERVER_IP",
            &servers,
            "--SERVER_PORT",
            "8766",
            "--connect-timeout",
            "2s",
            "--verbose",
            "--CMD",
            "echo ran",
        ])
        .assert();
    send_signal(&stopped, libc::SIGCONT);
    send_signal(&stopped, libc::SIGKILL);
    wait_exit(&mut stopped, Duration::from_secs(10));
    assert
        .success()
        .stdout(predicate::str::contains("]:ran"))
        .stderr(predicate::str::contains(format!("skipping 127.0.0.1:{port}: cannot connect")))
        .stderr(predicate::str::contains("(--connect-timeout)"));
}

#[test]
fn a_server_stopped_during_a_silent_command_is_found_lost_by_keepalive_pings() {
    use std::io::{BufRead, BufReader};
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let mut client = env
        .client_std()
        .args(["--keepalive", "1s", "--retries", "0", "--CMD", "echo started; sleep 120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    // The command now prints nothing for minutes; the server stops answering anything.
    send_signal(&server, libc::SIGSTOP);
    let stopped = Instant::now();
    let status = wait_exit(&mut client, Duration::from_secs(60));
    let took = stopped.elapsed();
    send_signal(&server, libc::SIGCONT);
    send_signal(&server, libc::SIGKILL);
    wait_exit(&mut server, Duration::from_secs(10));
    let output = crate::env::child_output_within(client, crate::env::PROCESS_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(104), "{stderr}");
    assert!(stderr.contains(&format!("execute failed: lost the connection to 127.0.0.1:{port}")), "{stderr}");
    // One unanswered ping: the interval plus the 20 s the answer may take.
    assert!(took < Duration::from_secs(40), "found lost after {took:?}");
}

/// Where [`Silent`] goes quiet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quiet {
    Upload,
    Check,
    /// Download answers, then sends nothing.
    Download,
    /// Download never answers at all (issue 26: it waited past the stall limit).
    DownloadCall,
}

/// A server that answers until its `quiet` step, then never again.
struct Silent {
    quiet: Quiet,
}

type Lines = Pin<Box<dyn Stream<Item = Result<ExecuteResponse, Status>> + Send>>;
type Chunks = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;

#[tonic::async_trait]
impl FileService for Silent {
    async fn upload(&self, request: Request<Streaming<DataChunk>>) -> Result<Response<UploadResponse>, Status> {
        let mut stream = request.into_inner();
        if self.quiet == Quiet::Upload {
            // Reads nothing: the client's window fills and its bytes stop moving.
            std::future::pending::<()>().await;
        }
        while stream.message().await?.is_some() {}
        Ok(Response::new(UploadResponse { unique_id: "00000000-0000-4000-8000-000000000001".into() }))
    }

    type ExecuteStream = Lines;
    async fn execute(&self, _: Request<ExecuteRequest>) -> Result<Response<Lines>, Status> {
        // The command failed with 3: `--no-results-on-failure` then only tells the
        // server it is done, with a Check for no paths.
        let failed = ExecuteResponse {
            exit_status: Some(lrpymrpc_proto::ExitStatus { code: 3, signal: 0 }),
            ..Default::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(failed)]))))
    }

    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if self.quiet == Quiet::Check {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(CheckResponse { has_stream: true, ..Default::default() }))
    }

    type DownloadStream = Chunks;
    async fn download(&self, _: Request<DownloadRequest>) -> Result<Response<Chunks>, Status> {
        if self.quiet == Quiet::DownloadCall {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

#[test]
fn a_server_that_goes_quiet_fails_the_step_it_went_quiet_in() {
    for (quiet, step, code) in [
        (Quiet::Check, "check", 104),
        (Quiet::Download, "download", 104),
        (Quiet::DownloadCall, "download", 104),
        (Quiet::Upload, "upload", 104),
    ] {
        let mut env = TestEnv::bare();
        crate::hostile::serve_fake(&mut env, Silent { quiet });
        env.write("source/x", "x");
        // More than the HTTP/2 windows hold, so a server that reads nothing stalls it.
        env.write("source/big", pseudo_random(16 << 20, 7));
        env.client()
            .args(["--stall-timeout", "2s", "--retries", "0", "--CMD", "true"])
            .assert()
            .code(code)
            .stderr(predicate::str::contains(format!("{step} failed")))
            .stderr(predicate::str::contains("no answer for 2.00 s (--stall-timeout)"));
    }
}

#[test]
fn telling_a_quiet_server_the_job_is_done_does_not_hang() {
    let mut env = TestEnv::bare();
    crate::hostile::serve_fake(&mut env, Silent { quiet: Quiet::Check });
    env.write("source/x", "x");
    let started = Instant::now();
    env.client()
        .args(["--stall-timeout", "2s", "--retries", "0", "--no-results-on-failure", "--CMD", "true"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("results not fetched (--no-results-on-failure)"));
    assert!(started.elapsed() < Duration::from_secs(60), "bounded by the stall limit");
}
