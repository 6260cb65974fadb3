//! What the user typed when a durable job started (RESULT, RUN_NAME, `--results-dir`),
//! kept on this machine by job id, so that `lrpymrpc attach` fetches what the user
//! asked for, never what a server's list says: a hostile server naming `Makefile` or
//! `.git/hooks/pre-commit` as results gets nothing written. One small file a job under
//! `$XDG_STATE_HOME/lrpymrpc/jobs/` (else `~/.local/state/lrpymrpc/jobs/`), mode 0600,
//! the `AttachInfo` message's own encoding; removed when the job's results are
//! fetched, and any older than [`KEEP`] removed whenever one is written.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use lrpymrpc_proto::AttachInfo;
use prost::Message;

/// How long a record of a job never attached is kept (a server forgets its jobs far
/// sooner: `--job-ttl`).
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest record read back (a record is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The folder of the records; `None` with no home to put it in.
fn dir() -> Option<PathBuf> {
    crate::cli::dirs::state_file("jobs")
}

/// The record's file for job `id`; `None` for an id that is no plain name (ids come
/// from a server: one with `/` or `..` must not name another file).
fn path(id: &str) -> Option<PathBuf> {
    let plain = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    plain.then(|| dir().map(|dir| dir.join(id))).flatten()
}

/// Keeps what the user typed for job `id`. Failing to keep it costs only the
/// convenience: `attach` then asks for `--fetch`.
pub fn remember(id: &str, typed: &AttachInfo) -> std::io::Result<()> {
    let (Some(path), Some(dir)) = (path(id), dir()) else { return Ok(()) };
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&dir)?;
    prune(&dir);
    // A temporary file is created 0600; renamed into place whole.
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    file.write_all(&typed.encode_to_vec())?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What the user typed for job `id`, when this machine kept it.
pub fn recall(id: &str) -> Option<AttachInfo> {
    use std::io::Read;
    let file = std::fs::File::open(path(id)?).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES).read_to_end(&mut bytes).ok()?;
    AttachInfo::decode(bytes.as_slice()).ok()
}

/// The job's results were fetched: its record goes.
pub fn forget(id: &str) {
    if let Some(path) = path(id) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes records older than [`KEEP`].
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let old = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|at| at.elapsed().ok());
        if old.is_some_and(|age| age > KEEP) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_no_plain_name_name_no_file() {
        for id in ["", "../x", "a/b", ".", "..", &"a".repeat(65), "a b"] {
            assert!(path(id).is_none(), "{id:?}");
        }
    }
}
