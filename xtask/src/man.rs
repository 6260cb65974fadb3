//! `cargo xtask man`: the man pages of both binaries, from their clap definitions, into
//! `docs/man/` (committed, so they ship without a build; a test fails when stale).

use std::path::PathBuf;

use anyhow::Context;

use crate::workspace_root;

/// Each page's file name and its text.
pub fn pages() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let render = |command: clap::Command| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        clap_mangen::Man::new(command).render(&mut out)?;
        Ok(out)
    };
    let client = <lrpymrpc::Args as clap::CommandFactory>::command().name("lrpymrpc");
    let server = render(lrpymrpc_mock_server::cli::command())?;
    // The server's first name shows the same page.
    let alias = b".so man1/lrpymrpc-server.1\n".to_vec();
    Ok(vec![("lrpymrpc.1", render(client)?), ("lrpymrpc-server.1", server), ("lrpymrpc-mock-server.1", alias)])
}

pub fn dir() -> PathBuf {
    workspace_root().join("docs/man")
}

pub fn write() -> anyhow::Result<()> {
    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    for (name, text) in pages()? {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_man_pages_are_current() {
        for (name, text) in super::pages().unwrap() {
            let committed = std::fs::read(super::dir().join(name)).unwrap_or_default();
            assert!(committed == text, "docs/man/{name} is stale: run `cargo xtask man`");
        }
    }
}
