//! The source-tree walk, apart from any archive format: from each root, every entry
//! in sorted order (so the same tree always walks the same way), symbolic links
//! followed (client uploads) or reported as links, link loops stopped, each entry shown
//! to a filter that may leave it (and all it holds) out. The tar packer is one visitor;
//! a content-addressed tree builder can be another.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::errors::{PackError, read_error};
use crate::list_ahead::{FinishOnDrop, ListAhead};

/// One path to pack: where it is on disk and the name it gets in the archive
/// (an empty name puts a directory's contents at the top of the archive).
#[derive(Debug, Clone)]
pub struct PackRoot {
    pub disk: PathBuf,
    pub name: PathBuf,
}

/// An entry the packer is about to add, shown to [`PackOptions::keep`].
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'p> {
    /// Where it is on disk (below a root's `disk`, joined lexically).
    pub disk: &'p Path,
    /// Its name in the archive.
    pub name: &'p Path,
    /// A directory (after following a link, when links are followed).
    pub is_dir: bool,
}

/// What the walk found at one place.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// A directory, before what it holds; `name` is empty for a root whose contents go
    /// at the top.
    Directory { disk: &'a Path, name: &'a Path, meta: &'a Metadata },
    /// A regular file (the target's metadata when a link was followed).
    File { disk: &'a Path, name: &'a Path, meta: &'a Metadata },
    /// A symbolic link, not followed.
    Symlink { disk: &'a Path, name: &'a Path, meta: &'a Metadata },
    /// The end of a directory reported by `Directory`: everything it holds came.
    DirectoryDone { disk: &'a Path, name: &'a Path },
}

/// How to walk.
pub struct WalkOptions<'a> {
    /// Report what links point to (and walk into linked directories), or the links.
    pub follow_symlinks: bool,
    /// Decides each entry below the roots (and each root that is not a directory):
    /// `false` leaves it out, and a directory left out takes all it holds with it.
    pub keep: &'a dyn Fn(&Candidate<'_>) -> bool,
}

/// Walks `roots`, calling `visit` for everything kept; returns what was passed over and
/// why (broken links, loops, FIFOs and devices). A visitor's error stops the walk.
pub fn walk(
    roots: &[PackRoot],
    options: &WalkOptions<'_>,
    visit: &mut dyn FnMut(Found<'_>) -> Result<(), PackError>,
) -> Result<Vec<(PathBuf, String)>, PackError> {
    let ahead = ListAhead::default();
    std::thread::scope(|scope| {
        // Stopped however the walk ends, before the scope joins it.
        let _finish = FinishOnDrop(&ahead);
        // Without the helper (no thread to be had) the walk lists everything itself.
        let _ = std::thread::Builder::new().name("lrpymrpc-list-ahead".into()).spawn_scoped(scope, || ahead.help());
        let mut walker = Walker { options, visit, ahead: &ahead, ancestors: HashSet::new(), skipped: Vec::new() };
        for root in roots {
            walker.add(&root.disk, &root.name, true)?;
        }
        Ok(walker.skipped)
    })
}

/// The regular files a walk of `roots` finds, and their bytes: the total of a progress
/// bar (what an upload will send, what a download will bring).
pub fn count_files(roots: &[PackRoot], options: &WalkOptions<'_>) -> Result<(u64, u64), PackError> {
    let (mut files, mut bytes) = (0, 0);
    walk(roots, options, &mut |found| {
        if let Found::File { meta, .. } = found {
            files += 1;
            bytes += meta.len();
        }
        Ok(())
    })?;
    Ok((files, bytes))
}

struct Walker<'a, 'v> {
    options: &'a WalkOptions<'a>,
    visit: &'v mut dyn FnMut(Found<'_>) -> Result<(), PackError>,
    ahead: &'a ListAhead,
    /// (device, inode) of the directories being walked, to stop symbolic-link loops.
    ancestors: HashSet<(u64, u64)>,
    skipped: Vec<(PathBuf, String)>,
}

impl Walker<'_, '_> {
    fn add(&mut self, disk: &Path, name: &Path, is_root: bool) -> Result<(), PackError> {
        let link_meta = fs::symlink_metadata(disk).map_err(|e| read_error(disk, e))?;
        self.add_with(disk, name, is_root, link_meta, None)
    }

    /// [`Walker::add`] with the entry's own (not followed) metadata already read, and
    /// the filter's verdict when it was asked already.
    fn add_with(
        &mut self,
        disk: &Path,
        name: &Path,
        is_root: bool,
        link_meta: Metadata,
        verdict: Option<bool>,
    ) -> Result<(), PackError> {
        // Only a link is looked up again (through it): one stat per entry otherwise.
        let meta = match link_meta.file_type().is_symlink() && self.options.follow_symlinks {
            false => link_meta,
            true => match fs::metadata(disk) {
                Ok(meta) => meta,
                Err(error) => {
                    self.skip(disk, format!("broken symbolic link ({error})"));
                    return Ok(());
                }
            },
        };
        let file_type = meta.file_type();
        let candidate = Candidate { disk, name, is_dir: file_type.is_dir() };
        let always_kept = is_root && candidate.is_dir;
        if !always_kept && !verdict.unwrap_or_else(|| (self.options.keep)(&candidate)) {
            return Ok(());
        }
        if file_type.is_dir() {
            self.add_directory(disk, name, &meta)
        } else if file_type.is_file() {
            (self.visit)(Found::File { disk, name, meta: &meta })
        } else if file_type.is_symlink() {
            (self.visit)(Found::Symlink { disk, name, meta: &meta })
        } else {
            self.skip(disk, "not a regular file, directory or link".into());
            Ok(())
        }
    }

    fn add_directory(&mut self, disk: &Path, name: &Path, meta: &Metadata) -> Result<(), PackError> {
        let identity = (meta.dev(), meta.ino());
        if !self.ancestors.insert(identity) {
            self.skip(disk, "symbolic link loop".into());
            return Ok(());
        }
        (self.visit)(Found::Directory { disk, name, meta })?;
        let mut children = self.ahead.take(disk)?;
        // Sorted, so the same tree always walks (and packs) the same way.
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // The filter decides on subdirectories (not links) first, so that those it
        // keeps can be listed ahead.
        let verdicts: Vec<Option<bool>> = children
            .iter()
            .map(|(child, meta)| {
                meta.is_dir().then(|| {
                    (self.options.keep)(&Candidate { disk: &disk.join(child), name: &name.join(child), is_dir: true })
                })
            })
            .collect();
        let kept = children.iter().zip(&verdicts).filter(|(_, verdict)| **verdict == Some(true));
        self.ahead.will_enter(kept.map(|((child, _), _)| disk.join(child)));
        for ((child, meta), verdict) in children.into_iter().zip(verdicts) {
            self.add_with(&disk.join(&child), &name.join(&child), false, meta, verdict)?;
        }
        self.ancestors.remove(&identity);
        (self.visit)(Found::DirectoryDone { disk, name })
    }

    fn skip(&mut self, disk: &Path, why: String) {
        self.skipped.push((disk.to_path_buf(), why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_following_links_and_stops_loops() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("b")).unwrap();
        fs::write(tree.join("b/f"), "f").unwrap();
        fs::write(tree.join("a"), "a").unwrap();
        std::os::unix::fs::symlink("b", tree.join("c")).unwrap();
        std::os::unix::fs::symlink(".", tree.join("b/loop")).unwrap();
        let roots = [PackRoot { disk: tree.clone(), name: "t".into() }];
        let everything = |_: &Candidate<'_>| true;
        let mut seen = Vec::new();
        let options = WalkOptions { follow_symlinks: true, keep: &everything };
        let skipped = walk(&roots, &options, &mut |found| {
            seen.push(match found {
                Found::Directory { name, .. } => format!("d {}", name.display()),
                Found::File { name, .. } => format!("f {}", name.display()),
                Found::Symlink { name, .. } => format!("l {}", name.display()),
                Found::DirectoryDone { name, .. } => format!("/d {}", name.display()),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["d t", "f t/a", "d t/b", "f t/b/f", "/d t/b", "d t/c", "f t/c/f", "/d t/c", "/d t"]);
        assert_eq!(skipped.len(), 2, "the loop, met twice: {skipped:?}");
        let options = WalkOptions { follow_symlinks: false, keep: &everything };
        let mut links = 0;
        walk(&roots, &options, &mut |found| {
            links += matches!(found, Found::Symlink { .. }) as usize;
            Ok(())
        })
        .unwrap();
        assert_eq!(links, 2);
    }

    /// A tree wide and deep enough that the helper lists much of it: the walk reports
    /// exactly what a plain recursive walk in sorted order does, the filter obeyed.
    #[test]
    fn listing_ahead_changes_nothing_the_walk_reports() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        for a in 0..12 {
            for b in 0..6 {
                let leaf = tree.join(format!("d{a}/e{b}"));
                fs::create_dir_all(leaf.join("empty")).unwrap();
                for c in 0..5 {
                    fs::write(leaf.join(format!("f{c}")), format!("{a}{b}{c}")).unwrap();
                }
            }
            fs::create_dir_all(tree.join(format!("d{a}/skip/deeper"))).unwrap();
            fs::write(tree.join(format!("d{a}/skip/deeper/x")), "x").unwrap();
        }
        let keep = |candidate: &Candidate<'_>| candidate.name.file_name().is_none_or(|n| n != "skip");
        fn expected(disk: &Path, name: &Path, keep: &dyn Fn(&Candidate<'_>) -> bool, out: &mut Vec<String>) {
            out.push(format!("d {}", name.display()));
            let mut children: Vec<_> = fs::read_dir(disk).unwrap().map(|e| e.unwrap().file_name()).collect();
            children.sort();
            for child in children {
                let (disk, name) = (disk.join(&child), name.join(&child));
                let is_dir = disk.is_dir();
                if !keep(&Candidate { disk: &disk, name: &name, is_dir }) {
                    continue;
                }
                match is_dir {
                    true => expected(&disk, &name, keep, out),
                    false => out.push(format!("f {}", name.display())),
                }
            }
            out.push(format!("/d {}", name.display()));
        }
        let mut want = Vec::new();
        expected(&tree, Path::new("t"), &keep, &mut want);
        let roots = [PackRoot { disk: tree.clone(), name: "t".into() }];
        let options = WalkOptions { follow_symlinks: true, keep: &keep };
        for _ in 0..3 {
            let mut seen = Vec::new();
            walk(&roots, &options, &mut |found| {
                match found {
                    Found::Directory { name, .. } => seen.push(format!("d {}", name.display())),
                    Found::File { name, .. } => seen.push(format!("f {}", name.display())),
                    Found::DirectoryDone { name, .. } => seen.push(format!("/d {}", name.display())),
                    Found::Symlink { .. } => {}
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, want);
        }
        assert!(!want.iter().any(|line| line.contains("skip")) && want.len() > 500, "{}", want.len());
    }
}
