//! Where a run's items come from: the caller's iterator or a channel, read
//! one item at a time as workers have room, and numbered in input order;
//! and how the scheduler holds an item's bytes ([`Payload`]).
//!
//! It must not decide *when* to read (the scheduler does, from the sizer's
//! window and the bytes buffered) nor wait for anything but the source.

use std::collections::VecDeque;
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};

use super::task_error;
use crate::error::{TaskError, TaskErrorKind};
use crate::host::supervisor::Shared;
use crate::items::{Items, Reader, Taken};
use crate::wire;

/// Where a run's items come from.
pub(crate) enum Input<'a> {
    /// Pulled in the caller's thread when a worker has room; a blocking
    /// iterator blocks the run while it blocks.
    Iter(&'a mut dyn Iterator<Item = Vec<u8>>),
    /// Fed by another thread; the run keeps delivering results while the
    /// channel is empty, and ends when it is disconnected and drained.
    Channel(&'a Receiver<Vec<u8>>),
    /// Like `Channel`, with items in batches (fewer wake-ups per item, and
    /// no allocation per small item).
    Batches(&'a Receiver<Items>),
}

/// An item's bytes as the scheduler holds them until it is answered: a
/// small one inline (no allocation per item), a large one shared with the
/// frame writer, which writes it from this buffer (no copy into a frame)
/// while the ledger keeps it for a retry.
#[derive(Debug)]
pub(crate) enum Payload {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Vec<u8>),
    Large(Shared),
}

/// Bytes an item may have to be kept inline (a `Payload` is then 32 bytes).
const INLINE: usize = 30;

const _: () = assert!(std::mem::size_of::<Payload>() == 32);

impl Payload {
    pub(crate) fn empty() -> Payload {
        Payload::Inline { len: 0, bytes: [0; INLINE] }
    }

    /// Keeps `data`'s buffer, unless the item fits inline.
    pub(crate) fn from_vec(data: Vec<u8>) -> Payload {
        match data.len() {
            n if n <= INLINE => Payload::from_slice(&data),
            n if n >= wire::LARGE => Payload::Large(Shared(Arc::new(data))),
            _ => Payload::Heap(data),
        }
    }

    pub(crate) fn from_slice(data: &[u8]) -> Payload {
        match data.len() {
            n if n <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..n].copy_from_slice(data);
                Payload::Inline { len: n as u8, bytes }
            }
            _ => Payload::from_vec(data.to_vec()),
        }
    }

    /// How it goes into [`wire::encode_run`].
    pub(crate) fn as_item(&self) -> Result<&[u8], &Shared> {
        match self {
            Payload::Large(data) => Err(data),
            small => Ok(small),
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Inline { len, bytes } => &bytes[..*len as usize],
            Payload::Heap(data) => data,
            Payload::Large(data) => &data.0,
        }
    }
}

/// Items received from a channel, not yet dispatched.
#[derive(Debug, Default)]
pub(super) struct Stash {
    queue: VecDeque<Received>,
}

#[derive(Debug)]
enum Received {
    One(Vec<u8>),
    Many(Reader),
}

impl Stash {
    pub(super) fn push(&mut self, item: Vec<u8>) {
        self.queue.push_back(Received::One(item));
    }

    pub(super) fn push_items(&mut self, items: Items) {
        if !items.is_empty() {
            self.queue.push_back(Received::Many(items.into_reader()));
        }
    }

    fn pop(&mut self) -> Option<Payload> {
        let (item, used_up) = match self.queue.front_mut()? {
            Received::One(item) => (Payload::from_vec(std::mem::take(item)), true),
            Received::Many(reader) => {
                let item = match reader.take().expect("an empty reader is not kept") {
                    Taken::Slice(item) => Payload::from_slice(item),
                    Taken::Owned(item) => Payload::from_vec(item),
                };
                (item, reader.is_empty())
            }
        };
        if used_up {
            self.queue.pop_front();
        }
        Some(item)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

enum Pull {
    Item(Payload),
    Empty,
    Done,
}

impl Input<'_> {
    /// The next item: from `stash` (items already received), else from the
    /// source.
    fn pull(&mut self, stash: &mut Stash) -> Pull {
        if let Some(item) = stash.pop() {
            return Pull::Item(item);
        }
        match self {
            Input::Iter(it) => it.next().map_or(Pull::Done, |item| Pull::Item(Payload::from_vec(item))),
            Input::Channel(rx) => match rx.try_recv() {
                Ok(item) => Pull::Item(Payload::from_vec(item)),
                Err(TryRecvError::Empty) => Pull::Empty,
                Err(TryRecvError::Disconnected) => Pull::Done,
            },
            Input::Batches(rx) => loop {
                match rx.try_recv() {
                    Ok(batch) => {
                        stash.push_items(batch);
                        if let Some(item) = stash.pop() {
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
    stash: Stash,
    next_index: u64,
    /// The source is exhausted (the stash may still hold items).
    done: bool,
}

impl Feed {
    /// The next item with its index, or `None` when the source has nothing
    /// now (an empty channel) or any more.
    pub(super) fn next(&mut self, input: &mut Input<'_>) -> Option<(u64, Payload)> {
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
    pub(super) fn received<T>(&mut self, got: Option<T>, put: impl FnOnce(&mut Stash, T)) {
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
