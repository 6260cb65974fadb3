//! Where a job's results are: the RESULT paths a client names, checked, found without
//! following a link on the way, and their size; for Check and Download and for the
//! action cache's recorder alike.

use std::path::{Path, PathBuf};

use lrpymrpc_archive::{PackRoot, find_below, sanitize_relative};

use crate::error::JobError;

/// The RESULT paths (space-separated, relative to the job directory), sanitized.
pub fn result_names(result_dir: &str) -> Result<Vec<PathBuf>, JobError> {
    let mut names = Vec::new();
    for name in result_dir.split_whitespace() {
        let refuse = |reason: String| JobError::BadResultPath { path: name.to_string(), reason };
        let rel = sanitize_relative(name.as_bytes()).map_err(|e| refuse(e.to_string()))?;
        if rel.as_os_str().is_empty() {
            return Err(refuse("the job directory itself cannot be a result".into()));
        }
        names.push(rel);
    }
    Ok(names)
}

/// The RESULT paths that exist, found without following any link on the way.
pub fn existing_results(job_dir: &Path, names: &[PathBuf]) -> Result<Vec<PathBuf>, JobError> {
    let mut found = Vec::new();
    for name in names {
        let refuse = |reason: String| JobError::BadResultPath { path: name.display().to_string(), reason };
        // The error names the path relative to the job directory, never the server's own.
        let exists = find_below(job_dir, name).map_err(|e| refuse(strip_dir(&e.to_string(), job_dir)))?;
        if exists.is_some() {
            found.push(name.clone());
        }
    }
    Ok(found)
}

/// The bytes of the regular files below the found result paths, links not followed:
/// the total of a download's progress bar (0 when the walk fails).
pub fn result_bytes(job_dir: &Path, found: &[PathBuf]) -> u64 {
    use lrpymrpc_archive::walk::{WalkOptions, count_files};
    let roots: Vec<PackRoot> =
        found.iter().map(|name| PackRoot { disk: job_dir.join(name), name: name.clone() }).collect();
    let options = WalkOptions { follow_symlinks: false, keep: &|_| true };
    count_files(&roots, &options).map_or(0, |(_, bytes)| bytes)
}

/// `message` with the job directory's absolute path taken out.
fn strip_dir(message: &str, job_dir: &Path) -> String {
    let prefix = format!("{}/", job_dir.display());
    message.replace(&prefix, "")
}
