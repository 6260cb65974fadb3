//! Every way the client can fail, and the one place where each becomes an exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the job ran and its results (if any) are in place |
//! | 1-255 | the remote command's own exit status, passed through (results still fetched) |
//! | 128+N | the remote command was killed by signal N |
//! | 2 | the command line is wrong: an unknown option, or a value that cannot mean anything (`--SERVER_PORT abc`, `--RESULT ../x`), wherever it was set |
//! | 101 | a local input is unusable: TLS files, sources that cannot be read, a `--results-dir` that is not a directory |
//! | 102 | the server could not be reached, or the TLS handshake was refused |
//! | 103 | the server refused or failed a step (a gRPC error status), or no exit-status marker came back |
//! | 104 | the connection was lost in the middle of a step |
//! | 105 | the results were refused (a hostile or malformed archive) or could not be written |
//! | 124 | `--timeout` ran out; the remote job was stopped (as `timeout(1)` does) |
//! | 130 | Ctrl-C (SIGINT); the remote job was stopped |
//! | 143 | SIGTERM; the remote job was stopped |
//!
//! `lrpymrpc tls check` uses 101 for a problem with the TLS files and 102 for one with
//! the server ([`for_tls_check`]).
//!
//! Numbers start at 101, like distcc's, to stay clear of the small codes that remote
//! commands use.

use std::fmt;
use std::process::ExitCode;

/// The step of a job, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Upload,
    Execute,
    Check,
    Download,
    /// Finding a durable job by id on the servers (`attach`, `cancel`).
    Lookup,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::Upload => "upload",
            Step::Execute => "execute",
            Step::Check => "check",
            Step::Download => "download",
            Step::Lookup => "lookup",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An option's value cannot mean anything: a usage error, as clap's own.
    #[error("{message}")]
    Usage { message: String, hint: Option<String> },
    #[error("{message}")]
    Local { message: String, hint: Option<String> },
    #[error("cannot connect to {peer}: {reason}")]
    Connect {
        peer: String,
        reason: String,
        hint: Option<String>,
        /// Worth another try (refused, timed out), unlike a refused certificate.
        transient: bool,
        /// What the transport said, by type.
        fault: crate::remote::fault::TransportFault,
    },
    #[error("{step} failed: {peer} answered {code}: {message}", code = code_name(*code))]
    Server { step: Step, peer: String, code: tonic::Code, message: String },
    #[error("{step} failed: lost the connection to {peer}: {reason}")]
    Lost { step: Step, peer: String, reason: String },
    #[error("results not unpacked: {0}")]
    Results(#[from] ResultsError),
    #[error("the remote command failed with exit status {code}")]
    RemoteExit { code: i32 },
    #[error("no exit-status marker came back: the command may not have run at all")]
    MarkerMissing,
    #[error("--strict: RESULT {} did not come back", paths.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "))]
    ResultsMissing { paths: Vec<String> },
    #[error("the remote command was killed by signal {signal}")]
    RemoteSignal { signal: i32 },
    #[error("stopped by {name} during {step}", name = signal_name(*signal))]
    Interrupted { signal: i32, step: Step },
    #[error("the job took longer than --timeout {limit}; stopped it during {step}")]
    TimedOut { limit: String, step: Step },
}

/// Why results did not reach their place.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The archive the server sent was refused or could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] lrpymrpc_archive::UnpackError),
    /// The results passed `--max-result-bytes` or `--max-result-entries` (or its
    /// default); nothing of them was written.
    #[error("the results are more than {flag} allows {limit}; nothing of them was written")]
    OverLimit { flag: &'static str, limit: String },
    /// The unpacked results could not be moved into place.
    #[error(transparent)]
    Merge(#[from] lrpymrpc_archive::MergeError),
    /// The destination could not be prepared.
    #[error("cannot {what} `{path}`: {source}")]
    Local { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
}

impl ResultsError {
    /// An unpack failure, with a limit said as the option that sets it.
    pub fn of_unpack(error: lrpymrpc_archive::UnpackError) -> ResultsError {
        use lrpymrpc_archive::UnpackError;
        match error {
            UnpackError::TooLarge { max_bytes } => ResultsError::OverLimit {
                flag: "--max-result-bytes",
                limit: format!("({} once unpacked)", lrpymrpc_units::human_bytes(max_bytes)),
            },
            UnpackError::TooManyEntries { max_entries } => {
                ResultsError::OverLimit { flag: "--max-result-entries", limit: format!("({max_entries} files)") }
            }
            other => ResultsError::Unpack(other),
        }
    }
}

/// `NotFound` -> `NOT_FOUND`, the spelling gRPC users know.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "Ctrl-C (SIGINT)".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

impl ClientError {
    pub fn local(message: impl Into<String>) -> ClientError {
        ClientError::Local { message: message.into(), hint: None }
    }

    /// The fix, when one is known.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ClientError::Usage { hint, .. } | ClientError::Local { hint, .. } | ClientError::Connect { hint, .. } => {
                hint.as_deref()
            }
            ClientError::Results(ResultsError::OverLimit { .. }) => Some(
                "raise the limit if the results are meant to be this large (it guards this machine against a \
                 server sending more than it should)",
            ),
            ClientError::MarkerMissing => Some(
                "the server may not run CMD with a POSIX shell (`sh -c`), which --exit-status-marker needs; without \
                 it the client exits 0 after a successful transfer, as the Python client does",
            ),
            _ => None,
        }
    }

    /// Whether connecting timed out (the server said nothing in time).
    pub fn timed_out(&self) -> bool {
        matches!(self, ClientError::Connect { fault: crate::remote::fault::TransportFault::TimedOut, .. })
    }

    /// A local error about a value, saying where the value came from (`origin`:
    /// `environment LRPYMRPC_X`, `config file ... line N`), when it did not come from
    /// the command line.
    pub fn with_origin(self, origin: &Option<String>) -> ClientError {
        match (self, origin) {
            (ClientError::Local { message, hint }, Some(origin)) => {
                ClientError::Local { message: format!("{message} (from {origin})"), hint }
            }
            (ClientError::Usage { message, hint }, Some(origin)) => {
                ClientError::Usage { message: format!("{message} (from {origin})"), hint }
            }
            (error, _) => error,
        }
    }

    /// The same failure, saying how often and how long it was tried.
    pub fn tried(self, tries: u32, took: std::time::Duration) -> ClientError {
        let tried = format!("tried {tries} times in {:.1} s", took.as_secs_f64());
        match self {
            ClientError::Connect { peer, reason, hint, transient, fault } => {
                ClientError::Connect { peer, reason: format!("{reason} ({tried})"), hint, transient, fault }
            }
            ClientError::Lost { step, peer, reason } => {
                ClientError::Lost { step, peer, reason: format!("{reason} ({tried})") }
            }
            other => other,
        }
    }

    /// A server's "full" refusal after the step waited `waited` for a slot in vain.
    pub fn queued_for(self, waited: std::time::Duration) -> ClientError {
        match self {
            ClientError::Server { step, peer, code, message } => ClientError::Server {
                step,
                peer,
                code,
                message: format!(
                    "{message} (waited {} for a slot, --queue-timeout)",
                    lrpymrpc_units::human_duration(waited)
                ),
            },
            other => other,
        }
    }

    /// Whether repeating the step may help: the server could not be reached or the
    /// connection dropped, as opposed to an answer or a local problem.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { transient, .. } => *transient,
            ClientError::Lost { .. } => true,
            _ => false,
        }
    }
}

/// The exit code for a failure: the table at the top of this module.
pub fn for_error(error: &ClientError) -> ExitCode {
    ExitCode::from(match error {
        ClientError::Usage { .. } => 2,
        ClientError::Local { .. } => 101,
        ClientError::Connect { .. } => 102,
        ClientError::Server { .. } | ClientError::MarkerMissing => 103,
        ClientError::Lost { .. } => 104,
        ClientError::Results(_) | ClientError::ResultsMissing { .. } => 105,
        // Exit statuses are 8 bits; a status that is a multiple of 256 must not read as success.
        ClientError::RemoteExit { code } => u8::try_from(code.rem_euclid(256)).ok().filter(|&c| c != 0).unwrap_or(1),
        // The signal number comes from the network: any i32, never a panic.
        ClientError::RemoteSignal { signal } | ClientError::Interrupted { signal, .. } => match u8::try_from(*signal) {
            Ok(signal @ 1..=127) => 128 + signal,
            _ => 255,
        },
        ClientError::TimedOut { .. } => 124,
    })
}

/// The exit code of `lrpymrpc tls check`: 0 when everything is usable, else the code of
/// a local input problem (101) for the files, or of an unreachable or refusing server
/// (102) when only the server check failed.
pub fn for_tls_check(file_problems: usize, server_problems: usize) -> ExitCode {
    match (file_problems, server_problems) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(102),
        _ => ExitCode::from(101),
    }
}

/// The exit code after clap printed help, the version, or a usage error.
pub fn for_usage(error: &clap::Error) -> ExitCode {
    ExitCode::from(match error.use_stderr() {
        false => 0,
        true => 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_spellings() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Internal), "INTERNAL");
    }

    #[test]
    fn remote_statuses_pass_through_and_never_read_as_success() {
        let code = |error| format!("{:?}", for_error(&error));
        assert_eq!(code(ClientError::RemoteExit { code: 3 }), format!("{:?}", ExitCode::from(3)));
        assert_eq!(code(ClientError::RemoteExit { code: 256 }), format!("{:?}", ExitCode::from(1)));
        assert_eq!(code(ClientError::RemoteSignal { signal: 9 }), format!("{:?}", ExitCode::from(137)));
        let interrupted = |signal| ClientError::Interrupted { signal, step: Step::Execute };
        assert_eq!(code(interrupted(libc::SIGINT)), format!("{:?}", ExitCode::from(130)));
        assert_eq!(code(interrupted(libc::SIGTERM)), format!("{:?}", ExitCode::from(143)));
        for hostile in [i32::MAX, i32::MIN, -1, 200] {
            assert_eq!(code(ClientError::RemoteSignal { signal: hostile }), format!("{:?}", ExitCode::from(255)));
        }
    }
}
