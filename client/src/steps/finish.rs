//! After Execute: Check, then Download when there is something to fetch (unpacking
//! while receiving, then moving the results into place), each retried; every RESULT
//! path that did not come back named; and the job's outcome.

use lrpymrpc_proto::DownloadRequest;

use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::remote::session::Session;
use crate::steps::retry::{patiently, retrying};

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
        crate::remote::detached::forget(&unique_id);
        out.status("Finish: done.");
        return remote_outcome.unwrap_or(Ok(()));
    }
    let missing = fetch_results(session, job, unique_id.clone(), out).await?;
    crate::remote::detached::forget(&unique_id);
    out.status("Finish: done.");
    final_outcome(remote_outcome, job, out)?;
    match (job.strict, missing.is_empty()) {
        (true, false) => Err(ClientError::ResultsMissing { paths: missing }),
        _ => Ok(()),
    }
}

/// Check, then Download when there is something to fetch, each retried; returns the
/// RESULT paths that did not come back, each named in a warning.
async fn fetch_results(
    session: &Session,
    job: &Job,
    unique_id: String,
    out: &Output,
) -> Result<Vec<String>, ClientError> {
    out.status("Check: result.");
    out.begin(Step::Check);
    let result_dir = job.results.join(" ");
    let checking = retrying(job, out, Step::Check, || session.check(&unique_id, &result_dir));
    let checked = patiently(out, job, "Check", checking).await?;
    let has_stream = checked.has_stream;
    out.end("");
    if !has_stream {
        out.status("Check: Download data is not exist.");
        return Ok(warn_missing(job.results.clone(), out));
    }
    out.status("Check: Download data is exist.");
    out.begin(Step::Download);
    let encoding = session.result_encoding(job.result_encoding, out);
    let request = DownloadRequest { unique_id, result_dir, encoding: encoding.name().into() };
    let total = (checked.result_bytes > 0).then_some(checked.result_bytes);
    let fetched = retrying(job, out, Step::Download, || session.download(job, request.clone(), total, out)).await?;
    out.transferred("downloaded", fetched.report.files, fetched.report.content_bytes);
    out.status("Check: Extract result.");
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
