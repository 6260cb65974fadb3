//! Opens the gRPC channel, mutual TLS included, and asks the server for its
//! capabilities before anything is packed, so an unreachable server or a refused
//! certificate fails in about a second; and turns transport and status errors into
//! messages that name the peer and the reason, classified by the errors' types
//! ([`TransportFault`]), never by their wording.

use std::error::Error as _;
use std::time::Duration;

use std::io::ErrorKind;

use lrpymrpc_proto::v1::extensions_client::ExtensionsClient;
use lrpymrpc_proto::v1::{CapabilitiesRequest, CapabilitiesResponse};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::exit::{ClientError, Step};
use crate::tls::ClientTls;

/// The server to dial and how.
#[derive(Debug, Clone)]
pub struct Peer {
    /// A host name or an IP address (without brackets), as given.
    pub host: String,
    pub port: u16,
    /// `None` speaks plaintext.
    pub tls: Option<ClientTls>,
    /// How often to ping a server that sends nothing (`--keepalive`); one that does
    /// not answer within `KEEPALIVE_TIMEOUT` is taken for lost.
    pub keepalive: Duration,
}

/// How long a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive keeps NAT and firewall state alive through an hour-long silent target.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// HTTP/2 pings detect a dead server during a long silent command; `--keepalive`'s
/// default. gRPC C-core servers (the Python server) treat pings more frequent than
/// every 5 minutes without data as abuse and hang up.
pub const DEFAULT_KEEPALIVE: &str = "5m";

/// HTTP/2 flow-control windows for what the server sends, on loopback: no delay to
/// cover, and every byte the server may send ahead is memory here.
const LOOPBACK_RECEIVE_WINDOW_BYTES: u32 = 512 * 1024;

/// The same over a network: room for a link's bandwidth-delay product (100 MB/s at a
/// 20 ms round trip). Through a 20 ms round trip, 512 KiB held downloads to 21 MiB/s,
/// 2 MiB let them reach 70 MiB/s, hyper's adaptive window 40 MiB/s (`cargo xtask
/// slow-link`); what it costs is memory, 1.5 MiB more than on loopback, whatever the
/// size of the results.
const NETWORK_RECEIVE_WINDOW_BYTES: u32 = 2048 * 1024;

impl Peer {
    /// Whether the server is on this machine (`localhost` or a loopback address): no
    /// link to fill, and the same cores to share with it.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// A server address as users write it: `host`, `host:port`, `[v6]`, `[v6]:port`, or a
/// bare IPv6 literal (`::1`). Returns the host (without brackets) and the port, if one
/// was written. The one parser of addresses (`--SERVER_IP`, `tls check --server`).
pub fn parse_address(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("it opens `[` without a closing `]`")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{host}]` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host.to_string(), Some(parse_port(port)?))),
                None => Err(format!("`{after}` after `]` is not `:PORT`")),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((host_name(text)?, None)),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            if host.is_empty() {
                return Err("it has no host before `:`".into());
            }
            Ok((host_name(host)?, Some(parse_port(port)?)))
        }
        _ if text.parse::<std::net::Ipv6Addr>().is_ok() => Ok((text.to_string(), None)),
        _ => Err("it is not a host, an address, or `[IPv6]:PORT`".into()),
    }
}

/// A host name or IPv4 address as written: letters, digits, `-`, `.` and `_` only.
fn host_name(text: &str) -> Result<String, String> {
    match text.chars().find(|&c| !(c.is_alphanumeric() || "-._".contains(c))) {
        None => Ok(text.to_string()),
        Some(c) => Err(format!("`{}` cannot be in a host name", c.escape_default())),
    }
}

/// A TCP port, 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    text.trim().parse::<u16>().ok().filter(|&port| port != 0).ok_or_else(|| format!("`{text}` is not a TCP port"))
}

/// `host:port` as dialled, with brackets around IPv6 literals.
pub fn authority(peer: &Peer) -> String {
    if peer.host.contains(':') {
        format!("[{}]:{}", peer.host, peer.port)
    } else {
        format!("{}:{}", peer.host, peer.port)
    }
}

/// Resolves a host name before dialling, so a name that does not resolve is said in
/// words (the connector's error only has the resolver's); IP literals pass.
async fn resolve(target: &Peer) -> Result<(), ClientError> {
    if target.host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let resolved = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((target.host.as_str(), target.port)));
    let found = match resolved.await {
        Ok(Ok(mut addresses)) => addresses.next().is_some(),
        _ => false,
    };
    match found {
        true => Ok(()),
        false => Err(ClientError::Connect {
            peer: authority(target),
            reason: format!("the host name `{}` does not resolve to an address", target.host),
            hint: Some("check the spelling of --SERVER_IP, or give the server's IP address".into()),
            transient: false,
            fault: TransportFault::UnknownHost,
        }),
    }
}

/// What the server told about itself: `None` for a legacy server (no extension service).
pub type Capabilities = Option<CapabilitiesResponse>;

fn receive_window(target: &Peer) -> u32 {
    match target.is_loopback() {
        true => LOOPBACK_RECEIVE_WINDOW_BYTES,
        false => NETWORK_RECEIVE_WINDOW_BYTES,
    }
}

/// Opens the channel and proves it with the capabilities call (see [`capabilities`]).
pub async fn connect(target: &Peer) -> Result<(Channel, Capabilities), ClientError> {
    let peer = authority(target);
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{peer}"))
        .map_err(|e| ClientError::local(format!("--SERVER_IP `{}` is not a host name or address: {e}", target.host)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(target.keepalive)
        .keep_alive_timeout(lrpymrpc_proto::KEEPALIVE_TIMEOUT)
        // hyper's defaults (2 MiB per stream, 5 MiB per connection) let a fast server on
        // this machine park megabytes of results in the client.
        .initial_stream_window_size(receive_window(target))
        .initial_connection_window_size(receive_window(target));
    let endpoint = match &target.tls {
        None => endpoint,
        Some(tls) => {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                // The name or IP address the certificate must hold: what was dialled.
                .domain_name(target.host.clone());
            endpoint.tls_config(config).map_err(|e| ClientError::Local {
                message: format!("TLS files in `{}` are not usable: {}", tls.files.ca.display(), chain(&e)),
                hint: None,
            })?
        }
    };
    resolve(target).await?;
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return Err(name_the_names(connect_error(&peer, &error, target), target).await),
    };
    match capabilities(channel.clone()).await {
        Ok(capabilities) => Ok((channel, capabilities)),
        Err(status) => {
            let error = match status.source() {
                Some(source) => connect_error(&peer, source, target),
                None => classify(Step::Connect, target, status),
            };
            Err(name_the_names(error, target).await)
        }
    }
}

fn connect_error(peer: &str, error: &(dyn std::error::Error + 'static), target: &Peer) -> ClientError {
    let fault = TransportFault::of(error);
    let reason = fault.describe().unwrap_or_else(|| chain(error));
    let hint = hint_for(&fault, target);
    // A server that is starting, restarting or stopping (a connection closed without a
    // TLS alert: the listener went away under it); a refused certificate comes with an
    // alert, and is never transient.
    let transient = matches!(fault, TransportFault::Refused | TransportFault::TimedOut | TransportFault::Closed);
    ClientError::Connect { peer: peer.to_string(), reason, hint, transient, fault }
}

/// When the server's certificate does not name what was dialled, looks at the
/// certificate again to say in the hint which names it does hold.
async fn name_the_names(error: ClientError, target: &Peer) -> ClientError {
    let ClientError::Connect { peer, reason, hint, transient, fault } = error else { return error };
    if fault != TransportFault::NameMismatch {
        return ClientError::Connect { peer, reason, hint, transient, fault };
    }
    let looked_up = target.clone();
    let presented = tokio::task::spawn_blocking(move || crate::server_cert::fetch(&looked_up)).await;
    let hint = match presented {
        Ok(Ok(crate::server_cert::Presented { certificate: Some(certificate), .. })) => {
            Some(crate::server_cert::name_mismatch_hint(target, &certificate.names))
        }
        _ => hint,
    };
    ClientError::Connect { peer, reason, hint, transient, fault }
}

/// The capabilities call, the first round trip of every session. With TLS 1.3 the
/// server judges the client certificate after the client considers the handshake
/// done, so only a round trip shows whether the server accepted it. An answer is an
/// extended server; `UNIMPLEMENTED` (a status the server chose) a legacy one; a
/// transport error is the refusal.
pub async fn capabilities(channel: Channel) -> Result<Capabilities, Status> {
    let mut client = ExtensionsClient::new(channel);
    let request = CapabilitiesRequest { client_protocol: lrpymrpc_proto::v1::PROTOCOL };
    match client.capabilities(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.source().is_none() && status.code() == Code::Unimplemented => Ok(None),
        Err(status) => Err(status),
    }
}

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
    /// The server's certificate is expired or not valid yet.
    ServerCertificateExpired,
    /// The server's certificate is unusable for another reason (words for users).
    BadServerCertificate(&'static str),
    /// The server ended the TLS session with an alert (usually: it refused ours).
    Alert,
    /// The server answered with something that is not TLS: a plaintext server.
    NotTls,
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
            rustls::Error::InvalidCertificate(Cert::BadSignature | Cert::BadEncoding) => {
                TransportFault::BadServerCertificate("it is malformed or its signature does not verify")
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
            TransportFault::ServerCertificateExpired => "the server's certificate is expired or not valid yet".into(),
            TransportFault::BadServerCertificate(why) => format!("the server's certificate is unusable: {why}"),
            TransportFault::NotTls => "the server did not answer in TLS".into(),
            // Its own words say which alert; ours could not.
            TransportFault::Alert | TransportFault::Closed | TransportFault::Other => return None,
        })
    }
}

/// The message of a transport failure: its source chain, not the status's debug form.
fn transport_reason(status: &Status) -> String {
    match status.source() {
        Some(source) => TransportFault::of(source).describe().unwrap_or_else(|| chain(source)),
        None => status.message().to_string(),
    }
}

/// Turns a failed RPC into an error: transport failures are a lost connection (or a
/// refused handshake), statuses the server chose are the server's answer.
pub fn classify(step: Step, target: &Peer, status: Status) -> ClientError {
    let peer = authority(target);
    let Some(source) = status.source() else {
        return match status.code() {
            // The server chose it: shutting down (a retry may find it back), or, during
            // Execute, its scheduler could not start the command (said as the answer it is).
            Code::Unavailable if step != Step::Execute => {
                ClientError::Lost { step, peer, reason: status.message().to_string() }
            }
            code => ClientError::Server { step, peer, code, message: status.message().to_string() },
        };
    };
    let fault = TransportFault::of(source);
    let reason = transport_reason(&status);
    match fault {
        TransportFault::Alert
        | TransportFault::NameMismatch
        | TransportFault::UnknownIssuer
        | TransportFault::ServerCertificateExpired
        | TransportFault::BadServerCertificate(_)
        | TransportFault::NotTls => {
            let hint = hint_for(&fault, target);
            ClientError::Connect { peer, reason, hint, transient: false, fault }
        }
        // The bare words here are the library's (a TLS EOF with a web address in it).
        TransportFault::Closed => ClientError::Lost {
            step,
            peer,
            reason: "the connection closed mid-call (the server stopped or was killed, or the network dropped it)"
                .into(),
        },
        _ => ClientError::Lost { step, peer, reason },
    }
}

/// The messages of an error and its sources, generic wrappers dropped, joined by `: `.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    const GENERIC: [&str; 3] = ["transport error", "connection error", "operation was canceled"];
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        // A nested status prints its whole debug form; its message is enough.
        let text = match current.downcast_ref::<Status>() {
            Some(status) => status.message().to_string(),
            None => current.to_string(),
        };
        if !text.is_empty() && !GENERIC.contains(&text.as_str()) && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    if parts.is_empty() { "unknown transport error".into() } else { parts.join(": ") }
}

fn hint_for(fault: &TransportFault, target: &Peer) -> Option<String> {
    let text = match fault {
        TransportFault::Refused => {
            format!("is the server running at {}? check --SERVER_IP and --SERVER_PORT", authority(target))
        }
        TransportFault::NameMismatch => format!(
            "the server's certificate does not name `{}`; connect with --SERVER_IP set to a name or address the \
             certificate holds",
            target.host
        ),
        TransportFault::UnknownIssuer => {
            "the server's certificate is not signed by the CA in your TLS directory's ca.crt".into()
        }
        TransportFault::ServerCertificateExpired => {
            "check this machine's clock, or ask the server's administrator to renew the server certificate".into()
        }
        TransportFault::NotTls if target.tls.is_some() => {
            "the server may speak plaintext: leave out --TLS_CONFIG_DIR, or check --SERVER_PORT".into()
        }
        TransportFault::Alert | TransportFault::Closed if target.tls.is_some() => {
            "the server ended the TLS session: it may have refused this client certificate (another CA, expired, \
             revoked); check it with the server's administrator"
                .into()
        }
        TransportFault::Closed | TransportFault::NotTls if target.tls.is_none() => {
            "the server may require mutual TLS: give --TLS_CONFIG_DIR".into()
        }
        TransportFault::TimedOut => {
            format!("nothing answered at {} in time; check the address and any firewall", authority(target))
        }
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error that wraps another, as transport layers do.
    #[derive(Debug)]
    struct Wrapped(io::Error);

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

    fn tls(error: rustls::Error) -> Wrapped {
        Wrapped(io::Error::new(ErrorKind::InvalidData, error))
    }

    #[test]
    fn addresses_are_read_in_every_form_users_write() {
        let ok = |text: &str| parse_address(text).unwrap();
        assert_eq!(ok("build-server"), ("build-server".into(), None));
        assert_eq!(ok(" 10.0.0.5:8766 "), ("10.0.0.5".into(), Some(8766)));
        assert_eq!(ok("::1"), ("::1".into(), None));
        assert_eq!(ok("[::1]"), ("::1".into(), None));
        assert_eq!(ok("[fe80::1]:9000"), ("fe80::1".into(), Some(9000)));
        assert!(parse_address("bad host").unwrap_err().contains("` ` cannot be in a host name"));
        assert!(parse_address("h/x:1").unwrap_err().contains("`/` cannot be in a host name"));
        for bad in ["", "host:", "host:0", "host:99999", ":5", "[::1", "[x]:5", "[::1]9", "a:b:c", "a b"] {
            assert!(parse_address(bad).is_err(), "{bad:?} accepted");
        }
    }

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

    fn peer(tls: bool) -> Peer {
        let files = lrpymrpc_certs::layout::client_nested(std::path::Path::new("/tls"));
        let tls = tls.then(|| crate::tls::ClientTls {
            files,
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
        });
        Peer { host: "build-server".into(), port: 8766, tls, keepalive: Duration::from_secs(300) }
    }

    #[test]
    fn hints_name_the_fix_for_each_fault() {
        let hint = |fault, tls| hint_for(&fault, &peer(tls)).unwrap_or_default();
        assert!(hint(TransportFault::Refused, true).contains("build-server:8766"));
        assert!(hint(TransportFault::NameMismatch, true).contains("--SERVER_IP"));
        assert!(hint(TransportFault::NotTls, true).contains("plaintext"));
        assert!(hint(TransportFault::Closed, false).contains("--TLS_CONFIG_DIR"));
        assert!(hint(TransportFault::Alert, true).contains("refused this client certificate"));
        assert!(hint(TransportFault::TimedOut, true).contains("firewall"));
        assert_eq!(hint_for(&TransportFault::Other, &peer(true)), None);
    }

    #[test]
    fn a_status_the_server_chose_is_its_answer_and_a_transport_failure_is_a_lost_connection() {
        let target = peer(true);
        let answer = classify(Step::Check, &target, Status::not_found("no job"));
        assert!(matches!(answer, ClientError::Server { code: Code::NotFound, .. }), "{answer:?}");
        let draining = classify(Step::Upload, &target, Status::unavailable("shutting down"));
        assert!(matches!(draining, ClientError::Lost { step: Step::Upload, .. }), "{draining:?}");
        let cut = Status::from_error(Box::new(io::Error::from(ErrorKind::ConnectionReset)));
        assert!(matches!(classify(Step::Download, &target, cut), ClientError::Lost { step: Step::Download, .. }));
        let refused =
            Status::from_error(Box::new(tls(rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate))));
        assert!(matches!(classify(Step::Execute, &target, refused), ClientError::Connect { transient: false, .. }));
    }
}
