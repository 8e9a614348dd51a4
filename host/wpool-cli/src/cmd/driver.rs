//! What `map`, `pipeline` and `mapreduce` share, in the order a run goes:
//! stop signals first, pool settings from the flags ([`Setup`]), the input
//! ([`items`]), the printer ([`printer`]), and how the run ends ([`finish`]).

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use wpool::{DirGrant, Error, Grants, Kernel, Limits, Pool};

use crate::exit::Exit;
use crate::flags::{OnError, RunArgs};
use crate::input::{self, Items, Source, Split};
use crate::output::{Format, Printer};
use crate::say;
use crate::signals::{self, Interrupts};

/// What the printer says was printed when an input could not be read
/// further, for a command whose results stream in input order.
pub const PRINTED_SO_FAR: &str = "results up to that point were printed";

/// Limits, grants and the other pool settings shared by `map` and every
/// stage of `pipeline`.
pub struct Setup {
    limits: Limits,
    grants: Grants,
    /// Workers per pool unless said otherwise (-j, Slurm tasks, cores).
    pub jobs: usize,
    /// Under `--slurm`: the allocation.
    slurm: Option<wpool::slurm::Slurm>,
}

impl Setup {
    pub fn new(args: &RunArgs) -> Result<Setup> {
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
        let grants = grants(args)?;
        if let Some(file) = &args.data {
            // Checked here so that a bad file fails before any worker starts.
            let meta = std::fs::metadata(file).with_context(|| format!("--data {}", file.display()))?;
            if !meta.is_file() {
                anyhow::bail!("--data {}: not a regular file", file.display());
            }
        }
        let slurm = if args.slurm { Some(wpool::slurm::Slurm::from_env()?) } else { None };
        if args.listen.is_some() && args.launcher.is_none() && slurm.is_none() {
            anyhow::bail!("--listen: only workers started through --launcher or --slurm connect back");
        }
        let jobs = args.jobs.as_ref().map(|j| j.one()).transpose().map_err(anyhow::Error::msg)?;
        let jobs = jobs.or(slurm.as_ref().map(|s| s.tasks)).unwrap_or_else(num_cpus::get);
        Ok(Setup { limits, grants, jobs, slurm })
    }

    /// `--max-item-size`, as checked when the settings were made.
    pub fn max_item(&self) -> usize {
        self.limits.max_item_size
    }

    /// A pool of `workers`, one of several alive at once that start
    /// `all_workers` in all (under --slurm they share the allocation).
    pub fn builder(&self, kernel: Kernel, args: &RunArgs, workers: usize, all_workers: usize) -> wpool::PoolBuilder {
        let mut builder = Pool::builder(kernel)
            .workers(workers)
            .chunksize(args.chunksize)
            .retries(args.retries)
            .limits(self.limits.clone())
            .grants(self.grants.clone())
            .require_sandbox(args.require_sandbox)
            .batch_calls(!args.no_batch);
        if let Some(file) = &args.data {
            builder = builder.data_file(file);
        }
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
    pub fn check_one_port(&self, args: &RunArgs, what: &str) -> Result<()> {
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
    pub fn start(&self, builder: wpool::PoolBuilder, args: &RunArgs, label: &str) -> Result<Pool> {
        let mut pool = builder.build()?;
        if args.verbose {
            pool.wait_ready()?;
            if let Some(addr) = pool.dial_address() {
                say(format_args!("wpool:{label} workers connected back to {addr}"));
            }
            for w in pool.worker_info() {
                say(format_args!("wpool:{label} {}: node {}, pid {}, sandbox {}", w.id, w.node, w.pid, w.sandbox));
            }
        }
        Ok(pool)
    }
}

/// With --verbose: what happened to a pool's workers.
pub fn report_end(pool: &Pool, args: &RunArgs, label: &str) {
    if args.verbose {
        let s = pool.stats();
        say(format_args!(
            "wpool:{label} {} worker processes started, {} died, {} items retried, {} connections refused, {} items \
             in batched calls, {} batches run again item by item, {} chunks given back for an idle worker",
            s.spawned,
            s.worker_deaths,
            s.retried_items,
            s.rejected_connections,
            s.batched_items,
            s.batch_fallbacks,
            s.reclaimed_chunks
        ));
    }
}

fn split_of(args: &RunArgs) -> Split {
    if args.files {
        Split::Files
    } else if args.null {
        Split::Nul
    } else {
        Split::Lines
    }
}

pub fn printer(args: &RunArgs, items: &Items, sources: &[Source]) -> Printer {
    let format = if args.json {
        Format::Json
    } else {
        Format::Plain {
            sep: if args.null { 0 } else { b'\n' },
            tag: args.tag,
            empty_on_error: args.on_error == OnError::Empty,
        }
    };
    let show_progress = (args.progress || io::stderr().is_terminal()) && !args.no_progress;
    let printer = Printer::new(format, items.origins(), show_progress, args.max_item_size);
    if let Some(bar) = printer.progress() {
        input::count_in_background(sources.to_vec(), split_of(args), bar);
    }
    printer
}

/// The input as items, after checking every INPUT; says so when items come
/// from a terminal (a pasted command that lost its `\` would otherwise wait
/// silently).
pub fn items(args: &RunArgs) -> Result<(Items, Vec<Source>)> {
    let mut sources = input::sources(&args.inputs)?;
    if args.files && !args.inputs.is_empty() {
        // `find … -print0 | wpool map --files -0 K -`, as with xargs. (With
        // no INPUT at all, stdin is the one whole item.)
        for s in &mut sources {
            if matches!(s, Source::Stdin) {
                *s = Source::Names;
            }
        }
    }
    if sources.iter().any(|s| matches!(s, Source::Stdin | Source::Names)) && io::stdin().is_terminal() {
        let what = if args.files { "file names" } else { "items" };
        say(format_args!("wpool: reading {what} from the terminal; end with Ctrl-D"));
    }
    let items = Items::new(sources.clone(), split_of(args), args.max_item_size as usize).names_nul(args.null);
    Ok((items, sources))
}

/// How a run that printed its output ends: 128 + the signal after SIGINT,
/// SIGTERM or SIGHUP (whatever else went wrong after it, such as writing to
/// a terminal that hung up), an error for a pool failure, a failed write or
/// an input that could not be read (`after_read_error` says what was
/// printed), else [`Exit::Failed`] if an item failed.
pub fn finish(
    outcome: Result<(), Error>,
    mut printer: Printer,
    interrupts: &Interrupts,
    read_error: &Mutex<Option<String>>,
    after_read_error: &str,
    failed: bool,
) -> Result<Exit> {
    let finished = printer.finish();
    if let Some(sig) = interrupts.received() {
        // How far the output got, so that a user can pick up from there.
        let done = match printer.items() {
            0 => String::new(),
            n => format!("{n} items done, "),
        };
        match &finished {
            Ok(()) => say(format_args!("wpool: {}; {done}{} results written", signals::name(sig), printer.records())),
            Err(e) => say(format_args!("wpool: {}; {done}{e}", signals::name(sig))),
        }
        return Ok(Exit::Signal(sig));
    }
    outcome?;
    finished?;
    if let Some(e) = read_error.lock().unwrap().take() {
        anyhow::bail!("{e}; {after_read_error}");
    }
    Ok(if failed { Exit::Failed } else { Exit::Success })
}

/// A map kernel, or an error saying that a reducer belongs to `mapreduce`;
/// when it is not wasm but an INPUT is, a hint that the two were swapped.
pub fn map_kernel(path: &Path, inputs: &[std::path::PathBuf]) -> Result<Kernel> {
    let kernel = match Kernel::from_file(path) {
        Ok(kernel) => kernel,
        Err(e @ (Error::NotWasm { .. } | Error::KernelNotFound { .. })) => {
            match inputs.iter().find(|i| i.extension().is_some_and(|x| x == "wasm")) {
                Some(wasm) => anyhow::bail!(
                    "{e}; the kernel comes first: did you mean `wpool map {} {}`?",
                    wasm.display(),
                    path.display()
                ),
                None => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if kernel.is_reducer() {
        anyhow::bail!("{}: a reducer (world `reducer`): use it with `wpool mapreduce --reduce`", path.display());
    }
    warn_about_cache(&kernel);
    Ok(kernel)
}

/// Prints why a kernel's compiled code is not cached (the run goes on),
/// once per process: every kernel of a run shares the cache.
pub fn warn_about_cache(kernel: &Kernel) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(warning) = kernel.cache_warning() {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("wpool: warning: {warning}");
        }
    }
}

fn grants(args: &RunArgs) -> Result<Grants> {
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

/// A path made absolute, so that a replay from elsewhere finds the file.
fn absolute(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The options of a run that change what its items give, for the joblog
/// (`init`: `map`'s --init file; `jobs`: workers per pool, on which the
/// default memory cap depends). Files and inherited variables are recorded
/// by content hash too, so that `--resume` sees a changed one.
pub fn result_options(a: &RunArgs, init: Option<&Path>, jobs: usize) -> Result<serde_json::Value> {
    let split = if a.files {
        "files"
    } else if a.null {
        "nul"
    } else {
        "lines"
    };
    let file_sha = |path: Option<&Path>, flag: &str| -> Result<Option<String>> {
        path.map(|p| crate::joblog::file_sha256(p).with_context(|| format!("{flag} {}", p.display()))).transpose()
    };
    // `--env NAME` takes the value of this environment: its hash, not the
    // value (a joblog is no place for secrets).
    let inherited: Vec<String> = a
        .env
        .iter()
        .filter(|spec| !spec.contains('='))
        .map(|name| format!("{name}={}", std::env::var(name).unwrap_or_default()))
        .collect();
    Ok(serde_json::json!({
        "split": split,
        "timeout_ns": a.timeout.map(|t| t.as_nanos() as u64),
        "memory": a.memory.unwrap_or_else(|| wpool::Limits::default_memory(jobs)),
        "fuel": a.fuel,
        "max_item_size": a.max_item_size,
        "max_items_per_instance": a.max_items_per_instance,
        "isolate": a.isolate,
        "deterministic": a.deterministic,
        "seed": a.seed,
        "allow_clock": a.allow_clock,
        "allow_random": a.allow_random,
        "env": a.env,
        "env_inherited_sha256": (!inherited.is_empty()).then(|| crate::joblog::sha256_hex(inherited.join("\0").as_bytes())),
        "allow_dir": a.allow_dir,
        "data": a.data.as_deref().map(absolute),
        "data_sha256": file_sha(a.data.as_deref(), "--data")?,
        "init": init.map(absolute),
        "init_sha256": file_sha(init, "--init")?,
        "retries": a.retries,
    }))
}
