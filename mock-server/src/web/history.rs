//! The last 24 hours of the server's use, for the status page's plots: cores, memory
//! and each license pool in use and the queue's length, sampled by the server itself
//! every `--status-sample-every` (a minute: 1,440 samples a day, a few tens of KiB), kept
//! in memory and written to `ROOT/lrpymrpc-status-history` after each sample, so a
//! restarted server draws the hours before it. The file is read back within bounds
//! (at most [`MAX_FILE_BYTES`]); a line it cannot read is skipped, never trusted.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::resources::{Capacity, Snapshot};

/// How far back the plots reach.
pub const SPAN: Duration = Duration::from_secs(24 * 3600);
/// The history file's name in the job root.
pub const FILE: &str = "lrpymrpc-status-history";
/// The most of the history file read back.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most samples kept, however often they are taken.
const MAX_SAMPLES: usize = 24 * 60 * 4;
/// The most license pools one sample keeps.
const MAX_POOLS: usize = 64;

/// What was in use at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub unix_seconds: u64,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Steps waiting for resources.
    pub waiting: u32,
    /// Licenses in use, by pool.
    pub licenses: BTreeMap<String, u32>,
}

impl Sample {
    /// In use now: the capacity less what is free.
    pub fn now(capacity: &Capacity, free: &Snapshot) -> Sample {
        Sample {
            unix_seconds: unix_seconds(SystemTime::now()),
            cores: capacity.cpus.saturating_sub(free.free_cpus),
            memory_bytes: capacity.memory_bytes.saturating_sub(free.free_memory_bytes),
            waiting: free.waiting,
            licenses: capacity
                .licenses
                .iter()
                .map(|(name, total)| {
                    (name.clone(), total.saturating_sub(free.free_licenses.get(name).copied().unwrap_or(0)))
                })
                .collect(),
        }
    }

    /// One line: `SECONDS CORES MEMORY WAITING NAME=N ...`.
    fn line(&self) -> String {
        let mut line = format!("{} {} {} {}", self.unix_seconds, self.cores, self.memory_bytes, self.waiting);
        for (name, count) in &self.licenses {
            line.push_str(&format!(" {name}={count}"));
        }
        line
    }

    fn parse(line: &str) -> Option<Sample> {
        let mut words = line.split(' ');
        let mut number = || words.next()?.parse::<u64>().ok();
        let (unix_seconds, cores, memory_bytes, waiting) = (number()?, number()?, number()?, number()?);
        let mut sample = Sample {
            unix_seconds,
            cores: u32::try_from(cores).ok()?,
            memory_bytes,
            waiting: u32::try_from(waiting).ok()?,
            licenses: BTreeMap::new(),
        };
        for word in line.split(' ').skip(4).take(MAX_POOLS) {
            let (name, count) = word.split_once('=')?;
            sample.licenses.insert(name.to_string(), count.parse().ok()?);
        }
        Some(sample)
    }
}

/// The samples of the last [`SPAN`], oldest first.
#[derive(Debug)]
pub struct History {
    file: Option<PathBuf>,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// The history kept in `root` (what an earlier server left there, read back), or
    /// in memory alone without a root.
    pub fn open(root: Option<&Path>) -> History {
        let file = root.map(|root| root.join(FILE));
        let mut samples = VecDeque::new();
        if let Some(text) = file.as_deref().and_then(read_bounded) {
            let since = unix_seconds(SystemTime::now()).saturating_sub(SPAN.as_secs());
            samples.extend(text.lines().filter_map(Sample::parse).filter(|sample| sample.unix_seconds >= since));
        }
        while samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
        History { file, samples: Mutex::new(samples) }
    }

    /// Adds `sample`, drops what is older than [`SPAN`], and writes the file anew
    /// (atomically: a crash leaves the old one).
    pub fn record(&self, sample: Sample) {
        let text = {
            let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let since = sample.unix_seconds.saturating_sub(SPAN.as_secs());
            samples.push_back(sample);
            while samples.front().is_some_and(|oldest| oldest.unix_seconds < since) || samples.len() > MAX_SAMPLES {
                samples.pop_front();
            }
            samples.iter().map(|sample| sample.line() + "\n").collect::<String>()
        };
        if let Some(file) = &self.file {
            let temporary = file.with_extension("tmp");
            let written = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, file));
            if let Err(error) = written {
                tracing::warn!(file = %file.display(), %error, "the status page's history could not be written");
            }
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }
}

fn read_bounded(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(unix_seconds: u64, cores: u32) -> Sample {
        Sample {
            unix_seconds,
            cores,
            memory_bytes: 1 << 30,
            waiting: 2,
            licenses: BTreeMap::from([("spectre".to_string(), 1)]),
        }
    }

    #[test]
    fn samples_outlive_a_restart_and_what_is_older_than_a_day_or_unreadable_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let now = unix_seconds(SystemTime::now());
        let history = History::open(Some(root.path()));
        history.record(sample(now - SPAN.as_secs() + 60, 1));
        history.record(sample(now, 2));
        // Someone edited the file: a line that is not a sample is skipped.
        let path = root.path().join(FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("<script>alert(1)</script>\n12 x y z\n");
        std::fs::write(&path, text).unwrap();
        let again = History::open(Some(root.path()));
        assert_eq!(again.samples(), vec![sample(now - SPAN.as_secs() + 60, 1), sample(now, 2)]);
        again.record(sample(now + 120, 3));
        assert_eq!(again.samples().len(), 2, "the oldest left the day");
    }
}
