//! Content-addressed input trees, shared by both peers: a client builds a Merkle tree
//! of its sources (`tree.rs`) and the server, after checking that tree against the
//! same archive policy as a tar upload, materialises it from its store
//! (`materialise.rs`). Digests are SHA-256 (`digest.rs`): ring's, which uses the CPU's
//! SHA extensions where there are some, and is already in both binaries for TLS.

pub mod digest;
pub mod materialise;
pub mod stat_cache;
pub mod tree;

pub use digest::{DIGEST_FUNCTION, Hasher, digest_of, directory_digest, is_valid_hash};
pub use materialise::{Patched, Plan, TreeError, materialise, patch, plan};
pub use stat_cache::StatCache;
pub use tree::{InputTree, build_tree};
