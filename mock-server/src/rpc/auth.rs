//! Who is calling: the client certificate's CN and fingerprint, checked against the
//! allow-list before a call does anything. The TLS layer already refused clients
//! without a certificate from the CA, expired ones, and server certificates.

use std::collections::HashSet;

use lrpymrpc_certs::inspect::Summary;
use tonic::Request;

use crate::error::JobError;

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The certificate's CN; `None` over plaintext.
    pub cn: Option<String>,
    /// `sha256:...` of the certificate, for logs; empty over plaintext.
    pub fingerprint: String,
    /// The TCP peer, for logs.
    pub address: String,
}

impl Caller {
    /// The CN, or `-` over plaintext, for logs.
    pub fn name(&self) -> &str {
        self.cn.as_deref().unwrap_or("-")
    }
}

/// Identifies the caller of `request` and applies the allow-list.
pub fn authorize<T>(request: &Request<T>, tls: bool, allowed: Option<&HashSet<String>>) -> Result<Caller, JobError> {
    let caller = identify(request, tls)?;
    check_allowed(&caller, allowed)?;
    Ok(caller)
}

/// Who the caller of `request` is: the client certificate's CN and fingerprint.
pub fn identify<T>(request: &Request<T>, tls: bool) -> Result<Caller, JobError> {
    let address = request.remote_addr().map_or_else(|| "?".to_string(), |a| a.to_string());
    if !tls {
        return Ok(Caller { cn: None, fingerprint: String::new(), address });
    }
    let certificates = request.peer_certs().ok_or_else(|| JobError::NoIdentity("none was presented".into()))?;
    let leaf = certificates.first().ok_or_else(|| JobError::NoIdentity("none was presented".into()))?;
    let summary = Summary::from_der(leaf.to_vec()).map_err(|e| JobError::NoIdentity(e.to_string()))?;
    let cn = summary.cn.clone().ok_or_else(|| JobError::NoIdentity("the certificate has no CN".into()))?;
    Ok(Caller { cn: Some(cn), fingerprint: summary.fingerprint, address })
}

/// Whether the allow-list lets `caller` run jobs.
pub fn check_allowed(caller: &Caller, allowed: Option<&HashSet<String>>) -> Result<(), JobError> {
    match (&caller.cn, allowed) {
        (Some(cn), Some(allowed)) if !allowed.contains(cn) => Err(JobError::NotAllowed { cn: cn.clone() }),
        _ => Ok(()),
    }
}
