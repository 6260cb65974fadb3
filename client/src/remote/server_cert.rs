//! Asks a server which certificate it presents, with a TLS handshake of our own
//! (rustls, as tonic uses): for `lrpymrpc tls check --server` and for the hint when the
//! certificate does not name what was dialled (it then lists the names it does hold).

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lrpymrpc_certs::inspect::Summary;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::remote::fault::TransportFault;
use crate::remote::peer::Peer;

/// How long the whole look takes at most.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the server showed, and what rustls thought of it.
#[derive(Debug)]
pub struct Presented {
    /// The server's own certificate, when the handshake got that far.
    pub certificate: Option<Summary>,
    /// `Ok` when the certificate verified against `ca.crt` for the dialled name; else
    /// what failed, by type, and in words.
    pub verdict: Result<(), (TransportFault, String)>,
}

/// Makes a handshake with the peer's TLS material and reports the server certificate.
/// `Err` when no handshake could start (no TLS material, unreachable server).
pub fn fetch(peer: &Peer) -> Result<Presented, String> {
    let tls = peer.tls.as_ref().ok_or("no TLS directory given")?;
    let provider = lrpymrpc_certs::provider::crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("`{}`: {e}", tls.files.ca.display()))?;
        roots.add(cert).map_err(|e| format!("`{}`: {e}", tls.files.ca.display()))?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("`{}`: {e}", tls.files.ca.display()))?;
    let recorder = Arc::new(Recorder { inner, seen: Mutex::new(None) });
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: {e}", tls.files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| format!("`{}`: {e}", tls.files.key.display()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate and key cannot be used together: {e}"))?;
    let name = ServerName::try_from(peer.host.clone()).map_err(|e| format!("`{}`: {e}", peer.host))?;
    let mut connection = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;

    let address = peer.to_string();
    let socket = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} has no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&socket, TIMEOUT).map_err(|e| format!("cannot connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut verdict = Ok(());
    while connection.is_handshaking() {
        if let Err(error) = connection.complete_io(&mut stream) {
            verdict = Err(describe(&error));
            break;
        }
    }
    let certificate =
        recorder.seen.lock().ok().and_then(|seen| seen.clone()).and_then(|der| Summary::from_der(der).ok());
    Ok(Presented { certificate, verdict })
}

fn describe(error: &io::Error) -> (TransportFault, String) {
    let fault = TransportFault::of(error);
    let words = fault.describe().unwrap_or_else(|| error.to_string());
    (fault, words)
}

/// Verifies as usual, remembering the certificate it was shown.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The hint for a certificate that does not name what was dialled: which names it
/// has, and how to connect by one of them.
pub fn name_mismatch_hint(peer: &Peer, names: &[String]) -> String {
    match names.first() {
        None => format!("the server's certificate names no host or address; it cannot be used for `{}`", peer.host),
        Some(first) => format!(
            "the server's certificate names {}; connect by one of them, e.g. --SERVER_IP {first} \
             (or ask for a certificate that also names `{}`)",
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
            peer.host
        ),
    }
}
