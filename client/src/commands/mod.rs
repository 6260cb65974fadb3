//! One module per subcommand; `main_impl` only parses and dispatches. `job` is the
//! default command (a whole remote job); `durable_jobs` holds `attach`, `jobs` and
//! `cancel`.

pub mod completions;
pub mod config;
pub mod durable_jobs;
pub mod job;
pub mod snippet;
pub mod tls;
