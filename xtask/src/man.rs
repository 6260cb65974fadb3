//! `cargo xtask man`: the man pages of both binaries and of each of their subcommands
//! (`lrpymrpc-tls.1`, `lrpymrpc-tls-init.1`, ...), from their clap definitions, into
//! `docs/man/` (committed, so they ship without a build; a test fails when stale, and
//! when a page names one that is not shipped).

use std::path::PathBuf;

use anyhow::Context;

use crate::workspace_root;

/// Each page's file name and its text.
pub fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let client = <lrpymrpc::Args as clap::CommandFactory>::command().name("lrpymrpc");
    let mut pages = Vec::new();
    with_subcommands(client, "lrpymrpc", &mut pages)?;
    with_subcommands(lrpymrpc_mock_server::cli::command(), "lrpymrpc-server", &mut pages)?;
    // The server's first name shows the same page.
    pages.push(("lrpymrpc-mock-server.1".into(), b".so man1/lrpymrpc-server.1\n".to_vec()));
    Ok(pages)
}

/// The page of `command` and, named `parent-sub`, of each subcommand below it. `help`
/// is left out (of the pages and of the lists in them): `--help` says the same.
/// `typed` is how a user types it (`lrpymrpc tls init`), for the synopsis.
fn with_subcommands(command: clap::Command, typed: &str, pages: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let command = command.disable_help_subcommand(true).bin_name(typed.to_string());
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    pages.push((format!("{name}.1"), out));
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        // clap keeps names as `&'static str`; a page's name lives as long as this run.
        let full: &'static str = Box::leak(format!("{name}-{}", sub.get_name()).into_boxed_str());
        with_subcommands(sub.clone().name(full), &format!("{typed} {}", sub.get_name()), pages)?;
    }
    Ok(())
}

pub fn dir() -> PathBuf {
    workspace_root().join("docs/man")
}

pub fn write() -> anyhow::Result<()> {
    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    for (name, text) in pages()? {
        let path = dir.join(&name);
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
            let committed = std::fs::read(super::dir().join(&name)).unwrap_or_default();
            assert!(committed == text, "docs/man/{name} is stale: run `cargo xtask man`");
        }
    }

    // Every `name(1)` a page cites is a page we ship.
    #[test]
    fn every_page_a_page_names_is_shipped() {
        let pages = super::pages().unwrap();
        let names: Vec<String> = pages.iter().map(|(name, _)| name.trim_end_matches(".1").to_string()).collect();
        let mut cited = 0;
        for (page, text) in &pages {
            let text = String::from_utf8_lossy(text).replace("\\-", "-");
            for (at, _) in text.match_indices("(1)") {
                let start = text[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).map_or(0, |i| i + 1);
                let named = &text[start..at];
                if named.starts_with("lrpymrpc") {
                    cited += 1;
                    assert!(names.iter().any(|n| n == named), "{page} names {named}(1), which is not shipped");
                }
            }
        }
        assert!(cited > 5, "the pages name their subcommands' pages");
    }
}
