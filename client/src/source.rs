//! Chooses what to upload: each SOURCE path under its base name, skipping (with a
//! warning, as the Python client does) paths that do not exist or lie outside the
//! working directory, and the SOURCE_INCLUDE / SOURCE_EXCLUDE / SOURCE_MATCH filters.

use std::path::{Component, Path, PathBuf};

use lrpymrpc_archive::PackRoot;

/// The file filters. Directories always pass, so empty directories arrive.
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

/// The roots to pack, and a warning for each path passed over.
pub fn select(sources: &[String], workdir: &Path) -> (Vec<PackRoot>, Vec<String>) {
    let mut roots = Vec::new();
    let mut warnings = Vec::new();
    for source in sources {
        let path = normalize(&workdir.join(source));
        if !path.starts_with(workdir) {
            warnings.push(format!("SOURCE `{source}` skipped: it is outside the working directory"));
            continue;
        }
        if std::fs::metadata(&path).is_err() {
            warnings.push(format!("SOURCE `{source}` skipped: it does not exist"));
            continue;
        }
        // The working directory itself uploads its contents at the top of the job.
        let name = match path.strip_prefix(workdir) {
            Ok(rest) if rest.as_os_str().is_empty() => PathBuf::new(),
            _ => PathBuf::from(path.file_name().unwrap_or_default()),
        };
        roots.push(PackRoot { disk: path, name });
    }
    (roots, warnings)
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

    #[test]
    fn selects_by_base_name_and_skips_missing_or_outside_paths() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("a/b/c")).unwrap();
        let sources = ["a/b/c", "missing", "../work/a", "..", "."].map(String::from);
        let (roots, warnings) = select(&sources, &work);
        let names: Vec<_> = roots.iter().map(|r| r.name.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["c", "a", ""]);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("`missing`") && warnings[0].contains("does not exist"));
        assert!(warnings[1].contains("`..`") && warnings[1].contains("outside"));
    }
}
