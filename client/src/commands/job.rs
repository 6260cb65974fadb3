//! The default command: one job, run remotely. Validates the arguments into a
//! [`Job`], then runs its steps under supervision: Ctrl-C, SIGTERM and `--timeout`
//! stop it (dropping the call in flight cancels it on the server).

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Args;
use crate::exit::{self, ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::steps;

/// How long a cancelled job gets to tell the server and remove its staging directory.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Runs the job the arguments describe and returns the exit code.
pub fn run(args: Args) -> ExitCode {
    let job = match super::validated(args) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let out = Output::new(&job.prefix, job.verbosity);
    for warning in &job.tls_warnings {
        out.warn_with_hint(&warning.text, warning.hint.as_deref());
    }
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
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
async fn supervise(job: &Job, out: &Output) -> Result<(), ClientError> {
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
    let running = steps::RunningJob::default();
    let outcome = tokio::select! {
        outcome = steps::run(job, out, &running) => return outcome,
        _ = interrupt.recv() => stopped(libc::SIGINT),
        _ = terminate.recv() => stopped(libc::SIGTERM),
        () = deadline => ClientError::TimedOut {
            limit: job.timeout.as_ref().map(|(text, _)| text.clone()).unwrap_or_default(),
            step: out.step(),
        },
    };
    // A second Ctrl-C or SIGTERM now ends the process at once.
    restore_default_signal_handling();
    // A durable run goes on when its call is dropped: it is cancelled by name.
    if let Some((session, unique_id)) = running.take() {
        let _ = tokio::time::timeout(CANCEL_GRACE, session.cancel(&unique_id)).await;
    }
    // Gives the connection a moment to send the stream reset before the process exits
    // (the closing socket would tell the server too, a little later).
    tokio::time::sleep(Duration::from_millis(100)).await;
    match out.step() {
        Step::Upload | Step::Execute => out.note("the server was told to stop the job and its remote processes"),
        Step::Download => out.note("results were not moved into place; earlier results are as they were"),
        Step::Connect | Step::Check | Step::Lookup => {}
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
