//! `lrpymrpc completions SHELL`: the shell completion script on stdout.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Args;

pub fn run(shell: clap_complete::Shell) -> ExitCode {
    clap_complete::generate(shell, &mut Args::command(), "lrpymrpc", &mut std::io::stdout());
    ExitCode::SUCCESS
}
