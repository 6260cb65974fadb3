//! Python environments shared between jobs with the same REPO_URL, so a repeated job
//! skips pip entirely. What an environment is built from is pinned before it is
//! shared: [`pin`] accepts only index requirements (`numpy`, `numpy[x]>=2`), remote
//! URLs (`git+https://...@tag`) and plain relative paths of regular files in the job
//! directory (an uploaded wheel), which it copies once into server-owned storage,
//! hashing the copy; pip then installs from that copy, so what is installed is exactly
//! what was hashed, whatever the job does to its own files meanwhile. Anything else
//! (extras or markers on a local file, `file:` URLs, directories, absolute paths,
//! devices, FIFOs) is never shared: the job gets an environment of its own. The key is
//! the caller's CN (unless the administrator shares across CNs), the normalized mapping
//! and the SHA-256 of every pinned file. Concurrent jobs asking for the same
//! environment wait for one build; a failed or cancelled build is not kept. Past the
//! size bound, the least recently used environments nobody is using are removed.
//!
//! A built environment is recorded beside it (`KEY.built`: the Python that made it and
//! what pip installed, each distribution's `RECORD` of file hashes, as a fingerprint),
//! so it outlives a restart of the server: at start, environments whose record names
//! this server's Python are kept, anything else there is removed. The fingerprint is
//! how the action cache names the environment a run used.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use lrpymrpc_units::hex;

use crate::error::JobError;
use crate::execute::repo_url::Requirement;

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
    key: String,
    path: PathBuf,
    /// What pip installed: the fingerprint of every distribution's `RECORD`, once built.
    installed: Mutex<String>,
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

    /// The environment as installed: its key (the pinned REPO_URL) and the fingerprint
    /// of what pip put in it.
    pub fn identity(&self) -> String {
        let installed = self.slot.installed.lock().map(|text| text.clone()).unwrap_or_default();
        format!("{}+installed:{installed}", self.slot.key)
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
    /// The cache in `root/lrpymrpc-env-cache`, with the environments an earlier run
    /// built and recorded as made by `python` (this server's, when there is one); what
    /// else is there (a build cut short, another Python's, a stray file) is removed.
    pub fn new(root: &Path, max_bytes: u64, python: Option<&str>) -> std::io::Result<EnvCache> {
        let dir = root.join(CACHE_DIR_NAME);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => std::fs::remove_file(&dir)?,
            Err(_) => std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?,
        }
        let cache = EnvCache { dir, max_bytes, slots: Mutex::new(HashMap::new()) };
        cache.keep_recorded(python)?;
        Ok(cache)
    }

    /// Takes in the recorded environments `python` made; removes everything else.
    fn keep_recorded(&self, python: Option<&str>) -> std::io::Result<()> {
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(BUILT_SUFFIX) else { continue };
            let record = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let env = self.dir.join(key);
            let usable = is_key(key)
                && python.is_some_and(|python| record_field(&record, "python") == Some(python))
                && std::fs::symlink_metadata(&env).is_ok_and(|meta| meta.is_dir());
            match (usable, record_field(&record, "installed")) {
                (true, Some(installed)) => kept.push((key.to_string(), installed.to_string())),
                _ => std::fs::remove_file(entry.path())?,
            }
        }
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let recorded = name.strip_suffix(BUILT_SUFFIX).unwrap_or(&name);
            if kept.iter().any(|(key, _)| key == recorded) {
                continue;
            }
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(entry.path())?,
                _ => std::fs::remove_file(entry.path())?,
            }
        }
        if !kept.is_empty() {
            tracing::info!(kept = kept.len(), "Python environments built before the restart are kept");
        }
        let mut slots = self.slots();
        for (key, installed) in kept {
            let slot = self.slot(&key, true);
            slot.bytes.store(tree_bytes(&slot.path), Ordering::SeqCst);
            *slot.installed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = installed;
            slots.insert(key, Arc::new(slot));
        }
        Ok(())
    }

    fn slot(&self, key: &str, ready: bool) -> Slot {
        Slot {
            key: key.to_string(),
            path: self.dir.join(key),
            installed: Mutex::new(String::new()),
            ready: tokio::sync::Mutex::new(ready),
            bytes: AtomicU64::new(0),
            users: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Where the record of the environment `key` goes.
    fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{BUILT_SUFFIX}"))
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
            let slot = slots.entry(key.to_string()).or_insert_with(|| Arc::new(self.slot(key, false))).clone();
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
        let _ = std::fs::remove_file(self.record_path(key));
        remove_tree(slot.path.clone()).await;
        match build(slot.path.clone()).await {
            Ok(true) => {
                let (path, record) = (slot.path.clone(), self.record_path(key));
                let python = crate::execute::python::python().map(|python| python.identity()).unwrap_or_default();
                let (bytes, installed) = tokio::task::spawn_blocking(move || {
                    let installed = installed_fingerprint(&path);
                    // Kept for the next start only once it is complete (written, then renamed).
                    let _ = write_record(&record, &format!("python {python}\ninstalled {installed}\n"));
                    (tree_bytes(&path), installed)
                })
                .await
                .unwrap_or_default();
                slot.bytes.store(bytes, Ordering::SeqCst);
                *slot.installed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = installed;
                *ready = true;
                drop(ready);
                for path in self.evict(key) {
                    remove_tree(path).await;
                }
                Ok(Some((lease, Origin::Built)))
            }
            outcome => {
                remove_tree(slot.path.clone()).await;
                outcome.map(|_| None)
            }
        }
    }

    /// Forgets least recently used, unused environments (never `keep`) while the cache
    /// is larger than its bound; returns their directories for the caller to remove.
    fn evict(&self, keep: &str) -> Vec<PathBuf> {
        let mut removed = Vec::new();
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
                let _ = std::fs::remove_file(self.record_path(&key));
                removed.push(slot.path.clone());
            }
        }
        removed
    }

    /// Where [`pin`] copies a job's local files.
    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join(INCOMING_DIR_NAME)
    }

    /// Environments kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots().len()
    }
}

/// The record of a built environment: `KEY.built` beside `KEY/`.
const BUILT_SUFFIX: &str = ".built";

/// A key as [`pin`] makes them (hex), not a name a stray file could have.
fn is_key(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The value of `field` in a record (`field value` lines).
fn record_field<'a>(record: &'a str, field: &str) -> Option<&'a str> {
    record.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(' '))
}

fn write_record(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// What pip installed in the environment at `venv`: each distribution's `RECORD` (its
/// name, version and the hash of every file it installed), in name order, hashed.
pub fn installed_fingerprint(venv: &Path) -> String {
    let mut records = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(pythons) = std::fs::read_dir(venv.join(lib)) else { continue };
        // `lib64` is a link to `lib` in most environments: read what is there once.
        if std::fs::symlink_metadata(venv.join(lib)).is_ok_and(|meta| meta.file_type().is_symlink()) {
            continue;
        }
        for python in pythons.flatten() {
            let Ok(packages) = std::fs::read_dir(python.path().join("site-packages")) else { continue };
            for package in packages.flatten() {
                let name = package.file_name().to_string_lossy().into_owned();
                if name.ends_with(".dist-info") {
                    let record = std::fs::read(package.path().join("RECORD")).unwrap_or_default();
                    records.push((name, record));
                }
            }
        }
    }
    records.sort();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, record) in &records {
        context.update(name.as_bytes());
        context.update(b"\n");
        context.update(&(record.len() as u64).to_le_bytes());
        context.update(record);
    }
    hex(&context.finish().as_ref()[..16])
}

/// The directory below the cache where pinned files wait for pip.
const INCOMING_DIR_NAME: &str = ".incoming";

/// The largest local file a REPO_URL may name for a shared environment.
pub const MAX_PINNED_FILE_BYTES: u64 = 2 << 30;

/// A REPO_URL mapping made safe to share: its key, and the requirements pip installs
/// (local files replaced by the server's own copies, which stay until this drops).
#[derive(Debug)]
pub struct Pinned {
    pub key: String,
    pub requirements: Vec<Requirement>,
    /// The copies' directory, readable by pip; removed on drop.
    pub copies: Option<PathBuf>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let Some(copies) = self.copies.take() else { return };
        // A wheel can be large: removed off the async threads when there are some.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || std::fs::remove_dir_all(copies))),
            Err(_) => {
                let _ = std::fs::remove_dir_all(copies);
            }
        }
    }
}

/// Pins `requirements` of the job in `job_dir` for the cache whose copies go below
/// `incoming` (see the module docs); `None` when the mapping cannot be shared.
/// Blocking: call it off the async threads.
pub fn pin(
    requirements: &[Requirement],
    job_dir: &Path,
    incoming: &Path,
    scope: &str,
) -> std::io::Result<Option<Pinned>> {
    let mut pinned = Pinned { key: String::new(), requirements: Vec::new(), copies: None };
    let mut items = vec![format!("scope={scope}")];
    for requirement in requirements {
        let url = requirement.url.as_str();
        if is_index_requirement(url) || is_remote_url(url) {
            items.push(format!("{}={url}", requirement.name));
            pinned.requirements.push(requirement.clone());
            continue;
        }
        let Some(file) = open_job_file(job_dir, url) else { return Ok(None) };
        let copies = match &pinned.copies {
            Some(copies) => copies.clone(),
            None => {
                std::fs::create_dir_all(incoming)?;
                let copies = incoming.join(uuid::Uuid::new_v4().to_string());
                std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&copies)?;
                pinned.copies = Some(copies.clone());
                copies
            }
        };
        let base = Path::new(url).file_name().unwrap_or_default();
        let copy = copies.join(items.len().to_string()).join(base);
        std::fs::create_dir(copy.parent().unwrap_or(&copies))?;
        let digest = copy_hashing(file, &copy)?;
        items.push(format!("{}=sha256:{}/{}", requirement.name, hex(&digest), base.to_string_lossy()));
        pinned.requirements.push(Requirement { name: requirement.name.clone(), url: copy.display().to_string() });
    }
    items[1..].sort();
    items.dedup();
    let digest = ring::digest::digest(&ring::digest::SHA256, items.join("\n").as_bytes());
    pinned.key = hex(&digest.as_ref()[..16]);
    Ok(Some(pinned))
}

/// `numpy`, `numpy[extra]>=2.0,<3`: a name pip looks up in its index, never a path.
fn is_index_requirement(url: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-[],<>=!~* ".contains(c);
    let first_ok = url.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok && url.chars().all(allowed) && !looks_like_archive(url)
}

/// A remote URL pip fetches itself; the same string means the same thing for everyone.
fn is_remote_url(url: &str) -> bool {
    const SCHEMES: &[&str] = &["https://", "http://", "git+https://", "git+http://", "git+ssh://"];
    SCHEMES.iter().any(|scheme| url.starts_with(scheme)) && !url.chars().any(char::is_whitespace)
}

/// A name pip would take for a file when it exists.
fn looks_like_archive(url: &str) -> bool {
    const SUFFIXES: &[&str] = &[".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz"];
    let lower = url.to_ascii_lowercase();
    SUFFIXES.iter().any(|suffix| lower.split(['[', ';', ' ']).next().is_some_and(|base| base.ends_with(suffix)))
}

/// `url` opened as a regular file below `job_dir`, reached without following a link,
/// within the size limit; `None` for anything else. Never blocks on a FIFO or device.
fn open_job_file(job_dir: &Path, url: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let rel = lrpymrpc_archive::sanitize_relative(url.as_bytes()).ok()?;
    let path = lrpymrpc_archive::find_below(job_dir, &rel).ok()??;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.len() <= MAX_PINNED_FILE_BYTES).then_some(file)
}

/// Copies `file` to `to` (created new, read-only) and returns the SHA-256 of the bytes
/// written, which are the bytes pip will read.
fn copy_hashing(file: std::fs::File, to: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(to)?;
    let mut input = file.take(MAX_PINNED_FILE_BYTES);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
        out.write_all(&buffer[..read])?;
    }
    Ok(context.finish().as_ref().to_vec())
}

/// Removes a directory tree off the async threads.
async fn remove_tree(path: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
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
    fn keys_ignore_order_follow_local_file_contents_and_separate_cns() {
        let job = tempfile::tempdir().unwrap();
        let incoming = job.path().join("incoming");
        let key = |requirements: &[Requirement], scope: &str| {
            pin(requirements, job.path(), &incoming, scope).unwrap().map(|pinned| pinned.key.clone())
        };
        let a = [requirement("numpy", "numpy>=2"), requirement("tool", "./tool.whl")];
        let b = [requirement("tool", "./tool.whl"), requirement("numpy", "numpy>=2")];
        std::fs::write(job.path().join("tool.whl"), "v1").unwrap();
        let first = key(&a, "alice").unwrap();
        assert_eq!(first, key(&b, "alice").unwrap());
        assert_ne!(first, key(&a, "bob").unwrap(), "another CN, another environment");
        std::fs::write(job.path().join("tool.whl"), "v2").unwrap();
        assert_ne!(first, key(&a, "alice").unwrap(), "a changed wheel is another environment");
        assert!(!incoming.exists() || std::fs::read_dir(&incoming).unwrap().next().is_none(), "copies removed");
    }

    #[test]
    fn what_cannot_be_pinned_is_never_shared() {
        let job = tempfile::tempdir().unwrap();
        let incoming = job.path().join("incoming");
        std::fs::write(job.path().join("x.whl"), "wheel").unwrap();
        std::fs::create_dir(job.path().join("src")).unwrap();
        std::os::unix::fs::symlink(job.path().join("x.whl"), job.path().join("link.whl")).unwrap();
        for url in [
            "./x.whl[cli]",
            "./x.whl;python_version>'0'",
            "x.whl ; python_version>'0'",
            "file:x.whl",
            "file:///etc/passwd",
            "./src",
            "/dev/zero",
            "link.whl",
            "missing.whl",
            "name @ file:///x.whl",
            "git+file:///x",
        ] {
            let pinned = pin(&[requirement("x", url)], job.path(), &incoming, "alice").unwrap();
            assert!(pinned.is_none(), "{url} was shared");
        }
        assert!(pin(&[requirement("x", "x.whl")], job.path(), &incoming, "alice").unwrap().is_some());
        assert!(pin(&[requirement("c", "git+https://h/c@v1")], job.path(), &incoming, "a").unwrap().is_some());
    }

    #[test]
    fn pip_installs_the_copy_that_was_hashed() {
        let job = tempfile::tempdir().unwrap();
        let incoming = job.path().join("incoming");
        std::fs::write(job.path().join("x.whl"), "hashed").unwrap();
        let pinned = pin(&[requirement("x", "./x.whl")], job.path(), &incoming, "alice").unwrap().unwrap();
        std::fs::write(job.path().join("x.whl"), "swapped after hashing").unwrap();
        let copy = Path::new(&pinned.requirements[0].url);
        assert!(copy.starts_with(&incoming) && copy.ends_with("x.whl"), "{}", copy.display());
        assert_eq!(std::fs::read(copy).unwrap(), b"hashed");
        let copies = pinned.copies.clone().unwrap();
        drop(pinned);
        assert!(!copies.exists());
    }

    #[tokio::test]
    async fn one_build_is_shared_a_failed_one_is_not_kept_and_old_ones_are_evicted() {
        let root = tempfile::tempdir().unwrap();
        let cache = EnvCache::new(root.path(), 10, Some("python-a")).unwrap();
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
