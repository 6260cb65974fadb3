//! Moves a finished unpack from its staging directory into its destination, so that
//! a download that fails half-way never leaves half-written results at their final
//! paths: files of the same name are replaced, directories are merged.
//!
//! A link already in the destination is never followed: it is replaced like a file
//! (a directory arriving where a link is takes the link's place), so a link an earlier
//! download planted cannot carry a later one's files elsewhere. Links are also judged
//! across the two trees before anything moves: a new link may not point through a link
//! already in the destination, and no link already there may come to point through a
//! new one (two downloads cannot chain links that each looked harmless alone).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot put `{path}` in place: a directory of that name is in the way")]
    DirectoryInTheWay { path: PathBuf },
    #[error("cannot put `{path}` in place: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("refused the link `{link}` in the results: {why}")]
    LinkChain { link: PathBuf, why: String },
}

/// Moves everything inside `staging` into `dest` (both on one file system), after
/// checking that no link chain forms across the two (see the module docs).
pub fn merge_tree(staging: &Path, dest: &Path) -> Result<(), MergeError> {
    check_link_chains(staging, dest)?;
    move_entries(staging, dest)
}

fn move_entries(staging: &Path, dest: &Path) -> Result<(), MergeError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MergeError::Io { path, source }
    };
    for name in sorted_names(staging).map_err(io_error(staging))? {
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
            // A real directory only: `symlink_metadata` never follows a link.
            Some(meta) if from_is_dir && meta.is_dir() => move_entries(&from, &to)?,
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

fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names: Vec<_> = fs::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// Every link below `dir` (relative paths), not following links.
fn links_below(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let meta = match fs::symlink_metadata(dir.join(rel)) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if meta.file_type().is_symlink() {
        out.push(rel.to_path_buf());
    } else if meta.is_dir() {
        for name in sorted_names(&dir.join(rel))? {
            links_below(dir, &rel.join(name), out)?;
        }
    }
    Ok(())
}

/// Refuses a link chain across the staged results and the destination (module docs).
fn check_link_chains(staging: &Path, dest: &Path) -> Result<(), MergeError> {
    let io_error = |path: &Path, source| MergeError::Io { path: path.to_path_buf(), source };
    let mut incoming = Vec::new();
    links_below(staging, Path::new(""), &mut incoming).map_err(|e| io_error(staging, e))?;
    if incoming.is_empty() {
        return Ok(());
    }
    let incoming_set: HashSet<&Path> = incoming.iter().map(PathBuf::as_path).collect();
    // The links already there, in the top-level paths the staged results go to.
    let mut existing = Vec::new();
    for name in sorted_names(staging).map_err(|e| io_error(staging, e))? {
        links_below(dest, Path::new(&name), &mut existing).map_err(|e| io_error(dest, e))?;
    }
    // Links the merge replaces are gone afterwards.
    existing.retain(|link| staging.join(link).symlink_metadata().is_err());
    let existing_set: HashSet<&Path> = existing.iter().map(PathBuf::as_path).collect();
    for link in &incoming {
        let target = fs::read_link(staging.join(link)).map_err(|e| io_error(link, e))?;
        if let Some(through) = first_link_on_the_way(link, &target, &existing_set) {
            let why = format!("it would point through the link `{}` already there", through.display());
            return Err(MergeError::LinkChain { link: link.clone(), why });
        }
    }
    for link in &existing {
        let target = fs::read_link(dest.join(link)).map_err(|e| io_error(link, e))?;
        if let Some(through) = first_link_on_the_way(link, &target, &incoming_set) {
            let why = format!("the link `{}` already there would then point through it", link.display());
            return Err(MergeError::LinkChain { link: through, why });
        }
    }
    Ok(())
}

/// Follows `target` lexically from the directory of `link`: the first path on the way
/// that is one of `links`, if any. Absolute targets stay outside the merged trees.
fn first_link_on_the_way(link: &Path, target: &Path, links: &HashSet<&Path>) -> Option<PathBuf> {
    let mut resolved: Vec<Component<'_>> = link.parent().map(|p| p.components().collect()).unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(_) => {
                resolved.push(component);
                let so_far: PathBuf = resolved.iter().collect();
                if links.contains(so_far.as_path()) {
                    return Some(so_far);
                }
            }
            Component::ParentDir => {
                resolved.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    None
}
