//! The one place that owns the archive format and the archive-safety policy of
//! lrpymrpc: walking a source tree ([`walk`]), packing a tar.gz as a stream
//! ([`pack`]), unpacking a hostile one without letting any entry escape its
//! destination ([`unpack`]), moving a finished unpack into place ([`merge`]), packing a
//! job's results without following links ([`results`]), and the single bridge between
//! these blocking `Read`/`Write` pipelines and the async gRPC streams ([`bridge`]).
//! Client and server both use it.

pub mod bridge;
pub mod encoding;
pub mod errors;
mod list_ahead;
pub mod merge;
pub mod options;
pub mod pack;
pub mod pargz;
pub mod paths;
pub mod place;
pub mod results;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod unpack;
pub mod walk;

pub use encoding::Encoding;
pub use errors::{PackError, UnpackError};
pub use merge::{MergeError, merge_tree};
pub use options::{Limits, MtimePolicy, ReadProgress, UnpackOptions};
pub use pack::{PackOptions, PackReport, pack_tar_gz};
pub use paths::{NameError, find_below, sanitize_relative};
pub use results::{pack_results_tar, pack_results_tar_gz};
pub use unpack::{UnpackReport, unpack_tar, unpack_tar_gz};
pub use walk::{Candidate, PackRoot};
