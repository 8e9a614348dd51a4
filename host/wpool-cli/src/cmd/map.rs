//! `wpool map KERNEL [INPUT]...`: the kernel over every item, results in
//! input (or completion) order.

use anyhow::{Context, Result};
use wpool::{Error, SharedBytes};

use super::driver::{finish, items, map_kernel, printer, report_end, result_options, Setup, PRINTED_SO_FAR};
use crate::exit::Exit;
use crate::flags::MapCmd;
use crate::input::{self, Keep};
use crate::joblog::{self, Joblog, Resume, RunInfo};
use crate::quarantine::Quarantine;
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
    let (joblog, resume) = match &args.joblog {
        Some(path) => {
            let mut info = RunInfo::new(&[&cmd.kernel], result_options(args, cmd.init.as_deref(), setup.jobs)?)?;
            // Read before this run adds itself.
            let resume = (cmd.resume || cmd.resume_failed)
                .then(|| Resume::load(path, &info.kernel_sha256, &info.options, cmd.resume_failed))
                .transpose()?;
            info.resumed_from = resume.as_ref().map(|r| r.base);
            (Some(Joblog::start(path, info)?), resume)
        }
        None => (None, None),
    };
    let hashes = joblog.as_ref().map(Joblog::input_hashes);
    let done = resume.as_ref().map(Resume::done);
    let (plan_tx, plan_rx) = crossbeam_channel::bounded::<Plan>(PLAN_AHEAD);

    // Input is read on its own thread so that results keep flowing while a
    // slow producer (a pipe, a terminal, a FIFO without a writer yet) has
    // nothing to say. Items travel in batches, each sent as soon as the next
    // read could wait.
    let (tx, rx) = crossbeam_channel::bounded::<wpool::Items>(4);
    let mut quarantine = match &cmd.quarantine {
        Some(path) => Some(Quarantine::create(path, if args.null { 0 } else { b'\n' }, args.files, setup.max_item())?),
        None => None,
    };
    let mut gate =
        InputGate { index: 0, hashes, done, plan: plan_tx, kept: quarantine.as_ref().and_then(Quarantine::kept) };
    std::thread::Builder::new()
        .name("wpool-input".into())
        .spawn(move || input::feed_batches(items, &tx, |item| gate.keep(item)))
        .context("starting the input thread")?;

    let mut failed = false;
    let mut quarantine_error = None;
    let mut results = match &resume {
        None if joblog.is_none() => Results::Batched {
            run: match cmd.unordered {
                true => Box::new(pool.imap_unordered_batches(rx)),
                false => Box::new(pool.imap_batches(rx)),
            },
            taken: Vec::new().into_iter(),
        },
        _ if cmd.unordered => Results::Unordered(pool.imap_unordered_batches(rx)),
        None => Results::Ordered(pool.imap_batches(rx), 0),
        Some(resume) => Results::Resumed {
            run: pool.imap_batches(rx),
            plan: plan_rx,
            next: None,
            resume,
            interrupts: &interrupts,
            stop: None,
        },
    };
    let mut nodes = Nodes::default();
    let outcome: Result<(), Error> = (|| {
        while let Some(r) = results.next() {
            // `info` is `None` for an outcome replayed from the joblog.
            let (index, result, info) = r?;
            failed |= result.is_err();
            if let (Some(j), Some(info)) = (&joblog, info) {
                let node = info.worker.and_then(|w| nodes.of(w, &results));
                j.outcome(index, origins.lock().unwrap().describe(index), &result, Some(joblog::Ran { info, node }));
            }
            if let Some(q) = &mut quarantine {
                if let Err(e) = q.outcome(index, || origins.lock().unwrap().describe(index), &result) {
                    quarantine_error = Some(e);
                    break;
                }
            }
            printer.item(index, result, !results.has_ready())?;
            if failed && args.fail_fast {
                break;
            }
        }
        Ok(())
    })();
    let stop = results.stop();
    drop(results);
    report_end(&pool, args, "");
    drop(pool);
    let exit = finish(outcome, printer, &interrupts, &read_error, PRINTED_SO_FAR, failed);
    let exit = match (stop.or(quarantine_error), exit) {
        (Some(stop), Ok(Exit::Success | Exit::Failed)) => Err(stop),
        (_, exit) => exit,
    };
    // Written even after a stop (signal, --fail-fast, error): the failures
    // so far are in it, beside FILE.
    let complete = matches!(exit, Ok(Exit::Success | Exit::Failed)) && !(failed && args.fail_fast);
    let exit = match (quarantine.map(|q| q.finish(complete)), exit) {
        (Some(Err(e)), Ok(_)) => Err(e),
        (_, exit) => exit,
    };
    joblog::end(joblog, exit)
}

/// The node of each worker slot, for the joblog: looked up again when a
/// slot is new, and every 4096 items (a slot respawned elsewhere under
/// Slurm keeps its number).
#[derive(Default)]
struct Nodes {
    by_slot: std::collections::HashMap<u32, String>,
    lookups: u64,
}

impl Nodes {
    fn of(&mut self, worker: wpool::WorkerId, results: &Results<'_, '_>) -> Option<String> {
        self.lookups += 1;
        if !self.by_slot.contains_key(&worker.0) || self.lookups % 4096 == 0 {
            self.by_slot = results.worker_info().into_iter().map(|w| (w.id.0, w.node)).collect();
        }
        self.by_slot.get(&worker.0).cloned()
    }
}

/// The input thread's look at each item before the pool sees it: hashed
/// for the joblog, held back when an earlier run finished it (--resume),
/// its bytes kept for --quarantine.
struct InputGate {
    index: u64,
    hashes: Option<joblog::InputHashes>,
    done: Option<joblog::Done>,
    plan: crossbeam_channel::Sender<Plan>,
    kept: Option<crate::quarantine::Kept>,
}

impl InputGate {
    /// Whether the item goes to the pool.
    fn keep(&mut self, item: &[u8]) -> Keep {
        let i = self.index;
        self.index += 1;
        if let Some(kept) = &self.kept {
            kept.lock().unwrap().insert(i, item.to_vec());
        }
        let Some(hashes) = &self.hashes else { return Keep::Send };
        let sha = joblog::input_sha256(item);
        if let Some(done) = &self.done {
            let (step, keep) = match done.get(&i) {
                Some((recorded, _)) if *recorded == sha => (Plan::Done(i), Keep::Skip),
                // Nothing after it is run: the output would mix.
                Some(_) => (Plan::Changed(i), Keep::Stop),
                None => (Plan::Run(i), Keep::Send),
            };
            // Bounded: the main loop takes the steps in order, and the
            // batch that holds a step's item goes out before this could
            // wait (see `PLAN_AHEAD`).
            if self.plan.send(step).is_err() || !matches!(keep, Keep::Send) {
                return keep;
            }
        }
        hashes.item(i, sha);
        Keep::Send
    }
}

/// How far the input thread of a resumed run reads ahead of the output.
/// Over the 1024 items of a batch, so that the main loop never waits for an
/// item held in a batch while the input thread waits for the main loop.
const PLAN_AHEAD: usize = 8192;

/// What the input thread did with each item of a resumed run, in input
/// order.
enum Plan {
    /// Finished by an earlier run: its outcome comes from the joblog.
    Done(u64),
    /// Sent to the pool.
    Run(u64),
    /// Its input is not what the joblog recorded for it.
    Changed(u64),
}

/// A run whose ready results can be taken several at a time.
trait Batches {
    fn next_batch(&mut self, out: &mut Vec<(wpool::ItemIndex, wpool::SharedResult)>, max: usize)
        -> Result<bool, Error>;
    fn has_ready(&self) -> bool;
    fn worker_info(&self) -> Vec<wpool::stats::WorkerInfo>;
}

/// Both kinds of run, alike.
macro_rules! batches {
    ($run:ty) => {
        impl Batches for $run {
            fn next_batch(
                &mut self,
                out: &mut Vec<(wpool::ItemIndex, wpool::SharedResult)>,
                max: usize,
            ) -> Result<bool, Error> {
                <$run>::next_batch(self, out, max)
            }

            fn has_ready(&self) -> bool {
                <$run>::has_ready(self)
            }

            fn worker_info(&self) -> Vec<wpool::stats::WorkerInfo> {
                <$run>::worker_info(self)
            }
        }
    };
}
batches!(wpool::Imap<'_>);
batches!(wpool::ImapUnordered<'_>);

/// The results of a run with their item indices, in input or completion
/// order, and whether each was replayed from the joblog.
enum Results<'p, 'r> {
    /// In input order: the next result's index.
    Ordered(wpool::Imap<'p>, u64),
    /// In input or completion order, every result ready taken in one call
    /// (one call per batch instead of per item), without the items' run
    /// information: for a run without a joblog.
    Batched {
        run: Box<dyn Batches + 'p>,
        /// The last batch taken, what is left of it.
        taken: std::vec::IntoIter<(wpool::ItemIndex, wpool::SharedResult)>,
    },
    Unordered(wpool::ImapUnordered<'p>),
    /// `--resume`: in input order, the items the pool runs between those
    /// replayed from the joblog, as the plan says.
    Resumed {
        run: wpool::Imap<'p>,
        plan: crossbeam_channel::Receiver<Plan>,
        /// The plan's next step, when `has_ready` looked at it.
        next: Option<Plan>,
        resume: &'r Resume,
        /// A stop signal ends the replaying too (the pool's runs end by
        /// themselves).
        interrupts: &'r Interrupts,
        /// Why the run stopped early, if it did.
        stop: Option<anyhow::Error>,
    },
}

impl Results<'_, '_> {
    /// Whether the next result is there without waiting: when it is not,
    /// the output is flushed.
    fn has_ready(&mut self) -> bool {
        match self {
            Results::Ordered(it, _) => it.has_ready(),
            Results::Batched { run, taken, .. } => taken.len() > 0 || run.has_ready(),
            Results::Unordered(it) => it.has_ready(),
            Results::Resumed { run, plan, next, .. } => {
                if next.is_none() {
                    *next = plan.try_recv().ok();
                }
                match next {
                    Some(Plan::Run(_)) => run.has_ready(),
                    Some(_) => true,
                    None => false,
                }
            }
        }
    }

    /// The pool's workers: where they run.
    fn worker_info(&self) -> Vec<wpool::stats::WorkerInfo> {
        match self {
            Results::Ordered(it, _) | Results::Resumed { run: it, .. } => it.worker_info(),
            Results::Batched { run, .. } => run.worker_info(),
            Results::Unordered(it) => it.worker_info(),
        }
    }

    /// Why a resumed run stopped before its end.
    fn stop(&mut self) -> Option<anyhow::Error> {
        match self {
            Results::Resumed { stop, .. } => stop.take(),
            _ => None,
        }
    }
}

impl Iterator for Results<'_, '_> {
    type Item = Result<(u64, wpool::SharedResult, Option<wpool::ItemInfo>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Results::Ordered(it, next) => {
                let r = it.next_shared()?;
                let index = *next;
                *next += 1;
                Some(r.map(|(result, info)| (index, result, Some(info))))
            }
            Results::Batched { run, taken } => {
                if let Some((index, result)) = taken.next() {
                    return Some(Ok((index.get(), result, None)));
                }
                // After the end (`Ok(false)`) or a failure the run gives
                // nothing more, and its caller asks no more.
                let mut batch = Vec::new();
                match run.next_batch(&mut batch, 4096) {
                    Ok(true) => {
                        *taken = batch.into_iter();
                        taken.next().map(|(index, result)| Ok((index.get(), result, None)))
                    }
                    Ok(false) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Results::Unordered(it) => {
                Some(it.next_shared()?.map(|(index, result, info)| (index.get(), result, Some(info))))
            }
            Results::Resumed { run, plan, next, resume, interrupts, stop } => {
                if interrupts.received().is_some() {
                    return None;
                }
                let step = match next.take() {
                    Some(step) => step,
                    None => plan.recv().ok()?,
                };
                match step {
                    Plan::Done(index) => match resume.replay(index) {
                        Ok(result) => Some(Ok((index, result.map(SharedBytes::from).map_err(Box::new), None))),
                        Err(e) => {
                            *stop = Some(e.context(format!("--resume: item {index}")));
                            None
                        }
                    },
                    Plan::Run(index) => Some(run.next_shared()?.map(|(result, info)| {
                        // The pool numbers only the items it runs.
                        let result = result.map_err(|mut e| {
                            e.index = wpool::ItemIndex(index);
                            e
                        });
                        (index, result, Some(info))
                    })),
                    Plan::Changed(index) => {
                        *stop = Some(anyhow::anyhow!(
                            "--resume: item {index} is not the item the joblog recorded (its SHA-256 differs): \
                             the input changed since; nothing after it was run"
                        ));
                        None
                    }
                }
            }
        }
    }
}
