//! Python environments shared between jobs with the same REPO_URL, so a repeated job
//! skips pip entirely. The key is the normalized mapping (items sorted, empties
//! dropped) plus the SHA-256 of every local file it names (a wheel uploaded with the
//! job), so a changed wheel gets a new environment; a mapping that names a local
//! directory is not cached. Concurrent jobs asking for the same environment wait for
//! one build; a failed or cancelled build is not kept. Past the size bound, the least
//! recently used environments nobody is using are removed.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::JobError;
use crate::execute::Requirement;

/// The directory under the job root that holds cached environments.
pub const CACHE_DIR_NAME: &str = "lrpymrpc-env-cache";

#[derive(Debug)]
pub struct EnvCache {
    dir: PathBuf,
    max_bytes: u64,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    path: PathBuf,
    /// `true` once built; holding the lock is the right to build.
    ready: tokio::sync::Mutex<bool>,
    bytes: AtomicU64,
    users: AtomicUsize,
    last_used: Mutex<Instant>,
}

/// Whether the environment was built for this job or found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Built,
    Reused,
}

/// A job's use of a cached environment; the environment is not evicted meanwhile.
#[derive(Debug)]
pub struct Lease {
    slot: Arc<Slot>,
}

impl Lease {
    pub fn path(&self) -> &Path {
        &self.slot.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut last_used) = self.slot.last_used.lock() {
            *last_used = Instant::now();
        }
        self.slot.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EnvCache {
    /// A fresh cache in `root/lrpymrpc-env-cache` (what an earlier run left is removed:
    /// nothing records what it was built from).
    pub fn new(root: &Path, max_bytes: u64) -> std::io::Result<EnvCache> {
        let dir = root.join(CACHE_DIR_NAME);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&dir)?,
            Ok(_) => std::fs::remove_file(&dir)?,
            Err(_) => {}
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
        Ok(EnvCache { dir, max_bytes, slots: Mutex::new(HashMap::new()) })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The environment for `key`, built by `build` (given the path to build at) if no
    /// job built it yet. `on_wait` is called once if another job is building it now.
    /// `build` returns `Ok(false)` when its job was cancelled.
    pub async fn acquire<B, Fut>(
        &self,
        key: &str,
        on_wait: impl FnOnce(),
        build: B,
    ) -> Result<Option<(Lease, Origin)>, JobError>
    where
        B: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<bool, JobError>>,
    {
        let slot = {
            let mut slots = self.slots();
            let slot = slots
                .entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        path: self.dir.join(key),
                        ready: tokio::sync::Mutex::new(false),
                        bytes: AtomicU64::new(0),
                        users: AtomicUsize::new(0),
                        last_used: Mutex::new(Instant::now()),
                    })
                })
                .clone();
            slot.users.fetch_add(1, Ordering::SeqCst);
            slot
        };
        let lease = Lease { slot: slot.clone() };
        let mut ready = match slot.ready.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                on_wait();
                slot.ready.lock().await
            }
        };
        if *ready {
            return Ok(Some((lease, Origin::Reused)));
        }
        let _ = std::fs::remove_dir_all(&slot.path);
        match build(slot.path.clone()).await {
            Ok(true) => {
                *ready = true;
                slot.bytes.store(tree_bytes(&slot.path), Ordering::SeqCst);
                drop(ready);
                self.evict(key);
                Ok(Some((lease, Origin::Built)))
            }
            outcome => {
                let _ = std::fs::remove_dir_all(&slot.path);
                outcome.map(|_| None)
            }
        }
    }

    /// Removes least recently used, unused environments (never `keep`) while the
    /// cache is larger than its bound.
    fn evict(&self, keep: &str) {
        let mut slots = self.slots();
        let mut total: u64 = slots.values().map(|s| s.bytes.load(Ordering::SeqCst)).sum();
        while total > self.max_bytes {
            let oldest = slots
                .iter()
                .filter(|(key, slot)| key.as_str() != keep && slot.users.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, slot)| slot.last_used.lock().map(|t| *t).unwrap_or_else(|_| Instant::now()))
                .map(|(key, _)| key.clone());
            let Some(key) = oldest else { break };
            if let Some(slot) = slots.remove(&key) {
                total = total.saturating_sub(slot.bytes.load(Ordering::SeqCst));
                let _ = std::fs::remove_dir_all(&slot.path);
            }
        }
    }

    /// Environments kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots().len()
    }
}

/// The cache key of a REPO_URL mapping for a job, or `None` when it cannot be cached
/// (it names a local directory, whose contents are not hashed).
pub fn cache_key(requirements: &[Requirement], job_dir: &Path) -> Option<String> {
    let mut items: Vec<String> = Vec::new();
    for requirement in requirements {
        let mut item = format!("{}={}", requirement.name, requirement.url);
        let local = job_dir.join(&requirement.url);
        if !requirement.url.contains("://") {
            match std::fs::metadata(&local) {
                Ok(meta) if meta.is_dir() => return None,
                Ok(_) => item.push_str(&format!(" sha256:{}", hex(&file_sha256(&local).ok()?))),
                Err(_) => {}
            }
        }
        items.push(item);
    }
    items.sort();
    items.dedup();
    let digest = ring::digest::digest(&ring::digest::SHA256, items.join("\n").as_bytes());
    Some(hex(&digest.as_ref()[..16]))
}

fn file_sha256(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(context.finish().as_ref().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of regular files below `dir`, not following links.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(name: &str, url: &str) -> Requirement {
        Requirement { name: name.into(), url: url.into() }
    }

    #[test]
    fn keys_ignore_order_and_follow_local_file_contents() {
        let job = tempfile::tempdir().unwrap();
        let a = [requirement("numpy", "numpy"), requirement("tool", "./tool.whl")];
        let b = [requirement("tool", "./tool.whl"), requirement("numpy", "numpy")];
        std::fs::write(job.path().join("tool.whl"), "v1").unwrap();
        let first = cache_key(&a, job.path()).unwrap();
        assert_eq!(first, cache_key(&b, job.path()).unwrap());
        std::fs::write(job.path().join("tool.whl"), "v2").unwrap();
        assert_ne!(first, cache_key(&a, job.path()).unwrap(), "a changed wheel is another environment");
        std::fs::create_dir(job.path().join("src")).unwrap();
        assert_eq!(cache_key(&[requirement("src", "./src")], job.path()), None);
    }

    #[tokio::test]
    async fn one_build_is_shared_a_failed_one_is_not_kept_and_old_ones_are_evicted() {
        let root = tempfile::tempdir().unwrap();
        let cache = EnvCache::new(root.path(), 10).unwrap();
        let build = |path: PathBuf| async move {
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("lib"), "12345678").unwrap();
            Ok(true)
        };
        let (lease, origin) = cache.acquire("a", || {}, build).await.unwrap().unwrap();
        assert_eq!(origin, Origin::Built);
        let (again, origin) =
            cache.acquire("a", || {}, |_| async { panic!("no second build") }).await.unwrap().unwrap();
        assert_eq!((origin, again.path()), (Origin::Reused, lease.path()));
        drop((lease, again));

        let failed = cache.acquire("b", || {}, |_| async { Err(JobError::NoPython) }).await;
        assert!(failed.is_err());
        let (b, origin) = cache.acquire("b", || {}, build).await.unwrap().unwrap();
        assert_eq!(origin, Origin::Built, "a failed build is built again");
        assert!(!root.path().join(CACHE_DIR_NAME).join("a").exists(), "8 + 8 bytes > 10: the older one went");
        assert_eq!(cache.len(), 1);
        drop(b);
    }
}
