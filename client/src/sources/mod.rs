//! Chooses what to upload: each SOURCE path under its base name, skipping (with a
//! warning, as the Python client does, or refusing with `--strict`) paths that do not
//! exist or lie outside the working directory; then, entry by entry while packing,
//! the SOURCE_INCLUDE / SOURCE_EXCLUDE / SOURCE_MATCH filters, version-control
//! directories (left out by default), `--exclude` patterns and, on request,
//! `.gitignore` files.

pub(crate) mod tree_build;

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use lrpymrpc_archive::{Candidate, PackRoot};

use crate::exit::ClientError;

/// Directory names of version-control systems, left out unless `--include-vcs`.
pub const VCS_DIRECTORIES: [&str; 6] = [".git", ".hg", ".svn", ".bzr", "_darcs", "CVS"];

/// The upstream suffix and substring filters for files. Directories always pass, so
/// empty directories arrive.
#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    /// Keep only files whose name ends with one of these; empty keeps all.
    pub include: Vec<String>,
    /// Drop files whose name ends with one of these.
    pub exclude: Vec<String>,
    /// Keep only files whose archive path contains one of these; empty keeps all.
    pub matches: Vec<String>,
}

impl SourceFilter {
    /// Whether a regular file with this archive name is uploaded.
    pub fn keeps(&self, name: &Path) -> bool {
        let file_name = name.file_name().unwrap_or_default().to_string_lossy();
        let full = name.to_string_lossy();
        (self.include.is_empty() || self.include.iter().any(|ext| file_name.ends_with(ext.as_str())))
            && !self.exclude.iter().any(|ext| file_name.ends_with(ext.as_str()))
            && (self.matches.is_empty() || self.matches.iter().any(|m| full.contains(m.as_str())))
    }
}

/// Every rule that decides whether an entry below a SOURCE root is uploaded.
#[derive(Debug)]
pub struct SourceRules {
    pub filter: SourceFilter,
    pub include_vcs: bool,
    /// `--exclude` patterns, rooted at the working directory.
    excludes: Gitignore,
    /// `.gitignore` files, by directory, once read; `None` when not asked for.
    gitignores: Option<Mutex<HashMap<PathBuf, Option<Gitignore>>>>,
    /// The top directory whose `.gitignore` still applies: the repository root above
    /// the working directory, or the working directory itself.
    gitignore_top: PathBuf,
    /// Version-control directories that were left out, to say so; a set, since every
    /// upload attempt (a retry) walks the same tree again.
    left_out_vcs: Mutex<BTreeSet<PathBuf>>,
    workdir: PathBuf,
}

impl SourceRules {
    pub fn new(
        filter: SourceFilter,
        exclude_patterns: &[String],
        use_gitignore: bool,
        include_vcs: bool,
        workdir: &Path,
    ) -> Result<SourceRules, ClientError> {
        let mut builder = GitignoreBuilder::new(workdir);
        for pattern in exclude_patterns {
            builder.add_line(None, pattern).map_err(|e| ClientError::Local {
                message: format!("--exclude `{pattern}` is not a valid pattern: {e}"),
                hint: Some("use gitignore syntax: `*.o`, `build/`, `cells/tmp`, `!keep.o`".into()),
            })?;
        }
        let excludes =
            builder.build().map_err(|e| ClientError::local(format!("--exclude patterns cannot be used: {e}")))?;
        let gitignore_top = workdir.ancestors().find(|dir| dir.join(".git").exists()).unwrap_or(workdir).to_path_buf();
        Ok(SourceRules {
            filter,
            include_vcs,
            excludes,
            gitignores: use_gitignore.then(|| Mutex::new(HashMap::new())),
            gitignore_top,
            left_out_vcs: Mutex::new(BTreeSet::new()),
            workdir: workdir.to_path_buf(),
        })
    }

    /// Whether the packer takes this entry (a directory left out takes its contents).
    pub fn keeps(&self, candidate: &Candidate<'_>) -> bool {
        let name = candidate.disk.file_name().unwrap_or_default();
        if candidate.is_dir && !self.include_vcs && VCS_DIRECTORIES.iter().any(|vcs| name == *vcs) {
            if let Ok(mut left_out) = self.left_out_vcs.lock() {
                left_out.insert(candidate.disk.strip_prefix(&self.workdir).unwrap_or(candidate.disk).to_path_buf());
            }
            return false;
        }
        if !candidate.is_dir && !self.filter.keeps(candidate.name) {
            return false;
        }
        if candidate.disk.starts_with(&self.workdir)
            && self.excludes.matched(candidate.disk, candidate.is_dir).is_ignore()
        {
            return false;
        }
        !self.ignored_by_gitignore(candidate.disk, candidate.is_dir)
    }

    /// The nearest `.gitignore` with an opinion decides, as in git.
    fn ignored_by_gitignore(&self, path: &Path, is_dir: bool) -> bool {
        let Some(cache) = &self.gitignores else { return false };
        let Ok(mut cache) = cache.lock() else { return false };
        for dir in path.ancestors().skip(1) {
            if !dir.starts_with(&self.gitignore_top) {
                break;
            }
            let matcher = cache.entry(dir.to_path_buf()).or_insert_with(|| read_gitignore(dir));
            match matcher.as_ref().map(|m| m.matched(path, is_dir)) {
                Some(Match::Ignore(_)) => return true,
                Some(Match::Whitelist(_)) => return false,
                _ => {}
            }
        }
        false
    }

    /// The version-control directories left out so far, relative to the working directory.
    pub fn left_out_vcs(&self) -> Vec<PathBuf> {
        self.left_out_vcs.lock().map(|set| set.iter().cloned().collect()).unwrap_or_default()
    }
}

fn read_gitignore(dir: &Path) -> Option<Gitignore> {
    let file = dir.join(".gitignore");
    if !file.is_file() {
        return None;
    }
    let (matcher, _errors) = Gitignore::new(&file);
    Some(matcher)
}

/// What was found of one SOURCE path, said as the Python client says it before it
/// packs (`Check: Exist source_dir=X`, lrPymRPC 0.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Exists,
    Missing,
    /// Outside the working directory: passed over.
    Outside,
}

impl Seen {
    /// The Python client's status line for `source`.
    pub fn status(self, source: &str) -> String {
        match self {
            Seen::Exists => format!("Check: Exist source_dir={source}"),
            Seen::Missing => format!("Check: Not Exist source_dir={source}"),
            Seen::Outside => format!("Check: Not Exist in current directory, removed from source_dir={source}"),
        }
    }
}

/// The SOURCE paths chosen: the roots to pack, what was found of each path, and a
/// warning for each path passed over.
#[derive(Debug, Default)]
pub struct Selection {
    pub roots: Vec<PackRoot>,
    pub seen: Vec<(String, Seen)>,
    pub warnings: Vec<String>,
}

/// Chooses the roots to pack from the SOURCE paths.
pub fn select(sources: &[String], workdir: &Path) -> Selection {
    let mut selection = Selection::default();
    for source in sources {
        let path = normalize(&workdir.join(source));
        if !path.starts_with(workdir) {
            selection.warnings.push(format!("SOURCE `{source}` skipped: it is outside the working directory"));
            selection.seen.push((source.clone(), Seen::Outside));
            continue;
        }
        if std::fs::metadata(&path).is_err() {
            selection.warnings.push(format!("SOURCE `{source}` skipped: it does not exist"));
            selection.seen.push((source.clone(), Seen::Missing));
            continue;
        }
        selection.seen.push((source.clone(), Seen::Exists));
        // The working directory itself uploads its contents at the top of the job.
        let name = match path.strip_prefix(workdir) {
            Ok(rest) if rest.as_os_str().is_empty() => PathBuf::new(),
            _ => PathBuf::from(path.file_name().unwrap_or_default()),
        };
        selection.roots.push(PackRoot { disk: path, name });
    }
    selection
}

/// Resolves `.` and `..` without touching the disk, so a link inside the working
/// directory that points elsewhere still counts as inside (its content travels).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_suffix_and_substring() {
        let filter = SourceFilter {
            include: vec![".sp".into(), ".py".into()],
            exclude: vec!["_tmp.py".into()],
            matches: vec!["gf180".into()],
        };
        assert!(filter.keeps(Path::new("sample/gf180/cell.sp")));
        assert!(!filter.keeps(Path::new("sample/gf180/cell.lib")));
        assert!(!filter.keeps(Path::new("sample/gf180/x_tmp.py")));
        assert!(!filter.keeps(Path::new("sample/sky130/cell.sp")));
        assert!(SourceFilter::default().keeps(Path::new("anything")));
    }

    fn rules_in(work: &Path, excludes: &[&str], gitignore: bool, vcs: bool) -> SourceRules {
        let excludes: Vec<String> = excludes.iter().map(|e| e.to_string()).collect();
        SourceRules::new(SourceFilter::default(), &excludes, gitignore, vcs, work).unwrap()
    }

    fn keeps(rules: &SourceRules, work: &Path, rel: &str, is_dir: bool) -> bool {
        let disk = work.join(rel);
        rules.keeps(&Candidate { disk: &disk, name: Path::new(rel), is_dir })
    }

    #[test]
    fn version_control_directories_are_left_out_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let rules = rules_in(dir.path(), &[], false, false);
        assert!(!keeps(&rules, dir.path(), "src/.git", true));
        assert!(!keeps(&rules, dir.path(), "src/.svn", true));
        assert!(keeps(&rules, dir.path(), "src/.gitignore", false));
        assert!(keeps(&rules, dir.path(), "src/.git", false), "a file named .git (a worktree link) is not a directory");
        assert_eq!(rules.left_out_vcs(), [PathBuf::from("src/.git"), PathBuf::from("src/.svn")]);
        assert!(keeps(&rules_in(dir.path(), &[], false, true), dir.path(), "src/.git", true));
    }

    #[test]
    fn exclude_patterns_follow_gitignore_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let rules = rules_in(dir.path(), &["*.o", "build/", "cells/tmp", "!keep.o"], false, false);
        assert!(!keeps(&rules, dir.path(), "src/deep/x.o", false));
        assert!(keeps(&rules, dir.path(), "src/deep/keep.o", false));
        assert!(!keeps(&rules, dir.path(), "src/build", true));
        assert!(keeps(&rules, dir.path(), "src/build", false), "`build/` matches directories only");
        assert!(!keeps(&rules, dir.path(), "cells/tmp", true));
        assert!(keeps(&rules, dir.path(), "src/cells/tmp", true), "a pattern with a slash is anchored");
        let error = SourceRules::new(SourceFilter::default(), &["x{a,b".into()], false, false, dir.path()).unwrap_err();
        assert!(error.to_string().contains("--exclude `x{a,b`"), "{error}");
    }

    #[test]
    fn gitignore_files_apply_only_when_asked_and_the_nearest_decides() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        std::fs::create_dir_all(work.join("src/sub")).unwrap();
        std::fs::write(work.join(".gitignore"), "*.log\nscratch/\n").unwrap();
        std::fs::write(work.join("src/sub/.gitignore"), "!wanted.log\n").unwrap();
        let rules = rules_in(work, &[], true, false);
        assert!(!keeps(&rules, work, "src/run.log", false));
        assert!(!keeps(&rules, work, "src/scratch", true));
        assert!(keeps(&rules, work, "src/sub/wanted.log", false));
        assert!(keeps(&rules, work, "src/cell.sp", false));
        assert!(keeps(&rules_in(work, &[], false, false), work, "src/run.log", false));
    }

    #[test]
    fn selects_by_base_name_and_skips_missing_or_outside_paths() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("a/b/c")).unwrap();
        let sources = ["a/b/c", "missing", "../work/a", "..", "."].map(String::from);
        let Selection { roots, seen, warnings } = select(&sources, &work);
        let seen: Vec<Seen> = seen.into_iter().map(|(_, seen)| seen).collect();
        assert_eq!(seen, [Seen::Exists, Seen::Missing, Seen::Exists, Seen::Outside, Seen::Exists]);
        assert_eq!(Seen::Missing.status("x"), "Check: Not Exist source_dir=x");
        let names: Vec<_> = roots.iter().map(|r| r.name.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["c", "a", ""]);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("`missing`") && warnings[0].contains("does not exist"));
        assert!(warnings[1].contains("`..`") && warnings[1].contains("outside"));
    }
}
