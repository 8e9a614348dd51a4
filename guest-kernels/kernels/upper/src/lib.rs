//! Upper-cases ASCII letters; other bytes pass through unchanged.

struct Upper;

impl wpool_guest::Kernel for Upper {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(input.to_ascii_uppercase())
    }
}

wpool_guest::export!(Upper);
