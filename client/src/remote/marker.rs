//! `--exit-status-marker`: recovers the command's exit status from a server that
//! does not report it. The command is wrapped so that, after it ends, the shell
//! prints a line with a token unique to this job and `$?`; the client takes the
//! status from that line and does not print it.
//!
//! What it requires of the server: it runs CMD with a POSIX shell (`sh -c`, or
//! Python's `shell=True`) and streams the command's stdout. A server that splits CMD
//! into words and runs them without a shell cannot run the wrapper.

/// The token and the wrapping for one job.
#[derive(Debug, Clone)]
pub struct ExitMarker {
    token: String,
}

impl ExitMarker {
    /// A token no command prints by chance.
    pub fn new() -> ExitMarker {
        ExitMarker { token: format!("__LRPYMRPC_EXIT_{}__", uuid::Uuid::new_v4().simple()) }
    }

    /// The command, run in a subshell (so its own `exit` ends only the subshell),
    /// followed by the marker line.
    pub fn wrap(&self, command: &str) -> String {
        format!("(\n{command}\n); printf '%s=%d\\n' '{}' \"$?\"", self.token)
    }

    /// When `line` carries the marker: the text before it (output that did not end
    /// with a newline) and the status.
    pub fn strip<'a>(&self, line: &'a str) -> Option<(&'a str, i32)> {
        let at = line.rfind(&self.token)?;
        let status = line[at + self.token.len()..].strip_prefix('=')?.trim().parse().ok()?;
        Some((&line[..at], status))
    }
}

impl Default for ExitMarker {
    fn default() -> ExitMarker {
        ExitMarker::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_wrapped(marker: &ExitMarker, command: &str) -> String {
        let output = std::process::Command::new("sh").arg("-c").arg(marker.wrap(command)).output().unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn the_wrapped_command_reports_its_status_even_after_exit() {
        let marker = ExitMarker::new();
        let out = run_wrapped(&marker, "echo hi; exit 3");
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines[0], "hi");
        assert_eq!(marker.strip(lines[1]), Some(("", 3)));
        let out = run_wrapped(&marker, "printf partial");
        assert_eq!(marker.strip(out.trim_end()), Some(("partial", 0)));
    }

    #[test]
    fn other_lines_and_other_tokens_are_left_alone() {
        let marker = ExitMarker::new();
        assert_eq!(marker.strip("__LRPYMRPC_EXIT_0000__=1"), None);
        assert_eq!(marker.strip("plain"), None);
    }
}
