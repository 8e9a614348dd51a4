//! The algorithm, shared with the native twin in `benches/` (same source,
//! so the wasm-vs-native comparison compares like with like).

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
