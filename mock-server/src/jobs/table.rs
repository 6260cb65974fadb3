//! Job directories and their lifecycle. Each upload gets a fresh `root/<UUID>/`
//! (mode 0700) and a marker file beside it, `root/<UUID>.lrpymrpc-job`, so that the
//! start-up sweep removes only directories this server made. A job is found again
//! only through a well-formed id that this server handed out, and only by the client
//! certificate that uploaded it; a request can never name a path of its own.
//!
//! A job holds one of `max_jobs` slots from Upload until its command ended, and takes
//! one again for every later Execute, so the limit bounds running commands, not only
//! uploads; `max_jobs_per_cn` keeps one certificate from taking every slot. A job's
//! [`Phase`] is checked here, in one place: one command per job at a time, no results
//! read while its command runs, and no command started while another call reads the
//! job. Its directory is removed a short grace after its results were fetched or it
//! was cancelled, or after the time-to-live when nobody comes back; never while a call
//! is using it.

use std::collections::HashMap;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::JobError;

/// The suffix of the marker file beside each job directory.
const MARKER_SUFFIX: &str = ".lrpymrpc-job";
/// The suffix of a job's own Python environment, beside its directory.
const VENV_SUFFIX: &str = ".venv";
/// A slot taken by an upload whose Execute never came is given back after this long.
const UNUSED_SLOT_LIMIT: Duration = Duration::from_secs(120);

/// How long after its last call a job whose command ended still counts as active
/// for a draining server: its client checks and downloads at once, or not at all (a
/// job whose pip failed, a client that went away), so a shutdown waits for no more.
const FETCH_WINDOW: Duration = Duration::from_secs(10);

/// How long Check and Download wait for a command whose end is being recorded
/// ([`Jobs::open_ended_soon`]) before they answer that it still runs.
const END_LAG: Duration = Duration::from_secs(2);

/// Every job of this server.
#[derive(Debug)]
pub struct Jobs {
    root: PathBuf,
    max_jobs: usize,
    max_jobs_per_cn: usize,
    slots: Arc<Semaphore>,
    ttl: Duration,
    grace: Duration,
    table: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    /// The CN of the client certificate that uploaded it (`None` in plaintext).
    owner: Option<String>,
    last_used: Instant,
    /// Calls using the job right now; it is never removed while this is not zero.
    in_use: usize,
    slot: Option<OwnedSemaphorePermit>,
    phase: Phase,
    /// Set when the job is finished: remove it at this time.
    remove_at: Option<Instant>,
    /// The digest (hash) of the input tree it was made from (content-addressed).
    input_root: Option<String>,
    /// Its results as the action cache recorded them (a hit, or a recorded run):
    /// Check and Download answer from the record.
    recorded: Option<Recorded>,
    /// Why its command waits for cores, memory or licenses, while it does.
    waiting: Option<String>,
}

/// A job's results as recorded in the action cache.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub record: crate::store::action_cache::Record,
    /// The RESULT paths the run was recorded for (single spaces).
    pub requested: String,
}

/// Where a job is in its life; what each call may do depends on it, decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its files arrived; no command ran yet.
    Uploaded,
    /// A command is running in it: nothing else may read or run in it.
    Running,
    /// Its last command ended so; results may be read, a new command run.
    Ended(CommandEnd),
    /// Nothing more is expected: it goes after the grace unless a call comes back.
    Done(Done),
}

/// How a job's last command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEnd {
    /// It exited (a signal: `signal` is not 0).
    Exited { code: i32, signal: i32 },
    /// pip failed, a limit stopped it, or it could not run.
    Failed,
    /// The client went away; it was stopped.
    Cancelled,
}

/// Why nothing more is expected of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Its results were sent, or there were none to send.
    Fetched,
    /// The client went away during its command.
    Cancelled,
}

/// Why a job directory was removed, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Removal {
    Finished,
    Expired,
}

impl Jobs {
    pub fn new(root: PathBuf, max_jobs: usize, max_jobs_per_cn: usize, ttl: Duration, grace: Duration) -> Jobs {
        let max_jobs = max_jobs.max(1);
        Jobs {
            root,
            max_jobs,
            max_jobs_per_cn: max_jobs_per_cn.max(1),
            slots: Arc::new(Semaphore::new(max_jobs)),
            ttl,
            grace,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new, empty job directory for `owner`, holding a slot; refused when all
    /// `max_jobs` slots are taken.
    pub fn create(self: &Arc<Self>, owner: Option<&str>) -> Result<(String, PathBuf, JobUse), JobError> {
        let id = Uuid::new_v4().to_string();
        let dir = self.root.join(&id);
        // The slot is taken and the job entered under one lock: two uploads of one CN
        // cannot both pass its limit while the directory is being made.
        {
            let mut table = self.table();
            let slot = self.take_slot(&table, owner)?;
            let entry = Entry {
                dir: dir.clone(),
                owner: owner.map(str::to_string),
                last_used: Instant::now(),
                in_use: 1,
                slot: Some(slot),
                phase: Phase::Uploaded,
                remove_at: None,
                input_root: None,
                recorded: None,
                waiting: None,
            };
            table.insert(id.clone(), entry);
        }
        let made = std::fs::write(marker(&dir), b"").and_then(|()| {
            DirBuilder::new().mode(0o700).create(&dir).inspect_err(|_| {
                let _ = std::fs::remove_file(marker(&dir));
            })
        });
        if let Err(error) = made {
            self.table().remove(&id);
            return Err(error.into());
        }
        Ok((id.clone(), dir, JobUse { jobs: self.clone(), id }))
    }

    /// A job an earlier server left on disk, taken on again (its directory and marker
    /// are there; `id` is a canonical UUID): in use until the guard drops, its command
    /// running until the returned run ends. It holds a slot when one is free (a server
    /// restarted with fewer slots still adopts every job it finds).
    pub fn adopt(self: &Arc<Self>, id: &str, owner: Option<&str>) -> Result<(PathBuf, JobUse, CommandRun), JobError> {
        if !is_left_job(&self.root, id) {
            return Err(JobError::UnknownJob(id.to_string()));
        }
        let dir = self.root.join(id);
        let mut table = self.table();
        let slot = self.take_slot(&table, owner).ok();
        let entry = Entry {
            dir: dir.clone(),
            owner: owner.map(str::to_string),
            last_used: Instant::now(),
            in_use: 1,
            slot,
            phase: Phase::Running,
            remove_at: None,
            input_root: None,
            recorded: None,
            waiting: None,
        };
        table.insert(id.to_string(), entry);
        let run = CommandRun { jobs: self.clone(), id: id.to_string(), end: CommandEnd::Failed, input_root: None };
        Ok((dir, JobUse { jobs: self.clone(), id: id.to_string() }, run))
    }

    /// An existing job of `owner`, marked in use until the returned guard drops.
    pub fn open(self: &Arc<Self>, id: &str, owner: Option<&str>) -> Result<(PathBuf, JobUse), JobError> {
        let parsed = Uuid::try_parse(id).map_err(|_| JobError::BadJobId(id.to_string()))?;
        // Only the canonical hyphenated form names a job.
        let key = parsed.hyphenated().to_string();
        let mut table = self.table();
        // Another certificate's job is answered exactly like a job that does not exist.
        let entry = table
            .get_mut(&key)
            .filter(|entry| entry.owner.as_deref() == owner)
            .ok_or_else(|| JobError::UnknownJob(id.to_string()))?;
        entry.in_use += 1;
        entry.last_used = Instant::now();
        entry.remove_at = None;
        Ok((entry.dir.clone(), JobUse { jobs: self.clone(), id: key }))
    }

    /// A slot for `owner`, refused when every slot, or every slot `owner` may hold, is taken.
    fn take_slot(&self, table: &HashMap<String, Entry>, owner: Option<&str>) -> Result<OwnedSemaphorePermit, JobError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| JobError::Busy { max_jobs: self.max_jobs })?;
        let held = table.values().filter(|entry| entry.slot.is_some() && entry.owner.as_deref() == owner).count();
        if held >= self.max_jobs_per_cn {
            return Err(JobError::BusyForCn { max_jobs_per_cn: self.max_jobs_per_cn });
        }
        Ok(slot)
    }

    /// The job's command starts now, in a slot (the upload's, or a new one); `job_use`
    /// is the Execute call's own use of the job. Refused while another command runs in
    /// it or another call is reading it. The slot is given back and the job marked
    /// ended when the returned guard drops.
    pub fn start_command(self: &Arc<Self>, job_use: &JobUse) -> Result<CommandRun, JobError> {
        let mut table = self.table();
        let entry = table.get(&job_use.id).ok_or_else(|| JobError::UnknownJob(job_use.id.clone()))?;
        match entry.phase {
            Phase::Running => {
                return Err(JobError::InUse { why: "its command is still running; one Execute at a time" });
            }
            _ if entry.in_use > 1 => return Err(JobError::InUse { why: "another call is reading it" }),
            Phase::Uploaded | Phase::Ended(_) | Phase::Done(_) => {}
        }
        let slot = match entry.slot.is_some() {
            true => None,
            false => Some(self.take_slot(&table, entry.owner.clone().as_deref())?),
        };
        let entry = table.get_mut(&job_use.id).ok_or_else(|| JobError::UnknownJob(job_use.id.clone()))?;
        if slot.is_some() {
            entry.slot = slot;
        }
        // The tree's digest names the directory only until a command may have changed
        // it: the first command gets it (for the action cache's key), later ones none.
        let input_root = entry.input_root.clone().filter(|_| entry.phase == Phase::Uploaded);
        entry.phase = Phase::Running;
        // What a new command makes replaces what an earlier one recorded.
        entry.recorded = None;
        Ok(CommandRun { jobs: self.clone(), id: job_use.id.clone(), end: CommandEnd::Failed, input_root })
    }

    /// An existing job of `owner` whose results may be read now: refused while its
    /// command runs (it could still change what is read).
    pub fn open_ended(self: &Arc<Self>, id: &str, owner: Option<&str>) -> Result<(PathBuf, JobUse), JobError> {
        let (dir, job_use) = self.open(id, owner)?;
        match self.table().get(&job_use.id).map(|entry| entry.phase) {
            Some(Phase::Running) => Err(JobError::InUse { why: "its command is still running" }),
            _ => Ok((dir, job_use)),
        }
    }

    /// [`Jobs::open_ended`] for Check and Download, waiting up to [`END_LAG`] for a
    /// command whose end is being recorded (`ending`: its spool has its exit status):
    /// that reaches the client a moment before the table hears the command ended, and
    /// a client checks its results at once. A command still running is refused at once.
    pub async fn open_ended_soon(
        self: &Arc<Self>,
        id: &str,
        owner: Option<&str>,
        ending: impl Fn() -> bool,
    ) -> Result<(PathBuf, JobUse), JobError> {
        let deadline = std::time::Instant::now() + END_LAG;
        loop {
            match self.open_ended(id, owner) {
                Err(JobError::InUse { .. }) if std::time::Instant::now() < deadline && ending() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened => return opened,
            }
        }
    }

    /// Nothing more is expected of the job (results fetched, none to fetch, or the
    /// client cancelled): it goes after the grace period.
    pub fn finished(&self, id: &str, why: Done) {
        if let Some(entry) = self.table().get_mut(id) {
            entry.slot = None;
            entry.phase = Phase::Done(why);
            entry.remove_at = Some(Instant::now() + self.grace);
        }
    }

    /// Records the digest of the tree the job was made from.
    pub fn set_input_root(&self, id: &str, hash: &str) {
        // (`start_command` hands it to the job's first command only.)
        if let Some(entry) = self.table().get_mut(id) {
            entry.input_root = Some(hash.to_string());
        }
    }

    /// Whether the job was made from a content-addressed tree.
    pub fn made_from_tree(&self, id: &str) -> bool {
        self.table().get(id).is_some_and(|entry| entry.input_root.is_some())
    }

    /// The job's results are the action cache's record from now on.
    pub fn set_recorded(&self, id: &str, recorded: Recorded) {
        if let Some(entry) = self.table().get_mut(id) {
            entry.recorded = Some(recorded);
        }
    }

    /// Why the job's command waits for resources (`None`: it does not), for `ListJobs`.
    pub fn set_waiting(&self, id: &str, why: Option<String>) {
        if let Some(entry) = self.table().get_mut(id) {
            entry.waiting = why;
        }
    }

    pub fn waiting_for(&self, id: &str) -> Option<String> {
        self.table().get(id).and_then(|entry| entry.waiting.clone())
    }

    /// The job's recorded results, if the action cache answered or recorded it.
    pub fn recorded(&self, id: &str) -> Option<Recorded> {
        self.table().get(id).and_then(|entry| entry.recorded.clone())
    }

    /// Takes the failed upload's job out of the table at once; returns its directory,
    /// for the caller to remove with [`remove_job_files`] off the async threads (never
    /// under the table's lock).
    #[must_use]
    pub fn discard(&self, id: &str) -> Option<PathBuf> {
        let entry = self.table().remove(id);
        entry.map(|entry| entry.dir)
    }

    /// Takes out of the table what is due: finished jobs after their grace, forgotten
    /// ones after the time-to-live. Returns their ids, why, and their directories, which
    /// the caller removes with [`remove_job_files`] off the async threads and outside
    /// the table's lock (a 400,000-file job takes a while).
    pub fn reap(&self) -> Vec<(String, Removal, PathBuf)> {
        let now = Instant::now();
        let mut removed = Vec::new();
        let mut table = self.table();
        table.retain(|id, entry| {
            if entry.in_use > 0 {
                return true;
            }
            if entry.slot.is_some()
                && entry.phase == Phase::Uploaded
                && now.duration_since(entry.last_used) > UNUSED_SLOT_LIMIT
            {
                entry.slot = None;
            }
            let why = match entry.remove_at {
                Some(at) if now >= at => Some(Removal::Finished),
                _ if now.duration_since(entry.last_used) >= self.ttl => Some(Removal::Expired),
                _ => None,
            };
            match why {
                Some(why) => {
                    removed.push((id.clone(), why, entry.dir.clone()));
                    false
                }
                None => true,
            }
        });
        removed
    }

    /// Jobs a client is still working with: a call in progress, a slot taken (its
    /// command is about to run or running), or a command that ended within
    /// [`FETCH_WINDOW`] whose results were not fetched yet.
    pub fn active(&self) -> usize {
        let fetching = |e: &Entry| matches!(e.phase, Phase::Ended(_)) && e.last_used.elapsed() < FETCH_WINDOW;
        self.table().values().filter(|e| e.in_use > 0 || e.slot.is_some() || fetching(e)).count()
    }

    /// Jobs uploaded whose command has not started.
    pub fn waiting(&self) -> usize {
        self.table().values().filter(|e| e.phase == Phase::Uploaded).count()
    }

    /// Slots free now: jobs that could start.
    /// Whether job `id` is still in the table (of anyone).
    pub fn contains(&self, id: &str) -> bool {
        self.table().contains_key(id)
    }

    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Jobs `owner` could start now: the free slots, fewer when `owner` already holds
    /// nearly all it may (`max_jobs_per_cn`), so a client told "free" is not refused.
    pub fn free_slots_for(&self, owner: Option<&str>) -> usize {
        let held =
            self.table().values().filter(|entry| entry.slot.is_some() && entry.owner.as_deref() == owner).count();
        self.free_slots().min(self.max_jobs_per_cn.saturating_sub(held))
    }

    /// How often [`Jobs::reap`] should run to keep its promises.
    pub fn reap_interval(&self) -> Duration {
        (self.grace.min(self.ttl) / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// A job's phase now.
    #[cfg(test)]
    fn phase(&self, id: &str) -> Option<Phase> {
        self.table().get(id).map(|entry| entry.phase)
    }

    /// Jobs in the table now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.table().len()
    }
}

/// Marks a job in use; dropping it records the time of last use.
#[derive(Debug)]
pub struct JobUse {
    jobs: Arc<Jobs>,
    id: String,
}

impl JobUse {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A job's command running; [`CommandRun::ended`] (or dropping it, which counts as a
/// failure) ends the run and gives the slot back.
#[derive(Debug)]
pub struct CommandRun {
    jobs: Arc<Jobs>,
    id: String,
    end: CommandEnd,
    input_root: Option<String>,
}

impl CommandRun {
    /// The digest of the tree the job was made from, when this command is the job's
    /// first: its directory is then exactly that tree. `None` for a tar.gz job and for
    /// every later command, whose inputs an earlier one may have edited.
    pub fn pristine_input_root(&self) -> Option<&str> {
        self.input_root.as_deref()
    }

    /// The command ended so.
    pub fn ended(mut self, end: CommandEnd) {
        self.end = end;
    }
}

impl Drop for CommandRun {
    fn drop(&mut self) {
        if let Some(entry) = self.jobs.table().get_mut(&self.id) {
            entry.phase = Phase::Ended(self.end);
            entry.slot = None;
        }
    }
}

impl Drop for JobUse {
    fn drop(&mut self) {
        if let Some(entry) = self.jobs.table().get_mut(&self.id) {
            entry.in_use = entry.in_use.saturating_sub(1);
            entry.last_used = Instant::now();
        }
    }
}

/// Removes job directories that an earlier run of a server left in `root`, but those
/// `keep` names (adopted): only those with a marker, and without following links
/// (`remove_dir_all` removes a link, not what it points to). Returns the ids of those
/// removed.
pub fn sweep_orphans(root: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(MARKER_SUFFIX)) else { continue };
        if Uuid::try_parse(id).is_err() || keep(id) {
            continue;
        }
        remove_job_files(&root.join(id));
        removed.push(id.to_string());
    }
    removed
}

/// The job directory, its environment and its marker.
pub fn remove_job_files(dir: &Path) {
    for path in [dir.to_path_buf(), venv_dir(dir)] {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::remove_dir_all(&path);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_file(marker(dir));
}

/// Whether `id` names a job an earlier server left under `root`: a canonical UUID, its
/// marker beside a directory (not a link) of that name. Only such a job is taken on.
pub fn is_left_job(root: &Path, id: &str) -> bool {
    let canonical = Uuid::try_parse(id).is_ok_and(|parsed| parsed.hyphenated().to_string() == id);
    let dir = root.join(id);
    canonical && marker(&dir).is_file() && std::fs::symlink_metadata(&dir).is_ok_and(|meta| meta.is_dir())
}

fn marker(dir: &Path) -> PathBuf {
    sibling(dir, MARKER_SUFFIX)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Where a job's own Python environment lives: beside the job directory, not in it,
/// so the command sees only what was uploaded.
pub fn venv_dir(job_dir: &Path) -> PathBuf {
    sibling(job_dir, VENV_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs_in(root: &Path, max_jobs: usize, ttl: Duration, grace: Duration) -> Arc<Jobs> {
        Arc::new(Jobs::new(root.to_path_buf(), max_jobs, max_jobs, ttl, grace))
    }

    #[test]
    fn slots_limit_jobs_and_come_back_when_commands_end() {
        let root = tempfile::tempdir().unwrap();
        let jobs = jobs_in(root.path(), 1, Duration::from_secs(60), Duration::ZERO);
        let (id, _, first) = jobs.create(Some("alice")).unwrap();
        assert!(matches!(jobs.create(Some("alice")), Err(JobError::Busy { max_jobs: 1 })));
        drop(first);
        let (_, execute) = jobs.open(&id, Some("alice")).unwrap();
        let run = jobs.start_command(&execute).unwrap();
        drop(run);
        let (other, _, _) = jobs.create(Some("alice")).unwrap();
        // A second Execute of the first job needs a slot again: the other job holds it.
        assert!(matches!(jobs.start_command(&execute), Err(JobError::Busy { max_jobs: 1 })), "{other}");
    }

    #[test]
    fn one_command_per_job_and_no_results_read_while_it_runs() {
        let root = tempfile::tempdir().unwrap();
        let jobs = jobs_in(root.path(), 4, Duration::from_secs(60), Duration::ZERO);
        let (id, _, upload) = jobs.create(Some("alice")).unwrap();
        drop(upload);
        let (_, execute) = jobs.open(&id, Some("alice")).unwrap();
        let run = jobs.start_command(&execute).unwrap();
        let (_, second) = jobs.open(&id, Some("alice")).unwrap();
        assert!(matches!(jobs.start_command(&second), Err(JobError::InUse { .. })), "a second Execute");
        assert!(matches!(jobs.open_ended(&id, Some("alice")), Err(JobError::InUse { .. })), "Check while running");
        drop(second);
        run.ended(CommandEnd::Exited { code: 3, signal: 0 });
        assert_eq!(jobs.phase(&id), Some(Phase::Ended(CommandEnd::Exited { code: 3, signal: 0 })));
        let reading = jobs.open_ended(&id, Some("alice")).unwrap();
        assert!(matches!(jobs.start_command(&execute), Err(JobError::InUse { .. })), "Execute while reading");
        drop(reading);
        jobs.finished(&id, Done::Fetched);
        assert_eq!(jobs.phase(&id), Some(Phase::Done(Done::Fetched)));
        let again = jobs.start_command(&execute).unwrap();
        assert_eq!(jobs.phase(&id), Some(Phase::Running));
        drop(again);
        assert_eq!(jobs.phase(&id), Some(Phase::Ended(CommandEnd::Failed)), "a run dropped unended failed");
    }

    #[test]
    fn concurrent_uploads_of_one_cn_cannot_both_pass_its_limit() {
        let root = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let jobs = Arc::new(Jobs::new(root.path().to_path_buf(), 16, 1, Duration::from_secs(60), Duration::ZERO));
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let (jobs, barrier) = (jobs.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        jobs.create(Some("alice")).ok()
                    })
                })
                .collect();
            let made: Vec<_> = racers.into_iter().filter_map(|racer| racer.join().unwrap()).collect();
            assert_eq!(made.len(), 1, "one job of alice's at once");
        }
    }

    #[test]
    fn one_cn_cannot_take_every_slot() {
        let root = tempfile::tempdir().unwrap();
        let jobs = Arc::new(Jobs::new(root.path().to_path_buf(), 4, 2, Duration::from_secs(60), Duration::ZERO));
        let _a = jobs.create(Some("alice")).unwrap();
        let _b = jobs.create(Some("alice")).unwrap();
        assert!(matches!(jobs.create(Some("alice")), Err(JobError::BusyForCn { max_jobs_per_cn: 2 })));
        // The load reported to each caller says so: alice could start none, bob two.
        assert_eq!((jobs.free_slots_for(Some("alice")), jobs.free_slots_for(Some("bob"))), (0, 2));
        let _c = jobs.create(Some("bob")).unwrap();
        assert_eq!((jobs.free_slots(), jobs.free_slots_for(Some("bob"))), (1, 1));
    }

    #[test]
    fn jobs_are_found_only_by_their_owner_and_their_id() {
        let root = tempfile::tempdir().unwrap();
        let jobs = jobs_in(root.path(), 4, Duration::from_secs(60), Duration::ZERO);
        let (id, dir, _) = jobs.create(Some("alice")).unwrap();
        assert_eq!(jobs.open(&id, Some("alice")).unwrap().0, dir);
        assert!(matches!(jobs.open(&id, Some("bob")), Err(JobError::UnknownJob(_))));
        assert!(matches!(jobs.open("../etc", Some("alice")), Err(JobError::BadJobId(_))));
        assert!(matches!(jobs.open(&Uuid::new_v4().to_string(), Some("alice")), Err(JobError::UnknownJob(_))));
    }

    #[test]
    fn finished_and_forgotten_jobs_are_removed_but_never_while_in_use() {
        let root = tempfile::tempdir().unwrap();
        let jobs = jobs_in(root.path(), 4, Duration::from_millis(50), Duration::ZERO);
        let (done, done_dir, use_done) = jobs.create(None).unwrap();
        let (busy, busy_dir, use_busy) = jobs.create(None).unwrap();
        drop(use_done);
        jobs.finished(&done, Done::Fetched);
        std::thread::sleep(Duration::from_millis(60));
        let removed: Vec<_> = jobs.reap().into_iter().map(|(id, _, dir)| (id, dir)).collect();
        assert_eq!(removed, [(done, done_dir.clone())]);
        assert!(done_dir.exists(), "the caller removes the files");
        remove_job_files(&done_dir);
        assert!(!done_dir.exists() && !marker(&done_dir).exists());
        assert!(busy_dir.exists(), "in use, past its time-to-live: kept");
        drop(use_busy);
        std::thread::sleep(Duration::from_millis(60));
        let removed = jobs.reap();
        assert_eq!(removed.len(), 1);
        remove_job_files(&removed[0].2);
        assert!(!busy_dir.exists());
        assert_eq!(jobs.count(), 0, "{busy}");
    }

    #[test]
    fn the_sweep_removes_only_marked_directories_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "keep").unwrap();
        let id = Uuid::new_v4().to_string();
        let job = root.path().join(&id);
        std::fs::create_dir(&job).unwrap();
        std::os::unix::fs::symlink(outside.path(), job.join("link")).unwrap();
        std::fs::write(marker(&job), b"").unwrap();
        let unmarked = root.path().join(Uuid::new_v4().to_string());
        std::fs::create_dir(&unmarked).unwrap();
        assert_eq!(sweep_orphans(root.path(), |_| false).len(), 1);
        assert!(!job.exists() && unmarked.exists());
        assert!(outside.path().join("keep").exists());
    }
}
