//! How many items of a chunk go into one call of the kernel's `map-batch`.
//!
//! Owns the sizing only: running a batch, and what a failed one means, is
//! [`super::runtime`]'s. A call costs a few hundred nanoseconds however
//! small the item (lowering, the call, lifting, post-return), which is the
//! whole cost of a tiny item; `map-batch` pays it once for many items. Worth
//! it only for items that are fast, and a batch must stay short: its results
//! are held until it ends, and it runs under one item's timeout and fuel.

use std::time::Duration;

/// Items at least this slow run alone: a call's cost is then under 1 %.
const WORTH_BATCHING: Duration = Duration::from_micros(50);

/// A batch holds its results back about this long at most (the outbox
/// holds results for [`super::outbox::HOLD_RESULTS`] anyway).
const BATCH_WORK: Duration = Duration::from_micros(500);

/// A batch still running after this long (sized for [`BATCH_WORK`], it is
/// 40 times late) is cut short and its items run alone: an item that is
/// slow, or never ends without a timeout, must not hold back the results
/// of the fast items that shared its batch.
pub(super) const BATCH_DEADLINE: Duration = Duration::from_millis(20);

/// A batch uses at most this fraction of the per-item timeout, so that a
/// batch of ordinary items does not run into it.
const TIMEOUT_SHARE: u32 = 10;

/// Most items in one batch.
pub(super) const MAX_ITEMS: usize = 1024;

/// Most input bytes in one batch: all of them, and their results, are in
/// the instance's linear memory at once.
const MAX_BYTES: usize = 256 << 10;

/// Single items that must succeed in a row, after batches kept failing,
/// before batches are tried again.
const PROBATION: u32 = 64;

/// The batch size, from the measured time per item and how batches went.
#[derive(Debug)]
pub(super) struct Batcher {
    /// Typical kernel time of one item, in nanoseconds (a moving average);
    /// `None` before the first item.
    per_item_ns: Option<f64>,
    /// Largest batch allowed now: halved by each failed batch, doubled by
    /// each good one. Below 2, items run alone until [`PROBATION`] of them
    /// succeeded in a row.
    cap: usize,
    good_singles: u32,
    timeout: Option<Duration>,
}

impl Batcher {
    pub(super) fn new(timeout: Option<Duration>) -> Batcher {
        Batcher { per_item_ns: None, cap: MAX_ITEMS, good_singles: 0, timeout }
    }

    /// How many of `items`, from the front, go into the next call: 1 runs
    /// the first alone with `map`. Items over `max_item` always run alone
    /// (to fail with `item_too_large`).
    pub(super) fn next(&self, items: &[&[u8]], max_item: usize) -> usize {
        let Some(per_item) = self.per_item_ns else { return 1 };
        if self.cap < 2 || per_item >= WORTH_BATCHING.as_nanos() as f64 {
            return 1;
        }
        let budget = match self.timeout {
            Some(t) => BATCH_WORK.min(t / TIMEOUT_SHARE),
            None => BATCH_WORK,
        };
        let by_time = (budget.as_nanos() as f64 / per_item.max(1.0)) as usize;
        let limit = by_time.min(self.cap).min(MAX_ITEMS).min(items.len());
        let mut bytes = 0;
        let mut n = 0;
        for item in &items[..limit] {
            if item.len() > max_item || bytes + item.len() > MAX_BYTES {
                break;
            }
            bytes += item.len();
            n += 1;
        }
        n.max(1)
    }

    /// Takes in that `n` items took `took` in the kernel.
    pub(super) fn measured(&mut self, took: Duration, n: usize) {
        let sample = took.as_nanos() as f64 / n.max(1) as f64;
        self.per_item_ns = Some(match self.per_item_ns {
            // A moving average that one outlier (the thread preempted
            // mid-item on a busy machine) moves by at most a third: items
            // that are really slower take a few samples to show, and a batch
            // of them meanwhile runs into the batch deadline, not past it.
            Some(avg) => avg + (sample.min(avg * 4.0) - avg) / 8.0,
            None => sample,
        });
    }

    /// A batch went through: allow bigger ones.
    pub(super) fn succeeded(&mut self) {
        self.cap = (self.cap * 2).min(MAX_ITEMS);
    }

    /// A batch failed and its items ran alone: allow only smaller ones.
    pub(super) fn failed(&mut self) {
        self.cap /= 2;
        self.good_singles = 0;
    }

    /// An item ran alone: `ok` if it did not fail in a way that would have
    /// failed a batch (a kernel error would not have).
    pub(super) fn single(&mut self, ok: bool) {
        if self.cap >= 2 {
            return;
        }
        if !ok {
            self.good_singles = 0;
            return;
        }
        self.good_singles += 1;
        if self.good_singles >= PROBATION {
            self.cap = 2;
            self.good_singles = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, len: usize) -> Vec<Vec<u8>> {
        vec![vec![b'x'; len]; n]
    }

    fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
        items.iter().map(|i| &i[..]).collect()
    }

    #[test]
    fn first_item_runs_alone_then_fast_items_batch() {
        let owned = items(5000, 8);
        let all = refs(&owned);
        let mut b = Batcher::new(None);
        assert_eq!(b.next(&all, 1 << 20), 1);
        b.measured(Duration::from_micros(1), 1);
        assert_eq!(b.next(&all, 1 << 20), 500, "500 µs of 1 µs items");
        for _ in 0..12 {
            b.measured(Duration::from_nanos(100), 1);
        }
        assert_eq!(b.next(&all, 1 << 20), MAX_ITEMS);
        assert_eq!(b.next(&all[..3], 1 << 20), 3, "never past the chunk");
    }

    #[test]
    fn slow_items_and_big_items_run_alone() {
        let owned = items(100, 8);
        let mut b = Batcher::new(None);
        b.measured(Duration::from_micros(80), 1);
        assert_eq!(b.next(&refs(&owned), 1 << 20), 1);

        let mut b = Batcher::new(None);
        b.measured(Duration::from_nanos(100), 1);
        let mut owned = items(10, 8);
        owned[3] = vec![b'x'; 100];
        assert_eq!(b.next(&refs(&owned), 50), 3, "stops before an oversized item");
        assert_eq!(b.next(&refs(&owned[3..]), 50), 1, "which runs alone");
        let owned = items(100, 100 << 10);
        assert_eq!(b.next(&refs(&owned), 1 << 20), 2, "256 KiB of input at most");
    }

    #[test]
    fn one_slow_sample_does_not_stop_batching() {
        let owned = items(5000, 8);
        let mut b = Batcher::new(None);
        b.measured(Duration::from_micros(1), 1);
        b.measured(Duration::from_millis(10), 1);
        assert!(b.next(&refs(&owned), 1 << 20) > 100, "a preempted item is not a slow kernel");
        for _ in 0..40 {
            b.measured(Duration::from_micros(200), 1);
        }
        assert_eq!(b.next(&refs(&owned), 1 << 20), 1, "items that stay slow run alone");
    }

    #[test]
    fn a_timeout_shortens_batches() {
        let owned = items(5000, 8);
        let mut b = Batcher::new(Some(Duration::from_millis(1)));
        b.measured(Duration::from_micros(1), 1);
        assert_eq!(b.next(&refs(&owned), 1 << 20), 100, "a tenth of the 1 ms timeout");
    }

    #[test]
    fn failures_shrink_batches_until_singles_prove_themselves() {
        let owned = items(5000, 8);
        let all = refs(&owned);
        let mut b = Batcher::new(None);
        b.measured(Duration::from_nanos(100), 1);
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.next(&all, 1 << 20), 1);
        for _ in 0..PROBATION - 1 {
            b.single(true);
        }
        b.single(false);
        assert_eq!(b.next(&all, 1 << 20), 1, "a failure restarts the probation");
        for _ in 0..PROBATION {
            b.single(true);
        }
        assert_eq!(b.next(&all, 1 << 20), 2);
        b.succeeded();
        b.succeeded();
        assert_eq!(b.next(&all, 1 << 20), 8);
    }
}
