//! The compute farm a server hands its commands to (`--executor slurm` or `--executor
//! gridengine`): the one place that knows which scheduler it is, for start-up (the
//! probe and the cluster's capacity), the state's executor, adoption after a restart
//! (by the name a job's spool wrote down) and the sweep of jobs an earlier server left.

use std::path::Path;
use std::time::Duration;

use crate::config::ExecutorChoice;
use crate::executor::Executor;
use crate::executor::gridengine::{GridEngineError, GridEngineExecutor};
use crate::executor::slurm::{SlurmError, SlurmExecutor};
use crate::resources::Capacity;

/// A cluster's executor.
#[derive(Debug, Clone)]
pub enum Farm {
    Slurm(SlurmExecutor),
    GridEngine(GridEngineExecutor),
}

/// Why the farm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    #[error(transparent)]
    GridEngine(#[from] GridEngineError),
}

impl Farm {
    /// The farm `choice` names (none for the local executor), its tools found.
    pub fn new(choice: &ExecutorChoice, root: &Path, job_timeout: Duration) -> Result<Option<Farm>, FarmError> {
        Ok(match choice {
            ExecutorChoice::Local => None,
            ExecutorChoice::Slurm(options) => {
                Some(Farm::Slurm(SlurmExecutor::new(options.clone(), root, job_timeout)?))
            }
            ExecutorChoice::GridEngine(options) => {
                Some(Farm::GridEngine(GridEngineExecutor::new(options.clone(), root, job_timeout)?))
            }
        })
    }

    /// Its scheduler's name in messages.
    pub fn title(&self) -> &'static str {
        match self {
            Farm::Slurm(_) => "Slurm",
            Farm::GridEngine(_) => "Grid Engine",
        }
    }

    /// Checks that its nodes see the job root and run the server binary.
    pub async fn probe(&self, root: &Path) -> Result<(), FarmError> {
        match self {
            Farm::Slurm(slurm) => Ok(slurm.probe(root).await?),
            Farm::GridEngine(grid) => Ok(grid.probe(root).await?),
        }
    }

    /// What the cluster could ever give one command.
    pub async fn capacity(&self, default_cpus: u32) -> Result<Capacity, FarmError> {
        match self {
            Farm::Slurm(slurm) => Ok(slurm.capacity(default_cpus).await?),
            Farm::GridEngine(grid) => Ok(grid.capacity(default_cpus).await?),
        }
    }

    /// Its executor.
    pub fn executor(&self) -> &dyn Executor {
        match self {
            Farm::Slurm(slurm) => slurm,
            Farm::GridEngine(grid) => grid,
        }
    }

    /// Whether a job's spool names this farm's executor (`ExecutorChoice::name`).
    pub fn started(&self, executor: &str) -> bool {
        matches!((self, executor), (Farm::Slurm(_), "slurm") | (Farm::GridEngine(_), "gridengine"))
    }

    /// Cancels the jobs of `job_ids` an earlier server left in the cluster's queue.
    pub async fn cancel_left_behind(&self, job_ids: &[String]) {
        match self {
            Farm::Slurm(slurm) => slurm.cancel_left_behind(job_ids).await,
            Farm::GridEngine(grid) => grid.cancel_left_behind(job_ids).await,
        }
    }
}
