//! The hot paths, each on its own: frame encoding and decoding, a chunk's
//! round trip through a worker, the per-item cost with reused and with fresh
//! instances (the difference is instantiation), an end-to-end map, and a
//! pool's start: loading a cached kernel, and a pool of 1, 2 or 4 workers
//! built, giving its first result and dropped (thousands of times in a row:
//! it also catches a start that loses an item).
//! Timeouts are on everywhere, as a user runs untrusted code.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_channel::Receiver;
use wpool::protocol::{self, HostMsg, Outcome, WorkerMsg};
use wpool::{Chunksize, Limits, Pool};

fn limits() -> Limits {
    Limits { timeout: Some(Duration::from_secs(10)), ..Limits::default() }
}

fn pool(workers: usize, chunksize: Chunksize, limits: Limits) -> Pool {
    pool_batching(workers, chunksize, limits, true)
}

fn pool_batching(workers: usize, chunksize: Chunksize, limits: Limits, batch: bool) -> Pool {
    let mut pool = Pool::builder(wpool_benches::kernel("echo"))
        .workers(workers)
        .chunksize(chunksize)
        .limits(limits)
        .batch_calls(batch)
        .build()
        .expect("pool");
    pool.wait_ready().expect("workers ready");
    pool
}

fn items(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{i:08}").into_bytes()).collect()
}

fn frames(c: &mut Criterion) {
    let data = items(1024);
    let refs: Vec<&serde_bytes::Bytes> = data.iter().map(|d| serde_bytes::Bytes::new(d)).collect();
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Elements(1024));
    let mut buf = Vec::new();
    g.bench_function("encode_run_1024x8B", |b| {
        b.iter(|| protocol::encode(&HostMsg::Run { chunk: 1, items: refs.clone() }, &mut buf))
    });
    protocol::encode(&HostMsg::Run { chunk: 1, items: refs.clone() }, &mut buf);
    let payload = buf[4..].to_vec();
    g.bench_function("decode_run_1024x8B", |b| b.iter(|| protocol::decode::<HostMsg>(&payload).unwrap()));
    let results = WorkerMsg::Results {
        chunk: 1,
        offset: 0,
        outcomes: data.iter().cloned().map(Outcome::Ok).collect(),
        busy_ns: 1,
        batched: 0,
        fallbacks: 0,
    };
    g.bench_function("encode_results_1024x8B", |b| b.iter(|| protocol::encode(&results, &mut buf)));
    protocol::encode(&results, &mut buf);
    let payload = buf[4..].to_vec();
    g.bench_function("decode_results_1024x8B", |b| b.iter(|| protocol::decode::<WorkerMsg>(&payload).unwrap()));
    // As the host reads them: each result a span of the frame.
    g.bench_function("decode_results_in_place_1024x8B", |b| b.iter(|| protocol::decode_worker_msg(&payload).unwrap()));
    g.finish();
}

fn start(c: &mut Criterion) {
    let kernel = wpool_benches::kernel("echo");
    let mut g = c.benchmark_group("start");
    // Cached (and checked, `KEY.checked`) by the load above: no compile, no
    // deserialize in this process.
    g.bench_function("kernel_from_file_cached", |b| {
        b.iter(|| wpool_benches::kernel("echo"));
    });
    for workers in [1, 2, 4] {
        g.bench_with_input(BenchmarkId::new("pool_to_first_result", format!("{workers}w")), &workers, |b, &w| {
            b.iter(|| {
                let mut p = Pool::builder(kernel.clone()).workers(w).limits(limits()).build().expect("pool");
                assert_eq!(p.map([b"x".to_vec()]).unwrap()[0].as_deref().unwrap(), b"x");
            })
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut p = pool(1, Chunksize::Fixed(1), limits());
    c.bench_function("pool/round_trip_one_item", |b| b.iter(|| p.map([b"x".to_vec()]).unwrap()));
}

fn per_item(c: &mut Criterion) {
    let data = items(10_000);
    let mut g = c.benchmark_group("pool/10k_noop_items");
    g.throughput(Throughput::Elements(data.len() as u64)).sample_size(20);
    for (name, chunksize, limits, batch) in [
        ("chunksize_1", Chunksize::Fixed(1), limits(), true),
        ("auto", Chunksize::Auto, limits(), true),
        // One component call per item: what `map-batch` saves.
        ("auto_no_batch", Chunksize::Auto, limits(), false),
        ("auto_fresh_instance_per_item", Chunksize::Auto, Limits { max_items_per_instance: Some(1), ..limits() }, true),
    ] {
        for workers in [1, 2] {
            let mut p = pool_batching(workers, chunksize, limits.clone(), batch);
            g.bench_with_input(BenchmarkId::new(name, format!("{workers}w")), &data, |b, data| {
                b.iter(|| {
                    let out = p.map(data.iter().cloned()).unwrap();
                    assert_eq!(out.len(), data.len());
                })
            });
        }
    }
    // The CLI's and the Python package's path: `wpool::Items` batches of
    // 1024 from a producer thread, small items back to back; results one by
    // one (each its own `Vec`), or every ready one at once with their bytes
    // where they arrived (`next_batch`, as the Python package takes them).
    for workers in [1, 2] {
        let mut p = pool(workers, Chunksize::Auto, limits());
        g.bench_with_input(BenchmarkId::new("auto_items_channel", format!("{workers}w")), &data, |b, data| {
            b.iter(|| {
                let out = with_items_from_a_thread(data, |rx| p.imap_batches(rx).count());
                assert_eq!(out, data.len());
            })
        });
        g.bench_with_input(BenchmarkId::new("auto_items_next_batch", format!("{workers}w")), &data, |b, data| {
            b.iter(|| {
                let out = with_items_from_a_thread(data, |rx| {
                    let mut run = p.imap_batches(rx);
                    let (mut batch, mut n) = (Vec::new(), 0);
                    while run.next_batch(&mut batch, 8192).unwrap() {
                        n += batch.len();
                        batch.clear();
                    }
                    n
                });
                assert_eq!(out, data.len());
            })
        });
    }
    g.finish();
}

/// Runs `consume` on a channel that a producer thread fills with `data` in
/// `wpool::Items` batches of 1024.
fn with_items_from_a_thread<T>(data: &[Vec<u8>], consume: impl FnOnce(Receiver<wpool::Items>) -> T) -> T {
    let (tx, rx) = crossbeam_channel::bounded(4);
    std::thread::scope(|s| {
        s.spawn(move || {
            for chunk in data.chunks(1024) {
                let mut batch = wpool::Items::with_capacity(chunk.len(), 8 * chunk.len());
                chunk.iter().for_each(|item| batch.push(item));
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        consume(rx)
    })
}

fn bulk(c: &mut Criterion) {
    let data: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 1 << 20]).collect();
    let mut g = c.benchmark_group("pool/16x1MiB_echo");
    g.throughput(Throughput::Bytes(32 << 20)).sample_size(20);
    let mut p = pool(2, Chunksize::Fixed(1), limits());
    g.bench_function("2w", |b| b.iter(|| p.map(data.iter().cloned()).unwrap()));
    g.finish();
}

criterion_group!(benches, frames, start, round_trip, per_item, bulk);
criterion_main!(benches);
