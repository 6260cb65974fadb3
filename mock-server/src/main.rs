//! `lrpymrpc-mock-server`: parses options, binds, prints `listening on ADDR` as its
//! first line on stdout, and serves until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lrpymrpc_mock_server::{Config, TlsMaterial};

/// A reference lrPymRPC server: unpacks uploads into fresh job directories, pip-installs
/// REPO_URL into a per-job virtual environment, runs the command, serves the results.
#[derive(Debug, Parser)]
#[command(name = "lrpymrpc-mock-server", version)]
struct Args {
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

fn main() -> ExitCode {
    match main_impl() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lrpymrpc-mock-server: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_impl() -> anyhow::Result<()> {
    let args = Args::parse();
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
        lrpymrpc_mock_server::run(listener, config, shutdown_signal()).await?;
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
