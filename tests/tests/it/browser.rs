//! A real browser for the tests: Debian's Chromium, headless, driven over the W3C
//! WebDriver protocol through Debian's chromedriver on loopback. The few calls the
//! tests need (a session, go to a URL, run a script, a screenshot) are plain JSON over
//! HTTP/1.1, written here. The browser trusts the test CA through its own NSS
//! certificate store (`certutil`, as a lab imports its CA), so the page's HTTPS is
//! checked as a user's browser checks it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::env::tool;

/// How long one WebDriver call may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// Says `what` on the test binary's own standard error, which the test harness does
/// not capture: what the browser did that a passing test tolerates stays in CI's log.
pub fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "{what}");
}

pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    /// chromedriver's log, with every DevTools message (`--verbose`).
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the CA in `ca_cert`;
    /// its profile, certificate store and logs live in `dir`.
    pub fn start(ca_cert: &Path, dir: &Path) -> Browser {
        let chromium = tool("chromium", "chromium");
        let chromedriver = tool("chromedriver", "chromium-driver");
        let certutil = tool("certutil", "libnss3-tools");
        let home = dir.join("home");
        let nssdb = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).unwrap();
        let store = format!("sql:{}", nssdb.display());
        run(Command::new(&certutil).args(["-d", &store, "-N", "--empty-password"]));
        run(Command::new(&certutil)
            .args(["-d", &store, "-A", "-t", "C,,", "-n", "lrpymrpc test CA", "-i"])
            .arg(ca_cert));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--verbose")
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut browser = Browser { driver, address, session: String::new(), log: dir.join("chromedriver.log") };
        let start = Instant::now();
        while browser.call("GET", "/status", None).pointer("/value/ready") != Some(&Value::Bool(true)) {
            assert!(start.elapsed() < CALL_LIMIT, "chromedriver did not become ready: {}", browser.log(dir));
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = dir.join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--window-size=1100,900", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let made = browser.call("POST", "/session", Some(capabilities));
        browser.session = made
            .pointer("/value/sessionId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no browser session: {made}\n{}", browser.log(dir)))
            .to_string();
        browser
    }

    fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver call: its JSON answer (an error is a JSON answer too).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let Ok(mut stream) = TcpStream::connect(self.address) else { return Value::Null };
        stream.set_read_timeout(Some(CALL_LIMIT)).unwrap();
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return Value::Null;
        }
        // The head, then the body by its length (chromedriver may keep the connection).
        let mut response = Vec::new();
        let mut buffer = [0u8; 64 * 1024];
        loop {
            let head_end = response.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok());
                if length.is_some_and(|length| response.len() >= end + 4 + length) {
                    let body = &response[end + 4..end + 4 + length.unwrap_or(0)];
                    return serde_json::from_slice(body).unwrap_or(Value::Null);
                }
            }
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
            }
        }
        let response = String::from_utf8_lossy(&response);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url` (returns once the page loaded).
    pub fn goto(&self, url: &str) {
        let answer = self.session_call("POST", "/url", Some(json!({"url": url})));
        assert!(answer.pointer("/value/error").is_none(), "opening {url}: {answer}");
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn eval(&self, script: &str) -> Value {
        let answer = self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": []})));
        assert!(answer.pointer("/value/error").is_none(), "running `{script}`: {answer}");
        answer.get("value").cloned().unwrap_or(Value::Null)
    }

    /// The text of the first element `selector` finds ("" when none).
    pub fn text(&self, selector: &str) -> String {
        let script = format!("var e = document.querySelector({}); return e ? e.textContent : '';", json!(selector));
        self.eval(&script).as_str().unwrap_or_default().to_string()
    }

    /// Waits until `selector`'s text satisfies `wanted` (the page updating itself);
    /// returns that text, or fails with the last one.
    pub fn wait_for_text(&self, selector: &str, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(selector);
            if wanted(&text) {
                return text;
            }
            assert!(
                start.elapsed() < crate::env::PROCESS_LIMIT,
                "the browser never showed {what}; `{selector}` says:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks the page as it stands: a page loaded anew (a reload) forgets the mark.
    pub fn mark(&self, mark: u64) {
        self.eval(&format!("window.lrpymrpcNoReload = {mark}; return 1;"));
    }

    /// Whether the page still holds `mark` (no page was loaded anew since).
    pub fn still_marked(&self, mark: u64) -> bool {
        self.eval("return window.lrpymrpcNoReload;") == mark
    }

    /// Fails unless the page still holds `mark`, saying how the page there came to be.
    pub fn assert_still_marked(&self, mark: u64) {
        assert!(self.still_marked(mark), "the page was loaded anew instead of updated: {}", self.how_loaded());
    }

    /// How the page there came to be: its navigation's type and start, the history's
    /// length, its address, and the last navigation lines of chromedriver's log.
    pub fn how_loaded(&self) -> String {
        let how = self.eval(
            "var n = performance.getEntriesByType('navigation')[0]; \
             return [n ? n.type : 'no navigation entry', 'started at ' + performance.timeOrigin, \
             'now ' + Date.now(), 'history ' + history.length, location.href].join(', ');",
        );
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let said: Vec<&str> = log
            .lines()
            // DevTools' own words for a frame's navigations and a renderer's crash, not
            // chromedriver's wait before each command.
            .filter(|line| {
                ["Page.frame", "Page.navigat", "Inspector.targetCrashed", "Target.targetCrashed", "\"reason\""]
                    .iter()
                    .any(|w| line.contains(w))
            })
            .map(|line| line.get(..400).unwrap_or(line))
            .collect();
        format!("{how}\n{}", said[said.len().saturating_sub(40)..].join("\n"))
    }

    /// Whether a JavaScript dialog (an `alert`) is open.
    pub fn alert_open(&self) -> bool {
        self.session_call("GET", "/alert/text", None).pointer("/value/error").is_none()
    }

    /// Saves a screenshot of the window as PNG at `path`.
    pub fn screenshot(&self, path: &Path) -> PathBuf {
        use base64::Engine;
        let answer = self.session_call("GET", "/screenshot", None);
        let encoded = answer.get("value").and_then(Value::as_str).unwrap_or_else(|| panic!("no screenshot: {answer}"));
        let png = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
        path.to_path_buf()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}
