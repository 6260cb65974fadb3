//! The server's configuration: every limit with its default (`values`) and the TOML
//! config file turned into arguments (`file`); system users for key ownership
//! (`accounts`).

pub mod accounts;
pub mod file;
mod values;

pub use values::{
    Config, ConfigError, ExecutorChoice, PipSources, TlsMaterial, UPLOAD_MIN_RATE, read_admin_file, read_allowed_cns,
};
