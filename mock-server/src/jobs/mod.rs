//! Jobs: the table of jobs and their slots, phases and files (`table`), what a server
//! that is gone left for the next (`left_behind`), where results
//! are found in a job (`results`), durable runs' spools (`spool`, on disk
//! `spool_file`), and the lock that
//! keeps a second server off the root (`root_lock`); the secret links to a job's
//! status page (`links`).

pub mod left_behind;
pub mod links;
pub mod results;
pub mod root_lock;
pub mod spool;
pub mod spool_file;
mod table;

pub use table::{
    CommandEnd, CommandRun, Done, JobUse, Jobs, Recorded, is_left_job, remove_job_files, sweep_orphans, venv_dir,
};
