//! The Python interpreter that makes job environments, found once.

use std::path::PathBuf;

use crate::error::JobError;

/// The Python that makes environments, resolved once: through shims (pyenv) to the
/// real interpreter, so it also runs where the shim's directory is not visible.
#[derive(Debug, Clone)]
pub struct Python {
    pub executable: PathBuf,
    /// Where its standard library lives (`sys.base_prefix`).
    pub base_prefix: PathBuf,
    /// `sys.version`: with the executable, what a kept environment was made by.
    pub version: String,
}

impl Python {
    /// What an environment made by this Python records, to be reused only by it.
    pub fn identity(&self) -> String {
        format!("{} {}", self.executable.display(), self.version)
    }
}

/// Finds `python3` (or `python`) on PATH and asks it where it really lives.
pub fn python() -> Result<Python, JobError> {
    static FOUND: std::sync::OnceLock<Option<Python>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let on_path = which::which("python3").or_else(|_| which::which("python")).ok()?;
            let output = std::process::Command::new(on_path)
                .args(["-c", "import sys; print(sys.executable); print(sys.base_prefix); print(sys.version)"])
                .output()
                .ok()?;
            let text = String::from_utf8(output.stdout).ok()?;
            let mut lines = text.lines();
            let executable = PathBuf::from(lines.next()?);
            let base_prefix = PathBuf::from(lines.next()?);
            let version = lines.collect::<Vec<_>>().join(" ");
            Some(Python { executable, base_prefix, version })
        })
        .clone()
        .ok_or(JobError::NoPython)
}
