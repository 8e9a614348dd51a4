//! Multi-stage pipelines: items stream through several pools (validate →
//! transform → load), every stage working at the same time.
//!
//! Owns the plumbing between stages only: each stage is an ordinary
//! [`Pool`] driven by its own thread, fed through a bounded channel by the
//! stage before it, so a slow stage applies backpressure and no stage waits
//! for the previous one to finish everything. An item that fails in a stage
//! is reported once, with its input index and the stage, and does not enter
//! later stages.

use crossbeam_channel::{bounded, select_biased, Receiver, Sender};

use crate::error::{Error, ItemIndex, TaskError};
use crate::host::pool::Pool;
use crate::host::stop::StopSignal;

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
/// use wpool::pipeline::Pipeline;
/// use wpool::{Kernel, Pool};
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
        // Fired when the run ends early (the sink stopped, a stage failed):
        // every waiting thread selects on it.
        let stop = StopSignal::new();
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (stage, pool) in self.stages.iter_mut().enumerate() {
                let (tx, rx) = bounded::<Passing>(BETWEEN_STAGES);
                let input = std::mem::replace(&mut upstream, rx);
                let stop = &stop;
                handles.push(scope.spawn(move || {
                    let r = run_stage(stage, pool, input, tx, stop);
                    if r.is_err() {
                        stop.fire();
                    }
                    r
                }));
            }
            let mut stopped = false;
            loop {
                // Results that are there are handed over before a stop.
                let passing = select_biased! {
                    recv(upstream) -> p => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    recv(stop.receiver()) -> _ => break,
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
            stop.fire();
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
/// Every wait also selects on `stop` and on the pool's cancellation, so
/// either ends the stage at once.
fn run_stage(
    stage: usize,
    pool: &mut Pool,
    input: Receiver<Passing>,
    output: Sender<Passing>,
    stop: &StopSignal,
) -> Result<(), Error> {
    let (items_tx, items_rx) = bounded::<Vec<u8>>(BETWEEN_STAGES);
    // What comes out next, in input order: a result of the pool (for an item
    // that was sent to it) or a failure from upstream.
    let (order_tx, order_rx) = bounded::<Passing>(4 * BETWEEN_STAGES);
    let cancelled = pool.cancel_signal();
    std::thread::scope(|scope| {
        let feeder_cancelled = cancelled.clone();
        scope.spawn(move || loop {
            let passing = select_biased! {
                recv(input) -> p => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                recv(stop.receiver()) -> _ => return,
                recv(feeder_cancelled.receiver()) -> _ => return,
            };
            let sent = match passing {
                Passing::Item(i, bytes) => {
                    send_unless(&order_tx, Passing::Item(i, Vec::new()), stop, Some(&feeder_cancelled))
                        && send_unless(&items_tx, bytes, stop, Some(&feeder_cancelled))
                }
                failed => send_unless(&order_tx, failed, stop, Some(&feeder_cancelled)),
            };
            if !sent {
                return;
            }
        });
        let mut results = pool.imap_channel(items_rx);
        // Whether the stage ended because its input did (not a stop).
        let mut finished = false;
        let outcome = loop {
            let next = select_biased! {
                recv(order_rx) -> next => match next {
                    Ok(next) => next,
                    // The feeder is gone: input ended, or it saw a stop.
                    Err(_) if cancelled.is_fired() => break Err(Error::Cancelled),
                    Err(_) if stop.is_fired() => break Ok(()),
                    Err(_) => {
                        finished = true;
                        break Ok(());
                    }
                },
                recv(cancelled.receiver()) -> _ => break Err(Error::Cancelled),
                recv(stop.receiver()) -> _ => break Ok(()),
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
                    None if cancelled.is_fired() => break Err(Error::Cancelled),
                    None if stop.is_fired() => break Ok(()),
                    None => {
                        finished = true;
                        break Ok(());
                    }
                },
            };
            if !send_unless(&output, out, stop, None) {
                break Ok(());
            }
        };
        // Ended early: everyone stops (the feeder of this stage included).
        if !finished {
            stop.fire();
        }
        drop(order_rx);
        drop(results);
        outcome
    })
}

/// Sends, unless `stop` or `cancelled` fires while the channel is full (or
/// the receiver is gone); `false` when the value was not sent.
fn send_unless<T>(tx: &Sender<T>, value: T, stop: &StopSignal, cancelled: Option<&StopSignal>) -> bool {
    let never = crossbeam_channel::never();
    let cancelled = cancelled.map_or(&never, StopSignal::receiver);
    // Biased: with room in the channel the value goes, whatever fired.
    select_biased! {
        send(tx, value) -> sent => sent.is_ok(),
        recv(stop.receiver()) -> _ => false,
        recv(cancelled) -> _ => false,
    }
}
