//! Running kernels: `map`, `pipeline` and `mapreduce` from flags to exit
//! status.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use wpool::{DirGrant, Error, Grants, Kernel, Limits, Pool};

use crate::flags::{MapCmd, MapReduceCmd, OnError, PipelineCmd, RunArgs};
use crate::input::{self, Items, Source, Split};
use crate::output::{Format, Printer};
use crate::say;
use crate::signals::{self, Interrupts};

/// Exit status: every item succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: at least one item failed.
pub const EXIT_ITEMS_FAILED: u8 = 1;

/// Limits, grants and the other pool settings shared by `map` and every
/// stage of `pipeline`.
struct Setup {
    limits: Limits,
    grants: Grants,
    /// Workers per pool unless said otherwise (-j, Slurm tasks, cores).
    jobs: usize,
    /// Under `--slurm`: the allocation.
    slurm: Option<wpool::Slurm>,
}

impl Setup {
    fn new(args: &RunArgs) -> Result<Setup> {
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
        let slurm = if args.slurm { Some(wpool::Slurm::from_env()?) } else { None };
        if args.listen.is_some() && args.launcher.is_none() && slurm.is_none() {
            anyhow::bail!("--listen: only workers started through --launcher or --slurm connect back");
        }
        let jobs = args.jobs.or(slurm.as_ref().map(|s| s.tasks)).unwrap_or_else(num_cpus::get);
        Ok(Setup { limits, grants, jobs, slurm })
    }

    /// A pool of `workers`, one of several alive at once that start
    /// `all_workers` in all (under --slurm they share the allocation).
    fn builder(&self, kernel: Kernel, args: &RunArgs, workers: usize, all_workers: usize) -> wpool::PoolBuilder {
        let mut builder = Pool::builder(kernel)
            .workers(workers)
            .chunksize(args.chunksize)
            .retries(args.retries)
            .limits(self.limits.clone())
            .grants(self.grants.clone())
            .require_sandbox(args.require_sandbox);
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
    fn check_one_port(&self, args: &RunArgs, what: &str) -> Result<()> {
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
    fn start(&self, builder: wpool::PoolBuilder, args: &RunArgs, label: &str) -> Result<Pool> {
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
fn report_end(pool: &Pool, args: &RunArgs, label: &str) {
    if args.verbose {
        let s = pool.stats();
        say(format_args!(
            "wpool:{label} {} worker processes started, {} died, {} items retried, {} connections refused",
            s.spawned, s.worker_deaths, s.retried_items, s.rejected_connections
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

fn printer(args: &RunArgs, items: &Items, sources: &[Source]) -> Printer {
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
        count_in_background(sources.to_vec(), split_of(args), bar);
    }
    printer
}

/// The input as items, after checking every INPUT; says so when items come
/// from a terminal (a pasted command that lost its `\` would otherwise wait
/// silently).
fn items(args: &RunArgs) -> Result<(Items, Vec<Source>)> {
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

pub fn pipeline(cmd: PipelineCmd) -> Result<u8> {
    let interrupts = Interrupts::install()?;
    let args = &cmd.run;
    let jobs: Vec<usize> = match &cmd.jobs_per_stage {
        Some(list) => {
            let jobs = list
                .split(',')
                .map(|n| {
                    crate::units::parse_jobs(n.trim()).map_err(|e| anyhow::anyhow!("--jobs-per-stage {list}: {e}"))
                })
                .collect::<Result<Vec<usize>>>()?;
            if jobs.len() != cmd.stages.len() {
                anyhow::bail!("--jobs-per-stage {list}: {} numbers for {} stages", jobs.len(), cmd.stages.len());
            }
            jobs
        }
        None => Vec::new(),
    };
    let kernels = cmd.stages.iter().map(|k| map_kernel(k, &args.inputs)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = kernels.iter().map(|k| k.name().to_string()).collect();
    let setup = Setup::new(args)?;
    let (items, sources) = items(args)?;
    setup.check_one_port(args, "a pipeline")?;
    let jobs: Vec<usize> = (0..kernels.len()).map(|i| jobs.get(i).copied().unwrap_or(setup.jobs)).collect();
    let all: usize = jobs.iter().sum();
    let mut pools = Vec::new();
    for (i, (kernel, workers)) in kernels.into_iter().zip(jobs).enumerate() {
        pools.push(setup.start(setup.builder(kernel, args, workers, all), args, &format!(" stage {}:", i + 1))?);
    }
    pools.iter().for_each(|p| interrupts.watch(p));
    let read_error = items.error();
    let mut printer = printer(args, &items, &sources);
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
    let outcome = outcome.and(write_error.map_or(Ok(()), |e| Err(Error::Io(e))));
    let finished = printer.finish();
    for (i, pool) in pipeline.stages().iter().enumerate() {
        report_end(pool, args, &format!(" stage {}:", i + 1));
    }
    drop(pipeline);
    exit_code(
        outcome.and(finished.map_err(Error::Io)),
        &interrupts,
        &read_error,
        "results up to that point were printed",
        failed,
    )
}

/// How a run that printed its output ends: 128 + the signal after SIGINT,
/// SIGTERM or SIGHUP (whatever else went wrong after it, such as writing to
/// a terminal that hung up), an error for a pool failure or an input that
/// could not be read (`after_read_error` says what was printed), else 1 if
/// an item failed and 0 if none did.
fn exit_code(
    outcome: Result<(), Error>,
    interrupts: &Interrupts,
    read_error: &Mutex<Option<String>>,
    after_read_error: &str,
    failed: bool,
) -> Result<u8> {
    if let Some(sig) = interrupts.received() {
        say(format_args!("wpool: {}", signals::name(sig)));
        return Ok(128 + sig as u8);
    }
    outcome?;
    if let Some(e) = read_error.lock().unwrap().take() {
        anyhow::bail!("{e}; {after_read_error}");
    }
    Ok(if failed { EXIT_ITEMS_FAILED } else { EXIT_OK })
}

/// A map kernel, or an error saying that a reducer belongs to `mapreduce`;
/// when it is not wasm but an INPUT is, a hint that the two were swapped.
fn map_kernel(path: &Path, inputs: &[std::path::PathBuf]) -> Result<Kernel> {
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
    Ok(kernel)
}

pub fn mapreduce(cmd: MapReduceCmd) -> Result<u8> {
    let interrupts = Interrupts::install()?;
    let args = &cmd.run;
    let map = map_kernel(&cmd.map, &[])?;
    let reduce = Kernel::from_file(&cmd.reduce)?;
    if !reduce.is_reducer() {
        anyhow::bail!(
            "{}: not a reducer: --reduce needs a kernel of world `wpool:kernel/reducer`",
            cmd.reduce.display()
        );
    }
    let setup = Setup::new(args)?;
    let (items, sources) = items(args)?;
    setup.check_one_port(args, "mapreduce")?;
    let all = 2 * setup.jobs;
    let map = setup.start(setup.builder(map, args, setup.jobs, all), args, " map:")?;
    let reduce = setup.start(setup.builder(reduce, args, setup.jobs, all), args, " reduce:")?;
    interrupts.watch(&map);
    interrupts.watch(&reduce);
    let read_error = items.error();
    let mut printer = printer(args, &items, &sources);
    let mut mr = wpool::MapReduce::new(map, reduce)?;
    let mut failed = false;
    let mut write_error = None;
    let outcome = mr.run(items, |index, result| {
        let Err(e) = result else {
            printer.tick();
            return true;
        };
        failed = true;
        if let Err(err) = printer.item(index.get(), Err(e), false) {
            write_error.get_or_insert(err);
            return false;
        }
        !args.fail_fast
    });
    let outcome = match (outcome, write_error) {
        (_, Some(e)) => Err(Error::Io(e)),
        // After --fail-fast stopped the run nothing was reduced.
        (Ok(keys), None) => keys.into_iter().try_for_each(|(key, result)| {
            failed |= result.is_err();
            printer.key(&key, result).map_err(Error::Io)
        }),
        (Err(e), None) => Err(e),
    };
    let finished = printer.finish();
    exit_code(outcome.and(finished.map_err(Error::Io)), &interrupts, &read_error, "nothing after it was read", failed)
}

pub fn map(cmd: MapCmd) -> Result<u8> {
    let interrupts = Interrupts::install()?;
    let args = &cmd.run;
    let kernel = map_kernel(&cmd.kernel, &args.inputs)?;
    let setup = Setup::new(args)?;
    let (items, sources) = items(args)?;
    let mut builder = setup.builder(kernel, args, setup.jobs, setup.jobs);
    if let Some(file) = &cmd.init {
        let config = std::fs::read(file).with_context(|| format!("--init {}", file.display()))?;
        builder = builder.init(config);
    }
    let mut pool = setup.start(builder, args, "")?;
    interrupts.watch(&pool);
    let read_error = items.error();
    let mut printer = printer(args, &items, &sources);

    // Input is read on its own thread so that results keep flowing while a
    // slow producer (a pipe, a terminal, a FIFO without a writer yet) has
    // nothing to say. Items travel in batches, each sent as soon as the next
    // read could wait.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("wpool-input".into())
        .spawn(move || feed_batches(items, &tx))
        .context("starting the input thread")?;

    let mut failed = false;
    let outcome: Result<(), Error> = (|| {
        if cmd.unordered {
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
    let finished = printer.finish();
    report_end(&pool, args, "");
    drop(pool);
    exit_code(
        outcome.and(finished.map_err(Error::Io)),
        &interrupts,
        &read_error,
        "results up to that point were printed",
        failed,
    )
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

/// Sets the progress bar's total once the items of the inputs are counted,
/// on a thread of its own so that work starts at once. Only regular files
/// are counted: reading a pipe, a FIFO or a terminal here would consume
/// (or wait for) the very items the run needs; the bar then shows items
/// done and their rate, without a total.
fn count_in_background(sources: Vec<Source>, split: Split, bar: indicatif::ProgressBar) {
    let _ = std::thread::Builder::new().name("wpool-count".into()).spawn(move || {
        if let Some(total) = count_items(&sources, split) {
            crate::output::set_total(&bar, total);
        }
    });
}

/// Total items of the inputs, when every one is a regular file.
fn count_items(sources: &[Source], split: Split) -> Option<u64> {
    if !sources.iter().all(Source::is_regular_file) {
        return None;
    }
    let mut total = 0u64;
    for s in sources {
        let Source::File(p) = s else { return None };
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
