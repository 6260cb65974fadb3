//! Where the client keeps its files, the XDG base directories under one helper: the
//! config file (`$XDG_CONFIG_HOME/lrpymrpc/config`), the caches (stat cache, trees
//! made) and the state (back-off, kept durable jobs).

use std::path::PathBuf;

/// The default config file: `$XDG_CONFIG_HOME/lrpymrpc/config`, else
/// `~/.config/lrpymrpc/config`; `None` with no home to look in.
pub(crate) fn config_file() -> Option<PathBuf> {
    xdg_file("XDG_CONFIG_HOME", ".config", "config")
}

/// A file of the client's cache (the stat cache, the trees made):
/// `$XDG_CACHE_HOME/lrpymrpc/NAME`, else `~/.cache/lrpymrpc/NAME`; `None` with no home
/// to put it in.
pub(crate) fn cache_file(name: &str) -> Option<PathBuf> {
    xdg_file("XDG_CACHE_HOME", ".cache", name)
}

/// A file (or folder) of the client's state (back-off, kept durable jobs):
/// `$XDG_STATE_HOME/lrpymrpc/NAME`, else `~/.local/state/lrpymrpc/NAME`; `None` with no
/// home to put it in.
pub(crate) fn state_file(name: &str) -> Option<PathBuf> {
    xdg_file("XDG_STATE_HOME", ".local/state", name)
}

/// `$VAR/lrpymrpc/NAME`, else `~/IN_HOME/lrpymrpc/NAME`.
fn xdg_file(var: &str, in_home: &str, name: &str) -> Option<PathBuf> {
    let base = match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(in_home),
    };
    Some(base.join("lrpymrpc").join(name))
}
