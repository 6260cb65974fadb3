//! A validated job: everything the command line said, checked once, in the types the
//! rest of the client works with. Nothing downstream re-parses option strings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{Args, DEFAULT_SERVER_PORT, split_paths};
use crate::exit::ClientError;
use crate::output::{Verbosity, clean_text};
use crate::remote::marker::ExitMarker;
use crate::remote::peer::Peer;
use crate::sources::{SourceFilter, SourceRules};
use crate::tls;

/// What a job asks of the server's action cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheChoice {
    Off,
    /// `--cache`: a recorded run may answer.
    Use,
    /// `--refresh`: run, and record this run.
    Refresh,
}

#[derive(Debug, Clone)]
pub struct Job {
    /// The server, and the TLS material to present.
    pub peer: Peer,
    /// `--SERVER_PORT` as given, for the `[host:port]:` prefix.
    /// What starts each printed line: `--prefix` rendered, empty with `--no-prefix`.
    pub prefix: String,
    /// `--prefix` as given (`None` with `--no-prefix`), to render for the server a list
    /// placed the job on.
    pub prefix_template: Option<String>,
    /// Every server of a `--SERVER_IP` list (`host[:port][/slots]`, more than one), with
    /// its declared slots; empty for a single server (`peer`).
    pub servers: Vec<(Peer, Option<u32>)>,
    pub repo_url: String,
    pub command: String,
    pub sources: Vec<String>,
    pub results: Vec<String>,
    /// What goes into the upload, below the SOURCE roots.
    pub rules: Arc<SourceRules>,
    /// A missing or outside SOURCE, or a RESULT that did not come back, is an error.
    pub strict: bool,
    /// Where results land: the working directory (or `--results-dir`), plus RUN_NAME.
    pub results_dest: PathBuf,
    /// `--RUN_NAME` and `--results-dir` as given, kept with a durable job for `attach`.
    pub run_name: String,
    pub results_dir: Option<String>,
    /// `--detach`: start the command and leave it running.
    pub detach: bool,
    /// `--TLS_CONFIG_DIR` as given, for the `attach` command `--detach` prints.
    pub tls_config_dir: String,
    /// Skip the download when the remote command failed.
    pub no_results_on_failure: bool,
    /// gzip level of the upload.
    pub gzip_level: u32,
    /// Caps on what a download may unpack.
    pub result_limits: lrpymrpc_archive::Limits,
    pub workdir: PathBuf,
    /// Set with `--exit-status-marker`.
    pub exit_marker: Option<ExitMarker>,
    /// `--timeout`, for messages and for the clock.
    pub timeout: Option<(String, Duration)>,
    pub retries: u32,
    /// Upstream defaults in use, to say so.
    pub defaulted: Vec<&'static str>,
    /// What the TLS files' checks warn about (a key others can read, an expiring
    /// certificate), shown before the job starts.
    pub tls_warnings: Vec<crate::tls::audit::Finding>,
    /// `--no-cas`: always a tar.gz upload.
    pub no_cas: bool,
    /// `--cache` / `--refresh`: what to ask of a server's action cache.
    pub cache: CacheChoice,
    /// `--cpus`, `--mem`, `--license`, `--walltime` as the extension sends them;
    /// `None` when none was given.
    pub resources: Option<lrpymrpc_proto::Resources>,
    /// `--result-encoding`.
    pub result_encoding: crate::cli::ResultEncoding,
    /// `--blob-compression`.
    pub blob_compression: crate::cli::BlobCompression,
    /// `--queue-timeout`: how long a step waits for a slot on a full server.
    pub queue_timeout: std::time::Duration,
    /// `--stall-timeout`: how long a step may get no answer.
    pub stall: std::time::Duration,
    pub verbosity: Verbosity,
}

impl Job {
    pub fn from_args(args: Args) -> Result<Job, ClientError> {
        let said = |option: &str| origin(&args.origins, option);
        let (host, port, servers) = servers_of(&args, &said)?;
        let prefix = match args.no_prefix {
            true => String::new(),
            false => crate::output::render_prefix(&args.prefix, &host, port).map_err(|why| {
                let hint = Some(format!("the upstream prefix is `{}`", crate::output::DEFAULT_PREFIX));
                ClientError::Usage { message: format!("--prefix {why}"), hint }.with_origin(&said("prefix"))
            })?,
        };
        validate_run_name(&args.run_name).map_err(|error| error.with_origin(&said("RUN_NAME")))?;
        let tls = match args.tls_config_dir.trim() {
            "" => None,
            dir => Some(tls::load(dir).map_err(|error| error.with_origin(&said("TLS_CONFIG_DIR")))?),
        };
        // The local checks of `tls check`, in its words, before any connection.
        let tls_warnings = match &tls {
            Some(tls) => crate::tls::audit::for_job(tls)?,
            None => Vec::new(),
        };
        let workdir = std::env::current_dir()
            .map_err(|e| ClientError::local(format!("cannot read the working directory: {e}")))?;
        let filter = SourceFilter {
            include: split_paths(&args.source_include),
            exclude: split_paths(&args.source_exclude),
            matches: split_paths(&args.source_match),
        };
        let rules = SourceRules::new(filter, &split_paths(&args.exclude), args.gitignore, args.include_vcs, &workdir)?;
        let timeout_text = args.timeout.map(crate::output::seconds).unwrap_or_default();
        let verbosity = verbosity(&args);
        let results_base = match args.results_dir.as_deref().map(str::trim) {
            None | Some("") => workdir.clone(),
            Some(dir) => workdir.join(crate::tls::expand_tilde(dir)),
        };
        if args.results_dir.as_deref().is_some_and(|dir| !dir.trim().is_empty()) {
            check_results_dir(&results_base).map_err(|error| error.with_origin(&said("results-dir")))?;
        }
        let results_dest = match args.run_name.as_str() {
            "" => results_base,
            name => results_base.join(name),
        };
        let results = split_paths(&args.result);
        for result in &results {
            check_result_path(result).map_err(|error| error.with_origin(&said("RESULT")))?;
        }
        let servers = servers
            .into_iter()
            .map(|(host, port, slots)| {
                (
                    Peer {
                        host,
                        port,
                        tls: tls.clone(),
                        keepalive: args.keepalive,
                        connect_timeout: args.connect_timeout,
                    },
                    slots,
                )
            })
            .collect();
        Ok(Job {
            peer: Peer { host, port, tls, keepalive: args.keepalive, connect_timeout: args.connect_timeout },
            prefix,
            prefix_template: (!args.no_prefix).then(|| args.prefix.clone()),
            servers,
            repo_url: args.repo_url,
            command: args.cmd,
            sources: split_paths(&args.source),
            results,
            rules: Arc::new(rules),
            strict: args.strict,
            no_cas: args.no_cas,
            resources: crate::remote::resources::request(
                args.cpus,
                args.mem.map(|m| m.0),
                &args.license,
                args.walltime,
            )?,
            cache: match (args.refresh, args.cache) {
                (true, _) => CacheChoice::Refresh,
                (false, true) => CacheChoice::Use,
                (false, false) => CacheChoice::Off,
            },
            result_encoding: args.result_encoding,
            blob_compression: args.blob_compression,
            results_dest,
            run_name: args.run_name.clone(),
            results_dir: args.results_dir.clone().filter(|dir| !dir.trim().is_empty()),
            detach: args.detach,
            tls_config_dir: args.tls_config_dir.clone(),
            no_results_on_failure: args.no_results_on_failure,
            gzip_level: args.gzip_level,
            result_limits: lrpymrpc_archive::Limits {
                max_bytes: args.max_result_bytes.0,
                max_entries: args.max_result_entries,
                ..lrpymrpc_archive::Limits::DEFAULT
            },
            workdir,
            exit_marker: args.exit_status_marker.then(ExitMarker::new),
            timeout: args.timeout.map(|limit| (timeout_text, limit)),
            retries: args.retries,
            stall: args.stall_timeout,
            queue_timeout: args.queue_timeout,
            defaulted: args.defaulted,
            tls_warnings,
            verbosity,
        })
    }
}

impl Job {
    /// The job as `lrpymrpc attach` finishes it: RESULT, RUN_NAME and `--results-dir`
    /// as the user typed them when it started (`kept` on this machine, `remote/detached.rs`),
    /// or the RESULT paths given to attach now (`fetch`). A server's list (`server`)
    /// only narrows what is fetched, never adds to it: a hostile server cannot make
    /// attach write `Makefile` or `.git/hooks/pre-commit` here. Without either, a job
    /// whose server names results is refused before anything is followed.
    pub fn attached(
        mut self,
        id: &str,
        kept: Option<lrpymrpc_proto::AttachInfo>,
        fetch: &[String],
        server: &lrpymrpc_proto::AttachInfo,
    ) -> Result<(Job, Vec<String>), ClientError> {
        let mut warnings = Vec::new();
        let server_results: Vec<&str> = server.result_dir.split_whitespace().collect();
        let (results, run_name, results_dir) = match kept {
            Some(kept) => {
                let typed: Vec<String> = kept.result_dir.split_whitespace().map(String::from).collect();
                let (results, dropped): (Vec<String>, Vec<String>) =
                    typed.into_iter().partition(|r| server_results.contains(&r.as_str()));
                if !dropped.is_empty() {
                    warnings.push(format!(
                        "the server no longer lists {} for this job: not fetched",
                        dropped.iter().map(|r| format!("`{}`", clean_text(r))).collect::<Vec<_>>().join(", ")
                    ));
                }
                (results, kept.run_name, kept.results_dir)
            }
            None if !fetch.is_empty() => {
                (split_paths(fetch), self.run_name.clone(), self.results_dir.clone().unwrap_or_default())
            }
            None if server_results.is_empty() => (Vec::new(), String::new(), String::new()),
            None => {
                return Err(ClientError::Usage {
                    message: format!(
                        "attach: this machine kept no record of what job {} should fetch (it was started elsewhere), \
                         and a server's list of results is not taken on its word",
                        clean_text(id)
                    ),
                    hint: Some(format!(
                        "name the RESULT paths to fetch: `lrpymrpc attach {} --fetch '{}'` (the server says the job \
                         makes those)",
                        clean_text(id),
                        clean_text(&server_results.join(" "))
                    )),
                });
            }
        };
        for result in &results {
            check_result_path(result)?;
        }
        validate_run_name(&run_name)?;
        let mut base = self.workdir.clone();
        let dir = results_dir.trim();
        if !dir.is_empty() {
            match lrpymrpc_archive::sanitize_relative(dir.as_bytes()) {
                Ok(relative) if !Path::new(dir).is_absolute() => base = base.join(relative),
                _ => warnings.push(format!(
                    "the job's --results-dir `{}` is not below this directory: its results land here instead",
                    clean_text(dir)
                )),
            }
        }
        self.results_dest = match run_name.as_str() {
            "" => base,
            name => base.join(name),
        };
        self.results = results;
        self.run_name = run_name;
        Ok((self, warnings))
    }
}

/// `--quiet`, `--verbose`, `--no-progress`.
pub fn verbosity(args: &Args) -> Verbosity {
    Verbosity { quiet: args.quiet, verbose: args.verbose, no_progress: args.no_progress }
}

/// One server of a `--SERVER_IP` list: host, port and the slots declared for it.
type ListEntry = (String, u16, Option<u32>);

/// The server to dial (`--SERVER_IP`, `--SERVER_PORT`), and with a list of several
/// (`'a b:8767 c/4'`), each entry with its declared slots; the first entry is the one
/// the output prefix names.
fn servers_of(
    args: &Args,
    said: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, u16, Vec<ListEntry>), ClientError> {
    let listed: Vec<&str> =
        args.server_ip.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).collect();
    let mut servers = Vec::new();
    if listed.len() > 1 {
        for entry in &listed {
            let (address, slots) = match entry.rsplit_once('/') {
                Some((address, slots)) => {
                    let slots = slots.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        ClientError::Usage {
                            message: format!("--SERVER_IP `{entry}`: `{slots}` is not a number of slots"),
                            hint: Some("write host[:port][/slots], e.g. 10.0.0.5:8766/4".into()),
                        }
                        .with_origin(&said("SERVER_IP"))
                    })?;
                    (address, Some(slots))
                }
                None => (*entry, None),
            };
            let (host, port) = server_address(address, &args.server_port, &said)?;
            servers.push((host, port, slots));
        }
    }
    let (host, port) = match servers.first() {
        Some((host, port, _)) => (host.clone(), *port),
        None => server_address(&args.server_ip, &args.server_port, &said)?,
    };
    Ok((host, port, servers))
}

/// Where a setting came from, when that was not the command line: `LRPYMRPC_X` or the
/// config file's line, for messages about its value.
pub(crate) fn origin(settings: &[crate::cli::origin::Setting], option: &str) -> Option<String> {
    let setting = settings.iter().find(|setting| setting.option == option)?;
    setting.origin.worth_naming().then(|| setting.origin.to_string())
}

/// The server's host and port from `--SERVER_IP` (which may carry a port, as people
/// write it: `10.0.0.5:8766`, `[::1]:8766`) and `--SERVER_PORT`.
pub(crate) fn server_address(
    server_ip: &str,
    server_port: &str,
    said: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, u16), ClientError> {
    let port = crate::remote::peer::parse_port(server_port).map_err(|why| {
        let hint = Some("give a number from 1 to 65535".into());
        ClientError::Usage { message: format!("--SERVER_PORT {why}"), hint }.with_origin(&said("SERVER_PORT"))
    })?;
    let (host, port_in_ip) = crate::remote::peer::parse_address(server_ip).map_err(|why| {
        let hint = Some("give a host name or an IP address, e.g. --SERVER_IP 10.0.0.5 or --SERVER_IP '[::1]'".into());
        ClientError::Usage { message: format!("--SERVER_IP `{server_ip}` is not usable: {why}"), hint }
            .with_origin(&said("SERVER_IP"))
    })?;
    match port_in_ip {
        None => Ok((host, port)),
        // The port only in SERVER_IP (SERVER_PORT left at its default, or the same).
        Some(in_ip) if in_ip == port || server_port.trim() == DEFAULT_SERVER_PORT => Ok((host, in_ip)),
        Some(in_ip) => Err(ClientError::Usage {
            message: format!("--SERVER_IP `{server_ip}` names port {in_ip}, but --SERVER_PORT says {port}"),
            hint: Some(format!("give the host alone in --SERVER_IP (`{host}`) and the port in --SERVER_PORT")),
        }),
    }
}

/// A RESULT path names something inside the job directory: refused before anything is
/// sent when it is absolute or climbs out (the server would refuse it only after the
/// command ran).
fn check_result_path(result: &str) -> Result<(), ClientError> {
    match lrpymrpc_archive::sanitize_relative(result.as_bytes()) {
        Ok(path) if !path.as_os_str().is_empty() => Ok(()),
        Ok(_) => Err(ClientError::Usage {
            message: format!("--RESULT `{result}` names the job directory itself"),
            hint: Some("name the files or directories the command writes, e.g. --RESULT build".into()),
        }),
        Err(why) => Err(ClientError::Usage {
            message: format!("--RESULT `{result}` is refused: {why}"),
            hint: Some("RESULT paths are relative to the remote job directory, without `..`".into()),
        }),
    }
}

/// `--results-dir` must be a writable directory, or one that can be made in a
/// writable parent: refused before anything is sent, not after the command ran.
fn check_results_dir(base: &Path) -> Result<(), ClientError> {
    let refuse = |why: String| ClientError::Local {
        message: format!("--results-dir `{}` is not usable: {why}", base.display()),
        hint: Some("give an existing directory you can write to, or one whose parent exists".into()),
    };
    let existing = match std::fs::metadata(base) {
        Ok(meta) if meta.is_dir() => base,
        Ok(_) => return Err(refuse("it is not a directory".into())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => match base.parent() {
            Some(parent) if parent.is_dir() => parent,
            _ => return Err(refuse("neither it nor its parent directory exists".into())),
        },
        Err(error) => return Err(refuse(error.to_string())),
    };
    if rustix::fs::access(existing, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_err() {
        return Err(refuse(format!("`{}` cannot be written", existing.display())));
    }
    Ok(())
}

/// One directory name: no `/`, no `\`, not `.` or `..` (`../shared/PROTOCOL.md` section 3).
fn validate_run_name(name: &str) -> Result<(), ClientError> {
    let reason = if name.contains('/') || name.contains('\\') {
        Some("it must be one directory name, without `/` or `\\`")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not run names")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ClientError::Usage {
            message: format!("--RUN_NAME `{name}` refused: {reason}"),
            hint: Some("use a plain name such as `run1`; results then land in `./run1/`".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_single_directory_names() {
        for good in ["", "run1", "a.b", "..x"] {
            assert!(validate_run_name(good).is_ok(), "{good}");
        }
        for bad in ["a/b", "/abs", "a\\b", ".", ".."] {
            assert!(validate_run_name(bad).is_err(), "{bad}");
        }
    }
}
