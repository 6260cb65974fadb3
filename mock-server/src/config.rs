//! What the server is told at start: where job directories go, its TLS material,
//! and the limits it enforces.

use std::fs;
use std::path::{Path, PathBuf};

use lrpymrpc_archive::Limits;
use lrpymrpc_certs::layout;

/// The server's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Job directories are `root/<UUID>/`.
    pub root: PathBuf,
    /// `None` serves plaintext (for tests of plaintext clients only).
    pub tls: Option<TlsMaterial>,
    pub upload_limits: Limits,
    /// Answer Execute exactly as a server predating the protocol extension does:
    /// output lines only, no stream labels, no exit status (for client tests).
    pub legacy_protocol: bool,
}

impl Config {
    pub fn new(root: PathBuf, tls: Option<TlsMaterial>) -> Config {
        Config { root, tls, upload_limits: Limits::DEFAULT, legacy_protocol: false }
    }
}

/// PEM text of the server's certificate and key and of the CA that signs clients.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}` holds no PEM block")]
    NotPem { path: PathBuf },
}

impl TlsMaterial {
    /// Reads `DIR/server/server.crt`, `DIR/server/server.key` and `DIR/ca/ca.crt`,
    /// the server side of what `cargo xtask certs DIR` writes.
    pub fn from_dir(dir: &Path) -> Result<TlsMaterial, ConfigError> {
        Ok(TlsMaterial {
            cert_pem: read_pem(&layout::server_cert(dir))?,
            key_pem: read_pem(&layout::server_key(dir))?,
            client_ca_pem: read_pem(&layout::ca_cert(dir))?,
        })
    }
}

fn read_pem(path: &Path) -> Result<String, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    if !text.contains("-----BEGIN ") {
        return Err(ConfigError::NotPem { path: path.to_path_buf() });
    }
    Ok(text)
}
