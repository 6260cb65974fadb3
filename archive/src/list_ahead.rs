//! Lists the directories a walk is about to enter on a second thread. A warm walk of
//! a large tree is bound by one stat call per entry; with a helper listing ahead every
//! announced directory but the walk's next one (which the walk lists itself), those
//! calls run on two cores. The walk's order, its filter and
//! everything it reports stay on the walk's thread; the helper only reads.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::errors::{PackError, read_error};

/// A directory's entries, each with its own metadata (a link's, not its target's).
pub(crate) type Listing = Vec<(OsString, Metadata)>;

/// Entries listed ahead and not yet taken by the walk, at most: the memory a walk
/// holds beyond its own path stays small, however far apart the two threads are.
const MAX_HELD_ENTRIES: usize = 4096;

/// Reads a directory's entries and their metadata, each relative to the open
/// directory (no walk down the whole path again for every entry).
pub(crate) fn list(disk: &Path) -> Result<Listing, PackError> {
    fs::read_dir(disk)
        .map_err(|e| read_error(disk, e))?
        .map(|entry| {
            let entry = entry.map_err(|e| read_error(disk, e))?;
            let meta = entry.metadata().map_err(|e| read_error(&entry.path(), e))?;
            Ok((entry.file_name(), meta))
        })
        .collect()
}

/// What the walk and its helper share.
#[derive(Default)]
pub(crate) struct ListAhead {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Directories the walk will enter and nobody has listed yet. Paths sort by
    /// component, the order the walk goes in: the first is the walk's next one.
    pending: BTreeSet<PathBuf>,
    /// Directories the helper took: `None` while it lists, then its listing.
    listed: HashMap<PathBuf, Option<Result<Listing, PackError>>>,
    /// Entries in `listed` the walk has not taken yet.
    held: usize,
    /// The walk is over: the helper stops.
    finished: bool,
}

impl ListAhead {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Announces directories the walk will enter (its filter kept them).
    pub(crate) fn will_enter(&self, directories: impl IntoIterator<Item = PathBuf>) {
        let mut state = self.state();
        let before = state.pending.len();
        state.pending.extend(directories);
        if state.pending.len() > before {
            self.changed.notify_all();
        }
    }

    /// The listing of `disk`: the helper's when it has finished it, else read here.
    pub(crate) fn take(&self, disk: &Path) -> Result<Listing, PackError> {
        let mut state = self.state();
        state.pending.remove(disk);
        // A directory still being listed is listed here rather than waited for (the
        // helper may not even be running); the helper's result is dropped when it comes.
        if let Some(Some(listing)) = state.listed.remove(disk) {
            state.held -= listing.as_ref().map_or(0, Vec::len);
            self.changed.notify_all();
            return listing;
        }
        drop(state);
        list(disk)
    }

    /// Ends the helper's loop; called when the walk ends, however it ends.
    pub(crate) fn finish(&self) {
        self.state().finished = true;
        self.changed.notify_all();
    }

    /// The helper's loop: lists the second directory the walk will enter (the walk
    /// takes the first), until the walk is over.
    pub(crate) fn help(&self) {
        let mut state = self.state();
        loop {
            if state.finished {
                return;
            }
            let next = match state.held < MAX_HELD_ENTRIES {
                true => state.pending.iter().nth(1).cloned(),
                false => None,
            };
            let Some(next) = next else {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            state.pending.remove(&next);
            state.listed.insert(next.clone(), None);
            drop(state);
            let listing = list(&next);
            state = self.state();
            // Unless the walk got there first and listed it itself.
            if let Some(slot) = state.listed.get_mut(&next) {
                let entries = listing.as_ref().map_or(0, Vec::len);
                *slot = Some(listing);
                state.held += entries;
            }
        }
    }
}

/// Calls [`ListAhead::finish`] when dropped: the helper stops even when the walk ends
/// in an error or a panic, so the scope that joins it cannot hang.
pub(crate) struct FinishOnDrop<'a>(pub(crate) &'a ListAhead);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
