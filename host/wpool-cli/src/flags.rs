//! Every command and flag of `wpool`, defined once with its documentation
//! (clap derives the parser, `--help` and the shell completions from it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use wpool::Chunksize;

use crate::units;

#[derive(Parser)]
#[command(name = "wpool", version, about = "A sandboxed WebAssembly worker pool", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Each subcommand's arguments are built only when it runs (or for help and
// completions): building all of them cost every run about 0.2 ms.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a kernel over every item of the inputs, in worker processes.
    ///
    /// Items are the lines of each INPUT (stdin when none, or `-`), without
    /// their `\n`. Results are printed in input order, one per line; failed
    /// items print nothing on stdout and one line on stderr.
    #[command(after_long_help = "Exit status: 0 every item succeeded; 1 at least one item failed; 2 usage, \
kernel-load or input error (nothing was run) or pool failure; 130 interrupted (129 SIGHUP, 143 SIGTERM): finished results are printed first.\n\n\
Examples (from the repository's root):\n  printf 'hello\\nworld\\n' | wpool map -j 2 target/kernels/wasip2/upper.wasm\n  wpool map --timeout 2s target/kernels/wasip2/primes.wasm examples/primes.txt\n  find examples/text -name '*.txt' -print0 |\n    wpool map --files -0 target/kernels/wasip2/wordcount.wasm -")]
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
Example (from the repository's root):\n  k=target/kernels/wasip2\n  wpool pipeline --stage $k/validate.wasm --stage $k/primes.wasm \\\n    --stage $k/format.wasm --jobs-per-stage 1,2,1 examples/numbers.txt")]
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
kernel-load or input error or pool failure; 130 interrupted (129 SIGHUP, 143 SIGTERM): finished results are printed first.\n\n\
Example (from the repository's root):\n  k=target/kernels/wasip2\n  wpool mapreduce --map $k/wordcount.wasm --reduce $k/sum.wasm \\\n    --files examples/text/*.txt")]
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
        action: Option<CacheCmd>,
    },
    /// Time the same run at several worker counts and print the speedup
    /// table (processes, time, speedup, efficiency), optionally as a chart.
    ///
    /// Every run is a whole `wpool map` of the inputs (pool start and
    /// shutdown included, results discarded), repeated --repeat times at
    /// each worker count; the table shows the median. Speedup is against
    /// the smallest worker count; efficiency is speedup per worker.
    #[command(
        after_long_help = "Exit status: 0 measured (failed items are counted, not fatal); 2 usage, kernel-load or input error or pool failure; 130 interrupted.\n\n\
Example (from the repository's root):\n  d=$(mktemp -d)\n  wpool bench -j 1,2 --repeat 3 --svg $d/speedup.svg \\\n    target/kernels/wasip2/primes.wasm examples/primes.txt"
    )]
    Bench(Box<BenchCmd>),
    /// Summarise a joblog written by `--joblog FILE`: the last
    /// run (or --all), its items by status, and the failed ones with where
    /// they came from.
    #[command(after_long_help = "The database is plain SQLite: `sqlite3 FILE 'SELECT * FROM items'`.\n\n\
Example (from the repository's root):\n  d=$(mktemp -d)\n  wpool map --joblog $d/run.db target/kernels/wasip2/primes.wasm \\\n    examples/primes.txt\n  wpool joblog $d/run.db")]
    Joblog {
        /// The joblog (a SQLite database).
        file: PathBuf,
        /// Every run in the file, the last first.
        #[arg(long)]
        all: bool,
        /// JSON: one object per run, with every failed item.
        #[arg(long)]
        json: bool,
    },
    /// Run one item of a joblog again, alone, in one worker, with the
    /// options its run recorded; or write it into a bundle directory that
    /// `wpool replay DIR` runs on another machine.
    ///
    /// The item is read again from where it came from (`file:line`, a `-0`
    /// record, or a whole file) and must hash as recorded; the kernel too.
    #[command(after_long_help = "Exit status: as `wpool map` over the one item.\n\n\
Example (from the repository's root):\n  d=$(mktemp -d)\n  wpool map --joblog $d/run.db target/kernels/wasip2/primes.wasm \\\n    examples/primes.txt\n  \
wpool replay $d/run.db --item 3\n  wpool replay $d/run.db --item 3 --bundle $d/bug-3\n  wpool replay $d/bug-3")]
    Replay {
        /// A joblog (`wpool map --joblog FILE`), or a directory written by
        /// --bundle.
        source: PathBuf,
        /// The item's index (as `wpool joblog` shows it).
        #[arg(long, value_name = "N")]
        item: Option<u64>,
        /// The run in the joblog [default: the last].
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        /// Write the kernel, the item and the options into DIR instead of
        /// running it.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
        /// Run it with --deterministic (a fixed clock and random seed), so
        /// that an error is the same every time (as recorded, when the run
        /// was deterministic too).
        #[arg(long)]
        deterministic: bool,
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

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Remove every cached artifact (those a running wpool uses are kept;
    /// the next run of a kernel compiles it again).
    Clean,
}

#[derive(Args)]
pub struct MapCmd {
    /// The kernel: a WebAssembly component of world `wpool:kernel/kernel`.
    pub kernel: PathBuf,
    /// Print results in completion order instead of input order.
    #[arg(long)]
    pub unordered: bool,
    /// Configuration for a kernel with an `init` export (world
    /// `kernel-with-init`): FILE's bytes are passed to `init` once per kernel
    /// instance, before any item (at most 64 MiB).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// With --joblog: skip the items the joblog's earlier runs finished (ok
    /// or failed) and print their recorded outcomes, so that the output is
    /// that of one uninterrupted run. The kernel and the options that change
    /// results must be the same; each item's input must hash as recorded.
    #[arg(long, requires = "joblog", conflicts_with = "unordered")]
    pub resume: bool,
    /// Write each failed item to FILE as it was read (a line, a `-0`
    /// record, or with --files the file's name), so that `wpool map KERNEL
    /// FILE` (with the same -0; with --files, `wpool map --files KERNEL - <
    /// FILE`) runs exactly the failed items again. FILE is replaced when the
    /// run ends; after a stop the failures so far are in FILE.tmp.
    #[arg(long, value_name = "FILE")]
    pub quarantine: Option<PathBuf>,
    /// As --resume, but run the items that failed again.
    #[arg(long, requires = "joblog", conflicts_with_all = ["unordered", "resume"])]
    pub resume_failed: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct BenchCmd {
    /// The kernel: a WebAssembly component of world `wpool:kernel/kernel`.
    pub kernel: PathBuf,
    /// Runs at each worker count; the table shows their median.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Also draw the measured speedup against the ideal line, as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Configuration for a kernel with an `init` export, as for `wpool map`.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct PipelineCmd {
    /// A stage's kernel; give one `--stage` per stage, in order.
    #[arg(long = "stage", value_name = "KERNEL", required = true)]
    pub stages: Vec<PathBuf>,
    /// Worker processes of each stage, e.g. `2,1,1` [default: -j for every stage].
    #[arg(long, value_name = "N,N,...")]
    pub jobs_per_stage: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct MapReduceCmd {
    /// The map kernel (world `kernel`): each result is `key<TAB>value` lines.
    #[arg(long = "map", value_name = "KERNEL")]
    pub map: PathBuf,
    /// The reduce kernel (world `reducer`).
    #[arg(long = "reduce", value_name = "KERNEL")]
    pub reduce: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What to print for an item that failed (besides its line on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Nothing on stdout: the outputs of failed items are missing.
    Skip,
    /// An empty record, so that output line N belongs to input item N
    /// (`paste` stays aligned).
    Empty,
}

#[derive(Args)]
pub struct RunArgs {
    /// Input files; stdin when none is given or for `-` (with --files: `-`
    /// is a list of file names on stdin, one per line, or NUL-terminated
    /// with -0, as `find -print0` writes).
    pub inputs: Vec<PathBuf>,
    /// Record the run and every item's outcome (origin, input and result
    /// SHA-256, status, message, attempts) in the SQLite database FILE,
    /// created if needed; `wpool joblog FILE` summarises it.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,
    /// Worker processes [default: number of cores]; for `wpool bench`, the
    /// worker counts to compare, e.g. `1,2,4,8` [default: 1, 2, 4, ... up to
    /// the cores].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = units::parse_jobs)]
    pub jobs: Option<units::Jobs>,
    /// Items per chunk sent to a worker: a number, or `auto`.
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = units::parse_chunksize)]
    pub chunksize: Chunksize,
    /// Items are NUL-separated, and plain output is NUL-terminated (with
    /// --files: the file list on stdin is NUL-separated).
    #[arg(short = '0', long = "null")]
    pub null: bool,
    /// Each INPUT file is one whole item.
    #[arg(long)]
    pub files: bool,
    /// JSON Lines output: one object per item, results and errors.
    #[arg(long)]
    pub json: bool,
    /// Prefix each plain result with its item's origin and a TAB
    /// (`FILE:LINE<TAB>result`, `FILE<TAB>result` with --files).
    #[arg(long, conflicts_with = "json")]
    pub tag: bool,
    /// What plain output shows for a failed item: `skip` prints nothing,
    /// `empty` an empty record in its place (output stays aligned with
    /// input). The error goes to stderr either way.
    #[arg(long, value_name = "WHAT", value_enum, default_value = "skip")]
    pub on_error: OnError,
    /// Times an item whose worker process died is retried on a new worker.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Stop at the first failed item (exit 1).
    #[arg(long)]
    pub fail_fast: bool,
    /// Per-item time limit, e.g. `500ms`, `2s`, `1m`.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Per-instance memory cap, e.g. `64MiB`, `1GiB`; growing past it fails
    /// the item as `memory_limit` [default: half of this machine's RAM
    /// (or cgroup limit) divided by the workers, between 256MiB and 4GiB].
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub memory: Option<u64>,
    /// Per-item fuel (about one unit per wasm instruction).
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Replace the kernel instance after this many items (like
    /// `maxtasksperchild`); it is always replaced after a trap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_items_per_instance: Option<u64>,
    /// A fresh kernel instance for every item (no state carries over).
    #[arg(long, conflicts_with = "max_items_per_instance")]
    pub isolate: bool,
    /// Call the kernel once per item, never its `map-batch` with several
    /// small items at once (results are the same; only slower on tiny items).
    #[arg(long)]
    pub no_batch: bool,
    /// Largest item and largest result, at most 2GiB (both must fit in the
    /// kernel's wasm32 memory, and --memory must leave room for them).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = units::parse_item_size)]
    pub max_item_size: u64,
    /// Read-only data shared by every kernel instance: FILE is visible to the
    /// kernel as the file `/data` (linked into a private directory of this
    /// run, so the OS page cache shares it between workers; a copy when the
    /// temporary directory is on another file system; nothing else of the
    /// host is visible, nothing is created beside FILE).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Make a host directory visible to the kernel: `HOST[:GUEST][:rw]`
    /// (read-only unless `:rw`; GUEST defaults to HOST as written).
    #[arg(long = "allow-dir", value_name = "HOST[:GUEST][:rw]")]
    pub allow_dir: Vec<String>,
    /// Pass an environment variable to the kernel: `NAME` (its value here) or
    /// `NAME=VALUE`. The kernel sees exactly these.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Reproducible runs: fixed wall clock, stepping monotonic clock and
    /// seeded randomness, reset for every item (the clocks and randomness
    /// are the default anyway), plus a fresh instance per item so that no
    /// kernel state carries over. The same input gives the same output on
    /// every run and every worker.
    #[arg(long, conflicts_with_all = ["allow_clock", "allow_random", "max_items_per_instance"])]
    pub deterministic: bool,
    /// Seed of the deterministic randomness.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Give kernels the real wall and monotonic clocks.
    #[arg(long)]
    pub allow_clock: bool,
    /// Give kernels real entropy.
    #[arg(long)]
    pub allow_random: bool,
    /// Start every worker through this command, e.g. `"srun -N1 -n1 --exact
    /// -u"` inside a Slurm allocation or `"ssh HOST"` (split into words like
    /// a shell would, without expansion). Workers may then run on other
    /// machines: each is sent the kernel's wasm, compiles it there, and
    /// connects back to this host over TCP (see --listen). -j counts such
    /// workers, whatever this machine's cores.
    #[arg(long, value_name = "CMD", value_parser = units::parse_command, conflicts_with = "slurm")]
    pub launcher: Option<units::Words>,
    /// Inside a Slurm allocation (`salloc`, `sbatch`): one worker per task
    /// (SLURM_NTASKS, or -j), each started by `srun` on the allocated
    /// nodes in turn.
    #[arg(long)]
    pub slurm: bool,
    /// The address launched workers connect back to: `IP` or `IP:PORT`
    /// [default: this machine's first non-loopback IPv4 address, a free
    /// port]. Connections need a per-worker random token; the traffic is
    /// not encrypted.
    #[arg(long, value_name = "IP[:PORT]", value_parser = units::parse_listen)]
    pub listen: Option<std::net::SocketAddr>,
    /// On stderr: each worker's node, pid and sandbox status once all are
    /// up, and worker deaths and retries at the end.
    #[arg(short, long)]
    pub verbose: bool,
    /// Refuse to run unless every worker confines itself fully (seccomp,
    /// Landlock, no_new_privs); exit 2 naming what is missing.
    #[arg(long)]
    pub require_sandbox: bool,
    /// Show a progress bar on stderr [default: when stderr is a terminal].
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}
