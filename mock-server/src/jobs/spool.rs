//! Durable runs (`ExecuteRequest.durability`): a run whose client may lose its call and
//! come back. Its messages go into a spool, each with a sequence number, instead of
//! straight into the call; the call that started it, and every `Follow` after, read
//! the spool from a number on and then live, so a client that resumes after the last
//! line it printed loses none and gets none twice. The exit status is the last
//! record. The run is cancelled by `Cancel`, by a limit, or when nobody follows it for
//! `--reattach-grace` (unless it was started detached).
//!
//! A spool keeps at most `--spool-max-bytes` per job, counted as what its records
//! really take in memory (an empty line is a few hundred bytes, not zero), and all
//! spools together at most `--spools-max-bytes`: past that, a spool that grows keeps
//! only its share. Beyond, the oldest records go, and a follower that wanted them is
//! told how many lines it missed. Every record is also written once to the job's
//! spool on disk (`spool_file.rs`), from which a restarted server takes the spool of
//! each run it adopts (`execute/adopt.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use lrpymrpc_proto::{AttachInfo, ExecuteResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{info, warn};

use crate::SERVER_NAME;
use crate::error::JobError;
use crate::executor::JobEvent;
use crate::jobs::spool_file::{self, Entry, Header, SpoolKey, SpoolWriter};

/// Events the pump takes from the run at once, and records a follower takes at once.
const BURST: usize = 256;

/// A message of a run as a follower gets it, or the status that ended the run.
pub type Record = Result<ExecuteResponse, Status>;

/// What a record costs besides its text: its slot in the queue and the allocation
/// that holds its text.
const RECORD_OVERHEAD: usize = std::mem::size_of::<(u64, Record)>() + 16;

/// What a record takes in memory.
fn cost(record: &Record) -> usize {
    RECORD_OVERHEAD
        + match record {
            Ok(message) => message.message.capacity(),
            Err(status) => status.message().len(),
        }
}

/// What all spools together may take (`--spools-max-bytes`), and take now.
#[derive(Debug)]
struct Budget {
    max: usize,
    used: AtomicUsize,
    spools: AtomicUsize,
}

/// The durable runs of this server, by job id.
#[derive(Debug)]
pub struct Spools {
    spools: Mutex<HashMap<String, Arc<Spool>>>,
    /// How long a run whose followers all left keeps running (`--reattach-grace`).
    grace: Duration,
    /// Message bytes one spool keeps (`--spool-max-bytes`).
    max_bytes: usize,
    budget: Arc<Budget>,
    /// Where spools are written on disk (the job root), and the key that seals them;
    /// `None`: in memory only.
    disk: Option<(std::path::PathBuf, SpoolKey)>,
}

/// What a durable run was started with, for `attach` and `jobs`.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    /// The CN that started it (`None` in plaintext); only it may follow, list, cancel.
    pub owner: Option<String>,
    pub command: String,
    pub attach: Option<AttachInfo>,
    /// Started detached: nobody needs to come back.
    pub detached: bool,
    /// What its command asked for, with the server's defaults (for `ListJobs`).
    pub needs: Option<lrpymrpc_proto::Resources>,
}

/// One durable run's spool.
#[derive(Debug)]
pub struct Spool {
    pub started: Started,
    started_at: (SystemTime, Instant),
    inner: Mutex<Inner>,
    budget: Arc<Budget>,
    /// The next sequence number, sent each time a record is added or the run ends.
    appended: watch::Sender<u64>,
    /// The job root, when the spool is on disk (its run's output is under it).
    root: Option<std::path::PathBuf>,
}

/// How a durable run ended: a value for decisions (`RunState` on the wire), shown in
/// words (`exited 3`, `signal 9`, `cancelled`, `failed: ...`) for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(i32),
    Signalled(i32),
    Cancelled,
    /// The run ended with an error status (its message).
    Failed(String),
    /// The run's events stopped without an exit status.
    NoExitStatus,
}

impl RunEnd {
    /// The wire's value for it.
    pub fn run_state(&self) -> lrpymrpc_proto::v1::RunState {
        use lrpymrpc_proto::v1::RunState;
        match self {
            RunEnd::Exited(_) => RunState::Exited,
            RunEnd::Signalled(_) => RunState::Signalled,
            RunEnd::Cancelled => RunState::Cancelled,
            RunEnd::Failed(_) | RunEnd::NoExitStatus => RunState::Failed,
        }
    }
}

impl std::fmt::Display for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunEnd::Exited(code) => write!(f, "exited {code}"),
            RunEnd::Signalled(signal) => write!(f, "signal {signal}"),
            RunEnd::Cancelled => f.write_str("cancelled"),
            RunEnd::Failed(why) => write!(f, "failed: {why}"),
            RunEnd::NoExitStatus => f.write_str("ended without an exit status"),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// (sequence number, record), oldest first.
    records: VecDeque<(u64, Record)>,
    bytes: usize,
    next_seq: u64,
    /// Records before this number were dropped (the bound).
    first_kept: u64,
    /// How the run ended, once it has.
    end: Option<RunEnd>,
    /// The spool on disk, while it can be written.
    writer: Option<SpoolWriter>,
    /// The command's supervised run, once it started (`JobEvent::RunStarted`): its
    /// output messages are counted from there.
    run: Option<String>,
    /// The spool on disk is written anew with only the kept records past this length.
    file_limit: u64,
    /// The run's last checkpoint (offset in its output file, output messages then).
    checkpoint: Option<(u64, u64)>,
    /// A checkpoint written down this burst: the run's output before it may go once
    /// the spool is on disk.
    forget_before: Option<u64>,
    /// The command's output messages numbered so far.
    output_count: u64,
    ended_at: Option<Instant>,
    followers: usize,
    /// Counts the times the last follower left; a grace timer acts only on its own.
    departures: u64,
    /// Why a farm's scheduler holds the command, while it does (`JobEvent::Queued`).
    farm_queued: Option<String>,
    /// Stops the run: dropping the receiver of its events.
    cancel: Option<oneshot::Sender<&'static str>>,
}

impl Spools {
    /// Runs whose followers left go on for `grace`; one spool keeps `max_bytes`, all
    /// of them `total_max_bytes`.
    pub fn new(grace: Duration, max_bytes: usize, total_max_bytes: usize) -> Spools {
        let budget = Budget { max: total_max_bytes.max(1), used: AtomicUsize::new(0), spools: AtomicUsize::new(0) };
        Spools { spools: Mutex::default(), grace, max_bytes: max_bytes.max(1), budget: Arc::new(budget), disk: None }
    }

    /// The same, writing every spool under `root` too, sealed with `key`.
    pub fn on_disk(self, root: &std::path::Path, key: SpoolKey) -> Spools {
        Spools { disk: Some((root.to_path_buf(), key)), ..self }
    }

    /// The spool of job `header.id` on disk, made now (`None`: in memory only, or it
    /// could not be made, which is logged).
    fn writer_for(&self, header: Option<&Header>) -> Option<SpoolWriter> {
        let ((root, key), header) = (self.disk.as_ref()?, header?);
        match SpoolWriter::create(root, key, header) {
            Ok(writer) => Some(writer),
            Err(error) => {
                warn!(job = %header.id, "cannot write the job's spool to disk (it is kept in memory only): {error}");
                None
            }
        }
    }

    fn spools(&self) -> MutexGuard<'_, HashMap<String, Arc<Spool>>> {
        self.spools.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spools the events of a run that starts now, from `events` (the run's output,
    /// as the Execute step sends it); returns the spool.
    /// Spools the events of a run that starts now, from `events` (the run's output,
    /// as the Execute step sends it), on disk too when `header` is given and this server
    /// writes spools; returns the spool.
    pub fn start(
        self: &Arc<Self>,
        started: Started,
        header: Option<&Header>,
        events: mpsc::Receiver<Result<JobEvent, JobError>>,
    ) -> Arc<Spool> {
        let writer = self.writer_for(header);
        self.begin(started, SystemTime::now(), Vec::new(), writer, events)
    }

    /// The spool of a run an earlier server left, adopted: its records as read from
    /// disk (the last `--spool-max-bytes` kept in memory), numbered on from there, its
    /// events from now on from `events`.
    pub fn adopt(
        self: &Arc<Self>,
        header: &Header,
        entries: Vec<Entry>,
        events: mpsc::Receiver<Result<JobEvent, JobError>>,
    ) -> Arc<Spool> {
        let writer = self.disk.as_ref().and_then(|(root, key)| match SpoolWriter::reopen(root, key, header) {
            Ok(writer) => Some(writer),
            Err(error) => {
                warn!(job = %header.id, "cannot write the adopted job's spool on (it is kept in memory only): {error}");
                None
            }
        });
        let started_at = SystemTime::UNIX_EPOCH + Duration::from_millis(header.started_unix_ms);
        let started = Started {
            id: header.id.clone(),
            owner: header.owner.clone(),
            command: header.command.clone(),
            attach: header.attach.clone(),
            detached: header.detached,
            needs: header.needs.clone(),
        };
        self.begin(started, started_at, entries, writer, events)
    }

    fn begin(
        self: &Arc<Self>,
        started: Started,
        started_at: SystemTime,
        earlier: Vec<Entry>,
        writer: Option<SpoolWriter>,
        events: mpsc::Receiver<Result<JobEvent, JobError>>,
    ) -> Arc<Spool> {
        let (appended, _) = watch::channel(1);
        let (cancel, cancelled) = oneshot::channel();
        let ran_for = started_at.elapsed().unwrap_or_default();
        let spool = Arc::new(Spool {
            started,
            started_at: (started_at, Instant::now().checked_sub(ran_for).unwrap_or_else(Instant::now)),
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                first_kept: 1,
                end: None,
                ended_at: None,
                followers: 0,
                departures: 0,
                farm_queued: None,
                cancel: Some(cancel),
                writer: None,
                run: None,
                file_limit: disk_limit(self.max_bytes),
                checkpoint: None,
                forget_before: None,
                output_count: 0,
            }),
            appended,
            budget: self.budget.clone(),
            root: self.disk.as_ref().map(|(root, _)| root.clone()),
        });
        self.budget.spools.fetch_add(1, Ordering::SeqCst);
        {
            // Earlier records go in as they were numbered (not written again).
            let mut inner = spool.inner();
            if let Some(first) = earlier.iter().find_map(|entry| match entry {
                Entry::Numbered { seq, .. } => Some(*seq),
                _ => None,
            }) {
                // A spool compacted on disk starts past 1: followers are told what went.
                inner.first_kept = first;
            }
            for entry in earlier {
                match entry {
                    Entry::RunStarted(run) => (inner.run, inner.checkpoint) = (Some(run), None),
                    Entry::Checkpoint { offset, output_count } => inner.checkpoint = Some((offset, output_count)),
                    Entry::Numbered { seq, output_count, record } => {
                        inner.next_seq = seq;
                        inner.output_count = output_count;
                        inner.push(record, self.max_bytes, &self.budget);
                    }
                }
            }
            inner.writer = writer;
        }
        self.spools().insert(spool.started.id.clone(), spool.clone());
        tokio::spawn(pump(spool.clone(), events, cancelled, self.max_bytes));
        spool
    }

    /// The caller's durable run `id`, if there is one.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Option<Arc<Spool>> {
        self.spools().get(id).filter(|spool| spool.started.owner.as_deref() == owner).cloned()
    }

    /// The caller's durable runs, oldest first.
    pub fn of(&self, owner: Option<&str>) -> Vec<Arc<Spool>> {
        let mut spools: Vec<Arc<Spool>> =
            self.spools().values().filter(|spool| spool.started.owner.as_deref() == owner).cloned().collect();
        spools.sort_by_key(|spool| spool.started_at.1);
        spools
    }

    /// Every CN's durable runs, oldest first (for `Status`, which shows another CN's
    /// only as CN, state, resources and times).
    pub fn all(&self) -> Vec<Arc<Spool>> {
        let mut spools: Vec<Arc<Spool>> = self.spools().values().cloned().collect();
        spools.sort_by_key(|spool| spool.started_at.1);
        spools
    }

    /// Forgets the spools of jobs that are gone (`exists` says which still are), on
    /// disk too.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        let mut gone = Vec::new();
        self.spools().retain(|id, _| {
            let keep = exists(id);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        if let Some((root, _)) = &self.disk {
            for id in gone {
                spool_file::remove(root, &id);
            }
        }
    }

    /// The run's records from after `after_seq` (or from now, `from_end`), then live
    /// ones until its end, as a stream; the run counts this follower while it reads.
    pub fn follow(self: &Arc<Self>, spool: Arc<Spool>, after_seq: u64, from_end: bool) -> mpsc::Receiver<Record> {
        let (tx, rx) = mpsc::channel(64);
        let next = match from_end {
            true => spool.inner().next_seq,
            false => after_seq.saturating_add(1),
        };
        spool.inner().followers += 1;
        let spools = self.clone();
        tokio::spawn(async move {
            feed(&spool, next, &tx).await;
            spools.follower_left(&spool);
        });
        rx
    }

    /// The run's records from after `after_seq`, then live ones until its end, for a
    /// viewer of its status page: not a follower (a page left open neither keeps a
    /// run its client left from being cancelled nor counts as that client).
    pub fn watch(&self, spool: Arc<Spool>, after_seq: u64) -> mpsc::Receiver<Record> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move { feed(&spool, after_seq.saturating_add(1), &tx).await });
        rx
    }

    /// A run nobody follows yet (adopted after a restart): as if its last follower had
    /// just left, it is cancelled if none comes within the grace (unless detached).
    pub fn await_follower(self: &Arc<Self>, spool: &Arc<Spool>) {
        spool.inner().followers += 1;
        self.follower_left(spool);
    }

    /// The last follower of a running, not detached run left: it is cancelled if none
    /// comes back within the grace.
    fn follower_left(self: &Arc<Self>, spool: &Arc<Spool>) {
        let departure = {
            let mut inner = spool.inner();
            inner.followers -= 1;
            if inner.followers > 0 || inner.end.is_some() || spool.started.detached {
                return;
            }
            inner.departures += 1;
            inner.departures
        };
        let (spool, grace) = (spool.clone(), self.grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let abandoned = {
                let inner = spool.inner();
                inner.followers == 0 && inner.departures == departure && inner.end.is_none()
            };
            if abandoned {
                warn!(job = %spool.started.id, grace = ?grace, "nobody came back for the job within --reattach-grace: cancelling it");
                spool.cancel("nobody came back for it within the server's --reattach-grace");
            }
        });
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let bytes = self.inner.get_mut().map_or_else(|poisoned| poisoned.into_inner().bytes, |inner| inner.bytes);
        self.budget.used.fetch_sub(bytes, Ordering::SeqCst);
        self.budget.spools.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Spool {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the run (`why` ends its output); `false` when it had already ended.
    pub fn cancel(&self, why: &'static str) -> bool {
        match self.inner().cancel.take() {
            Some(cancel) => cancel.send(why).is_ok(),
            None => false,
        }
    }

    /// Why a farm's scheduler holds the command, while it does.
    pub fn farm_queued(&self) -> Option<String> {
        let inner = self.inner();
        inner.farm_queued.clone().filter(|_| inner.end.is_none())
    }

    /// The last `max` records kept, and the number of the last of them (0: none).
    pub fn last_records(&self, max: usize) -> (Vec<Record>, u64) {
        let inner = self.inner();
        let skip = inner.records.len().saturating_sub(max);
        let records = inner.records.iter().skip(skip).map(|(_, record)| record.clone()).collect();
        (records, inner.next_seq.saturating_sub(1))
    }

    /// How it ended (`None`: it runs); when it started; how long it ran (so far).
    pub fn summary(&self) -> (Option<RunEnd>, SystemTime, Duration) {
        let inner = self.inner();
        let state = inner.end.clone();
        let ran = inner.ended_at.unwrap_or_else(Instant::now).duration_since(self.started_at.1);
        (state, self.started_at.0, ran)
    }
}

/// Reads the run's events into the spool until the run ends or is cancelled.
async fn pump(
    spool: Arc<Spool>,
    mut events: mpsc::Receiver<Result<JobEvent, JobError>>,
    mut cancelled: oneshot::Receiver<&'static str>,
    max_bytes: usize,
) {
    // What came since the last look, appended under one lock with one wake-up for the
    // followers: a command printing fast costs one notification per burst, not per line.
    let mut burst = Vec::with_capacity(BURST);
    let end = loop {
        tokio::select! {
            received = events.recv_many(&mut burst, BURST) => match received {
                0 => break None,
                _ => append_events(&spool, burst.drain(..), max_bytes),
            },
            why = &mut cancelled => match why {
                Ok(why) => break Some(why),
                // The sender went: the run ended by itself.
                Err(_) => break None,
            },
        }
    };
    if let Some(why) = end {
        // Dropping the receiver stops the run (the executor sees its events closed).
        drop(events);
        info!(job = %spool.started.id, why, "durable job cancelled");
        let message = format!("job {} was cancelled: {why}", spool.started.id);
        append(&spool, std::iter::once(Err(Status::cancelled(message))), max_bytes);
    }
    let mut inner = spool.inner();
    inner.cancel = None;
    inner.ended_at = Some(Instant::now());
    if inner.end.is_none() {
        inner.end = Some(RunEnd::NoExitStatus);
    }
    let next = inner.next_seq;
    drop(inner);
    // Wakes followers so they see the end even if nothing was added.
    spool.appended.send_replace(next);
}

/// Adds the messages of a burst of events with the next numbers (counting the
/// command's output, and marking where its supervised run started), writes them to
/// disk in one write, then wakes the followers once.
fn append_events(spool: &Spool, events: impl Iterator<Item = Result<JobEvent, JobError>>, max_bytes: usize) {
    let mut inner = spool.inner();
    for event in events {
        match &event {
            Ok(JobEvent::Queued(why)) => inner.farm_queued = Some(why.clone()),
            Ok(
                JobEvent::Dispatched(_) | JobEvent::Line { .. } | JobEvent::Progress { .. } | JobEvent::Exited { .. },
            ) => inner.farm_queued = None,
            _ => {}
        }
        let output = matches!(event, Ok(JobEvent::Line { .. } | JobEvent::Progress { .. })) && inner.run.is_some();
        if let Ok(JobEvent::RunStarted { run }) = event {
            let count = inner.output_count;
            if let Some(writer) = inner.writer.as_mut() {
                writer.run_started(&run, count);
            }
            (inner.run, inner.checkpoint) = (Some(run), None);
            continue;
        }
        if let Ok(JobEvent::Checkpoint { offset }) = event {
            let count = inner.output_count;
            if let Some(writer) = inner.writer.as_mut() {
                writer.checkpoint(offset, count);
                inner.forget_before = Some(offset);
            }
            inner.checkpoint = Some((offset, count));
            continue;
        }
        if let Some(record) = crate::rpc::messages::to_message(event, false) {
            inner.output_count += u64::from(output);
            inner.push(record, max_bytes, &spool.budget);
        }
    }
    flush_and_wake(spool, inner);
}

/// Adds records with the next numbers, then wakes the followers once.
fn append(spool: &Spool, records: impl Iterator<Item = Record>, max_bytes: usize) {
    let mut inner = spool.inner();
    for record in records {
        inner.push(record, max_bytes, &spool.budget);
    }
    flush_and_wake(spool, inner);
}

/// What a spool's file may grow to before it is written anew with only the records
/// kept in memory: twice what one spool keeps, and some room for its header.
fn disk_limit(max_bytes: usize) -> u64 {
    2 * max_bytes as u64 + (64 << 10)
}

/// Writes what was added to disk (the file compacted past its limit); wakes the
/// followers.
fn flush_and_wake(spool: &Spool, mut inner: MutexGuard<'_, Inner>) {
    let inner_ref = &mut *inner;
    if let Some(writer) = inner_ref.writer.as_mut() {
        let mut written = writer.flush();
        if written.is_ok() && writer.length() > inner_ref.file_limit {
            let kept = inner_ref.records.iter().map(|(seq, record)| (*seq, record));
            written = writer.compact(kept, inner_ref.run.as_deref(), inner_ref.checkpoint, inner_ref.output_count);
        }
        // Written down: a replay starts at the checkpoint, what is before it may go.
        if let (Ok(()), Some(offset), Some(run), Some(root)) =
            (&written, inner_ref.forget_before.take(), &inner_ref.run, &spool.root)
        {
            crate::executor::supervised::forget_output_before(root, run, offset);
        }
        if let Err(error) = written {
            warn!(job = %spool.started.id, "cannot write the job's spool to disk any more (kept in memory only): {error}");
            inner_ref.writer = None;
        }
    }
    let next = inner.next_seq;
    drop(inner);
    spool.appended.send_replace(next);
}

impl Inner {
    /// Adds a record with the next number; drops the oldest beyond the bound, which is
    /// this spool's share of the total while all spools together are past theirs.
    fn push(&mut self, mut record: Record, max_bytes: usize, budget: &Budget) {
        let inner = self;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        match &mut record {
            Ok(message) => {
                message.seq = seq;
                if let Some(status) = &message.exit_status {
                    inner.end = Some(match status.signal {
                        0 => RunEnd::Exited(status.code),
                        signal => RunEnd::Signalled(signal),
                    });
                }
            }
            Err(status) => {
                inner.end = Some(match status.code() {
                    tonic::Code::Cancelled => RunEnd::Cancelled,
                    _ => RunEnd::Failed(status.message().to_string()),
                });
            }
        }
        if let Some(writer) = inner.writer.as_mut() {
            writer.numbered(seq, inner.output_count, &record);
        }
        let size = cost(&record);
        inner.records.push_back((seq, record));
        inner.bytes += size;
        let total = budget.used.fetch_add(size, Ordering::SeqCst) + size;
        let limit = match total > budget.max {
            true => max_bytes.min(budget.max / budget.spools.load(Ordering::SeqCst).max(1)),
            false => max_bytes,
        };
        while inner.bytes > limit && inner.records.len() > 1 {
            if let Some((dropped, record)) = inner.records.pop_front() {
                let size = cost(&record);
                inner.bytes -= size;
                budget.used.fetch_sub(size, Ordering::SeqCst);
                inner.first_kept = dropped + 1;
            }
        }
    }
}

/// Sends the records from `next` on, then live ones, until the run's end or the
/// follower leaves.
async fn feed(spool: &Spool, mut next: u64, tx: &mpsc::Sender<Record>) {
    let mut appended = spool.appended.subscribe();
    loop {
        let (batch, missed, ended) = {
            let inner = spool.inner();
            let missed = inner.first_kept.saturating_sub(next);
            next = next.max(inner.first_kept);
            let skip = usize::try_from(next - inner.first_kept).unwrap_or(usize::MAX).min(inner.records.len());
            let batch: Vec<(u64, Record)> = inner.records.range(skip..).take(BURST).cloned().collect();
            (batch, missed, inner.end.is_some() && inner.cancel.is_none())
        };
        if missed > 0 {
            let note = format!(
                "[{SERVER_NAME}] {missed} earlier messages are no longer kept (the server keeps the last \
                 --spool-max-bytes of a job's output)"
            );
            if tx.send(Ok(ExecuteResponse { message: note, ..Default::default() })).await.is_err() {
                return;
            }
        }
        if batch.is_empty() {
            if ended {
                return;
            }
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            continue;
        }
        for (seq, record) in batch {
            next = seq + 1;
            if tx.send(record).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Result<JobEvent, JobError> {
        Ok(JobEvent::Line { pipe: crate::executor::Pipe::Stdout, text: text.into() })
    }

    async fn collect(mut rx: mpsc::Receiver<Record>) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        while let Some(record) = rx.recv().await {
            match record {
                Ok(message) => got.push((message.seq, message.message)),
                Err(status) => got.push((0, status.message().to_string())),
            }
        }
        got
    }

    fn started(detached: bool) -> Started {
        Started {
            id: "j".into(),
            owner: Some("alice".into()),
            command: "c".into(),
            attach: None,
            detached,
            needs: None,
        }
    }

    #[tokio::test]
    async fn a_follower_resumes_after_the_last_record_it_got_and_the_status_is_last() {
        let spools = Arc::new(Spools::new(Duration::from_secs(60), 1 << 20, 1 << 30));
        let (tx, rx) = mpsc::channel(8);
        let spool = spools.start(started(false), None, rx);
        for n in 1..=3 {
            tx.send(line(&format!("line {n}"))).await.unwrap();
        }
        tx.send(Ok(JobEvent::Exited { code: 3, signal: 0 })).await.unwrap();
        drop(tx);
        let got = collect(spools.follow(spool.clone(), 2, false)).await;
        assert_eq!(got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(got[0].1, "line 3");
        assert_eq!(spool.summary().0, Some(RunEnd::Exited(3)));
        assert!(spools.get("j", Some("mallory")).is_none(), "another CN sees nothing");
    }

    #[tokio::test]
    async fn beyond_the_bound_the_oldest_go_and_the_follower_is_told() {
        let spools = Arc::new(Spools::new(Duration::from_secs(60), 2000, 1 << 30));
        let (tx, rx) = mpsc::channel(64);
        let spool = spools.start(started(false), None, rx);
        for n in 0..20 {
            tx.send(line(&format!("line {n:02} with some text"))).await.unwrap();
        }
        drop(tx);
        let got = collect(spools.follow(spool, 0, false)).await;
        assert!(got[0].1.contains("earlier messages are no longer kept"), "{got:?}");
        assert_eq!(got.last().unwrap().1, "line 19 with some text");
    }

    #[tokio::test]
    async fn empty_lines_count_what_they_take_and_all_spools_share_one_bound() {
        // A 1 MiB spool of empty lines keeps a few thousand of them, not a million.
        let spools = Arc::new(Spools::new(Duration::from_secs(60), 1 << 20, 1 << 30));
        let (tx, rx) = mpsc::channel(64);
        let spool = spools.start(started(true), None, rx);
        for _ in 0..20_000 {
            tx.send(line("")).await.unwrap();
        }
        drop(tx);
        let got = collect(spools.follow(spool.clone(), 0, false)).await;
        assert!(got.len() < (1 << 20) / RECORD_OVERHEAD + 2, "{} records kept", got.len());
        assert!(spool.inner().bytes <= 1 << 20);
        // Two spools of 1 MiB each under a 1 MiB total: each keeps about half.
        let shared = Arc::new(Spools::new(Duration::from_secs(60), 1 << 20, 1 << 20));
        let mut kept = Vec::new();
        let mut senders = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = mpsc::channel(64);
            kept.push(shared.start(Started { id: id.into(), ..started(true) }, None, rx));
            senders.push(tx);
        }
        for _ in 0..10_000 {
            for tx in &senders {
                tx.send(line("some output")).await.unwrap();
            }
        }
        drop(senders);
        for spool in &kept {
            drop(collect(shared.follow(spool.clone(), u64::MAX - 1, false)).await);
        }
        let used = shared.budget.used.load(Ordering::SeqCst);
        assert!(used <= (1 << 20) + 2 * RECORD_OVERHEAD + 64, "{used} bytes in all");
        drop(kept);
        shared.retain(|_| false);
        assert_eq!(shared.budget.used.load(Ordering::SeqCst), 0, "a spool gone gives its bytes back");
    }

    // The spool on disk keeps what the spool in memory keeps (the file is written anew
    // past twice the bound), and a spool taken back from it starts where it was kept:
    // numbered as before, its follower told what went.
    #[tokio::test]
    async fn the_spool_on_disk_is_bounded_as_in_memory_and_read_back_where_it_was_kept() {
        let root = tempfile::tempdir().unwrap();
        let key = SpoolKey::of_root(root.path()).unwrap();
        let spools = Arc::new(Spools::new(Duration::from_secs(60), 4000, 1 << 30).on_disk(root.path(), key.clone()));
        let header = Header { id: "j".into(), command: "c".into(), ..Header::default() };
        let (tx, rx) = mpsc::channel(64);
        let spool = spools.start(started(true), Some(&header), rx);
        tx.send(Ok(JobEvent::RunStarted { run: "run-1-0".into() })).await.unwrap();
        for n in 0..5000 {
            tx.send(line(&format!("line {n:04} with some text"))).await.unwrap();
        }
        drop(tx);
        let got = collect(spools.follow(spool.clone(), 0, false)).await;
        assert_eq!(got.last().unwrap().1, "line 4999 with some text");
        let on_disk = std::fs::metadata(spool_file::path_of(root.path(), "j")).unwrap().len();
        assert!(on_disk <= disk_limit(4000) + 8192, "{on_disk} bytes on disk for 5000 lines");
        let (read_header, entries) = spool_file::read(root.path(), &key, "j").unwrap();
        assert_eq!(read_header, header);
        assert!(matches!(entries.first(), Some(Entry::RunStarted(run)) if run == "run-1-0"));
        let Some(Entry::Numbered { seq: last, output_count, .. }) = entries.last() else { panic!("{entries:?}") };
        assert_eq!((*last, *output_count), (5000, 5000));
        // Taken back: the follower is told what went, then gets the rest as numbered.
        let again = Arc::new(Spools::new(Duration::from_secs(60), 4000, 1 << 30));
        let (tx, rx) = mpsc::channel(8);
        let adopted = again.adopt(&header, entries, rx);
        drop(tx);
        let got = collect(again.follow(adopted, 0, false)).await;
        assert!(got[0].1.contains("earlier messages are no longer kept"), "{:?}", &got[..2]);
        assert_eq!(got.last().unwrap(), &(5000, "line 4999 with some text".to_string()));
    }

    #[tokio::test]
    async fn nobody_coming_back_within_the_grace_cancels_unless_detached() {
        for detached in [false, true] {
            let spools = Arc::new(Spools::new(Duration::from_millis(200), 1 << 20, 1 << 30));
            let (tx, rx) = mpsc::channel(8);
            let spool = spools.start(started(detached), None, rx);
            drop(spools.follow(spool.clone(), 0, false));
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(tx.is_closed(), !detached, "detached: {detached}");
            if !detached {
                assert_eq!(spool.summary().0, Some(RunEnd::Cancelled));
            }
        }
    }
}
