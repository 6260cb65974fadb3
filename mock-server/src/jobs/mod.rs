//! Jobs: the table of jobs and their slots, phases and files (`table`), where results
//! are found in a job (`results`), and durable runs' spools (`spool`).

pub mod results;
pub mod spool;
mod table;

pub use table::{CommandEnd, CommandRun, Done, JobUse, Jobs, Recorded, remove_job_files, sweep_orphans, venv_dir};
