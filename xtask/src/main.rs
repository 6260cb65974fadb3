//! `cargo xtask ...`: the project's automation, in Rust so it runs wherever cargo does.
//! `certs` writes throwaway TLS material; `demo` runs a whole job end to end;
//! `snippets` writes the Make and CMake integration files into `integration/`;
//! `bench` measures the workloads of `bench.rs` against reference pipelines.

mod bench;
mod demo;
mod deployment;

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
    /// Measure the client and server (release builds) on generated workloads against
    /// reference pipelines (`tar`, `gzip`, `pigz`, `python3 -c pass`); prints one table
    Bench {
        /// Also run W4, the 2 GB round trip
        #[arg(long)]
        big: bool,
        /// Runs per workload (W1 runs twice as many)
        #[arg(long, default_value_t = 3)]
        repeats: usize,
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
            println!("  server: lrpymrpc-mock-server --tls-dir {}", dir.display());
            Ok(())
        }
        Task::Demo => demo::run(),
        Task::Bench { big, repeats } => bench::run(bench::Options { big, repeats }),
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
