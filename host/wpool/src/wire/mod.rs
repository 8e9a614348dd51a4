//! The host ↔ worker wire protocol: length-prefixed postcard frames, and
//! everything else both sides must agree on (the hidden worker arguments,
//! the dial-back handshake in [`dial`], the sandbox status in the handshake).
//!
//! The only thing the host side (`host/`) and the worker side (`worker/`)
//! share besides the leaf modules `error`, `limits` (the engine settings
//! a `Hello` carries), `grants` and `kernel`: neither uses the other.
//! Owns the frame types and their encoding, nothing else: it never touches
//! processes or wasm. Every frame is `u32` little-endian payload length
//! followed by a postcard-encoded message. The reader checks the announced
//! length against a cap *before* allocating, so a compromised peer cannot make
//! the other side allocate more than the cap (docs/architecture.md §3).
//!
//! Public only with the `test-hooks` feature, so that the compromised-worker
//! tests and the benches can speak (and break) the protocol; not a stable
//! API.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub(crate) mod dial;
mod status;

/// Named by `remote::DialError`, public with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
pub use self::dial::LineError;
pub use self::status::{Enforcement, SandboxStatus};
use crate::limits::EngineSettings;

/// The hidden first argument that turns a process into a worker (see
/// `lib.rs`): `--wpool-worker HOST_PID` for a worker the host spawned itself.
pub(crate) const WORKER_ARG: &str = "--wpool-worker";

/// The argument after [`WORKER_ARG`] that makes a worker started through a
/// launcher dial back (see [`dial`]).
pub(crate) const DIAL_ARG: &str = "dial";

/// The hidden first argument of a pool's zygote (see `worker::zygote`):
/// `--wpool-zygote HOST_PID`. As long as [`WORKER_ARG`], so that a forked
/// worker can put its own command line in place of the zygote's.
pub(crate) const ZYGOTE_ARG: &str = "--wpool-zygote";

/// Bumped on every incompatible change of the frame types.
pub const PROTOCOL_VERSION: u32 = 9;

/// The cap on the very first frame (`Hello` / `Ready`), before limits are known.
pub const HANDSHAKE_FRAME_CAP: usize = 1 << 20;

/// Largest `init` configuration (larger read-only data belongs in a file the
/// kernel reads, see `Grants::data`).
pub const MAX_INIT_CONFIG: usize = 64 << 20;

/// Largest kernel a remote worker is sent (its wasm bytes travel in the
/// `Hello`).
pub const MAX_REMOTE_KERNEL: usize = 256 << 20;

/// The cap a worker puts on the host's `Hello`, which carries the `init`
/// configuration and, for a remote worker, the kernel's wasm bytes.
pub const HELLO_FRAME_CAP: usize = HANDSHAKE_FRAME_CAP + MAX_INIT_CONFIG + MAX_REMOTE_KERNEL;

/// Bytes of framing and bookkeeping a frame may carry beyond its payload data.
pub const FRAME_OVERHEAD: usize = 1 << 20;

/// A worker sends its accumulated results once they reach this many bytes,
/// and the host closes a chunk once its items do: a frame then holds at most
/// this much plus one item.
pub const BATCH_BYTES: usize = 1 << 20;

/// Longest message a worker sends about one item (kernel error strings are
/// the guest's to choose); longer ones are cut.
pub const MAX_MESSAGE: usize = 64 << 10;

/// The cap on frames after the handshake, both directions: one batch, one
/// item (or result) of the largest size, and bookkeeping.
pub fn frame_cap(max_item_size: usize) -> usize {
    max_item_size.saturating_add(BATCH_BYTES).saturating_add(FRAME_OVERHEAD)
}

/// Host → worker.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum HostMsg<'a> {
    /// First frame: what to run and under which limits.
    Hello(Box<Hello>),
    /// A chunk of items to run in order.
    Run {
        /// Host-chosen chunk id, echoed in [`WorkerMsg::Results`].
        chunk: u64,
        /// The items, borrowed from the frame buffer when decoding.
        #[serde(borrow)]
        items: Vec<&'a serde_bytes::Bytes>,
    },
    /// Finish and exit.
    Shutdown,
    /// Give chunk `chunk` back unrun if it has not started: the worker
    /// answers [`WorkerMsg::Revoked`] at once and never runs it, or runs it
    /// as if this had not come (its results are the answer). The host asks
    /// for the last chunk a worker holds when another worker is idle and
    /// there is nothing else to give it.
    Revoke {
        /// A chunk sent to this worker.
        chunk: u64,
    },
}

/// The handshake: everything a worker needs to load the kernel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub version: u32,
    /// 1-based slot number of this worker, for its messages.
    pub worker: u32,
    /// The kernel.
    pub code: Code,
    /// Engine and per-item limits; must match what compiled the artifact.
    pub settings: EngineSettings,
    /// For a `kernel-with-init` component: the configuration its `init`
    /// gets, once per instance, before any `map`.
    #[serde(with = "serde_bytes")]
    pub init: Option<Vec<u8>>,
    /// The kernel is a reducer: items are [`ReduceCall`]s.
    pub reducer: bool,
    /// The test hooks the host asked for (the `test-hooks` feature), `None`
    /// otherwise. Present whatever the features, so that the frame layout
    /// does not depend on them: postcard is not self-describing, and a host
    /// and its workers may be different binaries built with different
    /// features (the tests spawn the CLI).
    pub hooks: Option<TestHooks>,
}

/// Test hooks a host built with the `test-hooks` feature can send; a worker
/// built without it refuses them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TestHooks {
    /// The worker process aborts when it is handed this exact item. Stands
    /// in for a wasmtime or host bug that kills the worker process.
    pub crash_on: Option<Vec<u8>>,
    /// After confining itself, the worker tries forbidden syscalls and
    /// reports the outcomes in its sandbox status.
    pub probe_sandbox: bool,
    /// Local workers read the artifact file and check its digest, as when
    /// they cannot open the host's sealed memfd.
    pub file_artifact: bool,
    /// Host only: the spawning thread waits this many milliseconds after
    /// starting a worker before it reports the worker to the scheduler, so
    /// that the worker's first frames are read before that report.
    pub report_spawn_after_ms: u32,
}

/// Where a worker gets its kernel's code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Code {
    /// A worker on the host's machine: the precompiled artifact the host
    /// wrote into its private cache.
    Artifact {
        /// Path of the artifact in the host-private cache.
        path: String,
        /// BLAKE3 of the artifact, checked before the `unsafe` deserialize.
        digest: [u8; 32],
        /// The same bytes, as the host checked them, in a sealed memfd of
        /// the host: `(host pid, fd)`. The worker opens it through `/proc`,
        /// checks that it is sealed, and maps it: no read, no hash, one copy
        /// in memory for all workers. `path` is the fallback.
        sealed: Option<(u32, i32)>,
    },
    /// A worker started through a launcher, possibly on another machine: the
    /// kernel's wasm bytes, which the worker compiles itself (or finds in
    /// its own node-private cache). Precompiled code never crosses the
    /// network: `deserialize` trusts its input.
    Wasm {
        /// The kernel's name, for messages.
        name: String,
        /// The component's bytes.
        bytes: SharedBytes,
    },
}

/// Bytes that clones share: a kernel's wasm goes to every launched worker,
/// and a `Hello` is cloned for each.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedBytes(pub std::sync::Arc<[u8]>);

impl Serialize for SharedBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SharedBytes(serde_bytes::ByteBuf::deserialize(d)?.into_vec().into()))
    }
}

/// The item a reducer's pool runs: one `reduce(key, values)` call.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ReduceCall<'a> {
    #[serde(borrow)]
    pub key: &'a serde_bytes::Bytes,
    #[serde(borrow)]
    pub values: Vec<&'a serde_bytes::Bytes>,
}

/// Worker → host.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum WorkerMsg {
    /// The kernel is loaded; the worker takes `Run` frames from now on.
    /// `node` is the machine it runs on (the Slurm node name under Slurm,
    /// else the host name); `pid` is its process id there.
    Ready { version: u32, pid: u32, node: String, sandbox: SandboxStatus },
    /// Outcomes of items `offset..offset + outcomes.len()` of `chunk`, and
    /// the nanoseconds the worker spent running them (for chunk sizing);
    /// how many of them came out of `map-batch` calls, and how many batches
    /// failed and were run again item by item since the last report (for
    /// [`crate::stats::PoolStats`]).
    Results { chunk: u64, offset: u32, outcomes: Vec<Outcome>, busy_ns: u64, batched: u32, fallbacks: u32 },
    /// The worker cannot start (bad artifact, version mismatch); it exits next.
    Failed { message: String },
    /// The kernel's `init` failed on the worker's first instance: the same
    /// configuration would fail everywhere, so the run stops.
    InitFailed { message: String },
    /// `Results` of one item, `Ok` with a result of `len` bytes, which
    /// follow as the next frame's payload, unencoded: a big result goes out
    /// from the buffer wasmtime lifted it into (a vectored write) and the
    /// host reads it straight into its own buffer, without a copy into or
    /// out of a frame. Results of [`LARGE`] bytes or more travel so.
    /// The host's frame reader turns the pair into `Results`.
    LargeResult { chunk: u64, offset: u32, len: u32, busy_ns: u64, batched: u32, fallbacks: u32 },
    /// Chunk `chunk`, which the host asked back ([`HostMsg::Revoke`]), was
    /// not started and never will be: none of its items ran.
    Revoked { chunk: u64 },
}

/// How one item ended inside a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Outcome {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    Err(WireError),
}

/// A per-item failure as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireError {
    pub kind: WireKind,
    pub message: String,
    /// The last bytes the guest wrote to stderr during this item.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
}

/// Failure kinds a worker can observe itself (crashes are seen by the host).
///
/// Deliberately its own type, not the public `TaskErrorKind` it mirrors:
/// `worker_crashed` and `protocol` are the host's verdicts about a worker,
/// and a compromised worker must not be able to send them; the host maps
/// these to `TaskErrorKind` in one place (`scheduler/ledger.rs`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum WireKind {
    Kernel,
    Trap,
    Timeout,
    OutOfFuel,
    MemoryLimit,
    StackOverflow,
    KernelExit(i32),
    ItemTooLarge,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// Clean end of stream before a frame started.
    Eof,
    /// The announced length is over the cap; nothing was allocated.
    TooLarge { len: u64, cap: usize },
    /// The payload did not decode.
    Malformed(String),
    /// The stream failed or ended inside a frame.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Eof => write!(f, "end of stream"),
            FrameError::TooLarge { len, cap } => {
                write!(f, "frame of {len} bytes announced, cap is {cap}")
            }
            FrameError::Malformed(m) => write!(f, "malformed frame: {m}"),
            FrameError::Io(e) => write!(f, "i/o error inside a frame: {e}"),
        }
    }
}

/// Encodes `msg` as one frame (length prefix included) into `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    out.clear();
    append_frame(msg, out);
}

/// Appends `msg` as one frame to `out`, after the frames already there: a
/// batch of frames then goes out in one write.
pub fn append_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // Serializing into a Vec cannot fail for these types.
    let mut out_buf = std::mem::take(out);
    out_buf = postcard::to_extend(msg, out_buf).expect("postcard encoding into a Vec");
    let len = u32::try_from(out_buf.len() - start - 4).expect("frame under 4 GiB");
    out_buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    *out = out_buf;
}

/// Items (and results) of this many bytes or more are written from their
/// own buffers, never copied into a frame (see [`OutFrame`] and
/// [`WorkerMsg::LargeResult`]).
pub const LARGE: usize = 64 << 10;

/// Frames on their way out: encoded bytes, and large payloads that go in
/// between them at given positions, written from their own buffers with
/// vectored writes (the bytes around them are what the encoding would have
/// put there; the stream is the same).
#[derive(Debug)]
pub struct OutFrame<B> {
    pub bytes: Vec<u8>,
    /// Each large payload with the position in `bytes` it goes at.
    pub large: Vec<(usize, B)>,
}

impl<B: AsRef<[u8]>> OutFrame<B> {
    /// Bytes in all, large payloads included.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.large.iter().map(|(_, b)| b.as_ref().len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes it all, with as few system calls as `out` takes.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        if self.large.is_empty() {
            return out.write_all(&self.bytes);
        }
        let mut slices = Vec::with_capacity(2 * self.large.len() + 1);
        let mut at = 0;
        for (pos, payload) in &self.large {
            slices.push(io::IoSlice::new(&self.bytes[at..*pos]));
            slices.push(io::IoSlice::new(payload.as_ref()));
            at = *pos;
        }
        slices.push(io::IoSlice::new(&self.bytes[at..]));
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match out.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.large.clear();
    }
}

impl<B> Default for OutFrame<B> {
    fn default() -> Self {
        OutFrame { bytes: Vec::new(), large: Vec::new() }
    }
}

impl<B> From<Vec<u8>> for OutFrame<B> {
    fn from(bytes: Vec<u8>) -> Self {
        OutFrame { bytes, large: Vec::new() }
    }
}

/// Encodes `HostMsg::Run { chunk, items }` into `out` (cleared first) as
/// [`encode`] would, except that items of [`LARGE`] bytes or more, given
/// as `Err(buffer)`, are written from their buffers.
pub fn encode_run<B: AsRef<[u8]> + Clone>(chunk: u64, items: &[Result<&[u8], &B>], out: &mut OutFrame<B>) {
    out.clear();
    let b = &mut out.bytes;
    b.extend_from_slice(&[0; 4]);
    // postcard: the variant's index, then each field, integers and lengths
    // as LEB128 varints; bytes are a length and the bytes.
    varint(b, 1); // HostMsg::Run
    varint(b, chunk);
    varint(b, items.len() as u64);
    for item in items {
        match item {
            Ok(bytes) => {
                varint(b, bytes.len() as u64);
                b.extend_from_slice(bytes);
            }
            Err(buffer) => {
                varint(b, buffer.as_ref().len() as u64);
                out.large.push((b.len(), B::clone(buffer)));
            }
        }
    }
    let len = out.len() - 4;
    let len = u32::try_from(len).expect("frame under 4 GiB");
    out.bytes[..4].copy_from_slice(&len.to_le_bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode(msg, &mut buf);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame's payload into `buf` (reused between calls), refusing
/// lengths over `cap` before allocating.
pub fn read_frame(r: &mut impl Read, cap: usize, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Eof),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as u64;
    if len > cap as u64 {
        return Err(FrameError::TooLarge { len, cap });
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf).map_err(FrameError::Io)
}

/// Decodes a payload read by [`read_frame`].
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Malformed(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// What the host makes of a worker's frame: [`WorkerMsg::Results`] read in
/// place ([`ResultsAt`]), any other message as sent.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Results(ResultsAt),
    Msg(WorkerMsg),
}

/// A [`WorkerMsg::Results`] whose `Ok` outcomes are left in the frame: each
/// is the span `(start, len)` of the payload holding its bytes, so that the
/// host need not allocate a buffer per result.
#[derive(Debug, PartialEq)]
pub struct ResultsAt {
    pub chunk: u64,
    pub offset: u32,
    pub outcomes: Vec<Result<(usize, usize), WireError>>,
    pub busy_ns: u64,
    pub batched: u32,
    pub fallbacks: u32,
}

/// Decodes a worker's payload read by [`read_frame`]: what
/// `decode::<WorkerMsg>` accepts, and only that, with `Results` as
/// [`ResultsAt`] (a unit test holds the two decoders equal, on arbitrary
/// bytes too).
pub fn decode_worker_msg(payload: &[u8]) -> Result<Incoming, FrameError> {
    let mut rest = payload;
    match take::<u32>(&mut rest) {
        Ok(1) => decode_results(payload, rest).map(Incoming::Results), // WorkerMsg::Results
        _ => decode(payload).map(Incoming::Msg),
    }
}

/// The fields of a `Results` whose variant index `payload` began with;
/// `rest` is what follows it.
fn decode_results<'a>(payload: &'a [u8], mut rest: &'a [u8]) -> Result<ResultsAt, FrameError> {
    let rest = &mut rest;
    let chunk = take(rest)?;
    let offset = take(rest)?;
    let n = take::<usize>(rest)?;
    // Each outcome takes two bytes at least: a hostile count allocates no
    // more than the frame could hold.
    let mut outcomes = Vec::with_capacity(n.min(rest.len() / 2));
    for _ in 0..n {
        outcomes.push(match take::<u32>(rest)? {
            0 => {
                let bytes: &serde_bytes::Bytes = take(rest)?;
                Ok((bytes.as_ptr() as usize - payload.as_ptr() as usize, bytes.len()))
            }
            1 => Err(take::<WireError>(rest)?),
            v => return Err(FrameError::Malformed(format!("unknown outcome variant {v}"))),
        });
    }
    let msg = ResultsAt { chunk, offset, outcomes, busy_ns: take(rest)?, batched: take(rest)?, fallbacks: take(rest)? };
    match rest.len() {
        0 => Ok(msg),
        trailing => Err(FrameError::Malformed(format!("{trailing} trailing bytes"))),
    }
}

/// One postcard value off the front of `rest`.
fn take<'a, T: Deserialize<'a>>(rest: &mut &'a [u8]) -> Result<T, FrameError> {
    let (v, tail) = postcard::take_from_bytes::<T>(rest).map_err(|e| FrameError::Malformed(e.to_string()))?;
    *rest = tail;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_worker(msg: &WorkerMsg) -> WorkerMsg {
        let mut buf = Vec::new();
        encode(msg, &mut buf);
        let mut payload = Vec::new();
        read_frame(&mut &buf[..], 1 << 20, &mut payload).unwrap();
        decode(&payload).unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let msg = WorkerMsg::Results {
            chunk: 7,
            offset: 3,
            outcomes: vec![
                Outcome::Ok(b"abc".to_vec()),
                Outcome::Err(WireError { kind: WireKind::KernelExit(1), message: "m".into(), stderr: vec![0, 1] }),
            ],
            busy_ns: 42,
            batched: 1,
            fallbacks: 2,
        };
        assert_eq!(roundtrip_worker(&msg), msg);
        let items = [serde_bytes::Bytes::new(b"x"), serde_bytes::Bytes::new(b"")];
        let run = HostMsg::Run { chunk: 1, items: items.to_vec() };
        let mut buf = Vec::new();
        encode(&run, &mut buf);
        let mut payload = Vec::new();
        read_frame(&mut &buf[..], 1 << 20, &mut payload).unwrap();
        assert_eq!(decode::<HostMsg>(&payload).unwrap(), run);
    }

    /// What [`decode_worker_msg`] read, with each span's bytes copied out:
    /// comparable with what [`decode`] reads.
    fn read_in_place(payload: &[u8]) -> Result<WorkerMsg, FrameError> {
        Ok(match decode_worker_msg(payload)? {
            Incoming::Msg(msg) => msg,
            Incoming::Results(r) => WorkerMsg::Results {
                chunk: r.chunk,
                offset: r.offset,
                outcomes: (r.outcomes.into_iter())
                    .map(|o| match o {
                        Ok((start, len)) => Outcome::Ok(payload[start..start + len].to_vec()),
                        Err(e) => Outcome::Err(e),
                    })
                    .collect(),
                busy_ns: r.busy_ns,
                batched: r.batched,
                fallbacks: r.fallbacks,
            },
        })
    }

    /// The two decoders agree on `payload`: the same message, or both refuse.
    fn decoders_agree(payload: &[u8]) -> Result<(), TestCaseError> {
        match (decode::<WorkerMsg>(payload), read_in_place(payload)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "serde: {a:?}; in place: {b:?}"),
        }
        Ok(())
    }

    fn any_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Outcome::Ok),
            (any::<i32>(), ".{0,20}", proptest::collection::vec(any::<u8>(), 0..20)).prop_map(
                |(code, message, stderr)| {
                    Outcome::Err(WireError { kind: WireKind::KernelExit(code), message, stderr })
                }
            ),
        ]
    }

    #[test]
    fn run_frames_with_large_items_written_apart_are_the_encoded_frames() {
        let big = vec![7u8; LARGE + 300];
        let small = [1u8; 200];
        for items in [vec![], vec![Ok(&small[..])], vec![Err(&big), Ok(&small[..]), Err(&big), Ok(&[][..])]] {
            for chunk in [0, 127, 128, u64::MAX] {
                let mut out = OutFrame::default();
                encode_run(chunk, &items, &mut out);
                let mut written = Vec::new();
                out.write_to(&mut written).unwrap();
                let refs: Vec<&serde_bytes::Bytes> =
                    items.iter().map(|i| serde_bytes::Bytes::new(i.map_or_else(|b| &b[..], |s| s))).collect();
                let mut want = Vec::new();
                encode(&HostMsg::Run { chunk, items: refs }, &mut want);
                assert_eq!(written, want, "chunk {chunk}, {} items", items.len());
                assert_eq!(out.len(), want.len());
            }
        }
    }

    // P2: a 4 GiB announcement is refused before any allocation.
    #[test]
    fn p2_huge_length_prefix_is_rejected_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let mut payload = Vec::new();
        match read_frame(&mut &bytes[..], 1 << 20, &mut payload) {
            Err(FrameError::TooLarge { len, cap }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(cap, 1 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(payload.capacity(), 0, "nothing may be allocated");
    }

    #[test]
    fn truncated_frame_is_an_io_error_and_empty_stream_is_eof() {
        let mut payload = Vec::new();
        assert!(matches!(read_frame(&mut &[][..], 16, &mut payload), Err(FrameError::Eof)));
        assert!(matches!(read_frame(&mut &[5, 0][..], 16, &mut payload), Err(FrameError::Io(_))));
        assert!(matches!(read_frame(&mut &[5, 0, 0, 0, 1][..], 16, &mut payload), Err(FrameError::Io(_))));
    }

    proptest! {
        // P8: arbitrary bytes into the frame decoder never panic and never
        // allocate past the cap.
        #[test]
        fn p8_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut payload = Vec::new();
            let mut r = &bytes[..];
            while let Ok(()) = read_frame(&mut r, 1024, &mut payload) {
                prop_assert!(payload.len() <= 1024);
                let _ = decode::<WorkerMsg>(&payload);
                let _ = decode::<HostMsg>(&payload);
            }
        }

        #[test]
        fn p8_arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<WorkerMsg>(&payload);
            let _ = decode::<HostMsg>(&payload);
            decoders_agree(&payload)?;
        }

        // The in-place reading of results accepts exactly what postcard
        // does and reads the same message: whole frames, frames cut short
        // or with a byte changed, and arbitrary bytes after the variant.
        #[test]
        fn results_read_in_place_are_the_results_sent(
            chunk in any::<u64>(),
            offset in any::<u32>(),
            outcomes in proptest::collection::vec(any_outcome(), 0..20),
            counters in any::<(u64, u32, u32)>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (busy_ns, batched, fallbacks) = counters;
            let msg = WorkerMsg::Results { chunk, offset, outcomes, busy_ns, batched, fallbacks };
            let mut frame = Vec::new();
            encode(&msg, &mut frame);
            let payload = &frame[4..];
            prop_assert_eq!(read_in_place(payload).unwrap(), msg);
            decoders_agree(&payload[..cut.index(payload.len())])?;
            let mut changed = payload.to_vec();
            let at = flip.0.index(changed.len());
            changed[at] ^= flip.1;
            decoders_agree(&changed)?;
            decoders_agree(&[&[1][..], &tail].concat())?;
        }
    }
}
