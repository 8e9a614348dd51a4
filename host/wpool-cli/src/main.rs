//! `wpool`: map a sandboxed WebAssembly kernel over lines, records or files
//! on every core.
//!
//! A thin layer over the `wpool` library: argument parsing, input splitting,
//! output formats, progress and exit codes. It never talks to workers itself.
//!
//! Exit codes: 0 every item succeeded; 1 at least one item failed; 2 usage,
//! kernel-load or input errors (nothing run) and pool failures; 130
//! interrupted.

mod cache;
mod completions;
mod input;
mod output;
mod units;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use wpool::{Chunksize, DirGrant, Error, Grants, Kernel, Limits, Pool, World};

use crate::input::{Items, Split};
use crate::output::{Format, Printer};

#[derive(Parser)]
#[command(name = "wpool", version, about = "A sandboxed WebAssembly worker pool", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a kernel over every item of the inputs, in worker processes.
    ///
    /// Items are the lines of each INPUT (stdin when none, or `-`), without
    /// their `\n`. Results are printed in input order, one per line; failed
    /// items print nothing on stdout and one line on stderr.
    #[command(after_long_help = "Exit status: 0 every item succeeded; 1 at least one item failed; 2 usage, \
kernel-load or input error (nothing was run) or pool failure; 130 interrupted.\n\n\
Example:\n  printf 'hello\\nworld\\n' | wpool map -j 2 --timeout 500ms target/kernels/wasip2/upper.wasm")]
    Map(Box<MapCmd>),
    /// Run items through several kernels in a row, every stage at the same
    /// time (validate → transform → load).
    ///
    /// Each stage is a pool of its own; items stream from stage to stage
    /// through bounded buffers (a slow stage holds back the ones before it).
    /// An item that fails in a stage is reported once, with its index and
    /// the stage, and does not enter later stages. Input, output, limits and
    /// --json as for `wpool map`; results in input order.
    #[command(after_long_help = "Exit status as for `wpool map`.\n\n\
Example:\n  wpool pipeline --stage target/kernels/wasip2/validate.wasm --stage target/kernels/wasip2/primes.wasm \\\n    --stage target/kernels/wasip2/format.wasm --jobs-per-stage 1,2,1 examples/numbers.txt")]
    Pipeline(Box<PipelineCmd>),
    /// MapReduce: map every item with a map kernel whose results are
    /// `key<TAB>value` lines, then reduce each key's values with a reducer
    /// kernel (world `reducer`).
    ///
    /// Values are reduced in bounded batches as they arrive, earlier results
    /// fed back in as values, so `reduce` must be associative and
    /// commutative. Output: `key<TAB>value` lines sorted by key bytes (or
    /// --json, one object per key). Input and limits as for `wpool map`.
    #[command(after_long_help = "Exit status: 0 all went well; 1 a map item or a key failed; 2 usage, \
kernel-load or input error or pool failure; 130 interrupted.\n\n\
Example:\n  wpool mapreduce --map target/kernels/wasip2/wordcount.wasm --reduce target/kernels/wasip2/sum.wasm \\\n    --files examples/text/*.txt")]
    Mapreduce(Box<MapReduceCmd>),
    /// Describe a kernel: format, world, imports, exports, size, and whether
    /// wpool accepts it.
    Inspect {
        /// The kernel (.wasm component).
        kernel: PathBuf,
        /// Also start a worker with this kernel and report how it confined
        /// itself on this machine (seccomp, Landlock, no_new_privs).
        #[arg(long)]
        sandbox: bool,
    },
    /// Show the compiled-artifact cache: directory, artifacts, bytes, cap.
    ///
    /// Kernels are compiled once and kept here; when a new artifact takes
    /// the cache over its cap (`WPOOL_CACHE_MAX`, default 2GiB), the least
    /// recently used are removed.
    #[command(
        after_long_help = "Example:\n  wpool cache\n  wpool cache clean\n  WPOOL_CACHE_MAX=500MiB wpool map kernel.wasm items.txt"
    )]
    Cache {
        #[command(subcommand)]
        action: Option<cache::CacheCmd>,
    },
    /// Print a shell completion script.
    #[command(
        after_long_help = "Example:\n  wpool completions bash > ~/.local/share/bash-completion/completions/wpool\n  \
wpool completions zsh > ~/.zfunc/_wpool\n  wpool completions fish > ~/.config/fish/completions/wpool.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct MapCmd {
    /// The kernel: a WebAssembly component of world `wpool:kernel/kernel`.
    kernel: PathBuf,
    #[command(flatten)]
    run: MapArgs,
}

#[derive(Args)]
struct PipelineCmd {
    /// A stage's kernel; give one `--stage` per stage, in order.
    #[arg(long = "stage", value_name = "KERNEL", required = true)]
    stages: Vec<PathBuf>,
    /// Worker processes of each stage, e.g. `2,1,1` [default: -j for every stage].
    #[arg(long, value_name = "N,N,...")]
    jobs_per_stage: Option<String>,
    #[command(flatten)]
    run: MapArgs,
}

#[derive(Args)]
struct MapReduceCmd {
    /// The map kernel (world `kernel`): each result is `key<TAB>value` lines.
    #[arg(long = "map", value_name = "KERNEL")]
    map: PathBuf,
    /// The reduce kernel (world `reducer`).
    #[arg(long = "reduce", value_name = "KERNEL")]
    reduce: PathBuf,
    #[command(flatten)]
    run: MapArgs,
}

#[derive(Args)]
struct MapArgs {
    /// Input files; stdin when none is given or for `-`.
    inputs: Vec<PathBuf>,
    /// Worker processes [default: number of cores].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = units::parse_jobs)]
    jobs: Option<usize>,
    /// Items per chunk sent to a worker: a number, or `auto`.
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = units::parse_chunksize)]
    chunksize: Chunksize,
    /// Print results in completion order instead of input order.
    #[arg(long)]
    unordered: bool,
    /// Items are NUL-separated, and plain output is NUL-terminated.
    #[arg(short = '0', long = "null", conflicts_with = "files")]
    null: bool,
    /// Each INPUT file is one whole item.
    #[arg(long)]
    files: bool,
    /// JSON Lines output: one object per item, results and errors.
    #[arg(long)]
    json: bool,
    /// Times an item whose worker process died is retried on a new worker.
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// Stop at the first failed item (exit 1).
    #[arg(long)]
    fail_fast: bool,
    /// Per-item time limit, e.g. `500ms`, `2s`, `1m`.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Per-instance memory cap, e.g. `64MiB`, `1GiB`; growing past it fails
    /// the item as `memory_limit` [default: half of this machine's RAM
    /// (or cgroup limit) divided by the workers, between 256MiB and 4GiB].
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    memory: Option<u64>,
    /// Per-item fuel (about one unit per wasm instruction).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Replace the kernel instance after this many items (like
    /// `maxtasksperchild`); it is always replaced after a trap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_items_per_instance: Option<u64>,
    /// A fresh kernel instance for every item (no state carries over).
    #[arg(long, conflicts_with = "max_items_per_instance")]
    isolate: bool,
    /// Largest item and largest result, at most 2GiB (both must fit in the
    /// kernel's wasm32 memory, and --memory must leave room for them).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = units::parse_item_size)]
    max_item_size: u64,
    /// Configuration for a kernel with an `init` export (world
    /// `kernel-with-init`): FILE's bytes are passed to `init` once per kernel
    /// instance, before any item (at most 64 MiB).
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Read-only data shared by every kernel instance: FILE is visible to the
    /// kernel as the file `/data` (the same file on disk, so the OS page cache
    /// shares it between workers; nothing else of the host is visible).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Make a host directory visible to the kernel: `HOST[:GUEST][:rw]`
    /// (read-only unless `:rw`; GUEST defaults to HOST as written).
    #[arg(long = "allow-dir", value_name = "HOST[:GUEST][:rw]")]
    allow_dir: Vec<String>,
    /// Pass an environment variable to the kernel: `NAME` (its value here) or
    /// `NAME=VALUE`. The kernel sees exactly these.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Reproducible runs: fixed wall clock, stepping monotonic clock and
    /// seeded randomness, reset for every item (the clocks and randomness
    /// are the default anyway), plus a fresh instance per item so that no
    /// kernel state carries over. The same input gives the same output on
    /// every run and every worker.
    #[arg(long, conflicts_with_all = ["allow_clock", "allow_random", "max_items_per_instance"])]
    deterministic: bool,
    /// Seed of the deterministic randomness.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Give kernels the real wall and monotonic clocks.
    #[arg(long)]
    allow_clock: bool,
    /// Give kernels real entropy.
    #[arg(long)]
    allow_random: bool,
    /// Start every worker through this command, e.g. `"srun -N1 -n1 --exact
    /// -u"` inside a Slurm allocation or `"ssh HOST"` (split into words like
    /// a shell would, without expansion). Workers may then run on other
    /// machines: each is sent the kernel's wasm, compiles it there, and
    /// connects back to this host over TCP (see --listen). -j counts such
    /// workers, whatever this machine's cores.
    #[arg(long, value_name = "CMD", value_parser = units::parse_command, conflicts_with = "slurm")]
    launcher: Option<units::Words>,
    /// Inside a Slurm allocation (`salloc`, `sbatch`): one worker per task
    /// (SLURM_NTASKS, or -j), each started by `srun` on the allocated
    /// nodes in turn.
    #[arg(long)]
    slurm: bool,
    /// The address launched workers connect back to: `IP` or `IP:PORT`
    /// [default: this machine's first non-loopback IPv4 address, a free
    /// port]. Connections need a per-worker random token; the traffic is
    /// not encrypted.
    #[arg(long, value_name = "IP[:PORT]", value_parser = units::parse_listen)]
    listen: Option<std::net::SocketAddr>,
    /// On stderr: each worker's node, pid and sandbox status once all are
    /// up, and worker deaths and retries at the end.
    #[arg(short, long)]
    verbose: bool,
    /// Refuse to run unless every worker confines itself fully (seccomp,
    /// Landlock, no_new_privs); exit 2 naming what is missing.
    #[arg(long)]
    require_sandbox: bool,
    /// Show a progress bar on stderr [default: when stderr is a terminal].
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Map(cmd) => map(&cmd.kernel, cmd.run),
        Command::Pipeline(cmd) => pipeline(*cmd),
        Command::Mapreduce(cmd) => mapreduce(*cmd),
        Command::Inspect { kernel, sandbox } => inspect(&kernel, sandbox),
        Command::Cache { action } => cache::run(action),
        Command::Completions { shell } => completions::run(shell),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("wpool: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

fn inspect(path: &std::path::Path, sandbox: bool) -> Result<u8> {
    let ins = Kernel::inspect(path)?;
    let mut out = io::stdout().lock();
    writeln!(out, "kernel:  {}", path.display())?;
    writeln!(out, "size:    {} bytes", ins.info.size)?;
    writeln!(out, "format:  {}", ins.info.format)?;
    match &ins.rejection {
        None => {
            let names: Vec<&str> = ins.worlds.iter().map(|w| w.name()).collect();
            writeln!(out, "worlds:  {} (accepted)", names.join(", "))?;
            for (label, line) in usage(path, &ins.worlds) {
                writeln!(out, "{label:9}{line}")?;
            }
        }
        Some(e) => writeln!(out, "worlds:  none: rejected: {e}")?,
    }
    let list = |items: &[String]| if items.is_empty() { vec!["(none)".to_string()] } else { items.to_vec() };
    for (i, imp) in list(&ins.info.imports).iter().enumerate() {
        writeln!(out, "{:9}{imp}", if i == 0 { "imports:" } else { "" })?;
    }
    for (i, exp) in list(&ins.info.exports).iter().enumerate() {
        writeln!(out, "{:9}{exp}", if i == 0 { "exports:" } else { "" })?;
    }
    if sandbox && ins.rejection.is_none() {
        let pool = Pool::builder(Kernel::from_file(path)?).workers(1).build()?;
        let status = pool.sandbox_status().context("the worker reported no sandbox status")?;
        writeln!(out, "sandbox: no_new_privs: {}", status.no_new_privs)?;
        writeln!(out, "         seccomp:      {}", status.seccomp)?;
        writeln!(out, "         landlock:     {:?}", status.landlock)?;
        if !status.detail.is_empty() {
            writeln!(out, "         detail:       {}", status.detail)?;
        }
    }
    Ok(if ins.rejection.is_none() { 0 } else { 1 })
}

/// Which commands take a kernel of these worlds (the first is how wpool
/// runs it), and what the host does with its optional exports, for
/// `inspect`: (label, line).
fn usage(path: &std::path::Path, worlds: &[World]) -> Vec<(&'static str, String)> {
    let k = path.display();
    let Some(&world) = worlds.first() else { return vec![] };
    if world == World::Reducer {
        return vec![
            ("use:", format!("wpool mapreduce --map MAP.wasm --reduce {k} [INPUT]...")),
            ("", "(no `map`: not for wpool map or wpool pipeline)".into()),
        ];
    }
    let init = if world.has_init() { "--init FILE " } else { "" };
    let mut lines = vec![
        ("use:", format!("wpool map {init}{k} [INPUT]...")),
        ("", format!("wpool pipeline --stage {k} --stage ... [INPUT]...")),
        ("", format!("wpool mapreduce --map {k} --reduce REDUCER.wasm [INPUT]...")),
    ];
    if world.has_init() {
        lines.push((
            "init:",
            "called once per kernel instance, before any item, with FILE's bytes (empty without --init, and in \
             pipeline and mapreduce)"
                .into(),
        ));
    }
    if worlds.iter().any(|w| matches!(w, World::BatchKernel | World::BatchKernelWithInit)) {
        lines.push(("batch:", "`map-batch` may be given several small items in one call".into()));
    }
    lines
}

/// Limits, grants and the other pool settings shared by `map` and every
/// stage of `pipeline`.
struct Setup {
    limits: Limits,
    grants: Grants,
    max_item: usize,
    /// Workers per pool unless said otherwise (-j, Slurm tasks, cores).
    jobs: usize,
    /// Under `--slurm`: the allocation.
    slurm: Option<wpool::Slurm>,
    /// The `--data` directory; lives as long as the pools.
    _data_dir: Option<tempfile::TempDir>,
}

impl Setup {
    fn new(args: &MapArgs) -> Result<Setup> {
        let max_item = usize::try_from(args.max_item_size).context("--max-item-size is too large")?;
        let limits = Limits {
            timeout: args.timeout,
            memory: args.memory,
            fuel: args.fuel,
            max_item_size: max_item,
            max_items_per_instance: if args.isolate || args.deterministic {
                Some(1)
            } else {
                args.max_items_per_instance
            },
            ..Limits::default()
        };
        let mut grants = grants(args)?;
        let data_dir = match &args.data {
            Some(file) => {
                let (dir, grant) = data_grant(file)?;
                grants.dirs.push(grant);
                Some(dir)
            }
            None => None,
        };
        let slurm = if args.slurm { Some(wpool::Slurm::from_env()?) } else { None };
        if args.listen.is_some() && args.launcher.is_none() && slurm.is_none() {
            anyhow::bail!("--listen: only workers started through --launcher or --slurm connect back");
        }
        let jobs = args.jobs.or(slurm.as_ref().map(|s| s.tasks)).unwrap_or_else(num_cpus::get);
        Ok(Setup { limits, grants, max_item, jobs, slurm, _data_dir: data_dir })
    }

    /// A pool of `workers`, one of several alive at once that start
    /// `all_workers` in all (under --slurm they share the allocation).
    fn builder(&self, kernel: Kernel, args: &MapArgs, workers: usize, all_workers: usize) -> wpool::PoolBuilder {
        let mut builder = Pool::builder(kernel)
            .workers(workers)
            .chunksize(args.chunksize)
            .retries(args.retries)
            .limits(self.limits.clone())
            .grants(self.grants.clone())
            .require_sandbox(args.require_sandbox);
        if let Some(launcher) = &args.launcher {
            builder = builder.launcher(launcher.0.clone());
        }
        if let Some(slurm) = &self.slurm {
            builder = builder.launchers(slurm.launchers_among(workers, all_workers));
        }
        if let Some(addr) = args.listen {
            builder = builder.listen(addr);
        }
        builder
    }

    /// Pipelines and MapReduce start several pools, each listening for its
    /// own workers: a fixed port can serve only one.
    fn check_one_port(&self, args: &MapArgs, what: &str) -> Result<()> {
        match args.listen {
            Some(addr) if addr.port() != 0 => anyhow::bail!(
                "--listen {addr}: {what} starts one pool per kernel, each with its own port; give only the IP \
                 address (free ports are picked)"
            ),
            _ => Ok(()),
        }
    }

    /// Starts a pool; with --verbose, waits for all its workers and says
    /// where each runs and how it is confined.
    fn start(&self, builder: wpool::PoolBuilder, args: &MapArgs, label: &str) -> Result<Pool> {
        let mut pool = builder.build()?;
        if args.verbose {
            pool.wait_ready()?;
            if let Some(addr) = pool.dial_address() {
                eprintln!("wpool:{label} workers connected back to {addr}");
            }
            for w in pool.worker_info() {
                eprintln!("wpool:{label} {}: node {}, pid {}, sandbox {}", w.id, w.node, w.pid, w.sandbox);
            }
        }
        Ok(pool)
    }
}

/// With --verbose: what happened to a pool's workers.
fn report_end(pool: &Pool, args: &MapArgs, label: &str) {
    if args.verbose {
        let s = pool.stats();
        eprintln!(
            "wpool:{label} {} worker processes started, {} died, {} items retried, {} connections refused",
            s.spawned, s.worker_deaths, s.retried_items, s.rejected_connections
        );
    }
}

fn split_of(args: &MapArgs) -> Split {
    if args.files {
        Split::Files
    } else if args.null {
        Split::Nul
    } else {
        Split::Lines
    }
}

fn format_of(args: &MapArgs) -> Format {
    if args.json {
        Format::Json
    } else {
        Format::Plain { sep: if args.null { 0 } else { b'\n' } }
    }
}

fn pipeline(cmd: PipelineCmd) -> Result<u8> {
    let args = &cmd.run;
    if args.unordered {
        anyhow::bail!("--unordered: a pipeline prints results in input order");
    }
    if args.init.is_some() {
        anyhow::bail!("--init: not available for pipelines (each stage is its own kernel)");
    }
    let jobs: Vec<usize> = match &cmd.jobs_per_stage {
        Some(list) => {
            let jobs = list
                .split(',')
                .map(|n| units::parse_jobs(n.trim()).map_err(|e| anyhow::anyhow!("--jobs-per-stage {list}: {e}")))
                .collect::<Result<Vec<usize>>>()?;
            if jobs.len() != cmd.stages.len() {
                anyhow::bail!("--jobs-per-stage {list}: {} numbers for {} stages", jobs.len(), cmd.stages.len());
            }
            jobs
        }
        None => Vec::new(),
    };
    let kernels = cmd.stages.iter().map(|k| map_kernel(k)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = kernels.iter().map(|k| k.name().to_string()).collect();
    let sources = input::sources(&args.inputs)?;
    let setup = Setup::new(args)?;
    setup.check_one_port(args, "a pipeline")?;
    let jobs: Vec<usize> = (0..kernels.len()).map(|i| jobs.get(i).copied().unwrap_or(setup.jobs)).collect();
    let all: usize = jobs.iter().sum();
    let mut pools = Vec::new();
    for (i, (kernel, workers)) in kernels.into_iter().zip(jobs).enumerate() {
        pools.push(setup.start(setup.builder(kernel, args, workers, all), args, &format!(" stage {}:", i + 1))?);
    }
    let interrupted = cancel_on_ctrl_c(pools.iter().map(Pool::canceller).collect())?;
    let items = Items::new(sources, split_of(args), setup.max_item);
    let read_error = items.error();
    let mut printer = Printer::new(format_of(args), items.origins(), false, None);
    let mut pipeline = wpool::Pipeline::new(pools)?;
    let mut failed = false;
    let mut write_error = None;
    let outcome = pipeline.run(items, |index, result| {
        let result = result.map_err(|f| {
            let mut e = f.error;
            e.message = format!("stage {} ({}): {}", f.stage + 1, names[f.stage], e.message);
            e
        });
        failed |= result.is_err();
        if let Err(e) = printer.item(index.get(), result, true) {
            write_error = Some(e);
            return false;
        }
        !(failed && args.fail_fast)
    });
    printer.finish()?;
    for (i, pool) in pipeline.stages().iter().enumerate() {
        report_end(pool, args, &format!(" stage {}:", i + 1));
    }
    drop(pipeline);
    if let Some(e) = write_error {
        return Err(e.into());
    }
    exit_code(outcome, &interrupted, &read_error, "results up to that point were printed", failed)
}

/// How a run that printed its output ends: 130 after Ctrl-C, an error for
/// a pool failure or an input that could not be read (`after_read_error`
/// says what was printed), else 1 if an item failed and 0 if none did.
fn exit_code(
    outcome: Result<(), Error>,
    interrupted: &AtomicBool,
    read_error: &Mutex<Option<String>>,
    after_read_error: &str,
    failed: bool,
) -> Result<u8> {
    match outcome {
        Ok(()) => {}
        Err(Error::Cancelled) if interrupted.load(Ordering::SeqCst) => {
            eprintln!("wpool: interrupted");
            return Ok(130);
        }
        // Writing the output failed: say how, as `map` always did.
        Err(Error::Io(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    }
    if let Some(e) = read_error.lock().unwrap().take() {
        anyhow::bail!("{e}; {after_read_error}");
    }
    Ok(if failed { 1 } else { 0 })
}

/// Ctrl-C cancels the runs of these pools; the flag says it happened.
fn cancel_on_ctrl_c(cancellers: Vec<wpool::Canceller>) -> Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        cancellers.iter().for_each(wpool::Canceller::cancel);
    })
    .context("installing the Ctrl-C handler")?;
    Ok(interrupted)
}

/// A map kernel, or an error saying that a reducer belongs to `mapreduce`.
fn map_kernel(path: &std::path::Path) -> Result<Kernel> {
    let kernel = Kernel::from_file(path)?;
    if kernel.is_reducer() {
        anyhow::bail!("{}: a reducer (world `reducer`): use it with `wpool mapreduce --reduce`", path.display());
    }
    Ok(kernel)
}

fn mapreduce(cmd: MapReduceCmd) -> Result<u8> {
    let args = &cmd.run;
    if args.unordered || args.init.is_some() {
        anyhow::bail!("--unordered and --init are not available for mapreduce");
    }
    let map = map_kernel(&cmd.map)?;
    let reduce = Kernel::from_file(&cmd.reduce)?;
    if !reduce.is_reducer() {
        anyhow::bail!(
            "{}: not a reducer: --reduce needs a kernel of world `wpool:kernel/reducer`",
            cmd.reduce.display()
        );
    }
    let sources = input::sources(&args.inputs)?;
    let setup = Setup::new(args)?;
    setup.check_one_port(args, "mapreduce")?;
    let all = 2 * setup.jobs;
    let map = setup.start(setup.builder(map, args, setup.jobs, all), args, " map:")?;
    let reduce = setup.start(setup.builder(reduce, args, setup.jobs, all), args, " reduce:")?;
    let interrupted = cancel_on_ctrl_c(vec![map.canceller(), reduce.canceller()])?;
    let items = Items::new(sources, split_of(args), setup.max_item);
    let read_error = items.error();
    let mut printer = Printer::new(format_of(args), items.origins(), false, None);
    let mut mr = wpool::MapReduce::new(map, reduce)?;
    let mut failed = false;
    let mut write_error = None;
    let outcome = mr.run(items, |e| {
        failed = true;
        let index = e.index.get();
        if let Err(err) = printer.item(index, Err(e), false) {
            write_error.get_or_insert(err);
        }
    });
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let outcome = match outcome {
        Ok(keys) => {
            for (key, result) in keys {
                failed |= result.is_err();
                printer.key(&key, result)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    printer.finish()?;
    exit_code(outcome, &interrupted, &read_error, "nothing after it was read", failed)
}

fn map(kernel: &std::path::Path, args: MapArgs) -> Result<u8> {
    let kernel = map_kernel(kernel)?;
    let sources = input::sources(&args.inputs)?;
    let split = split_of(&args);
    let setup = Setup::new(&args)?;
    let max_item = setup.max_item;
    let mut builder = setup.builder(kernel, &args, setup.jobs, setup.jobs);
    if let Some(file) = &args.init {
        let config = std::fs::read(file).with_context(|| format!("--init {}", file.display()))?;
        builder = builder.init(config);
    }
    let mut pool = setup.start(builder, &args, "")?;

    let interrupted = cancel_on_ctrl_c(vec![pool.canceller()])?;

    let show_progress = (args.progress || io::stderr().is_terminal()) && !args.no_progress;
    let total = if show_progress { count_items(&sources, split) } else { None };
    let items = Items::new(sources, split, max_item);
    let origins = items.origins();
    let read_error = items.error();
    let mut printer = Printer::new(format_of(&args), origins, show_progress, total);

    // Input is read on its own thread so that results keep flowing while a
    // slow producer (a pipe, a terminal) has nothing to say. Items travel in
    // batches, each sent as soon as the next read could wait.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("wpool-input".into())
        .spawn(move || feed_batches(items, &tx))
        .context("starting the input thread")?;

    let mut failed = false;
    let outcome: Result<(), Error> = (|| {
        if args.unordered {
            let mut it = pool.imap_unordered_batches(rx);
            while let Some(r) = it.next() {
                let (index, result) = r?;
                failed |= result.is_err();
                printer.item(index.get(), result, !it.has_ready())?;
                if failed && args.fail_fast {
                    break;
                }
            }
        } else {
            let mut it = pool.imap_batches(rx);
            let mut index = 0u64;
            while let Some(r) = it.next() {
                let result = r?;
                failed |= result.is_err();
                printer.item(index, result, !it.has_ready())?;
                index += 1;
                if failed && args.fail_fast {
                    break;
                }
            }
        }
        Ok(())
    })();
    printer.finish()?;
    report_end(&pool, &args, "");
    drop(pool);
    exit_code(outcome, &interrupted, &read_error, "results up to that point were printed", failed)
}

/// Sends items in batches of up to `BATCH_ITEMS` items or `BATCH_BYTES`
/// bytes; a partial batch goes out before any read that could wait.
fn feed_batches(mut items: Items, tx: &crossbeam_channel::Sender<Vec<Vec<u8>>>) {
    const BATCH_ITEMS: usize = 1024;
    const BATCH_BYTES: usize = 256 << 10;
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        if !batch.is_empty() && (batch.len() >= BATCH_ITEMS || bytes >= BATCH_BYTES || !items.ready()) {
            if tx.send(std::mem::take(&mut batch)).is_err() {
                return;
            }
            bytes = 0;
        }
        match items.next() {
            Some(item) => {
                bytes += item.len();
                batch.push(item);
            }
            None => {
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                return;
            }
        }
    }
}

/// `--data FILE`: a private directory holding FILE as `data` (a hard link:
/// the same file, nothing copied; a copy when FILE is on another file
/// system), granted read-only as the guest's `/`.
fn data_grant(file: &std::path::Path) -> Result<(tempfile::TempDir, DirGrant)> {
    let meta = std::fs::metadata(file).with_context(|| format!("--data {}", file.display()))?;
    if !meta.is_file() {
        anyhow::bail!("--data {}: not a regular file", file.display());
    }
    // Next to the file if we may (same file system: a hard link), else in
    // the temporary directory (a hard link if that is the same file system,
    // else a copy, said on stderr).
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let dir = tempfile::Builder::new()
        .prefix(".wpool-data-")
        .tempdir_in(parent)
        .or_else(|_| tempfile::Builder::new().prefix("wpool-data-").tempdir())
        .context("--data: creating a private directory")?;
    let link = dir.path().join("data");
    if std::fs::hard_link(file, &link).is_err() {
        eprintln!("wpool: --data {}: on another file system than {}: copying it", file.display(), dir.path().display());
        std::fs::copy(file, &link).with_context(|| format!("--data {}", file.display()))?;
    }
    let grant = DirGrant { host: dir.path().to_path_buf(), guest: "/".into(), writable: false };
    Ok((dir, grant))
}

fn grants(args: &MapArgs) -> Result<Grants> {
    let mut dirs = Vec::new();
    for spec in &args.allow_dir {
        let (rest, writable) = match spec.strip_suffix(":rw") {
            Some(rest) => (rest, true),
            None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
        };
        let (host, guest) = rest.split_once(':').unwrap_or((rest, rest));
        if host.is_empty() || guest.is_empty() {
            anyhow::bail!("--allow-dir {spec}: expected HOST[:GUEST][:rw]");
        }
        let abs = std::fs::canonicalize(host).with_context(|| format!("--allow-dir {spec}: {host}"))?;
        if !abs.is_dir() {
            anyhow::bail!("--allow-dir {spec}: {host} is not a directory");
        }
        dirs.push(DirGrant { host: abs, guest: guest.to_string(), writable });
    }
    let mut env = Vec::new();
    for spec in &args.env {
        match spec.split_once('=') {
            Some((name, value)) => env.push((name.to_string(), value.to_string())),
            None => match std::env::var(spec) {
                Ok(value) => env.push((spec.clone(), value)),
                Err(_) => anyhow::bail!("--env {spec}: no such variable in this environment (use NAME=VALUE)"),
            },
        }
    }
    Ok(Grants { dirs, env, real_clock: args.allow_clock, real_random: args.allow_random, seed: args.seed })
}

/// Total items for the progress bar, when every input is a regular file.
fn count_items(sources: &[input::Source], split: Split) -> Option<u64> {
    let mut total = 0u64;
    for s in sources {
        let input::Source::File(p) = s else { return None };
        if split == Split::Files {
            total += 1;
            continue;
        }
        let sep = if split == Split::Nul { 0 } else { b'\n' };
        let mut f = std::io::BufReader::new(std::fs::File::open(p).ok()?);
        let mut count = 0u64;
        let mut last = sep;
        loop {
            let buf = std::io::BufRead::fill_buf(&mut f).ok()?;
            if buf.is_empty() {
                break;
            }
            count += buf.iter().filter(|b| **b == sep).count() as u64;
            last = *buf.last().expect("non-empty");
            let n = buf.len();
            std::io::BufRead::consume(&mut f, n);
        }
        total += count + u64::from(last != sep);
    }
    Some(total)
}
