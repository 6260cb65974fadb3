//! Servers of a `--SERVER_IP` list that just failed, remembered across invocations (each
//! `make` step is a process of its own), as distcc does: a server that refused the
//! connection or could not be reached is skipped for [`BACKOFF`] unless it is the only
//! one left. Kept in `$XDG_STATE_HOME/lrpymrpc/backoff` (else
//! `~/.local/state/lrpymrpc/backoff`), one `host:port until` line each; read and
//! rewritten under an exclusive lock, and replaced atomically, so `make -j` steps that
//! fail at once lose none of each other's lines.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a failed server is skipped.
pub const BACKOFF: Duration = Duration::from_secs(60);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The state file; `None` with no home to put it in.
fn path() -> Option<PathBuf> {
    crate::cli::dirs::state_file("backoff")
}

fn parse(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (server, until) = line.rsplit_once(' ')?;
            Some((server.to_string(), until.parse().ok()?))
        })
        .collect()
}

/// The servers (`host:port`) backing off now.
pub fn backing_off() -> HashMap<String, u64> {
    let Some(path) = path() else { return HashMap::new() };
    let now = now();
    let mut servers = parse(&std::fs::read_to_string(path).unwrap_or_default());
    servers.retain(|_, until| *until > now);
    servers
}

/// Remembers that `server` failed now; a failure to write the state only costs the
/// next step a try of that server.
pub fn failed(server: &str) {
    let Some(path) = path() else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(lock) = std::fs::File::options().create(true).truncate(false).write(true).open(dir.join("backoff.lock"))
    else {
        return;
    };
    // Released when `lock` closes.
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return;
    }
    let now = now();
    let mut servers = parse(&std::fs::read_to_string(&path).unwrap_or_default());
    servers.retain(|_, until| *until > now);
    servers.insert(server.to_string(), now + BACKOFF.as_secs());
    let Ok(mut file) = tempfile::NamedTempFile::new_in(dir) else { return };
    let mut lines: Vec<String> = servers.iter().map(|(server, until)| format!("{server} {until}\n")).collect();
    lines.sort();
    if file.write_all(lines.concat().as_bytes()).is_ok() {
        let _ = file.persist(&path);
    }
    drop(lock);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_expired_ones_do_not_count() {
        let servers = parse("a:1 100\n[::1]:8766 200\nbroken\n");
        assert_eq!(servers.get("[::1]:8766"), Some(&200));
        assert_eq!(servers.len(), 2);
    }
}
