//! Digests: SHA-256 over a blob's bytes, named `sha256` on the wire; a directory's
//! digest is that of its `Directory` message's encoding.

use lrpymrpc_proto::v1::{Digest, Directory};
use prost::Message;

/// The digest function's name on the wire.
pub const DIGEST_FUNCTION: &str = "sha256";

/// A SHA-256 hash's 32 bytes: what the client keeps per file; its hex text, which
/// names a blob on the wire, is made once, for the message.
pub type HashBytes = [u8; 32];

/// Hashes bytes as they go by.
pub struct Hasher {
    context: ring::digest::Context,
    size: u64,
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher { context: ring::digest::Context::new(&ring::digest::SHA256), size: 0 }
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Digest {
        let (hash, size) = self.finish_bytes();
        Digest { hash: hex(&hash), size }
    }

    /// The hash as bytes, and the size.
    pub fn finish_bytes(self) -> (HashBytes, u64) {
        let mut hash = [0; 32];
        hash.copy_from_slice(self.context.finish().as_ref());
        (hash, self.size)
    }
}

/// The digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::default();
    hasher.update(bytes);
    hasher.finish()
}

/// The digest of a directory: of its message's encoding (prost encodes the fields of
/// equal messages identically, in field order).
pub fn directory_digest(directory: &Directory) -> Digest {
    digest_of(&directory.encode_to_vec())
}

/// 64 lowercase hex digits: the only hash text a peer accepts (it names a file).
pub fn is_valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub use lrpymrpc_units::hex;

/// The bytes of a hash given as [`is_valid_hash`] text; `None` for any other text.
pub fn hash_bytes(text: &str) -> Option<HashBytes> {
    if !is_valid_hash(text) {
        return None;
    }
    let digit = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
    let mut hash = [0; 32];
    for (byte, pair) in hash.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_text_and_hash_checks() {
        let digest = digest_of(b"abc");
        assert_eq!(digest.hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(digest.size, 3);
        assert!(is_valid_hash(&digest.hash));
        assert!(!is_valid_hash("../../etc/passwd") && !is_valid_hash(&digest.hash.to_uppercase()));
        let bytes = hash_bytes(&digest.hash).expect("valid");
        assert_eq!(hex(&bytes), digest.hash);
        assert_eq!(hash_bytes(&digest.hash.to_uppercase()), None);
    }
}
