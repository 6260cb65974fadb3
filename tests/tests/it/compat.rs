//! Compatibility with the deployed peers: a client that knows none of our extensions
//! (the Python client) gets from our server what the Python server sends: one stream
//! in the order the command wrote it, unlabelled, long lines whole. And whole jobs
//! both ways with grpcio peers written from the proto (`tests/python/`): our client
//! against a grpcio server, a grpcio client against our server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lrpymrpc_certs::layout;
use lrpymrpc_proto::{ExecuteRequest, OutputStream};
use predicates::prelude::*;

use crate::env::{PROCESS_LIMIT, TestEnv, output_within};
use crate::security::raw_upload;
use crate::tls::raw_client;

/// The lines (and their stream labels) an Execute of `command` sends, the server's
/// own notes left out.
fn execute_lines(env: &mut TestEnv, command: &str, separate_streams: bool) -> Vec<(String, i32)> {
    let (addr, tls) = (env.addr, env.tls.clone());
    let command = command.to_string();
    env.runtime().block_on(async move {
        let mut client = raw_client(addr, &tls, true).await.unwrap();
        let id = raw_upload(&mut client).await;
        let request = ExecuteRequest { unique_id: id, command_opt: command, separate_streams, ..Default::default() };
        let mut stream = client.execute(request).await.unwrap().into_inner();
        let mut lines = Vec::new();
        while let Some(response) = stream.message().await.unwrap() {
            if response.exit_status.is_none() && !response.message.starts_with("[lrpymrpc-server]") {
                lines.push((response.message, response.stream));
            }
        }
        lines
    })
}

#[test]
fn a_client_without_the_extension_gets_one_ordered_stream_with_long_lines_whole() {
    let mut env = TestEnv::new();
    // Written alternately to stdout and stderr, with pauses shorter than any scheduler
    // would need to reorder two pipes; the merged pipe keeps the order by construction.
    let command = "for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; done; \
                   head -c 300000 /dev/zero | tr '\\0' x; echo; echo last";
    let lines = execute_lines(&mut env, command, false);
    let mut expected: Vec<String> = (1..=8).flat_map(|i| [format!("out{i}"), format!("err{i}")]).collect();
    expected.push("x".repeat(300_000));
    expected.push("last".into());
    let texts: Vec<String> = lines.iter().map(|(text, _)| text.clone()).collect();
    assert_eq!(texts.len(), expected.len(), "{:?}", texts.iter().map(|t| t.len()).collect::<Vec<_>>());
    assert!(texts == expected, "one stream, in the order written, the 300 KB line whole");
    assert!(lines.iter().all(|(_, stream)| *stream == OutputStream::Unspecified as i32), "unlabelled, as upstream");

    // Our client asks for separate streams: each line is labelled with its pipe.
    let lines = execute_lines(&mut env, "echo out; echo err >&2", true);
    assert!(lines.contains(&("out".into(), OutputStream::Stdout as i32)), "{lines:?}");
    assert!(lines.contains(&("err".into(), OutputStream::Stderr as i32)), "{lines:?}");
}

/// A Python interpreter with grpcio and grpcio-tools: `LRPYMRPC_GRPCIO_PYTHON`, else
/// the one `.ci/run` installs under `target/ci-grpcio-venv`, else `python3`.
pub(crate) fn grpcio_python() -> PathBuf {
    let python = crate::env::venv_program("LRPYMRPC_GRPCIO_PYTHON", "ci-grpcio-venv", "python", "python3");
    let mut probe = Command::new(&python);
    probe.args(["-c", "import grpc, grpc_tools"]);
    match output_within(&mut probe, PROCESS_LIMIT) {
        output if output.status.success() => python,
        _ => crate::env::needed(
            &format!("grpcio and grpcio-tools for {}", python.display()),
            "python3 -m venv target/ci-grpcio-venv && target/ci-grpcio-venv/bin/pip install grpcio grpcio-tools",
        ),
    }
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

pub(crate) fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The grpcio server on a free loopback port, with the fixture's server certificate;
/// killed when dropped.
struct GrpcioServer {
    child: std::process::Child,
    port: u16,
}

impl GrpcioServer {
    fn start(python: &Path, env: &TestEnv) -> GrpcioServer {
        let root = env.root.path().join("grpcio-jobs");
        std::fs::create_dir_all(&root).unwrap();
        let mut child = Command::new(python)
            .arg(repo_file("tests/python/grpcio_server.py"))
            .arg("--proto")
            .arg(repo_file("proto/file_service.proto"))
            .arg("--root")
            .arg(&root)
            .arg("--server-cert")
            .arg(layout::server_cert(&env.tls))
            .arg("--server-key")
            .arg(layout::server_key(&env.tls))
            .arg("--ca")
            .arg(layout::ca_cert(&env.tls))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(env.root.path().join("grpcio-server.log")).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        let log = || std::fs::read_to_string(env.root.path().join("grpcio-server.log")).unwrap_or_default();
        let port = port.unwrap_or_else(|| panic!("the grpcio server did not start: {first:?} {}", log()));
        GrpcioServer { child, port }
    }
}

impl Drop for GrpcioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn our_client_runs_whole_jobs_against_a_grpcio_server_written_from_the_proto() {
    let python = grpcio_python();
    let mut env = TestEnv::bare();
    let server = GrpcioServer::start(&python, &env);
    env.set_addr(([127, 0, 0, 1], server.port).into());
    env.write("source/data.txt", "cell data\n");
    // Several 256 KiB blocks both ways (a single gzip member up, from loopback).
    let big = crate::env::pseudo_random(700 << 10, 5);
    env.write("source/big.bin", &big);
    let prefix = env.prefix();
    env.client()
        .args(["--CMD", "echo hello; cat source/data.txt; echo oops >&2; mkdir build; echo made > build/out"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{prefix}hello\n{prefix}cell data\n{prefix}oops\n")))
        .stdout(predicate::str::contains(format!("{prefix}Finish: done.")))
        .stderr(predicate::str::contains("the server does not report the command's exit status"));
    assert_eq!(std::fs::read_to_string(env.work.join("build/out")).unwrap(), "made\n");
    env.client().args(["--CMD", "mkdir -p build; cp source/big.bin build/"]).assert().success();
    assert!(std::fs::read(env.work.join("build/big.bin")).unwrap() == big, "700 KiB both ways intact");
    // The status lines, word for word and in order as the published Python client
    // prints them (log greps rely on them): lrPymRPC_prj at d5b0a35 (pyproject 0.2.9),
    // `lrPymRPC/script/client.py` lines 154-223, read there. Its lines about the archive
    // files it writes and removes (`Result downloaded and saved as result.tar.gz.`,
    // `Check: remove archive file=`) are not ours: we write no archive file. A SOURCE
    // path that is missing or outside the working directory gets its line as there.
    env.write("../elsewhere/x", "x");
    let args = ["--SOURCE", "source missing ../elsewhere", "--CMD", "mkdir build; echo made > build/out"];
    let output = env.client().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let status: Vec<&str> = stdout.lines().filter_map(|line| line.strip_prefix(&prefix)).collect();
    let id = status.iter().find_map(|line| line.strip_prefix("Upload: unique id=")).unwrap_or_default();
    assert!(uuid_like(id), "{stdout}");
    let expected = [
        "Compress source=source missing ../elsewhere".to_string(),
        "Check: Exist source_dir=source".into(),
        "Check: Not Exist source_dir=missing".into(),
        "Check: Not Exist in current directory, removed from source_dir=../elsewhere".into(),
        "Upload".into(),
        format!("Upload: unique id={id}"),
        "Upload: pip install   =".into(),
        "Upload: Execute target=mkdir build; echo made > build/out".into(),
        "Check: result.".into(),
        "Check: Download data is exist.".into(),
        "Check: Extract result.".into(),
        "Finish: done.".into(),
    ];
    assert_eq!(status, expected);
    // Nothing to fetch: the other Check line, then the last.
    let output = env.client().args(["--RESULT", "nothing", "--CMD", "true"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let status: Vec<&str> = stdout.lines().filter_map(|line| line.strip_prefix(&prefix)).collect();
    assert!(status.ends_with(&["Check: result.", "Check: Download data is not exist.", "Finish: done."]), "{stdout}");
    // Without a reported status, the marker recovers it.
    env.client().args(["--exit-status-marker", "--CMD", "echo before; exit 3"]).assert().code(3);
}

#[test]
fn a_grpcio_client_written_from_the_proto_runs_a_whole_job_against_our_server() {
    let python = grpcio_python();
    let env = TestEnv::new();
    env.write("cells/nand2.sp", "* nand2\n");
    let server = format!("127.0.0.1:{}", env.addr.port());
    let mut command = Command::new(&python);
    command
        .current_dir(&env.work)
        .arg(repo_file("tests/python/grpcio_client.py"))
        .arg("--proto")
        .arg(repo_file("proto/file_service.proto"))
        .args(["--server", &server, "--tls-dir"])
        .arg(&env.tls)
        .args(["--source", "cells", "--result", "lib"])
        .args([
            "--cmd",
            "echo start; echo warn >&2; mkdir lib; cp cells/nand2.sp lib/nand2.lib; head -c 900000 /dev/urandom > \
             lib/big.bin; echo end",
        ]);
    let output = output_within(&mut command, PROCESS_LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let prefix = format!("[{server}]:");
    // One merged stream, in order, as the Python server sends it.
    assert!(stdout.contains("\nstart\nwarn\nend\n"), "{stdout}");
    assert!(stdout.contains(&format!("{prefix}Download data is exist.")), "{stdout}");
    assert_eq!(std::fs::read_to_string(env.work.join("lib/nand2.lib")).unwrap(), "* nand2\n");
    // Results of several gzip members (our server compresses in parallel): Python's
    // tarfile reads them as one stream.
    assert_eq!(std::fs::metadata(env.work.join("lib/big.bin")).unwrap().len(), 900_000);
}

#[test]
fn results_come_back_in_the_encoding_the_server_offers_and_gzip_to_everyone_else() {
    use crate::env::{spawn_server_binary, wait_exit};
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let make = "mkdir -p build; seq 100000 > build/numbers";
    for (asked, sent) in [("auto", "identity"), ("zstd", "zstd"), ("gzip", "gzip"), ("identity", "identity")] {
        std::fs::remove_dir_all(env.work.join("build")).ok();
        env.client().args(["--result-encoding", asked, "--CMD", make]).assert().success();
        let numbers = std::fs::read_to_string(env.work.join("build/numbers")).unwrap();
        assert_eq!(numbers.lines().count(), 100_000, "{asked}");
        let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
        let last = log.lines().rev().find(|l| l.contains("results sent")).unwrap_or_default().to_string();
        assert!(
            last.contains(&format!("encoding=\"{sent}\"")) || last.contains(&format!("encoding={sent}")),
            "{asked}: {last}"
        );
    }
    crate::env::send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, std::time::Duration::from_secs(15));
    // A legacy server sends gzip whatever is asked, and the client says so.
    let legacy = TestEnv::legacy();
    legacy.write("source/x", "x");
    legacy
        .client()
        .args(["--result-encoding", "zstd", "--CMD", make])
        .assert()
        .success()
        .stderr(predicate::str::contains("the server does not send results in zstd; they come in gzip"));
    assert_eq!(std::fs::read_to_string(legacy.work.join("build/numbers")).unwrap().lines().count(), 100_000);
}
