//! Multi-stage pipelines: items stream through several pools (validate →
//! transform → load), every stage working at the same time.
//!
//! Owns the plumbing between stages only: each stage is an ordinary
//! [`Pool`] driven by its own thread, fed through a bounded channel by the
//! stage before it, so a slow stage applies backpressure and no stage waits
//! for the previous one to finish everything. An item that fails in a stage
//! is reported once, with its input index and the stage, and does not enter
//! later stages.

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, ItemIndex, TaskError};
use crate::pool::Pool;

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
            return Err(Error::Config("a pipeline needs at least one stage".into()));
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
    /// `Err` is a pool failure in any stage.
    pub fn run<I>(&mut self, items: I, mut sink: impl FnMut(ItemIndex, PipelineResult) -> bool) -> Result<(), Error>
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: Send,
    {
        let items = items.into_iter();
        std::thread::scope(|scope| {
            let (first_tx, mut upstream) = bounded::<Passing>(BETWEEN_STAGES);
            scope.spawn(move || {
                for (i, item) in items.enumerate() {
                    if first_tx.send(Passing::Item(i as u64, item)).is_err() {
                        return;
                    }
                }
            });
            let mut handles = Vec::new();
            for (stage, pool) in self.stages.iter_mut().enumerate() {
                let (tx, rx) = bounded::<Passing>(BETWEEN_STAGES);
                let input = std::mem::replace(&mut upstream, rx);
                handles.push(scope.spawn(move || run_stage(stage, pool, input, tx)));
            }
            let mut stopped = false;
            for passing in upstream.iter() {
                let (index, result) = match passing {
                    Passing::Item(i, bytes) => (i, Ok(bytes)),
                    Passing::Failed(i, failure) => (i, Err(failure)),
                };
                if !sink(ItemIndex(index), result) {
                    stopped = true;
                    break;
                }
            }
            // Dropping the last receiver stops every stage in turn.
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

/// Drives one stage: feeds its pool the items that are still going (in
/// order), and passes results and earlier failures downstream in order.
fn run_stage(stage: usize, pool: &mut Pool, input: Receiver<Passing>, output: Sender<Passing>) -> Result<(), Error> {
    let (items_tx, items_rx) = bounded::<Vec<u8>>(BETWEEN_STAGES);
    // What comes out next, in input order: a result of the pool (for an item
    // that was sent to it) or a failure from upstream.
    let (order_tx, order_rx) = bounded::<Passing>(4 * BETWEEN_STAGES);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for passing in input.iter() {
                let item = match passing {
                    Passing::Item(i, bytes) => {
                        if order_tx.send(Passing::Item(i, Vec::new())).is_err() {
                            return;
                        }
                        bytes
                    }
                    failed => {
                        if order_tx.send(failed).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if items_tx.send(item).is_err() {
                    return;
                }
            }
        });
        let mut results = pool.imap_channel(items_rx);
        for next in order_rx.iter() {
            let out = match next {
                Passing::Failed(..) => next,
                Passing::Item(i, _) => match results.next() {
                    Some(Ok(Ok(bytes))) => Passing::Item(i, bytes),
                    Some(Ok(Err(mut error))) => {
                        error.index = ItemIndex(i);
                        Passing::Failed(i, StageFailure { stage, error })
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            };
            if output.send(out).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })
}
