//! Durations and sizes as people type them (`1h30m`, `90s`, `64G`, `64GiB`) and read
//! them (`1.5 s`, `200.0 MiB`): the one parser and the one formatter of each, shared
//! by the client and the server so both accept and print the same forms.
//!
//! Durations: a number alone is seconds; otherwise one or more `NUMBER UNIT` parts
//! (`ms`, `s`/`sec`, `m`/`min`, `h`, `d`), summed: `1h30m`, `1h 30m`, `1.5m`.
//!
//! Sizes: a number alone is bytes; `K`, `M`, `G`, `T` (with or without `iB`) are
//! powers of 1024, `KB`, `MB`, `GB`, `TB` powers of 1000, as GNU `sort -S` and `du`
//! read them. Case does not matter, except that a lone `b` is refused (bit or byte?).
//!
//! Bytes as people read digests and fingerprints: [`hex`], the one encoder of the
//! workspace. Names as people mistype them: [`closest`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parses a duration; zero is allowed (see [`parse_positive_duration`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let example = "such as `90s`, `15m`, `1h30m` or `500ms`";
    if trimmed.is_empty() {
        return Err(format!("an empty value is not a duration {example}"));
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return seconds_to_duration(seconds, trimmed);
    }
    let mut total = 0.0_f64;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let after = after.trim_start();
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| format!("`{trimmed}` is not a duration {example}"))?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "" => return Err(format!("`{trimmed}` lacks a unit after `{number}`; durations read {example}")),
            other => return Err(format!("`{other}` in `{trimmed}` is not a unit; use ms, s, m, h or d ({example})")),
        };
        total += value * scale;
        rest = after.trim_start();
    }
    seconds_to_duration(total, trimmed)
}

/// The longest duration taken: 100 years. Longer ones are no limit anyone means, and
/// a time that far ahead cannot be added to a clock (it would panic on every use).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(format!("`{text}` is not a duration from 0 to 100 years")),
    }
}

/// Parses a duration that must be longer than zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .and_then(|d| if d.is_zero() { Err(format!("`{}` must be longer than zero", text.trim())) } else { Ok(d) })
}

/// Parses a size in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let example = "such as `1048576`, `512K`, `64M`, `64G`, `64GiB` or `10GB`";
    let number_end = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    if number.is_empty() {
        return Err(format!("`{trimmed}` is not a size {example}"));
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "byte" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("`{other}` in `{trimmed}` is not a unit; use K, M, G or T ({example})")),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale).ok_or_else(|| format!("`{trimmed}` is larger than 16 EiB"));
    }
    let value: f64 = number.parse().map_err(|_| format!("`{trimmed}` is not a size {example}"))?;
    let bytes = (value * scale as f64).round();
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{trimmed}` is larger than 16 EiB"));
    }
    Ok(bytes as u64)
}

/// A duration option's value: parses with [`parse_duration`] and shows itself in the
/// same form (`1h30m`), so `--help` defaults read as people type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(DurationArg)
    }
}

impl fmt::Display for DurationArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let mut seconds = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if seconds >= size {
                write!(f, "{}{unit}", seconds / size)?;
                seconds %= size;
            }
        }
        Ok(())
    }
}

impl From<DurationArg> for Duration {
    fn from(value: DurationArg) -> Duration {
        value.0
    }
}

impl From<Duration> for DurationArg {
    fn from(value: Duration) -> DurationArg {
        DurationArg(value)
    }
}

/// A size option's value: parses with [`parse_size`] and shows itself exactly, in the
/// largest binary unit that divides it (`64GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeArg(pub u64);

impl FromStr for SizeArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text).map(SizeArg)
    }
}

impl fmt::Display for SizeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// "512 B", "1.2 KiB", "200.0 MiB", "1.86 GiB": a size in messages and summaries.
pub fn human_bytes(count: u64) -> String {
    match count {
        0..1024 => format!("{count} B"),
        1024..1_048_576 => format!("{:.1} KiB", count as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", count as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", count as f64 / 1_073_741_824.0),
    }
}

/// "10 ms", "2.6 s", "15 min", "4 h": a duration in messages and logs.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 if duration < Duration::from_millis(100) => format!("{} ms", duration.as_millis()),
        0..120 => format!("{:.1} s", duration.as_secs_f64()),
        120..7200 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

/// "5.2s", "12m03s", "1h02m": a duration as a clock shows it, for how long a run took.
pub fn clock_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
    }
}

/// "2,000": a count with thousands separated, as summaries show file counts.
pub fn human_count(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// "1 file", "2,000 files": a count with its noun (plural by adding `s`).
pub fn count_of(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        n => format!("{} {noun}s", human_count(n)),
    }
}

/// Lowercase hex, two digits a byte: digests, fingerprints, cache keys and file names.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// The candidate a mistyped name most likely meant (`max-job` -> `max-jobs`), as clap
/// suggests on the command line; `None` when nothing is close.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed = typed.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(&typed, &candidate.to_ascii_lowercase()), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_name_finds_what_it_meant_and_nonsense_finds_nothing() {
        let options = ["max-jobs", "max-jobs-per-cn", "root", "SERVER_IP"];
        assert_eq!(closest("max-job", options), Some("max-jobs"));
        assert_eq!(closest("SERVR_IP", options), Some("SERVER_IP"));
        assert_eq!(closest("colour", options), None);
    }

    #[test]
    fn durations_read_the_usual_forms() {
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("90"), Ok(secs(90)));
        assert_eq!(parse_duration("90s"), Ok(secs(90)));
        assert_eq!(parse_duration("1.5m"), Ok(secs(90)));
        assert_eq!(parse_duration("15min"), Ok(secs(900)));
        assert_eq!(parse_duration("2h"), Ok(secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(secs(5405)));
        assert_eq!(parse_duration("1d"), Ok(secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("soon").unwrap_err().contains("is not a duration"));
        assert!(parse_duration("5w").unwrap_err().contains("`w` in `5w` is not a unit"));
        assert!(parse_duration("1h30").unwrap_err().contains("lacks a unit after `30`"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_positive_duration("0").unwrap_err().contains("longer than zero"));
    }

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("64 gib"), Ok(64 << 30));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert!(parse_size("64X").unwrap_err().contains("`x` in `64X` is not a unit"));
        assert!(parse_size("lots").unwrap_err().contains("is not a size"));
        assert!(parse_size("64b").is_err());
        assert!(parse_size("99999999999T").unwrap_err().contains("larger than 16 EiB"));
    }

    #[test]
    fn option_values_show_as_they_are_typed_and_parse_back() {
        for (text, shown) in [("1h30m", "1h30m"), ("90s", "1m30s"), ("500ms", "500ms"), ("0", "0s"), ("1d", "1d")] {
            let value: DurationArg = text.parse().unwrap();
            assert_eq!(value.to_string(), shown);
            assert_eq!(shown.parse::<DurationArg>().unwrap(), value);
        }
        for (text, shown) in [("64G", "64GiB"), ("1000", "1000"), ("1536", "1536"), ("2048", "2KiB")] {
            let value: SizeArg = text.parse().unwrap();
            assert_eq!(value.to_string(), shown);
            assert_eq!(shown.parse::<SizeArg>().unwrap(), value);
        }
    }

    #[test]
    fn humans_read_sizes_durations_and_counts() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(200 << 20), "200.0 MiB");
        assert_eq!(human_duration(Duration::from_millis(2600)), "2.6 s");
        assert_eq!(human_duration(Duration::from_millis(10)), "10 ms");
        assert_eq!(clock_duration(Duration::from_millis(5240)), "5.2s");
        assert_eq!(clock_duration(Duration::from_secs(723)), "12m03s");
        assert_eq!(clock_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(human_duration(Duration::from_millis(500)), "0.5 s");
        assert_eq!(human_duration(Duration::from_secs(900)), "15 min");
        assert_eq!(human_count(2000), "2,000");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1_234_567), "1,234,567");
        assert_eq!((count_of(1, "file"), count_of(2000, "file")), ("1 file".into(), "2,000 files".into()));
    }
}
