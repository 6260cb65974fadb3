//! The `lrpymrpc-mock-server` command line: serving (parse options, bind, print
//! `listening on ADDR` as the first line on stdout, serve until Ctrl-C or SIGTERM) and
//! the administrator's certificate commands, `ca init` and `ca sign`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lrpymrpc_certs::inspect::Summary;
use lrpymrpc_certs::{Ca, layout, request};

use crate::{Config, TlsMaterial};

/// A reference lrPymRPC server: unpacks uploads into fresh job directories, pip-installs
/// REPO_URL into a per-job virtual environment, runs the command, serves the results.
#[derive(Debug, Parser)]
#[command(name = "lrpymrpc-mock-server", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8766")]
    listen: SocketAddr,
    /// Directory for job directories (`ROOT/<UUID>/`); default: the system temp directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Mutual TLS: reads `DIR/server/server.{crt,key}` and `DIR/ca/ca.crt` (the layout
    /// `cargo xtask certs DIR` writes). Without it the server speaks plaintext.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Behave exactly like a server predating lrpymrpc's protocol extension: no exit
    /// status, no stdout/stderr labels (to test clients against the Python server's behaviour).
    #[arg(long)]
    legacy_protocol: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for a deployment, without openssl
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Make a CA and a server certificate in DIR (`ca/ca.crt`, `ca/ca.key`,
    /// `server/server.crt`, `server/server.key`; keys 0600), ready for `--tls-dir DIR`
    Init {
        dir: PathBuf,
        /// A host name or IP address clients dial (repeatable; at least one)
        #[arg(long = "san", value_name = "NAME_OR_IP", required = true, num_args = 1..)]
        names: Vec<String>,
        /// Replace an existing CA (every certificate it signed stops working)
        #[arg(long)]
        force: bool,
    },
    /// Sign a user's certificate request as a client certificate for its CN
    Sign {
        /// The user's CSR (PEM), e.g. from `lrpymrpc tls init`
        csr: PathBuf,
        /// The directory `ca init` made
        #[arg(long = "ca", value_name = "DIR")]
        ca_dir: PathBuf,
        /// How long the certificate is valid
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where to write the certificate (default: the CSR's path with `.crt`)
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs the server binary with the process's arguments.
pub fn main_impl() -> ExitCode {
    match dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lrpymrpc-mock-server: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::Ca { action: CaAction::Init { dir, names, force } }) => ca_init(dir, names, *force),
        Some(Command::Ca { action: CaAction::Sign { csr, ca_dir, days, out } }) => {
            ca_sign(csr, ca_dir, *days, out.as_deref())
        }
        None => serve(args),
    }
}

fn ca_init(dir: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    let ca_key = layout::ca_key(dir);
    if ca_key.exists() && !force {
        anyhow::bail!(
            "`{}` exists; refusing to replace a CA key (every certificate it signed would stop working)\n\
             hint: add --force to replace it, or give another DIR",
            ca_key.display()
        );
    }
    let host = names.first().map_or("lrpymrpc", String::as_str);
    let ca = Ca::new(&format!("lrpymrpc CA {host}"))?;
    let server = ca.issue_server(names)?;
    ca.write(dir)?;
    lrpymrpc_certs::write_pair(&server, &layout::server_cert(dir), &layout::server_key(dir))?;
    println!("wrote a CA and a server certificate for {} into `{}`", names.join(", "), dir.display());
    println!("  serve with:        lrpymrpc-mock-server --tls-dir {} --listen ADDR:PORT", dir.display());
    println!("  give users:        {} (they put it at ~/.tls/tls_lrpymrpc/ca/ca.crt)", layout::ca_cert(dir).display());
    println!("  sign their CSRs:   lrpymrpc-mock-server ca sign client.csr --ca {}", dir.display());
    println!("  keep private:      {} and {}", ca_key.display(), layout::server_key(dir).display());
    Ok(())
}

fn ca_sign(csr: &Path, ca_dir: &Path, days: u32, out: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(csr).with_context(|| format!("cannot read `{}`", csr.display()))?;
    let checked = request::check_request(&text).with_context(|| format!("`{}`", csr.display()))?;
    let ca = Ca::load(ca_dir).with_context(|| format!("--ca `{}`", ca_dir.display()))?;
    let cert_pem = ca.sign_client_request(&checked, days)?;
    let out = out.map_or_else(|| csr.with_extension("crt"), Path::to_path_buf);
    lrpymrpc_certs::write_public(&out, &cert_pem)?;
    let fingerprint = Summary::from_pem(&cert_pem).map(|s| s.fingerprint).unwrap_or_default();
    println!("signed a client certificate for CN={}, valid {days} days: `{}`", checked.cn, out.display());
    println!("  fingerprint: {fingerprint}");
    println!(
        "  send back:   `{}` (goes to client/client.crt) and `{}` (goes to ca/ca.crt)",
        out.display(),
        layout::ca_cert(ca_dir).display()
    );
    Ok(())
}

fn serve(args: Args) -> anyhow::Result<()> {
    let tls = match &args.tls_dir {
        Some(dir) => Some(TlsMaterial::from_dir(dir).with_context(|| format!("--tls-dir `{}`", dir.display()))?),
        None => None,
    };
    let root = args.root.unwrap_or_else(std::env::temp_dir);
    if !root.is_dir() {
        anyhow::bail!("--root `{}` is not a directory", root.display());
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on `{}`", args.listen))?;
        let address = listener.local_addr()?;
        if tls.is_none() {
            eprintln!("lrpymrpc-mock-server: WARNING: no --tls-dir: serving PLAINTEXT, without authentication.");
            eprintln!("lrpymrpc-mock-server: WARNING: anyone who reaches {address} can run commands as this user.");
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()?;
        drop(stdout);
        let config = Config { legacy_protocol: args.legacy_protocol, ..Config::new(root, tls) };
        crate::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}
