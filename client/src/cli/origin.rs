//! Where a setting's value came from (the command line, an environment variable, a
//! line of the config file, or the default), as a value the client decides on, and
//! as words for `lrpymrpc config` and for messages about a bad value.

use std::path::PathBuf;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    /// The variable's name (`LRPYMRPC_SERVER_IP`).
    Environment(String),
    ConfigFile {
        path: PathBuf,
        line: usize,
    },
    Default,
    /// `TLS_CONFIG_DIR` not given, and the default TLS directory exists, so a job
    /// speaks mutual TLS with it, as `tls init` and `tls check` assume.
    DefaultDirectory,
}

impl Origin {
    /// Whether a message about the value should say where it came from: a value the
    /// user typed on this command line, or did not give at all, needs no pointer.
    pub fn worth_naming(&self) -> bool {
        matches!(self, Origin::Environment(_) | Origin::ConfigFile { .. } | Origin::DefaultDirectory)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::Environment(variable) => write!(f, "environment {variable}"),
            Origin::ConfigFile { path, line } => write!(f, "config file `{}` line {line}", path.display()),
            Origin::Default => f.write_str("default"),
            Origin::DefaultDirectory => f.write_str("the default TLS directory, which exists"),
        }
    }
}

/// One setting as a job would use it, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The option's long name (`SERVER_IP`).
    pub option: String,
    pub value: String,
    pub origin: Origin,
}
