//! What the server keeps between jobs under `ROOT/lrpymrpc-cas/`: the content store's
//! blobs (`blobs`), who sent which (`presence`), spare trees (`spares`), the trees each
//! CN made jobs from (`known_trees`), recorded runs (`action_cache`) and what those
//! depend on beyond their inputs (`tools`).

pub mod action_cache;
mod blobs;
pub mod known_trees;
pub mod presence;
pub mod spares;
pub mod tools;

pub use blobs::{BlobError, BlobWriter, ContentStore, LocalBlob, STORE_DIR};
