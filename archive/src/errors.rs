//! The archive crate's error types, a leaf every other module may use: what went
//! wrong packing a tree ([`PackError`]) and unpacking a hostile archive ([`UnpackError`]).

use std::io;
use std::path::{Path, PathBuf};

/// Why a tree could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("`{path}` changed size while it was being packed")]
    Changed { path: PathBuf },
    #[error("cannot send the archive: {0}")]
    Write(io::Error),
    /// Content-addressed trees name files in UTF-8; a tar.gz takes any bytes.
    #[error("`{path}` has a name that is not UTF-8")]
    NotUtf8 { path: PathBuf },
}

/// A read of `path` that failed, as a [`PackError`].
pub(crate) fn read_error(path: &Path, source: io::Error) -> PackError {
    PackError::Read { path: path.to_path_buf(), source }
}

/// Why an archive was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry `{entry}` refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("archive is larger than the limit of {max_bytes} bytes once decompressed")]
    TooLarge { max_bytes: u64 },
    #[error("archive has more than the limit of {max_entries} entries")]
    TooManyEntries { max_entries: u64 },
    #[error("malformed archive: {0}")]
    Malformed(io::Error),
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl UnpackError {
    /// True when the local disk, not the archive, is to blame (disk full, quota).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            UnpackError::Write { source, .. } => {
                matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}
