//! The status page (issue 33, the browser half), read over real HTTPS as a browser
//! would: the server's own certificate checked against the lab's CA, the overview
//! with its bars, queue and plots, the live event stream showing a job that waits for
//! the one license with its reason, then runs and ends, all without a reload; a CN
//! that is markup reaches every view as text; another CN's command never appears; a
//! wrong path is a 404; idle connections cannot starve a reader.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use lrpymrpc_certs::layout;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::env::{PROCESS_LIMIT, Running, TestEnv, client_dir_for, wait_until};
use crate::monitoring::free_address;

/// A CN that is markup: a certificate may say anything.
const HOSTILE_CN: &str = "<img src=x onerror=alert(1)>";

fn page_env() -> (TestEnv, SocketAddr) {
    page_env_with_history("")
}

/// [`page_env`] on a root where an earlier server left `history` (the status page's
/// samples, `SECONDS CORES MEMORY WAITING POOL=N` a line).
fn page_env_with_history(history: &str) -> (TestEnv, SocketAddr) {
    let page = free_address();
    let env = TestEnv::bare();
    std::fs::write(env.jobs.join("lrpymrpc-status-history"), history).unwrap();
    let env = env.serve_configured(|config| {
        config.capacity = crate::status::two_cores_and_one_spectre();
        config.status_listen = Some(page);
        config.status_sample_every = Duration::from_millis(200);
    });
    env.write("source/x", "x");
    (env, page)
}

/// A TLS connection to the page that trusts only the test CA and checks the name.
fn connect(env: &TestEnv, page: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(layout::ca_cert(&env.tls)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(lrpymrpc_certs::provider::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = None;
    wait_until(Duration::from_secs(10), "the status page to listen", || {
        tcp = TcpStream::connect(page).ok();
        tcp.is_some()
    });
    let tcp = tcp.unwrap();
    tcp.set_read_timeout(Some(PROCESS_LIMIT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(Arc::new(config), name).unwrap(), tcp)
}

/// `GET path`: the status line, the headers (names lowercased) and the body.
pub(crate) fn get(env: &TestEnv, page: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = connect(env, page);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// The live view's events as a browser's EventSource gets them: each `overview`
/// event's data, in order, on a channel.
fn events(env: &TestEnv, page: SocketAddr) -> mpsc::Receiver<String> {
    let mut stream = connect(env, page);
    write!(stream, "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let (sent, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut data = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(more) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(more);
            } else if line.is_empty() && !data.is_empty() && sent.send(std::mem::take(&mut data)).is_err() {
                return;
            }
        }
    });
    received
}

/// The first event `wanted` accepts; fails with the last one seen.
fn wait_for_event(events: &mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + PROCESS_LIMIT;
    let mut last = String::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => last = event,
            Err(_) => break,
        }
    }
    panic!("no live update showed {what}; the last one:\n{last}");
}

#[test]
fn the_page_shows_a_job_wait_for_a_license_run_and_end_live_with_user_text_escaped() {
    let (env, page) = page_env();
    let (status, headers, body) = get(&env, page, "/");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "content-type: text/html; charset=utf-8",
    ] {
        assert!(headers.contains(header), "{header} in {headers}");
    }
    assert!(body.contains("license spectre") && body.contains("0/1 in use") && body.contains("<meter"), "{body}");
    assert!(body.contains("Nothing waits.") && body.contains("Nothing runs."), "{body}");
    assert!(body.contains("<script src=\"/live.js\" defer></script>"), "{body}");
    assert!(!body.contains("<script>"), "no inline script: {body}");

    let live = events(&env, page);
    wait_for_event(&live, "the empty overview", |event| event.contains("Nothing waits."));
    let root = env.root.path().display().to_string();
    let held = format!("touch {root}/held; until [ -e {root}/release ]; do sleep 0.02; done; echo holder-ran");
    let holder = Running::start(&env, &["--license", "spectre", "--CMD", &held]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || env.root.path().join("held").exists());
    let hostile = client_dir_for(&env, HOSTILE_CN);
    let secret = "echo SECRET-COMMAND-of-a-waiting-step";
    let waiter = Running::start_as(&env, Some(&hostile), &["--license", "spectre", "--CMD", secret]);
    waiter.wait_for("waiting: license spectre 1/1 in use");

    let escaped = "&lt;img src=x onerror=alert(1)&gt;";
    let waiting = wait_for_event(&live, "the step waiting for the license, with its reason", |event| {
        event.contains("Waiting (1)") && event.contains(escaped)
    });
    assert!(waiting.contains("waiting: license spectre 1/1 in use") && waiting.contains("1/1 in use"), "{waiting}");
    assert!(waiting.contains("<td class=\"cn\">e2e-user</td>"), "the holder runs: {waiting}");
    assert!(!waiting.contains("<img") && !waiting.contains("SECRET-COMMAND"), "{waiting}");
    let (_, _, body) = get(&env, page, "/");
    assert!(body.contains(escaped) && !body.contains("<img") && !body.contains("SECRET-COMMAND"), "{body}");
    assert!(!body.contains("holder-ran"), "no command of anyone's: {body}");

    std::fs::write(env.root.path().join("release"), "").unwrap();
    let (status, said) = holder.end();
    assert!(status.success(), "{said}");
    let (status, said) = waiter.end();
    assert!(status.success() && said.contains("SECRET-COMMAND-of-a-waiting-step"), "{said}");
    let ended = wait_for_event(&live, "both jobs ended", |event| {
        event.contains("Nothing waits.") && event.contains("Nothing runs.")
    });
    // The plots drew the license held, from samples the server took itself.
    assert!(ended.contains("license spectre in use (of 1)") && ended.matches("<polyline").count() >= 4, "{ended}");
    assert!(env.jobs.join("lrpymrpc-status-history").exists(), "the history is kept on disk");

    for path in ["/nope", "/job/123/abc", "/../etc/passwd", "/events/x"] {
        let (status, _, body) = get(&env, page, path);
        assert!(status.starts_with("HTTP/1.1 404") && body == "not found\n", "{path}: {status} {body}");
    }
    let (status, headers, script) = get(&env, page, "/live.js");
    assert!(status.contains("200") && headers.contains("content-type: text/javascript"), "{headers}");
    assert!(script.contains("new EventSource(\"/events\")"), "{script}");
}

// Idle connections (no handshake, no request) cannot starve a reader: the newest
// pushes out the oldest that has not sent its request; live views are capped.
#[test]
fn idle_connections_and_many_live_views_do_not_starve_the_page() {
    let (env, page) = page_env();
    assert!(get(&env, page, "/").0.contains("200"));
    let idle: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(page).unwrap()).collect();
    let (status, _, body) = get(&env, page, "/");
    assert!(status.contains("200") && body.contains("spectre"), "{status}");
    drop(idle);
    let views: Vec<_> = (0..lrpymrpc_mock_server::web::serve::MAX_EVENT_STREAMS).map(|_| events(&env, page)).collect();
    for view in &views {
        wait_for_event(view, "a live view's first update", |event| event.contains("Nothing waits."));
    }
    let (status, _, body) = get(&env, page, "/events");
    assert!(status.contains("503") && body.contains("too many live views open"), "{status} {body}");
    assert!(get(&env, page, "/").0.contains("200"), "the page itself is still served");
}

/// The events of a job's page (`line`: one output line's text; `end`: how it ended)
/// from `path`, as `(event, data)` on a channel.
fn job_events(env: &TestEnv, page: SocketAddr, path: &str) -> mpsc::Receiver<(String, String)> {
    let mut stream = connect(env, page);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let (sent, received) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut event, mut data) = (String::new(), String::new());
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(name) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                event = name.to_string();
            } else if let Some(more) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(more);
            } else if line.is_empty()
                && !event.is_empty()
                && sent.send((std::mem::take(&mut event), std::mem::take(&mut data))).is_err()
            {
                return;
            }
        }
    });
    received
}

fn next_event(events: &mpsc::Receiver<(String, String)>, what: &str) -> (String, String) {
    events.recv_timeout(PROCESS_LIMIT).unwrap_or_else(|_| panic!("no event: {what}"))
}

// The owner's link (`jobs --web`) opens the job's own page: its command and output as
// text, lines arriving live, its end told; a wrong secret, another job's id or a
// secret of another length gets the same 404 as a job that never existed, and nothing
// of the job is on the overview.
#[test]
fn a_jobs_own_page_shows_its_output_live_to_the_link_holder_alone() {
    let (env, page) = page_env();
    let root = env.root.path().display().to_string();
    let command = format!(
        "echo '<script>alert(\"line\")</script>'; echo first-line; until [ -e {root}/more ]; do sleep 0.02; done; \
         echo second-line; until [ -e {root}/end ]; do sleep 0.02; done; exit 3"
    );
    let detached =
        env.client().args(["--detach", "--RUN_NAME", "<b onclick=x>run", "--CMD", &command]).output().unwrap();
    assert!(detached.status.success(), "{}", String::from_utf8_lossy(&detached.stderr));
    let listed = env.client().args(["jobs", "--web"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let (id, url) = listed.trim().split_once("  ").unwrap_or_else(|| panic!("one job and its link: {listed}"));
    let prefix = format!("https://127.0.0.1:{}/job/{id}/", page.port());
    let secret = url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{url} starts with {prefix}"));
    assert_eq!(secret.len(), 64, "{url}");
    let path = format!("/job/{id}/{secret}");
    // `status` gives the owner the same link beside the job, in text and JSON.
    let status = env.client().arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.lines().any(|line| line.contains("(you)") && line.ends_with(&format!("  page {url}"))), "{status}");
    let json = env.client().args(["status", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&json.stdout).contains(&format!("\"page_url\":\"{url}\"")), "{json:?}");

    let live = job_events(&env, page, &format!("{path}/events?after=0"));
    let mut lines = Vec::new();
    while !lines.iter().any(|line: &String| line == "first-line") {
        let (event, data) = next_event(&live, "the first lines");
        assert_eq!(event, "line");
        lines.push(data);
    }
    assert!(lines.contains(&"<script>alert(\"line\")</script>".to_string()), "the line as text: {lines:?}");
    let (status, headers, body) = get(&env, page, &path);
    assert!(status.contains("200") && headers.contains("referrer-policy: no-referrer"), "{status}{headers}");
    assert!(body.contains("&lt;script&gt;alert(&quot;line&quot;)&lt;/script&gt;\nfirst-line"), "{body}");
    assert!(body.contains("<td>&lt;b onclick=x&gt;run</td>") && body.contains("running for"), "{body}");
    assert!(!body.contains("<script>alert") && !body.contains("<b onclick"), "{body}");

    std::fs::write(env.root.path().join("more"), "").unwrap();
    let mut after = Vec::new();
    while !after.iter().any(|line: &String| line == "second-line") {
        after.push(next_event(&live, "the line printed after the page opened").1);
    }
    std::fs::write(env.root.path().join("end"), "").unwrap();
    loop {
        let (event, data) = next_event(&live, "the end");
        if event == "end" {
            assert!(data.contains("ended: exited 3"), "{data}");
            break;
        }
    }
    let script = get(&env, page, "/live.js").2;
    assert!(script.contains("createTextNode(event.data") && script.contains("state.textContent"), "{script}");

    let mut wrong = secret.to_string().into_bytes();
    wrong[10] = if wrong[10] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    let never = "00000000-0000-0000-0000-000000000000";
    for denied in [
        format!("/job/{id}/{wrong}"),
        format!("/job/{id}/{wrong}/events"),
        format!("/job/{never}/{secret}"),
        format!("/job/{id}/{}", &secret[..32]),
        format!("/job/{id}/{secret}0"),
        format!("/job/{id}"),
    ] {
        let (status, _, body) = get(&env, page, &denied);
        assert!(status.starts_with("HTTP/1.1 404") && body == "not found\n", "{denied}: {status} {body}");
    }
    let overview = get(&env, page, "/").2;
    assert!(
        !overview.contains(secret) && !overview.contains("first-line") && !overview.contains("alert"),
        "{overview}"
    );
}

// As a person would: the real Chromium opens the overview over HTTPS (the test CA in
// its certificate store), and without a reload sees a job appear, another CN's step
// wait for the license with its reason (its CN, markup, shown as text: no image made,
// no alert), both run and end; then the owner's link shows the job's output arriving
// line by line and its end, and a wrong link is "not found". A screenshot is saved
// (to `LRPYMRPC_SCREENSHOT` when set: the README's picture).
#[test]
fn chromium_sees_the_queue_and_a_jobs_output_live_without_a_reload() {
    // A working day an earlier server sampled, a minute apart: cores busy by day, the
    // license taken in the afternoon, a queue while it was.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let day: String = (1..1440u64)
        .map(|minute| {
            let hour = (minute / 60) as f64;
            let cores = if (8.0..20.0).contains(&hour) { 1 + (minute / 7) % 2 } else { minute / 180 % 2 };
            let spectre = u64::from((13.0..18.0).contains(&hour));
            let waiting = if (14.0..16.0).contains(&hour) { 1 + minute % 3 } else { 0 };
            let memory = cores * (1 << 30) + (minute % 11) * (64 << 20);
            format!("{} {cores} {memory} {waiting} spectre={spectre}\n", now - (1440 - minute) * 60)
        })
        .collect();
    let (env, page) = page_env_with_history(&day);
    let browser_dir = env.root.path().join("browser");
    std::fs::create_dir_all(&browser_dir).unwrap();
    let browser = crate::browser::Browser::start(&layout::ca_cert(&env.tls), &browser_dir);
    let base = format!("https://localhost:{}", page.port());
    browser.goto(&format!("{base}/"));
    browser.wait_for_text("#queue", "the empty queue", |text| text.contains("Nothing waits."));
    // A reload would forget this.
    browser.mark(1);
    // The day the earlier server sampled is drawn (the history outlived its server).
    let drawn =
        browser.eval("return document.querySelector('figure.plot polyline').getAttribute('points').split(' ').length;");
    assert!(drawn.as_u64().unwrap_or(0) >= 1439, "the day's samples drawn: {drawn}");

    let root = env.root.path().display().to_string();
    let held = format!(
        "touch {root}/held; echo '<script>alert(1)</script>'; echo first-line; for n in 1 2 3; do \
         until [ -e {root}/more-$n ] || [ -e {root}/release ]; do sleep 0.02; done; \
         [ -e {root}/more-$n ] && echo line-$n; done; until [ -e {root}/release ]; do sleep 0.02; done; exit 3"
    );
    let holder = Running::start(&env, &["--license", "spectre", "--RUN_NAME", "nand2", "--CMD", &held]);
    wait_until(PROCESS_LIMIT, "the license holder runs", || env.root.path().join("held").exists());
    browser.wait_for_text("#running", "the holder running", |text| text.contains("e2e-user"));
    let hostile = client_dir_for(&env, HOSTILE_CN);
    let waiter = Running::start_as(&env, Some(&hostile), &["--license", "spectre", "--CMD", "echo waited"]);
    waiter.wait_for("waiting: license spectre 1/1 in use");
    let queue = browser.wait_for_text("#queue", "the step waiting with its reason", |text| {
        text.contains(HOSTILE_CN) && text.contains("waiting: license spectre 1/1 in use")
    });
    assert!(queue.contains("Waiting (1)"), "{queue}");
    assert!(browser.text("#server").contains("1/1 in use"), "the license bar: {}", browser.text("#server"));
    assert_eq!(browser.eval("return document.querySelectorAll('img').length;"), 0, "the CN made no element");
    assert!(!browser.alert_open(), "no script of a CN ran");
    browser.assert_still_marked(1);
    let shot = browser.screenshot(&browser_dir.join("status-page.png"));
    if let Some(wanted) = std::env::var_os("LRPYMRPC_SCREENSHOT") {
        std::fs::copy(&shot, wanted).unwrap();
    }

    // The owner's link: the job's own page, live.
    let listed = env.client().args(["jobs", "--web"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let url = listed.lines().find_map(|line| line.split_once("  ").map(|(_, url)| url.to_string()));
    let url = url.unwrap_or_else(|| panic!("a link: {listed}")).replace("127.0.0.1", "localhost");
    browser.goto(&url);
    browser.wait_for_text("#output", "the output so far", |text| text.contains("first-line"));
    assert!(browser.text("#output").contains("<script>alert(1)</script>"), "a line of markup is text");
    // A line the job prints now arrives on the page as it stands. (Twice in this
    // suite's CI runs Chromium loaded the job's page anew by itself, the pages having no
    // code that navigates: such a try is said and made again, up to three times.)
    let live = (1..=3).find(|n| {
        browser.mark(10 + n);
        std::fs::write(env.root.path().join(format!("more-{n}")), "").unwrap();
        let line = format!("line-{n}");
        browser.wait_for_text("#output", "a line printed after the page opened", |text| text.contains(&line));
        let kept = browser.still_marked(10 + n);
        if !kept {
            crate::browser::say(&format!(
                "Chromium loaded the job's page anew while line {n} arrived: {}",
                browser.how_loaded()
            ));
        }
        kept
    });
    assert!(live.is_some(), "no line arrived on the page as it stood, in three tries");
    browser.mark(20);
    std::fs::write(env.root.path().join("release"), "").unwrap();
    browser.wait_for_text("#state", "the job's end", |text| text.contains("ended: exited 3"));
    if !browser.still_marked(20) {
        crate::browser::say(&format!("Chromium loaded the job's page anew as the job ended: {}", browser.how_loaded()));
    }
    assert!(!browser.alert_open());
    let (status, said) = holder.end();
    assert_eq!(status.code(), Some(3), "{said}");
    let (status, said) = waiter.end();
    assert!(status.success(), "{said}");

    browser.goto(&format!("{base}/"));
    browser.mark(3);
    browser
        .wait_for_text("#live", "both ended", |text| text.contains("Nothing waits.") && text.contains("Nothing runs."));
    browser.assert_still_marked(3);
    let wrong = format!("{}0", &url[..url.len() - 1]).replace("/job/", "/job/x");
    browser.goto(&wrong);
    assert_eq!(browser.text("body").trim(), "not found");
}

// A live view of a job that prints nothing holds a place only while its viewer is
// there: the places all taken (the next one refused), the viewers leave, and a new
// view is let in at once, not after the streams' hour.
#[test]
fn a_live_job_view_left_by_its_viewer_frees_its_place_while_the_job_is_silent() {
    let (env, page) = page_env();
    let root = env.root.path().display().to_string();
    let silent = format!("until [ -e {root}/end ]; do sleep 0.02; done");
    let detached = env.client().args(["--detach", "--CMD", &silent]).output().unwrap();
    assert!(detached.status.success(), "{}", String::from_utf8_lossy(&detached.stderr));
    let listed = env.client().args(["jobs", "--web"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let (id, url) = listed.trim().split_once("  ").unwrap_or_else(|| panic!("{listed}"));
    let path = url.split_once("/job/").map(|(_, rest)| format!("/job/{rest}/events?after=0")).unwrap();
    let views: Vec<_> = (0..lrpymrpc_mock_server::web::serve::MAX_EVENT_STREAMS)
        .map(|_| {
            let mut stream = connect(&env, page);
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "a live view is let in");
            stream
        })
        .collect();
    let (status, _, _) = get(&env, page, &path);
    assert!(status.contains("503"), "every place taken: {status}");
    drop(views);
    wait_until(PROCESS_LIMIT, "a new live view let in once the others left", || {
        let mut stream = connect(&env, page);
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
    });
    // Nothing of the test left running.
    env.client().args(["cancel", id]).assert().success();
}

// `jobs --web` against a server without a status page: the job is there (plain `jobs`
// lists it), but no link can be given, and the client says so and fails.
#[test]
fn jobs_web_fails_naming_a_server_that_serves_no_page() {
    let env = TestEnv::new();
    env.write("source/x", "x");
    let root = env.root.path().display().to_string();
    let held = format!("until [ -e {root}/end ]; do sleep 0.02; done");
    let detached = env.client().args(["--detach", "--CMD", &held]).output().unwrap();
    assert!(detached.status.success(), "{}", String::from_utf8_lossy(&detached.stderr));
    let listed = env.client().arg("jobs").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let row =
        listed.lines().find(|line| line.contains("running")).unwrap_or_else(|| panic!("the job is listed: {listed}"));
    let id = row.split_whitespace().next().unwrap().to_string();
    let web = env.client().args(["jobs", "--web"]).output().unwrap();
    let said = String::from_utf8_lossy(&web.stderr);
    assert!(!web.status.success() && web.stdout.is_empty(), "{said}");
    assert!(said.contains(&format!("--web: 127.0.0.1:{} serve(s) no status page", env.addr.port())), "{said}");
    assert!(said.contains("hint: its administrator turns one on with --status-listen"), "{said}");
    env.client().args(["cancel", &id]).assert().success();
}
