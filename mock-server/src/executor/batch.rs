//! Runs submitted to a batch scheduler (Slurm's `sbatch`, Grid Engine's `qsub`): what
//! the schedulers' executors share. The run's directory is made on the shared job
//! root with a job script in it; the script runs the server binary's `supervise` on
//! the node, so the command runs under the same supervisor as a local one
//! (`supervisor.rs`), writing its output frames and exit status into the directory.
//! The server follows those files (`supervised.rs`) and asks the scheduler only
//! whether the job is still there ([`BatchJob`]), so the job outlives the server and
//! even its machine, and its exit status is the command's own, never a scheduler
//! client's guess (`qsub -sync y` says 0 for a deleted job).
//!
//! The run's directory holds `job.sh` (the script, every word quoted), `node.log`
//! (what the scheduler and the script said on the node), and, once submitted,
//! [`BATCH_RECORD`] (`SCHEDULER JOB_ID`), which a restarted server reads to find the
//! job again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::executor::process_run::Chunk;
use crate::executor::supervised::{self, BatchJob, Supervised};
use crate::executor::{Events, JobEvent, Launch};

pub use crate::executor::supervised::{BATCH_RECORD, NODE_LOG};
/// The job script's name in the run's directory.
pub const SCRIPT: &str = "job.sh";

/// A batch run's directory, made with its script, not yet submitted.
pub struct Prepared {
    pub dir: PathBuf,
    merged: bool,
}

impl Prepared {
    /// The script to submit.
    pub fn script(&self) -> PathBuf {
        self.dir.join(SCRIPT)
    }

    /// Where the scheduler is told to write the job's own output.
    pub fn node_log(&self) -> PathBuf {
        self.dir.join(NODE_LOG)
    }

    /// The scheduler took the job as `job_id`: written down (for a restarted server)
    /// before the run is followed.
    pub fn submitted(self, scheduler: &str, job_id: &str, job: Arc<dyn BatchJob>) -> io::Result<Submitted> {
        std::fs::write(self.dir.join(BATCH_RECORD), format!("{scheduler} {job_id}\n"))?;
        let (run, chunks) = Supervised::following(self.dir, 0, self.merged, None, Some(job), false);
        Ok(Submitted { run, chunks })
    }

    /// The scheduler refused the job: its directory goes.
    pub fn refused(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A submitted batch run, to follow as a local supervised run is followed.
pub struct Submitted {
    pub run: Supervised,
    pub chunks: mpsc::Receiver<Chunk>,
}

/// Makes a run directory under `root` for `launch` with its job script, which runs
/// `supervisor` (this server's binary, at a path every node sees) as the launch's
/// supervisor in it.
pub fn prepare(root: &Path, supervisor: &Path, launch: &Launch) -> io::Result<Prepared> {
    let dir = supervised::make_run_dir(root)?;
    let mut words: Vec<&OsStr> = vec![supervisor.as_os_str(), OsStr::new("supervise"), dir.as_os_str()];
    if launch.merged_output {
        words.push(OsStr::new("--merged"));
    }
    words.push(OsStr::new("--"));
    words.push(&launch.program);
    words.extend(launch.args.iter().map(|arg| arg.as_os_str()));
    let mut script = b"#!/bin/sh\n# lrpymrpc: the command runs under its supervisor, which writes its output and\n\
                       # exit status beside this script for the server to follow.\nexec"
        .to_vec();
    for word in words {
        script.push(b' ');
        script.extend_from_slice(&quoted(word.as_bytes()));
    }
    script.push(b'\n');
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let new = |mode| std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).clone();
        // The output file is there before the job is: the server follows it from now.
        new(0o600)
            .open(dir.join(supervised::OUTPUT))
            .and_then(|_| new(0o700).open(dir.join(SCRIPT)))
            .and_then(|mut file| file.write_all(&script))
    };
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(Prepared { dir, merged: launch.merged_output })
}

/// One word for `sh`, in single quotes: the shell takes it as it is (no expansion, no
/// splitting), whatever bytes it holds.
fn quoted(word: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(word.len() + 2);
    out.push(b'\'');
    for &byte in word {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    out
}

/// The server binary to run on nodes: this one, by the path it was started from (an
/// upgrade that replaced the file leaves the new one there, which reads the same run
/// directories).
pub fn this_binary() -> io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.as_os_str().as_bytes();
    Ok(match text.strip_suffix(b" (deleted)") {
        Some(kept) => PathBuf::from(OsStr::from_bytes(kept)),
        None => path,
    })
}

/// A job's state as its scheduler lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    /// Waiting, for this reason (the scheduler's words).
    Pending(String),
    /// Running on these nodes.
    Running(String),
    /// The scheduler will never start it as it is (Grid Engine's error state), for
    /// this reason: it is cancelled, and its client told why.
    Refused(String),
    /// Anything else (ending, suspended): nothing to say.
    Other,
}

/// One job a scheduler lists, by the name the executor gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub state: QueueState,
}

/// What [`Watch`] needs of a scheduler: its queue, and a way to stop a job.
#[tonic::async_trait]
pub trait Scheduler: Send + Sync + 'static {
    /// How notes name it ("Slurm", "Grid Engine").
    fn title(&self) -> &'static str;
    /// The jobs of `names` it holds now, in one query; `None` when the query failed
    /// (the state is unknown, not "gone").
    async fn list(&self, names: &[String]) -> Option<Vec<Listed>>;
    /// Stops job `name` (queued or running).
    async fn cancel(&self, name: &str);
}

/// Names per query: one call for many jobs, never an endless argv.
pub const NAMES_PER_QUERY: usize = 200;
/// How many polls in a row must miss a job before it counts as gone.
const ABSENT_POLLS: u32 = 2;

/// The jobs an executor submitted, looked up in the scheduler's queue, all in one
/// query, every poll interval: a waiting job's client is told the reason when it
/// changes, and where it started; a job missing from the queue twice has left it
/// ([`BatchJob::present`]); one the scheduler will never start is cancelled.
pub struct Watch<S: Scheduler> {
    scheduler: Arc<S>,
    interval: Duration,
    tracked: Mutex<HashMap<String, Tracked>>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<S: Scheduler> std::fmt::Debug for Watch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watch({} jobs)", self.tracked().len())
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// Where to tell that it waits and where it started; none once it started (or
    /// taken on after a restart: the queue is not news then).
    events: Option<Events>,
    /// The pending reason said last, if any.
    said: Option<String>,
    /// Polls in a row that did not list it.
    absent: u32,
    /// Polled at least once since it was tracked.
    polled: bool,
    /// Why the scheduler will never start it, once it said so.
    refused: Option<String>,
    /// Its run's directory, where its supervisor names the host it started on
    /// ([`crate::executor::supervisor::HOST_FILE`]): a job that started and ended between two polls
    /// is still said to have started, and where.
    run_dir: Option<PathBuf>,
    /// Its run ended: this directory goes once the scheduler no longer lists the job.
    remove_when_gone: Option<PathBuf>,
}

impl Tracked {
    /// A client told its job waited hears where it started, once its supervisor wrote
    /// the host down.
    fn tell_where_it_started(&mut self, title: &str) {
        if self.said.is_none() {
            return;
        }
        let host = self
            .run_dir
            .as_ref()
            .and_then(|dir| supervised::read_small(&dir.join(crate::executor::supervisor::HOST_FILE)))
            // A host name: told as one, never as whatever else the file holds.
            .map(|host| {
                host.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
                    .take(253)
                    .collect::<String>()
            })
            .filter(|host| !host.is_empty());
        // (The events are taken only once there is something to tell them.)
        if let Some(host) = host
            && let Some(events) = self.events.take()
        {
            let note = format!("{title} started the command on {host}");
            let _ = events.try_send(Ok(JobEvent::Dispatched(note)));
        }
    }
}

impl<S: Scheduler> Watch<S> {
    pub fn new(scheduler: Arc<S>, interval: Duration) -> Arc<Watch<S>> {
        Arc::new(Watch { scheduler, interval, tracked: Mutex::default(), poller: Mutex::default() })
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follows job `name` in the queue (its state told to `events`, if given), and
    /// starts the poller if it is not running (it ends with the watch); the job, as
    /// its run waits for it.
    pub fn track(self: &Arc<Self>, name: &str, events: Option<&Events>, run_dir: Option<&Path>) -> Arc<dyn BatchJob> {
        let tracked =
            Tracked { events: events.cloned(), run_dir: run_dir.map(Path::to_path_buf), ..Tracked::default() };
        self.tracked().insert(name.to_string(), tracked);
        let mut poller = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        if poller.as_ref().is_none_or(|task| task.is_finished()) {
            *poller = Some(tokio::spawn(poll(Arc::downgrade(self))));
        }
        Arc::new(WatchedJob { watch: Arc::downgrade(self), name: name.to_string() })
    }

    /// The run ended (a client told it waited that no poll saw it start hears where it
    /// ran now). Its directory, when given, is removed once the scheduler no longer
    /// lists the job: until then the scheduler may still write into it, and a job whose
    /// output file went fails on its way out (Grid Engine leaves it in `Eqw` for good).
    pub fn retire(&self, name: &str, dir: Option<PathBuf>) {
        let mut tracked = self.tracked();
        let Some(job) = tracked.get_mut(name) else {
            drop(tracked);
            if let Some(dir) = dir {
                remove_run_dir(dir);
            }
            return;
        };
        job.tell_where_it_started(self.scheduler.title());
        match dir {
            Some(dir) => {
                job.events = None;
                job.remove_when_gone = Some(dir);
            }
            None => drop(tracked.remove(name)),
        }
    }
}

/// Removes a run's directory off the async threads (a shared filesystem may be slow).
fn remove_run_dir(dir: PathBuf) {
    let remove = move || drop(std::fs::remove_dir_all(dir));
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

/// One tracked job, as its run sees it.
struct WatchedJob<S: Scheduler> {
    watch: Weak<Watch<S>>,
    name: String,
}

#[tonic::async_trait]
impl<S: Scheduler> BatchJob for WatchedJob<S> {
    fn present(&self) -> Option<bool> {
        let watch = self.watch.upgrade()?;
        let tracked = watch.tracked();
        let job = tracked.get(&self.name)?;
        job.polled.then_some(job.absent < ABSENT_POLLS)
    }

    fn refused(&self) -> Option<String> {
        self.watch.upgrade()?.tracked().get(&self.name)?.refused.clone()
    }

    async fn cancel(&self) {
        if let Some(watch) = self.watch.upgrade() {
            watch.scheduler.cancel(&self.name).await;
        }
    }
}

/// The poller of [`Watch`]; ends when the watch is gone.
async fn poll<S: Scheduler>(watch: Weak<Watch<S>>) {
    loop {
        let Some(interval) = watch.upgrade().map(|watch| watch.interval) else { return };
        tokio::time::sleep(interval).await;
        let Some(watch) = watch.upgrade() else { return };
        let names: Vec<String> = watch.tracked().keys().cloned().collect();
        for batch in names.chunks(NAMES_PER_QUERY) {
            let Some(listed) = watch.scheduler.list(batch).await else { continue };
            let title = watch.scheduler.title();
            let mut refused = Vec::new();
            {
                let mut tracked = watch.tracked();
                for name in batch {
                    if let Some(job) = tracked.get_mut(name) {
                        let seen = listed.iter().any(|job| &job.name == name);
                        job.absent = if seen { 0 } else { job.absent + 1 };
                        job.polled = true;
                        // Told it waited, not seen running, its supervisor started: where.
                        let running =
                            listed.iter().any(|j| &j.name == name && matches!(j.state, QueueState::Running(_)));
                        if !running {
                            job.tell_where_it_started(title);
                        }
                    }
                }
                for Listed { name, state } in &listed {
                    let Some(job) = tracked.get_mut(name) else { continue };
                    if let QueueState::Refused(why) = state {
                        if job.refused.is_none() {
                            job.refused = Some(why.clone());
                            refused.push(name.clone());
                        }
                        continue;
                    }
                    let Some(events) = job.events.clone() else { continue };
                    let event = match state {
                        QueueState::Pending(reason) => {
                            if job.said.as_ref() == Some(reason) {
                                continue;
                            }
                            job.said = Some(reason.clone());
                            JobEvent::Queued(format!(
                                "queued by {title} ({reason}): the command starts when a node is free"
                            ))
                        }
                        // Started: news no more; told only to a client that was told it waited.
                        QueueState::Running(node) => {
                            job.events = None;
                            match job.said {
                                Some(_) => JobEvent::Dispatched(format!("{title} started the command on {node}")),
                                None => continue,
                            }
                        }
                        _ => continue,
                    };
                    let _ = events.try_send(Ok(event));
                }
            }
            // Runs that ended, whose jobs have left the queue: their directories go.
            let gone: Vec<PathBuf> = {
                let mut tracked = watch.tracked();
                let names: Vec<String> = batch
                    .iter()
                    .filter(|name| {
                        tracked
                            .get(*name)
                            .is_some_and(|job| job.remove_when_gone.is_some() && job.absent >= ABSENT_POLLS)
                    })
                    .cloned()
                    .collect();
                names.iter().filter_map(|name| tracked.remove(name)?.remove_when_gone).collect()
            };
            gone.into_iter().for_each(remove_run_dir);
            for name in refused {
                watch.scheduler.cancel(&name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_job_started_is_told_once_as_a_host_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let (events, mut received) = mpsc::channel(4);
        let mut job = Tracked { events: Some(events), run_dir: Some(dir.path().to_path_buf()), ..Tracked::default() };
        // Not told it waited: nothing to say; told, but no host yet: the sender is kept.
        std::fs::write(dir.path().join(crate::executor::supervisor::HOST_FILE), "node7").unwrap();
        job.tell_where_it_started("Grid Engine");
        assert!(received.try_recv().is_err() && job.events.is_some());
        job.said = Some("qw".into());
        std::fs::remove_file(dir.path().join(crate::executor::supervisor::HOST_FILE)).unwrap();
        job.tell_where_it_started("Grid Engine");
        assert!(received.try_recv().is_err() && job.events.is_some());
        // A file a command rewrote says a host name and nothing else, bounded.
        let hostile = format!("n1\u{1b}[2J<script>{}", "x".repeat(100_000));
        std::fs::write(dir.path().join(crate::executor::supervisor::HOST_FILE), hostile).unwrap();
        job.tell_where_it_started("Grid Engine");
        let Ok(Ok(JobEvent::Dispatched(note))) = received.try_recv() else { panic!("a note") };
        assert!(note.starts_with("Grid Engine started the command on n12Jscriptxxx"), "{note}");
        assert!(note.len() < 300 && !note.contains('\u{1b}') && !note.contains('<'), "{note}");
        job.tell_where_it_started("Grid Engine");
        assert!(received.try_recv().is_err(), "told once");
    }

    /// A scheduler whose queue the test sets; `cancel` takes a job out of it.
    #[derive(Default)]
    struct FakeQueue {
        listed: Mutex<Vec<Listed>>,
        polls: std::sync::atomic::AtomicU32,
    }

    #[tonic::async_trait]
    impl Scheduler for FakeQueue {
        fn title(&self) -> &'static str {
            "Fake"
        }
        async fn list(&self, names: &[String]) -> Option<Vec<Listed>> {
            self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let listed = self.listed.lock().unwrap();
            Some(listed.iter().filter(|job| names.contains(&job.name)).cloned().collect())
        }
        async fn cancel(&self, name: &str) {
            self.listed.lock().unwrap().retain(|job| job.name != name);
        }
    }

    impl FakeQueue {
        fn set(&self, jobs: &[(&str, QueueState)]) {
            *self.listed.lock().unwrap() =
                jobs.iter().map(|(name, state)| Listed { name: name.to_string(), state: state.clone() }).collect();
        }

        /// Returns once the watch has asked `count` more times.
        async fn polled(&self, count: u32) {
            let until = self.polls.load(std::sync::atomic::Ordering::SeqCst) + count;
            while self.polls.load(std::sync::atomic::Ordering::SeqCst) < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    async fn gone(dir: &Path) {
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            assert!(std::time::Instant::now() < limit, "`{}` removed", dir.display());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // A run's directory outlives the run while its scheduler still has the job (Grid
    // Engine's shepherd writes a parallel environment's stop script's output into it
    // after the command ended: removed earlier, the job fails into `Eqw` for good).
    #[tokio::test]
    async fn an_ended_runs_directory_goes_only_once_its_job_left_the_queue() {
        let root = tempfile::tempdir().unwrap();
        let queue = Arc::new(FakeQueue::default());
        let watch = Watch::new(queue.clone(), Duration::from_millis(2));
        let (ending, failing) = (root.path().join("run-1"), root.path().join("run-2"));
        for dir in [&ending, &failing] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join(NODE_LOG), "").unwrap();
        }
        let _jobs = (watch.track("1", None, Some(&ending)), watch.track("2", None, Some(&failing)));
        queue.set(&[("1", QueueState::Other), ("2", QueueState::Other)]);
        watch.retire("1", Some(ending.clone()));
        watch.retire("2", Some(failing.clone()));
        queue.polled(5).await;
        assert!(ending.join(NODE_LOG).exists() && failing.join(NODE_LOG).exists(), "kept while the jobs are listed");
        // One leaves the queue; the other goes into an error state on its way out,
        // and is deleted as any refused job is.
        queue.set(&[("1", QueueState::Other), ("2", QueueState::Refused("can't open output file".into()))]);
        gone(&failing).await;
        assert!(ending.exists() && queue.listed.lock().unwrap().len() == 1, "the one still listed is kept");
        queue.set(&[]);
        gone(&ending).await;
        assert!(watch.tracked().is_empty(), "nothing is looked up any more");
        // A run that did not end keeps its directory (whoever looks into why, reads it).
        let lost = root.path().join("run-3");
        std::fs::create_dir(&lost).unwrap();
        let _job = watch.track("3", None, Some(&lost));
        queue.set(&[("3", QueueState::Other)]);
        queue.polled(2).await;
        watch.retire("3", None);
        assert!(lost.exists() && watch.tracked().is_empty(), "kept, and no longer looked up");
    }

    #[test]
    fn every_word_of_a_job_script_reaches_the_command_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let words = ["plain", "it's", "$HOME", "a b", "`id`", "\"q\"", "exit 3;", "*", ""];
        let launch = Launch {
            program: "/bin/echo".into(),
            args: words.iter().map(Into::into).collect(),
            env: Vec::new(),
            dir: dir.path().to_path_buf(),
            merged_output: false,
            progress_updates: false,
            confine: Default::default(),
            adoptable: false,
        };
        // A stand-in supervisor that prints its arguments one per line.
        let prepared = prepare(dir.path(), Path::new("/usr/bin/printf"), &launch).unwrap();
        let script = std::fs::read_to_string(prepared.script()).unwrap();
        let script = script.replace("'/usr/bin/printf'", "'/usr/bin/printf' '%s\\n'");
        let output = std::process::Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
        let printed = String::from_utf8(output.stdout).unwrap();
        let mut expected = vec![prepared.dir.to_string_lossy().into_owned(), "--".into(), "/bin/echo".into()];
        expected.extend(words.iter().map(|word| word.to_string()));
        assert_eq!(printed.lines().skip(1).collect::<Vec<_>>(), expected);
        assert!(prepared.dir.starts_with(dir.path().join(supervised::RUNS_DIR)));
    }
}
