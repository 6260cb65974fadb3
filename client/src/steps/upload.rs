//! The Upload step: what is said before it (upstream defaults in use, the SOURCE
//! paths passed over), then the sources sent as a content-addressed tree to a server
//! that takes one (only the blobs it lacks travel), else as a tar.gz, retried as a
//! whole.

use lrpymrpc_archive::PackRoot;

use crate::exit::{ClientError, Step};
use crate::job::Job;
use crate::output::Output;
use crate::remote::session::Session;
use crate::sources::Selection;
use crate::sources::tree_build::EarlyTree;
use crate::steps::retry::retrying;

/// What is said before the upload: upstream defaults in use, the first status lines
/// (what was found of each SOURCE path, as the Python client says it), and the SOURCE
/// paths passed over.
pub(crate) fn before_upload(job: &Job, selection: &Selection, out: &Output) {
    if !job.defaulted.is_empty() {
        let used: Vec<String> = job
            .defaulted
            .iter()
            .map(|&flag| match flag {
                "--CMD" => format!("--CMD `{}`", job.command),
                "--SOURCE" => format!("--SOURCE `{}`", job.sources.join(" ")),
                _ => format!("--RESULT `{}`", job.results.join(" ")),
            })
            .collect();
        out.note(&format!("not given, so lrPymRPC's defaults are used: {}", used.join(", ")));
    }
    out.status(&format!("Compress source={}", job.sources.join(" ")));
    for (source, seen) in &selection.seen {
        out.status(&seen.status(source));
    }
    for warning in &selection.warnings {
        out.warn(warning);
    }
}

/// The Upload step; returns the job id and whether the job was made from a tree.
pub(crate) async fn upload(
    session: &Session,
    job: &Job,
    roots: &[PackRoot],
    early: &EarlyTree,
    out: &Output,
) -> Result<(String, bool), ClientError> {
    out.status("Upload");
    out.begin(Step::Upload);
    let tree = match session.takes_trees() && !job.no_cas {
        true => retrying(job, out, Step::Upload, || session.upload_tree(job, roots.to_vec(), early, out)).await?,
        false => {
            early.stop();
            None
        }
    };
    let from_tree = tree.is_some();
    let (unique_id, skipped) = match tree {
        Some(tree) => {
            out.transferred_tree(tree.files, tree.file_bytes, tree.sent_blobs, tree.sent_bytes);
            if tree.wire_bytes < tree.sent_bytes {
                let human = lrpymrpc_units::human_bytes;
                out.verbose(&format!("zstd sent {} as {}", human(tree.sent_bytes), human(tree.wire_bytes)));
            }
            (tree.unique_id, tree.skipped)
        }
        None => {
            let (unique_id, report) =
                retrying(job, out, Step::Upload, || session.upload(job, roots.to_vec(), out)).await?;
            out.transferred("uploaded", report.files, report.content_bytes);
            (unique_id, report.skipped)
        }
    };
    for (path, why) in &skipped {
        out.warn(&format!("`{}` not uploaded: {why}", path.display()));
    }
    let left_out = job.rules.left_out_vcs();
    if !left_out.is_empty() {
        let list: Vec<_> = left_out.iter().map(|p| p.display().to_string()).collect();
        out.note(&format!("left out version-control directories: {} (--include-vcs sends them)", list.join(", ")));
    }
    out.status(&format!("Upload: unique id={unique_id}"));
    Ok((unique_id, from_tree))
}
