//! `lrpymrpc tls init` and `lrpymrpc tls check`: a user's side of certificate
//! bootstrap, without openssl. `init` makes a key (0600) and a CSR for a CN in the
//! nested layout and says what to send and where the answer goes; `check` says whether
//! the directory is usable, and with `--server` whether that server and this client
//! accept each other.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use lrpymrpc_certs::inspect::Summary;
use lrpymrpc_certs::{layout, request, write_private, write_public};

use crate::connect::{Peer, TransportFault, connect};
use crate::exit::{self, ClientError};
use crate::server_cert::{self, name_mismatch_hint};
use crate::tls::{self, expand_tilde};

/// A certificate expiring sooner than this gets a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// `tls init`: a new key and CSR in `dir`.
pub fn init(cn: &str, dir_arg: &str, force: bool) -> Result<(), ClientError> {
    let dir = expand_tilde(dir_arg);
    let files = layout::client_nested(&dir);
    let csr_path = files.cert.with_extension("csr");
    if files.key.exists() && !force {
        return Err(ClientError::Local {
            message: format!("`{}` exists; refusing to replace a private key", files.key.display()),
            hint: Some(
                "add --force to make a new one (a certificate issued for the old key then stops working), \
                 or give another --dir"
                    .into(),
            ),
        });
    }
    let pair = request::key_and_request(cn).map_err(|e| ClientError::local(format!("--cn `{cn}`: {e}")))?;
    let written = |e: lrpymrpc_certs::CertError| ClientError::local(e.to_string());
    write_private(&files.key, &pair.key_pem).map_err(written)?;
    write_public(&csr_path, &pair.cert_pem).map_err(written)?;
    let shown = dir.display();
    println!("wrote a new private key:          {} (mode 0600; it never leaves this machine)", files.key.display());
    println!("wrote a certificate request, CN={cn}: {}", csr_path.display());
    println!();
    println!("next:");
    println!("  1. send {} to the server's administrator, who signs it with", csr_path.display());
    println!("       lrpymrpc-mock-server ca sign client.csr --ca CA_DIR --days 365");
    println!("  2. put the certificate you get back at {}", files.cert.display());
    println!("     and the server's CA certificate (ca.crt) at {}", files.ca.display());
    println!("  3. check: lrpymrpc tls check --dir {shown} --server HOST:PORT");
    println!("  4. use:   lrpymrpc --TLS_CONFIG_DIR {shown} --SERVER_IP HOST ...");
    Ok(())
}

/// Findings of a check, printed as they are made.
#[derive(Debug, Default)]
struct Findings {
    local_problems: usize,
    server_problems: usize,
}

impl Findings {
    fn ok(&self, text: &str) {
        println!("ok: {text}");
    }

    fn warn(&self, text: &str) {
        println!("warning: {text}");
    }

    fn local_problem(&mut self, text: &str, hint: Option<&str>) {
        self.local_problems += 1;
        print_problem(text, hint);
    }

    fn server_problem(&mut self, text: &str, hint: Option<&str>) {
        self.server_problems += 1;
        print_problem(text, hint);
    }
}

fn print_problem(text: &str, hint: Option<&str>) {
    println!("error: {text}");
    if let Some(hint) = hint {
        println!("hint: {hint}");
    }
}

/// `tls check`: 0 when everything is usable, 101 for a problem with the files, 102 for
/// one with the server.
pub fn check(dir_arg: &str, server: Option<&str>) -> ExitCode {
    let mut findings = Findings::default();
    let tls = match tls::load(dir_arg) {
        Ok(tls) => tls,
        Err(error) => {
            findings.local_problem(&error.to_string(), error.hint());
            return exit::for_tls_check(findings.local_problems, findings.server_problems);
        }
    };
    check_files(&tls, &mut findings);
    if let (Some(server), 0) = (server, findings.local_problems) {
        match parse_server(server) {
            Ok((host, port)) => check_server(Peer { host, port, tls: Some(tls) }, &mut findings),
            Err(message) => findings.local_problem(&message, Some("give --server HOST:PORT, e.g. 10.0.0.5:8766")),
        }
    }
    if findings.local_problems + findings.server_problems == 0 {
        println!("usable: yes");
    }
    exit::for_tls_check(findings.local_problems, findings.server_problems)
}

fn check_files(tls: &tls::ClientTls, findings: &mut Findings) {
    let (cert_path, key_path, ca_path) = (&tls.files.cert, &tls.files.key, &tls.files.ca);
    let cert = match Summary::from_pem(&tls.cert_pem) {
        Ok(cert) => cert,
        Err(error) => return findings.local_problem(&format!("`{}`: {error}", cert_path.display()), None),
    };
    let ca = match Summary::from_pem(&tls.ca_pem) {
        Ok(ca) => ca,
        Err(error) => return findings.local_problem(&format!("`{}`: {error}", ca_path.display()), None),
    };
    let who = cert.cn.clone().unwrap_or_else(|| "(no CN)".into());
    match cert.matches_key(&tls.key_pem) {
        Ok(true) => findings.ok(&format!("`{}` (CN={who}) belongs to `{}`", cert_path.display(), key_path.display())),
        Ok(false) => findings.local_problem(
            &format!("`{}` does not belong to the key `{}`", cert_path.display(), key_path.display()),
            Some("the certificate was issued for another key: was the key made again after the CSR was signed? send a new CSR"),
        ),
        Err(error) => findings.local_problem(&format!("`{}`: {error}", key_path.display()), None),
    }
    if cert.signed_by(&ca) {
        findings.ok(&format!(
            "it is signed by the CA in `{}` (CN={})",
            ca_path.display(),
            ca.cn.as_deref().unwrap_or("?")
        ));
    } else {
        findings.local_problem(
            &format!(
                "`{}` is not signed by the CA in `{}` (CN={})",
                cert_path.display(),
                ca_path.display(),
                ca.cn.as_deref().unwrap_or("?")
            ),
            Some("put the CA certificate of the server that signed your certificate at that path"),
        );
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let days_left = (cert.not_after - now) / 86_400;
    if now < cert.not_before {
        findings.local_problem(
            &format!("`{}` is not valid yet (from {})", cert_path.display(), date(cert.not_before)),
            Some("check this machine's clock"),
        );
    } else if now > cert.not_after {
        findings.local_problem(
            &format!("`{}` expired on {}", cert_path.display(), date(cert.not_after)),
            Some("send a new CSR (`lrpymrpc tls init --force --cn NAME`) to the server's administrator"),
        );
    } else if days_left < EXPIRY_WARNING_DAYS {
        findings.warn(&format!("`{}` expires in {days_left} days, on {}", cert_path.display(), date(cert.not_after)));
    } else {
        findings.ok(&format!("valid until {}", date(cert.not_after)));
    }
    if cert.client_auth && !cert.is_ca {
        findings.ok("meant for client authentication");
    } else {
        findings.local_problem(
            &format!("`{}` is not meant for client authentication", cert_path.display()),
            Some("it may be a server or CA certificate; the administrator signs client certificates with `ca sign`"),
        );
    }
}

fn check_server(peer: Peer, findings: &mut Findings) {
    let address = crate::connect::authority(&peer);
    let presented = match server_cert::fetch(&peer) {
        Ok(presented) => presented,
        Err(message) => return findings.server_problem(&message, Some("is the server running at that address?")),
    };
    if let Some(certificate) = &presented.certificate {
        println!(
            "server {address} presented CN={} for {}",
            certificate.cn.as_deref().unwrap_or("?"),
            if certificate.names.is_empty() { "no names".into() } else { certificate.names.join(", ") }
        );
    }
    match &presented.verdict {
        Err((TransportFault::NameMismatch, _)) => {
            let names = presented.certificate.as_ref().map(|c| c.names.clone()).unwrap_or_default();
            return findings.server_problem(
                &format!("the server's certificate does not name `{}`, the host dialled", peer.host),
                Some(&name_mismatch_hint(&peer, &names)),
            );
        }
        Err((_, reason)) => {
            return findings.server_problem(&format!("TLS handshake with {address} failed: {reason}"), None);
        }
        Ok(()) => findings.ok(&format!("the server's certificate is signed by your ca.crt and names `{}`", peer.host)),
    }
    // The server judges the client certificate after the handshake; a real call shows it.
    let accepted = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(connect(&peer)).map_err(|e| e.to_string()));
    match accepted {
        Ok((_, Some(capabilities))) => match capabilities.caller {
            Some(caller) if !caller.allowed => findings.server_problem(
                &format!(
                    "{address} accepts the certificate but does not let CN={} run jobs: {}",
                    caller.cn, caller.refusal
                ),
                Some("ask the server's administrator to add your CN to its allow-list (--allow-cn)"),
            ),
            _ => findings.ok(&format!("{address} accepts this client certificate and lets it run jobs")),
        },
        Ok((_, None)) => findings.ok(&format!(
            "{address} accepts this client certificate (a server without lrpymrpc's extension cannot say whether it \
             lets this CN run jobs)"
        )),
        Err(message) => findings.server_problem(
            &message,
            Some("the server refused this client certificate: was it signed by the CA that server trusts?"),
        ),
    }
}

/// `HOST:PORT` or `[V6]:PORT`, through the one address parser.
fn parse_server(text: &str) -> Result<(String, u16), String> {
    match crate::connect::parse_address(text) {
        Ok((host, Some(port))) => Ok((host, port)),
        Ok((_, None)) => Err(format!("--server `{text}` has no `:PORT`")),
        Err(why) => Err(format!("--server `{text}`: {why}")),
    }
}

/// `2026-11-25` for Unix seconds (UTC).
fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(|_| format!("@{unix}"), |t| t.date().to_string())
}

/// `lrpymrpc tls init` as a command: the exit code, the error printed.
pub fn init_command(cn: &str, dir_arg: &str, force: bool) -> ExitCode {
    match init(cn, dir_arg, force) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            crate::output::Output::new("", "", crate::output::Verbosity::default()).error(&error);
            crate::exit::for_error(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_server_addresses() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_564_800), "2026-11-25");
        assert_eq!(parse_server("10.0.0.5:8766").unwrap(), ("10.0.0.5".into(), 8766));
        assert_eq!(parse_server("[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(parse_server("host").is_err() && parse_server("host:0").is_err() && parse_server(":5").is_err());
    }
}
