//! Chunk sizing: how many items go in one chunk, how many chunks a worker
//! holds, and how far ahead of the caller input is read.
//!
//! Pure arithmetic over the configured chunksize, the number of workers and
//! the measured time per item. It must not know about processes, channels
//! or the items themselves.

use std::time::Duration;

/// Chunks a worker holds at least: one running, one queued behind it so the
/// worker never waits for the host between chunks.
pub(super) const DEPTH: usize = 2;
/// Chunks a worker may hold when they are small and fast (see [`Sizer::depth`])...
pub(super) const MAX_DEPTH: usize = 256;
/// ...and items, beyond `DEPTH` chunks (all of them are retried alone when
/// their worker dies).
pub(super) const MAX_IN_FLIGHT_ITEMS: usize = 256;
/// Largest automatic chunk. A trade: each chunk costs a round trip to the
/// worker, and the items in flight when a worker dies are retried alone,
/// one round trip each. Measured with tiny items (2 M lines through
/// `echo`, 2 workers, one worker SIGKILLed): 1024 costs 0.04–0.08 s per
/// death, 2048 0.12–0.22 s; 2048 gives Python's 1 M noop items
/// 6.1–6.5 M/s against 5.1–5.4 M/s (fewer frames, a third fewer context
/// switches). Worker deaths are rare (traps, timeouts and memory limits
/// end an item, not its worker).
pub(super) const MAX_AUTO_CHUNK: usize = 2048;
/// Automatic chunks aim at about this much work each.
pub(super) const AUTO_CHUNK_TARGET: Duration = Duration::from_millis(2);
/// The ordered window is never narrower than this many items.
pub(super) const MIN_WINDOW: usize = 256;
/// Bytes of items in flight plus results waiting for their turn, above which
/// no more input is pulled.
pub(super) const MAX_BUFFERED_BYTES: usize = 256 << 20;

/// Chunk sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunksize {
    /// Adapt to the measured per-item time (start at 1 for a fast first result).
    Auto,
    /// Exactly this many items per chunk.
    Fixed(usize),
}

/// The sizes of one run, adapting to the time items take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizer {
    chunksize: Chunksize,
    workers: usize,
    /// A moving average of the kernel time per item; `None` before any
    /// result arrived.
    per_item: Option<Duration>,
}

impl Sizer {
    pub(super) fn new(chunksize: Chunksize, workers: usize) -> Sizer {
        Sizer { chunksize, workers, per_item: None }
    }

    /// Takes in that `items` results cost `busy` of kernel time. The
    /// worker's own measure: results of fast items arrive in batches, so
    /// arrival times say little.
    pub(super) fn measure(&mut self, busy: Duration, items: usize) {
        if items == 0 {
            return;
        }
        let t = busy / items as u32;
        self.per_item = Some(match self.per_item {
            None => t,
            Some(old) => (old * 3 + t) / 4,
        });
    }

    /// Items in the next chunk: 1 until a time is measured (a fast first
    /// result), then about `AUTO_CHUNK_TARGET` of work.
    pub(super) fn chunk_limit(&self) -> usize {
        match self.chunksize {
            Chunksize::Fixed(n) => n,
            Chunksize::Auto => match self.per_item {
                None => 1,
                Some(t) if t.is_zero() => MAX_AUTO_CHUNK,
                Some(t) => ((AUTO_CHUNK_TARGET.as_nanos() / t.as_nanos().max(1)) as usize).clamp(1, MAX_AUTO_CHUNK),
            },
        }
    }

    /// Chunks a worker may hold: `DEPTH`, or more when chunks take less than
    /// the automatic target, so that a worker holds about two targets' worth
    /// of work (with `--chunksize 1` and microsecond items, many chunks then
    /// travel in one write, and the worker never waits on the host).
    pub(super) fn depth(&self) -> usize {
        let Some(per_item) = self.per_item else { return DEPTH };
        let chunk = self.chunk_limit().max(1);
        let by_time = (2 * AUTO_CHUNK_TARGET.as_nanos() / (per_item.as_nanos().max(1) * chunk as u128)) as usize;
        // Bounded in items too: host memory follows the items in flight.
        by_time.min(MAX_IN_FLIGHT_ITEMS / chunk).clamp(DEPTH, MAX_DEPTH)
    }

    /// How far ahead of the oldest unreturned item input may be pulled.
    pub(super) fn window(&self) -> u64 {
        let per_worker = self.depth() * self.chunk_limit().max(1);
        (4 * self.workers * per_worker).max(MIN_WINDOW) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(chunksize: Chunksize, workers: usize, per_item: Duration) -> Sizer {
        let mut s = Sizer::new(chunksize, workers);
        s.measure(per_item * 10, 10);
        s
    }

    #[test]
    fn auto_starts_with_one_item_and_the_minimum_depth() {
        let s = Sizer::new(Chunksize::Auto, 4);
        assert_eq!(s.chunk_limit(), 1);
        assert_eq!(s.depth(), DEPTH);
        assert_eq!(s.window(), MIN_WINDOW as u64);
    }

    #[test]
    fn auto_chunks_grow_with_fast_items() {
        let slow = measured(Chunksize::Auto, 4, Duration::from_millis(5));
        let fast = measured(Chunksize::Auto, 4, Duration::from_micros(20));
        assert_eq!(slow.chunk_limit(), 1);
        assert_eq!(fast.chunk_limit(), 100, "2 ms of 20 µs items");
    }

    #[test]
    fn auto_chunks_are_bounded() {
        let instant = measured(Chunksize::Auto, 4, Duration::ZERO);
        assert_eq!(instant.chunk_limit(), MAX_AUTO_CHUNK);
        let tiny = measured(Chunksize::Auto, 4, Duration::from_nanos(1));
        assert_eq!(tiny.chunk_limit(), MAX_AUTO_CHUNK);
    }

    #[test]
    fn fixed_chunksize_is_kept_whatever_the_time() {
        let s = measured(Chunksize::Fixed(7), 2, Duration::from_nanos(1));
        assert_eq!(s.chunk_limit(), 7);
    }

    #[test]
    fn depth_grows_for_small_chunks_but_is_bounded_in_items() {
        // 1 µs items one by one: 4000 chunks of 2 ms targets, cut to 256 items.
        let s = measured(Chunksize::Fixed(1), 2, Duration::from_micros(1));
        assert_eq!(s.depth(), MAX_IN_FLIGHT_ITEMS);
        // Chunks of 16 fast items: at most 256 items in flight per worker.
        let s = measured(Chunksize::Fixed(16), 2, Duration::from_micros(1));
        assert_eq!(s.depth(), MAX_IN_FLIGHT_ITEMS / 16);
        // Never below DEPTH, even for slow or huge chunks.
        let s = measured(Chunksize::Fixed(1000), 2, Duration::from_millis(1));
        assert_eq!(s.depth(), DEPTH);
        assert!(measured(Chunksize::Fixed(1), 2, Duration::ZERO).depth() <= MAX_DEPTH);
    }

    #[test]
    fn window_covers_every_workers_share_and_at_least_the_minimum() {
        let s = measured(Chunksize::Fixed(100), 8, Duration::from_millis(1));
        assert_eq!(s.window(), 4 * 8 * (DEPTH * 100) as u64);
        let s = measured(Chunksize::Fixed(1), 1, Duration::from_millis(1));
        assert_eq!(s.window(), MIN_WINDOW as u64);
    }

    #[test]
    fn measure_is_a_moving_average_and_ignores_empty_batches() {
        let mut s = Sizer::new(Chunksize::Auto, 1);
        s.measure(Duration::from_millis(1), 0);
        assert_eq!(s.per_item, None);
        s.measure(Duration::from_micros(400), 4);
        assert_eq!(s.per_item, Some(Duration::from_micros(100)));
        s.measure(Duration::from_micros(500), 1);
        assert_eq!(s.per_item, Some(Duration::from_micros(200)));
    }
}
