//! Where certificate files live in a TLS directory. Two client layouts exist in the
//! wild (`../shared/PROTOCOL.md` section 3): nested (`client/client.key`, `ca/ca.crt`), looked
//! for first, and flat (`client.key`, `ca.crt`). The server reads `server/` and `ca/`.

use std::path::{Path, PathBuf};

/// The three files a client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
}

/// `DIR/client/client.key`, `DIR/client/client.crt`, `DIR/ca/ca.crt` (0.2.x README).
pub fn client_nested(dir: &Path) -> ClientFiles {
    ClientFiles {
        key: dir.join("client").join("client.key"),
        cert: dir.join("client").join("client.crt"),
        ca: ca_cert(dir),
    }
}

/// `DIR/client.key`, `DIR/client.crt`, `DIR/ca.crt` (the seed README).
pub fn client_flat(dir: &Path) -> ClientFiles {
    ClientFiles { key: dir.join("client.key"), cert: dir.join("client.crt"), ca: dir.join("ca.crt") }
}

pub fn ca_cert(dir: &Path) -> PathBuf {
    dir.join("ca").join("ca.crt")
}

/// The CA's private key: in a directory beside the serving directory `dir`
/// (`DIR.ca-private/ca.key`), never in it, so nothing that can read what the server
/// serves from (a job, a backup of the serving directory) can mint certificates.
pub fn ca_key(dir: &Path) -> PathBuf {
    ca_private_dir(dir).join("ca.key")
}

/// `DIR.ca-private/`, beside `dir`.
pub fn ca_private_dir(dir: &Path) -> PathBuf {
    let dir = std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".ca-private");
    dir.with_file_name(name)
}

/// Where earlier versions kept the CA key: inside the serving directory. Still read,
/// and warned about.
pub fn legacy_ca_key(dir: &Path) -> PathBuf {
    dir.join("ca").join("ca.key")
}

pub fn server_cert(dir: &Path) -> PathBuf {
    dir.join("server").join("server.crt")
}

pub fn server_key(dir: &Path) -> PathBuf {
    dir.join("server").join("server.key")
}
