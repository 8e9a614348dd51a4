//! Scheduling: the event loop that drives the workers through a run.
//!
//! Owns *which item runs where* and *what the caller sees next*, through
//! its parts: [`slots`] (one per worker: state, chunks held, deadlines),
//! [`ledger`] (items in flight, attempts, blame and retries), [`reorder`]
//! (results on their way out), [`sizing`] (chunk size, depth, window),
//! [`input`] (reading items) and [`policy`] (when to give up restarting).
//! This module only reacts to [`Event`]s and hands work between them. It
//! talks to processes only through [`crate::host::supervisor`] (spawn, send,
//! kill); it never touches wasm or output formats.

mod input;
mod ledger;
mod policy;
mod reorder;
mod sizing;
mod slots;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub(crate) use self::input::Input;
pub use self::sizing::Chunksize;

use self::input::{Feed, Stash};
use self::ledger::{Ledger, Pending};
use self::policy::RestartPolicy;
use self::reorder::Reorder;
use self::sizing::{Sizer, MAX_BUFFERED_BYTES};
use self::slots::{Deadlines, KillReason, Slot, SlotState};
use crate::error::{Error, ItemIndex, TaskError, TaskErrorKind, WorkerId};
use crate::host::rundir::PrivateDir;
use crate::host::supervisor::{Event, Frame, FromWorker, Spawner, WorkerCommand, WorkerEnd};
use crate::shared::SharedBytes;
use crate::wire::SandboxStatus;
use crate::wire::{self, Hello, HostMsg, WireError, WorkerMsg, BATCH_BYTES, PROTOCOL_VERSION};

/// The result of one item.
pub type ItemResult = Result<Vec<u8>, TaskError>;

/// The result of one item, its bytes left in the buffer they arrived in
/// (see [`crate::Imap::next_shared`]). 16 bytes: errors, which are rare,
/// are boxed, so that the reorder window and a batch of results hold
/// little per item.
pub type SharedResult = Result<SharedBytes, Box<TaskError>>;

const _: () = assert!(std::mem::size_of::<SharedResult>() == 16);

/// How an item ran, beside its result (see [`crate::Imap::next_with_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ItemInfo {
    /// The worker that gave the outcome; `None` when no worker ran the item
    /// (an item over the size cap is refused before any worker sees it).
    pub worker: Option<WorkerId>,
    /// How many times the item was started (retries after worker deaths
    /// included).
    pub attempts: u32,
    /// The worker's time in the kernel for it: the time of the results it
    /// came back with, shared evenly among them (exact for an item that
    /// came back alone, as slow items do; fast items come back in batches).
    /// `None` when no worker reported it: the item was refused before it
    /// ran, or its worker died or was killed under it.
    pub kernel_time: Option<Duration>,
    /// When its outcome reached the host (before any reordering).
    pub arrived: Instant,
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

/// The state of the current `map`/`imap` run.
#[derive(Debug)]
struct Job {
    feed: Feed,
    reorder: Reorder,
    sizer: Sizer,
    fatal: Option<Error>,
    finished: bool,
    /// Cancelled, and the events waiting at that moment were handled.
    drained: bool,
}

impl Job {
    fn new(ordered: bool, cfg: &SchedConfig) -> Job {
        Job {
            feed: Feed::default(),
            reorder: Reorder::new(ordered),
            sizer: Sizer::new(cfg.chunksize, cfg.workers),
            fatal: None,
            finished: false,
            drained: false,
        }
    }
}

/// The scheduler and the workers it drives; lives as long as the pool.
pub(crate) struct Scheduler {
    cfg: SchedConfig,
    spawner: Option<Spawner>,
    events: Receiver<Event>,
    wake: Sender<Event>,
    cancelled: Arc<AtomicBool>,
    slots: Vec<Slot>,
    ledger: Ledger,
    policy: RestartPolicy,
    deadlines: Deadlines,
    /// The largest item sent to a worker; larger ones fail at once.
    max_item: usize,
    next_gen: u64,
    job: Job,
    frame: Frame,
    stats: PoolStats,
    sandbox: Option<SandboxStatus>,
    /// Shutting down: events only retire workers.
    closing: bool,
    /// The workers' working directory: removed (with the run directory, if
    /// it was the last thing in it) as the workers are told to exit, when
    /// it is empty, as it should be; else declared last, removed after the
    /// workers are gone.
    cwd: Option<PrivateDir>,
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
    /// Items whose result came out of a call of the kernel's `map-batch`
    /// (several small items per call; see [`crate::PoolBuilder::batch_calls`]).
    pub batched_items: u64,
    /// `map-batch` calls that failed (a trap, a limit, a wrong number of
    /// results) and whose items were run again one by one with `map`.
    pub batch_fallbacks: u64,
    /// Chunks a worker gave back unrun for an idle one to run: with nothing
    /// else left to hand out, a worker holding a chunk behind the one it
    /// runs is asked for it.
    pub reclaimed_chunks: u64,
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
        crate::host::supervisor::ensure_fd_room(cfg.workers);
        let spawner = Spawner::start(cfg.command.clone(), tx.clone()).map_err(|source| Error::Listen {
            addr: cfg.command.listen.map_or_else(|| "this machine's address".into(), |a| a.to_string()),
            source,
        })?;
        let now = Instant::now();
        let mut s = Scheduler {
            slots: (0..cfg.workers).map(|_| Slot::new(now)).collect(),
            ledger: Ledger::new(cfg.retries),
            policy: RestartPolicy::new(&cfg),
            deadlines: Deadlines::new(&cfg),
            max_item: cfg.hello.settings.limits.max_item_size,
            job: Job::new(false, &cfg),
            cfg,
            spawner: Some(spawner),
            events: rx,
            wake: tx,
            cancelled: Arc::new(AtomicBool::new(false)),
            next_gen: 1,
            frame: Frame::default(),
            stats: PoolStats::default(),
            sandbox: None,
            closing: false,
            cwd: Some(cwd),
        };
        s.respawn_dead();
        while !s.slots.iter().any(|w| w.state == SlotState::Ready) {
            if let Some(e) = s.job.fatal.take() {
                s.shutdown();
                return Err(e);
            }
            s.wait_for_events();
        }
        Ok(s)
    }

    pub(crate) fn cancel_handle(&self) -> (Arc<AtomicBool>, Sender<Event>) {
        (Arc::clone(&self.cancelled), self.wake.clone())
    }

    /// The largest item the workers take.
    pub(crate) fn max_item_size(&self) -> usize {
        self.max_item
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
            self.respawn_dead();
            self.wait_for_events();
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

    /// The chunk sizing of the runs begun from now on.
    pub(crate) fn set_chunksize(&mut self, chunksize: Chunksize) {
        self.cfg.chunksize = chunksize;
    }

    /// Begins a run. Any state of an abandoned run was cleared by `abandon`.
    pub(crate) fn begin(&mut self, ordered: bool) {
        self.job = Job::new(ordered, &self.cfg);
        self.policy.begin_run();
        self.respawn_dead();
    }

    /// Produces the next result of the run, pulling input as workers free up.
    /// `None` when the run is complete.
    pub(crate) fn next(&mut self, input: Input<'_>) -> Option<Result<(ItemIndex, SharedResult, ItemInfo), Error>> {
        if let Err(e) = self.ready(input)? {
            return Some(Err(e));
        }
        let (index, result, info) = self.job.reorder.pop_ready().expect("a result is ready");
        Some(Ok((ItemIndex(index), result, info)))
    }

    /// Waits as [`Scheduler::next`] does, then moves the next result and
    /// every further one ready, `max` at most, into `out`: `Ok(false)` once
    /// the run is over.
    pub(crate) fn next_batch(
        &mut self,
        input: Input<'_>,
        out: &mut Vec<(ItemIndex, SharedResult)>,
        max: usize,
    ) -> Result<bool, Error> {
        match self.ready(input) {
            None => return Ok(false),
            Some(Err(e)) => return Err(e),
            Some(Ok(())) => {}
        }
        for _ in 0..max.max(1) {
            let Some((index, result, _)) = self.job.reorder.pop_ready() else { break };
            out.push((ItemIndex(index), result));
        }
        Ok(true)
    }

    /// Runs the job until a result is ready to hand out (`Ok`), the run
    /// failed (`Err`, once) or it is over (`None`).
    fn ready(&mut self, mut input: Input<'_>) -> Option<Result<(), Error>> {
        loop {
            if self.job.finished {
                return None;
            }
            if self.job.reorder.has_ready() {
                return Some(Ok(()));
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
            self.wait_for_work(&input);
        }
    }

    /// Whether `next` can return a result without waiting.
    pub(crate) fn has_ready(&self) -> bool {
        self.job.reorder.has_ready()
    }

    fn is_complete(&self) -> bool {
        !self.job.feed.has_more() && self.ledger.is_empty()
    }

    fn has_room(&self) -> bool {
        let depth = self.job.sizer.depth();
        self.slots.iter().any(|w| w.has_room(depth))
    }

    /// Whether another input item may be taken now: there is one (from the
    /// source or already received) and memory and the ordered window allow
    /// it.
    fn may_pull(&self) -> bool {
        self.job.feed.has_more()
            && self.ledger.bytes() + self.job.reorder.bytes() < MAX_BUFFERED_BYTES
            && self.job.reorder.admits(self.job.feed.next_index(), self.job.sizer.window())
    }

    /// Fills every ready worker up to `depth` chunks, each idle one first
    /// (one chunk each before any gets a second). Items retried alone go
    /// only to a worker with nothing else in flight; while one waits for
    /// such a worker, no fresh input is handed out.
    fn dispatch(&mut self, input: &mut Input<'_>) {
        let depth = self.job.sizer.depth();
        for fill in [1, depth] {
            for slot in 0..self.slots.len() {
                while self.slots[slot].has_room(fill) {
                    if self.ledger.needs_idle_worker() && !self.slots[slot].queue.is_empty() {
                        break;
                    }
                    let limit = self.job.sizer.chunk_limit();
                    let items = match self.ledger.take_retries(limit, BATCH_BYTES) {
                        Some((items, alone)) => {
                            self.slots[slot].exclusive = alone;
                            items
                        }
                        None => self.pull_chunk(input, limit),
                    };
                    if items.is_empty() {
                        return self.rebalance();
                    }
                    self.send_chunk(slot, items);
                }
            }
        }
        self.rebalance();
    }

    /// With nothing left to hand out, asks the worker holding the most
    /// chunks for its last one (not started yet, it will be given back and
    /// run by an idle worker), one request per idle worker at a time: a
    /// worker must not sit idle while another holds long work it has not
    /// started.
    fn rebalance(&mut self) {
        let idle = self.slots.iter().filter(|w| w.is_idle()).count();
        let asked = self.slots.iter().filter(|w| w.revoking.is_some()).count();
        if idle <= asked {
            return;
        }
        let busiest = (0..self.slots.len())
            .filter_map(|slot| Some((slot, self.slots[slot].revocable()?)))
            .max_by_key(|&(slot, _)| self.slots[slot].queue.len());
        // Whatever the time per item measured so far: items differ, and a
        // chunk that turns out to be short is at worst run where it was
        // (the request comes too late) or moved at the cost of a round
        // trip, at the end of a run or while input is scarce.
        let Some((slot, chunk)) = busiest else { return };
        let mut frame = Vec::new();
        wire::encode(&HostMsg::Revoke { chunk }, &mut frame);
        self.slots[slot].revoke(chunk, frame.into());
    }

    /// Fresh input for one chunk of up to `limit` items. An item over the
    /// size cap fails here, without reaching a worker.
    fn pull_chunk(&mut self, input: &mut Input<'_>, limit: usize) -> Vec<Pending> {
        let mut items = Vec::new();
        let mut bytes = 0;
        while items.len() < limit && bytes < BATCH_BYTES && self.may_pull() {
            let Some((index, data)) = self.job.feed.next(input) else { break };
            if data.len() > self.max_item {
                let info = ItemInfo { worker: None, attempts: 0, kernel_time: None, arrived: Instant::now() };
                self.job.reorder.complete(
                    index,
                    Err(Box::new(input::too_large(index, data.len(), self.max_item))),
                    info,
                );
                continue;
            }
            bytes += data.len();
            items.push(Pending::new(index, data));
        }
        items
    }

    fn send_chunk(&mut self, slot: usize, items: Vec<Pending>) {
        let (id, items) = self.ledger.open(items);
        let refs: Vec<_> = items.iter().map(|p| p.data.as_item()).collect();
        wire::encode_run(id, &refs, &mut self.frame);
        self.slots[slot].send(id, std::mem::take(&mut self.frame));
    }

    /// Waits for a worker event, a deadline, or (when a worker has room for
    /// it) input from a channel.
    fn wait_for_work(&mut self, input: &Input<'_>) {
        let deadline = self.next_deadline();
        if self.has_room() && self.may_pull() && self.job.feed.wants_source() {
            match input {
                Input::Channel(rx) => self.wait_with_input(deadline, rx, Stash::push),
                Input::Batches(rx) => self.wait_with_input(deadline, rx, Stash::push_items),
                Input::Iter(_) => self.wait(deadline),
            }
        } else {
            self.wait(deadline);
        }
        self.check_deadlines();
    }

    /// Waits for worker events until the next deadline, then enforces it.
    fn wait_for_events(&mut self) {
        let deadline = self.next_deadline();
        self.wait(deadline);
        self.check_deadlines();
    }

    /// Waits for a worker event or input from `rx`, which `put` adds to the
    /// feed's stash.
    fn wait_with_input<T>(&mut self, deadline: Option<Instant>, rx: &Receiver<T>, put: impl FnOnce(&mut Stash, T)) {
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
            self.poll();
        } else {
            debug_assert_eq!(op.index(), inp);
            self.job.feed.received(op.recv(rx).ok(), put);
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
        self.poll();
    }

    /// Reacts to one event. Events of an older generation of a slot are
    /// stale. While closing, only the retirement of workers matters.
    fn handle(&mut self, event: Event) {
        match event {
            Event::Spawned(proc) => self.slots[proc.slot].adopt(proc, self.closing),
            Event::SpawnFailed { slot, gen, error } if self.slots[slot].gen == gen => {
                self.slots[slot].state = SlotState::Dead;
                self.job.fatal.get_or_insert(Error::Spawn { program: self.cfg.command.describe(slot), source: error });
            }
            Event::Msg { slot, gen, msg } if self.slots[slot].gen == gen && !self.closing => self.on_msg(slot, msg),
            Event::Exited { slot, gen, end } if self.slots[slot].gen == gen => self.on_exit(slot, end),
            Event::SpawnFailed { .. } | Event::Msg { .. } | Event::Exited { .. } | Event::Wake => {}
        }
    }

    fn on_msg(&mut self, slot: usize, msg: FromWorker) {
        match (self.slots[slot].state, msg) {
            (SlotState::Starting(_), FromWorker::Msg(WorkerMsg::Ready { version, pid, node, sandbox }))
                if version == PROTOCOL_VERSION =>
            {
                if self.cfg.require_sandbox && !sandbox.is_complete() {
                    self.slots[slot].kill(KillReason::Abandoned);
                    self.job.fatal.get_or_insert(Error::SandboxUnavailable { status: sandbox.to_string() });
                    return;
                }
                self.slots[slot].info =
                    Some(WorkerInfo { id: WorkerId(slot as u32 + 1), node, pid, sandbox: sandbox.clone() });
                self.sandbox = Some(sandbox);
                self.slots[slot].state = SlotState::Ready;
                self.policy.started();
            }
            (SlotState::Starting(_), FromWorker::Msg(WorkerMsg::InitFailed { message })) => {
                self.slots[slot].kill(KillReason::Abandoned);
                self.job.fatal.get_or_insert(Error::InitFailed { kernel: self.cfg.kernel.clone(), message });
            }
            (SlotState::Starting(_), FromWorker::Msg(WorkerMsg::Failed { message })) => {
                self.policy.failed_to_start(message)
            }
            // Late results of a worker being killed (after an abandoned run):
            // nobody wants them.
            (SlotState::Ready, FromWorker::Results(_) | FromWorker::Msg(WorkerMsg::Revoked { .. }))
                if self.slots[slot].killed.is_some() => {}
            (SlotState::Ready, FromWorker::Msg(WorkerMsg::Revoked { chunk })) => {
                match self.slots[slot].gave_back(chunk).and_then(|()| self.ledger.reclaim(chunk)) {
                    Ok(()) => self.stats.reclaimed_chunks += 1,
                    Err(violation) => self.slots[slot].reject(violation),
                }
            }
            (SlotState::Ready, FromWorker::Results(r)) => {
                self.stats.batched_items += u64::from(r.batched).min(r.outcomes.len() as u64);
                self.stats.batch_fallbacks += u64::from(r.fallbacks);
                if let Err(violation) = self.on_results(slot, r.chunk, r.offset, r.outcomes, r.busy_ns) {
                    self.slots[slot].reject(violation);
                }
            }
            (state, msg) => self.slots[slot].reject(format!("unexpected {} while {state:?}", msg_name(&msg))),
        }
    }

    /// Accepts results only for the oldest chunk of this worker, at exactly
    /// the next offset: anything else is a protocol violation.
    fn on_results(
        &mut self,
        slot: usize,
        id: u64,
        offset: u32,
        outcomes: Vec<Result<SharedBytes, WireError>>,
        busy_ns: u64,
    ) -> Result<(), String> {
        if self.slots[slot].queue.front() != Some(&id) {
            return Err(format!("results for chunk {id}, which this worker is not running"));
        }
        let answer = self.ledger.answer(id, offset, outcomes, WorkerId(slot as u32 + 1))?;
        self.slots[slot].answered(answer.complete);
        let n = answer.results.len();
        let kernel_time = Some(Duration::from_nanos(busy_ns / n.max(1) as u64));
        let worker = Some(WorkerId(slot as u32 + 1));
        let arrived = Instant::now();
        for (index, result, attempts) in answer.results {
            self.job.reorder.complete(index, result, ItemInfo { worker, attempts, kernel_time, arrived });
        }
        self.job.sizer.measure(Duration::from_nanos(busy_ns), n);
        Ok(())
    }

    /// A worker is gone: count it against the restart policy, settle its
    /// unanswered items, and replace it unless the pool gives up.
    fn on_exit(&mut self, slot: usize, end: WorkerEnd) {
        let death = self.slots[slot].bury(end);
        if self.closing {
            return;
        }
        if death.counts() {
            self.stats.worker_deaths += 1;
            if let Some(e) = self.policy.on_death(slot, &death, Instant::now()) {
                self.job.fatal.get_or_insert(e);
            }
        }
        let requeued = self.ledger.requeue(death.queue.iter().copied(), death.timed_out());
        self.stats.retried_items += requeued.retried as u64;
        for b in requeued.blamed {
            let worker = WorkerId(slot as u32 + 1);
            let e = death.item_error(b.index, b.attempts, worker);
            let info =
                ItemInfo { worker: Some(worker), attempts: b.attempts, kernel_time: None, arrived: Instant::now() };
            self.job.reorder.complete(b.index, Err(Box::new(e)), info);
        }
        if self.job.fatal.is_none() {
            self.respawn(slot);
        }
    }

    fn respawn(&mut self, slot: usize) {
        let gen = self.next_gen;
        self.next_gen += 1;
        self.slots[slot].restart(gen);
        self.stats.spawned += 1;
        let mut hello = self.cfg.hello.clone();
        hello.worker = slot as u32 + 1;
        if let Some(spawner) = &self.spawner {
            spawner.spawn(slot, gen, hello);
        }
    }

    fn respawn_dead(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].state == SlotState::Dead {
                self.respawn(slot);
            }
        }
    }

    fn deadline_of(&self, w: &Slot) -> Option<Instant> {
        let remaining = w.queue.front().and_then(|id| self.ledger.unanswered(*id));
        self.deadlines.of(w, remaining)
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
                let reason = w.overdue();
                self.slots[slot].kill(reason);
            }
        }
    }

    /// Stops the current run early: workers holding its chunks are killed
    /// (they will be respawned on the next run) and its state is dropped.
    pub(crate) fn abandon(&mut self) {
        for w in &mut self.slots {
            w.abandon();
        }
        self.ledger.clear();
        self.job.finished = true;
    }

    /// Ends every worker and waits until all are reaped: graceful EOF first,
    /// SIGKILL for those that do not exit promptly.
    pub(crate) fn shutdown(&mut self) {
        self.abandon();
        self.closing = true;
        let mut shutdown_frame = Vec::new();
        wire::encode(&HostMsg::Shutdown, &mut shutdown_frame);
        for w in &mut self.slots {
            if let Some(p) = &mut w.proc {
                p.send(shutdown_frame.clone().into());
                p.close_input();
            }
        }
        // What is left to end goes while the workers exit, not after.
        if let Some(spawner) = &self.spawner {
            spawner.retire_zygote();
        }
        if self.cwd.as_mut().is_some_and(PrivateDir::remove_if_empty) {
            self.cwd = None;
        }
        let mut grace_until = Instant::now() + Duration::from_millis(500);
        let hard_until = Instant::now() + Duration::from_secs(10);
        let mut escalated = false;
        while self.slots.iter().any(Slot::is_alive) && Instant::now() < hard_until {
            match self.events.recv_deadline(grace_until.min(hard_until)) {
                Ok(event) => self.handle(event),
                Err(_) if !escalated => {
                    escalated = true;
                    grace_until = hard_until;
                    for w in &mut self.slots {
                        w.kill(KillReason::Abandoned);
                    }
                }
                Err(_) => {}
            }
        }
        self.spawner.take();
    }
}

fn msg_name(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Msg(WorkerMsg::Ready { .. }) => "Ready",
        FromWorker::Results(_) => "Results",
        FromWorker::Msg(WorkerMsg::Failed { .. }) => "Failed",
        FromWorker::Msg(WorkerMsg::InitFailed { .. }) => "InitFailed",
        FromWorker::Msg(WorkerMsg::Revoked { .. }) => "Revoked",
        // The frame reader reads these as `FromWorker::Results`.
        FromWorker::Msg(WorkerMsg::Results { .. } | WorkerMsg::LargeResult { .. }) => "Results",
    }
}

/// An item's error, with no guest stderr.
fn task_error(index: u64, kind: TaskErrorKind, message: String, worker: Option<WorkerId>, attempts: u32) -> TaskError {
    TaskError { index: ItemIndex(index), kind, message, worker, attempts, stderr: Vec::new() }
}
