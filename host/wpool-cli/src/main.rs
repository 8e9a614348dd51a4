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
mod flags;
mod input;
mod output;
mod run;
mod signals;
mod units;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wpool::{Kernel, Pool, World};

use crate::flags::{MapCmd, MapReduceCmd, PipelineCmd};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Map(cmd) => run::map(*cmd),
        Command::Pipeline(cmd) => run::pipeline(*cmd),
        Command::Mapreduce(cmd) => run::mapreduce(*cmd),
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
            say(format_args!("wpool: error: {e:#}"));
            ExitCode::from(2)
        }
    }
}

/// One line on stderr. Never panics (unlike `eprintln!`): after SIGHUP the
/// terminal is gone and writing to it fails, which must not change how the
/// run ends.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{line}");
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
