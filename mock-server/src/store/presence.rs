//! Which CN sent which blob, kept on disk beside the store: presence is answered per CN
//! (no user learns whether another has a file), and without this a restarted server
//! would make every client send all its files again although the bytes are still
//! stored. One append-only file per CN under `ROOT/lrpymrpc-cas/presence/`, named by
//! the SHA-256 of the CN, its first line the CN in hex, then one blob hash a line. At
//! start the files are read, kept only for blobs still stored, and rewritten compact.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lrpymrpc_cas::{digest_of, is_valid_hash};

const HEADER: &str = "lrpymrpc-presence 1";

/// Presence files kept open at once (the most recently written); a CN beyond them has
/// its file opened again when it next sends a blob. Many CNs cannot take descriptors.
const MAX_OPEN: usize = 16;

/// The per-CN presence files.
#[derive(Debug)]
pub struct PresenceLog {
    dir: PathBuf,
    /// Open files to append to, by CN, with when each was last written (at most
    /// [`MAX_OPEN`]).
    open: Mutex<HashMap<String, (File, u64)>>,
}

impl PresenceLog {
    /// Reads every CN's file under `store_dir`; returns the log and, per CN, the blobs
    /// it sent that `stored` says are still there (the files are rewritten with just
    /// those). An unreadable or foreign file is skipped.
    pub fn open(
        store_dir: &Path,
        stored: impl Fn(&str) -> bool,
    ) -> std::io::Result<(PresenceLog, HashMap<String, HashSet<String>>)> {
        let dir = store_dir.join("presence");
        std::fs::create_dir_all(&dir)?;
        let mut present: HashMap<String, HashSet<String>> = HashMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            let mut lines = text.lines();
            let Some(cn) =
                lines.next().and_then(|header| header.strip_prefix(HEADER)).and_then(|rest| unhex(rest.trim()))
            else {
                continue;
            };
            if entry.file_name().to_string_lossy() != file_name(&cn) {
                continue;
            }
            let sent = present.entry(cn).or_default();
            sent.extend(lines.filter(|hash| is_valid_hash(hash) && stored(hash)).map(str::to_string));
        }
        let log = PresenceLog { dir, open: Mutex::default() };
        for (cn, sent) in &present {
            if let Err(error) = log.rewrite(cn, sent) {
                tracing::warn!(%error, "cannot rewrite a presence file; it is read again at the next start");
            }
        }
        Ok((log, present))
    }

    /// Notes that `cn` sent blob `hash`. A failure only costs a resend after a
    /// restart: it is logged, not returned.
    pub fn record(&self, cn: &str, hash: &str) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = open.values().map(|(_, used)| *used).max().unwrap_or(0) + 1;
        if !open.contains_key(cn) && open.len() >= MAX_OPEN {
            let oldest = open.iter().min_by_key(|(_, (_, used))| *used).map(|(cn, _)| cn.clone());
            if let Some(oldest) = oldest {
                open.remove(&oldest);
            }
        }
        let file = match open.get_mut(cn) {
            Some(entry) => entry,
            None => match self.append_to(cn) {
                Ok(file) => open.entry(cn.to_string()).or_insert((file, now)),
                Err(error) => {
                    tracing::warn!(%error, "cannot keep blob presence on disk");
                    return;
                }
            },
        };
        file.1 = now;
        if let Err(error) = writeln!(file.0, "{hash}") {
            tracing::warn!(%error, "cannot keep blob presence on disk");
            open.remove(cn);
        }
    }

    /// `cn`'s file opened for appending, its header written when it is new.
    fn append_to(&self, cn: &str) -> std::io::Result<File> {
        let path = self.dir.join(file_name(cn));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() == 0 {
            writeln!(file, "{HEADER} {}", lrpymrpc_units::hex(cn.as_bytes()))?;
        }
        Ok(file)
    }

    /// Replaces `cn`'s file with exactly `sent` (atomically).
    fn rewrite(&self, cn: &str, sent: &HashSet<String>) -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        {
            let mut out = BufWriter::new(&mut file);
            writeln!(out, "{HEADER} {}", lrpymrpc_units::hex(cn.as_bytes()))?;
            for hash in sent {
                writeln!(out, "{hash}")?;
            }
            out.flush()?;
        }
        file.persist(self.dir.join(file_name(cn))).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The file of a CN: the SHA-256 of its bytes (any CN, one safe name).
fn file_name(cn: &str) -> String {
    digest_of(cn.as_bytes()).hash
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_outlives_a_restart_only_for_blobs_still_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, gone) = ("a".repeat(64), "b".repeat(64));
        let (log, present) = PresenceLog::open(dir.path(), |_| true).unwrap();
        assert!(present.is_empty());
        for hash in [&kept, &gone] {
            log.record("alice\nodd cn", hash);
        }
        log.record("", &kept);
        drop(log);
        let (_, present) = PresenceLog::open(dir.path(), |hash| hash == kept).unwrap();
        assert_eq!(present["alice\nodd cn"], HashSet::from([kept.clone()]));
        assert_eq!(present[""], HashSet::from([kept.clone()]), "plaintext's empty CN too");
        // Compacted: the evicted blob is no longer listed.
        let file = std::fs::read_to_string(dir.path().join("presence").join(file_name("alice\nodd cn"))).unwrap();
        assert!(!file.contains(&gone), "{file}");
    }

    #[test]
    fn many_cns_keep_few_files_open_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PresenceLog::open(dir.path(), |_| true).unwrap();
        for n in 0..100 {
            log.record(&format!("cn{n}"), &format!("{n:064x}"));
            log.record("busy", &format!("{:064x}", n + 1000));
        }
        assert!(log.open.lock().unwrap().len() <= MAX_OPEN, "at most {MAX_OPEN} open");
        drop(log);
        let (_, present) = PresenceLog::open(dir.path(), |_| true).unwrap();
        assert_eq!(present.len(), 101);
        assert_eq!(present["busy"].len(), 100, "a file opened again appends");
        assert!(present["cn7"].contains(&format!("{:064x}", 7)));
    }
}
