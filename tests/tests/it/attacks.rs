//! The holes the second adversarial review found (issue 26), each attacked end to end
//! as a hostile user or a hostile server would, and shown closed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use lrpymrpc_certs::layout;
use lrpymrpc_proto::v1::{BlobChunk, Digest, Directory, FileNode, TreePart};
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

/// A blob's one chunk.
fn blob(bytes: &[u8]) -> BlobChunk {
    BlobChunk { digest: Some(lrpymrpc_cas::digest_of(bytes)), data: bytes.to_vec(), ..Default::default() }
}

// 6: a tree's file sizes come from the store, not from the client: one 8 KiB blob
// named five times as 1 byte is not a 5-byte job against a 10 KiB limit.
#[test]
fn a_tree_cannot_claim_its_files_are_smaller_than_their_blobs() {
    let mut env = TestEnv::configured(|config| config.upload_limits.max_bytes = 10 * 1024);
    let (addr, tls) = (env.addr, env.tls.clone());
    let jobs = env.jobs.clone();
    env.runtime().block_on(async move {
        let bytes = vec![b'b'; 8192];
        let mut client = crate::cas::raw_extensions(addr, &tls).await;
        assert_eq!(client.upload_blobs(tokio_stream::iter([blob(&bytes)])).await.unwrap().into_inner().stored, 1);
        let lie = Digest { size: 1, ..lrpymrpc_cas::digest_of(&bytes) };
        let files = (0..5).map(|i| FileNode { name: format!("f{i}"), digest: Some(lie.clone()), executable: false });
        let root = Directory { files: files.collect(), directories: vec![] };
        let part = TreePart {
            digest_function: "sha256".into(),
            root: Some(lrpymrpc_cas::directory_digest(&root)),
            directories: vec![root],
            root_only: false,
        };
        let refused = client.create_job(tokio_stream::iter([part])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("`f0` claims 1 bytes, but its blob holds 8192"), "{refused:?}");
    });
    let made = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("lrpymrpc-"));
    assert_eq!(made.count(), 0, "no job directory was made");
}

// 7: tiny blobs cost the disk whole blocks: a stream of 1,000 distinct 8-byte blobs
// against a 1 MiB store is refused once what it took fills its share, and what is on
// disk stays within the bound.
#[test]
fn tiny_blobs_cannot_fill_the_disk_while_counted_as_bytes() {
    let mut env = TestEnv::configured(|config| config.cas_max_bytes = 1 << 20);
    let (addr, tls) = (env.addr, env.tls.clone());
    let refused = env.runtime().block_on(async move {
        let mut client = crate::cas::raw_extensions(addr, &tls).await;
        let blobs: Vec<BlobChunk> = (0..1000u32).map(|i| blob(format!("{i:08}").as_bytes())).collect();
        client.upload_blobs(tokio_stream::iter(blobs)).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    let stored = crate::cas::store_blobs(&env).len() as u64;
    assert!(stored > 0, "some were stored before the bound");
    assert!(stored * 4096 <= 1 << 20, "{stored} blobs of a 4 KiB block each in 1 MiB");
}

// 8: blobs still arriving count against the bound, and one CN's waiting blobs take at
// most half of the store: six concurrent 1.5 MiB uploads of one CN into a 4 MiB store
// store one; another CN can still upload; and a real client whose tree does not fit
// its share sends a tar.gz instead of failing.
#[test]
fn concurrent_uploads_cannot_overfill_the_store_or_lock_out_other_cns() {
    let mut env = TestEnv::configured(|config| config.cas_max_bytes = 4 << 20);
    let other = crate::env::client_dir_for(&env, "other");
    let (addr, tls, jobs) = (env.addr, env.tls.clone(), env.jobs.clone());
    let (outcomes, others) = env.runtime().block_on(async move {
        let piece = 256 * 1024;
        let mut senders = Vec::new();
        let mut calls = Vec::new();
        for i in 0..6u8 {
            let bytes = vec![i; 3 * piece * 2];
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let digest = lrpymrpc_cas::digest_of(&bytes);
            tx.send(BlobChunk { digest: Some(digest), data: bytes[..piece].to_vec(), ..Default::default() })
                .await
                .unwrap();
            let mut client = crate::cas::raw_extensions(addr, &tls).await;
            calls.push(tokio::spawn(async move {
                client
                    .upload_blobs(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map(|r| r.into_inner().stored)
            }));
            senders.push((tx, bytes));
        }
        // Every upload has begun (a blob file opened in `incoming/`) or been refused
        // before any ends.
        let incoming = jobs.join("lrpymrpc-cas/incoming");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let begun = std::fs::read_dir(&incoming).map_or(0, |dir| dir.count());
            let refused = calls.iter().filter(|call| call.is_finished()).count();
            if begun + refused == 6 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{begun} begun, {refused} refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (tx, bytes) in senders {
            for chunk in bytes[piece..].chunks(piece) {
                let _ = tx.send(BlobChunk { data: chunk.to_vec(), ..Default::default() }).await;
            }
        }
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.unwrap());
        }
        let mut others = crate::cas::raw_extensions(addr, &other).await;
        let others = others.upload_blobs(tokio_stream::iter([blob(&vec![9u8; 3 * piece * 2])])).await;
        (outcomes, others.map(|r| r.into_inner().stored))
    });
    let stored = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(stored, 1, "one CN's half of the store holds one 1.5 MiB blob: {outcomes:?}");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    }
    assert_eq!(others.unwrap(), 1, "another CN is not locked out");
    let on_disk: u64 = crate::cas::store_blobs(&env).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(on_disk <= 4 << 20, "{on_disk} bytes stored in a 4 MiB store");
    // Two 1.5 MiB files do not fit this CN's half: the real client sends a tar.gz.
    env.write("source/a", "a".repeat(3 << 19));
    env.write("source/b", "b".repeat(3 << 19));
    let output = env.client().args(["--CMD", "wc -c source/a source/b"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("the sources go as a tar.gz"), "{stderr}");
    assert!(stdout.contains("3145728 total"), "{stdout}");
}

// 3: blob uploads hold no thread while they wait for the network and are bounded per
// CN: eight streams of one CN that each sent a byte and went quiet leave the ninth
// refused at once, and another user's calls answered at once.
#[test]
fn quiet_blob_streams_are_bounded_per_cn_and_starve_nobody() {
    let mut env = TestEnv::new();
    let other = crate::env::client_dir_for(&env, "other");
    let (addr, tls, jobs) = (env.addr, env.tls.clone(), env.jobs.clone());
    env.runtime().block_on(async move {
        let mut held = Vec::new();
        for i in 0..8u8 {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let digest = lrpymrpc_cas::digest_of(&[i; 1000]);
            tx.send(BlobChunk { digest: Some(digest), data: vec![i], ..Default::default() }).await.unwrap();
            let mut client = crate::cas::raw_extensions(addr, &tls).await;
            let call = tokio::spawn(async move {
                client.upload_blobs(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|_| ())
            });
            held.push((tx, call));
        }
        // Every one has begun its blob (a file in `incoming/`).
        let incoming = jobs.join("lrpymrpc-cas/incoming");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(&incoming).map_or(0, |dir| dir.count()) < 8 {
            assert!(std::time::Instant::now() < deadline, "the eight streams began");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut ninth = crate::cas::raw_extensions(addr, &tls).await;
        let refused = ninth.upload_blobs(tokio_stream::iter([blob(b"ninth")])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("8 blob uploads at once of one certificate"), "{refused:?}");
        // Another user uploads and makes a job meanwhile.
        let started = std::time::Instant::now();
        let mut others = crate::cas::raw_extensions(addr, &other).await;
        let digest = lrpymrpc_cas::digest_of(b"theirs");
        assert_eq!(others.upload_blobs(tokio_stream::iter([blob(b"theirs")])).await.unwrap().into_inner().stored, 1);
        let job = others.create_job(tokio_stream::iter(crate::cas::one_file_tree(&digest))).await.unwrap();
        assert!(!job.into_inner().unique_id.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5), "another user waited {:?}", started.elapsed());
        drop(held);
    });
}

// 13: an upload that trickles (16 bytes every 100 ms: it never idles) is cut once past
// its grace for sending less than the minimum rate, and its slot is free again.
#[test]
fn a_trickling_upload_is_cut_and_frees_its_slot() {
    let mut env = TestEnv::configured(|config| {
        config.max_jobs = 1;
        config.upload_min_rate = 4096;
        config.upload_rate_grace = Duration::from_secs(1);
    });
    let (addr, tls) = (env.addr, env.tls.clone());
    env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let archive =
            lrpymrpc_archive::testing::gzip(&lrpymrpc_archive::testing::tar_bytes(&[lrpymrpc_archive::testing::file(
                "x",
                &"x".repeat(100_000),
            )]));
        let trickle = tokio_stream::StreamExt::then(
            tokio_stream::iter(archive.chunks(16).map(<[u8]>::to_vec).collect::<Vec<_>>()),
            |data| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                lrpymrpc_proto::DataChunk { data }
            },
        );
        let started = std::time::Instant::now();
        let refused = client.upload(trickle).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("a second (--upload-min-rate)"), "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "cut soon after the grace: {:?}", started.elapsed());
        // The one slot is free: a normal upload gets it.
        crate::security::raw_upload(&mut client).await;
    });
}

// 13: one certificate may hold three quarters of the slots by default, so another user
// still gets one.
#[test]
fn by_default_one_cn_cannot_take_every_slot() {
    let mut env = TestEnv::bare();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &["--max-jobs", "4"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    let other = crate::env::client_dir_for(&env, "other");
    let (addr, tls) = (env.addr, env.tls.clone());
    env.runtime().block_on(async move {
        let mut mine = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        for _ in 0..3 {
            crate::security::raw_upload(&mut mine).await;
        }
        let archive =
            lrpymrpc_archive::testing::gzip(&lrpymrpc_archive::testing::tar_bytes(&[lrpymrpc_archive::testing::file(
                "x", "x",
            )]));
        let refused = mine.upload(tokio_stream::iter([lrpymrpc_proto::DataChunk { data: archive }])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("at most 3 jobs at once per certificate"), "{refused:?}");
        let mut theirs = crate::tls::raw_client(addr, &other, true).await.unwrap();
        crate::security::raw_upload(&mut theirs).await;
    });
    // (Its four uploaded jobs would hold a draining shutdown for its grace.)
    server.kill().unwrap();
    wait_exit(&mut server, Duration::from_secs(20));
}

/// The CPU time a process has used (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

// 4: a 4 KB tree of forty directories each naming the next twice (2^40 entries) is
// refused without being expanded: four senders of it cost the server next to no CPU.
#[test]
fn a_tree_that_expands_to_a_million_entries_is_refused_without_expanding_it() {
    let mut env = TestEnv::bare();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &[]);
    env.set_addr(([127, 0, 0, 1], port).into());
    let mut directories = vec![Directory::default()];
    for _ in 0..40 {
        let below = lrpymrpc_cas::directory_digest(directories.last().unwrap());
        let node = |name: &str| lrpymrpc_proto::v1::DirectoryNode { name: name.into(), digest: Some(below.clone()) };
        directories.push(Directory { files: vec![], directories: vec![node("a"), node("b")] });
    }
    let part = TreePart {
        digest_function: "sha256".into(),
        root: Some(lrpymrpc_cas::directory_digest(directories.last().unwrap())),
        directories,
        root_only: false,
    };
    let before = cpu_time(server.id());
    let (addr, tls) = (env.addr, env.tls.clone());
    let refusals = env.runtime().block_on(async move {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let mut client = crate::cas::raw_extensions(addr, &tls).await;
            let part = part.clone();
            calls.push(tokio::spawn(async move { client.create_job(tokio_stream::iter([part])).await.unwrap_err() }));
        }
        let mut refusals = Vec::new();
        for call in calls {
            refusals.push(call.await.unwrap());
        }
        refusals
    });
    for refused in &refusals {
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("more entries than the limit"), "{refused:?}");
    }
    let spent = cpu_time(server.id()) - before;
    assert!(spent < Duration::from_millis(800), "four hostile trees cost the server {spent:?} of CPU");
    server.kill().unwrap();
    wait_exit(&mut server, Duration::from_secs(20));
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap()
}

// 5: a detached job printing three million empty lines is kept within its spool's
// bound as the memory it really takes (it took 180 MB against a 16 MiB bound).
#[test]
fn millions_of_empty_lines_stay_within_the_spool_bound() {
    let mut env = TestEnv::bare();
    let (mut server, port) = crate::env::spawn_server_binary(&env, &["--spool-max-bytes", "16M"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let before = rss_kib(server.id());
    let detached = env.client().args(["--detach", "--CMD", "yes '' | head -n 3000000; echo last"]).output().unwrap();
    assert!(detached.status.success(), "{}", String::from_utf8_lossy(&detached.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = env.client().arg("jobs").output().unwrap();
        if String::from_utf8_lossy(&jobs.stdout).contains("exited 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let grown = rss_kib(server.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB for one 16 MiB spool");
    server.kill().unwrap();
    wait_exit(&mut server, Duration::from_secs(20));
}

// 9: with `--health-without-auth`, connections without a certificate are capped apart
// from the others: 150 of them held open against a server of 128 descriptors leave a
// certificate holder's job served.
#[test]
fn connections_without_a_certificate_cannot_take_every_descriptor() {
    let mut env = TestEnv::bare();
    let extra = ["--health-without-auth", "--shutdown-grace", "1s"];
    let (mut server, port) = crate::env::spawn_server_binary_with_fds(&env, &extra, Some(128));
    env.set_addr(([127, 0, 0, 1], port).into());
    let (addr, tls) = (env.addr, env.tls.clone());
    let held = env.runtime().block_on(async move {
        let mut held = Vec::new();
        for _ in 0..150 {
            if let Ok(client) = crate::tls::raw_client(addr, &tls, false).await {
                held.push(client);
            }
        }
        held
    });
    assert!(held.len() > 32, "the handshakes without a certificate went through: {}", held.len());
    env.write("source/x", "x");
    let served = env.client().args(["--CMD", "echo served", "--timeout", "30s"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&served.stdout);
    assert!(
        served.status.success() && stdout.contains("]:served"),
        "{stdout}{}",
        String::from_utf8_lossy(&served.stderr)
    );
    drop(held);
    send_signal(&server, libc::SIGTERM);
    wait_exit(&mut server, Duration::from_secs(15));
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    assert!(log.contains("too many connections without a client certificate"), "{log}");
}

// Low: twenty connections to the metrics endpoint that never finish their request do
// not keep a scraper out (the oldest of them is closed to make room).
#[test]
fn a_slowloris_on_the_metrics_port_does_not_keep_the_scraper_out() {
    let metrics = crate::monitoring::free_address();
    let env = TestEnv::configured(|config| config.metrics_listen = Some(metrics));
    assert!(crate::monitoring::scrape(metrics).contains("200 OK"), "the endpoint serves");
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = std::net::TcpStream::connect(metrics).unwrap();
        std::io::Write::write_all(&mut stream, b"GET /met").unwrap();
        slow.push(stream);
    }
    let scraped = crate::monitoring::scrape(metrics);
    assert!(scraped.contains("200 OK") && scraped.contains("# EOF"), "{scraped}");
    drop((slow, env));
}

// Low: a duration no clock can add (it panicked on every Execute) is refused where it
// is written, naming the key; a config file that is a FIFO is refused at start instead
// of blocking it.
#[test]
fn absurd_durations_and_a_fifo_config_file_are_refused_at_start() {
    let env = TestEnv::bare();
    let config = env.root.path().join("server.toml");
    let text = crate::admin::example_config(&env) + "\njob-timeout = \"99999999999d\"\n";
    std::fs::write(&config, text.replace("job-timeout = \"24h\"\n", "")).unwrap();
    let server = env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server");
    let refused = crate::env::output_within(
        std::process::Command::new(server).arg("check-config").arg(&config),
        crate::env::PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("job-timeout") && stderr.contains("from 0 to 100 years"), "{stderr}");
    let fifo = env.root.path().join("fifo.toml");
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let refused = crate::env::output_within(
        std::process::Command::new(server).arg("--config").arg(&fifo).args(["--listen", "127.0.0.1:0"]),
        crate::env::PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("not a regular file"), "{stderr}");
}

// 12: a sandboxed command with the network still sees nothing of the host's `/run`
// (munge's socket, which would let it speak to slurmctld as the server's user and
// `scancel` other users' steps; container runtimes' sockets), only the resolver file.
#[test]
fn a_sandboxed_command_with_the_network_sees_no_host_socket() {
    let host_run: Vec<_> = std::fs::read_dir("/run").unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!host_run.is_empty(), "the host's /run has entries to hide");
    let probe = TestEnv::bare_in(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let Some(sandbox) = crate::env::sandbox_for(&probe.jobs, &probe.tls) else { return };
    let env = probe.serve_configured(|config| {
        config.sandbox = Some(sandbox);
        config.sandbox_network = true;
    });
    env.write("source/x", "x");
    let command = "echo run:$(find /run -mindepth 1 -not -type d 2>/dev/null | grep -v resolv | wc -l); echo done";
    let output = env.client().args(["--CMD", command]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("]:done"), "{stdout}");
    assert!(stdout.contains("]:run:0"), "{stdout}");
}
