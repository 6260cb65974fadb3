//! The hostile-archive cases of SECURITY.md against the unpack policy: each asserts a
//! refusal naming the entry and an untouched canary directory beside the destination.

use std::fs;
use std::path::PathBuf;

use tar::{EntryType, Header};

use super::*;
use crate::merge_tree;
use crate::options::Limits;
use crate::testing::{dir, file, gzip, hardlink, special, symlink, tar_bytes};

/// A destination with a canary directory beside it holding one file.
pub(super) struct Scene {
    _root: tempfile::TempDir,
    pub(super) dest: PathBuf,
    pub(super) canary: PathBuf,
}

impl Scene {
    pub(super) fn new() -> Scene {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        let canary = root.path().join("canary");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&canary).unwrap();
        fs::write(canary.join("keep"), "untouched").unwrap();
        Scene { dest, canary, _root: root }
    }

    fn unpack(&self, archive: &[u8]) -> Result<UnpackReport, UnpackError> {
        self.unpack_with(archive, Limits::DEFAULT)
    }

    fn unpack_with(&self, archive: &[u8], limits: Limits) -> Result<UnpackReport, UnpackError> {
        let options = UnpackOptions { limits, mtime: MtimePolicy::FromArchive, only: None, progress: None };
        unpack_tar_gz(archive, &self.dest, &options)
    }

    /// The canary directory and everything beside the destination are as they were.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(self.dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["canary", "dest"]);
        let canary: Vec<_> = fs::read_dir(&self.canary).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(canary, ["keep"]);
        assert_eq!(fs::read_to_string(self.canary.join("keep")).unwrap(), "untouched");
        let meta = fs::metadata(&self.canary).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "canary directory was chmod-ed");
    }
}

fn assert_refused(result: Result<UnpackReport, UnpackError>, entry: &str) {
    match result {
        Err(UnpackError::Refused { entry: got, reason }) => {
            assert_eq!(got, entry, "refused the wrong entry ({reason})");
        }
        other => panic!("expected entry `{entry}` to be refused, got {other:?}"),
    }
}

#[test]
fn unpacks_files_directories_and_safe_links() {
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[
        dir("out"),
        file("out/a.txt", "alpha"),
        symlink("out/b.txt", "a.txt"),
        dir("out/sub"),
        symlink("out/sub/up.txt", "../a.txt"),
        hardlink("out/c.txt", "out/a.txt"),
        file("empty", ""),
    ]));
    let report = scene.unpack(&archive).unwrap();
    assert_eq!((report.files, report.directories, report.links), (2, 2, 3));
    assert_eq!(fs::read_to_string(scene.dest.join("out/b.txt")).unwrap(), "alpha");
    assert_eq!(fs::read_to_string(scene.dest.join("out/sub/up.txt")).unwrap(), "alpha");
    assert_eq!(fs::read_to_string(scene.dest.join("out/c.txt")).unwrap(), "alpha");
    scene.assert_outside_untouched();
}

#[test]
fn refuses_absolute_names() {
    for name in ["/x", "//x", "///./x", "C:/x", "C:\\x"] {
        let scene = Scene::new();
        assert_refused(scene.unpack(&gzip(&tar_bytes(&[file(name, "evil")]))), name);
        scene.assert_outside_untouched();
    }
}

#[test]
fn refuses_traversal() {
    for name in ["../x", "./../x", "a/../../x", "..", "/////..", "../canary/keep"] {
        let scene = Scene::new();
        assert_refused(scene.unpack(&gzip(&tar_bytes(&[file(name, "evil")]))), name);
        scene.assert_outside_untouched();
    }
}

#[test]
fn refuses_empty_and_dot_names_for_files() {
    for name in ["", "."] {
        let scene = Scene::new();
        assert_refused(scene.unpack(&gzip(&tar_bytes(&[file(name, "x")]))), name);
    }
}

#[test]
fn refuses_writing_through_an_absolute_symlink() {
    let scene = Scene::new();
    let outside = scene.canary.to_str().unwrap();
    let archive = gzip(&tar_bytes(&[symlink("l", outside), file("l/keep", "evil")]));
    assert_refused(scene.unpack(&archive), "l");
    scene.assert_outside_untouched();
}

#[test]
fn refuses_escaping_relative_symlinks_and_directories_below_them() {
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[symlink("l", ".."), dir("l/x/y")]));
    assert_refused(scene.unpack(&archive), "l");
    scene.assert_outside_untouched();
}

#[test]
fn refuses_a_directory_entry_over_a_planted_link() {
    // CVE-2026-33056: a link, then a directory of the same name that would be chmod-ed.
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[symlink("sub/l", "../x"), dir("sub/x"), dir("sub/l")]));
    assert_refused(scene.unpack(&archive), "sub/l");
    scene.assert_outside_untouched();
}

#[test]
fn refuses_chained_links_that_climb_out() {
    let scene = Scene::new();
    let archive =
        gzip(&tar_bytes(&[dir("d"), symlink("d/cur", "."), symlink("d/par", "cur/.."), file("d/par/x", "evil")]));
    assert_refused(scene.unpack(&archive), "d/par");
    scene.assert_outside_untouched();
}

#[test]
fn refuses_a_link_to_the_destination_itself() {
    let scene = Scene::new();
    assert_refused(scene.unpack(&gzip(&tar_bytes(&[symlink("self", ".")]))), "self");
    let scene = Scene::new();
    assert_refused(scene.unpack(&gzip(&tar_bytes(&[dir("a"), symlink("a/top", "..")]))), "a/top");
}

#[test]
fn a_file_over_a_planted_link_replaces_the_link_and_writes_nothing_outside() {
    // "l -> /outside, then a file l": the file replaces the (refused) link; here the
    // link points inside, then a file of the same name must not write through it.
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[file("real", "inside"), symlink("l", "real"), file("l", "new")]));
    scene.unpack(&archive).unwrap();
    assert_eq!(fs::read_to_string(scene.dest.join("real")).unwrap(), "inside");
    assert_eq!(fs::read_to_string(scene.dest.join("l")).unwrap(), "new");
    assert!(!fs::symlink_metadata(scene.dest.join("l")).unwrap().file_type().is_symlink());
    scene.assert_outside_untouched();
}

#[test]
fn refuses_hard_links_that_escape_or_precede_their_target() {
    let outside = format!("{}/keep", Scene::new().canary.display());
    for target in [outside.as_str(), "../canary/keep", "missing"] {
        let scene = Scene::new();
        assert_refused(scene.unpack(&gzip(&tar_bytes(&[hardlink("h", target)]))), "h");
        scene.assert_outside_untouched();
    }
}

#[test]
fn a_file_after_a_same_named_hard_link_does_not_write_through_it() {
    // CVE-2018-20990.
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[file("a", "original"), hardlink("h", "a"), file("h", "replaced")]));
    scene.unpack(&archive).unwrap();
    assert_eq!(fs::read_to_string(scene.dest.join("a")).unwrap(), "original");
    assert_eq!(fs::read_to_string(scene.dest.join("h")).unwrap(), "replaced");
}

#[test]
fn refuses_devices_fifos_and_unknown_types() {
    for (kind, name) in
        [(EntryType::Char, "tty"), (EntryType::Block, "disk"), (EntryType::Fifo, "pipe"), (EntryType::new(b'Z'), "odd")]
    {
        let scene = Scene::new();
        assert_refused(scene.unpack(&gzip(&tar_bytes(&[special(name, kind)]))), name);
    }
}

#[test]
fn strips_setuid_setgid_and_sticky_bits() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    let mut entry = file("tool", "#!/bin/sh\n");
    entry.mode = 0o6755;
    let mut sticky = dir("shared");
    sticky.mode = 0o1777;
    scene.unpack(&gzip(&tar_bytes(&[entry, sticky]))).unwrap();
    assert_eq!(fs::metadata(scene.dest.join("tool")).unwrap().permissions().mode() & 0o7000, 0);
    assert_eq!(fs::metadata(scene.dest.join("shared")).unwrap().permissions().mode() & 0o7000, 0);
}

#[test]
fn refuses_truncated_archives_and_trailing_garbage() {
    let whole = gzip(&tar_bytes(&[file("a", &"x".repeat(10_000))]));
    let scene = Scene::new();
    assert!(matches!(scene.unpack(&whole[..whole.len() / 2]), Err(UnpackError::Malformed(_))));

    let mut tar = tar_bytes(&[file("a", "x")]);
    tar.extend_from_slice(b"garbage after the end");
    let scene = Scene::new();
    assert!(matches!(scene.unpack(&gzip(&tar)), Err(UnpackError::Malformed(_))));

    let scene = Scene::new();
    assert!(matches!(scene.unpack(b"not gzip at all"), Err(UnpackError::Malformed(_))));
}

#[test]
fn cuts_a_gzip_bomb_at_the_decompressed_limit() {
    let bomb = gzip(&tar_bytes(&[file("big", &"\0".repeat(4 << 20))]));
    assert!(bomb.len() < 64 << 10, "the bomb must be small compressed");
    let scene = Scene::new();
    let limits = Limits { max_bytes: 1 << 20, ..Limits::DEFAULT };
    assert!(matches!(scene.unpack_with(&bomb, limits), Err(UnpackError::TooLarge { .. })));
}

#[test]
fn caps_entry_count_and_depth() {
    let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<_> = many.iter().map(|n| file(n, "")).collect();
    let scene = Scene::new();
    let limits = Limits { max_entries: 10, ..Limits::DEFAULT };
    assert!(matches!(scene.unpack_with(&gzip(&tar_bytes(&entries)), limits), Err(UnpackError::TooManyEntries { .. })));

    let deep = "d/".repeat(20) + "f";
    let scene = Scene::new();
    let limits = Limits { max_depth: 8, ..Limits::DEFAULT };
    assert_refused(scene.unpack_with(&gzip(&tar_bytes(&[file(&deep, "")])), limits), &deep);
}

#[test]
fn reads_gnu_long_names_and_refuses_hostile_ones() {
    let long = format!("{}/file", "n".repeat(200));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    builder.append_data(&mut header, &long, &b"ok"[..]).unwrap();
    let scene = Scene::new();
    scene.unpack(&gzip(&builder.into_inner().unwrap())).unwrap();
    assert_eq!(fs::read_to_string(scene.dest.join(&long)).unwrap(), "ok");

    // A GNU long-name entry ('L') whose name climbs out.
    let evil = format!("{}../../x", "./".repeat(60));
    let raw = crate::testing::gnu_long_name(&evil, "evil");
    let scene = Scene::new();
    assert_refused(scene.unpack(&gzip(&raw)), &evil);
    scene.assert_outside_untouched();
}

#[test]
fn pax_path_overrides_are_checked_too() {
    let raw = crate::testing::pax_then_file(&[("path", "../escaped.txt")], "innocent", "evil");
    let scene = Scene::new();
    assert_refused(scene.unpack(&gzip(&raw)), "../escaped.txt");
    scene.assert_outside_untouched();
}

#[test]
fn two_archives_cannot_cooperate_to_escape() {
    // The first plants a link (inside, so allowed); the second cannot write through it.
    let scene = Scene::new();
    scene.unpack(&gzip(&tar_bytes(&[dir("d"), symlink("l", "d")]))).unwrap();
    assert_refused(scene.unpack(&gzip(&tar_bytes(&[file("l/x", "through")]))), "l/x");
    assert!(!scene.dest.join("d/x").exists());
    scene.assert_outside_untouched();
}

#[test]
fn links_are_judged_against_the_final_tree_whatever_the_order() {
    // `x` looks fine while `d` does not exist; `d -> ..` then makes it climb out.
    let scene = Scene::new();
    let archive = gzip(&tar_bytes(&[symlink("out/a/x", "d/../../y"), symlink("out/a/d", "..")]));
    assert_refused(scene.unpack(&archive), "out/a/x");
    assert!(fs::read_dir(scene.dest.join("out/a")).unwrap().next().is_none(), "no link was created");
    scene.assert_outside_untouched();
}

#[test]
fn with_only_entries_outside_the_paths_asked_for_are_refused() {
    let only = Some(vec![PathBuf::from("out"), PathBuf::from("logs/run1")]);
    let unpack = |scene: &Scene, entries: &[crate::testing::Raw<'_>]| {
        let options =
            UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::Now, only: only.clone(), progress: None };
        unpack_tar_gz(&gzip(&tar_bytes(entries))[..], &scene.dest, &options)
    };
    let scene = Scene::new();
    let report = unpack(&scene, &[dir("logs"), dir("logs/run1"), file("out/a", "a"), file("logs/run1/l", "l")]);
    assert_eq!(report.unwrap().files, 2);
    for (bad, entries) in [
        ("Makefile", vec![file("out/a", "a"), file("Makefile", "all:\n\tevil")]),
        (".git/hooks/pre-commit", vec![file(".git/hooks/pre-commit", "evil")]),
        ("logs/other", vec![file("logs/other", "evil")]),
        ("logs", vec![file("logs", "a file where a parent directory may be")]),
        ("out/l", vec![symlink("out/l", "../Makefile")]),
    ] {
        let scene = Scene::new();
        assert_refused(unpack(&scene, &entries), bad);
        assert!(!scene.dest.join("Makefile").exists() && !scene.dest.join(".git").exists());
    }
}

#[test]
fn merging_never_follows_a_link_already_there() {
    let scene = Scene::new();
    let staging = scene.dest.join(".staging");
    fs::create_dir_all(staging.join("out/x")).unwrap();
    fs::write(staging.join("out/x/evil"), "through the link").unwrap();
    fs::create_dir(scene.dest.join("out")).unwrap();
    std::os::unix::fs::symlink(&scene.canary, scene.dest.join("out/x")).unwrap();
    merge_tree(&staging, &scene.dest).unwrap();
    assert!(fs::symlink_metadata(scene.dest.join("out/x")).unwrap().is_dir(), "the link was replaced");
    assert_eq!(fs::read_to_string(scene.dest.join("out/x/evil")).unwrap(), "through the link");
    fs::remove_dir_all(&staging).unwrap();
    scene.assert_outside_untouched();
}

#[test]
fn two_downloads_cannot_chain_links_across_a_merge() {
    let download = |scene: &Scene, entries: &[crate::testing::Raw<'_>]| {
        let staging = scene.dest.join(".staging");
        fs::create_dir(&staging).unwrap();
        let options = UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::Now, only: None, progress: None };
        let result = unpack_tar_gz(&gzip(&tar_bytes(entries))[..], &staging, &options)
            .map_err(|e| e.to_string())
            .and_then(|_| merge_tree(&staging, &scene.dest).map_err(|e| e.to_string()));
        fs::remove_dir_all(&staging).unwrap();
        result
    };
    // A new link through an old one, and an old link through a new one.
    let scene = Scene::new();
    download(&scene, &[symlink("out/a/x", "d/../../y")]).unwrap();
    let error = download(&scene, &[symlink("out/a/d", "..")]).unwrap_err();
    assert!(error.contains("`out/a/d`") && error.contains("`out/a/x` already there"), "{error}");
    assert!(fs::symlink_metadata(scene.dest.join("out/a/d")).is_err());
    let scene = Scene::new();
    download(&scene, &[dir("out/a"), symlink("out/a/d", "..")]).unwrap();
    let error = download(&scene, &[symlink("out/a/x", "d/../../y")]).unwrap_err();
    assert!(error.contains("`out/a/x`") && error.contains("through the link `out/a/d`"), "{error}");
    scene.assert_outside_untouched();
}

#[test]
fn pack_then_unpack_round_trips_a_tree() {
    use crate::pack::{PackOptions, pack_tar_gz};
    use crate::walk::PackRoot;
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("tree");
    fs::create_dir_all(tree.join("deep/er")).unwrap();
    fs::create_dir_all(tree.join("empty")).unwrap();
    fs::write(tree.join("deep/er/data.bin"), vec![7u8; 100_000]).unwrap();
    fs::write(tree.join("top.txt"), "top").unwrap();
    std::os::unix::fs::symlink("top.txt", tree.join("alias")).unwrap();
    let options = PackOptions::everything(true, 1);
    let roots = [PackRoot { disk: tree.clone(), name: "tree".into() }];
    let (report, bytes) = pack_tar_gz(&roots, &options, Vec::new()).unwrap();
    assert_eq!((report.files, report.directories), (3, 4));

    let scene = Scene::new();
    scene.unpack(&bytes).unwrap();
    let out = scene.dest.join("tree");
    assert_eq!(fs::read(out.join("deep/er/data.bin")).unwrap(), vec![7u8; 100_000]);
    assert!(out.join("empty").is_dir());
    // Followed: the link arrives as a file with the target's content.
    assert!(fs::symlink_metadata(out.join("alias")).unwrap().is_file());
    assert_eq!(fs::read_to_string(out.join("alias")).unwrap(), "top");
}

#[test]
fn packing_without_following_ships_links_not_their_targets() {
    use crate::pack::{PackOptions, pack_tar_gz};
    use crate::walk::PackRoot;
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("secret"), "do not ship").unwrap();
    let job = source.path().join("job");
    fs::create_dir(&job).unwrap();
    std::os::unix::fs::symlink(source.path().join("secret"), job.join("leak")).unwrap();
    let options = PackOptions::everything(false, 1);
    let roots = [PackRoot { disk: job.join("leak"), name: "leak".into() }];
    let (_, bytes) = pack_tar_gz(&roots, &options, Vec::new()).unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut plain).unwrap();
    assert!(!plain.windows(11).any(|w| w == b"do not ship"));
    let scene = Scene::new();
    assert_refused(scene.unpack(&bytes), "leak");
}

#[test]
fn merge_replaces_files_and_merges_directories() {
    use crate::merge::merge_tree;
    let root = tempfile::tempdir().unwrap();
    let (staging, dest) = (root.path().join("s"), root.path().join("d"));
    fs::create_dir_all(staging.join("out/new")).unwrap();
    fs::write(staging.join("out/a"), "fresh").unwrap();
    fs::write(staging.join("out/new/b"), "b").unwrap();
    fs::create_dir_all(dest.join("out")).unwrap();
    fs::write(dest.join("out/a"), "stale").unwrap();
    fs::write(dest.join("out/other"), "kept").unwrap();
    merge_tree(&staging, &dest).unwrap();
    assert_eq!(fs::read_to_string(dest.join("out/a")).unwrap(), "fresh");
    assert_eq!(fs::read_to_string(dest.join("out/other")).unwrap(), "kept");
    assert_eq!(fs::read_to_string(dest.join("out/new/b")).unwrap(), "b");
}

#[test]
fn a_directory_left_out_takes_its_contents_and_progress_counts_files() {
    use std::cell::Cell;

    use crate::pack::{PackOptions, pack_tar_gz};
    use crate::walk::{Candidate, PackRoot};
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("tree");
    fs::create_dir_all(tree.join(".git/objects")).unwrap();
    fs::write(tree.join(".git/objects/blob"), "history").unwrap();
    fs::write(tree.join("kept.sp"), "kept").unwrap();
    fs::write(tree.join("dropped.o"), "dropped").unwrap();
    let keep = |c: &Candidate<'_>| {
        let name = c.name.file_name().unwrap_or_default();
        let vcs = c.is_dir && name == ".git";
        let object = name.to_string_lossy().ends_with(".o");
        !vcs && !object
    };
    let counted = Cell::new(0u64);
    let on_file = |size: u64| counted.set(counted.get() + size);
    let options = PackOptions {
        follow_symlinks: true,
        keep: &keep,
        on_file: &on_file,
        on_read: &|_| {},
        level: 1,
        gzip_threads: 2,
    };
    let roots = [PackRoot { disk: tree.clone(), name: "tree".into() }];
    let (report, bytes) = pack_tar_gz(&roots, &options, Vec::new()).unwrap();
    assert_eq!((report.files, report.directories, counted.get()), (1, 1, 4));
    let scene = Scene::new();
    scene.unpack(&bytes).unwrap();
    assert!(scene.dest.join("tree/kept.sp").is_file());
    assert!(!scene.dest.join("tree/.git").exists() && !scene.dest.join("tree/dropped.o").exists());
}

#[test]
fn a_failed_output_is_a_write_error_not_the_file_being_read() {
    use crate::errors::PackError;
    use crate::pack::{PackOptions, pack_tar_gz};
    use crate::walk::PackRoot;
    /// Accepts 64 KiB, then fails like a closed network stream.
    #[derive(Debug)]
    struct Closing(usize);
    impl std::io::Write for Closing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 > 64 * 1024 {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the stream was closed"));
            }
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let source = tempfile::tempdir().unwrap();
    let mut noise = vec![0u8; 4 << 20];
    let mut state = 1u32;
    for byte in noise.iter_mut() {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *byte = (state >> 24) as u8;
    }
    fs::write(source.path().join("noise"), &noise).unwrap();
    let roots = [PackRoot { disk: source.path().join("noise"), name: "noise".into() }];
    let error = pack_tar_gz(&roots, &PackOptions::everything(true, 1), Closing(0)).unwrap_err();
    assert!(matches!(error, PackError::Write(_)), "{error:?}");
}

#[test]
fn every_shared_hostile_case_is_refused_or_contained() {
    use crate::testing::{Expect, hostile_cases};
    let small = Limits { max_bytes: 1 << 20, max_entries: 1000, max_depth: 64 };
    let count = hostile_cases("/nowhere").len();
    for index in 0..count {
        // Each scene has its own canary, which the cases aim at.
        let scene = Scene::new();
        let case = hostile_cases(scene.canary.to_str().unwrap()).swap_remove(index);
        let result = scene.unpack_with(&case.archive, small);
        match case.expect {
            Expect::Refused | Expect::RefusedPastLimit => assert!(result.is_err(), "{}: accepted", case.name),
            Expect::Contained => assert!(result.is_ok(), "{}: {:?}", case.name, result.err()),
        }
        scene.assert_outside_untouched();
    }
}
