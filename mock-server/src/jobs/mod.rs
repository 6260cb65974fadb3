//! Jobs: the table of jobs and their slots, phases and files (`table`), where results
//! are found in a job (`results`), durable runs' spools (`spool`), and the lock that
//! keeps a second server off the root (`root_lock`).

pub mod results;
pub mod root_lock;
pub mod spool;
mod table;

pub use table::{CommandEnd, CommandRun, Done, JobUse, Jobs, Recorded, remove_job_files, sweep_orphans, venv_dir};
