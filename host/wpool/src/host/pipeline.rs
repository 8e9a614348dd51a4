//! Multi-stage pipelines: items stream through several pools (validate →
//! transform → load), every stage working at the same time.
//!
//! Owns the plumbing between stages only: each stage is an ordinary
//! [`Pool`] driven by its own thread, fed through a bounded channel by the
//! stage before it, so a slow stage applies backpressure and no stage waits
//! for the previous one to finish everything. An item that fails in a stage
//! is reported once, with its input index and the stage, and does not enter
//! later stages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use crate::error::{Error, ItemIndex, TaskError};
use crate::host::pool::Pool;

/// Items waiting between two stages, per stage: bounded so that a slow stage
/// holds back the ones before it.
const BETWEEN_STAGES: usize = 256;

/// An item that failed in a stage of a [`Pipeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct StageFailure {
    /// 0-based stage that failed it.
    pub stage: usize,
    /// The failure, with `index` the item's index in the pipeline's input.
    pub error: TaskError,
}

/// The outcome of one input item of a pipeline: the last stage's result, or
/// the failure of the stage that stopped it.
pub type PipelineResult = Result<Vec<u8>, StageFailure>;

/// Stages run at the same time, each a [`Pool`] with its own kernel and
/// worker count.
///
/// ```no_run
/// use wpool::{Kernel, Pipeline, Pool};
/// let validate = Pool::builder(Kernel::from_file("validate.wasm")?).workers(1).build()?;
/// let compute = Pool::builder(Kernel::from_file("primes.wasm")?).workers(2).build()?;
/// let mut pipeline = Pipeline::new(vec![validate, compute])?;
/// pipeline.run(["10", "oops", "100"].map(|s| s.as_bytes().to_vec()), |index, result| {
///     println!("{index}: {result:?}");
///     true
/// })?;
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<Pool>,
}

/// What travels between stages, in input order.
enum Passing {
    /// Still going: the item's index in the pipeline's input and its bytes.
    Item(u64, Vec<u8>),
    /// Stopped by an earlier stage: passed along, in order, untouched.
    Failed(u64, StageFailure),
}

impl Pipeline {
    /// A pipeline of these stages, in order (at least one).
    pub fn new(stages: Vec<Pool>) -> Result<Pipeline, Error> {
        if stages.is_empty() {
            return Err(Error::EmptyPipeline);
        }
        Ok(Pipeline { stages })
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Pool] {
        &self.stages
    }

    /// Runs every item through the stages and hands each outcome to `sink`,
    /// in input order, as soon as it is known. `sink` returns `false` to stop
    /// early (the rest is abandoned, as when an `imap` is dropped). The
    /// `Err` is a pool failure in any stage ([`Error::Cancelled`] when a
    /// stage's [`Pool::canceller`] fired). Items are pulled on a thread of
    /// their own, which a blocking source (stdin) may keep alive until it
    /// yields or ends.
    pub fn run<I>(&mut self, items: I, mut sink: impl FnMut(ItemIndex, PipelineResult) -> bool) -> Result<(), Error>
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: Send + 'static,
    {
        let items = items.into_iter();
        let (first_tx, mut upstream) = bounded::<Passing>(BETWEEN_STAGES);
        // Not scoped: a source blocked on a read must not keep `run` from
        // returning after a stop.
        std::thread::Builder::new()
            .name("wpool-pipeline-input".into())
            .spawn(move || {
                for (i, item) in items.enumerate() {
                    if first_tx.send(Passing::Item(i as u64, item)).is_err() {
                        return;
                    }
                }
            })
            .map_err(Error::Io)?;
        // Set when the run ends early (the sink stopped, a stage failed):
        // every stage thread polls it while it waits.
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (stage, pool) in self.stages.iter_mut().enumerate() {
                let (tx, rx) = bounded::<Passing>(BETWEEN_STAGES);
                let input = std::mem::replace(&mut upstream, rx);
                let stop = &stop;
                handles.push(scope.spawn(move || {
                    let r = run_stage(stage, pool, input, tx, stop);
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    r
                }));
            }
            let mut stopped = false;
            loop {
                let passing = match upstream.recv_timeout(POLL) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let (index, result) = match passing {
                    Passing::Item(i, bytes) => (i, Ok(bytes)),
                    Passing::Failed(i, failure) => (i, Err(failure)),
                };
                if !sink(ItemIndex(index), result) {
                    stopped = true;
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
            drop(upstream);
            let mut first_error = None;
            for h in handles {
                if let Err(e) = h.join().expect("a pipeline stage panicked") {
                    first_error.get_or_insert(e);
                }
            }
            match first_error {
                Some(Error::Cancelled) | None if stopped => Ok(()),
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }
}

/// How often a waiting stage thread looks at the stop flag and its pool's
/// cancellation.
const POLL: Duration = Duration::from_millis(50);

/// Drives one stage: feeds its pool the items that are still going (in
/// order), and passes results and earlier failures downstream in order.
fn run_stage(
    stage: usize,
    pool: &mut Pool,
    input: Receiver<Passing>,
    output: Sender<Passing>,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let (items_tx, items_rx) = bounded::<Vec<u8>>(BETWEEN_STAGES);
    // What comes out next, in input order: a result of the pool (for an item
    // that was sent to it) or a failure from upstream.
    let (order_tx, order_rx) = bounded::<Passing>(4 * BETWEEN_STAGES);
    let cancelled = pool.cancel_flag();
    let stopping = || stop.load(Ordering::SeqCst) || cancelled.load(Ordering::SeqCst);
    std::thread::scope(|scope| {
        scope.spawn(move || loop {
            let passing = match input.recv_timeout(POLL) {
                Ok(p) => p,
                Err(RecvTimeoutError::Timeout) if stopping() => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let item = match passing {
                Passing::Item(i, bytes) => Some((Passing::Item(i, Vec::new()), bytes)),
                failed => {
                    if !send_polling(&order_tx, failed, &stopping) {
                        return;
                    }
                    None
                }
            };
            if let Some((entry, bytes)) = item {
                if !send_polling(&order_tx, entry, &stopping) || !send_polling(&items_tx, bytes, &stopping) {
                    return;
                }
            }
        });
        let mut results = pool.imap_channel(items_rx);
        // Whether the stage ended because its input did (not a stop).
        let mut finished = false;
        let outcome = loop {
            let next = match order_rx.recv_timeout(POLL) {
                Ok(next) => next,
                Err(RecvTimeoutError::Timeout) if cancelled.load(Ordering::SeqCst) => break Err(Error::Cancelled),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break Ok(()),
                Err(RecvTimeoutError::Timeout) => continue,
                // The feeder is gone: input ended, or it saw a stop.
                Err(RecvTimeoutError::Disconnected) if cancelled.load(Ordering::SeqCst) => break Err(Error::Cancelled),
                Err(RecvTimeoutError::Disconnected) if stop.load(Ordering::SeqCst) => break Ok(()),
                Err(RecvTimeoutError::Disconnected) => {
                    finished = true;
                    break Ok(());
                }
            };
            let out = match next {
                Passing::Failed(..) => next,
                Passing::Item(i, _) => match results.next() {
                    Some(Ok(Ok(bytes))) => Passing::Item(i, bytes),
                    Some(Ok(Err(mut error))) => {
                        error.index = ItemIndex(i);
                        Passing::Failed(i, StageFailure { stage, error })
                    }
                    Some(Err(e)) => break Err(e),
                    None if cancelled.load(Ordering::SeqCst) => break Err(Error::Cancelled),
                    None if stop.load(Ordering::SeqCst) => break Ok(()),
                    None => {
                        finished = true;
                        break Ok(());
                    }
                },
            };
            if !send_polling(&output, out, &|| stop.load(Ordering::SeqCst)) {
                break Ok(());
            }
        };
        // Ended early: everyone stops (the feeder of this stage included).
        if !finished {
            stop.store(true, Ordering::SeqCst);
        }
        drop(order_rx);
        drop(results);
        outcome
    })
}

/// Sends unless `stopping` turns true while the channel is full; `false`
/// when the item was not sent.
fn send_polling<T>(tx: &Sender<T>, mut value: T, stopping: &dyn Fn() -> bool) -> bool {
    loop {
        match tx.send_timeout(value, POLL) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(v)) if !stopping() => value = v,
            Err(_) => return false,
        }
    }
}
