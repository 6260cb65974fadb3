//! What `demo` and `bench` both need: the two binaries built, throwaway certificates,
//! and a mock server over mutual TLS on a free loopback port, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use duct::cmd;

use crate::workspace_root;

/// Paths of the freshly built binaries.
pub struct Binaries {
    pub client: PathBuf,
    pub server: PathBuf,
}

/// Builds `lrpymrpc` and `lrpymrpc-mock-server`, in release mode or not.
pub fn build(release: bool) -> anyhow::Result<Binaries> {
    let root = workspace_root();
    let mut args = vec!["build", "--quiet", "--bin", "lrpymrpc", "--bin", "lrpymrpc-mock-server"];
    if release {
        args.push("--release");
    }
    cmd("cargo", &args).dir(&root).run().context("cargo build failed")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let profile = target.join(if release { "release" } else { "debug" });
    Ok(Binaries { client: profile.join("lrpymrpc"), server: profile.join("lrpymrpc-mock-server") })
}

/// Throwaway certificates in `scratch/tls` and a job root in `scratch/jobs`.
pub fn certificates_and_root(scratch: &Path, client_cn: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    certificates_and_root_for(scratch, client_cn, &[])
}

/// [`certificates_and_root`] with more names in the server's certificate.
pub fn certificates_and_root_for(
    scratch: &Path,
    client_cn: &str,
    more_names: &[String],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let tls = scratch.join("tls");
    let jobs = scratch.join("jobs");
    std::fs::create_dir_all(&jobs)?;
    let mut names = lrpymrpc_certs::loopback_names();
    names.extend_from_slice(more_names);
    lrpymrpc_certs::Throwaway::new(client_cn, &names)?.write(&tls)?;
    Ok((tls, jobs))
}

/// A running mock server; killed when dropped.
pub struct MockServer {
    child: Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub address: String,
}

impl MockServer {
    pub fn start(binary: &Path, jobs: &Path, tls: &Path, extra: &[&str]) -> anyhow::Result<MockServer> {
        MockServer::start_with_env(binary, jobs, tls, extra, &[])
    }

    /// [`MockServer::start`] with these environment variables set too (`SLURM_CONF`).
    pub fn start_with_env(
        binary: &Path,
        jobs: &Path,
        tls: &Path,
        extra: &[&str],
        vars: &[(&str, &Path)],
    ) -> anyhow::Result<MockServer> {
        let mut child = Command::new(binary)
            .envs(vars.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(jobs)
            .arg("--tls-dir")
            .arg(tls)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the mock server failed")?;
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().context("the mock server's stdout")?).read_line(&mut first_line)?;
        let Some(address) = first_line.trim().strip_prefix("listening on ").map(str::to_string) else {
            let _ = child.kill();
            bail!("the mock server did not say where it listens (got `{}`)", first_line.trim());
        };
        Ok(MockServer { child, address })
    }

    /// The port, as the client's `--SERVER_PORT` takes it.
    pub fn port(&self) -> &str {
        self.address.rsplit_once(':').map_or("", |(_, port)| port)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
