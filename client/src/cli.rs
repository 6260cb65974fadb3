//! The command line, with every spelling of the Python client (lrPymRPC 0.2.9) so a
//! Makefile recipe changes one word: `python3 -m lrPymRPC` becomes `lrpymrpc`.
//!
//! Like Python's argparse: a later option overrides an earlier one, unambiguous
//! prefixes of long options work (`--SERVER_I`), and `--CMD` takes a value that
//! starts with `-`. Unlike argparse, repeating `--SOURCE` or `--RESULT` adds paths
//! instead of silently dropping the earlier ones.

use clap::{ArgAction, Parser};

/// Runs a build step on a remote lrPymRPC server: uploads SOURCE, pip-installs
/// REPO_URL, runs CMD in a fresh job directory and downloads RESULT.
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
    /// Print version
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    /// pip-install mapping `name=url,name=url,` (PyPI names, git+https URLs, paths)
    #[arg(long = "REPO_URL", value_name = "REPO_URL", default_value = "")]
    pub repo_url: String,

    /// Command line to run in the remote job directory
    #[arg(long = "CMD", value_name = "CMD", default_value = "charao -h", allow_hyphen_values = true)]
    pub cmd: String,

    /// Server host name or IP address
    #[arg(long = "SERVER_IP", value_name = "SERVER_IP", default_value = "127.0.0.1")]
    pub server_ip: String,

    /// Server TCP port
    #[arg(long = "SERVER_PORT", value_name = "SERVER_PORT", default_value = "8766")]
    pub server_port: String,

    /// Paths to upload (under their base names); one argument may hold several
    /// space-separated paths
    #[arg(long = "SOURCE", value_name = "SOURCE", num_args = 1.., default_value = "source")]
    pub source: Vec<String>,

    /// Paths to bring back from the job directory; same splitting rule as SOURCE
    #[arg(long = "RESULT", value_name = "RESULT", num_args = 1.., default_value = "build")]
    pub result: Vec<String>,

    /// Upload only files whose name ends with one of these (`.cdl .sp`); none = all
    #[arg(long = "SOURCE_INCLUDE", value_name = "EXT", num_args = 0..)]
    pub source_include: Vec<String>,

    /// Leave out files whose name ends with one of these
    #[arg(long = "SOURCE_EXCLUDE", value_name = "EXT", num_args = 0..)]
    pub source_exclude: Vec<String>,

    /// Upload only files whose archive path contains one of these substrings
    #[arg(long = "SOURCE_MATCH", value_name = "TEXT", num_args = 1..)]
    pub source_match: Vec<String>,

    /// Put this run's results under `./RUN_NAME/`, so parallel runs do not collide
    #[arg(long = "RUN_NAME", value_name = "RUN_NAME", default_value = "")]
    pub run_name: String,

    /// Mutual TLS directory (`client/client.key`, `client/client.crt`, `ca/ca.crt`, or
    /// the same three files flat); `~` is expanded; empty = plaintext
    #[arg(long = "TLS_CONFIG_DIR", value_name = "TLS_CONFIG_DIR", default_value = "")]
    pub tls_config_dir: String,
}

/// Splits each argument on white space, as the Python client's `" ".join(...)` and
/// split does, dropping empty pieces.
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
    fn short_and_long_version_and_help_exist() {
        for flag in ["-v", "--version"] {
            let error = Args::try_parse_from(["lrpymrpc", flag]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayVersion);
        }
        for flag in ["-h", "--help"] {
            let error = Args::try_parse_from(["lrpymrpc", flag]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
        }
    }
}
