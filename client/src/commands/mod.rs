//! One module per subcommand; `main_impl` only parses and dispatches. `job` is the
//! default command (a whole remote job); `durable_jobs` holds `attach`, `jobs` and
//! `cancel`.

pub mod completions;
pub mod config;
pub mod durable_jobs;
pub mod job;
pub mod slots;
pub mod snippet;
pub mod snippets;
pub mod status;
pub mod tls;

/// The async runtime a command runs on (two worker threads: the client is light).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, crate::exit::ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::exit::ClientError::local(format!("cannot start the async runtime: {e}")))
}

/// The arguments validated into a job; said (and its exit code) when they are not.
pub(crate) fn validated(args: crate::cli::Args) -> Result<crate::job::Job, std::process::ExitCode> {
    let verbosity = crate::job::verbosity(&args);
    crate::job::Job::from_args(args).map_err(|error| {
        crate::output::Output::new("", verbosity).error(&error);
        crate::exit::for_error(&error)
    })
}
