//! Content-addressed upload end to end (issue 13): only what changed travels; a blob
//! is verified before it is kept; a job that edits its inputs changes neither the
//! store nor another job; presence is answered per CN; a small store evicts without
//! breaking a job; legacy servers and `--no-cas` still get the tar.gz Upload.

use lrpymrpc_cas::digest_of;
use lrpymrpc_proto::v1::extensions_client::ExtensionsClient;
use lrpymrpc_proto::v1::{BlobChunk, Digest, Directory, FileNode, TreePart};
use predicates::prelude::*;

use crate::env::{TestEnv, client_dir_for, pseudo_random, wait_until};

pub(crate) fn store_blobs(env: &TestEnv) -> Vec<std::path::PathBuf> {
    let mut blobs = Vec::new();
    for shard in std::fs::read_dir(env.jobs.join("lrpymrpc-cas/blobs")).into_iter().flatten().flatten() {
        blobs.extend(std::fs::read_dir(shard.path()).unwrap().flatten().map(|e| e.path()));
    }
    blobs
}

#[test]
fn a_second_upload_sends_only_the_changed_file_and_an_unchanged_tree_nothing() {
    let env = TestEnv::new();
    env.write("source/big.bin", pseudo_random(2 << 20, 1));
    env.write("source/netlist.sp", "* v1\n");
    env.write("source/empty/.keep", "");
    env.client()
        .args(["--CMD", "cat source/netlist.sp; ls source"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: uploaded 3 files, 2.0 MiB in "))
        .stdout(predicate::str::contains("]:* v1\n"));
    env.client()
        .args(["--CMD", "cat source/netlist.sp"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: uploaded nothing in "))
        .stderr(predicate::str::contains("the server had the whole tree (3 files, 2.0 MiB)"));
    env.write("source/netlist.sp", "* v2\n");
    env.client()
        .args(["--CMD", "cat source/netlist.sp; md5sum source/big.bin"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: uploaded 1 of 3 files (5 B of 2.0 MiB) in "))
        .stdout(predicate::str::contains("]:* v2\n"));
    // The tree arrived whole: the same bytes as a tar upload makes.
    let tar = env.client().args(["--no-cas", "--CMD", "md5sum source/big.bin"]).output().unwrap();
    let tree = env.client().args(["--CMD", "md5sum source/big.bin"]).output().unwrap();
    let sum = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stdout).lines().find(|l| l.contains("big.bin")).unwrap_or_default().to_string()
    };
    assert!(!sum(&tar).is_empty() && sum(&tar) == sum(&tree), "{} / {}", sum(&tar), sum(&tree));
    assert!(String::from_utf8_lossy(&tar.stderr).contains("uploaded 3 files, 2.0 MiB in"), "--no-cas sends a tar.gz");
}

/// A raw extension client with the fixture's certificate (or another CN's directory).
pub(crate) async fn raw_extensions(
    env_addr: std::net::SocketAddr,
    tls: &std::path::Path,
) -> ExtensionsClient<tonic::transport::Channel> {
    let files = lrpymrpc_certs::layout::client_nested(tls);
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{env_addr}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ExtensionsClient::new(channel)
}

/// CreateJob for a tree of one file `x` with `digest`.
pub(crate) fn one_file_tree(digest: &Digest) -> Vec<TreePart> {
    let root = Directory {
        files: vec![FileNode { name: "x".into(), digest: Some(digest.clone()), executable: false }],
        directories: vec![],
    };
    vec![TreePart {
        digest_function: "sha256".into(),
        root: Some(lrpymrpc_cas::directory_digest(&root)),
        directories: vec![root],
        root_only: false,
    }]
}

/// CreateJob naming only the root of [`one_file_tree`].
fn root_only(digest: &Digest) -> Vec<TreePart> {
    let mut parts = one_file_tree(digest);
    parts[0].directories.clear();
    parts[0].root_only = true;
    parts
}

#[test]
fn a_corrupt_blob_is_refused_and_presence_is_not_revealed_across_cns() {
    let mut env = TestEnv::new();
    let other = client_dir_for(&env, "mallory");
    let (addr, tls) = (env.addr, env.tls.clone());
    let blobs_before = store_blobs(&env);
    let (corrupt, alice_sees, mallory_sees, mallory_after) = env.runtime().block_on(async move {
        let mut alice = raw_extensions(addr, &tls).await;
        let claimed = digest_of(b"the real bytes");
        let lie = BlobChunk { digest: Some(claimed.clone()), data: b"the fake bytes".to_vec(), ..Default::default() };
        let corrupt = alice.upload_blobs(tokio_stream::iter([lie])).await.unwrap_err();
        let alice_sees = alice.create_job(tokio_stream::iter(one_file_tree(&claimed))).await.unwrap().into_inner();
        // Alice stores a blob; Mallory asks whether the server has it.
        let secret = digest_of(b"alice's private netlist");
        let real =
            BlobChunk { digest: Some(secret.clone()), data: b"alice's private netlist".to_vec(), ..Default::default() };
        assert_eq!(alice.upload_blobs(tokio_stream::iter([real])).await.unwrap().into_inner().stored, 1);
        let mut mallory = raw_extensions(addr, &other).await;
        let mallory_sees = mallory.create_job(tokio_stream::iter(one_file_tree(&secret))).await.unwrap().into_inner();
        // Once Mallory sends the bytes herself, the job is hers to make.
        let same =
            BlobChunk { digest: Some(secret.clone()), data: b"alice's private netlist".to_vec(), ..Default::default() };
        mallory.upload_blobs(tokio_stream::iter([same])).await.unwrap();
        let mallory_after = mallory.create_job(tokio_stream::iter(one_file_tree(&secret))).await.unwrap().into_inner();
        (corrupt, alice_sees, mallory_sees, mallory_after)
    });
    assert_eq!(corrupt.code(), tonic::Code::InvalidArgument, "{corrupt:?}");
    assert!(corrupt.message().contains("its bytes hash to"), "{}", corrupt.message());
    assert!(
        alice_sees.unique_id.is_empty() && alice_sees.missing.len() == 1,
        "nothing of the lie was kept: {alice_sees:?}"
    );
    assert!(
        mallory_sees.unique_id.is_empty() && mallory_sees.missing.len() == 1,
        "Alice's blob is not Mallory's: {mallory_sees:?}"
    );
    assert!(!mallory_after.unique_id.is_empty());
    // One copy of the bytes for both users; none of the lie.
    assert_eq!(store_blobs(&env).len(), blobs_before.len() + 1);
}

#[test]
fn a_job_that_edits_its_inputs_changes_neither_the_store_nor_the_next_job() {
    let env = TestEnv::new();
    env.write("source/input.txt", "original\n");
    env.client()
        .args(["--CMD", "echo tampered > source/input.txt; chmod 777 source; cat source/input.txt"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:tampered"));
    env.client()
        .args(["--CMD", "cat source/input.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("uploaded nothing"))
        .stdout(predicate::str::contains("]:original"));
    for blob in store_blobs(&env) {
        let bytes = std::fs::read(&blob).unwrap();
        assert_eq!(digest_of(&bytes).hash, blob.file_name().unwrap().to_string_lossy(), "{}", blob.display());
    }
}

/// The inode of `rel` in the server's spare trees, if one holds it.
fn spare_inodes(env: &TestEnv, rel: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let spares = std::fs::read_dir(env.jobs.join("lrpymrpc-cas/spares")).into_iter().flatten().flatten();
    spares.filter_map(|spare| std::fs::metadata(spare.path().join(rel)).ok()).map(|meta| meta.ino()).collect()
}

/// The lines a job's command printed, without the client's prefix and status lines.
fn job_lines(output: &std::process::Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines = stdout.lines().map(|line| line.split_once("]:").map_or(line, |(_, rest)| rest));
    let command = lines.skip_while(|line| !line.starts_with("Upload: Execute target=")).skip(1);
    command.take_while(|line| *line != "Check: result.").map(str::to_string).collect()
}

#[test]
fn a_spare_tree_serves_the_next_job_pristine_and_never_another_cn() {
    let env = TestEnv::new();
    env.write("source/input.txt", "original\n");
    env.write("source/keep.txt", "keep\n");
    env.write("source/gone.txt", "gone\n");
    let tamper =
        "echo tampered > source/input.txt; rm source/keep.txt; echo new > source/added; chmod 777 source/gone.txt";
    env.client().args(["--CMD", tamper]).assert().success();
    // The server copies the tree again, for the next job, while this client goes on.
    let limit = std::time::Duration::from_secs(30);
    wait_until(limit, "a spare tree", || spare_inodes(&env, "source/keep.txt").len() == 1);
    let spare = spare_inodes(&env, "source/input.txt")[0];
    let show = "find source | sort; cat source/*; stat -c 'inode %i %a' source/input.txt source/gone.txt";
    let output = env.client().args(["--CMD", show]).output().unwrap();
    let lines = job_lines(&output);
    let expected = [
        "source",
        "source/gone.txt",
        "source/input.txt",
        "source/keep.txt",
        "gone",
        "original",
        "keep",
        &format!("inode {spare} 644"),
    ];
    assert_eq!(&lines[..expected.len()], expected, "the spare, untouched by the job before: {lines:?}");
    assert!(lines[expected.len()].ends_with(" 644"), "gone.txt's mode is the tree's: {lines:?}");
    // Mallory, with the same tree, gets copies of her own: never Alice's spare.
    wait_until(limit, "the next spare", || spare_inodes(&env, "source/keep.txt").len() == 1);
    let alices = spare_inodes(&env, "source/input.txt")[0];
    let mallory = client_dir_for(&env, "mallory");
    let mallory_work = env.root.path().join("mallory-work");
    for (rel, text) in [("input.txt", "original\n"), ("keep.txt", "keep\n"), ("gone.txt", "gone\n")] {
        std::fs::create_dir_all(mallory_work.join("source")).unwrap();
        std::fs::write(mallory_work.join("source").join(rel), text).unwrap();
    }
    let output = crate::security::client_as(&env, &mallory, &mallory_work)
        .args(["--CMD", "stat -c 'inode %i' source/input.txt"])
        .output()
        .unwrap();
    let theirs = job_lines(&output);
    assert!(output.status.success() && theirs.len() == 1, "{output:?}");
    assert_ne!(theirs[0], format!("inode {alices}"), "Mallory's job is not Alice's spare");
    assert!(spare_inodes(&env, "source/input.txt").contains(&alices), "Alice's spare is still hers");
    // Alice changes, removes and adds files: her next job is exactly the new tree.
    env.write("source/input.txt", "v2\n");
    std::fs::remove_file(env.work.join("source/gone.txt")).unwrap();
    env.write("source/sub/added.txt", "added\n");
    let output =
        env.client().args(["--CMD", "find source | sort; cat source/input.txt source/sub/added.txt"]).output().unwrap();
    let lines = job_lines(&output);
    let expected =
        ["source", "source/input.txt", "source/keep.txt", "source/sub", "source/sub/added.txt", "v2", "added"];
    assert_eq!(lines, expected, "{output:?}");
}

#[test]
fn a_small_store_evicts_without_breaking_a_running_job() {
    let env = TestEnv::configured(|config| config.cas_max_bytes = 1024);
    env.write("source/a.bin", pseudo_random(64 << 10, 2));
    // A job that reads its input only after the next job has come and gone (a gate
    // file the test makes then).
    let gate = env.root.path().join("gate");
    let command =
        format!("echo started; while [ ! -e '{}' ]; do sleep 0.05; done; md5sum source/a.bin", gate.display());
    let (slow, mut slow_out) = crate::env::started_client(&env, &["--CMD", &command]);
    let expected = {
        use std::process::Command;
        let output = Command::new("md5sum").arg(env.work.join("source/a.bin")).output().unwrap();
        String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_string()
    };
    env.write("source/a.bin", pseudo_random(64 << 10, 3));
    env.client().args(["--CMD", "true"]).assert().success();
    assert!(
        store_blobs(&env).len() <= 1,
        "the first job's blob is evicted before it reads its copy: {:?}",
        store_blobs(&env)
    );
    std::fs::write(&gate, "").unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut slow_out, &mut stdout).unwrap();
    let output = crate::env::child_output_within(slow, crate::env::PROCESS_LIMIT);
    assert!(output.status.success() && stdout.contains(&expected), "{stdout}");
    // The store keeps to its bound once nothing needs the old blob: at most the newest.
    assert!(store_blobs(&env).len() <= 1, "{:?}", store_blobs(&env));
}

#[test]
fn a_legacy_server_still_gets_the_tar_gz_upload() {
    let env = TestEnv::legacy();
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "cat source/x"])
        .assert()
        .success()
        .stderr(predicate::str::contains("uploaded 1 file, 1 B in "));
    assert!(!env.jobs.join("lrpymrpc-cas").exists(), "a legacy server keeps no store");
}

#[test]
fn a_warm_stat_cache_hashes_nothing_and_a_changed_file_is_hashed_again() {
    let env = TestEnv::new();
    env.write("source/a.sp", "a");
    env.write("source/b.sp", "b");
    // Past the racy window of the files' own timestamps, so the cache may trust them.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    env.client()
        .args(["--verbose", "--CMD", "true"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: hashed 2 files (2 B) in "))
        .stderr(predicate::str::contains("; the stat cache knew the other 0 of 2 files"));
    assert!(env.root.path().join("cache/lrpymrpc/stat-cache").is_file());
    env.client()
        .args(["--verbose", "--CMD", "true"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: hashed 0 files (0 B) in "))
        .stderr(predicate::str::contains("; the stat cache knew the other 2 of 2 files"));
    env.write("source/b.sp", "B!");
    env.client()
        .args(["--verbose", "--CMD", "cat source/b.sp"])
        .assert()
        .success()
        .stderr(predicate::str::contains("lrpymrpc: hashed 1 file (2 B) in "))
        .stderr(predicate::str::contains("; the stat cache knew the other 1 of 2 files"))
        .stdout(predicate::str::contains("]:B!"));
}

#[test]
fn compressed_blobs_arrive_as_their_bytes_whatever_they_hold() {
    let env = TestEnv::new();
    let text: String = (0..60_000).map(|n| format!("cell nand{n} delay {n}\n")).collect();
    env.write("source/text.lib", &text);
    env.write("source/random.bin", pseudo_random(300 << 10, 4));
    env.write("source/tiny", "t");
    env.write("source/empty", "");
    let sums = |output: &std::process::Output| -> Vec<String> {
        let text = String::from_utf8_lossy(&output.stdout);
        let mut sums: Vec<String> =
            text.lines().filter_map(|l| l.split(']').nth(1)).map(|l| l.trim_start_matches(':').to_string()).collect();
        sums.retain(|l| l.contains("  source/"));
        sums
    };
    let command = ["--verbose", "--blob-compression", "zstd", "--CMD", "md5sum source/*"];
    let remote = env.client().args(command).output().unwrap();
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let local =
        std::process::Command::new("sh").arg("-c").arg("md5sum source/*").current_dir(&env.work).output().unwrap();
    let local: Vec<String> = String::from_utf8_lossy(&local.stdout).lines().map(str::to_string).collect();
    assert_eq!(sums(&remote), local);
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(stderr.contains("uploaded 4 files") && stderr.contains("lrpymrpc: zstd sent 1.8 MiB as "), "{stderr}");
}

#[test]
fn a_name_that_is_not_utf8_still_travels_as_a_tar_gz() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new();
    env.write("source/plain.txt", "plain\n");
    let odd = env.work.join("source").join(std::ffi::OsStr::from_bytes(b"cell-\xff.sp"));
    std::fs::write(&odd, "odd\n").unwrap();
    env.client()
        .args(["--CMD", "cat source/cell-*.sp source/plain.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("has a name that is not UTF-8: the sources go as a tar.gz"))
        .stderr(predicate::str::contains("uploaded 2 files"))
        .stdout(predicate::str::contains("]:odd\n"))
        .stdout(predicate::str::contains("]:plain\n"));
}

// A restarted server still knows which CN sent which blob: the same tree sends nothing
// again; another CN, which never sent it, still has to.
#[test]
fn presence_outlives_a_restart_and_stays_per_cn() {
    let env = TestEnv::new();
    env.write("source/big.bin", pseudo_random(1 << 20, 7));
    env.write("source/netlist.sp", "* v1\n");
    env.client().args(["--CMD", "true"]).assert().success().stderr(predicate::str::contains("uploaded 2 files"));
    let env = env.restarted(|_| {});
    env.client()
        .args(["--CMD", "cat source/netlist.sp"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:* v1"))
        .stderr(predicate::str::contains("the server had the whole tree (2 files, 1.0 MiB)"));
    let mallory = crate::env::client_dir_for(&env, "mallory");
    let elsewhere = env.root.path().join("mallory-work");
    std::fs::create_dir_all(elsewhere.join("source")).unwrap();
    std::fs::copy(env.work.join("source/big.bin"), elsewhere.join("source/big.bin")).unwrap();
    crate::security::client_as(&env, &mallory, &elsewhere)
        .args(["--CMD", "true"])
        .assert()
        .success()
        .stderr(predicate::str::contains("uploaded 1 file, 1.0 MiB"));
}

// An unchanged tree is named by its root alone: known to the CN that made a job from
// it, to no other CN, and forgotten by a restart, after which the client sends it.
#[test]
fn a_known_tree_is_named_by_its_root_alone_and_only_by_its_cn() {
    let mut env = TestEnv::new();
    let other = client_dir_for(&env, "mallory");
    let (addr, tls) = (env.addr, env.tls.clone());
    let (unknown, made, by_root, mallory_sees) = env.runtime().block_on(async move {
        let mut alice = raw_extensions(addr, &tls).await;
        let secret = digest_of(b"alice's cells");
        let blob = BlobChunk { digest: Some(secret.clone()), data: b"alice's cells".to_vec(), ..Default::default() };
        alice.upload_blobs(tokio_stream::iter([blob])).await.unwrap();
        let unknown = alice.create_job(tokio_stream::iter(root_only(&secret))).await.unwrap().into_inner();
        let made = alice.create_job(tokio_stream::iter(one_file_tree(&secret))).await.unwrap().into_inner();
        let by_root = alice.create_job(tokio_stream::iter(root_only(&secret))).await.unwrap().into_inner();
        let mut mallory = raw_extensions(addr, &other).await;
        let mallory_sees = mallory.create_job(tokio_stream::iter(root_only(&secret))).await.unwrap().into_inner();
        // A root that is no hash is refused before anything is looked up.
        let mut bad = root_only(&secret);
        bad[0].root = Some(Digest { hash: "../../etc/passwd".into(), size: 1 });
        let refused = mallory.create_job(tokio_stream::iter(bad)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        (unknown, made, by_root, mallory_sees)
    });
    assert!(unknown.send_tree && unknown.unique_id.is_empty(), "never made: {unknown:?}");
    assert!(!made.unique_id.is_empty(), "{made:?}");
    assert!(!by_root.unique_id.is_empty() && by_root.unique_id != made.unique_id, "{by_root:?}");
    assert!(env.jobs.join(&by_root.unique_id).join("x").is_file(), "the job holds the tree's file");
    // The same answer as for a root nobody ever sent: nothing about Alice's tree.
    assert!(mallory_sees.send_tree && mallory_sees.unique_id.is_empty() && mallory_sees.missing.is_empty());

    // The client names an unchanged tree by its root; a restarted server knows no tree
    // and asks for it, and the job is still right.
    env.write("source/netlist.sp", "* v1\n");
    env.client().args(["--CMD", "true"]).assert().success();
    env.client()
        .args(["--verbose", "--CMD", "cat source/netlist.sp"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:* v1"))
        .stderr(predicate::str::contains("no longer knows").not());
    let env = env.restarted(|_| {});
    env.client()
        .args(["--verbose", "--CMD", "cat source/netlist.sp"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:* v1"))
        .stderr(predicate::str::contains("the server no longer knows this tree: sending it whole"));
}

// The tree is built while the client connects, but a step that waited for a slot
// sends its sources as they are when the slot comes, not as they were at its start.
#[test]
fn a_file_edited_while_the_step_waits_for_a_slot_is_sent_as_edited() {
    let env = TestEnv::configured(|config| config.max_jobs = 1);
    env.write("source/netlist.sp", "* before\n");
    let mut holder = env.client_std();
    let mut holder =
        holder.args(["--CMD", "echo holding; sleep 3"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let holder_out = std::io::BufReader::new(holder.stdout.take().unwrap());
    for line in std::io::BufRead::lines(holder_out) {
        if line.unwrap().ends_with("]:holding") {
            break;
        }
    }
    let mut waiting = env.client_std();
    waiting.args(["--CMD", "cat source/netlist.sp"]);
    let mut waiting =
        waiting.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // The file is edited once the step says it waits for the slot.
    let mut said = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("every slot is taken; waiting for one") {
        let read = std::io::BufRead::read_line(&mut said, &mut seen).unwrap();
        assert!(read > 0, "the step ended without waiting for the slot: {seen}");
    }
    env.write("source/netlist.sp", "* after\n");
    std::io::Read::read_to_string(&mut said, &mut seen).unwrap();
    let output = crate::env::child_output_within(waiting, crate::env::PROCESS_LIMIT);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), seen);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("]:* after") && !stdout.contains("before"), "{stdout}");
    assert!(crate::env::child_output_within(holder, crate::env::PROCESS_LIMIT).status.success());
}
