//! The holes the second adversarial review found (issue 26), each attacked end to end
//! as a hostile user or a hostile server would, and shown closed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use lrpymrpc_certs::layout;
use lrpymrpc_proto::v1::BlobChunk;
use lrpymrpc_proto::{AttachInfo, CachePolicy, Durability, ExecuteRequest};

use crate::env::{TestEnv, send_signal, wait_exit};

/// The server binary, as `user` (a uid and gid, through `setpriv`) or as this test's
/// user, serving `env`'s job root with its TLS directory and `extra`; `env.addr` is
/// set to where it listens.
fn serve_binary_as(env: &mut TestEnv, user: Option<u32>, home: &Path, extra: &[&OsStr]) -> Child {
    let binary = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    let mut command = match user {
        Some(id) => {
            let mut command = std::process::Command::new("setpriv");
            command.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into(), binary.into()]);
            command
        }
        None => std::process::Command::new(binary),
    };
    let log = std::fs::File::create(env.root.path().join("server.log")).unwrap();
    let mut server = command
        .env("HOME", home)
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(&env.jobs)
        .arg("--tls-dir")
        .arg(&env.tls)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("setpriv (util-linux) and the server start");
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let Some(port) = first.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
        let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap_or_default();
        panic!("the server did not start: {first:?}\n{log}");
    };
    env.addr.set_port(port);
    server
}

/// Hands every file below `dir` to `id` (uid and gid).
fn chown_tree(dir: &Path, id: u32) {
    let status = std::process::Command::new("chown").arg("-R").arg(format!("{id}:{id}")).arg(dir).status().unwrap();
    assert!(status.success(), "chown -R {id} {}", dir.display());
}

// 1: whatever user runs the server, a sandboxed job reads none of the secrets the
// server knows of (the CA key beside the TLS directory, the TLS key, the config file,
// the content store and presence files, the environment cache, other jobs, the
// server's home) nor what only root may read on the host (`/etc/shadow`).
#[test]
fn a_sandboxed_job_reads_no_secret_of_the_server_as_root_or_as_another_user() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test runs the server as root and as nobody: run the suite as root, as CI does");
    }
    for user in [None, Some(65534u32)] {
        let mut env = TestEnv::bare_in(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let home = env.root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("secret"), "home-secret\n").unwrap();
        let config = env.root.path().join("server.toml");
        std::fs::write(&config, "# config-secret\nsandbox = true\n").unwrap();
        let other = env.jobs.join("other-job");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("data"), "other\n").unwrap();
        if let Some(id) = user {
            chown_tree(env.root.path(), id);
        }
        let mut server = serve_binary_as(&mut env, user, &home, &[OsStr::new("--config"), config.as_os_str()]);
        // A first job fills the content store, presence files and spares.
        env.write("source/x", "mine\n");
        env.client().args(["--CMD", "cat source/x"]).assert().success();
        let store = env.jobs.join("lrpymrpc-cas");
        let secrets: Vec<(&str, PathBuf)> = vec![
            ("CA-KEY", layout::ca_key(&env.tls)),
            ("TLS-KEY", layout::server_key(&env.tls)),
            ("CONFIG", config.clone()),
            ("OTHER-JOB", other.join("data")),
            ("HOME", home.join("secret")),
            ("SHADOW", PathBuf::from("/etc/shadow")),
        ];
        for (_, path) in &secrets {
            assert!(std::fs::metadata(path).unwrap().len() > 0, "{} is there to steal", path.display());
        }
        assert!(store.join("presence").is_dir() && store.join("blobs").is_dir(), "the store is there to list");
        let mut command = String::from("cat source/x; ");
        for (name, path) in &secrets {
            command += &format!("grep -q . {} 2>/dev/null && echo READ-{name}; ", path.display());
        }
        // (The job's own directory is below the job root: only what is not it counts.)
        for (name, dir) in
            [("STORE", store.join("blobs")), ("PRESENCE", store.join("presence")), ("JOBS", env.jobs.clone())]
        {
            command += &format!(
                "ls -A {} 2>/dev/null | grep -vx \"${{PWD##*/}}\" | grep -q . && echo LISTED-{name}; ",
                dir.display()
            );
        }
        command += "echo done";
        let output = env.client().args(["--CMD", &command]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let who = user.map_or("root".to_string(), |id| format!("uid {id}"));
        assert!(output.status.success(), "as {who}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("]:mine") && stdout.contains("]:done"), "as {who}, the job ran: {stdout}");
        assert!(!stdout.contains("]:READ-") && !stdout.contains("]:LISTED-"), "as {who}, a job saw a secret: {stdout}");
        send_signal(&server, libc::SIGTERM);
        assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
    }
}

/// Every line a raw Execute printed, in order.
async fn execute_lines(
    client: &mut lrpymrpc_proto::file_service_client::FileServiceClient<tonic::transport::Channel>,
    request: ExecuteRequest,
) -> Vec<String> {
    let mut stream = client.execute(request).await.unwrap().into_inner();
    let mut lines = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        lines.push(message.message);
    }
    lines
}

// 2: a first command edits the job's inputs, a second, cacheable one would record its
// results under the digest of the unedited tree. The second is not cached (and says
// why), so a fresh job from that tree (another CN's with a shared cache, or the same
// CN's) runs the step on the real inputs instead of being served the forgery.
#[test]
fn a_later_command_in_a_job_records_nothing_in_the_action_cache() {
    let mut env = TestEnv::configured(|config| {
        config.action_cache = true;
        config.share_action_cache = true;
    });
    let other = crate::env::client_dir_for(&env, "victim");
    let (addr, tls) = (env.addr, env.tls.clone());
    env.runtime().block_on(async move {
        let digest = lrpymrpc_cas::digest_of(b"real\n");
        let cached = |id: &str, command: &str| ExecuteRequest {
            unique_id: id.to_string(),
            command_opt: command.to_string(),
            cache: CachePolicy::Use as i32,
            cache_results: "out".into(),
            ..Default::default()
        };
        let step = "cat x | tee out";
        let mut attacker = crate::cas::raw_extensions(addr, &tls).await;
        let blob = BlobChunk { digest: Some(digest.clone()), data: b"real\n".to_vec(), ..Default::default() };
        assert_eq!(attacker.upload_blobs(tokio_stream::iter([blob])).await.unwrap().into_inner().stored, 1);
        let job = attacker.create_job(tokio_stream::iter(crate::cas::one_file_tree(&digest))).await.unwrap();
        let job = job.into_inner().unique_id;
        assert!(!job.is_empty());
        let mut files = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let edit =
            ExecuteRequest { unique_id: job.clone(), command_opt: "echo forged > x".into(), ..Default::default() };
        execute_lines(&mut files, edit).await;
        let poisoned = execute_lines(&mut files, cached(&job, step)).await;
        assert!(poisoned.iter().any(|line| line == "forged"), "the second command ran: {poisoned:?}");
        assert!(
            poisoned.iter().any(|line| line.contains("not cached: an earlier command ran in this job")),
            "and says why it is not recorded: {poisoned:?}"
        );
        // The victim's identical step on the real tree, with the cache shared.
        let mut victim = crate::cas::raw_extensions(addr, &other).await;
        let blob = BlobChunk { digest: Some(digest.clone()), data: b"real\n".to_vec(), ..Default::default() };
        victim.upload_blobs(tokio_stream::iter([blob])).await.unwrap();
        let job = victim.create_job(tokio_stream::iter(crate::cas::one_file_tree(&digest))).await.unwrap();
        let mut files = crate::tls::raw_client(addr, &other, true).await.unwrap();
        let lines = execute_lines(&mut files, cached(&job.into_inner().unique_id, step)).await;
        assert!(lines.iter().any(|line| line == "real"), "the victim's step ran on its inputs: {lines:?}");
        assert!(!lines.iter().any(|line| line.contains("forged")), "and was not served the forgery: {lines:?}");
        // The victim's run was a first command: it is recorded, and a second job is served.
        let job = victim.create_job(tokio_stream::iter(crate::cas::one_file_tree(&digest))).await.unwrap();
        let mut stream = files.execute(cached(&job.into_inner().unique_id, step)).await.unwrap().into_inner();
        let mut hit = false;
        while let Some(message) = stream.message().await.unwrap() {
            hit |= message.cache_hit.is_some();
        }
        assert!(hit, "a first command's run is recorded and served");
    });
}

// 10: `attach` fetches what the user typed when the job started, kept on this
// machine; a job whose server names `Makefile` and a git hook as its results writes
// nothing here unless the user names what to fetch, and then only that.
#[test]
fn attach_never_takes_the_result_list_from_the_server() {
    let mut env = TestEnv::new();
    env.write("source/x", "x");
    let (addr, tls) = (env.addr, env.tls.clone());
    // The server's AttachInfo is what the job's starter sent: a raw client plays the
    // hostile server's part, naming files that would run code here.
    let id = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let id = crate::security::raw_upload(&mut client).await;
        let request = ExecuteRequest {
            unique_id: id.clone(),
            command_opt: "mkdir -p .git/hooks out; echo 'rm -rf ~' > Makefile; echo evil > .git/hooks/pre-commit; \
                          chmod 755 .git/hooks/pre-commit; echo wanted > out/lib"
                .into(),
            durability: Durability::Detached as i32,
            attach_info: Some(AttachInfo { result_dir: "Makefile .git out".into(), ..Default::default() }),
            ..Default::default()
        };
        client.execute(request).await.unwrap();
        id
    });
    let work = env.root.path().join("victim");
    std::fs::create_dir_all(&work).unwrap();
    let refused = env.client().current_dir(&work).args(["attach", &id]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "refused as a usage error: {stderr}");
    assert!(stderr.contains("not taken on its word") && stderr.contains("--fetch"), "{stderr}");
    assert!(std::fs::read_dir(&work).unwrap().next().is_none(), "nothing written here");
    // Naming what to fetch fetches that alone.
    let fetched = env.client().current_dir(&work).args(["attach", &id, "--fetch", "out"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    assert!(fetched.status.success(), "{stderr}");
    assert_eq!(std::fs::read(work.join("out/lib")).unwrap(), b"wanted\n");
    assert!(!work.join("Makefile").exists() && !work.join(".git").exists(), "nothing else: {stderr}");
}

// 11: `lrpymrpc jobs` prints what a server says of a job (its command) through the one
// terminal sanitiser: no window title, no screen clearing, no C1 control, no bidi
// override reaches the terminal.
#[test]
fn jobs_prints_no_control_sequence_a_server_sent() {
    let mut env = TestEnv::new();
    let (addr, tls) = (env.addr, env.tls.clone());
    let hostile = "sleep 30 #\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}2J\u{202e}txt.exe visible-end";
    env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let id = crate::security::raw_upload(&mut client).await;
        let request = ExecuteRequest {
            unique_id: id,
            command_opt: hostile.into(),
            durability: Durability::Detached as i32,
            ..Default::default()
        };
        client.execute(request).await.unwrap();
    });
    let listed = env.client().arg("jobs").output().unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && stdout.contains("visible-end"), "the job is listed: {stdout}");
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!stdout.contains(bad), "{bad:?} reached the terminal: {stdout:?}");
    }
}
