//! The lower-case hex SHA-256 digest of each item.

use sha2::{Digest, Sha256};

struct Sha;

impl wpool_guest::Kernel for Sha {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let digest = Sha256::digest(&input);
        let mut out = Vec::with_capacity(64);
        for b in digest {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        Ok(out)
    }
}

wpool_guest::export!(Sha);
