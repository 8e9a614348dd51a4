//! The worker process: handshake, the frame loop, and the wasm thread.
//!
//! Owns the life of one worker process after `exec`. It speaks the protocol
//! ([`crate::wire`]; besides it, it shares only the leaf modules with the
//! host side, never `host/`) over its [`Transport`]: the fds that were
//! stdin/stdout at start (moved aside so that nothing else can write into the
//! protocol stream) or the connection it dialled back on; it confines itself
//! ([`confine`]), runs items through [`runtime`] and hands their results to
//! the [`outbox`]. It never knows about scheduling or output formats.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use wasmtime::component::Component;
use wasmtime::Engine;

use self::batch::Batcher;
use self::outbox::{Outbox, HOLD_RESULTS};
use self::runtime::{Batch, Runtime};
use self::transport::Connection;
use crate::kernel::{ArtifactCache, Unchecked};
use crate::wire::{
    self, frame_cap, Code, FrameError, Hello, HostMsg, Outcome, SandboxStatus, WireKind, WorkerMsg, HELLO_FRAME_CAP,
    PROTOCOL_VERSION,
};

mod batch;
pub(crate) mod confine;
pub(crate) mod dial;
mod outbox;
pub(crate) mod runtime;
mod transport;
pub(crate) mod zygote;

pub(crate) use self::transport::Transport;

/// How often the epoch ticker advances the engine's epoch.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a worker process gave up. The worker prints it, causes included
/// (see [`report`]), on stderr, whose tail the host shows; a failure to load
/// the kernel also goes to the host as [`WorkerMsg::Failed`].
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    /// The worker flag without a valid mode.
    #[error(
        "{} is for worker processes that a wpool host starts, followed by the host's pid or `{}`",
        crate::wire::WORKER_ARG,
        crate::wire::DIAL_ARG
    )]
    NotFromHost,
    /// The protocol fds the host set up could not be moved aside.
    #[error("protocol fds")]
    ProtocolFds(#[source] io::Error),
    /// A launched worker could not reach its host.
    #[error(transparent)]
    Dial(#[from] dial::DialError),
    /// The connection to the host could not be split into input and output.
    #[error("connection")]
    Connection(#[source] io::Error),
    /// The handshake frame did not arrive whole.
    #[error("handshake: {0}")]
    Handshake(FrameError),
    /// The first message was not a `Hello`.
    #[error("handshake: expected Hello, got {0}")]
    NotHello(String),
    /// The host asked for test hooks, and this worker was built without them.
    #[error("the host asked for test hooks, and this worker was built without the `test-hooks` feature")]
    NoTestHooks,
    /// The host speaks another protocol version.
    #[error("protocol version {host} from host, worker speaks {PROTOCOL_VERSION}")]
    Version {
        /// The host's version.
        host: u32,
    },
    /// The wasmtime engine could not be built with the host's settings.
    #[error("engine")]
    Engine(#[source] wasmtime::Error),
    /// The host's artifact could not be read.
    #[error("reading artifact {path}")]
    ReadArtifact {
        /// The artifact's path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The artifact is not the one the host wrote.
    #[error("artifact {path} does not match the digest the host recorded")]
    ArtifactDigest {
        /// The artifact's path.
        path: String,
    },
    /// wasmtime refused the artifact.
    #[error("artifact")]
    Artifact(#[source] wasmtime::Error),
    /// The kernel's wasm did not compile.
    #[error("{name}")]
    Compile {
        /// The kernel's name.
        name: String,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
    /// The compiled kernel could not be prepared for instantiation.
    #[error("preparing kernel")]
    Prepare(#[source] wasmtime::Error),
    /// A thread of the worker could not be started.
    #[error("spawning the {what}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel's `init` failed (the runtime's message).
    #[error("{0}")]
    Init(String),
    /// The wasm thread ended without a word.
    #[error("the wasm thread is gone")]
    WasmThreadGone,
    /// A frame from the host was broken.
    #[error("reading from host: {0}")]
    Read(FrameError),
    /// A second `Hello` after the handshake.
    #[error("unexpected second Hello")]
    SecondHello,
    /// The host could not be written to.
    #[error("writing to host")]
    Write(#[source] io::Error),
}

/// Set first thing in a worker process. Code shared with the host that
/// would start threads (parallel hashing) stays on one thread in a worker:
/// threads that exist when the worker confines itself would stay outside
/// Landlock, which binds the calling thread and the threads it starts later.
static IN_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a worker (see [`IN_WORKER`]).
pub(crate) fn in_worker() -> bool {
    IN_WORKER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Entry point of a worker process. Never returns.
pub(crate) fn main(transport: Transport) -> ! {
    IN_WORKER.store(true, std::sync::atomic::Ordering::Relaxed);
    keep_big_buffers();
    let code = match run(transport) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("wpool worker {}: {}", std::process::id(), crate::error::with_causes(&error));
            2
        }
    };
    std::process::exit(code)
}

/// Frames and results of big items are buffers of megabytes, one after
/// another. By default glibc maps each from the kernel and unmaps it when
/// freed, so every 1 MiB item costs hundreds of page faults and as many
/// zeroed pages, several times over. Serve them from the heap instead, and
/// hand memory back once 16 MiB of it is free. Items beyond 64 MiB are still
/// mapped on their own.
pub(crate) fn keep_big_buffers() {
    // SAFETY: mallopt only changes allocator parameters; called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// The worker's life in order: reach the host, take the handshake, load
/// the kernel, lock down, then serve `Run` frames until the host is done.
fn run(transport: Transport) -> Result<(), WorkerError> {
    let node = node_name();
    let Connection { mut input, output, node_cache } = transport.open()?;
    confine::harden_worker();
    let Some(hello) = handshake(&mut input)? else { return Ok(()) };
    let output = Arc::new(Mutex::new(output));
    let runtime = match load(&hello, node_cache.as_ref()) {
        Ok(rt) => rt,
        Err(error) => {
            let _ = send(&output, &WorkerMsg::Failed { message: crate::error::with_causes(&error) });
            return Err(error);
        }
    };
    let (sandbox, ticker) = lock_down(&hello, &runtime);
    transport.watch()?;
    let revoked = Arc::new(Revocations::default());
    let items = start_wasm_thread(runtime, &hello, &output, ticker, Arc::clone(&revoked))?;
    send(&output, &WorkerMsg::Ready { version: PROTOCOL_VERSION, pid: std::process::id(), node, sandbox })?;
    serve(input, frame_cap(hello.settings.limits.max_item_size), &items, &revoked, &output)
}

/// Which chunk the wasm thread took last, and the chunks given back to the
/// host before it took them ([`HostMsg::Revoke`]). The reader answers a
/// request at once: `Revoked` if the wasm thread has not taken the chunk
/// (which it then skips), nothing if it has (its results are the answer).
/// A worker's chunks come in increasing ids, so "taken" is one number.
#[derive(Default)]
struct Revocations {
    /// The id of the chunk the wasm thread took last.
    taken: std::sync::atomic::AtomicU64,
    /// Some chunk was given back: the wasm thread looks under the lock.
    any: std::sync::atomic::AtomicBool,
    given_back: Mutex<Vec<u64>>,
}

impl Revocations {
    /// The host asks for `chunk` back: whether it is given back (never to
    /// run here).
    fn give_back(&self, chunk: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let mut given = self.given_back.lock().unwrap_or_else(|p| p.into_inner());
        given.push(chunk);
        self.any.store(true, SeqCst);
        // Taken already (or taken as we looked, before seeing `any`): it runs.
        if self.taken.load(SeqCst) >= chunk {
            given.pop();
            return false;
        }
        true
    }

    /// The wasm thread takes `chunk`: whether to skip it, given back.
    fn take(&self, chunk: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.taken.store(chunk, SeqCst);
        if !self.any.load(SeqCst) {
            return false;
        }
        let mut given = self.given_back.lock().unwrap_or_else(|p| p.into_inner());
        let skip = given.contains(&chunk);
        given.retain(|&c| c > chunk);
        if given.is_empty() {
            self.any.store(false, SeqCst);
        }
        skip
    }
}

/// Reads the host's `Hello`; `None` when the host closed the stream first.
fn handshake(input: &mut File) -> Result<Option<Box<Hello>>, WorkerError> {
    let mut buf = Vec::new();
    match wire::read_frame(input, HELLO_FRAME_CAP, &mut buf) {
        Ok(()) => {}
        Err(FrameError::Eof) => return Ok(None),
        Err(e) => return Err(WorkerError::Handshake(e)),
    }
    match wire::decode::<HostMsg>(&buf) {
        Ok(HostMsg::Hello(hello)) => Ok(Some(hello)),
        Ok(other) => Err(WorkerError::NotHello(format!("{other:?}"))),
        Err(e) => Err(WorkerError::Handshake(e)),
    }
}

/// Writes one message to the host.
fn send(output: &Mutex<File>, msg: &WorkerMsg) -> Result<(), WorkerError> {
    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
    wire::write_frame(&mut *out, msg).map_err(WorkerError::Write)
}

/// The kernel is in memory: from here on the worker needs no filesystem
/// (but granted directories), no network, no exec. Confines before any
/// other thread starts, so that every thread inherits it; then starts the
/// epoch ticker if items have a timeout or batches may run.
fn lock_down(hello: &Hello, runtime: &Runtime) -> (SandboxStatus, Option<Ticker>) {
    let mut sandbox = confine::confine(&hello.settings.grants);
    // `load` refused hooks already without the feature; `cfg!` also lets
    // the compiler drop the hook from a user's build.
    if cfg!(feature = "test-hooks") && hello.hooks.as_ref().is_some_and(|h| h.probe_sandbox) {
        sandbox.probes = confine::probe();
    }
    // Batches have a deadline of their own, timeout or not.
    let ticker =
        (hello.settings.limits.timeout.is_some() || runtime.can_batch()).then(|| Ticker::start(runtime.engine()));
    (sandbox, ticker)
}

/// Starts the wasm thread, which runs `init` (on the first instance) before
/// anything else and says how it went: a failing `init` stops the run
/// (without `init`, returns at once). Returns where `Run` frames go.
fn start_wasm_thread(
    runtime: Runtime,
    hello: &Hello,
    output: &Arc<Mutex<File>>,
    ticker: Option<Ticker>,
    revoked: Arc<Revocations>,
) -> Result<Sender<Vec<u8>>, WorkerError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let (prepared_tx, prepared) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let stack = crate::limits::native_stack_for(&hello.settings.limits);
    let crash_on = hello.hooks.as_ref().and_then(|h| h.crash_on.clone());
    let out = Arc::clone(output);
    let has_init = hello.init.is_some();
    std::thread::Builder::new()
        .name("wpool-wasm".into())
        .stack_size(stack)
        .spawn(move || {
            let mut runtime = runtime;
            let result = if has_init { runtime.prepare() } else { Ok(()) };
            let ok = result.is_ok();
            let _ = prepared_tx.send(result);
            if ok {
                wasm_loop(runtime, rx, out, crash_on, ticker, &revoked);
            }
        })
        .map_err(|source| WorkerError::Spawn { what: "wasm thread", source })?;
    if !has_init {
        // Nothing to wait for: `Run` frames queue until the thread runs
        // (waiting for a thread just started cost a start-up up to half a
        // millisecond on a busy machine).
        return Ok(tx);
    }
    match prepared.recv() {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(message)) => {
            send(output, &WorkerMsg::InitFailed { message: message.clone() })?;
            Err(WorkerError::Init(message))
        }
        Err(_) => Err(WorkerError::WasmThreadGone),
    }
}

/// Reads the host's frames and hands each `Run` to the wasm thread. Ends
/// the process when the host says so or closes the stream.
fn serve(
    input: File,
    cap: usize,
    items: &Sender<Vec<u8>>,
    revoked: &Revocations,
    output: &Mutex<File>,
) -> Result<(), WorkerError> {
    // Small frames arrive many per read.
    let mut input = std::io::BufReader::with_capacity(64 << 10, input);
    loop {
        let mut frame = Vec::new();
        match wire::read_frame(&mut input, cap, &mut frame) {
            Ok(()) => {}
            // The host closed our input: it is gone or done with us. Exit now,
            // even mid-item: nobody is left to read the result.
            Err(FrameError::Eof) => std::process::exit(0),
            Err(e) => return Err(WorkerError::Read(e)),
        }
        match wire::decode::<HostMsg>(&frame) {
            Ok(HostMsg::Run { .. }) => {}
            Ok(HostMsg::Revoke { chunk }) => {
                if revoked.give_back(chunk) {
                    send(output, &WorkerMsg::Revoked { chunk })?;
                }
                continue;
            }
            Ok(HostMsg::Shutdown) => std::process::exit(0),
            Ok(HostMsg::Hello(_)) => return Err(WorkerError::SecondHello),
            Err(e) => return Err(WorkerError::Read(e)),
        }
        if items.send(frame).is_err() {
            return Err(WorkerError::WasmThreadGone);
        }
    }
}

/// This machine's name: the Slurm node name inside a Slurm step (several
/// nodes may share one host name, as in the test cluster), else the host
/// name.
fn node_name() -> String {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| gethostname::gethostname().into_string().ok())
        .unwrap_or_default()
}

/// Verifies, deserializes (or compiles) and prepares the kernel of the
/// handshake.
fn load(hello: &Hello, node_cache: Option<&ArtifactCache>) -> Result<Runtime, WorkerError> {
    if hello.version != PROTOCOL_VERSION {
        return Err(WorkerError::Version { host: hello.version });
    }
    if hello.hooks.is_some() && !cfg!(feature = "test-hooks") {
        return Err(WorkerError::NoTestHooks);
    }
    let mut config = hello.settings.wasmtime_config();
    // Compile (a launched worker) on this thread only: threads that exist
    // when the worker confines itself would stay outside Landlock, which
    // binds the calling thread and those it starts later.
    config.parallel_compilation(false);
    if hello.settings.limits.max_items_per_instance.is_some() {
        config.allocation_strategy(pooling(&hello.settings.limits));
    }
    let engine = Engine::new(&config).map_err(WorkerError::Engine)?;
    let component = match &hello.code {
        Code::Artifact { path, digest, sealed } => {
            // The host's sealed memfd when it can be opened (not with a
            // `/proc` that hides other processes) and mapped executable (some
            // security policies forbid that for memfds), else the file.
            //
            // SAFETY: `deserialize` trusts its input to be a wasmtime
            // artifact. This memfd holds the bytes the host read from its
            // private (0700) cache, which it wrote itself, and checked against
            // the digest it recorded; it is sealed (checked by `open_sealed`),
            // so they cannot have changed since.
            let mapped = sealed
                .and_then(|(pid, fd)| open_sealed(pid, fd))
                .and_then(|file| unsafe { crate::kernel::deserialize_sealed(&engine, &file) }.ok());
            match mapped {
                Some(component) => component,
                None => crate::kernel::read_checked(&engine, Path::new(path), digest).map_err(|e| match e {
                    Unchecked::Read(source) => WorkerError::ReadArtifact { path: path.clone(), source },
                    Unchecked::Digest => WorkerError::ArtifactDigest { path: path.clone() },
                    Unchecked::Deserialize(e) => WorkerError::Artifact(e),
                })?,
            }
        }
        // Wasm from the network is compiled here, never deserialized.
        Code::Wasm { name, bytes } => {
            // Without a usable cache (none, or a read-only home) the worker
            // compiles the kernel itself, every time.
            let cached = node_cache.and_then(|c| c.component(&engine, name, &bytes.0, &hello.settings).ok());
            match cached {
                Some(component) => component,
                None => Component::new(&engine, &bytes.0)
                    .map_err(|source| WorkerError::Compile { name: name.clone(), source })?,
            }
        }
    };
    let ticks = |t: Duration| (t.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1);
    // The first tick of an item comes anywhere from 0 to one tick after it
    // starts: one tick more, so that no item is stopped before its timeout
    // (it is stopped within a tick after it, plus the ticker's lateness).
    let timeout = hello.settings.limits.timeout.map(|t| ticks(t) + 1);
    Runtime::new(
        engine,
        &component,
        hello.settings.clone(),
        timeout,
        ticks(batch::BATCH_DEADLINE),
        hello.init.clone(),
        hello.reducer,
    )
    .map_err(WorkerError::Prepare)
}

/// The host's memfd `fd`, if it can be opened and carries the seals that
/// make its contents final.
fn open_sealed(host_pid: u32, fd: i32) -> Option<File> {
    let file = File::open(format!("/proc/{host_pid}/fd/{fd}")).ok()?;
    // SAFETY: a query on a descriptor we own.
    let seals = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_GET_SEALS) };
    let sealed = seals >= 0 && seals & crate::kernel::FINAL_SEALS == crate::kernel::FINAL_SEALS;
    sealed.then_some(file)
}

/// With instances replaced often (`--isolate`, `--deterministic`,
/// `--max-items-per-instance`), fresh instances come from a pool of
/// pre-reserved slots with copy-on-write memory images: 12.5 µs per item
/// instead of 31 µs (echo kernel, `benches/hotpaths.rs`). Not by default:
/// setting the pool up adds about 2.5 ms to a worker's start, and an instance
/// that is reused is created once. One instance lives at a time; the counts
/// leave room for the one being replaced.
fn pooling(limits: &crate::Limits) -> wasmtime::InstanceAllocationStrategy {
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_component_instances(4)
        .total_core_instances(64)
        .total_memories(16)
        .total_tables(64)
        .max_tables_per_module(8)
        .max_memories_per_module(2)
        // wasm32 memories stop at 4 GiB; the pool refuses a larger slot.
        .max_memory_size(limits.memory.map_or(4 << 30, |m| m.min(4 << 30) as usize));
    wasmtime::InstanceAllocationStrategy::Pooling(pooling)
}

/// The thread that advances the engine's epoch every [`EPOCH_TICK`], for
/// timeouts and batch deadlines. It ticks while the wasm thread has work and
/// sleeps while the worker waits for some: an idle pool wakes nobody up 200
/// times a second.
struct Ticker {
    busy: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::Thread,
}

impl Ticker {
    /// Starts ticking, busy (`init` runs under the deadline too).
    fn start(engine: &Engine) -> Ticker {
        use std::sync::atomic::Ordering;
        let engine = engine.weak();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&busy);
        let handle = std::thread::Builder::new()
            .name("wpool-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
                // An `unpark` that came before this `park` is not lost.
                while !flag.load(Ordering::Acquire) {
                    std::thread::park();
                }
            })
            .expect("spawning the epoch ticker");
        Ticker { busy, thread: handle.thread().clone() }
    }

    /// Work arrived: tick (again).
    fn busy(&self) {
        if !self.busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.thread.unpark();
        }
    }

    /// No work: stop ticking after the current tick.
    fn idle(&self) {
        self.busy.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Runs chunks in order. Results go out in batches: one write carries the
/// results of many small chunks while items are fast, so that the per-item
/// cost is not a syscall and a context switch; as soon as items are slow, or
/// there is nothing more to run, they go out at once. Fast items go to the
/// kernel's `map-batch`, when it has one, several per call ([`Batcher`]).
/// One clock read per call.
fn wasm_loop(
    mut rt: Runtime,
    rx: Receiver<Vec<u8>>,
    out: Arc<std::sync::Mutex<File>>,
    crash_on: Option<Vec<u8>>,
    ticker: Option<Ticker>,
    revoked: &Revocations,
) {
    let outbox = Outbox::new(out);
    let max_item = rt.max_item_size();
    let mut batcher = Batcher::new(rt.timeout());
    let mut last_took = Duration::ZERO;
    let mut now: Instant;
    loop {
        let payload = match rx.try_recv() {
            Ok(p) => p,
            Err(_) => {
                // Idle: whatever is pending goes out before waiting.
                outbox.flush();
                if let Some(t) = &ticker {
                    t.idle();
                }
                let p = match rx.recv() {
                    Ok(p) => p,
                    Err(_) => return,
                };
                if let Some(t) = &ticker {
                    t.busy();
                }
                p
            }
        };
        let Ok(HostMsg::Run { chunk, items }) = wire::decode::<HostMsg>(&payload) else {
            std::process::exit(3);
        };
        if revoked.take(chunk) {
            // Given back: the reader told the host.
            continue;
        }
        let items: Vec<&[u8]> = items.iter().map(|i| &i[..]).collect();
        // Time spent waiting for this chunk is nobody's kernel time.
        now = Instant::now();
        let mut done = 0;
        while done < items.len() {
            // Do not hold results back during an item that may be long (the
            // outbox writes results that are due by size or age itself).
            if last_took >= HOLD_RESULTS {
                outbox.flush();
            }
            let n = if rt.can_batch() { batcher.next(&items[done..], max_item) } else { 1 };
            let run = &items[done..done + n];
            // The crash hook (see `lock_down` on `cfg!`).
            if cfg!(feature = "test-hooks") && run.iter().any(|item| crash_on.as_deref() == Some(*item)) {
                std::process::abort();
            }
            let start = now;
            let outcomes = match n {
                1 => None,
                _ => match rt.run_batch(run) {
                    Batch::Done(outcomes) => {
                        batcher.succeeded();
                        Some(outcomes)
                    }
                    Batch::Failed => {
                        batcher.failed();
                        outbox.fell_back();
                        None
                    }
                    Batch::Unavailable => None,
                },
            };
            let last = done + n == items.len();
            match outcomes {
                // Every item got its outcome from the batch.
                Some(outcomes) if outcomes.iter().all(Option::is_some) => {
                    now = Instant::now();
                    last_took = now.saturating_duration_since(start);
                    batcher.measured(last_took, n);
                    outbox.push(chunk, outcomes.into_iter().flatten(), last_took, true, last, now);
                }
                // Items of a failed batch, or the kernel errors of a batch
                // that wrote to stderr, run alone with `map`.
                outcomes => {
                    let mut from_batch = outcomes.map(Vec::into_iter);
                    for (i, item) in run.iter().enumerate() {
                        let (outcome, batched) = match from_batch.as_mut().and_then(Iterator::next).flatten() {
                            Some(outcome) => (outcome, true),
                            None => {
                                let outcome = rt.run_item(item);
                                batcher.single(!matches!(&outcome, Outcome::Err(e) if e.kind != WireKind::Kernel));
                                (outcome, false)
                            }
                        };
                        let end = Instant::now();
                        last_took = end.saturating_duration_since(now);
                        now = end;
                        if !batched {
                            batcher.measured(last_took, 1);
                        }
                        outbox.push(chunk, [outcome], last_took, batched, last && i + 1 == n, now);
                    }
                }
            }
            done += n;
        }
    }
}
