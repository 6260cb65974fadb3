//! The `lrpymrpc-server` (also `lrpymrpc-mock-server`) command line: serving (parse options, bind, print
//! `listening on ADDR` as the first line on stdout, serve until Ctrl-C or SIGTERM) and
//! the administrator's certificate commands, `ca init` and `ca sign`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lrpymrpc_certs::inspect::Summary;
use lrpymrpc_certs::{Ca, layout, request};
use lrpymrpc_units::{DurationArg, SizeArg};

use crate::SERVER_NAME;
use crate::config::{ConfigError, ExecutorChoice, accounts, read_allowed_cns};
use crate::executor::farm::Farm;
use crate::executor::gridengine::GridEngineOptions;
use crate::executor::sandbox::{Sandbox, SandboxPlan};
use crate::executor::slurm::SlurmOptions;
use crate::resources::Capacity;
use crate::{Config, TlsMaterial};
use lrpymrpc_archive::Limits;

/// A reference lrPymRPC server: unpacks uploads into fresh job directories, pip-installs
/// REPO_URL into a Python environment (shared by one certificate's jobs with the same
/// pinned REPO_URL), runs the command, serves the results.
#[derive(Debug, Parser)]
#[command(name = SERVER_NAME, version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read options from this TOML file (`max-jobs = 16`, `tls-dir = "/etc/lrpymrpc/tls"`;
    /// see examples/server/); options on the command line win
    #[arg(long, value_name = "FILE", env = "LRPYMRPC_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8766")]
    listen: SocketAddr,
    /// Directory for job directories (`ROOT/<UUID>/`); default: the system temp directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Mutual TLS: reads `DIR/server/server.{crt,key}` and `DIR/ca/ca.crt` (the layout
    /// `ca init DIR` and `cargo xtask certs DIR` write). Without it the server speaks plaintext.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,

    /// Only clients whose certificate has this CN may run jobs (repeatable); others get
    /// PERMISSION_DENIED. Without an allow-list, every certificate the CA signed may.
    #[arg(long = "allow-cn", value_name = "CN", help_heading = "Who may run what")]
    allow_cn: Vec<String>,
    /// The same, one CN per line (`#` comments)
    #[arg(long, value_name = "FILE", help_heading = "Who may run what")]
    allow_cn_file: Option<PathBuf>,
    /// Run pip and each command in a bubblewrap sandbox (needs `bwrap`; refuses to
    /// start without it)
    #[arg(long, help_heading = "Who may run what")]
    sandbox: bool,
    /// Let sandboxed commands use the network (pip always may, to reach the index)
    #[arg(long, requires = "sandbox", help_heading = "Who may run what")]
    sandbox_network: bool,
    /// Show sandboxed jobs this directory too, read-only (repeatable): where a lab's
    /// tools live (`/opt/eda`). A job sees the system's directories (`/usr`, `/etc`,
    /// ...), the Python installation and its own directory, nothing else of the host
    #[arg(long, value_name = "DIR", requires = "sandbox", help_heading = "Who may run what")]
    sandbox_show: Vec<PathBuf>,

    /// A directory of wheels (a wheelhouse) pip looks in for REPO_URL's packages
    /// (repeatable; jobs see it read-only, in the sandbox too): for compute servers
    /// without the internet, with `--pip-no-index`. Fill it with `pip download -d DIR`
    #[arg(long, value_name = "DIR", help_heading = "Python environments")]
    pip_find_links: Vec<PathBuf>,
    /// The package index pip uses instead of PyPI (a lab's mirror)
    #[arg(long, value_name = "URL", help_heading = "Python environments")]
    pip_index_url: Option<String>,
    /// pip uses no index at all: only `--pip-find-links` and REPO_URL's own paths
    #[arg(long, help_heading = "Python environments")]
    pip_no_index: bool,

    /// Jobs at once (from Upload until the command ended, and each later command);
    /// beyond: RESOURCE_EXHAUSTED. Default 16; 256 with `--executor slurm`, where Slurm
    /// bounds what runs and the rest wait in its queue
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Limits")]
    max_jobs: Option<u32>,
    /// Of those, how many one client certificate may hold (default: three quarters of
    /// them, at least one, so one user's `make -j` leaves the others a quarter)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Limits")]
    max_jobs_per_cn: Option<u32>,
    /// Cores commands may hold at once (default: the CPUs this server may run on); a
    /// step asking for more is refused, one asking for what is taken waits its turn
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Resources")]
    cpus: Option<u32>,
    /// Memory commands may reserve at once (default: the machine's); each is limited to
    /// what it reserved
    #[arg(long, value_name = "SIZE", help_heading = "Resources")]
    mem: Option<SizeArg>,
    /// A license pool and how many licenses it has (`spectre=3`; repeatable): a step
    /// asking for one waits while all are held
    #[arg(long, value_name = "NAME=COUNT", help_heading = "Resources")]
    license: Vec<String>,
    /// The most cores one client certificate's commands may hold at once (default: all)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Resources")]
    max_cpus_per_cn: Option<u32>,
    /// The most licenses of a pool one client certificate may hold at once
    /// (`spectre=2`; repeatable): no user takes every license for ever
    #[arg(long, value_name = "NAME=COUNT", help_heading = "Resources")]
    license_per_cn: Vec<String>,
    /// Cores a step that asks for none gets (its OMP_NUM_THREADS too)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Resources")]
    default_cpus: u32,
    /// A variable every job's command gets (`OMP_WAIT_POLICY=passive`; repeatable); the
    /// command's own setting wins
    #[arg(long, value_name = "NAME=VALUE", help_heading = "Resources")]
    job_env: Vec<String>,
    /// An upload that sends nothing for this long is abandoned and its slot freed
    #[arg(long, value_name = "DURATION", default_value_t = defaults().upload_idle_timeout.into(), help_heading = "Limits")]
    upload_idle_timeout: DurationArg,
    /// After its first 30 s, an upload (tar.gz or blobs) that averages less than this
    /// a second is cut and its slot freed (0: no minimum)
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(crate::config::UPLOAD_MIN_RATE), help_heading = "Limits")]
    upload_min_rate: SizeArg,
    /// Decompressed bytes of one upload (`64G`, `64GiB`, `10GB`)
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().upload_limits.max_bytes), help_heading = "Limits")]
    max_upload_bytes: SizeArg,
    /// Files and directories in one upload
    #[arg(long, default_value_t = defaults().upload_limits.max_entries, help_heading = "Limits")]
    max_upload_entries: u64,
    /// Path depth in one upload
    #[arg(long, default_value_t = defaults().upload_limits.max_depth, help_heading = "Limits")]
    max_upload_depth: usize,
    /// The longest a command may run (`90s`, `30m`, `1h30m`, `1d`)
    #[arg(long, value_name = "DURATION", default_value_t = defaults().job_timeout.into(), help_heading = "Limits")]
    job_timeout: DurationArg,
    /// The longest a command may print nothing
    #[arg(long, value_name = "DURATION", default_value_t = defaults().idle_timeout.into(), help_heading = "Limits")]
    idle_timeout: DurationArg,
    /// HTTP/2 streams per connection
    #[arg(long, default_value_t = defaults().max_streams_per_connection, help_heading = "Limits")]
    max_streams: u32,
    /// TLS handshakes in progress at once; connections beyond are closed at once
    #[arg(long, default_value_t = defaults().max_handshakes as u32, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_handshakes: u32,
    /// TLS handshakes in progress at once from one IP address
    #[arg(long, default_value_t = defaults().max_handshakes_per_address as u32, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_handshakes_per_address: u32,
    /// TLS handshake time limit
    #[arg(long, value_name = "DURATION", default_value_t = defaults().tls_handshake_timeout.into(), help_heading = "Limits")]
    handshake_timeout: DurationArg,

    /// A job nobody comes back for is removed after this long
    #[arg(long, value_name = "DURATION", default_value_t = defaults().job_ttl.into(), help_heading = "Lifecycle")]
    job_ttl: DurationArg,
    /// How long the command of a job whose client lost its connection keeps running
    /// for the client to come back (lrpymrpc clients follow it again); then it is
    /// cancelled. Clients without the extension (the Python one): cancelled at once
    #[arg(long, value_name = "DURATION", default_value_t = defaults().reattach_grace.into(), help_heading = "Lifecycle")]
    reattach_grace: DurationArg,
    /// Output one durable job keeps for clients that come back (`16M`); beyond, the
    /// oldest lines go, and a client that wanted them is told how many
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().spool_max_bytes as u64), help_heading = "Lifecycle")]
    spool_max_bytes: SizeArg,
    /// Output all durable jobs together keep in memory; past it, a job that prints
    /// keeps only its share (each line counted as the memory it takes)
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().spools_max_bytes as u64), help_heading = "Lifecycle")]
    spools_max_bytes: SizeArg,
    /// How long a job stays after its results were fetched or it was cancelled
    #[arg(long, value_name = "DURATION", default_value_t = defaults().finished_grace.into(), help_heading = "Lifecycle")]
    finished_grace: DurationArg,
    /// On SIGTERM or Ctrl-C: how long running jobs may finish before they are stopped
    #[arg(long, value_name = "DURATION", default_value_t = defaults().shutdown_grace.into(), help_heading = "Lifecycle")]
    shutdown_grace: DurationArg,
    /// On SIGTERM or Ctrl-C: leave running durable jobs running, for the next server on
    /// this root to take on (an upgrade or a restart loses no job); the server takes no
    /// new jobs and exits at once. Under systemd the unit needs `KillMode=process` for it
    #[arg(long, help_heading = "Lifecycle")]
    keep_jobs_on_exit: bool,

    /// Where commands run: `local` (this machine), `slurm` or `gridengine` (a batch job
    /// on whichever node is free; the job root must be on a filesystem every node sees
    /// and this binary at the same path on every node, which a probe job checks at
    /// start). pip always runs on this machine
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local, help_heading = "Executor")]
    executor: ExecutorKind,
    /// The Slurm partition steps run in (default: the cluster's default partition)
    #[arg(long, value_name = "NAME", help_heading = "Executor")]
    slurm_partition: Option<String>,
    /// The Slurm account steps are charged to
    #[arg(long, value_name = "NAME", help_heading = "Executor")]
    slurm_account: Option<String>,
    /// One more sbatch (or srun) option for every step, as it is (repeatable):
    /// `--slurm-arg=--cpus-per-task=4 --slurm-arg=--mem=8G`
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true, help_heading = "Executor")]
    slurm_arg: Vec<String>,
    /// How a command is given to Slurm: `sbatch` (a batch job, which outlives this
    /// server and its machine; Slurm starts batch jobs up to its `batch_sched_delay`,
    /// 3 s by default, late) or `srun` (a job step started at once, under a supervisor
    /// on this machine: it outlives this server, not this machine)
    #[arg(long, value_enum, default_value_t = SlurmSubmit::Sbatch, help_heading = "Executor")]
    slurm_submit: SlurmSubmit,
    /// How often steps waiting in Slurm's queue are looked up, all in one `squeue`
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Executor")]
    slurm_poll_interval: DurationArg,
    /// How long the start-up probe step may wait for a node before the server refuses
    /// to start
    #[arg(long, value_name = "DURATION", default_value = "2m", help_heading = "Executor")]
    slurm_probe_timeout: DurationArg,
    /// The Grid Engine queue jobs run in (`qsub -q`; default: any the scheduler picks)
    #[arg(long, value_name = "QUEUE", help_heading = "Executor")]
    sge_queue: Option<String>,
    /// The Grid Engine project jobs are charged to (`qsub -P`)
    #[arg(long, value_name = "NAME", help_heading = "Executor")]
    sge_project: Option<String>,
    /// One more qsub option for every job, as it is (repeatable; an option and its
    /// value are two: `--sge-arg=-l --sge-arg=arch=lx-amd64`)
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true, help_heading = "Executor")]
    sge_arg: Vec<String>,
    /// The Grid Engine parallel environment cores are asked in (`qsub -pe PE N`): one
    /// whose allocation rule is `$pe_slots`, so a job's cores are on one host
    #[arg(long, value_name = "PE", default_value = "smp", help_heading = "Executor")]
    sge_pe: String,
    /// How often Grid Engine jobs are looked up in the queue, all in one `qstat`
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Executor")]
    sge_poll_interval: DurationArg,
    /// How long the start-up probe job may wait for a slot before the server refuses
    /// to start
    #[arg(long, value_name = "DURATION", default_value = "2m", help_heading = "Executor")]
    sge_probe_timeout: DurationArg,

    /// Build a fresh Python environment for every job instead of sharing one per REPO_URL
    #[arg(long, help_heading = "Python environments")]
    no_env_cache: bool,
    /// Share cached environments between client certificates (CNs). A job then runs in
    /// an environment another user's job built, from the same pinned REPO_URL
    #[arg(long, help_heading = "Python environments")]
    share_env_cache: bool,
    /// Size bound of the environment cache (`20G`); least recently used go first
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().env_cache_max_bytes), help_heading = "Python environments")]
    env_cache_max_bytes: SizeArg,

    /// Refuse content-addressed upload: every client sends a whole tar.gz, as to the
    /// Python server
    #[arg(long, help_heading = "Content store")]
    no_cas: bool,
    /// Size bound of the content store (blobs clients upload once and reuse); least
    /// recently used go first, never one a job is being made from
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().cas_max_bytes), help_heading = "Content store")]
    cas_max_bytes: SizeArg,
    /// How many input trees (the latest of each CN) to keep ready as spare copies, so
    /// that a CN's next job from the same or a slightly changed tree is made by
    /// patching what changed instead of copying it all; each takes the tree's size on
    /// disk. 0 turns this off
    #[arg(long, value_name = "N", default_value_t = defaults().cas_spare_trees, help_heading = "Content store")]
    cas_spare_trees: usize,

    /// Keep an action cache: a client asking for it (`lrpymrpc --cache`) gets a step
    /// already run on the same inputs, command, RESULT paths and environment from the
    /// record (its output, exit status and results) instead of a new run. Only runs
    /// that exited 0 are recorded; records live in the content store
    #[arg(long, help_heading = "Action cache")]
    action_cache: bool,
    /// Size bound of the recorded runs' output and results; least recently used go first
    #[arg(long, value_name = "SIZE", default_value_t = SizeArg(defaults().action_cache_max_bytes), help_heading = "Action cache")]
    action_cache_max_bytes: SizeArg,
    /// A text that is part of every run's key: change it to drop every record at once
    /// (after a tool or server update that changes what runs make)
    #[arg(long, value_name = "TEXT", default_value = "", help_heading = "Action cache")]
    action_cache_salt: String,
    /// A command whose output runs depend on (repeatable), such as `ngspice --version`:
    /// what it prints is part of every run's key, so after an upgrade no record made by
    /// the old tool answers
    #[arg(long, value_name = "COMMAND", help_heading = "Action cache")]
    action_cache_tool: Vec<String>,
    /// A file or directory runs depend on (repeatable), such as a PDK's model files:
    /// what it holds is part of every run's key
    #[arg(long, value_name = "PATH", help_heading = "Action cache")]
    action_cache_path: Vec<PathBuf>,
    /// How long the tools' and paths' fingerprint is trusted before it is taken again
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = "Action cache")]
    action_cache_tools_refresh: DurationArg,
    /// Serve records to every CN, not only to the one whose run made them. Any user
    /// then gets results another user's run made (see the README)
    #[arg(long, help_heading = "Action cache")]
    share_action_cache: bool,

    /// Serve Prometheus metrics (`GET /metrics`) on this address, say 127.0.0.1:9466:
    /// jobs, refusals, bytes, step durations, caches. Plain HTTP without
    /// authentication: keep it on loopback or a management network
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Also count finished jobs per client certificate CN (one series per CN)
    #[arg(long, help_heading = "Monitoring")]
    metrics_per_cn: bool,
    /// Serve the status page on this address, say 0.0.0.0:8443: capacity and use,
    /// the queue with its reasons, what runs, and the last 24 hours, live in a
    /// browser. HTTPS with the server's own certificate; no job's command, path or
    /// output is shown there
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    status_listen: Option<std::net::SocketAddr>,
    /// How often the status page's history samples the server's use (for tests)
    #[arg(long, value_name = "DURATION", default_value = "1m", hide = true)]
    status_sample_every: DurationArg,
    /// Answer the standard gRPC health check (`grpc.health.v1.Health`) to clients
    /// without a certificate, as load balancers and scripts call it; every other call
    /// still needs one. It reveals only whether the server serves
    #[arg(long, help_heading = "Monitoring")]
    health_without_auth: bool,

    /// Log lines as text or as JSON objects (one per line)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Behave exactly like a server predating lrpymrpc's protocol extension: no exit
    /// status, no stdout/stderr labels (to test clients against the Python server's behaviour).
    #[arg(long)]
    legacy_protocol: bool,
}

/// The one source of every default: `Config::new`, shown in `--help` as clap's defaults.
fn defaults() -> Config {
    Config::new(PathBuf::new(), None)
}

/// `--max-jobs` on a farm (`--executor slurm`, `gridengine`) when not given: its scheduler
/// bounds what runs.
const FARM_MAX_JOBS: u32 = 256;

/// `--executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    Local,
    Slurm,
    #[value(name = "gridengine")]
    GridEngine,
}

/// `--slurm-submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SlurmSubmit {
    Sbatch,
    Srun,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for a deployment, without openssl
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Check a config file without serving: its keys and values, the TLS directory it
    /// names (certificate and key fit, the client CA), the job root, the allow-list
    /// and the sandbox; exits non-zero naming what is wrong
    CheckConfig {
        /// The TOML file `--config` would read
        file: PathBuf,
    },
    /// Internal: what a batch job runs on a scheduler's node (`executor/batch.rs`): the
    /// command under its supervisor, writing into its run directory on the job root
    #[command(hide = true)]
    Supervise {
        /// The run's directory under `ROOT/lrpymrpc-runs/`
        dir: PathBuf,
        /// stdout and stderr as one stream
        #[arg(long)]
        merged: bool,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Make a CA and a server certificate in DIR (`ca/ca.crt`, `ca/ca.key`,
    /// `server/server.crt`, `server/server.key`; keys 0600), ready for `--tls-dir DIR`
    Init {
        dir: PathBuf,
        /// A host name or IP address clients dial (repeatable; at least one)
        #[arg(long = "san", value_name = "NAME_OR_IP", required = true, num_args = 1..)]
        names: Vec<String>,
        /// Replace an existing CA (every certificate it signed stops working)
        #[arg(long)]
        force: bool,
        /// Give the server key to this user (name or uid): the user the server runs as,
        /// when that is not the one running `ca init` (the CA key stays yours)
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Sign a user's certificate request as a client certificate for its CN
    Sign {
        /// The user's CSR (PEM), e.g. from `lrpymrpc tls init`
        csr: PathBuf,
        /// The directory `ca init` made
        #[arg(long = "ca", value_name = "DIR")]
        ca_dir: PathBuf,
        /// How long the certificate is valid
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where to write the certificate (default: the CSR's path with `.crt`)
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The command line's definition (for man pages and completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// Runs the server binary with the process's arguments.
pub fn main_impl() -> ExitCode {
    match dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{SERVER_NAME}: error: {}", in_words(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, a cause left out when the text before it
/// already says it (an I/O error quoted by the error that wraps it is said once).
fn in_words(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

fn dispatch() -> anyhow::Result<()> {
    let args = with_config_file(std::env::args_os().collect())?;
    match &args.command {
        Some(Command::Ca { action: CaAction::Init { dir, names, force, owner } }) => {
            ca_init(dir, names, *force, owner.as_deref())
        }
        Some(Command::Ca { action: CaAction::Sign { csr, ca_dir, days, out } }) => {
            ca_sign(csr, ca_dir, *days, out.as_deref())
        }
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Supervise { dir, merged, command }) => {
            let error = crate::executor::supervisor::supervise_here(dir, *merged, command);
            Err(anyhow::Error::new(error).context("cannot supervise the command on this node"))
        }
        None => serve(args),
    }
}

/// The arguments, with those of the config file (`--config`) merged in under the
/// command line's.
fn with_config_file(argv: Vec<std::ffi::OsString>) -> anyhow::Result<Args> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches_from(&argv);
    let args = Args::from_arg_matches(&matches)?;
    let Some(path) = args.config.clone().filter(|_| args.command.is_none()) else { return Ok(args) };
    let set_on_command_line: std::collections::HashSet<String> = Args::command()
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|arg| arg.get_long().map(str::to_string))
        .collect();
    let text = crate::config::read_admin_file(&path).with_context(|| format!("--config `{}`", path.display()))?;
    let from_file =
        crate::config::file::arguments::<Args>(&path, &text, &set_on_command_line).map_err(anyhow::Error::msg)?;
    let mut merged: Vec<std::ffi::OsString> = argv.iter().take(1).cloned().collect();
    merged.extend(from_file.into_iter().map(Into::into));
    merged.extend(argv.into_iter().skip(1));
    let matches = Args::command().try_get_matches_from(merged).map_err(|error| {
        anyhow::anyhow!("{} (from the config file `{}` or the command line)", clap_message(&error), path.display())
    })?;
    Ok(Args::from_arg_matches(&matches)?)
}

/// A clap error's first line, without its `error: `.
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// What `check-config FILE` does: everything serving would check, then a summary.
fn check_config(file: &Path) -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let text = crate::config::read_admin_file(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let from_file =
        crate::config::file::arguments::<Args>(file, &text, &Default::default()).map_err(anyhow::Error::msg)?;
    let argv = std::iter::once(SERVER_NAME.to_string()).chain(from_file);
    let matches = Args::command()
        .try_get_matches_from(argv)
        .map_err(|error| anyhow::anyhow!("config file `{}`: {}", file.display(), clap_message(&error)))?;
    let args = Args::from_arg_matches(&matches)?;
    let listen = args.listen;
    let config = config_from(args).with_context(|| format!("config file `{}`", file.display()))?;
    if let Some(tls) = &config.tls {
        crate::net::listener::tls_acceptor(tls, config.health_without_auth)
            .map_err(|error| anyhow::anyhow!("config file `{}`: tls-dir: {error}", file.display()))?;
    }
    let probe = tempfile::Builder::new().prefix(".check-config-").tempfile_in(&config.root).with_context(|| {
        format!("config file `{}`: the job root `{}` is not writable", file.display(), config.root.display())
    })?;
    drop(probe);
    // A farm: the tools found and the probe job run, as at start.
    if let Some(farm) = Farm::new(&config.executor, &config.root, config.job_timeout)
        .with_context(|| format!("config file `{}`", file.display()))?
    {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(farm.probe(&config.root)).with_context(|| format!("config file `{}`", file.display()))?;
    }
    println!("config file `{}` is valid", file.display());
    println!("  listen:  {listen}");
    println!("  root:    {} (writable)", config.root.display());
    match &config.tls_dir {
        Some(dir) => println!("  tls:     {} (certificate and key fit; client CA read)", dir.display()),
        None => println!("  tls:     none: PLAINTEXT, anyone who reaches the port can run commands"),
    }
    let on = |flag: bool| if flag { "on" } else { "off" };
    let tools = crate::store::tools::Tools::new(
        config.action_cache_tools.clone(),
        config.action_cache_paths.clone(),
        std::time::Duration::ZERO,
    );
    println!(
        "  content store: {}, action cache: {}, sandbox: {}",
        on(config.cas),
        on(config.action_cache),
        on(config.sandbox.is_some())
    );
    if config.action_cache && !tools.is_empty() {
        let count = |n: usize, noun| lrpymrpc_units::count_of(n as u64, noun);
        let (commands, paths) =
            (count(config.action_cache_tools.len(), "command"), count(config.action_cache_paths.len(), "path"));
        println!("  action cache tools: {} ({commands}, {paths})", tools.fingerprint());
    }
    if let Some(metrics) = config.metrics_listen {
        println!("  metrics: http://{metrics}/metrics");
    }
    if let Some(page) = config.status_listen {
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("  status page: {scheme}://{page}/");
    }
    let pip = &config.pip;
    if !pip.find_links.is_empty() || pip.index_url.is_some() || pip.no_index {
        let links: Vec<String> = pip.find_links.iter().map(|dir| dir.display().to_string()).collect();
        let index = match (&pip.index_url, pip.no_index) {
            (_, true) => "none (offline)".to_string(),
            (Some(url), false) => url.clone(),
            (None, false) => "PyPI".to_string(),
        };
        println!(
            "  pip:     index {index}; wheelhouses: {}",
            if links.is_empty() { "none".into() } else { links.join(", ") }
        );
    }
    if !matches!(config.executor, ExecutorChoice::Local) {
        println!("  executor: {} (the probe job saw the job root)", config.executor.name());
    }
    println!("  resources: {}", config.capacity.describe());
    println!("  memory:  {}", crate::executor::confine::memory_control().describe());
    println!("  cores:   {}", crate::executor::confine::cpuset_control().describe());
    for (name, value) in &config.job_env {
        println!("  job-env: {name}={value}");
    }
    Ok(())
}

fn ca_init(dir: &Path, names: &[String], force: bool, owner: Option<&str>) -> anyhow::Result<()> {
    // The owner is checked before anything is written.
    let owner = match owner {
        None => None,
        Some(user) => {
            let account = accounts::lookup(user).map_err(|why| anyhow::anyhow!("--owner {user}: {why}"))?;
            let me = accounts::current_uid();
            if me != 0 && me != account.uid {
                anyhow::bail!(
                    "--owner {user}: only root can give files to another user, and this is `{}`\n\
                     hint: run `ca init` as root, or as `{user}`",
                    accounts::name_of(me)
                );
            }
            Some(account)
        }
    };
    let ca_key = layout::ca_key(dir);
    if (ca_key.exists() || layout::legacy_ca_key(dir).exists()) && !force {
        anyhow::bail!(
            "`{}` exists; refusing to replace a CA key (every certificate it signed would stop working)\n\
             hint: add --force to replace it, or give another DIR",
            ca_key.display()
        );
    }
    let host = names.first().map_or("lrpymrpc", String::as_str);
    let ca = Ca::new(&format!("lrpymrpc CA {host}"))?;
    let server = ca.issue_server(names)?;
    ca.write(dir)?;
    lrpymrpc_certs::write_pair(&server, &layout::server_cert(dir), &layout::server_key(dir))?;
    if let Some(account) = &owner {
        let key = layout::server_key(dir);
        std::os::unix::fs::chown(&key, Some(account.uid), Some(account.gid))
            .with_context(|| format!("cannot give `{}` to `{}`", key.display(), account.name))?;
    }
    println!("wrote a CA and a server certificate for {} into `{}`", names.join(", "), dir.display());
    if let Some(account) = &owner {
        println!("  the server key belongs to `{}`, the user the server runs as", account.name);
    }
    println!("  serve with:        {SERVER_NAME} --tls-dir {} --listen ADDR:PORT", dir.display());
    println!("  give users:        {} (they put it at ~/.tls/tls_lrpymrpc/ca/ca.crt)", layout::ca_cert(dir).display());
    println!("  sign their CSRs:   {SERVER_NAME} ca sign client.csr --ca {}", dir.display());
    println!("  keep private:      {} and {}", ca_key.display(), layout::server_key(dir).display());
    println!("  the CA key is kept beside `{}`, not in it: the server never reads it", dir.display());
    Ok(())
}

fn ca_sign(csr: &Path, ca_dir: &Path, days: u32, out: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(csr).with_context(|| format!("cannot read `{}`", csr.display()))?;
    let checked = request::check_request(&text).with_context(|| format!("`{}`", csr.display()))?;
    let ca = Ca::load(ca_dir).with_context(|| format!("--ca `{}`", ca_dir.display()))?;
    let cert_pem = ca.sign_client_request(&checked, days)?;
    let out = out.map_or_else(|| csr.with_extension("crt"), Path::to_path_buf);
    lrpymrpc_certs::write_public(&out, &cert_pem)?;
    let fingerprint = Summary::from_pem(&cert_pem).map(|s| s.fingerprint).unwrap_or_default();
    println!("signed a client certificate for CN={}, valid {days} days: `{}`", checked.cn, out.display());
    println!("  fingerprint: {fingerprint}");
    println!(
        "  send back:   `{}` (goes to client/client.crt) and `{}` (goes to ca/ca.crt)",
        out.display(),
        layout::ca_cert(ca_dir).display()
    );
    Ok(())
}

fn serve(args: Args) -> anyhow::Result<()> {
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().flatten_event(true).init(),
    }
    let listen = args.listen;
    let config = config_from(args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Refuse to start, before listening, where a farm's nodes cannot see the jobs.
        let mut config = config;
        if let Some(farm) = Farm::new(&config.executor, &config.root, config.job_timeout)? {
            farm.probe(&config.root).await?;
            tracing::info!("{} ran the probe job: the job root is shared with the nodes", farm.title());
            // What a step may ask for is what the cluster has; its scheduler decides when.
            let per_cn = config.capacity.per_cn.clone();
            config.capacity = Capacity { per_cn, ..farm.capacity(config.capacity.default_cpus).await? };
        }
        // A root another server uses is refused before listening (the server itself
        // holds the lock from its start on).
        drop(crate::jobs::root_lock::RootLock::take(&config.root)?);
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| listen_error(listen, &error))?;
        let address = listener.local_addr()?;
        if config.tls.is_none() {
            eprintln!("{SERVER_NAME}: WARNING: no --tls-dir: serving PLAINTEXT, without authentication.");
            eprintln!("{SERVER_NAME}: WARNING: anyone who reaches {address} can run commands as this user.");
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()?;
        drop(stdout);
        crate::run(listener, config, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Why the server cannot listen, with the fix for the usual two.
fn listen_error(listen: SocketAddr, error: &std::io::Error) -> anyhow::Error {
    let port = listen.port();
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another program (another server?) listens there: stop it, or give --listen another port; \
             `ss -ltnp 'sport = :{port}'` names it"
        ),
        std::io::ErrorKind::PermissionDenied if port < 1024 => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE: give --listen a port above 1023 (8766 is usual)".into()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is no address of this machine: give --listen one of its addresses, or 0.0.0.0", listen.ip())
        }
        _ => return anyhow::anyhow!("cannot listen on `{listen}`: {}", error),
    };
    anyhow::anyhow!("cannot listen on `{listen}`: {}\nhint: {hint}", error)
}

/// A TLS directory the server cannot use, with the fix: a file it may not read names
/// its owner and the user the server runs as, and how to give the key to that user.
fn tls_dir_error(dir: &Path, error: &ConfigError) -> anyhow::Error {
    if let ConfigError::Read { path, source } = error
        && source.kind() == std::io::ErrorKind::PermissionDenied
    {
        let why = accounts::why_unreadable(path).unwrap_or_else(|| "permission denied".into());
        let user = accounts::name_of(accounts::current_uid());
        return anyhow::anyhow!(
            "--tls-dir `{}`: the server cannot read `{}`: {why}\nhint: give it to that user (`chown {user} {}`), or \
             make the directory with `{SERVER_NAME} ca init DIR --san NAME --owner {user}`",
            dir.display(),
            path.display(),
            path.display()
        );
    }
    anyhow::anyhow!(
        "--tls-dir `{}`: {error}\nhint: name the directory `{SERVER_NAME} ca init DIR` wrote (it holds \
         server/server.crt, server/server.key and ca/ca.crt)",
        dir.display()
    )
}

/// The validated configuration the options describe: TLS material read, the job root
/// and the allow-list checked, the sandbox proven to work.
fn config_from(args: Args) -> anyhow::Result<Config> {
    let tls = match &args.tls_dir {
        Some(dir) => Some(TlsMaterial::from_dir(dir).map_err(|error| tls_dir_error(dir, &error))?),
        None => None,
    };
    if let Some(key) = args.tls_dir.as_deref().map(layout::legacy_ca_key).filter(|key| key.exists()) {
        tracing::warn!(
            "the CA key `{}` is in the serving directory: whatever can read it can mint client certificates; \
             move it to `{}` (where `ca sign` looks first)",
            key.display(),
            layout::ca_key(args.tls_dir.as_deref().unwrap_or(Path::new("."))).display()
        );
    }
    let root = args.root.clone().unwrap_or_else(std::env::temp_dir);
    if !root.is_dir() {
        let what = if root.exists() { "is not a directory" } else { "does not exist" };
        anyhow::bail!(
            "--root `{}` {what}\nhint: make it for the user the server runs as (`install -d -m 0700 {}`), or name \
             another directory",
            root.display(),
            root.display()
        );
    }
    let mut allowed: Vec<String> = args.allow_cn.clone();
    if let Some(file) = &args.allow_cn_file {
        allowed.extend(read_allowed_cns(file).context("--allow-cn-file")?);
    }
    if !allowed.is_empty() && tls.is_none() {
        anyhow::bail!("--allow-cn needs --tls-dir: over plaintext there is no certificate to check");
    }
    for dir in &args.pip_find_links {
        if !dir.is_absolute() || !dir.is_dir() {
            anyhow::bail!(
                "--pip-find-links `{}` is not an existing directory given by its absolute path\n\
                 hint: fill a wheelhouse with `pip download -d /srv/wheelhouse PACKAGE ...` and name it",
                dir.display()
            );
        }
    }
    if args.action_cache {
        let tools = crate::store::tools::Tools::new(
            args.action_cache_tool.clone(),
            args.action_cache_path.clone(),
            std::time::Duration::ZERO,
        );
        tools.check().map_err(|why| {
            anyhow::anyhow!("{why}\nhint: name commands that print the tool's version and exit 0, and paths that exist")
        })?;
    }
    let pip = crate::config::PipSources {
        find_links: args.pip_find_links.clone(),
        index_url: args.pip_index_url.clone(),
        no_index: args.pip_no_index,
    };
    let sandbox = match args.sandbox {
        true => Some(
            Sandbox::new(&SandboxPlan {
                root: root.clone(),
                tls_dir: args.tls_dir.clone(),
                config_file: args.config.clone(),
                show: args.sandbox_show.iter().chain(&args.pip_find_links).cloned().collect(),
            })
            .map_err(|why| anyhow::anyhow!("--sandbox: {why}; refusing to run jobs unsandboxed"))?,
        ),
        false => None,
    };
    // A farm's options given for another executor are a mistake, not a no-op.
    let slurm_only = [
        ("--slurm-partition", args.slurm_partition.is_some()),
        ("--slurm-account", args.slurm_account.is_some()),
        ("--slurm-arg", !args.slurm_arg.is_empty()),
        ("--slurm-submit", args.slurm_submit != SlurmSubmit::Sbatch),
    ];
    let sge_only = [
        ("--sge-queue", args.sge_queue.is_some()),
        ("--sge-project", args.sge_project.is_some()),
        ("--sge-arg", !args.sge_arg.is_empty()),
        ("--sge-pe", args.sge_pe != "smp"),
    ];
    let (foreign, owner): (&[(&str, bool)], &str) = match args.executor {
        ExecutorKind::Local => (&[&slurm_only[..], &sge_only[..]].concat(), ""),
        ExecutorKind::Slurm => (&sge_only, "gridengine"),
        ExecutorKind::GridEngine => (&slurm_only, "slurm"),
    };
    if let Some((flag, _)) = foreign.iter().find(|(_, given)| *given) {
        let owner = match owner {
            "" if flag.starts_with("--sge") => "gridengine",
            "" => "slurm",
            owner => owner,
        };
        let here = match args.executor {
            ExecutorKind::Local => "commands run on this machine without it".to_string(),
            _ => "this server's executor does not read it".to_string(),
        };
        anyhow::bail!("{flag} is for `--executor {owner}`; {here}");
    }
    let executor = match args.executor {
        ExecutorKind::Local => ExecutorChoice::Local,
        ExecutorKind::Slurm => ExecutorChoice::Slurm(SlurmOptions {
            partition: args.slurm_partition.clone(),
            account: args.slurm_account.clone(),
            args: args.slurm_arg.clone(),
            batch: args.slurm_submit == SlurmSubmit::Sbatch,
            poll_interval: args.slurm_poll_interval.into(),
            probe_timeout: args.slurm_probe_timeout.into(),
        }),
        ExecutorKind::GridEngine => ExecutorChoice::GridEngine(GridEngineOptions {
            queue: args.sge_queue.clone(),
            project: args.sge_project.clone(),
            args: args.sge_arg.clone(),
            parallel_environment: args.sge_pe.clone(),
            poll_interval: args.sge_poll_interval.into(),
            probe_timeout: args.sge_probe_timeout.into(),
        }),
    };
    let capacity =
        crate::resources::Capacity::from_options(args.cpus, args.mem.map(|m| m.0), &args.license, args.default_cpus)
            .and_then(|capacity| capacity.with_per_cn(args.max_cpus_per_cn, &args.license_per_cn))
            .map_err(|why| anyhow::anyhow!("{why}"))?;
    let job_env = crate::resources::job_env(&args.job_env).map_err(|why| anyhow::anyhow!("{why}"))?;
    let max_jobs = args.max_jobs.unwrap_or(match executor {
        ExecutorChoice::Local => defaults().max_jobs as u32,
        ExecutorChoice::Slurm(_) | ExecutorChoice::GridEngine(_) => FARM_MAX_JOBS,
    });
    Ok(Config {
        tls_dir: args.tls_dir.clone(),
        allowed_cns: (!allowed.is_empty()).then(|| allowed.into_iter().collect()),
        upload_limits: Limits {
            max_bytes: args.max_upload_bytes.0,
            max_entries: args.max_upload_entries,
            max_depth: args.max_upload_depth,
        },
        max_jobs: max_jobs as usize,
        max_jobs_per_cn: args.max_jobs_per_cn.unwrap_or_else(|| default_max_jobs_per_cn(max_jobs)) as usize,
        executor,
        reattach_grace: args.reattach_grace.into(),
        spool_max_bytes: usize::try_from(args.spool_max_bytes.0).unwrap_or(usize::MAX),
        spools_max_bytes: usize::try_from(args.spools_max_bytes.0).unwrap_or(usize::MAX),
        upload_idle_timeout: args.upload_idle_timeout.into(),
        upload_min_rate: args.upload_min_rate.0,
        job_timeout: args.job_timeout.into(),
        idle_timeout: args.idle_timeout.into(),
        job_ttl: args.job_ttl.into(),
        finished_grace: args.finished_grace.into(),
        shutdown_grace: args.shutdown_grace.into(),
        max_streams_per_connection: args.max_streams,
        tls_handshake_timeout: args.handshake_timeout.into(),
        max_handshakes: args.max_handshakes as usize,
        max_handshakes_per_address: args.max_handshakes_per_address as usize,
        env_cache: !args.no_env_cache,
        env_cache_max_bytes: args.env_cache_max_bytes.0,
        cas: !args.no_cas,
        cas_max_bytes: args.cas_max_bytes.0,
        cas_spare_trees: args.cas_spare_trees,
        action_cache: args.action_cache,
        action_cache_max_bytes: args.action_cache_max_bytes.0,
        action_cache_salt: args.action_cache_salt.clone(),
        action_cache_tools: args.action_cache_tool.clone(),
        action_cache_paths: args.action_cache_path.clone(),
        action_cache_tools_refresh: args.action_cache_tools_refresh.0,
        share_action_cache: args.share_action_cache,
        metrics_listen: args.metrics_listen,
        metrics_per_cn: args.metrics_per_cn,
        status_listen: args.status_listen,
        status_sample_every: args.status_sample_every.0,
        health_without_auth: args.health_without_auth,
        share_env_cache: args.share_env_cache,
        keep_jobs_on_exit: args.keep_jobs_on_exit,
        sandbox_network: args.sandbox_network,
        pip,
        sandbox,
        legacy_protocol: args.legacy_protocol,
        capacity,
        job_env,
        ..Config::new(root, tls)
    })
}

/// The default `--max-jobs-per-cn`: three quarters of `--max-jobs`, at least one.
fn default_max_jobs_per_cn(max_jobs: u32) -> u32 {
    (max_jobs - max_jobs / 4).max(1)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_quoted_by_its_wrapper_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let said = io.to_string();
        let error = anyhow::Error::new(io).context(format!("cannot read `x.crt`: {said}")).context("--tls-dir `d`");
        assert_eq!(in_words(&error), format!("--tls-dir `d`: cannot read `x.crt`: {said}"));
    }
}
