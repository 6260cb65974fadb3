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

/// A GNU long-name entry (`L`) carrying `name`, then a regular file it names.
pub fn gnu_long_name(name: &str, data: &str) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut longname = Header::new_gnu();
    longname.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
    longname.set_entry_type(EntryType::GNULongName);
    longname.set_size(name.len() as u64 + 1);
    longname.set_cksum();
    raw.extend_from_slice(longname.as_bytes());
    raw.extend_from_slice(name.as_bytes());
    raw.push(0);
    raw.resize(raw.len().div_ceil(512) * 512, 0);
    raw.extend_from_slice(&tar_bytes(&[file("placeholder", data)]));
    raw
}

/// A PAX extended header with `records` (`key=value` pairs), then a regular file.
pub fn pax_then_file(records: &[(&str, &str)], name: &str, data: &str) -> Vec<u8> {
    let mut body = String::new();
    for (key, value) in records {
        let record = format!(" {key}={value}\n");
        // The length prefix counts itself.
        let mut length = record.len() + 1;
        while format!("{length}{record}").len() != length {
            length += 1;
        }
        body.push_str(&format!("{length}{record}"));
    }
    let mut raw = Vec::new();
    let mut pax = Header::new_ustar();
    pax.set_path("PaxHeaders/x").expect("a short name");
    pax.set_entry_type(EntryType::XHeader);
    pax.set_size(body.len() as u64);
    pax.set_cksum();
    raw.extend_from_slice(pax.as_bytes());
    raw.extend_from_slice(body.as_bytes());
    raw.resize(raw.len().div_ceil(512) * 512, 0);
    raw.extend_from_slice(&tar_bytes(&[file(name, data)]));
    raw
}

/// What an archive of [`hostile_cases`] must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused with an error.
    Refused,
    /// Refused only past a small limit (a server or test sets it); unlimited, it unpacks.
    RefusedPastLimit,
    /// Accepted, with nothing outside the destination changed.
    Contained,
}

/// One case of SECURITY.md's "Archives" list.
#[derive(Debug, Clone)]
pub struct HostileCase {
    pub name: String,
    pub archive: Vec<u8>,
    pub expect: Expect,
}

/// Every archive case of SECURITY.md (1 to 7) as a gzip'd archive; `outside` is an
/// absolute path beside the destination (a canary directory with a file `keep`)
/// that absolute links aim at. For the end-to-end suites of both peers.
pub fn hostile_cases(outside: &str) -> Vec<HostileCase> {
    let keep = format!("{outside}/keep");
    let mut cases = Vec::new();
    let mut add = |name: &str, tar: Vec<u8>, expect: Expect| {
        cases.push(HostileCase { name: name.to_string(), archive: gzip(&tar), expect });
    };
    for name in ["/x", "//x", "///./x", "C:/x", "C:\\x"] {
        add(&format!("absolute name {name:?}"), tar_bytes(&[file(name, "evil")]), Expect::Refused);
    }
    for name in ["../x", "./../x", "a/../../x", "..", "/////..", "", ".", "../canary/keep"] {
        add(&format!("traversal {name:?}"), tar_bytes(&[file(name, "evil")]), Expect::Refused);
    }
    let climbing = format!("{}../../x", "./".repeat(60));
    add("GNU long name that climbs out", gnu_long_name(&climbing, "evil"), Expect::Refused);
    add("PAX path that climbs out", pax_then_file(&[("path", "../escaped")], "innocent", "evil"), Expect::Refused);
    add(
        "link to an absolute directory, then through it",
        tar_bytes(&[symlink("l", outside), file("l/keep", "evil")]),
        Expect::Refused,
    );
    add("link to .., then a directory below it", tar_bytes(&[symlink("l", ".."), dir("l/x/y")]), Expect::Refused);
    add(
        "link to an absolute path, then a file of its name",
        tar_bytes(&[symlink("l", &keep), file("l", "evil")]),
        Expect::Refused,
    );
    add(
        "link, then a directory of its name (CVE-2026-33056)",
        tar_bytes(&[symlink("sub/l", "../x"), dir("sub/x"), dir("sub/l")]),
        Expect::Refused,
    );
    add(
        "cur -> ., par -> cur/.., then par/x",
        tar_bytes(&[dir("d"), symlink("d/cur", "."), symlink("d/par", "cur/.."), file("d/par/x", "evil")]),
        Expect::Refused,
    );
    add(
        "x -> d/../../y while d does not exist, then d -> .. (a chain judged on the final tree)",
        tar_bytes(&[symlink("q/r/x", "d/../../y"), symlink("q/r/d", "..")]),
        Expect::Refused,
    );
    add("a link to the destination itself", tar_bytes(&[symlink("self", ".")]), Expect::Refused);
    add("hard link to an absolute path", tar_bytes(&[hardlink("h", &keep)]), Expect::Refused);
    add("hard link that climbs out", tar_bytes(&[hardlink("h", "../canary/keep")]), Expect::Refused);
    add(
        "hard link, then a same-named file (CVE-2018-20990)",
        tar_bytes(&[file("a", "original"), hardlink("h", "a"), file("h", "replaced")]),
        Expect::Contained,
    );
    for (kind, name) in
        [(EntryType::Char, "tty"), (EntryType::Block, "disk"), (EntryType::Fifo, "pipe"), (EntryType::new(b'Z'), "odd")]
    {
        add(&format!("special entry {name}"), tar_bytes(&[special(name, kind)]), Expect::Refused);
    }
    let mut setuid = file("tool", "#!/bin/sh\n");
    setuid.mode = 0o6755;
    add("setuid and setgid bits", tar_bytes(&[setuid]), Expect::Contained);
    // tar >= 0.4.45 reads the PAX size and finds the next header where every reader
    // does; the entry is just longer than its ustar field says, and nothing escapes.
    add(
        "PAX size differing from the header's (CVE-2026-33055)",
        pax_then_file(&[("size", "100")], "sized", "ten bytes!"),
        Expect::Contained,
    );
    let mut trailing = tar_bytes(&[file("a", "x")]);
    trailing.extend_from_slice(b"garbage after the end");
    add("trailing garbage", trailing, Expect::Refused);
    add("overflowing size", overflowing_size(), Expect::Refused);
    let deep = "d/".repeat(100) + "f";
    add("deep nesting", gnu_long_name(&deep, ""), Expect::Refused);
    let zeros = "\0".repeat(8 << 20);
    add("gzip bomb", tar_bytes(&[file("bomb", &zeros)]), Expect::RefusedPastLimit);
    let names: Vec<String> = (0..2000).map(|n| format!("many/f{n}")).collect();
    let many: Vec<Raw<'_>> = names.iter().map(|n| file(n, "")).collect();
    add("many tiny files", tar_bytes(&many), Expect::RefusedPastLimit);
    let whole = gzip(&tar_bytes(&[file("a", &"x".repeat(100_000))]));
    cases.push(HostileCase {
        name: "truncated archive".into(),
        archive: whole[..whole.len() / 2].to_vec(),
        expect: Expect::Refused,
    });
    cases.push(HostileCase { name: "not gzip".into(), archive: b"not gzip at all".to_vec(), expect: Expect::Refused });
    cases
}

/// A header whose octal size field is all 7s: far beyond the bytes that follow.
fn overflowing_size() -> Vec<u8> {
    let mut header = Header::new_old();
    header.as_old_mut().name[..4].copy_from_slice(b"huge");
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.as_old_mut().size.copy_from_slice(b"77777777777\0");
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&[0u8; 2048]);
    out
}
