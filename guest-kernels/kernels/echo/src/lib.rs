//! Returns each item unchanged (the no-op kernel of the benchmarks).

struct Echo;

impl wpool_guest::Kernel for Echo {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(input)
    }
}

wpool_guest::export!(Echo);
