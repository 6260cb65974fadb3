//! Patience with a server: a step safe to repeat is tried again after a transient
//! failure, waiting longer each time (`--retries`), and a step that keeps the user
//! waiting says what it waits for.

use std::future::Future;
use std::time::Duration;

use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;

/// The wait before the first retry; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// How long a step may keep the user waiting before they are told what it waits for.
const PATIENCE: Duration = Duration::from_secs(2);

/// `step`, saying once after [`PATIENCE`] what it is waiting for.
pub(crate) async fn patiently<T>(out: &Output, job: &Job, what: &str, step: impl Future<Output = T>) -> T {
    tokio::pin!(step);
    tokio::select! {
        done = &mut step => return done,
        () = tokio::time::sleep(PATIENCE) => {}
    }
    // What the user reads is the limit that applies: connecting has its own.
    let (option, limit) = match what {
        "connecting" => ("--connect-timeout", job.peer.connect_timeout),
        _ => ("--stall-timeout", job.stall),
    };
    let whom = match job.servers.len() {
        0 | 1 => job.peer.to_string(),
        n => format!("the {n} servers of the list"),
    };
    out.note(&format!(
        "waiting for {whom} to answer ({what}; giving up after {option} {})",
        crate::output::seconds(limit)
    ));
    step.await
}

/// Runs a step that is safe to repeat, again after a transient failure (the server
/// unreachable, the connection lost), waiting longer each time. Each retry is said as
/// it is decided (what failed, how long until the next try, which of how many), so what
/// the user reads matches what happens; a step that still fails says how often and how
/// long it was tried (`tried 4 times in 7.5 s`).
pub(crate) async fn retrying<T, F, Fut>(job: &Job, out: &Output, step: Step, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let started = std::time::Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && tries < job.retries => {
                tries += 1;
                out.warn(&format!(
                    "{error}; retrying {step} in {} ({tries} of {} retries)",
                    crate::output::seconds(delay),
                    job.retries
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Ok(value) if tries > 0 && step == Step::Connect => {
                let took = crate::output::seconds(started.elapsed());
                out.note(&format!("connected after {} tries in {took}", tries + 1));
                return Ok(value);
            }
            Err(error) if tries > 0 => return Err(error.tried(tries + 1, started.elapsed())),
            outcome => return outcome,
        }
    }
}
