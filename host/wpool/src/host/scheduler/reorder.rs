//! The results of a run on their way to the caller: in input order through a
//! window (ordered runs) or in completion order (unordered runs).
//!
//! A small pure queue: it must not decide how far ahead input is read (the
//! scheduler asks [`Reorder::admits`] with a window from the sizer), nor know
//! where results came from.

use std::collections::VecDeque;

use super::{ItemInfo, SharedResult};

/// Finished items, waiting to be handed out.
#[derive(Debug)]
pub(super) struct Reorder {
    ordered: bool,
    /// Ordered: slot `i` holds the result of item `next + i` once it is
    /// known; bounded by the window.
    waiting: VecDeque<Option<(SharedResult, ItemInfo)>>,
    /// Unordered: results in completion order.
    done: VecDeque<(u64, SharedResult, ItemInfo)>,
    /// The index of the next result handed out (ordered runs).
    next: u64,
    /// Bytes of successful results held.
    bytes: usize,
}

impl Reorder {
    pub(super) fn new(ordered: bool) -> Reorder {
        Reorder { ordered, waiting: VecDeque::new(), done: VecDeque::new(), next: 0, bytes: 0 }
    }

    /// Takes in the result of item `index`, which must not have been handed
    /// out already.
    pub(super) fn complete(&mut self, index: u64, result: SharedResult, info: ItemInfo) {
        if let Ok(bytes) = &result {
            self.bytes += bytes.len();
        }
        if self.ordered {
            let at = (index - self.next) as usize;
            if self.waiting.len() <= at {
                self.waiting.resize_with(at + 1, || None);
            }
            self.waiting[at] = Some((result, info));
        } else {
            self.done.push_back((index, result, info));
        }
    }

    /// Whether [`Reorder::pop_ready`] would hand out a result.
    pub(super) fn has_ready(&self) -> bool {
        if self.ordered {
            self.waiting.front().is_some_and(Option::is_some)
        } else {
            !self.done.is_empty()
        }
    }

    /// The next result with its item index, if its turn has come.
    pub(super) fn pop_ready(&mut self) -> Option<(u64, SharedResult, ItemInfo)> {
        let (index, result, info) = if self.ordered {
            let (r, info) = self.waiting.front_mut()?.take()?;
            self.waiting.pop_front();
            (self.next, r, info)
        } else {
            self.done.pop_front()?
        };
        self.next += 1;
        if let Ok(bytes) = &result {
            self.bytes -= bytes.len().min(self.bytes);
        }
        Some((index, result, info))
    }

    /// Whether item `index` may be started: in an ordered run, only within
    /// `window` items of the oldest one not handed out yet.
    pub(super) fn admits(&self, index: u64, window: u64) -> bool {
        !self.ordered || index < self.next + window
    }

    /// Bytes of successful results held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ItemIndex, TaskError, TaskErrorKind};

    fn ok(s: &str) -> SharedResult {
        Ok(s.as_bytes().to_vec().into())
    }

    fn failed(index: u64) -> SharedResult {
        Err(Box::new(TaskError {
            index: ItemIndex(index),
            kind: TaskErrorKind::Timeout,
            message: String::new(),
            worker: None,
            attempts: 1,
            stderr: Vec::new(),
        }))
    }

    fn info() -> ItemInfo {
        ItemInfo { worker: None, attempts: 1, kernel_time: None, arrived: std::time::Instant::now() }
    }

    fn drain(r: &mut Reorder) -> Vec<u64> {
        std::iter::from_fn(|| r.pop_ready()).map(|(i, _, _)| i).collect()
    }

    #[test]
    fn ordered_hands_out_in_index_order_once_the_gap_is_filled() {
        let mut r = Reorder::new(true);
        r.complete(2, ok("c"), info());
        r.complete(1, ok("b"), info());
        assert!(!r.has_ready(), "item 0 is missing");
        assert!(r.pop_ready().is_none());
        r.complete(0, ok("a"), info());
        assert!(r.has_ready());
        assert_eq!(&r.pop_ready().unwrap().1.unwrap()[..], b"a");
        assert_eq!(drain(&mut r), [1, 2]);
        assert!(!r.has_ready());
    }

    #[test]
    fn ordered_stops_at_the_next_gap() {
        let mut r = Reorder::new(true);
        for i in [0, 1, 3, 4] {
            r.complete(i, ok("x"), info());
        }
        assert_eq!(drain(&mut r), [0, 1]);
        r.complete(2, failed(2), info());
        let (index, result, _) = r.pop_ready().unwrap();
        assert_eq!(index, 2);
        assert!(result.is_err());
        assert_eq!(drain(&mut r), [3, 4]);
    }

    #[test]
    fn unordered_hands_out_in_completion_order() {
        let mut r = Reorder::new(false);
        assert!(!r.has_ready());
        r.complete(5, ok("f"), info());
        r.complete(0, ok("a"), info());
        r.complete(3, failed(3), info());
        assert!(r.has_ready());
        assert_eq!(drain(&mut r), [5, 0, 3]);
    }

    #[test]
    fn ordered_window_follows_the_results_handed_out() {
        let mut r = Reorder::new(true);
        assert!(r.admits(9, 10));
        assert!(!r.admits(10, 10));
        r.complete(0, ok("a"), info());
        assert!(!r.admits(10, 10), "not handed out yet");
        r.pop_ready();
        assert!(r.admits(10, 10));
        assert!(Reorder::new(false).admits(1_000_000, 10), "unordered runs have no window");
    }

    #[test]
    fn counts_the_bytes_of_results_held() {
        let mut r = Reorder::new(true);
        r.complete(1, ok("bbb"), info());
        r.complete(0, ok("a"), info());
        r.complete(2, failed(2), info());
        assert_eq!(r.bytes(), 4);
        r.pop_ready();
        assert_eq!(r.bytes(), 3);
        drain(&mut r);
        assert_eq!(r.bytes(), 0);
    }
}
