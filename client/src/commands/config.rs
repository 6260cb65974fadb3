//! `lrpymrpc config`: the settings a job would run with, one per line as the config
//! file spells them, each with where it came from, as `ssh -G` and
//! `git config --show-origin` do. Data on stdout: it can be saved as a config file.

use std::process::ExitCode;

use crate::cli::origin::Setting;

pub fn run(settings: &[Setting]) -> ExitCode {
    let width = settings.iter().map(|s| s.option.len() + s.value.len() + 3).max().unwrap_or(0);
    for setting in settings {
        let line = format!("{} = {}", setting.option, setting.value);
        println!("{line:<width$}  # {}", setting.origin);
    }
    ExitCode::SUCCESS
}
