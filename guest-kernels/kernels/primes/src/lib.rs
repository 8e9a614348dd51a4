//! Input: a decimal N. Output: the decimal count of primes below N, by naive
//! trial division (the CPU-bound benchmark of the seed article).

struct Primes;

/// Trial division by every odd number up to the square root, on purpose.
pub fn count_primes_below(n: u64) -> u64 {
    let mut count = 0;
    for candidate in 2..n {
        if is_prime(candidate) {
            count += 1;
        }
    }
    count
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl wpool_guest::Kernel for Primes {
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = core::str::from_utf8(&input).map_err(|_| "input is not UTF-8".to_string())?;
        let n: u64 = text.trim().parse().map_err(|e| format!("expected a decimal number, got {text:?}: {e}"))?;
        Ok(count_primes_below(n).to_string().into_bytes())
    }
}

wpool_guest::export!(Primes);
