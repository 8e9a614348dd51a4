//! Worker slots: one per worker the pool keeps, with its process generation,
//! its handshake state, the chunks it holds, its deadline, and why the host
//! killed it; and how a worker's death reads on the item it took down.
//!
//! Per-slot bookkeeping only: it must not decide what becomes of items (the
//! ledger does) or whether the pool gives up (the restart policy does).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{task_error, SchedConfig, WorkerInfo};
use crate::error::{Crash, TaskError, TaskErrorKind, WorkerId};
use crate::host::supervisor::{Frame, WorkerEnd, WorkerProc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Starting(Instant),
    Ready,
    Dead,
}

/// Why the host killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KillReason {
    Deadline,
    Violation,
    Abandoned,
    Handshake,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) gen: u64,
    pub(super) state: SlotState,
    pub(super) proc: Option<WorkerProc>,
    /// Chunk ids in flight on this worker, oldest (running) first.
    pub(super) queue: VecDeque<u64>,
    /// When the oldest chunk last made progress (for the hard deadline).
    progress_at: Instant,
    /// Why the host killed it, if it did.
    pub(super) killed: Option<KillReason>,
    /// Running an item alone (a retry after a crash): nothing else is sent
    /// to it until that item is answered, so a crash now is that item's.
    pub(super) exclusive: bool,
    /// The protocol violation the scheduler saw, if that is why.
    pub(super) violation: Option<String>,
    /// What its worker said about itself in the handshake.
    pub(super) info: Option<WorkerInfo>,
    /// The chunk the host asked this worker to give back, unanswered yet.
    pub(super) revoking: Option<u64>,
}

impl Slot {
    /// A slot with no worker yet.
    pub(super) fn new(now: Instant) -> Slot {
        Slot {
            gen: 0,
            state: SlotState::Dead,
            proc: None,
            queue: VecDeque::new(),
            progress_at: now,
            killed: None,
            violation: None,
            exclusive: false,
            info: None,
            revoking: None,
        }
    }

    /// Ready for another chunk: handshake done, not being killed (a worker
    /// killed when a run was abandoned stays `Ready` until its exit is
    /// seen, and must not be handed the next run's items), not running an
    /// item alone, below `depth` chunks.
    pub(super) fn has_room(&self, depth: usize) -> bool {
        self.shares_work() && self.queue.len() < depth
    }

    /// Ready, not being killed, not running an item alone: its chunks may
    /// be added to or taken from.
    fn shares_work(&self) -> bool {
        self.state == SlotState::Ready && self.killed.is_none() && !self.exclusive
    }

    /// Ready and holding nothing: another worker's chunk could run here.
    pub(super) fn is_idle(&self) -> bool {
        self.has_room(1)
    }

    /// The chunk this worker could give back: the last it holds, when it
    /// holds another before it (running, or next), and it is not already
    /// asked for one.
    pub(super) fn revocable(&self) -> Option<u64> {
        let asked_already = self.revoking.is_some();
        (self.shares_work() && !asked_already && self.queue.len() >= 2).then(|| *self.queue.back().expect("two chunks"))
    }

    /// Asks the worker to give chunk `id` back (see [`Slot::revocable`]).
    pub(super) fn revoke(&mut self, id: u64, frame: Frame) {
        if let Some(proc) = &self.proc {
            proc.send(frame);
        }
        self.revoking = Some(id);
    }

    /// The worker gave back chunk `id`, which it had been asked for.
    pub(super) fn gave_back(&mut self, id: u64) -> Result<(), String> {
        if self.revoking != Some(id) || !self.queue.contains(&id) {
            return Err(format!("chunk {id} given back unasked"));
        }
        self.revoking = None;
        if self.queue.front() == Some(&id) {
            // What runs next starts its deadline now.
            self.progress_at = Instant::now();
        }
        self.queue.retain(|&c| c != id);
        Ok(())
    }

    /// Alive in any sense: starting, ready, or its process not yet reaped.
    pub(super) fn is_alive(&self) -> bool {
        self.state != SlotState::Dead || self.proc.is_some()
    }

    /// Forgets the previous worker: generation `gen` is being spawned.
    pub(super) fn restart(&mut self, gen: u64) {
        self.gen = gen;
        self.state = SlotState::Starting(Instant::now());
        self.proc = None;
        self.killed = None;
        self.violation = None;
        self.exclusive = false;
        self.info = None;
        self.revoking = None;
    }

    /// Takes the process of generation `proc.gen` if it is this slot's
    /// current one (killing it at once when the pool is closing), else
    /// kills the stale process.
    pub(super) fn adopt(&mut self, proc: WorkerProc, closing: bool) {
        if proc.gen != self.gen || closing {
            proc.kill();
        }
        if proc.gen == self.gen {
            self.proc = Some(proc);
        }
    }

    /// Kills the worker; the first reason given is the one remembered.
    pub(super) fn kill(&mut self, reason: KillReason) {
        self.killed.get_or_insert(reason);
        if let Some(proc) = &self.proc {
            proc.kill();
        }
    }

    /// Kills the worker for a protocol violation, described in `why`.
    pub(super) fn reject(&mut self, why: String) {
        self.violation = Some(why);
        self.kill(KillReason::Violation);
    }

    /// Drops the chunks of an abandoned run, killing the worker if it held
    /// any (it is respawned on the next run).
    pub(super) fn abandon(&mut self) {
        if !self.queue.is_empty() {
            self.queue.clear();
            self.exclusive = false;
            self.kill(KillReason::Abandoned);
        }
    }

    /// Sends chunk `id`, encoded in `frame`.
    pub(super) fn send(&mut self, id: u64, frame: Frame) {
        if let Some(proc) = &self.proc {
            proc.send(frame);
        }
        if self.queue.is_empty() {
            self.progress_at = Instant::now();
        }
        self.queue.push_back(id);
    }

    /// The oldest chunk made progress; `complete` when it is fully answered.
    pub(super) fn answered(&mut self, complete: bool) {
        self.progress_at = Instant::now();
        // A chunk being answered was started: it will not be given back.
        if self.revoking == self.queue.front().copied() {
            self.revoking = None;
        }
        if complete {
            self.queue.pop_front();
            self.exclusive = false;
        }
    }

    /// Why a worker past its deadline is killed.
    pub(super) fn overdue(&self) -> KillReason {
        match self.state {
            SlotState::Starting(_) => KillReason::Handshake,
            _ => KillReason::Deadline,
        }
    }

    /// Marks the worker dead and reaped, and says how it ended.
    pub(super) fn bury(&mut self, mut end: WorkerEnd) -> Death {
        let was = self.state;
        // A frame the reader refused is a violation too, whoever killed it.
        end.violation = end.violation.take().or(self.violation.take());
        let killed = match self.killed.take() {
            None if end.violation.is_some() => Some(KillReason::Violation),
            k => k,
        };
        self.state = SlotState::Dead;
        self.proc = None;
        self.revoking = None;
        let queue = std::mem::take(&mut self.queue);
        let crash = end.crash.clone().unwrap_or(Crash::Exited { code: 0 });
        Death { was, killed, queue, crash, end }
    }
}

/// The time limits a slot is held to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    handshake: Duration,
    /// The per-item timeout, if any.
    item: Option<Duration>,
    /// A fresh instance runs `init` first, under its own timeout.
    init: bool,
}

impl Deadlines {
    pub(super) fn new(cfg: &SchedConfig) -> Deadlines {
        Deadlines {
            handshake: cfg.handshake_timeout,
            item: cfg.hello.settings.limits.timeout,
            init: cfg.hello.init.is_some(),
        }
    }

    /// When `slot` must have answered: the handshake timeout while it
    /// starts; while it runs, every one of the `remaining` unanswered items
    /// of its oldest chunk may take the full timeout, plus a grace period.
    pub(super) fn of(&self, slot: &Slot, remaining: Option<usize>) -> Option<Instant> {
        match slot.state {
            SlotState::Starting(since) => Some(since + self.handshake),
            SlotState::Ready => {
                let timeout = self.item?;
                let remaining = remaining? as u32;
                let init = if self.init { timeout } else { Duration::ZERO };
                Some(slot.progress_at + (timeout + init) * remaining + hard_grace(timeout))
            }
            SlotState::Dead => None,
        }
    }
}

fn hard_grace(timeout: Duration) -> Duration {
    Duration::from_secs(1) + timeout / 2
}

/// How a worker ended, as the scheduler sees it.
#[derive(Debug)]
pub(super) struct Death {
    /// Its state when it died.
    pub(super) was: SlotState,
    pub(super) killed: Option<KillReason>,
    /// The chunks it held.
    pub(super) queue: VecDeque<u64>,
    pub(super) crash: Crash,
    pub(super) end: WorkerEnd,
}

impl Death {
    /// The worker died on its own or was killed for its own fault (not
    /// because a run was abandoned).
    pub(super) fn counts(&self) -> bool {
        self.killed != Some(KillReason::Abandoned)
    }

    /// Killed past an item's hard deadline.
    pub(super) fn timed_out(&self) -> bool {
        self.killed == Some(KillReason::Deadline)
    }

    /// The error of the item the ledger blamed for this death.
    pub(super) fn item_error(&self, index: u64, attempts: u32, worker: WorkerId) -> TaskError {
        let crash = &self.crash;
        let (kind, message) = match self.killed {
            Some(KillReason::Deadline) => (
                TaskErrorKind::Timeout,
                format!("the worker stopped answering past the deadline and was killed ({crash})"),
            ),
            Some(KillReason::Violation) => (
                TaskErrorKind::Protocol,
                format!(
                    "the worker broke the protocol and was killed: {}",
                    self.end.violation.clone().unwrap_or_default()
                ),
            ),
            _ => (TaskErrorKind::WorkerCrashed(crash.clone()), self.crash_message()),
        };
        task_error(index, kind, message, Some(worker), attempts)
    }

    fn crash_message(&self) -> String {
        let mut m = format!("the worker process {} while running this item", self.crash);
        if let Some(v) = &self.end.violation {
            m.push_str(&format!(" (protocol violation: {v})"));
        }
        if !self.end.stderr.is_empty() {
            m.push_str(&format!("; worker stderr: {}", self.end.stderr));
        }
        m
    }
}
