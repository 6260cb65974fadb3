//! The Execute step: one call's work (`call`: cache asked, served or recorded, the
//! step run, its end noted), a command a server that is gone left running taken on
//! (`adopt`), the step itself (`step`: environment, pip, the command
//! through the executor seam), the action cache's path around it (`cached`), Python
//! environments (`envs`), the REPO_URL mapping (`repo_url`) and the interpreter that
//! makes environments (`python`).

pub mod adopt;
pub mod cached;
pub mod call;
pub mod envs;
pub mod python;
pub mod repo_url;
mod step;

pub use step::{Context, StepEnd, command, environment};
