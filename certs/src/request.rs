//! Certificate signing requests: a user makes a key and a CSR for their CN
//! ([`key_and_request`]); an administrator signs it as a client certificate
//! ([`Ca::sign_client_request`]) after checking that it is well-formed, names a CN,
//! and asks for no CA rights. Only the CN and the public key are taken from a CSR.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::{Ca, CertError, Pair};

/// A new private key and a CSR with subject `CN=cn`, both PEM.
pub fn key_and_request(cn: &str) -> Result<Pair, CertError> {
    if cn.trim().is_empty() {
        return Err(CertError::Request("the CN is empty".into()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    let request = params.serialize_request(&key)?;
    Ok(Pair { cert_pem: request.pem()?, key_pem: key.serialize_pem() })
}

/// What a CSR asks for, once checked.
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    pub cn: String,
    request: CertificateSigningRequestParams,
}

/// Parses a PEM CSR and refuses one that is malformed, has a bad signature, has no
/// CN, or asks for CA rights (basicConstraints CA or the keyCertSign usage).
pub fn check_request(pem: &str) -> Result<CheckedRequest, CertError> {
    let refuse = |why: &str| CertError::Request(why.to_string());
    let block =
        pem_block(pem, "CERTIFICATE REQUEST").ok_or_else(|| refuse("it holds no PEM CERTIFICATE REQUEST block"))?;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&block)
        .map_err(|e| CertError::Request(format!("it is not a well-formed CSR: {e}")))?;
    let cn = parsed
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::trim)
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| refuse("it has no CN in its subject"))?
        .to_string();
    // A CN lands in logs and messages: no line breaks, escapes or other controls.
    if cn.chars().any(char::is_control) {
        return Err(refuse("its CN contains control characters (line breaks, escapes)"));
    }
    for extension in parsed.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::BasicConstraints(constraints) if constraints.ca => {
                return Err(refuse("it asks for CA rights (basicConstraints CA:TRUE)"));
            }
            ParsedExtension::KeyUsage(usage) if usage.key_cert_sign() => {
                return Err(refuse("it asks for CA rights (the keyCertSign key usage)"));
            }
            _ => {}
        }
    }
    let request = CertificateSigningRequestParams::from_der(&block.into())
        .map_err(|e| CertError::Request(format!("it cannot be used: {e}")))?;
    Ok(CheckedRequest { cn, request })
}

impl Ca {
    /// A client certificate for a checked CSR: its CN and public key, client-auth
    /// usage only, valid from an hour ago (clock skew) for `days` days.
    pub fn sign_client_request(&self, request: &CheckedRequest, days: u32) -> Result<String, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, request.cn.as_str());
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(i64::from(days));
        let params = self.leaf_params(params);
        let signed = CertificateSigningRequestParams { params, public_key: request.request.public_key.clone() };
        Ok(signed.signed_by(&self.issuer)?.pem())
    }
}

/// The DER bytes of the first PEM block labelled `label`.
pub(crate) fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|block| block.label == label)
        .map(|block| block.contents)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};

    use super::*;
    use crate::inspect::Summary;

    #[test]
    fn a_request_is_signed_as_a_client_certificate_for_its_cn_and_key() {
        let request = key_and_request("alice").unwrap();
        let checked = check_request(&request.cert_pem).unwrap();
        assert_eq!(checked.cn, "alice");
        let ca = Ca::new("test CA").unwrap();
        let cert = ca.sign_client_request(&checked, 30).unwrap();
        let summary = Summary::from_pem(&cert).unwrap();
        assert_eq!(summary.cn.as_deref(), Some("alice"));
        assert!(summary.client_auth && !summary.is_ca);
        assert!(summary.matches_key(&request.key_pem).unwrap());
        assert!(summary.signed_by(&Summary::from_pem(&ca.pair.cert_pem).unwrap()));
        let days = (summary.not_after - summary.not_before) / 86_400;
        assert_eq!(days, 30, "an hour of skew allowance rounds down");
    }

    #[test]
    fn refuses_malformed_requests_missing_cns_and_ca_rights() {
        assert!(check_request("not pem").unwrap_err().to_string().contains("no PEM CERTIFICATE REQUEST"));
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(check_request(garbage).unwrap_err().to_string().contains("not a well-formed CSR"));

        let key = KeyPair::generate().unwrap();
        let mut nameless = CertificateParams::new(Vec::<String>::new()).unwrap();
        nameless.distinguished_name = DistinguishedName::new();
        let pem = nameless.serialize_request(&key).unwrap().pem().unwrap();
        assert!(check_request(&pem).unwrap_err().to_string().contains("no CN"));

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params.distinguished_name.push(DnType::CommonName, "mallory");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = ca_params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(check_request(&pem).unwrap_err().to_string().contains("CA rights"));
    }
}
