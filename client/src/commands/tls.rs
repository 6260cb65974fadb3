//! `lrpymrpc tls init` and `lrpymrpc tls check`: a user's side of certificate
//! bootstrap, without openssl. `init` makes a key (0600) and a CSR for a CN in the
//! nested layout and says what to send and where the answer goes; `check` says whether
//! the directory is usable (the findings of `tls::audit`), and whether the server a job
//! would use and this client accept each other.

use std::process::ExitCode;

use lrpymrpc_certs::{layout, request, write_private, write_public};

use crate::cli::origin::Origin;
use crate::cli::{Args, DEFAULT_TLS_DIR};
use crate::exit::{self, ClientError};
use crate::output::clean_text;
use crate::remote::connect::connect;
use crate::remote::fault::TransportFault;
use crate::remote::peer::Peer;
use crate::remote::server_cert::{self, name_mismatch_hint};
use crate::tls::audit::{self, Finding, Level};
use crate::tls::{self, expand_tilde};

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
    // A usage mistake, said before any file is touched (an unset `$USER` in a script
    // makes `--cn "$USER"` empty).
    if cn.trim().is_empty() {
        return Err(ClientError::Usage {
            message: "--cn is empty: a certificate needs a name (the CN the server's allow-list names)".into(),
            hint: Some("give your user name, e.g. --cn \"$(id -un)\" (an empty $USER gives --cn \"\")".into()),
        });
    }
    let pair = request::key_and_request(cn).map_err(|e| ClientError::Usage {
        message: format!("--cn `{cn}`: {e}"),
        hint: Some("a CN is a user or machine name: letters, digits, `.`, `-`, `_`".into()),
    })?;
    let written = |e: lrpymrpc_certs::CertError| ClientError::local(e.to_string());
    write_private(&files.key, &pair.key_pem).map_err(written)?;
    write_public(&csr_path, &pair.cert_pem).map_err(written)?;
    let shown = dir.display();
    println!("wrote a new private key:          {} (mode 0600; it never leaves this machine)", files.key.display());
    println!("wrote a certificate request, CN={cn}: {}", csr_path.display());
    println!();
    println!("next:");
    println!("  1. send {} to the server's administrator, who signs it with", csr_path.display());
    println!("       lrpymrpc-server ca sign client.csr --ca CA_DIR --days 365");
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
        println!("ok: {}", clean_text(text));
    }

    fn warn(&self, text: &str) {
        println!("warning: {}", clean_text(text));
    }

    fn local_problem(&mut self, text: &str, hint: Option<&str>) {
        self.local_problems += 1;
        print_problem(text, hint);
    }

    fn record(&mut self, finding: &Finding) {
        match finding.level {
            Level::Ok => self.ok(&finding.text),
            Level::Warning => {
                self.warn(&finding.text);
                if let Some(hint) = &finding.hint {
                    println!("hint: {}", clean_text(hint));
                }
            }
            Level::Problem => self.local_problem(&finding.text, finding.hint.as_deref()),
        }
    }

    fn server_problem(&mut self, text: &str, hint: Option<&str>) {
        self.server_problems += 1;
        print_problem(text, hint);
    }
}

fn print_problem(text: &str, hint: Option<&str>) {
    println!("error: {}", clean_text(&crate::output::in_words(text)));
    if let Some(hint) = hint {
        println!("hint: {}", clean_text(hint));
    }
}

/// `tls check`: 0 when everything is usable, 101 for a problem with the files, 102 for
/// one with the server. The directory and the server resolve as a job's do.
pub fn check(args: &Args, dir: Option<&str>, server: Option<&str>, local_only: bool) -> ExitCode {
    let mut findings = Findings::default();
    let said = |option: &str| crate::job::origin(&args.origins, option);
    let (dir, dir_origin) = match (dir, args.tls_config_dir.trim()) {
        (Some(dir), _) => (dir.to_string(), "--dir".to_string()),
        (None, "") => (DEFAULT_TLS_DIR.to_string(), "the default".to_string()),
        (None, configured) => {
            (configured.to_string(), said("TLS_CONFIG_DIR").unwrap_or_else(|| "--TLS_CONFIG_DIR".into()))
        }
    };
    println!("TLS directory: {} (from {dir_origin})", expand_tilde(&dir).display());
    if !expand_tilde(&dir).exists() {
        findings.local_problem(
            &format!("there is no TLS directory at `{}`", expand_tilde(&dir).display()),
            Some(&format!(
                "make a key and a certificate request there with `lrpymrpc tls init --cn YOUR_NAME --dir {dir}`, \
                 and send the request to the server's administrator"
            )),
        );
        return exit::for_tls_check(findings.local_problems, findings.server_problems);
    }
    let tls = match tls::load(&dir) {
        Ok(tls) => tls,
        Err(error) => {
            findings.local_problem(&error.to_string(), error.hint());
            return exit::for_tls_check(findings.local_problems, findings.server_problems);
        }
    };
    for finding in audit::audit(&tls) {
        findings.record(&finding);
    }
    let target = match (server, local_only) {
        (_, true) => None,
        (Some(server), _) => Some(parse_server(server).map(|address| (address, "--server".to_string()))),
        (None, _) => Some(
            crate::job::server_address(&args.server_ip, &args.server_port, &said)
                .map(|address| (address, server_origin(args)))
                .map_err(|error| error.to_string()),
        ),
    };
    match (target, findings.local_problems) {
        (Some(Ok(((host, port), origin))), 0) => {
            let peer =
                Peer { host, port, tls: Some(tls), keepalive: args.keepalive, connect_timeout: args.connect_timeout };
            println!("server: {} ({origin})", peer);
            check_server(peer, &mut findings);
        }
        (Some(Err(message)), _) => {
            findings.local_problem(&message, Some("give --server HOST:PORT, e.g. 10.0.0.5:8766"))
        }
        _ => {}
    }
    if findings.local_problems + findings.server_problems == 0 {
        println!("usable: yes");
    }
    exit::for_tls_check(findings.local_problems, findings.server_problems)
}

/// Where the job's server address came from, for the line that names it.
fn server_origin(args: &Args) -> String {
    let origins: Vec<String> = ["SERVER_IP", "SERVER_PORT"]
        .iter()
        .map(|option| {
            let origin =
                args.origins.iter().find(|s| s.option == *option).map_or(Origin::Default, |s| s.origin.clone());
            format!("{option} from {origin}")
        })
        .collect();
    origins.join(", ")
}

fn check_server(peer: Peer, findings: &mut Findings) {
    let address = peer.to_string();
    let presented = match server_cert::fetch(&peer) {
        Ok(presented) => presented,
        Err(message) => return findings.server_problem(&message, Some("is the server running at that address?")),
    };
    if let Some(certificate) = &presented.certificate {
        // Every name in it is the server's text: cleaned like a remote line.
        let text = format!(
            "server {address} presented CN={} for {}",
            certificate.cn.as_deref().unwrap_or("?"),
            if certificate.names.is_empty() { "no names".into() } else { certificate.names.join(", ") }
        );
        println!("{}", clean_text(&text));
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
    match crate::remote::peer::parse_address(text) {
        Ok((host, Some(port))) => Ok((host, port)),
        Ok((_, None)) => Err(format!("--server `{text}` has no `:PORT`")),
        Err(why) => Err(format!("--server `{text}`: {why}")),
    }
}

/// `lrpymrpc tls init` as a command: the exit code, the error printed.
pub fn init_command(cn: &str, dir_arg: &str, force: bool) -> ExitCode {
    match init(cn, dir_arg, force) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            crate::output::Output::new("", crate::output::Verbosity::default()).error(&error);
            crate::exit::for_error(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(parse_server("10.0.0.5:8766").unwrap(), ("10.0.0.5".into(), 8766));
        assert_eq!(parse_server("[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(parse_server("host").is_err() && parse_server("host:0").is_err() && parse_server(":5").is_err());
    }
}
