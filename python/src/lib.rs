//! `wpool._wpool`: the Rust half of the Python package `wpool`.
//!
//! The Python half (`python/wpool/__init__.py`) owns the public API, the
//! exception classes and the docstrings; this module owns everything that
//! touches a [`wpool::Pool`]. Each Python pool has a driver thread that owns
//! its `wpool::Pool` (built there, dropped there) and runs one run at a time.
//! A run's items are pulled from the Python iterator on the *caller's*
//! thread, with the GIL, a few at a time as the scheduler takes them (its
//! bounded input channel is the backpressure); the caller waits for results
//! with the GIL released, waking every [`POLL`] to let Python deliver signals
//! (Ctrl-C). No thread but the caller's ever needs the GIL, so nothing here
//! can deadlock on it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use wpool::mapreduce::MapReduce;
use wpool::pipeline::Pipeline;
use wpool::stats::PoolStats;
use wpool::{Chunksize, Error, ItemIndex, Kernel, Limits, Pool, SharedResult, TaskError, TaskErrorKind};

/// How often a waiting caller wakes up to let Python run signal handlers.
const POLL: Duration = Duration::from_millis(20);
/// Most items pulled from the Python iterator in one batch.
const MAX_BATCH: usize = 1024;
/// Most results handed to Python in one list.
const MAX_RESULTS: usize = 8192;

create_exception!(_wpool, PoolFailure, PyException, "A pool-level failure: args are (kind, message).");

/// The name of a pool error's variant, which `wpool/__init__.py` maps to its
/// exception class.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::KernelNotFound { .. } => "KernelNotFound",
        Error::KernelRead { .. } => "KernelRead",
        Error::NotWasm { .. } => "NotWasm",
        Error::CoreModule { .. } => "CoreModule",
        Error::InvalidKernel { .. } => "InvalidKernel",
        Error::WorldMismatch { .. } => "WorldMismatch",
        Error::UnsatisfiedImports { .. } => "UnsatisfiedImports",
        Error::NoInit { .. } => "NoInit",
        Error::InitFailed { .. } => "InitFailed",
        Error::Cache { .. } => "CacheError",
        Error::DataFile { .. } => "DataFileError",
        Error::InitTooLarge { .. } => "InitTooLarge",
        Error::KernelTooLargeToSend { .. } | Error::ItemSizeTooLarge { .. } => "ConfigError",
        Error::NoWorkers | Error::ZeroChunksize | Error::GrantNotADirectory { .. } | Error::EmptyLauncher => {
            "ConfigError"
        }
        Error::EmptyPipeline | Error::WrongKernelForStage { .. } => "ConfigError",
        Error::Spawn { .. } | Error::WorkerStartup { .. } => "WorkerStartup",
        Error::RestartIntensity { .. } => "RestartIntensity",
        Error::SandboxUnavailable { .. } => "SandboxUnavailable",
        Error::Cancelled => "Cancelled",
        _ => "PoolError",
    }
}

fn pool_failure(e: &Error) -> PyErr {
    PoolFailure::new_err((error_kind(e), e.with_causes()))
}

/// A task error as the tuple `wpool.TaskError._from_raw` takes:
/// `(kind, message, index, attempts, worker, stderr, detail)`, `detail`
/// being the exit status of a `kernel_exit` or how a crashed worker ended.
fn task_error<'py>(py: Python<'py>, e: &TaskError, stage: Option<usize>) -> PyResult<Bound<'py, PyTuple>> {
    let detail: Option<String> = match &e.kind {
        TaskErrorKind::KernelExit(code) => Some(code.to_string()),
        TaskErrorKind::WorkerCrashed(crash) => Some(crash.to_string()),
        _ => None,
    };
    (
        e.kind.name(),
        e.message.as_str(),
        e.index.get(),
        e.attempts,
        e.worker.map(|w| w.0),
        PyBytes::new(py, &e.stderr),
        detail,
        stage,
    )
        .into_pyobject(py)
}

/// Adds a Python item to `batch`: a `bytes` (or a `str` whose UTF-8 Python
/// keeps) is copied straight from the object, without a buffer of its own.
fn push_item(batch: &mut wpool::Items, item: &Bound<'_, PyAny>, index: u64) -> PyResult<()> {
    match item_bytes(item, index)? {
        Cow::Borrowed(bytes) => batch.push(bytes),
        Cow::Owned(bytes) => batch.push_vec(bytes),
    }
    Ok(())
}

/// A Python item as bytes: `bytes`, `bytearray`, `memoryview`-like buffers
/// through `bytes()`, or `str` as UTF-8; borrowed from the object where it
/// holds them.
fn item_bytes<'a>(item: &'a Bound<'_, PyAny>, index: u64) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = item.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = item.cast::<PyString>() {
        return Ok(match s.to_cow()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        });
    }
    if let Ok(v) = item.extract::<Vec<u8>>() {
        if !item.is_instance_of::<pyo3::types::PyList>() && !item.is_instance_of::<PyTuple>() {
            return Ok(Cow::Owned(v));
        }
    }
    Err(PyTypeError::new_err(format!(
        "item {index}: expected bytes or str, got {}",
        item.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
    )))
}

/// A timeout in seconds must be a positive number (`Duration` would panic on
/// a negative or infinite one).
fn check_timeout(timeout: Option<f64>) -> PyResult<()> {
    match timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            Err(PyValueError::new_err(format!("timeout must be a positive number of seconds, not {t}")))
        }
        _ => Ok(()),
    }
}

/// The options of a pool, as `wpool.Pool.__init__` passes them.
#[derive(Clone)]
struct Options {
    kernel: PathBuf,
    worker_program: PathBuf,
    processes: Option<usize>,
    timeout: Option<f64>,
    memory: Option<u64>,
    fuel: Option<u64>,
    max_item_size: Option<usize>,
    retries: Option<u32>,
    init: Option<Vec<u8>>,
    data: Option<PathBuf>,
    max_items_per_instance: Option<u64>,
    batch: bool,
    require_sandbox: bool,
}

impl Options {
    /// A stage of a pipeline or a MapReduce: these options, the others at
    /// their defaults.
    fn stage(
        kernel: PathBuf,
        worker_program: &Path,
        processes: Option<usize>,
        timeout: Option<f64>,
        memory: Option<u64>,
        retries: Option<u32>,
    ) -> Options {
        Options {
            kernel,
            worker_program: worker_program.to_path_buf(),
            processes,
            timeout,
            memory,
            fuel: None,
            max_item_size: None,
            retries,
            init: None,
            data: None,
            max_items_per_instance: None,
            batch: true,
            require_sandbox: false,
        }
    }

    fn build(&self) -> Result<Pool, Error> {
        let kernel = Kernel::from_file(&self.kernel)?;
        let mut limits = Limits::default();
        if let Some(t) = self.timeout {
            limits.timeout = Some(Duration::from_secs_f64(t));
        }
        limits.memory = self.memory;
        limits.fuel = self.fuel;
        if let Some(m) = self.max_item_size {
            limits.max_item_size = m;
        }
        limits.max_items_per_instance = self.max_items_per_instance;
        let mut b = Pool::builder(kernel)
            .worker_program(&self.worker_program)
            .limits(limits)
            .batch_calls(self.batch)
            .require_sandbox(self.require_sandbox);
        if let Some(n) = self.processes {
            b = b.workers(n);
        }
        if let Some(r) = self.retries {
            b = b.retries(r);
        }
        if let Some(init) = &self.init {
            b = b.init(init.clone());
        }
        if let Some(d) = &self.data {
            b = b.data_file(d);
        }
        b.build()
    }
}

fn chunksize(c: Option<usize>) -> Chunksize {
    c.map_or(Chunksize::Auto, Chunksize::Fixed)
}

/// What the driver thread sends back for a run.
enum Out {
    /// Outcomes of items, each with its index in the run's input: what was
    /// ready at once, so that a million fast items are not a million
    /// messages.
    Items(Vec<(ItemIndex, SharedResult)>),
    /// An item that a pipeline stage failed.
    Stage(u64, Result<Vec<u8>, wpool::pipeline::StageFailure>),
    /// The run ended with a pool failure.
    Failed(Error),
}

enum Cmd {
    Run {
        ordered: bool,
        chunksize: Option<usize>,
        input: Receiver<wpool::Items>,
        out: Sender<Out>,
    },
    /// Drop the pool and end (runs not yet started hold senders too, so the
    /// channel closing cannot be the signal).
    Stop,
}

/// What Python may ask about a pool while a run goes on: the driver
/// refreshes it before and after each run, while idle (see
/// [`idle_refresh`]) and, during a run, at most every [`REFRESH`] as
/// results arrive. (Asking the driver itself would wait for
/// the end of its run.)
#[derive(Default, Clone)]
struct Snapshot {
    pids: Vec<u32>,
    /// `(spawned, worker_deaths, retried_items, batched_items,
    /// batch_fallbacks, reclaimed_chunks, workers)`.
    stats: [u64; 7],
}

/// How often a running driver refreshes the [`Snapshot`].
const REFRESH: Duration = Duration::from_millis(20);

fn refresh(pool: &mut Pool, snap: &Mutex<Snapshot>) {
    let pids = pool.worker_pids();
    store(snap, pids, pool.stats(), pool.workers());
}

/// How long an idle driver waits before refreshing the [`Snapshot`]: often
/// while workers are missing from it (they are starting), rarely otherwise.
fn idle_refresh(snap: &Mutex<Snapshot>, workers: usize) -> Duration {
    let missing = snap.lock().map(|g| g.pids.len() < workers).unwrap_or(false);
    if missing {
        REFRESH
    } else {
        IDLE_REFRESH
    }
}

/// How often an idle driver whose pool is complete refreshes the
/// [`Snapshot`] (a worker that dies while idle is respawned by the next
/// run; its pid leaves the snapshot by then at the latest).
const IDLE_REFRESH: Duration = Duration::from_millis(250);

fn store(snap: &Mutex<Snapshot>, pids: Vec<u32>, s: PoolStats, workers: usize) {
    let stats = [
        s.spawned,
        s.worker_deaths,
        s.retried_items,
        s.batched_items,
        s.batch_fallbacks,
        s.reclaimed_chunks,
        workers as u64,
    ];
    if let Ok(mut g) = snap.lock() {
        *g = Snapshot { pids, stats };
    }
}

struct Driver {
    cmds: Sender<Cmd>,
    thread: JoinHandle<()>,
    canceller: wpool::Canceller,
}

/// Waits for `rx` with the GIL released, waking every [`POLL`] to run
/// Python's signal handlers: a Ctrl-C raises `KeyboardInterrupt` here.
fn wait<T: Send>(py: Python<'_>, rx: &Receiver<T>) -> PyResult<Option<T>> {
    loop {
        match py.detach(|| rx.recv_timeout(POLL)) {
            Ok(v) => return Ok(Some(v)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => py.check_signals()?,
        }
    }
}

/// A pool: `wpool.Pool` wraps it.
#[pyclass(module = "wpool._wpool", frozen)]
struct RawPool {
    driver: Mutex<Option<Driver>>,
    workers: usize,
    snapshot: Arc<Mutex<Snapshot>>,
}

/// A run of a pool, ordered or not, as the driver reads it.
trait RunView {
    fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>) -> Result<bool, Error>;
    fn snapshot(&self) -> (Vec<u32>, PoolStats);
}

impl RunView for wpool::Imap<'_> {
    fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>) -> Result<bool, Error> {
        wpool::Imap::next_batch(self, out, MAX_RESULTS)
    }
    fn snapshot(&self) -> (Vec<u32>, PoolStats) {
        (self.worker_pids(), self.stats())
    }
}

impl RunView for wpool::ImapUnordered<'_> {
    fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>) -> Result<bool, Error> {
        wpool::ImapUnordered::next_batch(self, out, MAX_RESULTS)
    }
    fn snapshot(&self) -> (Vec<u32>, PoolStats) {
        (self.worker_pids(), self.stats())
    }
}

fn run_driver(pool: &mut Pool, snap: &Mutex<Snapshot>, ordered: bool, input: Receiver<wpool::Items>, out: Sender<Out>) {
    let workers = pool.workers();
    if ordered {
        drive(&mut pool.imap_batches(input), &out, snap, workers);
    } else {
        drive(&mut pool.imap_unordered_batches(input), &out, snap, workers);
    }
    // Up to date before the run's end reaches Python.
    refresh(pool, snap);
}

/// Sends a run's results to Python, what is ready at once in one message,
/// refreshing the snapshot at most every [`REFRESH`].
fn drive(run: &mut dyn RunView, out: &Sender<Out>, snap: &Mutex<Snapshot>, workers: usize) {
    let mut last = Instant::now();
    loop {
        let mut batch = Vec::new();
        let more = run.next_batch(&mut batch);
        if last.elapsed() >= REFRESH {
            let (pids, stats) = run.snapshot();
            store(snap, pids, stats, workers);
            last = Instant::now();
        }
        if !batch.is_empty() && out.send(Out::Items(batch)).is_err() {
            return;
        }
        match more {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = out.send(Out::Failed(e));
                return;
            }
        }
    }
}

impl RawPool {
    fn with_driver<T>(&self, f: impl FnOnce(&Driver) -> PyResult<T>) -> PyResult<T> {
        let guard = self.driver.lock().map_err(|_| PyRuntimeError::new_err("pool lock poisoned"))?;
        match guard.as_ref() {
            Some(d) => f(d),
            None => Err(PyValueError::new_err("Pool not running")),
        }
    }

    /// Stops the driver: cancels what runs (when asked), lets it drop the
    /// pool (every worker ends before that returns) and waits for it.
    fn stop(&self, py: Python<'_>, cancel: bool) {
        let driver = self.driver.lock().ok().and_then(|mut g| g.take());
        if let Some(d) = driver {
            py.detach(|| d.shut(cancel));
        }
    }
}

impl Driver {
    /// Cancels what runs (when asked), lets the driver drop the pool (every
    /// worker ends before that returns) and waits for it.
    fn shut(self, cancel: bool) {
        if cancel {
            self.canceller.cancel();
        }
        let _ = self.cmds.send(Cmd::Stop);
        let _ = self.thread.join();
    }
}

#[pymethods]
impl RawPool {
    #[new]
    #[pyo3(signature = (kernel, worker_program, processes=None, timeout=None, memory=None, fuel=None,
                        max_item_size=None, retries=None, init=None, data=None,
                        max_items_per_instance=None, batch=true, require_sandbox=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        kernel: PathBuf,
        worker_program: PathBuf,
        processes: Option<usize>,
        timeout: Option<f64>,
        memory: Option<u64>,
        fuel: Option<u64>,
        max_item_size: Option<usize>,
        retries: Option<u32>,
        init: Option<Vec<u8>>,
        data: Option<PathBuf>,
        max_items_per_instance: Option<u64>,
        batch: bool,
        require_sandbox: bool,
    ) -> PyResult<RawPool> {
        check_timeout(timeout)?;
        let opts = Options {
            kernel,
            worker_program,
            processes,
            timeout,
            memory,
            fuel,
            max_item_size,
            retries,
            init,
            data,
            max_items_per_instance,
            batch,
            require_sandbox,
        };
        let (ready_tx, ready_rx) = bounded(1);
        let (cmds, cmd_rx) = crossbeam_channel::unbounded::<Cmd>();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let snap = snapshot.clone();
        let thread = std::thread::Builder::new()
            .name("wpool-python-driver".into())
            .spawn(move || {
                let mut pool = match opts.build() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                refresh(&mut pool, &snap);
                let _ = ready_tx.send(Ok((pool.workers(), pool.canceller())));
                loop {
                    // Idle, the snapshot still follows the pool: the workers
                    // that were still starting when it was built, or that a
                    // run's end left to respawn, appear without a run.
                    let cmd = match cmd_rx.recv_timeout(idle_refresh(&snap, pool.workers())) {
                        Ok(cmd) => cmd,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            refresh(&mut pool, &snap);
                            continue;
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    match cmd {
                        Cmd::Run { ordered, chunksize: c, input, out } => {
                            if let Err(e) = pool.set_chunksize(chunksize(c)) {
                                let _ = out.send(Out::Failed(e));
                                continue;
                            }
                            refresh(&mut pool, &snap);
                            run_driver(&mut pool, &snap, ordered, input, out);
                        }
                        Cmd::Stop => break,
                    }
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the pool's thread: {e}")))?;
        match wait(py, &ready_rx) {
            Ok(Some(Ok((workers, canceller)))) => {
                Ok(RawPool { driver: Mutex::new(Some(Driver { cmds, thread, canceller })), workers, snapshot })
            }
            Ok(Some(Err(e))) => {
                let _ = thread.join();
                Err(pool_failure(&e))
            }
            Ok(None) => Err(PyRuntimeError::new_err("the pool's thread ended before the pool was built")),
            Err(interrupted) => {
                // The pool is still being built: let the thread finish and
                // drop it (its workers end with it) without waiting here.
                let _ = cmds.send(Cmd::Stop);
                Err(interrupted)
            }
        }
    }

    /// Number of worker processes.
    #[getter]
    fn processes(&self) -> usize {
        self.workers
    }

    /// Starts a run over `items` (any Python iterable); its results come
    /// from the returned run's `next_results`.
    #[pyo3(signature = (items, ordered, chunksize=None, text=false))]
    fn run(
        slf: Bound<'_, Self>,
        items: Bound<'_, PyAny>,
        ordered: bool,
        chunksize: Option<usize>,
        text: bool,
    ) -> PyResult<RawRun> {
        let iter = items.try_iter()?.unbind();
        let (input_tx, input_rx) = bounded::<wpool::Items>(2);
        let (out_tx, out_rx) = crossbeam_channel::unbounded::<Out>();
        // Sent on the first `next_results`: an iterator that is made and
        // never used does not hold the pool.
        let cmds = slf.borrow().with_driver(|d| Ok(d.cmds.clone()))?;
        let start = Some((cmds, Cmd::Run { ordered, chunksize, input: input_rx, out: out_tx }));
        let state = RunState::new(start, iter, input_tx, out_rx, text, !ordered);
        Ok(RawRun { state: Mutex::new(state), pool: Some(slf.unbind()) })
    }

    /// Process ids of the worker processes, as of the last result during a
    /// run, within [`REFRESH`] of a worker's start while idle.
    fn worker_pids(&self) -> Vec<u32> {
        self.snapshot.lock().map(|g| g.pids.clone()).unwrap_or_default()
    }

    /// Counters: `(spawned, worker_deaths, retried_items, batched_items,
    /// batch_fallbacks, reclaimed_chunks, workers)`, as of the last result.
    fn stats(&self) -> [u64; 7] {
        self.snapshot.lock().map(|g| g.stats).unwrap_or_default()
    }

    /// Whether the pool still runs (neither closed-and-joined nor
    /// terminated).
    fn is_running(&self) -> bool {
        self.driver.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Stops the current run at once and ends every worker process before
    /// returning.
    fn terminate(&self, py: Python<'_>) {
        self.stop(py, true);
    }

    /// Lets the current run finish, then ends every worker process before
    /// returning.
    fn join(&self, py: Python<'_>) {
        self.stop(py, false);
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        if let Some(d) = self.driver.get_mut().ok().and_then(Option::take) {
            d.shut(true);
        }
    }
}

struct RunState {
    /// The run's command to its pool's driver, until the first
    /// `next_results` sends it.
    start: Option<(Sender<Cmd>, Cmd)>,
    /// The Python iterator; `None` once it is exhausted (or the run was
    /// abandoned).
    items: Option<Py<pyo3::types::PyIterator>>,
    /// Batches to the scheduler; dropped when the input ends.
    input: Option<Sender<wpool::Items>>,
    /// A batch pulled from Python that the scheduler has not taken yet.
    pending: Option<wpool::Items>,
    out: Option<Receiver<Out>>,
    /// Items to pull next time: 1 at first (a first result at once, even
    /// from a slow generator), doubling up to [`MAX_BATCH`].
    next_batch: usize,
    pulled: u64,
    received: u64,
    text: bool,
    /// Whether Python wants each result's input index (unordered runs).
    indices: bool,
}

/// One run of a pool or a pipeline: `wpool.Pool.imap` and friends iterate
/// it.
#[pyclass(module = "wpool._wpool", frozen)]
struct RawRun {
    state: Mutex<RunState>,
    /// The pool, to terminate it on Ctrl-C; `None` for a pipeline's run.
    pool: Option<Py<RawPool>>,
}

/// What one wait produced.
enum Step {
    Sent,
    Got(Out),
    Ended,
    Timeout,
}

impl RunState {
    fn new(
        start: Option<(Sender<Cmd>, Cmd)>,
        items: Py<pyo3::types::PyIterator>,
        input: Sender<wpool::Items>,
        out: Receiver<Out>,
        text: bool,
        indices: bool,
    ) -> RunState {
        RunState {
            start,
            items: Some(items),
            input: Some(input),
            pending: None,
            out: Some(out),
            next_batch: 1,
            pulled: 0,
            received: 0,
            text,
            indices,
        }
    }

    /// Pulls the next batch from the Python iterator into `pending`.
    fn pull(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(iter) = &self.items else { return Ok(()) };
        let mut iter = iter.bind(py).clone();
        let mut batch = wpool::Items::with_capacity(self.next_batch, 16 * self.next_batch);
        while batch.len() < self.next_batch {
            match iter.next() {
                Some(item) => {
                    push_item(&mut batch, &item?, self.pulled)?;
                    self.pulled += 1;
                }
                None => {
                    self.items = None;
                    break;
                }
            }
        }
        self.next_batch = (self.next_batch * 2).min(MAX_BATCH);
        if !batch.is_empty() {
            self.pending = Some(batch);
        }
        Ok(())
    }

    /// Abandons the run: no more input, no more results.
    fn abandon(&mut self) {
        self.start = None;
        self.items = None;
        self.pending = None;
        self.input = None;
        self.out = None;
    }
}

/// Results converted for Python: `(values, errors, indices)`. `values` holds
/// each result (`bytes`, or `str` with `text`) and `None` where an item
/// failed; `errors` lists `(position in values, error tuple)`; `indices` is
/// each value's input index, for unordered runs (empty for ordered ones).
type Batch<'py> = (Bound<'py, PyList>, Vec<(usize, Bound<'py, PyTuple>)>, Vec<u64>);

#[pymethods]
impl RawRun {
    /// The results available now, waiting for at least one: `None` when
    /// the run is complete. A pool failure raises `PoolFailure`.
    fn next_results<'py>(&self, py: Python<'py>) -> PyResult<Option<Batch<'py>>> {
        // Taken without the GIL: a thread holding this lock releases the GIL
        // while it waits for results, so waiting for the lock with the GIL
        // held could deadlock.
        let mut st = loop {
            match self.state.try_lock() {
                Ok(st) => break st,
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| std::thread::sleep(Duration::from_millis(1))),
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(PyRuntimeError::new_err("run lock poisoned")),
            }
        };
        let r = self.step(py, &mut st);
        if r.is_err() {
            st.abandon();
            if let Some(pool) = &self.pool {
                // A Ctrl-C (or any exception) while the pool was busy: stop
                // its workers now, like leaving a `with` block would.
                let interrupted =
                    r.as_ref().err().is_some_and(|e| e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py));
                if interrupted {
                    pool.get().stop(py, true);
                }
            }
        }
        r
    }

    /// Stops the run: the rest of the input is not read.
    fn close(&self) {
        // Busy means another thread is in `next_results`: that run ends when
        // its iterator does (never wait for the lock with the GIL held).
        if let Ok(mut st) = self.state.try_lock() {
            st.abandon();
        }
    }
}

impl RawRun {
    fn step<'py>(&self, py: Python<'py>, st: &mut RunState) -> PyResult<Option<Batch<'py>>> {
        let values = PyList::empty(py);
        let mut errors = Vec::new();
        let mut indices = Vec::new();
        if let Some((cmds, cmd)) = st.start.take() {
            cmds.send(cmd).map_err(|_| PyValueError::new_err("Pool not running"))?;
        }
        loop {
            let Some(out) = st.out.clone() else { return Ok(None) };
            // Everything already waiting, without blocking.
            let mut ended = false;
            while values.len() < MAX_RESULTS {
                match out.try_recv() {
                    Ok(o) => self.take(py, st, o, &values, &mut errors, &mut indices)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                }
            }
            if !values.is_empty() {
                return Ok(Some((values, errors, indices)));
            }
            if ended {
                return self.end(st);
            }
            if st.pending.is_none() && st.items.is_some() {
                st.pull(py)?;
            }
            if st.pending.is_none() && st.items.is_none() {
                // The input ended: the scheduler finishes what it has.
                st.input = None;
            }
            let pending = st.pending.take();
            let input = st.input.clone();
            let (step, back) = py.detach(move || {
                let mut sel = Select::new();
                let send_op = match (&pending, &input) {
                    (Some(_), Some(tx)) => Some(sel.send(tx)),
                    _ => None,
                };
                let recv_op = sel.recv(&out);
                let Ok(op) = sel.select_timeout(POLL) else { return (Step::Timeout, pending) };
                if Some(op.index()) == send_op {
                    let tx = input.as_ref().expect("send op has a sender");
                    match op.send(tx, pending.expect("send op has a batch")) {
                        Ok(()) => (Step::Sent, None),
                        // The driver dropped the run: its results say why.
                        Err(e) => (Step::Timeout, Some(e.into_inner())),
                    }
                } else {
                    debug_assert_eq!(op.index(), recv_op);
                    match op.recv(&out) {
                        Ok(o) => (Step::Got(o), pending),
                        Err(_) => (Step::Ended, pending),
                    }
                }
            });
            st.pending = back;
            match step {
                Step::Sent => {}
                Step::Got(o) => self.take(py, st, o, &values, &mut errors, &mut indices)?,
                Step::Ended => return self.end(st),
                Step::Timeout => py.check_signals()?,
            }
        }
    }

    /// The run's results channel closed.
    fn end<'py>(&self, st: &mut RunState) -> PyResult<Option<Batch<'py>>> {
        let (pulled, received) = (st.pulled, st.received);
        st.abandon();
        if received < pulled {
            return Err(PyRuntimeError::new_err(format!(
                "wpool: the run ended after {received} of {pulled} results (the pool was terminated)"
            )));
        }
        Ok(None)
    }

    fn take<'py>(
        &self,
        py: Python<'py>,
        st: &mut RunState,
        o: Out,
        values: &Bound<'py, PyList>,
        errors: &mut Vec<(usize, Bound<'py, PyTuple>)>,
        indices: &mut Vec<u64>,
    ) -> PyResult<()> {
        match o {
            Out::Failed(e) => Err(pool_failure(&e)),
            Out::Items(items) => {
                for (ItemIndex(i), r) in items {
                    let r = r.as_deref().map_err(|e| (&**e, None));
                    self.take_one(py, st, i, r, values, errors, indices)?;
                }
                Ok(())
            }
            Out::Stage(i, r) => {
                let r = r.as_deref().map_err(|f| (&f.error, Some(f.stage)));
                self.take_one(py, st, i, r, values, errors, indices)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn take_one<'py>(
        &self,
        py: Python<'py>,
        st: &mut RunState,
        index: u64,
        result: Result<&[u8], (&TaskError, Option<usize>)>,
        values: &Bound<'py, PyList>,
        errors: &mut Vec<(usize, Bound<'py, PyTuple>)>,
        indices: &mut Vec<u64>,
    ) -> PyResult<()> {
        st.received += 1;
        if st.indices {
            indices.push(index);
        }
        match result {
            Ok(bytes) => {
                if st.text {
                    values.append(String::from_utf8_lossy(bytes))?;
                } else {
                    values.append(PyBytes::new(py, bytes))?;
                }
            }
            Err((e, stage)) => {
                errors.push((values.len(), task_error(py, e, stage)?));
                values.append(py.None())?;
            }
        }
        Ok(())
    }
}

/// A pipeline: stages of pools with their own kernels, items stream
/// through all of them at once. `wpool.Pipeline` wraps it.
#[pyclass(module = "wpool._wpool", frozen)]
struct RawPipeline {
    stages: Mutex<Option<Vec<Options>>>,
}

#[pymethods]
impl RawPipeline {
    /// `stages` are `(kernel, processes)` pairs; the other options apply to
    /// every stage.
    #[new]
    #[pyo3(signature = (stages, worker_program, timeout=None, memory=None, retries=None))]
    fn new(
        stages: Vec<(PathBuf, Option<usize>)>,
        worker_program: PathBuf,
        timeout: Option<f64>,
        memory: Option<u64>,
        retries: Option<u32>,
    ) -> PyResult<RawPipeline> {
        check_timeout(timeout)?;
        if stages.is_empty() {
            return Err(pool_failure(&Error::EmptyPipeline));
        }
        let stages = stages
            .into_iter()
            .map(|(kernel, processes)| Options::stage(kernel, &worker_program, processes, timeout, memory, retries))
            .collect();
        Ok(RawPipeline { stages: Mutex::new(Some(stages)) })
    }

    /// Starts the pipeline's pools and runs `items` through them; results
    /// come, in input order, from the returned run.
    #[pyo3(signature = (items, text=false))]
    fn run(&self, py: Python<'_>, items: Bound<'_, PyAny>, text: bool) -> PyResult<RawRun> {
        let stages = self.stages.lock().map_err(|_| PyRuntimeError::new_err("lock poisoned"))?.clone();
        let stages = stages.ok_or_else(|| PyValueError::new_err("Pipeline closed"))?;
        let iter = items.try_iter()?.unbind();
        let (input_tx, input_rx) = bounded::<wpool::Items>(2);
        let (out_tx, out_rx) = crossbeam_channel::unbounded::<Out>();
        let (ready_tx, ready_rx) = bounded::<Result<(), Error>>(1);
        std::thread::Builder::new()
            .name("wpool-python-pipeline".into())
            .spawn(move || {
                let pools: Result<Vec<Pool>, Error> = stages.iter().map(Options::build).collect();
                let mut pipeline = match pools.and_then(Pipeline::new) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let items = input_rx.into_iter().flatten();
                let r = pipeline.run(items, |ItemIndex(i), r| out_tx.send(Out::Stage(i, r)).is_ok());
                if let Err(e) = r {
                    let _ = out_tx.send(Out::Failed(e));
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the pipeline's thread: {e}")))?;
        match wait(py, &ready_rx)? {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(pool_failure(&e)),
            None => return Err(PyRuntimeError::new_err("the pipeline's thread ended before it started")),
        }
        Ok(RawRun { state: Mutex::new(RunState::new(None, iter, input_tx, out_rx, text, false)), pool: None })
    }
}

/// MapReduce: map every item with `map_kernel`, group the `key\tvalue`
/// lines of the results by key, reduce each key's values with
/// `reduce_kernel`. Returns `(pairs, failures)`: `(key, value or None)` sorted
/// by key, and the error tuples of failed map items and keys.
#[pyfunction]
#[pyo3(signature = (map_kernel, reduce_kernel, items, worker_program, processes=None, timeout=None, memory=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn mapreduce<'py>(
    py: Python<'py>,
    map_kernel: PathBuf,
    reduce_kernel: PathBuf,
    items: Bound<'py, PyAny>,
    worker_program: PathBuf,
    processes: Option<usize>,
    timeout: Option<f64>,
    memory: Option<u64>,
) -> PyResult<(Vec<(Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)>, Vec<Bound<'py, PyTuple>>)> {
    check_timeout(timeout)?;
    let opts = |kernel| Options::stage(kernel, &worker_program, processes, timeout, memory, None);
    let (map_opts, reduce_opts) = (opts(map_kernel), opts(reduce_kernel));
    let (input_tx, input_rx) = bounded::<Vec<u8>>(1024);
    let (done_tx, done_rx) = bounded(1);
    std::thread::Builder::new()
        .name("wpool-python-mapreduce".into())
        .spawn(move || {
            let r = (|| {
                let mut mr = MapReduce::new(map_opts.build()?, reduce_opts.build()?)?;
                let mut failed = Vec::new();
                let pairs = mr.run(input_rx, |_, r| {
                    if let Err(e) = r {
                        failed.push(e);
                    }
                    true
                })?;
                Ok::<_, Error>((pairs, failed))
            })();
            let _ = done_tx.send(r);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the MapReduce thread: {e}")))?;
    // Feed the items from this thread (it has the GIL), a bounded channel
    // ahead of the map pool.
    for (index, item) in items.try_iter()?.enumerate() {
        let mut bytes = item_bytes(&item?, index as u64)?.into_owned();
        loop {
            match py.detach(|| input_tx.send_timeout(bytes, POLL)) {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(b)) => {
                    bytes = b;
                    py.check_signals()?;
                }
                // The run ended early (a pool failure): its result says why.
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => break,
            }
        }
    }
    drop(input_tx);
    let (pairs, failed) = match wait(py, &done_rx)? {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(pool_failure(&e)),
        None => return Err(PyRuntimeError::new_err("the MapReduce thread ended without a result")),
    };
    let mut errors = failed.iter().map(|e| task_error(py, e, Some(0))).collect::<PyResult<Vec<_>>>()?;
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        match value {
            Ok(v) => out.push((PyBytes::new(py, &key), Some(PyBytes::new(py, &v)))),
            Err(e) => {
                errors.push(task_error(py, &e, Some(1))?);
                out.push((PyBytes::new(py, &key), None));
            }
        }
    }
    Ok((out, errors))
}

/// What `wpool inspect` prints about a kernel, as a tuple
/// `(size, format, imports, exports, worlds, rejection)`; `rejection` is
/// `None` for an accepted kernel, else `(kind, message)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn inspect(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(usize, &'static str, Vec<String>, Vec<String>, Vec<&'static str>, Option<(&'static str, String)>)> {
    let i = py.detach(|| Kernel::inspect(&path)).map_err(|e| pool_failure(&e))?;
    let rejection = i.rejection.as_ref().map(|e| (error_kind(e), e.with_causes()));
    Ok((
        i.info.size,
        i.info.format,
        i.info.imports.clone(),
        i.info.exports.clone(),
        i.worlds.iter().map(|w| w.name()).collect(),
        rejection,
    ))
}

/// A size such as `256MiB`, `100MB` or `4096`, in bytes, as the CLI reads
/// `--memory`.
#[pyfunction]
fn parse_size(s: &str) -> PyResult<u64> {
    Limits::parse_size(s).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{s:?} is not a size (a number of bytes with an optional unit: K, KiB, MB, GiB, ...)"
        ))
    })
}

#[pymodule]
fn _wpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RawPool>()?;
    m.add_class::<RawRun>()?;
    m.add_class::<RawPipeline>()?;
    m.add_function(wrap_pyfunction!(mapreduce, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add("PoolFailure", m.py().get_type::<PoolFailure>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
