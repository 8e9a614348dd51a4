//! Where a run's items come from: the caller's iterator or a channel, read
//! one item at a time as workers have room, and numbered in input order.
//!
//! It must not decide *when* to read (the scheduler does, from the sizer's
//! window and the bytes buffered) nor wait for anything but the source.

use std::collections::VecDeque;

use crossbeam_channel::{Receiver, TryRecvError};

use super::task_error;
use crate::error::{TaskError, TaskErrorKind};

/// Where a run's items come from.
pub(crate) enum Input<'a> {
    /// Pulled in the caller's thread when a worker has room; a blocking
    /// iterator blocks the run while it blocks.
    Iter(&'a mut dyn Iterator<Item = Vec<u8>>),
    /// Fed by another thread; the run keeps delivering results while the
    /// channel is empty, and ends when it is disconnected and drained.
    Channel(&'a Receiver<Vec<u8>>),
    /// Like `Channel`, with items in batches (fewer wake-ups per item).
    Batches(&'a Receiver<Vec<Vec<u8>>>),
}

enum Pull {
    Item(Vec<u8>),
    Empty,
    Done,
}

impl Input<'_> {
    /// The next item: from `stash` (items already received), else from the
    /// source.
    fn pull(&mut self, stash: &mut VecDeque<Vec<u8>>) -> Pull {
        if let Some(item) = stash.pop_front() {
            return Pull::Item(item);
        }
        match self {
            Input::Iter(it) => it.next().map_or(Pull::Done, Pull::Item),
            Input::Channel(rx) => match rx.try_recv() {
                Ok(item) => Pull::Item(item),
                Err(TryRecvError::Empty) => Pull::Empty,
                Err(TryRecvError::Disconnected) => Pull::Done,
            },
            Input::Batches(rx) => loop {
                match rx.try_recv() {
                    Ok(batch) => {
                        stash.extend(batch);
                        if let Some(item) = stash.pop_front() {
                            return Pull::Item(item);
                        }
                    }
                    Err(TryRecvError::Empty) => return Pull::Empty,
                    Err(TryRecvError::Disconnected) => return Pull::Done,
                }
            },
        }
    }
}

/// A run's reading position in its input.
#[derive(Debug, Default)]
pub(super) struct Feed {
    /// Items received from a channel input, not yet dispatched.
    stash: VecDeque<Vec<u8>>,
    next_index: u64,
    /// The source is exhausted (the stash may still hold items).
    done: bool,
}

impl Feed {
    /// The next item with its index, or `None` when the source has nothing
    /// now (an empty channel) or any more.
    pub(super) fn next(&mut self, input: &mut Input<'_>) -> Option<(u64, Vec<u8>)> {
        let data = match input.pull(&mut self.stash) {
            Pull::Item(data) => data,
            Pull::Empty => return None,
            Pull::Done => {
                self.done = true;
                return None;
            }
        };
        let index = self.next_index;
        self.next_index += 1;
        Some((index, data))
    }

    /// The index the next item will get.
    pub(super) fn next_index(&self) -> u64 {
        self.next_index
    }

    /// There may be another item, received or at the source.
    pub(super) fn has_more(&self) -> bool {
        !self.done || !self.stash.is_empty()
    }

    /// Nothing is received and the source is still open: waiting on it can
    /// bring work. Received but undispatched items (while a retry waits for
    /// an idle worker) are enough: do not take more from the channel then.
    pub(super) fn wants_source(&self) -> bool {
        !self.done && self.stash.is_empty()
    }

    /// Takes in what a blocking receive on the source returned: `put` adds
    /// a message's items to the stash; `None` means the source is closed.
    pub(super) fn received<T>(&mut self, got: Option<T>, put: impl FnOnce(&mut VecDeque<Vec<u8>>, T)) {
        match got {
            Some(input) => put(&mut self.stash, input),
            None => self.done = true,
        }
    }
}

/// The error of an input item over the cap, which never reaches a worker.
pub(super) fn too_large(index: u64, len: usize, max: usize) -> TaskError {
    task_error(index, TaskErrorKind::ItemTooLarge, format!("item of {len} bytes is over the {max}-byte cap"), None, 0)
}
