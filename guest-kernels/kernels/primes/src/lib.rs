//! Input: a decimal N. Output: the decimal count of primes below N, by naive
//! trial division (the CPU-bound benchmark of the seed article).

struct Primes;

mod algorithm;

pub use algorithm::count_primes_below;

impl wpool_guest::Kernel for Primes {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = core::str::from_utf8(&input).map_err(|_| "input is not UTF-8".to_string())?;
        let n: u64 = text.trim().parse().map_err(|e| format!("expected a decimal number, got {text:?}: {e}"))?;
        Ok(count_primes_below(n).to_string().into_bytes())
    }
}

wpool_guest::export!(Primes);
