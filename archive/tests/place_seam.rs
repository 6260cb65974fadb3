//! The placement seam from outside the crate, as a materialiser of
//! content-addressed trees would use it: files land below the destination, and a
//! link that would lead out of it is refused, whatever order it arrives in.

use std::path::Path;

use lrpymrpc_archive::place::Placer;
use lrpymrpc_archive::{Limits, MtimePolicy, UnpackError, UnpackOptions};

fn options() -> UnpackOptions {
    UnpackOptions { limits: Limits::DEFAULT, mtime: MtimePolicy::Now, only: None, progress: None }
}

#[test]
fn a_tree_is_placed_and_a_link_out_of_it_is_refused() {
    let dest = tempfile::tempdir().unwrap();
    let options = options();
    let mut placer = Placer::new(dest.path(), &options);
    placer.real_dir(Path::new("lib/cells"), 0o755).unwrap();
    let slot = placer.slot_for_non_directory(Path::new("lib/cells/inv.lib")).unwrap();
    placer.write_file(&slot, &mut &b"library(inv) {}\n"[..], 0o644, None).unwrap();
    placer.defer_link("lib/current".into(), b"cells".to_vec(), "lib/current".into());
    placer.defer_link("escape".into(), b"lib/../../outside".to_vec(), "escape".into());
    let refused = placer.create_links().unwrap_err();

    assert_eq!(std::fs::read(dest.path().join("lib/cells/inv.lib")).unwrap(), b"library(inv) {}\n");
    match refused {
        UnpackError::Refused { entry, reason } => {
            assert_eq!(entry, "escape");
            assert!(reason.contains("points outside the destination"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(!dest.path().join("escape").exists() && std::fs::symlink_metadata(dest.path().join("escape")).is_err());
}

#[test]
fn a_file_is_never_written_through_a_link_already_on_disk() {
    let dest = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dest.path().join("lib")).unwrap();
    let options = options();
    let mut placer = Placer::new(dest.path(), &options);
    let refused = placer.slot_for_non_directory(Path::new("lib/inv.lib")).unwrap_err();
    assert!(refused.contains("lib"), "{refused}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}
