//! Opens the gRPC channel, mutual TLS included, and asks the server for its
//! capabilities before anything is packed, so an unreachable server or a refused
//! certificate fails in about a second; and turns transport and status errors into
//! messages that name the peer and the reason, classified by the errors' types
//! ([`TransportFault`]), never by their wording.

use std::error::Error as _;
use std::time::Duration;

use lrpymrpc_proto::v1::extensions_client::ExtensionsClient;
use lrpymrpc_proto::v1::{CapabilitiesRequest, CapabilitiesResponse};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::exit::{ClientError, Step};
use crate::remote::fault::TransportFault;
use crate::remote::peer::Peer;

/// TCP keepalive keeps NAT and firewall state alive through an hour-long silent target.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// HTTP/2 flow-control windows for what the server sends, on loopback: no delay to
/// cover, and every byte the server may send ahead is memory here.
const LOOPBACK_RECEIVE_WINDOW_BYTES: u32 = 512 * 1024;

/// The same over a network: room for a link's bandwidth-delay product (100 MB/s at a
/// 20 ms round trip). Through a 20 ms round trip, 512 KiB held downloads to 21 MiB/s,
/// 2 MiB let them reach 70 MiB/s, hyper's adaptive window 40 MiB/s (`cargo xtask
/// slow-link`); what it costs is memory, 1.5 MiB more than on loopback, whatever the
/// size of the results.
const NETWORK_RECEIVE_WINDOW_BYTES: u32 = 2048 * 1024;

/// Resolves a host name before dialling, so a name that does not resolve is said in
/// words (the connector's error only has the resolver's); IP literals pass.
async fn resolve(target: &Peer) -> Result<(), ClientError> {
    if target.host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let resolved =
        tokio::time::timeout(target.connect_timeout, tokio::net::lookup_host((target.host.as_str(), target.port)));
    let found = match resolved.await {
        Ok(Ok(mut addresses)) => addresses.next().is_some(),
        _ => false,
    };
    match found {
        true => Ok(()),
        false => Err(ClientError::Connect {
            peer: target.to_string(),
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
    let peer = target.to_string();
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{peer}"))
        .map_err(|e| ClientError::local(format!("--SERVER_IP `{}` is not a host name or address: {e}", target.host)))?
        // No TCP connect timeout of its own: `Session::open` bounds TCP, TLS and the
        // first call together (`--connect-timeout`).
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
    let presented = tokio::task::spawn_blocking(move || crate::remote::server_cert::fetch(&looked_up)).await;
    let hint = match presented {
        Ok(Ok(crate::remote::server_cert::Presented { certificate: Some(certificate), .. })) => {
            Some(crate::remote::server_cert::name_mismatch_hint(target, &certificate.names))
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
    let peer = target.to_string();
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
        | TransportFault::SignedByNamesake
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
            format!("is the server running at {}? check --SERVER_IP and --SERVER_PORT", target)
        }
        TransportFault::NameMismatch => format!(
            "the server's certificate does not name `{}`; connect with --SERVER_IP set to a name or address the \
             certificate holds",
            target.host
        ),
        TransportFault::UnknownIssuer => {
            "the server's certificate is not signed by the CA in your TLS directory's ca.crt".into()
        }
        TransportFault::SignedByNamesake => "the CA was probably made again (`ca init --force`) after your ca.crt was \
                                              copied: get the current ca.crt from the server's administrator"
            .into(),
        TransportFault::ServerCertificateExpired => {
            "check this machine's clock, or ask the server's administrator to renew the server certificate".into()
        }
        TransportFault::NotTls if target.tls.is_some() => {
            "the server may speak plaintext: give --TLS_CONFIG_DIR \"\" for plaintext, or check --SERVER_PORT".into()
        }
        TransportFault::Alert | TransportFault::Closed if target.tls.is_some() => {
            "the server ended the TLS session: it may have refused this client certificate (another CA, expired, \
             revoked); check it with the server's administrator"
                .into()
        }
        TransportFault::NotHttp2 => {
            "the server may require mutual TLS: give --TLS_CONFIG_DIR DIR (your certificate, key and the CA; \
             `lrpymrpc tls init` makes the key and request)"
                .into()
        }
        TransportFault::Closed | TransportFault::NotTls if target.tls.is_none() => {
            "the server may require mutual TLS: give --TLS_CONFIG_DIR".into()
        }
        TransportFault::TimedOut => {
            format!("nothing answered at {} in time; check the address and any firewall", target)
        }
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use std::io::{self, ErrorKind};

    use super::*;
    use crate::remote::fault::wrapped::tls;

    fn peer(tls: bool) -> Peer {
        let files = lrpymrpc_certs::layout::client_nested(std::path::Path::new("/tls"));
        let tls = tls.then(|| crate::tls::ClientTls {
            files,
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
        });
        Peer {
            host: "build-server".into(),
            port: 8766,
            tls,
            keepalive: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
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
