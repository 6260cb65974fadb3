//! `lrpymrpc status` (issue 33, the terminal half): the real client asks the server over
//! mutual TLS what its compute is doing. One user holds the only `spectre` license,
//! another CN's step waits for it: the first user sees its own job whole and the other
//! CN's only as CN, state, resources, reason and time (never its command), in text and
//! in the JSON document; a server that does not answer is said so and fails the exit
//! status.

use std::collections::BTreeMap;

use lrpymrpc_mock_server::resources::Capacity;

use crate::env::{PROCESS_LIMIT, Running, TestEnv, client_dir_for, wait_until};

/// A server of 2 cores, 4 GiB and the one `spectre` license, for which a second step
/// waits while a first holds it.
pub(crate) fn two_cores_and_one_spectre() -> Capacity {
    Capacity {
        cpus: 2,
        memory_bytes: 4 << 30,
        licenses: BTreeMap::from([("spectre".to_string(), 1)]),
        default_cpus: 1,
        per_cn: Default::default(),
    }
}

#[test]
fn status_shows_the_queue_with_reasons_and_another_cns_jobs_without_their_commands() {
    let env = TestEnv::configured(|config| {
        config.capacity = two_cores_and_one_spectre();
    });
    env.write("source/x", "x");
    let root = env.root.path().display().to_string();
    let held = format!("touch {root}/held; until [ -e {root}/release ]; do sleep 0.02; done; echo holder-ran");
    let holder = Running::start(&env, &["--RUN_NAME", "nand2", "--license", "spectre", "--CMD", &held]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || env.root.path().join("held").exists());
    let other = client_dir_for(&env, "other-designer");
    let secret = "echo SECRET-COMMAND-of-the-other-cn";
    let waiter = Running::start_as(&env, Some(&other), &["--license", "spectre", "--CMD", secret]);
    waiter.wait_for("waiting: license spectre 1/1 in use");

    let output = env.client().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("executor local") && text.contains("spectre 1/1 in use"), "{text}");
    let running = text.lines().find(|line| line.contains("RUNNING")).unwrap_or_default();
    assert!(running.contains("(you)") && running.contains("run nand2") && running.contains("holder-ran"), "{text}");
    let waiting = text.lines().find(|line| line.contains("WAITING #1")).unwrap_or_default();
    assert!(waiting.contains("other-designer") && waiting.contains("spectre:1"), "{text}");
    assert!(waiting.contains("waiting: license spectre 1/1 in use"), "{text}");
    assert!(!text.contains("SECRET-COMMAND") && !waiting.contains(" job "), "another CN's command or id: {text}");

    let output = env.client().args(["status", "--json"]).output().unwrap();
    let json = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success() && !json.contains("SECRET-COMMAND"), "{json}");
    // A real JSON parser reads it, and finds what the text said.
    let checked = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys; d=json.load(sys.stdin); s=d['servers'][0]; jobs=s['jobs']; \
             assert d['schema']=='lrpymrpc-status/1' and s['reachable'] and s['executor']=='local'; \
             w=[j for j in jobs if j['state']=='waiting'][0]; r=[j for j in jobs if j['state']=='running'][0]; \
             assert w['cn']=='other-designer' and not w['own'] and w['command']=='' and w['job_id']=='' and w['position']==1; \
             assert r['own'] and r['run_name']=='nand2' and r['licenses']==[{'name':'spectre','count':1}]; \
             assert s['capacity']['licenses']==[{'name':'spectre','total':1,'free':0}]; print('ok')",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(json.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout).trim(),
        "ok",
        "{json}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // The other user sees the holder as a CN and a license, not its command or run.
    let output = crate::security::client_as(&env, &other, &env.work).arg("status").output().unwrap();
    let theirs = String::from_utf8_lossy(&output.stdout);
    assert!(theirs.contains("e2e-user") && !theirs.contains("holder-ran") && !theirs.contains("nand2"), "{theirs}");
    assert!(theirs.contains("SECRET-COMMAND"), "their own job whole: {theirs}");

    std::fs::write(env.root.path().join("release"), "").unwrap();
    for running in [holder, waiter] {
        let (status, said) = running.end();
        assert!(status.success(), "{said}");
    }
    // Presence first (a server answered), then the absence: one that does not is said
    // so, and the exit status fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let servers = format!("127.0.0.1:{},127.0.0.1:{closed}", env.addr.port());
    let mut client = env.bare_client();
    client.args(["--SERVER_IP", &servers, "--SERVER_PORT", "8766", "--TLS_CONFIG_DIR"]).arg(&env.tls);
    let output = client.args(["--retries", "0", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("nothing waits or runs"), "the answering server: {text}");
    assert!(text.contains(&format!("127.0.0.1:{closed}: not reachable")), "{text}");
}

// `--watch` asks again until Ctrl-C: it shows an empty server, then (without being
// restarted) a job that started meanwhile; Ctrl-C ends it with exit 0 (watching until
// stopped is what was asked). Into a pipe, reports follow each other; on a terminal
// each is drawn after clearing the screen.
#[test]
fn status_watch_shows_a_job_that_starts_later_and_ends_at_ctrl_c() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let watching = Running::start(&env, &["status", "--watch"]);
    watching.wait_for("nothing waits or runs");
    let root = env.root.path().display().to_string();
    let held = format!("until [ -e {root}/release ]; do sleep 0.02; done");
    let job = Running::start(&env, &["--RUN_NAME", "watched", "--CMD", &held]);
    watching.wait_for("run watched");
    watching.signal(libc::SIGINT);
    let (status, said) = watching.end();
    assert!(status.success(), "{said}");
    assert!(!said.contains("\u{1b}[2J"), "no screen control into a pipe: {said}");
    std::fs::write(env.root.path().join("release"), "").unwrap();
    assert!(job.end().0.success());
}

// On a terminal, `--watch` redraws in place as `top` does: each report after the
// cursor is sent home and the screen cleared; Ctrl-C ends it with status 0.
#[test]
fn status_watch_redraws_in_place_on_a_terminal() {
    let env = TestEnv::new();
    let script = crate::env::tool("script", "bsdutils");
    let client = env!("CARGO_BIN_EXE_lrpymrpc-e2e-client");
    let pid_file = env.root.path().join("watch.pid");
    // The shell becomes the client (exec), in the terminal's foreground, where Ctrl-C
    // reaches it as a user's would.
    let line = format!(
        "sh -c 'echo $$ > \"{}\"; exec \"{client}\" --SERVER_IP 127.0.0.1 --SERVER_PORT {} --TLS_CONFIG_DIR \"{}\" \
         status --watch'",
        pid_file.display(),
        env.addr.port(),
        env.tls.display()
    );
    let typescript = env.root.path().join("typescript");
    let mut terminal = std::process::Command::new(script)
        .current_dir(&env.work)
        .env("LRPYMRPC_CONFIG", "")
        .arg("-qfec")
        .arg(&line)
        .arg(&typescript)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let screen = || String::from_utf8_lossy(&std::fs::read(&typescript).unwrap_or_default()).into_owned();
    const HOME_AND_CLEAR: &str = "\u{1b}[H\u{1b}[2J";
    wait_until(PROCESS_LIMIT, "two reports drawn on the terminal", || screen().matches(HOME_AND_CLEAR).count() >= 2);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: kill with a pid this test's child wrote (the client it runs).
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = crate::env::wait_exit(&mut terminal, PROCESS_LIMIT);
    let drawn = screen();
    assert!(status.success(), "Ctrl-C ends --watch with status 0: {drawn}");
    let reports: Vec<&str> = drawn.split(HOME_AND_CLEAR).skip(1).collect();
    assert!(reports.len() >= 2, "{drawn:?}");
    for report in &reports[..2] {
        assert!(report.contains("nothing waits or runs"), "each redraw is a whole report: {report:?}");
    }
}
