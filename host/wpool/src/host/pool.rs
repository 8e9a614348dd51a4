//! The public face: [`PoolBuilder`] → [`Pool`] → `map` / `imap` /
//! `imap_unordered`.
//!
//! Owns the API and its guarantees (laziness, ordering, clean drop). All the
//! work is delegated to the scheduler; this module adds no policy of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, ItemIndex};
use crate::grants::Grants;
use crate::host::rundir::PrivateDir;
use crate::host::scheduler::{
    Chunksize, Input, ItemInfo, ItemResult, PoolStats, SchedConfig, Scheduler, SharedResult, WorkerInfo,
};
use crate::host::stop::StopSignal;
use crate::host::supervisor::{Event, WorkerCommand};
use crate::items::Items;
use crate::kernel::Kernel;
use crate::limits::{EngineSettings, Limits};
use crate::shared::SharedBytes;
use crate::wire::SandboxStatus;
use crate::wire::{Code, Hello, TestHooks, PROTOCOL_VERSION};

/// Configures and starts a [`Pool`].
///
/// ```no_run
/// use wpool::{Chunksize, Kernel, Pool};
/// let kernel = Kernel::from_file("upper.wasm")?;
/// let mut pool = Pool::builder(kernel).workers(2).chunksize(Chunksize::Auto).build()?;
/// let out = pool.map(["a", "b"])?;
/// assert_eq!(out[0].as_deref().unwrap(), b"A");
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    kernel: Kernel,
    workers: usize,
    chunksize: Chunksize,
    retries: u32,
    limits: Limits,
    grants: Grants,
    handshake_timeout: Duration,
    restart_window: Duration,
    max_restarts: Option<u32>,
    command: WorkerCommand,
    init: Option<Vec<u8>>,
    require_sandbox: bool,
    hooks: Option<TestHooks>,
    data_file: Option<PathBuf>,
    batch_calls: bool,
}

impl PoolBuilder {
    /// Number of worker processes (default: the number of cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Items per chunk sent to a worker (default: [`Chunksize::Auto`]).
    pub fn chunksize(mut self, c: Chunksize) -> Self {
        self.chunksize = c;
        self
    }

    /// How many times an item whose worker process died under it is retried
    /// on a fresh worker (default 2). Kernel errors, traps and limits are
    /// deterministic and never retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Per-item limits (timeout, memory, fuel, sizes).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What kernels may reach beyond the deny-by-default policy
    /// (directories, environment, real clocks and randomness).
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// How long a new worker may take to load the kernel and answer the
    /// handshake (default 60 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// The restart-intensity bound: more than `max` worker deaths within
    /// `window` stop the run with [`Error::RestartIntensity`] (default: 100
    /// in 1 s, plus 10 per worker).
    pub fn restart_intensity(mut self, max: u32, window: Duration) -> Self {
        self.max_restarts = Some(max);
        self.restart_window = window;
        self
    }

    /// Start every worker through a launcher: the command prefix
    /// (`["srun", "-N1", "-n1", "--exact", "-u"]`, `["ssh", "host"]`), then
    /// the worker binary and its hidden arguments. Such a worker may run on
    /// another machine: it is sent the kernel's wasm bytes (and compiles
    /// them there), and it connects back to the host over TCP (see
    /// [`PoolBuilder::listen`]). The launcher process gets the caller's
    /// environment; the worker clears its own.
    pub fn launcher<S: Into<String>>(self, prefix: impl IntoIterator<Item = S>) -> Self {
        self.launchers([prefix])
    }

    /// One launcher per worker: worker `i` is started through
    /// `launchers[i % len]` (as [`crate::slurm::Slurm::launchers`] spreads workers
    /// over nodes). Empty: local workers.
    pub fn launchers<L, S>(mut self, launchers: impl IntoIterator<Item = L>) -> Self
    where
        L: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command.launchers =
            launchers.into_iter().map(|l| l.into_iter().map(Into::into).collect::<Vec<String>>()).collect();
        self
    }

    /// The address launched workers connect back to (default: this
    /// machine's first non-loopback IPv4 address, a free port). Port 0
    /// picks a free port. Connections must present a per-worker random
    /// token; the traffic is not encrypted. With `WPOOL_LOOPBACK_ONLY` set
    /// (as the test command sets it), [`PoolBuilder::build`] refuses any
    /// address that is not loopback, the default included, with
    /// [`Error::NonLoopbackListen`].
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.command.listen = Some(addr);
        self
    }

    /// The binary to run as a worker (default: the current executable). It
    /// must link the `wpool` library, as the `wpool` CLI does.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.command.program = Some(path.into());
        self
    }

    /// Refuse to run unless every worker confines itself fully
    /// (`no_new_privs`, seccomp and Landlock); see [`Pool::sandbox_status`].
    pub fn require_sandbox(mut self, yes: bool) -> Self {
        self.require_sandbox = yes;
        self
    }

    /// The configuration a `kernel-with-init` kernel's `init` gets, once per
    /// instance before any `map` (like `multiprocessing.Pool(initializer=…)`);
    /// empty when not set. `build` fails with [`Error::NoInit`] if the
    /// kernel has no `init`, and with [`Error::InitFailed`] if `init`
    /// returns an error. At most 64 MiB: larger read-only data belongs in a
    /// file the kernel reads (a granted directory).
    pub fn init(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.init = Some(config.into());
        self
    }

    /// Read-only data shared by every kernel instance: `file` is visible to
    /// the kernel as `/data` (and nothing else of the host through it).
    ///
    /// The pool links the file into a private (0700) directory of its own
    /// under the temporary directory, so the workers read the same file and
    /// the OS page cache shares it between them; where that directory is on
    /// another file system, it holds a copy instead. Nothing is ever created
    /// beside `file`. The directory goes with the pool.
    pub fn data_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.data_file = Some(file.into());
        self
    }

    /// Whether workers may pass several small items to the kernel in one
    /// call of its `map-batch` export, when it has one (default: yes). A
    /// batch runs under one item's timeout and fuel; when anything goes wrong
    /// in it (a trap, a limit, a wrong number of results), its items run
    /// again one by one with `map` on a fresh instance, so results and
    /// errors are the same either way: turning it off only costs speed on
    /// small items. See [`PoolStats::batched_items`].
    pub fn batch_calls(mut self, yes: bool) -> Self {
        self.batch_calls = yes;
        self
    }

    /// Test hook (the `test-hooks` feature): workers try forbidden syscalls
    /// after confining themselves and report the outcomes in
    /// [`SandboxStatus::probes`]. The workers must be built with the feature
    /// too, or they refuse the handshake.
    #[cfg(feature = "test-hooks")]
    pub fn probe_sandbox(mut self) -> Self {
        self.hooks.get_or_insert_with(TestHooks::default).probe_sandbox = true;
        self
    }

    /// Test hook (the `test-hooks` feature): a worker process aborts when
    /// handed exactly this item, standing in for a host or wasmtime bug that
    /// kills the process. The workers must be built with the feature too, or
    /// they refuse the handshake.
    #[cfg(feature = "test-hooks")]
    pub fn crash_worker_on(mut self, item: impl Into<Vec<u8>>) -> Self {
        self.hooks.get_or_insert_with(TestHooks::default).crash_on = Some(item.into());
        self
    }

    /// Test hook (the `test-hooks` feature): local workers read the
    /// kernel's artifact from the cache file and check its digest, as they
    /// do when they cannot open the host's sealed copy.
    #[cfg(feature = "test-hooks")]
    pub fn workers_read_artifact_file(mut self) -> Self {
        self.hooks.get_or_insert_with(TestHooks::default).file_artifact = true;
        self
    }

    /// Test hook (the `test-hooks` feature): the pool's spawning thread
    /// reports each worker it started only after `delay`, by which time the
    /// worker has usually said it is ready.
    #[cfg(feature = "test-hooks")]
    pub fn report_spawns_after(mut self, delay: std::time::Duration) -> Self {
        self.hooks.get_or_insert_with(TestHooks::default).report_spawn_after_ms =
            u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self
    }

    /// Starts the workers. Returns once at least one is ready; fails if they
    /// cannot start (with what the last one said).
    pub fn build(self) -> Result<Pool, Error> {
        if self.workers == 0 {
            return Err(Error::NoWorkers);
        }
        if self.chunksize == Chunksize::Fixed(0) {
            return Err(Error::ZeroChunksize);
        }
        for dir in &self.grants.dirs {
            if !dir.host.is_absolute() || !dir.host.is_dir() {
                return Err(Error::GrantNotADirectory { path: dir.host.clone() });
            }
        }
        let init = match (self.kernel.has_init(), self.init) {
            (false, Some(_)) => return Err(Error::NoInit { kernel: self.kernel.name().to_string() }),
            (false, None) => None,
            (true, config) => Some(config.unwrap_or_default()),
        };
        if let Some(len) = init.as_ref().map(Vec::len).filter(|&len| len > crate::wire::MAX_INIT_CONFIG) {
            return Err(Error::InitTooLarge { len, max: crate::wire::MAX_INIT_CONFIG });
        }
        if self.command.launchers.iter().any(Vec::is_empty) {
            return Err(Error::EmptyLauncher);
        }
        if self.command.is_remote() && crate::host::listener::loopback_only() {
            let addr = crate::host::listener::listen_ip(self.command.listen);
            if !addr.is_loopback() {
                return Err(Error::NonLoopbackListen { addr });
            }
        }
        let mut grants = self.grants.clone();
        let data = match &self.data_file {
            Some(file) => {
                let dir = data_dir(file)?;
                grants.dirs.push(crate::grants::DirGrant {
                    host: dir.path().to_path_buf(),
                    guest: "/".into(),
                    writable: false,
                });
                Some(dir)
            }
            None => None,
        };
        let settings = EngineSettings::new(self.limits.clone(), grants, self.workers, self.batch_calls)?;
        // Kept open as long as the pool may start workers.
        let mut sealed_artifact = None;
        let code = if self.command.is_remote() {
            // Launched workers may run anywhere: they get the wasm and
            // compile it themselves, never a precompiled artifact.
            let bytes = self.kernel.wasm()?;
            if bytes.len() > crate::wire::MAX_REMOTE_KERNEL {
                return Err(Error::KernelTooLargeToSend {
                    kernel: self.kernel.name().to_string(),
                    len: bytes.len(),
                    max: crate::wire::MAX_REMOTE_KERNEL,
                });
            }
            Code::Wasm { name: self.kernel.name().to_string(), bytes: crate::wire::SharedBytes(bytes) }
        } else {
            let artifact = self.kernel.artifact(&settings)?;
            let file_artifact = self.hooks.as_ref().is_some_and(|h| h.file_artifact);
            let sealed = artifact
                .sealed
                .as_ref()
                .filter(|_| !file_artifact)
                .map(|fd| (std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&**fd)));
            sealed_artifact = artifact.sealed;
            Code::Artifact { path: artifact.path.to_string_lossy().into_owned(), digest: artifact.digest, sealed }
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            worker: 0,
            code,
            settings,
            init,
            reducer: self.kernel.is_reducer(),
            hooks: self.hooks,
        };
        let cfg = SchedConfig {
            workers: self.workers,
            chunksize: self.chunksize,
            retries: self.retries,
            handshake_timeout: self.handshake_timeout,
            restart_window: self.restart_window,
            max_restarts: self.max_restarts.unwrap_or(100 + 10 * self.workers as u32),
            require_sandbox: self.require_sandbox,
            hello,
            command: self.command,
            kernel: self.kernel.name().to_string(),
        };
        Ok(Pool {
            sched: Scheduler::start(cfg)?,
            workers: self.workers,
            reducer: self.kernel.is_reducer(),
            _data: data,
            _artifact: sealed_artifact,
            cancel_signal: StopSignal::new(),
        })
    }
}

/// A private directory holding `file` as `data`: a hard link (the same
/// file, nothing copied) where the directory is on the file's file system,
/// else a copy.
fn data_dir(file: &std::path::Path) -> Result<PrivateDir, Error> {
    let err = |source| Error::DataFile { path: file.to_path_buf(), source };
    let meta = std::fs::metadata(file).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let dir = PrivateDir::create("data").map_err(err)?;
    let link = dir.path().join("data");
    if std::fs::hard_link(file, &link).is_err() {
        std::fs::copy(file, &link).map_err(err)?;
    }
    Ok(dir)
}

/// A pool of sandboxed worker processes running one kernel.
///
/// Workers start with the pool and live until it is dropped; a worker that
/// dies is replaced. Dropping the pool ends every worker process before
/// `drop` returns.
pub struct Pool {
    sched: Scheduler,
    workers: usize,
    reducer: bool,
    /// The shared data file's directory; removed after the workers are gone.
    _data: Option<PrivateDir>,
    /// The sealed memfd local workers map the kernel from (see
    /// `wire::Code::Artifact`); open while workers may be (re)started.
    _artifact: Option<Arc<std::os::fd::OwnedFd>>,
    /// Fired by a [`Canceller`] next to the scheduler's flag, for threads
    /// that wait on channels rather than in the scheduler (a pipeline's).
    cancel_signal: StopSignal,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.workers).finish()
    }
}

impl Pool {
    /// A builder with the defaults: one worker per core, automatic chunks,
    /// two retries, no limits.
    pub fn builder(kernel: Kernel) -> PoolBuilder {
        PoolBuilder {
            kernel,
            workers: num_cpus::get().max(1),
            chunksize: Chunksize::Auto,
            retries: 2,
            limits: Limits::default(),
            grants: Grants::default(),
            handshake_timeout: Duration::from_secs(60),
            restart_window: Duration::from_secs(1),
            max_restarts: None,
            command: WorkerCommand { launchers: Vec::new(), program: None, cwd: PathBuf::from("/"), listen: None },
            init: None,
            require_sandbox: false,
            hooks: None,
            data_file: None,
            batch_calls: true,
        }
    }

    /// The largest item (and result) its workers take.
    pub(crate) fn max_item_size(&self) -> usize {
        self.sched.max_item_size()
    }

    /// Whether this pool runs a reducer kernel (see [`crate::mapreduce::MapReduce`]).
    pub fn is_reducer(&self) -> bool {
        self.reducer
    }

    /// Number of worker slots.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Process ids of the worker processes started so far (after handling
    /// any worker events that are already waiting).
    pub fn worker_pids(&mut self) -> Vec<u32> {
        self.sched.poll();
        self.sched.worker_pids()
    }

    /// Waits until every worker has loaded the kernel and answered the
    /// handshake. [`PoolBuilder::build`] returns as soon as one is ready, so
    /// that work starts early; call this to have the full pool up front.
    pub fn wait_ready(&mut self) -> Result<(), Error> {
        self.sched.wait_ready()
    }

    /// The live workers as each described itself at start: where it runs,
    /// its pid there, how it confined itself (after handling any worker
    /// events that are already waiting).
    pub fn worker_info(&mut self) -> Vec<WorkerInfo> {
        self.sched.poll();
        self.sched.worker_info()
    }

    /// The address launched workers connect back to; `None` for local
    /// workers.
    pub fn dial_address(&self) -> Option<std::net::SocketAddr> {
        self.sched.dial_addr()
    }

    /// How the workers confined themselves, as the latest one reported in
    /// its handshake (per worker: [`Pool::worker_info`]).
    pub fn sandbox_status(&self) -> Option<&SandboxStatus> {
        self.sched.sandbox_status()
    }

    /// Counters: workers spawned, worker deaths, retried items.
    pub fn stats(&self) -> PoolStats {
        self.sched.stats()
    }

    /// A handle that stops the current run from another thread (or a signal
    /// handler thread): the run yields [`Error::Cancelled`], and so does
    /// every later run of this pool.
    pub fn canceller(&self) -> Canceller {
        let (flag, wake) = self.sched.cancel_handle();
        Canceller { flag, wake, signal: self.cancel_signal.clone() }
    }

    /// The signal a [`Canceller`] fires.
    pub(crate) fn cancel_signal(&self) -> StopSignal {
        self.cancel_signal.clone()
    }

    /// Changes the chunk sizing of the runs started from now on (the
    /// builder's [`PoolBuilder::chunksize`] is the first), as Python's
    /// `Pool.map(..., chunksize=)` does per call.
    pub fn set_chunksize(&mut self, chunksize: Chunksize) -> Result<(), Error> {
        if chunksize == Chunksize::Fixed(0) {
            return Err(Error::ZeroChunksize);
        }
        self.sched.set_chunksize(chunksize);
        Ok(())
    }

    /// Runs every item and returns the results in input order. The outer
    /// `Err` is a pool failure; each item has its own `Result`.
    pub fn map<I>(&mut self, items: I) -> Result<Vec<ItemResult>, Error>
    where
        I: IntoIterator,
        I::Item: Into<Vec<u8>>,
    {
        self.imap(items).collect()
    }

    /// Lazily runs items in input order: input is pulled only as workers
    /// free up, and at most a bounded window of results waits for an earlier
    /// one. Dropping the iterator early stops the run.
    ///
    /// The iterator is pulled on the caller's thread: while it blocks (a slow
    /// stdin, a socket), results wait too. For such inputs use
    /// [`Pool::imap_batches`].
    pub fn imap<'p, I>(&'p mut self, items: I) -> Imap<'p>
    where
        I: IntoIterator + 'p,
        I::Item: Into<Vec<u8>>,
    {
        Imap { run: self.run(true, RunInput::Iter(Box::new(items.into_iter().map(Into::into)))) }
    }

    /// Like [`Pool::imap`], but yields results as they complete, each with
    /// its input index.
    pub fn imap_unordered<'p, I>(&'p mut self, items: I) -> ImapUnordered<'p>
    where
        I: IntoIterator + 'p,
        I::Item: Into<Vec<u8>>,
    {
        ImapUnordered { run: self.run(false, RunInput::Iter(Box::new(items.into_iter().map(Into::into)))) }
    }

    /// Like [`Pool::imap`], one item per message: the pipeline's and
    /// MapReduce's stages feed their pools this way. Not public, so that
    /// callers have one channel-fed form (a batch of one is an item).
    pub(crate) fn imap_channel(&mut self, items: Receiver<Vec<u8>>) -> Imap<'_> {
        Imap { run: self.run(true, RunInput::Channel(items)) }
    }

    /// Like [`Pool::imap`], with items sent in batches ([`Items`]) by a
    /// producer thread: results keep flowing while the channel is empty,
    /// and the input ends when every sender is dropped. A producer of many
    /// small items wakes the pool once per batch instead of once per item,
    /// and allocates nothing per item (`Items` keeps small items back to
    /// back in one buffer, which the pool copies from); send a batch
    /// whenever the producer is about to wait for more input, so that no
    /// item waits behind a slow source (the CLI reads stdin this way).
    ///
    /// The channel is a [crossbeam-channel] 0.5 `Receiver`: add
    /// `crossbeam-channel = "0.5"` to your dependencies (wpool does not
    /// re-export the crate, so that its semver is not tied to crossbeam's).
    /// It is crossbeam's and not `std::sync::mpsc`'s because the scheduler
    /// waits on the input and on worker results at once with `select!`,
    /// which a std receiver does not support.
    ///
    /// [crossbeam-channel]: https://docs.rs/crossbeam-channel/0.5
    pub fn imap_batches(&mut self, batches: Receiver<Items>) -> Imap<'_> {
        Imap { run: self.run(true, RunInput::Batches(batches)) }
    }

    /// Like [`Pool::imap_unordered`], with items from a channel of batches
    /// (see [`Pool::imap_batches`]).
    pub fn imap_unordered_batches(&mut self, batches: Receiver<Items>) -> ImapUnordered<'_> {
        ImapUnordered { run: self.run(false, RunInput::Batches(batches)) }
    }

    fn run<'p>(&'p mut self, ordered: bool, input: RunInput<'p>) -> Run<'p> {
        self.sched.begin(ordered);
        Run { sched: &mut self.sched, input }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.sched.shutdown();
    }
}

enum RunInput<'p> {
    Iter(Box<dyn Iterator<Item = Vec<u8>> + 'p>),
    Channel(Receiver<Vec<u8>>),
    Batches(Receiver<Items>),
}

impl RunInput<'_> {
    fn as_input(&mut self) -> Input<'_> {
        match self {
            RunInput::Iter(it) => Input::Iter(it.as_mut()),
            RunInput::Channel(rx) => Input::Channel(rx),
            RunInput::Batches(rx) => Input::Batches(rx),
        }
    }
}

struct Run<'p> {
    sched: &'p mut Scheduler,
    input: RunInput<'p>,
}

impl Run<'_> {
    fn next_shared(&mut self) -> Option<Result<(ItemIndex, SharedResult, ItemInfo), Error>> {
        self.sched.next(self.input.as_input())
    }

    fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>, max: usize) -> Result<bool, Error> {
        self.sched.next_batch(self.input.as_input(), out, max)
    }

    fn next(&mut self) -> Option<Result<(ItemIndex, ItemResult, ItemInfo), Error>> {
        let next = self.next_shared()?;
        Some(next.map(|(index, result, info)| (index, result.map(SharedBytes::into_vec).map_err(|e| *e), info)))
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.sched.abandon();
    }
}

/// The ordered lazy iterator of [`Pool::imap`].
///
/// Yields `Ok(item_result)` per item, in input order, or one `Err` for a
/// pool failure, after which it ends.
pub struct Imap<'p> {
    run: Run<'p>,
}

impl Imap<'_> {
    /// Whether the next result is available without waiting (useful to
    /// decide when to flush output).
    pub fn has_ready(&self) -> bool {
        self.run.sched.has_ready()
    }

    /// The pool's counters as of now, while the run borrows the pool (see
    /// [`Pool::stats`]).
    pub fn stats(&self) -> PoolStats {
        self.run.sched.stats()
    }

    /// Process ids of the pool's worker processes as of the last result
    /// (see [`Pool::worker_pids`]).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.run.sched.worker_pids()
    }
}

impl Imap<'_> {
    /// The next result with how its item ran (worker, attempts, kernel
    /// time): [`Iterator::next`] with more to say.
    pub fn next_with_info(&mut self) -> Option<Result<(ItemResult, ItemInfo), Error>> {
        self.run.next().map(|r| r.map(|(_, result, info)| (result, info)))
    }

    /// [`Imap::next_with_info`] with the result's bytes left where they
    /// arrived: no allocation or copy per result (the results of small
    /// items share the buffer their frame was read into), for a caller
    /// that writes them out or copies them anyway.
    pub fn next_shared(&mut self) -> Option<Result<(SharedResult, ItemInfo), Error>> {
        self.run.next_shared().map(|r| r.map(|(_, result, info)| (result, info)))
    }

    /// Waits for the next result, then moves it and every further result
    /// already here, `max` in all at most, into `out` (appended, in order,
    /// with their item indexes, bytes left where they arrived); `Ok(false)`
    /// once the run is over, `Err` once for a pool failure (after the
    /// results that came before it). Handing results on in batches (to
    /// another thread, another language) then costs a call per batch, not
    /// per item.
    ///
    /// ```no_run
    /// # fn demo(pool: &mut wpool::Pool) -> Result<(), wpool::Error> {
    /// let mut run = pool.imap((0..100_000u32).map(|i| i.to_string().into_bytes()));
    /// let mut batch = Vec::new();
    /// while run.next_batch(&mut batch, 4096)? {
    ///     for (index, result) in batch.drain(..) {
    ///         println!("{index}: {:?}", result.as_deref());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>, max: usize) -> Result<bool, Error> {
        self.run.next_batch(out, max)
    }

    /// The worker processes started so far, where they run and how they
    /// are confined (see [`Pool::worker_info`]).
    pub fn worker_info(&self) -> Vec<WorkerInfo> {
        self.run.sched.worker_info()
    }
}

impl Iterator for Imap<'_> {
    type Item = Result<ItemResult, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.run.next().map(|r| r.map(|(_, result, _)| result))
    }
}

/// The completion-order lazy iterator of [`Pool::imap_unordered`].
pub struct ImapUnordered<'p> {
    run: Run<'p>,
}

impl ImapUnordered<'_> {
    /// Whether a result is available without waiting.
    pub fn has_ready(&self) -> bool {
        self.run.sched.has_ready()
    }

    /// See [`Imap::stats`].
    pub fn stats(&self) -> PoolStats {
        self.run.sched.stats()
    }

    /// See [`Imap::worker_pids`].
    pub fn worker_pids(&self) -> Vec<u32> {
        self.run.sched.worker_pids()
    }
}

impl ImapUnordered<'_> {
    /// See [`Imap::next_with_info`].
    pub fn next_with_info(&mut self) -> Option<Result<(ItemIndex, ItemResult, ItemInfo), Error>> {
        self.run.next()
    }

    /// See [`Imap::next_shared`].
    pub fn next_shared(&mut self) -> Option<Result<(ItemIndex, SharedResult, ItemInfo), Error>> {
        self.run.next_shared()
    }

    /// See [`Imap::next_batch`]: results in completion order.
    pub fn next_batch(&mut self, out: &mut Vec<(ItemIndex, SharedResult)>, max: usize) -> Result<bool, Error> {
        self.run.next_batch(out, max)
    }

    /// See [`Imap::worker_info`].
    pub fn worker_info(&self) -> Vec<WorkerInfo> {
        self.run.sched.worker_info()
    }
}

impl Iterator for ImapUnordered<'_> {
    type Item = Result<(ItemIndex, ItemResult), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.run.next().map(|r| r.map(|(index, result, _)| (index, result)))
    }
}

/// Stops a pool's runs from another thread; see [`Pool::canceller`].
#[derive(Debug, Clone)]
pub struct Canceller {
    flag: Arc<AtomicBool>,
    wake: Sender<Event>,
    signal: StopSignal,
}

impl Canceller {
    /// Requests cancellation; returns immediately.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.signal.fire();
        let _ = self.wake.send(Event::Wake);
    }
}
