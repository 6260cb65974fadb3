//! What the server is told at start: where job directories go, its TLS material,
//! who may connect, and the limits it enforces. Every limit has a default a lab can
//! leave running; `Config::new` gives them all.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lrpymrpc_archive::Limits;
use lrpymrpc_certs::layout;

/// Where pip finds packages (`--pip-find-links`, `--pip-index-url`, `--pip-no-index`).
#[derive(Debug, Clone, Default)]
pub struct PipSources {
    /// Directories of wheels and sdists (a wheelhouse), read-only to jobs.
    pub find_links: Vec<PathBuf>,
    /// An index instead of PyPI (`https://pypi.lab.example/simple`).
    pub index_url: Option<String>,
    /// No index at all: only the wheelhouses and local paths (offline).
    pub no_index: bool,
}

impl PipSources {
    /// pip's arguments for these sources.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        for dir in &self.find_links {
            args.push("--find-links".into());
            args.push(dir.clone().into_os_string());
        }
        if let Some(url) = &self.index_url {
            args.push("--index-url".into());
            args.push(url.into());
        }
        if self.no_index {
            args.push("--no-index".into());
        }
        args
    }
}

/// The server's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Job directories are `root/<UUID>/`.
    pub root: PathBuf,
    /// `None` serves plaintext (for tests of plaintext clients only).
    pub tls: Option<TlsMaterial>,
    /// Where `tls` was read from, so the sandbox can hide it.
    pub tls_dir: Option<PathBuf>,
    /// Client certificate CNs allowed to run jobs; `None` lets every certificate the
    /// CA signed in.
    pub allowed_cns: Option<HashSet<String>>,
    /// Decompressed bytes, entries and depth of one upload.
    pub upload_limits: Limits,
    /// Jobs at once: from Upload until their command ended, and each later command.
    pub max_jobs: usize,
    /// Of those, how many one certificate may hold.
    pub max_jobs_per_cn: usize,
    /// An upload that sends nothing for this long is abandoned and its slot freed.
    pub upload_idle_timeout: Duration,
    /// Past `upload_rate_grace`, an upload (tar.gz or blobs) must average this many
    /// bytes a second, or it is cut: a trickle that never idles holds nothing for long.
    pub upload_min_rate: u64,
    /// How long an upload may send slower than that at first (connecting, a client
    /// hashing or packing before its first bytes).
    pub upload_rate_grace: Duration,
    /// The longest a command may run.
    pub job_timeout: Duration,
    /// The longest a command may print nothing.
    pub idle_timeout: Duration,
    /// A job nobody comes back for is removed after this long.
    pub job_ttl: Duration,
    /// How long a job directory stays after its results were fetched (a retried
    /// Download still works) or after it was cancelled.
    pub finished_grace: Duration,
    /// On SIGTERM: how long running jobs may finish before they are cancelled.
    pub shutdown_grace: Duration,
    /// On SIGTERM: leave running durable jobs to the next server (`--keep-jobs-on-exit`).
    pub keep_jobs_on_exit: bool,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at once, overall and from one address.
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// HTTP/2 pings to find dead clients.
    pub keepalive_interval: Duration,
    /// Share one Python environment between jobs with the same REPO_URL.
    pub env_cache: bool,
    /// The cache's size bound; least recently used environments go first.
    pub env_cache_max_bytes: u64,
    /// Content-addressed upload (`store/blobs.rs`): on, unless `--no-cas` or legacy.
    pub cas: bool,
    /// Size bound of the content store; least recently used blobs go first.
    pub cas_max_bytes: u64,
    /// How many spare copies of recent trees (one per CN) are kept ready (`spares.rs`).
    pub cas_spare_trees: usize,
    /// Answer Execute from recorded runs when the client asks (`action_cache.rs`).
    pub action_cache: bool,
    /// Size bound of the recorded runs' blobs; least recently used go first.
    pub action_cache_max_bytes: u64,
    /// Part of every run's key: changing it drops every record at once.
    pub action_cache_salt: String,
    /// Commands whose output a cached run depends on (`ngspice --version`).
    pub action_cache_tools: Vec<String>,
    /// Files and directories a cached run depends on (model libraries).
    pub action_cache_paths: Vec<PathBuf>,
    /// How long a fingerprint of those is trusted before it is taken again.
    pub action_cache_tools_refresh: Duration,
    /// Records serve every CN, not only the one whose run made them.
    pub share_action_cache: bool,
    /// Where Prometheus scrapes `GET /metrics` (`metrics.rs`); `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Count finished jobs per client certificate CN too.
    pub metrics_per_cn: bool,
    /// Where the status page is served (`web/`), over HTTPS with the server's
    /// certificate; `None`: not served.
    pub status_listen: Option<std::net::SocketAddr>,
    /// How often the status page's history samples the server's use (a minute: 1,440
    /// samples a day).
    pub status_sample_every: Duration,
    /// Answer `grpc.health.v1.Health` without a client certificate (the TLS handshake
    /// then accepts clients without one; every other call still requires it).
    pub health_without_auth: bool,
    /// Share cached environments between certificates (CNs), not only within one.
    pub share_env_cache: bool,
    /// Let sandboxed commands use the network (pip always may).
    pub sandbox_network: bool,
    /// Where pip finds packages besides (or instead of) PyPI: a lab's wheelhouse or
    /// its own index, for compute servers without the internet.
    pub pip: PipSources,
    /// Run pip and the command inside bubblewrap, checked to work at start.
    pub sandbox: Option<crate::executor::sandbox::Sandbox>,
    /// Cores, memory and license pools commands may hold at once (`resources/`).
    pub capacity: crate::resources::Capacity,
    /// Variables every job's command gets (`--job-env`), under the command's own.
    pub job_env: Vec<(String, String)>,
    /// Answer Execute exactly as a server predating the protocol extension does:
    /// output lines only, no stream labels, no exit status (for client tests).
    pub legacy_protocol: bool,
    /// Where commands run (`--executor`).
    pub executor: ExecutorChoice,
    /// How long a durable run whose client is gone keeps running (`--reattach-grace`).
    pub reattach_grace: Duration,
    /// Bytes a durable run's spool keeps (`--spool-max-bytes`).
    pub spool_max_bytes: usize,
    /// Bytes all spools together keep (`--spools-max-bytes`).
    pub spools_max_bytes: usize,
}

/// Where commands run.
#[derive(Debug, Clone, Default)]
pub enum ExecutorChoice {
    /// On this machine (the default).
    #[default]
    Local,
    /// As Slurm jobs (`slurm.rs`).
    Slurm(crate::executor::slurm::SlurmOptions),
    /// As Grid Engine jobs (`gridengine.rs`).
    GridEngine(crate::executor::gridengine::GridEngineOptions),
}

impl ExecutorChoice {
    /// Its name, as capabilities and the action cache's key say it.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutorChoice::Local => "local",
            ExecutorChoice::Slurm(_) => "slurm",
            ExecutorChoice::GridEngine(_) => "gridengine",
        }
    }
}

/// The default `--upload-min-rate`: 16 KiB a second (a slow link sends far more).
pub const UPLOAD_MIN_RATE: u64 = 16 * 1024;

impl Config {
    /// How fast an upload must send.
    pub fn upload_pace(&self) -> lrpymrpc_archive::bridge::Pace {
        lrpymrpc_archive::bridge::Pace {
            idle: Some(self.upload_idle_timeout),
            min_bytes_per_second: self.upload_min_rate,
            grace: self.upload_rate_grace,
        }
    }

    /// Defaults for everything but where jobs go and the TLS material.
    pub fn new(root: PathBuf, tls: Option<TlsMaterial>) -> Config {
        Config {
            root,
            tls,
            tls_dir: None,
            allowed_cns: None,
            upload_limits: Limits::DEFAULT,
            max_jobs: 16,
            max_jobs_per_cn: 16,
            upload_idle_timeout: Duration::from_secs(60),
            upload_min_rate: UPLOAD_MIN_RATE,
            upload_rate_grace: Duration::from_secs(30),
            job_timeout: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(4 * 3600),
            job_ttl: Duration::from_secs(3600),
            finished_grace: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            keep_jobs_on_exit: false,
            max_streams_per_connection: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            max_handshakes: 512,
            max_handshakes_per_address: 128,
            keepalive_interval: Duration::from_secs(60),
            env_cache: true,
            env_cache_max_bytes: 8 << 30,
            cas: true,
            cas_max_bytes: 64 << 30,
            cas_spare_trees: 4,
            action_cache: false,
            action_cache_max_bytes: 16 << 30,
            action_cache_salt: String::new(),
            action_cache_tools: Vec::new(),
            action_cache_paths: Vec::new(),
            action_cache_tools_refresh: Duration::from_secs(60),
            share_action_cache: false,
            metrics_listen: None,
            metrics_per_cn: false,
            status_listen: None,
            status_sample_every: Duration::from_secs(60),
            health_without_auth: false,
            share_env_cache: false,
            sandbox_network: false,
            pip: PipSources::default(),
            sandbox: None,
            legacy_protocol: false,
            capacity: crate::resources::Capacity::of_machine(),
            job_env: Vec::new(),
            executor: ExecutorChoice::Local,
            reattach_grace: Duration::from_secs(600),
            spool_max_bytes: 16 << 20,
            spools_max_bytes: 256 << 20,
        }
    }
}

/// PEM text of the server's certificate and key and of the CA that signs clients.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}` holds no PEM block")]
    NotPem { path: PathBuf },
    #[error("`{path}` line {line}: `{text}` is not a certificate CN")]
    BadCn { path: PathBuf, line: usize, text: String },
}

/// The most bytes of a file the administrator names (config, allow-list, PEM).
const MAX_ADMIN_FILE_BYTES: u64 = 16 << 20;

/// Reads a text file the administrator named: a regular file only (a FIFO or a device
/// would block start-up or never end: it is opened without blocking and refused), at
/// most [`MAX_ADMIN_FILE_BYTES`].
pub fn read_admin_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file (a FIFO, device or directory is refused)"));
    }
    if meta.len() > MAX_ADMIN_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {}",
            lrpymrpc_units::human_bytes(MAX_ADMIN_FILE_BYTES)
        )));
    }
    let mut text = String::new();
    file.take(MAX_ADMIN_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// Reads an allow-list file: one CN per line, `#` comments and blank lines ignored.
pub fn read_allowed_cns(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = read_admin_file(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let mut names = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.chars().any(char::is_control) {
            return Err(ConfigError::BadCn { path: path.to_path_buf(), line: index + 1, text: name.to_string() });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

impl TlsMaterial {
    /// Reads `DIR/server/server.crt`, `DIR/server/server.key` and `DIR/ca/ca.crt`,
    /// the server side of what `cargo xtask certs DIR` writes.
    pub fn from_dir(dir: &Path) -> Result<TlsMaterial, ConfigError> {
        Ok(TlsMaterial {
            cert_pem: read_pem(&layout::server_cert(dir))?,
            key_pem: read_pem(&layout::server_key(dir))?,
            client_ca_pem: read_pem(&layout::ca_cert(dir))?,
        })
    }
}

fn read_pem(path: &Path) -> Result<String, ConfigError> {
    let text = read_admin_file(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    if !text.contains("-----BEGIN ") {
        return Err(ConfigError::NotPem { path: path.to_path_buf() });
    }
    Ok(text)
}
