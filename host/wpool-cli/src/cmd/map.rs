//! `wpool map KERNEL [INPUT]...`: the kernel over every item, results in
//! input (or completion) order.

use anyhow::{Context, Result};
use wpool::Error;

use super::driver::{finish, items, map_kernel, printer, report_end, Setup, PRINTED_SO_FAR};
use crate::exit::Exit;
use crate::flags::MapCmd;
use crate::input;
use crate::joblog::{Joblog, RunInfo};
use crate::signals::Interrupts;

pub fn run(cmd: MapCmd) -> Result<Exit> {
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
    let origins = items.origins();
    let joblog = match &cmd.joblog {
        Some(path) => Some(Joblog::start(
            path,
            RunInfo {
                command: shell_words::join(std::env::args()),
                kernel: &cmd.kernel,
                options: result_options(&cmd),
            },
        )?),
        None => None,
    };
    let mut hashes = joblog.as_ref().map(Joblog::input_hashes);

    // Input is read on its own thread so that results keep flowing while a
    // slow producer (a pipe, a terminal, a FIFO without a writer yet) has
    // nothing to say. Items travel in batches, each sent as soon as the next
    // read could wait.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("wpool-input".into())
        .spawn(move || {
            input::feed_batches(items, &tx, |item| {
                if let Some(h) = &mut hashes {
                    h.item(item);
                }
            })
        })
        .context("starting the input thread")?;

    let mut failed = false;
    let mut results = if cmd.unordered {
        Results::Unordered(pool.imap_unordered_batches(rx))
    } else {
        Results::Ordered(pool.imap_batches(rx), 0)
    };
    let outcome: Result<(), Error> = (|| {
        while let Some(r) = results.next() {
            let (index, result) = r?;
            failed |= result.is_err();
            if let Some(j) = &joblog {
                j.outcome(index, origins.lock().unwrap().describe(index), &result);
            }
            printer.item(index, result, !results.has_ready())?;
            if failed && args.fail_fast {
                break;
            }
        }
        Ok(())
    })();
    drop(results);
    report_end(&pool, args, "");
    drop(pool);
    let exit = finish(outcome, printer, &interrupts, &read_error, PRINTED_SO_FAR, failed);
    if let Some(j) = joblog {
        let code = exit.as_ref().map_or(i32::from(crate::exit::ERROR), |e| i32::from(e.code()));
        j.finish(code)?;
    }
    exit
}

/// The options of a `map` run that change what its items give, for the
/// joblog.
fn result_options(cmd: &MapCmd) -> serde_json::Value {
    let a = &cmd.run;
    let split = if a.files {
        "files"
    } else if a.null {
        "nul"
    } else {
        "lines"
    };
    serde_json::json!({
        "split": split,
        "timeout_ms": a.timeout.map(|t| t.as_millis() as u64),
        "memory": a.memory,
        "fuel": a.fuel,
        "max_item_size": a.max_item_size,
        "max_items_per_instance": a.max_items_per_instance,
        "isolate": a.isolate,
        "deterministic": a.deterministic,
        "seed": a.seed,
        "allow_clock": a.allow_clock,
        "allow_random": a.allow_random,
        "env": a.env,
        "allow_dir": a.allow_dir,
        "data": a.data,
        "init": cmd.init,
        "retries": a.retries,
    })
}

/// The results of a run with their item indices, in input or completion
/// order.
enum Results<'p> {
    /// In input order: the next result's index.
    Ordered(wpool::Imap<'p>, u64),
    Unordered(wpool::ImapUnordered<'p>),
}

impl Results<'_> {
    /// Whether the next result is there without waiting: when it is not,
    /// the output is flushed.
    fn has_ready(&self) -> bool {
        match self {
            Results::Ordered(it, _) => it.has_ready(),
            Results::Unordered(it) => it.has_ready(),
        }
    }
}

impl Iterator for Results<'_> {
    type Item = Result<(u64, wpool::ItemResult), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Results::Ordered(it, next) => {
                let r = it.next()?;
                let index = *next;
                *next += 1;
                Some(r.map(|result| (index, result)))
            }
            Results::Unordered(it) => Some(it.next()?.map(|(index, result)| (index.get(), result))),
        }
    }
}
