//! The one fixture: a temporary directory with throwaway certificates, a working
//! directory for the client, a job root, and a server on `127.0.0.1:0`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use lrpymrpc_certs::{Throwaway, loopback_names};
use lrpymrpc_mock_server::{Config, TlsMaterial};
use tokio::sync::oneshot;

pub const CLIENT: &str = env!("CARGO_BIN_EXE_lrpymrpc-e2e-client");

/// The longest any process a test starts may run: no CI run can hang on one.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(300);

pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub tls: PathBuf,
    pub jobs: PathBuf,
    pub work: PathBuf,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestEnv {
    /// The reference server with mutual TLS.
    pub fn new() -> TestEnv {
        let env = TestEnv::bare();
        let tls = TlsMaterial::from_dir(&env.tls).unwrap();
        let jobs = env.jobs.clone();
        env.serve(Config::new(jobs, Some(tls)))
    }

    /// Directories and certificates, no server yet.
    pub fn bare() -> TestEnv {
        TestEnv::bare_in(&std::env::temp_dir())
    }

    /// The same below `parent` (outside `/tmp`, for tests of what the sandbox hides).
    pub fn bare_in(parent: &Path) -> TestEnv {
        std::fs::create_dir_all(parent).unwrap();
        let root = tempfile::tempdir_in(parent).unwrap();
        let tls = root.path().join("tls");
        let jobs = root.path().join("jobs");
        let work = root.path().join("work");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Throwaway::new("e2e-user", &loopback_names()).unwrap().write(&tls).unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        TestEnv { root, tls, jobs, work, addr, runtime: None, stop: None }
    }

    /// The reference server with mutual TLS, answering like a server that predates
    /// the protocol extension.
    pub fn legacy() -> TestEnv {
        TestEnv::configured(|config| config.legacy_protocol = true)
    }

    /// The reference server with mutual TLS and settings changed by `change`.
    pub fn configured(change: impl FnOnce(&mut Config)) -> TestEnv {
        TestEnv::bare().serve_configured(change)
    }

    /// Starts the reference server with mutual TLS and settings changed by `change`.
    pub fn serve_configured(self, change: impl FnOnce(&mut Config)) -> TestEnv {
        let env = self;
        let tls = TlsMaterial::from_dir(&env.tls).unwrap();
        let mut config = Config { tls_dir: Some(env.tls.clone()), ..Config::new(env.jobs.clone(), Some(tls)) };
        change(&mut config);
        env.serve(config)
    }

    /// Starts the server's draining shutdown (as SIGTERM does) and leaves it running.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and starts it again on the same directories, with settings
    /// changed by `change` (what it kept on disk is there for the new one).
    pub fn restarted(mut self, change: impl FnOnce(&mut Config)) -> TestEnv {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
        self.serve_configured(change)
    }

    /// Starts the reference server in-process with `config`; a restarted one listens on
    /// its old port when it can, as a redeployed server does.
    pub fn serve(mut self, config: Config) -> TestEnv {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let old = match self.addr.port() {
            0 => None,
            _ => runtime.block_on(tokio::net::TcpListener::bind(self.addr)).ok(),
        };
        let listener = old.unwrap_or_else(|| runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap());
        self.addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = lrpymrpc_mock_server::run(listener, config, async {
            let _ = stopped.await;
        });
        // A server that could not start (or stopped on an error) says why in the test's
        // output, not only as a refused connection later.
        runtime.spawn(async move {
            if let Err(error) = serving.await {
                eprintln!("the in-process server stopped: {error}");
            }
        });
        self.runtime = Some(runtime);
        self.stop = Some(stop);
        self
    }

    /// Runs `future` on the fixture's runtime (for fake servers and raw gRPC clients).
    pub fn runtime(&mut self) -> &tokio::runtime::Runtime {
        self.runtime.get_or_insert_with(|| tokio::runtime::Runtime::new().unwrap())
    }

    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }

    /// The client, run in the working directory, pointed at the server with mutual TLS;
    /// killed (and the test failed) if it runs longer than [`PROCESS_LIMIT`].
    pub fn client(&self) -> Command {
        let mut command = Command::from_std(self.client_std());
        command.timeout(PROCESS_LIMIT);
        command
    }

    /// [`TestEnv::client`] as a plain process, to spawn and signal.
    pub fn client_std(&self) -> std::process::Command {
        let mut command = self.bare_client_std();
        command
            .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &self.addr.port().to_string()])
            .arg("--TLS_CONFIG_DIR")
            .arg(&self.tls)
            // A job's command unless the test gives one (the client refuses a job
            // without one); from the environment, so a subcommand takes no notice.
            .env("LRPYMRPC_CMD", "true");
        command
    }

    /// The client in the working directory with no options, shielded from the
    /// developer's own `LRPYMRPC_*` variables and config file.
    pub fn bare_client(&self) -> Command {
        let mut command = Command::from_std(self.bare_client_std());
        command.timeout(PROCESS_LIMIT);
        command
    }

    fn bare_client_std(&self) -> std::process::Command {
        let mut command = std::process::Command::new(CLIENT);
        command.current_dir(&self.work).env_remove("NO_COLOR");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LRPYMRPC_") {
                command.env_remove(name);
            }
        }
        command.env("LRPYMRPC_CONFIG", "");
        // The developer's own home (a `~/.tls/tls_lrpymrpc` would turn on mutual TLS):
        // the test's own, which a test may fill or replace.
        command.env("HOME", self.root.path().join("home"));
        // The stat cache of content-addressed uploads: the test's own.
        command
            .env("XDG_CACHE_HOME", self.root.path().join("cache"))
            .env("XDG_STATE_HOME", self.root.path().join("state"));
        command
    }

    /// The `[127.0.0.1:PORT]:` prefix the client prints.
    pub fn prefix(&self) -> String {
        format!("[127.0.0.1:{}]:", self.addr.port())
    }

    /// Writes a file below the working directory, creating parents.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.work.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.work.join(rel)).unwrap_or_else(|e| panic!("reading `{rel}`: {e}"))
    }

    /// The names in the job root: job directories, their markers and environments
    /// (the shared environment cache aside).
    pub fn job_dirs(&self) -> Vec<String> {
        let server_own = [
            "lrpymrpc-env-cache",
            "lrpymrpc-cas",
            lrpymrpc_mock_server::ROOT_LOCK_FILE,
            lrpymrpc_mock_server::executor::supervised::RUNS_DIR,
            lrpymrpc_mock_server::SPOOLS_DIR,
            "lrpymrpc-slurm",
            "lrpymrpc-gridengine",
        ];
        names_in(&self.jobs).into_iter().filter(|name| !server_own.contains(&name.as_str())).collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // A run still going (a detached job whose cancel was still on its way, a test
        // that failed midway) is a process of its own, under its supervisor: stopped
        // here as a server stops what an earlier one left, so no test leaves a command
        // looping on files of a temporary directory that is gone.
        lrpymrpc_mock_server::executor::supervised::stop_left_behind(&self.jobs, |_| false);
    }
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Deterministic bytes that do not compress to nothing (a tiny xorshift).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Builds the example-style wheel of a one-module package named `name`.
pub fn build_wheel(package_dir: &Path, name: &str, out_dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cellchar/make_wheel.py");
    let mut command = std::process::Command::new("python3");
    command.arg(script).arg(package_dir).arg(name).arg("0.1.0").arg(out_dir);
    let output = output_within(&mut command, PROCESS_LIMIT);
    assert!(output.status.success(), "make_wheel.py failed: {}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The real server binary on a free port, serving the fixture's job root with its TLS
/// material; its log goes to `server.log` beside them. Returns it and its port.
pub fn spawn_server_binary(env: &TestEnv, extra: &[&str]) -> (std::process::Child, u16) {
    spawn_server_binary_with_fds(env, extra, None)
}

/// [`spawn_server_binary`] with at most `max_fds` open descriptors, when given.
pub fn spawn_server_binary_with_fds(env: &TestEnv, extra: &[&str], max_fds: Option<u64>) -> (std::process::Child, u16) {
    spawn_server_binary_with(env, extra, max_fds, &[])
}

/// [`spawn_server_binary`] with these environment variables set too.
pub fn spawn_server_binary_with(
    env: &TestEnv,
    extra: &[&str],
    max_fds: Option<u64>,
    vars: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, u16) {
    spawn_server_binary_listening(env, "127.0.0.1:0", extra, max_fds, vars)
}

/// [`spawn_server_binary_with`] listening on `listen` (a server restarted on the port
/// its clients know).
pub fn spawn_server_binary_listening(
    env: &TestEnv,
    listen: &str,
    extra: &[&str],
    max_fds: Option<u64>,
    vars: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, u16) {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(env.root.path().join("server.log")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lrpymrpc-e2e-mock-server"));
    command.envs(vars.iter().copied());
    if let Some(max) = max_fds {
        let limit = libc::rlimit { rlim_cur: max, rlim_max: max };
        // SAFETY: setrlimit is async-signal-safe and gets a valid pointer to a local.
        unsafe {
            command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
    }
    let mut server = command
        .args(["--listen", listen, "--root"])
        .arg(&env.jobs)
        .arg("--tls-dir")
        .arg(&env.tls)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let port = first.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("listening on ADDR");
    (server, port)
}

/// Sends `signal` to a child process.
pub fn send_signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill with a live child's pid and a signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits for a child to exit; kills it and fails after `limit`.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client TLS directory beside the fixture's, for a second user `cn` of its CA.
pub fn client_dir_for(env: &TestEnv, cn: &str) -> PathBuf {
    use lrpymrpc_certs::{Ca, layout, write_pair};
    let dir = env.root.path().join(format!("tls-{cn}"));
    let files = layout::client_nested(&dir);
    let pair = Ca::load(&env.tls).unwrap().issue_client(cn).unwrap();
    write_pair(&pair, &files.cert, &files.key).unwrap();
    std::fs::create_dir_all(files.ca.parent().unwrap()).unwrap();
    std::fs::copy(layout::ca_cert(&env.tls), &files.ca).unwrap();
    dir
}

/// Processes on this machine whose command line contains `needle` (arguments joined
/// by NUL bytes, as in `/proc/PID/cmdline`).
pub fn processes_running(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|line| String::from_utf8_lossy(&line).into_owned())
        .filter(|line| line.contains(needle))
        .collect()
}

/// Runs `command` to its end with its output captured; kills it and fails after `limit`.
pub fn output_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the command starts");
    child_output_within(child, limit)
}

/// Starts the client with `args` and returns once the remote command printed
/// `started` (a line `...]:started`): the job was uploaded and its command runs. The
/// rest of stdout is handed back; stderr is piped, for `child_output_within`.
pub fn started_client(
    env: &TestEnv,
    args: &[&str],
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut client = env.client_std();
    let stdio = std::process::Stdio::piped;
    let mut client = client.args(args).stdout(stdio()).stderr(stdio()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    while !line.ends_with("]:started\n") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the client ended before the command started");
    }
    (client, stdout)
}

/// Waits for a spawned child and collects what is left of its piped output; kills it
/// and fails after `limit`.
pub fn child_output_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = wait_exit(&mut child, limit);
    std::process::Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A loopback port held bound but not listening: a connection to it is refused, and no
/// other test can take it while the returned socket lives. With `reusable`, a listener
/// that sets `SO_REUSEADDR` (tokio's does) may still bind it: a server that starts late.
pub fn closed_port(reusable: bool) -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(reusable).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The one decision about what the suite needs and this machine lacks: the test
/// fails, naming it and how to install it (never a SKIPPED line that passes).
pub fn needed(what: &str, install: &str) -> ! {
    panic!(
        "the test suite needs {what}, which is missing here\nhint: {install}; `.ci/run` installs everything the suite needs"
    )
}

/// A program the suite runs, found on PATH, or the test fails naming its package.
pub fn tool(name: &str, debian_package: &str) -> PathBuf {
    which::which(name).unwrap_or_else(|_| needed(&format!("`{name}`"), &format!("apt-get install {debian_package}")))
}

/// A program `.ci/run` installs into a virtual environment under `target/`: the one
/// `variable` names, else the one in `target/VENV/bin/`, else `fallback` on PATH.
pub fn venv_program(variable: &str, venv: &str, program: &str, fallback: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let in_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(venv).join("bin").join(program);
    match in_venv.exists() {
        true => in_venv,
        false => which::which(fallback).unwrap_or_else(|_| PathBuf::from(fallback)),
    }
}

/// The sandbox, when bwrap can make one here. Where bwrap is installed but cannot run
/// (no user namespaces), CI fails rather than skipping the sandbox's tests.
pub fn sandbox_for(root: &Path, tls: &Path) -> Option<lrpymrpc_mock_server::executor::sandbox::Sandbox> {
    match lrpymrpc_mock_server::executor::sandbox::Sandbox::new(
        &lrpymrpc_mock_server::executor::sandbox::SandboxPlan::new(root, Some(tls)),
    ) {
        Ok(sandbox) => Some(sandbox),
        Err(_) if which::which("bwrap").is_err() => needed("`bwrap`", "apt-get install bubblewrap"),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("bwrap is installed but cannot make a sandbox in CI: {why}")
        }
        Err(why) => {
            println!("SKIPPED: {why}");
            None
        }
    }
}

/// Polls `done` until it holds; fails after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

// A tool the suite needs and this machine lacks fails the test by name, with the line
// that installs it (not a SKIPPED that passes).
#[test]
#[should_panic(
    expected = "the test suite needs `lrpymrpc-no-such-tool`, which is missing here\nhint: apt-get install \
                           no-such-package; `.ci/run` installs everything the suite needs"
)]
fn a_missing_tool_fails_by_name_with_its_install_line() {
    tool("lrpymrpc-no-such-tool", "no-such-package");
}

/// A client started in the background whose stdout and stderr are gathered as they come.
pub struct Running {
    child: std::process::Child,
    said: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(env: &TestEnv, args: &[&str]) -> Running {
        Running::start_as(env, None, args)
    }

    /// The same with another user's TLS directory (another CN), when given.
    pub fn start_as(env: &TestEnv, tls: Option<&std::path::Path>, args: &[&str]) -> Running {
        let mut command = env.client_std();
        if let Some(tls) = tls {
            command.arg("--TLS_CONFIG_DIR").arg(tls);
        }
        let mut child = command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let said = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for mut pipe in pipes {
            let said = said.clone();
            readers.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read @ 1..) = pipe.read(&mut buffer) {
                    said.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            }));
        }
        Running { child, said, readers }
    }

    pub fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }

    pub fn wait_for(&self, text: &str) {
        wait_until(PROCESS_LIMIT, &format!("the client says `{text}`"), || self.said().contains(text));
    }

    /// Sends the client `signal` (Ctrl-C is SIGINT).
    pub fn signal(&self, signal: i32) {
        send_signal(&self.child, signal);
    }

    /// Waits for the client to end; its exit status and all it said.
    pub fn end(mut self) -> (std::process::ExitStatus, String) {
        let status = wait_exit(&mut self.child, PROCESS_LIMIT);
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (status, self.said())
    }
}
