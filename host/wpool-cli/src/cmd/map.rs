//! `wpool map KERNEL [INPUT]...`: the kernel over every item, results in
//! input (or completion) order.

use anyhow::{Context, Result};
use wpool::Error;

use super::driver::{finish, items, map_kernel, printer, report_end, Setup, PRINTED_SO_FAR};
use crate::exit::Exit;
use crate::flags::MapCmd;
use crate::input;
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

    // Input is read on its own thread so that results keep flowing while a
    // slow producer (a pipe, a terminal, a FIFO without a writer yet) has
    // nothing to say. Items travel in batches, each sent as soon as the next
    // read could wait.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("wpool-input".into())
        .spawn(move || input::feed_batches(items, &tx))
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
    finish(outcome, printer, &interrupts, &read_error, PRINTED_SO_FAR, failed)
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
