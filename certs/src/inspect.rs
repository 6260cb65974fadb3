//! Reads certificates for the checks users and administrators run: who a certificate
//! names, until when it is valid, what it may be used for, whether it matches a key
//! and was signed by a CA, and its SHA-256 fingerprint (for logs).

use std::net::IpAddr;

use rcgen::{KeyPair, PublicKeyData};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::CertError;
use crate::request::pem_block;

/// What a certificate says, read once.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The subject's common name.
    pub cn: Option<String>,
    /// DNS names and IP addresses of the subject alternative name extension.
    pub names: Vec<String>,
    /// Validity, as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// Usable for client authentication: no extended key usage at all, or one that
    /// lists client authentication (or any usage).
    pub client_auth: bool,
    pub server_auth: bool,
    /// `sha256:` and the lowercase hex of the DER.
    pub fingerprint: String,
    der: Vec<u8>,
}

impl Summary {
    /// The first certificate in a PEM text.
    pub fn from_pem(pem: &str) -> Result<Summary, CertError> {
        let der = pem_block(pem, "CERTIFICATE")
            .ok_or_else(|| CertError::Parse("it holds no PEM CERTIFICATE block".into()))?;
        Summary::from_der(der)
    }

    /// Every certificate in a PEM text (a CA bundle), in order; an error names the
    /// first one that does not parse (1-based).
    pub fn all_from_pem(pem: &str) -> Result<Vec<Summary>, CertError> {
        let blocks: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .filter(|block| block.label == "CERTIFICATE")
            .map(|block| block.contents)
            .collect();
        if blocks.is_empty() {
            return Err(CertError::Parse("it holds no PEM CERTIFICATE block".into()));
        }
        let count = blocks.len();
        blocks
            .into_iter()
            .enumerate()
            .map(|(index, der)| {
                Summary::from_der(der).map_err(|error| match (error, count) {
                    (CertError::Parse(why), 2..) => {
                        CertError::Parse(format!("certificate {} of {count}: {why}", index + 1))
                    }
                    (error, _) => error,
                })
            })
            .collect()
    }

    pub fn from_der(der: Vec<u8>) -> Result<Summary, CertError> {
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| CertError::Parse(format!("it is not a well-formed certificate: {e}")))?;
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let (client_auth, server_auth) = match cert.extended_key_usage() {
            Ok(Some(usage)) => (usage.value.client_auth || usage.value.any, usage.value.server_auth || usage.value.any),
            _ => (true, true),
        };
        let summary = Summary {
            cn,
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            client_auth,
            server_auth,
            fingerprint: fingerprint(&der),
            der: Vec::new(),
        };
        Ok(Summary { der, ..summary })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether the PEM private key is the one this certificate's public key belongs to.
    pub fn matches_key(&self, key_pem: &str) -> Result<bool, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Parse(format!("it is not a private key: {e}")))?;
        Ok(self.certificate().public_key().raw == key.subject_public_key_info().as_slice())
    }

    /// Whether `ca` signed this certificate (its signature verifies with the CA's key
    /// and the CA's subject is this certificate's issuer).
    pub fn signed_by(&self, ca: &Summary) -> bool {
        let (cert, issuer) = (self.certificate(), ca.certificate());
        cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
    }

    fn certificate(&self) -> X509Certificate<'_> {
        // `from_der` parsed these very bytes.
        X509Certificate::from_der(&self.der).map(|(_, cert)| cert).expect("parsed once already")
    }
}

/// `sha256:` and the lowercase hex of SHA-256 over `der`.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", lrpymrpc_units::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, loopback_names};

    #[test]
    fn reads_names_usage_and_the_signer() {
        let ca = Ca::new("test CA").unwrap();
        let server = ca.issue_server(&loopback_names()).unwrap();
        let summary = Summary::from_pem(&server.cert_pem).unwrap();
        assert_eq!(summary.names, ["localhost", "127.0.0.1", "::1"]);
        assert!(summary.server_auth && !summary.client_auth && !summary.is_ca);
        assert!(summary.matches_key(&server.key_pem).unwrap());
        assert!(!summary.matches_key(&ca.pair.key_pem).unwrap());
        let ca_summary = Summary::from_pem(&ca.pair.cert_pem).unwrap();
        assert!(ca_summary.is_ca && summary.signed_by(&ca_summary));
        let other = Summary::from_pem(&Ca::new("test CA").unwrap().pair.cert_pem).unwrap();
        assert!(!summary.signed_by(&other), "same name, another key");
        assert!(summary.fingerprint.starts_with("sha256:") && summary.fingerprint.len() == 7 + 64);
        assert!(Summary::from_pem("nothing").is_err());
    }
}
