//! Where the job goes: one server, or several behind one client (`--SERVER_IP 'a
//! b:8767 c/4'`) without a central scheduler. One server is a list of one: the same
//! loop places it, waits for its slot and says the same things, except that its errors
//! are its own (nothing is skipped, backed off or said as "the list").
//!
//! With a list, every candidate is asked how busy it is (the capabilities call reports
//! free slots), the job goes to the one with the most (ties at random), servers that
//! do not answer the call (legacy) come after in list order. A server that cannot be
//! reached, is draining or full is skipped and the next one tried, before Execute only
//! (a job that started belongs to its server: it never runs twice); one that refused
//! the connection or could not be reached is remembered for a minute (`remote/backoff.rs`). A
//! refused certificate or a CN the server does not allow is said, never skipped: it is
//! a misconfiguration to fix, not a server to avoid. When every server is full the
//! step waits for a slot (`remote/queue.rs`).

use futures_util::future::join_all;

use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::remote::peer::Peer;
use crate::remote::queue::{SlotWait, is_full};
use crate::remote::session::Session;
use crate::sources::Selection;
use crate::sources::tree_build::EarlyTree;
use crate::steps::retry::{patiently, retrying};
use crate::steps::upload::{before_upload, upload};

/// A server that answered, and how many jobs it could start now (declared slots for
/// a legacy server).
struct Candidate {
    session: Session,
    free: u32,
    legacy: bool,
    order: usize,
    /// A random rank for this run, to break ties between equally free servers.
    tie: u64,
}

/// Where the job went: the session, the output with that server's prefix, the job id
/// and whether it went as a tree.
pub(crate) struct Placed {
    pub session: Session,
    pub out: Output,
    pub unique_id: String,
    pub from_tree: bool,
}

/// Places the job on its server, or on a server of the list: connects, uploads, and
/// says where it went. When every server is full it waits for a slot; when none can be
/// reached, the whole list is tried again as one server would be (`--retries`).
pub(crate) async fn place(
    job: &Job,
    selection: &Selection,
    early: &EarlyTree,
    out: &Output,
) -> Result<Placed, ClientError> {
    let alone = job.servers.is_empty();
    out.begin(Step::Connect);
    let connecting = retrying(job, out, Step::Connect, || candidates(job, out));
    let mut candidates = patiently(out, job, "connecting", connecting).await?;
    out.end("");
    keep_those_that_fit(job, &mut candidates, out)?;
    let mut wait = SlotWait::new(job.queue_timeout);
    let mut said_before_upload = false;
    // The refusal of the last server found full: what the step ends with when the
    // wait is over. A server alone is asked even when it reports no free slot, so
    // that its own words say which limit holds the step (--max-jobs-per-cn).
    let mut refusal: Option<ClientError> = None;
    loop {
        // Most free slots first, ties at random; legacy servers after, in list order.
        candidates.sort_by_key(|c| (c.legacy, std::cmp::Reverse(if c.legacy { 0 } else { c.free }), c.tie, c.order));
        let mut full_now = false;
        let mut last = None;
        let mut index = 0;
        while index < candidates.len() {
            let candidate = &candidates[index];
            let peer = candidate.session.peer().clone();
            if !candidate.legacy && candidate.free == 0 && !(alone && refusal.is_none()) {
                if !alone {
                    out.verbose(&format!("{peer} is full"));
                }
                full_now = true;
                index += 1;
                continue;
            }
            let out = match (&job.prefix_template, alone) {
                (Some(template), false) => out.with_prefix(
                    &crate::output::render_prefix(template, &peer.host, peer.port)
                        .unwrap_or_else(|_| job.prefix.clone()),
                ),
                _ => out.clone(),
            };
            if !alone {
                out.verbose(&format!("placing the job on {peer} ({} free)", candidate.free));
            }
            refuse_detach_without_durable_jobs(job, &candidate.session)?;
            if !std::mem::replace(&mut said_before_upload, true) {
                before_upload(job, selection, &out);
            }
            match upload(&candidate.session, job, &selection.roots, early, &out).await {
                Ok((unique_id, from_tree)) => {
                    wait.done(&out);
                    let session = candidates.swap_remove(index).session;
                    return Ok(Placed { session, out, unique_id, from_tree });
                }
                Err(error) if is_full(&candidate.session, &error).await => {
                    if !alone {
                        out.verbose(&format!("{error}; trying the next server"));
                    }
                    refusal = Some(error);
                    candidates[index].free = 0;
                    full_now = true;
                    index += 1;
                }
                // Draining, out of space or gone since it answered: the job was never
                // started there, so the next server may take it.
                Err(
                    error @ (ClientError::Server {
                        code: tonic::Code::ResourceExhausted | tonic::Code::Unavailable,
                        ..
                    }
                    | ClientError::Lost { step: Step::Upload, .. }),
                ) if !alone => {
                    out.note(&format!("{error}; not placing the job there"));
                    last = Some(error);
                    candidates.remove(index);
                }
                Err(error) => return Err(error),
            }
        }
        if !full_now {
            return Err(last.unwrap_or_else(|| ClientError::local("no server of the list took the job")));
        }
        let names: Vec<String> = candidates.iter().map(|c| c.session.peer().to_string()).collect();
        if !wait.pause(&names.join(", "), out).await {
            return Err(wait.gave_up(refusal.unwrap_or_else(|| every_slot_taken(&candidates))));
        }
        refresh(&mut candidates, alone, out).await;
    }
}

/// Passes over the servers that could never give what the step asks (`--cpus`,
/// `--mem`, `--license`), before anything is uploaded; when none is left, the step is
/// refused naming each server and what it has. A server that does not hear such
/// requests (the Python server, an older lrpymrpc-server) is said once and kept.
fn keep_those_that_fit(job: &Job, candidates: &mut Vec<Candidate>, out: &Output) -> Result<(), ClientError> {
    let Some(request) = &job.resources else { return Ok(()) };
    let mut refusals = Vec::new();
    candidates.retain(|candidate| {
        let peer = candidate.session.peer();
        match crate::remote::resources::capacity(candidate.session.capabilities()) {
            None => {
                out.note(&format!(
                    "{peer} does not hear resource requests (--cpus, --mem, --license, --walltime): the step gets \
                     what it gives every step"
                ));
                true
            }
            Some(capacity) => match crate::remote::resources::never_fits(request, capacity) {
                None => true,
                Some(why) => {
                    refusals.push(format!("{peer}: {why}"));
                    false
                }
            },
        }
    });
    if candidates.is_empty() {
        return Err(ClientError::Local {
            message: format!("the step could never run there: {}; nothing was uploaded", refusals.join("; ")),
            hint: Some("ask for what a server has, or name one with more (--SERVER_IP)".into()),
        });
    }
    for refusal in refusals {
        out.verbose(&format!("not placing the job on {refusal}"));
    }
    Ok(())
}

/// `--detach` needs a server that keeps the command running without its client:
/// refused before anything is uploaded.
fn refuse_detach_without_durable_jobs(job: &Job, session: &Session) -> Result<(), ClientError> {
    match job.detach && !session.has_durable_jobs() {
        true => Err(ClientError::Local {
            message: format!("--detach: {} does not keep a command running without its client", session.peer()),
            hint: Some("it is the Python server or an older lrpymrpc-server: run without --detach".into()),
        }),
        false => Ok(()),
    }
}

/// The server, or every server of the list that answers, with its load; legacy
/// servers (no load) with their declared slots. A server alone is only connected to:
/// its errors are the step's. Servers of a list in back-off are asked only when none
/// of the others can take the job (they may be back; "unless it is the only one left").
async fn candidates(job: &Job, out: &Output) -> Result<Vec<Candidate>, ClientError> {
    if job.servers.is_empty() {
        let session = Session::open(&job.peer, job.stall).await?;
        let load = session.capabilities().and_then(|c| c.load.as_ref()).map(|l| l.free_slots);
        let (free, legacy) = (load.unwrap_or(1), load.is_none());
        return Ok(vec![Candidate { session, free, legacy, order: 0, tie: 0 }]);
    }
    // The state file is read (and written, below) on a blocking thread.
    let backing_off = tokio::task::spawn_blocking(crate::remote::backoff::backing_off).await.unwrap_or_default();
    let (resting, fresh): (Vec<_>, Vec<_>) =
        job.servers.iter().enumerate().partition(|(_, (peer, _))| backing_off.contains_key(&peer.to_string()));
    let mut looked = look_at(job, out, &fresh).await?;
    if looked.candidates.is_empty() && !resting.is_empty() {
        let more = look_at(job, out, &resting).await?;
        looked.candidates.extend(more.candidates);
        looked.unreachable.extend(more.unreachable);
        looked.draining.extend(more.draining);
    }
    let Looked { candidates, unreachable, draining } = looked;
    match (candidates.is_empty(), unreachable.is_empty()) {
        (false, _) => Ok(candidates),
        (true, true) => {
            Err(ClientError::local(format!("every server of the list is shutting down ({})", draining.join(", "))))
        }
        (true, false) => Err(none_reachable(unreachable, &draining)),
    }
}

/// What asking some servers of the list found.
#[derive(Default)]
struct Looked {
    candidates: Vec<Candidate>,
    unreachable: Vec<ClientError>,
    /// Servers that answered that they are shutting down.
    draining: Vec<String>,
}

/// Opens a session to each of `servers` (their place in the list, and the entry) at
/// once; a refused certificate or CN ends it all with that error.
async fn look_at(job: &Job, out: &Output, servers: &[(usize, &(Peer, Option<u32>))]) -> Result<Looked, ClientError> {
    let opened =
        join_all(servers.iter().map(|(_, (peer, _))| Session::open(peer, job.stall)).collect::<Vec<_>>()).await;
    let mut looked = Looked::default();
    for (&(order, (peer, slots)), opened) in servers.iter().zip(opened) {
        match opened {
            Ok(session) => {
                let refused = session.capabilities().and_then(|c| c.caller.as_ref()).filter(|caller| !caller.allowed);
                if let Some(caller) = refused {
                    return Err(ClientError::Server {
                        step: Step::Connect,
                        peer: peer.to_string(),
                        code: tonic::Code::PermissionDenied,
                        message: caller.refusal.clone(),
                    });
                }
                let load = session.capabilities().and_then(|c| c.load.as_ref()).map(|l| (l.draining, l.free_slots));
                match load {
                    Some((true, _)) => {
                        out.verbose(&format!("{} is shutting down: not placing the job there", peer));
                        looked.draining.push(peer.to_string());
                    }
                    Some((false, free)) => looked.candidates.push(Candidate {
                        session,
                        free,
                        legacy: false,
                        order,
                        tie: fastrand::u64(..),
                    }),
                    None => {
                        let free = slots.unwrap_or(1);
                        looked.candidates.push(Candidate {
                            session,
                            free,
                            legacy: true,
                            order,
                            tie: fastrand::u64(..),
                        });
                    }
                }
            }
            // A refused certificate is a misconfiguration: said, not skipped. A server
            // that took the connection and said nothing is passed over.
            Err(error @ ClientError::Connect { transient: false, .. }) if !error.timed_out() => return Err(error),
            Err(error) => {
                let name = peer.to_string();
                let _ = tokio::task::spawn_blocking(move || crate::remote::backoff::failed(&name)).await;
                out.verbose(&format!("skipping {}: {error}", peer));
                looked.unreachable.push(error);
            }
        }
    }
    Ok(looked)
}

/// Asks every server that reports its load how busy it is now; one of a list that
/// started draining or stopped answering is dropped. A server alone is kept and
/// asked again: the upload says what is wrong with it.
async fn refresh(candidates: &mut Vec<Candidate>, alone: bool, out: &Output) {
    let loads = join_all(candidates.iter().map(|c| c.session.load()).collect::<Vec<_>>()).await;
    let mut loads = loads.into_iter();
    candidates.retain_mut(|candidate| {
        let load = loads.next().flatten();
        if candidate.legacy {
            return true;
        }
        match load {
            Some(load) if !load.draining => {
                candidate.free = load.free_slots;
                true
            }
            _ if alone => {
                candidate.free = 1;
                true
            }
            _ => {
                out.verbose(&format!("{} stopped taking jobs", candidate.session.peer()));
                false
            }
        }
    });
}

/// The refusal a step ends with when every server stayed full.
fn every_slot_taken(candidates: &[Candidate]) -> ClientError {
    let names: Vec<String> = candidates.iter().map(|c| c.session.peer().to_string()).collect();
    ClientError::Server {
        step: Step::Upload,
        peer: names.join(", "),
        code: tonic::Code::ResourceExhausted,
        message: "every slot of every server is taken (--max-jobs)".into(),
    }
}

/// No server of the list could take the job: every one named, with why.
fn none_reachable(unreachable: Vec<ClientError>, draining: &[String]) -> ClientError {
    let mut peers = Vec::new();
    let mut reasons: Vec<String> = draining.iter().map(|name| format!("{name}: shutting down")).collect();
    let mut first_fault = None;
    for error in unreachable {
        match error {
            ClientError::Connect { peer, reason, fault, .. } => {
                reasons.push(format!("{peer}: {reason}"));
                peers.push(peer);
                first_fault.get_or_insert(fault);
            }
            other => reasons.push(other.to_string()),
        }
    }
    match first_fault {
        Some(fault) => ClientError::Connect {
            peer: peers.join(", "),
            reason: format!("no server of the list could be reached ({})", reasons.join("; ")),
            hint: Some(
                "check that the servers run and listen there; each is skipped for a minute after it fails".into(),
            ),
            transient: true,
            fault,
        },
        None => ClientError::local(format!("no server of the list took the job ({})", reasons.join("; "))),
    }
}
