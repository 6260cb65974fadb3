//! Builders for hand-made tar archives whose names, link targets and types go into the
//! headers exactly as given, bypassing tar-rs's own checks the way an attacker's tool
//! would. For tests only (the archive's unit tests and the end-to-end suite).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

/// A raw entry: the name and link bytes go into the header as they are, bypassing
/// tar-rs's own checks, as an attacker's tool would write them.
pub struct Raw<'a> {
    pub name: &'a [u8],
    pub kind: EntryType,
    pub link: &'a [u8],
    pub data: &'a [u8],
    pub mode: u32,
}

pub fn file<'a>(name: &'a str, data: &'a str) -> Raw<'a> {
    Raw { name: name.as_bytes(), kind: EntryType::Regular, link: b"", data: data.as_bytes(), mode: 0o644 }
}
pub fn dir(name: &str) -> Raw<'_> {
    Raw { name: name.as_bytes(), kind: EntryType::Directory, link: b"", data: b"", mode: 0o755 }
}
pub fn symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw { name: name.as_bytes(), kind: EntryType::Symlink, link: target.as_bytes(), data: b"", mode: 0o777 }
}
pub fn hardlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw { name: name.as_bytes(), kind: EntryType::Link, link: target.as_bytes(), data: b"", mode: 0o644 }
}
pub fn special(name: &str, kind: EntryType) -> Raw<'_> {
    Raw { name: name.as_bytes(), kind, link: b"", data: b"", mode: 0o644 }
}

pub fn tar_bytes(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = Header::new_old();
        header.as_old_mut().name[..entry.name.len()].copy_from_slice(entry.name);
        header.as_old_mut().linkname[..entry.link.len()].copy_from_slice(entry.link);
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(entry.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
