//! Turns the bytes a run's pipes deliver, in the order the server read them, into line
//! events in that same order. One place sees every pipe, so a line on one pipe first
//! ends what another pipe left unfinished (a progress meter's last `\r` rewrite, a
//! prompt without its newline): the meter's final state comes before the `finished`
//! line printed after it, in a terminal and in a piped log alike.

use std::time::{Duration, Instant};

use crate::executor::{JobEvent, Pipe};

/// A line longer than this is sent in pieces, so one endless line cannot exhaust
/// memory; shorter lines stay whole. Well below gRPC's default 4 MiB message limit,
/// which the Python client keeps (`docs/protocol.md`).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How long a pipe's unfinished text must have waited before another pipe's line ends
/// it: a read can stop in the middle of a line the program wrote whole (the pipe held
/// more than one read takes), and the rest follows at once; text a program left
/// unfinished (a prompt, `wrote X` before its newline) waits longer.
pub const UNFINISHED_AFTER: Duration = Duration::from_millis(250);

/// At most this often a rewritten line is reported as progress (tqdm redraws up to ten
/// times a second).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The line events of one run's pipes. With `progress`, text that ends in a carriage
/// return is a line being rewritten: reported as progress (rate-limited), and the line
/// finally sent is what a terminal would show (its last rewrite). Without, lines end
/// at newlines only and keep their carriage returns (a trailing one goes).
#[derive(Debug)]
pub struct Lines {
    progress: bool,
    pipes: [PipeText; 3],
}

/// What one pipe has said since its last whole line.
#[derive(Debug, Default)]
struct PipeText {
    /// Bytes since the last `\n` (or `\r`, with progress).
    segment: Vec<u8>,
    /// The last text that ended in `\r`: a `\n` right after makes it the line (`\r\n`).
    rewritten: Option<String>,
    /// What was pending went out as a line because another pipe printed one: the
    /// newline that ends it here ends nothing more.
    ended_early: bool,
    last_progress: Option<Instant>,
    /// When the last bytes of `segment` came.
    last_bytes: Option<Instant>,
}

impl PipeText {
    /// The unfinished text a terminal would show now, if any.
    fn pending(&self) -> Option<String> {
        match (&self.segment[..], &self.rewritten) {
            ([], Some(rewritten)) if !rewritten.is_empty() => Some(rewritten.clone()),
            ([], _) => None,
            (segment, _) => Some(String::from_utf8_lossy(segment).into_owned()),
        }
    }

    /// What another pipe's line ends first: a rewrite's last state at once, text left
    /// without its line break once it has waited [`UNFINISHED_AFTER`] (sooner, it is
    /// more likely a read that stopped mid-line).
    fn unfinished(&self, now: Instant) -> Option<String> {
        let waited = self.last_bytes.is_none_or(|at| now.saturating_duration_since(at) >= UNFINISHED_AFTER);
        match self.segment.is_empty() || waited {
            true => self.pending(),
            false => None,
        }
    }
}

fn index(pipe: Pipe) -> usize {
    match pipe {
        Pipe::Stdout => 0,
        Pipe::Stderr => 1,
        Pipe::Merged => 2,
    }
}

const PIPES: [Pipe; 3] = [Pipe::Stdout, Pipe::Stderr, Pipe::Merged];

impl Lines {
    pub fn new(progress: bool) -> Lines {
        Lines { progress, pipes: Default::default() }
    }

    /// Takes the next bytes `pipe` delivered; the events they complete go to `out`.
    pub fn feed(&mut self, pipe: Pipe, mut bytes: &[u8], now: Instant, out: &mut Vec<JobEvent>) {
        let stops: &[u8] = if self.progress { b"\r\n" } else { b"\n" };
        while !bytes.is_empty() {
            let text = &mut self.pipes[index(pipe)];
            text.last_bytes = Some(now);
            let room = MAX_LINE_BYTES - text.segment.len();
            match bytes.iter().position(|b| stops.contains(b)) {
                Some(at) if at < room => {
                    text.segment.extend_from_slice(&bytes[..at]);
                    let stop = bytes[at];
                    bytes = &bytes[at + 1..];
                    self.segment_ended(pipe, stop, now, out);
                }
                _ => {
                    let take = bytes.len().min(room);
                    text.segment.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if text.segment.len() >= MAX_LINE_BYTES {
                        // A piece of a line longer than the cap.
                        text.rewritten = None;
                        let piece = String::from_utf8_lossy(&std::mem::take(&mut text.segment)).into_owned();
                        self.line(pipe, piece, now, out);
                    }
                }
            }
        }
    }

    /// Whether nothing fed so far can change what later bytes make (no text waits for
    /// its line break, no rewrite is pending, no progress update was sent within the
    /// rate limit before `now`): a fresh `Lines` fed what comes next makes the same
    /// events, so a replay may start here.
    pub fn at_rest(&self, now: Instant) -> bool {
        self.pipes.iter().all(|text| {
            text.segment.is_empty()
                && text.rewritten.is_none()
                && !text.ended_early
                && text.last_progress.is_none_or(|at| now.saturating_duration_since(at) >= PROGRESS_INTERVAL)
        })
    }

    /// `pipe` closed: what it left unfinished is its last line (what the terminal shows).
    pub fn end(&mut self, pipe: Pipe, out: &mut Vec<JobEvent>) {
        let text = &mut self.pipes[index(pipe)];
        if let Some(pending) = text.pending() {
            *text = PipeText::default();
            out.push(JobEvent::Line { pipe, text: pending });
        }
    }

    fn segment_ended(&mut self, pipe: Pipe, stop: u8, now: Instant, out: &mut Vec<JobEvent>) {
        let text = &mut self.pipes[index(pipe)];
        let mut segment = std::mem::take(&mut text.segment);
        if stop == b'\r' {
            let rewrite = String::from_utf8_lossy(&segment).into_owned();
            text.ended_early = false;
            text.rewritten = Some(rewrite.clone());
            if text.last_progress.is_none_or(|at| now.duration_since(at) >= PROGRESS_INTERVAL) {
                text.last_progress = Some(now);
                out.push(JobEvent::Progress { pipe, text: rewrite });
            }
            return;
        }
        let line = match (segment.is_empty(), text.rewritten.take()) {
            (true, Some(before)) if self.progress => before,
            // Its text went out already, when another pipe printed a line.
            (true, None) if std::mem::take(&mut text.ended_early) => return,
            _ => {
                if segment.last() == Some(&b'\r') {
                    segment.pop();
                }
                String::from_utf8_lossy(&segment).into_owned()
            }
        };
        text.ended_early = false;
        self.line(pipe, line, now, out);
    }

    /// A whole line of `pipe`, after what the other pipes left unfinished.
    fn line(&mut self, pipe: Pipe, line: String, now: Instant, out: &mut Vec<JobEvent>) {
        for other in PIPES.into_iter().filter(|other| *other != pipe) {
            let text = &mut self.pipes[index(other)];
            if let Some(pending) = text.unfinished(now) {
                text.segment.clear();
                text.rewritten = None;
                text.ended_early = true;
                out.push(JobEvent::Line { pipe: other, text: pending });
            }
        }
        out.push(JobEvent::Line { pipe, text: line });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_rest_only_where_a_fresh_lines_would_make_the_same_events() {
        let start = Instant::now();
        let mut lines = Lines::new(true);
        let mut out = Vec::new();
        assert!(lines.at_rest(start));
        lines.feed(Pipe::Stdout, b"a whole line\nhalf", start, &mut out);
        assert!(!lines.at_rest(start), "a line waits for its break");
        lines.feed(Pipe::Stdout, b" a line\n", start, &mut out);
        assert!(lines.at_rest(start));
        lines.feed(Pipe::Stderr, b"50%\r", start, &mut out);
        assert!(!lines.at_rest(start), "a rewrite is pending");
        lines.feed(Pipe::Stderr, b"\n", start, &mut out);
        // The rate limit of progress updates still counts from the last one.
        assert!(!lines.at_rest(start + PROGRESS_INTERVAL / 2));
        assert!(lines.at_rest(start + PROGRESS_INTERVAL));
    }

    fn out(pipe: Pipe, text: &str) -> JobEvent {
        JobEvent::Line { pipe, text: text.into() }
    }

    /// The events of pieces fed in this order, each `millis` after the start.
    fn events(progress: bool, pieces: &[(Pipe, &[u8], u64)]) -> Vec<JobEvent> {
        let start = Instant::now();
        let mut lines = Lines::new(progress);
        let mut events = Vec::new();
        for (pipe, bytes, millis) in pieces {
            lines.feed(*pipe, bytes, start + Duration::from_millis(*millis), &mut events);
        }
        for pipe in PIPES {
            lines.end(pipe, &mut events);
        }
        events
    }

    #[test]
    fn rewritten_lines_become_progress_and_the_line_is_what_a_terminal_shows() {
        let got = events(true, &[(Pipe::Stdout, b"crlf\r\n 10%\r 50%\r100%\nend\rpartial", 0)]);
        // The first rewrite is reported at once; the next ones within 100 ms are not.
        assert_eq!(got[0], JobEvent::Progress { pipe: Pipe::Stdout, text: "crlf".into() });
        let lines: Vec<&JobEvent> = got.iter().filter(|e| matches!(e, JobEvent::Line { .. })).collect();
        assert_eq!(lines, [&out(Pipe::Stdout, "crlf"), &out(Pipe::Stdout, "100%"), &out(Pipe::Stdout, "partial")]);
    }

    #[test]
    fn without_progress_lines_end_at_newlines_and_keep_their_rewrites() {
        let got = events(false, &[(Pipe::Stdout, b"crlf\r\n 10%\r100%\nend", 0)]);
        assert_eq!(got, [out(Pipe::Stdout, "crlf"), out(Pipe::Stdout, " 10%\r100%"), out(Pipe::Stdout, "end")]);
    }

    #[test]
    fn a_line_split_across_reads_is_one_line() {
        let got =
            events(false, &[(Pipe::Stdout, b"hel", 0), (Pipe::Stdout, b"lo\nwor", 1), (Pipe::Stdout, b"ld\n", 2)]);
        assert_eq!(got, [out(Pipe::Stdout, "hello"), out(Pipe::Stdout, "world")]);
    }

    // A meter on stderr (`\r` after each state, tqdm's `\r` before), then `finished` on
    // stdout, then the meter's closing newline: the meter's last state comes first,
    // and the newline adds no line of its own.
    #[test]
    fn a_line_on_one_pipe_first_ends_the_meter_another_left_unfinished() {
        for meter in [&b" 50%\r100%\r"[..], &b"\r 50%\r100%"[..]] {
            let got = events(
                true,
                &[(Pipe::Stderr, meter, 0), (Pipe::Stdout, b"finished\n", 500), (Pipe::Stderr, b"\n", 600)],
            );
            let lines: Vec<&JobEvent> = got.iter().filter(|e| matches!(e, JobEvent::Line { .. })).collect();
            assert_eq!(lines, [&out(Pipe::Stderr, "100%"), &out(Pipe::Stdout, "finished")], "{meter:?}");
        }
        // A prompt without its newline, then the other pipe: in the order read.
        let got = events(
            false,
            &[
                (Pipe::Stdout, b"wrote lib/a.lib", 0),
                (Pipe::Stderr, b"characterizing b\n", 400),
                (Pipe::Stdout, b"\n", 500),
            ],
        );
        assert_eq!(got, [out(Pipe::Stdout, "wrote lib/a.lib"), out(Pipe::Stderr, "characterizing b")]);
        // What follows on the same pipe is a line of its own.
        let got = events(false, &[(Pipe::Stdout, b"a", 0), (Pipe::Stderr, b"b\n", 300), (Pipe::Stdout, b"c\n", 400)]);
        assert_eq!(got, [out(Pipe::Stdout, "a"), out(Pipe::Stderr, "b"), out(Pipe::Stdout, "c")]);
        // A read that stopped mid-line, the other pipe's line read before the rest:
        // the line stays whole.
        let got = events(
            false,
            &[(Pipe::Stderr, b"half of a ", 0), (Pipe::Stdout, b"other\n", 1), (Pipe::Stderr, b"line\n", 2)],
        );
        assert_eq!(got, [out(Pipe::Stdout, "other"), out(Pipe::Stderr, "half of a line")]);
    }

    #[test]
    fn an_endless_line_comes_in_pieces_of_the_cap() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let got = events(false, &[(Pipe::Stdout, &long, 0), (Pipe::Stdout, b"\n", 1)]);
        let sizes: Vec<usize> = got
            .iter()
            .map(|e| match e {
                JobEvent::Line { text, .. } => text.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [MAX_LINE_BYTES, 10]);
    }
}
