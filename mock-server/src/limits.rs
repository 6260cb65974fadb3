//! The time limits of a job's run, which one stopped it, and how a duration reads in
//! messages and logs. A leaf module: errors, executors and the listener all use it.

use std::fmt;
use std::time::Duration;

/// Time limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimits {
    /// The longest it may run.
    pub wall: Duration,
    /// The longest it may print nothing.
    pub idle: Duration,
}

/// Which time limit stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Wall(Duration),
    Idle(Duration),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Wall(limit) => write!(f, "it ran longer than {}", human(*limit)),
            Limit::Idle(limit) => write!(f, "it printed nothing for {}", human(*limit)),
        }
    }
}

/// "0.5 s", "15 min", "4 h": a limit as messages and logs show it.
pub fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..120 => format!("{:.1} s", duration.as_secs_f64()),
        120..7200 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}
