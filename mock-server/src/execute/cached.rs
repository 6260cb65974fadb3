//! Execute with the action cache (`store/action_cache.rs`): once the Python environment
//! is ready (built or found: it is named as installed, so an environment rebuilt with
//! other versions names other runs) and before the command runs, decide whether the
//! run can be named (a job made from a tree, a shared environment) and whether a
//! record answers it; a hit replays the command's recorded lines (never pip's) and exit
//! status and gives the job the recorded results; a miss runs as always while its
//! lines are recorded, and a run that exits 0 has its results packed into the store
//! before its exit status goes out, so the record exists by the time the client asks.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lrpymrpc_archive::Encoding;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::JobError;
use crate::executor::{Events, JobEvent, Pipe};
use crate::jobs::Recorded;
use crate::state::State;
use crate::store::action_cache::{ActionParts, Flight, FlightGuard, OutputLog, Record, read_output};

/// What the client asked of the cache.
#[derive(Debug, Clone)]
pub struct CacheAsk {
    /// Run and record again, whatever is recorded (`--refresh`).
    pub refresh: bool,
    /// The RESULT paths the client will fetch.
    pub results: String,
}

/// What an Execute does about the cache.
#[derive(Debug)]
pub enum Plan {
    /// Run as always, recording nothing.
    Off,
    /// Answer from this record (its first lines already sent while following the run
    /// that made it); nothing runs.
    Serve(Record, usize),
    /// Run, and record the run under this key if it exits 0; identical steps arriving
    /// meanwhile wait for it while the guard (when this run leads) is held.
    Record(String, Option<FlightGuard>),
    /// The client went away while waiting for an identical step.
    Gone,
}

/// A note to the client among the command's lines.
async fn note(events: &Events, text: String) {
    let _ = events.send(Ok(JobEvent::Note(text))).await;
}

/// The run an Execute asks for: whose job, where, with what.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub job: &'a str,
    /// The caller's CN (empty over plaintext).
    pub cn: &'a str,
    /// The digest of the tree the job directory is exactly, when it is (the job's
    /// first command: `CommandRun::pristine_input_root`).
    pub input_root: Option<&'a str>,
    /// The Python environment as installed (`execute::Environment::identity`), or why
    /// it cannot be named.
    pub environment: Result<String, &'static str>,
    pub command: &'a str,
    /// The client asked for one stream in the order written.
    pub merged: bool,
}

/// Names the run and looks it up; says in a note why a run cannot be cached.
pub async fn plan(state: &State, run: Run<'_>, ask: &CacheAsk, events: &Events) -> Plan {
    let Run { job, cn, input_root, environment, command, merged } = run;
    let (Some(cache), Some(store)) = (state.action_cache.as_ref(), state.store.as_ref()) else {
        return Plan::Off;
    };
    let Some(input_root) = input_root else {
        let why = match state.jobs.made_from_tree(job) {
            true => "not cached: an earlier command ran in this job and may have changed its inputs",
            false => "not cached: only jobs uploaded content-addressed can be (this one came as a tar.gz)",
        };
        note(events, why.into()).await;
        return Plan::Off;
    };
    let environment = match environment {
        Ok(identity) => identity,
        Err(why) => {
            note(events, format!("not cached: {why}")).await;
            return Plan::Off;
        }
    };
    let config = &state.config;
    let sandbox = match (&config.sandbox, config.sandbox_network) {
        (None, _) => "",
        (Some(_), false) => "+sandbox",
        (Some(_), true) => "+sandbox+network",
    };
    let executor = format!("{}{sandbox}", config.executor.name());
    // The server's own tools and data, as the administrator named them: commands run
    // and files read, off the async threads.
    let tools = state.action_cache_tools.clone();
    let tools = tokio::task::spawn_blocking(move || tools.fingerprint()).await.unwrap_or_else(|e| e.to_string());
    let parts = ActionParts {
        cn,
        input_root,
        command,
        results: &ask.results,
        environment: &environment,
        executor: &executor,
        tools: &tools,
    };
    let key = cache.key(&parts);
    // Lines of a run this one followed, already sent.
    let mut followed = 0;
    loop {
        if !ask.refresh
            && let Some(record) = cache.lookup(&key, store)
        {
            crate::net::metrics::Metrics::count(&state.metrics.action_cache, "hit", 1);
            return Plan::Serve(record, followed);
        }
        match cache.fly(&key) {
            Flight::Lead(guard) => {
                crate::net::metrics::Metrics::count(&state.metrics.action_cache, "miss", 1);
                if followed > 0 {
                    note(events, "that run did not end in a result to serve: running the step for this job".into())
                        .await;
                }
                return Plan::Record(key, Some(guard));
            }
            // A refresh runs whatever runs already.
            Flight::Follow(..) if ask.refresh => return Plan::Record(key, None),
            Flight::Follow(log, mut count) => {
                note(events, "the same step is running for another job: following it instead of running it".into())
                    .await;
                // Its lines as they come; when it is done, its record (if it exited 0)
                // answers, or this run leads.
                followed = 0;
                loop {
                    if !send_lines(&log, &mut followed, merged, events).await {
                        return Plan::Gone;
                    }
                    tokio::select! {
                        changed = count.changed() => if changed.is_err() { break },
                        () = events.closed() => return Plan::Gone,
                    }
                }
                if !send_lines(&log, &mut followed, merged, events).await {
                    return Plan::Gone;
                }
            }
        }
    }
}

/// Sends the followed run's lines from `sent` on; false when the client went away.
async fn send_lines(
    log: &crate::store::action_cache::FlightLog,
    sent: &mut usize,
    merged: bool,
    events: &Events,
) -> bool {
    for (pipe, text) in log.since(*sent) {
        *sent += 1;
        if events.send(Ok(JobEvent::Line { pipe: pipe_of(pipe, merged), text })).await.is_err() {
            return false;
        }
    }
    true
}

/// The pipe of a recorded line as this client asked for it.
fn pipe_of(code: u8, merged: bool) -> Pipe {
    match (merged, code) {
        (true, _) | (false, 0) => Pipe::Merged,
        (false, 1) => Pipe::Stdout,
        (false, _) => Pipe::Stderr,
    }
}

/// Answers the Execute from `record`: the hit first, then the recorded lines (one
/// stream when the client asked for the merged order), then exit status 0; the job's
/// results become the recorded ones.
pub async fn serve(
    state: &State,
    job: &str,
    (record, skip): (&Record, usize),
    ask: &CacheAsk,
    merged: bool,
    events: &Events,
) -> Result<(), JobError> {
    let store = state.store.as_ref().ok_or(JobError::NoStore)?;
    let hit = JobEvent::Served { ran_at_unix_seconds: record.ran_at_unix_seconds, ran_for_ms: record.ran_for_ms };
    let _ = events.send(Ok(hit)).await;
    let path = store.blob_path(&record.output.hash);
    let (lines, mut replayed) = mpsc::channel(64);
    let reading = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        read_output(std::io::BufReader::new(file), |pipe, text| {
            let _ = lines.blocking_send((pipe, text));
        })
    });
    let mut skipped = 0;
    while let Some((pipe, text)) = replayed.recv().await {
        // Lines a follower already got while the run went on.
        if skipped < skip {
            skipped += 1;
            continue;
        }
        if events.send(Ok(JobEvent::Line { pipe: pipe_of(pipe, merged), text })).await.is_err() {
            break;
        }
    }
    reading.await.map_err(|e| JobError::task("replaying recorded output", e))??;
    state.jobs.set_recorded(job, Recorded { record: record.clone(), requested: normalized(&ask.results) });
    let _ = events.send(Ok(JobEvent::Exited { code: 0, signal: 0 })).await;
    Ok(())
}

/// RESULT paths as one canonical string (single spaces), to compare requests by.
pub fn normalized(results: &str) -> String {
    results.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Puts a recorder between a run and the client: returns the sender the run writes
/// to and the task that forwards every event to `events`, keeping the lines; when the
/// command exits 0 it packs the results and keeps the record before it forwards the
/// exit status. The task ends once the returned sender and its clones are dropped.
pub fn recorder(
    state: std::sync::Arc<State>,
    job: String,
    dir: PathBuf,
    (key, flight): (String, Option<FlightGuard>),
    ask: CacheAsk,
    events: Events,
) -> (Events, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Result<JobEvent, JobError>>(64);
    let task = tokio::spawn(async move {
        // Identical steps following this run go on once it is recorded, or is over.
        let flight = flight;
        let started = (Instant::now(), SystemTime::now());
        let store = state.store.as_ref().expect("a cache plan needs the store");
        let mut log = match OutputLog::new(store) {
            Ok(log) => Some(log),
            Err(error) => {
                warn!(job = %job, error = %error, "cannot record the run's output; it is not cached");
                None
            }
        };
        while let Some(event) = rx.recv().await {
            match &event {
                Ok(JobEvent::Line { pipe, text }) => {
                    let code = match pipe {
                        Pipe::Merged => 0,
                        Pipe::Stdout => 1,
                        Pipe::Stderr => 2,
                    };
                    if log.as_mut().is_some_and(|log| log.push(code, text).is_err()) {
                        log = None;
                    }
                    if let Some(flight) = &flight {
                        flight.push(code, text);
                    }
                }
                Ok(JobEvent::Exited { code: 0, signal: 0 }) => {
                    if let Some(log) = log.take() {
                        let kept = keep_run(&state, &job, &dir, &key, &ask, log, started).await;
                        if let Err(error) = kept {
                            warn!(job = %job, error = %error, "the run could not be recorded");
                        }
                    }
                }
                _ => {}
            }
            if events.send(event).await.is_err() {
                // The client went away: dropping the receiver stops the run.
                break;
            }
        }
    });
    (tx, task)
}

/// Packs the found RESULT paths (uncompressed) and the log into the store, then keeps
/// the record and gives the job its recorded results.
async fn keep_run(
    state: &std::sync::Arc<State>,
    job: &str,
    dir: &Path,
    key: &str,
    ask: &CacheAsk,
    log: OutputLog,
    (started, started_at): (Instant, SystemTime),
) -> Result<(), JobError> {
    let names = crate::jobs::results::result_names(&ask.results)?;
    let (state_for_pack, dir) = (state.clone(), dir.to_path_buf());
    let packed = tokio::task::spawn_blocking(move || -> Result<Option<Record>, JobError> {
        let store = state_for_pack.store.as_ref().ok_or(JobError::NoStore)?;
        let Some(log) = log.finish()? else { return Ok(None) };
        let output = store.keep(log)?;
        let found = crate::jobs::results::existing_results(&dir, &names)?;
        let result_bytes = crate::jobs::results::result_bytes(&dir, &found);
        let blob = store.local_blob()?;
        let (_, blob) = lrpymrpc_archive::pack_results_tar(&dir, &found, Encoding::Identity, 1, blob)?;
        let results = store.keep(blob)?;
        Ok(Some(Record {
            ran_at_unix_seconds: started_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
            ran_for_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            output,
            results,
            found: found.iter().map(|path| path.display().to_string()).collect(),
            result_bytes,
        }))
    })
    .await
    .map_err(|e| JobError::task("recording the run", e))??;
    let Some(record) = packed else {
        warn!(job = %job, "the run printed too much to be recorded; it is not cached");
        return Ok(());
    };
    let cache = state.action_cache.as_ref().ok_or(JobError::NoStore)?;
    cache.insert(key, record.clone())?;
    crate::net::metrics::Metrics::count(&state.metrics.action_cache, "recorded", 1);
    state.jobs.set_recorded(job, Recorded { record, requested: normalized(&ask.results) });
    Ok(())
}
