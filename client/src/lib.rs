//! The lrpymrpc client: sends source directories to an lrPymRPC server, has it
//! pip-install a tool and run a command, streams the output back and unpacks the
//! results, all as streams. A drop-in replacement for `python3 -m lrPymRPC`.
//!
//! Data flow: [`cli::Args`] (every upstream spelling) is validated into a
//! [`job::Job`]; [`connect`] opens the mutual-TLS channel before anything is packed;
//! [`run`] drives Upload, Execute, Check and Download; [`exit`] maps every outcome
//! to the process exit code.

pub mod cli;
pub mod connect;
pub mod exit;
pub mod job;
mod output;
mod run;
pub mod source;
pub mod tls;

use std::process::ExitCode;

use clap::Parser;

pub use exit::ClientError;

/// Runs the client with the process's arguments and returns its exit code.
pub fn main_impl() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return exit::for_usage(&error);
        }
    };
    let outcome = job::Job::from_args(args).and_then(|job| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
                ClientError::Local { message: format!("cannot start the async runtime: {e}"), hint: None }
            })?;
        runtime.block_on(run::run(&job))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            output::error(&error);
            exit::for_error(&error)
        }
    }
}
