//! The one choice of TLS cryptography for both ends of our own handshakes: rustls on
//! *ring*, as the workspace chose (it builds far faster here than aws-lc-rs), and as
//! tonic's `tls-ring` uses for the gRPC channels.

use std::sync::Arc;

/// rustls's *ring* provider: its default cipher suites, key exchange groups and
/// signature algorithms.
///
/// rustls 0.23.48 marks `ring::default_provider` deprecated because *ring* offers no
/// post-quantum key exchange; the key exchange stays classical (X25519, P-256, P-384)
/// until the workspace moves to a provider that has one. That is a decision, said here
/// once, not a warning every build repeats for whoever installs without `--locked`.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
