//! One job, step by step: connect, Upload (packing while sending), Execute (printing
//! lines as they arrive), Check, Download (unpacking while receiving into a staging
//! directory, then moving the results into place). The calls themselves are the
//! session's (`session.rs`); this module is the order of the steps, what is retried,
//! and what is said between them.

use std::future::Future;
use std::time::Duration;

use lrpymrpc_archive::PackRoot;
use lrpymrpc_proto::{CachePolicy, DownloadRequest, Durability};

use crate::exit::{ClientError, Step};
use crate::job::{CacheChoice, Job};
use crate::output::Output;
use crate::session::Session;
use crate::source;
use crate::tree_build::EarlyTree;

/// The wait before the first retry; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// The durable job whose command runs now, if any: what a Ctrl-C must cancel by name,
/// since dropping the call no longer does (`commands/job.rs`).
#[derive(Debug, Default)]
pub struct RunningJob(std::sync::Mutex<Option<(Session, String)>>);

impl RunningJob {
    pub(crate) fn set(&self, session: &Session, unique_id: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((session.clone(), unique_id.to_string()));
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The job to cancel, once.
    pub fn take(&self) -> Option<(Session, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub async fn run(job: &Job, out: &Output, running: &RunningJob) -> Result<(), ClientError> {
    // Sources are chosen before connecting, so `--strict` refuses before anything is sent.
    let (roots, warnings) = source::select(&job.sources, &job.workdir);
    if let (true, Some(first)) = (job.strict, warnings.first()) {
        return Err(ClientError::Local {
            message: format!("--strict: {first}"),
            hint: Some("fix the --SOURCE list, or leave out --strict to skip such paths with a warning".into()),
        });
    }
    // The tree is walked and hashed while the client connects.
    let early = EarlyTree::start(job, &roots);
    let (session, out, unique_id, from_tree) = match job.servers.is_empty() {
        true => {
            out.begin(Step::Connect);
            let connecting = retrying(job, out, Step::Connect, || Session::open(&job.peer, job.stall));
            let session = patiently(out, job, "connecting", connecting).await?;
            out.end("");
            refuse_detach_without_durable_jobs(job, &session)?;
            before_upload(job, &warnings, out);
            let mut wait = crate::queue::SlotWait::new(job.queue_timeout);
            let (unique_id, from_tree) = loop {
                match upload(&session, job, &roots, &early, out).await {
                    Err(error) if crate::queue::is_full(&session, &error).await => {
                        wait.until_free(&session, error, out).await?;
                    }
                    uploaded => break uploaded?,
                }
            };
            wait.done(out);
            (session, out.clone(), unique_id, from_tree)
        }
        false => crate::placement::place(job, &roots, &warnings, &early, out).await?,
    };
    drop(early);
    let out = &out;
    if let Err(error) = refuse_detach_without_durable_jobs(job, &session) {
        session.release(&unique_id).await;
        return Err(error);
    }
    let cache = cache_policy(&session, job, from_tree, out);

    out.status(&format!("pip install   ={}", job.repo_url));
    out.status(&format!("Execute target={}", job.command));
    out.begin(Step::Execute);
    let durability = match (session.has_durable_jobs(), job.detach) {
        (false, _) => Durability::Unspecified,
        (true, false) => Durability::Reattach,
        (true, true) => Durability::Detached,
    };
    if durability != Durability::Unspecified {
        running.set(&session, &unique_id);
    }
    let (session, reported) = execute_following(job, session, &unique_id, cache, durability, out, running).await?;
    running.clear();
    out.end("");
    if job.detach {
        say_detached(job, &session, &unique_id, out);
        return Ok(());
    }
    let remote_outcome = reported.outcome();
    finish(job, &session, unique_id, remote_outcome, out).await
}

/// `--detach` needs a server that keeps the command running without its client.
fn refuse_detach_without_durable_jobs(job: &Job, session: &Session) -> Result<(), ClientError> {
    match job.detach && !session.has_durable_jobs() {
        true => Err(ClientError::Local {
            message: format!(
                "--detach: {} does not keep a command running without its client",
                crate::connect::authority(session.peer())
            ),
            hint: Some("it is the Python server or an older lrpymrpc-mock-server: run without --detach".into()),
        }),
        false => Ok(()),
    }
}

/// What `--detach` prints: the job id on stdout (for scripts), how to follow it.
fn say_detached(job: &Job, session: &Session, unique_id: &str, out: &Output) {
    out.status(&format!("detached job={unique_id}"));
    let peer = session.peer();
    let mut follow = format!("lrpymrpc --SERVER_IP {} --SERVER_PORT {}", peer.host, peer.port);
    if !job.tls_config_dir.trim().is_empty() {
        follow.push_str(&format!(" --TLS_CONFIG_DIR {}", job.tls_config_dir.trim()));
    }
    out.note(&format!(
        "the command runs on without this client; follow it and fetch its results with `{follow} attach {unique_id}` \
         (`lrpymrpc jobs` lists your jobs, `lrpymrpc cancel {unique_id}` stops it)"
    ));
}

/// Execute, and with a durable run, following it again after a lost connection: the
/// output resumes after the last line printed (none lost, none twice), for as long as
/// reconnecting brings output; a reconnection that brings nothing counts against
/// `--retries`. Returns the session that saw the end, and how the end was reported.
async fn execute_following(
    job: &Job,
    session: Session,
    unique_id: &str,
    cache: CachePolicy,
    durability: Durability,
    out: &Output,
    running: &RunningJob,
) -> Result<(Session, crate::session::Reported), ClientError> {
    let mut followed = crate::session::Followed::default();
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
    mut followed: crate::session::Followed,
    out: &Output,
    running: &RunningJob,
) -> Result<(Session, crate::session::Reported), ClientError> {
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

/// What is said before the upload: upstream defaults in use, the first status line, and
/// the SOURCE paths passed over.
pub(crate) fn before_upload(job: &Job, warnings: &[String], out: &Output) {
    if !job.defaulted.is_empty() {
        let used: Vec<String> = job
            .defaulted
            .iter()
            .map(|&flag| match flag {
                "--CMD" => format!("--CMD `{}`", job.command),
                "--SOURCE" => format!("--SOURCE `{}`", job.sources.join(" ")),
                _ => format!("--RESULT `{}`", job.results.join(" ")),
            })
            .collect();
        out.note(&format!("not given, so lrPymRPC's defaults are used: {}", used.join(", ")));
    }
    out.status(&format!("Compress source={}", job.sources.join(" ")));
    for warning in warnings {
        out.warn(warning);
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

/// After Execute: results, unless the command failed and they are not wanted.
pub(crate) async fn finish(
    job: &Job,
    session: &Session,
    unique_id: String,
    remote_outcome: Option<Result<(), ClientError>>,
    out: &Output,
) -> Result<(), ClientError> {
    if job.no_results_on_failure && matches!(remote_outcome, Some(Err(_))) {
        out.note(
            "the remote command failed: results not fetched (--no-results-on-failure); earlier ones are as they were",
        );
        session.release(&unique_id).await;
        crate::detached::forget(&unique_id);
        out.status("Finish.");
        return remote_outcome.unwrap_or(Ok(()));
    }
    let missing = fetch_results(session, job, unique_id.clone(), out).await?;
    crate::detached::forget(&unique_id);
    out.status("Finish.");
    final_outcome(remote_outcome, job, out)?;
    match (job.strict, missing.is_empty()) {
        (true, false) => Err(ClientError::ResultsMissing { paths: missing }),
        _ => Ok(()),
    }
}

/// The Upload step, retried as a whole; returns the job id. To a server that takes
/// content-addressed uploads, only the blobs it lacks travel; to others, a tar.gz.
/// What to ask of the server's action cache: what the user asked, when the server has
/// one and the job came as a tree (a tar.gz has no digest to name it by); else
/// nothing, with a note saying why.
fn cache_policy(session: &Session, job: &Job, from_tree: bool, out: &Output) -> CachePolicy {
    let asked = match job.cache {
        CacheChoice::Off => return CachePolicy::Unspecified,
        CacheChoice::Use => CachePolicy::Use,
        CacheChoice::Refresh => CachePolicy::Refresh,
    };
    if !session.has_action_cache() {
        out.note("this server keeps no action cache (--cache): the step runs");
        return CachePolicy::Unspecified;
    }
    if !from_tree {
        out.note("the sources went as a tar.gz, which the action cache cannot name (--cache): the step runs");
        return CachePolicy::Unspecified;
    }
    asked
}

/// The Upload step; returns the job id and whether the job was made from a tree.
pub(crate) async fn upload(
    session: &Session,
    job: &Job,
    roots: &[PackRoot],
    early: &EarlyTree,
    out: &Output,
) -> Result<(String, bool), ClientError> {
    out.status("Upload");
    out.begin(Step::Upload);
    let tree = match session.takes_trees() && !job.no_cas {
        true => retrying(job, out, Step::Upload, || session.upload_tree(job, roots.to_vec(), early, out)).await?,
        false => {
            early.stop();
            None
        }
    };
    let from_tree = tree.is_some();
    let (unique_id, skipped) = match tree {
        Some(tree) => {
            out.transferred_tree(tree.files, tree.file_bytes, tree.sent_blobs, tree.sent_bytes);
            if tree.wire_bytes < tree.sent_bytes {
                let human = lrpymrpc_units::human_bytes;
                out.verbose(&format!("zstd sent {} as {}", human(tree.sent_bytes), human(tree.wire_bytes)));
            }
            (tree.unique_id, tree.skipped)
        }
        None => {
            let (unique_id, report) =
                retrying(job, out, Step::Upload, || session.upload(job, roots.to_vec(), out)).await?;
            out.transferred("uploaded", report.files, report.content_bytes);
            (unique_id, report.skipped)
        }
    };
    for (path, why) in &skipped {
        out.warn(&format!("`{}` not uploaded: {why}", path.display()));
    }
    let left_out = job.rules.left_out_vcs();
    if !left_out.is_empty() {
        let list: Vec<_> = left_out.iter().map(|p| p.display().to_string()).collect();
        out.note(&format!("left out version-control directories: {} (--include-vcs sends them)", list.join(", ")));
    }
    out.status(&format!("unique id={unique_id}"));
    Ok((unique_id, from_tree))
}

/// Check, then Download when there is something to fetch, each retried; returns the
/// RESULT paths that did not come back, each named in a warning.
async fn fetch_results(
    session: &Session,
    job: &Job,
    unique_id: String,
    out: &Output,
) -> Result<Vec<String>, ClientError> {
    out.status("Check result.");
    out.begin(Step::Check);
    let result_dir = job.results.join(" ");
    let checking = retrying(job, out, Step::Check, || session.check(&unique_id, &result_dir));
    let checked = patiently(out, job, "Check", checking).await?;
    let has_stream = checked.has_stream;
    out.end("");
    if !has_stream {
        out.status("Download data is not exist.");
        return Ok(warn_missing(job.results.clone(), out));
    }
    out.status("Download data is exist.");
    out.begin(Step::Download);
    let encoding = session.result_encoding(job.result_encoding, out);
    let request = DownloadRequest { unique_id, result_dir, encoding: encoding.name().into() };
    let total = (checked.result_bytes > 0).then_some(checked.result_bytes);
    let fetched = retrying(job, out, Step::Download, || session.download(job, request.clone(), total, out)).await?;
    out.transferred("downloaded", fetched.report.files, fetched.report.content_bytes);
    out.status("Extract result.");
    Ok(warn_missing(fetched.missing, out))
}

/// Names each RESULT path that did not come back; a step whose output is missing is
/// not a success, even when the transfer was.
fn warn_missing(missing: Vec<String>, out: &Output) -> Vec<String> {
    for name in &missing {
        out.warn(&format!("RESULT `{name}` did not come back: the remote command did not make it"));
    }
    missing
}

/// The job's outcome once its results are in place: the remote command's, or, when
/// the server reported none, success with a warning saying so.
fn final_outcome(remote_outcome: Option<Result<(), ClientError>>, job: &Job, out: &Output) -> Result<(), ClientError> {
    match remote_outcome {
        Some(outcome) => outcome,
        None if job.exit_marker.is_some() => Err(ClientError::MarkerMissing),
        None => {
            out.warn(
                "the server does not report the command's exit status; exiting 0 since the transfers succeeded \
                 (--exit-status-marker recovers it from a server that runs CMD with a shell)",
            );
            Ok(())
        }
    }
}

/// How long a step may keep the user waiting before they are told what it waits for.
const PATIENCE: Duration = Duration::from_secs(2);

/// `step`, saying once after [`PATIENCE`] what it is waiting for.
pub(crate) async fn patiently<T>(out: &Output, job: &Job, what: &str, step: impl Future<Output = T>) -> T {
    tokio::pin!(step);
    tokio::select! {
        done = &mut step => return done,
        () = tokio::time::sleep(PATIENCE) => {}
    }
    out.note(&format!(
        "waiting for {} to answer ({what}; giving up after --stall-timeout {})",
        crate::connect::authority(&job.peer),
        crate::output::seconds(job.stall)
    ));
    step.await
}

/// Runs a step that is safe to repeat, again after a transient failure (the server
/// unreachable, the connection lost), waiting longer each time. A lost connection
/// mid-step is said at each retry; a server that cannot be reached yet is said once,
/// at the end (`tried 4 times in 3.5 s`), or under `--verbose` at each try.
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
                if step != Step::Connect || job.verbosity.verbose {
                    out.warn(&format!(
                        "{error}; retrying {step} in {} ({tries} of {} retries)",
                        crate::output::seconds(delay),
                        job.retries
                    ));
                }
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
