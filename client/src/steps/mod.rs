//! One job, step by step: connect and Upload (packing while sending) on the server
//! the job is placed on ([`place`], [`upload`]), Execute (printing lines as they
//! arrive, following a durable run again after a lost connection: [`follow`]), Check
//! and Download (unpacking while receiving, then moving the results into place:
//! [`finish`]). The calls themselves are the session's (`remote/session/`); this
//! folder is the order of the steps, what is retried ([`retry`]), and what is said
//! between them.

mod finish;
mod follow;
mod place;
mod retry;
mod upload;

use lrpymrpc_proto::{CachePolicy, Durability};

use crate::exit::{ClientError, Step};
use crate::job::{CacheChoice, Job};
use crate::output::Output;
use crate::remote::session::Session;
use crate::sources;
use crate::sources::tree_build::EarlyTree;

pub(crate) use finish::finish;
pub(crate) use follow::{RunningJob, follow_to_the_end};
pub(crate) use retry::retrying;

/// Runs one job: its sources chosen, placed and uploaded, its command followed to the
/// end, its results fetched (or, with `--detach`, how to follow it said).
pub async fn run(job: &Job, out: &Output, running: &RunningJob) -> Result<(), ClientError> {
    // Upstream's default command (`charao -h`) is a placeholder, never a job.
    if job.defaulted.contains(&"--CMD") {
        return Err(ClientError::Usage {
            message: "--CMD is missing: nothing says what to run on the server".into(),
            hint: Some(format!(
                "give the command, e.g. --CMD 'python3 -m charao ...' (the Python client would run its placeholder \
                 `{}` and fail); LRPYMRPC_CMD or `CMD = ...` in the config file work too",
                job.command
            )),
        });
    }
    // Sources are chosen before connecting, so `--strict` refuses before anything is sent.
    let selection = sources::select(&job.sources, &job.workdir);
    if let (true, Some(first)) = (job.strict, selection.warnings.first()) {
        return Err(ClientError::Local {
            message: format!("--strict: {first}"),
            hint: Some("fix the --SOURCE list, or leave out --strict to skip such paths with a warning".into()),
        });
    }
    // The tree is walked and hashed while the client connects.
    let early = EarlyTree::start(job, &selection.roots);
    let place::Placed { session, out, unique_id, from_tree } = place::place(job, &selection, &early, out).await?;
    drop(early);
    let out = &out;
    let cache = cache_policy(&session, job, from_tree, out);

    out.status(&format!("Upload: pip install   ={}", job.repo_url));
    out.status(&format!("Upload: Execute target={}", job.command));
    out.begin(Step::Execute);
    let durability = match (session.has_durable_jobs(), job.detach) {
        (false, _) => Durability::Unspecified,
        (true, false) => Durability::Reattach,
        (true, true) => Durability::Detached,
    };
    if durability != Durability::Unspecified {
        running.set(&session, &unique_id);
    }
    let (session, reported) =
        follow::execute_following(job, session, &unique_id, cache, durability, out, running).await?;
    running.clear();
    out.end("");
    if job.detach {
        say_detached(job, &session, &unique_id, out);
        return Ok(());
    }
    let remote_outcome = reported.outcome();
    finish(job, &session, unique_id, remote_outcome, out).await
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
         (`{follow} jobs` lists your jobs, `{follow} cancel {unique_id}` stops it)"
    ));
}

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
