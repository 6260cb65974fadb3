//! Job directories: `root/<UUID>/` made fresh for each upload and found again only
//! through a well-formed id, so a request can never name a path of its own.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::JobError;

/// A new, empty job directory (mode 0700) and its id.
pub fn create(root: &Path) -> Result<(String, PathBuf), JobError> {
    let id = Uuid::new_v4().to_string();
    let dir = root.join(&id);
    DirBuilder::new().mode(0o700).create(&dir)?;
    Ok((id, dir))
}

/// The directory of an existing job.
pub fn find(root: &Path, id: &str) -> Result<PathBuf, JobError> {
    let parsed = Uuid::try_parse(id).map_err(|_| JobError::BadJobId(id.to_string()))?;
    // Only the canonical hyphenated form names a directory.
    let dir = root.join(parsed.hyphenated().to_string());
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        _ => Err(JobError::UnknownJob(id.to_string())),
    }
}

/// Where a job's Python environment lives: beside the job directory, not in it, so
/// the command sees only what was uploaded.
pub fn venv_dir(job_dir: &Path) -> PathBuf {
    let mut name = job_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".venv");
    job_dir.with_file_name(name)
}
