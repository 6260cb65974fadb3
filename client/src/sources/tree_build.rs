//! The content-addressed input tree is built on a blocking thread that starts as soon
//! as the sources are chosen, so that walking and hashing them overlaps with
//! connecting (the TLS handshake, the capabilities call: two round trips or more to a
//! distant server). The upload takes the tree when it gets there, or builds it then.
//! A server that takes no trees stops the early build within one read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lrpymrpc_archive::{Candidate, PackError, PackRoot};
use lrpymrpc_cas::{InputTree, StatCache, build_tree};

use crate::exit::ClientError;
use crate::job::Job;
use crate::output::Progress;
use crate::sources::SourceRules;

/// A tree finished longer ago than this is built again before it is used: the client
/// may have waited for a slot meanwhile, and the sources may have changed since (the
/// stat cache makes the second build cheap).
const FRESH_FOR: Duration = Duration::from_secs(2);

/// A tree build started before the upload (or none, with `--no-cas`).
#[derive(Default)]
pub struct EarlyTree {
    build: Mutex<Option<TreeBuild>>,
    stop: Arc<AtomicBool>,
}

impl EarlyTree {
    /// Starts building the tree of `roots`, unless the job sends a tar.gz anyway.
    pub fn start(job: &Job, roots: &[PackRoot]) -> EarlyTree {
        let early = EarlyTree::default();
        if !job.no_cas {
            let build = TreeBuild::start(job.rules.clone(), roots.to_vec(), early.stop.clone());
            *early.build.lock().unwrap_or_else(|p| p.into_inner()) = Some(build);
        }
        early
    }

    /// The server takes no trees: the build ends at its next read.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The early build, if there is one, nobody took it yet and it was not stopped (a
    /// legacy server of a list was tried first: the next server builds anew).
    pub(crate) fn take(&self) -> Option<TreeBuild> {
        let build = self.build.lock().unwrap_or_else(|p| p.into_inner()).take();
        build.filter(|_| !self.stop.load(Ordering::Relaxed))
    }
}

impl Drop for EarlyTree {
    /// A job that ends before its upload leaves no thread hashing behind it.
    fn drop(&mut self) {
        self.stop();
    }
}

/// One build of the tree on a blocking thread.
pub(crate) struct TreeBuild {
    handle: tokio::task::JoinHandle<Built>,
    /// Bytes read to be hashed so far, for the progress bar.
    read: Arc<AtomicU64>,
}

/// What a build made: the tree and the stat cache that knows its files (saved only
/// once the tree is used: a build for a server that takes no trees leaves no file),
/// how long it took and when it ended.
pub(crate) struct Built {
    pub result: Result<(InputTree, StatCache), PackError>,
    pub took: Duration,
    pub finished: Instant,
}

impl Built {
    /// Whether the build ended long enough ago that the sources may have changed.
    pub(crate) fn is_stale(&self) -> bool {
        self.finished.elapsed() > FRESH_FOR
    }
}

impl TreeBuild {
    pub(crate) fn start(rules: Arc<SourceRules>, roots: Vec<PackRoot>, stop: Arc<AtomicBool>) -> TreeBuild {
        let read = Arc::new(AtomicU64::new(0));
        let counted = read.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let keep = |candidate: &Candidate<'_>| rules.keeps(candidate);
            let on_read = |bytes: u64| {
                counted.fetch_add(bytes, Ordering::Relaxed);
            };
            let mut cache =
                crate::cli::dirs::cache_file("stat-cache").as_deref().map(StatCache::load).unwrap_or_default();
            let result = build_tree(&roots, &keep, &on_read, &mut cache, &stop).map(|tree| (tree, cache));
            Built { result, took: started.elapsed(), finished: Instant::now() }
        });
        TreeBuild { handle, read }
    }

    /// Waits for the build, showing what it reads on `progress`.
    pub(crate) async fn finish(mut self, progress: &Progress) -> Result<Built, ClientError> {
        let mut shown = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                joined = &mut self.handle => {
                    return joined.map_err(|e| ClientError::local(format!("hashing task failed: {e}")));
                }
                _ = tick.tick() => {
                    let read = self.read.load(Ordering::Relaxed);
                    progress.add_bytes(read - shown);
                    shown = read;
                }
            }
        }
    }
}
