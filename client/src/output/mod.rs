//! What the user sees, in one place. Status and remote stdout lines go to stdout
//! (remote stderr lines to stderr, when the server says which is which), each
//! prefixed `[host:port]:` exactly as the Python client prints them (users grep their
//! logs for these), written and flushed line by line even into a pipe. Diagnostics go
//! to stderr. A closed stdout (`| head`) is not an error: the job carries on.
//!
//! On a terminal, packing/uploading and downloading/unpacking show a progress bar on
//! stderr, with lines printed above it, and diagnostics are coloured (never with
//! `NO_COLOR`). Into a pipe: plain lines only, no control characters, not even from
//! the remote command.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::{ClientError, Step};

mod sanitise;
pub use sanitise::{clean_line, clean_text};

/// How much to show; from `--quiet`, `--verbose`, `--no-progress`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verbosity {
    pub quiet: bool,
    pub verbose: bool,
    pub no_progress: bool,
}

/// The upstream client's line prefix, `--prefix`'s default.
pub const DEFAULT_PREFIX: &str = "[{host}:{port}]:";

/// The line prefix from a `--prefix` template: `{host}`, `{port}` and `{server}`
/// (`host:port`, IPv6 in brackets) are replaced, `{{` and `}}` are braces.
pub fn render_prefix(template: &str, host: &str, port: u16) -> Result<String, String> {
    let server = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            out.push_str(&tail[..1]);
            rest = after;
            continue;
        }
        let close = tail.find('}').filter(|_| tail.starts_with('{'));
        let Some(close) = close else {
            return Err(format!("`{template}` has a lone `{}`; write `{{{{` or `}}}}` for a brace", &tail[..1]));
        };
        match &tail[1..close] {
            "host" => out.push_str(host),
            "port" => out.push_str(&port.to_string()),
            "server" => out.push_str(&server),
            other => {
                return Err(format!(
                    "`{{{other}}}` in `{template}` is not a placeholder; use {{host}}, {{port}} or {{server}}"
                ));
            }
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    Ok(clean_line(&out, false).into_owned())
}

/// The terminal facts that decide colours, bars and escape sequences.
#[derive(Debug, Clone, Copy)]
struct Terminal {
    stdout: bool,
    stderr: bool,
    colour: bool,
}

impl Terminal {
    fn detect() -> Terminal {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Terminal {
            stdout: std::io::stdout().is_terminal(),
            stderr: std::io::stderr().is_terminal(),
            colour: !no_colour,
        }
    }
}

/// Prints lines, warnings, timings and progress bars. Cheap to clone; clones share
/// the current step and bar.
#[derive(Debug, Clone)]
pub struct Output {
    prefix: String,
    verbosity: Verbosity,
    terminal: Terminal,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    step: Step,
    started: Instant,
    bar: Option<ProgressBar>,
    /// The pipe (stderr or not) of the remote progress text the status line shows; a
    /// line from that pipe ends it.
    progress_on_stderr: Option<bool>,
}

/// What the status line says while the remote command runs and shows no progress.
const RUNNING: &str = "running on the server";

impl Output {
    /// The same output with another line prefix (the server a list placed the job on).
    pub fn with_prefix(&self, prefix: &str) -> Output {
        Output { prefix: prefix.to_string(), ..self.clone() }
    }

    /// `prefix` starts every remote line and status line (see [`render_prefix`]).
    pub fn new(prefix: &str, verbosity: Verbosity) -> Output {
        let prefix = prefix.to_string();
        let state = State { step: Step::Connect, started: Instant::now(), bar: None, progress_on_stderr: None };
        Output { prefix, verbosity, terminal: Terminal::detect(), state: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes one line with any progress bar moved out of the way. The line and its
    /// newline leave in one write, so the lines of clients sharing a pipe (`make -j |
    /// tee log`) never splice; the kernel keeps a write whole up to the pipe's atomic
    /// size (4 KiB on Linux), so a longer line may still interleave with another
    /// writer's output.
    fn write(&self, to_stderr: bool, text: &str) {
        let bar = self.state().bar.clone();
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        let write = || {
            if to_stderr {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            } else {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(line.as_bytes());
                let _ = stdout.flush();
            }
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// A status line of the Python client (`Upload`, `Finish: done.`); hidden by `--quiet`.
    /// It may carry what a server sent (a job id): cleaned like a remote line.
    pub fn status(&self, text: &str) {
        if !self.verbosity.quiet {
            self.write(false, &format!("{}{}", self.prefix, clean_text(text)));
        }
    }

    /// A line the remote command printed on stdout (or an unlabelled one).
    pub fn remote(&self, text: &str) {
        self.end_remote_progress(false);
        let text = clean_line(text, self.terminal.stdout && self.terminal.colour);
        self.write(false, &format!("{}{text}", self.prefix));
    }

    /// A line the remote command printed on stderr.
    pub fn remote_stderr(&self, text: &str) {
        self.end_remote_progress(true);
        let text = clean_line(text, self.terminal.stderr && self.terminal.colour);
        self.write(true, &format!("{}{text}", self.prefix));
    }

    /// The remote command rewrote a line in place (tqdm, pip): on a terminal the
    /// status line shows it, with the time so far, until that pipe's next line; into a
    /// pipe nothing (the line itself comes when it is finished).
    pub fn remote_progress(&self, text: &str, on_stderr: bool) {
        let mut state = self.state();
        if let Some(bar) = &state.bar {
            bar.set_message(clean_line(text, false).into_owned());
            state.progress_on_stderr = Some(on_stderr);
        }
    }

    fn end_remote_progress(&self, on_stderr: bool) {
        let mut state = self.state();
        if state.progress_on_stderr == Some(on_stderr) {
            state.progress_on_stderr = None;
            if let Some(bar) = &state.bar {
                bar.set_message(RUNNING);
            }
        }
    }

    /// A warning on stderr; the job goes on. Hidden by `--quiet`.
    pub fn warn(&self, text: &str) {
        self.warn_with_hint(text, None);
    }

    /// A warning, then a `hint:` line when a fix is known; hidden by `--quiet`.
    pub fn warn_with_hint(&self, text: &str, hint: Option<&str>) {
        if !self.verbosity.quiet {
            self.write(true, &format!("lrpymrpc: {}: {}", self.paint("warning", YELLOW), clean_text(&in_words(text))));
            if let Some(hint) = hint {
                self.write(true, &format!("{}: {}", self.paint("hint", CYAN), clean_text(hint)));
            }
        }
    }

    /// A detail for `--verbose` only.
    pub fn verbose(&self, text: &str) {
        if self.verbosity.verbose && !self.verbosity.quiet {
            self.write(true, &format!("lrpymrpc: {}", clean_text(text)));
        }
    }

    /// Something worth knowing that is not a problem; hidden by `--quiet`.
    pub fn note(&self, text: &str) {
        if !self.verbosity.quiet {
            self.write(true, &format!("lrpymrpc: note: {}", clean_text(text)));
        }
    }

    /// A failure on stderr: one line, then a `hint:` line when a fix is known.
    pub fn error(&self, error: &ClientError) {
        self.finish_progress();
        // Error messages quote what a server said (statuses, entry names): cleaned.
        let message = in_words(&error.to_string());
        self.write(true, &format!("lrpymrpc: {}: {}", self.paint("error", RED), clean_text(&message)));
        if let Some(hint) = error.hint() {
            self.write(true, &format!("{}: {}", self.paint("hint", CYAN), clean_text(hint)));
        }
    }

    /// Marks the start of a step, for messages about where a job stopped and for timings.
    pub fn begin(&self, step: Step) {
        let mut state = self.state();
        state.step = step;
        state.started = Instant::now();
    }

    /// The step in progress.
    pub fn step(&self) -> Step {
        self.state().step
    }

    /// Ends a step: with `--verbose`, says how long it took and what it moved.
    pub fn end(&self, detail: &str) {
        self.finish_progress();
        if self.verbosity.verbose && !self.verbosity.quiet {
            let (step, took) = {
                let state = self.state();
                (state.step, state.started.elapsed())
            };
            let detail = if detail.is_empty() { String::new() } else { format!(", {detail}") };
            self.write(true, &format!("lrpymrpc: {step} took {}{detail}", seconds(took)));
        }
    }

    /// A progress display for a transfer, on a terminal only; nothing into a pipe.
    /// It spins with bytes and rate until [`Progress::set_total`] gives it a total;
    /// then it is a bar with a percentage and an ETA.
    pub fn progress(&self, label: &str) -> Progress {
        self.spinner(label, "{spinner} {prefix:<9} {msg}{binary_bytes:>11} {binary_bytes_per_sec:>13} {elapsed}")
    }

    /// On a terminal, a line saying that the remote command still runs while it prints
    /// nothing (lines it prints go above it); into a pipe, nothing.
    pub fn running(&self) -> Progress {
        let progress = self.spinner("execute", "{spinner} {prefix:<9} {elapsed:>3} {wide_msg}");
        if let Some(bar) = &progress.bar {
            bar.set_message(RUNNING);
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        progress
    }

    fn spinner(&self, label: &str, template: &str) -> Progress {
        if !self.terminal.stderr || self.verbosity.quiet || self.verbosity.no_progress {
            return Progress { bar: None };
        }
        let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = ProgressBar::new_spinner().with_style(style).with_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.state().bar = Some(bar.clone());
        Progress { bar: Some(bar) }
    }

    /// Ends a transfer with its one summary line (`uploaded 2,000 files, 200.0 MiB in
    /// 2.6 s`), on stderr; hidden by `--quiet`.
    pub fn transferred(&self, verb: &str, files: u64, bytes: u64) {
        self.finish_progress();
        if self.verbosity.quiet {
            return;
        }
        let took = self.state().started.elapsed();
        let rate = match took.as_secs_f64() {
            secs if secs >= 0.5 => format!(" ({}/s)", lrpymrpc_units::human_bytes((bytes as f64 / secs) as u64)),
            _ => String::new(),
        };
        let files = lrpymrpc_units::count_of(files, "file");
        let summary = format!("{verb} {files}, {} in {}{rate}", lrpymrpc_units::human_bytes(bytes), seconds(took));
        self.write(true, &format!("lrpymrpc: {summary}"));
    }

    /// Ends a content-addressed upload with its summary line: what the tree holds, and
    /// what of it travelled (`uploaded 1 of 2,000 files (10.0 KiB of 200.0 MiB) in
    /// 0.12 s; the server had the rest`); hidden by `--quiet`.
    pub fn transferred_tree(&self, files: u64, file_bytes: u64, sent_blobs: u64, sent_bytes: u64) {
        self.finish_progress();
        if self.verbosity.quiet {
            return;
        }
        let took = seconds(self.state().started.elapsed());
        let (count, human) = (lrpymrpc_units::human_count, lrpymrpc_units::human_bytes);
        let tree = format!("{}, {}", lrpymrpc_units::count_of(files, "file"), human(file_bytes));
        let summary = match (sent_blobs, sent_bytes == file_bytes) {
            (0, _) => format!("uploaded nothing in {took}: the server had the whole tree ({tree})"),
            (_, true) => format!("uploaded {tree} in {took}"),
            (blobs, false) => format!(
                "uploaded {} of {} files ({} of {}) in {took}; the server had the rest",
                count(blobs),
                count(files),
                human(sent_bytes),
                human(file_bytes)
            ),
        };
        self.write(true, &format!("lrpymrpc: {summary}"));
    }

    /// Ends the display of [`Output::running`] or a transfer without a line.
    pub fn clear_progress(&self) {
        self.finish_progress();
    }

    fn finish_progress(&self) {
        if let Some(bar) = self.state().bar.take() {
            bar.finish_and_clear();
        }
    }

    fn paint(&self, word: &str, colour: &str) -> String {
        if self.terminal.stderr && self.terminal.colour {
            format!("\x1b[1;{colour}m{word}\x1b[0m")
        } else {
            word.to_string()
        }
    }
}

const RED: &str = "31";
const YELLOW: &str = "33";
const CYAN: &str = "36";

/// A transfer's progress bar, or nothing when output is not a terminal. Usable from
/// the packing and unpacking threads.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Whether anything is shown (a terminal): work done only for the display, such
    /// as counting what an upload will send, is skipped otherwise.
    pub fn is_shown(&self) -> bool {
        self.bar.is_some()
    }

    /// Counts bytes moved.
    pub fn add_bytes(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Shows a file count beside the bytes; `of`, when the total is known.
    pub fn set_files(&self, files: u64, of: Option<u64>) {
        if let Some(bar) = &self.bar {
            match of {
                Some(total) => bar.set_message(format!("{files}/{total} ")),
                None => bar.set_message(format!("{files} files ")),
            }
        }
    }

    /// Turns the spinner into a bar of `bytes`, with a percentage and an ETA.
    pub fn set_total(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            // Short enough for an 80-column terminal (a wrapped bar redraws badly).
            let template = "{spinner} {prefix} {msg}[{bar:16}] {percent:>3}% {binary_bytes}/{binary_total_bytes} \
                            {binary_bytes_per_sec} ETA {eta}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_length(bytes);
        }
    }
}

/// "2.42 s", or "0.018 s" below a second (a millisecond counts there), for timings.
pub fn seconds(duration: Duration) -> String {
    match duration < Duration::from_secs(1) {
        true => format!("{:.3} s", duration.as_secs_f64()),
        false => format!("{:.2} s", duration.as_secs_f64()),
    }
}

/// A message in users' words: the `(os error N)` that Rust appends to system errors
/// dropped (the words before it say the same), and a TLS alert's name (`received fatal
/// alert: CertificateExpired`) said as what it means. Every error and warning the
/// client prints goes through here.
pub fn in_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        let after = &rest[at + " (os error ".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        out.push_str(&rest[..at]);
        if digits > 0 && after[digits..].starts_with(')') {
            rest = &after[digits + 1..];
        } else {
            out.push_str(" (os error ");
            rest = after;
        }
    }
    out.push_str(rest);
    match out.find("received fatal alert: ") {
        Some(at) => {
            let name_at = at + "received fatal alert: ".len();
            let name_len = out[name_at..].chars().take_while(char::is_ascii_alphanumeric).count();
            let name = out[name_at..name_at + name_len].to_string();
            out.replace_range(at..name_at + name_len, &alert_in_words(&name));
            out
        }
        None => out,
    }
}

/// What a TLS alert from the server means for the user.
fn alert_in_words(name: &str) -> String {
    let meaning = match name {
        "CertificateExpired" => "the server says this client certificate has expired",
        "BadCertificate" | "CertificateUnknown" => "the server refused this client certificate",
        "UnknownCA" => "the server does not trust the CA that signed this client certificate",
        "CertificateRevoked" => "the server says this client certificate was revoked",
        "CertificateRequired" => "the server requires a client certificate",
        "AccessDenied" => "the server denied access",
        "HandshakeFailure" => "the server found no TLS version or cipher in common",
        "ProtocolVersion" => "the server does not speak this TLS version",
        "DecryptError" => "the server could not verify this client's key (does the key match the certificate?)",
        _ => "the server ended the TLS session",
    };
    let mut snake = String::new();
    for (index, c) in name.char_indices() {
        if c.is_ascii_uppercase() && index > 0 && !name[..index].ends_with(|p: char| p.is_ascii_uppercase()) {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    format!("{meaning} (TLS alert {snake})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_templates_fill_in_the_server_and_refuse_unknown_placeholders() {
        assert_eq!(render_prefix(DEFAULT_PREFIX, "h", 8766).unwrap(), "[h:8766]:");
        assert_eq!(render_prefix("[{server} lib/x.lib]: ", "::1", 1).unwrap(), "[[::1]:1 lib/x.lib]: ");
        assert_eq!(render_prefix("{{{host}}}", "h", 1).unwrap(), "{h}");
        assert_eq!(render_prefix("", "h", 1).unwrap(), "");
        assert!(render_prefix("{hots}", "h", 1).unwrap_err().contains("`{hots}` in `{hots}` is not a placeholder"));
        assert!(render_prefix("a}b", "h", 1).unwrap_err().contains("lone `}`"));
        assert!(render_prefix("{host", "h", 1).unwrap_err().contains("lone `{`"));
        assert_eq!(render_prefix("\x1b[2J{host}", "h", 1).unwrap(), "h");
    }

    #[test]
    fn messages_lose_os_error_numbers_and_name_tls_alerts_in_words() {
        assert_eq!(
            in_words("cannot read `a`: No such file or directory (os error 2)"),
            "cannot read `a`: No such file or directory"
        );
        assert_eq!(in_words("x (os error 2): y (os error 2)"), "x: y");
        assert_eq!(in_words("kept (os error two)"), "kept (os error two)");
        assert_eq!(
            in_words("cannot connect to h:1: received fatal alert: CertificateExpired"),
            "cannot connect to h:1: the server says this client certificate has expired (TLS alert certificate_expired)"
        );
        assert!(in_words("received fatal alert: UnknownCA").ends_with("(TLS alert unknown_ca)"));
        assert!(
            in_words("received fatal alert: NoRenegotiation")
                .contains("ended the TLS session (TLS alert no_renegotiation)")
        );
    }
}
