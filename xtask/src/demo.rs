//! `cargo xtask demo`: the README's "run it" command. Builds the binaries, makes
//! throwaway certificates, starts the mock server with mutual TLS on a free loopback
//! port, runs the client on a copy of `examples/cellchar`, and shows the results. The
//! working copy and its results stay in `target/demo/` until the next run, so the
//! files the demo points at are there to read; certificates and jobs go with the run.

use std::path::Path;

use anyhow::{Context, bail};
use duct::cmd;

use crate::deployment::{self, Binaries, MockServer};
use crate::workspace_root;

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    eprintln!("xtask demo: building the client and the mock server");
    let Binaries { client, server } = deployment::build(false)?;
    let scratch = tempfile::Builder::new().prefix("lrpymrpc-demo-").tempdir()?;
    let (tls, jobs) = deployment::certificates_and_root(scratch.path(), "demo-user")?;
    // Kept for the user to read; replaced by the next run.
    let work = root.join("target/demo");
    match std::fs::remove_dir_all(&work) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot clear the last demo's `{}`", work.display())),
    }

    let example = root.join("examples").join("cellchar");
    copy_dir(&example.join("cells"), &work.join("cells"))?;
    copy_dir(&example.join("cmd"), &work.join("cmd"))?;
    let python = which_python()?;
    cmd!(&python, example.join("make_wheel.py"), example.join("tool/cellchar"), "cellchar", "0.1.0", work.join("dist"))
        .stdout_null()
        .run()
        .context("building the example wheel failed")?;

    let server = MockServer::start(&server, &jobs, &tls, &[])?;
    eprintln!("xtask demo: mock server listening on {} (mutual TLS)\n", server.address);

    let status = cmd!(
        &client,
        "--SERVER_IP",
        "127.0.0.1",
        "--SERVER_PORT",
        server.port(),
        "--TLS_CONFIG_DIR",
        &tls,
        "--REPO_URL",
        "cellchar=./dist/cellchar-0.1.0-py3-none-any.whl",
        "--SOURCE",
        "cells cmd dist",
        "--RESULT",
        "lib",
        "--CMD",
        "python -m cellchar -b cmd/demo.cmd"
    )
    .dir(&work)
    .unchecked()
    .run()?;
    drop(server);
    if !status.status.success() {
        bail!("the client failed ({})", status.status);
    }
    let lib = work.join("lib");
    println!("\nxtask demo: results landed in `{}`:", lib.display());
    for entry in std::fs::read_dir(&lib)? {
        println!("  {}", entry?.file_name().to_string_lossy());
    }
    println!("\n{}", std::fs::read_to_string(lib.join("DEMO130.lib"))?);
    println!(
        "xtask demo: done; `{}` keeps the job's files and results until the next demo (its certificates and \
         the server's job root are removed now)",
        work.display()
    );
    Ok(())
}

fn which_python() -> anyhow::Result<String> {
    for name in ["python3", "python"] {
        if cmd!(name, "--version").stdout_null().stderr_null().run().is_ok() {
            return Ok(name.to_string());
        }
    }
    bail!("the demo needs python3 on PATH (the example tool is a Python package)")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
