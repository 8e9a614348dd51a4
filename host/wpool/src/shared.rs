//! [`SharedBytes`]: a result's bytes where they arrived.
//!
//! A worker sends the results of small items many to a frame. Giving each
//! its own `Vec` costs an allocation per result in the host's frame reader
//! and a free wherever the caller drops it (another thread: the slow path
//! of the allocator); instead every result of a frame is a span of that
//! frame, which lives as long as one of them does. A large result arrives
//! in a buffer of its own and is the whole of it.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The bytes of one result: a span of a buffer shared with the other
/// results that came in the same frame. Cheap to clone; dereferences to
/// `[u8]`.
///
/// Holding one keeps its whole frame alive (a frame of small results is at
/// most a few hundred KiB; a large result is alone in its buffer).
///
/// ```
/// let r = wpool::SharedBytes::from(b"counted".to_vec());
/// assert_eq!(&r[..], b"counted");
/// assert_eq!(r.into_vec(), b"counted");
/// ```
#[derive(Clone)]
pub struct SharedBytes {
    buf: Arc<Vec<u8>>,
    start: u32,
    len: u32,
}

const _: () = assert!(std::mem::size_of::<SharedBytes>() == 16);

impl SharedBytes {
    /// The span `start..start + len` of `buf`, which must lie within it
    /// (a frame is under 4 GiB: its length prefix is 32 bits).
    pub(crate) fn span(buf: &Arc<Vec<u8>>, start: usize, len: usize) -> SharedBytes {
        assert!(start.checked_add(len).is_some_and(|end| end <= buf.len()), "span outside its buffer");
        let narrow = |n: usize| u32::try_from(n).expect("frames are under 4 GiB");
        SharedBytes { buf: Arc::clone(buf), start: narrow(start), len: narrow(len) }
    }

    /// The bytes as a `Vec` of their own: without a copy when this is the
    /// only holder of a buffer it spans whole (a large result), else copied.
    pub fn into_vec(self) -> Vec<u8> {
        if self.start == 0 && self.len as usize == self.buf.len() {
            match Arc::try_unwrap(self.buf) {
                Ok(whole) => whole,
                Err(shared) => shared.to_vec(),
            }
        } else {
            self.to_vec()
        }
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start as usize..][..self.len as usize]
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(v: Vec<u8>) -> Self {
        let len = v.len();
        SharedBytes::span(&Arc::new(v), 0, len)
    }
}

impl From<SharedBytes> for Vec<u8> {
    fn from(b: SharedBytes) -> Self {
        b.into_vec()
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for SharedBytes {}

impl PartialEq<[u8]> for SharedBytes {
    fn eq(&self, other: &[u8]) -> bool {
        &self[..] == other
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self[..], f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_share_their_frame_and_read_their_own_bytes() {
        let frame = Arc::new(b"..abc.de".to_vec());
        let a = SharedBytes::span(&frame, 2, 3);
        let b = SharedBytes::span(&frame, 6, 2);
        let empty = SharedBytes::span(&frame, 8, 0);
        assert_eq!((&a[..], &b[..], &empty[..]), (&b"abc"[..], &b"de"[..], &b""[..]));
        assert_eq!(Arc::strong_count(&frame), 4);
        drop((a.clone(), b));
        assert_eq!(a.into_vec(), b"abc", "a span is copied out");
        drop(empty);
        assert_eq!(Arc::strong_count(&frame), 1, "the frame lives as long as a span of it");
    }

    #[test]
    fn a_whole_buffer_held_once_becomes_its_vec_without_a_copy() {
        let v = vec![7u8; 100];
        let at = v.as_ptr();
        let back = SharedBytes::from(v).into_vec();
        assert_eq!(back.as_ptr(), at);
        let shared = SharedBytes::from(vec![1, 2]);
        let other = shared.clone();
        assert_eq!(shared.into_vec(), [1, 2], "copied while another holds it");
        assert_eq!(other.into_vec(), [1, 2]);
    }

    #[test]
    #[should_panic(expected = "span outside its buffer")]
    fn a_span_past_the_end_is_refused() {
        SharedBytes::span(&Arc::new(vec![0; 4]), 3, 2);
    }
}
