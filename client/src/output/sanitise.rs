//! The terminal sanitiser: every byte a server or a remote command sends is shown
//! through here, and nothing but text and plain colour gets through. It carries a
//! security invariant (README.md, Security: a hostile server cannot move the cursor, rewrite
//! the `[host:port]:` prefix, set a title, or reorder a line with bidirectional
//! controls), so it lives alone, with its tests beside it.

/// Text that may quote a server (diagnostics, job ids) made safe to print: each line
/// cleaned as [`clean_line`] does, with no colour kept and carriage returns dropped
/// (so a quoted value cannot erase the words before it); line breaks stay.
pub fn clean_text(text: &str) -> String {
    let text = text.replace('\r', "");
    text.split('\n').map(|line| clean_line(line, false)).collect::<Vec<_>>().join("\n")
}

/// Unicode controls that reorder how a line is shown (bidirectional overrides and
/// isolates): a line could show text in another order than it has.
fn is_reordering(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// A remote line made safe to print, on a terminal too: no escape sequences that move
/// the cursor, set titles, switch character sets or clear the screen, no other control
/// characters (C0 and C1, backspace, SO/SI), no bidirectional overrides; plain colour
/// (SGR: digits and `;` only) kept only when `keep_colour`. Of carriage-return
/// overwrites (`\r` progress meters), only the last is kept, as a terminal would show
/// it, so nothing can overwrite the `[host:port]:` prefix.
pub fn clean_line(line: &str, keep_colour: bool) -> std::borrow::Cow<'_, str> {
    let line = match line.rfind('\r') {
        Some(at) if at + 1 < line.len() => &line[at + 1..],
        Some(_) => line.trim_end_matches('\r').rsplit('\r').next().unwrap_or(""),
        None => line,
    };
    if !line.chars().any(|c| (c.is_control() && c != '\t') || is_reordering(c)) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    let mut sequence = String::from("\x1b[");
                    for next in chars.by_ref() {
                        sequence.push(next);
                        if ('\u{40}'..='\u{7e}').contains(&next) {
                            break;
                        }
                    }
                    let plain_sgr = sequence.ends_with('m')
                        && sequence[2..sequence.len() - 1].chars().all(|c| c.is_ascii_digit() || c == ';');
                    if keep_colour && plain_sgr {
                        out.push_str(&sequence);
                    }
                }
                // A string command (OSC: titles, hyperlinks; DCS, SOS, PM, APC): up to BEL or ST.
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(next) = chars.next() {
                        if next == '\x07' || (next == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Any other escape sequence (`ESC # 8`, `ESC ( 0`): intermediates, then one final byte.
                Some(' '..='/') => {
                    while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                    chars.next();
                }
                _ => {}
            },
            '\t' => out.push('\t'),
            c if c.is_control() || is_reordering(c) => {}
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_lines_lose_control_sequences_and_keep_colour_only_when_asked() {
        let coloured = "\x1b[31mred\x1b[0m text";
        assert_eq!(clean_line(coloured, false), "red text");
        assert_eq!(clean_line(coloured, true), coloured);
        assert_eq!(clean_line("\x1b]0;title\x07a\x1b[2Jb\x07c\td", true), "abc\td");
        assert_eq!(clean_line(" 10%\r 50%\r100%", false), "100%");
        assert_eq!(clean_line("done\r", false), "done");
        assert_eq!(clean_line("plain", false), "plain");
    }

    #[test]
    fn nothing_but_plain_colour_reaches_a_terminal() {
        // Backspace, DECALN (`ESC # 8`), a charset switch, SO/SI, C1 controls (CSI as
        // one byte, U+009B), OSC, a private `m` sequence, bidi overrides.
        let hostile = "a\x08b\x1b#8c\x1b(0d\x0ee\x0ff\u{9b}2Jg\x1b]8;;x\x1b\\h\x1b[>4;2mi\u{202e}j\x1b[1;31mk";
        assert_eq!(clean_line(hostile, true), "abcdef2Jghij\x1b[1;31mk");
        assert_eq!(clean_line(hostile, false), "abcdef2Jghijk");
        assert_eq!(clean_text("id=\x1b[2J1\nnext\r\x1b[31mline"), "id=1\nnextline");
    }
}
