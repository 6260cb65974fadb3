//! Turns names that come from the network (archive entries, result paths, link
//! targets) into safe relative paths, refusing anything that could point outside
//! the directory they are meant for.

use std::path::{Component, Path, PathBuf};

/// Why a name from the network was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name contains a NUL byte")]
    Nul,
    #[error("absolute names are not allowed")]
    Absolute,
    #[error("`..` is not allowed in names")]
    ParentComponent,
    #[error("the name is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("the name has {depth} levels, more than the limit of {max}")]
    TooDeep { depth: usize, max: usize },
}

/// Longest name accepted from the network (Linux's `PATH_MAX`).
pub const MAX_NAME_BYTES: usize = 4096;

/// Validates a `/`-separated name from the network and returns it as a relative path
/// made only of normal components (`.` and empty components dropped).
///
/// Refuses absolute names (`/x`, `//x`, `C:/x`, `C:\x`), any `..` component, NUL bytes
/// and overlong names. The result may be empty: the name meant the directory itself.
pub fn sanitize_relative(name: &[u8]) -> Result<PathBuf, NameError> {
    use std::os::unix::ffi::OsStrExt;

    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { max: MAX_NAME_BYTES });
    }
    if matches!(name.first(), Some(b'/' | b'\\')) || has_drive_prefix(name) {
        return Err(NameError::Absolute);
    }
    let mut clean = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(NameError::ParentComponent),
            part => clean.push(std::ffi::OsStr::from_bytes(part)),
        }
    }
    // Belt and braces: whatever the splitting above missed, std's parser must agree.
    debug_assert!(clean.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(clean)
}

/// `C:` at the start of a name: a Windows drive, absolute on the peers that wrote it.
fn has_drive_prefix(name: &[u8]) -> bool {
    name.len() >= 2 && name[0].is_ascii_alphabetic() && name[1] == b':'
}

/// Finds `rel` (already sanitized) below `root` without following any symbolic link
/// on the way: `Ok(None)` when it does not exist, an error when a parent component
/// is a link or a file. The last component itself may be a link (it is not followed).
pub fn find_below(root: &Path, rel: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::io::{Error, ErrorKind};
    let mut path = root.to_path_buf();
    let count = rel.components().count();
    for (index, component) in rel.components().enumerate() {
        path.push(component);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        if index + 1 < count && !meta.is_dir() {
            let what = if meta.file_type().is_symlink() { "a symbolic link" } else { "not a directory" };
            return Err(Error::new(ErrorKind::InvalidInput, format!("`{}` is {what}", path.display())));
        }
    }
    Ok(Some(path))
}

/// The number of components of a relative path, for depth limits.
pub fn depth(path: &Path) -> usize {
    path.components().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_absolute_spelling() {
        for name in ["/x", "//x", "///./x", "C:/x", "C:\\x", "\\x", "/////.."] {
            assert_eq!(sanitize_relative(name.as_bytes()), Err(NameError::Absolute), "{name}");
        }
    }

    #[test]
    fn refuses_traversal_anywhere() {
        for name in ["../x", "./../x", "a/../../x", "..", "a/..", "a/b/../c"] {
            assert_eq!(sanitize_relative(name.as_bytes()), Err(NameError::ParentComponent), "{name}");
        }
    }

    #[test]
    fn refuses_empty_nul_and_overlong_names() {
        assert_eq!(sanitize_relative(b""), Err(NameError::Empty));
        assert_eq!(sanitize_relative(b"a\0b"), Err(NameError::Nul));
        let long = vec![b'a'; MAX_NAME_BYTES + 1];
        assert!(matches!(sanitize_relative(&long), Err(NameError::TooLong { .. })));
    }

    #[test]
    fn find_below_never_follows_links_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), "").unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("l")).unwrap();
        assert!(find_below(root.path(), Path::new("d/f")).unwrap().is_some());
        assert!(find_below(root.path(), Path::new("d/missing")).unwrap().is_none());
        assert!(find_below(root.path(), Path::new("l")).unwrap().is_some());
        assert!(find_below(root.path(), Path::new("l/passwd")).is_err());
        assert!(find_below(root.path(), Path::new("d/f/x")).is_err());
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        assert_eq!(sanitize_relative(b"./a//b/./c/").unwrap(), Path::new("a/b/c"));
        assert_eq!(sanitize_relative(b".").unwrap(), Path::new(""));
        assert_eq!(sanitize_relative(b"..x/y..").unwrap(), Path::new("..x/y.."));
    }
}
