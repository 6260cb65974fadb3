//! Opens the gRPC channel, mutual TLS included, before anything is packed, so an
//! unreachable server or a refused certificate fails in about a second; and turns
//! transport and status errors into messages that name the peer and the reason.

use std::error::Error as _;
use std::time::Duration;

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
}

/// How long a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive keeps NAT and firewall state alive through an hour-long silent target.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// HTTP/2 pings detect a dead server. gRPC C-core servers (the Python server) treat
/// pings more frequent than every 5 minutes without data as abuse and hang up.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(300);

/// HTTP/2 flow-control windows for what the server sends.
const RECEIVE_WINDOW_BYTES: u32 = 512 * 1024;

/// `host:port` as dialled, with brackets around IPv6 literals.
pub fn authority(peer: &Peer) -> String {
    if peer.host.contains(':') {
        format!("[{}]:{}", peer.host, peer.port)
    } else {
        format!("{}:{}", peer.host, peer.port)
    }
}

pub async fn connect(target: &Peer) -> Result<Channel, ClientError> {
    let peer = authority(target);
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{peer}"))
        .map_err(|e| ClientError::local(format!("--SERVER_IP `{}` is not a host name or address: {e}", target.host)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(lrpymrpc_proto::KEEPALIVE_TIMEOUT)
        // hyper's defaults (2 MiB per stream, 5 MiB per connection) let a fast server
        // park megabytes of results in the client; 512 KiB still fills a LAN.
        .initial_stream_window_size(RECEIVE_WINDOW_BYTES)
        .initial_connection_window_size(RECEIVE_WINDOW_BYTES);
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
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return Err(name_the_names(connect_error(&peer, chain(&error), target), target).await),
    };
    if let Err(status) = probe(channel.clone()).await {
        return Err(name_the_names(connect_error(&peer, transport_reason(&status), target), target).await);
    }
    Ok(channel)
}

fn connect_error(peer: &str, reason: String, target: &Peer) -> ClientError {
    let hint = hint_for(&reason, target);
    let lower = reason.to_lowercase();
    // A server that is starting or restarting; a refused certificate is never transient.
    let transient = lower.contains("connection refused") || lower.contains("timed out");
    ClientError::Connect { peer: peer.to_string(), reason, hint, transient }
}

/// When the server's certificate does not name what was dialled, looks at the
/// certificate again to say in the hint which names it does hold.
async fn name_the_names(error: ClientError, target: &Peer) -> ClientError {
    let ClientError::Connect { peer, reason, hint, transient } = error else { return error };
    if !is_name_mismatch(&reason) {
        return ClientError::Connect { peer, reason, hint, transient };
    }
    let looked_up = target.clone();
    let presented = tokio::task::spawn_blocking(move || crate::server_cert::fetch(&looked_up)).await;
    let hint = match presented {
        Ok(Ok(crate::server_cert::Presented { certificate: Some(certificate), .. })) => {
            Some(crate::server_cert::name_mismatch_hint(target, &certificate.names))
        }
        _ => hint,
    };
    ClientError::Connect { peer, reason, hint, transient }
}

/// rustls's words for a certificate that does not name the dialled host.
pub fn is_name_mismatch(reason: &str) -> bool {
    let lower = reason.to_lowercase();
    lower.contains("notvalidforname") || lower.contains("not valid for name")
}

/// One round trip to a method no server has. With TLS 1.3 the server judges the
/// client certificate after the client considers the handshake done, so only a
/// round trip shows whether the server accepted it. Any gRPC status (normally
/// `UNIMPLEMENTED`) proves the session is up; a transport error is the refusal.
async fn probe(channel: Channel) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::from_error(Box::new(e)))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/lrpymrpc.Probe/Hello");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(tonic::Request::<()>::new(()), path, codec).await {
        Ok(_) => Ok(()),
        Err(status) if status.source().is_none() => Ok(()),
        Err(status) => Err(status),
    }
}

/// The message of a transport failure: its source chain, not the status's debug form.
fn transport_reason(status: &Status) -> String {
    match status.source() {
        Some(source) => chain(source),
        None => status.message().to_string(),
    }
}

/// Turns a failed RPC into an error: transport failures are a lost connection (or a
/// refused handshake), statuses the server chose are the server's answer.
pub fn classify(step: Step, target: &Peer, status: Status) -> ClientError {
    let peer = authority(target);
    let transport = status.source().is_some();
    let reason = transport_reason(&status);
    if transport && (reason.contains("alert") || reason.contains("certificate")) {
        let hint = hint_for(&reason, target);
        return ClientError::Connect { peer, reason, hint, transient: false };
    }
    match status.code() {
        _ if transport => ClientError::Lost { step, peer, reason },
        Code::Unavailable => ClientError::Lost { step, peer, reason },
        code => ClientError::Server { step, peer, code, message: reason },
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

fn hint_for(reason: &str, target: &Peer) -> Option<String> {
    let lower = reason.to_lowercase();
    let text = if lower.contains("connection refused") {
        format!("is the server running at {}? check --SERVER_IP and --SERVER_PORT", authority(target))
    } else if is_name_mismatch(reason) {
        format!(
            "the server's certificate does not name `{}`; connect with --SERVER_IP set to a name or address the certificate holds",
            target.host
        )
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the server's certificate is not signed by the CA in your TLS directory's ca.crt".into()
    } else if target.tls.is_some()
        && ["alert", "connection closed", "reset", "broken pipe"].iter().any(|word| lower.contains(word))
    {
        "the server ended the TLS session: it may have refused this client certificate (another CA, expired, revoked); \
         check it with the server's administrator"
            .into()
    } else if target.tls.is_none()
        && (lower.contains("frame") || lower.contains("connection closed") || lower.contains("reset"))
    {
        "the server may require mutual TLS: give --TLS_CONFIG_DIR".into()
    } else if lower.contains("timed out") || lower.contains("deadline") {
        format!("nothing answered at {} in time; check the address and any firewall", authority(target))
    } else {
        return None;
    };
    Some(text)
}
