//! Where each option's value comes from: the command line, then the environment
//! (`LRPYMRPC_<OPTION>`, handled by clap), then the config file, then the default.
//!
//! The config file is `$LRPYMRPC_CONFIG` when set (it must then exist), else
//! `$XDG_CONFIG_HOME/lrpymrpc/config`, else `~/.config/lrpymrpc/config` (optional).
//! Its lines are `OPTION = value`, where OPTION is any long spelling of an option
//! (`SERVER_IP`, `server-ip`, `--server-ip`); `#` starts a comment line; flags take
//! `true` or `false`. A value is taken whole, so `SOURCE = cells cmd` works as it does
//! on the command line.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Args;
use crate::cli::origin::{Origin, Setting};
use crate::exit::ClientError;
use crate::tls::expand_tilde;

/// The variable that names the config file.
pub const CONFIG_VARIABLE: &str = "LRPYMRPC_CONFIG";

/// Why the arguments could not be read.
#[derive(Debug)]
pub enum SettingsError {
    /// A usage error, or help and version (clap prints those itself).
    Usage(clap::Error),
    /// The config file is unreadable or holds a line that is not an option, or a value
    /// from the environment or the file is bad (the error names which).
    Config(ClientError),
}

/// Parses `argv` with the environment and the config file merged in.
pub fn parse(argv: Vec<OsString>) -> Result<Args, SettingsError> {
    refuse_version_with_job_options(&argv)?;
    let matches = Args::command().try_get_matches_from(&argv).map_err(|error| naming_the_environment(error, &argv))?;
    // `config` shows the merged settings and `tls check` resolves the TLS directory and
    // the server as a job does; other subcommands take none of them.
    let showing = match matches.subcommand() {
        Some(("config", _)) => true,
        Some(("tls", tls)) => tls.subcommand_name() == Some("check"),
        _ => false,
    };
    if matches.subcommand().is_some() && !showing {
        return args_from(&matches, None);
    }
    let Some(path) = config_path().map_err(SettingsError::Config)? else {
        if !showing {
            refuse_an_empty_job(&matches, false)?;
        }
        return args_from(&matches, None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && std::env::var_os(CONFIG_VARIABLE).is_none() => {
            if !showing {
                refuse_an_empty_job(&matches, false)?;
            }
            return args_from(&matches, None);
        }
        Err(error) => {
            return Err(SettingsError::Config(ClientError::Local {
                message: format!("cannot read the config file `{}`: {error}", path.display()),
                hint: Some(format!("fix or unset {CONFIG_VARIABLE}")),
            }));
        }
    };
    let from_file = file_arguments(&text, &path, &matches).map_err(SettingsError::Config)?;
    if !showing {
        refuse_an_empty_job(&matches, !from_file.is_empty())?;
    }
    let file_lines: HashMap<String, usize> = from_file.iter().map(|(_, id, line)| (id.clone(), *line)).collect();
    let from_file: Vec<OsString> = from_file.into_iter().map(|(argument, _, _)| argument).collect();
    // The file's options go first; none of them is also on the command line or in the
    // environment, so nothing the user typed is overridden.
    let mut merged = Vec::with_capacity(argv.len() + from_file.len());
    let mut argv = argv.into_iter();
    merged.extend(argv.next());
    merged.extend(from_file);
    merged.extend(argv);
    Args::command()
        .try_get_matches_from(merged)
        // The command line and the environment parsed above: a bad value here is the file's.
        .map_err(|error| naming_the_file_line(error, &path, &file_lines))
        .and_then(|matches| args_from(&matches, Some((&path, &file_lines))))
}

/// The option a clap value error is about, and the bad value.
fn bad_value(error: &clap::Error) -> Option<(clap::Arg, String)> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (error.get(ContextKind::InvalidArg), error.get(ContextKind::InvalidValue))
    else {
        return None;
    };
    let long = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default();
    let found = Args::command().get_arguments().find(|a| a.get_long() == Some(long)).cloned()?;
    Some((found, value.clone()))
}

/// clap's own message for a value error, without its `error: ` and `--help` lines.
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// A bad value that came from an `LRPYMRPC_*` variable says so (clap names only the
/// option, and the user looks at the command line in vain).
fn naming_the_environment(error: clap::Error, argv: &[OsString]) -> SettingsError {
    let Some((arg, value)) = bad_value(&error) else { return SettingsError::Usage(error) };
    let Some(variable) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
        return SettingsError::Usage(error);
    };
    let from_environment = std::env::var_os(&variable).is_some_and(|v| v.to_string_lossy() == value)
        && !argv.iter().skip(1).any(|a| a.to_string_lossy().contains(value.as_str()));
    if !from_environment {
        return SettingsError::Usage(error);
    }
    SettingsError::Config(ClientError::Usage {
        message: format!("{} (from environment {variable})", clap_message(&error)),
        hint: Some(format!("fix or unset {variable}")),
    })
}

/// A bad value from the config file names its line.
fn naming_the_file_line(error: clap::Error, path: &Path, lines: &HashMap<String, usize>) -> SettingsError {
    let Some(line) = bad_value(&error).and_then(|(arg, _)| lines.get(arg.get_id().as_str()).copied()) else {
        return SettingsError::Usage(error);
    };
    SettingsError::Config(ClientError::Usage {
        message: format!("{} (from config file `{}` line {line})", clap_message(&error), path.display()),
        hint: Some(format!("fix line {line} of `{}`", path.display())),
    })
}

/// Every option that has a value, with where it came from (`file`: the config file and
/// the line each of its options was on).
fn origins(matches: &clap::ArgMatches, file: Option<(&Path, &HashMap<String, usize>)>) -> Vec<Setting> {
    let command = Args::command();
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), Some(values)) = (arg.get_long(), matches.get_raw(id)) else { continue };
        let value = values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        let origin = match (matches.value_source(id), file.and_then(|(path, lines)| Some((path, lines.get(id)?)))) {
            (Some(ValueSource::CommandLine), Some((path, line))) => {
                Origin::ConfigFile { path: path.to_path_buf(), line: *line }
            }
            (Some(ValueSource::CommandLine), None) => Origin::CommandLine,
            (Some(ValueSource::EnvVariable), _) => {
                Origin::Environment(arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
            }
            (Some(ValueSource::DefaultValue), _) => Origin::Default,
            _ => continue,
        };
        settings.push(Setting { option: long.to_string(), value, origin });
    }
    settings
}

/// The parsed arguments, with the upstream defaults that were used recorded, so the
/// job can say it runs on them, and every setting's origin.
fn args_from(
    matches: &clap::ArgMatches,
    file: Option<(&Path, &HashMap<String, usize>)>,
) -> Result<Args, SettingsError> {
    let mut args = Args::from_arg_matches(matches).map_err(SettingsError::Usage)?;
    args.origins = origins(matches, file);
    crate::tls::use_default_dir_if_present(&mut args);
    args.defaulted = [("cmd", "--CMD"), ("source", "--SOURCE"), ("result", "--RESULT")]
        .into_iter()
        .filter(|(id, _)| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue))
        .map(|(_, flag)| flag)
        .collect();
    Ok(args)
}

/// `-v` prints the version and runs nothing; among job options it is a mistake for
/// `--verbose` that would silently skip the job in a Makefile.
fn refuse_version_with_job_options(argv: &[OsString]) -> Result<(), SettingsError> {
    let short_version = argv.iter().skip(1).any(|arg| arg == "-v" || arg == "-V");
    if short_version && argv.len() > 2 {
        let message = "`-v` prints the version and runs nothing, but job options were given too\n\n\
                       hint: for timings and sizes of each step use --verbose; for the version, `lrpymrpc -v` alone";
        return Err(SettingsError::Usage(Args::command().error(clap::error::ErrorKind::ArgumentConflict, message)));
    }
    Ok(())
}

/// Nothing given at all (no option, no environment variable, no config file): usage,
/// rather than running the upstream default `--CMD charao -h` on a server.
fn refuse_an_empty_job(matches: &clap::ArgMatches, from_file: bool) -> Result<(), SettingsError> {
    use clap::parser::ValueSource;
    let given = matches.ids().any(|id| {
        matches!(matches.value_source(id.as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    });
    if given || from_file {
        return Ok(());
    }
    let message = "no job given: nothing on the command line, in LRPYMRPC_* variables or in a config file\n\n\
                   hint: give at least --SERVER_IP and --CMD (lrpymrpc --help lists every option)";
    Err(SettingsError::Usage(Args::command().error(clap::error::ErrorKind::MissingRequiredArgument, message)))
}

/// The config file to read, if any: `Ok(None)` when there is no home to look in.
fn config_path() -> Result<Option<PathBuf>, ClientError> {
    if let Some(path) = std::env::var_os(CONFIG_VARIABLE) {
        if path.is_empty() {
            return Ok(None);
        }
        return Ok(Some(expand_tilde(&path.to_string_lossy())));
    }
    Ok(crate::cli::dirs::config_file())
}

/// The config file's lines as `--OPTION=value` arguments, each with its option id and
/// line number, for the options that the command line and the environment left at
/// their defaults.
fn file_arguments(
    text: &str,
    path: &Path,
    matches: &ArgMatches,
) -> Result<Vec<(OsString, String, usize)>, ClientError> {
    let command = Args::command();
    let mut arguments = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let refuse = |what: String, hint: Option<String>| ClientError::Usage {
            message: format!("config file `{}` line {}: {what}", path.display(), index + 1),
            hint,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(refuse(format!("`{line}` is not `OPTION = value`"), None));
        };
        let (key, value) = (key.trim(), value.trim());
        let wanted = normalize(key.trim_start_matches('-'));
        let Some(arg) = command.get_arguments().find(|arg| {
            arg.get_long()
                .into_iter()
                .chain(arg.get_all_aliases().into_iter().flatten())
                .any(|l| normalize(l) == wanted)
        }) else {
            let longs = command.get_arguments().filter_map(|arg| arg.get_long());
            let hint = match lrpymrpc_units::closest(key.trim_start_matches('-'), longs) {
                Some(meant) => format!("did you mean `{meant}`?"),
                None => "use a long option name such as `SERVER_IP` or `server-ip`; see `lrpymrpc --help`".into(),
            };
            return Err(refuse(format!("`{key}` is not an option"), Some(hint)));
        };
        let id = arg.get_id().as_str();
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let mut push = |argument: String| arguments.push((OsString::from(argument), id.to_string(), index + 1));
        if arg.get_action().takes_values() {
            push(format!("--{long}={value}"));
            continue;
        }
        match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => push(format!("--{long}")),
            "false" | "no" | "off" | "0" => {}
            _ => return Err(refuse(format!("`{key}` is a flag; its value must be `true` or `false`"), None)),
        }
    }
    Ok(arguments)
}

/// `SERVER_IP`, `server-ip` and `Server_Ip` are the same option.
fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(text: &str, command_line: &[&str]) -> Result<Vec<String>, ClientError> {
        let argv = std::iter::once("lrpymrpc").chain(command_line.iter().copied());
        let matches = Args::command().try_get_matches_from(argv).unwrap();
        let parsed = file_arguments(text, Path::new("cfg"), &matches)?;
        Ok(parsed.into_iter().map(|(argument, _, _)| argument.into_string().unwrap()).collect())
    }

    #[test]
    fn file_lines_become_arguments_unless_the_command_line_set_them() {
        let text =
            "# lab server\nSERVER_IP = 10.0.0.5\nserver-port=9000\n--source = cells cmd\nquiet = true\nstrict = no\n";
        let parsed = arguments(text, &["--SERVER_PORT", "1"]).unwrap();
        assert_eq!(parsed, ["--SERVER_IP=10.0.0.5", "--SOURCE=cells cmd", "--quiet"]);
    }

    #[test]
    fn unknown_options_and_bad_flags_name_the_line() {
        let error = arguments("\nSERVR_IP = x\n", &[]).unwrap_err();
        assert!(error.to_string().contains("line 2: `SERVR_IP` is not an option"), "{error}");
        assert!(format!("{error:?}").contains("did you mean `SERVER_IP`?"), "{error:?}");
        let error = arguments("quiet = maybe", &[]).unwrap_err();
        assert!(error.to_string().contains("must be `true` or `false`"), "{error}");
        assert!(arguments("just words", &[]).is_err());
    }
}
