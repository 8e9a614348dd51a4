//! [`SplicePipe`]: large buffers handed to a pipe by reference instead of
//! copied into it.
//!
//! `write` copies every byte into pages the kernel allocates (and charges
//! to the memory cgroup) for the pipe, and the reader copies them out again.
//! `vmsplice` puts references to the writer's own pages in the pipe: the
//! reader's copy is the only one. The catch is that the pipe shows whatever
//! those pages hold *when it is read*, so a buffer must stay alive and
//! unchanged until the reader has consumed its bytes, whatever the reader
//! says: a worker that answered without reading could otherwise read memory
//! the host reused for something else. [`SplicePipe`] keeps each buffer it
//! spliced until the pipe itself says the bytes are gone (`FIONREAD`: what
//! is still unread, against what this writer put in), or until the pipe has
//! no reader left.
//!
//! The pool writes large items to its local workers this way, and the
//! `wpool` CLI large results to its standard output. Host side only: a
//! worker's seccomp filter allows neither `vmsplice` nor `ioctl`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A pipe's write end that splices large buffers ([`SplicePipe::splice`])
/// and copies the rest (its [`Write`] methods). Anything that is not a pipe
/// gets copies throughout.
///
/// ```no_run
/// use std::io::Write;
/// let mut out = wpool::splice::SplicePipe::stdout();
/// out.splice(vec![b'x'; 1 << 20])?; // the pipe references this buffer's pages
/// out.write_all(b"\n")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SplicePipe<B: AsRef<[u8]>> {
    pipe: std::mem::ManuallyDrop<File>,
    /// This process's standard output ([`SplicePipe::stdout`]): its
    /// descriptor is not closed, and what is unread at drop is leaked, not
    /// waited for.
    stdout: bool,
    /// Bytes this writer has put in the pipe.
    written: u64,
    /// Buffers the pipe may still reference, with the stream position just
    /// past their last byte, oldest first.
    held: VecDeque<(u64, B)>,
    /// `vmsplice` refused (not a pipe after all): copy from here on.
    copy: bool,
}

impl<B: AsRef<[u8]>> SplicePipe<B> {
    /// Writes to `pipe`. Others may write to the same pipe: their unread
    /// bytes only make this writer hold its buffers longer. Dropping it waits
    /// until the reader has consumed what the pipe references or is gone.
    pub fn new(pipe: File) -> SplicePipe<B> {
        let pipe = std::mem::ManuallyDrop::new(pipe);
        SplicePipe { pipe, stdout: false, written: 0, held: VecDeque::new(), copy: false }
    }

    /// This process's standard output (descriptor 1, left open). Dropping
    /// it leaks the buffers the reader has not consumed yet instead of
    /// waiting: the reader of a process's output may take its time, even
    /// after the process is gone (at most a pipe's capacity is leaked).
    /// Write nothing to standard output by other means while it holds bytes
    /// of its own in a buffer in front of it.
    pub fn stdout() -> SplicePipe<B> {
        use std::os::fd::FromRawFd;
        // SAFETY: descriptor 1 is open for the life of the process, and this
        // `File` never closes it (see `drop`).
        let pipe = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDOUT_FILENO) });
        SplicePipe { pipe, stdout: true, written: 0, held: VecDeque::new(), copy: false }
    }

    /// Buffers held until the pipe's reader has read them.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Puts `buffer`'s bytes in the pipe by reference and keeps `buffer`
    /// until they are read (its bytes must not change meanwhile: an owned
    /// `Vec` or a shared, immutable buffer).
    pub fn splice(&mut self, buffer: B) -> io::Result<()> {
        self.release();
        if self.copy {
            return Write::write_all(self, buffer.as_ref());
        }
        let mut rest = buffer.as_ref();
        while !rest.is_empty() {
            let iov = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
            // SAFETY: the iovec covers a live buffer, which is kept (below)
            // until the pipe no longer references its pages.
            let n = unsafe { libc::vmsplice(self.pipe.as_raw_fd(), &iov, 1, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Not a pipe: nothing was spliced yet of this buffer
                    // (a pipe never turns into something else).
                    Some(libc::EBADF | libc::EINVAL) if rest.len() == buffer.as_ref().len() => {
                        self.copy = true;
                        return Write::write_all(self, rest);
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            self.written += n as u64;
            rest = &rest[n..];
        }
        self.held.push_back((self.written, buffer));
        Ok(())
    }

    /// Lets go of the buffers whose bytes the reader has read. Each write
    /// and splice does this first; a writer with nothing more to write for
    /// a while calls it to free what it holds.
    pub fn release(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Some(unread) = self.unread() else { return };
        let consumed = self.written.saturating_sub(unread);
        while self.held.front().is_some_and(|(end, _)| *end <= consumed) {
            self.held.pop_front();
        }
    }

    /// Bytes in the pipe not yet read.
    fn unread(&self) -> Option<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        let r = unsafe { libc::ioctl(self.pipe.as_raw_fd(), libc::FIONREAD, &mut n) };
        (r == 0).then_some(n.max(0) as u64)
    }

    /// Whether the pipe has no reader left (its pages then go with it).
    fn reader_gone(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.pipe.as_raw_fd(), events: 0, revents: 0 };
        // SAFETY: one pollfd on the stack, no wait.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        r > 0 && pfd.revents & libc::POLLERR != 0
    }
}

impl<B: AsRef<[u8]>> Write for SplicePipe<B> {
    /// Copies bytes into the pipe.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.release();
        let n = self.pipe.write(bytes)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<B: AsRef<[u8]>> Drop for SplicePipe<B> {
    /// Waits until the reader has consumed what the pipe references, or is
    /// gone, before the buffers may be freed and their memory reused. A
    /// worker reads its input to the end or dies, and a pool kills the
    /// workers it gives up on, so this ends with the worker at the latest.
    /// If the pipe cannot be asked (or for [`SplicePipe::stdout`]), the
    /// buffers are leaked rather than reused under it.
    fn drop(&mut self) {
        loop {
            self.release();
            if self.held.is_empty() || self.reader_gone() {
                break;
            }
            if self.stdout || self.unread().is_none() {
                std::mem::forget(std::mem::take(&mut self.held));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.stdout {
            // SAFETY: dropped once, here, and not used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.pipe) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    fn pipe() -> (File, File) {
        let (r, w) = rustix::pipe::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[derive(Clone)]
    struct Buf(Arc<Vec<u8>>);
    impl AsRef<[u8]> for Buf {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn spliced_buffers_are_kept_until_read_and_the_stream_is_unchanged() {
        let (mut r, w) = pipe();
        let mut out = SplicePipe::new(w);
        let a = Buf(Arc::new((0..40_000u32).map(|i| i as u8).collect()));
        out.write_all(b"head").unwrap();
        out.splice(a.clone()).unwrap();
        out.write_all(b"tail").unwrap();
        assert_eq!(Arc::strong_count(&a.0), 2, "held while unread");
        let mut got = vec![0u8; 4 + 40_000 + 4];
        r.read_exact(&mut got[..1000]).unwrap();
        out.release();
        assert_eq!(out.held(), 1, "partly read: still held");
        r.read_exact(&mut got[1000..]).unwrap();
        out.release();
        assert_eq!(out.held(), 0);
        assert_eq!(Arc::strong_count(&a.0), 1, "released once read");
        let mut want = b"head".to_vec();
        want.extend_from_slice(&a.0);
        want.extend_from_slice(b"tail");
        assert_eq!(got, want);
    }

    #[test]
    fn a_write_lets_go_of_what_was_read() {
        let (mut r, w) = pipe();
        let mut out = SplicePipe::new(w);
        let a = Buf(Arc::new(vec![3u8; 50_000]));
        out.splice(a.clone()).unwrap();
        let mut got = vec![0u8; 50_000];
        r.read_exact(&mut got).unwrap();
        assert_eq!(out.held(), 1, "nothing asked the pipe yet");
        out.write_all(b"small").unwrap();
        assert_eq!(out.held(), 0);
        assert_eq!(Arc::strong_count(&a.0), 1);
    }

    #[test]
    fn a_buffer_larger_than_the_pipe_goes_through_as_the_reader_drains() {
        let (mut r, w) = pipe();
        let big: Vec<u8> = (0..3 * 65_536 + 7).map(|i| (i * 7) as u8).collect();
        let expected = big.clone();
        let writer = std::thread::spawn(move || {
            let mut out = SplicePipe::new(w);
            out.splice(Buf(Arc::new(big))).unwrap();
            // Dropping waits for the reader: it reads everything below.
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn dropping_the_writer_waits_for_the_reader_or_its_end() {
        let (r, w) = pipe();
        let a = Buf(Arc::new(vec![1u8; 10_000]));
        let mut out = SplicePipe::new(w);
        out.splice(a.clone()).unwrap();
        let kept = a.clone();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // The writer is being dropped: it still holds the unread buffer.
            let held = Arc::strong_count(&kept.0);
            drop(r);
            held
        });
        drop(out);
        assert_eq!(closer.join().unwrap(), 3, "this test's, the closer's and the writer's");
        assert_eq!(Arc::strong_count(&a.0), 1, "freed once the reader was gone");
    }

    #[test]
    fn a_file_is_written_with_copies() {
        let path = std::env::temp_dir().join(format!("wpool-splice-test-{}", std::process::id()));
        let mut out = SplicePipe::new(File::create(&path).unwrap());
        out.splice(Buf(Arc::new(b"abc".to_vec()))).unwrap();
        out.write_all(b"def").unwrap();
        drop(out);
        let written = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(written, b"abcdef");
    }
}
