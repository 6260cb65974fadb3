//! `cargo xtask ...`: the project's automation, in Rust so it runs wherever cargo does.
//! `certs` writes throwaway TLS material; `demo` runs a whole job end to end;
//! `snippets` writes the Make and CMake integration files into `integration/`;
//! `bench` measures the workloads of `bench.rs` against reference pipelines;
//! `slow-link` puts a wide-area link's delay in front of a server, to try by hand;
//! `man` writes the man pages into `docs/man/`; `circles` lists the import circles
//! between modules.

mod bench;
mod circles;
mod demo;
mod deployment;
mod link;
mod man;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write a throwaway CA, a server certificate (localhost, 127.0.0.1, ::1) and a
    /// client certificate into DIR, readable both as a client `--TLS_CONFIG_DIR` and as
    /// the mock server's `--tls-dir`. Private keys get mode 0600.
    Certs {
        dir: PathBuf,
        /// The client certificate's CN (default: the login name).
        #[arg(long)]
        cn: Option<String>,
    },
    /// Run the example job end to end: certificates, the mock server over mutual TLS on
    /// a free loopback port, the client, then show where the results landed.
    Demo,
    /// Write the Make and CMake integration files (`integration/lrpymrpc.mk`,
    /// `integration/LrPymRPC.cmake`) from the client's generator; a test fails when the
    /// committed copies are stale.
    Snippets,
    /// Write the man pages of both binaries into `docs/man/` from their clap definitions
    /// (a test fails when the committed pages are stale)
    Man,
    /// List the import circles between the modules (files) of the workspace's crates,
    /// or of the crate folders named; exits 1 when there is one
    Circles {
        /// Crate folders (`mock-server`, `client`, ...); all of them when none
        crates: Vec<String>,
    },
    /// Listen on a loopback port and forward to TO, every byte held DELAY in each
    /// direction (a wide-area link's latency); runs until interrupted
    SlowLink {
        /// Where to listen (`127.0.0.1:0`: a free loopback port)
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Where to forward (`127.0.0.1:8766`)
        #[arg(long)]
        to: std::net::SocketAddr,
        /// One-way delay (`10ms`)
        #[arg(long, default_value = "10ms")]
        delay: lrpymrpc_units::DurationArg,
    },
    /// Measure the client and server (release builds) on generated workloads against
    /// reference pipelines (`tar`, `gzip`, `pigz`, `python3 -c pass`); prints one table
    Bench {
        /// Also run W4, the 2 GB round trip
        #[arg(long)]
        big: bool,
        /// Runs per workload (W1 runs twice as many)
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Only these workloads (`--only W6,W7`); W2c, W6 and W7 run together, as do W1 and W3
        #[arg(long, value_delimiter = ',', value_name = "WORKLOADS")]
        only: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Certs { dir, cn } => {
            let cn = cn.unwrap_or_else(login_name);
            lrpymrpc_certs::Throwaway::new(&cn, &lrpymrpc_certs::loopback_names())?
                .write(&dir)
                .with_context(|| format!("writing certificates into `{}`", dir.display()))?;
            println!("wrote a throwaway CA, server and client (CN={cn}) certificates into `{}`", dir.display());
            println!("  client: --TLS_CONFIG_DIR {}", dir.display());
            println!("  server: lrpymrpc-server --tls-dir {}", dir.display());
            Ok(())
        }
        Task::Demo => demo::run(),
        Task::Man => man::write(),
        Task::Circles { crates } => circles::run(&workspace_root(), &crates),
        Task::SlowLink { listen, to, delay } => {
            let link = link::SlowLink::start(listen, to, delay.0)?;
            println!("{} -> {to}, {} each way; Ctrl-C stops", link.addr, lrpymrpc_units::human_duration(delay.0));
            loop {
                std::thread::park();
            }
        }
        Task::Bench { big, repeats, only } => bench::run(bench::Options { big, repeats, only }),
        Task::Snippets => {
            let dir = workspace_root().join("integration");
            std::fs::create_dir_all(&dir)?;
            for (name, text) in
                [("lrpymrpc.mk", lrpymrpc::snippets::make()), ("LrPymRPC.cmake", lrpymrpc::snippets::cmake())]
            {
                let path = dir.join(name);
                std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn login_name() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "lrpymrpc-user".into())
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}
