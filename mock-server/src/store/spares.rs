//! Warm trees: once a job is made from the content store, a spare copy of its tree is
//! made in the background (one per CN, at most `--cas-spare-trees` in all), so that the
//! CN's next job from the same tree, or from one that differs in a few files, is the
//! spare renamed into place and patched by what changed (`lrpymrpc_cas::patch`). The
//! copy still happens, but while the client is busy with the job before, not while it
//! waits for a job id.
//!
//! A spare is the server's alone until it is given away: it lives in the store's
//! directory (never a job's), nothing writes to it after it is made, it is given to a
//! job of the CN whose tree it copies and to no other, and it is given once.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use lrpymrpc_cas::Plan;

/// Trees with more files than this get no spare: its plan is held in memory.
const MAX_SPARE_FILES: usize = 200_000;

#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    max_trees: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_cn: HashMap<String, Spare>,
    clock: u64,
    serial: u64,
}

/// One spare tree: where it is, what it holds, and whether it is made yet.
#[derive(Debug)]
pub struct Spare {
    pub plan: Arc<Plan>,
    pub path: PathBuf,
    made: Arc<Made>,
    last_made: u64,
}

/// Set once by the thread making a spare: `Some(true)` made, `Some(false)` failed.
#[derive(Debug, Default)]
pub struct Made {
    outcome: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Made {
    pub fn set(&self, made: bool) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(made);
        self.changed.notify_all();
    }

    /// Waits until the spare is made or has failed; true if it is whole.
    fn wait(&self) -> bool {
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(made) = *outcome {
                return made;
            }
            outcome = self.changed.wait(outcome).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Spare {
    /// Waits for the spare to be made (taking a half-made one is still cheaper than a
    /// fresh copy); true if it is whole and may be used.
    pub fn wait(&self) -> bool {
        self.made.wait()
    }

    /// Removes the spare's files once its maker is done with them.
    pub fn discard(self) {
        self.made.wait();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Spares {
    /// Spares live in `store_dir/spares`; what an earlier run left there is removed.
    pub fn new(store_dir: &Path, max_trees: usize) -> std::io::Result<Spares> {
        let dir = store_dir.join("spares");
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Spares { dir, max_trees, inner: Mutex::new(Inner::default()) })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `cn`'s spare, made or still being made; nobody else can take it after.
    pub fn take(&self, cn: &str) -> Option<Spare> {
        self.inner().by_cn.remove(cn)
    }

    /// The checked plan of `cn`'s spare when it copies the tree named `root`: that tree
    /// was checked, and found present for `cn`, when the spare was made from it.
    pub fn plan_of(&self, cn: &str, root: &str) -> Option<Arc<Plan>> {
        self.inner().by_cn.get(cn).filter(|spare| spare.plan.root == root).map(|spare| spare.plan.clone())
    }

    /// Registers a spare of `plan` for `cn` to be made at the returned path (a new,
    /// empty directory, mode 0700), replacing `cn`'s old one and, beyond the bound,
    /// the least recently made of another CN; the caller copies the tree there and
    /// says how that went with [`Made::set`]. `None` when no spare should be made.
    /// The spares it replaces come back too, for the caller to [`Spare::discard`] off
    /// the async threads (that may wait for their makers).
    pub fn reserve(&self, cn: &str, plan: Arc<Plan>) -> Option<(PathBuf, Arc<Made>, Vec<Spare>)> {
        if self.max_trees == 0 || plan.files.len() > MAX_SPARE_FILES {
            return None;
        }
        let made = Arc::new(Made::default());
        let mut dropped = Vec::new();
        let path = {
            let mut inner = self.inner();
            inner.clock += 1;
            inner.serial += 1;
            let path = self.dir.join(format!("spare-{}-{}", std::process::id(), inner.serial));
            if let Err(error) = std::fs::DirBuilder::new().mode(0o700).create(&path) {
                tracing::warn!(path = %path.display(), error = %error, "cannot make a spare tree");
                return None;
            }
            let spare = Spare { plan, path: path.clone(), made: made.clone(), last_made: inner.clock };
            dropped.extend(inner.by_cn.insert(cn.to_string(), spare));
            while inner.by_cn.len() > self.max_trees {
                let oldest = inner.by_cn.iter().min_by_key(|(_, spare)| spare.last_made).map(|(cn, _)| cn.clone());
                dropped.extend(oldest.and_then(|cn| inner.by_cn.remove(&cn)));
            }
            path
        };
        Some((path, made, dropped))
    }

    /// Removes every spare (at shutdown), waiting for those still being made.
    pub fn clear(&self) {
        let all: Vec<Spare> = self.inner().by_cn.drain().map(|(_, spare)| spare).collect();
        all.into_iter().for_each(Spare::discard);
    }

    /// How many spares there are, made or being made.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner().by_cn.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Arc<Plan> {
        Arc::new(Plan::default())
    }

    #[test]
    fn one_spare_per_cn_and_the_oldest_goes_beyond_the_bound() {
        let store = tempfile::tempdir().unwrap();
        let spares = Spares::new(store.path(), 2).unwrap();
        let reserve = |cn: &str| {
            let (path, made, dropped) = spares.reserve(cn, plan()).unwrap();
            made.set(true);
            dropped.into_iter().for_each(Spare::discard);
            path
        };
        let first = reserve("alice");
        let second = reserve("alice");
        assert!(!first.exists() && second.is_dir(), "alice's older spare is removed");
        reserve("bob");
        reserve("carol");
        assert_eq!(spares.len(), 2);
        assert!(!second.exists() && spares.take("alice").is_none(), "the least recently made went");
        assert!(spares.take("eve").is_none(), "a CN without a spare gets none");
        let bob = spares.take("bob").unwrap();
        assert!(bob.wait() && bob.path.is_dir());
        assert!(spares.take("bob").is_none(), "a spare is given once");
        spares.clear();
        assert_eq!(std::fs::read_dir(store.path().join("spares")).unwrap().count(), 1, "only bob's, taken, is left");
    }

    #[test]
    fn a_failed_spare_is_not_used_and_none_are_made_when_turned_off() {
        let store = tempfile::tempdir().unwrap();
        let spares = Spares::new(store.path(), 1).unwrap();
        let (_, made, _) = spares.reserve("alice", plan()).unwrap();
        let maker = std::thread::spawn(move || made.set(false));
        assert!(!spares.take("alice").unwrap().wait());
        maker.join().unwrap();
        assert!(Spares::new(store.path(), 0).unwrap().reserve("alice", plan()).is_none());
    }
}
