//! The seed article's CPU-bound table: count primes below 500 000 by trial
//! division, 16 items, on 1 and 2 worker processes (timeouts on, as a user
//! would run untrusted code); and uneven items, where an idle worker takes
//! a long item another one holds but has not started.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wpool::{Chunksize, Limits, Pool};

fn primes(c: &mut Criterion) {
    let items: Vec<String> = vec!["500000".to_string(); 16];
    let mut group = c.benchmark_group("primes_16x500k");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for workers in [1, 2] {
        let limits = Limits { timeout: Some(Duration::from_secs(30)), ..Limits::default() };
        let mut pool = Pool::builder(wpool_benches::kernel("primes"))
            .workers(workers)
            .chunksize(Chunksize::Fixed(1))
            .limits(limits)
            .build()
            .unwrap();
        pool.wait_ready().unwrap();
        group.bench_function(format!("workers_{workers}"), |b| {
            b.iter(|| {
                let out = pool.map(items.iter().cloned()).unwrap();
                assert_eq!(out[0].as_deref().unwrap(), b"41538");
            })
        });
    }
    group.finish();
}

/// Uneven items on 2 workers, one per chunk: the long ones (items 0 and 2)
/// are handed to the same worker (one chunk per worker first, then a
/// second each), which runs one and gives the other back to the worker
/// that finished the short ones: about one long item's time, not two.
fn uneven(c: &mut Criterion) {
    let items: Vec<String> = ["500000", "1000", "500000", "1000", "1000", "1000"].map(String::from).to_vec();
    let mut group = c.benchmark_group("primes_uneven");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let limits = Limits { timeout: Some(Duration::from_secs(30)), ..Limits::default() };
    let mut pool = Pool::builder(wpool_benches::kernel("primes"))
        .workers(2)
        .chunksize(Chunksize::Fixed(1))
        .limits(limits)
        .build()
        .unwrap();
    pool.wait_ready().unwrap();
    group.bench_function("2_long_4_short_2_workers", |b| {
        b.iter(|| {
            let out = pool.map(items.iter().cloned()).unwrap();
            assert_eq!(out[0].as_deref().unwrap(), b"41538");
        })
    });
    group.finish();
}

criterion_group!(benches, primes, uneven);
criterion_main!(benches);
