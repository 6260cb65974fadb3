//! Accepts connections and makes the TLS handshakes itself, so that an
//! unauthenticated flood cannot starve certificate holders: handshakes in progress
//! are capped overall and per peer address, each has a time limit, and a connection
//! beyond a cap is closed at once (it holds no descriptor). Every refused handshake is
//! logged with the peer's address and the reason; a burst of connections closed at a
//! cap is logged once a second, not once per connection.
//!
//! The handshake is rustls with client certificates required (the CA that signs
//! clients), so a connection reaches gRPC only once its certificate was verified; the
//! `TlsStream`s carry the peer's certificates to the calls as tonic's own would. With
//! `--health-without-auth` a connection without a certificate gets through too (for
//! the health check alone): those are capped apart ([`MAX_UNAUTHENTICATED`] at once,
//! [`MAX_UNAUTHENTICATED_PER_ADDRESS`] from one address) and each lives at most
//! [`UNAUTHENTICATED_LIFETIME`], so they cannot take the descriptors certificate
//! holders need.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::config::TlsMaterial;

/// Connections without a client certificate (`--health-without-auth`) at once.
pub const MAX_UNAUTHENTICATED: usize = 32;
/// Of those, from one IP address.
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 4;
/// How long a connection without a client certificate may stay open (a health check
/// is one call).
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(30);

/// An accepted connection: its TLS stream, and for one without a client certificate
/// its place among those and its end of life.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    unauthenticated: Option<Unauthenticated>,
}

struct Unauthenticated {
    _permit: OwnedSemaphorePermit,
    _from_address: AddressSlot,
    ends: Pin<Box<tokio::time::Sleep>>,
}

impl Connection {
    /// A connection past its lifetime reads as closed by a time-out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.unauthenticated.as_mut().is_some_and(|guard| guard.ends.as_mut().poll(cx).is_ready())
    }
}

fn expired_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "a connection without a client certificate lived its time")
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Bounds on connections that have not finished their handshake yet.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once, from everyone.
    pub max_in_progress: usize,
    /// Handshakes in progress at once from one IP address.
    pub max_per_address: usize,
    /// The longest one handshake may take.
    pub timeout: Duration,
    /// TCP keepalive of accepted connections.
    pub keepalive: Duration,
}

/// The rustls server side of mutual TLS: our certificate, client certificates required
/// and verified against the client CA, HTTP/2 by ALPN.
/// With `health_without_auth`, a client without a certificate completes the handshake
/// too; every call but the health check then refuses it (`auth.rs`).
pub fn tls_acceptor(material: &TlsMaterial, health_without_auth: bool) -> Result<TlsAcceptor, String> {
    let pem_error = |what: &str, error: rustls::pki_types::pem::Error| format!("cannot read the {what}: {error}");
    let (certs, key) = server_identity(material)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(material.client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| pem_error("client CA", e))?;
        roots.add(ca).map_err(|e| format!("the client CA is not usable: {e}"))?;
    }
    let provider = lrpymrpc_certs::provider::crypto_provider();
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    let builder = match health_without_auth {
        true => builder.allow_unauthenticated(),
        false => builder,
    };
    let verifier = builder.build().map_err(|e| format!("cannot verify clients with the client CA: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The server's certificate chain and key, read from `material`: what every TLS
/// listener of the server (gRPC, the status page) presents.
pub fn server_identity(
    material: &TlsMaterial,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let pem_error = |what: &str, error: rustls::pki_types::pem::Error| format!("cannot read the {what}: {error}");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error("server certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).map_err(|e| pem_error("server key", e))?;
    Ok((certs, key))
}

/// The authenticated connections arriving on `listener`, handshakes bounded by `limits`.
pub fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: HandshakeLimits,
    metrics: Arc<crate::net::metrics::Metrics>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, acceptor, limits, tx, metrics));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: HandshakeLimits,
    tx: mpsc::Sender<io::Result<Connection>>,
    metrics: Arc<crate::net::metrics::Metrics>,
) {
    let in_progress = Arc::new(Semaphore::new(limits.max_in_progress.max(1)));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let unauthenticated_per_address = Arc::new(Mutex::new(HashMap::new()));
    let mut closed = ClosedAtCap::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: wait for some to come back.
                warn!(reason = error.to_string().as_str(), "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let Ok(permit) = in_progress.clone().try_acquire_owned() else {
            metrics.refused("handshake");
            closed.note(peer, "too many TLS handshakes in progress");
            continue;
        };
        let Some(from_address) = AddressSlot::take(&per_address, peer.ip(), limits.max_per_address) else {
            metrics.refused("handshake");
            closed.note(peer, "too many TLS handshakes in progress from this address");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(limits.keepalive);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
        let (unauthenticated, unauthenticated_per_address) =
            (unauthenticated.clone(), unauthenticated_per_address.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
            drop((permit, from_address));
            match outcome {
                Ok(Ok(stream)) if stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) => {
                    let _ = tx.send(Ok(Connection { stream, unauthenticated: None })).await;
                }
                Ok(Ok(stream)) => {
                    let place = unauthenticated.try_acquire_owned().ok().zip(AddressSlot::take(
                        &unauthenticated_per_address,
                        peer.ip(),
                        MAX_UNAUTHENTICATED_PER_ADDRESS,
                    ));
                    let Some((permit, from_address)) = place else {
                        metrics.refused("unauthenticated");
                        warn!(peer = %peer, reason = "too many connections without a client certificate", "connection closed");
                        return;
                    };
                    let ends = Box::pin(tokio::time::sleep(UNAUTHENTICATED_LIFETIME));
                    let guard = Unauthenticated { _permit: permit, _from_address: from_address, ends };
                    let _ = tx.send(Ok(Connection { stream, unauthenticated: Some(guard) })).await;
                }
                Ok(Err(error)) => {
                    metrics.refused("handshake");
                    warn!(peer = %peer, reason = handshake_failure(&error).as_str(), "TLS handshake refused");
                }
                Err(_) => {
                    metrics.refused("handshake");
                    let reason = format!("not finished within {}", lrpymrpc_units::human_duration(limits.timeout));
                    warn!(peer = %peer, reason = reason.as_str(), "TLS handshake refused");
                }
            }
        });
    }
}

/// One handshake in progress from an address; counted down on drop.
struct AddressSlot {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(table: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(AddressSlot { table: table.clone(), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Connections closed at a cap, logged at most once a second (a flood is one line a
/// second with its count, not a line a connection): the gRPC listener's and the HTTP
/// listeners' (`web/http.rs`).
#[derive(Default)]
pub(crate) struct ClosedAtCap {
    since_last_log: u64,
    last_log: Option<Instant>,
}

impl ClosedAtCap {
    /// One more connection closed, before its TLS handshake, for `reason`.
    pub(crate) fn note(&mut self, peer: SocketAddr, reason: &str) {
        self.note_as(peer, reason, "connection closed before its TLS handshake");
    }

    /// One more connection closed, for `reason`; `what` says what it had not done.
    pub(crate) fn note_as(&mut self, peer: SocketAddr, reason: &str, what: &str) {
        self.since_last_log += 1;
        if self.last_log.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        warn!(peer = %peer, reason, closed = self.since_last_log, "{what}");
        self.since_last_log = 0;
        self.last_log = Some(Instant::now());
    }
}
/// Why a handshake failed, in words that point at the fix: a first byte that is no TLS
/// record (rustls's `InvalidContentType`) is a client that spoke plaintext, such as an
/// lrPymRPC client without `--TLS_CONFIG_DIR`; anything else as rustls says it.
fn handshake_failure(error: &std::io::Error) -> String {
    let rustls_error = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "the client spoke plaintext, not TLS (a client without --TLS_CONFIG_DIR?)".into()
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)) => {
            "the client's certificate is signed by another CA of the same name as this server's (a CA made again?): \
             sign its request with this server's CA (`ca sign`)"
                .into()
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "the client's certificate is not signed by this server's CA: sign its request with it (`ca sign`)".into()
        }
        _ => error.to_string(),
    }
}
