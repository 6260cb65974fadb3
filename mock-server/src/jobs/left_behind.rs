//! What a server that is gone left on the job root for the next one (issue 30): the
//! durable jobs whose spools (`spool_file.rs`) are trusted and whose runs can be taken
//! on. Read at start, before anything is swept (`state.rs`); taken on once serving
//! begins (`execute/adopt.rs`).

use std::path::Path;

use tracing::warn;

use crate::jobs::CommandEnd;
use crate::jobs::spool_file::{self, Entry, Header, SpoolKey};

/// A spool found at start, checked, whose job can be taken on.
#[derive(Debug)]
pub struct Found {
    pub header: Header,
    pub entries: Vec<Entry>,
    /// The command's supervised run, if it started.
    pub run: Option<String>,
    /// The spool ends with the run's end: nothing is left to follow.
    pub complete: bool,
}

impl Found {
    /// Where a replay of the run's output starts (its last checkpoint, else the
    /// start), and the output messages numbered before it.
    pub fn replay_from(&self) -> (u64, u64) {
        let mut from = (0, 0);
        for entry in &self.entries {
            match entry {
                Entry::RunStarted(_) => from = (0, 0),
                Entry::Checkpoint { offset, output_count } => from = (*offset, *output_count),
                Entry::Numbered { .. } => {}
            }
        }
        from
    }
}

impl Found {
    pub fn id(&self) -> &str {
        &self.header.id
    }

    /// The command's run directory name, while it may still run.
    pub fn live_run(&self) -> Option<&str> {
        self.run.as_deref().filter(|_| !self.complete)
    }
}

/// The spools under `root` whose jobs can be taken on: ended, or their command started
/// under a supervisor. A spool that is not trusted is said in the log; it, and one
/// whose job cannot be taken on, is removed (its job is then swept, its run stopped).
pub fn find(root: &Path, key: &SpoolKey) -> Vec<Found> {
    let mut found = Vec::new();
    for id in spool_file::spooled_ids(root) {
        // Decided here, before anything is swept or stopped: a job that could not be
        // entered again is neither kept nor left running.
        if !crate::jobs::is_left_job(root, &id) {
            spool_file::remove(root, &id);
            continue;
        }
        match spool_file::read(root, key, &id) {
            Ok((header, entries)) => {
                let run = entries.iter().rev().find_map(|entry| match entry {
                    Entry::RunStarted(run) => Some(run.clone()),
                    _ => None,
                });
                let complete = matches!(entries.last(), Some(Entry::Numbered { record, .. }) if is_end(record));
                if !complete && run.is_none() {
                    // Its command had not started under a supervisor (pip was running, or
                    // it was being submitted to Slurm): swept, and its
                    // Slurm step cancelled, as before.
                    spool_file::remove(root, &id);
                    continue;
                }
                found.push(Found { header, entries, run, complete });
            }
            Err(error) => {
                warn!(job = %id, "the job's spool is refused, so the job is not taken on: {error}");
                spool_file::remove(root, &id);
            }
        }
    }
    found
}

/// Whether a spooled record ends its run (an exit status, or an error status).
pub fn is_end(record: &Result<lrpymrpc_proto::ExecuteResponse, tonic::Status>) -> bool {
    match record {
        Ok(message) => message.exit_status.is_some(),
        Err(_) => true,
    }
}

/// How a job whose spool ends with `record` ended, as the job table keeps it.
pub fn command_end_of(record: &Result<lrpymrpc_proto::ExecuteResponse, tonic::Status>) -> CommandEnd {
    match record {
        Ok(message) => match &message.exit_status {
            Some(status) => CommandEnd::Exited { code: status.code, signal: status.signal },
            None => CommandEnd::Failed,
        },
        Err(status) if status.code() == tonic::Code::Cancelled => CommandEnd::Cancelled,
        Err(_) => CommandEnd::Failed,
    }
}
