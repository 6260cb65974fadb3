//! Which servers made a job from which input tree for this user, kept in a small file
//! beside the stat cache, so that the next job from an unchanged tree names its root
//! alone (`TreePart.root_only`): one small call instead of every directory again. A
//! wrong guess costs one more call (the server answers `send_tree`), never a wrong
//! job: the root digest names the whole tree. A child of `cas_upload`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Entries kept at most; the file is cut to the newest half beyond it.
const MAX_ENTRIES: usize = 512;

/// The servers (by address) and tree roots that made a job.
#[derive(Debug, Default)]
pub struct MadeTrees {
    path: Option<PathBuf>,
    entries: Vec<(String, String)>,
}

impl MadeTrees {
    /// Reads the file at `path`; a missing or unreadable one is empty.
    pub fn load(path: &Path) -> MadeTrees {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, root)| lrpymrpc_cas::is_valid_hash(root))
            .map(|(server, root)| (server.to_string(), root.to_string()))
            .collect();
        MadeTrees { path: Some(path.to_path_buf()), entries }
    }

    /// Whether `server` made a job from the tree named `root`.
    pub fn contains(&self, server: &str, root: &str) -> bool {
        self.entries.iter().rev().any(|(s, r)| s == server && r == root)
    }

    /// Records that `server` made a job from `root`: appended (one short write, so
    /// concurrent steps do not mix lines), and the file cut to the newest half when it
    /// grew past [`MAX_ENTRIES`]. Failing to record only costs the next job a call.
    pub fn record(&mut self, server: &str, root: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if self.contains(server, root) || server.contains(char::is_whitespace) {
            return Ok(());
        }
        self.entries.push((server.to_string(), root.to_string()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if self.entries.len() <= MAX_ENTRIES {
            // Which servers a user works with and what: the user's alone (0600, and so
            // made again if an earlier version left it readable by others).
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            return file.write_all(format!("{server} {root}\n").as_bytes());
        }
        let keep = &self.entries[self.entries.len() - MAX_ENTRIES / 2..];
        let text: String = keep.iter().map(|(server, root)| format!("{server} {root}\n")).collect();
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_trees_are_found_again_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/made-trees");
        let root = |n: usize| format!("{n:064x}");
        let mut made = MadeTrees::load(&path);
        assert!(!made.contains("a:1", &root(1)));
        made.record("a:1", &root(1)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "the user's alone");
        let again = MadeTrees::load(&path);
        assert!(again.contains("a:1", &root(1)) && !again.contains("b:1", &root(1)));
        let mut made = again;
        for n in 0..MAX_ENTRIES + 10 {
            made.record("a:1", &root(n + 2)).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= MAX_ENTRIES, "{lines} lines");
        assert!(MadeTrees::load(&path).contains("a:1", &root(MAX_ENTRIES + 11)), "the newest stay");
        std::fs::write(&path, "garbage\nx ../../etc\n").unwrap();
        assert!(MadeTrees::load(&path).entries.is_empty());
    }
}
