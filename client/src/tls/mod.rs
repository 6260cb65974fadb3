//! Finds and reads the client's TLS files: the nested layout first, then the flat one
//! (see `lrpymrpc_certs::layout`), with `~` expanded. A missing or unreadable file is
//! an error naming that file, before any connection is made.

pub(crate) mod audit;

use std::path::{Path, PathBuf};

use lrpymrpc_certs::layout::{self, ClientFiles};

use crate::exit::ClientError;

/// The PEM text of the client's key, its certificate, and the CA that signs servers.
#[derive(Clone)]
pub struct ClientTls {
    pub files: ClientFiles,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// Expands a leading `~` or `~/` to `$HOME`.
pub fn expand_tilde(path: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match (path, home) {
        ("~", Some(home)) => home,
        (rest, Some(home)) if rest.starts_with("~/") => home.join(&rest[2..]),
        (other, _) => PathBuf::from(other),
    }
}

/// One default TLS directory for jobs, `jobs`/`cancel`/`attach`, `tls init` and `tls
/// check`: when `TLS_CONFIG_DIR` is not given anywhere and `~/.tls/tls_lrpymrpc`
/// exists, it is used, so what `tls init` made and `tls check` called usable is what a
/// job speaks. Given as empty (`--TLS_CONFIG_DIR ""`), a job speaks plaintext.
pub(crate) fn use_default_dir_if_present(args: &mut crate::cli::Args) {
    use crate::cli::origin::Origin;
    let Some(setting) = args.origins.iter_mut().find(|setting| setting.option == "TLS_CONFIG_DIR") else { return };
    if setting.origin != Origin::Default || !expand_tilde(crate::cli::DEFAULT_TLS_DIR).is_dir() {
        return;
    }
    setting.value = crate::cli::DEFAULT_TLS_DIR.to_string();
    setting.origin = Origin::DefaultDirectory;
    args.tls_config_dir = crate::cli::DEFAULT_TLS_DIR.to_string();
}

/// Reads the TLS directory given as `--TLS_CONFIG_DIR`.
pub fn load(dir_arg: &str) -> Result<ClientTls, ClientError> {
    let dir = expand_tilde(dir_arg);
    if !dir.is_dir() {
        return Err(ClientError::Local {
            message: format!("--TLS_CONFIG_DIR `{}` is not a directory", dir.display()),
            hint: Some(
                "give the directory holding client.key, client.crt and ca.crt (`lrpymrpc tls init --cn YOUR_NAME` \
                 makes a key and a request for one), or give --TLS_CONFIG_DIR \"\" for plaintext"
                    .into(),
            ),
        });
    }
    let nested = layout::client_nested(&dir);
    let flat = layout::client_flat(&dir);
    let files = if nested.key.exists() || nested.cert.exists() || !(flat.key.exists() || flat.cert.exists()) {
        nested
    } else {
        flat
    };
    let read = |path: &Path| read_pem(path, &dir);
    Ok(ClientTls { key_pem: read(&files.key)?, cert_pem: read(&files.cert)?, ca_pem: read(&files.ca)?, files })
}

fn read_pem(path: &Path, dir: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        let request = path.with_extension("csr");
        let hint = if path.extension().is_some_and(|e| e == "crt") && request.exists() && !path.exists() {
            format!(
                "`{}` is waiting to be signed: send it to the server's administrator and put the certificate \
                 they return at `{}` (`lrpymrpc tls check` says what else is missing)",
                request.display(),
                path.display()
            )
        } else {
            format!(
                "`{}` must hold client/client.key, client/client.crt and ca/ca.crt (or client.key, client.crt and \
                 ca.crt)",
                dir.display()
            )
        };
        ClientError::Local {
            message: format!(
                "cannot read TLS file `{}`: {}",
                path.display(),
                crate::output::in_words(&error.to_string())
            ),
            hint: Some(hint),
        }
    })?;
    if !text.contains("-----BEGIN ") {
        return Err(ClientError::local(format!("TLS file `{}` is not PEM text", path.display())));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_only_a_leading_tilde() {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(expand_tilde("~"), home);
        assert_eq!(expand_tilde("~/.tls/x"), home.join(".tls/x"));
        assert_eq!(expand_tilde("a/~/b"), PathBuf::from("a/~/b"));
        assert_eq!(expand_tilde("~other"), PathBuf::from("~other"));
    }
}
