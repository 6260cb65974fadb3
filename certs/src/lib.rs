//! Certificate material for lrpymrpc in one place: a CA that issues server and
//! client certificates (rcgen, no openssl), private keys written with mode 0600, and
//! the TLS directory layouts that the client, the server and `cargo xtask certs` share;
//! CSRs made and signed ([`request`]), certificates read and checked ([`inspect`]), and
//! the TLS crypto provider both ends use ([`provider`]).
//! `lrpymrpc tls`, `lrpymrpc-server ca` and `cargo xtask certs` all use this crate.

pub mod inspect;
pub mod layout;
pub mod provider;
pub mod request;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the certificate signing request is refused: {0}")]
    Request(String),
    #[error("{0}")]
    Parse(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority able to issue server and client certificates.
pub struct Ca {
    pub pair: Pair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `cn`.
    /// A new CA named `cn` and a short fingerprint of its key (`lrpymrpc CA host
    /// 3fa2c81d`), so two CAs made for the same host never share a name: a certificate
    /// signed by the other one then reads "unknown issuer", not a bad signature.
    pub fn new(cn: &str) -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        let key_id = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(&format!("{cn} {}", lrpymrpc_units::hex(&key_id.as_ref()[..4])));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let pair = Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Ca { pair, issuer: Issuer::new(params, key) })
    }

    /// A server certificate for `names` (DNS names or IP addresses, as dialled).
    pub fn issue_server(&self, names: &[String]) -> Result<Pair, CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(names.first().map_or("lrpymrpc server", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose subject is `CN=cn`, as the seed README's CSR asks.
    pub fn issue_client(&self, cn: &str) -> Result<Pair, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Issues a leaf from arbitrary parameters (tests use this for expired ones).
    pub fn issue(&self, params: CertificateParams) -> Result<Pair, CertError> {
        let params = self.leaf_params(params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// What every leaf this CA issues has: no CA rights, signature usages only, and
    /// the CA's key identifier.
    fn leaf_params(&self, mut params: CertificateParams) -> CertificateParams {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// The CA of a server TLS directory: `DIR/ca/ca.crt` and the key beside the
    /// directory ([`layout::ca_key`]), or inside it where earlier versions put it.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let read = |path: PathBuf| fs::read_to_string(&path).map_err(|source| CertError::Read { path, source });
        let cert_pem = read(layout::ca_cert(dir))?;
        let key_path = match layout::ca_key(dir) {
            path if !path.exists() && layout::legacy_ca_key(dir).exists() => layout::legacy_ca_key(dir),
            path => path,
        };
        let key_pem = read(key_path.clone())?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CertError::Parse(format!("`{}` is not a private key: {e}", key_path.display())))?;
        let summary = inspect::Summary::from_pem(&cert_pem)
            .map_err(|e| CertError::Parse(format!("`{}`: {e}", layout::ca_cert(dir).display())))?;
        if !summary.is_ca || !summary.matches_key(&key_pem)? {
            return Err(CertError::Parse(format!(
                "`{}` is not a CA certificate for the key in `{}`",
                layout::ca_cert(dir).display(),
                key_path.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { pair: Pair { cert_pem, key_pem }, issuer })
    }

    /// Writes the CA certificate into a server TLS directory and its key (0600, in a
    /// 0700 directory) beside it ([`layout::ca_key`]).
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        let private = layout::ca_private_dir(dir);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&private)
            .map_err(|source| CertError::Write { path: private.clone(), source })?;
        write_pair(&self.pair, &layout::ca_cert(dir), &layout::ca_key(dir))
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// Everything a throwaway deployment needs: CA, server and one client.
pub struct Throwaway {
    pub ca: Ca,
    pub server: Pair,
    pub client: Pair,
}

/// The server names a loopback test or demo dials.
pub fn loopback_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

impl Throwaway {
    pub fn new(client_cn: &str, server_names: &[String]) -> Result<Throwaway, CertError> {
        let ca = Ca::new("lrpymrpc throwaway CA")?;
        let server = ca.issue_server(server_names)?;
        let client = ca.issue_client(client_cn)?;
        Ok(Throwaway { ca, server, client })
    }

    /// Writes the whole set under `dir` in [`layout`]'s nested form: readable as a
    /// client TLS directory and as a server one.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        self.ca.write(dir)?;
        write_pair(&self.server, &layout::server_cert(dir), &layout::server_key(dir))?;
        let client = layout::client_nested(dir);
        write_pair(&self.client, &client.cert, &client.key)
    }
}

/// Writes a certificate and its key; the key with mode 0600.
pub fn write_pair(pair: &Pair, cert: &Path, key: &Path) -> Result<(), CertError> {
    write_public(cert, &pair.cert_pem)?;
    write_private(key, &pair.key_pem)
}

/// Writes `contents` to `path` (creating parent directories), mode 0644.
pub fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    write_with_mode(path, contents, 0o644)
}

/// Writes key material: created with mode 0600 from the start, never wider.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    write_with_mode(path, contents, 0o600)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let error = |source| CertError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(error)?;
    }
    // Replace rather than truncate, so an existing file's wider mode is not kept.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn throwaway_set_is_laid_out_for_both_sides_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        Throwaway::new("alice", &loopback_names()).unwrap().write(dir.path()).unwrap();
        let client = layout::client_nested(dir.path());
        for key in [layout::ca_key(dir.path()), layout::server_key(dir.path()), client.key.clone()] {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        for cert in [layout::ca_cert(dir.path()), layout::server_cert(dir.path()), client.cert, client.ca] {
            assert!(fs::read_to_string(&cert).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        }
    }
}
