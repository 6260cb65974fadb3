//! Who the client talks to: a server's host, port, TLS files and keepalive
//! ([`Peer`], shown as `host:port` with brackets around IPv6 literals), and the one
//! parser of server addresses as users write them.

use std::time::Duration;

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
    /// How long connecting may take, TCP, TLS handshake and the first call together
    /// (`--connect-timeout`).
    pub connect_timeout: Duration,
}

impl Peer {
    /// Whether the server is on this machine (`localhost` or a loopback address): no
    /// link to fill, and the same cores to share with it.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// `host:port` as dialled, with brackets around IPv6 literals: how every message
/// names a server.
impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
