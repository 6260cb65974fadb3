//! Moves a finished unpack from its staging directory into its destination, so that
//! a download that fails half-way never leaves half-written results at their final
//! paths: files of the same name are replaced, directories are merged.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot put `{path}` in place: a directory of that name is in the way")]
    DirectoryInTheWay { path: PathBuf },
    #[error("cannot put `{path}` in place: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Moves everything inside `staging` into `dest` (both on one file system). A
/// directory that already exists in `dest` (or a link the user made to one) is
/// merged into; any other existing entry of the same name is replaced.
pub fn merge_tree(staging: &Path, dest: &Path) -> Result<(), MergeError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MergeError::Io { path, source }
    };
    let mut names: Vec<_> = fs::read_dir(staging)
        .map_err(io_error(staging))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_error(staging))?;
    names.sort();
    for name in names {
        let from = staging.join(&name);
        let to = dest.join(&name);
        let from_is_dir = fs::symlink_metadata(&from).map_err(io_error(&from))?.is_dir();
        let existing = match fs::symlink_metadata(&to) {
            Ok(meta) => Some(meta),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(MergeError::Io { path: to, source: error }),
        };
        match existing {
            None => fs::rename(&from, &to).map_err(io_error(&to))?,
            // Follows the user's own link to a directory: their layout, their choice.
            Some(_) if from_is_dir && to.is_dir() => merge_tree(&from, &to)?,
            Some(meta) if meta.is_dir() => return Err(MergeError::DirectoryInTheWay { path: to }),
            Some(_) => {
                if from_is_dir {
                    fs::remove_file(&to).map_err(io_error(&to))?;
                }
                fs::rename(&from, &to).map_err(io_error(&to))?;
            }
        }
    }
    Ok(())
}
