//! Pool starts in a loop, looking for a lost item: builds a pool of W
//! workers (default 2), maps one item, drops it, N times (default 20 000).
//! A pool whose item has not come back after 3 s is dumped as it stands
//! (the host's threads and fds, every child's command line, state, threads
//! with their wait channel and syscall, and fds) and the program exits 1.
//! It is what found the race fixed in 005c9b0 (one loss at start 5 434).
//!
//! `cargo run --release -p wpool-benches --bin stress_start -- [W] [N]`
//! (library pools: their workers are exec'd, see `wpool::prestart`).

use std::time::{Duration, Instant};
use wpool::{Limits, Pool};

fn dump(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn links(pid: &str) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut v: Vec<_> = rd
            .flatten()
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        v.sort_by_key(|(a, _)| a.parse::<u32>().unwrap_or(0));
        for (a, b) in v {
            s += &format!("  fd {a} -> {b}\n");
        }
    }
    s
}

fn threads(pid: &str) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            let t = e.file_name().into_string().unwrap();
            s += &format!(
                "  task {t} {} wchan={} syscall={}\n",
                dump(&format!("/proc/{pid}/task/{t}/comm")).trim(),
                dump(&format!("/proc/{pid}/task/{t}/wchan")),
                dump(&format!("/proc/{pid}/task/{t}/syscall")).trim()
            );
        }
    }
    s
}

fn main() {
    let workers: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(2);
    let n: usize = std::env::args().nth(2).map(|a| a.parse().unwrap()).unwrap_or(20000);
    let kernel = wpool_benches::kernel("echo");
    let me = std::process::id().to_string();
    let start = Instant::now();
    for i in 0..n {
        let kernel = kernel.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let h = std::thread::spawn(move || {
            let mut p = Pool::builder(kernel)
                .workers(workers)
                .limits(Limits { timeout: Some(Duration::from_secs(30)), ..Limits::default() })
                .build()
                .expect("pool");
            let r = p.map([b"x".to_vec()]);
            let _ = tx.send(());
            r
        });
        if rx.recv_timeout(Duration::from_secs(3)).is_err() {
            eprintln!("STALL at iteration {i}");
            eprintln!("host threads:\n{}", threads(&me));
            eprintln!("host fds:\n{}", links(&me));
            for t in std::fs::read_dir(format!("/proc/{me}/task")).unwrap().flatten() {
                let ch = dump(&format!("{}/children", t.path().display()));
                for c in ch.split_whitespace() {
                    eprintln!(
                        "child {c} cmdline={:?} status:\n{}",
                        dump(&format!("/proc/{c}/cmdline")),
                        dump(&format!("/proc/{c}/status"))
                            .lines()
                            .filter(|l| l.starts_with("State") || l.starts_with("PPid"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                    eprintln!("{}", threads(c));
                    eprintln!("{}", links(c));
                }
            }
            let r = h.join().unwrap();
            eprintln!("result: {:?}", r.map(|v| v.len()));
            std::process::exit(1);
        }
        let r = h.join().unwrap().unwrap();
        assert_eq!(r[0].as_deref().unwrap(), b"x");
        if i % 1000 == 0 {
            eprintln!("{i} {:?}", start.elapsed());
        }
    }
    eprintln!("ok {n} in {:?}", start.elapsed());
}
