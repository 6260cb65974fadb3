//! The lrpymrpc client: sends source directories to an lrPymRPC server, has it
//! pip-install a tool and run a command, streams the output back and unpacks the
//! results, all as streams. A drop-in replacement for `python3 -m lrPymRPC`.
//!
//! Data flow: [`cli::Args`] (every upstream spelling) is validated into a
//! [`job::Job`]; a [`session::Session`] opens the mutual-TLS channel and asks the
//! server's capabilities before anything is packed, and makes each call; `steps` orders
//! the steps (Upload, Execute, Check, Download) and their retries; [`exit`] maps every
//! outcome to the process exit code. Each subcommand is a module of `commands`.

mod cli;
mod commands;
mod exit;
mod job;
mod output;
mod remote;
mod sources;
mod steps;
mod tls;

use std::process::ExitCode;

pub use cli::Args;
pub use commands::snippets;
use output::Output;

/// Runs the client with the process's arguments and returns its exit code: parses
/// them (with the environment and config file) and hands them to their command.
pub fn main_impl() -> ExitCode {
    let args = match cli::settings::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(cli::settings::SettingsError::Usage(error)) => {
            let _ = error.print();
            return exit::for_usage(&error);
        }
        Err(cli::settings::SettingsError::Config(error)) => {
            Output::new("", output::Verbosity::default()).error(&error);
            return exit::for_error(&error);
        }
    };
    match &args.command {
        Some(cli::Command::Completions { shell }) => commands::completions::run(*shell),
        Some(cli::Command::Snippet { kind }) => commands::snippet::run(*kind),
        Some(cli::Command::Config) => commands::config::run(&args.origins),
        Some(cli::Command::Tls { action: cli::TlsAction::Init { cn, dir, force } }) => {
            commands::tls::init_command(cn, dir, *force)
        }
        Some(cli::Command::Tls { action: cli::TlsAction::Check { dir, server, local_only } }) => {
            commands::tls::check(&args, dir.as_deref(), server.as_deref(), *local_only)
        }
        Some(cli::Command::Attach { id, from_end, fetch }) => {
            let (id, from_end, fetch) = (id.clone(), *from_end, fetch.clone());
            commands::durable_jobs::attach(args, &id, from_end, &fetch)
        }
        Some(cli::Command::Jobs { web }) => {
            let web = *web;
            commands::durable_jobs::jobs(args, web)
        }
        Some(cli::Command::Status { json, watch }) => {
            let (json, watch) = (*json, *watch);
            commands::status::run(args, json, watch)
        }
        Some(cli::Command::Slots) => commands::slots::run(args),
        Some(cli::Command::Cancel { id }) => {
            let id = id.clone();
            commands::durable_jobs::cancel(args, &id)
        }
        None => commands::job::run(args),
    }
}
