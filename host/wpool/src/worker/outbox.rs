//! Results on their way to the host: the wasm thread adds each as it is
//! produced, and they go out in batches, written when the wasm thread is
//! idle or, by a flusher thread, when they are due.
//!
//! Owns the batching and its timing only; what a result is, is
//! [`crate::wire`]'s, and running items is the wasm thread's.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::{self, OutFrame, Outcome, WorkerMsg, BATCH_BYTES, LARGE};

/// A result waits at most about this long before it is written: results of
/// fast items go out together, and the host still learns often how far a
/// worker got. The flusher thread enforces it while the wasm thread is inside
/// a long item, so a finished result never waits behind a slow one.
pub(super) const HOLD_RESULTS: Duration = Duration::from_millis(1);

/// Results of the chunk being run that are not encoded yet.
struct OpenBatch {
    chunk: u64,
    /// Offset in the chunk of `outcomes[0]`.
    offset: u32,
    outcomes: Vec<Outcome>,
    /// Time spent in the kernel on `outcomes`.
    busy: Duration,
    bytes: usize,
    /// How many of `outcomes` came out of `map-batch` calls.
    batched: u32,
}

/// Results not yet written: whole encoded frames (with the large results
/// that go between them), then the open batch of the current chunk, and
/// when the oldest of them was produced.
struct Pending {
    /// Large results go in it as they are: after their `LargeResult` frame
    /// and their own length prefix.
    frames: OutFrame<Vec<u8>>,
    open: Option<OpenBatch>,
    since: Option<Instant>,
    /// Batches run again item by item, not reported yet.
    fallbacks: u32,
}

impl Pending {
    /// Encodes the open batch into `frames`; the chunk's later results
    /// continue at the next offset.
    fn seal(&mut self) {
        let Some(open) = self.open.as_mut().filter(|o| !o.outcomes.is_empty()) else { return };
        let outcomes = std::mem::take(&mut open.outcomes);
        let count = outcomes.len() as u32;
        let msg = WorkerMsg::Results {
            chunk: open.chunk,
            offset: open.offset,
            outcomes,
            busy_ns: open.busy.as_nanos() as u64,
            batched: open.batched,
            fallbacks: std::mem::take(&mut self.fallbacks),
        };
        wire::append_frame(&msg, &mut self.frames.bytes);
        open.offset += count;
        open.busy = Duration::ZERO;
        open.bytes = 0;
        open.batched = 0;
    }

    /// Seals the open batch, then adds `result`, the chunk's next outcome,
    /// as a [`WorkerMsg::LargeResult`] frame followed by its bytes (kept
    /// in their buffer, written from it).
    fn seal_large(&mut self, result: Vec<u8>, batched: bool) {
        self.seal();
        let open = self.open.as_mut().expect("a batch is open");
        let len = u32::try_from(result.len()).expect("results are under the item size cap");
        let msg = WorkerMsg::LargeResult {
            chunk: open.chunk,
            offset: open.offset,
            len,
            busy_ns: open.busy.as_nanos() as u64,
            batched: u32::from(batched),
            fallbacks: std::mem::take(&mut self.fallbacks),
        };
        let frames = &mut self.frames;
        wire::append_frame(&msg, &mut frames.bytes);
        frames.bytes.extend_from_slice(&len.to_le_bytes());
        frames.large.push((frames.bytes.len(), result));
        open.offset += 1;
        open.busy = Duration::ZERO;
    }

    fn bytes(&self) -> usize {
        self.frames.len() + self.open.as_ref().map_or(0, |o| o.bytes)
    }
}

/// Results waiting to be written, shared by the wasm thread (which adds each
/// result as it is produced, and writes when idle or when they are due) and
/// a flusher thread (which writes them when they are due while the wasm
/// thread is inside a long item). Every finished result is here, never in a
/// buffer private to the wasm thread, so the flusher sees all of them.
#[derive(Clone)]
pub(super) struct Outbox {
    pending: Arc<(std::sync::Mutex<Pending>, std::sync::Condvar)>,
    out: Arc<std::sync::Mutex<File>>,
}

impl Outbox {
    pub(super) fn new(out: Arc<std::sync::Mutex<File>>) -> Outbox {
        let pending = Pending { frames: OutFrame::default(), open: None, since: None, fallbacks: 0 };
        let outbox = Outbox { pending: Arc::new((std::sync::Mutex::new(pending), Default::default())), out };
        let flusher = outbox.clone();
        std::thread::Builder::new()
            .name("wpool-flush".into())
            .spawn(move || flusher.flush_when_due())
            .expect("spawning the flusher thread");
        outbox
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the next results of `chunk`, produced by `now` after `took` in
    /// the kernel (all of them), `batched` if they came out of one
    /// `map-batch` call; `last` says they end the chunk. Writes what is
    /// pending if it is due (big, or held for [`HOLD_RESULTS`]), under the
    /// same lock: one lock per call on the hot path.
    pub(super) fn push(
        &self,
        chunk: u64,
        outcomes: impl IntoIterator<Item = Outcome>,
        took: Duration,
        batched: bool,
        last: bool,
        now: Instant,
    ) {
        let mut p = self.lock();
        if p.open.as_ref().is_some_and(|o| o.chunk != chunk) {
            p.seal();
            p.open = None;
        }
        let mut open = p.open.take().unwrap_or(OpenBatch {
            chunk,
            offset: 0,
            outcomes: Vec::new(),
            busy: Duration::ZERO,
            bytes: 0,
            batched: 0,
        });
        open.busy += took;
        for outcome in outcomes {
            let outcome = match outcome {
                Outcome::Ok(result) if result.len() >= LARGE => {
                    p.open = Some(open);
                    p.seal_large(result, batched);
                    open = p.open.take().expect("just put back");
                    continue;
                }
                outcome => outcome,
            };
            open.bytes += match &outcome {
                Outcome::Ok(b) => b.len(),
                Outcome::Err(e) => e.message.len() + e.stderr.len(),
            };
            open.outcomes.push(outcome);
            open.batched += u32::from(batched);
            if open.bytes >= BATCH_BYTES {
                p.open = Some(open);
                p.seal();
                open = p.open.take().expect("just put back");
            }
        }
        p.open = Some(open);
        if last {
            p.seal();
            p.open = None;
        }
        match p.since {
            None => {
                p.since = Some(now);
                self.pending.1.notify_one();
            }
            Some(since) if now.saturating_duration_since(since) >= HOLD_RESULTS => self.write(&mut p),
            Some(_) => {}
        }
        if p.bytes() >= BATCH_BYTES {
            self.write(&mut p);
        }
    }

    /// Counts a `map-batch` call whose items are run again one by one.
    pub(super) fn fell_back(&self) {
        self.lock().fallbacks += 1;
    }

    pub(super) fn flush(&self) {
        let mut p = self.lock();
        self.write(&mut p);
    }

    fn write(&self, p: &mut Pending) {
        p.seal();
        if p.frames.is_empty() {
            p.since = None;
            return;
        }
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if p.frames.write_to(&mut *o).is_err() {
            // The host is gone.
            std::process::exit(0);
        }
        drop(o);
        p.frames.clear();
        p.since = None;
    }

    fn flush_when_due(&self) {
        let mut p = self.lock();
        loop {
            p = match p.since {
                None => self.pending.1.wait(p).unwrap_or_else(|e| e.into_inner()),
                Some(since) => {
                    let due = since + HOLD_RESULTS;
                    let now = Instant::now();
                    if now >= due {
                        self.write(&mut p);
                        p
                    } else {
                        self.pending.1.wait_timeout(p, due - now).unwrap_or_else(|e| e.into_inner()).0
                    }
                }
            };
        }
    }
}
