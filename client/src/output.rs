//! What the user sees. Status and remote stdout lines go to stdout (remote stderr
//! lines to stderr, when the server says which is which), each prefixed
//! `[host:port]:` exactly as the Python client prints them (users grep their logs
//! for these), written and flushed line by line even into a pipe. Diagnostics go to
//! stderr. A closed stdout (`| head`) is not an error: the job carries on.

use std::io::Write;

use crate::exit::ClientError;

/// Prints lines with the `[host:port]:` prefix.
#[derive(Debug, Clone)]
pub struct Output {
    prefix: String,
}

impl Output {
    pub fn new(host: &str, port: &str) -> Output {
        Output { prefix: format!("[{host}:{port}]:") }
    }

    /// One line on stdout, prefixed and flushed at once.
    pub fn line(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}{text}", self.prefix);
        let _ = stdout.flush();
    }

    /// A remote stderr line: prefixed like the others, on stderr.
    pub fn line_stderr(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{}{text}", self.prefix);
    }

    /// A warning on stderr; the job goes on.
    pub fn warn(&self, text: &str) {
        eprintln!("lrpymrpc: warning: {text}");
    }
}

/// A failure on stderr: one line, then a `hint:` line when a fix is known.
pub fn error(error: &ClientError) {
    eprintln!("lrpymrpc: error: {error}");
    if let Some(hint) = error.hint() {
        eprintln!("hint: {hint}");
    }
}
