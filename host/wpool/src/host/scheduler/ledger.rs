//! The ledger: which items are in flight in which chunk, how often each was
//! started, and what becomes of a dead worker's unanswered items (failed
//! as that worker's fault, or retried alone).
//!
//! Pure bookkeeping, testable without processes: it must not send, kill or
//! spawn anything, nor know which worker holds a chunk (the slots do), nor
//! word why a worker died (the scheduler does, with the blamed items it
//! gets back).

use std::collections::{HashMap, VecDeque};

use super::input::Payload;
use super::{task_error, SharedResult};
use crate::error::{TaskError, TaskErrorKind, WorkerId};
use crate::shared::SharedBytes;
use crate::wire::{WireError, WireKind};

/// An item on its way to a worker, or back in the queue for another try.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) index: u64,
    pub(super) data: Payload,
    attempts: u32,
    /// Run alone: it was in flight when a worker died.
    isolate: bool,
}

impl Pending {
    /// A fresh input item.
    pub(super) fn new(index: u64, data: Payload) -> Pending {
        Pending { index, data, attempts: 0, isolate: false }
    }
}

#[derive(Debug)]
struct Chunk {
    items: Vec<Pending>,
    /// Results received so far, for the first items, in order.
    received: usize,
}

/// The results a worker sent for part of a chunk.
#[derive(Debug)]
pub(super) struct Answer {
    /// Each answered item: index, result, attempts (this one included).
    pub(super) results: Vec<(u64, SharedResult, u32)>,
    /// The chunk is fully answered and left the ledger.
    pub(super) complete: bool,
}

/// An item failed because the worker died while running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Blamed {
    pub(super) index: u64,
    pub(super) attempts: u32,
}

/// What became of a dead worker's unanswered items.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Requeued {
    /// Failed: each was the worker's only unanswered item.
    pub(super) blamed: Vec<Blamed>,
    /// How many went back into the queue, to be run alone.
    pub(super) retried: usize,
}

/// Chunks in flight and items waiting to be retried. Chunk ids are unique
/// over the life of the pool, across runs.
#[derive(Debug)]
pub(super) struct Ledger {
    retries: u32,
    chunks: HashMap<u64, Chunk>,
    next_chunk: u64,
    /// Items to run again, by index, before any fresh input.
    retry: VecDeque<Pending>,
    /// Bytes of the items in flight.
    bytes: usize,
}

impl Ledger {
    /// A ledger that retries an item whose worker died under it alone up to
    /// `retries` times.
    pub(super) fn new(retries: u32) -> Ledger {
        Ledger { retries, chunks: HashMap::new(), next_chunk: 1, retry: VecDeque::new(), bytes: 0 }
    }

    /// Nothing in flight and nothing to retry.
    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.retry.is_empty()
    }

    /// Bytes of the items in flight.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets every chunk and retry (the run was abandoned).
    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.retry.clear();
        self.bytes = 0;
    }

    /// The next retry must run alone, on a worker holding nothing else.
    pub(super) fn needs_idle_worker(&self) -> bool {
        self.retry.front().is_some_and(|p| p.isolate)
    }

    /// The next chunk of retries, with whether it must run alone: one item
    /// to be isolated, or up to `limit` items and about `max_bytes`.
    pub(super) fn take_retries(&mut self, limit: usize, max_bytes: usize) -> Option<(Vec<Pending>, bool)> {
        let first = self.retry.pop_front()?;
        let alone = first.isolate;
        let mut bytes = first.data.len();
        let mut items = vec![first];
        while !alone && items.len() < limit && bytes < max_bytes {
            match self.retry.front() {
                Some(p) if !p.isolate => {
                    let p = self.retry.pop_front().expect("front exists");
                    bytes += p.data.len();
                    items.push(p);
                }
                _ => break,
            }
        }
        Some((items, alone))
    }

    /// Records a chunk sent to a worker; returns its id and its items.
    pub(super) fn open(&mut self, items: Vec<Pending>) -> (u64, &[Pending]) {
        let id = self.next_chunk;
        self.next_chunk += 1;
        self.bytes += items.iter().map(|p| p.data.len()).sum::<usize>();
        let chunk = self.chunks.entry(id).or_insert(Chunk { items, received: 0 });
        (id, &chunk.items)
    }

    /// Takes back chunk `id`, which its worker gave back unrun: its items
    /// go first in the queue, their attempts unchanged (none of them ran).
    /// Fails, changing nothing, unless the chunk is in flight and nothing
    /// of it was answered.
    pub(super) fn reclaim(&mut self, id: u64) -> Result<(), String> {
        match self.chunks.get(&id) {
            Some(c) if c.received == 0 => {}
            Some(_) => return Err(format!("chunk {id} given back after some of its results")),
            None => return Err(format!("chunk {id} given back, which is not in flight")),
        }
        let chunk = self.chunks.remove(&id).expect("checked above");
        // Counted again in `bytes` when they are sent.
        self.bytes -= chunk.items.iter().map(|p| p.data.len()).sum::<usize>().min(self.bytes);
        for p in chunk.items.into_iter().rev() {
            self.retry.push_front(p);
        }
        Ok(())
    }

    /// Items of chunk `id` not answered yet, if it is in flight.
    pub(super) fn unanswered(&self, id: u64) -> Option<usize> {
        self.chunks.get(&id).map(Chunk::unanswered)
    }

    /// Takes in `worker`'s results for chunk `id`, which must start exactly
    /// at `offset`, the next unanswered item: anything else is a protocol
    /// violation, described in the error.
    pub(super) fn answer(
        &mut self,
        id: u64,
        offset: u32,
        outcomes: Vec<Result<SharedBytes, WireError>>,
        worker: WorkerId,
    ) -> Result<Answer, String> {
        let Some(chunk) = self.chunks.get_mut(&id) else {
            return Err(format!("results for chunk {id}, which this worker is not running"));
        };
        if offset as usize != chunk.received || chunk.received + outcomes.len() > chunk.items.len() {
            return Err(format!(
                "results {offset}..+{} for a chunk of {} with {} received",
                outcomes.len(),
                chunk.items.len(),
                chunk.received
            ));
        }
        let first = chunk.received;
        chunk.received += outcomes.len();
        let mut results = Vec::with_capacity(outcomes.len());
        for (p, outcome) in chunk.items[first..].iter_mut().zip(outcomes) {
            self.bytes -= p.data.len().min(self.bytes);
            p.data = Payload::empty();
            let result = outcome.map_err(|e| Box::new(from_wire(p.index, e, worker, p.attempts + 1)));
            results.push((p.index, result, p.attempts + 1));
        }
        let complete = chunk.received == chunk.items.len();
        if complete {
            self.chunks.remove(&id);
        }
        Ok(Answer { results, complete })
    }

    /// Takes back the chunks `queue` of a dead worker. A worker writes the
    /// results of fast items in batches, so any of its unanswered items may
    /// have been the one running: an item is blamed only when it was the
    /// worker's *only* unanswered item (a retry runs alone, on a worker
    /// holding nothing else), and then only after a deadline kill or once
    /// out of retries; all others are retried alone, in index order, before
    /// anything else. Each counts an attempt (any of them may have been
    /// running). `MAX_IN_FLIGHT_ITEMS` bounds how many items beyond two
    /// chunks one death sends through that slow path.
    pub(super) fn requeue(&mut self, queue: impl IntoIterator<Item = u64>, timed_out: bool) -> Requeued {
        let chunks: Vec<Chunk> = queue.into_iter().filter_map(|id| self.chunks.remove(&id)).collect();
        let alone = chunks.iter().map(Chunk::unanswered).sum::<usize>() == 1;
        let mut out = Requeued::default();
        let mut back = Vec::new();
        for mut p in chunks.into_iter().flat_map(|c| c.items.into_iter().skip(c.received)) {
            self.bytes -= p.data.len().min(self.bytes);
            p.attempts += 1;
            if alone && (timed_out || p.attempts > self.retries) {
                out.blamed.push(Blamed { index: p.index, attempts: p.attempts });
            } else {
                p.isolate = true;
                back.push(p);
            }
        }
        out.retried = back.len();
        back.sort_by_key(|p| p.index);
        // Counted again in `bytes` when they are sent.
        for p in back.into_iter().rev() {
            self.retry.push_front(p);
        }
        out
    }
}

impl Chunk {
    fn unanswered(&self) -> usize {
        self.items.len() - self.received
    }
}

fn from_wire(index: u64, e: WireError, worker: WorkerId, attempts: u32) -> TaskError {
    let kind = match e.kind {
        WireKind::Kernel => TaskErrorKind::Kernel,
        WireKind::Trap => TaskErrorKind::Trap,
        WireKind::Timeout => TaskErrorKind::Timeout,
        WireKind::OutOfFuel => TaskErrorKind::OutOfFuel,
        WireKind::MemoryLimit => TaskErrorKind::MemoryLimit,
        WireKind::StackOverflow => TaskErrorKind::StackOverflow,
        WireKind::KernelExit(code) => TaskErrorKind::KernelExit(code),
        WireKind::ItemTooLarge => TaskErrorKind::ItemTooLarge,
    };
    TaskError { stderr: e.stderr, ..task_error(index, kind, e.message, Some(worker), attempts) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: WorkerId = WorkerId(1);

    fn items(indices: impl IntoIterator<Item = u64>) -> Vec<Pending> {
        indices.into_iter().map(|i| Pending::new(i, Payload::from_vec(vec![i as u8; 3]))).collect()
    }

    fn ok() -> Result<SharedBytes, WireError> {
        Ok(SharedBytes::from(b"r".to_vec()))
    }

    fn retry_order(l: &Ledger) -> Vec<u64> {
        l.retry.iter().map(|p| p.index).collect()
    }

    /// Runs item `index` alone until the ledger gives up on it; returns the
    /// deaths it took.
    fn deaths_until_blamed(l: &mut Ledger, index: u64) -> (u32, Blamed) {
        let (mut id, _) = l.open(items([index]));
        for death in 1.. {
            let r = l.requeue([id], false);
            if let Some(b) = r.blamed.first() {
                return (death, *b);
            }
            let (retry, alone) = l.take_retries(100, usize::MAX).expect("retried");
            assert!(alone, "a retry runs alone");
            id = l.open(retry).0;
        }
        unreachable!()
    }

    #[test]
    fn an_item_alone_is_blamed_after_its_retries() {
        let mut l = Ledger::new(2);
        let (deaths, blamed) = deaths_until_blamed(&mut l, 7);
        assert_eq!(deaths, 3);
        assert_eq!(blamed, Blamed { index: 7, attempts: 3 });
        assert!(l.is_empty());
        let mut l = Ledger::new(0);
        let (deaths, _) = deaths_until_blamed(&mut l, 1);
        assert_eq!(deaths, 1, "no retries: blamed at once");
    }

    #[test]
    fn items_sharing_a_dead_worker_are_retried_alone_not_blamed() {
        let mut l = Ledger::new(0);
        let (a, _) = l.open(items([0, 1]));
        let (b, _) = l.open(items([2]));
        let r = l.requeue([a, b], true);
        assert_eq!(r, Requeued { blamed: Vec::new(), retried: 3 });
        assert!(l.needs_idle_worker());
        for index in 0..3 {
            let (retry, alone) = l.take_retries(100, usize::MAX).unwrap();
            assert!(alone);
            assert_eq!(retry.len(), 1);
            assert_eq!((retry[0].index, retry[0].attempts), (index, 1));
        }
        assert!(l.take_retries(100, usize::MAX).is_none());
    }

    #[test]
    fn a_chunk_given_back_unrun_goes_first_with_its_attempts_unchanged() {
        let mut l = Ledger::new(2);
        let (a, _) = l.open(items([0]));
        let (b, _) = l.open(items([1, 2]));
        let in_flight = l.bytes();
        l.reclaim(b).unwrap();
        assert_eq!(l.bytes(), in_flight - 6, "counted again when sent");
        assert!(!l.needs_idle_worker(), "it may run beside anything");
        let (again, alone) = l.take_retries(100, usize::MAX).unwrap();
        assert!(!alone);
        assert_eq!(again.iter().map(|p| (p.index, p.attempts)).collect::<Vec<_>>(), [(1, 0), (2, 0)]);
        // Only a chunk in flight, and only before any of its results.
        assert!(l.reclaim(b).is_err());
        l.answer(a, 0, vec![ok()], W).unwrap();
        let (c, _) = l.open(items([3, 4]));
        l.answer(c, 0, vec![ok()], W).unwrap();
        let before = l.bytes();
        assert!(l.reclaim(c).is_err());
        assert_eq!((l.bytes(), l.unanswered(c)), (before, Some(1)), "a refused reclaim changes nothing");
    }

    #[test]
    fn a_deadline_kill_blames_the_only_unanswered_item_at_once() {
        let mut l = Ledger::new(5);
        let (id, _) = l.open(items([3, 4]));
        l.answer(id, 0, vec![ok()], W).unwrap();
        let r = l.requeue([id], true);
        assert_eq!(r, Requeued { blamed: vec![Blamed { index: 4, attempts: 1 }], retried: 0 });
    }

    #[test]
    fn answered_items_are_not_requeued() {
        let mut l = Ledger::new(2);
        let (id, _) = l.open(items([0, 1, 2]));
        l.answer(id, 0, vec![ok()], W).unwrap();
        let r = l.requeue([id], false);
        assert_eq!(r.retried, 2);
        assert_eq!(retry_order(&l), [1, 2]);
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn retries_go_first_sorted_by_index() {
        let mut l = Ledger::new(2);
        let (first, _) = l.open(items([10]));
        let (c2, _) = l.open(items([5, 6]));
        let (c1, _) = l.open(items([1, 2]));
        l.requeue([first], false);
        l.requeue([c2, c1], false);
        assert_eq!(retry_order(&l), [1, 2, 5, 6, 10]);
    }

    #[test]
    fn answers_count_attempts_and_complete_the_chunk() {
        let mut l = Ledger::new(2);
        let (id, _) = l.open(items([0, 1]));
        l.requeue([id], false);
        let (retry, _) = l.take_retries(100, usize::MAX).unwrap();
        let (id, _) = l.open(retry);
        let err = WireError { kind: WireKind::Trap, message: "boom".into(), stderr: b"e".to_vec() };
        let a = l.answer(id, 0, vec![Err(err)], W).unwrap();
        assert!(a.complete);
        let (index, result, attempts) = &a.results[0];
        let e = result.as_ref().unwrap_err();
        assert_eq!((*index, e.attempts, e.worker, &e.stderr[..]), (0, 2, Some(W), &b"e"[..]));
        assert_eq!(*attempts, 2, "the same count beside an ok result");
        assert_eq!(e.kind, TaskErrorKind::Trap);
        assert_eq!(l.unanswered(id), None, "a complete chunk leaves the ledger");
    }

    #[test]
    fn answers_out_of_turn_are_violations() {
        let mut l = Ledger::new(2);
        let (id, _) = l.open(items([0, 1, 2]));
        assert_eq!(l.bytes(), 9);
        assert!(l.answer(id, 1, vec![ok()], W).is_err(), "skips item 0");
        assert!(l.answer(id, 0, vec![ok(), ok(), ok(), ok()], W).is_err(), "too many");
        assert!(l.answer(id + 1, 0, vec![ok()], W).is_err(), "unknown chunk");
        let a = l.answer(id, 0, vec![ok(), ok()], W).unwrap();
        assert!(!a.complete);
        assert_eq!(a.results.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!((l.unanswered(id), l.bytes()), (Some(1), 3));
        assert!(l.answer(id, 0, vec![ok()], W).is_err(), "already answered");
    }
}
