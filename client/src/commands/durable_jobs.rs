//! `lrpymrpc attach ID`, `lrpymrpc jobs` and `lrpymrpc cancel ID`: a user's durable
//! jobs on the configured server(s) (`--SERVER_IP`, its variable or config file; each
//! server of a list is asked). The server shows a caller only its own CN's jobs.

use std::process::ExitCode;

use lrpymrpc_proto::v1::{JobSummary, RunState};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Args;
use crate::exit::{self, ClientError, Step};
use crate::job::Job;
use crate::output::{Output, clean_text};
use crate::remote::peer::Peer;
use crate::remote::session::{Followed, Session};
use crate::steps;

/// Follows job `id` from its start (or from now) and fetches its results here.
pub fn attach(args: Args, id: &str, from_end: bool, fetch: &[String]) -> ExitCode {
    with_job(args, |job, out| async move {
        let (session, found) = find(&job, &out, id).await?;
        let out = server_prefix(&job, &out, session.peer());
        let server = found.attach_info.clone().unwrap_or_default();
        let (job, warnings) = job.attached(id, crate::remote::detached::recall(id), fetch, &server)?;
        for warning in &warnings {
            out.warn(warning);
        }
        out.note(&format!("following job {id} ({}), started as `{}`", found.state, found.command));
        let (mut interrupt, mut terminate) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
            (Err(e), _) | (_, Err(e)) => return Err(ClientError::local(format!("cannot handle signals: {e}"))),
        };
        out.begin(Step::Execute);
        let following = async {
            let mut followed = Followed::default();
            let first = session.follow(&job, id, from_end, &out, &mut followed).await;
            let running = steps::RunningJob::default();
            steps::follow_to_the_end(&job, session.clone(), id, first, true, followed, &out, &running).await
        };
        // Ctrl-C stops following, not the job: it was not started here.
        let stopped = |signal| {
            out.note(&format!("stopped following; the job goes on (`lrpymrpc cancel {id}` stops it)"));
            ClientError::Interrupted { signal, step: Step::Execute }
        };
        let (session, reported) = tokio::select! {
            followed = following => followed?,
            _ = interrupt.recv() => return Err(stopped(libc::SIGINT)),
            _ = terminate.recv() => return Err(stopped(libc::SIGTERM)),
        };
        out.end("");
        steps::finish(&job, &session, id.to_string(), reported.outcome(), &out).await
    })
}

/// Lists the caller's jobs on every configured server (with `web`, each job's status
/// page link).
pub fn jobs(args: Args, web: bool) -> ExitCode {
    with_job(args, |job, out| async move {
        let mut listed = 0;
        // With `--web`: servers that have jobs of the caller but serve no page.
        let mut without_page = Vec::new();
        for peer in peers(&job) {
            let session = connect(&job, &out, &peer).await?;
            if !session.has_durable_jobs() {
                out.note(&format!("{} keeps no jobs to list (a legacy server)", peer));
                continue;
            }
            let (summaries, page_port) = session.list_jobs_with_page().await?;
            if web {
                if page_port == 0 && !summaries.is_empty() {
                    without_page.push(peer.to_string());
                    continue;
                }
                for summary in summaries.iter().filter(|summary| !summary.page_path.is_empty()) {
                    listed += 1;
                    println!("{}  {}", summary.unique_id, page_url(&peer, page_port, &summary.page_path));
                }
                continue;
            }
            for summary in summaries {
                if listed == 0 {
                    println!(
                        "{:<36}  {:<STATE_WIDTH$}  {:<20}  {:>9}  {:<NEEDS_WIDTH$}  {:<21}  COMMAND",
                        "JOB", "STATE", "STARTED", "RAN", "NEEDS", "SERVER"
                    );
                }
                listed += 1;
                println!("{}", row(&summary, &peer.to_string()));
            }
        }
        // The links asked for, and some are not there: not a success.
        if !without_page.is_empty() {
            return Err(ClientError::Local {
                message: format!(
                    "--web: {} serve(s) no status page, so your jobs there have no page link",
                    without_page.join(", ")
                ),
                hint: Some(
                    "its administrator turns one on with --status-listen (or `status-listen` in its config)".into(),
                ),
            });
        }
        if listed == 0 {
            out.note("no jobs of yours on the configured server(s)");
        }
        Ok(())
    })
}

/// `https://HOST:PORT/job/ID/SECRET`: the status page at the host this client dials
/// (plain `http` for a server without TLS, which serves its page so too).
pub(super) fn page_url(peer: &Peer, port: u32, path: &str) -> String {
    let host = match peer.host.contains(':') {
        true => format!("[{}]", peer.host),
        false => peer.host.clone(),
    };
    let scheme = if peer.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{host}:{port}{path}")
}

/// Stops the caller's job `id`.
pub fn cancel(args: Args, id: &str) -> ExitCode {
    with_job(args, |job, out| async move {
        let (session, _) = find(&job, &out, id).await?;
        match session.cancel(id).await? {
            true => out.note(&format!("job {id} cancelled: its processes are stopped")),
            false => out.note(&format!("job {id} had already ended")),
        }
        Ok(())
    })
}

/// Validates the settings into a job (its server, TLS, prefix) and runs `body` with it.
pub(super) fn with_job<F, Fut>(args: Args, body: F) -> ExitCode
where
    F: FnOnce(Job, Output) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let job = match super::validated(args) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let out = Output::new(&job.prefix, job.verbosity);
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            out.error(&error);
            return exit::for_error(&error);
        }
    };
    let errors = out.clone();
    match runtime.block_on(body(job, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            errors.error(&error);
            exit::for_error(&error)
        }
    }
}

/// The configured servers: each of a list, or the one.
pub(super) fn peers(job: &Job) -> Vec<Peer> {
    match job.servers.is_empty() {
        true => vec![job.peer.clone()],
        false => job.servers.iter().map(|(peer, _)| peer.clone()).collect(),
    }
}

pub(super) async fn connect(job: &Job, out: &Output, peer: &Peer) -> Result<Session, ClientError> {
    steps::retrying(job, out, Step::Connect, || Session::open(peer, job.stall)).await
}

/// The server that has the caller's job `id`, and what it says of it.
async fn find(job: &Job, out: &Output, id: &str) -> Result<(Session, JobSummary), ClientError> {
    let mut asked = Vec::new();
    for peer in peers(job) {
        let session = connect(job, out, &peer).await?;
        asked.push(peer.to_string());
        if !session.has_durable_jobs() {
            continue;
        }
        if let Some(found) = session.list_jobs().await?.into_iter().find(|summary| summary.unique_id == id) {
            return Ok((session, found));
        }
    }
    Err(ClientError::Server {
        step: Step::Lookup,
        peer: asked.join(", "),
        code: tonic::Code::NotFound,
        message: format!(
            "no job {id} of yours there: it finished and its results were fetched or forgotten, the server \
             restarted, or it belongs to another certificate (`lrpymrpc jobs` with the same server options lists yours)"
        ),
    })
}

/// The output with the prefix naming the server the job runs on.
fn server_prefix(job: &Job, out: &Output, peer: &Peer) -> Output {
    match &job.prefix_template {
        Some(template) => match crate::output::render_prefix(template, &peer.host, peer.port) {
            Ok(prefix) => out.with_prefix(&prefix),
            Err(_) => out.clone(),
        },
        None => out.clone(),
    }
}

/// The width of `lrpymrpc jobs`' STATE column: `running (detached)` fits.
const STATE_WIDTH: usize = 18;
/// The width of its NEEDS column: `8 cpu 32.0 GiB +2` fits.
const NEEDS_WIDTH: usize = 18;

/// What a job's command asked for, short: `2 cpu 4.0 GiB spectre`; licenses past the
/// first as a count (`+2`).
fn needs(resources: Option<&lrpymrpc_proto::Resources>) -> String {
    let Some(resources) = resources else { return "-".into() };
    let mut text = format!("{} cpu", resources.cpus.max(1));
    if resources.memory_bytes > 0 {
        text.push_str(&format!(" {}", lrpymrpc_units::human_bytes(resources.memory_bytes)));
    }
    match resources.licenses.split_first() {
        Some((first, [])) if first.count == 1 => text.push_str(&format!(" {}", first.name)),
        Some((first, [])) => text.push_str(&format!(" {}:{}", first.name, first.count)),
        Some((_, more)) => text.push_str(&format!(" +{}", more.len() + 1)),
        None => {}
    }
    text
}

/// One line of `lrpymrpc jobs`.
fn row(summary: &JobSummary, server: &str) -> String {
    let started = time::OffsetDateTime::from_unix_timestamp(summary.started_unix_seconds).map_or_else(
        |_| "?".to_string(),
        |at| format!("{} {:02}:{:02}:{:02}Z", at.date(), at.hour(), at.minute(), at.second()),
    );
    let ran = lrpymrpc_units::clock_duration(std::time::Duration::from_millis(summary.duration_ms));
    let running = summary.run_state() == RunState::Running;
    let state = match (summary.waiting.is_empty(), summary.detached && running) {
        (false, _) if running => "waiting".to_string(),
        (_, true) => "running (detached)".to_string(),
        _ => summary.state.clone(),
    };
    // Every field is the server's text: through the one terminal sanitiser, a line
    // break in a command shown as a space.
    let one_line = |text: &str| clean_text(&text.replace(['\n', '\r', '\t'], " "));
    let command: String = one_line(&summary.command).chars().take(120).collect();
    let (id, state) = (one_line(&summary.unique_id), one_line(&state));
    // A long state (`failed: why`) is cut to its column, so the columns stay aligned.
    let state = match state.chars().count() > STATE_WIDTH {
        true => format!("{}…", state.chars().take(STATE_WIDTH - 1).collect::<String>()),
        false => state,
    };
    let needs: String = one_line(&needs(summary.resources.as_ref())).chars().take(NEEDS_WIDTH).collect();
    let row = format!(
        "{id:<36}  {state:<STATE_WIDTH$}  {started:<20}  {ran:>9}  {needs:<NEEDS_WIDTH$}  {server:<21}  {command}"
    );
    // Why a job waits gets a line of its own, under it.
    match summary.waiting.is_empty() || !running {
        true => row,
        false => format!("{row}\n    {}", one_line(&summary.waiting)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_state_keeps_the_columns_of_the_jobs_table() {
        let summary = |state: &str| JobSummary {
            unique_id: "00000000-0000-4000-8000-000000000001".into(),
            state: state.into(),
            command: "make".into(),
            ..JobSummary::default()
        };
        let short = row(&summary("exited 0"), "10.0.0.5:8766");
        let long = row(&summary("failed: the executor could not start the command on any node"), "10.0.0.5:8766");
        let column = |line: &str| line.split("10.0.0.5").next().map(|before| before.chars().count());
        assert_eq!(column(&short), column(&long), "\n{short}\n{long}");
        assert!(long.contains("failed: the execu…"), "{long}");
    }
}
