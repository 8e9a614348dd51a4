//! Scheduling: chunks, the ledger of in-flight items, retries, ordering,
//! deadlines and the restart policy.
//!
//! Owns *which item runs where* and *what the caller sees next*. It talks to
//! processes only through [`crate::supervisor`] (spawn, send, kill) and its
//! [`Event`]s; it never touches wasm or output formats.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{Crash, Error, ItemIndex, TaskError, TaskErrorKind, WorkerId};
use crate::protocol::{self, Hello, HostMsg, Outcome, WireError, WireKind, WorkerMsg, BATCH_BYTES, PROTOCOL_VERSION};
use crate::sandbox::{PrivateDir, SandboxStatus};
use crate::supervisor::{Event, Spawner, WorkerCommand, WorkerEnd, WorkerProc};

/// The result of one item.
pub type ItemResult = Result<Vec<u8>, TaskError>;

/// Chunks a worker holds at least: one running, one queued behind it so the
/// worker never waits for the host between chunks.
const DEPTH: usize = 2;
/// Chunks a worker may hold when they are small and fast (see `depth`)...
const MAX_DEPTH: usize = 256;
/// ...and items, beyond `DEPTH` chunks (all of them are retried alone when
/// their worker dies).
const MAX_IN_FLIGHT_ITEMS: usize = 256;
/// Largest automatic chunk.
const MAX_AUTO_CHUNK: usize = 1024;
/// Automatic chunks aim at about this much work each.
const AUTO_CHUNK_TARGET: Duration = Duration::from_millis(2);
/// Bytes of items in flight plus results waiting for their turn, above which
/// no more input is pulled.
const MAX_BUFFERED_BYTES: usize = 256 << 20;

/// Chunk sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunksize {
    /// Adapt to the measured per-item time (start at 1 for a fast first result).
    Auto,
    /// Exactly this many items per chunk.
    Fixed(usize),
}

/// Everything the scheduler needs that the builder decided.
#[derive(Debug, Clone)]
pub(crate) struct SchedConfig {
    pub workers: usize,
    pub chunksize: Chunksize,
    pub retries: u32,
    pub handshake_timeout: Duration,
    pub restart_window: Duration,
    pub max_restarts: u32,
    pub require_sandbox: bool,
    pub hello: Hello,
    pub command: WorkerCommand,
    /// The kernel's name, for messages.
    pub kernel: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Starting(Instant),
    Ready,
    Dead,
}

#[derive(Debug)]
struct Slot {
    gen: u64,
    state: SlotState,
    proc: Option<WorkerProc>,
    /// Chunk ids in flight on this worker, oldest (running) first.
    queue: VecDeque<u64>,
    /// When the oldest chunk last made progress (for the hard deadline).
    progress_at: Instant,
    /// Why the host killed it, if it did.
    killed: Option<KillReason>,
    /// Running an item alone (a retry after a crash): nothing else is sent
    /// to it until that item is answered, so a crash now is that item's.
    exclusive: bool,
    /// The protocol violation the scheduler saw, if that is why.
    violation: Option<String>,
    /// What its worker said about itself in the handshake.
    info: Option<WorkerInfo>,
}

impl Slot {
    /// Ready for another chunk: handshake done, not being killed (a worker
    /// killed when a run was abandoned stays `Ready` until its exit is
    /// seen, and must not be handed the next run's items), not running an
    /// item alone, below `depth` chunks.
    fn has_room(&self, depth: usize) -> bool {
        self.state == SlotState::Ready && self.killed.is_none() && !self.exclusive && self.queue.len() < depth
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Deadline,
    Violation,
    Abandoned,
    Handshake,
}

#[derive(Debug)]
pub(crate) struct Pending {
    index: u64,
    data: Vec<u8>,
    attempts: u32,
    /// Run alone: it was in flight when a worker died.
    isolate: bool,
}

#[derive(Debug)]
struct Chunk {
    items: Vec<Pending>,
    received: usize,
}

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
                Err(crossbeam_channel::TryRecvError::Empty) => Pull::Empty,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Pull::Done,
            },
            Input::Batches(rx) => loop {
                match rx.try_recv() {
                    Ok(batch) => {
                        stash.extend(batch);
                        if let Some(item) = stash.pop_front() {
                            return Pull::Item(item);
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => return Pull::Empty,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Pull::Done,
                }
            },
        }
    }
}

/// The state of the current `map`/`imap` run.
#[derive(Debug, Default)]
struct Job {
    ordered: bool,
    input_done: bool,
    /// Items received from a channel input, not yet dispatched.
    stash: VecDeque<Vec<u8>>,
    next_index: u64,
    retry: VecDeque<Pending>,
    /// Ordered: results by index, waiting for their turn.
    /// Slot `i` holds the result of item `next_emit + i` once it is known;
    /// bounded by the window.
    reorder: VecDeque<Option<ItemResult>>,
    /// Unordered: results in completion order.
    done: VecDeque<(u64, ItemResult)>,
    next_emit: u64,
    in_flight_items: usize,
    buffered_bytes: usize,
    per_item: Option<Duration>,
    fatal: Option<Error>,
    finished: bool,
    /// Cancelled, and the events waiting at that moment were handled.
    drained: bool,
}

/// The scheduler and the workers it drives; lives as long as the pool.
pub(crate) struct Scheduler {
    cfg: SchedConfig,
    spawner: Option<Spawner>,
    events: Receiver<Event>,
    wake: Sender<Event>,
    cancelled: Arc<AtomicBool>,
    slots: Vec<Slot>,
    chunks: HashMap<u64, Chunk>,
    next_gen: u64,
    next_chunk: u64,
    deaths: VecDeque<Instant>,
    startup_failures: u32,
    last_startup_failure: String,
    job: Job,
    frame: Vec<u8>,
    stats: PoolStats,
    sandbox: Option<SandboxStatus>,
    /// Declared last: removed after the workers are gone.
    _cwd: PrivateDir,
}

/// Counters over the life of a pool, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Worker processes started (initial ones and replacements).
    pub spawned: u64,
    /// Worker processes that died without being asked to (crashes, kills by
    /// others, deadline kills, protocol violations).
    pub worker_deaths: u64,
    /// Items put back in the queue because their worker died under them.
    pub retried_items: u64,
    /// Connections to the dial-back port of launched workers that were
    /// refused for a missing or wrong token.
    pub rejected_connections: u64,
}

/// A worker process as it described itself when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its slot.
    pub id: WorkerId,
    /// The machine it runs on: the Slurm node name under Slurm, else the
    /// host name.
    pub node: String,
    /// Its process id on that machine.
    pub pid: u32,
    /// How it confined itself there.
    pub sandbox: SandboxStatus,
}

impl Scheduler {
    /// Starts all workers and waits until one is ready (or they fail).
    pub(crate) fn start(mut cfg: SchedConfig) -> Result<Scheduler, Error> {
        let cwd = PrivateDir::create("pool")?;
        cfg.command.cwd = cwd.path().to_path_buf();
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::supervisor::ensure_fd_room(cfg.workers);
        let spawner = Spawner::start(cfg.command.clone(), tx.clone()).map_err(|source| Error::Listen {
            addr: cfg.command.listen.map_or_else(|| "this machine's address".into(), |a| a.to_string()),
            source,
        })?;
        let now = Instant::now();
        let mut s = Scheduler {
            slots: (0..cfg.workers)
                .map(|_| Slot {
                    gen: 0,
                    state: SlotState::Dead,
                    proc: None,
                    queue: VecDeque::new(),
                    progress_at: now,
                    killed: None,
                    violation: None,
                    exclusive: false,
                    info: None,
                })
                .collect(),
            cfg,
            spawner: Some(spawner),
            events: rx,
            wake: tx,
            cancelled: Arc::new(AtomicBool::new(false)),
            chunks: HashMap::new(),
            next_gen: 1,
            next_chunk: 1,
            deaths: VecDeque::new(),
            startup_failures: 0,
            last_startup_failure: String::new(),
            job: Job::default(),
            frame: Vec::new(),
            stats: PoolStats::default(),
            sandbox: None,
            _cwd: cwd,
        };
        for slot in 0..s.slots.len() {
            s.respawn(slot);
        }
        while !s.slots.iter().any(|w| w.state == SlotState::Ready) {
            if let Some(e) = s.job.fatal.take() {
                s.shutdown();
                return Err(e);
            }
            let deadline = s.next_deadline();
            s.wait(deadline);
            s.check_deadlines();
        }
        Ok(s)
    }

    pub(crate) fn cancel_handle(&self) -> (Arc<AtomicBool>, Sender<Event>) {
        (Arc::clone(&self.cancelled), self.wake.clone())
    }

    pub(crate) fn sandbox_status(&self) -> Option<&SandboxStatus> {
        self.sandbox.as_ref()
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let rejected_connections = self.spawner.as_ref().map_or(0, Spawner::rejected_connections);
        PoolStats { rejected_connections, ..self.stats }
    }

    /// Handles events that are already waiting, without blocking.
    pub(crate) fn poll(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
    }

    /// Waits until every worker slot has a ready worker.
    pub(crate) fn wait_ready(&mut self) -> Result<(), Error> {
        self.job.fatal = None;
        while !self.slots.iter().all(|w| w.state == SlotState::Ready) {
            if let Some(e) = self.job.fatal.take() {
                return Err(e);
            }
            for slot in 0..self.slots.len() {
                if self.slots[slot].state == SlotState::Dead {
                    self.respawn(slot);
                }
            }
            let deadline = self.next_deadline();
            self.wait(deadline);
            self.check_deadlines();
        }
        Ok(())
    }

    /// The workers that completed the handshake and are alive, by slot.
    pub(crate) fn worker_info(&self) -> Vec<WorkerInfo> {
        self.slots.iter().filter(|w| w.state == SlotState::Ready).filter_map(|w| w.info.clone()).collect()
    }

    /// Where launched workers dial back, if workers are launched.
    pub(crate) fn dial_addr(&self) -> Option<std::net::SocketAddr> {
        self.spawner.as_ref().and_then(Spawner::dial_addr)
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.slots.iter().filter_map(|s| s.proc.as_ref().map(|p| p.pid)).collect()
    }

    /// Begins a run. Any state of an abandoned run was cleared by `abandon`.
    pub(crate) fn begin(&mut self, ordered: bool) {
        self.job = Job { ordered, ..Job::default() };
        self.deaths.clear();
        self.startup_failures = 0;
        for slot in 0..self.slots.len() {
            if self.slots[slot].state == SlotState::Dead {
                self.respawn(slot);
            }
        }
    }

    /// Produces the next result of the run, pulling input as workers free up.
    /// `None` when the run is complete.
    pub(crate) fn next(&mut self, mut input: Input<'_>) -> Option<Result<(ItemIndex, ItemResult), Error>> {
        loop {
            if self.job.finished {
                return None;
            }
            if let Some(r) = self.pop_ready() {
                return Some(Ok(r));
            }
            if self.cancelled.load(Ordering::SeqCst) && self.job.fatal.is_none() {
                // Results that already reached the host are the caller's:
                // handle what is waiting, hand out what is ready in order,
                // and only then stop.
                if !self.job.drained {
                    self.job.drained = true;
                    self.poll();
                    continue;
                }
                self.job.fatal = Some(Error::Cancelled);
            }
            if let Some(e) = self.job.fatal.take() {
                self.job.finished = true;
                self.abandon();
                return Some(Err(e));
            }
            if self.is_complete() {
                self.job.finished = true;
                return None;
            }
            self.dispatch(&mut input);
            if self.has_ready() || self.is_complete() {
                continue;
            }
            let deadline = self.next_deadline();
            // Received but undispatched items (while a retry waits for an
            // idle worker) are enough: do not take more from the channel.
            if self.has_room() && self.may_pull() && !self.job.input_done && self.job.stash.is_empty() {
                match &input {
                    Input::Channel(rx) => self.wait_with_input(deadline, rx, |s, item| s.push_back(item)),
                    Input::Batches(rx) => self.wait_with_input(deadline, rx, |s, batch| s.extend(batch)),
                    Input::Iter(_) => self.wait(deadline),
                }
            } else {
                self.wait(deadline);
            }
            self.check_deadlines();
        }
    }

    fn is_complete(&self) -> bool {
        self.job.input_done && self.job.stash.is_empty() && self.job.retry.is_empty() && self.chunks.is_empty()
    }

    fn has_room(&self) -> bool {
        let depth = self.depth();
        self.slots.iter().any(|w| w.has_room(depth))
    }

    /// Whether `next` can return a result without waiting.
    pub(crate) fn has_ready(&self) -> bool {
        if self.job.ordered {
            self.job.reorder.front().is_some_and(Option::is_some)
        } else {
            !self.job.done.is_empty()
        }
    }

    fn pop_ready(&mut self) -> Option<(ItemIndex, ItemResult)> {
        let (index, result) = if self.job.ordered {
            let r = self.job.reorder.front_mut()?.take()?;
            self.job.reorder.pop_front();
            (self.job.next_emit, r)
        } else {
            self.job.done.pop_front()?
        };
        self.job.next_emit += 1;
        if let Ok(bytes) = &result {
            self.job.buffered_bytes -= bytes.len().min(self.job.buffered_bytes);
        }
        Some((ItemIndex(index), result))
    }

    fn complete(&mut self, index: u64, result: ItemResult) {
        if let Ok(bytes) = &result {
            self.job.buffered_bytes += bytes.len();
        }
        if self.job.ordered {
            let at = (index - self.job.next_emit) as usize;
            if self.job.reorder.len() <= at {
                self.job.reorder.resize_with(at + 1, || None);
            }
            self.job.reorder[at] = Some(result);
        } else {
            self.job.done.push_back((index, result));
        }
    }

    fn chunk_limit(&self) -> usize {
        match self.cfg.chunksize {
            Chunksize::Fixed(n) => n,
            Chunksize::Auto => match self.job.per_item {
                None => 1,
                Some(t) if t.is_zero() => MAX_AUTO_CHUNK,
                Some(t) => ((AUTO_CHUNK_TARGET.as_nanos() / t.as_nanos().max(1)) as usize).clamp(1, MAX_AUTO_CHUNK),
            },
        }
    }

    /// Chunks a worker may hold: `DEPTH`, or more when chunks take less than
    /// the automatic target, so that a worker holds about two targets' worth
    /// of work (with `--chunksize 1` and microsecond items, many chunks then
    /// travel in one write, and the worker never waits on the host).
    fn depth(&self) -> usize {
        let Some(per_item) = self.job.per_item else { return DEPTH };
        let chunk = self.chunk_limit().max(1);
        let by_time = (2 * AUTO_CHUNK_TARGET.as_nanos() / (per_item.as_nanos().max(1) * chunk as u128)) as usize;
        // Bounded in items too: host memory follows the items in flight.
        by_time.min(MAX_IN_FLIGHT_ITEMS / chunk).clamp(DEPTH, MAX_DEPTH)
    }

    /// How far ahead of the oldest unreturned item input may be pulled.
    fn window(&self) -> u64 {
        let per_worker = self.depth() * self.chunk_limit().max(1);
        (4 * self.cfg.workers * per_worker).max(256) as u64
    }

    /// Whether another input item may be taken now: there is one (from the
    /// source or already received into the stash) and memory and the
    /// ordered window allow it.
    fn may_pull(&self) -> bool {
        (!self.job.input_done || !self.job.stash.is_empty())
            && self.job.buffered_bytes < MAX_BUFFERED_BYTES
            && (!self.job.ordered || self.job.next_index < self.job.next_emit + self.window())
    }

    /// Fills every ready worker up to `depth` chunks. Items retried alone go
    /// only to a worker with nothing else in flight; while one waits for
    /// such a worker, no fresh input is handed out.
    fn dispatch(&mut self, input: &mut Input<'_>) {
        let max_item = self.cfg.hello.settings.limits.max_item_size;
        let depth = self.depth();
        for slot in 0..self.slots.len() {
            while self.slots[slot].has_room(depth) {
                let mut items = Vec::new();
                let mut bytes = 0;
                if self.job.retry.front().is_some_and(|p| p.isolate) && !self.slots[slot].queue.is_empty() {
                    break;
                }
                if let Some(p) = self.job.retry.pop_front() {
                    let alone = p.isolate;
                    self.slots[slot].exclusive = alone;
                    bytes += p.data.len();
                    items.push(p);
                    while !alone && items.len() < self.chunk_limit() && bytes < BATCH_BYTES {
                        match self.job.retry.front() {
                            Some(p) if !p.isolate => {
                                let p = self.job.retry.pop_front().expect("front exists");
                                bytes += p.data.len();
                                items.push(p);
                            }
                            _ => break,
                        }
                    }
                } else {
                    let limit = self.chunk_limit();
                    while items.len() < limit && bytes < BATCH_BYTES && self.may_pull() {
                        let data = match input.pull(&mut self.job.stash) {
                            Pull::Item(data) => data,
                            Pull::Empty => break,
                            Pull::Done => {
                                self.job.input_done = true;
                                break;
                            }
                        };
                        let index = self.job.next_index;
                        self.job.next_index += 1;
                        if data.len() > max_item {
                            let e = task_error(
                                index,
                                TaskErrorKind::ItemTooLarge,
                                format!("item of {} bytes is over the {max_item}-byte cap", data.len()),
                                None,
                                0,
                            );
                            self.complete(index, Err(e));
                            continue;
                        }
                        bytes += data.len();
                        items.push(Pending { index, data, attempts: 0, isolate: false });
                    }
                }
                if items.is_empty() {
                    return;
                }
                self.send_chunk(slot, items);
            }
        }
    }

    fn send_chunk(&mut self, slot: usize, items: Vec<Pending>) {
        let id = self.next_chunk;
        self.next_chunk += 1;
        let refs: Vec<&serde_bytes::Bytes> = items.iter().map(|p| serde_bytes::Bytes::new(&p.data)).collect();
        protocol::encode(&HostMsg::Run { chunk: id, items: refs }, &mut self.frame);
        let w = &mut self.slots[slot];
        if let Some(proc) = &w.proc {
            proc.send(std::mem::take(&mut self.frame));
        }
        if w.queue.is_empty() {
            w.progress_at = Instant::now();
        }
        w.queue.push_back(id);
        self.job.in_flight_items += items.len();
        self.job.buffered_bytes += items.iter().map(|p| p.data.len()).sum::<usize>();
        self.chunks.insert(id, Chunk { items, received: 0 });
    }

    /// Waits for a worker event or input from `rx`, which `stash` puts into
    /// the job's stash.
    fn wait_with_input<T>(
        &mut self,
        deadline: Option<Instant>,
        rx: &Receiver<T>,
        stash: impl FnOnce(&mut VecDeque<Vec<u8>>, T),
    ) {
        let mut sel = crossbeam_channel::Select::new();
        let ev = sel.recv(&self.events);
        let inp = sel.recv(rx);
        let op = match deadline {
            Some(d) => match sel.select_deadline(d) {
                Ok(op) => op,
                Err(_) => return,
            },
            None => sel.select(),
        };
        if op.index() == ev {
            let event = op.recv(&self.events).expect("the scheduler holds a sender");
            self.handle(event);
            while let Ok(event) = self.events.try_recv() {
                self.handle(event);
            }
        } else {
            debug_assert_eq!(op.index(), inp);
            match op.recv(rx) {
                Ok(input) => stash(&mut self.job.stash, input),
                Err(_) => self.job.input_done = true,
            }
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) {
        let event = match deadline {
            Some(d) => match self.events.recv_deadline(d) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => unreachable!("the scheduler holds a sender"),
            },
            None => self.events.recv().expect("the scheduler holds a sender"),
        };
        self.handle(event);
        // Drain whatever else is already there without blocking.
        while let Ok(event) = self.events.try_recv() {
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Wake => {}
            Event::Spawned(proc) => {
                let w = &mut self.slots[proc.slot];
                if w.gen == proc.gen {
                    w.proc = Some(proc);
                } else {
                    proc.kill();
                }
            }
            Event::SpawnFailed { slot, gen, error } => {
                if self.slots[slot].gen == gen {
                    self.slots[slot].state = SlotState::Dead;
                    self.job
                        .fatal
                        .get_or_insert(Error::Spawn { program: self.cfg.command.describe(slot), source: error });
                }
            }
            Event::Msg { slot, gen, msg } => {
                if self.slots[slot].gen == gen {
                    self.on_msg(slot, msg);
                }
            }
            Event::Exited { slot, gen, end } => {
                if self.slots[slot].gen == gen {
                    self.on_exit(slot, end);
                }
            }
        }
    }

    fn on_msg(&mut self, slot: usize, msg: WorkerMsg) {
        match (self.slots[slot].state, msg) {
            (SlotState::Starting(_), WorkerMsg::Ready { version, pid, node, sandbox })
                if version == PROTOCOL_VERSION =>
            {
                if self.cfg.require_sandbox && !sandbox.is_complete() {
                    self.kill(slot, KillReason::Abandoned);
                    self.job.fatal.get_or_insert(Error::SandboxUnavailable { status: sandbox.to_string() });
                    return;
                }
                self.slots[slot].info =
                    Some(WorkerInfo { id: WorkerId(slot as u32 + 1), node, pid, sandbox: sandbox.clone() });
                self.sandbox = Some(sandbox);
                self.slots[slot].state = SlotState::Ready;
                self.startup_failures = 0;
            }
            (SlotState::Starting(_), WorkerMsg::InitFailed { message }) => {
                self.kill(slot, KillReason::Abandoned);
                self.job.fatal.get_or_insert(Error::InitFailed { kernel: self.cfg.kernel.clone(), message });
            }
            (SlotState::Starting(_), WorkerMsg::Failed { message }) => {
                self.last_startup_failure = message;
            }
            // Late results of a worker being killed (after an abandoned run):
            // nobody wants them.
            (SlotState::Ready, WorkerMsg::Results { .. }) if self.slots[slot].killed.is_some() => {}
            (SlotState::Ready, WorkerMsg::Results { chunk, offset, outcomes, busy_ns }) => {
                if let Err(violation) = self.on_results(slot, chunk, offset, outcomes, busy_ns) {
                    self.slots[slot].violation = Some(violation);
                    self.kill(slot, KillReason::Violation);
                }
            }
            (state, msg) => {
                self.slots[slot].violation = Some(format!("unexpected {} while {state:?}", msg_name(&msg)));
                self.kill(slot, KillReason::Violation);
            }
        }
    }

    /// Accepts results only for the oldest chunk of this worker, at exactly
    /// the next offset: anything else is a protocol violation.
    fn on_results(
        &mut self,
        slot: usize,
        id: u64,
        offset: u32,
        outcomes: Vec<Outcome>,
        busy_ns: u64,
    ) -> Result<(), String> {
        let w = &mut self.slots[slot];
        if w.queue.front() != Some(&id) {
            return Err(format!("results for chunk {id}, which this worker is not running"));
        }
        let chunk = self.chunks.get_mut(&id).expect("queued chunks are in the ledger");
        if offset as usize != chunk.received || chunk.received + outcomes.len() > chunk.items.len() {
            return Err(format!(
                "results {offset}..+{} for a chunk of {} with {} received",
                outcomes.len(),
                chunk.items.len(),
                chunk.received
            ));
        }
        w.progress_at = Instant::now();
        let worker = Some(WorkerId(slot as u32 + 1));
        let first = chunk.received;
        chunk.received += outcomes.len();
        let complete = chunk.received == chunk.items.len();
        let mut done = Vec::with_capacity(outcomes.len());
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let p = &mut chunk.items[first + i];
            let attempts = p.attempts + 1;
            let data = std::mem::take(&mut p.data);
            let result = match outcome {
                Outcome::Ok(bytes) => Ok(bytes),
                Outcome::Err(e) => Err(from_wire(p.index, e, worker, attempts)),
            };
            done.push((p.index, data.len(), result));
        }
        let n = done.len();
        if complete {
            w.queue.pop_front();
            w.exclusive = false;
            self.chunks.remove(&id);
        }
        for (index, len, result) in done {
            self.job.buffered_bytes -= len.min(self.job.buffered_bytes);
            self.complete(index, result);
        }
        self.job.in_flight_items -= n;
        if n > 0 {
            // The worker's own measure of its time in the kernel: results of
            // fast items arrive in batches, so arrival times say little.
            let t = Duration::from_nanos(busy_ns) / n as u32;
            self.job.per_item = Some(match self.job.per_item {
                None => t,
                Some(old) => (old * 3 + t) / 4,
            });
        }
        Ok(())
    }

    fn on_exit(&mut self, slot: usize, mut end: WorkerEnd) {
        let w = &mut self.slots[slot];
        let was = w.state;
        // A frame the reader refused is a violation too, whoever killed it.
        end.violation = end.violation.take().or(w.violation.take());
        let killed = match w.killed.take() {
            None if end.violation.is_some() => Some(KillReason::Violation),
            k => k,
        };
        w.state = SlotState::Dead;
        w.proc = None;
        let queue = std::mem::take(&mut w.queue);
        let crash = end.crash.clone().unwrap_or(Crash::Exited { code: 0 });
        if killed != Some(KillReason::Abandoned) {
            self.stats.worker_deaths += 1;
            if let SlotState::Starting(_) = was {
                self.startup_failures += 1;
                let worker = slot + 1;
                let timeout = self.cfg.handshake_timeout;
                let mut last = match (killed, end.unconnected) {
                    (Some(KillReason::Handshake), Some(addr)) => format!(
                        "worker {worker} did not connect back to {addr} within {timeout:?} (can workers reach that \
                         address from where the launcher starts them?)"
                    ),
                    (Some(KillReason::Handshake), None) => {
                        format!("worker {worker} did not complete the handshake within {timeout:?}")
                    }
                    (_, Some(addr)) => {
                        format!("worker {worker}: its launcher {crash} before the worker connected back to {addr}")
                    }
                    _ => format!("worker {worker} {crash}"),
                };
                if !self.last_startup_failure.is_empty() {
                    last = format!("{last}: {}", std::mem::take(&mut self.last_startup_failure));
                } else if !end.stderr.is_empty() {
                    last = format!("{last}; its stderr: {}", end.stderr);
                }
                let limit = (self.cfg.workers as u32).max(3);
                if self.startup_failures >= limit {
                    self.job.fatal.get_or_insert(Error::WorkerStartup { failures: self.startup_failures, last });
                }
            }
            let now = Instant::now();
            self.deaths.push_back(now);
            while self.deaths.front().is_some_and(|t| now.duration_since(*t) > self.cfg.restart_window) {
                self.deaths.pop_front();
            }
            if self.deaths.len() as u32 > self.cfg.max_restarts {
                self.job.fatal.get_or_insert(Error::RestartIntensity {
                    deaths: self.deaths.len() as u32,
                    window: self.cfg.restart_window,
                });
            }
        }
        self.requeue(slot, queue, &crash, killed, &end);
        if self.job.fatal.is_none() {
            self.respawn(slot);
        }
    }

    /// Puts a dead worker's chunks back. A worker writes the results of fast
    /// items in batches, so any of its unanswered items may have been the
    /// one running: an item is blamed only when it was the worker's *only*
    /// unanswered item (a retry runs alone, on a worker holding nothing
    /// else); all others are retried alone. Each counts an attempt (any of
    /// them may have been running). `MAX_IN_FLIGHT_ITEMS` bounds how many
    /// items beyond two chunks one death sends through that slow path.
    fn requeue(
        &mut self,
        slot: usize,
        queue: VecDeque<u64>,
        crash: &Crash,
        killed: Option<KillReason>,
        end: &WorkerEnd,
    ) {
        let worker = Some(WorkerId(slot as u32 + 1));
        let unanswered: usize =
            queue.iter().filter_map(|id| self.chunks.get(id)).map(|c| c.items.len() - c.received).sum();
        let alone = unanswered == 1;
        let mut back = Vec::new();
        for id in queue {
            let Some(chunk) = self.chunks.remove(&id) else { continue };
            let unanswered: Vec<Pending> = chunk.items.into_iter().skip(chunk.received).collect();
            self.job.in_flight_items -= unanswered.len();
            for mut p in unanswered {
                self.job.buffered_bytes -= p.data.len().min(self.job.buffered_bytes);
                p.attempts += 1;
                let blame = alone && (killed == Some(KillReason::Deadline) || p.attempts > self.cfg.retries);
                if blame {
                    let (kind, message) = match killed {
                        Some(KillReason::Deadline) => (
                            TaskErrorKind::Timeout,
                            format!("the worker stopped answering past the deadline and was killed ({crash})"),
                        ),
                        Some(KillReason::Violation) => (
                            TaskErrorKind::Protocol,
                            format!(
                                "the worker broke the protocol and was killed: {}",
                                end.violation.clone().unwrap_or_default()
                            ),
                        ),
                        _ => (TaskErrorKind::WorkerCrashed(crash.clone()), worker_crash_message(crash, end)),
                    };
                    let e = task_error(p.index, kind, message, worker, p.attempts);
                    self.complete(p.index, Err(e));
                } else {
                    p.isolate = true;
                    self.stats.retried_items += 1;
                    back.push(p);
                }
            }
        }
        back.sort_by_key(|p| p.index);
        // Counted again in `buffered_bytes` when they are sent.
        for p in back.into_iter().rev() {
            self.job.retry.push_front(p);
        }
    }

    fn respawn(&mut self, slot: usize) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let w = &mut self.slots[slot];
        w.gen = gen;
        w.state = SlotState::Starting(Instant::now());
        w.proc = None;
        w.killed = None;
        w.violation = None;
        w.exclusive = false;
        w.info = None;
        self.stats.spawned += 1;
        let mut hello = self.cfg.hello.clone();
        hello.worker = slot as u32 + 1;
        if let Some(spawner) = &self.spawner {
            spawner.spawn(slot, gen, hello);
        }
    }

    fn kill(&mut self, slot: usize, reason: KillReason) {
        let w = &mut self.slots[slot];
        w.killed.get_or_insert(reason);
        if let Some(proc) = &w.proc {
            proc.kill();
        }
    }

    /// The hard deadline of the oldest chunk on each worker: every remaining
    /// item may take the full timeout, plus a grace period.
    fn deadline_of(&self, w: &Slot) -> Option<Instant> {
        match w.state {
            SlotState::Starting(since) => Some(since + self.cfg.handshake_timeout),
            SlotState::Ready => {
                let timeout = self.cfg.hello.settings.limits.timeout?;
                let id = w.queue.front()?;
                let chunk = self.chunks.get(id)?;
                let remaining = (chunk.items.len() - chunk.received) as u32;
                // A fresh instance runs `init` first, under its own timeout.
                let init = if self.cfg.hello.init.is_some() { timeout } else { Duration::ZERO };
                Some(w.progress_at + (timeout + init) * remaining + hard_grace(timeout))
            }
            SlotState::Dead => None,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter(|w| w.killed.is_none()).filter_map(|w| self.deadline_of(w)).min()
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let w = &self.slots[slot];
            if w.killed.is_some() || w.proc.is_none() {
                continue;
            }
            if self.deadline_of(w).is_some_and(|d| d <= now) {
                let reason = match w.state {
                    SlotState::Starting(_) => KillReason::Handshake,
                    _ => KillReason::Deadline,
                };
                self.kill(slot, reason);
            }
        }
    }

    /// Stops the current run early: workers holding its chunks are killed
    /// (they will be respawned on the next run) and its state is dropped.
    pub(crate) fn abandon(&mut self) {
        for slot in 0..self.slots.len() {
            if !self.slots[slot].queue.is_empty() {
                self.slots[slot].queue.clear();
                self.slots[slot].exclusive = false;
                self.kill(slot, KillReason::Abandoned);
            }
        }
        self.chunks.clear();
        self.job.retry.clear();
        self.job.finished = true;
    }

    /// Ends every worker and waits until all are reaped: graceful EOF first,
    /// SIGKILL for those that do not exit promptly.
    pub(crate) fn shutdown(&mut self) {
        self.abandon();
        let mut shutdown_frame = Vec::new();
        protocol::encode(&HostMsg::Shutdown, &mut shutdown_frame);
        for w in &mut self.slots {
            if let Some(p) = &mut w.proc {
                p.send(shutdown_frame.clone());
                p.close_input();
            }
        }
        let alive = |s: &Scheduler| s.slots.iter().any(|w| w.state != SlotState::Dead || w.proc.is_some());
        let mut grace_until = Instant::now() + Duration::from_millis(500);
        let hard_until = Instant::now() + Duration::from_secs(10);
        let mut escalated = false;
        while alive(self) && Instant::now() < hard_until {
            match self.events.recv_deadline(grace_until.min(hard_until)) {
                Ok(Event::Exited { slot, gen, .. }) if self.slots[slot].gen == gen => {
                    self.slots[slot].state = SlotState::Dead;
                    self.slots[slot].proc = None;
                }
                Ok(Event::Spawned(proc)) => {
                    let w = &mut self.slots[proc.slot];
                    if w.gen == proc.gen {
                        proc.kill();
                        w.proc = Some(proc);
                    } else {
                        proc.kill();
                    }
                }
                Ok(Event::SpawnFailed { slot, gen, .. }) if self.slots[slot].gen == gen => {
                    self.slots[slot].state = SlotState::Dead;
                }
                Ok(_) => {}
                Err(_) if !escalated => {
                    escalated = true;
                    grace_until = hard_until;
                    for w in &self.slots {
                        if let Some(p) = &w.proc {
                            p.kill();
                        }
                    }
                }
                Err(_) => {}
            }
        }
        self.spawner.take();
    }
}

fn msg_name(msg: &WorkerMsg) -> &'static str {
    match msg {
        WorkerMsg::Ready { .. } => "Ready",
        WorkerMsg::Results { .. } => "Results",
        WorkerMsg::Failed { .. } => "Failed",
        WorkerMsg::InitFailed { .. } => "InitFailed",
    }
}

fn hard_grace(timeout: Duration) -> Duration {
    Duration::from_secs(1) + timeout / 2
}

fn worker_crash_message(crash: &Crash, end: &WorkerEnd) -> String {
    let mut m = format!("the worker process {crash} while running this item");
    if let Some(v) = &end.violation {
        m.push_str(&format!(" (protocol violation: {v})"));
    }
    if !end.stderr.is_empty() {
        m.push_str(&format!("; worker stderr: {}", end.stderr));
    }
    m
}

fn task_error(index: u64, kind: TaskErrorKind, message: String, worker: Option<WorkerId>, attempts: u32) -> TaskError {
    TaskError { index: ItemIndex(index), kind, message, worker, attempts, stderr: Vec::new() }
}

fn from_wire(index: u64, e: WireError, worker: Option<WorkerId>, attempts: u32) -> TaskError {
    let kind = match e.kind {
        WireKind::Kernel => TaskErrorKind::Kernel,
        WireKind::Trap => TaskErrorKind::Trap,
        WireKind::Timeout => TaskErrorKind::Timeout,
        WireKind::OutOfFuel => TaskErrorKind::OutOfFuel,
        WireKind::MemoryLimit => TaskErrorKind::MemoryLimit,
        WireKind::StackOverflow => TaskErrorKind::StackOverflow,
        WireKind::KernelExit(code) => TaskErrorKind::KernelExit(code),
        WireKind::ItemTooLarge => TaskErrorKind::ItemTooLarge,
    };
    TaskError { index: ItemIndex(index), kind, message: e.message, worker, attempts, stderr: e.stderr }
}
