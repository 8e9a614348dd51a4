//! `transport`: the cost of running workers elsewhere. The same warm-pool
//! workloads over each way of starting workers: local (pipes), then
//! launched workers dialing back over TCP through `env` (loopback, no
//! launcher in the data path), `ssh` and `srun`.
//!
//! ```text
//! cargo build --release -p wpool-benches
//! target/release/transport [--reps N] [--workers N] [--launcher LABEL=CMD]... [--slurm] [--listen IP]
//! # inside an allocation, with the ssh test sshd running:
//! eval "$(../shared/slurm/start-slurm.sh)"; eval "$(scripts/sshd.sh start)"
//! salloc -N2 -n2 target/release/transport --launcher "ssh=$WPOOL_TEST_SSH" --slurm
//! ```
//!
//! Per transport: start (build to every worker ready), the round trip of
//! one small item on a warm pool, per-item cost with `chunksize 1` over
//! 20 000 items, and bulk echo of 64 × 1 MiB (MB/s counts bytes in and
//! out). Each figure is a median of `--reps` (5). Launched workers dial
//! back to `--listen` (default 127.0.0.1, a free port: the test cluster's
//! nodes and the sshd are on this machine, and traffic here stays on
//! loopback; on a real cluster pass this machine's address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wpool::slurm::Slurm;
use wpool::{Chunksize, Pool, PoolBuilder};
use wpool_benches::median;

fn main() -> Result<()> {
    let mut reps = 5;
    let mut workers = 2;
    let mut listen = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut transports: Vec<(String, Vec<Vec<String>>)> = vec![("local".into(), Vec::new())];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().context("--reps N")?.parse()?,
            "--workers" => workers = args.next().context("--workers N")?.parse()?,
            "--launcher" => {
                let spec = args.next().context("--launcher LABEL=CMD")?;
                let (label, cmd) = spec.split_once('=').context("--launcher LABEL=CMD")?;
                transports.push((label.into(), vec![cmd.split_whitespace().map(String::from).collect()]));
            }
            "--listen" => {
                let ip = args.next().context("--listen IP")?;
                listen = ip.parse().with_context(|| format!("--listen {ip}: not an IP address"))?;
            }
            "--slurm" => {
                let slurm = Slurm::from_env()?;
                transports.push((format!("srun ({} nodes)", slurm.nodes.len()), slurm.launchers(workers)));
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if transports.len() == 1 {
        transports.push(("env (TCP loopback)".into(), vec![vec!["env".into()]]));
    }
    let kernel = wpool_benches::kernel("echo");
    let small: Vec<Vec<u8>> = (0..20_000).map(|i| format!("item {i}").into_bytes()).collect();
    let bulk: Vec<Vec<u8>> = (0..64).map(|i| vec![b'a' + (i % 26) as u8; 1 << 20]).collect();
    let bulk_mb = 2.0 * bulk.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;

    println!("| transport | start (ms) | round trip, 1 item (µs) | per item, chunksize 1 (µs) | bulk echo 64 × 1 MiB (MB/s) |");
    println!("|---|---|---|---|---|");
    for (label, launchers) in &transports {
        let builder = |chunks: Chunksize| -> PoolBuilder {
            let mut b = Pool::builder(kernel.clone()).workers(workers).chunksize(chunks);
            if !launchers.is_empty() {
                b = b.launchers(launchers.clone()).listen(SocketAddr::new(listen, 0));
            }
            b
        };
        let start = median(reps, || {
            let t = Instant::now();
            let mut pool = builder(Chunksize::Auto).build()?;
            pool.wait_ready()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })?;
        let mut pool = builder(Chunksize::Fixed(1)).build()?;
        pool.wait_ready()?;
        let round_trip = median(reps, || {
            let t = Instant::now();
            for _ in 0..200 {
                check(pool.map([b"x".to_vec()])?, 1)?;
            }
            Ok(t.elapsed().as_secs_f64() * 1e6 / 200.0)
        })?;
        let per_item = median(reps, || {
            let t = Instant::now();
            check(pool.map(small.iter().cloned())?, small.len())?;
            Ok(t.elapsed().as_secs_f64() * 1e6 / small.len() as f64)
        })?;
        // Under srun an allocation has one CPU per task: one pool at a time.
        drop(pool);
        let mut pool = builder(Chunksize::Auto).build()?;
        pool.wait_ready()?;
        let bulk_rate = median(reps, || {
            let t = Instant::now();
            check(pool.map(bulk.iter().cloned())?, bulk.len())?;
            Ok(bulk_mb / t.elapsed().as_secs_f64())
        })?;
        println!("| {label} | {start:.1} | {round_trip:.0} | {per_item:.1} | {bulk_rate:.0} |");
    }
    Ok(())
}

fn check(results: Vec<wpool::ItemResult>, n: usize) -> Result<()> {
    if results.len() != n {
        bail!("{} results for {n} items", results.len());
    }
    for r in results {
        if let Err(e) = r {
            bail!("item failed: {e}");
        }
    }
    Ok(())
}
