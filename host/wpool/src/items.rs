//! [`Items`]: a batch of items in one buffer, what a producer thread sends
//! a pool ([`crate::Pool::imap_batches`]).
//!
//! A run of many small items otherwise costs an allocation per item in the
//! producer and a free in the pool's thread; here small items are stored
//! back to back and the pool copies each into its own bookkeeping without
//! allocating. An item handed over as a large `Vec` keeps its buffer.

/// Items of this many bytes or more, given as a `Vec`, keep their buffer
/// (the same threshold as the protocol's: such items are written to the
/// worker from that buffer).
const OWN: usize = crate::wire::LARGE;

/// A batch of items, in order: small ones back to back in one buffer,
/// large ones in their own.
///
/// ```
/// let mut batch = wpool::Items::with_capacity(2, 16);
/// batch.push(b"first");
/// batch.push_vec(b"second".to_vec());
/// assert_eq!(batch.iter().collect::<Vec<_>>(), [&b"first"[..], &b"second"[..]]);
/// let batch: wpool::Items = vec![b"a".to_vec(), b"b".to_vec()].into();
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Items {
    /// The small items, back to back.
    packed: Vec<u8>,
    slots: Vec<Slot>,
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// A small item: it ends here in `packed` (and starts where the
    /// previous packed item ended).
    Packed(usize),
    /// A large item, in its own buffer.
    Own(Vec<u8>),
}

impl Items {
    /// An empty batch.
    pub fn new() -> Items {
        Items::default()
    }

    /// An empty batch with room for `items` items of `bytes` bytes in all
    /// without reallocating.
    pub fn with_capacity(items: usize, bytes: usize) -> Items {
        Items { packed: Vec::with_capacity(bytes), slots: Vec::with_capacity(items), bytes: 0 }
    }

    /// Adds an item, copied.
    pub fn push(&mut self, item: &[u8]) {
        if item.len() >= OWN {
            self.slots.push(Slot::Own(item.to_vec()));
        } else {
            self.packed.extend_from_slice(item);
            self.slots.push(Slot::Packed(self.packed.len()));
        }
        self.bytes += item.len();
    }

    /// Adds an item; a large one keeps its buffer, a small one is copied.
    pub fn push_vec(&mut self, item: Vec<u8>) {
        if item.len() >= OWN {
            self.bytes += item.len();
            self.slots.push(Slot::Own(item));
        } else {
            self.push(&item);
        }
    }

    /// Adds the item in `buffer`: a large one takes the buffer (leaving it
    /// empty), a small one is copied (leaving the buffer and its room to be
    /// filled again). A reader that reads each item into one buffer then
    /// allocates nothing per small item.
    ///
    /// ```
    /// let mut batch = wpool::Items::new();
    /// let mut buffer = Vec::with_capacity(64);
    /// for line in ["a", "bc"] {
    ///     buffer.clear();
    ///     buffer.extend_from_slice(line.as_bytes());
    ///     batch.push_from(&mut buffer);
    /// }
    /// assert_eq!(batch.len(), 2);
    /// assert!(buffer.capacity() >= 64, "the room is kept");
    /// ```
    pub fn push_from(&mut self, buffer: &mut Vec<u8>) {
        match buffer.len() >= OWN {
            true => self.push_vec(std::mem::take(buffer)),
            false => self.push(buffer),
        }
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Their bytes in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The items, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.slots.iter().map(move |slot| match slot {
            Slot::Packed(end) => {
                let item = &self.packed[start..*end];
                start = *end;
                item
            }
            Slot::Own(item) => &item[..],
        })
    }

    /// A reader that takes the items out one by one.
    pub(crate) fn into_reader(self) -> Reader {
        Reader { items: self, next: 0, start: 0 }
    }
}

impl From<Vec<Vec<u8>>> for Items {
    fn from(items: Vec<Vec<u8>>) -> Items {
        items.into_iter().collect()
    }
}

impl FromIterator<Vec<u8>> for Items {
    fn from_iter<I: IntoIterator<Item = Vec<u8>>>(iter: I) -> Items {
        let mut items = Items::new();
        for item in iter {
            items.push_vec(item);
        }
        items
    }
}

impl IntoIterator for Items {
    type Item = Vec<u8>;
    type IntoIter = IntoIter;

    /// The items as `Vec`s (small ones copied out of the shared buffer).
    fn into_iter(self) -> IntoIter {
        IntoIter(self.into_reader())
    }
}

/// The items of an [`Items`], by value.
#[derive(Debug)]
pub struct IntoIter(Reader);

impl Iterator for IntoIter {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.0.take().map(|t| match t {
            Taken::Slice(item) => item.to_vec(),
            Taken::Owned(item) => item,
        })
    }
}

/// An item taken out of a [`Reader`].
pub(crate) enum Taken<'a> {
    Slice(&'a [u8]),
    Owned(Vec<u8>),
}

/// [`Items`] being taken out, front to back.
#[derive(Debug)]
pub(crate) struct Reader {
    items: Items,
    next: usize,
    /// Where the next packed item starts.
    start: usize,
}

impl Reader {
    pub(crate) fn take(&mut self) -> Option<Taken<'_>> {
        let slot = self.items.slots.get_mut(self.next)?;
        self.next += 1;
        Some(match slot {
            Slot::Packed(end) => {
                let item = &self.items.packed[self.start..*end];
                self.start = *end;
                Taken::Slice(item)
            }
            Slot::Own(item) => Taken::Owned(std::mem::take(item)),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next == self.items.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_in_order_whatever_their_sizes() {
        let sizes = [0, 1, 5, OWN - 1, OWN, 0, 3, OWN + 7, 2];
        let want: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let mut pushed = Items::new();
        for (i, item) in want.iter().enumerate() {
            match i % 2 {
                0 => pushed.push(item),
                _ => pushed.push_vec(item.clone()),
            }
        }
        let collected: Items = want.clone().into();
        for items in [pushed, collected] {
            assert_eq!(items.len(), want.len());
            assert_eq!(items.bytes(), sizes.iter().sum::<usize>());
            assert_eq!(items.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), want);
            assert_eq!(items.clone().into_iter().collect::<Vec<_>>(), want);
            let mut reader = items.into_reader();
            let mut taken = Vec::new();
            while let Some(t) = reader.take() {
                taken.push(match t {
                    Taken::Slice(s) => s.to_vec(),
                    Taken::Owned(v) => v,
                });
            }
            assert!(reader.is_empty());
            assert_eq!(taken, want);
        }
    }
}
