//! How long the limits take to act: a kernel that loops forever under a
//! 200 ms timeout (target: the `timeout` error within timeout + 100 ms, the
//! worker surviving), and the cost of a trap (instance replaced).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wpool::{Limits, Pool, TaskErrorKind};

fn limits(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let limits = Limits { timeout: Some(Duration::from_millis(200)), ..Limits::default() };
    let mut pool = Pool::builder(wpool_benches::kernel("hostile")).workers(1).limits(limits).build().unwrap();
    pool.wait_ready().unwrap();
    group.bench_function("timeout_200ms_infinite_loop", |b| {
        b.iter(|| {
            let out = pool.map(["spin"]).unwrap();
            assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::Timeout);
        })
    });
    group.bench_function("trap_then_fresh_instance", |b| {
        b.iter(|| {
            let out = pool.map(["unreachable", "ok"]).unwrap();
            assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::Trap);
        })
    });
    group.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
