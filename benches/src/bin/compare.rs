//! `compare`: wpool side by side with native Rust and Python's process pools,
//! in one run, on the workloads of `../shared/bench/peers.py`.
//!
//! ```text
//! cargo build --release -p wpool-cli -p wpool-benches
//! target/release/compare [--quick] [--json] [--reps N] [--jobs N] [--no-peers]
//! ```
//!
//! wpool is measured through the `wpool` CLI as a user runs it (whole
//! process, start-up included, output to a pipe that this program drains),
//! with timeouts on; native Rust through this program's own `native`
//! subcommand (a whole process too, same algorithm source as the kernel);
//! the peers through `python3 peers.py --json`. Every figure is a median of
//! `--reps` runs (5; 3 with `--quick`). The table ends with the targets of
//! the performance issue and whether each is met.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[path = "../../../guest-kernels/kernels/primes/src/algorithm.rs"]
#[allow(dead_code)]
mod algorithm;

/// Sizes, the same as peers.py's for each mode.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    noop1_n: usize,
    noop_auto_n: usize,
    primes_items: usize,
    primes_n: u64,
    bulk_items: usize,
    bulk_size: usize,
    first_n: u64,
}

const FULL: Sizes = Sizes {
    noop1_n: 20_000,
    noop_auto_n: 1_000_000,
    primes_items: 16,
    primes_n: 120_000,
    bulk_items: 64,
    bulk_size: 1 << 20,
    first_n: 10_000_000,
};
const QUICK: Sizes = Sizes {
    noop1_n: 5_000,
    noop_auto_n: 200_000,
    primes_items: 8,
    primes_n: 30_000,
    bulk_items: 16,
    bulk_size: 1 << 20,
    first_n: 1_000_000,
};

struct Opts {
    quick: bool,
    json: bool,
    reps: usize,
    jobs: usize,
    peers: bool,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("native") {
        return native(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("bare") {
        return bare(&args[1..]);
    }
    let mut opts = Opts { quick: false, json: false, reps: 0, jobs: 2, peers: true };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--json" => opts.json = true,
            "--no-peers" => opts.peers = false,
            "--reps" => opts.reps = it.next().context("--reps N")?.parse().context("--reps N")?,
            "--jobs" => opts.jobs = it.next().context("--jobs N")?.parse().context("--jobs N")?,
            "-h" | "--help" => {
                println!("usage: compare [--quick] [--json] [--reps N] [--jobs N] [--no-peers]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if opts.reps == 0 {
        opts.reps = if opts.quick { 3 } else { 5 };
    }
    let sizes = if opts.quick { QUICK } else { FULL };
    let env = Env::find()?;
    let dir = tempfile::tempdir()?;
    let inputs = Inputs::write(dir.path(), &sizes)?;

    let mut rows = Vec::new();
    let peers = if opts.peers { run_peers(&env, &opts)? } else { Vec::new() };
    let pool = |workload: &str, metric: &str| peer_value(&peers, "pool-fork", workload, metric);
    let j = opts.jobs.to_string();
    let reps = opts.reps;
    let eprint = |what: &str| {
        if !opts.json {
            eprintln!("compare: {what}");
        }
    };

    eprint("noop, chunksize 1");
    let t = median(reps, || env.wpool_wall(&["-j", &j, "--chunksize", "1"], "echo", &[&inputs.noop1]))?;
    let v = sizes.noop1_n as f64 / t;
    rows.push(Row::new("noop-chunk1", "items/s", v, pool("noop-chunk1", "items_per_s")).target(">=", 5.0));

    eprint("noop, auto chunksize");
    let noop_auto = median(reps, || env.wpool_wall(&["-j", &j], "echo", &[&inputs.noop_auto]))?;
    let v = sizes.noop_auto_n as f64 / noop_auto;
    rows.push(Row::new("noop-auto", "items/s", v, pool("noop-auto", "items_per_s")).target(">=", 2.0));

    eprint("noop, auto chunksize, with --joblog");
    // A fresh joblog each run: every item hashed, a row and its result
    // stored, in WAL transactions on a thread of their own.
    let logs = tempfile::tempdir()?;
    let mut n = 0;
    let with_log = median(reps, || {
        n += 1;
        let log = logs.path().join(format!("run{n}.db"));
        env.wpool_wall(&["-j", &j, "--joblog", &log.to_string_lossy()], "echo", &[&inputs.noop_auto])
    })?;
    rows.push(Row::absolute("joblog-overhead", "x", with_log / noop_auto, None).target_abs("<=", 1.10));

    eprint("primes, 1 and N workers");
    let primes_expected = algorithm::count_primes_below(sizes.primes_n).to_string();
    let t1 = median(reps, || env.wpool_primes(&["-j", "1"], &inputs.primes, &primes_expected))?;
    let tn = median(reps, || env.wpool_primes(&["-j", &j], &inputs.primes, &primes_expected))?;
    let pool_speedup = peer_value(&peers, "pool-fork", "primes-scaling", "speedup");
    rows.push(Row::new("primes-1w", "s", t1, None));
    rows.push(Row::new(&format!("primes-{j}w"), "s", tn, None));
    rows.push(Row::absolute("primes-speedup-cli", "x", t1 / tn, pool_speedup).target_abs(">=", 1.95));

    eprint("primes, native");
    let items = sizes.primes_items.to_string();
    let n = sizes.primes_n.to_string();
    let native = median(reps, || env.self_wall("native", &[&n, &items, &j], &primes_expected))?;
    rows.push(Row::new(&format!("primes-native-{j}t"), "s", native, None));
    rows.push(Row::absolute("primes-wasm/native-cli", "x", tn / native, None).target_abs("<=", 1.15));

    eprint("primes, bare wasmtime");
    // The same kernel in the smallest wasmtime host there is (precompiled,
    // one instance per thread, `map` called in a loop): what wpool adds on
    // top of the engine. The import-free build, which both run.
    let cwasm = dir.path().join("primes.cwasm");
    std::fs::write(&cwasm, wasmtime::Engine::default().precompile_component(&std::fs::read(env.bare_kernel())?)?)?;
    let cwasm_arg = cwasm.to_string_lossy().into_owned();
    let bare_t = median(reps, || env.self_wall("bare", &[&cwasm_arg, &n, &items, &j], &primes_expected))?;
    let tn_bare_kernel =
        median(reps, || env.wpool_primes_of(&["-j", &j], &env.bare_kernel(), &inputs.primes, &primes_expected))?;
    rows.push(Row::new(&format!("primes-bare-wasmtime-{j}t"), "s", bare_t, None));
    rows.push(
        Row::absolute("primes-wpool/bare-wasmtime-cli", "x", tn_bare_kernel / bare_t, None).target_abs("<=", 1.10),
    );
    rows.push(Row::absolute("primes-bare-wasmtime/native", "x", bare_t / native, None));

    eprint("primes on a warm pool (library), and native threads in-process");
    let w1 = median(reps, || warm_primes(&env, 1, &sizes, &primes_expected))?;
    let wn = median(reps, || warm_primes(&env, opts.jobs, &sizes, &primes_expected))?;
    let native_warm = median(reps, || Ok(native_threads(sizes.primes_n, sizes.primes_items, opts.jobs)?.1))?;
    rows.push(Row::absolute("primes-speedup-warm", "x", w1 / wn, pool_speedup).target_abs(">=", 1.95));
    rows.push(Row::absolute("primes-wasm/native-warm", "x", wn / native_warm, None).target_abs("<=", 1.15));

    eprint("start to first result");
    let t = median(reps.max(10), || env.first_line(&["-j", &j], "echo", &inputs.one))?;
    rows.push(Row::new("start-to-first-result", "ms", t * 1e3, pool("pool-start", "start_ms")).target("<=", 0.6));

    eprint("bulk echo");
    let bytes = 2.0 * (sizes.bulk_items * sizes.bulk_size) as f64 / 1e6;
    let bulk: Vec<&Path> = inputs.bulk.iter().map(PathBuf::as_path).collect();
    let t = median(reps, || env.wpool_wall(&["-j", &j, "--files"], "echo", &bulk))?;
    rows.push(Row::new("bulk-echo", "MB/s", bytes / t, pool("bulk-echo", "mb_per_s")).target(">=", 2.0));

    eprint("first result of a lazy stdin");
    let (first, rss) = env.streaming(&["-j", &j], sizes.first_n)?;
    rows.push(
        Row::new("first-result", "ms", first * 1e3, pool("first-result", "first_result_s").map(|s| s * 1e3))
            .target_abs("<=", 5.0),
    );
    rows.push(Row::new("first-result-rss", "MiB", rss, pool("first-result", "peak_rss_mib")).target_abs("<=", 64.0));
    let cold = median(reps.max(10), || env.first_from_start(&["-j", &j], sizes.first_n))?;
    rows.push(Row::absolute("first-result-from-start", "ms", cold * 1e3, None).target_abs("<=", 5.0));

    // The same workloads through the Python package, both sides warm pools
    // called from Python (issue 17's targets).
    let py = run_python_bench(&env, &opts)?;
    let wpy = |workload: &str, metric: &str| peer_value(&py, "wpool-python", workload, metric);
    if let Some(v) = wpy("noop-chunk1", "items_per_s") {
        rows.push(Row::new("python-noop-chunk1", "items/s", v, pool("noop-chunk1", "items_per_s")).target(">=", 5.0));
    }
    if let Some(v) = wpy("noop-auto", "items_per_s") {
        rows.push(Row::new("python-noop-auto", "items/s", v, pool("noop-auto", "items_per_s")).target(">=", 1.0));
    }
    if let Some(v) = wpy("bulk-echo", "mb_per_s") {
        rows.push(Row::new("python-bulk-echo", "MB/s", v, pool("bulk-echo", "mb_per_s")).target(">=", 2.0));
    }
    if let Some(v) = wpy("primes-scaling", "speedup") {
        rows.push(Row::absolute("python-primes-speedup", "x", v, pool_speedup).target_abs(">=", 1.9));
    }

    if !opts.quick {
        // An 18 MB Python kernel (componentize-py): compiling it from cold,
        // and the first result once its artifact is cached. Baseline for the
        // cold target: 8.09 s before parallel compilation (2026-11-27).
        eprint("big kernel (Python): cold compile, warm start");
        let cold = median(reps.min(3), || env.cold_first_line(&["-j", &j], &env.python_kernel()?, &inputs.one))?;
        rows.push(Row::absolute("python-cold-first-result", "s", cold, None).target_abs("<=", 4.85));
        let warm = median(reps.max(10), || env.first_line_of(&["-j", &j], &env.python_kernel()?, &inputs.one))?;
        rows.push(Row::absolute("python-warm-first-result", "ms", warm * 1e3, None).target_abs("<=", 50.0));
    }

    let report = json!({
        "date": chrono_like_date(),
        "mode": if opts.quick { "quick" } else { "full" },
        "jobs": opts.jobs,
        "reps": opts.reps,
        "peer": "pool-fork (multiprocessing.Pool, fork context)",
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    if opts.json {
        println!("{report}");
    } else {
        print_table(&rows, &opts);
    }
    Ok(())
}

/// Paths of everything a measurement needs.
struct Env {
    wpool: PathBuf,
    kernels: PathBuf,
    peers: PathBuf,
    me: PathBuf,
    /// The Python package's venv interpreter and benchmark (`scripts/python.sh`).
    python: PathBuf,
    python_bench: PathBuf,
}

impl Env {
    fn find() -> Result<Env> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("repository root")?.to_path_buf();
        let me = std::env::current_exe()?;
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        // The CLI built next to this binary, by the same cargo invocation
        // (`cargo build --release -p wpool-cli -p wpool-benches`).
        let wpool = me.with_file_name("wpool");
        if !wpool.exists() {
            bail!(
                "{} not found: build the CLI and this tool together: \
                 cargo build --release -p wpool-cli -p wpool-benches && target/release/compare",
                wpool.display()
            );
        }
        let kernels = target.join("kernels").join("wasip2");
        for k in ["echo", "primes"] {
            if !kernels.join(format!("{k}.wasm")).exists() {
                bail!("{}/{k}.wasm is missing: run ./scripts/setup.sh (or cargo xtask kernels)", kernels.display());
            }
        }
        let peers = root.join("..").join("shared").join("bench").join("peers.py");
        let python = target.join("python").join("venv").join("bin").join("python");
        let python_bench = root.join("python").join("bench").join("bench.py");
        Ok(Env { wpool, kernels, peers, me, python, python_bench })
    }

    fn kernel(&self, name: &str) -> PathBuf {
        self.kernels.join(format!("{name}.wasm"))
    }

    /// `wpool map` of `kernel` as every row runs it (timeouts on, no bar).
    fn map_cmd(&self, flags: &[&str], kernel: &Path) -> Command {
        let mut c = Command::new(&self.wpool);
        c.arg("map").args(flags).args(["--timeout", "10s", "--no-progress"]).arg(kernel);
        c
    }

    /// Wall seconds of a whole `wpool map`, its output drained from a pipe.
    fn wpool_wall(&self, flags: &[&str], kernel: &str, inputs: &[&Path]) -> Result<f64> {
        let mut c = self.map_cmd(flags, &self.kernel(kernel));
        c.args(inputs);
        let started = Instant::now();
        let out = c.stderr(Stdio::inherit()).output()?;
        let t = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("wpool map failed: {}", out.status);
        }
        Ok(t)
    }

    fn wpool_primes(&self, flags: &[&str], input: &Path, expected: &str) -> Result<f64> {
        self.wpool_primes_of(flags, &self.kernel("primes"), input, expected)
    }

    /// The import-free build of the `primes` kernel (`wasm32-unknown-unknown`).
    fn bare_kernel(&self) -> PathBuf {
        self.kernels.join("..").join("unknown").join("primes.wasm")
    }

    fn wpool_primes_of(&self, flags: &[&str], kernel: &Path, input: &Path, expected: &str) -> Result<f64> {
        let mut c = self.map_cmd(flags, kernel);
        c.arg("--chunksize").arg("1").arg(input);
        let started = Instant::now();
        let out = c.stderr(Stdio::inherit()).output()?;
        let t = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.lines().any(|l| l != expected) {
            bail!("wpool primes gave {:?}, expected {expected} ({})", text.lines().next(), out.status);
        }
        Ok(t)
    }

    /// Wall seconds of this program run as `compare MODE ARGS…` (`native`
    /// or `bare`), which must print `expected`.
    fn self_wall(&self, mode: &str, args: &[&str], expected: &str) -> Result<f64> {
        let started = Instant::now();
        let out = Command::new(&self.me).arg(mode).args(args).output()?;
        let t = started.elapsed().as_secs_f64();
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != expected {
            bail!("{mode} primes failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t)
    }

    /// The Python kernel, built by `cargo xtask kernels`.
    fn python_kernel(&self) -> Result<PathBuf> {
        let path = self.kernels.join("..").join("python").join("reverse.wasm");
        if !path.exists() {
            bail!("{} is missing: run ./scripts/setup.sh (or cargo xtask kernels)", path.display());
        }
        Ok(path)
    }

    /// Seconds from spawning `wpool map` to its first output line.
    fn first_line(&self, flags: &[&str], kernel: &str, input: &Path) -> Result<f64> {
        self.first_line_of(flags, &self.kernel(kernel), input)
    }

    /// [`Env::first_line`] with an empty artifact cache: the kernel is
    /// compiled first.
    fn cold_first_line(&self, flags: &[&str], kernel: &Path, input: &Path) -> Result<f64> {
        let cache = tempfile::tempdir()?;
        self.first_line_with(flags, kernel, input, Some(cache.path()))
    }

    fn first_line_of(&self, flags: &[&str], kernel: &Path, input: &Path) -> Result<f64> {
        self.first_line_with(flags, kernel, input, None)
    }

    fn first_line_with(&self, flags: &[&str], kernel: &Path, input: &Path, cache: Option<&Path>) -> Result<f64> {
        let mut c = self.map_cmd(flags, kernel);
        if let Some(dir) = cache {
            c.env("WPOOL_CACHE_DIR", dir);
        }
        c.arg(input).stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = c.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let t = started.elapsed().as_secs_f64();
        child.wait()?;
        if line.is_empty() {
            bail!("no result");
        }
        Ok(t)
    }

    /// A cold `wpool map` whose stdin carries a stream of `n` lines written
    /// as fast as it takes them: seconds from spawning it to its first
    /// result. The rest of the stream is not waited for.
    fn first_from_start(&self, flags: &[&str], n: u64) -> Result<f64> {
        let mut c = self.map_cmd(flags, &self.kernel("echo"));
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = c.spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let writer = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, stdin);
            for i in 0..n {
                if writeln!(w, "{i:08}").is_err() {
                    return;
                }
            }
            let _ = w.flush();
        });
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let first = started.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        let _ = writer.join();
        if line != "00000000\n" {
            bail!("first result {line:?}");
        }
        Ok(first)
    }

    /// A warm `wpool map` reading a lazy stdin of `n` items: seconds from
    /// the first item written to the first result read, then the whole
    /// stream; and the host's peak RSS (MiB).
    fn streaming(&self, flags: &[&str], n: u64) -> Result<(f64, f64)> {
        let mut c = self.map_cmd(flags, &self.kernel("echo"));
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        // Warm: the pool starts with the process, before any input.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        stdin.write_all(b"00000000\n")?;
        stdin.flush()?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let first = started.elapsed().as_secs_f64();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, stdin);
            for i in 1..n {
                writeln!(w, "{i:08}")?;
            }
            w.flush()
        });
        let pid = child.id();
        let sampler = std::thread::spawn(move || {
            // VmHWM of the host process itself (wait4's ru_maxrss would also
            // count this process's memory, shared with the child until exec).
            let mut peak = 0u64;
            while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                match kib {
                    Some(k) => peak = peak.max(k),
                    None => break, // a zombie has no memory left to report
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak as f64 / 1024.0
        });
        let mut got = 1u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = stdout.read(&mut buf)?;
            if k == 0 {
                break;
            }
            got += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        }
        writer.join().expect("writer thread").context("writing items")?;
        let rss = sampler.join().expect("sampler thread");
        child.wait()?;
        if got != n {
            bail!("streaming: {got} results for {n} items");
        }
        Ok((first, rss))
    }
}

/// Seconds of `pool.map` of the primes items on a started pool of
/// `workers` (the peers' figure is on a warm pool too).
fn warm_primes(env: &Env, workers: usize, sizes: &Sizes, expected: &str) -> Result<f64> {
    let kernel = wpool::Kernel::from_file(env.kernel("primes"))?;
    let limits = wpool::Limits { timeout: Some(Duration::from_secs(10)), ..wpool::Limits::default() };
    let mut pool =
        wpool::Pool::builder(kernel).workers(workers).chunksize(wpool::Chunksize::Fixed(1)).limits(limits).build()?;
    pool.wait_ready()?;
    // Warm as peers.py warms its pools: trivial items until every worker
    // has run one (its instance made, the kernel's code paged in).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let mut run = pool.imap(vec![b"1000".to_vec(); 4 * workers]);
        while let Some(r) = run.next_with_info() {
            seen.extend(r?.1.worker);
        }
        if seen.len() >= workers {
            break;
        }
    }
    if seen.len() < workers {
        bail!("warm primes: only {} of {workers} workers answered", seen.len());
    }
    let items = vec![sizes.primes_n.to_string().into_bytes(); sizes.primes_items];
    let started = Instant::now();
    let out = pool.map(items)?;
    let t = started.elapsed().as_secs_f64();
    if out.iter().any(|r| r.as_deref().ok() != Some(expected.as_bytes())) {
        bail!("warm primes: unexpected results");
    }
    Ok(t)
}

/// `native N ITEMS THREADS`: the primes workload on native threads.
fn native(args: &[String]) -> Result<()> {
    let [n, items, threads] = args else { bail!("usage: compare native N ITEMS THREADS") };
    let (result, _) = native_threads(n.parse()?, items.parse()?, threads.parse()?)?;
    println!("{result}");
    Ok(())
}

/// `bare CWASM N ITEMS THREADS`: the primes workload in a minimal wasmtime
/// host: the precompiled import-free kernel, one instance per thread, `map`
/// called for each item it takes.
fn bare(args: &[String]) -> Result<()> {
    use wasmtime::component::{Component, Linker};
    let [cwasm, n, items, threads] = args else { bail!("usage: compare bare CWASM N ITEMS THREADS") };
    let items: usize = items.parse()?;
    let threads: usize = threads.parse()?;
    let engine = wasmtime::Engine::default();
    // SAFETY: written by this program's parent, from the kernel, just now.
    let component = unsafe { Component::deserialize_file(&engine, cwasm)? };
    let pre = Linker::<()>::new(&engine).instantiate_pre(&component)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![Vec::new(); items]);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            handles.push(s.spawn(|| -> Result<()> {
                let mut store = wasmtime::Store::new(&engine, ());
                let instance = pre.instantiate(&mut store)?;
                let map = instance.get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut store, "map")?;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items {
                        return Ok(());
                    }
                    let (out,) = map.call(&mut store, (n.as_bytes(),))?;
                    results.lock().unwrap()[i] = out.map_err(anyhow::Error::msg)?;
                }
            }));
        }
        for h in handles {
            h.join().expect("bare thread")?;
        }
        Ok(())
    })?;
    let results = results.into_inner().unwrap();
    if results.iter().any(|r| *r != results[0]) {
        bail!("bare results differ");
    }
    println!("{}", String::from_utf8_lossy(&results[0]));
    Ok(())
}

/// The primes workload on `threads` native threads: (result, seconds).
fn native_threads(n: u64, items: usize, threads: usize) -> Result<(u64, f64)> {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![0u64; items]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items {
                    return;
                }
                let r = algorithm::count_primes_below(std::hint::black_box(n));
                results.lock().unwrap()[i] = r;
            });
        }
    });
    let t = started.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap();
    if results.iter().any(|r| *r != results[0]) {
        bail!("native results differ");
    }
    Ok((results[0], t))
}

struct Inputs {
    noop1: PathBuf,
    noop_auto: PathBuf,
    primes: PathBuf,
    one: PathBuf,
    bulk: Vec<PathBuf>,
}

impl Inputs {
    fn write(dir: &Path, s: &Sizes) -> Result<Inputs> {
        let lines = |name: &str, n: usize| -> Result<PathBuf> {
            let p = dir.join(name);
            let mut w = std::io::BufWriter::new(std::fs::File::create(&p)?);
            for i in 0..n {
                writeln!(w, "{i:08}")?;
            }
            w.flush()?;
            Ok(p)
        };
        let noop1 = lines("noop1", s.noop1_n)?;
        let noop_auto = lines("noop-auto", s.noop_auto_n)?;
        let one = lines("one", 1)?;
        let primes = dir.join("primes");
        std::fs::write(&primes, format!("{}\n", s.primes_n).repeat(s.primes_items))?;
        let mut bulk = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..s.bulk_items {
            let p = dir.join(format!("bulk-{i:03}"));
            let mut data = vec![0u8; s.bulk_size];
            for chunk in data.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(&p, data)?;
            bulk.push(p);
        }
        Ok(Inputs { noop1, noop_auto, primes, one, bulk })
    }
}

/// The median of `reps` runs after one that warms the page cache and the
/// artifact cache.
fn median(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let _ = f()?;
    wpool_benches::median(reps, f)
}

fn run_peers(env: &Env, opts: &Opts) -> Result<Vec<Value>> {
    if !env.peers.exists() {
        bail!(
            "{} not found (the comparison needs ../shared beside the repository; --no-peers skips it)",
            env.peers.display()
        );
    }
    if !opts.json {
        eprintln!(
            "compare: running peers.py (Python's pools){}",
            if opts.quick { ", quick" } else { ", about 2.5 min" }
        );
    }
    let mut c = Command::new("python3");
    c.arg(&env.peers).args(["--json", "--jobs", &opts.jobs.to_string(), "--peers", "pool-fork,pool-spawn,ppe"]);
    if opts.quick {
        c.arg("--quick");
    }
    let out = c.stderr(Stdio::null()).output().context("running python3 peers.py")?;
    if !out.status.success() {
        bail!("peers.py failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// wpool's Python package on the same workloads (`python/bench/bench.py`,
/// JSON lines as peers.py's, peer `wpool-python`); empty, with a note, when
/// the package is not installed.
fn run_python_bench(env: &Env, opts: &Opts) -> Result<Vec<Value>> {
    if !env.python.exists() {
        eprintln!(
            "compare: no Python package at {} (scripts/python.sh builds it): the python-* rows are left out",
            env.python.display()
        );
        return Ok(Vec::new());
    }
    if !opts.json {
        eprintln!("compare: running wpool from Python (python/bench/bench.py)");
    }
    let mut c = Command::new(&env.python);
    c.arg(&env.python_bench).args(["--jobs", &opts.jobs.to_string()]).arg("--kernels").arg(&env.kernels);
    if opts.quick {
        c.arg("--quick");
    }
    let out = c.stderr(Stdio::inherit()).output().context("running python/bench/bench.py")?;
    if !out.status.success() {
        bail!("python/bench/bench.py failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// A peer's value for a workload and metric (peers.py's `metric` names).
fn peer_value(peers: &[Value], peer: &str, workload: &str, metric: &str) -> Option<f64> {
    peers
        .iter()
        .filter(|v| v["peer"] == peer && v["workload"] == workload)
        .find(|v| v["metric"] == metric)
        .and_then(|v| v["value"].as_f64())
}

/// One line of the table.
struct Row {
    name: String,
    unit: String,
    wpool: f64,
    peer: Option<f64>,
    /// (op, bound, absolute): `absolute` compares `wpool` itself with the
    /// bound, else the ratio wpool / peer.
    target: Option<(&'static str, f64, bool)>,
}

impl Row {
    fn new(name: &str, unit: &str, wpool: f64, peer: Option<f64>) -> Row {
        Row { name: name.into(), unit: unit.into(), wpool, peer, target: None }
    }
    fn absolute(name: &str, unit: &str, wpool: f64, peer: Option<f64>) -> Row {
        Row::new(name, unit, wpool, peer)
    }
    fn target(mut self, op: &'static str, bound: f64) -> Row {
        self.target = Some((op, bound, false));
        self
    }
    fn target_abs(mut self, op: &'static str, bound: f64) -> Row {
        self.target = Some((op, bound, true));
        self
    }
    fn ratio(&self) -> Option<f64> {
        self.peer.filter(|p| *p > 0.0).map(|p| self.wpool / p)
    }
    fn met(&self) -> Option<bool> {
        let (op, bound, absolute) = self.target?;
        let v = if absolute { self.wpool } else { self.ratio()? };
        Some(if op == ">=" { v >= bound } else { v <= bound })
    }
    fn target_text(&self) -> String {
        match self.target {
            Some((op, bound, true)) => format!("{op} {bound} {}", self.unit),
            Some((op, bound, false)) => format!("ratio {op} {bound}"),
            None => String::new(),
        }
    }
    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "unit": self.unit, "wpool": self.wpool, "pool": self.peer,
            "ratio": self.ratio(), "target": self.target_text(), "met": self.met(),
        })
    }
}

fn print_table(rows: &[Row], opts: &Opts) {
    println!(
        "wpool vs multiprocessing.Pool (fork), {} workers, {} mode, median of {} runs, {}",
        opts.jobs,
        if opts.quick { "quick" } else { "full" },
        opts.reps,
        chrono_like_date()
    );
    println!("{:<24} {:>14} {:>14} {:>9}  {:<16} met", "workload", "wpool", "Pool", "ratio", "target");
    for r in rows {
        let fmt = |v: f64| match r.unit.as_str() {
            "items/s" | "MB/s" => format!("{v:.0} {}", r.unit),
            _ => format!("{v:.3} {}", r.unit),
        };
        println!(
            "{:<24} {:>14} {:>14} {:>9}  {:<16} {}",
            r.name,
            fmt(r.wpool),
            r.peer.map(fmt).unwrap_or_else(|| "-".into()),
            r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
            r.target_text(),
            match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
}

/// Today's date (UTC) without a date crate.
fn chrono_like_date() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
