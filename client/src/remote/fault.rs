//! What a failed connection was, read from the errors' types (a `rustls::Error`, an
//! `io::Error`'s kind, tonic's `TimeoutExpired`), never from their wording: the leaf
//! that exit codes, hints and connection messages all decide on.

use std::io::ErrorKind;

/// What a transport failure was, read from the error's types, never its wording: a
/// `rustls::Error` (also inside an `io::Error`), an `io::Error`'s kind, tonic's
/// `TimeoutExpired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportFault {
    /// The host name does not resolve (found by resolving it first, not from words).
    UnknownHost,
    /// Nothing listens at that address.
    Refused,
    /// Nothing answered in time.
    TimedOut,
    /// The server's certificate does not name the host or address dialled.
    NameMismatch,
    /// The server's certificate is not signed by the CA in `ca.crt`.
    UnknownIssuer,
    /// The server's certificate names the issuer of `ca.crt`, but its signature does not
    /// verify with that CA's key: another CA of the same name signed it (a CA made
    /// again, before CA names were unique).
    SignedByNamesake,
    /// The server's certificate is expired or not valid yet.
    ServerCertificateExpired,
    /// The server's certificate is unusable for another reason (words for users).
    BadServerCertificate(&'static str),
    /// The server ended the TLS session with an alert (usually: it refused ours).
    Alert,
    /// The server answered with something that is not TLS: a plaintext server.
    NotTls,
    /// A plaintext connection got an answer that is no HTTP/2 frame (an invalid frame
    /// size: a TLS record): a TLS server.
    NotHttp2,
    /// The connection was closed or reset.
    Closed,
    /// None of the above.
    Other,
}

impl TransportFault {
    /// Reads the fault from an error and its sources.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> TransportFault {
        let mut found = TransportFault::Other;
        let mut next = Some(error);
        while let Some(current) = next {
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return TransportFault::of_tls(tls);
            }
            if current.downcast_ref::<tonic::TimeoutExpired>().is_some() {
                return TransportFault::TimedOut;
            }
            // `io::Error` and `h2::Error` hide the error they carry from `source()`.
            let io = current
                .downcast_ref::<std::io::Error>()
                .or_else(|| current.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
            if let Some(io) = io {
                match TransportFault::of_io(io) {
                    TransportFault::Other => {}
                    TransportFault::Closed => found = TransportFault::Closed,
                    fault => return fault,
                }
            }
            // An answer that is no HTTP/2 at all: a TLS server to a plaintext client.
            if current
                .downcast_ref::<h2::Error>()
                .is_some_and(|http2| http2.reason() == Some(h2::Reason::FRAME_SIZE_ERROR))
            {
                return TransportFault::NotHttp2;
            }
            // The server hung up after the handshake (TLS 1.3: a refused certificate
            // shows only then) or mid-call.
            let hung_up = current
                .downcast_ref::<hyper::Error>()
                .is_some_and(|http| http.is_closed() || http.is_incomplete_message() || http.is_canceled())
                || current.downcast_ref::<h2::Error>().is_some_and(|http2| http2.is_go_away() || http2.is_reset());
            if hung_up {
                found = TransportFault::Closed;
            }
            next = current.source();
        }
        found
    }

    /// The fault an I/O error means: the TLS error it carries, or its kind. An error
    /// that went through h2 keeps only its kind and words: `InvalidData` there is the
    /// TLS layer failing mid-session (an alert after a TLS 1.3 handshake).
    fn of_io(io: &std::io::Error) -> TransportFault {
        if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return TransportFault::of_tls(tls);
        }
        match io.kind() {
            ErrorKind::InvalidData => TransportFault::Alert,
            ErrorKind::ConnectionRefused => TransportFault::Refused,
            ErrorKind::TimedOut => TransportFault::TimedOut,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected => TransportFault::Closed,
            _ => TransportFault::Other,
        }
    }

    /// The fault a rustls error means.
    pub fn of_tls(error: &rustls::Error) -> TransportFault {
        use rustls::CertificateError as Cert;
        match error {
            rustls::Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
                TransportFault::NameMismatch
            }
            rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => TransportFault::UnknownIssuer,
            rustls::Error::InvalidCertificate(
                Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet | Cert::NotValidYetContext { .. },
            ) => TransportFault::ServerCertificateExpired,
            rustls::Error::InvalidCertificate(Cert::Revoked) => TransportFault::BadServerCertificate("it is revoked"),
            rustls::Error::InvalidCertificate(Cert::BadSignature) => TransportFault::SignedByNamesake,
            rustls::Error::InvalidCertificate(Cert::BadEncoding) => {
                TransportFault::BadServerCertificate("it is malformed")
            }
            rustls::Error::InvalidCertificate(_) => {
                TransportFault::BadServerCertificate("it is not valid for a TLS server")
            }
            rustls::Error::AlertReceived(_) => TransportFault::Alert,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => TransportFault::NotTls,
            _ => TransportFault::Other,
        }
    }

    /// The fault in words, where ours say it better than the error's.
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            TransportFault::UnknownHost => "the host name does not resolve to an address".into(),
            TransportFault::Refused => "the connection was refused".into(),
            TransportFault::TimedOut => "nothing answered in time".into(),
            TransportFault::NameMismatch => "the server's certificate does not name the host dialled".into(),
            TransportFault::UnknownIssuer => "the server's certificate is not signed by the CA in ca.crt".into(),
            TransportFault::SignedByNamesake => {
                "the server's certificate is signed by another CA of the same name as the one in ca.crt".into()
            }
            TransportFault::ServerCertificateExpired => "the server's certificate is expired or not valid yet".into(),
            TransportFault::BadServerCertificate(why) => format!("the server's certificate is unusable: {why}"),
            TransportFault::NotTls => "the server did not answer in TLS".into(),
            TransportFault::NotHttp2 => {
                "the server answered in something other than plaintext HTTP/2: it speaks TLS".into()
            }
            // Its own words say which alert; ours could not.
            TransportFault::Alert | TransportFault::Closed | TransportFault::Other => return None,
        })
    }
}

/// Errors shaped as the transport layers hand them over, for the tests of this module
/// and of `connect.rs`.
#[cfg(test)]
pub(crate) mod wrapped {
    use std::io;

    /// An error that wraps another, as transport layers do.
    #[derive(Debug)]
    pub(crate) struct Wrapped(pub(crate) io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A rustls error inside an I/O error, as tokio-rustls reports it.
    pub(crate) fn tls(error: rustls::Error) -> Wrapped {
        Wrapped(io::Error::new(io::ErrorKind::InvalidData, error))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::wrapped::{Wrapped, tls};
    use super::*;

    #[test]
    fn faults_are_read_from_the_error_types_through_wrappers() {
        let of = |error: Wrapped| TransportFault::of(&error);
        assert_eq!(of(Wrapped(ErrorKind::ConnectionRefused.into())), TransportFault::Refused);
        assert_eq!(of(Wrapped(ErrorKind::TimedOut.into())), TransportFault::TimedOut);
        assert_eq!(of(Wrapped(ErrorKind::UnexpectedEof.into())), TransportFault::Closed);
        let certificate = |reason| rustls::Error::InvalidCertificate(reason);
        assert_eq!(of(tls(certificate(rustls::CertificateError::NotValidForName))), TransportFault::NameMismatch);
        assert_eq!(of(tls(certificate(rustls::CertificateError::UnknownIssuer))), TransportFault::UnknownIssuer);
        assert_eq!(of(tls(certificate(rustls::CertificateError::Expired))), TransportFault::ServerCertificateExpired);
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired);
        assert_eq!(of(tls(alert)), TransportFault::Alert);
        let plaintext = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(of(tls(plaintext)), TransportFault::NotTls);
        // What h2 hands back: the kind and the words, the TLS error's type gone.
        let flattened = io::Error::new(ErrorKind::InvalidData, "received fatal alert: CertificateExpired");
        assert_eq!(of(Wrapped(flattened)), TransportFault::Alert);
        // Words alone decide nothing.
        assert_eq!(of(Wrapped(io::Error::other("connection refused: notvalidforname"))), TransportFault::Other);
    }
}
