//! The reference server as something a lab can leave running: who may run jobs,
//! bounded resources, the job lifecycle, graceful shutdown, logs, the sandbox and
//! the shared Python environments.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lrpymrpc_archive::testing::{file, gzip, tar_bytes};
use lrpymrpc_certs::{Ca, layout, write_pair};
use lrpymrpc_proto::{DataChunk, ExecuteRequest};
use predicates::prelude::*;

use crate::env::{TestEnv, build_wheel, send_signal, spawn_server_binary, wait_exit, wait_until};

/// A client TLS directory beside the fixture's, with `pair` as the client certificate.
fn client_dir_with(env: &TestEnv, name: &str, pair: &lrpymrpc_certs::Pair) -> std::path::PathBuf {
    let dir = env.root.path().join(name);
    let files = layout::client_nested(&dir);
    write_pair(pair, &files.cert, &files.key).unwrap();
    std::fs::create_dir_all(files.ca.parent().unwrap()).unwrap();
    std::fs::copy(layout::ca_cert(&env.tls), &files.ca).unwrap();
    dir
}

#[test]
fn the_allow_list_refuses_other_cns_before_anything_reaches_disk() {
    let env = TestEnv::configured(|config| config.allowed_cns = Some(["someone-else".to_string()].into()));
    env.write("source/x", "x");
    env.client()
        .assert()
        .code(103)
        .stderr(predicate::str::contains("PERMISSION_DENIED"))
        .stderr(predicate::str::contains("CN=`e2e-user` is not allowed"));
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());

    let env = TestEnv::configured(|config| config.allowed_cns = Some(["e2e-user".to_string()].into()));
    env.write("source/x", "x");
    env.client().args(["--CMD", "true"]).assert().success();
}

#[test]
fn expired_client_certificates_and_server_certificates_are_refused() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let ca = Ca::load(&env.tls).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "e2e-user");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = client_dir_with(&env, "expired", &ca.issue(params).unwrap());
    let server_pair = lrpymrpc_certs::Pair {
        cert_pem: std::fs::read_to_string(layout::server_cert(&env.tls)).unwrap(),
        key_pem: std::fs::read_to_string(layout::server_key(&env.tls)).unwrap(),
    };
    let server_as_client = client_dir_with(&env, "server-as-client", &server_pair);
    // The client's own checks refuse both before connecting, in `tls check`'s words ...
    for (dir, why) in
        [(&expired, "expired on 2021-01-01"), (&server_as_client, "is not meant for client authentication")]
    {
        env.client()
            .arg("--TLS_CONFIG_DIR")
            .arg(dir)
            .args(["--retries", "0"])
            .assert()
            .code(101)
            .stderr(predicate::str::contains(why))
            .stderr(predicate::str::contains("hint:"));
    }
    // ... and the server refuses them from a client that makes no such checks.
    // (An accepted certificate gets its bad archive judged: INVALID_ARGUMENT.)
    let mut env = env;
    let addr = env.addr;
    for (dir, accepted) in [(env.tls.clone(), true), (expired, false), (server_as_client, false)] {
        let shown = dir.display().to_string();
        let served = env.runtime().block_on(async move {
            let Ok(mut client) = crate::tls::raw_client(addr, &dir, true).await else { return false };
            let chunk = lrpymrpc_proto::DataChunk { data: b"not even an archive".to_vec() };
            match client.upload(tokio_stream::iter(vec![chunk])).await {
                Ok(_) => true,
                Err(status) => status.code() == tonic::Code::InvalidArgument,
            }
        });
        assert_eq!(served, accepted, "the server judged the certificate in {shown} wrongly");
    }
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
}

#[test]
fn a_repo_url_that_would_be_a_pip_option_is_an_invalid_argument() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    env.client()
        .args(["--REPO_URL", "x=--index-url=http://evil.example/", "--CMD", "touch ran"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("INVALID_ARGUMENT"))
        .stderr(predicate::str::contains("may not start with `-`"));
}

// A full server is a queue for our client: the step waits for a slot (`--queue-timeout`),
// and fails with the server's refusal when the wait is over or not wanted (`0`).
#[test]
fn the_job_limit_answers_resource_exhausted_and_a_step_waits_for_the_slot() {
    let env = TestEnv::configured(|config| config.max_jobs = 1);
    env.write("source/x", "x");
    let mut first = env.client_std();
    let mut first = first.args(["--CMD", "echo holding; sleep 3"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(first.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().ends_with("]:holding") {
            break;
        }
    }
    env.client()
        .args(["--CMD", "true", "--queue-timeout", "0"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("RESOURCE_EXHAUSTED"))
        .stderr(predicate::str::contains("at most 1 jobs at once (--max-jobs)"));
    env.client()
        .args(["--CMD", "true", "--queue-timeout", "300ms"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("every slot is taken; waiting for one"))
        .stderr(predicate::str::contains("for a slot, --queue-timeout)"));
    // Waiting (the default), the step runs once the first job gave its slot back.
    env.client()
        .args(["--CMD", "echo ran after the wait"])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:ran after the wait"))
        .stderr(predicate::str::contains("every slot is taken; waiting for one"))
        .stderr(predicate::str::contains("a slot was free after"));
    assert!(wait_exit(&mut first, crate::env::PROCESS_LIMIT).success());
    env.client().args(["--CMD", "true"]).assert().success().stderr(predicate::str::contains("waiting").not());
}

#[test]
fn a_command_that_prints_nothing_for_too_long_is_stopped() {
    let env = TestEnv::configured(|config| config.idle_timeout = Duration::from_millis(500));
    env.write("source/x", "x");
    env.client()
        .args(["--CMD", "echo start; sleep 30"])
        .assert()
        .code(103)
        .stderr(predicate::str::contains("DEADLINE_EXCEEDED"))
        .stderr(predicate::str::contains("printed nothing for 0.5 s"));
}

#[test]
fn job_directories_go_after_their_results_were_fetched_and_forgotten_ones_after_their_ttl() {
    let mut env = TestEnv::configured(|config| {
        config.finished_grace = Duration::from_millis(200);
        config.job_ttl = Duration::from_secs(3);
    });
    env.write("source/x", "x");
    env.client().args(["--CMD", "mkdir build; echo r > build/r"]).assert().success();
    wait_until(Duration::from_millis(2500), "the finished job is removed", || env.job_dirs().is_empty());
    // A failed job whose results the client does not want is finished too, well
    // before its time-to-live.
    env.client().args(["--CMD", "exit 4", "--no-results-on-failure"]).assert().code(4);
    wait_until(Duration::from_millis(2500), "the failed job is removed", || env.job_dirs().is_empty());

    // An upload nobody comes back for.
    let (addr, tls) = (env.addr, env.tls.clone());
    let id = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let archive =
            lrpymrpc_archive::testing::gzip(&lrpymrpc_archive::testing::tar_bytes(&[lrpymrpc_archive::testing::file(
                "a", "b",
            )]));
        client.upload(tokio_stream::iter([DataChunk { data: archive }])).await.unwrap().into_inner().unique_id
    });
    assert!(env.job_dirs().contains(&id));
    wait_until(Duration::from_secs(10), "the forgotten job is removed", || env.job_dirs().is_empty());
    // And its id is then unknown.
    let (addr, tls) = (env.addr, env.tls.clone());
    let status = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let request = ExecuteRequest { unique_id: id, command_opt: "true".into(), ..Default::default() };
        client.execute(request).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[test]
fn at_start_the_server_sweeps_only_the_job_directories_it_marked() {
    let env = TestEnv::bare();
    let orphan = "0b9f1c8e-7d2a-4c55-9a0e-2f6d3b8c1a11".to_string();
    std::fs::create_dir_all(env.jobs.join(&orphan).join("deep")).unwrap();
    std::fs::write(env.jobs.join(format!("{orphan}.lrpymrpc-job")), "").unwrap();
    let outside = env.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep").unwrap();
    std::os::unix::fs::symlink(&outside, env.jobs.join(&orphan).join("link")).unwrap();
    let unmarked = "5a1e2d3c-4b5a-4697-8877-665544332211".to_string();
    std::fs::create_dir(env.jobs.join(&unmarked)).unwrap();
    let tls = lrpymrpc_mock_server::TlsMaterial::from_dir(&env.tls).unwrap();
    let jobs = env.jobs.clone();
    let env = env.serve(lrpymrpc_mock_server::Config::new(jobs, Some(tls)));
    wait_until(Duration::from_secs(5), "the sweep ran", || !env.jobs.join(&orphan).exists());
    assert_eq!(env.job_dirs(), [unmarked]);
    assert_eq!(std::fs::read_to_string(outside.join("precious")).unwrap(), "keep", "links are not followed");
}

#[test]
fn sigterm_lets_a_short_job_finish_logs_json_and_exits_zero() {
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &["--shutdown-grace", "10s", "--log-format", "json"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let mut client = env.client_std();
    let mut client =
        client.args(["--CMD", "echo started; sleep 1; echo finished"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert!(lines.by_ref().map(Result::unwrap).any(|line| line.ends_with("]:started")));
    send_signal(&server, libc::SIGTERM);
    assert!(lines.map(Result::unwrap).any(|line| line.ends_with("]:finished")), "the running job finished");
    assert!(wait_exit(&mut client, Duration::from_secs(15)).success(), "and its results came back");
    assert!(wait_exit(&mut server, Duration::from_secs(15)).success());
    let log = std::fs::read_to_string(env.root.path().join("server.log")).unwrap();
    let made = |l: &&str| l.contains("upload unpacked") || l.contains("job made from the content store");
    let upload = log.lines().find(made).unwrap_or_else(|| panic!("{log}"));
    assert!(upload.starts_with('{') && upload.ends_with('}'), "a JSON object per line: {upload}");
    assert!(upload.contains(r#""cn":"e2e-user""#) && upload.contains(r#""fingerprint":"sha256:"#), "{upload}");
    assert!(log.contains(r#""message":"command ended""#), "{log}");
}

#[test]
fn after_the_shutdown_grace_running_commands_are_stopped() {
    let mut env = TestEnv::bare();
    let (mut server, port) = spawn_server_binary(&env, &["--shutdown-grace", "1s"]);
    env.set_addr(([127, 0, 0, 1], port).into());
    env.write("source/x", "x");
    let mut client = env.client_std();
    let marker = format!("1000.{}9", std::process::id());
    let mut client = client
        .args(["--CMD", &format!("echo started; sleep {marker}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(client.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|line| line.ends_with("]:started")));
    let mut pgid = None;
    wait_until(Duration::from_secs(5), "the command runs", || {
        pgid = crate::cancel::host_group_of(&format!("sleep\0{marker}\0"));
        pgid.is_some()
    });
    let pgid = pgid.unwrap();
    let sent = Instant::now();
    send_signal(&server, libc::SIGTERM);
    assert!(wait_exit(&mut server, Duration::from_secs(10)).success(), "exit 0 after stopping the job");
    assert!(sent.elapsed() >= Duration::from_secs(1), "the grace was given");
    assert!(!wait_exit(&mut client, Duration::from_secs(10)).success(), "the stopped job is not a success");
    // SAFETY: signal 0 only asks whether the group exists.
    wait_until(Duration::from_secs(3), "the process group is gone", || unsafe { libc::killpg(pgid, 0) } != 0);
}

#[test]
fn sandboxed_jobs_see_only_their_own_directory() {
    // Outside /tmp (which the sandbox hides anyway), so what hides the job root and
    // the TLS directory is their own rule; CI fails here if bwrap cannot run.
    let env = TestEnv::bare_in(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let Some(sandbox) = crate::env::sandbox_for(&env.jobs, &env.tls) else { return };
    let tls_dir = env.tls.clone();
    let mut env = env.serve_configured(|config| {
        config.tls_dir = Some(tls_dir);
        config.sandbox = Some(sandbox);
    });
    // Another job, uploaded for real, with a file of its own.
    let (addr, tls) = (env.addr, env.tls.clone());
    let other = env.runtime().block_on(async move {
        let mut client = crate::tls::raw_client(addr, &tls, true).await.unwrap();
        let archive = gzip(&tar_bytes(&[file("other-data", "other")]));
        client.upload(tokio_stream::iter([DataChunk { data: archive }])).await.unwrap().into_inner().unique_id
    });
    let other_id = other.clone();
    let other = env.jobs.join(other);
    assert!(other.join("other-data").is_file());
    let key = layout::server_key(&env.tls);
    env.write("source/x", "x");
    // pip runs in the sandbox too, writing only the environment it builds.
    let package = env.root.path().join("pkg/greeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def hello():\n    return 'hello from the sandbox'\n").unwrap();
    let wheel = build_wheel(&package, "greeter", &env.work.join("source"));
    let repo_url = format!("greeter=./source/{}", wheel.file_name().unwrap().to_string_lossy());
    let command = format!(
        "python -c 'import greeter; print(greeter.hello())'; cat {key} && echo READ-KEY; ls {jobs}; \
         cat {other}/other-data && echo SAW-OTHER; touch /usr/lrpymrpc-escape && echo WROTE-USR; \
         mkdir build && echo inside > build/out",
        key = key.display(),
        jobs = env.jobs.display(),
        other = other.display()
    );
    env.client()
        .args(["--CMD", &command, "--REPO_URL", &repo_url])
        .assert()
        .success()
        .stdout(predicate::str::contains("]:hello from the sandbox"))
        .stdout(predicate::str::contains("]:READ-KEY").not())
        .stdout(predicate::str::contains("]:SAW-OTHER").not())
        .stdout(predicate::str::contains(format!("]:{other_id}")).not())
        .stdout(predicate::str::contains(".lrpymrpc-job").not())
        .stdout(predicate::str::contains("]:WROTE-USR").not());
    assert_eq!(env.read("build/out"), b"inside\n", "the job directory is writable");
    assert!(!Path::new("/usr/lrpymrpc-escape").exists());
}

#[test]
fn jobs_with_the_same_repo_url_share_one_environment() {
    let env = TestEnv::new();
    let package = env.root.path().join("pkg/greeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def hello():\n    return 'hello from greeter'\n").unwrap();
    let wheel = build_wheel(&package, "greeter", &env.work.join("dist"));
    let wheel_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    let repo_url = format!("greeter=./dist/{wheel_name}");
    let run = || {
        env.client()
            .args(["--SOURCE", "dist", "--REPO_URL", &repo_url])
            .args(["--CMD", "python -c 'import greeter; print(greeter.hello())'"])
            .assert()
            .success()
            .stdout(predicate::str::contains("hello from greeter"))
    };
    run().stdout(predicate::str::contains("Successfully installed greeter"));
    run()
        .stdout(predicate::str::contains("reusing the cached Python environment"))
        .stdout(predicate::str::contains("Successfully installed").not());
}

#[test]
fn without_the_cache_every_job_installs() {
    let env = TestEnv::configured(|config| config.env_cache = false);
    let package = env.root.path().join("pkg/greeter");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("__init__.py"), "def hello():\n    return 'hi'\n").unwrap();
    let wheel = build_wheel(&package, "greeter", &env.work.join("dist"));
    let repo_url = format!("greeter=./dist/{}", wheel.file_name().unwrap().to_string_lossy());
    for _ in 0..2 {
        env.client()
            .args(["--SOURCE", "dist", "--REPO_URL", &repo_url, "--CMD", "python -c 'import greeter'"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Successfully installed greeter"));
    }
}
