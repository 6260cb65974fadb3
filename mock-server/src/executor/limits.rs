//! The time limits of a job's run, and which limit (time or memory) stopped it. A leaf module: errors,
//! executors and the listener all use it.

use std::fmt;
use std::time::Duration;

use lrpymrpc_units::human_duration;

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
    /// Its memory limit, in bytes (0: not known, a scheduler's default): the kernel or
    /// the scheduler killed it.
    Memory(u64),
    /// The server shut down before it ended (`--shutdown-grace` ran out).
    Shutdown,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Wall(limit) => write!(f, "it ran longer than {}", human_duration(*limit)),
            Limit::Idle(limit) => write!(f, "it printed nothing for {}", human_duration(*limit)),
            Limit::Shutdown => f.write_str(
                "the server shut down before it ended (--shutdown-grace ran out; --keep-jobs-on-exit leaves running \
                 jobs to the next server)",
            ),
            Limit::Memory(0) => f.write_str("it used more memory than it was granted (ask for more with --mem)"),
            Limit::Memory(limit) => write!(
                f,
                "it used more than the {} of memory it was granted (ask for more with --mem)",
                lrpymrpc_units::human_bytes(*limit)
            ),
        }
    }
}
