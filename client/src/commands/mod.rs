//! One module per subcommand; `main_impl` only parses and dispatches. `job` is the
//! default command (a whole remote job); later `attach`, `jobs` and `cancel` go here.

pub mod completions;
pub mod config;
pub mod job;
pub mod snippet;
pub mod tls;
