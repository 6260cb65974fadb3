//! The Execute step's output, followed to the end: with a durable run, following it
//! again after a lost connection (the output resumes after the last line printed,
//! none lost, none twice) for as long as reconnecting brings output; and the job a
//! Ctrl-C must cancel by name while it runs.

use lrpymrpc_proto::{CachePolicy, Durability};

use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::remote::session::{Followed, Reported, Session};
use crate::steps::retry::retrying;

/// The durable job whose command runs now, if any: what a Ctrl-C must cancel by name,
/// since dropping the call no longer does (`commands/job.rs`).
#[derive(Debug, Default)]
pub struct RunningJob(std::sync::Mutex<Option<(Session, String)>>);

impl RunningJob {
    pub(crate) fn set(&self, session: &Session, unique_id: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((session.clone(), unique_id.to_string()));
    }

    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The job to cancel, once.
    pub fn take(&self) -> Option<(Session, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Execute, and with a durable run, following it again after a lost connection: the
/// output resumes after the last line printed (none lost, none twice), for as long as
/// reconnecting brings output; a reconnection that brings nothing counts against
/// `--retries`. Returns the session that saw the end, and how the end was reported.
pub(super) async fn execute_following(
    job: &Job,
    session: Session,
    unique_id: &str,
    cache: CachePolicy,
    durability: Durability,
    out: &Output,
    running: &RunningJob,
) -> Result<(Session, Reported), ClientError> {
    let mut followed = Followed::default();
    let outcome = session.execute(job, unique_id, cache, durability, out, &mut followed).await;
    let durable = durability != Durability::Unspecified && !job.detach;
    follow_to_the_end(job, session, unique_id, outcome, durable, followed, out, running).await
}

/// After a first `outcome` of following a run: with a `durable` run, follows it again
/// after each lost connection, as long as following works: a reconnection whose call
/// is lost again within the stall limit without a new message counts against
/// `--retries` (a long silent command on a flaky link is followed as long as it runs).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn follow_to_the_end(
    job: &Job,
    session: Session,
    unique_id: &str,
    mut outcome: Result<(), ClientError>,
    durable: bool,
    mut followed: Followed,
    out: &Output,
    running: &RunningJob,
) -> Result<(Session, Reported), ClientError> {
    let mut session = session;
    let mut fruitless = 0;
    loop {
        match outcome {
            Ok(()) => return Ok((session, followed.reported)),
            Err(error @ ClientError::Lost { .. }) if durable => {
                if fruitless >= job.retries {
                    return Err(error);
                }
                out.warn(&format!("{error}; the command goes on on the server: reconnecting to follow it"));
                let before = followed.last_seq;
                let peer = session.peer().clone();
                session = match retrying(job, out, Step::Connect, || Session::open(&peer, job.stall)).await {
                    Ok(session) => session,
                    Err(again) => return Err(could_not_reconnect(error, &again, unique_id)),
                };
                running.set(&session, unique_id);
                out.note(&format!("reconnected: following job {unique_id} after line {before}"));
                let following = std::time::Instant::now();
                outcome = session.follow(job, unique_id, false, out, &mut followed).await;
                let held = followed.last_seq > before || following.elapsed() >= job.stall;
                fruitless = if held { 0 } else { fruitless + 1 };
            }
            Err(error) => return Err(error),
        }
    }
}

/// The lost connection, and that following the job again failed too: the job goes
/// on on the server until nobody came back for its grace.
fn could_not_reconnect(lost: ClientError, again: &ClientError, unique_id: &str) -> ClientError {
    match lost {
        ClientError::Lost { step, peer, reason } => ClientError::Lost {
            step,
            peer,
            reason: format!(
                "{reason}; reconnecting failed too ({again}): job {unique_id} goes on on the server, which \
                 cancels it when nobody comes back within its --reattach-grace (`lrpymrpc attach {unique_id}` \
                 follows it)"
            ),
        },
        other => other,
    }
}
