//! The command line, with every spelling of the Python client (lrPymRPC 0.2.9) so a
//! Makefile recipe changes one word: `python3 -m lrPymRPC` becomes `lrpymrpc`.
//!
//! Like Python's argparse: a later option overrides an earlier one, unambiguous
//! prefixes of long options work (`--SERVER_I`), and `--CMD` takes a value that
//! starts with `-`. Unlike argparse, repeating `--SOURCE` or `--RESULT` adds paths
//! instead of silently dropping the earlier ones.
//!
//! Beside the upstream spellings: lowercase kebab-case aliases (`--server-ip`), an
//! environment variable per option (`LRPYMRPC_SERVER_IP`), and options of our own
//! under "Beyond lrPymRPC". The config file is merged in by [`crate::cli::settings`].

pub(crate) mod dirs;
pub(crate) mod origin;
pub(crate) mod settings;

use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{ArgAction, Parser, Subcommand};
use lrpymrpc_units::{SizeArg, parse_positive_duration};

/// `--SERVER_PORT` when none is given, as upstream.
pub const DEFAULT_SERVER_PORT: &str = "8766";

/// HTTP/2 pings detect a dead server during a long silent command; `--keepalive`'s
/// default. gRPC C-core servers (the Python server) treat pings more frequent than
/// every 5 minutes without data as abuse and hang up.
pub const DEFAULT_KEEPALIVE: &str = "5m";

/// Runs a build step on a remote lrPymRPC server: uploads SOURCE, pip-installs
/// REPO_URL, runs CMD in a fresh job directory and downloads RESULT.
///
/// Every option can also come from an environment variable (shown in brackets) or
/// from the config file `$LRPYMRPC_CONFIG` (default `~/.config/lrpymrpc/config`,
/// lines of `OPTION = value`); the command line wins over the environment, which
/// wins over the file. Exit status: the remote command's; 101-105, 124, 130 and 143 are the
/// client's own failures (see the README).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lrpymrpc",
    version,
    disable_version_flag = true,
    args_override_self = true,
    infer_long_args = true,
    max_term_width = 100
)]
pub struct Args {
    /// Print version (alone: with job options `-v` is refused, see `--verbose`)
    #[arg(short = 'v', long = "version", visible_short_alias = 'V', action = ArgAction::Version)]
    version: Option<bool>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// The upstream defaults the job runs on (`--CMD`, `--SOURCE`, `--RESULT` not
    /// given anywhere), filled in by `settings::parse`.
    #[arg(skip)]
    pub defaulted: Vec<&'static str>,

    /// Every setting's value and where it came from, filled in by `settings::parse`.
    #[arg(skip)]
    pub origins: Vec<origin::Setting>,

    /// pip-install mapping `name=url,name=url,` (PyPI names, git+https URLs, paths)
    #[arg(
        long = "REPO_URL",
        visible_alias = "repo-url",
        env = "LRPYMRPC_REPO_URL",
        value_name = "REPO_URL",
        default_value = ""
    )]
    pub repo_url: String,

    /// Command line to run in the remote job directory
    #[arg(
        long = "CMD",
        visible_alias = "cmd",
        env = "LRPYMRPC_CMD",
        value_name = "CMD",
        default_value = "charao -h",
        allow_hyphen_values = true
    )]
    pub cmd: String,

    /// Server host name or IP address
    #[arg(
        long = "SERVER_IP",
        global = true,
        visible_alias = "server-ip",
        env = "LRPYMRPC_SERVER_IP",
        value_name = "SERVER_IP",
        default_value = "127.0.0.1"
    )]
    pub server_ip: String,

    /// Server TCP port
    #[arg(
        long = "SERVER_PORT",
        global = true,
        visible_alias = "server-port",
        env = "LRPYMRPC_SERVER_PORT",
        value_name = "SERVER_PORT",
        default_value = DEFAULT_SERVER_PORT
    )]
    pub server_port: String,

    /// Paths to upload (under their base names); one argument may hold several
    /// space-separated paths
    #[arg(long = "SOURCE", visible_alias = "source", env = "LRPYMRPC_SOURCE", value_name = "SOURCE", num_args = 1.., default_value = "source")]
    pub source: Vec<String>,

    /// Paths to bring back from the job directory; same splitting rule as SOURCE
    #[arg(long = "RESULT", visible_alias = "result", env = "LRPYMRPC_RESULT", value_name = "RESULT", num_args = 1.., default_value = "build")]
    pub result: Vec<String>,

    /// Upload only files whose name ends with one of these (`.cdl .sp`); none = all
    #[arg(long = "SOURCE_INCLUDE", visible_alias = "source-include", env = "LRPYMRPC_SOURCE_INCLUDE", value_name = "EXT", num_args = 0..)]
    pub source_include: Vec<String>,

    /// Leave out files whose name ends with one of these
    #[arg(long = "SOURCE_EXCLUDE", visible_alias = "source-exclude", env = "LRPYMRPC_SOURCE_EXCLUDE", value_name = "EXT", num_args = 0..)]
    pub source_exclude: Vec<String>,

    /// Upload only files whose archive path contains one of these substrings
    #[arg(long = "SOURCE_MATCH", visible_alias = "source-match", env = "LRPYMRPC_SOURCE_MATCH", value_name = "TEXT", num_args = 1..)]
    pub source_match: Vec<String>,

    /// Put this run's results under `./RUN_NAME/`, so parallel runs do not collide
    #[arg(
        long = "RUN_NAME",
        visible_alias = "run-name",
        env = "LRPYMRPC_RUN_NAME",
        value_name = "RUN_NAME",
        default_value = ""
    )]
    pub run_name: String,

    /// Mutual TLS directory (`client/client.key`, `client/client.crt`, `ca/ca.crt`, or
    /// the same three files flat); `~` is expanded; empty = plaintext
    #[arg(
        long = "TLS_CONFIG_DIR",
        global = true,
        visible_alias = "tls-config-dir",
        env = "LRPYMRPC_TLS_CONFIG_DIR",
        value_name = "TLS_CONFIG_DIR",
        default_value = ""
    )]
    pub tls_config_dir: String,

    /// Leave out paths matching this gitignore-style pattern, relative to the
    /// working directory (`*.o`, `build/`, `cells/tmp`); repeatable
    #[arg(long, env = "LRPYMRPC_EXCLUDE", value_name = "GLOB", action = ArgAction::Append, help_heading = "Beyond lrPymRPC")]
    pub exclude: Vec<String>,

    /// Also leave out what `.gitignore` files in the sources (and up to the
    /// repository root) ignore
    #[arg(long, env = "LRPYMRPC_GITIGNORE", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub gitignore: bool,

    /// Upload version-control directories (`.git`, `.hg`, `.svn`, ...), which are
    /// left out by default
    #[arg(long, env = "LRPYMRPC_INCLUDE_VCS", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub include_vcs: bool,

    /// A SOURCE path that is missing or outside the working directory is an error
    /// (before anything is sent) instead of a warning, and so is a RESULT path that
    /// did not come back (exit 105, after the results that did came back are in place)
    #[arg(long, env = "LRPYMRPC_STRICT", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub strict: bool,

    /// Recover the exit status from a server that does not report it, by wrapping CMD
    /// so that it prints a marker with `$?` (the server must run CMD with a POSIX shell)
    #[arg(long, env = "LRPYMRPC_EXIT_STATUS_MARKER", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub exit_status_marker: bool,

    /// Let a server with an action cache answer with a recorded run of this very step
    /// (same inputs, CMD, RESULT and REPO_URL) instead of running it again: its output,
    /// exit status and results, byte for byte
    #[arg(long, env = "LRPYMRPC_CACHE", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub cache: bool,
    /// Run the step even when the action cache has it, and record this run instead
    /// (implies --cache)
    #[arg(long, env = "LRPYMRPC_REFRESH", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub refresh: bool,

    /// Send the sources as one tar.gz even to a server that keeps what it was sent
    /// (content-addressed upload), as to the Python server
    #[arg(long, env = "LRPYMRPC_NO_CAS", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub no_cas: bool,

    /// How results travel from a server that offers a choice: `auto` takes none on
    /// loopback and zstd elsewhere; the Python server always sends gzip
    #[arg(long, env = "LRPYMRPC_RESULT_ENCODING", value_enum, default_value_t = ResultEncoding::Auto, help_heading = "Beyond lrPymRPC")]
    pub result_encoding: ResultEncoding,

    /// How the blobs of a content-addressed upload travel: `auto` compresses them with
    /// zstd unless the server is on this machine, skipping small and incompressible ones
    #[arg(long, env = "LRPYMRPC_BLOB_COMPRESSION", value_enum, default_value_t = BlobCompression::Auto, help_heading = "Beyond lrPymRPC")]
    pub blob_compression: BlobCompression,

    /// gzip level of the upload, 0 (store) to 9 (smallest); 1 suits a LAN
    #[arg(long, env = "LRPYMRPC_GZIP_LEVEL", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9), help_heading = "Beyond lrPymRPC")]
    pub gzip_level: u32,

    /// Refuse results that decompress to more than this (`64G`, `64GiB`, `10GB`; a gzip
    /// bomb stops here)
    #[arg(long, env = "LRPYMRPC_MAX_RESULT_BYTES", value_name = "SIZE", default_value_t = SizeArg(lrpymrpc_archive::Limits::DEFAULT.max_bytes), help_heading = "Beyond lrPymRPC")]
    pub max_result_bytes: SizeArg,

    /// Refuse results with more files and directories than this
    #[arg(long, env = "LRPYMRPC_MAX_RESULT_ENTRIES", value_name = "N", default_value_t = lrpymrpc_archive::Limits::DEFAULT.max_entries, help_heading = "Beyond lrPymRPC")]
    pub max_result_entries: u64,

    /// Put results under DIR instead of the working directory (RUN_NAME still adds
    /// its subdirectory); for build systems whose outputs live elsewhere
    #[arg(long, env = "LRPYMRPC_RESULTS_DIR", value_name = "DIR", help_heading = "Beyond lrPymRPC")]
    pub results_dir: Option<String>,

    /// When the remote command fails, do not download its results: earlier results
    /// stay as they were, so `make` does not take a failed output as up to date
    #[arg(long, env = "LRPYMRPC_NO_RESULTS_ON_FAILURE", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub no_results_on_failure: bool,

    /// Upload, start the command, print the job id and how to follow it, and exit 0:
    /// the command runs on without this client (`lrpymrpc attach ID` follows it and
    /// fetches its results; `lrpymrpc jobs`, `lrpymrpc cancel ID`)
    #[arg(long, env = "LRPYMRPC_DETACH", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub detach: bool,

    /// Stop the whole job (and the remote command) after this long: `90`, `90s`,
    /// `15m`, `1h30m`; exit status 124
    #[arg(long, env = "LRPYMRPC_TIMEOUT", value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Beyond lrPymRPC")]
    pub timeout: Option<Duration>,

    /// Cores the command needs: it starts when they are free, runs on them, and its
    /// OMP_NUM_THREADS says so (default: the server's grant, usually one)
    #[arg(long, env = "LRPYMRPC_CPUS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = "Resources")]
    pub cpus: Option<u32>,

    /// Memory the command needs (`4G`, `512MiB`): reserved for it, and its limit
    #[arg(long, env = "LRPYMRPC_MEM", value_name = "SIZE", help_heading = "Resources")]
    pub mem: Option<SizeArg>,

    /// A simulator license the command holds while it runs (`spectre`, `hspice:2`;
    /// repeatable): it waits while the server's pool is taken
    #[arg(
        long,
        env = "LRPYMRPC_LICENSE",
        value_name = "NAME[:COUNT]",
        value_delimiter = ',',
        help_heading = "Resources"
    )]
    pub license: Vec<String>,

    /// The longest the command may run on the server (`2h`); within the server's limit
    #[arg(long, env = "LRPYMRPC_WALLTIME", value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Resources")]
    pub walltime: Option<Duration>,

    /// Give up on a server that does not answer a connection within this long: TCP,
    /// the TLS handshake and the first call together. A server that accepts and then
    /// says nothing is not tried again (a server of a list is passed over)
    #[arg(long, global = true, env = "LRPYMRPC_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration, help_heading = "Beyond lrPymRPC")]
    pub connect_timeout: Duration,

    /// Fail a step whose server says nothing for this long: Check, and an Upload or
    /// Download that moves no data. A running command may be silent for hours:
    /// keepalive pings watch the server then
    #[arg(long, global = true, env = "LRPYMRPC_STALL_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration, help_heading = "Beyond lrPymRPC")]
    pub stall_timeout: Duration,

    /// How often to ping a server that sends nothing while the command runs; one that
    /// does not answer within 20 s is taken for lost (exit 104). gRPC C-core servers
    /// (the Python one) hang up on pings more often than every 5 minutes
    #[arg(long, global = true, env = "LRPYMRPC_KEEPALIVE", value_name = "DURATION", default_value = DEFAULT_KEEPALIVE, value_parser = parse_positive_duration, help_heading = "Beyond lrPymRPC")]
    pub keepalive: Duration,

    /// How long a step waits for a free slot when every server is full (all its
    /// `--max-jobs` taken) before it fails; `0` fails at once
    #[arg(long, env = "LRPYMRPC_QUEUE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = lrpymrpc_units::parse_duration, help_heading = "Beyond lrPymRPC")]
    pub queue_timeout: Duration,

    /// How often to retry connecting, and Upload, Check or Download after a lost
    /// connection (Execute is never repeated)
    #[arg(
        long,
        global = true,
        env = "LRPYMRPC_RETRIES",
        value_name = "N",
        default_value_t = 3,
        help_heading = "Beyond lrPymRPC"
    )]
    pub retries: u32,

    /// Show only the remote command's output and errors
    #[arg(short = 'q', long, global = true, env = "LRPYMRPC_QUIET", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub quiet: bool,

    /// Also show how long each step took and how much it moved
    #[arg(long, global = true, env = "LRPYMRPC_VERBOSE", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub verbose: bool,

    /// What starts each line: `{host}`, `{port}` and `{server}` are filled in (Make and
    /// CMake rules add the step's output, to tell `make -j` steps apart)
    #[arg(long, env = "LRPYMRPC_PREFIX", value_name = "TEMPLATE", default_value = crate::output::DEFAULT_PREFIX, help_heading = "Beyond lrPymRPC")]
    pub prefix: String,

    /// Print lines without a prefix
    #[arg(long, env = "LRPYMRPC_NO_PREFIX", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub no_prefix: bool,

    /// No progress bars, even on a terminal
    #[arg(long, env = "LRPYMRPC_NO_PROGRESS", value_parser = FalseyValueParser::new(), help_heading = "Beyond lrPymRPC")]
    pub no_progress: bool,
}

/// Commands besides running a job.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Make a private key and certificate request, or check a TLS directory
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Print the Make or CMake integration file (`lrpymrpc snippet make > lrpymrpc.mk`)
    Snippet {
        #[arg(value_enum)]
        kind: SnippetKind,
    },
    /// Print the settings a job would run with, each with where it came from (command
    /// line, environment variable, config file line, default), as `ssh -G` does
    Config,
    /// Print a shell completion script: `lrpymrpc completions bash > ~/.local/share/bash-completion/completions/lrpymrpc`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Follow a job's output (one started with `--detach`, or whose client went away)
    /// and fetch its results into the current directory, as the command that started
    /// it would have; exits with its status
    Attach {
        /// The job id `--detach` printed (`lrpymrpc jobs` lists them)
        id: String,
        /// Only output from now on, not what the job printed before
        #[arg(long)]
        from_end: bool,
        /// The RESULT paths to fetch (repeatable, or several in one quoted value), for
        /// a job started on another machine: one started here fetches the RESULT it
        /// was started with, and a server's own list is never taken
        #[arg(long, value_name = "RESULT", num_args = 1..)]
        fetch: Vec<String>,
    },
    /// List your jobs on the server(s): id, state, started, duration, command
    Jobs {
        /// Print each job's own status page link instead (its command, where it stands
        /// and its output, live in a browser): a secret link, yours alone to share
        #[arg(long)]
        web: bool,
    },
    /// What each configured server's compute is doing: reachable or why not, version,
    /// executor, cores, memory and licenses free, the queue with its reasons and what
    /// runs (your own jobs whole; another's as CN, state, resources and times). Exits
    /// non-zero when a server did not answer
    Status {
        /// One JSON document (schema `lrpymrpc-status/1`, docs/protocol.md) for scripts
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Ask again every 2 s until Ctrl-C, redrawn in place on a terminal (as `top`
        /// does); into a pipe, each report after a blank line
        #[arg(long)]
        watch: bool,
    },
    /// Stop one of your jobs (its whole process tree)
    Cancel {
        /// The job id
        id: String,
    },
    /// Print how many steps the configured servers can start now, each asking what
    /// `--cpus`, `--mem` and `--license` say: `make -j$(lrpymrpc slots)`
    Slots,
}

/// `--result-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultEncoding {
    Auto,
    Gzip,
    Zstd,
    Identity,
}

/// `--blob-compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlobCompression {
    Auto,
    Zstd,
    None,
}

/// Which integration file `snippet` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SnippetKind {
    /// `lrpymrpc.mk`, for GNU make
    Make,
    /// `LrPymRPC.cmake`, for CMake
    Cmake,
}

/// `lrpymrpc tls ...`
#[derive(Debug, Clone, Subcommand)]
pub enum TlsAction {
    /// Write a new private key (mode 0600) and a certificate signing request for CN
    /// into DIR's nested layout, and say what to send to the administrator
    Init {
        /// The name the certificate will carry: your user name, usually
        #[arg(long)]
        cn: String,
        /// The TLS directory (what --TLS_CONFIG_DIR will name)
        #[arg(long, value_name = "DIR", env = "LRPYMRPC_TLS_CONFIG_DIR", default_value = DEFAULT_TLS_DIR)]
        dir: String,
        /// Replace an existing private key
        #[arg(long)]
        force: bool,
    },
    /// Check that the certificate matches its key (kept private), chains to a
    /// certificate of the ca.crt bundle, is valid now and is meant for client
    /// authentication; then that the server and this client accept each other and that
    /// the server lets this CN run jobs. Options resolve as a job's do: DIR defaults to
    /// TLS_CONFIG_DIR (command line, environment, config file), the server to
    /// SERVER_IP:SERVER_PORT. Exit 0 only when everything is usable
    Check {
        /// The TLS directory [default: TLS_CONFIG_DIR, else ~/.tls/tls_lrpymrpc]
        #[arg(long, value_name = "DIR")]
        dir: Option<String>,
        /// The server to make a real handshake with [default: SERVER_IP:SERVER_PORT]
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "local_only")]
        server: Option<String>,
        /// Check only the files; contact no server
        #[arg(long)]
        local_only: bool,
    },
}

/// Where `tls init` puts the key and CSR unless told otherwise.
pub const DEFAULT_TLS_DIR: &str = "~/.tls/tls_lrpymrpc";

/// Splits each argument on white space, as the Python client's `" ".join(...)` and
/// split does, dropping empty pieces. Every list option goes through this, so one
/// environment variable or config line can hold several values.
pub fn split_paths(values: &[String]) -> Vec<String> {
    values.iter().flat_map(|v| v.split_whitespace()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("lrpymrpc").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_python_client() {
        let args = parse(&[]);
        assert_eq!(args.repo_url, "");
        assert_eq!(args.cmd, "charao -h");
        assert_eq!(args.server_ip, "127.0.0.1");
        assert_eq!(args.server_port, "8766");
        assert_eq!(args.source, ["source"]);
        assert_eq!(args.result, ["build"]);
        assert!(args.source_include.is_empty() && args.source_exclude.is_empty() && args.source_match.is_empty());
        assert_eq!(args.run_name, "");
        assert_eq!(args.tls_config_dir, "");
    }

    #[test]
    fn accepts_the_seed_readme_recipe() {
        let args = parse(&[
            "--SERVER_IP",
            "127.0.0.1",
            "--REPO_URL",
            "numpy=numpy",
            "--TLS_CONFIG_DIR",
            "~/.tls/tls_lrPymRPC",
            "--CMD",
            "python libretto.py -b cmd/x.cmd",
            "--SOURCE",
            "IHP130 cmd script work",
            "--RESULT",
            "IHP130.lib IHP130.md IHP130.v",
        ]);
        assert_eq!(split_paths(&args.source), ["IHP130", "cmd", "script", "work"]);
        assert_eq!(split_paths(&args.result), ["IHP130.lib", "IHP130.md", "IHP130.v"]);
        assert_eq!(args.cmd, "python libretto.py -b cmd/x.cmd");
    }

    #[test]
    fn accepts_multi_value_forms_and_empty_filter_lists() {
        let args = parse(&[
            "--SOURCE",
            "sample",
            "extra",
            "--SOURCE_INCLUDE",
            ".spice",
            ".sp",
            ".jsonc",
            ".py",
            "--SOURCE_MATCH",
            "gf180",
            "--SOURCE_EXCLUDE",
            "--RESULT",
            "rslt",
            "work",
            "--RUN_NAME",
            "run1",
            "--CMD",
            "python3 -m charao -x",
        ]);
        assert_eq!(args.source, ["sample", "extra"]);
        assert_eq!(args.source_include, [".spice", ".sp", ".jsonc", ".py"]);
        assert!(args.source_exclude.is_empty());
        assert_eq!(args.source_match, ["gf180"]);
        assert_eq!(args.result, ["rslt", "work"]);
        assert_eq!(args.run_name, "run1");
    }

    #[test]
    fn later_options_override_earlier_ones_and_equals_form_works() {
        let args = parse(&["--SERVER_IP", "a", "--SERVER_IP=b", "--CMD=-h", "--SERVER_PORT", "9000"]);
        assert_eq!(args.server_ip, "b");
        assert_eq!(args.cmd, "-h");
        assert_eq!(args.server_port, "9000");
    }

    #[test]
    fn unambiguous_prefixes_work_like_argparse() {
        let args = parse(&["--SERVER_I", "host", "--CM", "make"]);
        assert_eq!((args.server_ip.as_str(), args.cmd.as_str()), ("host", "make"));
    }

    #[test]
    fn kebab_case_spellings_work_beside_the_upstream_ones() {
        let args =
            parse(&["--server-ip", "h", "--server-port", "1", "--source", "a b", "--run-name", "r", "--cmd", "-x"]);
        assert_eq!((args.server_ip.as_str(), args.server_port.as_str(), args.run_name.as_str()), ("h", "1", "r"));
        assert_eq!((split_paths(&args.source), args.cmd.as_str()), (vec!["a".to_string(), "b".to_string()], "-x"));
    }

    #[test]
    fn durations_and_sizes_take_units() {
        let args = parse(&["--timeout", "1h30m", "--stall-timeout", "90", "--max-result-bytes", "64G"]);
        assert_eq!((args.timeout, args.stall_timeout), (Some(Duration::from_secs(5400)), Duration::from_secs(90)));
        assert_eq!(args.max_result_bytes.0, 64 << 30);
        for bad in [["--timeout", "0"], ["--stall-timeout", "soon"], ["--max-result-bytes", "lots"]] {
            let args = std::iter::once("lrpymrpc").chain(bad);
            assert!(Args::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_and_long_version_and_help_exist() {
        for flag in ["-v", "-V", "--version"] {
            let error = Args::try_parse_from(["lrpymrpc", flag]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayVersion);
        }
        for flag in ["-h", "--help"] {
            let error = Args::try_parse_from(["lrpymrpc", flag]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
        }
    }
}
