//! The lrpymrpc client: sends source directories to an lrPymRPC server, has it
//! pip-install a tool and run a command, streams the output back and unpacks the
//! results, all as streams. A drop-in replacement for `python3 -m lrPymRPC`.
//!
//! Data flow: [`cli::Args`] (every upstream spelling) is validated into a
//! [`job::Job`]; a [`session::Session`] opens the mutual-TLS channel and asks the
//! server's capabilities before anything is packed, and makes each call; `run` orders
//! the steps (Upload, Execute, Check, Download) and their retries; [`exit`] maps every
//! outcome to the process exit code.

pub mod cli;
pub mod connect;
pub mod exit;
pub mod job;
pub mod marker;
pub mod output;
mod run;
pub mod server_cert;
pub mod session;
pub mod settings;
pub mod snippets;
pub mod source;
pub mod tls;
pub mod tls_commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;
use tokio::signal::unix::{SignalKind, signal};

pub use exit::ClientError;
use exit::Step;
use output::Output;

/// How long a cancelled job gets to tell the server and remove its staging directory.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Runs the client with the process's arguments and returns its exit code.
pub fn main_impl() -> ExitCode {
    let args = match settings::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(settings::SettingsError::Usage(error)) => {
            let _ = error.print();
            return exit::for_usage(&error);
        }
        Err(settings::SettingsError::Config(error)) => {
            Output::new("", "", output::Verbosity::default()).error(&error);
            return exit::for_error(&error);
        }
    };
    match &args.command {
        Some(cli::Command::Completions { shell }) => {
            clap_complete::generate(*shell, &mut cli::Args::command(), "lrpymrpc", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(cli::Command::Snippet { kind }) => {
            let text = match kind {
                cli::SnippetKind::Make => snippets::make(),
                cli::SnippetKind::Cmake => snippets::cmake(),
            };
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Some(cli::Command::Tls { action: cli::TlsAction::Init { cn, dir, force } }) => {
            return match tls_commands::init(cn, dir, *force) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    Output::new("", "", output::Verbosity::default()).error(&error);
                    exit::for_error(&error)
                }
            };
        }
        Some(cli::Command::Tls { action: cli::TlsAction::Check { dir, server } }) => {
            return tls_commands::check(dir, server.as_deref());
        }
        None => {}
    }
    let verbosity = job::verbosity(&args);
    let job = match job::Job::from_args(args) {
        Ok(job) => job,
        Err(error) => {
            Output::new("", "", verbosity).error(&error);
            return exit::for_error(&error);
        }
    };
    let out = Output::new(&job.peer.host, &job.port_text, job.verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let error = ClientError::local(format!("cannot start the async runtime: {e}"));
            out.error(&error);
            return exit::for_error(&error);
        }
    };
    let outcome = runtime.block_on(supervise(&job, &out));
    // Lets a cancelled download's unpacking thread remove its staging directory.
    runtime.shutdown_timeout(CANCEL_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            out.error(&error);
            exit::for_error(&error)
        }
    }
}

/// Runs the job until it ends, a signal arrives, or `--timeout` runs out. Ending it
/// early drops the RPC in flight, which resets its HTTP/2 stream: the server then
/// kills the remote process group (or drops the half-received upload).
async fn supervise(job: &job::Job, out: &Output) -> Result<(), ClientError> {
    let (mut interrupt, mut terminate) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(e), _) | (_, Err(e)) => return Err(ClientError::local(format!("cannot handle signals: {e}"))),
    };
    let deadline = async {
        match &job.timeout {
            Some((_, limit)) => tokio::time::sleep(*limit).await,
            None => std::future::pending().await,
        }
    };
    let stopped = |signal| ClientError::Interrupted { signal, step: out.step() };
    let outcome = tokio::select! {
        outcome = run::run(job, out) => return outcome,
        _ = interrupt.recv() => stopped(libc::SIGINT),
        _ = terminate.recv() => stopped(libc::SIGTERM),
        () = deadline => ClientError::TimedOut {
            limit: job.timeout.as_ref().map(|(text, _)| text.clone()).unwrap_or_default(),
            step: out.step(),
        },
    };
    // A second Ctrl-C or SIGTERM now ends the process at once.
    restore_default_signal_handling();
    // Gives the connection a moment to send the stream reset before the process exits
    // (the closing socket would tell the server too, a little later).
    tokio::time::sleep(Duration::from_millis(100)).await;
    match out.step() {
        Step::Upload | Step::Execute => out.note("the server was told to stop the job and its remote processes"),
        Step::Download => out.note("results were not moved into place; earlier results are as they were"),
        Step::Connect | Step::Check => {}
    }
    Err(outcome)
}

fn restore_default_signal_handling() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing the default disposition has no memory effects; it only
        // replaces tokio's handler, which this process no longer needs.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}
